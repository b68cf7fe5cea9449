"""Detect the symmetric parameter groups of a flax model: candidates from shapes, confirmed numerically.

Layer names are never used. Candidates come from the parameter tree's shapes alone:

* translation: every row ``kernel[i, :]`` of a 2-D kernel (one input unit's weights to all
  outputs) and every whole bias vector;
* scale: every output channel ``kernel[..., j]`` with ``bias[j]`` (a filter before BatchNorm), and
  every whole layer ``kernel`` + ``bias`` (before LayerNorm);
* rescale: output unit ``j`` of a producer (``kernel[..., j]`` + ``bias[j]``, or a normalisation's
  ``scale[j]`` + ``bias[j]``) against input row ``j`` of any consumer kernel with a matching input
  size (``kernel[..., j, :]``), or, after a flatten, the rows ``r`` with ``r mod C = j``.

Every candidate group is then checked with :func:`noether_jax.symmetry.constraints` (invariance
under a finite α, gradient constraint, Hessian constraint by HVP, each relative to its natural
scale) and kept only if all three residuals are below ``tol``. Normalisation layers make scale
invariance exact only up to their ε (a relative error of order ε/var), hence the default
``tol = 1e-3``; non-symmetric groups give residuals of order 0.1–1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from ._models import Network, cross_entropy, functional
from ._symmetry import Constraints, MaskedSymmetry, Rescale, Scale, Translation, constraints

Symmetries = MaskedSymmetry | tuple[MaskedSymmetry, ...]


class Detected(eqx.Module):
    """The symmetries found in a model, one :class:`MaskedSymmetry` per kind (rescale: one per
    producer–consumer pair, as a tuple, since a kernel's rows and columns belong to different units).

    Attributes:
        translation, scale: a MaskedSymmetry, or None when none was found.
        rescale: a tuple of MaskedSymmetry (possibly empty).
        residuals: kind → the :class:`Constraints` of the confirmed groups (concatenated).
        rejected: kind → number of candidate groups that failed the numerical check.
    """

    translation: MaskedSymmetry | None
    scale: MaskedSymmetry | None
    rescale: tuple[MaskedSymmetry, ...]
    residuals: dict[str, Constraints]
    rejected: dict[str, int]

    @property
    def symmetries(self) -> dict[str, Symmetries]:
        """kind → symmetry, only for the kinds found (the input :class:`noether_jax.Recorder` takes)."""
        out: dict[str, Symmetries] = {}
        if self.translation is not None:
            out["translation"] = self.translation
        if self.scale is not None:
            out["scale"] = self.scale
        if self.rescale:
            out["rescale"] = self.rescale if len(self.rescale) > 1 else self.rescale[0]
        return out

    def names(self, kind: str) -> list[str]:
        return group_names(self.symmetries.get(kind, ()))

    def summary(self) -> str:
        """A readable table: kind, number of groups, worst residual, example names."""
        lines = [f"{'symmetry':12s} {'groups':>6s} {'rejected':>8s} {'max residual':>12s}  examples"]
        for kind in ("translation", "scale", "rescale"):
            syms = self.symmetries.get(kind)
            if syms is None:
                lines.append(f"{kind:12s} {0:6d} {self.rejected.get(kind, 0):8d} {'-':>12s}")
                continue
            names = group_names(syms)
            worst = float(jnp.max(self.residuals[kind].max()))
            lines.append(f"{kind:12s} {len(names):6d} {self.rejected.get(kind, 0):8d} {worst:12.1e}  {'; '.join(names[:2])}")
        return "\n".join(lines)


def group_names(sym: Symmetries) -> list[str]:
    syms = sym if isinstance(sym, tuple) else (sym,)
    return [n for s in syms for n in (s.names if len(s.names) == s.n_groups else [f"group {i}" for i in range(s.n_groups)])]


def n_groups(sym: Symmetries) -> int:
    syms = sym if isinstance(sym, tuple) else (sym,)
    return sum(s.n_groups for s in syms)


# ------------------------------------------------------------------------------- candidates
def _key_str(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _modules(params) -> tuple[list, dict[str, dict[str, int]], Any]:
    """Leaves with paths, and module path → {leaf name: leaf index}."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    mods: dict[str, dict[str, int]] = {}
    for i, (path, _) in enumerate(flat):
        keys = [_key_str(k) for k in path]
        mods.setdefault(".".join(keys[:-1]) or "<root>", {})[keys[-1]] = i
    return [leaf for _, leaf in flat], mods, treedef


class _Builder:
    """Accumulates integer-id masks over the flat leaves, with one name per group."""

    def __init__(self, leaves):
        self.shapes = [np.shape(x) for x in leaves]
        self.ids = [np.full(s, -1, np.int32) for s in self.shapes]
        self.ids2 = [np.full(s, -1, np.int32) for s in self.shapes]  # rescale: outgoing side
        self.names: list[str] = []

    def new(self, name: str) -> int:
        self.names.append(name)
        return len(self.names) - 1

    def free(self, leaf: int, index, second: bool = False) -> bool:
        arr = self.ids2 if second else self.ids
        return bool(np.all(arr[leaf][index] < 0))


def _tree(treedef, arrays):
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in arrays])


