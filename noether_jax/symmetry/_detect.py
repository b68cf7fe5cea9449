"""Detect the symmetric parameter groups of a flax model: candidates from shapes, confirmed numerically.

Layer names are never used. The parameter tree is read as *modules* (leaves sharing a parent path);
a module's kernel is its one leaf of rank ≥ 2 (last axis = output units, as flax stores Dense and
Conv kernels) and its vectors are its rank-1 leaves. Candidates come from these shapes alone:

* translation: every row ``kernel[i, :]`` of a 2-D kernel (one input unit's weights to all
  outputs) and every whole vector (a bias);
* scale: every output channel ``kernel[..., j]`` with ``bias[j]`` (a filter before BatchNorm), and
  every whole layer ``kernel`` + ``bias`` not already covered channel by channel (before LayerNorm);
* rescale: output unit ``j`` of a producer (``kernel[..., j]`` + ``bias[j]``, or the entries ``j``
  of a kernel-less module's vectors, e.g. a normalisation's scale and bias) against input row ``j``
  of any other kernel with a matching input size (``kernel[..., j, :]``), or, after an NHWC flatten,
  the rows ``r`` of a 2-D kernel with ``r mod C = j``.

Every candidate group is confirmed numerically on the loss θ ↦ loss(net(θ, state, x)[0], y), with the
three identities of a symmetry (gradient, Hessian, finite-α invariance), each relative to its natural scale (as in
:func:`noether_jax.symmetry.constraints`):

* gradient: |⟨g, ξ_𝒜⟩| / (‖g_𝒜‖‖ξ_𝒜‖), from one gradient for all groups (segment sums);
* Hessian: ‖Hξ_𝒜 + (∂ξ_𝒜)ᵀg‖ / (‖Hξ_𝒜‖ + ‖(∂ξ_𝒜)ᵀg‖ + h‖ξ_𝒜‖), *sketched*: K Gaussian probes
  u_k and K HVPs Hu_k for every group of every kind at once, using ⟨u, Hξ⟩ = ⟨Hu, ξ⟩, so each norm
  is estimated from its K projections (E⟨u, r⟩² = ‖r‖²). A symmetric group gives round-off; a
  non-symmetric one gives a nonzero residual with probability one, and an estimate within a factor
  of a few of the true norm with overwhelming probability for K = 8;
* invariance under a finite α: |ℒ(ψ(θ, α)) − ℒ(θ)| / (α‖g_𝒜‖‖ξ_𝒜‖ + ½α²h‖ξ_𝒜‖² + ε|ℒ|), tested on
  blocks of up to 16 disjoint groups moved together by random α_g ∈ ±[α/2, α] (a composition of
  symmetries is a symmetry; a block that fails is retested group by group).

Groups whose gradient vanishes identically (dead units, pixels that are zero in every example)
satisfy every identity trivially and are not reported. ``exact=True`` additionally runs
:func:`noether_jax.symmetry.constraints` (one HVP per group) on the confirmed groups and reports its
residuals. BatchNorm and LayerNorm make scale invariance exact only up to their ε (a relative error
of order ε/var), hence the default ``tol = 1e-3``; non-symmetric groups give residuals of order
0.01–1. Build models with ``norm_epsilon=1e-12`` to see round-off-level residuals in float64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .. import _validate
from ..models import LinenNetwork, Network, cross_entropy
from ._actions import Constraints, MaskedSymmetry, Rescale, Scale, Translation, constraints
from ._groups import Symmetries, group_names

KINDS = ("translation", "scale", "rescale")
_PROBES = 8
_BLOCK = 16
_ALPHA = 0.3


class Detected(eqx.Module):
    """The symmetries found in a model.

    Attributes:
        translation, scale: a :class:`MaskedSymmetry` with one group per symmetric set (and a readable
            name per group), or None when none was found.
        rescale: a tuple of MaskedSymmetry, one per producer–consumer pair of layers (a hidden
            kernel's columns are the incoming side of its own units and its rows the outgoing side of
            the previous layer's, so one mask cannot hold both); empty when none was found.
        residuals: kind → the :class:`Constraints` (invariance, gradient, Hessian) of the confirmed
            groups, in the order of :meth:`names`.
        rejected: kind → number of candidate groups that failed the numerical check (or were dead).
    """

    translation: MaskedSymmetry | None
    scale: MaskedSymmetry | None
    rescale: tuple[MaskedSymmetry, ...]
    residuals: dict[str, Constraints]
    rejected: dict[str, int]

    @property
    def symmetries(self) -> dict[str, Symmetries]:
        """kind → symmetry, only for the kinds found (the input :class:`noether_jax.Recorder` takes).
        Rescale is a single MaskedSymmetry when one pair of layers has it, else the tuple."""
        out: dict[str, Symmetries] = {}
        if self.translation is not None:
            out["translation"] = self.translation
        if self.scale is not None:
            out["scale"] = self.scale
        if self.rescale:
            out["rescale"] = self.rescale if len(self.rescale) > 1 else self.rescale[0]
        return out

    def names(self, kind: str) -> list[str]:
        """The readable names of the groups of one kind (empty if none)."""
        if kind not in KINDS:
            raise ValueError(f"unknown symmetry kind {kind!r}; choose one of {', '.join(KINDS)}.")
        return group_names(self.symmetries.get(kind, ()))

    def summary(self) -> str:
        """A readable table: kind, groups found and rejected, worst residual of each identity, examples."""
        head = f"{'symmetry':12s} {'groups':>6s} {'rejected':>8s} {'invariance':>10s} {'gradient':>9s} {'hessian':>9s}  examples"
        lines = [head, "-" * len(head)]
        for kind in KINDS:
            names = self.names(kind)
            if not names:
                lines.append(f"{kind:12s} {0:6d} {self.rejected.get(kind, 0):8d} {'-':>10s} {'-':>9s} {'-':>9s}")
                continue
            r = self.residuals[kind]
            worst = [float(jnp.max(getattr(r, n))) for n in ("invariance", "gradient", "hessian")]
            ex = "; ".join(names[:2]) + ("; ..." if len(names) > 2 else "")
            lines.append(f"{kind:12s} {len(names):6d} {self.rejected.get(kind, 0):8d} {worst[0]:10.1e} {worst[1]:9.1e} {worst[2]:9.1e}  {ex}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------- the tree as modules
def _key_str(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


@dataclasses.dataclass
class _Module:
    path: str
    kernel: int | None  # leaf index of the unique rank ≥ 2 leaf
    vectors: list[int]  # leaf indices of the rank-1 leaves
    labels: dict[int, str]  # leaf index → its last key (for names only)


def _modules(params) -> tuple[list[_Module], list[tuple[int, ...]]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    shapes = [tuple(np.shape(x)) for _, x in flat]
    groups: dict[str, dict[int, str]] = {}
    for i, (path, _) in enumerate(flat):
        keys = [_key_str(k) for k in path]
        groups.setdefault(".".join(keys[:-1]) or "<root>", {})[i] = keys[-1] if keys else str(i)
    mods = []
    for path, labels in groups.items():
        big = [i for i in labels if len(shapes[i]) >= 2]
        mods.append(_Module(path, big[0] if len(big) == 1 else None, [i for i in labels if len(shapes[i]) == 1], labels))
    return mods, shapes


class _Candidates:
    """One candidate symmetry: per-leaf group ids and generator coefficients (ξ = c·θ + d)."""

    def __init__(self, kind: str, shapes):
        self.kind = kind
        self.shapes = shapes
        self.ids = [np.full(s, -1, np.int32) for s in shapes]
        self.c = [np.zeros(s) for s in shapes]
        self.names: list[str] = []
        self.module: list[str] = []  # the producer module of each group (scale: to skip whole layers)

    def new(self, name: str, module: str = "") -> int:
        self.names.append(name)
        self.module.append(module)
        return len(self.names) - 1

    def put(self, leaf: int, index, g: int, c: float = 1.0) -> None:
        self.ids[leaf][index] = g
        self.c[leaf][index] = c

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat (ids, c, d) in ``ravel_pytree`` order: ξ = c·θ + d on the group's entries."""
        ids = np.concatenate([i.ravel() for i in self.ids]).astype(np.int64)
        if self.kind == "translation":
            return ids, np.zeros(ids.shape), (ids >= 0).astype(float)
        return ids, np.concatenate([c.ravel() for c in self.c]), np.zeros(ids.shape)

    def symmetry(self, keep: np.ndarray, treedef) -> MaskedSymmetry | None:
        """The symmetry restricted to the groups in ``keep``, renumbered 0..K−1."""
        if not keep.any():
            return None
        remap = np.full(len(self.names) + 1, -1, np.int32)
        remap[np.flatnonzero(keep)] = np.arange(int(keep.sum()), dtype=np.int32)
        ids = [remap[i] for i in self.ids]  # −1 indexes the trailing −1
        names = [n for n, k in zip(self.names, keep, strict=True) if k]
        tree = lambda arrays: jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in arrays])  # noqa: E731
        if self.kind == "translation":
            return Translation(tree(ids), names=names)
        if self.kind == "scale":
            return Scale(tree(ids), names=names)
        inc = [np.where(c > 0, i, -1).astype(np.int32) for i, c in zip(ids, self.c, strict=True)]
        out = [np.where(c < 0, i, -1).astype(np.int32) for i, c in zip(ids, self.c, strict=True)]
        return Rescale(tree(inc), tree(out), names=names)


