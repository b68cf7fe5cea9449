"""The driven damped oscillator Ẍ + 2γẊ + ω²X = κf of heavy ball, advanced exactly per step (private)."""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._common import Law, Quadrature, as_float, as_state_float, check_law, check_quadrature, scan_law


# ---------------------------------------------------------------------------------------------
# 3. the driven damped oscillator Ẍ + 2γẊ + ω²X = κ f
# ---------------------------------------------------------------------------------------------


def _expm1_phi1(m: Array) -> tuple[Array, Array]:
    """(e^M − I, φ₁(M) = ∫₀¹e^{Ms}ds) for a batch of 2×2 matrices (..., 2, 2).

    Taylor series on M/2ʲ (‖M/2ʲ‖∞ ≤ 1/4, 14 terms), then j doublings
    E(2M) = 2E + E², φ₁(2M) = (I + E/2)φ₁(M). Working with E = e^M − I (never e^M) keeps every entry
    accurate to rounding, including entries of size ω²Δt² ≪ 1. j is chosen per matrix (vmap-safe).
    """
    eye = jnp.eye(2, dtype=m.dtype)
    norm = jnp.max(jnp.sum(jnp.abs(m), axis=-1), axis=-1)
    j = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(norm, 1e-30) / 0.25)), 0, 60)
    ms = m / (2.0**j)[..., None, None]
    phi = jnp.broadcast_to(eye, m.shape)
    for k in range(15, 1, -1):
        phi = eye + ms @ phi / k
    e = ms @ phi

    def body(i, carry):
        e, phi = carry
        do = (i < j)[..., None, None]
        return jnp.where(do, 2.0 * e + e @ e, e), jnp.where(do, phi + 0.5 * e @ phi, phi)

    return jax.lax.fori_loop(0, 61, body, (e, phi))


class OscillatorState(NamedTuple):
    """State of an :class:`Oscillator` law: X = ``free + driven``, Ẋ = ``free_rate + driven_rate``.

    ``free`` is h(t)X(0) + G(t)Ẋ(0); ``driven`` is κ∫G(t−τ)f(τ)dτ.
    """

    free: Array
    free_rate: Array
    driven: Array
    driven_rate: Array

    @property
    def value(self) -> Array:
        return self.free + self.driven

    @property
    def rate(self) -> Array:
        return self.free_rate + self.driven_rate


