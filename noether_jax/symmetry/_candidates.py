"""Candidate symmetric groups from the dataflow graph, with readable names (private).

* translation: for a space centred by its own statistic (``x − mean``, ``x − max``), per part of
  its channels: every bias row, and, when the statistic runs over channels only (LayerNorm, the
  softmax of the loss), every kernel row (one input unit's weights to all channels of the part);
* scale: for a space divided by its own statistic (BatchNorm, LayerNorm, RMSNorm, GroupNorm), per
  part (channel, layer or group): every producer entry of those channels;
* rescale: per channel of a space with producers and consumers, the producers' entries against
  the consumers' (all of them: residual paths, summed heads, a layer applied twice), and per channel
  of a query·key pairing, one side against the other.

Each set carries its *structural* verdict: translation and scale are exact by the normalisation
that made them (scale up to the normalisation's ε), rescale is checked by :mod:`._homogeneity`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._actions import MaskedSymmetry, Rescale, Scale, Translation
from ._dataflow import Graph, Space, Use
from ._homogeneity import invariant


class Candidates:
    """One candidate set: per-leaf group ids and generator coefficients (ξ = c·θ + d)."""

    def __init__(self, kind: str, shapes, structural: str = "exact"):
        self.kind = kind
        self.shapes = shapes
        self.structural = structural  # "exact", "eps" (a normalisation's ε breaks it) or "broken: <why>"
        self.ids = [np.full(int(np.prod(s)), -1, np.int32) for s in shapes]
        self.c = [np.zeros(int(np.prod(s))) for s in shapes]
        self.names: list[str] = []

    def new(self, name: str) -> int:
        self.names.append(name)
        return len(self.names) - 1

    def put(self, leaf: int, entries, g: int, c: float = 1.0) -> bool:
        """Put entries into group g; False (and nothing changed) when one is already taken."""
        if (self.ids[leaf][entries] >= 0).any():
            return False
        self.ids[leaf][entries] = g
        self.c[leaf][entries] = c
        return True

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat (ids, c, d) in ``ravel_pytree`` order: ξ = c·θ + d on the group's entries."""
        ids = np.concatenate(self.ids).astype(np.int64)
        if self.kind == "translation":
            return ids, np.zeros(ids.shape), (ids >= 0).astype(float)
        return ids, np.concatenate(self.c), np.zeros(ids.shape)

    def symmetry(self, keep: np.ndarray, treedef) -> MaskedSymmetry | None:
        """The symmetry restricted to the groups in ``keep``, renumbered 0..K−1."""
        if not keep.any():
            return None
        remap = np.full(len(self.names) + 1, -1, np.int32)
        remap[np.flatnonzero(keep)] = np.arange(int(keep.sum()), dtype=np.int32)
        ids = [remap[i].reshape(s) for i, s in zip(self.ids, self.shapes, strict=True)]  # −1 → trailing −1
        cs = [c.reshape(s) for c, s in zip(self.c, self.shapes, strict=True)]
        names = [n for n, k in zip(self.names, keep, strict=True) if k]
        tree = lambda arrays: jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in arrays])
        if self.kind == "translation":
            return Translation(tree(ids), names=names)
        if self.kind == "scale":
            return Scale(tree(ids), names=names)
        inc = [np.where(c > 0, i, -1).astype(np.int32) for i, c in zip(ids, cs, strict=True)]
        out = [np.where(c < 0, i, -1).astype(np.int32) for i, c in zip(ids, cs, strict=True)]
        return Rescale(tree(inc), tree(out), names=names)


