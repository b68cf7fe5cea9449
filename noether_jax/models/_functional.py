"""Any flax model in the pure form the library trains: ``net(params, state, x, train=True) -> (logits, state)``.

The library never asks a model to follow its conventions. :func:`functional` (and :func:`as_model`,
which also takes the forms below) accepts

* any ``nnx.Module`` instance, whose ``__call__`` takes the inputs and, optionally, one of the
  keywords ``train``, ``deterministic`` or ``use_running_average``; when it takes none of them,
  the module's train/eval mode is set with ``nnx.Module.train()`` / ``.eval()`` (which is how
  ``BatchNorm`` and ``Dropout`` inside it learn the mode);
* ``(graphdef, state, ...)`` as :func:`flax.nnx.split` returns it;
* a flax.linen module with its variables, ``(module, variables)``;
* a :class:`Network` (already pure) with its params and state.

``params`` (the ``nnx.Param`` leaves: what the optimiser trains and the symmetries act on) and
``state`` (everything else: BatchNorm statistics, dropout RNG counters) are plain nested dicts of
arrays, as :func:`flax.nnx.to_pure_dict` writes them.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PyTree, Scalar

_MODE_KEYWORDS = ("train", "deterministic", "use_running_average")
_EXPECTED = "__call__(self, x) or __call__(self, x, *, train: bool) (or `deterministic` / `use_running_average`)"


def call_mode(fn: Callable, what: str) -> str:
    """How the train/eval mode reaches a model's call: one of the keywords, or ``"modes"``.

    Raises a clear error when the call needs more than one positional argument.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return "modes"
    params = list(sig.parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty and p.name not in _MODE_KEYWORDS]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    if not positional and not varargs:
        raise TypeError(f"{what} takes no input argument; the library calls it as {_EXPECTED}.")
    if len(required) > 1:
        names = ", ".join(p.name for p in required)
        raise TypeError(f"{what} requires the positional arguments ({names}); the library calls it as {_EXPECTED}. "
                        "Wrap it in a module whose __call__ takes the inputs alone.")
    names = {p.name for p in params}
    for kw in _MODE_KEYWORDS:
        if kw in names:
            return kw
    return "modes"


def _mode_kwargs(mode: str, train: bool) -> dict[str, bool]:
    if mode == "train":
        return {"train": train}
    if mode in ("deterministic", "use_running_average"):
        return {mode: not train}
    return {}


def as_pure(tree: Any) -> Any:
    """A params/state tree as plain nested dicts (an ``nnx.State`` is converted with ``to_pure_dict``)."""
    if isinstance(tree, nnx.State):
        return nnx.to_pure_dict(tree)
    return tree


@dataclasses.dataclass(frozen=True)
class Network:
    """The pure form of an NNX model: ``net(params, state, x, train=True) -> (logits, state)``.

    Hashable (the graph definition is static), so it can be closed over or passed as a static
    argument. ``mode`` records how the train/eval mode reaches the module (see :func:`call_mode`).
    """

    graphdef: Any
    param_def: Any = dataclasses.field(compare=False)
    state_def: Any = dataclasses.field(compare=False)
    mode: str = "train"

    def __hash__(self):
        return hash((self.graphdef, self.mode))

    def __call__(self, params: PyTree, state: PyTree, x: Float[Array, "b ..."], *, train: bool = True):
        params, state = as_pure(params), as_pure(state)
        p_leaves, s_leaves = jax.tree.leaves(params), jax.tree.leaves(state)
        if len(p_leaves) != self.param_def.num_leaves or len(s_leaves) != self.state_def.num_leaves:
            raise ValueError(
                f"the network expects {self.param_def.num_leaves} parameter and {self.state_def.num_leaves} state arrays, "
                f"got {len(p_leaves)} and {len(s_leaves)}: pass the params and state that nj.models.functional returned."
            )
        p = jax.tree.unflatten(self.param_def, p_leaves)
        s = jax.tree.unflatten(self.state_def, s_leaves)
        model = nnx.merge(self.graphdef, p, s)
        if self.mode == "modes":
            model.train() if train else model.eval()
        logits = model(x, **_mode_kwargs(self.mode, train))
        _, _, new_state = nnx.split(model, nnx.Param, ...)
        return logits, jax.tree.unflatten(jax.tree.structure(state), jax.tree.leaves(new_state))