class Oscillator(eqx.Module):
    """Ẍ + 2γẊ + ω²X = κ f(t), advanced exactly (up to quadrature of f) per step of Δt.

    With y = (X, Ẋ): yₙ₊₁ = yₙ + D yₙ + b fₙ, D = e^{AΔt} − I, A = [[0, 1], [−ω², −2γ]], and b from
    the quadrature rule. Any γ > 0, ω² ≥ 0 per group: underdamped, critical and overdamped alike.
    Build one with :func:`oscillator` or :func:`heavy_ball_law`. The solution it tracks is
    X(t) = h(t)X(0) + G(t)Ẋ(0) + κ∫₀ᵗG(t−τ)f(τ)dτ (:func:`homogeneous_solution`, :func:`green_kernel`).

    Example (critical damping, unforced, from X(0) = 1, Ẋ(0) = 0: X = e^{−t}(1 + t)):
        >>> from noether_jax import theory
        >>> law = theory.oscillator(gamma=1.0, omega2=1.0, dt=0.5, gain=0.0)
        >>> [round(float(x), 6) for x in law.predict(1.0, num_steps=2)]
        [1.0, 0.909796, 0.735759]
    """

    d11: Float[Array, "*G"]
    d12: Float[Array, "*G"]
    d21: Float[Array, "*G"]
    d22: Float[Array, "*G"]
    b1: Float[Array, "*G"]
    b2: Float[Array, "*G"]

    def __hash__(self) -> int:
        # by identity, so that ``jax.lax.scan(law.update, ...)`` works: jax hashes the scanned
        # function, and a bound method of a module hashes its (array) fields otherwise.
        return id(self)

    def init(self, x0: Float[ArrayLike, "*G"], rate0: Float[ArrayLike, "*G"] = 0.0) -> OscillatorState:
        """State at t = 0 from X(0) and Ẋ(0) (default 0, the convention of h(t)).

        For the scale law Ẋ(0) = 2⟨θ_𝒜(0), θ̇_𝒜(0)⟩ (rescale: 2⟨θ_𝒜₁, θ̇_𝒜₁⟩ − 2⟨θ_𝒜₂, θ̇_𝒜₂⟩; translation:
        ⟨θ̇_𝒜(0), 𝟙⟩), with θ̇(0) e.g. from ``LearningRule.initial_velocity`` (for a fresh heavy-ball
        optimiser and ⟨θ_𝒜, g_𝒜⟩ = 0 that gives Ẋ(0) = −2λ|θ_𝒜(0)|²/(1+β)).
        """
        x0 = as_state_float(x0)
        rate0 = jnp.asarray(rate0).astype(x0.dtype)
        shape = jnp.broadcast_shapes(x0.shape, rate0.shape, jnp.shape(self.d11))
        x0, rate0 = jnp.broadcast_to(x0, shape), jnp.broadcast_to(rate0, shape)
        return OscillatorState(x0, rate0, jnp.zeros_like(x0), jnp.zeros_like(x0))

    def update(
        self, state: OscillatorState, forcing: Float[ArrayLike, "*G"] | None = None
    ) -> tuple[OscillatorState, Float[Array, "*G"]]:
        """Advance one step with the forcing sample fₙ; return the new state and X(tₙ₊₁)."""
        dtype = state.free.dtype
        d11, d12, d21, d22 = (jnp.asarray(d).astype(dtype) for d in (self.d11, self.d12, self.d21, self.d22))

        def prop(x, r):
            return x + (d11 * x + d12 * r), r + (d21 * x + d22 * r)

        free, free_rate = prop(state.free, state.free_rate)
        driven, driven_rate = prop(state.driven, state.driven_rate)
        if forcing is not None:
            f = jnp.asarray(forcing).astype(dtype)
            driven = driven + jnp.asarray(self.b1).astype(dtype) * f
            driven_rate = driven_rate + jnp.asarray(self.b2).astype(dtype) * f
        new = OscillatorState(free, free_rate, driven, driven_rate)
        return new, new.value

    def predict(
        self,
        x0: Float[ArrayLike, "*G"],
        forcing: Float[ArrayLike, "N *G"] | None = None,
        *,
        rate0: Float[ArrayLike, "*G"] = 0.0,
        num_steps: int | None = None,
    ) -> Float[Array, "N+1 *G"]:
        """X(t₀), …, X(t_N) from X(0), Ẋ(0) = ``rate0`` and the recorded forcing f₀, …, f_{N−1}."""
        state = self.init(x0, rate0)
        return scan_law(self.update, state, forcing, num_steps, state.value)


