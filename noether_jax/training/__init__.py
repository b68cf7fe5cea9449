"""Training: the one engine (:class:`Engine`, :func:`run`), the :class:`Recorder`, and the validity guard.

:func:`run` trains K runs in lockstep on the same mini-batches in one ``lax.scan`` and records what
its hooks ask for at the save points; the :class:`Recorder` is that engine with the hook that measures
every symmetric group's conserved quantity next to the theory of the learning rule; the guard
(:class:`StabilityGuard`) carries the divergence and edge-of-stability flags of every result.
"""

from ._engine import (
    Batches,
    Engine,
    EngineState,
    Hook,
    LastStep,
    SaveParams,
    Sharpness,
    Snapshot,
    Start,
    Step,
    Training,
    batch_key,
    run,
)
from ._guard import STATUS, StabilityGuard, edge_of_stability, lambda_max, stability_guard
from ._hooks import BUDGET_PARTS, Companion, Conservation, NoetherHook
from ._recorder import SYMMETRY_TOL, Record, Recorder

__all__ = [
    "BUDGET_PARTS",
    "STATUS",
    "SYMMETRY_TOL",
    "Batches",
    "Companion",
    "Conservation",
    "Engine",
    "EngineState",
    "Hook",
    "LastStep",
    "NoetherHook",
    "Record",
    "Recorder",
    "SaveParams",
    "Sharpness",
    "Snapshot",
    "StabilityGuard",
    "Start",
    "Step",
    "Training",
    "batch_key",
    "edge_of_stability",
    "lambda_max",
    "run",
    "stability_guard",
]
