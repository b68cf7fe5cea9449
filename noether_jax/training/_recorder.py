"""The Recorder: real optax training of any flax model, recorded group by group, with its theory in-scan.

One run of the training engine (:func:`noether_jax.training.run`) trains the model with the
optimiser, and a hook measures, for every group of every symmetry, the quantity its conservation law
is about, X = ``sym.pair(θ, θ)``: ⟨θ_𝒜, 𝟙⟩ (translation), |θ_𝒜|² (scale), |θ_𝒜₁|² − |θ_𝒜₂|²
(rescale). It advances, next to it, the laws the learning rule brings (for SGD and heavy ball: the
closed forms fed the step's own forcing, the exact discrete identity, and NLD eq. 17 for r⁴ of every
scale group). A rule without laws, a factory or a bare optax transformation is *measured only*:
its theory series are NaN and ``Record.law`` says why.

Everything is a pure function of ``(params, state, hyper, key)``, so a whole grid of runs is one
``jax.vmap`` (see :func:`noether_jax.sweep`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

from .. import _validate, theory
from .._tree import cast_floats, float_dtype, is_concrete
from ..models import as_model, cross_entropy
from ..rules import AbstractRule, Hyper, check_optimizer, resolve
from ..symmetry import KINDS, MaskedSymmetry, Symmetries, gradient_residuals, group_names, pair
from ._engine import Batches, Engine, SaveParams, Sharpness, batch_key, run
from ._guard import STATUS, StabilityGuard
from ._hooks import BUDGET_PARTS, Companion, Conservation, NoetherHook

#: a given symmetry whose relative gradient constraint exceeds this at the first batch is refused
SYMMETRY_TOL = 1e-3


class Record(eqx.Module):
    """What :meth:`Recorder.run` returns: series at the save points, the final weights and the guard.

    Attributes:
        step: the step index n of each save point (t = nη).
        loss: mean mini-batch training loss over the steps since the previous save point (NaN at 0).
        measured: kind → (S, G) measured X for every group.
        theory: kind → (S, G) the rule's continuous prediction (for SGD: NM eqs. 18–20 at β = 0, the
            driven damped oscillator at β > 0), fed the run's own forcing; NaN when the rule has none.
        identity: kind → (S, G) the exact discrete identity of SGD (exact for β = 0 only); NaN without one.
        nld_r4: (S, G_scale) NLD eq. 17's prediction of r⁴ = |θ_𝒜|⁴ (empty without scale groups or law).
        grad_sq: kind → (S, G) ``sym.pair(g, g)`` of the last applied mini-batch gradient (NaN at 0).
        params, state: the final parameters and model state.
        guard: the divergence and edge-of-stability flags (:class:`noether_jax.stochastic.StabilityGuard`).
        hyper_valid: False when a hyperparameter of this run (possibly traced) was outside its domain.
        symmetry_residual: kind → the largest relative gradient constraint of its groups at the first batch.
        lr: η of the run (t = nη; NaN for a bare optax transformation).
        ksb: kind → (S, G) kinetic symmetry breaking |δ_gK| / 2K at the save points (``noether=True``; NaN at
            step 0; empty otherwise); see :class:`noether_jax.training.NoetherHook`.
        budget: kind → part → (G,) the charge budget's parts (dissipation, kinetic_asymmetry, metric,
            potential) integrated over the run as a Riemann sum over the save points (``noether=True``).
        companions: name → the save outputs of each companion run (e.g. the mapped RMSProp's angle to SGD).
        params_series: the parameters at every save point (leading axis S) with ``save_params=True``, else None.
        law: what ``theory`` is, or why there is none.
        names: ((kind, group names), ...) for labels.
    """

    step: Int[Array, " S"]
    loss: Float[Array, " S"]
    measured: dict[str, Float[Array, "S G"]]
    theory: dict[str, Float[Array, "S G"]]
    identity: dict[str, Float[Array, "S G"]]
    nld_r4: Float[Array, "S Gs"]
    grad_sq: dict[str, Float[Array, "S G"]]
    params: PyTree
    state: PyTree
    guard: StabilityGuard
    hyper_valid: Bool[Array, ""]
    symmetry_residual: dict[str, Float[Array, ""]]
    lr: Float[Array, ""]
    ksb: dict[str, Float[Array, "S G"]]
    budget: dict[str, dict[str, Float[Array, " G"]]]
    companions: dict[str, Any]
    params_series: PyTree
    law: str = eqx.field(static=True, default="")
    names: tuple = eqx.field(static=True, default=())

    @property
    def diverged_step(self) -> Int[Array, ""]:
        return self.guard.diverged_step

    @property
    def diverged(self) -> Bool[Array, ""]:
        return self.guard.diverged

    @property
    def sharpness_step(self) -> Int[Array, " P"]:
        return self.guard.step

    @property
    def lambda_max(self) -> Float[Array, " P"]:
        return self.guard.lambda_max

    @property
    def status(self) -> Int[Array, ""]:
        """0 ok, 1 diverged, 2 nan (a non-finite series), 3 invalid (a hyperparameter out of its domain),
        4 edge of stability (η·λ_max beyond the rule's threshold); see ``STATUS``."""
        b = jnp.ndim(self.guard.diverged_step)  # run axes (a vmapped Record): reduce per member only

        def fin(a):
            return jnp.all(jnp.isfinite(a), axis=tuple(range(b, jnp.ndim(a))))

        finite = fin(self.loss[..., 1:])
        for leaf in jax.tree.leaves((self.measured, self.params)):
            if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact):
                finite = finite & fin(leaf)
        code = jnp.where(self.diverged, 1, jnp.where(~finite, 2, jnp.where(self.guard.any_flagged, 4, 0)))
        return jnp.where(~self.hyper_valid, 3, code).astype(jnp.int32)

    def status_name(self) -> str:
        return STATUS[int(self.status)]

    def to_xarray(self):
        """The series as a labelled :class:`xarray.Dataset` (dims ``step`` and ``<kind>_group``); save points after
        a divergence are NaN. Needs a concrete (not vmapped) record.

        Example:
            >>> import jax, noether_jax as nj
            >>> ds = nj.data.digits(); model = nj.models.make_model("mlp", width=4)
            >>> syms = nj.symmetry.detect(model, batch=(ds.x_train[:64], ds.y_train[:64])).symmetries
            >>> rec = nj.Recorder(model, syms, ds.x_train, ds.y_train, batch_size=16, steps=4, save_every=2)
            >>> sorted(rec.run(hyper=nj.Hyper(0.1)).to_xarray().data_vars)[:3]
            ['diverged_step', 'grad_sq_rescale', 'grad_sq_translation']
        """
        import xarray as xr

        step = np.asarray(self.step)
        ds = xr.Dataset({"loss": ("step", np.asarray(self.loss))}, coords={"step": step, "t": ("step", step * float(self.lr))},
                        attrs={"law": self.law, "status": self.status_name()})
        names = dict(self.names)
        for kind in self.measured:
            dim = f"{kind}_group"
            g = np.asarray(self.measured[kind]).shape[1]
            ds = ds.assign_coords({dim: np.arange(g), f"{kind}_name": (dim, list(names.get(kind, [f"group {i}" for i in range(g)])))})
            for series in ("measured", "theory", "identity", "grad_sq"):
                ds[f"{series}_{kind}"] = (("step", dim), np.asarray(getattr(self, series)[kind]))
            if kind == "scale" and np.asarray(self.nld_r4).size:
                ds["nld_r4_scale"] = (("step", dim), np.asarray(self.nld_r4))
        ds["diverged_step"] = int(self.diverged_step)
        if int(self.diverged_step) >= 0:  # no garbage after a divergence: those save points are NaN
            after = xr.DataArray(step > int(self.diverged_step), dims="step")
            for name in [v for v in ds.data_vars if "step" in ds[v].dims]:
                ds[name] = ds[name].where(~after)
        if np.asarray(self.lambda_max).size:
            ds = ds.assign_coords(sharpness_step=np.asarray(self.sharpness_step))
            ds["lambda_max"] = ("sharpness_step", np.asarray(self.lambda_max))
            ds["sharpness"] = ("sharpness_step", np.asarray(self.guard.sharpness))
        return ds


class Recorder(eqx.Module):
    """Train a model on ``(x, y)`` for ``steps`` steps and record its conservation laws.

    Args:
        model: any flax model: an ``nnx.Module`` (with or without a ``train``/``deterministic``
            keyword), ``(graphdef, state)`` from ``nnx.split``, ``(linen_module, variables)``, or the
            pure network of :func:`noether_jax.models.functional`. Its own parameters and state are
            the default of :meth:`run`.
        symmetries: kind → :class:`~noether_jax.symmetry.MaskedSymmetry` (or a tuple of them), kinds
            among ``translation``, ``scale``, ``rescale`` (e.g. ``nj.symmetry.detect(...).symmetries``).
        x, y: the training set; mini-batches of ``batch_size`` are drawn without replacement per step.
            A float ``x`` of another precision than the model's parameters is cast to the model's (with
            a warning): a float32 model runs in float32 under x64.
        batch_size, steps, save_every: static (they set shapes).
        optimizer: a learning rule (``nj.rules.sgd(lr=...)``: its laws come with it), an optax
            transformation as it is (measured only), or a factory ``Hyper -> optax`` (measured only).
            Default: SGD with heavy-ball momentum and coupled weight decay, from the ``hyper`` of :meth:`run`.
        post_update: optional ``(params, params0) -> params`` applied after every step.
        loss: ``(logits, y) -> scalar``; default softmax cross-entropy with integer labels.
        divergence_factor: a loss above this × the first loss, or a non-finite loss or parameter, marks
            the run as diverged.
        sharpness_every: estimate λ_max of the mini-batch Hessian (``sharpness_iters`` Lanczos steps on
            batches of its own, so training is unchanged) every ``sharpness_every`` steps and after the
            last; a multiple of ``save_every`` dividing ``steps``. Default (None): ``steps``, i.e. at the
            first and the last step, so every Record carries the edge-of-stability flag; 0: off.
        check_symmetries: refuse, at a concrete :meth:`run`, a symmetry whose gradient constraint fails
            at the first batch (relative residual above 1e-3): it is not a symmetry of this loss.
        noether: also record kinetic symmetry breaking and the charge budget at the save points
            (:class:`NoetherHook`; ``Record.ksb``, ``Record.budget``).
        companions: optimisers trained in lockstep with this run on the same mini-batches (e.g.
            ``nj.nld.RMSPropCompanion``: SGD's mapped RMSProp on the unit sphere); ``Record.companions``.
        save_params: keep the parameters at every save point (``Record.params_series``).

    Example:
        >>> import jax, noether_jax as nj
        >>> from noether_jax import models, data
        >>> ds = data.digits()
        >>> model = models.make_model("mlp", width=8)
        >>> found = nj.symmetry.detect(model, batch=(ds.x_train[:64], ds.y_train[:64]))
        >>> rec = nj.Recorder(model, found.symmetries, ds.x_train, ds.y_train, batch_size=32, steps=20, save_every=10)
        >>> out = rec.run(hyper=nj.Hyper(0.1), key=jax.random.key(0))
        >>> out.measured["rescale"].shape, out.status_name()
        ((3, 16), 'ok')
    """

    net: Any = eqx.field(static=True)
    symmetries: dict[str, Symmetries]
    x: Array
    y: Array
    init_params: PyTree
    init_state: PyTree
    rule: AbstractRule | None
    transform: Any = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)
    steps: int = eqx.field(static=True)
    save_every: int = eqx.field(static=True)
    post_update: Callable[[PyTree, PyTree], PyTree] | None = eqx.field(static=True, default=None)
    loss: Callable[[Array, Array], Array] = eqx.field(static=True, default=cross_entropy)
    divergence_factor: float = eqx.field(static=True, default=1e4)
    sharpness_every: int = eqx.field(static=True, default=0)
    sharpness_iters: int = eqx.field(static=True, default=20)
    check_symmetries: bool = eqx.field(static=True, default=True)
    noether: bool = eqx.field(static=True, default=False)
    companions: tuple = ()
    save_params: bool = eqx.field(static=True, default=False)

    def __init__(
        self,
        model: Any,
        symmetries: Mapping[str, Symmetries],
        x: Float[ArrayLike, "n ..."],
        y: Int[ArrayLike, " n"],
        *,
        batch_size: int,
        steps: int,
        save_every: int = 1,
        optimizer: Any = None,
        post_update: Callable[[PyTree, PyTree], PyTree] | None = None,
        loss: Callable[[Array, Array], Array] = cross_entropy,
        divergence_factor: float = 1e4,
        sharpness_every: int | None = None,
        sharpness_iters: int = 20,
        check_symmetries: bool = True,
        noether: bool = False,
        companions: tuple[Companion, ...] = (),
        save_params: bool = False,
    ):
        check_optimizer(optimizer)
        self.symmetries = _check_symmetries(symmetries)
        self.net, self.init_params, self.init_state = _model_parts(model)
        x, y = jnp.asarray(x), jnp.asarray(y)
        if loss is cross_entropy:
            _validate.labels(y)
        self.x, self.y = x, y
        self.steps = _validate.integer("steps", steps)
        self.save_every = _validate.integer("save_every", save_every)
        if self.steps % self.save_every:
            raise ValueError(f"`save_every` must be a positive divisor of `steps` ({steps}), got {save_every}.")
        self.batch_size = Batches(self.x, self.y, batch_size=batch_size).batch_size
        self.rule = optimizer if isinstance(optimizer, AbstractRule) else None
        self.transform = None if isinstance(optimizer, AbstractRule) else optimizer
        self.post_update, self.loss = post_update, loss
        if not divergence_factor > 1:
            raise ValueError(f"`divergence_factor` must be > 1, got {divergence_factor}.")
        self.divergence_factor = float(divergence_factor)
        every = self.steps if sharpness_every is None else _validate.integer("sharpness_every", sharpness_every, minimum=0)
        if every and (every % self.save_every or self.steps % every):
            raise ValueError(f"`sharpness_every` must be 0 (off) or a multiple of `save_every` ({self.save_every}) that divides "
                             f"`steps` ({self.steps}), got {sharpness_every}.")
        self.sharpness_every, self.sharpness_iters = every, _validate.integer("sharpness_iters", sharpness_iters)
        self.check_symmetries = bool(check_symmetries)
        self.noether, self.save_params = bool(noether), bool(save_params)
        self.companions = tuple(companions)
        for c in self.companions:
            if not isinstance(c, Companion):
                raise TypeError(f"`companions` must hold nj.training.Companion objects, got {type(c).__name__}.")
        if (self.noether or self.companions) and self.transform is not None:
            raise ValueError("`noether` and `companions` need a learning rule (its kinetic term and hyperparameters); "
                             "pass optimizer=nj.rules.sgd(...) or another rule, not an optax transformation or a factory.")

    @property
    def num_saves(self) -> int:
        return self.steps // self.save_every + 1

    @property
    def optimizer(self) -> Any:
        return self.rule if self.rule is not None else self.transform

    def names(self) -> dict[str, list[str]]:
        """kind → the readable names of its groups."""
        return {k: group_names(s) for k, s in self.symmetries.items()}

    def run(self, params: PyTree | None = None, state: PyTree | None = None, hyper: Hyper | AbstractRule | None = None,
            key: PRNGKeyArray | None = None) -> Record:
        """Train and record. Pure: jit it, and vmap it over params, state, hyper and key.

        ``params``/``state`` default to the model's own; ``hyper`` is an ``nj.Hyper`` (η, β, λ), a rule
        of the Recorder's kind, or None (the Recorder's rule as it is; required for the default SGD and
        for a factory; must be None for a bare optax transformation); ``key`` defaults to ``key(0)``.
        """
        params = self.init_params if params is None else params
        state = self.init_state if state is None else state
        if params is None:
            raise ValueError("`params` is required: this Recorder was built from a pure network.")
        key = jax.random.key(0) if key is None else key
        resolve(self.optimizer, hyper)  # refuse a bad optimiser/hyper pairing before tracing
        _warn_cast(self.x, params)
        if self.loss is cross_entropy and is_concrete(self.y):
            logits = jax.eval_shape(lambda: self.net(params, {} if state is None else state, self.x[:1], train=True)[0])
            _validate.labels(self.y, int(logits.shape[-1]))
        if self.check_symmetries and is_concrete((params, state, hyper, key)):
            _refuse_broken_symmetries(self, params, state, key)
        return _run(self, params, {} if state is None else state, hyper, key)


