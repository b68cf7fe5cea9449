"""The norm of a normalised layer under Adam and AdamW, keeping the cross term ⟨W, u⟩ (private).

For a scale-invariant group W (⟨W, g⟩ = 0) under optax's Adam/AdamW, θₙ₊₁ = θₙ − η(uₙ + λθₙ) with
uₙ = Dₙ mₙ, Dₙ = 1/(w₁ₙ(√ν̂ₙ + ε)) and w₁ₙ = 1 − b₁ⁿ⁺¹, the squared norm obeys exactly

    |Wₙ₊₁|² = a²|Wₙ|² − 2ηa Cₙ + η²|uₙ|²,      a = 1 − ηλ,   Cₙ = ⟨Wₙ, uₙ⟩.

The recursion of Gould and Tanaka drops Cₙ. With mₙ = b₁mₙ₋₁ + (1−b₁)gₙ,

    Cₙ = b₁⟨Wₙ, Dₙmₙ₋₁⟩ + (1−b₁)⟨Wₙ, Dₙgₙ⟩,   ⟨Wₙ, uₙ₋₁⟩ = a Cₙ₋₁ − η|uₙ₋₁|².

Treating Adam as heavy ball with a slowly varying per-coordinate learning rate — Dₙ ≈ (w₁ₙ₋₁/w₁ₙ)Dₙ₋₁,
true when ν̂ changes little over the momentum window 1/(1−b₁) — and the preconditioned gradient as
orthogonal to W within the group (⟨W, Dg⟩ ≈ 0, exact for SGD), C closes on |u|²:

    Cₙ = b₁ (w₁ₙ₋₁/w₁ₙ) (a Cₙ₋₁ − η|uₙ₋₁|²),   C₀ = 0.

In continuous time this is the damped oscillator of heavy ball in the preconditioned velocity u: C
relaxes at the rate (1−b₁)/η of the moving average and is driven by −|u|². Nothing is fitted; the law
is fed the measured |uₙ|², as the Gould–Tanaka recursion is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


def adam_norm(
    x0: Float[ArrayLike, " G"], update_sq: Float[ArrayLike, "n G"], *, lr: ArrayLike, b1: ArrayLike = 0.9,
    decoupled_weight_decay: ArrayLike = 0.0, cross_term: bool = True,
) -> Float[Array, "n+1 G"]:
    """|W|² of scale-invariant groups under Adam/AdamW from |W₀|² and the updates' |uₙ|² (see module).

    Returns X₀ … Xₙ. ``cross_term=False`` gives the recursion without ⟨W, u⟩ (Gould and Tanaka).

    Example (a constant |u|² = 1, b₁ = 0.9, λ = 0: momentum turns W against u, C < 0, and the norm grows
    faster than without the cross term):
        >>> import jax.numpy as jnp; from noether_jax import theory
        >>> [round(float(v), 5) for v in theory.adam_norm(jnp.ones(1), jnp.ones((3, 1)), lr=0.1)[:, 0]]
        [1.0, 1.01, 1.02947, 1.05807]
        >>> [round(float(v), 5) for v in theory.adam_norm(jnp.ones(1), jnp.ones((3, 1)), lr=0.1, cross_term=False)[:, 0]]
        [1.0, 1.01, 1.02, 1.03]
    """
    x0 = jnp.asarray(x0)
    u = jnp.asarray(update_sq, jnp.result_type(x0, float))
    dtype = u.dtype
    lr, b1 = jnp.asarray(lr, dtype), jnp.asarray(b1, dtype)
    a = 1.0 - lr * jnp.asarray(decoupled_weight_decay, dtype)
    keep = jnp.asarray(1.0 if cross_term else 0.0, dtype)

    def body(carry, inp):
        x, c, u_prev, w_prev = carry
        n, usq = inp
        w = 1.0 - b1 ** (n + 1)
        ratio = jnp.where(w > 0, w_prev / jnp.where(w > 0, w, 1.0), 0.0)
        c = jnp.where(n == 0, jnp.zeros_like(c), keep * b1 * ratio * (a * c - lr * u_prev))
        x = a * a * x - 2.0 * lr * a * c + lr * lr * usq
        return (x, c, usq, w), x

    n = jnp.arange(u.shape[0], dtype=dtype)
    init = (x0.astype(dtype), jnp.zeros_like(x0, dtype), jnp.zeros_like(x0, dtype), jnp.zeros((), dtype))
    _, xs = jax.lax.scan(body, init, (n, u))
    return jnp.concatenate([x0[None].astype(dtype), xs])


__all__ = ["adam_norm"]
