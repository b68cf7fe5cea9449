"""Stochastic learning dynamics (SGD as an SDE with a low-rank diffusion), Noether statistics under
noise, and the edge-of-stability guard for continuous models."""

from ._guard import StabilityGuard, edge_of_stability, lambda_max, stability_guard
from ._stochastic import (
    EnsembleStats,
    NoiseCharge,
    Paths,
    SGDSDE,
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
