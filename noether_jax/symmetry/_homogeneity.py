"""Is the loss exactly invariant under a rescaling, by the structure of its computation? (private)

A rescale candidate multiplies some parameter leaves by α and others by 1/α (α > 0). Each value of
the traced loss is then either unchanged, or multiplied by α^d (homogeneous of degree d), or
neither. The degree follows from the primitives alone: products add degrees, ``max(x, 0)`` and
``x > 0`` keep them (α > 0), a sum needs equal degrees, and ``tanh``, ``exp``, ``erf`` (gelu),
``expm1`` (ELU) of a scaled value are not homogeneous at all. A group is a symmetry of the model,
whatever the batch or the parameter values, exactly when the loss comes out with degree 0. This is
what tells a ReLU unit (a symmetry) from a tanh unit on tiny inputs or an ELU unit that happens to be
positive on one batch (near-symmetries, which a finite-α test alone can mistake for exact ones in
float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from ._jaxpr import interpret


class _Broken:
    """Not homogeneous; ``at`` is the first primitive that broke it."""

    def __init__(self, at: str):
        self.at = at


class _Lit:
    def __init__(self, value):
        self.zero = bool(np.all(np.asarray(value) == 0))
        self.value = value


_PASS = {  # the degree of the (first) data operand passes through
    "neg", "abs", "reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice", "rev", "copy",
    "copy_p", "convert_element_type", "reduce_precision", "stop_gradient", "reduce_sum", "reduce_max", "reduce_min",
    "reduce_window_sum", "reduce_window_max", "reduce_window_min", "cumsum", "cummax", "cummin", "dynamic_slice",
    "gather", "real", "optimization_barrier",
}
_SAME = {"add", "sub", "max", "min", "concatenate", "pad", "add_any", "select_n", "dynamic_update_slice"}
_COMPARE = {"gt", "ge", "lt", "le", "eq", "ne"}
_INVARIANT = {"sign", "is_finite", "argmax", "argmin"}
_POWER = {"square": Fraction(2), "sqrt": Fraction(1, 2), "rsqrt": Fraction(-1, 2), "cbrt": Fraction(1, 3)}


def _deg(x):
    return x if isinstance(x, Fraction) else None


def _rule(eqn, xs):
    name = eqn.primitive.name
    n_out = len(eqn.outvars)
    broken = next((x for x in xs if isinstance(x, _Broken)), None)
    if broken is not None:
        return [broken] * n_out
    degs = [_deg(x) for x in xs]
    if all(d is None for d in degs):
        if all(isinstance(x, _Lit) for x in xs) and name in _PASS | {"broadcast_in_dim"}:
            return [xs[0]] * n_out  # a structural op on a literal keeps its zero-ness
        return [None] * n_out
    out = _degree(name, eqn, xs, degs)
    if isinstance(out, _Broken):
        return [out] * n_out
    return [None if out == 0 else out] * n_out


def _degree(name, eqn, xs, degs):
    fail = _Broken(name)
    if name in _PASS:
        return degs[0] if all(d is None for d in degs[1:]) else fail
    if name in _SAME:
        data = xs[1:] if name == "select_n" else xs
        ddegs = degs[1:] if name == "select_n" else degs
        if name == "select_n" and degs[0] is not None:
            return fail
        if name == "dynamic_update_slice":
            data, ddegs = xs[:2], degs[:2]
        scaled = {d for d in ddegs if d is not None}
        others_zero = all(isinstance(x, _Lit) and x.zero for x, d in zip(data, ddegs, strict=True) if d is None)
        return scaled.pop() if len(scaled) == 1 and others_zero else fail
    if name in ("mul", "dot_general", "conv_general_dilated"):
        return sum((d for d in degs if d is not None), Fraction(0))
    if name == "div":
        return (degs[0] or 0) - (degs[1] or 0)
    if name == "integer_pow":
        return degs[0] * int(eqn.params["y"])
    if name in _POWER:
        return degs[0] * _POWER[name]
    if name == "pow" and degs[1] is None and isinstance(xs[1], _Lit) and np.ndim(xs[1].value) == 0:
        return degs[0] * Fraction(float(xs[1].value)).limit_denominator(1000)
    if name in _COMPARE:  # the sign of an α^d-scaled value against 0 or a like-scaled value is unchanged
        scaled = {d for d in degs if d is not None}
        others_zero = all(isinstance(x, _Lit) and x.zero for x, d in zip(xs, degs, strict=True) if d is None)
        return Fraction(0) if len(scaled) == 1 and others_zero else fail
    if name in _INVARIANT:
        return Fraction(0)
    return fail  # exp, log, tanh, logistic, erf, expm1, ... of a scaled value, or an unknown primitive


def invariant(closed, moved: dict[int, int], n_leaves: int) -> tuple[bool, str]:
    """Whether the loss (the first output of ``closed``, a jaxpr of the leaves) is exactly invariant
    when leaf ``i`` is multiplied by α^``moved[i]`` (α > 0); else the primitive that breaks it."""
    ins: Sequence = [Fraction(moved[i]) if moved.get(i, 0) else None for i in range(n_leaves)]
    out = interpret(closed, ins, _rule, _Lit)[0]
    if isinstance(out, _Broken):
        return False, out.at
    if out is None or isinstance(out, _Lit):
        return True, ""
    return False, f"the loss has degree {out}"
