"""Closed-form theory of Neural Mechanics: how training breaks each conservation law (THEORY.md §3–4).

Every law here is a *linear* recursion over per-group quantities of shape ``(G,)`` (one entry per
neuron or group), written as a pure, state-carrying pair of functions in the optax style::

    law = theory.sgd_law("scale", lr=0.1, weight_decay=1e-4)   # an eqx.Module of coefficients
    state = law.init(x0)                                           # a NamedTuple (a pytree)
    state, x_next = law.update(state, forcing)                     # one step, jit/scan/vmap-safe

plus ``predict_*`` helpers that ``jax.lax.scan`` a law over a whole recorded forcing sequence.
Continuous time counts one step as η (t = nη, Δt = η unless ``dt`` is given).

**The laws.**

* Discrete identities of SGD (exact; :func:`sgd_identity`, :func:`sgd_scale_step`, ...):
  |θ_𝒜,n+1|² = (1−ηλ)²|θ_𝒜,n|² + η²|g_𝒜,n|², ⟨θ_𝒜,n+1, 𝟙⟩ = (1−ηλ)⟨θ_𝒜,n, 𝟙⟩, and the rescale
  analogue with |g_𝒜₁|² − |g_𝒜₂|² (g: the loss gradient the step applies, without the λθ term).
* First-order continuous laws (NM eqs. 18–20; :func:`sgd_law`): Ẋ = −cX + κ f, solved by
  X(t) = e^{−ct}X(0) + κ∫₀ᵗ e^{−c(t−τ)} f(τ) dτ. For β = 0: scale/rescale c = 2λ, κ = η,
  f = |g_𝒜|² (or |g_𝒜₁|² − |g_𝒜₂|²); translation c = λ, κ = 0. With ``regularised_hessian=True``
  the η/2 Hessian term acts on the regularised potential: c = 2λ + ηλ² (translation λ + ηλ²/2).
  With momentum β the same laws hold in the inertia-free limit with c → c/(1−β)-type rates (see
  :func:`sgd_law`). NLD eq. 17 (:func:`nld_r4_law`) is the same recursion on r⁴ with f = |ĝ|².
* Momentum: the driven damped oscillator Ẍ + 2γẊ + ω²X = κ f (:func:`heavy_ball_law`,
  :func:`oscillator`), κ = 2 and f = |v_𝒜|² for scale (|v_𝒜₁|² − |v_𝒜₂|² for rescale), κ = 0 for
  translation.

**Numerics.** Nothing ever evaluates e^{+ct}: every law advances its state by a decaying one-step
propagator, X ← X + (e^{−cΔt} − 1)X + w·f, so a prediction stays finite for any number of steps in
float32 (the NM reference code accumulates ∫e^{+γτ}f dτ and overflows after ~840 steps at η = 0.1,
β = 0.9). The decrement e^{−cΔt} − 1 is stored (computed with ``expm1``), not the factor, because
in float32 1 − 2·10⁻⁵ cannot be stored to better than 0.3% of its distance from 1.

The oscillator is advanced as the exact linear state-space recursion of y = (X, Ẋ),
yₙ₊₁ = e^{AΔt}yₙ + bₙ. In the eigenbasis this is exactly the modal recursion zₙ₊₁ = e^{(−γ±iΩ)Δt}zₙ +
Δt fₙ (complex for underdamped, two real ones in α± for overdamped, a Jordan pair for critical);
using the (X, Ẋ) basis instead of the modal one removes the (α₊ − α₋) → 0 cancellation at and near
critical damping, so one formula covers all three regimes per group, continuously, with no regime
branch inside the scan. e^{AΔt} − I is computed once per law by a Taylor series with scaling and
squaring (accurate to rounding in every entry, including the tiny ω²Δt² ones).

**Quadrature** (``quadrature=``) — how the recorded sample fₙ enters the step from tₙ to tₙ₊₁:

* ``"left"``: the sample enters undecayed, X ← e^{−cΔt}X + κΔt fₙ (oscillator: Ẋ ← ... + κΔt fₙ).
  This is exactly the structure of the discrete identity |θₙ₊₁|² = (1−ηλ)²|θₙ|² + η²|gₙ|², so it is
  the default for gradient-driven laws (fₙ = |gₙ|² evaluated at θₙ). First order in Δt for smooth f.
* ``"midpoint"``: fₙ is read as the value at tₙ + Δt/2 and decayed by half a step; second order.
  The default for the oscillator, whose forcing |vₙ|² uses vₙ = (θₙ₊₁ − θₙ)/η, a central difference
  for θ̇(tₙ + η/2).
* ``"hold"``: exact for a forcing held constant over each step (zero-order hold); first order.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

Law = Literal["translation", "scale", "rescale"]
Quadrature = Literal["left", "midpoint", "hold"]
_LAWS = ("translation", "scale", "rescale")
_QUADRATURES = ("left", "midpoint", "hold")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _f(x: ArrayLike) -> Array:
    """As an array of the default float dtype (float64 under x64)."""
    return jnp.asarray(x, dtype=jnp.result_type(float))


def _as_state_float(x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def _check_law(law: str) -> None:
    if law not in _LAWS:
        raise ValueError(f"`law` must be one of {_LAWS}, got {law!r}.")


def _check_quadrature(quadrature: str) -> None:
    if quadrature not in _QUADRATURES:
        raise ValueError(f"`quadrature` must be one of {_QUADRATURES}, got {quadrature!r}.")


def _phi1(z: Array) -> Array:
    """φ₁(z) = (e^z − 1)/z, with φ₁(0) = 1 (accurate for all z, via expm1)."""
    zero = z == 0
    safe = jnp.where(zero, 1.0, z)
    return jnp.where(zero, 1.0, jnp.expm1(safe) / safe)


def _scan(update, state, forcing, num_steps, value0):
    if forcing is None and num_steps is None:
        raise ValueError("give the forcing sequence, or `num_steps` for an unforced law (translation).")
    if forcing is not None:
        forcing = jnp.asarray(forcing)
        shape = jnp.broadcast_shapes(jnp.shape(value0), forcing.shape[1:])
        state = jax.tree.map(lambda s: jnp.broadcast_to(s, shape), state)
        value0 = jnp.broadcast_to(value0, shape)
    _, ys = jax.lax.scan(lambda s, f: update(s, f), state, forcing, length=num_steps)
    return jnp.concatenate([value0[None].astype(ys.dtype), ys], axis=0)


# ---------------------------------------------------------------------------------------------
# 1. exact discrete identities of SGD (one step)
# ---------------------------------------------------------------------------------------------


def sgd_scale_step(
    sq_norm: Float[ArrayLike, "*G"], grad_sq_norm: Float[ArrayLike, "*G"], lr: ArrayLike, weight_decay: ArrayLike = 0.0
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
    lr: ArrayLike,
    weight_decay: ArrayLike = 0.0,
) -> Float[Array, "*G"]:
    """One exact SGD step of a rescale-invariant unit: D ← (1−ηλ)²D + η²(|g_𝒜₁|² − |g_𝒜₂|²).

    D = |θ_𝒜₁|² − |θ_𝒜₂|² (incoming weights and bias minus outgoing weights); exact because the
    gradient constraint ⟨g_𝒜₁, θ_𝒜₁⟩ = ⟨g_𝒜₂, θ_𝒜₂⟩ cancels the cross terms.
    """
    return sgd_scale_step(sq_norm_diff, grad_sq_norm_diff, lr, weight_decay)


def sgd_translation_step(total: Float[ArrayLike, "*G"], lr: ArrayLike, weight_decay: ArrayLike = 0.0) -> Float[Array, "*G"]:
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
        x0 = _as_state_float(x0)
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
        return _scan(self.update, state, forcing, num_steps, state.value)


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
    _check_quadrature(quadrature)
    c, gain, dt = _f(rate), _f(gain), _f(dt)
    z = -c * dt
    if quadrature == "left":
        w = gain * dt
    elif quadrature == "midpoint":
        w = gain * dt * jnp.exp(0.5 * z)
    else:
        w = gain * dt * _phi1(z)
    a = jnp.expm1(z)
    a, w = jnp.broadcast_arrays(a, w)
    return Decay(a, w)


def sgd_identity(law: Law, lr: ArrayLike, weight_decay: ArrayLike = 0.0) -> Decay:
    """The exact discrete identity of SGD as a :class:`Decay` law (forcing: |g_𝒜,n|², or the difference).

    scale/rescale: Xₙ₊₁ = (1−ηλ)²Xₙ + η²fₙ; translation: Xₙ₊₁ = (1−ηλ)Xₙ.

    Example:
        >>> from noether_jax import theory
        >>> theory.sgd_identity("scale", lr=0.1, weight_decay=0.5).predict(2.0, [3.0]).round(12).tolist()
        [2.0, 1.835]
    """
    _check_law(law)
    lr, wd = _f(lr), _f(weight_decay)
    if law == "translation":
        a, w = -lr * wd, jnp.zeros_like(lr * wd)
    else:
        a, w = -lr * wd * (2.0 - lr * wd), lr * lr + jnp.zeros_like(wd)
    a, w = jnp.broadcast_arrays(a, w)
    return Decay(a, w)


def sgd_rates(
    law: Law, lr: ArrayLike, weight_decay: ArrayLike = 0.0, momentum: ArrayLike = 0.0, *, regularised_hessian: bool = False
) -> tuple[Array, Array]:
    """(c, κ) of the first-order law Ẋ = −cX + κf for SGD(η, β, λ) (THEORY §3, NM eqs. 18–20).

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
    _check_law(law)
    lr, wd, beta = _f(lr), _f(weight_decay), _f(momentum)
    mu = 1.0 - beta
    two_m = lr * (1.0 + beta)
    if law == "translation":
        c = wd / mu + (0.5 * two_m * wd**2 / mu**3 if regularised_hessian else 0.0)
        return c, jnp.zeros_like(c)
    c = 2.0 * wd / mu + (two_m * wd**2 / mu**3 if regularised_hessian else 0.0)
    return c, two_m / mu**3 + jnp.zeros_like(c)


