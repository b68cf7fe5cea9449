"""noether_jax: the learning dynamics of neural networks as Lagrangian mechanics, in JAX.

The learning rule is a kinetic term and the loss a potential term; autodiff derives the
Euler–Lagrange flow and diffrax integrates it. The library is pure functions of pytrees, in
subpackages:

* :mod:`noether_jax.mechanics` (kinetic terms, Lagrangians, flows, :func:`simulate`);
* :mod:`noether_jax.rules` (learning rules: optax optimiser, continuous model, laws);
* :mod:`noether_jax.symmetry` (actions, constraints, Noether charges, detection);
* :mod:`noether_jax.theory` (closed forms of the broken conservation laws, the error metric);
* :mod:`noether_jax.training` (the one training engine, the Recorder, the guard);
* :mod:`noether_jax.stochastic` (SGD as an SDE), :mod:`noether_jax.nld` (Noether's Learning Dynamics);
* :mod:`noether_jax.sweeps` (vmapped, sharded hyperparameter sweeps), :mod:`noether_jax.models`,
  :mod:`noether_jax.data`.

The application (``nj.experiments``, ``nj.plots``, ``nj.report`` and the ``noether-jax`` command)
sits on top, is imported only when used, and is never imported by the library.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from . import data, mechanics, models, nld, rules, stochastic, sweeps, symmetry, theory, training
from ._config import compilation_cache, enable_x64
from .mechanics import (
    RESULTS,
    AbstractDynamics,
    EulerLagrange,
    GradientFlow,
    Lagrangian,
    Trajectory,
    euler_lagrange,
    kinetic,
    simulate,
)
from .rules import Hyper, LearningRule
from .sweeps import status_names, sweep, sweep_summary
from .symmetry import (
    ChargeBudget,
    ConservationCount,
    KineticSymmetryBreaking,
    NoetherCharge,
    breaks_symmetry,
    charge_budget,
    count_conservation_laws,
    kinetic_symmetry_breaking,
    noether_charge,
)
from .training import Record, Recorder

try:
    __version__ = version("noether_jax")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

_APPLICATION = ("experiments", "plots", "report")


def __getattr__(name: str):
    """The application tier (experiments, plots, report) is imported on first use only."""
    if name in _APPLICATION:
        module = import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    if name == "sweep_figures":
        return import_module(".plots", __name__).sweep_figures
    raise AttributeError(f"module 'noether_jax' has no attribute {name!r}")


__all__ = [
    "RESULTS",
    "AbstractDynamics",
    "ChargeBudget",
    "ConservationCount",
    "EulerLagrange",
    "GradientFlow",
    "Hyper",
    "KineticSymmetryBreaking",
    "Lagrangian",
    "LearningRule",
    "NoetherCharge",
    "Record",
    "Recorder",
    "Trajectory",
    "breaks_symmetry",
    "charge_budget",
    "compilation_cache",
    "count_conservation_laws",
    "data",
    "enable_x64",
    "euler_lagrange",
    "kinetic",
    "kinetic_symmetry_breaking",
    "mechanics",
    "models",
    "nld",
    "noether_charge",
    "rules",
    "simulate",
    "status_names",
    "stochastic",
    "sweep",
    "sweep_summary",
    "sweeps",
    "symmetry",
    "theory",
    "training",
]
