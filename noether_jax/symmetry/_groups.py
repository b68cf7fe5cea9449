"""Group algebra of masked symmetries: per-group values, norms, angles and names (private).

A masked symmetry (:class:`~noether_jax.symmetry.MaskedSymmetry`) labels parameter entries with group
ids; a *tuple* of them stands for the concatenation of their groups (a kernel's rows and columns
belong to different rescale units, so one mask cannot hold both).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PyTree

from ._actions import AbstractSymmetry, MaskedSymmetry, _check_mask, flat_leaves, flat_segment_sum, group_sums

Symmetries = MaskedSymmetry | tuple[MaskedSymmetry, ...]


def parts(sym: Symmetries) -> tuple[MaskedSymmetry, ...]:
    return sym if isinstance(sym, tuple) else (sym,)


def pair(sym: Symmetries, a: PyTree, b: PyTree) -> Float[Array, " G"]:
    """``sym.pair(a, b)`` = ⟨b, ξ_g(a)⟩ per group, concatenated over a tuple of symmetries."""
    if isinstance(sym, tuple):
        return jnp.concatenate([s.pair(a, b) for s in sym])
    return sym.pair(a, b)


def n_groups(sym: Symmetries) -> int:
    return sum(s.n_groups for s in parts(sym))


def group_names(sym: Symmetries) -> list[str]:
    """The group names of a symmetry or a tuple of them (``group i`` where a symmetry has none)."""
    return [n for s in parts(sym) for n in (s.names if len(s.names) == s.n_groups else [f"group {i}" for i in range(s.n_groups)])]


def check_scale(sym: Any) -> MaskedSymmetry:
    """One masked scale symmetry (for the functions of Noether's Learning Dynamics)."""
    if not isinstance(sym, MaskedSymmetry):
        raise TypeError(
            "the scale symmetry must be one nj.symmetry.Scale (a MaskedSymmetry, e.g. "
            f"`nj.symmetry.detect(...).symmetries['scale']`), got {type(sym).__name__}."
        )
    return sym


def check_symmetry(sym: Any, name: str = "sym") -> AbstractSymmetry:
    if not isinstance(sym, AbstractSymmetry):
        raise TypeError(f"`{name}` must be an nj.symmetry object (Translation, Scale, Rescale, Action), got {type(sym).__name__}.")
    return sym


def group_values(sym: MaskedSymmetry, values: Float[ArrayLike, " G"], like: PyTree, fill: float = 1.0) -> PyTree:
    """Spread one value per group onto the parameter entries of that group (``fill`` elsewhere).

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0, 1, -1])})
        >>> nj.symmetry.group_values(sym, jnp.array([2.0, 3.0]), {"w": jnp.zeros(4)})["w"].tolist()
        [2.0, 2.0, 3.0, 1.0]
    """
    values = jnp.asarray(values)

    def one(ids, x):
        ids = jnp.broadcast_to(ids, jnp.shape(x))
        return jnp.where(ids >= 0, values[jnp.clip(ids, 0)], fill).astype(jnp.result_type(x, values))

    return jax.tree.map(one, sym.ids, like)


def in_group(sym: MaskedSymmetry, like: PyTree) -> PyTree:
    """Boolean mask of the entries that belong to some group."""
    return jax.tree.map(lambda ids, x: jnp.broadcast_to(ids, jnp.shape(x)) >= 0, sym.ids, like)


def normalise_groups(sym: MaskedSymmetry, params: PyTree, norm_sq: Float[ArrayLike, " G"] | None = None) -> PyTree:
    """Rescale every group to unit norm (or to squared norms ``norm_sq``); other entries unchanged.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0, -1])})
        >>> [round(v, 9) for v in nj.symmetry.normalise_groups(sym, {"w": jnp.array([3.0, 4.0, 7.0])})["w"].tolist()]
        [0.6, 0.8, 7.0]
    """
    sym = check_scale(sym)
    r2 = sym.group_norms(params)
    target = jnp.ones_like(r2) if norm_sq is None else jnp.asarray(norm_sq, r2.dtype)
    factor = group_values(sym, jnp.sqrt(target / r2), params)
    return jax.tree.map(jnp.multiply, params, factor)


def group_angles(sym: MaskedSymmetry, a: PyTree, b: PyTree) -> Float[Array, " G"]:
    """The angle (degrees) between the directions of every group in ``a`` and in ``b``.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0])})
        >>> nj.symmetry.group_angles(sym, {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([2.0, 2.0])}).round(6).tolist()
        [45.0]
    """
    sym = check_scale(sym)
    cross = sym.pair(a, b)  # Σ_{i∈g} b_i a_i for scale (c = 1, d = 0)
    cos = cross / jnp.sqrt(sym.group_norms(a) * sym.group_norms(b))
    return jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))


def segment_sum(sym: MaskedSymmetry, values: PyTree) -> Float[Array, " G"]:
    """Σ_{i∈g} vᵢ for every group g of ``sym`` (``values`` a pytree like the parameters)."""
    dtype = jnp.result_type(*jax.tree.leaves(values), float)
    return group_sums(jax.tree.leaves(sym.ids), jax.tree.leaves(values), sym.n_groups, dtype)


def gradient_residuals(sym: Symmetries, params: PyTree, grads: PyTree) -> Float[Array, " G"]:
    """|⟨g, ξ_g⟩| / (‖g_𝒜‖‖ξ_g‖) per group: the gradient constraint, relative (0 for a dead group).

    A symmetry of the loss gives round-off; a group that is not symmetric gives a residual of order one.

    Example:
        >>> import jax, jax.numpy as jnp, noether_jax as nj
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0])})
        >>> loss = lambda p: jnp.sum(p["w"] / jnp.linalg.norm(p["w"]))      # scale-invariant
        >>> p = {"w": jnp.array([0.3, -1.2])}
        >>> bool(nj.symmetry.gradient_residuals(sym, p, jax.grad(loss)(p))[0] < 1e-12)
        True
    """
    out = []
    leaves = jax.tree.leaves(params)
    shapes = [jnp.shape(x) for x in leaves]
    dtype = jnp.result_type(*leaves, *jax.tree.leaves(grads), float)
    x, g = flat_leaves(leaves, shapes, dtype), flat_leaves(jax.tree.leaves(grads), shapes, dtype)
    for s in parts(sym):  # on the flattened tree: three segment sums per part, whatever the number of leaves
        _check_mask(s.ids, params, "the symmetry's mask")
        c, d = (flat_leaves(jax.tree.leaves(t), shapes, dtype) for t in (s.scale, s.shift))
        idx = flat_leaves(jax.tree.leaves(s.ids), shapes)
        xi = c * x + d
        dot = jnp.abs(flat_segment_sum(idx, g * xi, s.n_groups))
        den = jnp.sqrt(flat_segment_sum(idx, g * g, s.n_groups) * flat_segment_sum(idx, xi * xi, s.n_groups))
        out.append(jnp.where(den > 0, dot / jnp.where(den > 0, den, 1.0), 0.0))
    return jnp.concatenate(out)
