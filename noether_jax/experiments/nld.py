"""Experiments of Noether's Learning Dynamics on real training, each returning a typed result.

* :func:`eq17_score`: NLD eq. 17 (and its velocity-forced form) scored per group on a lockstep track;
* :func:`match_vs_effective_lr`: how well the mapped RMSProp tracks SGD as a function of η/r²;
* :func:`init_scale_ablation` (NLD Fig. 1b), :func:`constrained_ablation` (NLD Fig. 3);
* :func:`adam_norm_check`: the norm of normalised layers under Adam and AdamW, by Gould–Tanaka and by
  ``theory.adam_norm`` without and with the preconditioner's tilt measured in the same run (:class:`AdamTilt`);
* :func:`ksb_report`: kinetic symmetry breaking of several learning rules along real runs;
* :func:`run_nld`: all of it for one configuration (the ``noether-jax nld`` command).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray, PyTree

from .. import data as _data
from .. import models as _models
from .. import theory
from ..models import Model, cross_entropy
from ..nld import (
    FORCINGS,
    FORMS,
    Accumulate,
    Comparison,
    GroupTrack,
    Track,
    cnn_scale_symmetry,
    compare_rmsprop,
    constrain_norm,
    effective_learning_rate,
    eq17_errors,
    lockstep,
    predict_eq17,
    predict_r4_velocity,
    rmsprop_match,
)
from ..rules import Hyper, adam, adamw, heavy_ball, preconditioned, rmsprop, sgd
from ..symmetry import MaskedSymmetry, breaks_symmetry, check_scale, kinetic_symmetry_breaking, normalise_groups, parts
from ..training import Batches, Engine, Hook, LastStep, Recorder, StabilityGuard, lambda_max, run


def _dict(obj: Any) -> dict[str, Any]:
    """The public numbers of a result dataclass (arrays and tracks left out)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, Track | Comparison) or (isinstance(v, np.ndarray | jax.Array) and np.ndim(v) > 1):
            continue
        out[f.name] = v.to_dict() if hasattr(v, "to_dict") else (np.asarray(v).tolist() if isinstance(v, np.ndarray | jax.Array) else v)
    return out


# ------------------------------------------------------------------------------------------ eq. 17
@dataclasses.dataclass
class Eq17Score:
    """NLD eq. 17 on one run of a lockstep track, per group (relative errors in r², the library's metric).

    ``forcing_ratio`` is μ²r²|θ̇|²/|ĝ|² averaged over the run: 1 for a slowly varying gradient, and
    (1−β)/(1+β) (``noise_limit_ratio``) for pure mini-batch noise averaged by momentum.

    With the gradient's lag products recorded (``lockstep(..., lags=L)``), every forcing of
    ``nld.FORCINGS`` in both forms of ``nld.FORMS``: ``forms[forcing][form]`` is its median error;
    ``noise_aware``/``spectral``/``oscillator_median_rel_error`` name the noise-aware and geometric
    forcings (Bernoulli form) and the oscillator fed the measured velocity. NaN without the lags.
    """

    n_groups: int
    median_rel_error: float
    max_rel_error: float
    velocity_forced_median_rel_error: float
    velocity_forced_max_rel_error: float
    forcing_ratio: float
    noise_limit_ratio: float
    median_lr_eff_start: float
    median_lr_eff_end: float
    r2: np.ndarray
    r4: np.ndarray
    r4_velocity: np.ndarray
    noise_aware_median_rel_error: float = float("nan")
    spectral_median_rel_error: float = float("nan")
    lags_median_rel_error: float = float("nan")
    oscillator_median_rel_error: float = float("nan")
    forms: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _dict(self)


#: the gradient lags recorded for the lag-based forcings of eq. 17 (β¹⁶ = 0.19 at β = 0.9)
EQ17_LAGS = 16


def eq17_forms(tr: Track, k: int, *, lr: float, momentum: float, weight_decay: float) -> dict[str, dict[str, float]]:
    """Median (over groups) relative error in r² of every eq.-17 forcing in both forms on run ``k``
    (the lag-based forcings need ``tr.grad_lag``, which is run 0's)."""
    r2 = jnp.asarray(tr.r2[k])
    data = dict(grad_sq=tr.grad_sq[k], step_sq=tr.step_sq[k], grad_lag=tr.grad_lag if k == 0 else None)
    out = {}
    for forcing in FORCINGS:
        if data["grad_lag"] is None and forcing in ("noise_aware", "spectral", "lags"):
            continue
        out[forcing] = {}
        for form in FORMS:
            pred = predict_eq17(forcing, form, r2, lr=lr, momentum=momentum, weight_decay=weight_decay, **data)
            out[forcing][form] = float(np.median(np.asarray(theory.relative_error(pred, r2))))
    return out