@dataclasses.dataclass(frozen=True)
class LinenNetwork:
    """The pure form of a flax.linen module: ``net(params, state, x, train=True) -> (logits, state)``.

    ``params`` is the ``"params"`` collection; ``state`` the other collections (e.g. ``batch_stats``),
    updated in training mode.
    """

    module: Any
    mode: str = "modes"

    def __call__(self, params: PyTree, state: PyTree, x: Float[Array, "b ..."], *, train: bool = True):
        variables = {"params": params, **state}
        kwargs = _mode_kwargs(self.mode, train)
        if train and state:
            logits, new = self.module.apply(variables, x, mutable=list(state), **kwargs)
            return logits, {k: new.get(k, v) for k, v in state.items()}
        return self.module.apply(variables, x, **kwargs), state


Model = Network | LinenNetwork


def functional(model: Any) -> tuple[Model, PyTree, PyTree]:
    """Split a flax model into (network, params, state), with params and state as plain dicts.

    ``model``: an ``nnx.Module``, ``(graphdef, state, ...)`` from ``nnx.split``, or a flax.linen
    module with its variables ``(module, variables)``.

    Example:
        >>> import flax.nnx as nnx, jax.numpy as jnp
        >>> from noether_jax import models
        >>> class Tiny(nnx.Module):                          # no `train` keyword: fine
        ...     def __init__(self, rngs):
        ...         self.lin = nnx.Linear(3, 2, rngs=rngs)
        ...     def __call__(self, x):
        ...         return self.lin(x)
        >>> net, params, state = models.functional(Tiny(nnx.Rngs(0)))
        >>> net(params, state, jnp.ones((4, 3)))[0].shape, sorted(params["lin"])
        ((4, 2), ['bias', 'kernel'])
    """
    if isinstance(model, nnx.Module):
        mode = call_mode(type(model).__call__, f"{type(model).__name__}.__call__")
        graphdef, params, state = nnx.split(model, nnx.Param, ...)
        pure_p, pure_s = nnx.to_pure_dict(params), nnx.to_pure_dict(state)
        return Network(graphdef, jax.tree.structure(pure_p), jax.tree.structure(pure_s), mode), pure_p, pure_s
    if isinstance(model, tuple) and model and isinstance(model[0], nnx.GraphDef):
        return functional(nnx.merge(*model))
    if isinstance(model, tuple) and len(model) == 2 and _is_linen(model[0]):
        module, variables = model
        variables = dict(variables)
        if "params" not in variables:
            raise ValueError("the linen variables must hold a 'params' collection (as module.init returns).")
        params = variables.pop("params")
        return LinenNetwork(module, call_mode(type(module).__call__, f"{type(module).__name__}.__call__")), params, variables
    raise TypeError(
        "`model` must be an nnx.Module, (graphdef, state) from nnx.split, or (linen_module, variables); "
        f"got {type(model).__name__}."
    )


def _is_linen(obj: Any) -> bool:
    try:
        import flax.linen as nn
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, nn.Module)


def as_model(model: Any, params: PyTree | None = None, state: PyTree | None = None) -> tuple[Model, PyTree, PyTree]:
    """(network, params, state) from any accepted form; ``params``/``state`` override the model's own.

    A pure network (:class:`Network`, :class:`LinenNetwork`) needs ``params``; its state defaults to ``{}``.
    """
    if isinstance(model, Network | LinenNetwork):
        if params is None:
            raise ValueError("`params` is required when the model is a pure network (from nj.models.functional).")
        return model, as_pure(params), {} if state is None else as_pure(state)
    net, p, s = functional(model)
    return net, p if params is None else as_pure(params), s if state is None else as_pure(state)


def cross_entropy(logits: Float[Array, "b k"], labels: Int[Array, " b"]) -> Scalar:
    """Mean softmax cross-entropy with integer labels."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def loss_fn(net: Model, *, train: bool = True, loss: Callable = cross_entropy) -> Callable:
    """``f(params, state, (x, y)) -> (loss, new_state)``: the training loss (BatchNorm in train mode).

    ``loss`` is any ``(logits, y) -> scalar``.
    """

    def f(params, state, batch):
        x, y = batch
        logits, new_state = net(params, state, x, train=train)
        return loss(logits, y), new_state

    return f


def accuracy(net: Model, params: PyTree, state: PyTree, x: Array, y: Array, *, batch: int = 512) -> Array:
    """Classification accuracy in evaluation mode (running BatchNorm statistics)."""
    n = x.shape[0]
    correct = 0
    for i in range(0, n, batch):
        logits, _ = net(params, state, x[i : i + batch], train=False)
        correct = correct + jnp.sum(jnp.argmax(logits, -1) == y[i : i + batch])
    return correct / n
