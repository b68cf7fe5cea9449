"""Learning rules: each named rule maps a discrete optax optimiser to its continuous model and its laws.

``nj.rules.sgd(lr=..., momentum=..., weight_decay=...)`` and its variants are :class:`LearningRule`
objects: ``.optimizer()`` (optax), ``.lagrangian(loss)`` / ``.flow(loss)`` (continuous models),
``.initial_velocity(...)``, ``.laws(kind)`` (closed-form conservation laws) and ``.edge()`` (the
edge-of-stability threshold). Hyperparameters are keyword-only, in the order lr, momentum, weight_decay.

``nj.rules.rmsprop``, ``nj.rules.adam`` and ``nj.rules.adamw`` are the adaptive rules: optax's own
optimisers, with a continuous flow whose state carries the accumulators (``rule.flow(loss)``).
"""

from ._adaptive import AbstractAdaptive, Adam, AdamAccumulators, AdamW, AdaptiveFlow, RMSAccumulators, RMSProp, adam, adamw, rmsprop
from ._base import AbstractRule, EdgeOfStability, Hyper, bare_edge
from ._resolve import Resolved, check_optimizer, resolve, sweepable
from ._sgd import LearningRule, ModifiedLoss, RegularisedLoss, gradient_flow, heavy_ball, modified_loss, preconditioned, sgd

__all__ = [
    "AbstractAdaptive",
    "Adam",
    "AdamAccumulators",
    "AdamW",
    "AdaptiveFlow",
    "RMSAccumulators",
    "RMSProp",
    "adam",
    "adamw",
    "rmsprop",
    "AbstractRule",
    "EdgeOfStability",
    "Hyper",
    "LearningRule",
    "ModifiedLoss",
    "RegularisedLoss",
    "Resolved",
    "bare_edge",
    "check_optimizer",
    "gradient_flow",
    "heavy_ball",
    "modified_loss",
    "preconditioned",
    "resolve",
    "sgd",
    "sweepable",
]