def eq17_score(tr: Track, k: int, *, lr: float, momentum: float, weight_decay: float) -> Eq17Score:
    """Score eq. 17 (forcing |ĝ|² = r²|g_𝒜|²) and its velocity-forced form on run ``k`` of ``tr``."""
    r2 = np.asarray(tr.r2[k])
    ghat = r2[:-1] * np.asarray(tr.grad_sq[k])
    vel = r2[:-1] * np.asarray(tr.step_sq[k]) / lr**2
    r4 = np.asarray(theory.predict_nld_r4(r2[0] ** 2, ghat, lr=lr, momentum=momentum, weight_decay=weight_decay))
    r4v = np.asarray(predict_r4_velocity(r2[0] ** 2, vel, lr=lr, momentum=momentum, weight_decay=weight_decay))
    e, ev = np.asarray(eq17_errors(r2, r4)), np.asarray(eq17_errors(r2, r4v))
    forms = eq17_forms(tr, k, lr=lr, momentum=momentum, weight_decay=weight_decay) if tr.grad_lag is not None else None
    pick = lambda f, form="bernoulli": forms[f][form] if forms and f in forms else float("nan")  # noqa: E731
    return Eq17Score(
        int(r2.shape[1]), float(np.median(e)), float(e.max()), float(np.median(ev)), float(ev.max()),
        float(np.mean(vel * (1 - momentum) ** 2) / np.mean(ghat)), float((1 - momentum) / (1 + momentum)),
        float(np.median(effective_learning_rate(r2[0], lr=lr, momentum=momentum))),
        float(np.median(effective_learning_rate(r2[-1], lr=lr, momentum=momentum))), r2, r4, r4v,
        pick("noise_aware"), pick("spectral"), pick("lags"), pick("velocity", "oscillator"), forms,
    )


# ------------------------------------------------------------------------------------------ the RMSProp map vs η/r²
@dataclasses.dataclass
class MatchVsLR:
    """Per learning rate: the worst angle between SGD and its mapped RMSProp (and the control's), the
    median η/r² over the run (not ÷(1−β)), and the worst error of lr/√G against η/r²."""

    lr: np.ndarray
    max_angle_deg: np.ndarray
    median_eta_over_r2: np.ndarray
    control_max_angle_deg: np.ndarray
    lr_eff_max_rel_error: np.ndarray
    steps: int

    def to_dict(self) -> dict[str, Any]:
        return {k: np.asarray(v).tolist() if isinstance(v, np.ndarray) else v for k, v in dataclasses.asdict(self).items()}


@eqx.filter_jit
def _match_vs_lr(net, sym, x, y, params, state, lrs, momentum, weight_decay, key, steps, batch_size, accumulate):
    def one(lr):
        cmp = compare_rmsprop(net, sym, x, y, params, state, Hyper(lr, momentum, weight_decay), key, steps=steps,
                              batch_size=batch_size, accumulate=accumulate)
        m = rmsprop_match(cmp)
        return m.max_angle_deg, m.median_lr_eff * (1.0 - momentum), m.control_max_angle_deg, m.lr_eff_max_rel_error

    return jax.vmap(one)(lrs)


def match_vs_effective_lr(
    net: Model, sym: MaskedSymmetry, x: Array, y: Array, params: PyTree, state: PyTree, key: PRNGKeyArray, *,
    lrs: Sequence[float], momentum: float, weight_decay: float, steps: int, batch_size: int,
    accumulate: Accumulate = "gradient",
) -> MatchVsLR:
    """One vmapped :func:`noether_jax.nld.compare_rmsprop` per learning rate (see :class:`MatchVsLR`)."""
    lrs_ = jnp.asarray(lrs, jnp.result_type(float))
    out = _match_vs_lr(net, sym, x, y, params, state, lrs_, jnp.asarray(momentum, lrs_.dtype),
                       jnp.asarray(weight_decay, lrs_.dtype), key, steps, batch_size, accumulate)
    return MatchVsLR(np.asarray(lrs_), *(np.asarray(v) for v in out), int(steps))


# ------------------------------------------------------------------------------------------ ablations
def full_loss(net: Model, params: PyTree, state: PyTree, x: Array, y: Array, loss=cross_entropy) -> Array:
    """Training loss on the whole set (BatchNorm in training mode, as during training)."""
    return loss(net(params, state, x, train=True)[0], y)


@dataclasses.dataclass
class InitScaleAblation:
    """NLD Fig. 1b: the normalised filters initialised ``factor``× larger, trained in lockstep with the original.

    Lists hold [×1, ×factor]. ``cumulative_lr_eff`` is the median over groups of Σₙ η/((1−β)r²ₙ).
    """

    factor: float
    initial_loss: list[float]
    initial_loss_rel_diff: float
    final_loss: list[float]
    median_lr_eff_start: list[float]
    median_lr_eff_end: list[float]
    cumulative_lr_eff: list[float]
    track: Track
    lr_eff: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return _dict(self)


