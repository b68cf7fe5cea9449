"""Small pytree helpers shared by every subpackage (private)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def tree_vdot(a: Any, b: Any) -> jax.Array:
    """Sum over leaves of ⟨a, b⟩ (real inner product)."""
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x, y), a, b))
    return sum(leaves, start=jnp.zeros(()))


def tree_sq_norm(a: Any) -> jax.Array:
    return tree_vdot(a, a)


def tree_axpy(alpha: Any, x: Any, y: Any) -> Any:
    """alpha * x + y, leafwise."""
    return jax.tree.map(lambda u, w: alpha * u + w, x, y)


def tree_scale(alpha: Any, x: Any) -> Any:
    return jax.tree.map(lambda u: alpha * u, x)


def tree_sub(x: Any, y: Any) -> Any:
    return jax.tree.map(lambda u, w: u - w, x, y)


def tree_finite(tree: Any) -> jax.Array:
    """True when every entry of every leaf is finite (True for an empty tree)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def float_dtype(tree: Any) -> Any:
    """The floating dtype of a pytree's leaves (the default float when it has none)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    return jnp.result_type(*leaves) if leaves else jnp.result_type(float)


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Cast every floating leaf of ``tree`` to ``dtype`` (other leaves unchanged)."""

    def one(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(one, tree)


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds a value known now (not a tracer inside jit/vmap)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def as_time(t: Any) -> jax.Array:
    return jnp.asarray(t, dtype=jnp.result_type(float))
