"""Adaptive learning rules: RMSProp, Adam and AdamW as optax optimisers with continuous models (private).

Continuous time counts one step as η (t = n η). An exponential moving average with decay b,
``aₙ₊₁ = b aₙ + (1−b) xₙ``, becomes the relaxation ȧ = c (x − a) with rate c = (1−b)/η; its kernel has
accumulated the weight w(t) = 1 − e^{−c t} (ẇ = c(1 − w)), the continuous counterpart of optax's 1 − bⁿ.
Bias correction divides by w, so a constant input is reproduced exactly at every t. The flows are

* RMSProp: ν̇ = c₂(g² − ν),  θ̇ = −g / √(ν + ε)                      (optax ``rmsprop`` defaults);
* Adam:    μ̇ = c₁(g − μ),  ν̇ = c₂(g² − ν),  θ̇ = −μ̂ / (√ν̂ + ε),   μ̂ = μ/w₁, ν̂ = ν/w₂;
* AdamW:   the same with θ̇ = −(μ̂ / (√ν̂ + ε) + λθ) (optax multiplies the decoupled decay by η).

The accumulators (μ, ν, w₁, w₂) are part of the flow's state: ``nj.simulate(rule.flow(loss), params,
t1=T, ts=ts)`` starts them fresh (μ = ν = 0, w = 0, as optax does) or from a warm optax state
(``rule.flow(loss, opt_state)``), and returns them as ``Trajectory.aux``. At w = 0 the bias-corrected
moments take their limits μ̂ = g, ν̂ = g². These are first-order models: the error against the discrete
optimiser at fixed t falls as O(η).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, PyTree, Scalar

from .._tree import is_concrete
from .._validate import check_scalar, hyper, valid
from ..mechanics import AbstractDynamics
from ..mechanics.kinetic import Diagonal
from ._base import AbstractRule, EdgeOfStability, Hyper

class RMSAccumulators(NamedTuple):
    """RMSProp's continuous state: ν, the moving average of g² (optax's ``nu``)."""

    nu: PyTree


class AdamAccumulators(NamedTuple):
    """Adam's continuous state: the moving averages μ of g and ν of g² (optax's ``mu`` and ``nu``) and the
    weights w₁, w₂ their kernels have accumulated (optax's 1 − b₁ⁿ and 1 − b₂ⁿ; bias correction divides by them)."""

    mu: PyTree
    nu: PyTree
    w_mu: Array
    w_nu: Array


def _safe_ratio(a: Array, w: Array, limit: Array) -> Array:
    """a / w, and ``limit`` where w = 0 (the fresh state, where a = 0 too)."""
    pos = w > 0
    return jnp.where(pos, a / jnp.where(pos, w, 1.0), limit)


def _tree_get(opt_state: Any, name: str, what: str) -> Any:
    out = optax.tree_utils.tree_get(opt_state, name)
    if out is None:
        raise ValueError(f"`opt_state` holds no `{name}`: pass the state of rule.optimizer() (an optax {what} state), "
                         "or opt_state=None for a fresh optimiser.")
    return out


class AbstractAdaptive(AbstractRule):
    """What RMSProp, Adam and AdamW share: a flow whose state carries the accumulators, no closed-form law."""

    lr: eqx.AbstractVar[Array]
    eps: eqx.AbstractVar[Array]

    def law_label(self) -> str:
        return (f"no closed-form law for {self.name}: its accumulator metric breaks the Euclidean conservation laws "
                "(measure them with nj.charge_budget(rule.flow(loss), sym, params, aux=...))")

    def time(self, step: ArrayLike) -> Array:
        """Continuous time of a discrete step: t = n η."""
        return jnp.asarray(step) * self.lr

    def flow(self, loss: Callable[[PyTree], Scalar], opt_state: Any = None) -> AdaptiveFlow:
        """The continuous model, a first-order flow of (θ, accumulators); ``opt_state``: a warm start."""
        return AdaptiveFlow(self, loss, opt_state)

    def initial_velocity(self, params: PyTree, grad: PyTree, opt_state: Any = None) -> PyTree:
        """θ̇(0) of the flow from ``grad`` (the first gradient) and the accumulators of ``opt_state`` (fresh: None)."""
        return self.velocity(params, self.initial_state(params, opt_state), grad)

    def kinetic(self, aux: Any = None) -> Diagonal:
        """K = ½ θ̇ᵀ M θ̇ with the diagonal metric M = P/c₁ of the accumulators (P = √ν̂ + ε, the preconditioner;
        c₁ the damping of the moving average of g): the Lagrangian whose Euler–Lagrange equation, with the
        metric frozen at ``aux``, is the flow (see :meth:`lagrangian`). ``aux`` is required."""
        if aux is None:
            raise ValueError(f"the metric of {self.name} depends on its accumulators: pass aux= (e.g. "
                             f"rule.initial_state(params, opt_state), or Trajectory.aux at one time).")
        return Diagonal(jax.tree.map(lambda p: p / self.damping, self.metric_diagonal(aux)))

    def edge_of(self, threshold: Array, label: str) -> EdgeOfStability:
        return EdgeOfStability(self.lr, threshold, jnp.zeros_like(self.lr), _Preconditioner(self), label)

    # implemented by each rule
    def initial_state(self, params: PyTree, opt_state: Any = None) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def velocity(self, params: PyTree, aux: Any, grad: PyTree) -> PyTree:  # pragma: no cover - interface
        raise NotImplementedError

    def aux_rate(self, aux: Any, grad: PyTree) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def metric_diagonal(self, aux: Any, grad: PyTree | None = None) -> PyTree:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def damping(self) -> Array:  # pragma: no cover - interface
        raise NotImplementedError


class _Preconditioner:
    """The guard's P = √ν̂ + ε of an adaptive rule from its optax state. A fresh state (no step yet) has no
    ν̂: the first step will divide by |g| + ε, so the guard passes the batch gradient (``needs_grad``)."""

    needs_grad = True

    def __init__(self, rule: AbstractAdaptive):
        self.rule = rule

    def __call__(self, params: PyTree, opt_state: Any, grad: PyTree | None = None) -> PyTree:
        return self.rule.metric_diagonal(self.rule.initial_state(params, opt_state), grad)


class RMSProp(AbstractAdaptive):
    """RMSProp (optax ``rmsprop`` with its defaults: no momentum, ε inside the square root, ν₀ = 0).

    Example:
        >>> import noether_jax as nj
        >>> rule = nj.rules.rmsprop(lr=1e-3)
        >>> float(rule.decay), float(rule.edge().threshold)
        (0.9, 2.0)
    """

    name: ClassVar[str] = "rmsprop"
    lr: Array
    decay: Array
    eps: Array
    unused: Array

    def __init__(self, *, lr: ArrayLike, decay: ArrayLike = 0.9, eps: ArrayLike = 1e-8):
        self.lr = hyper("lr", lr)
        self.decay = hyper("decay", decay)
        self.eps = hyper("eps", eps)
        self.unused = jnp.zeros_like(self.lr)

    def optimizer(self) -> optax.GradientTransformation:
        """``optax.rmsprop(lr, decay, eps)``."""
        return optax.rmsprop(self.lr, decay=self.decay, eps=self.eps)

    def with_hyper(self, hyper_: Hyper) -> RMSProp:
        """η from ``hyper``; RMSProp has no momentum and no weight decay, so those must be 0 (see :meth:`valid`)."""
        unused = _unused(self.name, hyper_, ("momentum", "weight_decay"))
        return eqx.tree_at(lambda r: (r.lr, r.unused), self, (jnp.asarray(hyper_.lr), unused))

    def valid(self) -> Array:
        """Traced-safe: η > 0, decay ∈ [0, 1), ε > 0 (and no momentum or weight decay swept onto it)."""
        return valid("lr", self.lr) & valid("decay", self.decay) & valid("eps", self.eps) & (self.unused == 0)

    def edge(self) -> EdgeOfStability:
        """η·λ_max(P^{-1/2} H P^{-1/2}) > 2 with P = √(ν + ε): gradient descent in the frozen metric."""
        return self.edge_of(jnp.full_like(self.lr, 2.0), "2 on the preconditioned sharpness (RMSProp)")

    @property
    def damping(self) -> Array:
        """c = (1 − decay)/η, the rate of the moving average ν (RMSProp has no moving average of g: the
        metric kinetic term is then the overdamped one, with this as a nominal scale)."""
        return (1.0 - self.decay) / self.lr

    def initial_state(self, params: PyTree, opt_state: Any = None) -> RMSAccumulators:
        """ν of a warm optax ``rmsprop`` state, or ν = 0 (fresh, as optax starts)."""
        if opt_state is None:
            return RMSAccumulators(jax.tree.map(jnp.zeros_like, params))
        return RMSAccumulators(_tree_get(opt_state, "nu", "rmsprop"))

    def metric_diagonal(self, aux: RMSAccumulators, grad: PyTree | None = None) -> PyTree:
        """P = √(ν + ε); with ``grad``, the divisor of the step that gradient takes, √(ρν + (1−ρ)g² + ε)."""
        nu = aux.nu if grad is None else jax.tree.map(lambda n, g: self.decay * n + (1 - self.decay) * g * g, aux.nu, grad)
        return jax.tree.map(lambda n: jnp.sqrt(n + self.eps), nu)

    def velocity(self, params, aux, grad):
        return jax.tree.map(lambda g, p: -g / p, grad, self.metric_diagonal(aux))

    def aux_rate(self, aux, grad):
        c = (1.0 - self.decay) / self.lr
        return RMSAccumulators(jax.tree.map(lambda n, g: c * (g * g - n), aux.nu, grad))


def _unused(name: str, hyper_: Hyper, fields: tuple[str, ...]) -> Array:
    """|Σ| of the swept coordinates a rule has no use for: refused when concrete, flagged by ``valid`` when traced."""
    total = jnp.zeros_like(jnp.asarray(hyper_.lr))
    for f in fields:
        value = jnp.asarray(getattr(hyper_, f))
        if is_concrete(value) and bool(jnp.any(value != 0)):
            raise ValueError(f"`{f}` = {value.tolist()} has no meaning for nj.rules.{name}: it must be 0 (set "
                             f"{name}'s own hyperparameters through its constructor instead).")
        total = total + jnp.abs(value)
    return total


class Adam(AbstractAdaptive):
    """Adam, or AdamW when ``decoupled`` (optax ``adam`` / ``adamw``, with their defaults and bias correction).

    ``decoupled_weight_decay`` is AdamW's λ, applied as −ηλθ outside the preconditioner; it is distinct from
    the coupled (L2) ``weight_decay`` of SGD, which enters the gradient. Build one with :func:`adam` or :func:`adamw`.

    Example:
        >>> import noether_jax as nj
        >>> rule = nj.rules.adamw(lr=1e-3, decoupled_weight_decay=1e-2)
        >>> rule.name, float(rule.b1), round(float(rule.edge().threshold), 3)
        ('adamw', 0.9, 38.0)
    """

    name: ClassVar[str] = "adam"
    decoupled: ClassVar[bool] = False
    lr: Array
    b1: Array
    b2: Array
    eps: Array
    decoupled_weight_decay: Array
    unused: Array

    def __init__(self, *, lr: ArrayLike, b1: ArrayLike = 0.9, b2: ArrayLike = 0.999, eps: ArrayLike = 1e-8,
                 decoupled_weight_decay: ArrayLike = 0.0):
        self.lr = hyper("lr", lr)
        self.b1 = hyper("b1", b1)
        self.b2 = hyper("b2", b2)
        self.eps = hyper("eps", eps)
        self.decoupled_weight_decay = hyper("decoupled_weight_decay", decoupled_weight_decay)
        if not self.decoupled and is_concrete(self.decoupled_weight_decay) and bool(jnp.any(self.decoupled_weight_decay != 0)):
            raise ValueError("nj.rules.adam has no weight decay: use nj.rules.adamw(..., decoupled_weight_decay=λ).")
        self.unused = jnp.zeros_like(self.lr)

    def optimizer(self) -> optax.GradientTransformation:
        """``optax.adam(lr, b1, b2, eps)``, or ``optax.adamw(lr, b1, b2, eps, weight_decay=λ)``."""
        if self.decoupled:
            return optax.adamw(self.lr, b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.decoupled_weight_decay)
        return optax.adam(self.lr, b1=self.b1, b2=self.b2, eps=self.eps)

    def with_hyper(self, hyper_: Hyper) -> Adam:
        """η → ``lr``, β → ``b1``, λ → ``decoupled_weight_decay`` (AdamW; for Adam λ must be 0)."""
        if self.decoupled:
            unused = jnp.zeros_like(jnp.asarray(hyper_.lr))
            vals = (hyper_.lr, hyper_.momentum, hyper_.weight_decay, unused)
        else:
            vals = (hyper_.lr, hyper_.momentum, self.decoupled_weight_decay, _unused(self.name, hyper_, ("weight_decay",)))
        return eqx.tree_at(lambda r: (r.lr, r.b1, r.decoupled_weight_decay, r.unused), self, tuple(jnp.asarray(v) for v in vals))

    def valid(self) -> Array:
        """Traced-safe: η > 0, b₁, b₂ ∈ [0, 1), ε > 0, λ ≥ 0 (and λ = 0 for Adam)."""
        return (valid("lr", self.lr) & valid("b1", self.b1) & valid("b2", self.b2) & valid("eps", self.eps)
                & valid("decoupled_weight_decay", self.decoupled_weight_decay) & (self.unused == 0))

    def edge(self) -> EdgeOfStability:
        """η·λ_max(P^{-1/2} H P^{-1/2}) > 2(1+b₁)/(1−b₁), P = √ν̂ + ε (38 at b₁ = 0.9).

        With P frozen, Adam's step on a quadratic is heavy ball in moving-average form with learning rate
        η(1−b₁) and momentum b₁, stable while η(1−b₁)λ < 2(1+b₁) for every eigenvalue λ of P⁻¹H. The
        decoupled decay shifts it by O(ηλ) and is left out."""
        b1 = self.b1
        return self.edge_of(2.0 * (1.0 + b1) / (1.0 - b1), "2(1+b1)/(1-b1) on the preconditioned sharpness (Adam)")

    @property
    def damping(self) -> Array:
        """c₁ = (1 − b₁)/η, the relaxation rate of the moving average μ (and the damping of the Lagrangian)."""
        return (1.0 - self.b1) / self.lr

    def initial_state(self, params: PyTree, opt_state: Any = None) -> AdamAccumulators:
        """(μ, ν, 1 − b₁ⁿ, 1 − b₂ⁿ) of a warm optax ``adam``/``adamw`` state after n steps, or zeros (fresh)."""
        dtype = jnp.result_type(*jax.tree.leaves(params), float)
        if opt_state is None:
            zeros = jax.tree.map(jnp.zeros_like, params)
            z = jnp.zeros((), dtype)
            return AdamAccumulators(zeros, zeros, z, z)
        mu, nu = _tree_get(opt_state, "mu", "adam"), _tree_get(opt_state, "nu", "adam")
        count = jnp.asarray(_tree_get(opt_state, "count", "adam"), dtype)
        return AdamAccumulators(mu, nu, 1.0 - self.b1.astype(dtype) ** count, 1.0 - self.b2.astype(dtype) ** count)

    def moments(self, aux: AdamAccumulators, grad: PyTree) -> tuple[PyTree, PyTree]:
        """The bias-corrected (μ̂, ν̂); at w = 0 (fresh) their limits g and g²."""
        mu = jax.tree.map(lambda m, g: _safe_ratio(m, aux.w_mu, g), aux.mu, grad)
        nu = jax.tree.map(lambda n, g: _safe_ratio(n, aux.w_nu, g * g), aux.nu, grad)
        return mu, nu

    def metric_diagonal(self, aux: AdamAccumulators, grad: PyTree | None = None) -> PyTree:
        """P = √ν̂ + ε (ν̂ = ν/w₂; where w₂ = 0, ν̂ = g² when ``grad`` is given, else 0)."""
        lim = jax.tree.map(jnp.zeros_like, aux.nu) if grad is None else jax.tree.map(lambda g: g * g, grad)
        nu = jax.tree.map(lambda n, l: _safe_ratio(n, aux.w_nu, l), aux.nu, lim)
        return jax.tree.map(lambda n: jnp.sqrt(n) + self.eps, nu)

    def velocity(self, params, aux, grad):
        mu, nu = self.moments(aux, grad)
        lam = self.decoupled_weight_decay
        return jax.tree.map(lambda m, n, p: -(m / (jnp.sqrt(n) + self.eps) + lam * p), mu, nu, params)

    def aux_rate(self, aux, grad):
        c1, c2 = (1.0 - self.b1) / self.lr, (1.0 - self.b2) / self.lr
        return AdamAccumulators(jax.tree.map(lambda m, g: c1 * (g - m), aux.mu, grad),
                                jax.tree.map(lambda n, g: c2 * (g * g - n), aux.nu, grad),
                                c1 * (1.0 - aux.w_mu), c2 * (1.0 - aux.w_nu))


class AdamW(Adam):
    """AdamW: :class:`Adam` with the decoupled weight decay of ``optax.adamw`` (see :func:`adamw`)."""

    name: ClassVar[str] = "adamw"
    decoupled: ClassVar[bool] = True


class AdaptiveFlow(AbstractDynamics):
    """The continuous model of an adaptive rule: a first-order flow of the state (θ, accumulators).

    ``nj.simulate(flow, params, t1=T, ts=ts)`` integrates it from the parameters alone (the accumulators
    start fresh, or from the warm optax state ``opt_state``); ``Trajectory.q`` holds θ and ``Trajectory.aux``
    the accumulators at ``ts``.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> flow = nj.rules.adam(lr=0.01).flow(lambda p: jnp.sum(p))   # constant gradient 1
        >>> traj = nj.simulate(flow, jnp.zeros(2), t1=1.0, ts=jnp.array([1.0]))
        >>> round(float(traj.q[0, 0]), 6)                                  # Adam steps by −η per step
        -1.0
    """

    rule: AbstractAdaptive
    loss: Callable[[PyTree], Scalar]
    opt_state: Any = None
    order: ClassVar[int] = 1

    def grad(self, q: PyTree) -> PyTree:
        return jax.grad(lambda p: check_scalar(self.loss(p), "the loss"))(q)

    def V(self, q: PyTree, t: ArrayLike) -> Scalar:
        """The loss at θ (what simulate checks for NaN at the initial state)."""
        return check_scalar(self.loss(q), "the loss")

    def checks(self) -> dict[str, Array]:
        """Traced-safe: the rule's hyperparameters in their domains (simulate's invalid_hyperparameter)."""
        return {f"{self.rule.name} hyperparameters": self.rule.valid()}

    def initial_state(self, q0: PyTree) -> tuple[PyTree, Any]:
        return q0, self.rule.initial_state(q0, self.opt_state)

    def split(self, y):
        return y

    def field(self, q: PyTree, aux: Any) -> tuple[PyTree, Any]:
        """(θ̇, accumulators') at a state."""
        g = self.grad(q)
        return self.rule.velocity(q, aux, g), self.rule.aux_rate(aux, g)

    def vector_field(self) -> Callable:
        return _AdaptiveField(self)

    def charge_terms(self, sym: Any, q: PyTree, aux: Any) -> dict[str, Array]:
        """The budget of the Euclidean charge Q = ⟨θ̇, ξ⟩/c₁ along the flow, per group (Adam/AdamW, t > 0).

        Q is the charge of the Euclidean rule (⟨θ̇, 𝟙⟩ for translation, ½ d|θ_𝒜|²/dt for scale), in the
        units of the heavy-ball charge with mass 1/c₁. Differentiating θ̇ = −μ̂/P − λθ along the flow,

            dQ/dt = −(c₁/w₁) Q                                   (dissipation)
                    + ⟨θ̇, (∂ξ)θ̇⟩/c₁                              (kinetic asymmetry)
                    − ⟨(P⁻¹ − 1) g, ξ⟩/w₁ + ⟨(Ṗ/P) u, ξ⟩/c₁      (non-Euclidean metric; u = μ̂/P)
                    − ⟨g + λθ, ξ⟩/w₁ − λ⟨θ̇, ξ⟩/c₁              (potential and decoupled decay).

        The metric term is what the preconditioner adds: for translation at λ = 0 it is −Σ_𝒜 gᵢ/(w₁Pᵢ) ≠ 0
        although Σ_𝒜 gᵢ = 0, so ⟨θ_𝒜, 𝟙⟩ is not conserved. ``rate`` is computed independently, as the
        derivative of Q along the flow's own vector field (a JVP).
        """
        rule = self.rule
        if not isinstance(rule, Adam):
            raise NotImplementedError(f"the charge budget is derived for Adam and AdamW, not {rule.name}.")
        c1, lam = rule.damping, rule.decoupled_weight_decay
        g = self.grad(q)
        vel, aux_dot = self.field(q, aux)
        p = rule.metric_diagonal(aux, g)
        p_dot = jax.jvp(lambda a: rule.metric_diagonal(a, g), (aux,), (aux_dot,))[1]
        u = jax.tree.map(lambda m, pi: m / pi, rule.moments(aux, g)[0], p)
        w1 = aux.w_mu
        charge = sym.pair(q, vel) / c1
        rate = jax.jvp(lambda q_, a_: sym.pair(q_, rule.velocity(q_, a_, self.grad(q_))), (q, aux), (vel, aux_dot))[1] / c1
        zero = jnp.zeros(sym.n_groups, charge.dtype)
        asym = jax.grad(lambda al: sum(jnp.vdot(a, b) for a, b in zip(
            jax.tree.leaves(vel), jax.tree.leaves(sym.lift(q, vel, al)[1]), strict=True)))(zero) / c1
        tilt = jax.tree.map(lambda gi, pi: gi / pi - gi, g, p)
        drift = jax.tree.map(lambda pd, pi, ui: pd / pi * ui, p_dot, p, u)
        metric = -sym.pair(q, tilt) / w1 + sym.pair(q, drift) / c1
        potential = -(sym.pair(q, g) + lam * sym.pair(q, q)) / w1 - lam * charge
        return {"charge": charge, "rate": rate, "dissipation": -(c1 / w1) * charge, "kinetic_asymmetry": asym,
                "metric": metric, "potential": potential}


class _AdaptiveField(eqx.Module):
    flow: AdaptiveFlow

    def __call__(self, t, y, args=None):
        return self.flow.field(*y)


def rmsprop(*, lr: ArrayLike, decay: ArrayLike = 0.9, eps: ArrayLike = 1e-8) -> RMSProp:
    """RMSProp as a learning rule: ``optax.rmsprop`` with its continuous flow (see :class:`RMSProp`).

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> traj = nj.simulate(nj.rules.rmsprop(lr=0.01).flow(lambda p: jnp.sum(p**2)), jnp.ones(3), t1=0.5)
        >>> traj.aux.nu.shape
        (1, 3)
    """
    return RMSProp(lr=lr, decay=decay, eps=eps)


def adam(*, lr: ArrayLike, b1: ArrayLike = 0.9, b2: ArrayLike = 0.999, eps: ArrayLike = 1e-8) -> Adam:
    """Adam as a learning rule: ``optax.adam`` with its continuous flow (see :class:`Adam`).

    Example:
        >>> import noether_jax as nj
        >>> nj.rules.adam(lr=1e-3).optimizer().init({"w": 0.0})[0].count.tolist()
        0
    """
    return Adam(lr=lr, b1=b1, b2=b2, eps=eps)


def adamw(*, lr: ArrayLike, b1: ArrayLike = 0.9, b2: ArrayLike = 0.999, eps: ArrayLike = 1e-8,
          decoupled_weight_decay: ArrayLike = 1e-4) -> Adam:
    """AdamW as a learning rule: ``optax.adamw`` (decoupled decay, optax's default 1e-4) with its flow.

    Example:
        >>> import noether_jax as nj
        >>> float(nj.rules.adamw(lr=1e-3).decoupled_weight_decay)
        0.0001
    """
    return AdamW(lr=lr, b1=b1, b2=b2, eps=eps, decoupled_weight_decay=decoupled_weight_decay)


__all__ = ["AbstractAdaptive", "Adam", "AdamAccumulators", "AdamW", "AdaptiveFlow", "RMSAccumulators", "RMSProp",
           "adam", "adamw", "rmsprop"]
