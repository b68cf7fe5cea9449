"""The norm of a normalised layer under Adam and AdamW, keeping the cross term ⟨W, u⟩ (private).

For a scale-invariant group W (⟨W, g⟩ = 0) under optax's Adam/AdamW, θₙ₊₁ = θₙ − η(uₙ + λθₙ) with
uₙ = Dₙ mₙ, Dₙ = 1/(w₁ₙ(√ν̂ₙ + ε)) and w₁ₙ = 1 − b₁ⁿ⁺¹, the squared norm obeys exactly

    |Wₙ₊₁|² = a²|Wₙ|² − 2ηa Cₙ + η²|uₙ|²,      a = 1 − ηλ,   Cₙ = ⟨Wₙ, uₙ⟩.

The recursion of Gould and Tanaka drops Cₙ. With mₙ = b₁mₙ₋₁ + (1−b₁)gₙ (m₋₁ = 0),

    Cₙ = b₁⟨Wₙ, Dₙmₙ₋₁⟩ + (1−b₁) Tₙ,      Tₙ = ⟨Wₙ, Dₙgₙ⟩   (the preconditioner's tilt).

Tₙ carries the bias correction 1/w₁ₙ of Dₙ: at n = 0, C₀ = (1−b₁)T₀ = ⟨W₀, g₀/(√ν̂₀ + ε)⟩ exactly. The
momentum part is split, exactly, into the previous step and the preconditioner's change,

    ⟨Wₙ, Dₙmₙ₋₁⟩ = rₙ⟨Wₙ, uₙ₋₁⟩ + Δₙ,     rₙ = w₁ₙ₋₁/w₁ₙ,   Δₙ = ⟨Wₙ, (Dₙ − rₙDₙ₋₁) mₙ₋₁⟩,

and ⟨Wₙ, uₙ₋₁⟩ = ⟨aWₙ₋₁ − ηuₙ₋₁, uₙ₋₁⟩ = a Cₙ₋₁ − η|uₙ₋₁|². Hence the exact recursion of C

    Cₙ = b₁ rₙ (a Cₙ₋₁ − η|uₙ₋₁|²) + b₁Δₙ + (1−b₁)Tₙ,   C₋₁ = 0.

(The identities hold for any W; scale invariance is what makes T vanish for a scalar D, as in SGD.)

Per coordinate Dₙᵢ − rₙDₙ₋₁ᵢ = rₙDₙ₋₁ᵢ(ρₙᵢ − 1), ρₙᵢ = (√ν̂ₙ₋₁ᵢ + ε)/(√ν̂ₙᵢ + ε): Δ is the change of
ν̂ over one step, weighted by Wᵢuₙ₋₁ᵢ. No group-level quantity fixes it: with
ν̂ₙ = (b₂w₂ₙ₋₁ν̂ₙ₋₁ + (1−b₂)gₙ²)/w₂ₙ and b₂w₂ₙ₋₁ + (1−b₂) = w₂ₙ, to first order (and ε ≪ √ν̂)
ρₙᵢ − 1 ≈ −½ (1−b₂)/w₂ₙ · (gₙᵢ²/ν̂ₙ₋₁ᵢ − 1), the departure of each coordinate's new g² from its own
average (weight (1−b₂)/w₂ₙ ≈ 1/(n+1) for n ≪ 1/(1−b₂): large while ν̂ averages few gradients), and Δ
is its correlation with Wᵢuₙ₋₁ᵢ, coordinate by coordinate. It averages out only if g² is stationary
about ν̂; a trend (the gradient decaying as a loss converges, ν̂ lagging it) makes it one-signed. So Δ
is not closed: the law drops it (Dₙ ≈ rₙDₙ₋₁, ν̂ changes little over one step) and is exact with it.

The law, in three forms:

* ``cross_term=False``: C = 0 (Gould and Tanaka);
* ``tilt=None``: T ≈ 0 as well (the preconditioned gradient orthogonal to W, exact for SGD): C closes
  on |u|², Cₙ = b₁rₙ(a Cₙ₋₁ − η|uₙ₋₁|²), C₀ = 0;
* ``tilt=T``: Cₙ = b₁rₙ(a Cₙ₋₁ − η|uₙ₋₁|²) + (1−b₁)Tₙ, with the tilt measured during the optax run as
  |uₙ|² is; the only approximation left is Δ = 0. At b₁ = 0 this form is exact (u = Dg, C = T).

``drift=Δ`` (measured) adds b₁Δₙ and makes the recursion the exact identity: a check of the
bookkeeping, not a prediction. In continuous time the closed part is the damped oscillator of heavy
ball in the preconditioned velocity u: C relaxes at the rate (1−b₁)/η of the moving average, driven by
−|u|² and by the tilt. Nothing is fitted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


def adam_norm(
    x0: Float[ArrayLike, " G"], update_sq: Float[ArrayLike, "n G"], *, lr: ArrayLike, b1: ArrayLike = 0.9,
    decoupled_weight_decay: ArrayLike = 0.0, cross_term: bool = True, tilt: Float[ArrayLike, "n G"] | None = None,
    drift: Float[ArrayLike, "n G"] | None = None,
) -> Float[Array, "n+1 G"]:
    """|W|² of scale-invariant groups under Adam/AdamW from |W₀|² and the updates' |uₙ|² (see module).

    Returns X₀ … Xₙ. ``cross_term=False`` gives the recursion without ⟨W, u⟩ (Gould and Tanaka).
    ``tilt``: the measured Tₙ = ⟨Wₙ, Dₙgₙ⟩ per step and group, Dₙ = 1/(w₁ₙ(√ν̂ₙ + ε)) with optax's bias
    correction w₁ₙ = 1 − b₁ⁿ⁺¹ (None: T = 0). ``drift``: the measured Δₙ = ⟨Wₙ, (Dₙ − rₙDₙ₋₁)mₙ₋₁⟩
    (None: 0); with both the recursion is exact.

    Example (a constant |u|² = 1, b₁ = 0.9, λ = 0: momentum turns W against u, C < 0, and the norm grows
    faster than without the cross term; a tilt T = 1 here holds C at (1−b₁)T = 0.1 > 0, and the norm shrinks):
        >>> import jax.numpy as jnp; from noether_jax import theory
        >>> [round(float(v), 5) for v in theory.adam_norm(jnp.ones(1), jnp.ones((3, 1)), lr=0.1)[:, 0]]
        [1.0, 1.01, 1.02947, 1.05807]
        >>> [round(float(v), 5) for v in theory.adam_norm(jnp.ones(1), jnp.ones((3, 1)), lr=0.1, cross_term=False)[:, 0]]
        [1.0, 1.01, 1.02, 1.03]
        >>> [round(float(v), 5) for v in theory.adam_norm(jnp.ones(1), jnp.ones((3, 1)), lr=0.1, tilt=jnp.ones((3, 1)))[:, 0]]
        [1.0, 0.99, 0.98, 0.97]
    """
    x0 = jnp.asarray(x0)
    u = jnp.asarray(update_sq, jnp.result_type(x0, float))
    dtype = u.dtype
    if not cross_term and (tilt is not None or drift is not None):
        raise ValueError("`tilt` and `drift` are parts of the cross term ⟨W, u⟩; they need cross_term=True.")

    def series(name, v):
        if v is None:
            return jnp.zeros_like(u)
        v = jnp.asarray(v, dtype)
        if v.shape != u.shape:
            raise ValueError(f"`{name}` must have the shape {u.shape} of `update_sq`, got {v.shape}.")
        return v

    t, d = series("tilt", tilt), series("drift", drift)
    lr, b1 = jnp.asarray(lr, dtype), jnp.asarray(b1, dtype)
    a = 1.0 - lr * jnp.asarray(decoupled_weight_decay, dtype)
    keep = jnp.asarray(1.0 if cross_term else 0.0, dtype)

    def body(carry, inp):
        x, c, u_prev, w_prev = carry
        n, usq, tn, dn = inp
        w = 1.0 - b1 ** (n + 1)
        ratio = jnp.where(w > 0, w_prev / jnp.where(w > 0, w, 1.0), 0.0)
        mom = jnp.where(n == 0, jnp.zeros_like(c), b1 * (ratio * (a * c - lr * u_prev) + dn))
        c = keep * (mom + (1.0 - b1) * tn)
        x = a * a * x - 2.0 * lr * a * c + lr * lr * usq
        return (x, c, usq, w), x

    n = jnp.arange(u.shape[0], dtype=dtype)
    init = (x0.astype(dtype), jnp.zeros_like(x0, dtype), jnp.zeros_like(x0, dtype), jnp.zeros((), dtype))
    _, xs = jax.lax.scan(body, init, (n, u, t, d))
    return jnp.concatenate([x0[None].astype(dtype), xs])


__all__ = ["adam_norm"]
