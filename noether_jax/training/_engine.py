"""The one training engine of the library: one jit-able, vmappable ``lax.scan``.

Everything that trains a model here runs it: the :class:`~noether_jax.Recorder` (and so every sweep
member), the lockstep comparisons of Noether's Learning Dynamics, the discrete SGD ensembles of the
stochastic module, the demo and the flow comparisons. In the jax-md style it is a pair
``engine.init(...) -> state`` and ``engine.step(state, key) -> state``, and :func:`run` scans them
with save points:

* mini-batches from :class:`Batches` (PRNG, without replacement; or the full set as it is);
* K runs in lockstep on the same mini-batches (K = 1 for plain training), each with its own optax
  transformation and optional post-update (e.g. a norm constraint);
* divergence detection per run (a non-finite or exploding loss, or non-finite parameters);
* ``hooks``: small objects that fold per-step quantities into a state and record per-group series
  at the save points (the conservation laws, group norms, angles, ...);
* an optional edge-of-stability guard: λ_max of the mini-batch Hessian by Lanczos every
  ``sharpness_every`` steps, on batches of its own (training is bit for bit unchanged).

Only ``steps // save_every + 1`` save points are kept: memory does not grow with the steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree

from .._tree import tree_finite
from ..data import sample_batch
from ..rules import EdgeOfStability
from ._guard import StabilityGuard, lambda_max

LossFn = Callable[[PyTree, PyTree, tuple[Array, Array]], tuple[Array, PyTree]]
_GUARD_STREAM = 0x6E6A  # the guard's batches come from fold_in(key, _GUARD_STREAM)


def batch_key(key: PRNGKeyArray, step: ArrayLike) -> PRNGKeyArray:
    """The PRNG key of step ``step``'s mini-batch in a run with key ``key``: ``fold_in(key, step)``."""
    return jax.random.fold_in(key, step)


class Batches(eqx.Module):
    """Where a run's mini-batches come from: ``batch_size`` examples drawn without replacement per
    step (:func:`noether_jax.data.sample_batch`), or, with ``batch_size=None`` or the data size, the full
    set as it is (full-batch gradient descent: no sampling; a mean over the batch does not depend on its order).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from noether_jax.training import Batches
        >>> b = Batches(jnp.arange(10.0)[:, None], jnp.arange(10), batch_size=4)
        >>> b.sample(jax.random.key(0))[0].shape, Batches(jnp.ones((3, 2)), jnp.zeros(3)).full
        ((4, 1), True)
    """

    x: Array
    y: Array
    batch_size: int = eqx.field(static=True)
    full: bool = eqx.field(static=True)

    def __init__(self, x: ArrayLike, y: ArrayLike, *, batch_size: int | None = None):
        from .._validate import batch_size as check_batch

        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        n = int(self.x.shape[0])
        if int(self.y.shape[0]) != n:
            raise ValueError(f"`x` and `y` must have the same number of examples, got {n} and {int(self.y.shape[0])}.")
        self.batch_size = n if batch_size is None else check_batch(batch_size, n)
        self.full = self.batch_size == n

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def sample(self, key: PRNGKeyArray) -> tuple[Array, Array]:
        if self.full:
            return self.x, self.y
        return sample_batch(key, self.x, self.y, self.batch_size)


class Start(NamedTuple):
    """What hooks see before the first step: every run's θ₀, model state, fresh optimiser state, and
    the loss and gradient of the first mini-batch (the one step 0 applies)."""

    params: tuple
    states: tuple
    opt_states: tuple
    loss: Float[Array, " K"]
    grads: tuple


class Step(NamedTuple):
    """What hooks see of one step n → n+1: the batch, every run's loss and gradient at θₙ, θₙ, θₙ₊₁,
    and the new model and optimiser states."""

    n: Int[Array, ""]
    batch: tuple[Array, Array]
    loss: Float[Array, " K"]
    grads: tuple
    params: tuple
    new_params: tuple
    new_states: tuple
    opt_states: tuple


class Snapshot(NamedTuple):
    """What hooks see at a save point: every run's parameters, model and optimiser states."""

    params: tuple
    states: tuple
    opt_states: tuple