def _translation_candidates(leaves, mods):
    b = _Builder(leaves)
    for mod, names in mods.items():
        if "kernel" in names and len(b.shapes[names["kernel"]]) == 2:
            k = names["kernel"]
            for i in range(b.shapes[k][0]):
                b.ids[k][i, :] = b.new(f"{mod}.kernel[{i},:] (input unit {i} → all outputs)")
        for leaf_name, idx in names.items():
            if leaf_name == "bias" and len(b.shapes[idx]) == 1:
                b.ids[idx][:] = b.new(f"{mod}.bias (all outputs)")
    return b


def _scale_channel_candidates(leaves, mods):
    b = _Builder(leaves)
    for mod, names in mods.items():
        if "kernel" not in names:
            continue
        k = names["kernel"]
        c = b.shapes[k][-1]
        bias = names.get("bias")
        for j in range(c):
            g = b.new(f"{mod} channel {j} (kernel[..., {j}] + bias[{j}])" if bias is not None else f"{mod} channel {j}")
            b.ids[k][..., j] = g
            if bias is not None and b.shapes[bias] == (c,):
                b.ids[bias][j] = g
    return b


def _scale_layer_candidates(leaves, mods, skip: set[str]):
    b = _Builder(leaves)
    for mod, names in mods.items():
        if "kernel" not in names or mod in skip:
            continue
        g = b.new(f"{mod} (whole layer: kernel + bias)")
        b.ids[names["kernel"]][...] = g
        if "bias" in names:
            b.ids[names["bias"]][...] = g
    return b


def _producers(shapes, mods):
    """(module, {leaf index: output axis size}) for layers whose last axis indexes output units."""
    out = []
    for mod, names in mods.items():
        if "kernel" in names:
            c = shapes[names["kernel"]][-1]
            leaves = [names["kernel"]] + ([names["bias"]] if "bias" in names and shapes[names["bias"]] == (c,) else [])
            out.append((mod, c, leaves))
        elif "scale" in names or "bias" in names:  # a normalisation's affine parameters
            leaves = [names[n] for n in ("scale", "bias") if n in names and len(shapes[names[n]]) == 1]
            sizes = {shapes[i][0] for i in leaves}
            if leaves and len(sizes) == 1:
                out.append((mod, sizes.pop(), leaves))
    return out


def _rescale_pairs(leaves, mods):
    shapes = [np.shape(x) for x in leaves]
    pairs = []
    for pmod, c, pleaves in _producers(shapes, mods):
        for cmod, names in mods.items():
            if cmod == pmod or "kernel" not in names:
                continue
            k = names["kernel"]
            ks = shapes[k]
            if len(ks) < 2:
                continue
            n_in = ks[-2]
            if n_in == c:
                rows = [(..., j, slice(None)) for j in range(c)]
                how = "row"
            elif len(ks) == 2 and n_in % c == 0 and n_in > c:
                rows = [(np.arange(j, n_in, c), slice(None)) for j in range(c)]
                how = "rows ≡ mod C"
            else:
                continue
            b = _Builder(leaves)
            for j in range(c):
                g = b.new(f"{pmod} unit {j} ↔ {cmod} {how} {j}")
                for leaf in pleaves:
                    b.ids[leaf][..., j] = g
                b.ids2[k][rows[j]] = g
            pairs.append(b)
    return pairs


