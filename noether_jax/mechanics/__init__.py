"""Mechanics: kinetic terms, the Lagrangian L = φ(t)[K − V], its Euler–Lagrange flow, and their integration.

A learning rule is a kinetic term, the loss a potential term. :class:`Lagrangian` derives the
Euler–Lagrange equation by autodiff, matrix-free; :class:`GradientFlow` is the overdamped
(first-order) limit; :func:`simulate` integrates either with diffrax.
"""

from . import kinetic
from ._integrate import RESULTS, Trajectory, simulate
from ._lagrangian import AbstractDynamics, EulerLagrange, GradientFlow, Lagrangian, euler_lagrange

__all__ = [
    "RESULTS",
    "AbstractDynamics",
    "EulerLagrange",
    "GradientFlow",
    "Lagrangian",
    "Trajectory",
    "euler_lagrange",
    "kinetic",
    "simulate",
]
