"""Detect the symmetric parameter groups of a flax model from its computation, confirmed numerically.

Layer names and parameter shapes are never used. The loss θ ↦ loss(net(θ, state, x), y) is traced
to a jaxpr and every parameter is followed through it (:mod:`._dataflow`): Dense and attention
projections, convolutions, biases, normalisations (BatchNorm, LayerNorm, RMSNorm, GroupNorm),
activations, pooling, reshapes, residual additions, concatenation, softmax. That gives the candidate
groups of each kind (:mod:`._candidates`):

* translation: parameters that shift, by a constant along the normalised axis, the input of a
  softmax or of a mean-centring normalisation (the head's rows and biases; every row feeding a
  LayerNorm);
* scale: the producers of each normalised part (a BatchNorm channel, a LayerNorm layer, a GroupNorm
  group, an RMSNorm layer);
* rescale: every unit of a positively homogeneous activation with *all* its consumers (several
  kernels, residual paths, a layer applied twice), attention's value→output and query·key per
  (head, channel).

A candidate is a symmetry of the *model* only if the computation says so: rescale groups must make
the loss homogeneous of degree 0 by its primitives (:mod:`._homogeneity`: ReLU, leaky ReLU, max
pooling pass; tanh, gelu, ELU do not), translation and scale hold by the normalisation that made
them. It is then confirmed by a finite change α = ±0.3, on two independent halves of the batch and
at a perturbed parameter point, all deterministic (no dependence on ``key``):

* translation and rescale: |ℒ(ψ(θ, α)) − ℒ(θ)| ≤ 100·ε·(1 + |ℒ| + S) at every point (ε the
  dtype's machine epsilon, S the natural scale of the move: α‖g_𝒜‖‖ξ_𝒜‖ + ½α²h‖ξ_𝒜‖²);
* scale: |Δℒ|/S ≤ ``tol`` at every point, since a normalisation's ε breaks it at ~ε/var.

Candidates that hold only approximately (|Δℒ|/S ≤ ``tol`` but not exact, or not exact by structure:
tanh units on tiny inputs, gelu at large inputs, an ELU unit positive on the whole batch) are
reported apart, in :attr:`Detected.near`, with their measured breaking and the reason, never as
symmetries. Groups the loss does not feel (dead units, pixels zero in every example, a bias before
BatchNorm) satisfy every identity trivially and are not reported.

Per confirmed group, :attr:`Detected.residuals` holds the relative finite-α change, the gradient
identity |⟨g, ξ_𝒜⟩|/(‖g_𝒜‖‖ξ_𝒜‖) and a sketched Hessian identity (K = 8 Gaussian probes, the only
use of ``key``). ``exact=True`` also runs :func:`noether_jax.symmetry.constraints` on them.
"""

from __future__ import annotations

import dataclasses
import functools
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
from . import _candidates, _dataflow
from ._actions import Constraints, MaskedSymmetry, constraints
from ._candidates import Candidates
from ._groups import Symmetries, group_names

KINDS = ("translation", "scale", "rescale")
_PROBES = 8
_BLOCK = 16
_ALPHA = 0.3


class NearSymmetry(eqx.Module):
    """Candidate groups that hold only approximately: reported apart, never as symmetries.

    Attributes:
        kind: ``"translation"``, ``"scale"`` or ``"rescale"``.
        symmetry: the groups as a :class:`MaskedSymmetry` (names included), e.g. to record them anyway.
        breaking: per group, the largest relative finite-α loss change |Δℒ|/S measured (≤ ``tol``).
        reason: why it is not a symmetry of the model (the primitive that breaks it, or that the
            finite-α change exceeds round-off).
    """

    kind: str = eqx.field(static=True)
    symmetry: MaskedSymmetry
    breaking: Float[Array, " G"]
    reason: str = eqx.field(static=True)


