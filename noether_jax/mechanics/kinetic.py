"""Kinetic energies: the learning rule's half of the Lagrangian.

A kinetic term is an ``equinox.Module`` called as ``K(q, v, t) -> scalar``. Besides its value it
knows how to apply and invert its mass operator ``M = ∂²K/∂v²`` without ever building a matrix:

* :class:`Euclidean` and :class:`Diagonal` invert ``M`` in closed form;
* :class:`Metric` (``K = ½ vᵀ G(q, t) v`` given by a matrix-free product ``G(q, t) v``) and
  :class:`General` (any callable) solve ``M a = f`` with a lineax Krylov solver over Jacobian-vector
  products.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import ArrayLike, PyTree, Scalar

from .._tree import as_time, is_concrete, tree_vdot
from .._validate import check_broadcast, check_scalar, hyper, signature, valid

_SINGULAR = (
    "the kinetic metric M = ∂²K/∂v² is singular (or not positive definite) at this state: the "
    "Lagrangian is degenerate and its Euler–Lagrange equation cannot be solved for the acceleration. "
    "Give every coordinate a positive mass/metric, or use a first-order flow (nj.GradientFlow) for an "
    "overdamped model."
)


def _default_krylov(dtype: Any) -> lx.AbstractLinearSolver:
    tol = 1e-12 if jnp.dtype(dtype) == jnp.float64 else 1e-6
    return lx.CG(rtol=tol, atol=tol)


def _checked_solve(operator: lx.AbstractLinearOperator, rhs: PyTree, solver: lx.AbstractLinearSolver | None):
    leaves = jax.tree.leaves(rhs)
    dtype = jnp.result_type(*leaves) if leaves else jnp.result_type(float)
    solver = _default_krylov(dtype) if solver is None else solver
    sol = lx.linear_solve(operator, rhs, solver, throw=False)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(sol.value)]))
    failed = (sol.result != lx.RESULTS.successful) | ~finite
    return eqx.error_if(sol.value, failed, _SINGULAR)


class AbstractKinetic(eqx.Module):
    """A kinetic energy ``K(q, v, t)``.

    Subclasses implement :meth:`__call__`; everything else has a matrix-free autodiff default that a
    subclass may replace by a closed form.
    """

    #: True when K = ½ vᵀ G(q, t) v, so that G (the mass operator) does not depend on v.
    quadratic: ClassVar[bool] = False

    @abc.abstractmethod
    def __call__(self, q: PyTree, v: PyTree, t: ArrayLike) -> Scalar: ...

    def checks(self) -> dict[str, jax.Array]:
        """Traced-safe: name → True where that constant of K lies in its domain (empty: nothing to check)."""
        return {}

    def check_state(self, q: PyTree) -> None:
        """Raise, from static shapes (before compiling), when K cannot act on a state shaped like ``q``."""

    def momentum(self, q: PyTree, v: PyTree, t: ArrayLike) -> PyTree:
        """The canonical momentum p = ∂K/∂v (with the factor φ divided out)."""
        return jax.grad(lambda v_: check_scalar(self(q, v_, t), "the kinetic energy"))(v)

    def mass_apply(self, q: PyTree, v: PyTree, t: ArrayLike, w: PyTree) -> PyTree:
        """M w with M = ∂²K/∂v², as a Jacobian-vector product of the momentum."""
        return jax.jvp(lambda v_: self.momentum(q, v_, t), (v,), (w,))[1]

    def mass_solve(self, q: PyTree, v: PyTree, t: ArrayLike, rhs: PyTree) -> PyTree:
        """M⁻¹ rhs, matrix-free (Krylov on :meth:`mass_apply`)."""
        op = lx.FunctionLinearOperator(
            lambda w: self.mass_apply(q, v, t, w),
            jax.eval_shape(lambda: rhs),
            lx.positive_semidefinite_tag,
        )
        return _checked_solve(op, rhs, getattr(self, "solver", None))

    def velocity_force(self, q: PyTree, v: PyTree, t: ArrayLike) -> PyTree | None:
        """The kinetic part of the Euler–Lagrange right-hand side.

        ∂K/∂q − (∂p/∂q) v − ∂p/∂t, from one gradient and one JVP in (q, t) along (v, 1).
        ``None`` means identically zero (Euclidean or constant metrics), and lets the field skip it.
        """
        t = as_time(t)
        dkdq = jax.grad(lambda q_: self(q_, v, t))(q)
        _, dp = jax.jvp(lambda q_, t_: self.momentum(q_, v, t_), (q, t), (v, jnp.ones_like(t)))
        return jax.tree.map(lambda a, b: a - b, dkdq, dp)


class Euclidean(AbstractKinetic):
    """K = (m/2)|v|²: plain gradient descent (with or without momentum).

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> K = nj.kinetic.Euclidean(mass=2.0)
        >>> float(K(jnp.zeros(2), jnp.array([1.0, 2.0]), 0.0))
        5.0
    """

    mass: jax.Array
    quadratic: ClassVar[bool] = True

    def __init__(self, mass: ArrayLike = 1.0):
        self.mass = hyper("mass", mass)

    def checks(self):
        return {"mass": valid("mass", self.mass)}

    def __call__(self, q, v, t):
        return 0.5 * self.mass * tree_vdot(v, v)

    def momentum(self, q, v, t):
        return jax.tree.map(lambda x: self.mass * x, v)

    def mass_apply(self, q, v, t, w):
        return jax.tree.map(lambda x: self.mass * x, w)

    def mass_solve(self, q, v, t, rhs):
        return jax.tree.map(lambda x: x / self.mass, rhs)

    def velocity_force(self, q, v, t):
        return None


class Diagonal(AbstractKinetic):
    """K = ½ Σᵢ mᵢ vᵢ²: a diagonal preconditioner (per-parameter masses).

    ``mass`` is a pytree like ``q`` (leaves broadcastable to ``q``'s leaves), or a callable
    ``mass(q, t) -> pytree`` for a state-dependent diagonal metric.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> K = nj.kinetic.Diagonal(mass=jnp.array([1.0, 4.0]))
        >>> K.mass_solve(None, None, 0.0, jnp.array([2.0, 2.0])).tolist()
        [2.0, 0.5]
    """

    mass: Any
    quadratic: ClassVar[bool] = True

    def __init__(self, mass: PyTree | Callable[[PyTree, ArrayLike], PyTree]):
        if callable(mass):
            self.mass = mass
        else:
            mass = jax.tree.map(jnp.asarray, mass)
            if is_concrete(mass):
                for leaf in jax.tree.leaves(mass):
                    if not bool(jnp.all(leaf > 0)):
                        raise ValueError(
                            "`mass` of a Diagonal kinetic energy must be strictly positive everywhere: "
                            "a zero or negative entry makes the kinetic metric singular. Clip it, e.g. "
                            "jnp.maximum(mass, eps)."
                        )
            self.mass = mass

    def _m(self, q, t):
        return self.mass(q, t) if callable(self.mass) else self.mass

    def check_state(self, q):
        if not callable(self.mass):
            check_broadcast(q, self.mass, "q0", "mass")

    def checks(self):
        if callable(self.mass):
            return {}
        return {"mass": jnp.all(jnp.stack([jnp.all(jnp.isfinite(m) & (m > 0)) for m in jax.tree.leaves(self.mass)]))}

    def __call__(self, q, v, t):
        m = self._m(q, t)
        return 0.5 * sum(jnp.sum(mi * vi * vi) for mi, vi in zip(jax.tree.leaves(m), jax.tree.leaves(v), strict=True))

    def momentum(self, q, v, t):
        return jax.tree.map(lambda mi, vi: mi * vi, self._m(q, t), v)

    def mass_apply(self, q, v, t, w):
        return jax.tree.map(lambda mi, wi: mi * wi, self._m(q, t), w)

    def mass_solve(self, q, v, t, rhs):
        m = self._m(q, t)
        out = jax.tree.map(lambda mi, ri: ri / mi, m, rhs)
        if callable(self.mass):
            bad = jnp.any(jnp.stack([jnp.any(mi <= 0) for mi in jax.tree.leaves(m)]))
            out = eqx.error_if(out, bad, _SINGULAR)
        return out

    def velocity_force(self, q, v, t):
        return super().velocity_force(q, v, t) if callable(self.mass) else None


class Metric(AbstractKinetic):
    """K = ½ vᵀ G(q, t) v with G given matrix-free as ``metric(q, w, t) -> G(q, t) w``.

    ``G`` must be symmetric positive definite; it is inverted by conjugate gradients (lineax), so it
    is never materialised. This is the kinetic term of natural-gradient and preconditioned flows.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> K = nj.kinetic.Metric(lambda q, w, t: 2.0 * w)
        >>> K.mass_solve(None, jnp.zeros(2), 0.0, jnp.array([2.0, 4.0])).tolist()
        [1.0, 2.0]
    """

    metric: Callable[[PyTree, PyTree, ArrayLike], PyTree]
    solver: lx.AbstractLinearSolver | None = None
    quadratic: ClassVar[bool] = True

    def __init__(self, metric: Callable[[PyTree, PyTree, ArrayLike], PyTree], solver: lx.AbstractLinearSolver | None = None):
        self.metric = signature(metric, "metric", "G(q, w, t)", 3)
        self.solver = solver

    def __call__(self, q, v, t):
        return 0.5 * tree_vdot(v, self.metric(q, v, t))

    def momentum(self, q, v, t):
        return self.metric(q, v, t)

    def mass_apply(self, q, v, t, w):
        return self.metric(q, w, t)


class General(AbstractKinetic):
    """Any kinetic energy given as a callable ``fn(q, v, t) -> scalar``.

    Momentum, mass operator and the mixed term come from autodiff; the mass operator is inverted
    matrix-free with ``solver`` (default: conjugate gradients, which needs ∂²K/∂v² positive
    definite — pass e.g. ``lineax.GMRES`` otherwise).

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> K = nj.kinetic.General(lambda q, v, t: 0.5 * 3.0 * jnp.sum(v**2))
        >>> K.momentum(jnp.zeros(2), jnp.array([1.0, 2.0]), 0.0).tolist()
        [3.0, 6.0]
    """

    fn: Callable[[PyTree, PyTree, ArrayLike], Scalar]
    solver: lx.AbstractLinearSolver | None = None

    def __init__(self, fn: Callable[[PyTree, PyTree, ArrayLike], Scalar], solver: lx.AbstractLinearSolver | None = None):
        self.fn = signature(fn, "kinetic", "K(q, v, t)", 3)
        self.solver = solver

    def __call__(self, q, v, t):
        return check_scalar(self.fn(q, v, t), "the kinetic energy")


def as_kinetic(kinetic: AbstractKinetic | Callable) -> AbstractKinetic:
    if isinstance(kinetic, AbstractKinetic):
        return kinetic
    if callable(kinetic):
        return General(kinetic)
    raise TypeError(
        f"`kinetic` must be a callable K(q, v, t) -> scalar or an nj.kinetic.* object, got {type(kinetic).__name__}."
    )

__all__ = ["AbstractKinetic", "Diagonal", "Euclidean", "General", "Metric"]
