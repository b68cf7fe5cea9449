"""Neural Mechanics end to end: detect the symmetries of a model, train it, compare with the theory.

:func:`neural_mechanics` is the experiment behind ``noether-jax neural-mechanics`` and the first
part of ``noether-jax reproduce``: it trains a model from :mod:`noether_jax.models` on digits (or a
teacher–student task) with SGD(η, β, λ), records every symmetric group found by
:func:`noether_jax.symmetry.detect` in one jit-compiled scan (:class:`noether_jax.Recorder`), and
scores the closed-form theory group by group.

The relative error of a group is maxₜ |predicted − measured| / max(|measured|, floor), with the floor
1e-3 × the median over the kind's groups of maxₜ|measured| (translation sums can cross zero).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from . import _data, _models
from ._detect import group_names, n_groups
from ._recorder import KINDS, Hyper, Record, Recorder, relative_error

FLOOR = 1e-3


@dataclasses.dataclass(frozen=True)
class NMConfig:
    """One Neural Mechanics run (all fields are plain Python values, written to ``summary.json``)."""

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
        if self.model not in _models.MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(_models.MODELS)} (option --model).")
        if self.data not in ("digits", "teacher_student"):
            raise ValueError(f"unknown data {self.data!r}; choose digits or teacher_student (option --data).")
        if self.steps < 1:
            raise ValueError(f"`steps` must be a positive integer, got {self.steps} (option --steps).")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {self.batch_size} (option --batch-size).")
        if self.save_every < 1:
            raise ValueError(f"`save_every` must be a positive integer, got {self.save_every}.")
        Hyper(self.lr, self.momentum, self.weight_decay)  # range checks with clear messages
        return self


@dataclasses.dataclass
class NMResult:
    """Everything a run produced: the config, the record, the groups, the summary and the dataset."""

    config: NMConfig
    record: Record
    symmetries: dict
    summary: dict
    dataset: xr.Dataset
    net: Any
    params0: Any


def load_data(name: str, seed: int = 0) -> _data.Dataset:
    if name == "digits":
        return _data.digits(seed=seed)
    return _data.teacher_student(seed=seed)


def group_errors(record: Record, kind: str, series: str = "theory") -> dict[str, Any]:
    """Per-group relative errors of one kind and their summary statistics."""
    m = jnp.asarray(record.measured[kind])
    p = jnp.asarray(getattr(record, series)[kind])
    floor = FLOOR * float(jnp.median(jnp.max(jnp.abs(m), axis=0)))
    err = np.asarray(relative_error(p, m, floor))
    moved = np.asarray(jnp.max(jnp.abs(m - m[0]), axis=0) / jnp.maximum(jnp.max(jnp.abs(m), axis=0), floor))
    return {
        "n_groups": int(m.shape[1]),
        "median_rel_error": float(np.median(err)),
        "max_rel_error": float(np.max(err)),
        "floor": floor,
        "median_broken_fraction": float(np.median(moved)),
        "errors": err,
    }


def to_dataset(record: Record, symmetries: dict, config: NMConfig) -> xr.Dataset:
    """The recorded series as a labelled :class:`xarray.Dataset` (dims ``step`` and ``<kind>_group``)."""
    step = np.asarray(record.step)
    ds = xr.Dataset(
        {"loss": ("step", np.asarray(record.loss))},
        coords={"step": step, "t": ("step", step * config.lr)},
        attrs={k: v for k, v in dataclasses.asdict(config).items()},
    )
    for kind, sym in symmetries.items():
        dim = f"{kind}_group"
        names = group_names(sym)
        ds = ds.assign_coords({dim: np.arange(len(names)), f"{kind}_name": (dim, names)})
        for series in ("measured", "theory", "identity", "grad_sq"):
            ds[f"{series}_{kind}"] = (("step", dim), np.asarray(getattr(record, series)[kind]))
        if kind == "scale":
            ds["nld_r4_scale"] = (("step", dim), np.asarray(record.nld_r4))
    ds["diverged_step"] = int(record.diverged_step)
    if int(record.diverged_step) >= 0:  # no garbage after a divergence: those save points are NaN
        after = xr.DataArray(step > int(record.diverged_step), dims="step")
        for name in [v for v in ds.data_vars if "step" in ds[v].dims]:
            ds[name] = ds[name].where(~after)
    if np.asarray(record.lambda_max).size:
        ds = ds.assign_coords(sharpness_step=np.asarray(record.sharpness_step))
        ds["lambda_max"] = ("sharpness_step", np.asarray(record.lambda_max))
        ds["sharpness"] = ("sharpness_step", np.asarray(record.lambda_max) * config.lr)
    return ds


def neural_mechanics(config: NMConfig = NMConfig(), *, progress: bool = True) -> NMResult:
    """Detect, train, record and score one configuration (see the module docstring).

    Example:
        >>> from noether_jax._neural_mechanics import NMConfig, neural_mechanics
        >>> res = neural_mechanics(NMConfig(width=8, steps=20, save_every=10), progress=False)
        >>> sorted(res.summary["symmetries"]), res.summary["diverged"]
        (['rescale', 'translation'], False)
    """
    from ._detect import detect

    config.validate()
    ds = load_data(config.data, seed=0)
    _data.check_batch_size(config.batch_size, ds.n_train)
    key = jax.random.key(config.seed)
    k_init, k_run = jax.random.split(key)
    model = _models.make_model(config.model, key=int(jax.random.randint(k_init, (), 0, 2**31 - 1)),
                               in_shape=tuple(ds.x_train.shape[1:]), n_classes=ds.n_classes, width=config.width)
    net, params, state = _models.functional(model)
    t0 = time.perf_counter()
    probe = (ds.x_train[: min(256, ds.n_train)], ds.y_train[: min(256, ds.n_train)])
    found = detect(net, params, probe, state=state)
    symmetries = found.symmetries
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
    if progress:
        from rich.console import Console

        with Console(stderr=True).status(f"training {config.model} for {steps} steps (one compiled scan)"):
            record = jax.block_until_ready(compiled(rec, params, state, hyper, k_run))
    else:
        record = jax.block_until_ready(compiled(rec, params, state, hyper, k_run))
    t_run = time.perf_counter() - t0
    summary = summarise(config, record, symmetries, net, ds)
    summary["timing_s"] = {"detect": t_detect, "compile": t_compile, "run": t_run}
    return NMResult(config, record, symmetries, summary, to_dataset(record, symmetries, config), net, params)


def sharpness_every(steps: int, save_every: int, points: int = 10) -> int:
    """The largest interval, a multiple of ``save_every`` dividing ``steps``, giving at least ``points`` λ_max estimates."""
    chunks = steps // save_every
    per = max(1, chunks // points)
    while chunks % per:
        per -= 1
    return per * save_every


def stability(config: NMConfig, record: Record) -> dict[str, Any]:
    """The edge-of-stability guard of a run: η·λ_max along it against 2(1+β) (THEORY.md §1)."""
    from ._guard import edge_of_stability

    lam = np.asarray(record.lambda_max)
    if lam.size == 0:
        return {}
    ok = np.isfinite(lam)
    g = edge_of_stability(np.where(ok, lam, 0.0), config.lr, config.momentum)
    flagged = np.asarray(g.flagged) & ok
    return {
        "lambda_max": [float(v) if f else None for v, f in zip(lam, ok)],
        "step": np.asarray(record.sharpness_step).tolist(),
        "max_sharpness": float(np.max(np.asarray(g.sharpness)[ok])) if ok.any() else None,
        "threshold": float(np.min(np.asarray(g.threshold))),
        "flagged_steps": np.asarray(record.sharpness_step)[flagged].tolist(),
        "not_finite_steps": np.asarray(record.sharpness_step)[~ok].tolist(),
        "valid": bool(ok.all() and not flagged.any()),
        "estimator": "Lanczos (HVPs) on a mini-batch of the training loss plus weight decay",
    }


def summarise(config: NMConfig, record: Record, symmetries: dict, net, ds: _data.Dataset) -> dict:
    """The ``summary.json`` content of one run; a diverged run gets no error figures at all.

    ``stability`` holds the edge-of-stability guard: where η·λ_max > 2(1+β) (``valid`` false) no
    continuous model applies, and the theory's numbers of that run are not a test of it.
    """
    diverged = bool(record.diverged_step >= 0)
    out: dict[str, Any] = {"config": dataclasses.asdict(config), "diverged": diverged, "stability": stability(config, record)}
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
            ident = group_errors(record, kind, "identity")
            entry["identity_max_rel_error"] = ident["max_rel_error"]
        if kind == "scale":
            r2 = jnp.asarray(record.measured["scale"])
            r4 = jnp.maximum(jnp.asarray(record.nld_r4), 0.0)
            err = np.asarray(jnp.max(jnp.abs(jnp.sqrt(r4) - r2) / r2, axis=0))
            entry["eq17_median_rel_error"] = float(np.median(err))
            entry["eq17_max_rel_error"] = float(np.max(err))
        out["symmetries"][kind] = entry
    out["final_train_loss"] = float(record.loss[-1])
    out["final_test_accuracy"] = float(_models.accuracy(net, record.params, record.state, ds.x_test, ds.y_test))
    return out


__all__ = ["KINDS", "NMConfig", "NMResult", "group_errors", "neural_mechanics", "summarise", "to_dataset"]


def compare_flows(
    model: str = "mlp_tanh", *, lr: float = 0.1, momentum: float = 0.0, weight_decay: float = 0.0, steps: int = 200,
    n_examples: int = 256, width: int = 16, seed: int = 0,
) -> dict[str, np.ndarray]:
    """Full-batch discrete training of a real network against its modified flow and its gradient flow.

    The flows are integrated by :func:`noether_jax.simulate` directly on the flax parameter pytree,
    from the initial velocity the optimiser's state implies. Returns the loss curves and the
    distance |θ_flow(nη) − θₙ| of each flow to the discrete iterates. The default is the tanh MLP:
    the ReLU kinks make an adaptive solver crawl (the flow is only piecewise smooth there).
    """
    from ._integrate import simulate
    from ._rules import sgd

    ds = load_data("digits")
    x, y = ds.x_train[:n_examples], ds.y_train[:n_examples]
    net, params, state = _models.functional(_models.make_model(model, key=seed, width=width))
    lossf = _models.loss_fn(net)

    def loss(p):
        return lossf(p, state, (x, y))[0]

    rule = sgd(lr, momentum, weight_decay)
    opt = rule.optimizer()

    def step(carry, _):
        p, o = carry
        g = jax.grad(loss)(p)
        u, o = opt.update(g, o, p)
        return (jax.tree.map(jnp.add, p, u), o), p

    (_, _), discrete = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), None, length=steps + 1))(params)
    ts = jnp.arange(steps + 1) * lr
    v0 = rule.initial_velocity(params, jax.grad(loss)(params))
    mod = simulate(rule.lagrangian(loss), params, v0, t1=float(ts[-1]), ts=ts, rtol=1e-6, atol=1e-8, max_steps=200_000)
    grad = simulate(rule.gradient_flow(loss), params, t1=float(ts[-1]), ts=ts, rtol=1e-6, atol=1e-8, max_steps=200_000)

    def dist(traj):
        return np.sqrt(sum(np.sum((np.asarray(a) - np.asarray(b)) ** 2, axis=tuple(range(1, a.ndim)))
                           for a, b in zip(jax.tree.leaves(traj), jax.tree.leaves(discrete), strict=True)))

    def losses(traj):
        return np.asarray(jax.vmap(loss)(traj))

    return {
        "step": np.arange(steps + 1),
        "loss_discrete": losses(discrete),
        "loss_modified": losses(mod.q),
        "loss_gradient": losses(grad.q),
        "dist_modified": dist(mod.q),
        "dist_gradient": dist(grad.q),
        "param_scale": float(np.sqrt(sum(np.sum(np.asarray(a) ** 2) for a in jax.tree.leaves(params)))),
    }