# ------------------------------------------------------------------------------- confirmation
def _subset(b: _Builder, keep: np.ndarray, treedef, kind: str, like) -> MaskedSymmetry | None:
    """The symmetry restricted to the groups in ``keep``, renumbered 0..K−1."""
    if not keep.any():
        return None
    remap = np.full(len(b.names), -1, np.int32)
    remap[keep] = np.arange(int(keep.sum()), dtype=np.int32)

    def re(a):
        return np.where(a >= 0, remap[np.clip(a, 0, None)], -1).astype(np.int32)

    names = [n for n, k in zip(b.names, keep) if k]
    ids = _tree(treedef, [re(a) for a in b.ids])
    if kind == "translation":
        return Translation(ids, like, names=names)
    if kind == "scale":
        return Scale(ids, like, names=names)
    return Rescale(ids, _tree(treedef, [re(a) for a in b.ids2]), like, names=names)


def _prefilter(b: _Builder, kind: str, leaves_np, grads_np, tol: float) -> np.ndarray:
    """Cheap first pass with one gradient: keep the groups whose local gradient constraint
    |⟨g_𝒜, ξ_𝒜⟩| / (|g_𝒜||ξ_𝒜|) is below ``tol`` and whose gradient is not identically zero (a dead
    unit satisfies every identity trivially and tells nothing about the architecture)."""
    G = len(b.names)
    dot, gg, xx = np.zeros(G), np.zeros(G), np.zeros(G)
    side = [np.zeros(G), np.zeros(G)]
    sides = ((b.ids, 1.0),) if kind != "rescale" else ((b.ids, 1.0), (b.ids2, -1.0))
    for si, (ids_list, c) in enumerate(sides):
        for ids, x, g in zip(ids_list, leaves_np, grads_np, strict=True):
            m = ids >= 0
            if not m.any():
                continue
            idx = ids[m]
            xi = np.ones_like(x[m]) if kind == "translation" else c * x[m]
            dot += np.bincount(idx, g[m] * xi, G)
            gg += np.bincount(idx, g[m] ** 2, G)
            xx += np.bincount(idx, xi**2, G)
            side[si] += np.bincount(idx, g[m] ** 2, G)
    gnorm = np.sqrt(sum(float(np.sum(g**2)) for g in grads_np))
    tiny = 1e-12 * max(gnorm, 1e-300)
    alive = np.sqrt(side[0]) > tiny
    if kind == "rescale":
        alive &= np.sqrt(side[1]) > tiny
    return alive & (np.abs(dot) <= tol * np.sqrt(gg * xx) + 1e-300)


def _check(b: _Builder, kind: str, f, params, treedef, tol, key, leaves_np, grads_np):
    if not b.names:
        return None, None, 0
    keep = _prefilter(b, kind, leaves_np, grads_np, tol)
    sym = _subset(b, keep, treedef, kind, params)
    if sym is None:
        return None, None, len(b.names)
    res = constraints(sym, f, params, key=key)
    ok = np.asarray(res.holds(tol))
    idx = np.flatnonzero(keep)
    keep2 = np.zeros_like(keep)
    keep2[idx[ok]] = True
    kept = _subset(b, keep2, treedef, kind, params)
    if kept is None:
        return None, None, len(b.names)
    res_kept = Constraints(*(np.asarray(r)[ok] for r in (res.invariance, res.gradient, res.hessian)))
    return kept, res_kept, int(len(b.names) - keep2.sum())


def _concat(results: list[Constraints]) -> Constraints:
    return Constraints(*(jnp.concatenate([jnp.asarray(getattr(r, n)) for r in results]) for n in ("invariance", "gradient", "hessian")))


