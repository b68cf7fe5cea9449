"""The one error metric of the library: per-group relative error with a floor (private)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

#: The default floor, relative to the typical group scale (see :func:`relative_error`).
FLOOR = 1e-3


def error_floor(measured: Float[ArrayLike, "S G"], floor: float = FLOOR) -> Float[Array, ""]:
    """``floor`` × the median over groups of maxₜ |measured|: the scale below which errors are absolute."""
    m = jnp.abs(jnp.asarray(measured))
    if m.ndim == 1:
        m = m[:, None]
    return floor * jnp.median(jnp.max(m, axis=0))


def relative_error(
    predicted: Float[ArrayLike, "S G"], measured: Float[ArrayLike, "S G"], *, floor: float = FLOOR
) -> Float[Array, " G"]:
    """Per group: maxₜ |predicted − measured| / max(|measured|, f), f = ``floor`` × the median over groups
    of maxₜ|measured|.

    This is the error every report, summary and sweep of the library quotes. The floor keeps a group
    whose quantity crosses zero (a translation sum ⟨θ_𝒜, 𝟙⟩ can) from dividing by ~0; it is relative to
    the typical group of the same kind, so the metric does not depend on units. Time is axis 0.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> m = jnp.array([[1.0, 2.0], [1.0, 4.0]]); p = jnp.array([[1.0, 2.0], [1.1, 3.0]])
        >>> [round(float(e), 6) for e in nj.theory.relative_error(p, m)]
        [0.1, 0.25]
    """
    p, m = jnp.asarray(predicted), jnp.asarray(measured)
    f = error_floor(m, floor)
    return jnp.max(jnp.abs(p - m) / jnp.maximum(jnp.abs(m), f), axis=0)