def _translation(mods, shapes, output: str | None) -> _Candidates:
    b = _Candidates("translation", shapes)
    for m in mods:
        what = "classes" if m.path == output else "outputs"
        if m.kernel is not None and len(shapes[m.kernel]) == 2:
            k = m.kernel
            for i in range(shapes[k][0]):
                b.put(k, (i, slice(None)), b.new(f"{m.path}.{m.labels[k]}[{i},:] (input unit {i} → all {what})", m.path))
        for v in m.vectors:
            label = "class biases" if m.path == output and m.kernel is not None else f"all {shapes[v][0]} entries"
            b.put(v, slice(None), b.new(f"{m.path}.{m.labels[v]} ({label})", m.path))
    return b


def _biases(m: _Module, shapes) -> list[int]:
    c = shapes[m.kernel][-1]
    return [v for v in m.vectors if shapes[v] == (c,)]


def _scale_channels(mods, shapes) -> _Candidates:
    b = _Candidates("scale", shapes)
    for m in mods:
        if m.kernel is None:
            continue
        k, biases = m.kernel, _biases(m, shapes)
        unit = "unit" if len(shapes[k]) == 2 else "channel"
        for j in range(shapes[k][-1]):
            g = b.new(f"{m.path} {unit} {j}" + (" (+ bias)" if biases else ""), m.path)
            b.put(k, (..., j), g)
            for v in biases:
                b.put(v, j, g)
    return b


