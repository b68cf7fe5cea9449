"""The RMSProp correspondence of a normalised layer under SGD, as optax transformations (private).

Let ĝ = r g_𝒜 be the gradient on the unit sphere (g_𝒜 = ĝ/r is tangent). One SGD step
θ' = (1−ηλ)θ − ηĝ/r moves the direction to θ̂' = normalise(θ̂ − η ĝ/((1−ηλ) r²)) and the norm to
r'² = (1−ηλ)²r² + η²|ĝ|²/r², hence r'⁴ = (1−ηλ)⁴r⁴ + 2(1−ηλ)²η²|ĝ|² + O(η⁴|ĝ|⁴/r⁴). So SGD on θ
*is*, to first order in the angular step, the optimiser on θ̂

    u' = normalise(u − (lr/√G) ĝ),    G' = ρ G + γ |ĝ|²,

with √G ↔ r², lr = η, ρ = e^{−4ηλ/(1−β)}, γ = 2η²(1+β)/(1−β)³ and G(0) = r⁴(0) (NLD eq. 18; per
step, the continuous rates times Δt = η). With momentum the direction step is a trace of past
gradients, so the optimiser keeps optax's RMSProp-with-momentum order (precondition, then
``trace(β)``). The step uses Gₙ, then accumulates (SGD's step uses rₙ², not rₙ₊₁²).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float

from ..symmetry import MaskedSymmetry, check_scale, group_values, in_group, normalise_groups

Accumulate = Literal["gradient", "momentum"]


class RMSPropMapping(NamedTuple):
    """Hyperparameters of the group-RMSProp optimiser on θ̂ that SGD(η, β, λ) on a normalised layer is.

    ``G ← decay·G + gain·f`` per group (f = |ĝ|² or the momentum buffer's |m|², see ``accumulate``),
    step ``−lr · trace_β(ĝ)/√G`` then renormalise. ``initial_accumulator`` is G(0) = r⁴(0).
    """

    lr: Array
    decay: Array
    gain: Array
    initial_accumulator: Array
    momentum: Array
    accumulate: str = "gradient"

    def standard_form(self) -> tuple[Array, Array]:
        """(lr', G'(0)) of the same optimiser written as textbook RMSProp G ← ρG + (1−ρ)f, which has
        gain 1−ρ: scale G by c = (1−ρ)/γ, so lr' = lr·√c and G'(0) = c·G(0) (needs λ > 0: with λ = 0,
        ρ = 1 and the accumulator is AdaGrad's, with no decay)."""
        c = (1.0 - self.decay) / self.gain
        return self.lr * jnp.sqrt(c), self.initial_accumulator * c


def rmsprop_mapping(
    r0_sq: Float[ArrayLike, " G"],
    *,
    lr: ArrayLike,
    momentum: ArrayLike = 0.0,
    weight_decay: ArrayLike = 0.0,
    accumulate: Accumulate = "gradient",
) -> RMSPropMapping:
    """Map SGD(η, β, λ) on scale groups with initial |θ_𝒜(0)|² = r0_sq to the group RMSProp on θ̂.

    ============================  =================================================
    RMSProp on θ̂                 SGD on θ = rθ̂ (NLD eq. 18)         
    ============================  =================================================
    √G                            r²
    lr                            η (the trace of β supplies the 1/(1−β))
    decay ρ                       e^{−4ηλ/(1−β)}
    gain γ (f = |ĝ|²)             2η²(1+β)/(1−β)³  (eq. 17; ``accumulate="gradient"``)
    gain γ (f = |trace_β ĝ|²)     2η²(1+β)/(1−β)   (``accumulate="momentum"``)
    G(0)                          r⁴(0)
    momentum                      β
    ============================  =================================================

    The two ``accumulate`` forms coincide at β = 0. "momentum" accumulates the optimiser's own buffer
    m = Σβᵏĝ (|θ̇|²r² = |m|²), which equals |ĝ|²/(1−β)² only for a slowly varying gradient.

    Example:
        >>> from noether_jax.nld import rmsprop_mapping
        >>> m = rmsprop_mapping([1.0, 4.0], lr=0.1)
        >>> round(float(m.gain), 12), m.initial_accumulator.tolist(), float(m.decay)
        (0.02, [1.0, 16.0], 1.0)
    """
    if accumulate not in ("gradient", "momentum"):
        raise ValueError(f"`accumulate` must be 'gradient' or 'momentum', got {accumulate!r}.")
    r0_sq = jnp.asarray(r0_sq)
    dtype = r0_sq.dtype if jnp.issubdtype(r0_sq.dtype, jnp.floating) else jnp.result_type(float)  # the groups' precision
    lr, beta, k = (jnp.asarray(v).astype(dtype) for v in (lr, momentum, weight_decay))
    mu = 1.0 - beta
    decay = jnp.exp(-4.0 * lr * k / mu)
    gain = 2.0 * lr**2 * (1.0 + beta) / (mu**3 if accumulate == "gradient" else mu)
    r0_sq = r0_sq.astype(dtype)
    return RMSPropMapping(lr, decay, gain, r0_sq**2, beta, accumulate)


class GroupRMSState(NamedTuple):
    """State of :func:`scale_by_group_rms`: one accumulator G per group."""

    accumulator: Array


def scale_by_group_rms(
    sym: MaskedSymmetry, decay: ArrayLike, gain: ArrayLike, initial_accumulator: Float[ArrayLike, " G"], *, eps: float = 0.0
) -> optax.GradientTransformation:
    """Divide the updates of every group by √G of its group, then accumulate G ← decay·G + gain·|u_𝒜|².

    Entries outside the groups pass through unchanged. The step uses Gₙ (before accumulating),
    the order that matches SGD on a normalised layer. With ``decay = 1`` the accumulator is AdaGrad's.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> from noether_jax.nld import scale_by_group_rms
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0, -1])})
        >>> tx = scale_by_group_rms(sym, 0.5, 1.0, jnp.array([4.0]))
        >>> g = {"w": jnp.array([1.0, 1.0, 1.0])}
        >>> u, s = tx.update(g, tx.init(g))
        >>> u["w"].tolist(), s.accumulator.tolist()
        ([0.5, 0.5, 1.0], [4.0])
    """
    sym = check_scale(sym)

    def init(params):
        g0 = jnp.asarray(initial_accumulator, jnp.result_type(*jax.tree.leaves(params), float))
        return GroupRMSState(jnp.broadcast_to(g0, (sym.n_groups,)))

    def update(updates, state, params=None):
        del params
        acc = state.accumulator
        factor = group_values(sym, 1.0 / jnp.sqrt(acc + eps), updates)
        new = jax.tree.map(jnp.multiply, updates, factor)
        acc = jnp.asarray(decay, acc.dtype) * acc + jnp.asarray(gain, acc.dtype) * sym.pair(updates, updates)
        return new, GroupRMSState(acc)

    return optax.GradientTransformation(init, update)


def project_to_sphere(sym: MaskedSymmetry) -> optax.GradientTransformationExtraArgs:
    """Turn updates into ones that land every group on the unit sphere: normalise(θ_𝒜 + u_𝒜) − θ_𝒜.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> from noether_jax.nld import project_to_sphere
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0])})
        >>> p = {"w": jnp.array([1.0, 0.0])}
        >>> u, _ = project_to_sphere(sym).update({"w": jnp.array([0.0, 1.0])}, None, p)
        >>> [round(v, 6) for v in (p["w"] + u["w"]).tolist()]
        [0.707107, 0.707107]
    """
    sym = check_scale(sym)

    def f(updates, params):
        new = jax.tree.map(jnp.add, params, updates)
        unit = normalise_groups(sym, new)
        inside = in_group(sym, params)
        return jax.tree.map(lambda m, n, p, u: jnp.where(m, n - p, u), inside, unit, params, updates)

    return optax.stateless(f)


def _decay_outside(sym: MaskedSymmetry, weight_decay: ArrayLike) -> optax.GradientTransformation:
    """Coupled weight decay g + λθ on the entries outside the groups only."""

    def f(updates, params):
        inside = in_group(sym, params)
        return jax.tree.map(lambda m, u, p: jnp.where(m, u, u + weight_decay * p), inside, updates, params)

    return optax.stateless(f)


def sphere_rmsprop(
    sym: MaskedSymmetry, mapping: RMSPropMapping, weight_decay: ArrayLike = 0.0
) -> optax.GradientTransformation:
    """The group RMSProp on θ̂ of :func:`rmsprop_mapping`, as one ``optax.chain``.

    On the scale groups (their parameters stored at unit norm): ``scale_by_group_rms`` (before the
    trace for ``accumulate="gradient"``, after it for ``"momentum"``), ``trace(β)``, ``scale(−lr)``,
    ``project_to_sphere``. Every other parameter gets heavy ball with coupled ``weight_decay``,
    exactly like SGD, so the two runs differ only in how the groups are trained.

    Example:
        >>> import jax, jax.numpy as jnp, optax, noether_jax as nj
        >>> from noether_jax.nld import rmsprop_mapping, sphere_rmsprop
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0]), "b": jnp.array([-1])})
        >>> tx = sphere_rmsprop(sym, rmsprop_mapping(jnp.array([1.0]), lr=0.1))
        >>> p = {"w": jnp.array([1.0, 0.0]), "b": jnp.array([1.0])}
        >>> u, _ = tx.update({"w": jnp.array([0.0, 1.0]), "b": jnp.array([1.0])}, tx.init(p), p)
        >>> p = optax.apply_updates(p, u)
        >>> float(jnp.linalg.norm(p["w"])), p["b"].tolist()
        (1.0, [0.9])
    """
    sym = check_scale(sym)
    rms = scale_by_group_rms(sym, mapping.decay, mapping.gain, mapping.initial_accumulator)
    trace = optax.trace(decay=mapping.momentum, nesterov=False)
    parts = (rms, trace) if mapping.accumulate == "gradient" else (trace, rms)
    return optax.chain(_decay_outside(sym, weight_decay), *parts, optax.scale(-mapping.lr), project_to_sphere(sym))
