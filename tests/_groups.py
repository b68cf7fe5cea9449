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


# --------------------------------------------------------------------------- resnet and transformer
# A group is a list of members (path, index, c, d): the entries params[path][index] move as
# x ↦ x·e^{cα} + dα (scale c = 1; rescale c = +1 incoming, −1 outgoing; translation c = 0, d = 1).
ALL = slice(None)


def _up(path, *idx):
    return (path, idx or (Ellipsis,), 1.0, 0.0)


def _down(path, *idx):
    return (path, idx or (Ellipsis,), -1.0, 0.0)


def _shift(path, *idx):
    return (path, idx or (Ellipsis,), 0.0, 1.0)


def arch_groups(name: str, params) -> dict[str, list[tuple[str, list]]]:
    """The hand-derived groups of ``resnet`` / ``transformer`` (see the models' docstrings): kind → [(name, members)].

    Rescale groups are split into parts whose members do not overlap (key ``"rescale"`` for the first
    part, ``"rescale:<part>"`` for the others), as one mask cannot hold a kernel's rows and columns."""
    head = params["head"]["kernel"]
    out: dict[str, list] = {"translation": [(f"head row {i}", [_shift(("head", "kernel"), i, ALL)]) for i in range(head.shape[0])]}
    out["translation"].append(("head bias", [_shift(("head", "bias"))]))
    blocks = sorted(params["blocks"])
    if name == "resnet":
        w = params["stem"]["kernel"].shape[-1]
        convs = [("stem",)] + [("blocks", b, c) for b in blocks for c in ("conv1", "conv2")]
        out["scale"] = [(f"{'.'.join(map(str, c))} channel {j}", [_up((*c, "kernel"), Ellipsis, j), _up((*c, "bias"), j)])
                        for c in convs for j in range(w)]
        out["rescale"] = [(f"block {b} inner unit {j}",
                           [_up(("blocks", b, "norm1", "scale"), j), _up(("blocks", b, "norm1", "bias"), j),
                            _down(("blocks", b, "conv2", "kernel"), ALL, ALL, j, ALL)]) for b in blocks for j in range(w)]
        out["rescale"] += [(f"stream channel {j}",
                            [_up(("stem_norm", "scale"), j), _up(("stem_norm", "bias"), j)]
                            + [_up(("blocks", b, "norm2", n), j) for b in blocks for n in ("scale", "bias")]
                            + [_down(("blocks", b, "conv1", "kernel"), ALL, ALL, j, ALL) for b in blocks]
                            + [_down(("head", "kernel"), j, ALL)]) for j in range(w)]
        return out
    assert name == "transformer", name
    d = params["embed"]["kernel"].shape[1]
    n_heads, dh = params["blocks"][blocks[0]]["attn"]["value"]["bias"].shape
    hidden = params["blocks"][blocks[0]]["mlp_in"]["kernel"].shape[1]
    tr = out["translation"]
    tr += [(f"embed row {i}", [_shift(("embed", "kernel"), i, ALL)]) for i in range(params["embed"]["kernel"].shape[0])]
    tr += [("embed bias", [_shift(("embed", "bias"))])]
    tr += [(f"pos token {t}", [_shift(("pos",), t, ALL)]) for t in range(params["pos"].shape[0])]
    writers = [("embed", "kernel"), ("embed", "bias"), ("pos",)]
    for b in blocks:
        a = ("blocks", b, "attn")
        tr += [(f"block {b} out row {h},{c}", [_shift((*a, "out", "kernel"), h, c, ALL)]) for h in range(n_heads) for c in range(dh)]
        tr += [(f"block {b} out bias", [_shift((*a, "out", "bias"))])]
        tr += [(f"block {b} mlp_out row {j}", [_shift(("blocks", b, "mlp_out", "kernel"), j, ALL)]) for j in range(hidden)]
        tr += [(f"block {b} mlp_out bias", [_shift(("blocks", b, "mlp_out", "bias"))])]
        tr += [(f"block {b} key bias {h},{c}", [_shift((*a, "key", "bias"), h, c)]) for h in range(n_heads) for c in range(dh)]
        writers += [(*a, "out", "kernel"), (*a, "out", "bias"), ("blocks", b, "mlp_out", "kernel"), ("blocks", b, "mlp_out", "bias")]
    out["scale"] = [("residual stream", [_up(p) for p in writers])]
    units, norms = [], []
    for b in blocks:
        a = ("blocks", b, "attn")
        for h in range(n_heads):
            for c in range(dh):
                units.append((f"block {b} value {h},{c}", [_up((*a, "value", "kernel"), ALL, h, c), _up((*a, "value", "bias"), h, c),
                                                           _down((*a, "out", "kernel"), h, c, ALL)]))
                units.append((f"block {b} query-key {h},{c}", [_up((*a, "query", "kernel"), ALL, h, c), _up((*a, "query", "bias"), h, c),
                                                               _down((*a, "key", "kernel"), ALL, h, c), _down((*a, "key", "bias"), h, c)]))
        m = ("blocks", b)
        units += [(f"block {b} mlp unit {j}", [_up((*m, "mlp_in", "kernel"), ALL, j), _up((*m, "mlp_in", "bias"), j),
                                               _down((*m, "mlp_out", "kernel"), j, ALL)]) for j in range(hidden)]
        norms += [(f"block {b} norm1 channel {j}", [_up((*m, "norm1", "scale"), j), _up((*m, "norm1", "bias"), j)]
                   + [_down((*a, p, "kernel"), j, ALL, ALL) for p in ("query", "key", "value")]) for j in range(d)]
        norms += [(f"block {b} norm2 channel {j}", [_up((*m, "norm2", "scale"), j), _up((*m, "norm2", "bias"), j),
                                                    _down((*m, "mlp_in", "kernel"), j, ALL)]) for j in range(d)]
    norms += [(f"final norm channel {j}", [_up(("norm", "scale"), j), _up(("norm", "bias"), j), _down(("head", "kernel"), j, ALL)])
              for j in range(d)]
    out["rescale"], out["rescale:norms"] = units, norms
    return out