class Detected(eqx.Module):
    """The symmetries found in a model.

    Attributes:
        translation, scale: a :class:`MaskedSymmetry` with one group per symmetric set (and a readable
            name per group), or None when none was found.
        rescale: a tuple of MaskedSymmetry, one per channel space (a layer's units with all their
            producers and consumers, or a query·key pairing; a hidden kernel's columns are the
            incoming side of its own units and its rows the outgoing side of the previous layer's, so
            one mask cannot hold both); empty when none was found.
        residuals: kind → the :class:`Constraints` (invariance, gradient, Hessian) of the confirmed
            groups, in the order of :meth:`names`.
        rejected: kind → number of candidate groups that failed the numerical check (or were dead).
        near: the candidates that hold only approximately (:class:`NearSymmetry`), not symmetries.
    """

    translation: MaskedSymmetry | None
    scale: MaskedSymmetry | None
    rescale: tuple[MaskedSymmetry, ...]
    residuals: dict[str, Constraints]
    rejected: dict[str, int]
    near: tuple[NearSymmetry, ...] = ()

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

    def near_names(self, kind: str) -> list[str]:
        """The names of the near-symmetric candidate groups of one kind (empty if none)."""
        if kind not in KINDS:
            raise ValueError(f"unknown symmetry kind {kind!r}; choose one of {', '.join(KINDS)}.")
        return [n for m in self.near if m.kind == kind for n in m.symmetry.names]

    def summary(self) -> str:
        """A readable table: kind, groups found, near and rejected, worst residual of each identity, examples."""
        head = (f"{'symmetry':12s} {'groups':>6s} {'near':>5s} {'rejected':>8s} {'invariance':>10s} {'gradient':>9s} "
                f"{'hessian':>9s}  examples")
        lines = [head, "-" * len(head)]
        for kind in KINDS:
            names, near = self.names(kind), len(self.near_names(kind))
            if not names:
                lines.append(f"{kind:12s} {0:6d} {near:5d} {self.rejected.get(kind, 0):8d} {'-':>10s} {'-':>9s} {'-':>9s}")
                continue
            r = self.residuals[kind]
            worst = [float(jnp.max(getattr(r, n))) for n in ("invariance", "gradient", "hessian")]
            ex = "; ".join(names[:2]) + ("; ..." if len(names) > 2 else "")
            lines.append(f"{kind:12s} {len(names):6d} {near:5d} {self.rejected.get(kind, 0):8d} {worst[0]:10.1e} "
                         f"{worst[1]:9.1e} {worst[2]:9.1e}  {ex}")
        for m in self.near:
            lines.append(f"  near {m.kind}: {m.symmetry.n_groups} group(s), breaking ≤ {float(jnp.max(m.breaking)):.1e}: {m.reason}")
        return "\n".join(lines)


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


def _local_residuals(b: Candidates, loc: _Local, alive_tol: float):
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




