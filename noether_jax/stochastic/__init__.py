"""Stochastic learning dynamics: SGD and heavy ball as an Itô SDE with a low-rank diffusion, Noether
statistics under noise, and (re-exported from :mod:`noether_jax.training`) the edge-of-stability guard.

A mini-batch of S examples drawn without replacement from n gives the gradient ḡ + ξ with
Cov ξ = (c/S)Σ, Σ the per-example gradient covariance and c = (n − S)/(n − 1). One step is η of
continuous time, so SGD is dθ = −(ḡ + λθ) dt + √(ηc/S) F(θ)ᵀ dW with Σ = FᵀF, F built from the
per-example gradients and applied as a lineax operator (no d×d matrix). Every per-example gradient
obeys a symmetry's gradient constraint, so no noise enters along a symmetry: translation charges are
deterministic, and scale/rescale charges gain only the Itô drift (ηc/S)·Tr Σ_𝒜.
"""

from ..training import StabilityGuard, edge_of_stability, lambda_max, stability_guard
from ._sde import (
    SGDSDE,
    EnsembleStats,
    NoiseCharge,
    Paths,
    charge,
    ensemble_stats,
    noether_noise,
    predicted_charge_mean,
    sde_ensemble,
    sde_path,
    sgd_ensemble,
    sgd_path,
)

__all__ = [
    "SGDSDE",
    "EnsembleStats",
    "NoiseCharge",
    "Paths",
    "StabilityGuard",
    "charge",
    "edge_of_stability",
    "ensemble_stats",
    "lambda_max",
    "noether_noise",
    "predicted_charge_mean",
    "sde_ensemble",
    "sde_path",
    "sgd_ensemble",
    "sgd_path",
    "stability_guard",
]