def oscillator(
    gamma: ArrayLike, omega2: ArrayLike, dt: ArrayLike, gain: ArrayLike = 2.0, quadrature: Quadrature = "midpoint"
) -> Oscillator:
    """The law Ẍ + 2γẊ + ω²X = κ f sampled every Δt (κ = ``gain``); per-group arrays allowed.

    Quadrature of the forcing over a step (see the module docstring): ``"midpoint"`` (fₙ sampled at
    tₙ + Δt/2; second order), ``"left"`` (b = (0, κΔt), the modal form zₙ₊₁ = e^{λΔt}zₙ + Δt fₙ;
    first order) or ``"hold"`` (exact for piecewise-constant f; first order).

    Example (overdamped, constant forcing: X → κf/ω² = 2; ``"hold"`` is exact for constant f):
        >>> import jax.numpy as jnp; from noether_jax import theory
        >>> law = theory.oscillator(gamma=3.0, omega2=1.0, dt=0.1, quadrature="hold")
        >>> round(float(law.predict(0.0, jnp.ones(2000))[-1]), 6)
        2.0
    """
    check_quadrature(quadrature)
    gamma, omega2, dt, gain = jnp.broadcast_arrays(as_float(gamma), as_float(omega2), as_float(dt), as_float(gain))
    # dimensionless, balanced form: u = (X, Δt Ẋ), du/ds = M u + (0, κΔt²) f, s = t/Δt
    w2, a2 = omega2 * dt**2, 2.0 * gamma * dt
    zero, one = jnp.zeros_like(w2), jnp.ones_like(w2)
    m = jnp.stack([jnp.stack([zero, one], -1), jnp.stack([-w2, -a2], -1)], -2)
    e, phi = _expm1_phi1(m)
    kick = gain * dt**2  # the scaled forcing vector is (0, kick)
    if quadrature == "left":
        u1, u2 = zero, kick
    elif quadrature == "midpoint":
        eh, _ = _expm1_phi1(0.5 * m)
        u1, u2 = eh[..., 0, 1] * kick, (1.0 + eh[..., 1, 1]) * kick
    else:
        u1, u2 = phi[..., 0, 1] * kick, phi[..., 1, 1] * kick
    return Oscillator(
        d11=e[..., 0, 0], d12=e[..., 0, 1] * dt, d21=e[..., 1, 0] / dt, d22=e[..., 1, 1], b1=u1, b2=u2 / dt
    )


def heavy_ball_constants(
    law: Law, *, lr: ArrayLike, momentum: ArrayLike, weight_decay: ArrayLike = 0.0
) -> tuple[Array, Array, Array]:
    """(γ, ω², κ) of the oscillator for heavy ball with coupled weight decay.

    γ = (1−β)/(η(1+β)); ω² = 4λ/(η(1+β)) and κ = 2 for scale/rescale; ω² = 2λ/(η(1+β)) and κ = 0
    for translation. Underdamped iff (1−β)² < 4λη(1+β) (scale).

    Example:
        >>> from noether_jax import theory
        >>> g, w2, k = theory.heavy_ball_constants("scale", lr=0.1, momentum=0.9, weight_decay=1e-4)
        >>> round(float(g), 4), round(float(w2), 6), float(k)
        (0.5263, 0.002105, 2.0)
    """
    check_law(law)
    lr, beta, wd = as_float(lr), as_float(momentum), as_float(weight_decay)
    denom = lr * (1.0 + beta)
    gamma = (1.0 - beta) / denom
    if law == "translation":
        return gamma, 2.0 * wd / denom, jnp.zeros_like(gamma)
    return gamma, 4.0 * wd / denom, jnp.full_like(gamma, 2.0)