class Hook(eqx.Module):
    """Fold per-step quantities into a state (:meth:`step`) and record at save points (:meth:`save`).

    Subclass it; the defaults keep no state. ``save`` is called at step 0 and after every
    ``save_every`` steps, and its output (any pytree of arrays) is stacked over the save points;
    ``finish`` is called once on the state after the last step (``Training.final``).
    """

    def init(self, start: Start) -> Any:
        return None

    def step(self, state: Any, info: Step) -> Any:
        return state

    def save(self, state: Any, snap: Snapshot) -> Any:
        return None

    def finish(self, state: Any) -> Any:
        return None


class SaveParams(Hook):
    """Record the parameters of run ``run`` (default 0) at every save point."""

    run: int = eqx.field(static=True, default=0)

    def save(self, state, snap):
        return snap.params[self.run]


class LastStep(Hook):
    """Record ``fn(step_info)`` of the last step before each save point (NaN-free zeros at step 0)."""

    fn: Callable[[Step], PyTree] = eqx.field(static=True)
    like: Callable[[Start], PyTree] = eqx.field(static=True)

    def init(self, start):
        return jax.tree.map(jnp.zeros_like, self.like(start))

    def step(self, state, info):
        return self.fn(info)

    def save(self, state, snap):
        return state


class EngineState(eqx.Module):
    """The carry of the scan: every run's parameters and states, the hooks' states, the step count,
    the loss accumulated since the last save, the divergence bookkeeping, and the anchors θ₀ that
    post-updates may use."""

    params: tuple
    states: tuple
    opt_states: tuple
    hooks: dict
    n: Int[Array, ""]
    loss_sum: Float[Array, " K"]
    max_loss: Float[Array, " K"]
    diverged_step: Int[Array, " K"]
    anchors: tuple


class Engine(eqx.Module):
    """K runs of ``loss`` in lockstep on the same mini-batches (see the module docstring).

    Args:
        loss: ``(params, state, (x, y)) -> (scalar, new_state)`` (e.g. :func:`noether_jax.models.loss_fn`).
        optimizers: one optax transformation per run.
        data: the :class:`Batches`.
        post_updates: per run, ``None`` or ``(params, params0) -> params`` applied after every step.
        hooks: name → :class:`Hook`.
        divergence_factor: a loss above this × |first loss| marks the run as diverged.
    """

    loss: LossFn = eqx.field(static=True)
    optimizers: tuple = eqx.field(static=True)
    data: Batches
    post_updates: tuple = eqx.field(static=True)
    hooks: dict
    divergence_factor: float = eqx.field(static=True)

    def __init__(self, loss: LossFn, optimizers: Sequence[optax.GradientTransformation], data: Batches, *,
                 post_updates: Sequence[Callable | None] | None = None, hooks: Mapping[str, Hook] | None = None,
                 divergence_factor: float = 1e4):
        self.loss = loss
        self.optimizers = tuple(optimizers)
        for i, o in enumerate(self.optimizers):
            if not isinstance(o, optax.GradientTransformation):
                raise TypeError(f"optimizer {i} must be an optax.GradientTransformation, got {type(o).__name__}.")
        self.data = data
        self.post_updates = tuple(post_updates) if post_updates is not None else (None,) * len(self.optimizers)
        if len(self.post_updates) != len(self.optimizers):
            raise ValueError("give one post_update (or None) per optimiser.")
        self.hooks = dict(hooks or {})
        if not divergence_factor > 1:
            raise ValueError(f"`divergence_factor` must be > 1, got {divergence_factor}.")
        self.divergence_factor = float(divergence_factor)

    @property
    def n_runs(self) -> int:
        return len(self.optimizers)

    def _grads(self, params, states, batch):
        grad_fn = jax.value_and_grad(self.loss, has_aux=True)
        out = [grad_fn(p, s, batch) for p, s in zip(params, states, strict=True)]
        losses = jnp.stack([o[0][0] for o in out])
        return losses, tuple(o[0][1] for o in out), tuple(o[1] for o in out)

    def init(self, params: Sequence[PyTree], states: Sequence[PyTree], key: PRNGKeyArray) -> EngineState:
        """The state before step 0 (hooks see the loss and gradient of step 0's batch)."""
        params, states = tuple(params), tuple(states)
        opt_states = tuple(o.init(p) for o, p in zip(self.optimizers, params, strict=True))
        losses, _, grads = self._grads(params, states, self.data.sample(batch_key(key, 0)))
        start = Start(params, states, opt_states, losses, grads)
        hooks = {k: h.init(start) for k, h in self.hooks.items()}
        k = self.n_runs
        return EngineState(params, states, opt_states, hooks, jnp.zeros((), jnp.int32), jnp.zeros((k,), losses.dtype),
                           self.divergence_factor * jnp.abs(losses), jnp.full((k,), -1, jnp.int32), params)

    def step(self, es: EngineState, key: PRNGKeyArray) -> EngineState:
        """One optimiser step of every run, on the mini-batch of step n drawn from ``batch_key(key, n)``."""
        batch = self.data.sample(batch_key(key, es.n))
        losses, new_states, grads = self._grads(es.params, es.states, batch)
        new_params, opt_states = [], []
        for i, (opt, post) in enumerate(zip(self.optimizers, self.post_updates, strict=True)):
            upd, o = opt.update(grads[i], es.opt_states[i], es.params[i])
            p = optax.apply_updates(es.params[i], upd)
            if post is not None:
                p = post(p, es.anchors[i])
            new_params.append(p)
            opt_states.append(o)
        new_params, opt_states = tuple(new_params), tuple(opt_states)
        info = Step(es.n, batch, losses, grads, es.params, new_params, new_states, opt_states)
        hooks = {k: h.step(es.hooks[k], info) for k, h in self.hooks.items()}
        ok = jnp.isfinite(losses) & (losses <= es.max_loss) & jnp.stack([tree_finite(p) for p in new_params])
        diverged = jnp.where((es.diverged_step < 0) & ~ok, es.n, es.diverged_step)
        return EngineState(new_params, new_states, opt_states, hooks, es.n + 1, es.loss_sum + losses, es.max_loss,
                           diverged, es.anchors)

    def save(self, es: EngineState) -> dict:
        snap = Snapshot(es.params, es.states, es.opt_states)
        return {k: h.save(es.hooks[k], snap) for k, h in self.hooks.items()}