def init_scale_ablation(
    net: Model, sym: MaskedSymmetry, x: Array, y: Array, params: PyTree, state: PyTree, hyper: Hyper,
    key: PRNGKeyArray, *, factor: float = 10.0, steps: int, batch_size: int,
) -> InitScaleAblation:
    """Train the original and the ×``factor`` initialisation of the scale groups on the same mini-batches.
    The loss at step 0 is the same (up to BatchNorm's ε); the effective learning rate η/r² starts
    ``factor²``× smaller, and so does training."""
    sym = check_scale(sym)
    big = normalise_groups(sym, params, sym.group_norms(params) * factor**2)
    opt = sgd(lr=hyper.lr, momentum=hyper.momentum, weight_decay=hyper.weight_decay).optimizer()
    tr = eqx.filter_jit(lockstep)(net, sym, x, y, [(params, opt, None), (big, opt, None)], state, key, steps=steps,
                                  batch_size=batch_size)
    eff = np.asarray(effective_learning_rate(tr.r2, lr=hyper.lr, momentum=hyper.momentum))
    loss0 = [float(full_loss(net, p, state, x, y)) for p in (params, big)]
    loss_n = [float(full_loss(net, p, s, x, y)) for p, s in zip(tr.params, tr.state, strict=True)]
    return InitScaleAblation(
        float(factor), loss0, abs(loss0[1] - loss0[0]) / abs(loss0[0]), loss_n,
        [float(np.median(eff[k, 0])) for k in range(2)], [float(np.median(eff[k, -1])) for k in range(2)],
        [float(np.median(eff[k, :-1].sum(0))) for k in range(2)], tr, eff,
    )


@dataclasses.dataclass
class ConstrainedAblation:
    """NLD Fig. 3 over the grid η × β × λ: the final full-training-set loss with the constrained filter norm
    and without (shape (len η, len β, len λ); NaN where a run diverged), |θ_𝒜|² at the end and at the start
    (``r2_start``, shape (groups,)); ``constrained_max_norm_drift``: max over constrained runs and groups of
    |r²_end / r²_start − 1| (zero to rounding where the constraint holds)."""

    lr: np.ndarray
    momentum: np.ndarray
    weight_decay: np.ndarray
    unconstrained: np.ndarray
    constrained: np.ndarray
    unconstrained_r2_end: np.ndarray
    constrained_r2_end: np.ndarray
    r2_start: np.ndarray

    @property
    def constrained_max_norm_drift(self) -> float:
        return float(np.nanmax(np.abs(self.constrained_r2_end / self.r2_start - 1.0)))

    def best(self, momentum: float, weight_decay: float) -> tuple[float, float]:
        """(best unconstrained, best constrained) final loss over η at one (β, λ)."""
        ib = int(np.argmin(np.abs(self.momentum - momentum)))
        il = int(np.argmin(np.abs(self.weight_decay - weight_decay)))
        return float(np.nanmin(self.unconstrained[:, ib, il])), float(np.nanmin(self.constrained[:, ib, il]))

    def to_dict(self) -> dict[str, Any]:
        d = {k: np.asarray(getattr(self, k)).tolist() for k in ("lr", "momentum", "weight_decay", "unconstrained", "constrained")}
        return {**d, "constrained_max_norm_drift": self.constrained_max_norm_drift}


def constrained_ablation(
    net: Model, sym: MaskedSymmetry, x: Array, y: Array, params: PyTree, state: PyTree, key: PRNGKeyArray, *,
    lrs: Sequence[float], momenta: Sequence[float], weight_decays: Sequence[float], steps: int, batch_size: int,
    save_every: int | None = None,
) -> ConstrainedAblation:
    """Constrained filter norm (:func:`noether_jax.nld.constrain_norm` after every step) against
    unconstrained training over η × β × λ, each side one ``vmap`` of :meth:`noether_jax.Recorder.run`
    over :class:`~noether_jax.Hyper` (same init and mini-batches)."""
    sym = check_scale(sym)
    grid = np.array(np.meshgrid(lrs, momenta, weight_decays, indexing="ij"), float).reshape(3, -1)
    hyper = Hyper(jnp.asarray(grid[0]), jnp.asarray(grid[1]), jnp.asarray(grid[2]))
    save_every = steps if save_every is None else save_every
    shape = (len(lrs), len(momenta), len(weight_decays))
    out = {}
    for name, post in (("unconstrained", None), ("constrained", constrain_norm(sym))):
        rec = Recorder(net, {"scale": sym}, x, y, batch_size=batch_size, steps=steps, save_every=save_every, post_update=post)
        res = eqx.filter_jit(eqx.filter_vmap(rec.run, in_axes=(None, None, 0, None)))(params, state, hyper, key)
        final = jax.vmap(lambda p, s: full_loss(net, p, s, x, y))(res.params, res.state)
        out[name] = np.where(np.asarray(res.diverged_step) >= 0, np.nan, np.asarray(final)).reshape(shape)
        out[name + "_r2_end"] = np.asarray(res.measured["scale"][:, -1]).reshape(shape + (-1,))
    return ConstrainedAblation(np.asarray(lrs, float), np.asarray(momenta, float), np.asarray(weight_decays, float), **out,
                               r2_start=np.asarray(sym.group_norms(params)))


