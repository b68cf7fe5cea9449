"""The configurations of a sweep: value lists, the grid, and their validation before any work (private)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jaxtyping import Array, Int

from .. import _validate

HYPERS = ("lr", "momentum", "weight_decay", "batch_size", "seed", "init_scale")
_INTEGER = ("batch_size", "seed")
_DATA_STREAM = 0x5EED  # the mini-batch key of seed s is fold_in(key(s), _DATA_STREAM)


def data_key(seed: int | Int[Array, ""]) -> jax.Array:
    """The mini-batch PRNG key of a sweep member with ``seed`` (its model is initialised from ``seed``)."""
    return jax.random.fold_in(jax.random.key(seed), _DATA_STREAM)


def values(name: str, value: Any) -> list:
    """One value or a list of values of hyperparameter ``name``, as Python numbers."""
    vals = list(value) if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str) else [value]
    if not vals:
        raise ValueError(f"`{name}` must hold at least one value, got an empty list.")
    out = []
    for v in vals:
        if name in _INTEGER:
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise TypeError(f"`{name}` values must be integers, got {v!r}.")
            out.append(int(v))
        else:
            if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                raise TypeError(f"`{name}` values must be numbers, got {v!r}.")
            out.append(float(v))
    return out


def check_value(name: str, v: Any, n_train: int) -> None:
    """Refuse one invalid hyperparameter value, naming it (the library's one validation)."""
    try:
        if name == "batch_size":
            _validate.batch_size(v, n_train)
        elif name == "seed":
            _validate.integer("seed", v, minimum=0)
        else:
            _validate.hyper(name, v)
    except (ValueError, TypeError) as e:
        raise ValueError(f"invalid `{name}` value {v!r}: {e} Nothing was run.") from None


def members(grid: bool | Sequence[Mapping[str, Any]], vals: dict[str, list]) -> list[dict[str, Any]]:
    """Every configuration: the cartesian product (``grid=True``) or the given list of dicts."""
    if grid is True:
        for h, vs in vals.items():
            if len(set(vs)) != len(vs):
                raise ValueError(f"`{h}` has repeated values {vs}; give each value once.")
        return [dict(zip(HYPERS, combo, strict=True)) for combo in itertools.product(*(vals[h] for h in HYPERS))]
    if grid is False or isinstance(grid, str | Mapping) or not isinstance(grid, Sequence):
        raise TypeError("`grid` must be True (the cartesian product of the value lists) or a list of dicts (one configuration each).")
    out = []
    for i, cfg in enumerate(grid):
        if not isinstance(cfg, Mapping):
            raise TypeError(f"`grid[{i}]` must be a dict of hyperparameters, got {type(cfg).__name__}.")
        unknown = set(cfg) - set(HYPERS)
        if unknown:
            raise ValueError(f"`grid[{i}]` has unknown keys {sorted(unknown)}; use among {HYPERS}.")
        m = {}
        for h in HYPERS:
            if h in cfg:
                m[h] = values(h, [cfg[h]])[0]
            elif len(vals[h]) == 1:
                m[h] = vals[h][0]
            else:
                raise ValueError(f"`grid[{i}]` gives no `{h}` and the `{h}` argument has several values {vals[h]}; give one.")
        out.append(m)
    if not out:
        raise ValueError("`grid` is an empty list of configurations.")
    return out
