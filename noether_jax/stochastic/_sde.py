"""Stochastic learning dynamics: SGD (and heavy ball) as an Itô SDE with a low-rank diffusion (private).

A mini-batch of S examples drawn without replacement from n gives the gradient ḡ + ξ with
Cov ξ = (c/S) Σ, where Σ = (1/n) Σₑ (gₑ − ḡ)(gₑ − ḡ)ᵀ is the per-example gradient covariance and
c = (n − S)/(n − 1) the finite-population correction (c = 1 for sampling with replacement). One step is
η of continuous time, so the step noise η²(c/S)Σ is a diffusion of rate (ηc/S)Σ per unit time:

    SGD:         dθ = −(ḡ + λθ) dt + √(ηc/S) F(θ)ᵀ dW,                 W ∈ ℝⁿ
    heavy ball:  dθ = u dt,   m du = −(μu + ḡ + λθ) dt + √(ηc/S) F(θ)ᵀ dW   (noise in the velocity)

with m = η(1+β)/2, μ = 1 − β, and F = (G − ḡ)/√n the n×d factor built from the per-example
gradients G (``vmap`` of ``grad``), so Σ = FᵀF. F is applied as a linear operator ℝⁿ → θ-space
(a ``lineax.FunctionLinearOperator``); no d×d matrix is ever formed.

Because every per-example gradient satisfies a symmetry's gradient constraint ⟨gₑ, ξ_𝒜⟩ = 0, the
noise has no component along any symmetry generator: translation charges are exactly deterministic,
and scale/rescale charges gain only the Itô term (ηc/S)·Tr Σ_𝒜 (see :func:`noether_noise`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree, Scalar

from .._tree import cast_floats, float_dtype, is_concrete, tree_sq_norm
from .._validate import batch_size as check_batch_size
from .._validate import check_scalar, hyper, integer
from ..rules import sgd
from ..symmetry import MaskedSymmetry
from ..training import Batches, Engine, SaveParams, StabilityGuard, lambda_max, run

Method = Literal["scan", "diffrax"]


def _tree_mean0(t: PyTree) -> PyTree:
    return jax.tree.map(lambda a: jnp.mean(a, axis=0), t)


class SGDSDE(eqx.Module):
    """The SDE model of mini-batch SGD (β = 0) or heavy-ball SGD (β > 0) with coupled weight decay.

    Args:
        loss_fn: per-example loss ``loss_fn(params, x_i, y_i) -> scalar``; the mini-batch loss is the
            mean over the batch (the training loss is the mean over all n examples).
        x, y: the training set, with a leading example axis (n examples).
        lr: η > 0. momentum: 0 ≤ β < 1. weight_decay: coupled λ ≥ 0. batch_size: S in 1..n.
        finite_population: scale the noise by c = (n−S)/(n−1), as for batches drawn without
            replacement (:func:`noether_jax.data.sample_batch`); False gives c = 1 (with replacement).
        second_order: integrate the state (θ, u) with noise in the velocity equation. Default: True
            exactly when ``momentum`` is non-zero.

    Example:
        >>> import jax, jax.numpy as jnp, noether_jax as nj
        >>> from noether_jax.stochastic import SGDSDE
        >>> x = jnp.linspace(-1.0, 1.0, 8)[:, None]; y = 2.0 * x[:, 0]
        >>> sde = SGDSDE(lambda w, xi, yi: 0.5 * (xi @ w - yi) ** 2, x, y, lr=0.1, batch_size=2)
        >>> round(float(sde.sigma_trace(jnp.zeros(1))), 4)          # Tr Σ = Var(2xₑ²) at θ = 0
        0.5598
        >>> sde.diffusion(0.0, jnp.zeros(1)).in_size()               # noise dimension n
        8
    """

    loss_fn: Callable[..., Scalar]
    x: Array
    y: Array
    lr: Array
    momentum: Array
    weight_decay: Array
    batch_size: int = eqx.field(static=True)
    finite_population: bool = eqx.field(static=True, default=True)
    second_order: bool = eqx.field(static=True, default=False)

    def __init__(
        self,
        loss_fn: Callable[..., Scalar],
        x: ArrayLike,
        y: ArrayLike,
        *,
        lr: ArrayLike,
        momentum: ArrayLike = 0.0,
        weight_decay: ArrayLike = 0.0,
        batch_size: int,
        finite_population: bool = True,
        second_order: bool | None = None,
    ):
        self.loss_fn = loss_fn
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        n = int(self.x.shape[0]) if self.x.ndim else 0
        if n < 1 or (self.y.ndim == 0 or int(self.y.shape[0]) != n):
            raise ValueError(f"`x` and `y` must share a leading example axis of length ≥ 1; got shapes {self.x.shape} and {self.y.shape}.")
        self.batch_size = check_batch_size(batch_size, n)
        self.lr = hyper("lr", lr)
        self.momentum = hyper("momentum", momentum)
        self.weight_decay = hyper("weight_decay", weight_decay)
        self.finite_population = bool(finite_population)
        if second_order is None:
            if not is_concrete(self.momentum):
                raise ValueError("pass `second_order` explicitly when `momentum` is traced (inside jit/vmap).")
            second_order = bool(np.any(np.asarray(self.momentum) != 0))
        self.second_order = bool(second_order)

    # --- constants ----------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def population_factor(self) -> float:
        """c = (n−S)/(n−1) without replacement (1 with replacement, or when n = 1)."""
        n, s = self.n, self.batch_size
        return (n - s) / (n - 1) if (self.finite_population and n > 1) else 1.0

    @property
    def noise_scale(self) -> Array:
        """√(ηc/S): the diffusion is noise_scale · Fᵀ with Σ = FᵀF."""
        return jnp.sqrt(self.lr * self.population_factor / self.batch_size)

    @property
    def mass(self) -> Array:
        """m = η(1+β)/2 (second-order model)."""
        return self.lr * (1.0 + self.momentum) / 2.0

    @property
    def friction(self) -> Array:
        """μ = 1 − β."""
        return 1.0 - self.momentum

    def rule(self):
        """The matching discrete learning rule (:func:`noether_jax.rules.sgd`)."""
        return sgd(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    # --- gradients ------------------------------------------------------------------------------
    def loss(self, params: PyTree) -> Scalar:
        """The training loss (mean over all n examples), without weight decay."""
        return jnp.mean(jax.vmap(lambda xi, yi: check_scalar(self.loss_fn(params, xi, yi), "`loss_fn`"))(self.x, self.y))

    def batch_loss(self, params: PyTree, x: Array, y: Array) -> Scalar:
        return jnp.mean(jax.vmap(lambda xi, yi: self.loss_fn(params, xi, yi))(x, y))

    def per_example_grads(self, params: PyTree) -> PyTree:
        """∇ℓₑ(θ) for every example: a pytree like ``params`` with a leading axis of length n."""
        return jax.vmap(jax.grad(self.loss_fn), in_axes=(None, 0, 0))(params, self.x, self.y)

    def noise_factor(self, params: PyTree) -> tuple[PyTree, PyTree]:
        """(ḡ, F): the mean gradient and the centred factor F = (G − ḡ)/√n, so that Σ = FᵀF."""
        g = self.per_example_grads(params)
        gbar = _tree_mean0(g)
        f = jax.tree.map(lambda a, m: (a - m) / math.sqrt(self.n), g, gbar)
        return gbar, f

    def sigma_trace(self, params: PyTree) -> Scalar:
        """Tr Σ(θ) = |F|²_F."""
        return tree_sq_norm(self.noise_factor(params)[1])

    # --- the SDE --------------------------------------------------------------------------------
    def _force(self, params, gbar):
        return jax.tree.map(lambda g, p: -(g + self.weight_decay * p), gbar, params)

    def _split(self, state):
        return state if self.second_order else (state, None)

    def drift_and_factor(self, state: PyTree) -> tuple[PyTree, PyTree]:
        """The drift f(state) and the per-example noise factor F(θ), from one vmapped gradient."""
        params, u = self._split(state)
        gbar, f = self.noise_factor(params)
        force = self._force(params, gbar)
        if not self.second_order:
            return force, f
        du = jax.tree.map(lambda fo, ui: (fo - self.friction * ui) / self.mass, force, u)
        return (u, du), f

    def _apply(self, params, f, w):
        """The state-space tangent of the diffusion applied to w ∈ ℝⁿ (noise_scale · Fᵀw)."""
        s = self.noise_scale if not self.second_order else self.noise_scale / self.mass
        dth = jax.tree.map(lambda fl: s * jnp.tensordot(w, fl, axes=1), f)
        if not self.second_order:
            return dth
        return (jax.tree.map(jnp.zeros_like, params), dth)

    def drift(self, t: ArrayLike, state: PyTree, args: Any = None) -> PyTree:
        """f(t, state): −(ḡ + λθ) for SGD; (u, (−μu − ḡ − λθ)/m) for heavy ball."""
        return self.drift_and_factor(state)[0]

    def diffusion(self, t: ArrayLike, state: PyTree, args: Any = None) -> lx.FunctionLinearOperator:
        """The diffusion as a linear operator ℝⁿ → state space (low rank: never a d×d matrix)."""
        params, _ = self._split(state)
        _, f = self.noise_factor(params)
        dtype = jnp.result_type(*jax.tree.leaves(params), float)
        return lx.FunctionLinearOperator(lambda w: self._apply(params, f, w), jax.ShapeDtypeStruct((self.n,), dtype))

    def initial_state(self, params: PyTree, velocity: PyTree | None = None) -> PyTree:
        """θ for SGD; (θ, u) for heavy ball, with u(0) = −(ḡ + λθ)/(1+β) (a fresh optimiser) unless given."""
        if not self.second_order:
            return params
        if velocity is None:
            g = jax.grad(self.loss)(params)
            velocity = jax.tree.map(lambda gi, p: -(gi + self.weight_decay * p) / (1.0 + self.momentum), g, params)
        return (params, velocity)


# --------------------------------------------------------------------------------------------- paths
class Paths(eqx.Module):
    """Save times and states of one path (leaves: (S, ...)) or an ensemble (leaves: (N, S, ...)).

    ``params`` are the parameters θ; ``velocity`` is u = θ̇ for a second-order SDE (None otherwise).
    ``guard`` is where the SDE model of SGD holds (:class:`~noether_jax.stochastic.StabilityGuard`):
    ``diverged_step`` is the first step (at save resolution) whose loss or parameters are not finite or
    whose training loss exceeds 10⁴ × the first; λ_max of the full-batch Hessian of ℒ + (λ/2)|θ|² at the
    first and the last save point is compared with 2(1+β) (``guard.edge``; per path in an ensemble).
    Beyond the edge the discrete run it models is unstable and the SDE describes nothing.
    """

    ts: Float[Array, "*N S"]
    params: PyTree
    velocity: PyTree = None
    guard: StabilityGuard | None = None


DIVERGENCE_FACTOR = 1e4


def _path_guard(sde: SGDSDE, params: PyTree, save_every: int, key: PRNGKeyArray, iters: int = 20) -> StabilityGuard:
    """The divergence and edge-of-stability flags of one saved path (leaves (S, ...))."""
    losses = jax.vmap(sde.loss)(params)
    finite = jax.vmap(lambda p: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(p)])))(params)
    bad = ~finite | ~jnp.isfinite(losses) | (losses > DIVERGENCE_FACTOR * jnp.maximum(losses[0], jnp.finfo(losses.dtype).tiny))
    first = jnp.argmax(bad)
    diverged = jnp.where(jnp.any(bad), first * save_every, -1).astype(jnp.int32)
    n_saves = losses.shape[0]
    at = jnp.asarray([0, n_saves - 1], jnp.int32)
    ends = jax.tree.map(lambda x: x[at], params)
    lam = jax.vmap(lambda p: lambda_max(sde.loss, p, weight_decay=sde.weight_decay, key=key, iters=iters))(ends)
    return StabilityGuard.from_edge(lam, sde.rule().edge(), at * save_every, diverged)


def _dt(dt: Any) -> float:
    """A concrete, finite, positive step (it sets the number of steps, a static shape)."""
    if isinstance(dt, bool) or not is_concrete(dt) or np.ndim(dt) != 0:
        raise TypeError(f"`dt` must be a positive number known before tracing (it sets the number of steps), got {dt!r}.")
    dt = float(dt)
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"`dt` must be finite and > 0, got {dt}; the default is η/4.")
    return dt


def _grid(t1, dt, save_every):
    if not (math.isfinite(float(t1)) and float(t1) > 0):
        raise ValueError(f"`t1` must be finite and > 0, got {float(t1)}.")
    steps = int(round(float(t1) / float(dt)))
    if steps < 1 or not math.isclose(steps * float(dt), float(t1), rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(f"`t1` ({t1}) must be a positive integer multiple of `dt` ({dt}).")
    if not isinstance(save_every, int) or save_every < 1 or steps % save_every:
        raise ValueError(f"`save_every` must be a positive int dividing the number of steps ({steps}), got {save_every}.")
    return steps


def _scan_em(sde: SGDSDE, state0, key, dt, steps, save_every):
    """Euler–Maruyama in a lax.scan: x ← x + f dt + B(x) √dt z, z ~ N(0, Iₙ) from fold_in(key, k)."""
    params0, _ = sde._split(state0)
    dtype = jnp.result_type(*jax.tree.leaves(params0), float)
    sqdt = jnp.sqrt(jnp.asarray(dt, dtype))

    def step(state, k):
        drift, f = sde.drift_and_factor(state)
        params, _ = sde._split(state)
        z = jax.random.normal(jax.random.fold_in(key, k), (sde.n,), dtype)
        noise = sde._apply(params, f, z)
        # in the state's own precision (a float32 model on float64 data stays float32, as in training)
        new = jax.tree.map(lambda s, a, b: (s + dt * a + sqdt * b).astype(s.dtype), state, drift, noise)
        return new, None

    def block(state, j):
        state, _ = jax.lax.scan(step, state, j * save_every + jnp.arange(save_every))
        return state, state

    _, saved = jax.lax.scan(block, state0, jnp.arange(steps // save_every))
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), state0, saved)


def _diffrax_solve(sde: SGDSDE, state0, key, dt, steps, save_every, solver, brownian):
    params0, _ = sde._split(state0)
    dtype = jnp.result_type(*jax.tree.leaves(params0), float)
    t1 = steps * dt
    shape = jax.ShapeDtypeStruct((sde.n,), dtype)
    if brownian == "virtual":
        bm = diffrax.VirtualBrownianTree(0.0, t1, tol=dt / 2, shape=shape, key=key)
    elif brownian == "unsafe":
        bm = diffrax.UnsafeBrownianPath(shape=shape, key=key)
    else:
        raise ValueError(f"`brownian` must be 'virtual' or 'unsafe', got {brownian!r}.")
    terms = diffrax.MultiTerm(diffrax.ODETerm(sde.drift), diffrax.ControlTerm(sde.diffusion, bm))
    ts = jnp.arange(steps // save_every + 1, dtype=dtype) * (save_every * dt)
    sol = diffrax.diffeqsolve(
        terms, solver if solver is not None else diffrax.Euler(), 0.0, t1, dt, state0,
        saveat=diffrax.SaveAt(ts=ts), stepsize_controller=diffrax.ConstantStepSize(), max_steps=steps + 1,
        # an UnsafeBrownianPath cannot be replayed backwards: forward-mode differentiation only
        adjoint=diffrax.ForwardMode() if brownian == "unsafe" else diffrax.RecursiveCheckpointAdjoint(),
    )
    return sol.ys


def sde_path(
    sde: SGDSDE,
    params: PyTree,
    t1: float,
    key: PRNGKeyArray,
    *,
    dt: float | None = None,
    save_every: int = 1,
    velocity: PyTree | None = None,
    method: Method = "scan",
    solver: diffrax.AbstractSolver | None = None,
    brownian: Literal["virtual", "unsafe"] = "virtual",
) -> Paths:
    """One path of the SDE from θ(0) = ``params`` to ``t1`` with fixed steps ``dt`` (default η/4).

    ``method="scan"`` (default; the faster on CPU, see benchmarks/README.md "Issue 8") is Itô
    Euler–Maruyama in a ``lax.scan`` with increments from ``fold_in(key, step)``. ``method="diffrax"``
    solves the same Itô SDE with ``diffrax.diffeqsolve`` (``solver`` default ``diffrax.Euler()``;
    ``brownian="virtual"`` is a ``VirtualBrownianTree``, reproducible and differentiable; ``"unsafe"``
    an ``UnsafeBrownianPath``, reproducible, cheaper, and differentiable in forward mode only).
    Note: Euler–Heun, Heun and Midpoint converge to the Stratonovich SDE, which differs here because
    Σ depends on θ; use SRA1/ShARK only when Σ is constant (additive noise).
    Both methods are reproducible from ``key`` and differentiable.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from noether_jax.stochastic import SGDSDE, sde_path
        >>> x = jnp.linspace(-1.0, 1.0, 8)[:, None]; y = 2.0 * x[:, 0]
        >>> sde = SGDSDE(lambda w, xi, yi: 0.5 * (xi @ w - yi) ** 2, x, y, lr=0.1, batch_size=2)
        >>> p = sde_path(sde, jnp.zeros(1), 1.0, jax.random.key(0), save_every=5)
        >>> p.ts.shape, p.params.shape
        ((9,), (9, 1))
    """
    dt = float(sde.lr) / 4.0 if dt is None else _dt(dt)
    steps = _grid(t1, dt, save_every)
    if method not in ("scan", "diffrax"):
        raise ValueError(f"`method` must be 'scan' or 'diffrax', got {method!r}.")
    if method == "diffrax" and brownian not in ("virtual", "unsafe"):
        raise ValueError(f"`brownian` must be 'virtual' or 'unsafe', got {brownian!r}.")
    dtype, default = float_dtype(params), jnp.result_type(float)
    if method == "diffrax" and dtype != default:  # diffrax's times are in the default float and promote the state
        raise ValueError(f"method='diffrax' needs `params` in JAX's default float dtype ({default}), got {dtype}: cast "
                         "them (e.g. jax.tree.map(lambda a: a.astype(jnp.float64), params)), or use method='scan', "
                         "which runs in the parameters' own dtype.")
    return _sde_path(_in_params_dtype(sde, params), params, key, velocity, solver, dt, steps, save_every, method, brownian)


def _in_params_dtype(sde: SGDSDE, params: PyTree) -> SGDSDE:
    """The SDE with float inputs in the parameters' float dtype, so a float32 model on float64 data runs in float32
    (as the Recorder runs it) instead of failing on the solver's dtypes."""
    return eqx.tree_at(lambda s: s.x, sde, cast_floats(sde.x, float_dtype(params)))


