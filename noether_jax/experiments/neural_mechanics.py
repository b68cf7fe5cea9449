"""Neural Mechanics end to end: detect the symmetries of a model, train it, compare with the theory.

:func:`neural_mechanics` is the experiment behind ``noether-jax neural-mechanics`` and the first
part of ``noether-jax reproduce``: it trains a model on digits (or a teacher–student task) with
SGD(η, β, λ), records every symmetric group found by :func:`noether_jax.symmetry.detect` in one
compiled scan (:class:`noether_jax.Recorder`), and scores the closed-form theory group by group with
the library's one error metric (:func:`noether_jax.theory.relative_error`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import data as _data
from .. import models as _models
from .. import theory
from .._validate import integer
from ..rules import Hyper, sgd
from ..symmetry import detect, group_names, n_groups
from ..training import Batches, Engine, Record, Recorder, SaveParams, Sharpness, run


@dataclasses.dataclass(frozen=True)
class NMConfig:
    """One Neural Mechanics run (all fields are plain Python values, written to ``summary.json``).

    ``model`` is a name of :data:`noether_jax.models.MODELS` or ``"module.path:callable"`` (a factory
    ``rngs -> nnx.Module``); ``data`` is ``digits``, ``teacher_student`` or a path to an ``.npz`` file
    with ``x_train, y_train, x_test, y_test``.
    """

    model: str = "mlp"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 1e-4
    batch_size: int = 128
    steps: int = 2000
    seed: int = 0
    width: int = 32
    save_every: int = 10
    data: str = "digits"

    def validate(self) -> NMConfig:
        if self.model not in _models.MODELS and ":" not in self.model:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(_models.MODELS)} or give "
                             "'module.path:callable' (option --model).")
        integer("steps", self.steps)
        integer("batch_size", self.batch_size)
        integer("save_every", self.save_every)
        integer("width", self.width)
        Hyper(self.lr, self.momentum, self.weight_decay)  # range checks with clear messages
        return self


@dataclasses.dataclass
class NMResult:
    """Everything a run produced: the config, the record, the groups, the summary and the dataset."""

    config: NMConfig
    record: Record
    symmetries: dict
    summary: dict
    net: Any
    params0: Any

    @property
    def dataset(self):
        return to_dataset(self.record, self.symmetries, self.config)


def load_data(name: str, seed: int = 0) -> _data.Dataset:
    """``digits``, ``teacher_student``, or a path to a data file (see :func:`noether_jax.data.load`)."""
    if name == "digits":
        return _data.digits(seed=seed)
    if name == "teacher_student":
        return _data.teacher_student(seed=seed)
    return _data.load(name)


def build_model(name: str, *, key: int, ds: _data.Dataset, width: int):
    """A library model by name, or ``module.path:callable`` called with ``nnx.Rngs(key)``."""
    if ":" in name:
        import flax.nnx as nnx

        from ._user import load_factory

        return load_factory(name)(nnx.Rngs(key))
    return _models.make_model(name, key=key, in_shape=tuple(ds.x_train.shape[1:]), n_classes=ds.n_classes, width=width)


def group_errors(record: Record, kind: str, series: str = "theory") -> dict[str, Any]:
    """Per-group relative errors of one kind (:func:`noether_jax.theory.relative_error`) and their statistics.

    ``median_broken_fraction``: the median over groups of maxₜ|X − X(0)| / max(maxₜ|X|, floor), how far
    training moved each quantity that gradient flow would conserve.
    """
    m = jnp.asarray(record.measured[kind])
    p = jnp.asarray(getattr(record, series)[kind])
    floor = float(theory.error_floor(m))
    err = np.asarray(theory.relative_error(p, m))
    moved = np.asarray(jnp.max(jnp.abs(m - m[0]), axis=0) / jnp.maximum(jnp.max(jnp.abs(m), axis=0), floor))
    return {
        "n_groups": int(m.shape[1]),
        "median_rel_error": float(np.median(err)),
        "max_rel_error": float(np.max(err)),
        "floor": floor,
        "median_broken_fraction": float(np.median(moved)),
        "errors": err,
    }


def to_dataset(record: Record, symmetries: dict, config: NMConfig):
    """The recorded series as a labelled :class:`xarray.Dataset` (:meth:`Record.to_xarray`) with the run's config."""
    ds = record.to_xarray()
    ds.attrs.update(dataclasses.asdict(config))
    return ds


