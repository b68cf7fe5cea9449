"""First-order laws Ẋ = −cX + κf and the exact discrete identities of SGD, as decaying recursions (private)."""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._common import Law, Quadrature, as_float, as_state_float, check_law, check_quadrature, phi1, scan_law


# ---------------------------------------------------------------------------------------------
# 1. exact discrete identities of SGD (one step)
# ---------------------------------------------------------------------------------------------


def sgd_scale_step(
    sq_norm: Float[ArrayLike, "*G"], grad_sq_norm: Float[ArrayLike, "*G"], *, lr: ArrayLike, weight_decay: ArrayLike = 0.0
) -> Float[Array, "*G"]:
    """One exact SGD step of a scale-invariant group: (1−ηλ)²|θ_𝒜,n|² + η²|g_𝒜,n|².

    Exact for θₙ₊₁ = θₙ − η(gₙ + λθₙ) whenever ⟨θ_𝒜, g_𝒜⟩ = 0 (g: the loss gradient).

    Example:
        >>> from noether_jax import theory
        >>> float(theory.sgd_scale_step(2.0, 3.0, lr=0.1, weight_decay=0.5))
        1.835
    """
    a = 1.0 - jnp.asarray(lr) * jnp.asarray(weight_decay)
    return a * a * jnp.asarray(sq_norm) + jnp.asarray(lr) ** 2 * jnp.asarray(grad_sq_norm)


def sgd_rescale_step(
    sq_norm_diff: Float[ArrayLike, "*G"],
    grad_sq_norm_diff: Float[ArrayLike, "*G"],
    *,
    lr: ArrayLike,
    weight_decay: ArrayLike = 0.0,
) -> Float[Array, "*G"]:
    """One exact SGD step of a rescale-invariant unit: D ← (1−ηλ)²D + η²(|g_𝒜₁|² − |g_𝒜₂|²).

    D = |θ_𝒜₁|² − |θ_𝒜₂|² (incoming weights and bias minus outgoing weights); exact because the
    gradient constraint ⟨g_𝒜₁, θ_𝒜₁⟩ = ⟨g_𝒜₂, θ_𝒜₂⟩ cancels the cross terms.
    """
    return sgd_scale_step(sq_norm_diff, grad_sq_norm_diff, lr=lr, weight_decay=weight_decay)


def sgd_translation_step(total: Float[ArrayLike, "*G"], *, lr: ArrayLike, weight_decay: ArrayLike = 0.0) -> Float[Array, "*G"]:
    """One exact SGD step of a translation-invariant set: ⟨θ_𝒜,n+1, 𝟙⟩ = (1−ηλ)⟨θ_𝒜,n, 𝟙⟩.

    Example:
        >>> from noether_jax import theory
        >>> round(float(theory.sgd_translation_step(2.0, lr=0.1, weight_decay=0.5)), 12)
        1.9
    """
    return (1.0 - jnp.asarray(lr) * jnp.asarray(weight_decay)) * jnp.asarray(total)


# ---------------------------------------------------------------------------------------------
# 2. first-order laws: X_{n+1} = X_n + a X_n + w f_n
# ---------------------------------------------------------------------------------------------


class DecayState(NamedTuple):
    """State of a :class:`Decay` law: X = ``free + driven``.

    ``free`` is the part carried over from X(0) (e^{−ct}X(0)); ``driven`` the part the forcing put in
    (κ∫e^{−c(t−τ)}f dτ: for the scale law, the finite-η/mini-batch breaking of the conservation law).
    """

    free: Array
    driven: Array

    @property
    def value(self) -> Array:
        return self.free + self.driven


