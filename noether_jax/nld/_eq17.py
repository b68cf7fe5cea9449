"""The effective learning rate of a normalised group and NLD eq. 17 for its norm (private)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .. import theory


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
