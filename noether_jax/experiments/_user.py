"""A user's own model, named on the command line as ``module.path:callable`` (private)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path


def load_factory(spec: str) -> Callable:
    """The callable named by ``"module.path:callable"`` (the current folder is importable).

    Example:
        >>> f = load_factory("noether_jax.models:make_model")
        >>> f.__name__
        'make_model'
    """
    if ":" not in spec:
        raise ValueError(f"a user model must be given as 'module.path:callable', got {spec!r}.")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"a user model must be given as 'module.path:callable', got {spec!r}.")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} for the model {spec!r}: {e}.") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (model {spec!r}).")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable; it must be a function rngs -> nnx.Module.")
    return obj
