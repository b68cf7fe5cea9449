"""Learning rules: each knows its discrete optax optimiser and its continuous models.

Continuous time counts one step as η (t = n η). For heavy ball with coupled weight decay,

    vₙ₊₁ = β vₙ + P⁻¹(gₙ + λ θₙ),   θₙ₊₁ = θₙ − η vₙ₊₁            (P = 1 for SGD)

the models are (with m = η(1+β)/2, μ = 1 − β, V = ℒ + (λ/2)|θ|²):

* modified flow (second order): m P θ̈ + μ P θ̇ = −∇V, i.e. L = e^{μt/m}[(m/2)θ̇ᵀPθ̇ − V];
* gradient flow (first order, the m → 0 limit): μ P θ̇ = −∇V;
* modified loss (first order, one order better in η): μ P θ̇ = −∇Ṽ with
  Ṽ = V + (m / 2μ²)|∇V|²_{P⁻¹}, which is ℒ + (η/4)|∇ℒ|² for plain GD (Barrett and Dherin).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, PyTree, Scalar

from .. import theory
from .._tree import is_concrete, tree_sq_norm
from .._validate import check_broadcast, check_scalar, hyper, valid
from ._base import AbstractRule, EdgeOfStability, Hyper
from ..mechanics import AbstractDynamics, GradientFlow, Lagrangian
from ..mechanics.kinetic import AbstractKinetic, Diagonal, Euclidean

Model = Literal["modified_flow", "gradient_flow", "modified_loss"]
_MODELS = ("modified_flow", "gradient_flow", "modified_loss")


class RegularisedLoss(eqx.Module):
    """V(θ, t) = loss(θ) + (λ/2)|θ|²: a loss with coupled (L2) weight decay, as a potential."""

    loss: Callable[[PyTree], Scalar]
    weight_decay: Array
    rule_checks: dict[str, Array] = eqx.field(default_factory=dict)

    def checks(self) -> dict[str, Array]:
        """The weight decay's domain, and those of the rule that built this potential (η, β: a rule outside
        its domain has no continuous model, whatever the Lagrangian's own constants say)."""
        return {**self.rule_checks, "weight_decay": valid("weight_decay", self.weight_decay)}

    def __call__(self, q: PyTree, t: ArrayLike = 0.0) -> Scalar:
        value = check_scalar(self.loss(q), "the loss")
        return value + 0.5 * self.weight_decay * tree_sq_norm(q)


class ModifiedLoss(eqx.Module):
    """Ṽ(θ, t) = V(θ, t) + c |∇V|²_{G⁻¹}: the implicit gradient regulariser of a finite step."""

    potential: Callable[[PyTree, ArrayLike], Scalar]
    coefficient: Array
    metric: AbstractKinetic | None = None

    def checks(self) -> dict[str, Array]:
        inner = self.potential.checks() if hasattr(self.potential, "checks") else {}
        return {**inner, "modified_loss.coefficient": jnp.isfinite(self.coefficient) & (self.coefficient >= 0)}

    def __call__(self, q: PyTree, t: ArrayLike = 0.0) -> Scalar:
        value, g = jax.value_and_grad(self.potential)(q, t)
        gg = g if self.metric is None else self.metric.mass_solve(q, g, t, g)
        return value + self.coefficient * sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(gg), strict=True))


def _precondition(preconditioner: PyTree | Callable[[PyTree], PyTree] | None) -> optax.GradientTransformation:
    """Divide updates by a diagonal preconditioner P (fixed pytree, or a function of the params)."""
    if preconditioner is None:
        return optax.identity()

    def f(updates, params):
        p = preconditioner(params) if callable(preconditioner) else preconditioner
        check_broadcast(updates, p, "params", "preconditioner")
        return jax.tree.map(lambda u, pi: u / pi, updates, p)

    return optax.stateless(f)


