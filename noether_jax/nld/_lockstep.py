"""Several optimisers trained in lockstep on the same mini-batches, recorded group by group (private).

This is the training engine (:func:`noether_jax.training.run`) with K runs and the
:class:`GroupTrack` hook, saving every step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from ..models import Model, cross_entropy, loss_fn
from ..symmetry import MaskedSymmetry, check_scale, group_angles
from ..training import Batches, Engine, Hook, Snapshot, Start, Step, run


class Track(eqx.Module):
    """Per-step series of K runs trained in lockstep on the same mini-batches (run 0: the reference).

    Attributes:
        loss: (K, N) mini-batch training loss of each step.
        r2: (K, N+1, G) |θ_𝒜|² before every step and after the last.
        grad_sq: (K, N, G) |g_𝒜|² of the applied mini-batch loss gradient.
        step_sq: (K, N, G) |θ_𝒜,n+1 − θ_𝒜,n|².
        step_dot: (K, N, G) ⟨θ_𝒜,n, θ_𝒜,n+1 − θ_𝒜,n⟩.
        angle: (K, N+1, G) angle (degrees) between run k's group directions and run 0's.
        accumulator: (K, N+1, G) √G of a :func:`scale_by_group_rms` in run k's state (NaN if none).
        params, state: the final parameters and model state of every run (tuples of K).
        diverged_step: (K,) first step at which each run diverged (−1: none).
        grad_lag: (N, L, G) ⟨g_𝒜,n, g_𝒜,n−k⟩ of run 0 for the lags k = 1 … L (NaN before step k), the
            gradient autocorrelation of consecutive mini-batches; None when ``lags=0``.
    """

    loss: Float[Array, "K N"]
    r2: Float[Array, "K N1 G"]
    grad_sq: Float[Array, "K N G"]
    step_sq: Float[Array, "K N G"]
    step_dot: Float[Array, "K N G"]
    angle: Float[Array, "K N1 G"]
    accumulator: Float[Array, "K N1 G"]
    params: tuple
    state: tuple
    diverged_step: Int[Array, " K"]
    grad_lag: Float[Array, "N L G"] | None = None


def _sqrt_acc(opt_state, n_groups, dtype):
    acc = optax.tree_utils.tree_get(opt_state, "accumulator")
    if acc is None:
        return jnp.full((n_groups,), jnp.nan, dtype)
    return jnp.sqrt(acc)


def lag_history(lags: int, grads: PyTree) -> PyTree:
    """An empty history of the last ``lags`` gradients (for :func:`lag_products`)."""
    return jax.tree.map(lambda a: jnp.zeros((lags, *a.shape), a.dtype), grads)


def lag_products(sym: MaskedSymmetry, g: PyTree, hist: PyTree, seen, dtype) -> tuple[Array, PyTree]:
    """Per group ⟨g_𝒜,n, g_𝒜,n−k⟩ for k = 1 … L from the history of the last L gradients (NaN for the
    k > ``seen`` not seen yet), and the history with g pushed in front."""
    lags = jax.tree.leaves(hist)[0].shape[0]
    lag = jax.vmap(lambda h: sym.pair(g, h))(hist).astype(dtype)
    lag = jnp.where((jnp.arange(lags) < seen)[:, None], lag, jnp.nan)
    return lag, jax.tree.map(lambda h, x: jnp.concatenate([x[None].astype(h.dtype), h[:-1]]), hist, g)


class GroupTrack(Hook):
    """Per run and group: |θ_𝒜|², the angle to run 0, √G of a group-RMSProp state, and of the last step
    |g_𝒜|², |Δθ_𝒜|² and ⟨θ_𝒜, Δθ_𝒜⟩."""

    sym: MaskedSymmetry
    lags: int = eqx.field(static=True, default=0)

    def init(self, start: Start):
        k, g = len(start.params), self.sym.n_groups
        dtype = start.loss.dtype
        last = jnp.full((3, k, g), jnp.nan, dtype)
        if not self.lags:
            return last
        hist = lag_history(self.lags, start.grads[0])
        return {"last": last, "hist": hist, "lag": jnp.full((self.lags, g), jnp.nan, dtype), "seen": jnp.zeros((), jnp.int32)}

    def step(self, state, info: Step):
        rows = []
        for p, p_new, g in zip(info.params, info.new_params, info.grads, strict=True):
            d = jax.tree.map(jnp.subtract, p_new, p)
            rows.append(jnp.stack([self.sym.pair(g, g), self.sym.pair(d, d), self.sym.pair(p, d)]))
        if not self.lags:
            return jnp.stack(rows, axis=1).astype(state.dtype)
        last = jnp.stack(rows, axis=1).astype(state["last"].dtype)
        lag, hist = lag_products(self.sym, info.grads[0], state["hist"], state["seen"], last.dtype)
        return {"last": last, "hist": hist, "lag": lag, "seen": state["seen"] + 1}

    def save(self, state, snap: Snapshot):
        ps = snap.params
        dtype = (state["last"] if self.lags else state).dtype
        r2 = jnp.stack([self.sym.group_norms(p) for p in ps])
        ang = jnp.stack([group_angles(self.sym, p, ps[0]) for p in ps])
        acc = jnp.stack([_sqrt_acc(o, self.sym.n_groups, dtype) for o in snap.opt_states])
        if not self.lags:
            return {"r2": r2, "angle": ang, "accumulator": acc, "last": state}
        return {"r2": r2, "angle": ang, "accumulator": acc, "last": state["last"], "lag": state["lag"]}


def lockstep(
    net: Model,
    sym: MaskedSymmetry,
    x: Float[Array, "n ..."],
    y: Int[Array, " n"],
    runs: Sequence[tuple[PyTree, optax.GradientTransformation, Callable | None]],
    state: PyTree,
    key: PRNGKeyArray,
    *,
    steps: int,
    batch_size: int,
    loss: Callable[[Array, Array], Array] = cross_entropy,
    lags: int = 0,
) -> Track:
    """Train K runs ``(params0, optimizer, post_update)`` in lockstep on the same mini-batches.

    ``lags``: also record run 0's gradient inner products ⟨g_𝒜,n, g_𝒜,n−k⟩ for k = 1 … ``lags``
    (``Track.grad_lag``; the history costs ``lags`` copies of the gradient).

    Pure and jit-able (call it inside ``jax.jit`` with the optimisers built there to vmap over
    hyperparameters); every step is recorded per group (:class:`Track`).

    Example:
        >>> import jax, optax, noether_jax as nj
        >>> from noether_jax import models, data
        >>> ds = data.digits()
        >>> net, params, state = models.functional(models.make_model("cnn_bn", width=2))
        >>> sym = nj.nld.cnn_scale_symmetry(params)
        >>> tr = nj.nld.lockstep(net, sym, ds.x_train, ds.y_train, [(params, optax.sgd(0.1), None)] * 2, state,
        ...                      jax.random.key(0), steps=3, batch_size=16)
        >>> tr.r2.shape, bool(tr.angle.max() < 1e-3)    # identical runs (up to arccos round-off)
        ((2, 4, 6), True)
    """
    sym = check_scale(sym)
    engine = Engine(loss_fn(net, loss=loss), [r[1] for r in runs], Batches(x, y, batch_size=batch_size),
                    post_updates=[r[2] for r in runs], hooks={"track": GroupTrack(sym, lags)})
    out = run(engine, [r[0] for r in runs], [state] * len(runs), key, steps=steps, save_every=1)
    s = out.saved["track"]
    last = jnp.moveaxis(s["last"][1:], 0, 2)  # (3, K, N, G)
    t = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731  (S, K, G) -> (K, S, G)
    return Track(out.loss[:, 1:], t(s["r2"]), last[0], last[1], last[2], t(s["angle"]), t(s["accumulator"]),
                 out.params, out.states, out.diverged_step, s["lag"][1:] if lags else None)