class Names:
    def __init__(self, paths: list[str], shapes):
        self.paths, self.shapes = paths, shapes

    def module(self, leaf: int) -> str:
        return self.paths[leaf].rsplit(".", 1)[0] if "." in self.paths[leaf] else self.paths[leaf]

    def label(self, leaf: int) -> str:
        return self.paths[leaf].rsplit(".", 1)[-1]

    def modules(self, uses: list[Use]) -> str:
        return " + ".join(dict.fromkeys(self.module(u.leaf) for u in uses))

    def unit(self, uses: list[Use]) -> str:
        return "channel" if any(u.role == "kernel" and len(self.shapes[u.leaf]) >= 4 for u in uses) else "unit"

    def what(self, uses: list[Use]) -> str:
        roles = {u.role for u in uses}
        if "kernel" in roles and "bias" in roles:
            return "kernel+bias"
        return "+".join(dict.fromkeys(self.label(u.leaf) for u in sorted(uses, key=lambda u: u.leaf)))

    @staticmethod
    def channel(space: Space, j: int) -> str:
        if len(space.shape) <= 1:
            return str(j)
        return "(" + ", ".join(str(int(i)) for i in np.unravel_index(j, space.shape)) + ")"

    def reader(self, u: Use, j: int) -> str:
        entries = u.entries[u.ch == j]
        shape = self.shapes[u.leaf]
        if len(shape) == 2 and len(np.unique(entries // shape[-1])) > 1:
            n_in = shape[0]
            ch = len(np.unique(u.ch))
            return f"{self.module(u.leaf)} rows ≡ {j} mod {ch} out (flatten)" if n_in % max(ch, 1) == 0 else \
                f"{self.module(u.leaf)} rows of {j} out"
        return f"{self.module(u.leaf)} row {j} out"


def translation(graph: Graph, spaces: list[int], logits: set[int], names: Names, out: Candidates) -> None:
    for s in spaces:
        sp = graph.spaces[s]
        if not sp.shift or sp.scrambled:
            continue
        part = sp.part_ids()
        parts = np.unique(part)
        for u in sp.producers:
            if u.role == "scale" or (u.role == "kernel" and not sp.channel_only):
                continue
            rows = np.unique(u.row)
            for r in rows:
                for p in parts:
                    m = (u.row == r) & (part[u.ch] == p)
                    if not m.any():
                        continue
                    g = out.new(_translation_name(names, u, int(r), len(rows), int(p), len(parts), s in logits, int(m.sum())))
                    out.put(u.leaf, u.entries[m], g)


def _translation_name(names: Names, u: Use, r: int, n_rows: int, p: int, n_parts: int, head: bool, n: int) -> str:
    mod, label = names.module(u.leaf), names.label(u.leaf)
    part = f", channels of part {p}" if n_parts > 1 else ""
    if u.role == "kernel":
        what = "classes" if head else "outputs"
        idx = f"{r},:" if len(names.shapes[u.leaf]) == 2 else f"{r}"
        return f"{mod}.{label}[{idx}] (input unit {r} → all {what}{part})"
    if n_rows > 1:
        return f"{mod}.{label}[{r},:] (row {r}: all entries{part})"
    if head and n_parts == 1:
        return f"{mod}.{label} (class biases)"
    return f"{mod}.{label} (all {n} entries{part})"


def scale(graph: Graph, spaces: list[int], names: Names, out: Candidates) -> None:
    for s in spaces:
        sp = graph.spaces[s]
        if not sp.scaled or sp.scrambled or not sp.producers:
            continue
        part = sp.part_ids()
        parts = np.unique(part)
        mods, unit = names.modules(sp.producers), names.unit(sp.producers)
        bias = any(u.role == "bias" for u in sp.producers)
        for p in parts:
            members = np.flatnonzero(part == p)
            if len(parts) == 1:
                what = "kernel + bias" if bias else names.what(sp.producers)
                name = f"{mods} (whole layer: {what}, normalised after)"
            elif len(members) == 1:
                name = f"{mods} {unit} {names.channel(sp, int(members[0]))}" + (" (+ bias)" if bias else "")
            else:
                name = f"{mods} {unit}s {int(members[0])}–{int(members[-1])} (a normalised group)"
            g = out.new(name)
            for u in sp.producers:
                out.put(u.leaf, u.entries[part[u.ch] == p], g)


def rescale(graph: Graph, closed, spaces: list[int], names: Names, shapes, n_leaves: int) -> list[Candidates]:
    sets = []
    for s in spaces:
        sp = graph.spaces[s]
        if sp.scrambled or not sp.producers:
            continue
        sides = []
        if sp.consumers:
            sides.append((sp.consumers, lambda u, j: u.ch == j, lambda j, cs=sp.consumers: " + ".join(
                dict.fromkeys(names.reader(u, j) for u in cs if (u.ch == j).any()))))
        for t, mapping in sp.pairs:
            tp = graph.spaces[graph.find(t)].producers
            if tp:
                sides.append((tp, lambda u, j, m=mapping: u.ch == m[j], lambda j, tp=tp, m=mapping:
                              f"{names.modules(tp)} {names.unit(tp)} {m[j]} out (query·key)"))
        for users, select, describe in sides:
            moved = {u.leaf: 1 for u in sp.producers}
            clash = any(moved.get(u.leaf) == 1 for u in users)
            for u in users:
                moved[u.leaf] = -1
            ok, why = (False, "a parameter on both sides") if clash else invariant(closed, moved, n_leaves)
            b = Candidates("rescale", shapes, "exact" if ok else f"broken: {why}")
            unit, what, mods = names.unit(sp.producers), names.what(sp.producers), names.modules(sp.producers)
            for j in range(sp.size):
                inc = [(u.leaf, u.entries[u.ch == j]) for u in sp.producers]
                dec = [(u.leaf, u.entries[select(u, j)]) for u in users]
                if not any(len(e) for _, e in inc) or not any(len(e) for _, e in dec):
                    continue
                g = b.new(f"{mods} {unit} {names.channel(sp, j)} in ({what}) / {describe(j)}")
                placed = all(b.put(leaf, e, g, 1.0) for leaf, e in inc) and all(b.put(leaf, e, g, -1.0) for leaf, e in dec)
                if not placed:  # an entry on both sides or in two groups: no masked action holds it
                    for i in range(len(b.ids)):
                        b.ids[i][b.ids[i] == g] = -1
                    b.names[g] = b.names[g] + " (overlapping: left out)"
            if b.names:
                sets.append(b)
    return sets