def heavy_ball_law(
    law: Law,
    *,
    lr: ArrayLike,
    momentum: ArrayLike,
    weight_decay: ArrayLike = 0.0,
    quadrature: Quadrature = "midpoint",
    dt: ArrayLike | None = None,
) -> Oscillator:
    """The oscillator law of a conserved quantity under heavy ball (β) with coupled weight decay (λ).

    Forcing: |vₙ|² for scale and |v_𝒜₁,n|² − |v_𝒜₂,n|² for rescale, vₙ = (θₙ₊₁ − θₙ)/η (minus the
    momentum buffer); none for translation. Δt defaults to η. Ẋ(0) defaults to 0 (see
    :meth:`Oscillator.init`).

    Example:
        >>> import jax.numpy as jnp; from noether_jax import theory
        >>> law = theory.heavy_ball_law("scale", lr=0.1, momentum=0.9, weight_decay=1e-4)
        >>> x = law.predict(jnp.ones(3), jnp.full((50, 3), 0.01))
        >>> x.shape
        (51, 3)
    """
    gamma, omega2, gain = heavy_ball_constants(law, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return oscillator(gamma, omega2, as_float(lr) if dt is None else dt, gain, quadrature)


def predict_heavy_ball(
    law: Law,
    x0: Float[ArrayLike, "*G"],
    forcing: Float[ArrayLike, "N *G"] | None,
    *,
    lr: ArrayLike,
    momentum: ArrayLike,
    weight_decay: ArrayLike = 0.0,
    rate0: Float[ArrayLike, "*G"] = 0.0,
    quadrature: Quadrature = "midpoint",
    num_steps: int | None = None,
) -> Float[Array, "N+1 *G"]:
    """Scan :func:`heavy_ball_law` over recorded velocity norms: X(0), X(η), …, X(Nη)."""
    osc = heavy_ball_law(law, lr=lr, momentum=momentum, weight_decay=weight_decay, quadrature=quadrature)
    return osc.predict(x0, forcing, rate0=rate0, num_steps=num_steps)


# --- closed forms  ------------------------------------------------------------


def _modes(s: Array, gamma: Array, omega2: Array) -> tuple[Array, Array]:
    """(e^{−γs}C, e^{−γs}S·s) with C = cosh κs, S·s = sinh(κs)/κ (cos/sin for κ² < 0), stably."""
    k2 = gamma**2 - omega2
    over = k2 > 0
    kappa = jnp.sqrt(jnp.where(over, k2, 1.0))
    omega_ = jnp.sqrt(jnp.where(over, 1.0, -k2))
    # overdamped: α₊ = −ω²/(γ+κ) (no cancellation), α₋ = −γ−κ
    ap, am = -omega2 / (gamma + kappa), -gamma - kappa
    ep, em = jnp.exp(ap * s), jnp.exp(am * s)
    x = 2.0 * kappa * s
    small = x < 1.0
    sinh_over = jnp.where(small, em * jnp.expm1(jnp.where(small, x, 0.0)), ep - em) / (2.0 * kappa)
    cosh_over = 0.5 * (ep + em)
    # underdamped and critical (Ω = 0): e^{−γs}cos Ωs and e^{−γs} s sinc(Ωs)
    decay_ = jnp.exp(-gamma * s)
    cos_under = decay_ * jnp.cos(omega_ * s)
    sin_under = decay_ * s * jnp.sinc(jnp.where(over, 0.0, omega_) * s / jnp.pi)
    cos_under = jnp.where(k2 == 0, decay_, cos_under)
    return jnp.where(over, cosh_over, cos_under), jnp.where(over, sinh_over, sin_under)


def green_kernel(s: Float[ArrayLike, "*S"], gamma: ArrayLike, omega2: ArrayLike) -> Float[Array, "*S"]:
    """Green's kernel G(s) of Ẍ + 2γẊ + ω²X (G(0) = 0, Ġ(0) = 1), every regime .

    e^{−γs} sin(Ωs)/Ω (underdamped), s e^{−γs} (critical), (e^{α₊s} − e^{α₋s})/(α₊ − α₋) (overdamped),
    evaluated without overflow or the (α₊ − α₋) → 0 cancellation; continuous across regimes.

    Example:
        >>> from noether_jax import theory
        >>> [round(float(theory.green_kernel(1.0, 1.0, w2)), 6) for w2 in (0.99, 1.0, 1.01)]
        [0.368493, 0.367879, 0.367267]
    """
    s, gamma, omega2 = as_float(s), as_float(gamma), as_float(omega2)
    return _modes(s, gamma, omega2)[1]


def homogeneous_solution(t: Float[ArrayLike, "*S"], gamma: ArrayLike, omega2: ArrayLike) -> Float[Array, "*S"]:
    """h(t): the unforced solution with X(0) = 1, Ẋ(0) = 0 , every regime.

    The unforced solution from (X(0), Ẋ(0)) is h(t)X(0) + G(t)Ẋ(0).

    Example:
        >>> from noether_jax import theory
        >>> round(float(theory.homogeneous_solution(1.0, 1.0, 1.0)), 6)   # e^{-1}(1 + 1)
        0.735759
    """
    t, gamma, omega2 = as_float(t), as_float(gamma), as_float(omega2)
    c, sg = _modes(t, gamma, omega2)
    return c + gamma * sg