class Decay(eqx.Module):
    """A first-order linear law advanced by a decaying recursion, Xₙ₊₁ = Xₙ + a·Xₙ + w·fₙ.

    ``decrement`` a = (decay factor − 1) ∈ (−1, 0] and ``weight`` w are arrays broadcastable to the
    group shape. Build one with :func:`sgd_law`, :func:`nld_r4_law`, :func:`sgd_identity` or
    :func:`decay`. The coefficients are cast to the state's dtype at each step, so a float32 state
    stays float32 (compute the law itself with x64 on for the most accurate coefficients).

    Example (the scale law fed a constant |g|² = 1):
        >>> import jax.numpy as jnp; from noether_jax import theory
        >>> law = theory.sgd_law("scale", lr=0.1, weight_decay=0.0)
        >>> state = law.init(jnp.array([1.0, 2.0]))
        >>> state, x = law.update(state, jnp.array([1.0, 1.0]))
        >>> x.round(6).tolist()
        [1.01, 2.01]
    """

    decrement: Float[Array, "*G"]
    weight: Float[Array, "*G"]

    def __hash__(self) -> int:
        # by identity, so that ``jax.lax.scan(law.update, ...)`` works: jax hashes the scanned
        # function, and a bound method of a module hashes its (array) fields otherwise.
        return id(self)

    def init(self, x0: Float[ArrayLike, "*G"]) -> DecayState:
        """State at t = 0 (``x0`` broadcast against the law's coefficients)."""
        x0 = as_state_float(x0)
        shape = jnp.broadcast_shapes(x0.shape, jnp.shape(self.decrement), jnp.shape(self.weight))
        x0 = jnp.broadcast_to(x0, shape)
        return DecayState(x0, jnp.zeros_like(x0))

    def update(self, state: DecayState, forcing: Float[ArrayLike, "*G"] | None = None) -> tuple[DecayState, Float[Array, "*G"]]:
        """Advance one step with the forcing sample fₙ; return the new state and X(tₙ₊₁)."""
        dtype = state.free.dtype
        a = jnp.asarray(self.decrement).astype(dtype)
        free = state.free + a * state.free
        driven = state.driven + a * state.driven
        if forcing is not None:
            driven = driven + jnp.asarray(self.weight).astype(dtype) * jnp.asarray(forcing).astype(dtype)
        new = DecayState(free, driven)
        return new, new.value

    def predict(
        self, x0: Float[ArrayLike, "*G"], forcing: Float[ArrayLike, "N *G"] | None = None, *, num_steps: int | None = None
    ) -> Float[Array, "N+1 *G"]:
        """X(t₀), …, X(t_N) from X(0) and the recorded forcing f₀, …, f_{N−1} (one ``lax.scan``).

        ``forcing=None`` (unforced laws) needs ``num_steps``.
        """
        state = self.init(x0)
        return scan_law(self.update, state, forcing, num_steps, state.value)


def decay(
    rate: ArrayLike, gain: ArrayLike, dt: ArrayLike, quadrature: Quadrature = "left"
) -> Decay:
    """The law Ẋ = −c X + κ f, i.e. X(t) = e^{−ct}X(0) + κ∫₀ᵗe^{−c(t−τ)}f(τ)dτ, sampled every Δt.

    Per step X ← e^{−cΔt}X + w fₙ with w = κΔt (``"left"``), κΔt e^{−cΔt/2} (``"midpoint"``) or
    κ(1 − e^{−cΔt})/c (``"hold"``); see the module docstring for their orders.

    Example:
        >>> from noether_jax import theory
        >>> law = theory.decay(rate=1.0, gain=0.0, dt=0.5)
        >>> [round(float(x), 6) for x in law.predict(1.0, num_steps=2)]    # e^{-t}
        [1.0, 0.606531, 0.367879]
    """
    check_quadrature(quadrature)
    c, gain, dt = as_float(rate), as_float(gain), as_float(dt)
    z = -c * dt
    if quadrature == "left":
        w = gain * dt
    elif quadrature == "midpoint":
        w = gain * dt * jnp.exp(0.5 * z)
    else:
        w = gain * dt * phi1(z)
    a = jnp.expm1(z)
    a, w = jnp.broadcast_arrays(a, w)
    return Decay(a, w)


