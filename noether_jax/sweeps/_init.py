"""One model per seed, and the symmetry groups every member records (private)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from .._tree import cast_floats
from ..data import Dataset
from ..models import MODELS, LinenNetwork, Network, functional, make_model
from ..symmetry import KINDS, detect


def init_models(model: Any, seeds: list[int], ds: Dataset, width: int, dtype: Any = None):
    """(name or None, net, params stacked over seeds, state stacked over seeds), floating leaves in ``dtype``."""
    if isinstance(model, str):
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}, or pass a factory "
                             "`rngs -> nnx.Module` (argument `model`).")
        name = model

        def init(seed):
            m = make_model(name, key=seed, width=width, in_shape=tuple(ds.x_train.shape[1:]), n_classes=ds.n_classes,
                           dtype=dtype or ds.x_train.dtype)
            return functional(m)
    elif isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], Network | LinenNetwork) and callable(model[1]):
        name, (net0, params_fn) = None, model

        def init(seed):
            p, s = params_fn(seed)
            return net0, p, s
    elif isinstance(model, nnx.Module):
        raise TypeError("a sweep initialises one model per seed, so it needs a factory, not a model instance: pass "
                        "`model=lambda rngs: MyModel(..., rngs=rngs)` (a callable nnx.Rngs -> nnx.Module).")
    elif callable(model):
        name, factory = None, model

        def init(seed):
            m = factory(nnx.Rngs(seed))
            if not isinstance(m, nnx.Module):
                raise TypeError(f"the model factory must return an nnx.Module, got {type(m).__name__}.")
            return functional(m)
    else:
        raise TypeError("`model` must be a model name (see noether_jax.models.MODELS), a factory nnx.Rngs -> nnx.Module, "
                        "or a pair (net, init) with init(seed) -> (params, state).")
    inits = [init(s) for s in seeds]
    if dtype is not None:
        inits = [(n, cast_floats(p, dtype), cast_floats(s, dtype)) for n, p, s in inits]
    net = inits[0][0]
    stack = lambda *xs: jnp.stack([jnp.asarray(x) for x in xs])  # noqa: E731
    params = jax.tree.map(stack, *[i[1] for i in inits])
    state = jax.tree.map(stack, *[i[2] for i in inits]) if jax.tree.leaves(inits[0][2]) else inits[0][2]
    return name, net, params, state


def default_symmetries(symmetries: Mapping | Callable | None, net, params, state, ds: Dataset) -> dict:
    """The groups of every member: given, computed by a callable ``(net, params, state)``, or detected
    (:func:`noether_jax.symmetry.detect` on the first seed's model and 64 training examples)."""
    if callable(symmetries):
        symmetries = symmetries(net, params, state)
    if symmetries is None:
        symmetries = detect(net, params, (ds.x_train[:64], ds.y_train[:64]), state=state).symmetries
        if not symmetries:
            raise ValueError("nj.symmetry.detect found no symmetric group in this model: pass `symmetries=` "
                             "(kind -> MaskedSymmetry), or sweep a model with symmetries.")
    return {k: symmetries[k] for k in KINDS if k in symmetries}