def detect(
    model: Network | nnx.Module,
    params: PyTree | None = None,
    batch: tuple[Array, Array] | None = None,
    loss: Callable[[Array, Array], Array] | None = None,
    *,
    state: PyTree | None = None,
    tol: float = 1e-3,
    key: PRNGKeyArray | None = None,
) -> Detected:
    """Find and numerically confirm the translation, scale and rescale groups of a model.

    Args:
        model: a :class:`noether_jax.models.Network` (then pass ``params`` and ``state``), or an
            ``nnx.Module`` (split with :func:`noether_jax.models.functional`; ``params`` may be None).
        params: the parameters (a plain dict, as ``functional`` returns).
        batch: ``(x, y)`` on which the loss is evaluated (BatchNorm in training mode).
        loss: ``(logits, y) -> scalar``; default softmax cross-entropy.
        tol: the largest relative residual (of the three identities) a confirmed group may have.

    Example:
        >>> import noether_jax as nj; from noether_jax import models, data
        >>> ds = data.digits()
        >>> net, params, state = models.functional(models.make_model("mlp", width=8))
        >>> found = nj.symmetry.detect(net, params, (ds.x_train[:64], ds.y_train[:64]))
        >>> sorted(found.symmetries), len(found.names("translation")), len(found.names("rescale"))
        (['rescale', 'translation'], 9, 16)
    """
    if isinstance(model, nnx.Module):
        net, p, s = functional(model)
        params = p if params is None else params
        state = s if state is None else state
    elif isinstance(model, Network):
        net = model
        if params is None:
            raise ValueError("`params` is required when `model` is a Network (from models.functional).")
    else:
        raise TypeError(f"`model` must be a models.Network or an nnx.Module, got {type(model).__name__}.")
    if batch is None or len(batch) != 2:
        raise ValueError("`batch` must be a pair (x, y) of inputs and labels.")
    state = {} if state is None else state
    loss = cross_entropy if loss is None else loss
    x, y = batch

    def f(p):
        return loss(net(p, state, x, train=True)[0], y)

    key = jax.random.key(0) if key is None else key
    leaves, mods, treedef = _modules(params)
    leaves_np = [np.asarray(x, np.float64) for x in leaves]
    grads_np = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.grad(f)(params))]
    residuals: dict[str, Constraints] = {}
    rejected: dict[str, int] = {}

    translation, r, n_bad = _check(_translation_candidates(leaves, mods), "translation", f, params, treedef, tol, key, leaves_np, grads_np)
    rejected["translation"] = n_bad
    if r is not None:
        residuals["translation"] = r

    # scale: per channel first; whole layers only where no channel is scale-invariant on its own
    chan_b = _scale_channel_candidates(leaves, mods)
    chan, r_chan, bad_chan = _check(chan_b, "scale", f, params, treedef, tol, key, leaves_np, grads_np)
    covered = {name.split(" channel ")[0] for name in (chan.names if chan is not None else ())}
    layer, r_layer, bad_layer = _check(_scale_layer_candidates(leaves, mods, covered), "scale", f, params, treedef, tol, key, leaves_np, grads_np)
    scale = None
    parts = [s for s in (chan, layer) if s is not None]
    if parts:
        if len(parts) == 1:
            scale = parts[0]
        else:  # disjoint by construction: merge into one symmetry
            offset = chan.n_groups
            ids = jax.tree.map(lambda a, b: jnp.where(a >= 0, a, jnp.where(b >= 0, b + offset, -1)), chan.ids, layer.ids)
            scale = Scale(ids, params, names=list(chan.names) + list(layer.names))
        residuals["scale"] = _concat([r for r in (r_chan, r_layer) if r is not None])
    rejected["scale"] = bad_chan + bad_layer

    rescale, rs, bad = [], [], 0
    for b in _rescale_pairs(leaves, mods):
        sym, r, n_bad = _check(b, "rescale", f, params, treedef, tol, key, leaves_np, grads_np)
        bad += n_bad
        if sym is not None:
            rescale.append(sym)
            rs.append(r)
    rejected["rescale"] = bad
    if rs:
        residuals["rescale"] = _concat(rs)
    return Detected(translation, scale, tuple(rescale), residuals, rejected)
