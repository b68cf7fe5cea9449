"""Symmetries of the loss: actions, constraints, and detection in flax models."""

from ._detect import Detected, detect, group_names
from ._symmetry import (
    AbstractSymmetry,
    Action,
    Constraints,
    MaskedSymmetry,
    Rescale,
    Scale,
    Translation,
    constraints,
)

__all__ = [
    "Detected",
    "detect",
    "group_names",
    "AbstractSymmetry",
    "Action",
    "Constraints",
    "MaskedSymmetry",
    "Rescale",
    "Scale",
    "Translation",
    "constraints",
]