class LearningRule(AbstractRule):
    """SGD with heavy-ball momentum, coupled weight decay and an optional diagonal preconditioner, together
    with its continuous models and its closed-form laws.

    Build one with :func:`sgd`, :func:`heavy_ball`, :func:`gradient_flow`, :func:`modified_loss` or
    :func:`preconditioned`. Hyperparameters are keyword-only arrays, so a rule can be vmapped over
    (sweeps) and a new value never recompiles. ``model`` (static) chooses what :meth:`flow` returns.

    Example:
        >>> import noether_jax as nj
        >>> rule = nj.rules.LearningRule(lr=0.1, momentum=0.9)
        >>> sorted(rule.laws("scale")), float(rule.edge().threshold)
        (['identity', 'theory'], 3.8)
    """

    name = "sgd"

    lr: Array
    momentum: Array
    weight_decay: Array
    preconditioner: Any = None
    model: Model = eqx.field(static=True, default="modified_flow")

    def __init__(self, *positional, lr=None, momentum=0.0, weight_decay=0.0, preconditioner=None,
                 model: Model = "modified_flow"):
        if positional and isinstance(positional[0], optax.GradientTransformation) or isinstance(lr, optax.GradientTransformation):
            raise TypeError(
                "nj.rules.LearningRule takes hyperparameters, not an optax transformation. To train with an optax "
                "optimiser as it is, pass it directly (e.g. nj.Recorder(..., optimizer=optax.adam(1e-3))): it is then "
                "measured only, with no law. For laws, use a named rule such as nj.rules.sgd(lr=..., momentum=...)."
            )
        if positional or lr is None:
            raise TypeError("nj.rules.LearningRule takes keyword arguments: LearningRule(lr=..., momentum=..., weight_decay=...).")
        self.lr = hyper("lr", lr)
        self.momentum = hyper("momentum", momentum)
        self.weight_decay = hyper("weight_decay", weight_decay)
        if preconditioner is not None and not callable(preconditioner):
            Diagonal(preconditioner)  # validates positivity
        self.preconditioner = preconditioner
        if model not in _MODELS:
            raise ValueError(f"`model` must be one of {_MODELS}, got {model!r}.")
        self.model = model

    # --- what the training engine asks of a rule --------------------------------------------
    def with_hyper(self, hyper: Hyper) -> LearningRule:
        """This rule with η, β and λ taken from ``hyper`` (arrays; may be traced)."""
        vals = tuple(jnp.asarray(v) for v in (hyper.lr, hyper.momentum, hyper.weight_decay))
        return eqx.tree_at(lambda r: (r.lr, r.momentum, r.weight_decay), self, vals)

    def valid(self) -> Array:
        """Traced-safe: η > 0, 0 ≤ β < 1, λ ≥ 0 (and finite)."""
        return valid("lr", self.lr) & valid("momentum", self.momentum) & valid("weight_decay", self.weight_decay)

    def laws(self, kind: str) -> dict[str, theory.AbstractLaw]:
        """NM eqs. 18–20 (β = 0) or the heavy-ball oscillator (β > 0), and the exact discrete identity of SGD.

        A preconditioned rule has none: its metric breaks the Euclidean laws (see :func:`noether_jax.charge_budget`).
        """
        if self.preconditioner is not None:
            return {}
        hyper_ = dict(lr=self.lr, weight_decay=self.weight_decay)
        return {"theory": theory.SGDLaw(kind, momentum=self.momentum, **hyper_), "identity": theory.SGDIdentity(kind, **hyper_)}

    def nld_laws(self) -> dict[str, theory.AbstractLaw]:
        """NLD eq. 17 for r⁴ of every scale group (none for a preconditioned rule)."""
        if self.preconditioner is not None:
            return {}
        return {"eq17": theory.NLDLaw(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)}

    def law_label(self) -> str:
        if self.preconditioner is not None:
            return "no closed-form law: a diagonal preconditioner breaks the Euclidean conservation laws"
        return ("NM eqs. 18–20 fed the applied mini-batch |g_𝒜|² (β = 0); the driven damped oscillator "
                "Ẍ + 2γẊ + ω²X = 2|θ̇_𝒜|² fed the measured velocity (β > 0)")

    def edge(self) -> EdgeOfStability:
        """η·λ_max(P^{-1/2}(H + λI)P^{-1/2}) > 2(1+β): beyond it no modified flow applies."""
        pre = None
        if self.preconditioner is not None:
            p = self.preconditioner
            pre = (lambda params, opt_state: p(params)) if callable(p) else (lambda params, opt_state: p)
        return EdgeOfStability(self.lr, 2.0 * (1.0 + self.momentum), self.weight_decay, pre, "2(1+β) (heavy ball)")

    # --- the mechanical constants ---------------------------------------------------------
    @property
    def mass(self) -> Array:
        """m = η(1+β)/2."""
        return self.lr * (1.0 + self.momentum) / 2.0

    @property
    def friction(self) -> Array:
        """μ = 1 − β."""
        return 1.0 - self.momentum

    @property
    def damping(self) -> Array:
        """ρ = μ/m, the rate of φ(t) = e^{ρt}."""
        return self.friction / self.mass

    def time(self, step: ArrayLike) -> Array:
        """Continuous time of a discrete step: t = n η."""
        return jnp.asarray(step) * self.lr

    def potential(self, loss: Callable[[PyTree], Scalar]) -> RegularisedLoss:
        """V = loss + (λ/2)|θ|² (coupled weight decay); it carries the rule's checks for :func:`simulate`."""
        return RegularisedLoss(loss, self.weight_decay, {"lr": valid("lr", self.lr), "momentum": valid("momentum", self.momentum)})

    def kinetic(self) -> AbstractKinetic:
        """K = (m/2) θ̇ᵀ P θ̇ (P = 1 for SGD)."""
        if self.preconditioner is None:
            return Euclidean(self.mass)
        p = self.preconditioner
        if callable(p):
            return Diagonal(_ScaledMass(p, self.mass))
        return Diagonal(jax.tree.map(lambda x: self.mass * x, p))

    def metric(self) -> AbstractKinetic | None:
        """The metric G = P of the first-order flows (None for SGD)."""
        if self.preconditioner is None:
            return None
        p = self.preconditioner
        return Diagonal(_ScaledMass(p, jnp.ones(())) if callable(p) else p)

    # --- continuous models -----------------------------------------------------------------
    def lagrangian(self, loss: Callable[[PyTree], Scalar]) -> Lagrangian:
        """The modified flow as a Lagrangian: m P θ̈ + μ P θ̇ = −∇ℒ − λθ."""
        return Lagrangian(self.kinetic(), self.potential(loss), damping=self.damping)

    def gradient_flow(self, loss: Callable[[PyTree], Scalar]) -> GradientFlow:
        """The η → 0 limit: μ P θ̇ = −∇ℒ − λθ."""
        return GradientFlow(self.potential(loss), metric=self.metric(), friction=self.friction)

    def modified_loss(self, loss: Callable[[PyTree], Scalar]) -> GradientFlow:
        """First-order flow of Ṽ = V + (m/2μ²)|∇V|²_{P⁻¹} (Barrett–Dherin; Kovachki–Stuart for β > 0)."""
        coeff = self.mass / (2.0 * self.friction**2)
        return GradientFlow(ModifiedLoss(self.potential(loss), coeff, self.metric()), metric=self.metric(), friction=self.friction)

    def flow(self, loss: Callable[[PyTree], Scalar]) -> AbstractDynamics:
        """The rule's continuous model, as chosen by ``model``."""
        return {"modified_flow": self.lagrangian, "gradient_flow": self.gradient_flow, "modified_loss": self.modified_loss}[
            self.model
        ](loss)

    # --- the discrete optimiser ------------------------------------------------------------
    def optimizer(self) -> optax.GradientTransformation:
        """The matching discrete optax optimiser.

        ``chain(add_decayed_weights(λ), [divide by P], trace(β), scale(−η))``: for SGD this is exactly
        ``optax.chain(optax.add_decayed_weights(λ), optax.sgd(η, momentum=β))``. The momentum trace is
        always present (β may be 0) so that rules with different β share one state structure.
        """
        return optax.chain(
            optax.add_decayed_weights(self.weight_decay),
            _precondition(self.preconditioner),
            optax.trace(decay=self.momentum, nesterov=False),
            optax.scale(-self.lr),
        )

    def initial_velocity(self, params: PyTree, grad: PyTree, opt_state: Any = None) -> PyTree:
        """Map the optimiser's state to the continuous initial velocity θ̇(0).

        Matching the fast transient of the discrete recursion vₙ₊₁ = βvₙ + f (f = P⁻¹(g + λθ)) to that
        of m θ̈ + μ θ̇ = f gives

            θ̇(0) = −(f₀ + 2β b₀) / (1 + β),

        with b₀ the momentum buffer in ``opt_state`` (0 for a fresh optimiser). For GD this is −f₀; on
        the slow manifold (b₀ = f₀/(1−β)) it is −f₀/(1−β). The naive θ̇(0) = 0 costs an order in η.

        Args:
            params: θ₀.
            grad: ∇ℒ(θ₀), the gradient the first step applies (a mini-batch gradient for SGD).
            opt_state: the state of :meth:`optimizer` (or None for a fresh one).
        """
        f = jax.tree.map(lambda g, p: g + self.weight_decay * p, grad, params)
        if self.preconditioner is not None:
            pre = self.preconditioner(params) if callable(self.preconditioner) else self.preconditioner
            f = jax.tree.map(lambda a, pi: a / pi, f, pre)
        b = None if opt_state is None else optax.tree_utils.tree_get(opt_state, "trace")
        if b is None:
            # A fresh optimiser, or a state with no momentum buffer (e.g. plain ``optax.sgd(lr)``).
            if opt_state is not None and is_concrete(self.momentum) and bool(jnp.any(self.momentum != 0)):
                raise ValueError(
                    "`opt_state` holds no momentum trace, but this rule has momentum "
                    f"{self.momentum.tolist()}: pass the state of rule.optimizer() (or of an optax "
                    "optimiser with momentum), or opt_state=None for a fresh optimiser."
                )
            b = jax.tree.map(jnp.zeros_like, f)
        beta = self.momentum
        return jax.tree.map(lambda fi, bi: -(fi + 2.0 * beta * bi) / (1.0 + beta), f, b)