# ------------------------------------------------------------------------------------------ Adam
class AdamTilt(Hook):
    """Per Adam-type run and group, of every step n: the preconditioner's tilt Tₙ = ⟨Wₙ, Dₙgₙ⟩ and the
    drift Δₙ = ⟨Wₙ, (Dₙ − rₙDₙ₋₁)mₙ₋₁⟩ of ``theory.adam_norm``, Dₙ = 1/(w₁ₙ(√ν̂ₙ + ε)) and
    rₙ = w₁ₙ₋₁/w₁ₙ, both read from optax's own state after the step (``mu``, ``nu``, ``count``).

    ``hypers``: (b₁, b₂, ε) of every run (optax's ``eps_root`` = 0 and ``nesterov=False`` assumed).
    Saves ``last``: (2, K, G), T and Δ of the step before the save point (NaN at step 0).
    """

    sym: MaskedSymmetry
    hypers: tuple = eqx.field(static=True)

    def init(self, start):
        dtype = start.loss.dtype
        zeros = [jax.tree.map(jnp.zeros_like, p) for p in start.params]
        return {"last": jnp.full((2, len(start.params), self.sym.n_groups), jnp.nan, dtype),
                "m": zeros, "d": zeros, "w1": jnp.zeros((len(start.params),), dtype)}

    def step(self, state, info):
        rows, ms, ds, w1s = [], [], [], []
        for k, (p, g, o, (b1, b2, eps)) in enumerate(zip(info.params, info.grads, info.opt_states, self.hypers, strict=True)):
            mu, nu = optax.tree_utils.tree_get(o, "mu"), optax.tree_utils.tree_get(o, "nu")
            count = optax.tree_utils.tree_get(o, "count").astype(state["w1"].dtype)
            w1, w2 = 1.0 - b1**count, 1.0 - b2**count
            d = jax.tree.map(lambda v, w1=w1, w2=w2, eps=eps: 1.0 / (w1 * (jnp.sqrt(v / w2) + eps)), nu)
            ratio = state["w1"][k] / w1
            tilt = self.sym.pair(p, jax.tree.map(jnp.multiply, d, g))
            drift = self.sym.pair(p, jax.tree.map(lambda dn, dp, m, r=ratio: (dn - r * dp) * m, d, state["d"][k], state["m"][k]))
            rows.append(jnp.stack([tilt, drift]))
            ms.append(mu), ds.append(d), w1s.append(w1)
        dtype = state["last"].dtype
        return {"last": jnp.stack(rows, axis=1).astype(dtype), "m": ms, "d": ds, "w1": jnp.stack(w1s).astype(dtype)}

    def save(self, state, snap):
        return state["last"]


@dataclasses.dataclass
class AdamNorm:
    """The Gould–Tanaka recursion |Wₙ₊₁|² = (1−ηλ)²|Wₙ|² + η²|uₙ|² on one Adam-type run, per group.

    ``cross_term_share_median``: the share of the neglected 2η(1−ηλ)⟨W, u⟩ in the final |W|²;
    ``equilibrium_r2_pred_median``: η|u|²/(λ(2−ηλ)) (AdamW only); ``angular_step_*``: η|u_⊥|/|W|.
    ``momentum_law_*``: the law that keeps ⟨W, u⟩ through the moving average of the gradient
    (``theory.adam_norm``), fed the same |u|² and fitted to nothing.
    ``tilt_law_*``: the same law fed, besides |u|², the preconditioner's tilt Tₙ = ⟨Wₙ, Dₙgₙ⟩ measured in
    the same run (``theory.adam_norm(..., tilt=)``); its only approximation left is the drift Δ of the
    preconditioner over one step. ``exact_law_max_rel_error``: the law fed T and the measured Δ too,
    which is the exact identity (a bookkeeping check, at round-off). ``*_rel_error_at``: the median over
    groups of the running largest relative error up to the steps ``error_steps`` (GT, no tilt, tilt).
    ``tilt``, ``drift``: (N, G) Tₙ and Δₙ; ``tilt_share_median``: the median over groups of
    max|(1−b₁)Tₙ| / max|Cₙ| (the tilt's part of the cross term).
    ``angular_step_law_median_rel_error``: the angular step η|u_⊥|/|W| with |W| from that law against the
    measured one (the 2-Adam picture: Adam's u does not scale with the gradient, so the effective angular
    learning rate is η/|W|, not SGD's η/|W|²); ``angular_step_equilibrium``: AdamW's fixed point
    √(ηλ(2−ηλ))·|u_⊥|/|u| over the last tenth (None for Adam, which has none).
    """

    median_rel_error: float
    max_rel_error: float
    cross_term_share_median: float
    r2_growth_median: float
    equilibrium_r2_pred_median: float | None
    r2_end_median: float
    angular_step_start_median: float
    angular_step_end_median: float
    r2: np.ndarray
    pred: np.ndarray
    angular_step: np.ndarray
    momentum_law_median_rel_error: float = float("nan")
    momentum_law_max_rel_error: float = float("nan")
    momentum_law_pred: np.ndarray | None = None
    angular_step_law_median_rel_error: float = float("nan")
    angular_step_equilibrium: float | None = None
    tilt_law_median_rel_error: float = float("nan")
    tilt_law_max_rel_error: float = float("nan")
    tilt_law_pred: np.ndarray | None = None
    exact_law_max_rel_error: float = float("nan")
    tilt_share_median: float = float("nan")
    error_steps: list | None = None
    gould_tanaka_rel_error_at: list | None = None
    momentum_law_rel_error_at: list | None = None
    tilt_law_rel_error_at: list | None = None
    tilt: np.ndarray | None = None
    drift: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return _dict(self)