def sgd_law(
    law: Law,
    lr: ArrayLike,
    weight_decay: ArrayLike = 0.0,
    momentum: ArrayLike = 0.0,
    *,
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
    c, gain = sgd_rates(law, lr, weight_decay, momentum, regularised_hessian=regularised_hessian)
    return decay(c, gain, _f(lr) if dt is None else dt, quadrature)


def nld_r4_law(
    lr: ArrayLike,
    momentum: ArrayLike = 0.0,
    weight_decay: ArrayLike = 0.0,
    *,
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
    c, gain = sgd_rates("scale", lr, weight_decay, momentum, regularised_hessian=regularised_hessian)
    return decay(2.0 * c, 2.0 * gain, _f(lr) if dt is None else dt, quadrature)


def predict_sgd_identity(
    law: Law,
    x0: Float[ArrayLike, "*G"],
    forcing: Float[ArrayLike, "N *G"] | None,
    lr: ArrayLike,
    weight_decay: ArrayLike = 0.0,
    *,
    num_steps: int | None = None,
) -> Float[Array, "N+1 *G"]:
    """Scan the exact discrete identity of SGD over a recorded forcing (|g_𝒜,n|², ...): X₀ … X_N."""
    return sgd_identity(law, lr, weight_decay).predict(x0, forcing, num_steps=num_steps)


def predict_sgd(
    law: Law,
    x0: Float[ArrayLike, "*G"],
    forcing: Float[ArrayLike, "N *G"] | None,
    lr: ArrayLike,
    weight_decay: ArrayLike = 0.0,
    momentum: ArrayLike = 0.0,
    *,
    regularised_hessian: bool = False,
    quadrature: Quadrature = "left",
    num_steps: int | None = None,
) -> Float[Array, "N+1 *G"]:
    """Scan the continuous law of :func:`sgd_law` over a recorded forcing: X(0), X(η), …, X(Nη)."""
    law_ = sgd_law(law, lr, weight_decay, momentum, regularised_hessian=regularised_hessian, quadrature=quadrature)
    return law_.predict(x0, forcing, num_steps=num_steps)


def predict_nld_r4(
    r4_0: Float[ArrayLike, "*G"],
    ghat_sq: Float[ArrayLike, "N *G"],
    lr: ArrayLike,
    momentum: ArrayLike = 0.0,
    weight_decay: ArrayLike = 0.0,
    *,
    regularised_hessian: bool = False,
    quadrature: Quadrature = "left",
) -> Float[Array, "N+1 *G"]:
    """Scan NLD eq. 17 (:func:`nld_r4_law`) over recorded |ĝₙ|² = |θ_𝒜,n|²|g_𝒜,n|²: r⁴ at t = 0, η, …"""
    law = nld_r4_law(lr, momentum, weight_decay, regularised_hessian=regularised_hessian, quadrature=quadrature)
    return law.predict(r4_0, ghat_sq)


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
        """State at t = 0 from X(0) and Ẋ(0) (default 0, the convention of THEORY's h(t)).

        For the scale law Ẋ(0) = 2⟨θ_𝒜(0), θ̇_𝒜(0)⟩ (rescale: 2⟨θ_𝒜₁, θ̇_𝒜₁⟩ − 2⟨θ_𝒜₂, θ̇_𝒜₂⟩; translation:
        ⟨θ̇_𝒜(0), 𝟙⟩), with θ̇(0) e.g. from ``LearningRule.initial_velocity`` (for a fresh heavy-ball
        optimiser and ⟨θ_𝒜, g_𝒜⟩ = 0 that gives Ẋ(0) = −2λ|θ_𝒜(0)|²/(1+β)).
        """
        x0 = _as_state_float(x0)
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
        return _scan(self.update, state, forcing, num_steps, state.value)


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
    _check_quadrature(quadrature)
    gamma, omega2, dt, gain = jnp.broadcast_arrays(_f(gamma), _f(omega2), _f(dt), _f(gain))
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
    law: Law, lr: ArrayLike, momentum: ArrayLike, weight_decay: ArrayLike = 0.0
) -> tuple[Array, Array, Array]:
    """(γ, ω², κ) of the oscillator for heavy ball with coupled weight decay (THEORY §3).

    γ = (1−β)/(η(1+β)); ω² = 4λ/(η(1+β)) and κ = 2 for scale/rescale; ω² = 2λ/(η(1+β)) and κ = 0
    for translation. Underdamped iff (1−β)² < 4λη(1+β) (scale).

    Example:
        >>> from noether_jax import theory
        >>> g, w2, k = theory.heavy_ball_constants("scale", lr=0.1, momentum=0.9, weight_decay=1e-4)
        >>> round(float(g), 4), round(float(w2), 6), float(k)
        (0.5263, 0.002105, 2.0)
    """
    _check_law(law)
    lr, beta, wd = _f(lr), _f(momentum), _f(weight_decay)
    denom = lr * (1.0 + beta)
    gamma = (1.0 - beta) / denom
    if law == "translation":
        return gamma, 2.0 * wd / denom, jnp.zeros_like(gamma)
    return gamma, 4.0 * wd / denom, jnp.full_like(gamma, 2.0)


def heavy_ball_law(
    law: Law,
    lr: ArrayLike,
    momentum: ArrayLike,
    weight_decay: ArrayLike = 0.0,
    *,
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
    gamma, omega2, gain = heavy_ball_constants(law, lr, momentum, weight_decay)
    return oscillator(gamma, omega2, _f(lr) if dt is None else dt, gain, quadrature)


def predict_heavy_ball(
    law: Law,
    x0: Float[ArrayLike, "*G"],
    forcing: Float[ArrayLike, "N *G"] | None,
    lr: ArrayLike,
    momentum: ArrayLike,
    weight_decay: ArrayLike = 0.0,
    *,
    rate0: Float[ArrayLike, "*G"] = 0.0,
    quadrature: Quadrature = "midpoint",
    num_steps: int | None = None,
) -> Float[Array, "N+1 *G"]:
    """Scan :func:`heavy_ball_law` over recorded velocity norms: X(0), X(η), …, X(Nη)."""
    osc = heavy_ball_law(law, lr, momentum, weight_decay, quadrature=quadrature)
    return osc.predict(x0, forcing, rate0=rate0, num_steps=num_steps)


# --- closed forms (THEORY §3 table) ------------------------------------------------------------


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
    """Green's kernel G(s) of Ẍ + 2γẊ + ω²X (G(0) = 0, Ġ(0) = 1), every regime (THEORY §3 table).

    e^{−γs} sin(Ωs)/Ω (underdamped), s e^{−γs} (critical), (e^{α₊s} − e^{α₋s})/(α₊ − α₋) (overdamped),
    evaluated without overflow or the (α₊ − α₋) → 0 cancellation; continuous across regimes.

    Example:
        >>> from noether_jax import theory
        >>> [round(float(theory.green_kernel(1.0, 1.0, w2)), 6) for w2 in (0.99, 1.0, 1.01)]
        [0.368493, 0.367879, 0.367267]
    """
    s, gamma, omega2 = _f(s), _f(gamma), _f(omega2)
    return _modes(s, gamma, omega2)[1]


def homogeneous_solution(t: Float[ArrayLike, "*S"], gamma: ArrayLike, omega2: ArrayLike) -> Float[Array, "*S"]:
    """h(t): the unforced solution with X(0) = 1, Ẋ(0) = 0 (THEORY §3 table), every regime.

    The unforced solution from (X(0), Ẋ(0)) is h(t)X(0) + G(t)Ẋ(0).

    Example:
        >>> from noether_jax import theory
        >>> round(float(theory.homogeneous_solution(1.0, 1.0, 1.0)), 6)   # e^{-1}(1 + 1)
        0.735759
    """
    t, gamma, omega2 = _f(t), _f(gamma), _f(omega2)
    c, sg = _modes(t, gamma, omega2)
    return c + gamma * sg


__all__ = [
    "Decay",
    "DecayState",
    "Oscillator",
    "OscillatorState",
    "decay",
    "green_kernel",
    "heavy_ball_constants",
    "heavy_ball_law",
    "homogeneous_solution",
    "nld_r4_law",
    "oscillator",
    "predict_heavy_ball",
    "predict_nld_r4",
    "predict_sgd",
    "predict_sgd_identity",
    "sgd_identity",
    "sgd_law",
    "sgd_rates",
    "sgd_rescale_step",
    "sgd_scale_step",
    "sgd_translation_step",
]
