"""Noether charges, their generalised conservation law, and kinetic symmetry breaking.

With the factor φ(t) = e^{∫ρ} divided out, the charge of group g is Q̃_g = ⟨p, ξ_g⟩ and (NLD eq. 8)

    dQ̃_g/dt = −ρ Q̃_g + δ_gK − δ_gV,
    δ_gK = ⟨∂K/∂q, ξ_g⟩ + ⟨p, (∂_q ξ_g) v⟩,   δ_gV = ⟨∇V, ξ_g⟩.

δ_gK is the kinetic symmetry breaking (KSB): the learning rule breaking a symmetry of the loss.
Its first part comes from the metric changing along the symmetry orbit (zero for constant metrics),
the second from the symmetry moving velocities (m|v_𝒜|² for scale under Euclidean K; zero for
translations and rotations). All per-group quantities come from one derivative in α ∈ ℝ^G.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, PyTree

from .._tree import as_time
from ..mechanics import Lagrangian, Trajectory
from ..mechanics.kinetic import AbstractKinetic
from ._actions import AbstractSymmetry
from ._groups import check_symmetry as _check_sym


def _kinetic_of(system: Any, aux: Any = None) -> AbstractKinetic:
    """The kinetic term of a Lagrangian, a kinetic object, or a learning rule (anything with ``.kinetic()``);
    an adaptive rule's depends on its accumulators ``aux``."""
    if isinstance(system, Lagrangian):
        return system.kinetic
    if isinstance(system, AbstractKinetic):
        return system
    kinetic = getattr(system, "kinetic", None)
    if callable(kinetic):
        out = kinetic() if aux is None else kinetic(aux)
        if isinstance(out, AbstractKinetic):
            return out
    raise TypeError(
        f"expected an nj.Lagrangian, an nj.kinetic object or an nj.rules learning rule, got {type(system).__name__}."
    )


class NoetherCharge(eqx.Module):
    """Q̃(q, v, t) = ⟨∂K/∂v, ξ_g(q)⟩ for every group g: shape ``(n_groups,)``."""

    kinetic: AbstractKinetic
    symmetry: AbstractSymmetry

    def __call__(self, q: PyTree, v: PyTree, t: ArrayLike = 0.0) -> Float[Array, " G"]:
        return self.symmetry.pair(q, self.kinetic.momentum(q, v, as_time(t)))


def noether_charge(system: Lagrangian | AbstractKinetic, sym: AbstractSymmetry) -> NoetherCharge:
    """The Noether charge of ``sym`` under ``system``'s kinetic term, with the factor φ divided out.

    Example (angular momentum of a particle in the plane):
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> rot = nj.symmetry.Action(lambda q, a: jnp.array([jnp.cos(a) * q[0] - jnp.sin(a) * q[1],
        ...                                                   jnp.sin(a) * q[0] + jnp.cos(a) * q[1]]))
        >>> lag = nj.Lagrangian(nj.kinetic.Euclidean(2.0), lambda q, t: jnp.sum(q**2))
        >>> nj.noether_charge(lag, rot)(jnp.array([1.0, 0.0]), jnp.array([0.0, 3.0])).tolist()
        [6.0]
    """
    return NoetherCharge(_kinetic_of(system), _check_sym(sym))


class KineticSymmetryBreaking(eqx.Module):
    """δ_gK(q, v, t) = ∂/∂α_g K(ψ(q, α), ∂ψ v) at α = 0, for every group g."""

    kinetic: AbstractKinetic
    symmetry: AbstractSymmetry

    def __call__(self, q: PyTree, v: PyTree, t: ArrayLike = 0.0) -> Float[Array, " G"]:
        t = as_time(t)
        zero = jnp.zeros(self.symmetry.n_groups, jnp.result_type(*jax.tree.leaves(q), float))
        return jax.grad(lambda a: self.kinetic(*self.symmetry.lift(q, v, a), t))(zero)

    def parts(self, q: PyTree, v: PyTree, t: ArrayLike = 0.0) -> tuple[Float[Array, " G"], Float[Array, " G"]]:
        """(metric part ⟨∂K/∂q, ξ_g⟩, velocity part ⟨p, (∂_q ξ_g) v⟩); they sum to δ_gK."""
        t = as_time(t)
        zero = jnp.zeros(self.symmetry.n_groups, jnp.result_type(*jax.tree.leaves(q), float))
        metric = jax.grad(lambda a: self.kinetic(self.symmetry.act(q, a), v, t))(zero)
        p = self.kinetic.momentum(q, v, t)
        velocity = jax.grad(lambda a: _vdot(p, self.symmetry.lift(q, v, a)[1]))(zero)
        return metric, velocity


