"""The one validation of the library: hyperparameter domains, integers, shapes and labels (private).

Every entry point checks its inputs here, before any compilation where the values are concrete.
Inside ``jit``/``vmap`` a hyperparameter is a tracer and cannot raise; :func:`valid` then gives a
traced boolean, which the training engine turns into a per-member status (one bad member never
spoils the others).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._tree import is_concrete


class Domain(NamedTuple):
    lower: float
    upper: float
    lower_open: bool
    upper_open: bool
    meaning: str

    def text(self) -> str:
        lo = ("(" if self.lower_open else "[") + ("-inf" if self.lower == -math.inf else f"{self.lower:g}")
        hi = ("inf" if self.upper == math.inf else f"{self.upper:g}") + (")" if self.upper_open else "]")
        return f"{lo}, {hi}"


_INF = math.inf
#: The domain of every named hyperparameter of the library (one table, used everywhere).
DOMAINS: dict[str, Domain] = {
    "lr": Domain(0.0, _INF, True, True, "the learning rate η must be positive"),
    "momentum": Domain(0.0, 1.0, False, True, "heavy-ball momentum β must satisfy 0 ≤ β < 1 (β = 1 has no friction)"),
    "weight_decay": Domain(0.0, _INF, False, True, "coupled weight decay λ must be ≥ 0"),
    "decoupled_weight_decay": Domain(0.0, _INF, False, True, "decoupled weight decay λ must be ≥ 0"),
    "b1": Domain(0.0, 1.0, False, True, "b1 (the first-moment decay) must be in [0, 1)"),
    "b2": Domain(0.0, 1.0, False, True, "b2 (the second-moment decay) must be in [0, 1)"),
    "decay": Domain(0.0, 1.0, False, True, "the RMSProp decay must be in [0, 1)"),
    "eps": Domain(0.0, _INF, True, True, "eps must be positive"),
    "init_scale": Domain(0.0, _INF, True, True, "the initialisation scale must be positive"),
    "mass": Domain(0.0, _INF, True, True, "a zero mass is a singular kinetic metric: use nj.GradientFlow for the overdamped limit"),
    "friction": Domain(0.0, _INF, True, True, "the friction μ must be positive"),
    "damping": Domain(0.0, _INF, False, True, "the damping rate ρ must be finite and ≥ 0 (a negative ρ is anti-damping)"),
}


def domain(name: str) -> Domain:
    return DOMAINS[name.split(".")[-1]]


def valid(name: str, value: Any) -> jax.Array:
    """Traced-safe: True where ``value`` lies in the domain of hyperparameter ``name`` (and is finite)."""
    d = domain(name)
    v = jnp.asarray(value)
    ok = jnp.isfinite(v)
    ok &= (v > d.lower) if d.lower_open else (v >= d.lower)
    ok &= (v < d.upper) if d.upper_open else (v <= d.upper)
    return ok


def hyper(name: str, value: Any, *, fix: str = "") -> jax.Array:
    """Validate hyperparameter ``name`` when it is concrete; always return it as a float array.

    A traced value (inside jit/vmap) is returned unchecked: the engine checks it with :func:`valid`
    and reports a per-member status instead of raising.
    """
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be a number, got the bool {value!r}.")
    try:
        arr = jnp.asarray(value, dtype=jnp.result_type(float)) if is_concrete(value) or not hasattr(value, "dtype") \
            else jnp.asarray(value)
    except TypeError:
        raise TypeError(f"`{name}` must be a number or an array of numbers, got {type(value).__name__}.") from None
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if is_concrete(arr):
        ok = np.asarray(valid(name, arr))
        if not ok.all():
            d = domain(name)
            v = np.asarray(arr)
            bad = v if v.ndim == 0 else v[~ok]
            raise ValueError(f"`{name}` must be finite and in {d.text()}, got {np.asarray(bad).tolist()}: {d.meaning}."
                             + (f" {fix}" if fix else ""))
    return arr


def integer(name: str, value: Any, *, minimum: int = 1) -> int:
    """An integer ≥ ``minimum`` (bools, floats such as 2.5 and strings are refused, naming the argument)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__}).")
    if int(value) < minimum:
        raise ValueError(f"`{name}` must be an integer ≥ {minimum}, got {int(value)}.")
    return int(value)


def batch_size(value: Any, n: int, name: str = "batch_size") -> int:
    """A batch size in 1..n."""
    b = integer(name, value, minimum=1)
    if b > n:
        raise ValueError(f"`{name}` ({b}) is larger than the data set ({n} examples); use at most {n}.")
    return b


def check_scalar(value: Any, what: str) -> jax.Array:
    """Raise a clear error at trace time when ``what`` did not return a scalar."""
    shape = jnp.shape(value)
    if shape != ():
        raise ValueError(
            f"{what} must return a scalar, but it returned an array of shape {shape}. "
            "Reduce it to one number, e.g. with jnp.sum or jnp.mean."
        )
    return value


