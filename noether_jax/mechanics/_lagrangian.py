"""The Lagrangian L = φ(t)[K − V] and its Euler–Lagrange flow, derived by autodiff.

With p = ∂K/∂v and ρ = d log φ / dt , the Euler–Lagrange equation reads

    M a = ∂(K − V)/∂q − (∂p/∂q) v − ∂p/∂t − ρ(t) p,        M = ∂²K/∂v².

φ itself is never evaluated (at η = 0.05 it would reach e^800 by t = 20): only its rate ρ enters.
Every term is a gradient or a Jacobian-vector product, and M is inverted in closed form for
Euclidean/diagonal kinetic energies and by conjugate gradients otherwise, so no d×d matrix is built.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, PyTree, Scalar

from .._tree import as_time, tree_vdot
from .._validate import check_same_structure, check_scalar, hyper, signature, valid
from .kinetic import AbstractKinetic, as_kinetic


class AbstractDynamics(eqx.Module):
    """A continuous-time model that :func:`noether_jax.simulate` can integrate.

    ``order`` is 2 for Lagrangian (second-order) systems, whose state is ``(q, v)``, and 1 for
    first-order flows, whose state is ``q``.
    """

    order: eqx.AbstractClassVar[int]

    @abc.abstractmethod
    def vector_field(self) -> Callable[[ArrayLike, PyTree, Any], PyTree]:
        """The field ``f(t, y, args)`` for ``diffrax.ODETerm``."""

    def initial_state(self, q0: PyTree) -> PyTree:
        """The first-order system's state y(0) from the positions (``q0`` itself unless the system carries
        auxiliary state, e.g. an adaptive optimiser's accumulators)."""
        return q0

    def split(self, y: PyTree) -> tuple[PyTree, PyTree]:
        """A first-order state y as (positions, auxiliary state or None): the inverse of :meth:`initial_state`."""
        return y, None

    def checks(self) -> dict[str, jax.Array]:
        """Traced-safe: name → True where that constant (mass, damping, friction, weight decay, …) lies in
        its domain. :func:`~noether_jax.simulate` turns a False into ``RESULTS.invalid_hyperparameter``."""
        return {}

    def valid(self) -> jax.Array:
        """Traced-safe: every constant of the system in its domain."""
        out = jnp.asarray(True)
        for ok in self.checks().values():
            out = out & jnp.all(ok)
        return out


def _as_potential(potential: Callable) -> Callable:
    return signature(potential, "potential", "V(q, t)", 2)


def _potential_checks(potential: Callable) -> dict[str, jax.Array]:
    """The checks of a potential that carries constants of its own (e.g. a rule's weight decay)."""
    return dict(potential.checks()) if isinstance(potential, eqx.Module) and hasattr(potential, "checks") else {}


class Lagrangian(AbstractDynamics):
    """L(q, v, t) = φ(t) [K(q, v, t) − V(q, t)], with φ carried as its rate ``damping`` ρ = (log φ)'.

    Args:
        kinetic: ``K(q, v, t) -> scalar``, or an ``nj.kinetic`` object (Euclidean, Diagonal, Metric,
            General) which adds closed-form or matrix-free mass solves.
        potential: ``V(q, t) -> scalar``.
        damping: ρ(t), a float or a callable ``t -> float``. ρ = μ/m gives the friction of
            heavy-ball momentum .

    ``q`` and ``v`` may be any pytrees (a flax parameter tree works as it is).

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> lag = nj.Lagrangian(kinetic=lambda q, v, t: 0.5 * jnp.sum(v**2),
        ...                     potential=lambda q, t: 0.5 * jnp.sum(q**2))
        >>> nj.euler_lagrange(lag)(0.0, (jnp.array([1.0]), jnp.array([0.0])), None)[1].tolist()
        [-1.0]
    """

    kinetic: AbstractKinetic
    potential: Callable[[PyTree, ArrayLike], Scalar]
    damping: jax.Array | Callable[[ArrayLike], ArrayLike]
    order: ClassVar[int] = 2

    def __init__(
        self,
        kinetic: AbstractKinetic | Callable[[PyTree, PyTree, ArrayLike], Scalar],
        potential: Callable[[PyTree, ArrayLike], Scalar],
        damping: ArrayLike | Callable[[ArrayLike], ArrayLike] = 0.0,
    ):
        self.kinetic = as_kinetic(kinetic)
        self.potential = _as_potential(potential)
        self.damping = damping if callable(damping) else hyper("damping", damping)

    def checks(self) -> dict[str, jax.Array]:
        out = {f"kinetic.{k}": v for k, v in self.kinetic.checks().items()}
        if not callable(self.damping):
            out["damping"] = valid("damping", self.damping)
        return {**out, **_potential_checks(self.potential)}

    def rho(self, t: ArrayLike) -> jax.Array:
        """The damping rate ρ(t) = d/dt log φ(t)."""
        return jnp.asarray(self.damping(t) if callable(self.damping) else self.damping)

    def V(self, q: PyTree, t: ArrayLike) -> Scalar:
        return check_scalar(self.potential(q, t), "the potential")

    def K(self, q: PyTree, v: PyTree, t: ArrayLike) -> Scalar:
        return check_scalar(self.kinetic(q, v, t), "the kinetic energy")

    def __call__(self, q: PyTree, v: PyTree, t: ArrayLike) -> Scalar:
        """K − V: the Lagrangian with the factor φ(t) divided out."""
        return self.K(q, v, t) - self.V(q, t)

    def momentum(self, q: PyTree, v: PyTree, t: ArrayLike) -> PyTree:
        """p = ∂K/∂v (the canonical momentum with φ divided out)."""
        return self.kinetic.momentum(q, v, t)

    def energy(self, q: PyTree, v: PyTree, t: ArrayLike) -> Scalar:
        """The energy function ⟨p, v⟩ − K + V (conserved when ρ = 0 and L has no explicit t)."""
        return tree_vdot(self.momentum(q, v, t), v) - self.K(q, v, t) + self.V(q, t)

    def force(self, q: PyTree, v: PyTree, t: ArrayLike) -> PyTree:
        """The right-hand side M a of the Euler–Lagrange equation."""
        t = as_time(t)
        grad_v = jax.grad(self.V)(q, t)
        rho = self.rho(t)
        p = self.kinetic.momentum(q, v, t)
        out = jax.tree.map(lambda g, pi: -g - rho * pi, grad_v, p)
        kin = self.kinetic.velocity_force(q, v, t)
        if kin is not None:
            out = jax.tree.map(jnp.add, out, kin)
        return out

    def acceleration(self, q: PyTree, v: PyTree, t: ArrayLike) -> PyTree:
        """a = M⁻¹ (Euler–Lagrange force): matrix-free, closed form where K allows."""
        check_same_structure(q, v, "q", "v")
        return self.kinetic.mass_solve(q, v, t, self.force(q, v, t))

    def vector_field(self) -> EulerLagrange:
        return EulerLagrange(self)


