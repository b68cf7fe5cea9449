"""A small abstract interpreter over jaxprs (private): one walk, with calls inlined.

:func:`interpret` runs a *rule* on every equation of a closed jaxpr, recursing into the bodies of
call-like primitives (``jit``/``pjit``, ``custom_jvp_call``, ``custom_vjp_call``, ``closed_call``,
``remat``), so that a rule sees only first-order primitives. Two rules use it: the dataflow pass of
:mod:`._dataflow` (concrete values plus channel labels) and the homogeneity pass of
:mod:`._homogeneity` (degrees of homogeneity).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax.extend.core as jcore

_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def call_body(eqn) -> tuple[Any, Sequence[Any]] | None:
    """The (jaxpr, consts) of a call-like equation whose body takes the equation's inputs, else None."""
    if eqn.primitive.name in ("scan", "while", "cond"):
        return None
    for name in _CALL_PARAMS:
        body = eqn.params.get(name)
        if body is None:
            continue
        jaxpr, consts = (body.jaxpr, body.consts) if hasattr(body, "consts") else (body, ())
        if hasattr(jaxpr, "eqns") and len(jaxpr.invars) == len(eqn.invars):
            return jaxpr, consts
    return None


def interpret(closed, inputs: Sequence[Any], rule: Callable, literal: Callable[[Any], Any]) -> list[Any]:
    """Run ``rule(eqn, in_states) -> out_states`` over ``closed`` (a ClosedJaxpr) from ``inputs``.

    ``literal(value)`` makes the state of a literal or a closed-over constant. ``rule`` returns one
    state per output of the equation (a list, even for one output).
    """

    def run(jaxpr, consts, ins):
        env: dict = {}

        def read(v):
            return literal(v.val) if isinstance(v, jcore.Literal) else env[v]

        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = literal(c)
        for v, x in zip(jaxpr.invars, ins, strict=True):
            env[v] = x
        for eqn in jaxpr.eqns:
            xs = [read(v) for v in eqn.invars]
            body = call_body(eqn)
            outs = run(*body, xs) if body is not None else rule(eqn, xs)
            for v, o in zip(eqn.outvars, outs, strict=True):
                env[v] = o
        return [read(v) for v in jaxpr.outvars]

    return run(closed.jaxpr, closed.consts, list(inputs))
