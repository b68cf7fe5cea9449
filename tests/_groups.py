"""Symmetry groups of the library's MLPs built by hand from the architecture (test helper).

Tests that are not about detection use these, so they neither depend on nor recompile for
``nj.symmetry.detect``.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

from noether_jax.symmetry import Rescale, Scale, Translation


def mlp_groups(name: str, params) -> dict:
    """Translation (head rows + class biases), rescale (units of the last hidden layer, ReLU only) and
    scale (each hidden Linear before a LayerNorm)."""
    none = jax.tree.map(lambda a: np.full(a.shape, -1, np.int32), params)

    def copy():
        return jax.tree.map(lambda a: a.copy(), none)

    head = params["head"]["kernel"]
    w = head.shape[0]
    rows = np.broadcast_to(np.arange(w)[:, None], head.shape).astype(np.int32)
    t = copy()
    t["head"]["kernel"], t["head"]["bias"] = rows, np.full(params["head"]["bias"].shape, w, np.int32)
    out = {"translation": Translation(t)}
    layers = list(params["hidden"].keys()) if isinstance(params["hidden"], Mapping) else list(range(len(params["hidden"])))
    if name == "mlp":
        inc, outg = copy(), copy()
        last = layers[-1]
        k = params["hidden"][last]["kernel"]
        inc["hidden"][last]["kernel"] = np.broadcast_to(np.arange(k.shape[1])[None], k.shape).astype(np.int32)
        inc["hidden"][last]["bias"] = np.arange(k.shape[1], dtype=np.int32)
        outg["head"]["kernel"] = rows
        out["rescale"] = Rescale(inc, outg)
    if name == "mlp_layernorm":
        s = copy()
        for i, li in enumerate(layers):
            layer = params["hidden"][li]
            s["hidden"][li]["kernel"] = np.full(layer["kernel"].shape, i, np.int32)
            s["hidden"][li]["bias"] = np.full(layer["bias"].shape, i, np.int32)
        out["scale"] = Scale(s)
    return out
