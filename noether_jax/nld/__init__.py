"""Noether's Learning Dynamics (Tanaka & Kunin, NeurIPS 2021), made quantitative.

A scale-invariant group θ_𝒜 = r θ̂ (a filter and its bias before BatchNorm) trained by SGD(η, β, λ)
moves its direction θ̂ with the *effective learning rate* η/r² (÷(1−β) with momentum), while r²
grows with the gradient it sees and decays with weight decay (NLD eq. 17). This subpackage has

* :func:`effective_learning_rate`, :func:`eq17_errors` and the velocity-forced form of eq. 17
  (:func:`predict_r4_velocity`); eq. 17 itself is :func:`noether_jax.theory.nld_r4_law`;
* the RMSProp analogy as a runnable optimiser: :func:`rmsprop_mapping` maps (η, β, λ, r(0)) to a
  group RMSProp on the unit sphere (:func:`sphere_rmsprop`, from the optax parts
  :func:`scale_by_group_rms` and :func:`project_to_sphere`), and :func:`compare_rmsprop` runs it
  against SGD on the same mini-batches (:func:`lockstep`), scored by :func:`rmsprop_match`;
* :func:`constrain_norm`, the constrained-filter-norm ablation of NLD Fig. 3, as a post-update.

**Eq. 17 under mini-batch noise.** Eq. 17 takes |θ̇|² = |ĝ|²/(μ²r²), the overdamped velocity of a
*slowly varying* gradient. Mini-batch noise is not slowly varying: the momentum buffer averages it,
giving |θ̇|² ≈ |ĝ|²/((1−β²)r²), a factor (1−β)/(1+β) (1/19 at β = 0.9) less forcing. On a BatchNorm
CNN the mini-batch gradient is mostly noise, and eq. 17 then overpredicts r² several-fold at
β = 0.9 (it is exact at β = 0, where both coincide). The *velocity-forced* form
d r⁴/dt = −(4k/μ) r⁴ + (2η(1+β)/μ) r²|θ̇|² reduces to eq. 17 for a slowly varying ĝ and holds in
both regimes; its RMSProp counterpart accumulates the momentum buffer (``accumulate="momentum"``).
"""

from ._companion import RMSPropCompanion
from ._compare import Comparison, RMSPropMatch, cnn_scale_symmetry, compare_rmsprop, constrain_norm, rmsprop_match
from ._eq17 import FORCINGS, FORMS, effective_learning_rate, eq17_errors, predict_eq17, predict_r4_velocity, squared_velocity
from ._forms import Eq17Forms
from ._lockstep import GroupTrack, Track, lockstep
from ._rmsprop import (
    Accumulate,
    GroupRMSState,
    RMSPropMapping,
    project_to_sphere,
    rmsprop_mapping,
    scale_by_group_rms,
    sphere_rmsprop,
)

__all__ = [
    "FORCINGS",
    "FORMS",
    "Accumulate",
    "Comparison",
    "Eq17Forms",
    "GroupRMSState",
    "GroupTrack",
    "RMSPropCompanion",
    "RMSPropMapping",
    "RMSPropMatch",
    "Track",
    "cnn_scale_symmetry",
    "compare_rmsprop",
    "constrain_norm",
    "effective_learning_rate",
    "eq17_errors",
    "lockstep",
    "predict_eq17",
    "predict_r4_velocity",
    "squared_velocity",
    "project_to_sphere",
    "rmsprop_mapping",
    "rmsprop_match",
    "scale_by_group_rms",
    "sphere_rmsprop",
]