def sgd_identity(law: Law, *, lr: ArrayLike, weight_decay: ArrayLike = 0.0) -> Decay:
    """The exact discrete identity of SGD as a :class:`Decay` law (forcing: |g_𝒜,n|², or the difference).

    scale/rescale: Xₙ₊₁ = (1−ηλ)²Xₙ + η²fₙ; translation: Xₙ₊₁ = (1−ηλ)Xₙ.

    Example:
        >>> from noether_jax import theory
        >>> theory.sgd_identity("scale", lr=0.1, weight_decay=0.5).predict(2.0, [3.0]).round(12).tolist()
        [2.0, 1.835]
    """
    check_law(law)
    lr, wd = as_float(lr), as_float(weight_decay)
    if law == "translation":
        a, w = -lr * wd, jnp.zeros_like(lr * wd)
    else:
        a, w = -lr * wd * (2.0 - lr * wd), lr * lr + jnp.zeros_like(wd)
    a, w = jnp.broadcast_arrays(a, w)
    return Decay(a, w)


def sgd_rates(
    law: Law, *, lr: ArrayLike, momentum: ArrayLike = 0.0, weight_decay: ArrayLike = 0.0, regularised_hessian: bool = False
) -> tuple[Array, Array]:
    """(c, κ) of the first-order law Ẋ = −cX + κf for SGD(η, β, λ) (NM eqs. 18–20).

    With μ = 1 − β and 2m = η(1+β):

    ============  ======================================  ==========
    law           c                                       κ
    ============  ======================================  ==========
    scale         2λ/μ   (+ 2mλ²/μ³ if regularised)        2m/μ³
    rescale       as scale (forcing |g_𝒜₁|² − |g_𝒜₂|²)    2m/μ³
    translation   λ/μ    (+ mλ²/μ³ if regularised)         0
    ============  ======================================  ==========

    For β = 0 this is c = 2λ (2λ + ηλ²), κ = η. ``regularised_hessian`` applies the η/2 Hessian term
    of the modified loss to V = ℒ + (λ/2)|θ|² (the form of the NM code), and then matches the
    discrete identity one order better in η. For β > 0 these are the inertia-free (overdamped)
    limits of the oscillator of :func:`heavy_ball_law`.
    """
    check_law(law)
    lr, wd, beta = as_float(lr), as_float(weight_decay), as_float(momentum)
    mu = 1.0 - beta
    two_m = lr * (1.0 + beta)
    if law == "translation":
        c = wd / mu + (0.5 * two_m * wd**2 / mu**3 if regularised_hessian else 0.0)
        return c, jnp.zeros_like(c)
    c = 2.0 * wd / mu + (two_m * wd**2 / mu**3 if regularised_hessian else 0.0)
    return c, two_m / mu**3 + jnp.zeros_like(c)


def sgd_law(
    law: Law,
    *,
    lr: ArrayLike,
    momentum: ArrayLike = 0.0,
    weight_decay: ArrayLike = 0.0,
    regularised_hessian: bool = False,
    quadrature: Quadrature = "left",
    dt: ArrayLike | None = None,
) -> Decay:
    """The continuous (modified-flow) law of a conserved quantity under SGD: see :func:`sgd_rates`.

    Forcing: |g_𝒜,n|² (scale), |g_𝒜₁,n|² − |g_𝒜₂,n|² (rescale), none (translation), with g the
    applied mini-batch loss gradient. Δt defaults to η.

    Example (|θ|² of a scale-invariant group with λ = 0.01 and a recorded |g|² sequence):
        >>> import jax.numpy as jnp; from noether_jax import theory
        >>> x = theory.predict_sgd("scale", 1.0, jnp.full(100, 0.5), lr=0.1, weight_decay=0.01)
        >>> x.shape, round(float(x[-1]), 4)
        ((101,), 1.2724)
    """
    c, gain = sgd_rates(law, lr=lr, momentum=momentum, weight_decay=weight_decay, regularised_hessian=regularised_hessian)
    return decay(c, gain, as_float(lr) if dt is None else dt, quadrature)


