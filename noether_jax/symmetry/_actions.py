"""Symmetry actions on parameter pytrees and their gradient and Hessian constraints.

A symmetry is an action ψ(q, α) with α ∈ ℝ^G: one parameter per *group* (e.g. one per neuron), so a
single symmetry object stands for every neuron of a layer. Everything per group is obtained from one
derivative with respect to the vector α, never from a Python loop over groups:

    generator      ξ_g(q) = ∂ψ/∂α_g |_{α=0}
    ⟨w, ξ_g⟩       = ∂/∂α_g ⟨w, ψ(q, α)⟩ |_{α=0}        (one VJP for all g)

Masked symmetries (:class:`Translation`, :class:`Scale`, :class:`Rescale`) act entrywise as
ψ(q, α)ᵢ = qᵢ e^{α_{g(i)} cᵢ} + α_{g(i)} dᵢ, with group ids g(i) (−1: not acted on); :class:`Action`
wraps any user function.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree, Scalar

from .._tree import tree_sq_norm, tree_vdot
from .._validate import check_scalar, integer


def flat_leaves(leaves: list, shapes: list, dtype=None) -> Array:
    """The leaves, each broadcast to its shape in ``shapes``, raveled and laid end to end (in ``dtype``)."""
    out = jnp.concatenate([jnp.ravel(jnp.broadcast_to(a, s)) for a, s in zip(leaves, shapes, strict=True)])
    return out if dtype is None else out.astype(dtype)


def group_sums(ids: list, values: list, n_groups: int, dtype) -> Float[Array, " G"]:
    """Σ_{i∈g} vᵢ per group g over all leaves, by ONE segment sum of the leaves laid end to end.

    ``ids[k]`` are the group ids of leaf ``values[k]`` (−1: in no group; a mask leaf may broadcast, e.g. a
    scalar). One scatter for the whole tree, not one per leaf: a transformer's recording calls this
    hundreds of times, and XLA's compile time grows with the number of operations."""
    if not values:
        return jnp.zeros(n_groups, dtype)
    shapes = [jnp.shape(v) for v in values]
    return flat_segment_sum(flat_leaves(ids, shapes), flat_leaves(values, shapes, dtype), n_groups)


def flat_segment_sum(idx: Array, vals: Array, n_groups: int) -> Array:
    # an id of −1 goes to segment n_groups, out of range: segment_sum drops it
    return jax.ops.segment_sum(vals, jnp.where(idx >= 0, idx, n_groups), n_groups)


class AbstractSymmetry(eqx.Module):
    """A G-parameter group action ψ(q, α), α ∈ ℝ^G, with ψ(q, 0) = q."""

    @property
    @abc.abstractmethod
    def n_groups(self) -> int: ...

    @abc.abstractmethod
    def act(self, q: PyTree, alpha: Float[Array, " G"]) -> PyTree:
        """ψ(q, α)."""

    def check(self, q: PyTree) -> None:
        """Raise a clear error when the symmetry cannot act on ``q``."""
        out = jax.eval_shape(lambda: self.act(q, jnp.zeros(self.n_groups, jnp.result_type(float))))
        if jax.tree.structure(out) != jax.tree.structure(q) or any(
            a.shape != jnp.shape(b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(q), strict=True)
        ):
            raise ValueError(
                "the symmetry action must return a pytree with the parameters' structure and shapes; got "
                f"{jax.tree.structure(out)} for parameters {jax.tree.structure(q)}."
            )

    def pair(self, q: PyTree, w: PyTree) -> Float[Array, " G"]:
        """⟨w, ξ_g(q)⟩ for every group g (one VJP)."""
        zero = jnp.zeros(self.n_groups, jnp.result_type(*jax.tree.leaves(q), float))
        return jax.grad(lambda a: tree_vdot(w, self.act(q, a)))(zero)

    def generator(self, q: PyTree, group: int | Array) -> PyTree:
        """ξ_g(q): the generator of one group, as a tangent pytree (a JVP at α = 0)."""
        e = jax.nn.one_hot(group, self.n_groups, dtype=jnp.result_type(*jax.tree.leaves(q), float))
        return jax.jvp(lambda a: self.act(q, a), (jnp.zeros_like(e),), (e,))[1]

    def generator_derivative(self, q: PyTree, group: int | Array, w: PyTree) -> PyTree:
        """(∂_q ξ_g) w: the derivative of the generator along w (its transpose enters the Hessian constraint)."""
        return jax.jvp(lambda q_: self.generator(q_, group), (q,), (w,))[1]

    def lift(self, q: PyTree, v: PyTree, alpha: Float[Array, " G"]) -> tuple[PyTree, PyTree]:
        """The action on (q, v): (ψ(q, α), ∂_qψ(q, α) v), the point transformation of a velocity."""
        return jax.jvp(lambda q_: self.act(q_, alpha), (q,), (v,))


