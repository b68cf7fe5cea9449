"""The effective learning rate of a normalised group and NLD eq. 17 for its norm (private)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .. import theory
from .._tree import is_concrete


def effective_learning_rate(r2: Float[ArrayLike, "*S G"], *, lr: ArrayLike, momentum: ArrayLike = 0.0) -> Float[Array, "*S G"]:
    """η/((1−β) r²): the learning rate of the direction θ̂ of a scale-invariant group (overdamped).

    Example:
        >>> import noether_jax as nj
        >>> round(float(nj.nld.effective_learning_rate(4.0, lr=0.1, momentum=0.9)), 12)
        0.25
    """
    return jnp.asarray(lr) / ((1.0 - jnp.asarray(momentum)) * jnp.asarray(r2))


def predict_r4_velocity(
    r4_0: Float[ArrayLike, " G"], forcing: Float[ArrayLike, "N G"], *, lr: ArrayLike, momentum: ArrayLike = 0.0,
    weight_decay: ArrayLike = 0.0,
) -> Float[Array, "N+1 G"]:
    """The velocity-forced form of eq. 17: d r⁴/dt = −(4k/μ) r⁴ + (2η(1+β)/μ) r²|θ̇|², t = nη.

    ``forcing`` is r²ₙ|θ̇ₙ|² per step with θ̇ₙ = (θₙ₊₁ − θₙ)/η. For a slowly varying gradient
    (|θ̇|² = |ĝ|²/(μ²r²)) it is NLD eq. 17; under mini-batch noise with momentum it stays right where
    eq. 17 overpredicts (the momentum buffer averages the noise).

    Example (β = 0: the same as eq. 17 with forcing |ĝ|²):
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> f = jnp.full((5, 1), 0.3)
        >>> bool(jnp.allclose(nj.nld.predict_r4_velocity(1.0, f, lr=0.1), nj.theory.predict_nld_r4(1.0, f, lr=0.1)))
        True
    """
    lr, beta, k = (jnp.asarray(v, jnp.result_type(float)) for v in (lr, momentum, weight_decay))
    mu = 1.0 - beta
    law = theory.decay(4.0 * k / mu, 2.0 * lr * (1.0 + beta) / mu, lr)
    return law.predict(r4_0, forcing)


def eq17_errors(r2: Float[ArrayLike, "S G"], r4_pred: Float[ArrayLike, "S G"], *, skip: int = 0) -> Float[Array, " G"]:
    """Per group: the library's relative error (:func:`noether_jax.theory.relative_error`) of the
    predicted r² = √r⁴ against the measured r², over the save points from ``skip`` on.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> [round(v, 9) for v in nj.nld.eq17_errors(jnp.array([[1.0], [2.0]]), jnp.array([[1.0], [4.41]])).tolist()]
        [0.05]
    """
    r2, r4 = jnp.asarray(r2), jnp.asarray(r4_pred)
    return theory.relative_error(jnp.sqrt(jnp.maximum(r4[skip:], 0.0)), r2[skip:])


# ------------------------------------------------------------------------------------------ forcings under noise
#: the forcings of eq. 17: what |θ̇_𝒜|² (the squared momentum buffer, per group) is taken to be
FORCINGS = ("paper", "noise_aware", "spectral", "lags", "velocity")
#: the two forms: inertia-free (Bernoulli, eq. 17 itself) and inertia-keeping (the heavy-ball oscillator)
FORMS = ("bernoulli", "oscillator")


def _running_mean(c: Array, window: int) -> Array:
    """A NaN-aware moving average over axis 0 (a running mean until ``window`` values, then an EMA of
    that window); 0 where no value was seen yet."""

    def body(carry, x):
        mean, n = carry
        seen = jnp.isfinite(x)
        n = n + seen
        alpha = jnp.where(seen, jnp.maximum(1.0 / jnp.maximum(n, 1), 1.0 / window), 0.0)
        mean = mean + alpha * (jnp.where(seen, x, 0.0) - mean)
        return (mean, n), mean

    init = (jnp.zeros(c.shape[1:], c.dtype), jnp.zeros(c.shape[1:], c.dtype))
    return jax.lax.scan(body, init, c)[1]


def squared_velocity(
    forcing: str, *, lr: ArrayLike, momentum: ArrayLike, grad_sq: Float[ArrayLike, "N G"] | None = None,
    grad_lag: Float[ArrayLike, "N L G"] | None = None, step_sq: Float[ArrayLike, "N G"] | None = None,
    window: int | None = None,
) -> Float[Array, "N G"]:
    """|vₙ|² per group for one forcing model, vₙ the heavy-ball buffer (θₙ₊₁ − θₙ = −ηvₙ).

    The buffer vₙ = βvₙ₋₁ + gₙ has |vₙ|² = β²|vₙ₋₁|² + 2Σ_{k≥1} βᵏ Cₖ,ₙ + C₀,ₙ with Cₖ,ₙ = ⟨gₙ, gₙ₋ₖ⟩_𝒜
    (k ≤ n). The models differ in Cₖ for k ≥ 1; C₀ = |g_𝒜,n|² is the applied gradient:

    * ``"paper"``: Cₖ = C₀ (a constant gradient), |v|² = C₀/(1−β)²: NLD eq. 17's terminal velocity;
    * ``"noise_aware"``: a constant signal S plus white noise, Cₖ = S, with S the moving average of the
      lag-1 product (consecutive mini-batches have independent noise, so it estimates |g_full|²);
    * ``"spectral"``: geometric lags Cₖ = C̄₁ρᵏ⁻¹, ρ = C̄₂/C̄₁ (clipped to [−1, 1]) from moving averages;
    * ``"lags"``: Cₖ = C̄ₖ, the moving averages of the measured lag products for k ≤ L (0 beyond);
    * ``"velocity"``: the measured |θ̇|² = |Δθ_𝒜|²/η² (``step_sq``), the momentum-filtered forcing itself.

    ``grad_lag`` is (N, L, G) ⟨g_𝒜,n, g_𝒜,n−k⟩ (``Track.grad_lag``; NaN before step k); ``window`` the
    averaging window of the lag statistics, in steps: by default the buffer's own memory 1/(1−β), chosen
    a priori, not fitted. (Without averaging and with every lag, the ``"lags"`` model is the buffer power
    itself; the longer the average, the more it is a statistical model.)
    """
    if forcing not in FORCINGS:
        raise ValueError(f"`forcing` must be one of {FORCINGS}, got {forcing!r}.")
    if forcing == "velocity":
        if step_sq is None:
            raise ValueError("the velocity forcing needs `step_sq` (|θₙ₊₁ − θₙ|² per group).")
        return jnp.asarray(step_sq) / jnp.asarray(lr) ** 2
    if grad_sq is None:
        raise ValueError(f"the {forcing!r} forcing needs `grad_sq` (|g_𝒜|² of the applied gradient per step).")
    c0 = jnp.asarray(grad_sq)
    beta = jnp.asarray(momentum, c0.dtype)
    n = jnp.arange(c0.shape[0])
    if forcing == "paper":
        return c0 / (1.0 - beta) ** 2
    if grad_lag is None:
        raise ValueError(f"the {forcing!r} forcing needs `grad_lag` (record it with lockstep(..., lags=L)).")
    lag = jnp.asarray(grad_lag, c0.dtype)
    big_l = lag.shape[1]
    if forcing in ("noise_aware", "spectral") and big_l < (1 if forcing == "noise_aware" else 2):
        raise ValueError(f"the {forcing!r} forcing needs at least {1 if forcing == 'noise_aware' else 2} lags.")
    if window is None:
        if not is_concrete(momentum):
            raise ValueError("`momentum` is traced: pass the averaging `window` (an int, in steps) explicitly.")
        window = max(1, round(1.0 / (1.0 - float(momentum))))
    cbar = _running_mean(lag, window)  # (N, L, G)
    if forcing == "lags":
        k = jnp.arange(1, big_l + 1)
        avail = (k[None, :] <= n[:, None])[..., None]
        cross = jnp.sum(jnp.where(avail, beta ** k[None, :, None] * cbar, 0.0), axis=1)
    else:
        # Σ_{k=1}^{n} βᵏ C₁ρᵏ⁻¹ = βC₁(1 − (βρ)ⁿ)/(1 − βρ); the noise-aware model is ρ = 1 with C₁ = S
        c1 = cbar[:, 0]
        rho = jnp.ones_like(c1) if forcing == "noise_aware" else jnp.clip(
            cbar[:, 1] / jnp.where(c1 != 0, c1, 1.0), -1.0, 1.0)
        br = beta * rho
        nn = n[:, None].astype(c0.dtype)
        geom = jnp.where(jnp.abs(1.0 - br) > 1e-12, (1.0 - br**nn) / jnp.where(jnp.abs(1.0 - br) > 1e-12, 1.0 - br, 1.0), nn)
        cross = beta * c1 * geom

    def body(v, inp):
        c0_n, x_n = inp
        v = beta**2 * v + 2.0 * x_n + c0_n
        return v, v

    return jax.lax.scan(body, jnp.zeros_like(c0[0]), (c0, cross))[1]


def predict_eq17(
    forcing: str, form: str, r2: Float[ArrayLike, "N1 G"], *, lr: ArrayLike, momentum: ArrayLike,
    weight_decay: ArrayLike = 0.0, **data: Any,
) -> Float[Array, "N1 G"]:
    """The predicted r² = |θ_𝒜|² over a run from r²(0) and one forcing (:func:`squared_velocity`).

    ``form="bernoulli"``: eq. 17's inertia-free law for r⁴ fed r²|v|² (its prediction's square root);
    ``"oscillator"``: the heavy-ball oscillator Ẍ + 2γẊ + ω²X = 2|v|² on X = r² (inertia kept), from
    Ẋ(0) = −2λr²(0)/(1+β) (a fresh momentum buffer). ``r2`` (N+1, G) gives r²(0) and, for the Bernoulli
    form, the factor r²ₙ of |ĝ|² = r²|g|²; ``data``: the inputs of :func:`squared_velocity`.

    Example (β = 0, constant gradient power: the paper's forcing and the measured one agree):
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> r2 = jnp.ones((6, 1)); g = jnp.full((5, 1), 0.1)
        >>> a = nj.nld.predict_eq17("paper", "bernoulli", r2, lr=0.1, momentum=0.0, grad_sq=g)
        >>> b = nj.nld.predict_eq17("velocity", "bernoulli", r2, lr=0.1, momentum=0.0, step_sq=0.01 * g)
        >>> bool(jnp.allclose(a, b))
        True
    """
    if form not in FORMS:
        raise ValueError(f"`form` must be one of {FORMS}, got {form!r}.")
    r2 = jnp.asarray(r2)
    v2 = squared_velocity(forcing, lr=lr, momentum=momentum, **data).astype(r2.dtype)
    if form == "bernoulli":
        r4 = predict_r4_velocity(r2[0] ** 2, r2[:-1] * v2, lr=lr, momentum=momentum, weight_decay=weight_decay)
        return jnp.sqrt(jnp.maximum(r4, 0.0))
    beta, k = jnp.asarray(momentum, r2.dtype), jnp.asarray(weight_decay, r2.dtype)
    rate0 = -2.0 * k * r2[0] / (1.0 + beta)
    return theory.predict_heavy_ball("scale", r2[0], v2, lr=lr, momentum=jnp.maximum(beta, 1e-6), weight_decay=weight_decay,
                                     rate0=rate0)