def _vdot(a, b):
    return sum((jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)), start=jnp.zeros(()))


def kinetic_symmetry_breaking(system: Any, sym: AbstractSymmetry, *, aux: Any = None) -> KineticSymmetryBreaking:
    """δ_αK: how much the learning rule (kinetic term) breaks ``sym``, per group.

    ``system`` is an ``nj.Lagrangian``, an ``nj.kinetic`` object or a learning rule from ``nj.rules``. An
    adaptive rule's kinetic term K = ½ θ̇ᵀ (P/c₁) θ̇ depends on its accumulators: pass them as ``aux``
    (``rule.initial_state(params, opt_state)``, or ``Trajectory.aux`` at one time).

    Example (Euclidean kinetic energy breaks scale symmetry by m|v_𝒜|²):
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> sym = nj.symmetry.Scale({"w": jnp.array([True, True])})
        >>> dK = nj.kinetic_symmetry_breaking(nj.kinetic.Euclidean(0.5), sym)
        >>> dK({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 4.0])}).tolist()
        [12.5]
    """
    return KineticSymmetryBreaking(_kinetic_of(system, aux), _check_sym(sym))


class ChargeBudget(eqx.Module):
    """The terms of dQ̃/dt for every group (NLD eqs. 8, 10–11), each of shape ``(n_groups,)``.

    ``rate`` is computed independently, from the Euler–Lagrange acceleration (dQ̃/dt = ⟨ṗ, ξ⟩ +
    ⟨p, (∂ξ)v⟩); the four parts dissipation + kinetic_asymmetry + metric + potential sum to it.
    """

    charge: Float[Array, " G"]
    rate: Float[Array, " G"]
    dissipation: Float[Array, " G"]
    kinetic_asymmetry: Float[Array, " G"]
    metric: Float[Array, " G"]
    potential: Float[Array, " G"]

    def residual(self) -> Float[Array, " G"]:
        return self.rate - (self.dissipation + self.kinetic_asymmetry + self.metric + self.potential)


def charge_budget(lagrangian: Any, sym: AbstractSymmetry, q: PyTree, v: PyTree = None, t: ArrayLike = 0.0, *,
                  aux: Any = None) -> ChargeBudget:
    """Split the rate of the Noether charge into dissipation, kinetic asymmetry, metric and potential parts.

    ``lagrangian`` is an ``nj.Lagrangian`` (state ``q``, ``v`` at ``t``), or an adaptive rule's flow
    (``nj.rules.adam(...).flow(loss)``): then the budget is that of the Euclidean charge ⟨θ̇, ξ⟩/c₁ along the
    flow, whose non-Euclidean-metric term is non-zero (see ``AdaptiveFlow.charge_terms``). Its state is
    ``q`` with the accumulators ``aux``, or ``q`` a :class:`~noether_jax.Trajectory` of the flow (then every
    part has a leading time axis).

    Example (weight decay breaks scale symmetry through the potential):
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> rule = nj.rules.sgd(lr=0.1, momentum=0.9, weight_decay=1e-2)
        >>> lag = rule.lagrangian(lambda p: jnp.sum(jnp.tanh(p["w"] / jnp.linalg.norm(p["w"]))))
        >>> sym = nj.symmetry.Scale({"w": jnp.array([True, True])})
        >>> b = nj.charge_budget(lag, sym, {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([0.3, -0.1])})
        >>> abs(float(b.residual()[0])) < 1e-10
        True
    """
    if hasattr(lagrangian, "charge_terms"):
        return _adaptive_budget(lagrangian, _check_sym(sym), q, aux)
    if not isinstance(lagrangian, Lagrangian):
        raise TypeError(f"`lagrangian` must be an nj.Lagrangian or an adaptive rule's flow, got {type(lagrangian).__name__}.")
    if v is None:
        raise ValueError("`v` (the velocity) is required for the charge budget of a Lagrangian.")
    sym = _check_sym(sym)
    t = as_time(t)
    K = lagrangian.kinetic
    a = lagrangian.acceleration(q, v, t)
    p, p_dot = jax.jvp(lambda q_, v_, t_: K.momentum(q_, v_, t_), (q, v, t), (v, a, jnp.ones_like(t)))
    zero = jnp.zeros(sym.n_groups, jnp.result_type(*jax.tree.leaves(q), float))
    charge = sym.pair(q, p)
    velocity_part = jax.grad(lambda al: _vdot(p, sym.lift(q, v, al)[1]))(zero)
    rate = sym.pair(q, p_dot) + velocity_part
    metric = jax.grad(lambda al: K(sym.act(q, al), v, t))(zero)
    potential = -jax.grad(lambda al: lagrangian.V(sym.act(q, al), t))(zero)
    return ChargeBudget(
        charge=charge,
        rate=rate,
        dissipation=-lagrangian.rho(t) * charge,
        kinetic_asymmetry=velocity_part,
        metric=metric,
        potential=potential,
    )