# --------------------------------------------------------------------------- masked symmetries
def _check_mask(mask: PyTree, like: PyTree, name: str, shapes: bool = True) -> None:
    tm, tp = jax.tree.structure(mask), jax.tree.structure(like)
    if tm != tp:
        raise ValueError(
            f"`{name}` must have the same pytree structure as the parameters; got\n  {name}: {tm}\n  params: {tp}\n"
            f"Build it with jax.tree.map over the parameters, using False (or −1) for leaves the symmetry does not touch."
        )
    if not shapes:
        return
    for i, (m, x) in enumerate(zip(jax.tree.leaves(mask), jax.tree.leaves(like), strict=True)):
        ms, xs = tuple(np.shape(m)), tuple(jnp.shape(x))
        try:
            ok = np.broadcast_shapes(ms, xs) == xs
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"leaf {i} of `{name}` has shape {ms}, which does not broadcast to the matching parameter's shape {xs}; "
                "each mask leaf must have the parameter's shape (or one that broadcasts to it)."
            )


class MaskedSymmetry(AbstractSymmetry):
    """ψ(q, α)ᵢ = qᵢ exp(α_{g(i)} cᵢ) + α_{g(i)} dᵢ on the entries with a group id g(i) ≥ 0.

    ``ids``, ``scale`` (c) and ``shift`` (d) are pytrees shaped like the parameters. Translation has
    c = 0, d = 1; scale has c = 1, d = 0; rescale has c = +1 on 𝒜₁ and c = −1 on 𝒜₂.
    """

    ids: PyTree
    scale: PyTree
    shift: PyTree
    groups: int = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True, default=())

    @property
    def n_groups(self) -> int:
        return self.groups

    def act(self, q, alpha):
        alpha = jnp.asarray(alpha)
        if alpha.shape != (self.groups,):
            raise ValueError(f"`alpha` must have shape ({self.groups},) (one entry per group), got {alpha.shape}.")
        _check_mask(self.ids, q, "the symmetry's mask")

        def one(x, ids, c, d):
            a = jnp.where(ids >= 0, alpha[jnp.clip(ids, 0)], 0.0).astype(x.dtype)
            return x * jnp.exp(a * c.astype(x.dtype)) + a * d.astype(x.dtype)

        return jax.tree.map(one, q, self.ids, self.scale, self.shift)

    def pair(self, q, w):
        """⟨w, ξ_g⟩ = Σ_{i∈g} wᵢ (cᵢ qᵢ + dᵢ), by a segment sum (no autodiff needed)."""
        _check_mask(self.ids, q, "the symmetry's mask")
        dtype = jnp.result_type(*jax.tree.leaves(q), *jax.tree.leaves(w), float)  # the data's precision, not the mask's
        xs = jax.tree.leaves(q)
        if not xs:
            return jnp.zeros(self.groups, dtype)
        shapes = [jnp.shape(x) for x in xs]
        x, wi, c, d = (flat_leaves(jax.tree.leaves(t), shapes, dtype) for t in (q, w, self.scale, self.shift))
        return flat_segment_sum(flat_leaves(jax.tree.leaves(self.ids), shapes), wi * (c * x + d), self.groups)

    def generator(self, q, group):
        return jax.tree.map(lambda x, ids, c, d: jnp.where(ids == group, c * x + d, 0.0).astype(x.dtype), q, self.ids, self.scale, self.shift)

    def generator_derivative(self, q, group, w):
        return jax.tree.map(lambda wi, ids, c: jnp.where(ids == group, c * wi, 0.0).astype(wi.dtype), w, self.ids, self.scale)

    def group_norms(self, q: PyTree) -> Float[Array, " G"]:
        """Σ_{i∈g} cᵢ qᵢ² per group: |θ_𝒜|² for scale, |θ_𝒜₁|² − |θ_𝒜₂|² for rescale."""
        return self.pair(q, jax.tree.map(lambda x, c: jnp.where(c != 0, x, 0.0), q, self.scale))