@eqx.filter_jit  # one program per (SDE, shapes, static options): a second call with new values compiles nothing
def _sde_path(sde, params, key, velocity, solver, dt, steps, save_every, method, brownian):
    state0 = sde.initial_state(params, velocity)
    if method == "scan":
        ys = _scan_em(sde, state0, key, dt, steps, save_every)
    else:
        ys = _diffrax_solve(sde, state0, key, dt, steps, save_every, solver, brownian)
    dtype = jnp.result_type(*jax.tree.leaves(params), float)
    ts = jnp.arange(steps // save_every + 1, dtype=dtype) * (save_every * dt)
    th, u = sde._split(ys)
    return Paths(ts, th, u, _path_guard(sde, th, save_every, jax.random.fold_in(key, 2**31 - 1)))


@eqx.filter_jit
def _sde_ensemble(sde, params, keys, t1, dt, save_every, velocity, method, solver, brownian):
    return jax.vmap(lambda k: sde_path(sde, params, t1, k, dt=dt, save_every=save_every, velocity=velocity,
                                       method=method, solver=solver, brownian=brownian))(keys)


def sde_ensemble(
    sde: SGDSDE,
    params: PyTree,
    t1: float,
    keys: PRNGKeyArray,
    *,
    dt: float | None = None,
    save_every: int = 1,
    velocity: PyTree | None = None,
    method: Method = "scan",
    solver: diffrax.AbstractSolver | None = None,
    brownian: Literal["virtual", "unsafe"] = "virtual",
) -> Paths:
    """An ensemble of SDE paths from one θ(0): :func:`sde_path` vmapped over ``keys`` (shape (N,)), jitted.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from noether_jax.stochastic import SGDSDE, sde_ensemble
        >>> x = jnp.linspace(-1.0, 1.0, 8)[:, None]; y = 2.0 * x[:, 0]
        >>> sde = SGDSDE(lambda w, xi, yi: 0.5 * (xi @ w - yi) ** 2, x, y, lr=0.1, batch_size=2)
        >>> ens = sde_ensemble(sde, jnp.zeros(1), 1.0, jax.random.split(jax.random.key(0), 16), save_every=10)
        >>> ens.params.shape
        (16, 5, 1)
    """
    dt = float(sde.lr) / 4.0 if dt is None else _dt(dt)
    _grid(t1, dt, save_every)
    return _sde_ensemble(sde, params, keys, float(t1), dt, save_every, velocity, method, solver, brownian)


def sgd_path(sde: SGDSDE, params: PyTree, steps: int, key: PRNGKeyArray, *, save_every: int = 1) -> Paths:
    """One discrete run of the rule's optax optimiser on PRNG mini-batches of ``sde.batch_size``
    (the library's training engine). Times are t = nη; ``velocity`` is None.
    """
    integer("steps", steps)
    integer("save_every", save_every)
    return _sgd_path(_in_params_dtype(sde, params), params, key, steps, save_every)


@eqx.filter_jit  # the engine's loss is a new closure per call: jit on the SDE, so a second call compiles nothing
def _sgd_path(sde, params, key, steps, save_every):
    rule = sde.rule().astype(float_dtype(params))  # the optimiser in the model's dtype
    engine = Engine(lambda p, s, b: (sde.batch_loss(p, *b), s), [rule.optimizer()],
                    Batches(sde.x, sde.y, batch_size=sde.batch_size), hooks={"params": SaveParams()})
    out = run(engine, [params], [{}], key, steps=steps, save_every=save_every)
    dtype = jnp.result_type(*jax.tree.leaves(params), float)
    ts = jnp.arange(steps // save_every + 1, dtype=dtype) * save_every * sde.lr
    return Paths(ts, out.saved["params"], None, out.guard)  # the engine's guard: the divergence of the run


@eqx.filter_jit
def _sgd_ensemble(sde, params, keys, steps, save_every):
    return jax.vmap(lambda k: _sgd_path(sde, params, k, steps, save_every))(keys)


def sgd_ensemble(sde: SGDSDE, params: PyTree, steps: int, keys: PRNGKeyArray, *, save_every: int = 1) -> Paths:
    """An ensemble of discrete SGD runs (the same η, β, λ, batch size S as ``sde``), vmapped over ``keys``.

    Each run is ``sde.rule().optimizer()`` (optax) on mini-batches from
    :func:`noether_jax.data.sample_batch`; t = nη.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from noether_jax.stochastic import SGDSDE, sgd_ensemble
        >>> x = jnp.linspace(-1.0, 1.0, 8)[:, None]; y = 2.0 * x[:, 0]
        >>> sde = SGDSDE(lambda w, xi, yi: 0.5 * (xi @ w - yi) ** 2, x, y, lr=0.1, batch_size=2)
        >>> ens = sgd_ensemble(sde, jnp.zeros(1), 10, jax.random.split(jax.random.key(0), 16), save_every=5)
        >>> ens.ts[0].tolist(), ens.params.shape
        ([0.0, 0.5, 1.0], (16, 3, 1))
    """
    integer("steps", steps)
    integer("save_every", save_every)
    if steps % save_every:
        raise ValueError(f"`save_every` ({save_every}) must divide `steps` ({steps}).")
    return _sgd_ensemble(sde, params, keys, steps, save_every)


# --------------------------------------------------------------------------------------------- statistics
class EnsembleStats(eqx.Module):
    """Mean and variance over an ensemble (axis 0) at every save point.

    Attributes:
        ts: (S,) save times. n_paths: N.
        loss_mean, loss_var: (S,) the training loss ℒ(θ) (without weight decay).
        params_mean, params_var: pytrees with leaves (S, ...).
        charge_mean, charge_var: (S, G) the symmetry's quantity Q = ``sym.pair(θ, θ)`` per group
            (⟨θ_𝒜, 𝟙⟩ translation, |θ_𝒜|² scale, |θ_𝒜₁|² − |θ_𝒜₂|² rescale); None without a symmetry.
    """

    ts: Float[Array, " S"]
    n_paths: int = eqx.field(static=True)
    loss_mean: Float[Array, " S"]
    loss_var: Float[Array, " S"]
    params_mean: PyTree
    params_var: PyTree
    charge_mean: Float[Array, "S G"] | None = None
    charge_var: Float[Array, "S G"] | None = None

    def standard_error(self, which: str = "loss") -> Array:
        """√(var/N) of ``loss``, ``charge`` (or a ``params`` pytree): the Monte Carlo error of the mean."""
        var = {"loss": self.loss_var, "charge": self.charge_var, "params": self.params_var}[which]
        return jax.tree.map(lambda v: jnp.sqrt(v / self.n_paths), var)


def charge(sym: MaskedSymmetry, params: PyTree) -> Float[Array, " G"]:
    """Q_g = Σ_{i∈g} (cᵢθᵢ² + dᵢθᵢ) = ``sym.pair(θ, θ)``: the quantity gradient flow conserves (λ = 0)."""
    return sym.pair(params, params)


def ensemble_stats(paths: Paths, sde: SGDSDE, symmetry: MaskedSymmetry | None = None) -> EnsembleStats:
    """Mean and variance over the ensemble of the loss, of every parameter, and of a symmetry's charges.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from noether_jax.stochastic import SGDSDE, sgd_ensemble, ensemble_stats
        >>> x = jnp.linspace(-1.0, 1.0, 8)[:, None]; y = 2.0 * x[:, 0]
        >>> sde = SGDSDE(lambda w, xi, yi: 0.5 * (xi @ w - yi) ** 2, x, y, lr=0.1, batch_size=2)
        >>> ens = sgd_ensemble(sde, jnp.zeros(1), 10, jax.random.split(jax.random.key(0), 64), save_every=5)
        >>> st = ensemble_stats(ens, sde)
        >>> st.loss_mean.shape, bool(st.loss_mean[-1] < st.loss_mean[0])
        ((3,), True)
    """
    th = paths.params
    n_paths = int(jax.tree.leaves(th)[0].shape[0])
    per = jax.vmap(jax.vmap(sde.loss))(th)
    mean = lambda a: jnp.mean(a, axis=0)  # noqa: E731
    var = lambda a: jnp.var(a, axis=0, ddof=1) if n_paths > 1 else jnp.zeros_like(a[0])  # noqa: E731
    q = None if symmetry is None else jax.vmap(jax.vmap(lambda p: charge(symmetry, p)))(th)
    return EnsembleStats(
        paths.ts[0] if paths.ts.ndim == 2 else paths.ts, n_paths, mean(per), var(per),
        jax.tree.map(mean, th), jax.tree.map(var, th),
        None if q is None else mean(q), None if q is None else var(q),
    )


# --------------------------------------------------------------------------------------------- Noether under noise
class NoiseCharge(eqx.Module):
    """Itô calculus of a symmetry's charges Q_g(θ) (:func:`charge`) under the SDE, per group, per unit time.

    Attributes:
        charge: Q_g(θ).
        decay: −λ⟨∇Q_g, θ⟩, i.e. −2λQ (scale, rescale) or −λQ (translation).
        ito: ½Tr(∇²Q_g BBᵀ) = (ηc/S)·Σ_{i∈g} cᵢ Σᵢᵢ: (ηc/S)Tr Σ_𝒜 for scale, (ηc/S)(TrΣ_𝒜₁ − TrΣ_𝒜₂)
            for rescale, 0 for translation.
        discretisation: η Σ_{i∈g} cᵢ ḡᵢ²: the O(η) term of the discrete step (the modified flow's
            η|g_𝒜|² with the full gradient).
        quadratic_variation: |Bᵀ∇Q_g|², the rate of d⟨Q⟩; zero whenever the per-example gradients obey
            the gradient constraint (no noise along a symmetry).
        sde_drift: decay + ito, the Itô drift of Q under the SDE (dE[Q]/dt = E[sde_drift]).
        sgd_drift: decay + ito + discretisation, the expected drift of the discrete run per unit time,
            to O(η): E|g_B,𝒜|² = |ḡ_𝒜|² + (c/S)TrΣ_𝒜.

    dVar[Q]/dt = E[quadratic_variation] + 2 Cov(Q, sde_drift).
    For β > 0 the rates are those of the overdamped limit (drift ÷ μ, diffusion ÷ μ).
    """

    charge: Float[Array, " G"]
    decay: Float[Array, " G"]
    ito: Float[Array, " G"]
    discretisation: Float[Array, " G"]
    quadratic_variation: Float[Array, " G"]

    @property
    def sde_drift(self) -> Array:
        return self.decay + self.ito

    @property
    def sgd_drift(self) -> Array:
        return self.decay + self.ito + self.discretisation


def noether_noise(sde: SGDSDE, params: PyTree, symmetry: MaskedSymmetry) -> NoiseCharge:
    """The drift of E[Q] and the diffusion of Q for every group of ``symmetry`` at θ (see :class:`NoiseCharge`).

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> from noether_jax.stochastic import SGDSDE, noether_noise
        >>> x = jnp.array([[1.0, 0.5], [-0.3, 2.0], [0.2, -1.0], [1.5, 0.1]]); y = jnp.array([1.0, -1.0, 0.5, 0.0])
        >>> f = lambda p, xi, yi: (jnp.tanh(xi @ p["w"] / jnp.linalg.norm(p["w"])) - yi) ** 2
        >>> sde = SGDSDE(f, x, y, lr=0.1, batch_size=2)
        >>> nn = noether_noise(sde, {"w": jnp.array([1.0, 1.0])}, nj.symmetry.Scale({"w": True}))
        >>> bool(nn.ito[0] > 0), abs(float(nn.quadratic_variation[0])) < 1e-20
        (True, True)
    """
    if not isinstance(symmetry, MaskedSymmetry):
        raise TypeError("noether_noise needs a masked symmetry (Translation, Scale or Rescale): its charge is a "
                        f"quadratic Σ cᵢθᵢ² + dᵢθᵢ; got {type(symmetry).__name__}.")
    gbar, f = sde.noise_factor(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    ones = jax.tree.map(jnp.ones_like, params)

    def csum(v):  # Σ_{i∈g} cᵢvᵢ² = pair(1, v²) − pair(0, v²), since pair(q, w) = Σ wᵢ(cᵢqᵢ + dᵢ)
        v2 = jax.tree.map(jnp.square, v)
        return symmetry.pair(ones, v2) - symmetry.pair(zeros, v2)

    q = charge(symmetry, params)
    decay = -sde.weight_decay * (q + csum(params))
    s2 = sde.noise_scale**2
    ito = s2 * jnp.sum(jax.vmap(csum)(f), axis=0)
    disc = sde.lr * csum(gbar)
    # ⟨fₑ, ∇Q_g⟩ = Σ fₑᵢ(2cᵢθᵢ + dᵢ) = 2 pair(θ, fₑ) − pair(0, fₑ)
    proj = jax.vmap(lambda fe: 2.0 * symmetry.pair(params, fe) - symmetry.pair(zeros, fe))(f)
    qv = s2 * jnp.sum(proj**2, axis=0)
    if sde.second_order:
        mu = sde.friction
        decay, ito, disc, qv = decay / mu, ito / mu**2, disc / mu**2, qv / mu**2
    return NoiseCharge(q, decay, ito, disc, qv)


def predicted_charge_mean(paths: Paths, sde: SGDSDE, symmetry: MaskedSymmetry, *, discrete: bool = True) -> Float[Array, "S G"]:
    """E[Q(t)] predicted by integrating the ensemble average of the drift along ``paths`` (left Riemann sum).

    ``discrete=True`` uses ``sgd_drift`` (the expectation for the discrete runs, to O(η)); False uses the
    SDE's Itô drift. Save points should be every step (``save_every=1``) for the sum to be accurate.
    """
    rates = jax.vmap(jax.vmap(lambda p: noether_noise(sde, p, symmetry)))(paths.params)
    drift = rates.sgd_drift if discrete else rates.sde_drift
    ts = paths.ts[0] if paths.ts.ndim == 2 else paths.ts
    mean_rate = jnp.mean(drift, axis=0)  # (S, G)
    q0 = jnp.mean(rates.charge[:, 0], axis=0)
    inc = jnp.cumsum(mean_rate[:-1] * jnp.diff(ts)[:, None], axis=0)
    return jnp.concatenate([q0[None], q0[None] + inc])