def _leaf(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def move(params, members, alpha: float):
    """The parameters with one group moved by ``alpha`` (numpy, independent of the library's actions)."""
    new = jax.tree.map(lambda a: np.array(a, copy=True), params)
    for path, idx, c, d in members:
        leaf = _leaf(new, path)
        leaf[idx] = leaf[idx] * np.exp(c * alpha) + d * alpha
    return new


def arch_symmetries(name: str, params) -> dict:
    """The hand-derived groups as the library's masked symmetries (what a Recorder takes), rescale as a tuple."""
    parts: dict[str, list] = {}
    for key, groups in arch_groups(name, params).items():
        kind = key.split(":")[0]
        ids = jax.tree.map(lambda a: np.full(np.shape(a), -1, np.int32), params)
        sign = jax.tree.map(lambda a: np.zeros(np.shape(a), np.int32), params)
        for g, (_, members) in enumerate(groups):
            for path, idx, c, _ in members:
                view = _leaf(ids, path)
                assert (view[idx] < 0).all(), (key, path, idx)  # the groups of one mask are disjoint
                view[idx] = g
                _leaf(sign, path)[idx] = -1 if c < 0 else 1
        names = [n for n, _ in groups]
        if kind == "rescale":
            inc = jax.tree.map(lambda i, s: np.where(s > 0, i, -1), ids, sign)
            outg = jax.tree.map(lambda i, s: np.where(s < 0, i, -1), ids, sign)
            sym = Rescale(inc, outg, names=names)
        else:
            sym = (Translation if kind == "translation" else Scale)(ids, names=names)
        parts.setdefault(kind, []).append(sym)
    return {k: v[0] if len(v) == 1 else tuple(v) for k, v in parts.items()}