def _masked(kind: str, mask: PyTree, like: PyTree | None, c: float, d: float, names) -> MaskedSymmetry:
    leaves, treedef = jax.tree.flatten(mask)
    id_leaves, groups = [], 0
    for m in leaves:
        arr = np.asarray(m)
        if arr.dtype == bool:
            ids = np.where(arr, 0, -1).astype(np.int32)
            groups = max(groups, 1 if arr.any() else 0)
        elif arr.dtype.kind in "iu":
            ids = arr.astype(np.int32)
            groups = max(groups, int(ids.max()) + 1 if ids.size else 0)
        else:
            raise TypeError(f"{kind}: mask leaves must be boolean (one group) or integer group ids (−1 = none), got dtype {arr.dtype}.")
        id_leaves.append(ids)
    if groups == 0:
        raise ValueError(f"{kind}: the mask selects no parameter; at least one entry must be True or a group id ≥ 0.")
    used = np.zeros(groups, bool)
    for ids in id_leaves:
        used[ids[ids >= 0]] = True
    if not used.all():
        empty = np.flatnonzero(~used)
        raise ValueError(f"{kind}: the mask's group ids must be 0 … G−1 with every group non-empty, but group(s) "
                         f"{empty[:10].tolist()} of {groups} have no member (an empty group trivially \"holds\"); "
                         "renumber the ids consecutively (e.g. np.unique(ids, return_inverse=True)).")
    if like is not None:
        _check_mask(mask, like, "mask")
        id_leaves = [np.broadcast_to(i, jnp.shape(x)).astype(np.int32) for i, x in zip(id_leaves, jax.tree.leaves(like), strict=True)]
    ids = jax.tree.unflatten(treedef, [jnp.asarray(i) for i in id_leaves])
    scale, shift = _coefficients(ids, jax.tree.unflatten(treedef, [np.ones(i.shape, np.int8) for i in id_leaves]), c, d)
    return MaskedSymmetry(ids, scale, shift, groups, tuple(names or ()))


@jax.jit
def _coefficients(ids: PyTree, sign: PyTree, c: float, d: float) -> tuple[PyTree, PyTree]:
    """The (scale, shift) leaves c·sign·[i ≥ 0] and d·[i ≥ 0] of group ids (``sign`` ±1 per entry), weakly
    typed, so that they take the parameters' dtype.

    One compiled program per tree of id shapes, whatever the kind: built leaf by leaf outside jit, every leaf
    shape compiled eager ops of its own, most of the XLA compiles of a ``detect`` call."""
    scale = jax.tree.map(lambda i, s: jnp.where(i >= 0, c * s, 0.0), ids, sign)
    return scale, jax.tree.map(lambda i: jnp.where(i >= 0, d, 0.0), ids)


def Translation(mask: PyTree, params: PyTree | None = None, names=None) -> MaskedSymmetry:
    """θ_𝒜 ↦ θ_𝒜 + α𝟙 for each group 𝒜 (e.g. the weights of one input unit to all softmax classes).

    ``mask``: a pytree like the parameters with boolean leaves (one group) or integer group ids
    (−1 = not in any group); pass ``params`` to broadcast mask leaves to the parameters' shapes.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> sym = nj.symmetry.Translation({"w": jnp.array([True, True, False])})
        >>> sym.act({"w": jnp.zeros(3)}, jnp.array([0.5]))["w"].tolist()
        [0.5, 0.5, 0.0]
    """
    return _masked("Translation", mask, params, 0.0, 1.0, names)


def Scale(mask: PyTree, params: PyTree | None = None, names=None) -> MaskedSymmetry:
    """θ_𝒜 ↦ e^α θ_𝒜 for each group 𝒜 (e.g. a filter and its bias before BatchNorm).

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0, 1])})   # two groups
        >>> sym.n_groups, sym.group_norms({"w": jnp.array([1.0, 2.0, 3.0])}).tolist()
        (2, [5.0, 9.0])
    """
    return _masked("Scale", mask, params, 1.0, 0.0, names)