def _scale_layers(mods, shapes, skip: set[str]) -> _Candidates:
    b = _Candidates("scale", shapes)
    for m in mods:
        if m.kernel is None or m.path in skip:
            continue
        biases = _biases(m, shapes)
        g = b.new(f"{m.path} (whole layer: kernel" + (" + bias" if biases else "") + ", normalised after)", m.path)
        b.put(m.kernel, ..., g)
        for v in biases:
            b.put(v, slice(None), g)
    return b


def _rescale_pairs(mods, shapes) -> list[_Candidates]:
    producers = []
    for m in mods:
        if m.kernel is not None:
            producers.append((m, shapes[m.kernel][-1], [m.kernel, *_biases(m, shapes)], "unit" if len(shapes[m.kernel]) == 2 else "channel"))
        elif m.vectors and len({shapes[v] for v in m.vectors}) == 1:  # e.g. a normalisation's scale and bias
            producers.append((m, shapes[m.vectors[0]][0], list(m.vectors), "unit"))
    pairs = []
    for pm, c, pleaves, unit in producers:
        what = "kernel+bias" if pm.kernel is not None and len(pleaves) > 1 else "+".join(pm.labels[i] for i in pleaves)
        for cm in mods:
            if cm is pm or cm.kernel is None:
                continue
            k = cm.kernel
            ks = shapes[k]
            n_in = ks[-2]
            if n_in == c:
                rows = [(..., j, slice(None)) for j in range(c)]
                out = [f"{cm.path} row {j} out" for j in range(c)]
            elif len(ks) == 2 and n_in % c == 0 and n_in > c:
                rows = [(np.arange(j, n_in, c), slice(None)) for j in range(c)]
                out = [f"{cm.path} rows ≡ {j} mod {c} out (flatten)" for j in range(c)]
            else:
                continue
            b = _Candidates("rescale", shapes)
            for j in range(c):
                g = b.new(f"{pm.path} {unit} {j} in ({what}) / {out[j]}", pm.path)
                for leaf in pleaves:
                    b.put(leaf, (..., j), g, 1.0)
                b.put(k, rows[j], g, -1.0)
            pairs.append(b)
    return pairs


