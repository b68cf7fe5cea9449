"""Discrete training recorder: real optax training, recorded group by group, with its theory in-scan.

One jit-compiled ``lax.scan`` trains a :class:`~noether_jax.models.Network` with the optax optimiser
of a learning rule on PRNG mini-batches, and at every step

* measures, for every group of every symmetry, the quantity its conservation law is about,
  X = ``sym.pair(θ, θ)``: ⟨θ_𝒜, 𝟙⟩ (translation), |θ_𝒜|² (scale), |θ_𝒜₁|² − |θ_𝒜₂|² (rescale);
* advances the closed-form theory of THEORY.md §3 with the step's own forcing (the applied
  mini-batch gradient |g_𝒜|² for β = 0, the velocity |θ̇_𝒜|² = |θₙ₊₁ − θₙ|²/η² for β > 0), by stable
  decaying recursions (:mod:`noether_jax.theory`), and the exact discrete SGD identity;
* advances NLD eq. 17 for r⁴ = |θ_𝒜|⁴ of every scale group, with forcing |ĝ|² = |θ_𝒜|²|g_𝒜|².

Only ``steps // save_every + 1`` save points are kept: memory does not grow with the number of
steps. Everything is a pure function of ``(params, state, hyper, key)``, so a whole grid of runs is
one ``jax.vmap`` (see :func:`noether_jax.sweep`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

from . import _theory as theory
from ._data import check_batch_size, sample_batch
from ._guard import lambda_max
from ._misc import check_hyper
from ._models import Network, cross_entropy
from ._rules import sgd
from ._symmetry import MaskedSymmetry

KINDS = ("translation", "scale", "rescale")


class Hyper(eqx.Module):
    """The hyperparameters of one run, as arrays (so they can be vmapped): η, β and coupled λ.

    Example:
        >>> import noether_jax as nj
        >>> nj.Hyper(lr=0.1, momentum=0.9, weight_decay=1e-4).momentum.tolist()
        0.9
    """

    lr: Array
    momentum: Array
    weight_decay: Array

    def __init__(self, lr: ArrayLike, momentum: ArrayLike = 0.0, weight_decay: ArrayLike = 0.0):
        self.lr = check_hyper("lr", lr, lower=0.0, fix="Use a positive learning rate.")
        self.momentum = check_hyper("momentum", momentum, lower=0.0, upper=1.0, lower_open=False, fix="Use 0 ≤ β < 1.")
        self.weight_decay = check_hyper("weight_decay", weight_decay, lower=0.0, lower_open=False, fix="Use λ ≥ 0.")


def sgd_optimizer(hyper: Hyper) -> optax.GradientTransformation:
    """The default optimiser: heavy ball with coupled weight decay (:func:`noether_jax.rules.sgd`)."""
    return sgd(hyper.lr, hyper.momentum, hyper.weight_decay).optimizer()


class Record(eqx.Module):
    """What :meth:`Recorder.run` returns: series at the save points, and the final weights.

    Attributes:
        step: the step index n of each save point (t = nη).
        loss: mean mini-batch training loss over the steps since the previous save point.
        measured: kind → (S, G) measured X for every group.
        theory: kind → (S, G) continuous prediction (NM eqs. 18–20 for β = 0, the driven damped
            oscillator for β > 0), fed the run's own forcing.
        identity: kind → (S, G) exact discrete SGD identity (exact for β = 0 only).
        nld_r4: (S, G_scale) NLD eq. 17 prediction of r⁴ = |θ_𝒜|⁴ (empty when there is no scale group).
        grad_sq: kind → (S, G) ``sym.pair(g, g)`` of the last applied mini-batch gradient.
        params, state: the final parameters and model state.
        diverged_step: first step whose loss or parameters were not finite (−1: none).
        sharpness_step, lambda_max: the steps n at which λ_max of the Hessian of the mini-batch
            ℒ + (λ/2)|θ|² was estimated (Lanczos, HVPs only) and the estimates, every
            ``sharpness_every`` steps and at the end; empty when ``sharpness_every = 0``. A step with
            η·λ_max > 2(1+β) is beyond the edge of stability (:func:`noether_jax.stochastic.edge_of_stability`).
    """

    step: Int[Array, " S"]
    loss: Float[Array, " S"]
    measured: dict[str, Float[Array, "S G"]]
    theory: dict[str, Float[Array, "S G"]]
    identity: dict[str, Float[Array, "S G"]]
    nld_r4: Float[Array, "S Gs"]
    grad_sq: dict[str, Float[Array, "S G"]]
    params: PyTree
    state: PyTree
    diverged_step: Int[Array, ""]
    sharpness_step: Int[Array, " P"]
    lambda_max: Float[Array, " P"]

    @property
    def diverged(self) -> Bool[Array, ""]:
        return self.diverged_step >= 0


class Recorder(eqx.Module):
    """Train ``net`` on ``(x, y)`` for ``steps`` steps and record its conservation laws.

    Args:
        net: the pure network (:func:`noether_jax.models.functional`).
        symmetries: kind → :class:`~noether_jax.symmetry.MaskedSymmetry`, kinds among
            ``translation``, ``scale``, ``rescale`` (e.g. ``nj.symmetry.detect(...).symmetries``); a
            tuple of symmetries stands for the concatenation of their groups (a kernel's rows and
            columns belong to different rescale units, so one mask cannot hold both).
        x, y: the training set; mini-batches of ``batch_size`` are drawn without replacement per step.
        batch_size, steps, save_every: static (they set shapes).
        optimizer: ``hyper -> optax.GradientTransformation``; default heavy ball with coupled weight
            decay. The theory series assume that default.
        post_update: optional ``(params, params0) -> params`` applied after every step (e.g. the
            constrained-norm ablation of NLD Fig. 3).
        loss: ``(logits, y) -> scalar``; default softmax cross-entropy.
        divergence_factor: a step whose loss or parameters are not finite, or whose loss exceeds
            ``divergence_factor`` × the initial loss, marks the run as diverged (``diverged_step``).
        sharpness_every: estimate λ_max of the mini-batch Hessian (``sharpness_iters`` Lanczos steps
            on a batch drawn from its own key, so training is unchanged) before every
            ``sharpness_every`` steps and after the last; a multiple of ``save_every``; 0 (default): off.
            Costs about 2·``sharpness_iters`` gradients per estimate.

    Example:
        >>> import jax, noether_jax as nj
        >>> from noether_jax import models, data
        >>> ds = data.digits()
        >>> net, params, state = models.functional(models.make_model("mlp", width=8))
        >>> found = nj.symmetry.detect(net, params, (ds.x_train[:64], ds.y_train[:64]))
        >>> rec = nj.Recorder(net, found.symmetries, ds.x_train, ds.y_train, batch_size=32, steps=20, save_every=10)
        >>> out = rec.run(params, state, nj.Hyper(0.1), jax.random.key(0))
        >>> out.measured["rescale"].shape, bool(out.diverged)
        ((3, 16), False)
    """

    net: Network = eqx.field(static=True)
    symmetries: dict[str, MaskedSymmetry | tuple[MaskedSymmetry, ...]]
    x: Array
    y: Array
    batch_size: int = eqx.field(static=True)
    steps: int = eqx.field(static=True)
    save_every: int = eqx.field(static=True)
    optimizer: Callable[[Hyper], optax.GradientTransformation] = eqx.field(static=True, default=sgd_optimizer)
    post_update: Callable[[PyTree, PyTree], PyTree] | None = eqx.field(static=True, default=None)
    loss: Callable[[Array, Array], Array] = eqx.field(static=True, default=cross_entropy)
    divergence_factor: float = eqx.field(static=True, default=1e4)
    sharpness_every: int = eqx.field(static=True, default=0)
    sharpness_iters: int = eqx.field(static=True, default=20)

    def __init__(
        self,
        net: Network,
        symmetries: Mapping[str, MaskedSymmetry | tuple[MaskedSymmetry, ...]],
        x: Float[ArrayLike, "n ..."],
        y: Int[ArrayLike, " n"],
        *,
        batch_size: int,
        steps: int,
        save_every: int = 1,
        optimizer: Callable[[Hyper], optax.GradientTransformation] = sgd_optimizer,
        post_update: Callable[[PyTree, PyTree], PyTree] | None = None,
        loss: Callable[[Array, Array], Array] = cross_entropy,
        divergence_factor: float = 1e4,
        sharpness_every: int = 0,
        sharpness_iters: int = 20,
    ):
        unknown = set(symmetries) - set(KINDS)
        if unknown:
            raise ValueError(f"`symmetries` keys must be among {KINDS}; got {sorted(unknown)}.")
        for kind, sym in symmetries.items():
            parts = sym if isinstance(sym, tuple) else (sym,)
            if not parts or not all(isinstance(s, MaskedSymmetry) for s in parts):
                raise TypeError(
                    f"`symmetries[{kind!r}]` must be a MaskedSymmetry (Translation/Scale/Rescale) or a non-empty tuple of them, "
                    f"got {type(sym).__name__}."
                )
        x, y = jnp.asarray(x), jnp.asarray(y)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"`x` and `y` must have the same number of examples, got {x.shape[0]} and {y.shape[0]}.")
        if int(steps) < 1:
            raise ValueError(f"`steps` must be a positive integer, got {steps}.")
        if int(save_every) < 1 or int(steps) % int(save_every):
            raise ValueError(f"`save_every` must be a positive divisor of `steps` ({steps}), got {save_every}.")
        self.net = net
        self.symmetries = {k: symmetries[k] for k in KINDS if k in symmetries}
        self.x, self.y = x, y
        self.batch_size = check_batch_size(int(batch_size), x.shape[0])
        self.steps, self.save_every = int(steps), int(save_every)
        self.optimizer, self.post_update, self.loss = optimizer, post_update, loss
        if not divergence_factor > 1:
            raise ValueError(f"`divergence_factor` must be > 1, got {divergence_factor}.")
        self.divergence_factor = float(divergence_factor)
        if int(sharpness_every) < 0 or (int(sharpness_every) and int(sharpness_every) % self.save_every):
            raise ValueError(f"`sharpness_every` must be 0 (off) or a positive multiple of `save_every` ({self.save_every}), "
                             f"got {sharpness_every}.")
        if int(sharpness_every) and self.steps % int(sharpness_every):
            raise ValueError(f"`sharpness_every` ({sharpness_every}) must divide `steps` ({self.steps}).")
        if int(sharpness_iters) < 1:
            raise ValueError(f"`sharpness_iters` must be a positive integer, got {sharpness_iters}.")
        self.sharpness_every, self.sharpness_iters = int(sharpness_every), int(sharpness_iters)

    @property
    def num_saves(self) -> int:
        return self.steps // self.save_every + 1

    # ----------------------------------------------------------------------------- the run
    def run(self, params: PyTree, state: PyTree, hyper: Hyper, key: PRNGKeyArray) -> Record:
        """Train and record. Pure: jit it, and vmap it over params, state, hyper and key."""
        return _run(self, params, state, hyper, key)


def _laws(kind: str, hyper: Hyper):
    lr, beta, wd = hyper.lr, hyper.momentum, hyper.weight_decay
    first = theory.sgd_law(kind, lr, wd)  # β = 0: NM eqs. 18–20
    osc = theory.heavy_ball_law(kind, lr, jnp.where(beta > 0, beta, 0.5), wd)  # β > 0 (dummy β at β = 0)
    return first, osc, theory.sgd_identity(kind, lr, wd)


def pair(sym: MaskedSymmetry | tuple[MaskedSymmetry, ...], a: PyTree, b: PyTree) -> Array:
    """``sym.pair(a, b)``, concatenated over a tuple of symmetries."""
    if isinstance(sym, tuple):
        return jnp.concatenate([s.pair(a, b) for s in sym])
    return sym.pair(a, b)


def _tree_finite(tree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


@eqx.filter_jit
def _run(rec: Recorder, params, state, hyper: Hyper, key) -> Record:
    syms = rec.symmetries
    opt = rec.optimizer(hyper)
    lr, beta = hyper.lr, hyper.momentum
    use_osc = beta > 0

    def loss_fn(p, s, batch):
        logits, new_s = rec.net(p, s, batch[0], train=True)
        return rec.loss(logits, batch[1]), new_s

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def measure(p):
        return {k: pair(sym, p, p) for k, sym in syms.items()}

    # initial velocity of the modified flow (a fresh optimiser): θ̇(0) = −(g₀ + λθ₀)/(1+β)
    chunk_keys = jax.random.split(key, rec.steps // rec.save_every)
    first_batch = sample_batch(jax.random.split(chunk_keys[0], rec.save_every)[0], rec.x, rec.y, rec.batch_size)
    (loss0, _), g0 = grad_fn(params, state, first_batch)
    max_loss = rec.divergence_factor * jnp.abs(loss0)
    v0 = sgd(lr, beta, hyper.weight_decay).initial_velocity(params, g0)
    laws = {k: _laws(k, hyper) for k in syms}
    x0 = measure(params)
    rate0 = {k: jax.jvp(lambda p, s=s: pair(s, p, p), (params,), (v0,))[1] for k, s in syms.items()}
    law_state = {k: (laws[k][0].init(x0[k]), laws[k][1].init(x0[k], rate0[k]), laws[k][2].init(x0[k])) for k in syms}
    has_scale = "scale" in syms
    r4_law = theory.nld_r4_law(lr, beta, hyper.weight_decay)
    r4_state = r4_law.init(x0["scale"] ** 2) if has_scale else None

    def step(carry, key_n):
        p, s, o, ls, r4s, n, bad = carry
        batch = sample_batch(key_n, rec.x, rec.y, rec.batch_size)
        (loss, new_s), g = grad_fn(p, s, batch)
        upd, o = opt.update(g, o, p)
        p_new = optax.apply_updates(p, upd)
        if rec.post_update is not None:
            p_new = rec.post_update(p_new, params)
        vel = jax.tree.map(lambda a, b: (a - b) / lr, p_new, p)
        new_ls, gsq = {}, {}
        for k, sym in syms.items():
            first, osc, ident = laws[k]
            fs, os_, is_ = ls[k]
            gsq[k] = pair(sym, g, g)
            fs, _ = first.update(fs, gsq[k] if k != "translation" else None)
            os_, _ = osc.update(os_, pair(sym, vel, vel) if k != "translation" else None)
            is_, _ = ident.update(is_, gsq[k] if k != "translation" else None)
            new_ls[k] = (fs, os_, is_)
        if has_scale:
            r4s, _ = r4_law.update(r4s, measure(p)["scale"] * gsq["scale"])
        ok = jnp.isfinite(loss) & (loss <= max_loss) & _tree_finite(p_new)
        bad = jnp.where((bad < 0) & ~ok, n, bad)
        return (p_new, new_s, o, new_ls, r4s, n + 1, bad), (loss, gsq)

    def save(carry):
        p, _, _, ls, r4s, _, _ = carry
        meas = measure(p)
        th = {k: jnp.where(use_osc, ls[k][1].value, ls[k][0].value) for k in syms}
        ident = {k: ls[k][2].value for k in syms}
        r4 = r4s.value if has_scale else jnp.zeros((0,), jnp.result_type(float))
        return meas, th, ident, r4

    def chunk(carry, key_c):
        carry, (losses, gsq) = jax.lax.scan(step, carry, jax.random.split(key_c, rec.save_every))
        return carry, (jnp.mean(losses), save(carry), jax.tree.map(lambda a: a[-1], gsq))

    carry0 = (params, state, opt.init(params), law_state, r4_state, jnp.zeros((), jnp.int32), jnp.full((), -1, jnp.int32))
    first_save = save(carry0)
    fdt = jnp.result_type(float)
    if rec.sharpness_every:
        # an outer scan over blocks of chunks (not a cond per chunk, which vmap would turn into
        # computing λ_max at every save point); its batches come from their own keys
        per = rec.sharpness_every // rec.save_every
        blocks = chunk_keys.reshape((-1, per) + chunk_keys.shape[1:])
        guard_keys = jax.random.split(jax.random.fold_in(key, 0x6e6a), blocks.shape[0] + 1)

        def sharpness(c, gk):
            p, s = c[0], c[1]
            kb, kv = jax.random.split(gk)
            batch = sample_batch(kb, rec.x, rec.y, rec.batch_size)
            return lambda_max(lambda q: loss_fn(q, s, batch)[0], p, weight_decay=hyper.weight_decay, key=kv,
                              iters=rec.sharpness_iters)

        def block(c, inp):
            keys_b, gk = inp
            lam = sharpness(c, gk)
            c, outs = jax.lax.scan(chunk, c, keys_b)
            return c, (lam, outs)

        carry, (lams, outs) = jax.lax.scan(block, carry0, (blocks, guard_keys[:-1]))
        losses, saves, gsq = jax.tree.map(lambda a: a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:]), outs)
        lams = jnp.concatenate([lams, sharpness(carry, guard_keys[-1])[None]])
        sharp_step = jnp.arange(0, rec.steps + 1, rec.sharpness_every)
    else:
        carry, (losses, saves, gsq) = jax.lax.scan(chunk, carry0, chunk_keys)
        lams, sharp_step = jnp.zeros((0,), fdt), jnp.zeros((0,), jnp.int32)

    def stack0(a0, a):
        return jnp.concatenate([a0[None], a], axis=0)

    meas, th, ident, r4 = jax.tree.map(stack0, first_save, saves)
    gsq0 = {k: jnp.full_like(v[0], jnp.nan) for k, v in gsq.items()}
    loss0 = jnp.full((1,), jnp.nan, losses.dtype)
    return Record(
        step=jnp.arange(0, rec.steps + 1, rec.save_every),
        loss=jnp.concatenate([loss0, losses]),
        measured=meas,
        theory=th,
        identity=ident,
        nld_r4=r4,
        grad_sq=jax.tree.map(stack0, gsq0, gsq),
        params=carry[0],
        state=carry[1],
        diverged_step=carry[6],
        sharpness_step=sharp_step,
        lambda_max=lams,
    )


def relative_error(predicted: Float[Array, "S G"], measured: Float[Array, "S G"], floor: float | Array) -> Float[Array, " G"]:
    """Per group: maxₜ |predicted − measured| / max(|measured|, floor)."""
    return jnp.max(jnp.abs(predicted - measured) / jnp.maximum(jnp.abs(measured), floor), axis=0)
