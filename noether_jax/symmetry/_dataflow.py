"""Follow every parameter through the traced loss: channel spaces, their producers and consumers (private).

The loss is traced to a jaxpr (:func:`jax.make_jaxpr` of θ ↦ loss(net(θ, x), y)) and evaluated
once, equation by equation, on a few examples. Besides its value, every intermediate carries

* ``lab``: for each *channel space* it holds, an integer array of its shape giving the channel at
  each position (−1: none). A space is born where a parameter's free axes become an activation's
  axes (the output units of a Dense kernel, the output channels of a convolution, the (head,
  channel) pairs of an attention projection); structural primitives (reshape, transpose, slicing,
  gather, concatenation, pooling) carry the arrays along by being applied to them;
* ``par``: the parameter entries it is an elementwise view of (a bias on its way to an add, a
  LayerNorm scale multiplied into a statistic);
* ``stat``: the spaces it is a statistic of (a reduction: a mean, a variance, a max).

From these the pass records, per space, its *producers* (the parameter entries that make each
channel: kernel columns, biases, normalisation scales), its *consumers* (kernel rows that read each
channel, through any flatten), its *pairings* (query·key contractions), and where it is
*normalised*: an activation combined with its own statistic (``x − mean``, ``x · rsqrt(var)``,
``x − max``) starts a new space and marks the old one as shift- or scale-normalised, with the
partition of its channels that the statistic reduces together (BatchNorm: each channel alone;
LayerNorm: all; GroupNorm: its groups). Residual additions merge the spaces they add; a parameter
that produces two activations (a layer applied twice) makes them one space.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ._jaxpr import interpret

_STRUCT = {"reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice", "rev", "gather",
           "concatenate", "pad", "dynamic_slice", "dynamic_update_slice"}
_IDENTITY = {"convert_element_type", "reduce_precision", "copy", "copy_p", "stop_gradient", "optimization_barrier"}
_DATA_OPERANDS = {"concatenate": None, "pad": None, "dynamic_update_slice": 2, "gather": 1, "dynamic_slice": 1}
_REDUCE = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin"}
_WINDOW = {"reduce_window_sum", "reduce_window_max", "reduce_window_min"}


@dataclasses.dataclass
class Use:
    """Entries of one parameter leaf and the channel of a space each one produces or reads."""

    leaf: int
    entries: np.ndarray  # flat indices into the leaf
    ch: np.ndarray  # channel of each entry
    row: np.ndarray  # producers: the rest of the entry's index (a kernel's input unit, a bias's token)
    role: str  # "kernel", "bias" or "scale"


@dataclasses.dataclass
class Space:
    size: int
    shape: tuple[int, ...]
    producers: list[Use] = dataclasses.field(default_factory=list)
    consumers: list[Use] = dataclasses.field(default_factory=list)
    pairs: list[tuple[int, np.ndarray]] = dataclasses.field(default_factory=list)  # (space, channel map)
    origin: int | None = None  # the space this one was split from by a normalisation
    shift: bool = False  # an activation of this space was centred by its own statistic
    scaled: bool = False  # ... or divided by one
    channel_only: bool = False  # a statistic reduced over channels only (LayerNorm, softmax)
    parts: np.ndarray = dataclasses.field(default=None)  # union-find parent of each channel
    scrambled: bool = False

    def __post_init__(self):
        if self.parts is None:
            self.parts = np.arange(self.size)

    def part_ids(self) -> np.ndarray:
        return np.array([_find(self.parts, j) for j in range(self.size)])


def _find(parent, j):
    while parent[j] != j:
        parent[j] = parent[parent[j]]
        j = parent[j]
    return j


@dataclasses.dataclass(eq=False)
class _Node:
    shape: tuple
    lab: dict = dataclasses.field(default_factory=dict)
    par: list = dataclasses.field(default_factory=list)  # (leaf, idx array of the node's shape)
    stat: frozenset = frozenset()
    level: int = 0  # reductions on the way here (a statistic of x is one level above x)
    val: object = None  # a concrete value, for data-only nodes (computed when an index operand needs it)
    thunk: tuple | None = None

    def value(self):
        if self.val is None and self.thunk is not None:
            eqn, xs, i = self.thunk
            self.val = _bind(eqn, [x.value() for x in xs])[i]
        if self.val is None:
            raise ValueError("no concrete value")
        return self.val


class Graph:
    """The spaces of one traced loss, built by :func:`trace`."""

    def __init__(self, leaf_shapes):
        self.leaf_shapes = leaf_shapes
        self.spaces: list[Space] = []
        self.parent: list[int] = []
        self.producer_of: dict[int, int] = {}  # leaf → the space its free axes produce

    # ------------------------------------------------------------------ spaces
    def new(self, shape, origin=None) -> int:
        size = int(np.prod(shape)) if len(shape) else 1
        self.spaces.append(Space(size, tuple(int(s) for s in shape), origin=origin))
        self.parent.append(len(self.parent))
        return len(self.spaces) - 1

    def find(self, s: int) -> int:
        return _find(self.parent, s)

    def merge(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        A, B = self.spaces[a], self.spaces[b]
        if A.size != B.size:
            A.scrambled = B.scrambled = True
            return a
        self.parent[b] = a
        A.producers += [u for u in B.producers if not any(_same(u, v) for v in A.producers)]
        A.consumers += [u for u in B.consumers if not any(_same(u, v) for v in A.consumers)]
        A.pairs += B.pairs
        A.shift |= B.shift
        A.scaled |= B.scaled
        A.channel_only |= B.channel_only
        A.scrambled |= B.scrambled
        for j, p in enumerate(B.part_ids()):
            self._union(a, j, p)
        return a

    def _union(self, s, i, j):
        P = self.spaces[s].parts
        ri, rj = _find(P, i), _find(P, j)
        if ri != rj:
            P[rj] = ri

    def owner(self, s: int) -> int:
        """The nearest space up the chain of normalisation splits that has producers."""
        s = self.find(s)
        while not self.spaces[s].producers and self.spaces[s].origin is not None:
            s = self.find(self.spaces[s].origin)
        return s

    def ancestors(self, s: int) -> set[int]:
        out = set()
        s = self.find(s)
        while True:
            out.add(s)
            o = self.spaces[s].origin
            if o is None:
                return out
            s = self.find(o)

    def roots(self) -> list[int]:
        return sorted({self.find(s) for s in range(len(self.spaces))})

    # ------------------------------------------------------------------ uses
    def add_use(self, s: int, use: Use, producer: bool) -> None:
        s = self.find(s)
        if not len(use.entries):
            return
        if producer:
            prev = self.producer_of.get(use.leaf)
            if prev is not None and self.find(prev) != s:  # one parameter, two activations: one space
                s = self.merge(prev, s)
            self.producer_of[use.leaf] = s
        uses = self.spaces[s].producers if producer else self.spaces[s].consumers
        if not any(_same(u, use) for u in uses):  # the same parameter read the same way again: once
            uses.append(use)


def _same(u: Use, v: Use) -> bool:
    return u.leaf == v.leaf and u.role == v.role and np.array_equal(u.entries, v.entries) and np.array_equal(u.ch, v.ch)


def _entry_channels(idx: np.ndarray, chan: np.ndarray):
    """Pairs (entry, channel) seen at the same positions; each entry must see one channel."""
    idx, chan = np.broadcast_arrays(idx, chan)
    m = (idx >= 0) & (chan >= 0)
    e, c = idx[m].ravel(), chan[m].ravel()
    if not len(e):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((c, e))
    e, c = e[order], c[order]
    first = np.r_[True, e[1:] != e[:-1]]
    ue, uc = e[first], c[first]
    counts = np.add.reduceat(np.ones_like(e), np.flatnonzero(first))
    same = np.minimum.reduceat(c, np.flatnonzero(first)) == np.maximum.reduceat(c, np.flatnonzero(first))
    keep = same & (counts > 0)
    return ue[keep], uc[keep]


def _reduce_const(chan: np.ndarray, axes) -> np.ndarray | None:
    """``chan`` reduced over ``axes`` if it is constant along them (else None)."""
    axes = tuple(sorted(int(a) for a in axes))
    if not axes:
        return chan
    hi, lo = chan.max(axis=axes), chan.min(axis=axes)
    return hi if np.array_equal(hi, lo) else None


def _bind(eqn, operands):
    out = eqn.primitive.bind(*operands, **eqn.params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _int(a):
    return np.asarray(a, np.int32)


class _Pass:
    def __init__(self, graph: Graph):
        self.g = graph

    def literal(self, v):
        return _Node(tuple(np.shape(v)), val=v)

    # -------------------------------------------------------------- the rule
    def rule(self, eqn, xs: list[_Node]):
        name = eqn.primitive.name
        shapes = [tuple(v.aval.shape) for v in eqn.outvars]
        if not any(x.lab or x.par or x.stat for x in xs):  # data only: its value, if ever needed
            return [_Node(sh, thunk=(eqn, xs, i)) for i, sh in enumerate(shapes)]
        outs = [_Node(sh, level=max(x.level for x in xs)) for sh in shapes]
        if name in _IDENTITY:
            outs[0].lab, outs[0].par, outs[0].stat = dict(xs[0].lab), list(xs[0].par), xs[0].stat
        elif name in _STRUCT:
            self.structural(eqn, xs, outs[0])
        elif name in _REDUCE:
            self.reduce(eqn, xs[0], outs[0])
        elif name in _WINDOW:
            self.window(eqn, xs[0], outs[0])
        elif name == "dot_general":
            self.dot(eqn, xs, outs[0])
        elif name == "conv_general_dilated":
            self.conv(eqn, xs, outs[0])
        elif len(outs) == 1 and all(_broadcastable(x.shape, shapes[0]) for x in xs):
            self.elementwise(eqn, xs, outs[0])
        return outs

    # -------------------------------------------------------------- structural ops
    def structural(self, eqn, xs, out):
        name = eqn.primitive.name
        k = _DATA_OPERANDS.get(name, 1)
        data = range(len(xs)) if k is None else range(k)

        def carry(arrays):  # apply the op to int arrays standing in for the data operands
            ops = [arrays[i] if i in arrays else _int(np.full(x.shape, -1)) if i in data else x
                   for i, x in enumerate(xs)]
            if name == "pad":
                ops[1] = _int(np.full((), -1))
            fast = _numpy_struct(name, eqn.params, ops, out.shape)
            if fast is not None:
                return fast
            ops = [o.value() if isinstance(o, _Node) else o for o in ops]
            params = dict(eqn.params, fill_value=-1) if name == "gather" else eqn.params
            return np.asarray(eqn.primitive.bind(*ops, **params))

        spaces = {self.g.find(s) for i in data for s in xs[i].lab}
        try:
            for s in spaces:
                arrays = {i: _int(xs[i].lab[t]) for i in data for t in xs[i].lab if self.g.find(t) == s}
                out.lab[s] = carry(arrays)
            for i in data:
                for leaf, idx in xs[i].par:
                    out.par.append((leaf, carry({i: _int(idx)})))
        except ValueError:  # an index that depends on the parameters: the labels stop here
            out.lab, out.par = {}, []
        out.stat = frozenset().union(*(xs[i].stat for i in data))

    # -------------------------------------------------------------- reductions
    def reduce(self, eqn, x, out):
        axes = tuple(int(a) for a in eqn.params["axes"])
        for s, chan in x.lab.items():
            s = self.g.find(s)
            moved = np.moveaxis(chan, axes, tuple(range(chan.ndim - len(axes), chan.ndim)))
            rows = moved.reshape(-1, int(np.prod([chan.shape[a] for a in axes])))
            owner, mixed = self.g.owner(s), False
            for r in np.unique(rows, axis=0):
                cs = np.unique(r[r >= 0])
                if len(cs) > 1:
                    mixed = True
                    for c in cs[1:]:
                        self.g._union(owner, int(cs[0]), int(c))
            if mixed:
                self.g.spaces[owner].channel_only |= self._only_channels(chan, axes)
            else:
                const = _reduce_const(chan, axes)
                if const is not None:
                    out.lab[s] = const
        out.stat = x.stat | {self.g.find(s) for s in x.lab}
        out.level = x.level + 1

    @staticmethod
    def _only_channels(chan, axes) -> bool:
        """Whether the channel varies along every reduced axis (a per-example statistic over channels)."""
        return all(_reduce_const(chan, (a,)) is None for a in axes)

    def window(self, eqn, x, out):
        for s, chan in x.lab.items():
            c = _int(chan)
            hi, lo = _window_max(c, eqn.params), -_window_max(-c, eqn.params)
            out.lab[self.g.find(s)] = np.where(hi == lo, hi, -1)

    # -------------------------------------------------------------- elementwise ops
    def elementwise(self, eqn, xs, out):
        name = eqn.primitive.name
        shape = out.shape
        levels = {x.level for x in xs if x.lab or x.stat}
        low = min(levels, default=0)
        acts = [x for x in xs if x.lab and x.level == low]
        if len(levels) <= 1 and all(x.stat for x in acts):
            # statistics (and parameters) combined: still a statistic (e.g. rsqrt(var + ε) · γ)
            out.stat = frozenset().union(*(x.stat for x in xs))
            out.level = low
            for x in xs:
                out.lab.update({self.g.find(s): np.broadcast_to(c, shape) for s, c in x.lab.items()})
            if name in ("mul", "add", "sub", "neg", "div") or out.stat:
                out.par = [(leaf, np.broadcast_to(idx, shape)) for x in xs for leaf, idx in x.par]
            return
        # an activation (the lowest level: a pooled activation is still one) with its statistics
        stats = [x for x in xs if x.stat and x.level > low]
        params = [p for x in xs if not any(x is a for a in acts) for p in x.par]
        out.level = low
        lab: dict[int, np.ndarray] = {}
        for x in acts:
            for s, chan in x.lab.items():
                s, chan = self.g.find(s), np.broadcast_to(chan, shape)
                for t in list(lab):
                    other = lab[t]
                    both = (other >= 0) & (chan >= 0)
                    if t == s or not both.any():
                        continue
                    if np.array_equal(other[both], chan[both]):  # a residual addition: one space
                        s = self.g.merge(t, s)
                        chan = np.maximum(chan, other)
                        del lab[t]
                    else:
                        self.g.spaces[self.g.find(t)].scrambled = self.g.spaces[s].scrambled = True
                s = self.g.find(s)
                lab[s] = chan if s not in lab else np.maximum(lab[s], chan)
        normalised = {a for x in stats for t in x.stat for a in [self.g.find(t)]}
        for s in list(lab):
            if normalised & self.g.ancestors(s):
                owner = self.g.owner(s)
                sp = self.g.spaces[owner]
                if name in ("add", "sub"):
                    sp.shift = True
                elif name in ("mul", "div"):
                    sp.scaled = True
                new = self.g.new(self.g.spaces[s].shape, origin=s)
                lab[new] = lab.pop(s)
        out.lab = lab
        role = "bias" if name in ("add", "sub") else "scale" if name == "mul" else None
        if role is None:
            return
        for leaf, idx in params:
            for s, chan in lab.items():
                e, c = _entry_channels(np.broadcast_to(idx, shape), chan)
                if len(e):
                    self.g.add_use(s, Use(leaf, e, c, _rows(e, c), role), producer=True)

    # -------------------------------------------------------------- contractions
    def dot(self, eqn, xs, out):
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        ndims = [len(x.shape) for x in xs]
        free = [[a for a in range(ndims[i]) if a not in (lc, rc)[i] and a not in (lb, rb)[i]] for i in range(2)]
        contr, batch = (tuple(lc), tuple(rc)), (tuple(lb), tuple(rb))
        oshape = out.shape
        nb, nfl = len(lb), len(free[0])
        for i in range(2):
            x, other = xs[i], xs[1 - i]
            if x.par and not x.lab and other.lab:
                for leaf, idx in x.par:  # a kernel reading a labelled activation: a consumer
                    self._consume(leaf, idx, i, other, contr, batch, free)
            if x.par and not x.lab:  # a kernel's free axes: a new space (its output units)
                for leaf, idx in x.par:
                    self._produce(leaf, idx, i, contr, batch, free, oshape, nb, nfl, out)
        for i in range(2):  # labels on free or batch axes pass to the output
            for s, chan in xs[i].lab.items():
                red = _reduce_const(chan, contr[i])
                if red is None:
                    continue
                out.lab[self.g.find(s)] = _dot_layout(red, i, contr[i], batch[i], free, ndims, oshape)
        if xs[0].lab and xs[1].lab:
            self._pair(xs, contr, batch)

    def _consume(self, leaf, idx, i, act, contr, batch, free):
        j = 1 - i
        for s, chan in act.lab.items():
            bc = _reduce_const(chan, free[j])  # channel over (batch, contracted) axes of the activation
            if bc is None:
                continue
            keep = [a for a in range(chan.ndim) if a not in free[j]]
            order = [keep.index(a) for a in (*batch[j], *contr[j])]
            bc = np.transpose(bc, order)
            pidx = np.transpose(idx, (*batch[i], *contr[i], *free[i]))
            pidx = pidx.reshape(*bc.shape, -1)
            e, c = _entry_channels(pidx, bc[..., None])
            self.g.add_use(s, Use(leaf, e, c, np.zeros_like(e), "kernel"), producer=False)

    def _produce(self, leaf, idx, i, contr, batch, free, oshape, nb, nfl, out):
        fshape = [np.shape(idx)[a] for a in free[i]]
        s = self.g.new(fshape)
        pidx = np.transpose(idx, (*free[i], *batch[i], *contr[i])).reshape(int(np.prod(fshape)), -1)
        ch = np.repeat(np.arange(pidx.shape[0]), pidx.shape[1])
        row = np.tile(np.arange(pidx.shape[1]), pidx.shape[0])
        e = pidx.ravel()
        m = e >= 0
        self.g.add_use(s, Use(leaf, e[m], ch[m], row[m], "kernel"), producer=True)
        s = self.g.find(s)
        chan = np.arange(int(np.prod(fshape))).reshape(fshape)
        # output layout: (batch, lhs free, rhs free)
        if i == 0:
            chan = chan.reshape((1,) * nb + tuple(fshape) + (1,) * (len(oshape) - nb - len(fshape)))
        else:
            chan = chan.reshape((1,) * (len(oshape) - len(fshape)) + tuple(fshape))
        out.lab[s] = np.broadcast_to(chan, oshape)

    def _pair(self, xs, contr, batch):
        """Two activations contracted together (query·key): scale one, unscale the other."""
        (sa, ca), (sb, cb) = [next(iter(x.lab.items())) for x in xs]
        ra = _reduce_const(ca, [a for a in range(ca.ndim) if a not in contr[0] + batch[0]])
        rb = _reduce_const(cb, [a for a in range(cb.ndim) if a not in contr[1] + batch[1]])
        if ra is None or rb is None or ra.shape != rb.shape:
            return
        e, c = _entry_channels(_int(ra), _int(rb))
        if len(e):
            mapping = np.full(self.g.spaces[self.g.find(sa)].size, -1)
            mapping[e] = c
            self.g.spaces[self.g.find(sa)].pairs.append((self.g.find(sb), mapping))

    def conv(self, eqn, xs, out):
        dn = eqn.params["dimension_numbers"]
        lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        x, k = xs
        if not k.par or k.lab:
            return
        grouped = eqn.params.get("feature_group_count", 1) != 1 or eqn.params.get("batch_group_count", 1) != 1
        for leaf, idx in k.par:
            if x.lab and not grouped:
                for s, chan in x.lab.items():
                    c_in = _reduce_const(chan, [a for a in range(chan.ndim) if a != lhs_spec[1]])
                    if c_in is None:
                        continue
                    ch_of_entry = np.take(c_in.ravel(), np.indices(idx.shape)[rhs_spec[1]])
                    e, c = _entry_channels(idx, ch_of_entry)
                    self.g.add_use(s, Use(leaf, e, c, np.zeros_like(e), "kernel"), producer=False)
            n_out = idx.shape[rhs_spec[0]]
            s = self.g.new((n_out,))
            moved = np.moveaxis(idx, rhs_spec[0], 0).reshape(n_out, -1)
            ch = np.repeat(np.arange(n_out), moved.shape[1])
            row = np.tile(np.arange(moved.shape[1]), n_out)
            self.g.add_use(s, Use(leaf, moved.ravel(), ch, row, "kernel"), producer=True)
            shape = [1] * len(out.shape)
            shape[out_spec[1]] = n_out
            out.lab[self.g.find(s)] = np.broadcast_to(np.arange(n_out).reshape(shape), out.shape)


def _window_max(c: np.ndarray, params) -> np.ndarray:
    dims, strides, pad = params["window_dimensions"], params["window_strides"], params["padding"]
    simple = all(d == 1 for d in (*params["base_dilation"], *params["window_dilation"])) and all(
        lo == hi == 0 for lo, hi in pad)
    if not simple:
        keys = ("window_dimensions", "window_strides", "padding", "base_dilation", "window_dilation")
        return np.asarray(jax.lax.reduce_window_max_p.bind(c, **{k: params[k] for k in keys}))
    view = np.lib.stride_tricks.sliding_window_view(c, dims)
    view = view[tuple(slice(None, None, s) for s in strides)]
    return view.reshape(*view.shape[: c.ndim], -1).max(-1)


def _numpy_struct(name, params, ops, shape):
    """The structural primitives on int arrays in NumPy (no per-shape compile); None: use JAX."""
    a = ops[0]
    if not isinstance(a, np.ndarray):
        return None
    if name == "reshape" and params.get("dimensions") is None:
        return np.reshape(a, shape)
    if name == "transpose":
        return np.transpose(a, params["permutation"])
    if name == "broadcast_in_dim":
        inter = [1] * len(shape)
        for d, n in zip(params["broadcast_dimensions"], a.shape, strict=True):
            inter[d] = n
        return np.broadcast_to(a.reshape(inter), shape)
    if name == "squeeze":
        return np.reshape(a, shape)
    if name == "rev":
        return np.flip(a, tuple(params["dimensions"]))
    if name == "slice":
        strides = params["strides"] or (1,) * a.ndim
        return a[tuple(slice(s, e, st) for s, e, st in zip(params["start_indices"], params["limit_indices"], strides,
                                                           strict=True))]
    if name == "concatenate" and all(isinstance(o, np.ndarray) for o in ops):
        return np.concatenate(ops, axis=params["dimension"])
    if name == "pad" and all(i == 0 and lo >= 0 and hi >= 0 for lo, hi, i in params["padding_config"]):
        return np.pad(a, [(lo, hi) for lo, hi, _ in params["padding_config"]], constant_values=-1)
    return None


def _broadcastable(a, b) -> bool:
    try:
        return np.broadcast_shapes(a, b) == tuple(b)
    except ValueError:
        return False


def _rows(entries, ch):
    """For a bias-like use: the ordinal of each entry among the entries of its channel (a token's row)."""
    row = np.zeros_like(entries)
    for c in np.unique(ch):
        m = ch == c
        row[m] = np.argsort(np.argsort(entries[m]))
    return row


def _dot_layout(red, i, contr, batch, free, ndims, oshape):
    """Labels of operand ``i`` reduced over its contracted axes, laid out as dot_general's output
    (batch axes, lhs free axes, rhs free axes)."""
    keep = [a for a in range(ndims[i]) if a not in contr]
    arr = np.transpose(red, [keep.index(a) for a in (*batch, *free[i])])
    nb, nf = len(batch), len(free[i])
    if i == 0:
        arr = arr.reshape(arr.shape + (1,) * len(free[1]))
    else:
        arr = arr.reshape(arr.shape[:nb] + (1,) * len(free[0]) + arr.shape[nb:nb + nf])
    return np.broadcast_to(arr, oshape)


def trace(fn, leaves, *, n_outputs: int = 1) -> tuple[Graph, object, list]:
    """Trace ``fn(leaves)`` and follow the leaves through it; returns the graph, the closed jaxpr and
    the output nodes (values with their channel labels)."""
    closed = jax.make_jaxpr(fn)(leaves)
    graph = Graph([np.shape(x) for x in leaves])
    p = _Pass(graph)
    ins = [_Node(tuple(np.shape(x)), par=[(i, np.arange(np.size(x), dtype=np.int32).reshape(np.shape(x)))])
           for i, x in enumerate(leaves)]
    outs = interpret(closed, ins, p.rule, p.literal)
    return graph, closed, outs
