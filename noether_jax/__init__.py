"""noether_jax: the learning dynamics of neural networks as Lagrangian mechanics, in JAX.

The learning rule is a kinetic term and the loss a potential term; autodiff derives the
Euler–Lagrange flow and diffrax integrates it. Public names are re-exported here; the modules
behind them are private.
"""

from importlib.metadata import PackageNotFoundError, version

from . import data, kinetic, models, nld, plots, rules, stochastic, symmetry, theory
from ._config import enable_x64
from ._conservation import ConservationCount, count_conservation_laws
from ._integrate import RESULTS, Trajectory, simulate
from ._lagrangian import AbstractDynamics, EulerLagrange, GradientFlow, Lagrangian, euler_lagrange
from ._noether import (
    ChargeBudget,
    KineticSymmetryBreaking,
    NoetherCharge,
    breaks_symmetry,
    charge_budget,
    kinetic_symmetry_breaking,
    noether_charge,
)
from ._recorder import Hyper, Record, Recorder
from ._rules import LearningRule
from ._sweep import status_names, sweep, sweep_figures, sweep_summary

try:
    __version__ = version("noether_jax")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "nld",
    "stochastic",
    "sweep",
    "sweep_figures",
    "sweep_summary",
    "status_names",
    "plots",
    "Hyper",
    "Record",
    "Recorder",
    "models",
    "ConservationCount",
    "count_conservation_laws",
    "theory",
    "ChargeBudget",
    "KineticSymmetryBreaking",
    "NoetherCharge",
    "breaks_symmetry",
    "charge_budget",
    "kinetic_symmetry_breaking",
    "noether_charge",
    "symmetry",
    "data",
    "RESULTS",
    "AbstractDynamics",
    "EulerLagrange",
    "GradientFlow",
    "Lagrangian",
    "LearningRule",
    "Trajectory",
    "enable_x64",
    "euler_lagrange",
    "kinetic",
    "rules",
    "simulate",
]