class EulerLagrange(eqx.Module):
    """The first-order form f(t, (q, v), args) = (v, a) of a Lagrangian's Euler–Lagrange equation.

    Use it directly as ``diffrax.ODETerm(nj.euler_lagrange(lag))``.
    """

    lagrangian: Lagrangian

    def __call__(self, t: ArrayLike, y: tuple[PyTree, PyTree], args: Any = None) -> tuple[PyTree, PyTree]:
        if not (isinstance(y, tuple | list) and len(y) == 2):
            raise ValueError("the state `y` of an Euler–Lagrange field must be the pair (q, v).")
        q, v = y
        return v, self.lagrangian.acceleration(q, v, t)


def euler_lagrange(lagrangian: Lagrangian) -> EulerLagrange:
    """The Euler–Lagrange vector field ``f(t, (q, v), args) -> (v, a)`` of ``lagrangian``.

    Example:
        >>> import diffrax, jax.numpy as jnp, noether_jax as nj
        >>> lag = nj.Lagrangian(lambda q, v, t: 0.5 * jnp.sum(v**2), lambda q, t: 0.5 * jnp.sum(q**2))
        >>> term = diffrax.ODETerm(nj.euler_lagrange(lag))
        >>> sol = diffrax.diffeqsolve(term, diffrax.Tsit5(), 0.0, jnp.pi, 0.01, (jnp.array(1.0), jnp.array(0.0)))
        >>> round(float(sol.ys[0][-1]), 3)
        -1.0
    """
    if not isinstance(lagrangian, Lagrangian):
        raise TypeError(f"`lagrangian` must be an nj.Lagrangian, got {type(lagrangian).__name__}.")
    return EulerLagrange(lagrangian)


class GradientFlow(AbstractDynamics):
    """A first-order (overdamped) flow μ q̇ = −G(q, t)⁻¹ ∇V(q, t).

    The m → 0 limit of a Lagrangian with kinetic metric G and damping ρ = μ/m :
    plain gradient flow when ``metric`` is None, a preconditioned or natural-gradient flow otherwise.

    Args:
        potential: ``V(q, t) -> scalar``.
        metric: None (Euclidean), or a quadratic ``nj.kinetic`` object whose mass operator is G.
        friction: μ, e.g. 1 − β for heavy-ball momentum.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> flow = nj.GradientFlow(lambda q, t: 0.5 * jnp.sum(q**2))
        >>> flow.velocity(jnp.array([2.0]), 0.0).tolist()
        [-2.0]
    """

    potential: Callable[[PyTree, ArrayLike], Scalar]
    metric: AbstractKinetic | None
    friction: jax.Array
    order: ClassVar[int] = 1

    def __init__(
        self,
        potential: Callable[[PyTree, ArrayLike], Scalar],
        metric: AbstractKinetic | None = None,
        friction: ArrayLike = 1.0,
    ):
        self.potential = _as_potential(potential)
        if metric is not None and not (isinstance(metric, AbstractKinetic) and metric.quadratic):
            raise TypeError(
                "`metric` must be None or a quadratic nj.kinetic object (Euclidean, Diagonal, Metric): "
                "the overdamped limit needs K = ½ vᵀ G(q) v."
            )
        self.metric = metric
        self.friction = hyper("friction", friction)

    def checks(self) -> dict[str, jax.Array]:
        out = {"friction": valid("friction", self.friction)}
        if self.metric is not None:
            out.update({f"metric.{k}": v for k, v in self.metric.checks().items()})
        return {**out, **_potential_checks(self.potential)}

    def V(self, q: PyTree, t: ArrayLike) -> Scalar:
        return check_scalar(self.potential(q, t), "the potential")

    def velocity(self, q: PyTree, t: ArrayLike) -> PyTree:
        t = as_time(t)
        g = jax.grad(self.V)(q, t)
        if self.metric is not None:
            g = self.metric.mass_solve(q, g, t, g)
        return jax.tree.map(lambda x: -x / self.friction, g)

    def vector_field(self) -> Callable:
        return _FirstOrderField(self)


class _FirstOrderField(eqx.Module):
    flow: GradientFlow

    def __call__(self, t, q, args=None):
        return self.flow.velocity(q, t)