class _ScaledMass(eqx.Module):
    fn: Callable[[PyTree], PyTree]
    scale: Array

    def __call__(self, q, t=0.0):
        return jax.tree.map(lambda x: self.scale * x, self.fn(q))


def sgd(*, lr: ArrayLike, momentum: ArrayLike = 0.0, weight_decay: ArrayLike = 0.0) -> LearningRule:
    """SGD with optional heavy-ball momentum and coupled weight decay; continuous model: the modified flow.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> rule = nj.rules.sgd(lr=0.1, momentum=0.9, weight_decay=1e-4)
        >>> round(float(rule.mass), 4), round(float(rule.friction), 4)
        (0.095, 0.1)
        >>> lag = rule.lagrangian(lambda p: jnp.sum(p**2))   # continuous
        >>> opt = rule.optimizer()                            # discrete (optax)
    """
    return LearningRule(lr=lr, momentum=momentum, weight_decay=weight_decay, model="modified_flow")


def heavy_ball(*, lr: ArrayLike, momentum: ArrayLike = 0.9, weight_decay: ArrayLike = 0.0) -> LearningRule:
    """Heavy-ball momentum (``sgd`` with β = 0.9 by default)."""
    return LearningRule(lr=lr, momentum=momentum, weight_decay=weight_decay, model="modified_flow")