class Sharpness(eqx.Module):
    """The edge-of-stability guard of a run: λ_max by ``iters`` Lanczos steps every ``every`` steps (a
    multiple of ``save_every`` dividing ``steps``) and after the last, on run 0, with ``edge`` (the
    rule's threshold and preconditioner; None: λ_max of the plain Hessian, no threshold)."""

    every: int = eqx.field(static=True)
    iters: int = eqx.field(static=True, default=20)
    edge: EdgeOfStability | None = None


class Training(eqx.Module):
    """What :func:`run` returns.

    Attributes:
        step: (S,) the step index of every save point (0, save_every, ..., steps).
        loss: (K, S) mean mini-batch loss of each run over the steps since the previous save point
            (NaN at step 0).
        saved: hook name → its save outputs stacked over the save points (leading axis S).
        params, states, opt_states: every run's final parameters, model and optimiser states.
        diverged_step: (K,) first step whose loss or parameters were not finite or whose loss
            exploded (−1: none).
        guard: the edge-of-stability guard of run 0 (λ_max along the run; empty without ``sharpness``).
        final: hook name → :meth:`Hook.finish` of its state after the last step (None for most hooks).
    """

    step: Int[Array, " S"]
    loss: Float[Array, "K S"]
    saved: dict
    params: tuple
    states: tuple
    opt_states: tuple
    diverged_step: Int[Array, " K"]
    guard: StabilityGuard
    final: dict


def _check_run(steps: int, save_every: int, sharpness: Sharpness | None) -> None:
    from .._validate import integer

    integer("steps", steps)
    integer("save_every", save_every)
    if steps % save_every:
        raise ValueError(f"`save_every` ({save_every}) must divide `steps` ({steps}).")
    if sharpness is not None:
        every = integer("sharpness_every", sharpness.every)
        if every % save_every or steps % every:
            raise ValueError(f"`sharpness_every` ({every}) must be a multiple of `save_every` ({save_every}) "
                             f"that divides `steps` ({steps}).")
        integer("sharpness_iters", sharpness.iters)