def sharpness_every(steps: int, save_every: int, points: int = 10) -> int:
    """The largest interval, a multiple of ``save_every`` dividing ``steps``, giving at least ``points`` λ_max estimates."""
    chunks = steps // save_every
    per = max(1, chunks // points)
    while chunks % per:
        per -= 1
    return per * save_every


def neural_mechanics(config: NMConfig = NMConfig()) -> NMResult:
    """Detect, train, record and score one configuration (see the module docstring).

    Example:
        >>> from noether_jax.experiments import NMConfig, neural_mechanics
        >>> res = neural_mechanics(NMConfig(width=8, steps=20, save_every=10))
        >>> sorted(res.summary["symmetries"]), res.summary["diverged"]
        (['rescale', 'translation'], False)
    """
    config.validate()
    ds = load_data(config.data, seed=0)
    _data.check_batch_size(config.batch_size, ds.n_train)
    key = jax.random.key(config.seed)
    k_init, k_run = jax.random.split(key)
    model = build_model(config.model, key=int(jax.random.randint(k_init, (), 0, 2**31 - 1)), ds=ds, width=config.width)
    net, params, state = _models.functional(model)
    t0 = time.perf_counter()
    probe = (ds.x_train[: min(256, ds.n_train)], ds.y_train[: min(256, ds.n_train)])
    symmetries = detect(net, params, probe, state=state).symmetries
    if not symmetries:
        raise ValueError(f"nj.symmetry.detect found no symmetric group in model {config.model!r}: nothing to record.")
    t_detect = time.perf_counter() - t0
    steps = config.steps
    save_every = config.save_every if steps % config.save_every == 0 else 1
    rec = Recorder(net, symmetries, ds.x_train, ds.y_train, batch_size=config.batch_size, steps=steps, save_every=save_every,
                   sharpness_every=sharpness_every(steps, save_every))
    hyper = Hyper(config.lr, config.momentum, config.weight_decay)
    t0 = time.perf_counter()
    compiled = jax.jit(Recorder.run).lower(rec, params, state, hyper, k_run).compile()
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    record = jax.block_until_ready(compiled(rec, params, state, hyper, k_run))
    t_run = time.perf_counter() - t0
    summary = summarise(config, record, symmetries, net, ds)
    summary["timing_s"] = {"detect": t_detect, "compile": t_compile, "run": t_run}
    return NMResult(config, record, symmetries, summary, net, params)


def summarise(config: NMConfig, record: Record, symmetries: dict, net, ds: _data.Dataset) -> dict:
    """The ``summary.json`` content of one run; a diverged run gets no error figures at all.

    ``stability`` holds the guard: where η·λ_max > 2(1+β) (``valid`` false) no continuous model
    applies, and the theory's numbers of that run are not a test of it.
    """
    diverged = bool(record.diverged)
    out: dict[str, Any] = {"config": dataclasses.asdict(config), "diverged": diverged, "status": record.status_name(),
                           "stability": record.guard.summary(), "law": record.law}
    if diverged:
        out["diverged_step"] = int(record.diverged_step)
        out["symmetries"] = {k: {"n_groups": n_groups(symmetries[k])} for k in symmetries}
        out["final_test_accuracy"] = None
        return out
    out["symmetries"] = {}
    for kind in symmetries:
        e = group_errors(record, kind)
        entry = {k: v for k, v in e.items() if k != "errors"}
        entry["theory"] = "NM eqs. 18–20 (β = 0)" if config.momentum == 0 else "driven damped oscillator (β > 0)"
        if config.momentum == 0:
            entry["identity_max_rel_error"] = group_errors(record, kind, "identity")["max_rel_error"]
        if kind == "scale" and np.asarray(record.nld_r4).size:
            from ..nld import eq17_errors

            err = np.asarray(eq17_errors(record.measured["scale"], record.nld_r4))
            entry["eq17_median_rel_error"] = float(np.median(err))
            entry["eq17_max_rel_error"] = float(np.max(err))
        out["symmetries"][kind] = entry
    out["final_train_loss"] = float(record.loss[-1])
    out["final_test_accuracy"] = float(_models.accuracy(net, record.params, record.state, ds.x_test, ds.y_test))
    return out


@dataclasses.dataclass
class FlowComparison:
    """Full-batch discrete training against its modified flow and its gradient flow (per step n).

    ``dist_*`` is |θ_flow(nη) − θₙ| over all parameters; ``param_scale`` is |θ₀|.
    """

    step: np.ndarray
    loss_discrete: np.ndarray
    loss_modified: np.ndarray
    loss_gradient: np.ndarray
    dist_modified: np.ndarray
    dist_gradient: np.ndarray
    param_scale: float
    guard: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"max_dist_modified": float(np.max(self.dist_modified)), "max_dist_gradient": float(np.max(self.dist_gradient)),
                "param_scale": self.param_scale, "stability": None if self.guard is None else self.guard.summary()}


