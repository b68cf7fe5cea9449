"""What every learning rule provides to the training engine (private).

A rule is an ``equinox.Module`` whose hyperparameters are arrays (so it can be vmapped over and a new
value never recompiles). Besides its discrete optax optimiser and its continuous models, it brings
its own theory: the closed-form conservation laws it has (:meth:`AbstractRule.laws`, empty when it has
none) and the edge of stability of its iteration (:meth:`AbstractRule.edge`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Bool, PyTree

from .._tree import cast_floats
from .._validate import hyper, valid


class Hyper(eqx.Module):
    """The swept coordinates of a run, as arrays (so they can be vmapped): η, β and λ.

    For SGD and heavy ball they are the learning rate, the momentum and the coupled weight decay; an
    adaptive rule maps them onto its own hyperparameters (see its ``with_hyper``).

    Example:
        >>> import noether_jax as nj
        >>> nj.Hyper(lr=0.1, momentum=0.9, weight_decay=1e-4).momentum.tolist()
        0.9
    """

    lr: Array
    momentum: Array
    weight_decay: Array

    def __init__(self, lr: ArrayLike, momentum: ArrayLike = 0.0, weight_decay: ArrayLike = 0.0):
        self.lr = hyper("lr", lr)
        self.momentum = hyper("momentum", momentum)
        self.weight_decay = hyper("weight_decay", weight_decay)

    def valid(self) -> Bool[Array, "*S"]:
        """Traced-safe: every hyperparameter in its domain."""
        return valid("lr", self.lr) & valid("momentum", self.momentum) & valid("weight_decay", self.weight_decay)


class EdgeOfStability(eqx.Module):
    """Where a rule's discrete iteration stops being described by a continuous model.

    The guard estimates λ_max of M = P^{-1/2}(H + λ_H I)P^{-1/2} (H the mini-batch Hessian of the loss,
    λ_H the coupled weight decay, P the rule's diagonal preconditioner, or 1) and flags
    ``lr · λ_max > threshold``. A NaN threshold means no threshold is known (``label`` says why).

    Attributes:
        lr: η. threshold: 2(1+β) for heavy ball, 2 for GD.
        weight_decay: λ_H, the weight decay inside the Hessian (coupled decay only).
        preconditioner: ``(params, opt_state) -> P`` (a pytree like the parameters), or None.
        label: what the threshold is, for reports.
    """

    lr: Array
    threshold: Array
    weight_decay: Array
    preconditioner: Callable[[PyTree, Any], PyTree] | None = eqx.field(static=True, default=None)
    label: str = eqx.field(static=True, default="")


class AbstractRule(eqx.Module):
    """The interface of a learning rule (see :class:`noether_jax.rules.LearningRule`)."""

    #: a short name for labels ("sgd", "adam", ...)
    name: eqx.AbstractClassVar[str]

    @abc.abstractmethod
    def optimizer(self) -> optax.GradientTransformation:
        """The discrete optax optimiser."""

    @abc.abstractmethod
    def with_hyper(self, hyper: Hyper) -> AbstractRule:
        """This rule with its swept coordinates (η, β, λ) replaced (arrays, possibly traced)."""

    @abc.abstractmethod
    def valid(self) -> Bool[Array, "*S"]:
        """Traced-safe: True where every hyperparameter lies in its domain."""

    def laws(self, kind: str) -> dict[str, Any]:
        """The closed-form laws of a symmetry kind under this rule: name → ``theory.AbstractLaw``
        (``"theory"``, and ``"identity"`` where an exact discrete identity exists). Empty: no law."""
        return {}

    def nld_laws(self) -> dict[str, Any]:
        """Laws of r⁴ = |θ_𝒜|⁴ for scale groups (NLD eq. 17 and its variants); empty when none."""
        return {}

    def law(self, kind: str, name: str = "theory") -> Any:
        """The law ``name`` of symmetry ``kind`` (see :meth:`laws`); an error naming the rules that have one."""
        laws = self.laws(kind)
        if name not in laws:
            have = f"its laws for {kind!r} are {sorted(laws)}" if laws else f"it has no closed-form law for {kind!r}"
            raise ValueError(
                f"nj.rules.{self.name} has no law {name!r}: {have}. The rules with closed-form laws are nj.rules.sgd, "
                "heavy_ball, gradient_flow and modified_loss (SGD with heavy-ball momentum and coupled weight decay); "
                "under an adaptive or preconditioned rule, measure the charges with nj.charge_budget instead."
            )
        return laws[name]

    def law_label(self) -> str:
        """What :meth:`laws` predicts, in words (or why there is no law)."""
        return f"no closed-form law is known for {self.name}"

    @abc.abstractmethod
    def edge(self) -> EdgeOfStability:
        """The edge-of-stability threshold of the guard."""

    def initial_velocity(self, params: PyTree, grad: PyTree, opt_state: Any = None) -> PyTree:
        """θ̇(0) of the rule's continuous model, from the first gradient and the optimiser state."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous initial velocity.")

    def astype(self, dtype: Any) -> AbstractRule:
        """The rule with every floating hyperparameter cast to ``dtype`` (a float32 model runs in float32)."""
        return cast_floats(self, dtype)


def bare_edge(lr: ArrayLike = jnp.nan) -> EdgeOfStability:
    """The guard of a bare optax transformation: no threshold is known (NaN)."""
    nan = jnp.asarray(jnp.nan, jnp.result_type(float))
    return EdgeOfStability(jnp.asarray(lr, nan.dtype), nan, jnp.zeros_like(nan), None,
                           "no threshold: a bare optax transformation carries no learning rule")


def all_valid(*flags: Any) -> Array:
    out = jnp.asarray(True)
    for f in flags:
        out = out & jnp.all(f)
    return out


__all__ = ["AbstractRule", "EdgeOfStability", "Hyper", "all_valid", "bare_edge"]