def _adaptive_budget(flow: Any, sym: AbstractSymmetry, q: Any, aux: Any) -> ChargeBudget:
    if isinstance(q, Trajectory):
        if aux is not None:
            raise ValueError("pass either a Trajectory (which holds the accumulators) or `q` with `aux=`, not both.")
        if q.aux is None:
            raise ValueError("this Trajectory holds no accumulators: simulate the adaptive rule's flow, rule.flow(loss).")
        return jax.vmap(lambda q_, a_: _adaptive_budget(flow, sym, q_, a_))(q.q, q.aux)
    if aux is None:
        raise ValueError("the charge budget of an adaptive rule depends on its accumulators: pass aux= (e.g. "
                         "rule.initial_state(params, opt_state)) or a Trajectory of rule.flow(loss).")
    return ChargeBudget(**flow.charge_terms(sym, q, aux))


class SymmetryBreaking(eqx.Module):
    """Whether a learning rule breaks a symmetry: per group, ``breaks`` (relative > tol) and ``relative``,
    the largest |δ_gK| / 2K over the random velocities tried."""

    breaks: Bool[Array, " G"]
    relative: Float[Array, " G"]


def breaks_symmetry(
    system: Any, sym: AbstractSymmetry, q: PyTree, *, aux: Any = None, key: jax.Array | None = None, n_samples: int = 8,
    tol: float = 1e-8,
) -> SymmetryBreaking:
    """Does a learning rule break ``sym``? δ_gK at random velocities, relative to 2K (:class:`SymmetryBreaking`).

    ``aux``: an adaptive rule's accumulators, on which its kinetic term depends (see :func:`kinetic_symmetry_breaking`).

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> rot = nj.symmetry.Action(lambda q, a: jnp.array([jnp.cos(a) * q[0] - jnp.sin(a) * q[1],
        ...                                                   jnp.sin(a) * q[0] + jnp.cos(a) * q[1]]))
        >>> q = jnp.array([1.0, 0.5])
        >>> bool(nj.breaks_symmetry(nj.rules.sgd(lr=0.1), rot, q).breaks[0])
        False
        >>> bool(nj.breaks_symmetry(nj.rules.preconditioned(jnp.array([1.0, 3.0]), lr=0.1), rot, q).breaks[0])
        True
    """
    K = _kinetic_of(system, aux)
    dK = KineticSymmetryBreaking(K, _check_sym(sym))
    key = jax.random.PRNGKey(0) if key is None else key
    flat, unravel = jax.flatten_util.ravel_pytree(q)

    def sample(k):  # one draw for the whole tree: a threefry call per leaf took seconds to compile
        v = unravel(jax.random.normal(k, flat.shape, jnp.result_type(flat.dtype, float)))
        return jnp.abs(dK(q, v)) / (2.0 * jnp.abs(K(q, v, 0.0)) + jnp.finfo(jnp.result_type(float)).tiny)

    rel = jnp.max(jax.vmap(sample)(jax.random.split(key, n_samples)), axis=0)
    return SymmetryBreaking(rel > tol, rel)


__all__ = [
    "ChargeBudget",
    "KineticSymmetryBreaking",
    "NoetherCharge",
    "SymmetryBreaking",
    "breaks_symmetry",
    "charge_budget",
    "kinetic_symmetry_breaking",
    "noether_charge",
]