def _output_module(net_out, params, mods, shapes) -> str | None:
    """The module whose bias adds to the logits directly (d logits / d bias = identity): the head."""
    logits, jvp_logits = net_out
    n_out = logits.shape[-1]
    for m in mods:
        if m.kernel is None:
            continue
        for v in m.vectors:
            if shapes[v] != (n_out,):
                continue
            t = np.arange(1.0, n_out + 1.0)
            if np.allclose(np.asarray(jvp_logits(v, t)), np.broadcast_to(t, logits.shape), rtol=1e-5, atol=1e-5):
                return m.path
    return None


# ------------------------------------------------------------------------------- confirmation
def _seg(ids, w, n):
    m = ids >= 0
    return np.bincount(ids[m], w[m], n)


@dataclasses.dataclass
class _Local:
    """Quantities shared by all candidate sets: flat θ, g, the probes U and HU, h, the loss value."""

    theta: np.ndarray
    g: np.ndarray
    U: np.ndarray
    HU: np.ndarray
    h: float
    value: float
    eps: float


def _local_residuals(b: _Candidates, loc: _Local, alive_tol: float):
    """Gradient and (sketched) Hessian residuals of every group of a candidate set; alive flags."""
    ids, c, d = b.flat()
    G = len(b.names)
    xi = c * loc.theta + d
    xi2 = _seg(ids, xi**2, G)
    g_a2 = _seg(ids, loc.g**2, G)
    grad = np.abs(_seg(ids, loc.g * xi, G)) / (np.sqrt(g_a2 * xi2) + 1e-300)
    hxi = np.stack([_seg(ids, hu * xi, G) for hu in loc.HU])  # ⟨Hu_k, ξ_g⟩ = ⟨u_k, Hξ_g⟩
    dg = np.stack([_seg(ids, u * c * loc.g, G) for u in loc.U])  # ⟨u_k, (∂ξ_g)ᵀ g⟩ (∂ξ diagonal = c)
    K = len(loc.U)
    res = np.sqrt(np.sum((hxi + dg) ** 2, 0) / K)
    denom = np.sqrt(np.sum(hxi**2, 0) / K) + np.sqrt(_seg(ids, (c * loc.g) ** 2, G)) + loc.h * np.sqrt(xi2) + loc.eps
    hess = res / denom
    gnorm = np.sqrt(np.sum(loc.g**2))
    alive = np.sqrt(g_a2) > alive_tol * gnorm
    if b.kind == "rescale":  # both sides must feel the loss
        for side in (c > 0, c < 0):
            alive &= np.sqrt(_seg(np.where(side, ids, -1), loc.g**2, G)) > alive_tol * gnorm
    return grad, hess, alive, np.sqrt(g_a2), np.sqrt(xi2)