def _check_symmetries(symmetries: Mapping[str, Any]) -> dict[str, Symmetries]:
    unknown = set(symmetries) - set(KINDS)
    if unknown:
        raise ValueError(f"`symmetries` keys must be among {KINDS}; got {sorted(unknown)}.")
    for kind, sym in symmetries.items():
        parts_ = sym if isinstance(sym, tuple) else (sym,)
        if not parts_ or not all(isinstance(s, MaskedSymmetry) for s in parts_):
            raise TypeError(f"`symmetries[{kind!r}]` must be a MaskedSymmetry (Translation/Scale/Rescale) or a non-empty "
                            f"tuple of them, got {type(sym).__name__}.")
        for s in parts_:
            if s.n_groups < 1:
                raise ValueError(f"`symmetries[{kind!r}]` has no groups.")
    return {k: symmetries[k] for k in KINDS if k in symmetries}


def _model_parts(model: Any):
    from ..models import LinenNetwork, Network

    if isinstance(model, Network | LinenNetwork):
        return model, None, None
    return as_model(model)


def _cast_inputs(x: Array, params: PyTree) -> Array:
    """Float inputs in the model's own parameter precision (see :func:`_warn_cast`)."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return x.astype(float_dtype(params))


def _warn_cast(x: Array, params: PyTree) -> None:
    if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != float_dtype(params):
        warnings.warn(f"noether_jax: the inputs `x` ({x.dtype}) are cast to the model's parameter dtype "
                      f"({float_dtype(params)}), so the model runs in its own precision.", stacklevel=3)


def _batches(rec: Recorder, params) -> Batches:
    return Batches(_cast_inputs(rec.x, params), rec.y, batch_size=rec.batch_size)


def _loss_fn(rec: Recorder):
    def f(p, s, batch):
        logits, new_s = rec.net(p, s, batch[0], train=True)
        return rec.loss(logits, batch[1]), new_s

    return f


@eqx.filter_jit
def _first_residuals(rec: Recorder, params, state, key):
    batch = _batches(rec, params).sample(batch_key(key, 0))
    g = jax.grad(lambda p: _loss_fn(rec)(p, state, batch)[0])(params)
    return {k: gradient_residuals(s, params, g) for k, s in rec.symmetries.items()}


def _refuse_broken_symmetries(rec: Recorder, params, state, key) -> None:
    res = _first_residuals(rec, params, state, key)
    for kind, r in res.items():
        r = np.asarray(r)
        if r.size and np.nanmax(r) > SYMMETRY_TOL:
            worst = int(np.nanargmax(r))
            name = group_names(rec.symmetries[kind])[worst]
            raise ValueError(
                f"`symmetries[{kind!r}]` is not a symmetry of this loss: group {worst} ({name}) breaks the gradient "
                f"constraint ⟨g, ξ⟩ = 0 by a relative {r[worst]:.2g} at the first batch (tolerance {SYMMETRY_TOL:g}; "
                f"{int((r > SYMMETRY_TOL).sum())} of {r.size} groups fail). Use nj.symmetry.detect to find the model's "
                "symmetries, or pass check_symmetries=False to record it anyway."
            )


@eqx.filter_jit
def _run(rec: Recorder, params, state, hyper, key) -> Record:
    resolved = resolve(rec.optimizer, hyper)
    dtype = float_dtype(params)
    rule = None if resolved.rule is None else resolved.rule.astype(dtype)
    opt = resolved.transformation if rule is None else rule.optimizer()
    laws = {k: ({} if rule is None else rule.laws(k)) for k in rec.symmetries}
    nld = rule.nld_laws() if rule is not None and "scale" in rec.symmetries else {}
    lr = jnp.asarray(rule.lr if rule is not None and hasattr(rule, "lr") else jnp.nan, dtype)
    hooks = {"laws": Conservation(rec.symmetries, laws, nld, rule, lr)}
    if rec.noether:
        hooks["noether"] = NoetherHook(rec.symmetries, rule, lr)
    if rec.save_params:
        hooks["params"] = SaveParams()
    runs = [(params, opt, rec.post_update)]
    for c in rec.companions:
        started = c.start(rule, params)
        if started is not None:  # a second run; a probe (None) only watches run 0
            runs.append((started[0], started[1], None))
        hooks[f"companion:{c.name}"] = c.hook(rule, params, run=0 if started is None else len(runs) - 1)
    engine = Engine(_loss_fn(rec), [r[1] for r in runs], _batches(rec, params), post_updates=[r[2] for r in runs],
                    hooks=hooks, divergence_factor=rec.divergence_factor)
    sharp = Sharpness(rec.sharpness_every, rec.sharpness_iters, None if rule is None else rule.edge()) \
        if rec.sharpness_every else None
    out = run(engine, [r[0] for r in runs], [state] * len(runs), key, steps=rec.steps, save_every=rec.save_every,
              sharpness=sharp)
    s = out.saved["laws"]
    r4 = s["nld"].get("eq17", s["no_scale"]) if "scale" in rec.symmetries else s["no_scale"]
    valid = jnp.asarray(True) if rule is None else jnp.all(rule.valid())
    ksb, budget = {}, {}
    if rec.noether:
        dt = rec.save_every * lr
        for k, v in out.saved["noether"].items():
            ksb[k] = v["ksb"]
            budget[k] = {part: jnp.sum(v[part][1:], axis=0) * dt for part in BUDGET_PARTS}
    companions = {c.name: out.final[f"companion:{c.name}"] if out.final[f"companion:{c.name}"] is not None
                  else out.saved[f"companion:{c.name}"] for c in rec.companions}
    return Record(
        step=out.step, loss=out.loss[0], measured=s["measured"], theory=s["theory"], identity=s["identity"], nld_r4=r4,
        grad_sq=s["grad_sq"], params=out.params[0], state=out.states[0], guard=out.guard, hyper_valid=valid,
        symmetry_residual={k: v[0] for k, v in s["residual"].items()}, lr=lr, ksb=ksb, budget=budget,
        companions=companions, params_series=out.saved.get("params"), law=resolved.label,
        names=tuple((k, tuple(v)) for k, v in rec.names().items()),
    )