@dataclasses.dataclass
class AdamNormCheck:
    """:class:`AdamNorm` for Adam, AdamW (decoupled λ) and Adam with b1 = 0 (which isolates the diagonal
    metric's part of ⟨W, u⟩ from the momentum trace's)."""

    lr: float
    weight_decay: float
    runs: dict[str, AdamNorm]

    def to_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "weight_decay": self.weight_decay, **{k: v.to_dict() for k, v in self.runs.items()}}


def _adam_track(net, sym, x, y, params, state, key, opts, hypers, *, steps, batch_size):
    """The runs of ``opts`` in lockstep (as :func:`lockstep`), with :class:`AdamTilt` recorded beside."""
    hooks = {"track": GroupTrack(sym), "tilt": AdamTilt(sym, hypers)}
    engine = Engine(_models.loss_fn(net, loss=cross_entropy), list(opts), Batches(x, y, batch_size=batch_size), hooks=hooks)
    out = run(engine, [params] * len(opts), [state] * len(opts), key, steps=steps, save_every=1)
    s = out.saved["track"]
    last = jnp.moveaxis(s["last"][1:], 0, 2)  # (3, K, N, G): |g|², |Δθ|², ⟨θ, Δθ⟩
    tilt = jnp.moveaxis(out.saved["tilt"][1:], 0, 2)  # (2, K, N, G): T, Δ
    return jnp.swapaxes(s["r2"], 0, 1), last[1], last[2], tilt[0], tilt[1]


def _running_error(pred, r2, steps):
    run_max = np.maximum.accumulate(np.abs(pred - r2) / r2, axis=0)
    return [float(np.median(run_max[min(n, len(r2) - 1)])) for n in steps]


