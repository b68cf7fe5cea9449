"""Conservation laws as step-by-step predictors that a training run feeds (private).

A learning rule that has closed-form laws hands them to the training engine as objects with one
interface, in the optax style::

    state = law.init(x0, rate0)        # X(0) and Ẋ(0) per group
    state = law.update(state, forcing) # one optimiser step, fed the step's own Forcing
    law.value(state)                   # the prediction of X after the steps so far

:class:`Forcing` holds every per-group quantity of a step that some law may take as its forcing;
each law reads the ones it needs (XLA drops the others).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._decay import nld_r4_law, sgd_identity, sgd_law
from ._oscillator import heavy_ball_law


class Forcing(NamedTuple):
    """Per-group quantities of one optimiser step n → n+1 (shape ``(G,)`` each).

    Attributes:
        x: X = ``sym.pair(θₙ, θₙ)`` before the step (⟨θ_𝒜, 𝟙⟩, |θ_𝒜|² or |θ_𝒜₁|² − |θ_𝒜₂|²).
        grad_sq: ``sym.pair(g, g)`` of the applied mini-batch loss gradient gₙ (|g_𝒜|², ...).
        vel_sq: ``sym.pair(v, v)`` with vₙ = (θₙ₊₁ − θₙ)/η, minus the momentum buffer of heavy ball.
    """

    x: Float[Array, " G"]
    grad_sq: Float[Array, " G"]
    vel_sq: Float[Array, " G"]


class AbstractLaw(eqx.Module):
    """A per-group conservation law fed by a run: ``init``, ``update``, ``value``."""

    def init(self, x0: Float[ArrayLike, " G"], rate0: Float[ArrayLike, " G"]) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def update(self, state: Any, forcing: Forcing) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def value(self, state: Any) -> Float[Array, " G"]:  # pragma: no cover - interface
        raise NotImplementedError


class SGDLaw(AbstractLaw):
    """The closed form of one kind's law under SGD with heavy-ball momentum and coupled weight decay.

    β = 0: NM eqs. 18–20, Ẋ = −cX + κ|g_𝒜|² (:func:`sgd_law`); β > 0: the driven damped oscillator
    Ẍ + 2γẊ + ω²X = 2|θ̇_𝒜|² (:func:`heavy_ball_law`) fed the measured velocity, from Ẋ(0) of the
    rule's initial velocity. β may be traced (a sweep): both are advanced and the value picks one.

    Example:
        >>> import jax.numpy as jnp; from noether_jax import theory
        >>> law = theory.SGDLaw("scale", lr=0.1, momentum=0.0, weight_decay=0.0)
        >>> f = theory.Forcing(x=jnp.ones(1), grad_sq=jnp.ones(1), vel_sq=jnp.ones(1))
        >>> law.value(law.update(law.init(jnp.ones(1), jnp.zeros(1)), f)).round(6).tolist()
        [1.01]
    """

    kind: str = eqx.field(static=True)
    first: Any
    oscillator: Any
    momentum: Array

    def __init__(self, kind: str, *, lr: ArrayLike, momentum: ArrayLike = 0.0, weight_decay: ArrayLike = 0.0):
        beta = jnp.asarray(momentum)
        self.kind = kind
        self.first = sgd_law(kind, lr=lr, weight_decay=weight_decay)
        # a dummy β where β = 0 keeps the oscillator's coefficients finite; its value is not used there
        self.oscillator = heavy_ball_law(kind, lr=lr, momentum=jnp.where(beta > 0, beta, 0.5), weight_decay=weight_decay)
        self.momentum = beta

    def init(self, x0, rate0):
        return self.first.init(x0), self.oscillator.init(x0, rate0)

    def update(self, state, forcing: Forcing):
        unforced = self.kind == "translation"
        first, _ = self.first.update(state[0], None if unforced else forcing.grad_sq)
        osc, _ = self.oscillator.update(state[1], None if unforced else forcing.vel_sq)
        return first, osc

    def value(self, state):
        return jnp.where(self.momentum > 0, state[1].value, state[0].value)


class SGDIdentity(AbstractLaw):
    """The exact discrete identity of SGD (β = 0): Xₙ₊₁ = (1−ηλ)²Xₙ + η²|g_𝒜,n|² (translation: (1−ηλ)Xₙ)."""

    kind: str = eqx.field(static=True)
    law: Any

    def __init__(self, kind: str, *, lr: ArrayLike, weight_decay: ArrayLike = 0.0):
        self.kind = kind
        self.law = sgd_identity(kind, lr=lr, weight_decay=weight_decay)

    def init(self, x0, rate0):
        return self.law.init(x0)

    def update(self, state, forcing: Forcing):
        return self.law.update(state, None if self.kind == "translation" else forcing.grad_sq)[0]

    def value(self, state):
        return state.value


class NLDLaw(AbstractLaw):
    """NLD eq. 17 on r⁴ = |θ_𝒜|⁴ of a scale group, fed |ĝ|² = r²|g_𝒜|² (:func:`nld_r4_law`).

    ``init`` takes X(0) = r²(0) and ``value`` returns the predicted r⁴.
    """

    law: Any

    def __init__(self, *, lr: ArrayLike, momentum: ArrayLike = 0.0, weight_decay: ArrayLike = 0.0):
        self.law = nld_r4_law(lr=lr, momentum=momentum, weight_decay=weight_decay)

    def init(self, x0, rate0):
        return self.law.init(jnp.asarray(x0) ** 2)

    def update(self, state, forcing: Forcing):
        return self.law.update(state, forcing.x * forcing.grad_sq)[0]

    def value(self, state):
        return state.value