def Rescale(incoming: PyTree, outgoing: PyTree, params: PyTree | None = None, names=None) -> MaskedSymmetry:
    """θ_𝒜₁ ↦ e^α θ_𝒜₁, θ_𝒜₂ ↦ e^{−α} θ_𝒜₂ (a homogeneous hidden unit: incoming vs outgoing weights).

    ``incoming`` and ``outgoing`` use the same group ids; an entry may not be in both.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> sym = nj.symmetry.Rescale({"a": jnp.array([True]), "b": jnp.array([False])},
        ...                           {"a": jnp.array([False]), "b": jnp.array([True])})
        >>> sym.group_norms({"a": jnp.array([3.0]), "b": jnp.array([2.0])}).tolist()
        [5.0]
    """
    s_in = _masked("Rescale", incoming, params, 1.0, 0.0, names)
    s_out = _masked("Rescale", outgoing, params, -1.0, 0.0, names)
    _check_mask(s_in.ids, s_out.ids, "outgoing", shapes=False)
    ins, outs = ([np.asarray(a) for a in jax.tree.leaves(t.ids)] for t in (s_in, s_out))
    if any(np.any((a >= 0) & (b >= 0)) for a, b in zip(ins, outs, strict=True)):
        raise ValueError("Rescale: an entry is in both `incoming` and `outgoing`; the two sets must be disjoint.")
    treedef = jax.tree.structure(s_in.ids)
    ids = jax.tree.unflatten(treedef, [jnp.asarray(np.maximum(a, b)) for a, b in zip(ins, outs, strict=True)])
    sign = jax.tree.unflatten(treedef, [np.where(b >= 0, -1, 1).astype(np.int8) for b in outs])
    scale, shift = _coefficients(ids, sign, 1.0, 0.0)
    return MaskedSymmetry(ids, scale, shift, max(s_in.groups, s_out.groups), s_in.names)


class Action(AbstractSymmetry):
    """Any user action ``psi(q, alpha) -> q``; its generator comes from a JVP at α = 0.

    ``alpha`` is a scalar when ``n_groups`` is None (one group), else a vector of length ``n_groups``.

    Example (rotations of the plane, whose charge is angular momentum):
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> def rotate(q, a):
        ...     c, s = jnp.cos(a), jnp.sin(a)
        ...     return jnp.array([c * q[0] - s * q[1], s * q[0] + c * q[1]])
        >>> sym = nj.symmetry.Action(rotate)
        >>> [abs(float(x)) for x in sym.generator(jnp.array([1.0, 0.0]), 0)]
        [0.0, 1.0]
    """

    psi: Callable[[PyTree, ArrayLike], PyTree]
    groups: int | None = eqx.field(static=True, default=None)
    names: tuple[str, ...] = eqx.field(static=True, default=())

    def __check_init__(self):
        if not callable(self.psi):
            raise TypeError(f"Action: `psi` must be a callable psi(q, alpha) -> q, got {type(self.psi).__name__}.")
        if self.groups is not None:
            integer("groups", self.groups, minimum=1)  # an action with zero groups acts on nothing

    @property
    def n_groups(self) -> int:
        return 1 if self.groups is None else self.groups

    def act(self, q, alpha):
        alpha = jnp.asarray(alpha)
        return self.psi(q, alpha[0] if self.groups is None else alpha)


# --------------------------------------------------------------------------- constraints
class Constraints(eqx.Module):
    """Per-group residuals of a symmetry's three identities, each relative to a natural scale.

    invariance: |ℒ(ψ(θ, α e_g)) − ℒ(θ)| / (|α|‖g‖‖ξ_g‖ + ½α²h‖ξ_g‖² + ε|ℒ|)
    gradient:   |⟨g, ξ_g⟩| / (‖g‖‖ξ_g‖)
    hessian:    ‖Hξ_g + (∂ξ_g)ᵀ g‖ / (‖Hξ_g‖ + ‖(∂ξ_g)ᵀ g‖ + h‖ξ_g‖)

    with h = ‖H u‖ for a random unit u (the Hessian's scale). A symmetric group gives residuals at
    round-off level; a non-symmetric one gives residuals of order one. The Hessian identity is the
    gradient of ⟨∇ℒ, ξ_g⟩ = 0, hence the transpose (it matters where ∂ξ_g is not symmetric, e.g. rotations).
    """

    invariance: Float[Array, " G"]
    gradient: Float[Array, " G"]
    hessian: Float[Array, " G"]

    def max(self) -> Float[Array, " G"]:
        return jnp.maximum(jnp.maximum(self.invariance, self.gradient), self.hessian)

    def holds(self, tol: float = 1e-6) -> jax.Array:
        return self.max() <= tol