def _key_str(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _candidate_sets(net, params, state, x, y, loss) -> list[Candidates]:
    """Trace the loss on a few examples and derive every candidate set from its dataflow."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [v for _, v in flat]
    paths = [".".join(_key_str(k) for k in p) or str(i) for i, (p, _) in enumerate(flat)]
    shapes = [tuple(np.shape(v)) for v in leaves]
    n = min(len(x), 4)
    xs, ys = x[:n], y[:n]

    def fn(leaves_):
        logits = net(jax.tree.unflatten(treedef, leaves_), state, xs, train=True)[0]
        return loss(logits, ys), logits

    graph, closed, outs = _dataflow.trace(fn, leaves)
    logits = {graph.find(s) for s in outs[1].lab}
    spaces = graph.roots()
    names = _candidates.Names(paths, shapes)
    tr = Candidates("translation", shapes)
    _candidates.translation(graph, spaces, logits, names, tr)
    sc = Candidates("scale", shapes, "eps")
    _candidates.scale(graph, spaces, names, sc)
    rs = _candidates.rescale(graph, closed, spaces, names, shapes, len(leaves))
    return [b for b in (tr, sc, *rs) if b.names]


def _points(params, x, y):
    """The three evaluation points: two disjoint halves of the batch at θ, and the first half at a
    perturbed θ' (each leaf moved by 10 % of its RMS, from a fixed seed: nothing depends on ``key``)."""
    n = len(x) // 2
    halves = [(x[0 : 2 * n : 2], y[0 : 2 * n : 2]), (x[1 : 2 * n : 2], y[1 : 2 * n : 2])] if n >= 2 else [(x, y), (x, y)]
    rng = np.random.default_rng(0)
    theta = ravel_pytree(params)[0]
    floor = 0.1 * float(jnp.sqrt(jnp.mean(theta**2)))

    def perturb(a):
        a = np.asarray(a)
        rms = max(float(np.sqrt(np.mean(a.astype(np.float64) ** 2))) if a.size else 0.0, floor)
        return jnp.asarray(a + 0.1 * rms * rng.standard_normal(a.shape), a.dtype)

    theta2 = ravel_pytree(jax.tree.map(perturb, params))[0]
    ts = jnp.stack([theta, theta, theta2])
    xb = jnp.stack([halves[0][0], halves[1][0], halves[0][0]])
    yb = jnp.stack([halves[0][1], halves[1][1], halves[0][1]])
    return ts, xb, yb


class _Programs:
    """The compiled functions of one (network, loss): the loss of flat parameters, its gradient, HVPs,
    and a finite move at the three points. Cached per (network, loss), so a second detect of the same
    model (other parameters, state or batch of the same shapes) compiles nothing."""

    def __init__(self, net, loss):
        def f(template, state, t, xb, yb):
            return loss(net(ravel_pytree(template)[1](t), state, xb, train=True)[0], yb)

        grad = jax.grad(f, argnums=2)

        def moved(template, state, t, xb, yb, ids, c, d, avec):
            a = jnp.where(ids >= 0, avec[jnp.clip(ids, 0)], 0.0)
            return f(template, state, t * jnp.exp(a * c) + a * d, xb, yb)

        self.value_grad = jax.jit(jax.value_and_grad(f, argnums=2))
        self.hvp = jax.jit(lambda tp, s, t, x, y, U: jax.vmap(lambda u: jax.jvp(lambda t_: grad(tp, s, t_, x, y), (t,), (u,))[1])(U))
        self.points = jax.jit(jax.vmap(jax.value_and_grad(f, argnums=2), in_axes=(None, None, 0, 0, 0)))
        self.moved = jax.jit(jax.vmap(moved, in_axes=(None, None, 0, 0, 0, None, None, None, None)))


@functools.lru_cache(maxsize=8)
def _cached_programs(net, loss) -> _Programs:
    return _Programs(net, loss)


def _programs(net, loss) -> _Programs:
    try:
        return _cached_programs(net, loss)
    except TypeError:  # an unhashable network or loss: compiled for this call only
        return _Programs(net, loss)


class _Tester:
    """Finite-α tests of groups at the three points: one compiled function for every candidate set."""

    def __init__(self, prog: _Programs, ctx, sets, points, loc: _Local, tol: float):
        self.sets, self.loc, self.tol = sets, loc, tol
        self.prog, self.ctx = prog, ctx
        self.ts, self.xb, self.yb = points
        dtype = self.ts.dtype
        flats = [b.flat() for b in sets]
        self.ids = jnp.asarray(np.stack([fl[0] for fl in flats]).astype(np.int32))
        self.c = jnp.asarray(np.stack([fl[1] for fl in flats]), dtype)
        self.d = jnp.asarray(np.stack([fl[2] for fl in flats]), dtype)
        self.g_max = max(len(b.names) for b in sets)
        L, G = prog.points(*ctx, self.ts, self.xb, self.yb)
        self.L = np.asarray(L, np.float64)
        G = np.asarray(G, np.float64)
        T = np.asarray(self.ts, np.float64)
        self.g_a, self.xi = [], []  # per set: (points, groups) norms of g_𝒜 and ξ_𝒜
        for (ids, c, d), b in zip(flats, sets, strict=True):
            n = len(b.names)
            self.g_a.append(np.sqrt(np.stack([_seg(ids, g**2, n) for g in G])))
            self.xi.append(np.sqrt(np.stack([_seg(ids, (c * t + d) ** 2, n) for t in T])))

    def run(self, tests):
        """(relative change |Δℒ|/S, exact-to-round-off flag) of each test (set, members, α vector)."""
        out = []
        eps = self.loc.eps
        for si, members, a in tests:
            v = np.asarray(self.prog.moved(*self.ctx, self.ts, self.xb, self.yb, self.ids[si], self.c[si], self.d[si],
                                           jnp.asarray(a, self.ts.dtype)), np.float64)
            dl = np.abs(v - self.L)
            xs = np.sqrt(np.sum((a[members][None] * self.xi[si][:, members]) ** 2, 1)) / _ALPHA
            ga = np.sqrt(np.sum(self.g_a[si][:, members] ** 2, 1))
            S = _ALPHA * ga * xs + 0.5 * _ALPHA**2 * self.loc.h * xs**2 + eps * np.abs(self.L) + eps
            out.append((float(np.max(dl / S)), bool(np.all(dl <= 100 * eps * (1 + np.abs(self.L) + S)))))
        return out

    def confirm(self, cand: list[np.ndarray]):
        """Blocks of up to 16 groups moved together (a composition of symmetries is one), then one by
        one where a block fails its criterion: round-off for exact-by-structure sets, ``tol`` otherwise."""
        rng = np.random.default_rng(1)
        rel = [np.full(len(b.names), np.inf) for b in self.sets]
        strict = [np.zeros(len(b.names), bool) for b in self.sets]
        blocks = []
        for si, keep in enumerate(cand):
            idx = np.flatnonzero(keep)
            for start in range(0, len(idx), _BLOCK):
                members = idx[start : start + _BLOCK]
                a = np.zeros(self.g_max)
                a[members] = _ALPHA * rng.choice([-1.0, 1.0], len(members)) * rng.uniform(0.5, 1.0, len(members))
                blocks.append((si, members, a))
        singles = []
        for (si, members, a), (r, ok) in zip(blocks, self.run(blocks), strict=True):
            passed = ok if self.sets[si].structural == "exact" else r <= self.tol
            if passed or len(members) == 1:
                rel[si][members], strict[si][members] = r, ok
                continue
            for m in members:
                a1 = np.zeros(self.g_max)
                a1[m] = _ALPHA
                singles.append((si, np.array([m]), a1))
        for (si, members, _), (r, ok) in zip(singles, self.run(singles), strict=True):
            rel[si][members], strict[si][members] = r, ok
        return rel, strict


def _inputs(model, params, state, batch, loss, tol):
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
    x, y = jnp.asarray(batch[0]), jnp.asarray(batch[1])
    if loss is None:  # the default cross-entropy takes integer labels in [0, classes)
        logits = jax.eval_shape(lambda: net(params, state, x, train=True)[0])
        _validate.labels(y, int(logits.shape[-1]), name="batch[1]")
    return net, params, state, x, y, (cross_entropy if loss is None else loss)


def _local(prog: _Programs, ctx, theta, x, y, key) -> _Local:
    value, g = prog.value_grad(*ctx, theta, x, y)
    if not (np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(g)))):
        raise ValueError(f"detect: the loss on `batch` at `params` is {float(value)} or has a non-finite gradient; "
                         "symmetries cannot be confirmed on a NaN loss (check the inputs and the parameters).")
    U = jax.random.normal(key, (_PROBES, theta.size), theta.dtype)
    HU = prog.hvp(*ctx, theta, x, y, U)
    h = float(jnp.mean(jnp.linalg.norm(HU, axis=1) / jnp.linalg.norm(U, axis=1)))
    as64 = lambda a: np.asarray(a, np.float64)
    return _Local(as64(theta), as64(g), as64(U), as64(HU), h, float(value), float(jnp.finfo(theta.dtype).eps))


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
    """Find the translation, scale and rescale groups of a model from its computation, and confirm them.

    The loss is traced and every parameter followed through it (the module docstring says how);
    candidates that the computation makes exact are confirmed by a finite-α change on two halves
    of ``batch`` and at a perturbed parameter point; approximate ones go to :attr:`Detected.near`.
    Seconds for a small ResNet or transformer on a CPU.

    Args:
        model: any flax model (an ``nnx.Module``, ``(graphdef, state)`` from ``nnx.split``,
            ``(linen_module, variables)``; ``params`` and ``state`` default to its own), or the pure
            network of :func:`noether_jax.models.functional` (then pass ``params`` and ``state``).
        params: the parameters (a plain dict as ``functional`` returns, or an ``nnx.State``).
        batch: ``(x, y)`` on which the loss is evaluated (BatchNorm in training mode); at least 4
            examples, so that its two halves are two batches.
        loss: ``(logits, y) -> scalar``; default softmax cross-entropy.
        state: the network's non-parameter state (BatchNorm statistics); default empty.
        tol: the largest relative finite-α breaking |Δℒ|/S of a scale group (a normalisation's ε
            breaks scale symmetry at ~ε/var) and of a near-symmetry. Translation and rescale groups
            must hold to round-off.
        key: the random probes of the sketched Hessian residual (reported only: which groups are
            found does not depend on it). Default ``jax.random.key(0)``.
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
    net, params, state, x, y, loss = _inputs(model, params, state, batch, loss, tol)
    k_probe = jax.random.split(jax.random.key(0) if key is None else key)[0]
    theta = ravel_pytree(params)[0]
    treedef = jax.tree.structure(params)
    prog, ctx = _programs(net, loss), (params, state)
    loc = _local(prog, ctx, theta, x, y, k_probe)
    sets = _candidate_sets(net, params, state, x, y, loss)
    alive_tol = max(1e-8, 10 * loc.eps)
    local = [_local_residuals(b, loc, alive_tol) for b in sets]
    cand = [(gr <= tol) & al for gr, _, al, _, _ in local]
    rel, strict = _Tester(prog, ctx, sets, _points(params, x, y), loc, tol).confirm(cand) if sets else ([], [])
    exact_loss = (lambda p_: loss(net(p_, state, x, train=True)[0], y)) if exact else None
    return _assemble(sets, local, cand, rel, strict, tol, treedef, exact_loss, params, k_probe)


def _verdict(b: Candidates, cand, rel, strict, tol):
    """(symmetric, near) masks of one set."""
    ok = cand & (rel <= tol)
    if b.structural == "exact":
        return cand & strict, ok & ~strict
    if b.structural == "eps":
        return ok, np.zeros_like(ok)
    return np.zeros_like(ok), ok


def _reason(b: Candidates) -> str:
    if b.structural.startswith("broken: "):
        return f"not invariant by the computation: the loss is not homogeneous through `{b.structural[8:]}`"
    return "invariant by the computation, but the finite-α change exceeds round-off"


def _assemble(sets, local, cand, rel, strict, tol, treedef, exact_loss, params, key) -> Detected:
    found: dict[str, list[tuple[MaskedSymmetry, Constraints]]] = {k: [] for k in KINDS}
    rejected = dict.fromkeys(KINDS, 0)
    near: list[NearSymmetry] = []
    for b, (gr, he, _, _, _), cd, r, st in zip(sets, local, cand, rel, strict, strict=True):
        keep, close = _verdict(b, cd, r, st, tol)
        rejected[b.kind] += int(len(b.names) - keep.sum() - close.sum())
        if close.any():
            near.append(NearSymmetry(b.kind, b.symmetry(close, treedef), jnp.asarray(r[close]), _reason(b)))
        sym = b.symmetry(keep, treedef)
        if sym is None:
            continue
        res = Constraints(jnp.asarray(r[keep]), jnp.asarray(gr[keep]), jnp.asarray(he[keep]))
        if exact_loss is not None:
            res = constraints(sym, exact_loss, params, key=key)
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
    scale = found["scale"][0][0] if found["scale"] else None
    rescale = tuple(s for s, _ in found["rescale"])
    return Detected(translation, scale, rescale, residuals, rejected, tuple(near))