def run(engine: Engine, params: Sequence[PyTree], states: Sequence[PyTree], key: PRNGKeyArray, *, steps: int,
        save_every: int = 1, sharpness: Sharpness | None = None) -> Training:
    """Train every run of ``engine`` for ``steps`` steps from ``params``/``states`` (one per run).

    Pure: jit it, vmap it. Called outside jit it compiles itself as one program. The batch of step n
    comes from :func:`batch_key` ``(key, n)``, whatever ``save_every``: runs of different save intervals
    (a Recorder, a lockstep comparison, a sweep member) see the same mini-batches.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from noether_jax import training
        >>> loss = lambda p, s, b: (jnp.mean((b[0] @ p - b[1]) ** 2), s)
        >>> data = training.Batches(jnp.eye(3), jnp.ones(3))          # the full batch
        >>> eng = training.Engine(loss, [optax.sgd(0.5)], data, hooks={"w": training.SaveParams()})
        >>> out = training.run(eng, [jnp.zeros(3)], [{}], jax.random.key(0), steps=40, save_every=20)
        >>> out.saved["w"].shape, [round(float(v), 4) for v in out.params[0]]
        ((3, 3), [1.0, 1.0, 1.0])
    """
    _check_run(steps, save_every, sharpness)
    return _run(engine, tuple(params), tuple(states), key, steps, save_every, sharpness)


@eqx.filter_jit
def _run(engine: Engine, params: tuple, states: tuple, key: PRNGKeyArray, steps: int, save_every: int,
         sharpness: Sharpness | None) -> Training:
    n_chunks = steps // save_every
    es = engine.init(params, states, key)
    first = engine.save(es)

    def chunk(es, _):
        es = jax.lax.scan(lambda e, _: (engine.step(e, key), None), es, None, length=save_every)[0]
        mean = es.loss_sum / save_every
        es = eqx.tree_at(lambda e: e.loss_sum, es, jnp.zeros_like(es.loss_sum))
        return es, (mean, engine.save(es))

    dtype = es.loss_sum.dtype
    if sharpness is not None:
        # an outer scan over blocks of chunks (not a cond per chunk, which vmap would turn into computing
        # λ_max at every save point); the guard's batches come from keys of their own
        per = sharpness.every // save_every
        n_blocks = n_chunks // per
        guard_keys = jax.random.split(jax.random.fold_in(key, _GUARD_STREAM), n_blocks + 1)

        def probe(es, gk):
            kb, kv = jax.random.split(gk)
            batch = engine.data.sample(kb)
            return _lambda_max(engine, es, batch, kv, sharpness)

        def block(es, gk):
            lam = probe(es, gk)
            es, outs = jax.lax.scan(chunk, es, None, length=per)
            return es, (lam, outs)

        es, (lams, outs) = jax.lax.scan(block, es, guard_keys[:-1])
        means, saves = jax.tree.map(lambda a: a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:]), outs)
        lams = jnp.concatenate([lams, probe(es, guard_keys[-1])[None]])
        sharp_step = jnp.arange(0, steps + 1, sharpness.every)
    else:
        es, (means, saves) = jax.lax.scan(chunk, es, None, length=n_chunks)
        lams, sharp_step = jnp.zeros((0,), dtype), jnp.zeros((0,), jnp.int32)
    saved = jax.tree.map(lambda a0, a: jnp.concatenate([jnp.asarray(a0)[None], a], axis=0), first, saves)
    loss = jnp.concatenate([jnp.full((1, engine.n_runs), jnp.nan, dtype), means], axis=0).T
    edge = sharpness.edge if sharpness is not None else None
    guard = StabilityGuard.from_edge(lams, edge, sharp_step, es.diverged_step[0])
    final = {k: h.finish(es.hooks[k]) for k, h in engine.hooks.items()}
    return Training(jnp.arange(0, steps + 1, save_every), loss, saved, es.params, es.states, es.opt_states,
                    es.diverged_step, guard, final)


def _lambda_max(engine: Engine, es: EngineState, batch, key, sharpness: Sharpness) -> Array:
    p, s, o = es.params[0], es.states[0], es.opt_states[0]
    edge = sharpness.edge
    wd = jnp.zeros((), jnp.result_type(float)) if edge is None else edge.weight_decay
    pre = None
    if edge is not None and edge.preconditioner is not None:  # an adaptive rule's fresh state needs the gradient
        extra = {"grad": jax.grad(lambda q: engine.loss(q, s, batch)[0])(p)} if getattr(edge.preconditioner, "needs_grad", False) else {}
        pre = edge.preconditioner(p, o, **extra)
    return lambda_max(lambda q: engine.loss(q, s, batch)[0], p, weight_decay=wd, preconditioner=pre, key=key,
                      iters=sharpness.iters)
