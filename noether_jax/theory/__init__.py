"""Closed-form theory of Neural Mechanics: how training breaks each conservation law.

Every law here is a *linear* recursion over per-group quantities of shape ``(G,)`` (one entry per
neuron or group), written as a pure, state-carrying pair of functions in the optax style::

    law = theory.sgd_law("scale", lr=0.1, weight_decay=1e-4)   # an eqx.Module of coefficients
    state = law.init(x0)                                       # a NamedTuple (a pytree)
    state, x_next = law.update(state, forcing)                 # one step, jit/scan/vmap-safe

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
from ._adam import adam_norm
from ._common import Law, Quadrature
from ._decay import (
    Decay,
    DecayState,
    decay,
    nld_r4_law,
    predict_nld_r4,
    predict_sgd,
    predict_sgd_identity,
    sgd_identity,
    sgd_law,
    sgd_rates,
    sgd_rescale_step,
    sgd_scale_step,
    sgd_translation_step,
)
from ._error import FLOOR, error_floor, relative_error
from ._laws import AbstractLaw, Forcing, NLDLaw, SGDIdentity, SGDLaw
from ._oscillator import (
    Oscillator,
    OscillatorState,
    green_kernel,
    heavy_ball_constants,
    heavy_ball_law,
    homogeneous_solution,
    oscillator,
    predict_heavy_ball,
)

__all__ = [
    "FLOOR",
    "AbstractLaw",
    "Decay",
    "DecayState",
    "Forcing",
    "Law",
    "NLDLaw",
    "Oscillator",
    "OscillatorState",
    "Quadrature",
    "adam_norm",
    "SGDIdentity",
    "SGDLaw",
    "decay",
    "error_floor",
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
    "relative_error",
    "sgd_identity",
    "sgd_law",
    "sgd_rates",
    "sgd_rescale_step",
    "sgd_scale_step",
    "sgd_translation_step",
]