def constraints(
    sym: AbstractSymmetry,
    loss: Callable[[PyTree], Scalar],
    params: PyTree,
    *,
    alpha: float = 0.3,
    key: jax.Array | None = None,
    batch_size: int | None = 64,
) -> Constraints:
    """The invariance, gradient-constraint and Hessian-constraint residuals of every group.

    Hessian products are HVPs (forward-over-reverse), one per group, batched ``batch_size`` at a time
    with ``jax.lax.map``, so memory stays at ``batch_size`` parameter vectors.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> loss = lambda p: jnp.sum(jax.nn.log_softmax(p["w"])[0] ** 2)
        >>> import jax
        >>> sym = nj.symmetry.Translation({"w": jnp.array([True, True, True])})
        >>> res = nj.symmetry.constraints(sym, loss, {"w": jnp.array([0.1, -0.4, 0.7])})
        >>> bool(res.holds(1e-8)[0])
        True
    """
    sym.check(params)

    def f(p):
        return check_scalar(loss(p), "the loss")

    value, g = jax.value_and_grad(f)(params)
    dtype = jnp.result_type(*jax.tree.leaves(params), float)
    eps = jnp.finfo(dtype).eps

    def hvp(w):
        return jax.jvp(jax.grad(f), (params,), (w,))[1]

    key = jax.random.PRNGKey(0) if key is None else key
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    u = jax.tree.unflatten(treedef, [jax.random.normal(k, jnp.shape(x), dtype) for k, x in zip(keys, leaves, strict=True)])
    u = jax.tree.map(lambda x: x / jnp.sqrt(tree_sq_norm(u)), u)
    h_scale = jnp.sqrt(tree_sq_norm(hvp(u)))
    g_norm = jnp.sqrt(tree_sq_norm(g))

    def one(group):
        xi = sym.generator(params, group)
        xi_norm = jnp.sqrt(tree_sq_norm(xi))
        a = jnp.asarray(alpha, dtype) * jax.nn.one_hot(group, sym.n_groups, dtype=dtype)
        moved = f(sym.act(params, a))
        inv = jnp.abs(moved - value) / (alpha * g_norm * xi_norm + 0.5 * alpha**2 * h_scale * xi_norm**2 + eps * jnp.abs(value) + eps)
        grad_res = jnp.abs(tree_vdot(g, xi)) / (g_norm * xi_norm + eps)
        h_xi = hvp(xi)
        # (∂ξ_g)ᵀ g = ∇_q ⟨g, ξ_g(q)⟩ with g held fixed (a VJP): differentiating ⟨∇ℒ(q), ξ_g(q)⟩ = 0
        # gives Hξ_g + (∂ξ_g)ᵀ g = 0. For masked symmetries ∂ξ_g is diagonal and the transpose is moot,
        # but for e.g. a rotation (∂ξ = J antisymmetric) the untransposed JVP is wrong.
        dxi_g = jax.grad(lambda q_: tree_vdot(g, sym.generator(q_, group)))(params)
        r = jax.tree.map(jnp.add, h_xi, dxi_g)
        denom = jnp.sqrt(tree_sq_norm(h_xi)) + jnp.sqrt(tree_sq_norm(dxi_g)) + h_scale * xi_norm + eps
        return inv, grad_res, jnp.sqrt(tree_sq_norm(r)) / denom

    # batch_size > n_groups would make lax.map trace and compile `one` twice (an empty scan plus the
    # remainder), more than doubling the compile time of the common few-group case.
    if batch_size is not None:
        batch_size = min(batch_size, sym.n_groups)
    inv, grad_res, hess = jax.lax.map(one, jnp.arange(sym.n_groups), batch_size=batch_size)
    return Constraints(inv, grad_res, hess)