def adam_norm_check(
    net: Model, sym: MaskedSymmetry, x: Array, y: Array, params: PyTree, state: PyTree, key: PRNGKeyArray, *,
    lr: float, weight_decay: float, steps: int, batch_size: int,
) -> AdamNormCheck:
    """Adam and AdamW on normalised layers, in lockstep: the norm recursion scanned from |W₀|² with the
    runs' own updates u against the measured |W|² — without ⟨W, u⟩, with it closed on |u|², and with the
    preconditioner's tilt measured in the same run (see :class:`AdamNorm`)."""
    sym = check_scale(sym)
    rules = {"adam": adam(lr=lr), "adamw": adamw(lr=lr, decoupled_weight_decay=weight_decay), "adam_b1_0": adam(lr=lr, b1=0.0)}
    wds = {k: float(getattr(r, "decoupled_weight_decay", 0.0)) for k, r in rules.items()}
    hypers = tuple((float(r.b1), float(r.b2), float(r.eps)) for r in rules.values())
    r2s, dsqs, dots, tilts, drifts = eqx.filter_jit(_adam_track)(net, sym, x, y, params, state, key,
                                                                 [r.optimizer() for r in rules.values()], hypers,
                                                                 steps=steps, batch_size=batch_size)
    err_steps = [n for n in (10, 20, 50, 100, 200, 300, 600) if n <= steps]
    runs = {}
    for k, (name, wd) in enumerate(wds.items()):
        r2 = np.asarray(r2s[k])
        dsq, dot = np.asarray(dsqs[k]), np.asarray(dots[k])
        tilt, drift = np.asarray(tilts[k]), np.asarray(drifts[k])
        b1 = float(rules[name].b1)
        # Δ = −η(u + λW): |u|² = |Δ|²/η² + 2λ⟨W,Δ⟩/η + λ²|W|²,  ⟨W,u⟩ = −⟨W,Δ⟩/η − λ|W|²
        u_sq = dsq / lr**2 + 2 * wd * dot / lr + wd**2 * r2[:-1]
        w_u = -dot / lr - wd * r2[:-1]
        a = (1 - lr * wd) ** 2
        law = theory.Decay(jnp.asarray(a - 1.0), jnp.asarray(lr**2))  # Xₙ₊₁ = Xₙ + (a − 1)Xₙ + η²|uₙ|²
        pred = np.asarray(law.predict(jnp.asarray(r2[0]), jnp.asarray(u_sq)))
        err = np.max(np.abs(pred - r2) / r2, axis=0)
        cross = np.sum(-2 * lr * (1 - lr * wd) * w_u, axis=0)
        u_perp = np.sqrt(np.maximum(u_sq - w_u**2 / r2[:-1], 0.0))
        ang_step = lr * u_perp / np.sqrt(r2[:-1])
        tail = max(1, u_sq.shape[0] // 10)
        common = {"lr": lr, "b1": b1, "decoupled_weight_decay": wd}
        mom = np.asarray(theory.adam_norm(jnp.asarray(r2[0]), jnp.asarray(u_sq), **common))
        mom_err = np.max(np.abs(mom - r2) / r2, axis=0)
        tl = np.asarray(theory.adam_norm(jnp.asarray(r2[0]), jnp.asarray(u_sq), tilt=jnp.asarray(tilt), **common))
        tl_err = np.max(np.abs(tl - r2) / r2, axis=0)
        ex = np.asarray(theory.adam_norm(jnp.asarray(r2[0]), jnp.asarray(u_sq), tilt=jnp.asarray(tilt),
                                         drift=jnp.asarray(drift), **common))
        ex_err = np.max(np.abs(ex - r2) / r2, axis=0)
        share = np.max(np.abs((1 - b1) * tilt), axis=0) / np.max(np.abs(w_u), axis=0)
        ang_law = lr * u_perp / np.sqrt(mom[:-1])
        ang_err = np.max(np.abs(ang_law - ang_step) / ang_step, axis=0)
        eq = (float(np.median(np.sqrt(lr * wd * (2 - lr * wd)) * (u_perp / np.sqrt(u_sq))[-tail:].mean(0)))
              if wd > 0 else None)
        runs[name] = AdamNorm(
            float(np.median(err)), float(err.max()), float(np.median(np.abs(cross) / r2[-1])), float(np.median(r2[-1] / r2[0])),
            float(np.median(lr * u_sq[-tail:].mean(0) / (wd * (2 - lr * wd)))) if wd > 0 else None, float(np.median(r2[-1])),
            float(np.median(ang_step[:tail])), float(np.median(ang_step[-tail:])), r2, pred, ang_step,
            float(np.median(mom_err)), float(mom_err.max()), mom, float(np.median(ang_err)), eq,
            float(np.median(tl_err)), float(tl_err.max()), tl, float(ex_err.max()), float(np.median(share)),
            err_steps, _running_error(pred, r2, err_steps), _running_error(mom, r2, err_steps),
            _running_error(tl, r2, err_steps), tilt, drift,
        )
    return AdamNormCheck(float(lr), float(weight_decay), runs)


# ------------------------------------------------------------------------------------------ kinetic symmetry breaking
@dataclasses.dataclass
class KSBRow:
    """Kinetic symmetry breaking of one symmetry under one learning rule.

    ``breaks``: the fraction of groups whose δ_αK is non-zero at random velocities; ``max_relative``:
    the largest |δ_αK|/2K there; ``median_abs_dK``, ``max_abs_dK``, ``median_rel_dK``: |δ_αK| and
    |δ_αK|/2K along a real run (θ̇ = (θₙ₊₁ − θₙ)/η at the snapshots).
    """

    symmetry: str
    rule: str
    n_groups: int
    breaks: float
    max_relative: float
    median_abs_dK: float
    max_abs_dK: float
    median_rel_dK: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def ksb_report(
    net: Model, symmetries: dict[str, Any], x: Array, y: Array, params: PyTree, state: PyTree, key: PRNGKeyArray, *,
    lr: float = 0.1, momentum: float = 0.9, steps: int = 200, snapshots: int = 4, batch_size: int = 64, seed: int = 0,
    adaptive_lr: float = 0.01,
) -> list[KSBRow]:
    """For every symmetry and every learning rule — SGD, heavy ball, diagonally preconditioned SGD (a
    fixed random P ∈ [1, 2)), and the adaptive rules Adam, AdamW and RMSProp (η = ``adaptive_lr``, their
    metric K = ½θ̇ᵀ(P/c)θ̇ from their own accumulators, P = √ν̂ + ε) — whether the rule breaks it (at random
    velocities) and the measured δ_αK along a run: SGD's trajectory for the first three, each adaptive
    rule's own for it, at ``snapshots`` points (see :class:`KSBRow`)."""
    every = max(1, steps // snapshots)
    delta_k = eqx.filter_jit(lambda kin, part, q, v: kinetic_symmetry_breaking(kin, part)(q, v))
    two_kinetic = eqx.filter_jit(lambda kin, q, v: 2.0 * kin(q, v, 0.0))
    breaks_at = eqx.filter_jit(lambda kin, part, q: breaks_symmetry(kin, part, q, n_samples=4))
    rng = np.random.default_rng(seed)
    pre = jax.tree.map(lambda a: jnp.asarray(1.0 + rng.uniform(size=np.shape(a)), jnp.result_type(a)), params)
    adaptive = {"adam": adam(lr=adaptive_lr), "adamw": adamw(lr=adaptive_lr), "rmsprop": rmsprop(lr=adaptive_lr)}
    traj = {"sgd": _snapshot_states(net, x, y, params, state, key, optax.sgd(lr), lr=lr, steps=every * snapshots,
                                    every=every, batch_size=batch_size)}
    for name, rule in adaptive.items():
        traj[name] = _snapshot_states(net, x, y, params, state, key, rule.optimizer(), lr=adaptive_lr,
                                      steps=every * snapshots, every=every, batch_size=batch_size, rule=rule)
    euclidean = {"sgd": sgd(lr=lr).kinetic(), "heavy_ball": heavy_ball(lr=lr, momentum=momentum).kinetic(),
                 "preconditioned": preconditioned(pre, lr=lr).kinetic()}
    rows = []
    for kind, sym in symmetries.items():
        for rule_name in (*euclidean, *adaptive):
            qs, vs, auxs = traj[rule_name if rule_name in adaptive else "sgd"]
            abs_dk, rel_dk, brk, rel_rand = [], [], [], []
            for i in range(1, snapshots + 1):
                q, v, aux = (jax.tree.map(lambda a, i=i: a[i], t) for t in (qs, vs, auxs))
                kin = adaptive[rule_name].kinetic(aux) if rule_name in adaptive else euclidean[rule_name]
                two_k = float(two_kinetic(kin, q, v))
                for part in parts(sym):
                    dk = np.asarray(delta_k(kin, part, q, v))
                    abs_dk.append(np.abs(dk))
                    rel_dk.append(np.abs(dk) / two_k)
                if i == snapshots:
                    for part in parts(sym):
                        b = breaks_at(kin, part, q)
                        brk.append(np.asarray(b.breaks))
                        rel_rand.append(np.asarray(b.relative))
            abs_dk, rel_dk = np.concatenate(abs_dk), np.concatenate(rel_dk)
            brk, rel_rand = np.concatenate(brk), np.concatenate(rel_rand)
            rows.append(KSBRow(kind, rule_name, int(brk.size), float(np.mean(brk)), float(rel_rand.max()),
                               float(np.median(abs_dk)), float(abs_dk.max()), float(np.median(rel_dk))))
    return rows


def _snapshot_states(net, x, y, params, state, key, opt, *, lr, steps, every, batch_size, rule=None):
    """(params, velocity, accumulators of ``rule`` or the velocity again) stacked over the save points of one run."""

    def last(info):
        v = jax.tree.map(lambda a, b: (a - b) / lr, info.new_params[0], info.params[0])
        if rule is None:
            return info.new_params[0], v, v
        return info.new_params[0], v, rule.initial_state(info.new_params[0], info.opt_states[0])

    def like(start):
        p = start.params[0]
        return p, p, (p if rule is None else rule.initial_state(p, None))

    eng = Engine(_models.loss_fn(net), [opt], Batches(x, y, batch_size=batch_size), hooks={"last": LastStep(last, like)})
    out = eqx.filter_jit(run)(eng, [params], [state], key, steps=steps, save_every=every)
    return out.saved["last"]


def sgd_guard(net: Model, x: Array, y: Array, start: tuple, end: tuple, *, lr: float, momentum: float,
              weight_decay: float, steps: int, diverged_step: Array, batch_size: int, key: PRNGKeyArray) -> StabilityGuard:
    """The guard of the NLD SGD run: η·λ_max of ℒ + (λ/2)|θ|² on one mini-batch, at the first and the last
    step, against 2(1+β); NLD's laws are continuous-time and say nothing beyond it."""
    xb, yb = x[:batch_size], y[:batch_size]

    @jax.jit
    def lam(p, s):
        return lambda_max(lambda q: cross_entropy(net(q, s, xb, train=True)[0], yb), p, weight_decay=weight_decay, key=key)

    lams = jnp.stack([lam(*start), lam(*end)])
    return StabilityGuard.from_edge(lams, sgd(lr=lr, momentum=momentum, weight_decay=weight_decay).edge(),
                                    jnp.asarray([0, steps]), diverged_step)


# ------------------------------------------------------------------------------------------ all of it
@dataclasses.dataclass(frozen=True)
class NLDConfig:
    """One NLD experiment (plain values, written to ``summary.json``)."""

    model: str = "cnn_bn"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 5e-4
    steps: int | None = None
    batch_size: int = 64
    seed: int = 0
    width: int | None = None
    quick: bool = True
    detect: bool = True

    def resolved(self) -> NLDConfig:
        steps = (500 if self.quick else 2000) if self.steps is None else int(self.steps)
        width = (4 if self.quick else 16) if self.width is None else int(self.width)
        return dataclasses.replace(self, steps=steps, width=width)


@dataclasses.dataclass
class NLDResult:
    """Everything :func:`run_nld` measured (see the fields' classes for their definitions)."""

    config: NLDConfig
    symmetries: dict[str, int]
    eq17: Eq17Score
    rmsprop_match: dict[str, Any]
    comparison: Comparison
    match_vs_lr: dict[str, MatchVsLR]
    init_x10: InitScaleAblation
    constrained: ConstrainedAblation
    adam: AdamNormCheck
    ksb: list[KSBRow]
    elapsed_s: float
    guard: StabilityGuard | None = None

    def to_dict(self) -> dict[str, Any]:
        best_u, best_c = self.constrained.best(0.9, float(self.constrained.weight_decay.max()))
        return {
            "config": dataclasses.asdict(self.config), "symmetries": self.symmetries, "eq17": self.eq17.to_dict(),
            "rmsprop_match": self.rmsprop_match, "match_vs_lr": {k: v.to_dict() for k, v in self.match_vs_lr.items()},
            "ablation": {"constrained_final_loss": best_c, "unconstrained_final_loss": best_u,
                         "at": {"momentum": 0.9, "weight_decay": float(self.constrained.weight_decay.max())},
                         "grid": self.constrained.to_dict(), "init_x10": self.init_x10.to_dict(), "adam": self.adam.to_dict()},
            "ksb": [r.to_dict() for r in self.ksb], "elapsed_s": self.elapsed_s,
            "stability": None if self.guard is None else self.guard.summary(),
        }


def run_nld(config: NLDConfig = NLDConfig()) -> NLDResult:
    """All NLD experiments for one configuration on digits (``quick``: CPU sizes, about a minute).

    Example:
        >>> from noether_jax.experiments.nld import NLDConfig, run_nld   # doctest: +SKIP
        >>> res = run_nld(NLDConfig(quick=True))                          # doctest: +SKIP
    """
    t0 = time.perf_counter()
    cfg = config.resolved()
    if cfg.model not in _models.MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; choose one with scale-invariant groups: cnn_bn, vgg_bn or mlp_layernorm.")
    Hyper(cfg.lr, cfg.momentum, cfg.weight_decay)  # refuse bad hyperparameters before any work, naming the value
    from .._validate import integer

    integer("steps", cfg.steps)
    ds = _data.digits()
    x, y = ds.x_train, ds.y_train
    net, params, state = _models.functional(_models.make_model(cfg.model, key=cfg.seed, width=cfg.width))
    key = jax.random.key(cfg.seed + 1)
    if cfg.detect:
        from ..symmetry import detect

        syms = detect(net, params, (x[:128], y[:128]), state=state).symmetries
    elif cfg.model in ("cnn_bn", "vgg_bn"):
        syms = {"scale": cnn_scale_symmetry(params)}
    else:
        raise ValueError(f"model {cfg.model!r} needs `detect=True` (its scale groups are not built by hand).")
    if "scale" not in syms:
        raise ValueError(f"model {cfg.model!r} has no scale-invariant group (choose cnn_bn, vgg_bn or mlp_layernorm).")
    sym = syms["scale"]
    hyper = Hyper(cfg.lr, cfg.momentum, cfg.weight_decay)
    steps, bs = cfg.steps, cfg.batch_size
    cmp = eqx.filter_jit(compare_rmsprop)(net, sym, x, y, params, state, hyper, key, steps=steps, batch_size=bs,
                                          lags=EQ17_LAGS)
    e17 = eq17_score(cmp.track, 0, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    guard = sgd_guard(net, x, y, (params, state), (cmp.track.params[0], cmp.track.state[0]), lr=cfg.lr,
                      momentum=cfg.momentum, weight_decay=cfg.weight_decay, steps=steps,
                      diverged_step=cmp.track.diverged_step[0], batch_size=bs, key=key)
    m_all, m500 = rmsprop_match(cmp).to_dict(), rmsprop_match(cmp, window=min(500, steps)).to_dict()
    match = {**m_all, "max_angle_deg": m500["max_angle_deg"], "control_max_angle_deg": m500["control_max_angle_deg"],
             "max_angle_deg_all_steps": m_all["max_angle_deg"], "control_max_angle_deg_all_steps": m_all["control_max_angle_deg"],
             "control": "sqrt(G) x 2 (effective learning rate halved)",
             "mapping": {k: (float(np.median(v)) if k == "initial_accumulator" else np.asarray(v).tolist())
                         for k, v in cmp.mapping._asdict().items()}}
    if cfg.momentum > 0:
        c2 = eqx.filter_jit(compare_rmsprop)(net, sym, x, y, params, state, hyper, key, steps=steps, batch_size=bs,
                                             accumulate="momentum", control="no_momentum")
        m2 = rmsprop_match(c2, window=min(500, steps)).to_dict()
        match["with_momentum_variants"] = {"accumulate_momentum": m2, "no_momentum_mapping_max_angle_deg": m2["control_max_angle_deg"]}
    msteps = min(steps, 100 if cfg.quick else 500)
    short = min(steps, 200) if cfg.quick else steps
    lrs0 = [0.03, 0.1, 0.3] if cfg.quick else [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
    lrs9 = [0.003, 0.01, 0.03] if cfg.quick else [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
    common = dict(weight_decay=cfg.weight_decay, steps=msteps, batch_size=bs)
    mv = {"beta0": match_vs_effective_lr(net, sym, x, y, params, state, key, lrs=lrs0, momentum=0.0, **common),
          "beta0.9_gradient": match_vs_effective_lr(net, sym, x, y, params, state, key, lrs=lrs9, momentum=0.9, **common),
          "beta0.9_momentum": match_vs_effective_lr(net, sym, x, y, params, state, key, lrs=lrs9, momentum=0.9,
                                                    accumulate="momentum", **common)}
    init = init_scale_ablation(net, sym, x, y, params, state, hyper, key, steps=short, batch_size=bs)
    grid = dict(lrs=[0.01, 0.03, 0.1], momenta=[0.9], weight_decays=[5e-4]) if cfg.quick else \
        dict(lrs=[0.003, 0.01, 0.03, 0.1, 0.3], momenta=[0.0, 0.5, 0.9, 0.99], weight_decays=[0.0, 1e-4, 5e-4, 1e-3])
    constrained = constrained_ablation(net, sym, x, y, params, state, key, steps=steps if cfg.quick else 2 * steps,
                                       batch_size=bs, **grid)
    adam = adam_norm_check(net, sym, x, y, params, state, key, lr=0.01, weight_decay=0.1, steps=short, batch_size=bs)
    ksb = ksb_report(net, syms, x, y, params, state, key, lr=cfg.lr, steps=40 if cfg.quick else 400,
                     snapshots=2 if cfg.quick else 4, batch_size=bs)
    counts = {k: int(sum(s.n_groups for s in parts(v))) for k, v in syms.items()}
    return NLDResult(cfg, counts, e17, match, cmp, mv, init, constrained, adam, ksb, time.perf_counter() - t0, guard)