def detect(
    model: Any,
    params: PyTree | None = None,
    batch: tuple[Float[Array, "b ..."], Int[Array, " b"] | Float[Array, "b ..."]] | None = None,
    loss: Callable[[Float[Array, "b k"], Array], Float[Array, ""]] | None = None,
    *,
    state: PyTree | None = None,
    tol: float = 1e-3,
    key: PRNGKeyArray | None = None,
    exact: bool = False,
) -> Detected:
    """Find and numerically confirm the translation, scale and rescale groups of a model.

    Candidates come from the parameter tree's shapes (never from layer names) and each is kept only
    if its invariance, gradient and Hessian residuals (relative, see the module docstring) are all
    ≤ ``tol``. About K = 8 HVPs plus one forward pass per block of 16 groups, whatever the number
    of candidates: seconds for a VGG with BatchNorm.

    Args:
        model: any flax model (an ``nnx.Module``, ``(graphdef, state)`` from ``nnx.split``,
            ``(linen_module, variables)``; ``params`` and ``state`` default to its own), or the pure
            network of :func:`noether_jax.models.functional` (then pass ``params`` and ``state``).
        params: the parameters (a plain dict as ``functional`` returns, or an ``nnx.State``).
        batch: ``(x, y)`` on which the loss is evaluated (BatchNorm in training mode).
        loss: ``(logits, y) -> scalar``; default softmax cross-entropy.
        state: the network's non-parameter state (BatchNorm statistics); default empty.
        tol: the largest relative residual a confirmed group may have. The default 1e-3 admits the
            ε/var breaking of scale symmetry by a normalisation's ε; true groups of exactly symmetric
            models give ~1e-12 or less in float64, false ones 1e-2 or more.
        key: the random probes and finite-α signs (default ``jax.random.key(0)``).
        exact: also run :func:`noether_jax.symmetry.constraints` (one HVP per confirmed group; slower)
            and keep only the groups whose exact residuals are ≤ ``tol`` too; the reported residuals
            are then the exact ones.

    Returns:
        A :class:`Detected`; ``.symmetries`` is what :class:`noether_jax.Recorder` takes.

    Example:
        >>> import noether_jax as nj; from noether_jax import models, data
        >>> ds = data.digits()
        >>> net, params, state = models.functional(models.make_model("mlp", width=8))
        >>> found = nj.symmetry.detect(net, params, (ds.x_train[:64], ds.y_train[:64]))
        >>> sorted(found.symmetries), len(found.names("translation")), len(found.names("rescale"))
        (['rescale', 'translation'], 9, 16)
        >>> found.names("translation")[-1], found.names("rescale")[0]
        ('head.bias (class biases)', 'hidden.0 unit 0 in (kernel+bias) / hidden.1 row 0 out')
    """
    from ..models import as_model

    if params is None and isinstance(model, Network | LinenNetwork):
        raise ValueError("`params` is required when `model` is a pure network (from models.functional).")
    try:
        net, params, state = as_model(model, params, state)
    except TypeError:
        raise TypeError("`model` must be an nnx.Module, (graphdef, state) from nnx.split, (linen_module, variables), "
                        f"or a pure network from nj.models.functional; got {type(model).__name__}.") from None
    if batch is None or len(batch) != 2:
        raise ValueError("`batch` must be a pair (x, y) of inputs and labels.")
    if not tol > 0:
        raise ValueError(f"`tol` must be positive, got {tol}.")
    state = {} if state is None else state
    x, y = batch
    if loss is None:  # the default cross-entropy takes integer labels in [0, classes)
        logits = jax.eval_shape(lambda: net(params, state, jnp.asarray(x), train=True)[0])
        _validate.labels(y, int(logits.shape[-1]), name="batch[1]")
    loss = cross_entropy if loss is None else loss
    key = jax.random.key(0) if key is None else key
    k_probe, k_alpha = jax.random.split(key)

    theta, unravel = ravel_pytree(params)
    treedef = jax.tree.structure(params)
    mods, shapes = _modules(params)
    dtype = theta.dtype
    eps = float(jnp.finfo(dtype).eps)

    def f_flat(t):
        return loss(net(unravel(t), state, x, train=True)[0], y)

    value, g = jax.jit(jax.value_and_grad(f_flat))(theta)
    if not (np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(g)))):
        raise ValueError(f"detect: the loss on `batch` at `params` is {float(value)} or has a non-finite gradient; "
                         "symmetries cannot be confirmed on a NaN loss (check the inputs and the parameters).")
    U = jax.random.normal(k_probe, (_PROBES, theta.size), dtype)
    hvp = jax.jit(jax.vmap(lambda t, u: jax.jvp(jax.grad(f_flat), (t,), (u,))[1], in_axes=(None, 0)))
    HU = hvp(theta, U)
    h = float(jnp.mean(jnp.linalg.norm(HU, axis=1) / jnp.linalg.norm(U, axis=1)))
    as64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    loc = _Local(as64(theta), as64(g), as64(U), as64(HU), h, float(value), eps)
    alive_tol = max(1e-8, 10 * eps)

    # the output module (for names): its bias enters the logits with unit Jacobian
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in shapes])

    def jvp_logits(leaf, t):
        tangent = np.zeros(theta.size)
        tangent[offsets[leaf] : offsets[leaf + 1]] = t
        return jax.jvp(lambda th: net(unravel(th), state, x, train=True)[0], (theta,), (jnp.asarray(tangent, dtype),))[1]

    logits = net(params, state, x, train=True)[0]
    output = _output_module((logits, jvp_logits), params, mods, shapes)

    # local (one-gradient, sketched-Hessian) screening of every candidate set
    sets: list[_Candidates] = []
    local: list[tuple] = []

    def screen(b: _Candidates):
        if b.names:
            sets.append(b)
            local.append(_local_residuals(b, loc, alive_tol))

    screen(_translation(mods, shapes, output))
    chan = _scale_channels(mods, shapes)
    screen(chan)
    ok = (local[-1][0] <= tol) & (local[-1][1] <= tol) & local[-1][2] if chan.names else np.zeros(0, bool)
    screen(_scale_layers(mods, shapes, {chan.module[i] for i in np.flatnonzero(ok)}))
    for b in _rescale_pairs(mods, shapes):
        screen(b)

    # invariance under a finite α: blocks of disjoint groups, then one by one where a block fails
    flats = [b.flat() for b in sets]
    ids_s = jnp.asarray(np.stack([fl[0] for fl in flats]).astype(np.int32)) if sets else None
    c_s = jnp.asarray(np.stack([fl[1] for fl in flats]), dtype) if sets else None
    d_s = jnp.asarray(np.stack([fl[2] for fl in flats]), dtype) if sets else None
    g_max = max((len(b.names) for b in sets), default=1)

    @jax.jit
    def _moved(t, ids_s, c_s, d_s, si, avec):
        ids = ids_s[si]
        a = jnp.where(ids >= 0, avec[jnp.clip(ids, 0)], 0.0)
        return f_flat(t * jnp.exp(a * c_s[si]) + a * d_s[si])

    def moved(si, avec):
        return _moved(theta, ids_s, c_s, d_s, si, avec)

    rng = np.random.default_rng(np.asarray(jax.random.randint(k_alpha, (), 0, 2**31 - 1)).item())
    inv_all = [np.full(len(b.names), np.inf) for b in sets]
    cand = [(gr <= tol) & (he <= tol) & al for gr, he, al, _, _ in local]

    def scale_of(si, members, a):
        _, _, _, g_a, xin = local[si]
        xs = np.sqrt(np.sum((a[members] * xin[members]) ** 2)) / _ALPHA
        ga = np.sqrt(np.sum(g_a[members] ** 2))
        return _ALPHA * ga * xs + 0.5 * _ALPHA**2 * loc.h * xs**2 + eps * abs(loc.value) + eps

    def run(tests):
        vals = [moved(si, jnp.asarray(a, dtype)) for si, _, a in tests]
        return [abs(float(v) - loc.value) / scale_of(si, m, a) for (si, m, a), v in zip(tests, vals, strict=True)]

    blocks = []
    for si, keep in enumerate(cand):
        idx = np.flatnonzero(keep)
        for start in range(0, len(idx), _BLOCK):
            members = idx[start : start + _BLOCK]
            a = np.zeros(g_max)
            a[members] = _ALPHA * rng.choice([-1.0, 1.0], len(members)) * rng.uniform(0.5, 1.0, len(members))
            blocks.append((si, members, a))
    singles = []
    for (si, members, a), r in zip(blocks, run(blocks), strict=True):
        if r <= tol or len(members) == 1:
            inv_all[si][members] = r
        else:
            for mem in members:
                a1 = np.zeros(g_max)
                a1[mem] = _ALPHA
                singles.append((si, np.array([mem]), a1))
    for (si, members, _), r in zip(singles, run(singles), strict=True):
        inv_all[si][members] = r

    # assemble: per kind, the confirmed groups and their residuals
    found: dict[str, list[tuple[MaskedSymmetry, Constraints]]] = {k: [] for k in KINDS}
    rejected = dict.fromkeys(KINDS, 0)
    for b, (gr, he, _, _, _), keep, inv in zip(sets, local, cand, inv_all, strict=True):
        keep = keep & (inv <= tol)
        rejected[b.kind] += int(len(b.names) - keep.sum())
        sym = b.symmetry(keep, treedef)
        if sym is None:
            continue
        res = Constraints(jnp.asarray(inv[keep]), jnp.asarray(gr[keep]), jnp.asarray(he[keep]))
        if exact:
            res = constraints(sym, lambda p_: loss(net(p_, state, x, train=True)[0], y), params, key=k_probe)
            ok = np.asarray(res.holds(tol))
            rejected[b.kind] += int((~ok).sum())
            keep2 = np.zeros_like(keep)
            keep2[np.flatnonzero(keep)[ok]] = True
            sym = b.symmetry(keep2, treedef)
            if sym is None:
                continue
            res = Constraints(*(jnp.asarray(getattr(res, n))[ok] for n in ("invariance", "gradient", "hessian")))
        found[b.kind].append((sym, res))

    def cat(rs):
        return Constraints(*(jnp.concatenate([getattr(r, n) for r in rs]) for n in ("invariance", "gradient", "hessian")))

    residuals = {k: cat([r for _, r in v]) for k, v in found.items() if v}
    translation = found["translation"][0][0] if found["translation"] else None
    scale = None
    if found["scale"]:  # channel groups and whole-layer groups are disjoint by construction: merge
        parts = [s for s, _ in found["scale"]]
        scale = parts[0] if len(parts) == 1 else _merge_scale(parts)
    rescale = tuple(s for s, _ in found["rescale"])
    return Detected(translation, scale, rescale, residuals, rejected)


def _merge_scale(parts: list[MaskedSymmetry]) -> MaskedSymmetry:
    ids, offset, names = None, 0, []
    for s in parts:
        shifted = jax.tree.map(lambda a, o=offset: jnp.where(a >= 0, a + o, -1), s.ids)
        ids = shifted if ids is None else jax.tree.map(jnp.maximum, ids, shifted)
        offset += s.n_groups
        names += list(s.names)
    return Scale(ids, names=names)