def gradient_flow(*, lr: ArrayLike, momentum: ArrayLike = 0.0, weight_decay: ArrayLike = 0.0) -> LearningRule:
    """SGD whose continuous model is the η → 0 gradient flow (1 − β) θ̇ = −∇V (first order).

    Example:
        >>> import noether_jax as nj
        >>> nj.rules.gradient_flow(lr=0.01).flow(lambda p: (p**2).sum()).order
        1
    """
    return LearningRule(lr=lr, momentum=momentum, weight_decay=weight_decay, model="gradient_flow")


def modified_loss(*, lr: ArrayLike, momentum: ArrayLike = 0.0, weight_decay: ArrayLike = 0.0) -> LearningRule:
    """SGD whose continuous model is the gradient flow of the modified loss ℒ + (η/4)|∇ℒ|² (β = 0)."""
    return LearningRule(lr=lr, momentum=momentum, weight_decay=weight_decay, model="modified_loss")


def preconditioned(
    preconditioner: PyTree | Callable[[PyTree], PyTree],
    *,
    lr: ArrayLike,
    momentum: ArrayLike = 0.0,
    weight_decay: ArrayLike = 0.0,
) -> LearningRule:
    """Diagonally preconditioned SGD, θₙ₊₁ = θₙ − η vₙ₊₁, vₙ₊₁ = βvₙ + P⁻¹(gₙ + λθₙ).

    Its Lagrangian has the metric kinetic term K = (m/2) θ̇ᵀ P θ̇. ``preconditioner`` is a pytree of
    positive arrays like the parameters (fixed P), or a function ``params -> pytree`` (a
    state-dependent diagonal metric, for which the modified flow is first-order accurate).

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> rule = nj.rules.preconditioned(jnp.array([1.0, 10.0]), lr=0.1)
        >>> type(rule.kinetic()).__name__
        'Diagonal'
    """
    return LearningRule(lr=lr, momentum=momentum, weight_decay=weight_decay, preconditioner=preconditioner, model="modified_flow")
