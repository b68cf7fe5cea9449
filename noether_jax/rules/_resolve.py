"""How the training engine takes an optimiser: a rule, an optax transformation, or a factory (private)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import optax

from ._base import AbstractRule, Hyper


class Resolved(NamedTuple):
    """The optimiser of one run: the rule (None when measured only), its optax transformation, and why."""

    rule: AbstractRule | None
    transformation: optax.GradientTransformation
    label: str


_KINDS = (
    "an nj.rules learning rule (e.g. nj.rules.sgd(lr=0.1)), an optax.GradientTransformation as it is "
    "(e.g. optax.adam(1e-3), measured only), or a factory Hyper -> optax.GradientTransformation"
)


def check_optimizer(optimizer: Any, name: str = "optimizer") -> None:
    """Refuse, before any tracing, anything that is not a rule, an optax transformation or a factory."""
    if optimizer is None or isinstance(optimizer, AbstractRule | optax.GradientTransformation):
        return
    if callable(optimizer):
        return
    raise TypeError(f"`{name}` must be {_KINDS}; got {type(optimizer).__name__}.")


def sweepable(optimizer: Any) -> bool:
    """True when η, β and λ can be swept: a rule (or the default None), or a Hyper factory."""
    return not isinstance(optimizer, optax.GradientTransformation)


def resolve(optimizer: Any, hyper: Hyper | AbstractRule | None) -> Resolved:
    """The run's rule and optax transformation (may be called inside jit/vmap with a traced ``hyper``).

    * ``None``: SGD with heavy-ball momentum and coupled weight decay, from ``hyper`` (required);
    * a rule: the rule, with its swept coordinates replaced by ``hyper`` when one is given (or
      ``hyper`` itself when it is a rule of the same kind);
    * an optax transformation: used as it is; measured only (no law), ``hyper`` must be None;
    * a callable: ``optimizer(hyper)``, an optax transformation; measured only.
    """
    check_optimizer(optimizer)
    if isinstance(hyper, AbstractRule):
        if optimizer is not None and not isinstance(optimizer, AbstractRule):
            raise TypeError("a learning rule was passed as `hyper`, but the optimiser is not a rule.")
        if optimizer is not None and type(hyper) is not type(optimizer):
            raise TypeError(f"`hyper` is a {type(hyper).__name__} but the optimiser is a {type(optimizer).__name__}.")
        return Resolved(hyper, hyper.optimizer(), hyper.law_label())
    if optimizer is None:
        if hyper is None:
            raise ValueError("`hyper` is required with the default optimiser (SGD): pass nj.Hyper(lr=..., momentum=..., "
                             "weight_decay=...), or give the Recorder an `optimizer`.")
        from ._sgd import sgd

        rule = sgd(lr=hyper.lr, momentum=hyper.momentum, weight_decay=hyper.weight_decay)
        return Resolved(rule, rule.optimizer(), rule.law_label())
    if isinstance(optimizer, AbstractRule):
        rule = optimizer if hyper is None else optimizer.with_hyper(hyper)
        return Resolved(rule, rule.optimizer(), rule.law_label())
    if isinstance(optimizer, optax.GradientTransformation):
        if hyper is not None:
            raise ValueError(
                "an optax transformation passed as it is has fixed hyperparameters, so `hyper` must be None. To sweep "
                "η, β and λ, wrap it with optax.inject_hyperparams in a factory `hyper -> transformation`, or use an "
                "nj.rules rule (e.g. nj.rules.sgd)."
            )
        return Resolved(None, optimizer, "measured only: no law applies to a bare optax transformation")
    factory: Callable = optimizer
    if hyper is None:
        raise ValueError("`hyper` is required when the optimiser is a factory hyper -> optax.GradientTransformation.")
    out = factory(hyper)
    if isinstance(out, AbstractRule):
        return Resolved(out, out.optimizer(), out.law_label())
    if not isinstance(out, optax.GradientTransformation):
        raise TypeError(f"the optimiser factory returned {type(out).__name__}; it must return an optax.GradientTransformation.")
    return Resolved(None, out, "measured only: a Hyper -> optax factory brings no law (pass an nj.rules rule for theory)")