def nld_r4_law(
    *,
    lr: ArrayLike,
    momentum: ArrayLike = 0.0,
    weight_decay: ArrayLike = 0.0,
    regularised_hessian: bool = False,
    quadrature: Quadrature = "left",
    dt: ArrayLike | None = None,
) -> Decay:
    """NLD eq. 17 for a normalised (scale-invariant) group, as a law on r⁴ = |θ_𝒜|⁴:

        r⁴(t) = e^{−4kt/μ} r⁴(0) + (2η(1+β)/(1−β)³) ∫₀ᵗ e^{−4k(t−τ)/μ} |ĝ(τ)|² dτ,

    k = λ, μ = 1 − β, forcing |ĝ|² = r²|g_𝒜|² (the gradient on the unit sphere). It is the scale law
    of :func:`sgd_law` for r² squared (rate and gain doubled). The RMSProp analogy: r² is the
    accumulator √G, 4k/(1−β) its decay rate, 2η(1+β)/(1−β)³ its gain.

    Example:
        >>> import jax.numpy as jnp; from noether_jax import theory
        >>> r4 = theory.predict_nld_r4(1.0, jnp.full(10, 0.2), lr=0.1, momentum=0.9)
        >>> round(float(r4[-1]), 3)       # 1 + 10 · 0.1 · (2·0.1·1.9/0.001) · 0.2
        77.0
    """
    c, gain = sgd_rates("scale", lr=lr, momentum=momentum, weight_decay=weight_decay, regularised_hessian=regularised_hessian)
    return decay(2.0 * c, 2.0 * gain, as_float(lr) if dt is None else dt, quadrature)


def predict_sgd_identity(
    law: Law,
    x0: Float[ArrayLike, "*G"],
    forcing: Float[ArrayLike, "N *G"] | None,
    *,
    lr: ArrayLike,
    weight_decay: ArrayLike = 0.0,
    num_steps: int | None = None,
) -> Float[Array, "N+1 *G"]:
    """Scan the exact discrete identity of SGD over a recorded forcing (|g_𝒜,n|², ...): X₀ … X_N."""
    return sgd_identity(law, lr=lr, weight_decay=weight_decay).predict(x0, forcing, num_steps=num_steps)


def predict_sgd(
    law: Law,
    x0: Float[ArrayLike, "*G"],
    forcing: Float[ArrayLike, "N *G"] | None,
    *,
    lr: ArrayLike,
    momentum: ArrayLike = 0.0,
    weight_decay: ArrayLike = 0.0,
    regularised_hessian: bool = False,
    quadrature: Quadrature = "left",
    num_steps: int | None = None,
) -> Float[Array, "N+1 *G"]:
    """Scan the continuous law of :func:`sgd_law` over a recorded forcing: X(0), X(η), …, X(Nη)."""
    law_ = sgd_law(law, lr=lr, momentum=momentum, weight_decay=weight_decay, regularised_hessian=regularised_hessian, quadrature=quadrature)
    return law_.predict(x0, forcing, num_steps=num_steps)


def predict_nld_r4(
    r4_0: Float[ArrayLike, "*G"],
    ghat_sq: Float[ArrayLike, "N *G"],
    *,
    lr: ArrayLike,
    momentum: ArrayLike = 0.0,
    weight_decay: ArrayLike = 0.0,
    regularised_hessian: bool = False,
    quadrature: Quadrature = "left",
) -> Float[Array, "N+1 *G"]:
    """Scan NLD eq. 17 (:func:`nld_r4_law`) over recorded |ĝₙ|² = |θ_𝒜,n|²|g_𝒜,n|²: r⁴ at t = 0, η, …"""
    law = nld_r4_law(lr=lr, momentum=momentum, weight_decay=weight_decay, regularised_hessian=regularised_hessian, quadrature=quadrature)
    return law.predict(r4_0, ghat_sq)
