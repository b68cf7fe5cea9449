"""Helpers shared by the laws (private)."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

Law = Literal["translation", "scale", "rescale"]
Quadrature = Literal["left", "midpoint", "hold"]
_LAWS = ("translation", "scale", "rescale")
_QUADRATURES = ("left", "midpoint", "hold")


def as_float(x: ArrayLike) -> Array:
    """As an array of the default float dtype (float64 under x64)."""
    return jnp.asarray(x, dtype=jnp.result_type(float))


def as_state_float(x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def check_law(law: str) -> None:
    if law not in _LAWS:
        raise ValueError(f"`law` must be one of {_LAWS}, got {law!r}.")


def check_quadrature(quadrature: str) -> None:
    if quadrature not in _QUADRATURES:
        raise ValueError(f"`quadrature` must be one of {_QUADRATURES}, got {quadrature!r}.")


def phi1(z: Array) -> Array:
    """φ₁(z) = (e^z − 1)/z, with φ₁(0) = 1 (accurate for all z, via expm1)."""
    zero = z == 0
    safe = jnp.where(zero, 1.0, z)
    return jnp.where(zero, 1.0, jnp.expm1(safe) / safe)


def scan_law(update, state, forcing, num_steps, value0):
    if forcing is None and num_steps is None:
        raise ValueError("give the forcing sequence, or `num_steps` for an unforced law (translation).")
    if forcing is not None:
        forcing = jnp.asarray(forcing)
        shape = jnp.broadcast_shapes(jnp.shape(value0), forcing.shape[1:])
        state = jax.tree.map(lambda s: jnp.broadcast_to(s, shape), state)
        value0 = jnp.broadcast_to(value0, shape)
    _, ys = jax.lax.scan(lambda s, f: update(s, f), state, forcing, length=num_steps)
    return jnp.concatenate([value0[None].astype(ys.dtype), ys], axis=0)