def check_same_structure(a: Any, b: Any, name_a: str, name_b: str) -> None:
    """Raise when two pytrees differ in structure or leaf shapes."""
    ta, tb = jax.tree.structure(a), jax.tree.structure(b)
    if ta != tb:
        raise ValueError(
            f"`{name_b}` must have the same pytree structure as `{name_a}`; got\n"
            f"  {name_a}: {ta}\n  {name_b}: {tb}\n"
            f"Build `{name_b}` with jax.tree.map over `{name_a}` (e.g. jax.tree.map(jnp.zeros_like, {name_a}))."
        )
    for i, (x, y) in enumerate(zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)):
        if jnp.shape(x) != jnp.shape(y):
            raise ValueError(
                f"leaf {i} of `{name_b}` has shape {jnp.shape(y)} but the matching leaf of "
                f"`{name_a}` has shape {jnp.shape(x)}; every leaf must match in shape."
            )


def labels(y: Any, n_classes: int | None = None, name: str = "y") -> None:
    """Integer class labels, one per example, in [0, n_classes) (one-hot or float labels are refused)."""
    y = np.asarray(y) if is_concrete(y) else y
    if not isinstance(y, np.ndarray):
        return
    if y.ndim != 1:
        raise ValueError(f"`{name}` must hold one integer class label per example (shape (n,)), got shape {y.shape}"
                         + (": these look like one-hot labels; pass y.argmax(-1)." if y.ndim == 2 else "."))
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"`{name}` must hold integer class labels, got dtype {y.dtype}; convert with y.astype(int).")
    if y.size and (y.min() < 0 or (n_classes is not None and y.max() >= n_classes)):
        raise ValueError(f"`{name}` has labels outside [0, {n_classes}): min {int(y.min())}, max {int(y.max())}. "
                         "Relabel the classes as 0 … n_classes−1.")


def signature(fn: Callable, name: str, form: str, n_args: int) -> Callable:
    """Refuse, before any tracing, a callable that cannot be called with ``n_args`` positional arguments.

    ``form`` is what the library calls it with, e.g. ``"V(q, t)"``; the message names it and the fix.
    Callables whose signature Python cannot read (some builtins) pass unchecked.
    """
    if not callable(fn):
        raise TypeError(f"`{name}` must be a callable {form} -> scalar, got {type(fn).__name__}.")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn
    try:
        sig.bind(*range(n_args))
    except TypeError:
        raise TypeError(f"`{name}` must be callable as {form}, but its signature is {getattr(fn, '__name__', 'fn')}{sig}. "
                        f"Accept (and ignore, if unused) every argument, e.g. lambda {form[2:-1]}: ...") from None
    return fn


def positive_definite(rayleigh: Any, name: str = "the kinetic metric M = ∂²K/∂v²") -> None:
    """Raise when concrete Rayleigh quotients wᵀMw/wᵀw of random probes are not all finite and positive."""
    r = np.asarray(rayleigh)
    if not (np.all(np.isfinite(r)) and np.all(r > 0)):
        raise ValueError(f"{name} is not positive definite at the initial state: the Rayleigh quotients wᵀMw/|w|² of "
                         f"random probes w are {np.round(r, 6).tolist()} (all must be finite and > 0). A singular or "
                         "indefinite metric has no Euler–Lagrange acceleration; give every coordinate a positive mass, "
                         "or use nj.GradientFlow for the overdamped limit.")


def check_broadcast(like: Any, other: Any, name_like: str, name: str) -> None:
    """Raise when pytree ``other`` (e.g. a diagonal preconditioner) does not match ``like`` leaf for leaf
    (same structure; each leaf broadcastable to the matching one). Shapes are static: works under jit."""
    ta, tb = jax.tree.structure(like), jax.tree.structure(other)
    one = jax.tree_util.treedef_is_leaf(tb) and not jax.tree_util.treedef_is_leaf(ta)
    if ta != tb and not one:
        raise ValueError(f"`{name}` must have the pytree structure of `{name_like}` (or be one array); got\n"
                         f"  {name_like}: {ta}\n  {name}: {tb}")
    leaves_b = jax.tree.leaves(other) * (ta.num_leaves if one else 1)
    for i, (x, y) in enumerate(zip(jax.tree.leaves(like), leaves_b, strict=True)):
        try:
            ok = np.broadcast_shapes(jnp.shape(y), jnp.shape(x)) == tuple(jnp.shape(x))
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"leaf {i} of `{name}` has shape {jnp.shape(y)}, which does not broadcast to the shape "
                             f"{jnp.shape(x)} of the matching leaf of `{name_like}`; build `{name}` like `{name_like}` "
                             f"(e.g. jax.tree.map(jnp.ones_like, {name_like})).")