def compare_flows(
    model: str = "mlp_tanh", *, lr: float = 0.1, momentum: float = 0.0, weight_decay: float = 0.0, steps: int = 200,
    n_examples: int = 256, width: int = 16, seed: int = 0,
) -> FlowComparison:
    """Full-batch discrete training of a real network (the training engine) against its modified flow and
    its gradient flow, both integrated by :func:`noether_jax.simulate` on the flax parameter pytree
    from the initial velocity the optimiser's state implies. The default is the tanh MLP: ReLU kinks
    make an adaptive solver crawl (the flow is only piecewise smooth there)."""
    from ..mechanics import simulate

    ds = load_data("digits")
    x, y = ds.x_train[:n_examples], ds.y_train[:n_examples]
    net, params, state = _models.functional(_models.make_model(model, key=seed, width=width))
    lossf = _models.loss_fn(net)

    def loss(p):
        return lossf(p, state, (x, y))[0]

    rule = sgd(lr=lr, momentum=momentum, weight_decay=weight_decay)
    engine = Engine(lambda p, s, b: (loss(p), s), [rule.optimizer()], Batches(x, y), hooks={"params": SaveParams()})
    # the guard: η·λ_max of the full-batch Hessian at the first and the last step, against 2(1+β)
    sharp = Sharpness(steps, 20, rule.edge())
    trained = jax.jit(lambda p: run(engine, [p], [{}], jax.random.key(0), steps=steps, save_every=1, sharpness=sharp))(params)
    discrete = trained.saved["params"]
    ts = jnp.arange(steps + 1) * lr
    v0 = rule.initial_velocity(params, jax.grad(loss)(params))
    mod = simulate(rule.lagrangian(loss), params, v0, t1=float(ts[-1]), ts=ts, rtol=1e-6, atol=1e-8, max_steps=200_000)
    grad = simulate(rule.gradient_flow(loss), params, t1=float(ts[-1]), ts=ts, rtol=1e-6, atol=1e-8, max_steps=200_000)

    def dist(traj):
        return np.sqrt(sum(np.sum((np.asarray(a) - np.asarray(b)) ** 2, axis=tuple(range(1, a.ndim)))
                           for a, b in zip(jax.tree.leaves(traj), jax.tree.leaves(discrete), strict=True)))

    def losses(traj):
        return np.asarray(jax.vmap(loss)(traj))

    return FlowComparison(np.arange(steps + 1), losses(discrete), losses(mod.q), losses(grad.q), dist(mod.q), dist(grad.q),
                          float(np.sqrt(sum(np.sum(np.asarray(a) ** 2) for a in jax.tree.leaves(params)))), trained.guard)
