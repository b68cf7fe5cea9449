"""Symmetries of the loss: actions, their constraints, Noether charges, detection in flax models.

* actions (:class:`Translation`, :class:`Scale`, :class:`Rescale`, any :class:`Action`) with one
  parameter per group (neuron), and their gradient and Hessian constraints (:func:`constraints`);
* Noether charges, kinetic symmetry breaking and the charge budget of a learning rule
  (:func:`noether_charge`, :func:`kinetic_symmetry_breaking`, :func:`charge_budget`);
* :func:`detect`: the symmetric groups of a flax model, found and confirmed numerically;
* :func:`count_conservation_laws`: how many conservation laws gradient flow has (Marcotte et al. 2023).
"""

from ._actions import AbstractSymmetry, Action, Constraints, MaskedSymmetry, Rescale, Scale, Translation, constraints
from ._conservation import ConservationCount, count_conservation_laws
from ._detect import KINDS, Detected, NearSymmetry, detect
from ._groups import (
    Symmetries,
    check_scale,
    check_symmetry,
    gradient_residuals,
    group_angles,
    group_names,
    group_values,
    in_group,
    n_groups,
    normalise_groups,
    pair,
    parts,
    segment_sum,
)
from ._noether import (
    ChargeBudget,
    KineticSymmetryBreaking,
    NoetherCharge,
    SymmetryBreaking,
    breaks_symmetry,
    charge_budget,
    kinetic_symmetry_breaking,
    noether_charge,
)

__all__ = [
    "KINDS",
    "AbstractSymmetry",
    "Action",
    "ChargeBudget",
    "ConservationCount",
    "Constraints",
    "Detected",
    "KineticSymmetryBreaking",
    "MaskedSymmetry",
    "NearSymmetry",
    "NoetherCharge",
    "Rescale",
    "Scale",
    "Symmetries",
    "SymmetryBreaking",
    "Translation",
    "breaks_symmetry",
    "charge_budget",
    "check_scale",
    "check_symmetry",
    "constraints",
    "count_conservation_laws",
    "detect",
    "gradient_residuals",
    "group_angles",
    "group_names",
    "group_values",
    "in_group",
    "kinetic_symmetry_breaking",
    "n_groups",
    "noether_charge",
    "normalise_groups",
    "pair",
    "parts",
    "segment_sum",
]
