"""Noether's Learning Dynamics (NLD, Tanaka & Kunin 2021) made quantitative (THEORY.md §4–5).

A scale-invariant group θ_𝒜 = r θ̂ (a filter and its bias before BatchNorm) trained by SGD(η, β, λ)
moves its direction θ̂ with the *effective learning rate* η/r² (÷(1−β) with momentum), while r² grows
with the gradient it sees and decays with weight decay (NLD eq. 17). This module

1. scores eq. 17 per group on real training (:func:`eq17_errors`, :func:`effective_learning_rate`);
2. turns the RMSProp analogy into a runnable optimiser: :func:`rmsprop_mapping` maps (η, β, λ, r(0))
   to the hyperparameters of an RMSProp/AdaGrad-style optimiser with ONE scalar accumulator per
   group that acts on the unit direction θ̂ (:func:`sphere_rmsprop`, built from optax parts:
   :func:`scale_by_group_rms` and :func:`project_to_sphere`), and :func:`compare_rmsprop` runs it
   against SGD on the same model, data and mini-batches;
3. runs the paper's ablations: ×10 initial norm (:func:`init_scale_ablation`), constrained filter
   norm (:func:`constrain_norm`, :func:`constrained_ablation`, NLD Fig. 3) and Adam/AdamW on
   normalised layers (:func:`adam_norm_check`);
4. reports kinetic symmetry breaking of several learning rules along a run (:func:`ksb_report`);
5. writes it all with :func:`nld_report` / :func:`nld_command`.

**The mapping, derived.** Let ĝ = r g_𝒜 be the gradient on the unit sphere (g_𝒜 = ĝ/r is tangent).
One SGD step θ' = (1−ηλ)θ − ηĝ/r moves the direction to θ̂' = normalise(θ̂ − η ĝ/((1−ηλ) r²)) and
the norm to r'² = (1−ηλ)²r² + η²|ĝ|²/r², hence r'⁴ = (1−ηλ)⁴r⁴ + 2(1−ηλ)²η²|ĝ|² + O(η⁴|ĝ|⁴/r⁴).
So SGD on θ *is*, to first order in the angular step, the optimiser on θ̂

    u' = normalise(u − (lr/√G) ĝ),    G' = ρ G + γ |ĝ|²,

with √G ↔ r², lr = η, ρ = e^{−4ηλ/(1−β)}, γ = 2η²(1+β)/(1−β)³ and G(0) = r⁴(0) (NLD eq. 18, THEORY
§4 table; per step, the continuous rates times Δt = η). With momentum the direction step is a trace
of past gradients, so the optimiser keeps optax's RMSProp-with-momentum order (precondition, then
``trace(β)``). The step uses Gₙ, then accumulates (SGD's step uses rₙ², not rₙ₊₁²).

**A finding on networks.** Eq. 17 takes |θ̇|² = |ĝ|²/(μ²r²), the overdamped velocity of a *slowly
varying* gradient. Mini-batch noise is not slowly varying: the momentum buffer averages it, giving
|θ̇|² ≈ |ĝ|²/((1−β²)r²), a factor (1−β)/(1+β) (1/19 at β = 0.9) less forcing. On a BatchNorm CNN
the mini-batch gradient is mostly noise, and eq. 17 then overpredicts r² several-fold at β = 0.9
(it is exact at β = 0, where both coincide). The *velocity-forced* form

    d r⁴/dt = −(4k/μ) r⁴ + (2η(1+β)/μ) r²|θ̇|²        (θ̇ = (θₙ₊₁ − θₙ)/η, measured)

reduces to eq. 17 for slowly varying ĝ and holds in both regimes (:func:`eq17_errors` reports both);
its RMSProp counterpart accumulates the momentum buffer instead of the gradient
(``accumulate="momentum"`` in :func:`rmsprop_mapping`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree

from . import _theory as theory
from ._data import check_batch_size, sample_batch
from ._models import Network, cross_entropy
from ._recorder import Hyper
from ._rules import sgd as sgd_rule
from ._symmetry import MaskedSymmetry, Scale

Accumulate = Literal["gradient", "momentum"]


# =============================================================================================
# group helpers
# =============================================================================================


def _check_scale(sym: Any) -> MaskedSymmetry:
    if not isinstance(sym, MaskedSymmetry):
        raise TypeError(
            "the scale symmetry must be one nj.symmetry.Scale (a MaskedSymmetry, e.g. "
            f"`nj.symmetry.detect(...).symmetries['scale']`), got {type(sym).__name__}."
        )
    return sym


def group_values(sym: MaskedSymmetry, values: Float[ArrayLike, " G"], like: PyTree, fill: float = 1.0) -> PyTree:
    """Spread one value per group onto the parameter entries of that group (``fill`` elsewhere).

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> from noether_jax.nld import group_values
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0, 1, -1])})
        >>> group_values(sym, jnp.array([2.0, 3.0]), {"w": jnp.zeros(4)})["w"].tolist()
        [2.0, 2.0, 3.0, 1.0]
    """
    values = jnp.asarray(values)

    def one(ids, x):
        ids = jnp.broadcast_to(ids, jnp.shape(x))
        return jnp.where(ids >= 0, values[jnp.clip(ids, 0)], fill).astype(jnp.result_type(x, values))

    return jax.tree.map(one, sym.ids, like)


def _in_group(sym: MaskedSymmetry, like: PyTree) -> PyTree:
    return jax.tree.map(lambda ids, x: jnp.broadcast_to(ids, jnp.shape(x)) >= 0, sym.ids, like)


def normalise_groups(sym: MaskedSymmetry, params: PyTree, norm_sq: Float[ArrayLike, " G"] | None = None) -> PyTree:
    """Rescale every group to unit norm (or to squared norms ``norm_sq``); other entries unchanged.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> from noether_jax.nld import normalise_groups
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0, -1])})
        >>> [round(v, 9) for v in normalise_groups(sym, {"w": jnp.array([3.0, 4.0, 7.0])})["w"].tolist()]
        [0.6, 0.8, 7.0]
    """
    sym = _check_scale(sym)
    r2 = sym.group_norms(params)
    target = jnp.ones_like(r2) if norm_sq is None else jnp.asarray(norm_sq, r2.dtype)
    factor = group_values(sym, jnp.sqrt(target / r2), params)
    return jax.tree.map(jnp.multiply, params, factor)


def constrain_norm(sym: MaskedSymmetry) -> Callable[[PyTree, PyTree], PyTree]:
    """The "constrained filter norm" of NLD Fig. 3 as a :class:`~noether_jax.Recorder` ``post_update``:
    after every step θ_𝒜 ← θ_𝒜 |θ_𝒜(0)|/|θ_𝒜| for every group, which removes the implicit adaptivity.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> from noether_jax.nld import constrain_norm
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0])})
        >>> [round(v, 9) for v in constrain_norm(sym)({"w": jnp.array([6.0, 8.0])}, {"w": jnp.array([0.0, 1.0])})["w"].tolist()]
        [0.6, 0.8]
    """
    sym = _check_scale(sym)

    def post(params, params0):
        return normalise_groups(sym, params, sym.group_norms(params0))

    return post


def group_angles(sym: MaskedSymmetry, a: PyTree, b: PyTree) -> Float[Array, " G"]:
    """The angle (degrees) between the directions of every group in ``a`` and in ``b``.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> from noether_jax.nld import group_angles
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0])})
        >>> group_angles(sym, {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([2.0, 2.0])}).round(6).tolist()
        [45.0]
    """
    sym = _check_scale(sym)
    cross = sym.pair(a, b)  # Σ_{i∈g} b_i a_i for scale (c = 1, d = 0)
    cos = cross / jnp.sqrt(sym.group_norms(a) * sym.group_norms(b))
    return jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))


def cnn_scale_symmetry(params: PyTree) -> MaskedSymmetry:
    """Scale groups of ``models.make_model("cnn_bn" | "vgg_bn")`` built from the architecture (no
    detection): every output channel (``kernel[..., j]`` and ``bias[j]``) of every convolution.

    :func:`noether_jax.symmetry.detect` finds the same groups numerically (slower: tens of seconds).

    Example:
        >>> from noether_jax import models
        >>> from noether_jax.nld import cnn_scale_symmetry
        >>> net, params, state = models.functional(models.make_model("cnn_bn", width=4))
        >>> cnn_scale_symmetry(params).n_groups
        12
    """
    mask = jax.tree.map(lambda a: np.full(np.shape(a), -1, np.int32), params)
    convs = params["convs"]
    items = convs.items() if isinstance(convs, dict) else enumerate(convs)
    offset, names = 0, []
    for i, conv in items:
        c = conv["kernel"].shape[-1]
        mask["convs"][i]["kernel"] = np.broadcast_to(offset + np.arange(c, dtype=np.int32), conv["kernel"].shape).copy()
        mask["convs"][i]["bias"] = offset + np.arange(c, dtype=np.int32)
        names += [f"convs.{i} channel {j} (kernel[..., {j}] + bias[{j}])" for j in range(c)]
        offset += c
    return Scale(mask, params, names=names)


# =============================================================================================
# 1. effective learning rate and eq. 17
# =============================================================================================


def effective_learning_rate(
    r2: Float[ArrayLike, "*S G"], lr: ArrayLike, momentum: ArrayLike = 0.0
) -> Float[Array, "*S G"]:
    """η/((1−β) r²): the learning rate of the direction θ̂ of a scale-invariant group (overdamped).

    Example:
        >>> from noether_jax.nld import effective_learning_rate
        >>> round(float(effective_learning_rate(4.0, lr=0.1, momentum=0.9)), 12)
        0.25
    """
    return jnp.asarray(lr) / ((1.0 - jnp.asarray(momentum)) * jnp.asarray(r2))


def predict_r4_velocity(
    r4_0: Float[ArrayLike, " G"], forcing: Float[ArrayLike, "N G"], lr: ArrayLike, momentum: ArrayLike = 0.0,
    weight_decay: ArrayLike = 0.0,
) -> Float[Array, "N+1 G"]:
    """The velocity-forced form of eq. 17: d r⁴/dt = −(4k/μ) r⁴ + (2η(1+β)/μ) r²|θ̇|², t = nη.

    ``forcing`` is r²ₙ|θ̇ₙ|² per step with θ̇ₙ = (θₙ₊₁ − θₙ)/η. For a slowly varying gradient
    (|θ̇|² = |ĝ|²/(μ²r²)) it is NLD eq. 17; under mini-batch noise it stays right where eq. 17
    overpredicts (see the module docstring).

    Example (β = 0: the same as eq. 17 with forcing |ĝ|²):
        >>> import jax.numpy as jnp; from noether_jax import theory
        >>> from noether_jax.nld import predict_r4_velocity
        >>> f = jnp.full((5, 1), 0.3)
        >>> bool(jnp.allclose(predict_r4_velocity(1.0, f, 0.1), theory.predict_nld_r4(1.0, f, 0.1)))
        True
    """
    lr, beta, k = (jnp.asarray(v, float) for v in (lr, momentum, weight_decay))
    mu = 1.0 - beta
    law = theory.decay(4.0 * k / mu, 2.0 * lr * (1.0 + beta) / mu, lr)
    return law.predict(r4_0, forcing)


def eq17_errors(
    r2: Float[ArrayLike, "S G"], r4_pred: Float[ArrayLike, "S G"], *, skip: int = 0
) -> Float[Array, " G"]:
    """Per group: maxₜ |√r⁴_pred − r²| / r² over the save points from ``skip`` on.

    Example:
        >>> import jax.numpy as jnp
        >>> from noether_jax.nld import eq17_errors
        >>> [round(v, 9) for v in eq17_errors(jnp.array([[1.0], [2.0]]), jnp.array([[1.0], [4.41]])).tolist()]
        [0.05]
    """
    r2, r4 = jnp.asarray(r2), jnp.asarray(r4_pred)
    return jnp.max(jnp.abs(jnp.sqrt(r4[skip:]) - r2[skip:]) / r2[skip:], axis=0)


# =============================================================================================
# 2. the RMSProp correspondence
# =============================================================================================


class RMSPropMapping(NamedTuple):
    """Hyperparameters of the group-RMSProp optimiser on θ̂ that SGD(η, β, λ) on a normalised layer is.

    ``G ← decay·G + gain·f`` per group (f = |ĝ|² or the momentum buffer's |m|², see ``accumulate``),
    step ``−lr · trace_β(ĝ)/√G`` then renormalise. ``initial_accumulator`` is G(0) = r⁴(0).
    """

    lr: Array
    decay: Array
    gain: Array
    initial_accumulator: Array
    momentum: Array
    accumulate: str = "gradient"

    def standard_form(self) -> tuple[Array, Array]:
        """(lr', G'(0)) of the same optimiser written as textbook RMSProp G ← ρG + (1−ρ)f, which has
        gain 1−ρ: scale G by c = (1−ρ)/γ, so lr' = lr·√c and G'(0) = c·G(0) (needs λ > 0: with λ = 0,
        ρ = 1 and the accumulator is AdaGrad's, with no decay)."""
        c = (1.0 - self.decay) / self.gain
        return self.lr * jnp.sqrt(c), self.initial_accumulator * c


def rmsprop_mapping(
    lr: ArrayLike,
    momentum: ArrayLike,
    weight_decay: ArrayLike,
    r0_sq: Float[ArrayLike, " G"],
    *,
    accumulate: Accumulate = "gradient",
) -> RMSPropMapping:
    """Map SGD(η, β, λ) on scale groups with initial |θ_𝒜(0)|² = r0_sq to the group RMSProp on θ̂.

    ============================  =================================================
    RMSProp on θ̂                 SGD on θ = rθ̂ (THEORY §4, NLD eq. 18)
    ============================  =================================================
    √G                            r²
    lr                            η (the trace of β supplies the 1/(1−β))
    decay ρ                       e^{−4ηλ/(1−β)}
    gain γ (f = |ĝ|²)             2η²(1+β)/(1−β)³  (eq. 17; ``accumulate="gradient"``)
    gain γ (f = |trace_β ĝ|²)     2η²(1+β)/(1−β)   (``accumulate="momentum"``)
    G(0)                          r⁴(0)
    momentum                      β
    ============================  =================================================

    The two ``accumulate`` forms coincide at β = 0. "momentum" accumulates the optimiser's own buffer
    m = Σβᵏĝ (|θ̇|²r² = |m|²), which equals |ĝ|²/(1−β)² only for a slowly varying gradient.

    Example:
        >>> from noether_jax.nld import rmsprop_mapping
        >>> m = rmsprop_mapping(0.1, 0.0, 0.0, [1.0, 4.0])
        >>> round(float(m.gain), 12), m.initial_accumulator.tolist(), float(m.decay)
        (0.02, [1.0, 16.0], 1.0)
    """
    if accumulate not in ("gradient", "momentum"):
        raise ValueError(f"`accumulate` must be 'gradient' or 'momentum', got {accumulate!r}.")
    lr, beta, k = (jnp.asarray(v, jnp.result_type(float)) for v in (lr, momentum, weight_decay))
    mu = 1.0 - beta
    decay = jnp.exp(-4.0 * lr * k / mu)
    gain = 2.0 * lr**2 * (1.0 + beta) / (mu**3 if accumulate == "gradient" else mu)
    r0_sq = jnp.asarray(r0_sq, lr.dtype)
    return RMSPropMapping(lr, decay, gain, r0_sq**2, beta, accumulate)


class GroupRMSState(NamedTuple):
    """State of :func:`scale_by_group_rms`: one accumulator G per group."""

    accumulator: Array


def scale_by_group_rms(
    sym: MaskedSymmetry, decay: ArrayLike, gain: ArrayLike, initial_accumulator: Float[ArrayLike, " G"], *, eps: float = 0.0
) -> optax.GradientTransformation:
    """Divide the updates of every group by √G of its group, then accumulate G ← decay·G + gain·|u_𝒜|².

    Entries outside the groups pass through unchanged. The step uses Gₙ (before accumulating),
    the order that matches SGD on a normalised layer. With ``decay = 1`` the accumulator is AdaGrad's.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> from noether_jax.nld import scale_by_group_rms
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0, -1])})
        >>> tx = scale_by_group_rms(sym, 0.5, 1.0, jnp.array([4.0]))
        >>> g = {"w": jnp.array([1.0, 1.0, 1.0])}
        >>> u, s = tx.update(g, tx.init(g))
        >>> u["w"].tolist(), s.accumulator.tolist()
        ([0.5, 0.5, 1.0], [4.0])
    """
    sym = _check_scale(sym)

    def init(params):
        g0 = jnp.asarray(initial_accumulator, jnp.result_type(*jax.tree.leaves(params), float))
        return GroupRMSState(jnp.broadcast_to(g0, (sym.n_groups,)))

    def update(updates, state, params=None):
        del params
        acc = state.accumulator
        factor = group_values(sym, 1.0 / jnp.sqrt(acc + eps), updates)
        new = jax.tree.map(jnp.multiply, updates, factor)
        acc = jnp.asarray(decay, acc.dtype) * acc + jnp.asarray(gain, acc.dtype) * sym.pair(updates, updates)
        return new, GroupRMSState(acc)

    return optax.GradientTransformation(init, update)


def project_to_sphere(sym: MaskedSymmetry) -> optax.GradientTransformationExtraArgs:
    """Turn updates into ones that land every group on the unit sphere: normalise(θ_𝒜 + u_𝒜) − θ_𝒜.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> from noether_jax.nld import project_to_sphere
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0])})
        >>> p = {"w": jnp.array([1.0, 0.0])}
        >>> u, _ = project_to_sphere(sym).update({"w": jnp.array([0.0, 1.0])}, None, p)
        >>> [round(v, 6) for v in (p["w"] + u["w"]).tolist()]
        [0.707107, 0.707107]
    """
    sym = _check_scale(sym)

    def f(updates, params):
        new = jax.tree.map(jnp.add, params, updates)
        unit = normalise_groups(sym, new)
        inside = _in_group(sym, params)
        return jax.tree.map(lambda m, n, p, u: jnp.where(m, n - p, u), inside, unit, params, updates)

    return optax.stateless(f)


def _decay_outside(sym: MaskedSymmetry, weight_decay: ArrayLike) -> optax.GradientTransformation:
    """Coupled weight decay g + λθ on the entries outside the groups only."""

    def f(updates, params):
        inside = _in_group(sym, params)
        return jax.tree.map(lambda m, u, p: jnp.where(m, u, u + weight_decay * p), inside, updates, params)

    return optax.stateless(f)


def sphere_rmsprop(
    sym: MaskedSymmetry, mapping: RMSPropMapping, weight_decay: ArrayLike = 0.0
) -> optax.GradientTransformation:
    """The group RMSProp on θ̂ of :func:`rmsprop_mapping`, as one ``optax.chain``.

    On the scale groups (their parameters stored at unit norm): ``scale_by_group_rms`` (before the
    trace for ``accumulate="gradient"``, after it for ``"momentum"``), ``trace(β)``, ``scale(−lr)``,
    ``project_to_sphere``. Every other parameter gets heavy ball with coupled ``weight_decay``,
    exactly like SGD, so the two runs differ only in how the groups are trained.

    Example:
        >>> import jax, jax.numpy as jnp, optax, noether_jax as nj
        >>> from noether_jax.nld import rmsprop_mapping, sphere_rmsprop
        >>> sym = nj.symmetry.Scale({"w": jnp.array([0, 0]), "b": jnp.array([-1])})
        >>> tx = sphere_rmsprop(sym, rmsprop_mapping(0.1, 0.0, 0.0, jnp.array([1.0])))
        >>> p = {"w": jnp.array([1.0, 0.0]), "b": jnp.array([1.0])}
        >>> u, _ = tx.update({"w": jnp.array([0.0, 1.0]), "b": jnp.array([1.0])}, tx.init(p), p)
        >>> p = optax.apply_updates(p, u)
        >>> float(jnp.linalg.norm(p["w"])), p["b"].tolist()
        (1.0, [0.9])
    """
    sym = _check_scale(sym)
    rms = scale_by_group_rms(sym, mapping.decay, mapping.gain, mapping.initial_accumulator)
    trace = optax.trace(decay=mapping.momentum, nesterov=False)
    parts = (rms, trace) if mapping.accumulate == "gradient" else (trace, rms)
    return optax.chain(_decay_outside(sym, weight_decay), *parts, optax.scale(-mapping.lr), project_to_sphere(sym))


# ---------------------------------------------------------------------------------------------
# lockstep training: several optimisers on the same mini-batches, every step recorded per group
# ---------------------------------------------------------------------------------------------


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


def _sqrt_acc(opt_state, n_groups, dtype):
    acc = optax.tree_utils.tree_get(opt_state, "accumulator")
    if acc is None:
        return jnp.full((n_groups,), jnp.nan, dtype)
    return jnp.sqrt(acc)


def lockstep(
    net: Network,
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
) -> Track:
    """Train K runs ``(params0, optimizer, post_update)`` in lockstep on the same mini-batches.

    Pure and jit-able (call it inside ``jax.jit`` with the optimisers built there to vmap over
    hyperparameters); every step is recorded per group (:class:`Track`).

    Example:
        >>> import jax, optax, noether_jax as nj
        >>> from noether_jax import models, data
        >>> from noether_jax.nld import cnn_scale_symmetry, lockstep
        >>> ds = data.digits()
        >>> net, params, state = models.functional(models.make_model("cnn_bn", width=2))
        >>> sym = cnn_scale_symmetry(params)
        >>> tr = lockstep(net, sym, ds.x_train, ds.y_train, [(params, optax.sgd(0.1), None)] * 2, state,
        ...               jax.random.key(0), steps=3, batch_size=16)
        >>> tr.r2.shape, bool(tr.angle.max() < 1e-3)    # identical runs (up to arccos round-off)
        ((2, 4, 6), True)
    """
    sym = _check_scale(sym)
    check_batch_size(int(batch_size), x.shape[0])
    params0 = tuple(r[0] for r in runs)
    opts = tuple(r[1] for r in runs)
    posts = tuple(r[2] for r in runs)
    dtype = jnp.result_type(*jax.tree.leaves(params0[0]), float)
    G = sym.n_groups

    def loss_fn(p, s, batch):
        logits, new_s = net(p, s, batch[0], train=True)
        return loss(logits, batch[1]), new_s

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def record(ps, os_):
        r2 = jnp.stack([sym.group_norms(p) for p in ps])
        ang = jnp.stack([group_angles(sym, p, ps[0]) for p in ps])
        acc = jnp.stack([_sqrt_acc(o, G, dtype) for o in os_])
        return r2, ang, acc

    def step(carry, key_n):
        ps, ss, os_ = carry
        batch = sample_batch(key_n, x, y, batch_size)
        new_p, new_s, new_o, out = [], [], [], []
        for k in range(len(runs)):
            (lv, s_k), g = grad_fn(ps[k], ss[k], batch)
            upd, o_k = opts[k].update(g, os_[k], ps[k])
            p_k = optax.apply_updates(ps[k], upd)
            if posts[k] is not None:
                p_k = posts[k](p_k, params0[k])
            d = jax.tree.map(jnp.subtract, p_k, ps[k])
            out.append((lv, sym.pair(g, g), sym.pair(d, d), sym.pair(ps[k], d)))
            new_p.append(p_k)
            new_s.append(s_k)
            new_o.append(o_k)
        new_p, new_o = tuple(new_p), tuple(new_o)
        rec = record(new_p, new_o)
        stats = tuple(jnp.stack(z) for z in zip(*out))
        return (new_p, tuple(new_s), new_o), (stats, rec)

    os0 = tuple(o.init(p) for o, p in zip(opts, params0))
    rec0 = record(params0, os0)
    carry, (stats, recs) = jax.lax.scan(step, (params0, (state,) * len(runs), os0), jax.random.split(key, steps))
    r2, ang, acc = (jnp.concatenate([a0[None], a], 0).swapaxes(0, 1) for a0, a in zip(rec0, recs))
    lv, gsq, dsq, dot = (s.swapaxes(0, 1) for s in stats)
    return Track(lv, r2, gsq, dsq, dot, ang, acc, carry[0], carry[1])


# ---------------------------------------------------------------------------------------------
# SGD against its mapped RMSProp
# ---------------------------------------------------------------------------------------------


class Comparison(eqx.Module):
    """SGD (run 0), its mapped group RMSProp (run 1) and a control (run 2), in lockstep.

    ``track`` holds the series (:class:`Track`); ``lr_eff`` (3, N+1, G) is η/r² for SGD and lr/√G
    for the two RMSProp runs (÷(1−β) for all three); ``mapping`` the mapped hyperparameters.
    """

    track: Track
    lr_eff: Float[Array, "3 N1 G"]
    mapping: RMSPropMapping


def compare_rmsprop(
    net: Network,
    sym: MaskedSymmetry,
    x: Float[Array, "n ..."],
    y: Int[Array, " n"],
    params: PyTree,
    state: PyTree,
    hyper: Hyper,
    key: PRNGKeyArray,
    *,
    steps: int,
    batch_size: int,
    accumulate: Accumulate = "gradient",
    control: Literal["scale", "no_momentum", "gradient"] = "scale",
    mismatch: float = 2.0,
) -> Comparison:
    """Run SGD(η, β, λ) and the group RMSProp of :func:`rmsprop_mapping` on the same model, data and
    mini-batches (the RMSProp run starts from θ̂(0), every group at unit norm), plus a control:

    * ``"scale"``: the mapping with √G × ``mismatch`` (G(0) and gain × mismatch²), i.e. an effective
      learning rate off by that factor;
    * ``"no_momentum"``: the mapping without momentum (lr η/(1−β), β = 0);
    * ``"gradient"``: the eq.-17 ("gradient") accumulator when ``accumulate="momentum"``.

    Pure: jit it, vmap it over ``hyper``.

    Example:
        >>> import jax, noether_jax as nj
        >>> from noether_jax import models, data
        >>> from noether_jax.nld import cnn_scale_symmetry, compare_rmsprop
        >>> ds = data.digits()
        >>> net, params, state = models.functional(models.make_model("cnn_bn", width=2))
        >>> cmp = compare_rmsprop(net, cnn_scale_symmetry(params), ds.x_train, ds.y_train, params, state,
        ...                       nj.Hyper(0.05), jax.random.key(0), steps=20, batch_size=32)
        >>> bool(cmp.track.angle[1].max() < 1.0), bool(cmp.track.angle[2].max() > cmp.track.angle[1].max())
        (True, True)
    """
    sym = _check_scale(sym)
    r0 = sym.group_norms(params)
    u0 = normalise_groups(sym, params)
    lr, beta, wd = hyper.lr, hyper.momentum, hyper.weight_decay
    m = rmsprop_mapping(lr, beta, wd, r0, accumulate=accumulate)
    if control == "scale":
        c = m._replace(gain=m.gain * mismatch**2, initial_accumulator=m.initial_accumulator * mismatch**2)
    elif control == "no_momentum":
        c = m._replace(lr=lr / (1.0 - beta), momentum=jnp.zeros_like(beta))
    elif control == "gradient":
        c = rmsprop_mapping(lr, beta, wd, r0, accumulate="gradient")
    else:
        raise ValueError(f"`control` must be 'scale', 'no_momentum' or 'gradient', got {control!r}.")
    runs = [
        (params, sgd_rule(lr, beta, wd).optimizer(), None),
        (u0, sphere_rmsprop(sym, m, wd), None),
        (u0, sphere_rmsprop(sym, c, wd), None),
    ]
    tr = lockstep(net, sym, x, y, runs, state, key, steps=steps, batch_size=batch_size)
    mu = 1.0 - beta
    lr_eff = jnp.stack([
        lr / (mu * tr.r2[0]),
        m.lr / ((1.0 - m.momentum) * tr.accumulator[1]),
        c.lr / ((1.0 - c.momentum) * tr.accumulator[2]),
    ])
    return Comparison(tr, lr_eff, m)


compare_rmsprop_jit = eqx.filter_jit(compare_rmsprop)


def rmsprop_summary(cmp: Comparison, *, window: int | None = None) -> dict[str, float]:
    """Numbers of a :class:`Comparison`: the largest angle per group (over the first ``window`` steps,
    default all), the relative gap of the final loss (mean of the last 10% of steps), the worst
    relative error of lr/√G against η/r², and the same angle for the control."""
    tr = cmp.track
    n = tr.loss.shape[-1]
    w = n + 1 if window is None else window + 1
    ang = np.asarray(tr.angle)
    tail = max(1, n // 10)
    final = np.asarray(tr.loss[..., -tail:]).mean(-1)
    lre = np.asarray(cmp.lr_eff)
    return {
        "max_angle_deg": float(ang[1, :w].max()),
        "mismatched_max_angle_deg": float(ang[2, :w].max()),
        "final_loss_sgd": float(final[0]),
        "final_loss_rmsprop": float(final[1]),
        "final_loss_rel_gap": float(abs(final[1] - final[0]) / abs(final[0])),
        "mismatched_final_loss_rel_gap": float(abs(final[2] - final[0]) / abs(final[0])),
        "lr_eff_max_rel_error": float(np.max(np.abs(lre[1] - lre[0]) / lre[0])),
        "mismatched_lr_eff_max_rel_error": float(np.max(np.abs(lre[2] - lre[0]) / lre[0])),
        "median_lr_eff": float(np.median(lre[0])),
        "steps": int(n),
        "window": int(w - 1),
    }


def _match_vs_lr_impl(net, sym, x, y, params, state, lrs, momentum, weight_decay, key, steps, batch_size, accumulate):
    def one(lr):
        cmp = compare_rmsprop(net, sym, x, y, params, state, Hyper(lr, momentum, weight_decay), key, steps=steps,
                              batch_size=batch_size, accumulate=accumulate)
        eff = cmp.lr_eff[0] * (1.0 - momentum)  # η/r²
        return jnp.max(cmp.track.angle[1]), jnp.median(eff), jnp.max(cmp.track.angle[2]), jnp.max(
            jnp.abs(cmp.lr_eff[1] - cmp.lr_eff[0]) / cmp.lr_eff[0])

    return jax.vmap(one)(lrs)


_match_vs_lr_jit = eqx.filter_jit(_match_vs_lr_impl, )


def match_vs_effective_lr(
    net: Network, sym: MaskedSymmetry, x: Array, y: Array, params: PyTree, state: PyTree,
    lrs: Float[ArrayLike, " L"], momentum: float, weight_decay: float, key: PRNGKeyArray, *, steps: int,
    batch_size: int, accumulate: Accumulate = "gradient",
) -> dict[str, np.ndarray]:
    """How well the mapped RMSProp tracks SGD as a function of the effective step η/r²: one vmapped
    :func:`compare_rmsprop` per learning rate. Returns arrays over ``lrs``: ``max_angle_deg``,
    ``median_eta_over_r2`` (η/r², not ÷(1−β)), ``control_max_angle_deg``, ``lr_eff_max_rel_error``."""
    lrs = jnp.asarray(lrs, jnp.result_type(float))
    out = _match_vs_lr_jit(net, sym, x, y, params, state, lrs, jnp.asarray(momentum, lrs.dtype),
                           jnp.asarray(weight_decay, lrs.dtype), key, steps, batch_size, accumulate)
    names = ("max_angle_deg", "median_eta_over_r2", "control_max_angle_deg", "lr_eff_max_rel_error")
    return {"lr": np.asarray(lrs), **{n: np.asarray(v) for n, v in zip(names, out)}}


# =============================================================================================
# 3. ablations
# =============================================================================================


def full_loss(net: Network, params: PyTree, state: PyTree, x: Array, y: Array, loss: Callable = cross_entropy) -> Array:
    """Training loss on the whole set (BatchNorm in training mode, as during training)."""
    return loss(net(params, state, x, train=True)[0], y)


def init_scale_ablation(
    net: Network, sym: MaskedSymmetry, x: Array, y: Array, params: PyTree, state: PyTree, hyper: Hyper,
    key: PRNGKeyArray, *, factor: float = 10.0, steps: int, batch_size: int,
) -> dict[str, Any]:
    """NLD Fig. 1b: the normalised filters initialised ``factor``× larger, trained in lockstep with the
    original on the same mini-batches. The loss at step 0 is the same (up to BatchNorm's ε); the
    effective learning rate η/r² starts ``factor²``× smaller, and so does training."""
    sym = _check_scale(sym)
    big = normalise_groups(sym, params, sym.group_norms(params) * factor**2)
    opt = sgd_rule(hyper.lr, hyper.momentum, hyper.weight_decay).optimizer()
    tr = eqx.filter_jit(lockstep)(net, sym, x, y, [(params, opt, None), (big, opt, None)], state, key, steps=steps,
                                  batch_size=batch_size)
    eff = np.asarray(effective_learning_rate(tr.r2, hyper.lr, hyper.momentum))
    loss0 = [float(full_loss(net, p, state, x, y)) for p in (params, big)]
    lossN = [float(full_loss(net, p, s, x, y)) for p, s in zip(tr.params, tr.state)]
    return {
        "factor": float(factor),
        "initial_loss": loss0,
        "initial_loss_rel_diff": abs(loss0[1] - loss0[0]) / abs(loss0[0]),
        "final_loss": lossN,
        "median_lr_eff_start": [float(np.median(eff[k, 0])) for k in range(2)],
        "median_lr_eff_end": [float(np.median(eff[k, -1])) for k in range(2)],
        "cumulative_lr_eff": [float(np.median(eff[k, :-1].sum(0))) for k in range(2)],
        "_track": tr,
        "_eff": eff,
    }


def constrained_ablation(
    net: Network, sym: MaskedSymmetry, x: Array, y: Array, params: PyTree, state: PyTree, key: PRNGKeyArray, *,
    lrs: Sequence[float], momenta: Sequence[float], weight_decays: Sequence[float], steps: int, batch_size: int,
    save_every: int | None = None,
) -> dict[str, Any]:
    """NLD Fig. 3: constrained filter norm (:func:`constrain_norm` after every step) against
    unconstrained training over the grid η × β × λ, each side one ``vmap`` of
    :meth:`noether_jax.Recorder.run` over :class:`~noether_jax.Hyper` (same init and mini-batches).

    Returns the grid and the final full-training-set loss of both sides (shape (len η, len β, len λ)),
    NaN where a run diverged.
    """
    from ._recorder import Recorder

    sym = _check_scale(sym)
    grid = np.array(np.meshgrid(lrs, momenta, weight_decays, indexing="ij"), float).reshape(3, -1)
    hyper = Hyper(jnp.asarray(grid[0]), jnp.asarray(grid[1]), jnp.asarray(grid[2]))
    save_every = steps if save_every is None else save_every
    out = {}
    for name, post in (("unconstrained", None), ("constrained", constrain_norm(sym))):
        rec = Recorder(net, {"scale": sym}, x, y, batch_size=batch_size, steps=steps, save_every=save_every, post_update=post)
        res = eqx.filter_jit(eqx.filter_vmap(rec.run, in_axes=(None, None, 0, None)))(params, state, hyper, key)
        final = jax.vmap(lambda p, s: full_loss(net, p, s, x, y))(res.params, res.state)
        final = np.where(np.asarray(res.diverged_step) >= 0, np.nan, np.asarray(final))
        out[name] = final.reshape(len(lrs), len(momenta), len(weight_decays))
        out[name + "_r2_end"] = np.asarray(res.measured["scale"][:, -1]).reshape(len(lrs), len(momenta), len(weight_decays), -1)
    out.update(lr=np.asarray(lrs, float), momentum=np.asarray(momenta, float), weight_decay=np.asarray(weight_decays, float))
    return out


def adam_norm_check(
    net: Network, sym: MaskedSymmetry, x: Array, y: Array, params: PyTree, state: PyTree, key: PRNGKeyArray, *,
    lr: float, weight_decay: float, steps: int, batch_size: int,
) -> dict[str, Any]:
    """Adam and AdamW (decoupled λ) on normalised layers: the norm recursion
    |Wₙ₊₁|² = (1−ηλ)²|Wₙ|² + η²|uₙ|² (u: the Adam direction m̂/(√v̂+ε), taken from the run) scanned
    from |W₀|² and compared with the measured |W|² per group; λ = 0 for Adam.

    "Double adaptivity": Adam already divides by √v̂ per coordinate, and the normalised layer divides
    the angular step once more by r = |W|, which grows like η·(Σ|u|²)^{1/2} (Adam) or settles at
    r² ≈ η|u|²/(2λ) (AdamW). Returned: per run the worst relative error of the recursion, the share of
    the neglected cross term 2η(1−ηλ)⟨W,u⟩ in the final |W|², the equilibrium estimate and the
    angular step η|u_⊥|/r at the start and end. ``adam_b1_0`` (Adam without momentum) separates the
    two sources of ⟨W, u⟩ ≠ 0: the momentum trace of gradients taken at earlier directions, and the
    diagonal metric (a preconditioned tangent vector is not tangent).
    """
    sym = _check_scale(sym)
    opts = {
        "adam": (optax.adam(lr), 0.0),
        "adamw": (optax.adamw(lr, weight_decay=weight_decay), weight_decay),
        "adam_b1_0": (optax.adam(lr, b1=0.0), 0.0),  # no momentum: isolates the diagonal metric's part of ⟨W, u⟩
    }
    runs = [(params, o, None) for o, _ in opts.values()]
    tr = eqx.filter_jit(lockstep)(net, sym, x, y, runs, state, key, steps=steps, batch_size=batch_size)
    res: dict[str, Any] = {}
    for k, (name, (_, wd)) in enumerate(opts.items()):
        r2 = np.asarray(tr.r2[k])
        dsq, dot = np.asarray(tr.step_sq[k]), np.asarray(tr.step_dot[k])
        # Δ = −η(u + λW): |u|² = |Δ|²/η² + 2λ⟨W,Δ⟩/η + λ²|W|²,  ⟨W,u⟩ = −⟨W,Δ⟩/η − λ|W|²
        u_sq = dsq / lr**2 + 2 * wd * dot / lr + wd**2 * r2[:-1]
        w_u = -dot / lr - wd * r2[:-1]
        a = (1 - lr * wd) ** 2
        pred = np.empty_like(r2)
        pred[0] = r2[0]
        for n in range(u_sq.shape[0]):
            pred[n + 1] = a * pred[n] + lr**2 * u_sq[n]
        err = np.max(np.abs(pred - r2) / r2, axis=0)
        cross = np.sum(-2 * lr * (1 - lr * wd) * w_u, axis=0)
        u_perp = np.sqrt(np.maximum(u_sq - w_u**2 / r2[:-1], 0.0))
        ang_step = lr * u_perp / np.sqrt(r2[:-1])
        tail = max(1, u_sq.shape[0] // 10)
        res[name] = {
            "median_rel_error": float(np.median(err)),
            "max_rel_error": float(err.max()),
            "cross_term_share_median": float(np.median(np.abs(cross) / r2[-1])),
            "r2_growth_median": float(np.median(r2[-1] / r2[0])),
            "equilibrium_r2_pred_median": float(np.median(lr * u_sq[-tail:].mean(0) / (wd * (2 - lr * wd)))) if wd > 0 else None,
            "r2_end_median": float(np.median(r2[-1])),
            "angular_step_start_median": float(np.median(ang_step[:tail])),
            "angular_step_end_median": float(np.median(ang_step[-tail:])),
            "_r2": r2,
            "_pred": pred,
            "_ang_step": ang_step,
        }
    res["lr"], res["weight_decay"] = lr, weight_decay
    return res


# =============================================================================================
# 4. kinetic symmetry breaking report
# =============================================================================================


def _as_tuple(sym) -> tuple:
    return sym if isinstance(sym, tuple) else (sym,)


def ksb_report(
    net: Network, symmetries: dict[str, Any], x: Array, y: Array, params: PyTree, state: PyTree, key: PRNGKeyArray, *,
    lr: float = 0.1, momentum: float = 0.9, steps: int = 200, snapshots: int = 4, batch_size: int = 64, seed: int = 0,
) -> list[dict[str, Any]]:
    """For every symmetry in ``symmetries`` (kind → MaskedSymmetry or tuple) and every learning rule —
    SGD, heavy ball, diagonally preconditioned SGD (a fixed random P ∈ [1, 2)) and Adam's metric
    (P = √v̂ + ε of an Adam run) — whether the rule breaks it (:func:`noether_jax.breaks_symmetry` at
    random velocities) and the measured δ_αK along a run: SGD's trajectory for the first three,
    Adam's own for Adam's metric, at ``snapshots`` points, with θ̇ = (θₙ₊₁ − θₙ)/η.

    Each row: ``symmetry``, ``rule``, ``n_groups``, ``breaks`` (fraction of groups), ``max_relative``
    (max |δK|/2K at random velocities), ``median_abs_dK``, ``max_abs_dK`` and ``median_rel_dK``
    (|δK|/2K) along the run.
    """
    from ._noether import breaks_symmetry, kinetic_symmetry_breaking
    from ._rules import heavy_ball, preconditioned
    from ._rules import sgd as sgd_

    # one compile per (rule type, group structure), reused across snapshots (eager autodiff here cost seconds)
    delta_k = eqx.filter_jit(lambda rule, part, q, v: kinetic_symmetry_breaking(rule, part)(q, v))
    two_kinetic = eqx.filter_jit(lambda rule, q, v: 2.0 * rule.kinetic()(q, v, 0.0))
    breaks_at = eqx.filter_jit(lambda rule, part, q: breaks_symmetry(rule, part, q, n_samples=4))
    rng = np.random.default_rng(seed)
    pre = jax.tree.map(lambda a: jnp.asarray(1.0 + rng.uniform(size=np.shape(a)), jnp.result_type(a)), params)
    sgd_opt, adam_opt = optax.sgd(lr), optax.adam(lr)

    def loss_fn(p, s, batch):
        logits, s2 = net(p, s, batch[0], train=True)
        return cross_entropy(logits, batch[1]), s2

    def make_step(opt):
        @jax.jit
        def step(p, s, o, k):
            batch = sample_batch(k, x, y, batch_size)
            (_, s2), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, batch)
            upd, o = opt.update(g, o, p)
            return optax.apply_updates(p, upd), s2, o

        return step

    snaps: dict[str, list] = {"sgd": [], "adam": []}
    every = max(1, steps // snapshots)
    for name, opt in (("sgd", sgd_opt), ("adam", adam_opt)):
        is_adam = name == "adam"
        step = make_step(opt)
        p, s, o, k = params, state, opt.init(params), key
        for n in range(steps):
            k, kn = jax.random.split(k)
            p_new, s, o = step(p, s, o, kn)
            if (n + 1) % every == 0:
                v = jax.tree.map(lambda a, b: (a - b) / lr, p_new, p)
                metric = None
                if is_adam:
                    nu = optax.tree_utils.tree_get(o, "nu")
                    count = optax.tree_utils.tree_get(o, "count")
                    metric = jax.tree.map(lambda a: jnp.sqrt(a / (1 - 0.999 ** count)) + 1e-8, nu)
                snaps[name].append((p_new, v, metric))
            p = p_new
    rows = []
    for kind, sym in symmetries.items():
        parts = _as_tuple(sym)
        for rule_name in ("sgd", "heavy_ball", "preconditioned", "adam_metric"):
            traj = snaps["adam" if rule_name == "adam_metric" else "sgd"]
            abs_dk, rel_dk, breaks, rel_rand = [], [], [], []
            for q, v, metric in traj:
                rule = {
                    "sgd": lambda: sgd_(lr),
                    "heavy_ball": lambda: heavy_ball(lr, momentum),
                    "preconditioned": lambda: preconditioned(lr, pre),
                    "adam_metric": lambda metric=metric: preconditioned(lr, metric),
                }[rule_name]()
                two_k = float(two_kinetic(rule, q, v))
                for part in parts:
                    dk = np.asarray(delta_k(rule, part, q, v))
                    abs_dk.append(np.abs(dk))
                    rel_dk.append(np.abs(dk) / two_k)
            q_last = traj[-1][0]
            for part in parts:
                b = breaks_at(rule, part, q_last)
                breaks.append(np.asarray(b["breaks"]))
                rel_rand.append(np.asarray(b["relative"]))
            abs_dk, rel_dk = np.concatenate(abs_dk), np.concatenate(rel_dk)
            breaks, rel_rand = np.concatenate(breaks), np.concatenate(rel_rand)
            rows.append({
                "symmetry": kind,
                "rule": rule_name,
                "n_groups": int(breaks.size),
                "breaks": float(np.mean(breaks)),
                "max_relative": float(rel_rand.max()),
                "median_abs_dK": float(np.median(abs_dk)),
                "max_abs_dK": float(abs_dk.max()),
                "median_rel_dK": float(np.median(rel_dk)),
            })
    return rows


# =============================================================================================
# 5. report, figures and the command line
# =============================================================================================


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _smooth(a: np.ndarray, w: int) -> np.ndarray:
    w = max(1, min(w, a.shape[-1]))
    k = np.ones(w) / w
    return np.convolve(a, k, mode="valid")


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return str(path)


def _eq17_from_track(tr: Track, k: int, lr: float, beta: float, wd: float) -> dict[str, Any]:
    r2 = np.asarray(tr.r2[k])
    ghat = r2[:-1] * np.asarray(tr.grad_sq[k])
    vel = r2[:-1] * np.asarray(tr.step_sq[k]) / lr**2
    r4 = np.asarray(theory.predict_nld_r4(r2[0] ** 2, ghat, lr, beta, wd))
    r4v = np.asarray(predict_r4_velocity(r2[0] ** 2, vel, lr, beta, wd))
    e, ev = np.asarray(eq17_errors(r2, r4)), np.asarray(eq17_errors(r2, r4v))
    ratio = np.mean(vel * (1 - beta) ** 2) / np.mean(ghat)
    return {
        "n_groups": int(r2.shape[1]),
        "median_rel_error": float(np.median(e)),
        "max_rel_error": float(e.max()),
        "velocity_forced_median_rel_error": float(np.median(ev)),
        "velocity_forced_max_rel_error": float(ev.max()),
        "forcing_ratio": float(ratio),  # μ²r²|θ̇|²/|ĝ|²: 1 for a slowly varying gradient, (1−β)/(1+β) for pure noise
        "noise_limit_ratio": float((1 - beta) / (1 + beta)),
        "median_lr_eff_start": float(np.median(effective_learning_rate(r2[0], lr, beta))),
        "median_lr_eff_end": float(np.median(effective_learning_rate(r2[-1], lr, beta))),
        "_r2": r2, "_r4": r4, "_r4v": r4v,
    }


def _public(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _public(v) for k, v in d.items() if not str(k).startswith("_")}
    if isinstance(d, list):
        return [_public(v) for v in d]
    if isinstance(d, np.ndarray):
        return d.tolist()
    if isinstance(d, (np.floating, np.integer)):
        return d.item()
    return d


def nld_report(
    out_dir: str | Path,
    *,
    quick: bool = True,
    model: str = "cnn_bn",
    lr: float = 0.1,
    momentum: float = 0.0,
    weight_decay: float = 5e-4,
    steps: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    width: int | None = None,
    detect: bool = True,
) -> dict[str, Any]:
    """Run the NLD experiments on digits, write PNG figures, ``data.npz`` and ``summary.json`` to
    ``out_dir``, and return the summary (``quick``: CPU, about a minute; else paper-like lengths).

    The summary holds ``eq17`` (n_groups, median/max relative error of eq. 17 in r², the
    velocity-forced variant, the forcing ratio), ``rmsprop_match`` (max_angle_deg over the first 500
    steps, final_loss_rel_gap, mismatched_max_angle_deg, lr_eff_max_rel_error, ...), ``match_vs_lr``,
    ``ablation`` (constrained_final_loss, unconstrained_final_loss at β = 0.9 with weight decay, the
    ×10-init and Adam/AdamW parts), ``ksb`` (rows per symmetry and rule) and ``config``.

    Example:
        >>> import tempfile, noether_jax as nj                      # doctest: +SKIP
        >>> s = nj.nld.nld_report(tempfile.mkdtemp(), quick=True)  # doctest: +SKIP
        >>> sorted(s)[:3]                                           # doctest: +SKIP
        ['ablation', 'config', 'eq17']
    """
    from . import _data, _models
    from ._detect import detect as detect_fn

    if model not in _models.MODELS:
        raise ValueError(f"unknown model {model!r}; choose one with scale-invariant groups: cnn_bn, vgg_bn or mlp_layernorm.")
    Hyper(lr, momentum, weight_decay)  # refuse bad hyperparameters before any work, naming the value
    if steps is not None and int(steps) < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps}.")
    t0 = time.perf_counter()
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = (500 if quick else 2000) if steps is None else int(steps)
    width = (4 if quick else 16) if width is None else int(width)
    ds = _data.digits()
    x, y = ds.x_train, ds.y_train
    net, params, state = _models.functional(_models.make_model(model, key=seed, width=width))
    key = jax.random.key(seed + 1)
    syms: dict[str, Any]
    if detect:
        found = detect_fn(net, params, (x[:128], y[:128]), state=state)
        syms = found.symmetries
    elif model in ("cnn_bn", "vgg_bn"):
        syms = {"scale": cnn_scale_symmetry(params)}
    else:
        raise ValueError(f"model {model!r} needs `detect=True` (its scale groups are not built by hand).")
    if "scale" not in syms:
        raise ValueError(f"model {model!r} has no scale-invariant group (choose cnn_bn, vgg_bn or mlp_layernorm).")
    sym = syms["scale"]
    hyper = Hyper(lr, momentum, weight_decay)
    summary: dict[str, Any] = {"config": dict(model=model, lr=lr, momentum=momentum, weight_decay=weight_decay, steps=steps,
                                              batch_size=batch_size, seed=seed, width=width, quick=quick,
                                              symmetries={k: int(sum(s.n_groups for s in _as_tuple(v))) for k, v in syms.items()})}
    figures: dict[str, str] = {}
    arrays: dict[str, np.ndarray] = {}

    # ---- 1 + 2: SGD against the mapped RMSProp (and its control) in lockstep; eq. 17 on the SGD run
    cmp = compare_rmsprop_jit(net, sym, x, y, params, state, hyper, key, steps=steps, batch_size=batch_size)
    tr = cmp.track
    e17 = _eq17_from_track(tr, 0, lr, momentum, weight_decay)
    summary["eq17"] = _public(e17)
    s_all = rmsprop_summary(cmp)
    s500 = rmsprop_summary(cmp, window=min(500, steps))
    summary["rmsprop_match"] = {**s_all, "max_angle_deg": s500["max_angle_deg"],
                                "mismatched_max_angle_deg": s500["mismatched_max_angle_deg"],
                                "max_angle_deg_all_steps": s_all["max_angle_deg"],
                                "mismatched_max_angle_deg_all_steps": s_all["mismatched_max_angle_deg"],
                                "control": "sqrt(G) x 2 (effective learning rate halved)",
                                "mapping": {k: np.asarray(v).tolist() if k != "initial_accumulator" else float(np.median(v))
                                            for k, v in cmp.mapping._asdict().items()}}
    if momentum > 0:
        extra = {}
        for acc, ctrl in (("momentum", "no_momentum"),):
            c2 = compare_rmsprop_jit(net, sym, x, y, params, state, hyper, key, steps=steps, batch_size=batch_size,
                                     accumulate=acc, control=ctrl)
            extra[f"accumulate_{acc}"] = rmsprop_summary(c2, window=min(500, steps))
            extra["no_momentum_mapping_max_angle_deg"] = extra[f"accumulate_{acc}"]["mismatched_max_angle_deg"]
        summary["rmsprop_match"]["with_momentum_variants"] = extra
    arrays.update(loss=np.asarray(tr.loss), r2=np.asarray(tr.r2), angle=np.asarray(tr.angle), lr_eff=np.asarray(cmp.lr_eff),
                  eq17_r4=e17["_r4"], eq17_velocity_r4=e17["_r4v"])

    n = np.arange(steps + 1)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    r2 = e17["_r2"]
    pick = np.argsort(r2[-1] / r2[0])[np.linspace(0, r2.shape[1] - 1, min(4, r2.shape[1])).astype(int)]
    for i, g in enumerate(pick):
        c = f"C{i}"
        ax[0].plot(n, r2[:, g], c=c, lw=1.5)
        ax[0].plot(n, np.sqrt(e17["_r4"][:, g]), c=c, ls="--", lw=1)
        ax[0].plot(n, np.sqrt(e17["_r4v"][:, g]), c=c, ls=":", lw=1)
    ax[0].set(xlabel="step", ylabel=r"$r^2=|\theta_\mathcal{A}|^2$",
              title=f"eq. 17 (--), velocity-forced (:) vs measured; β={momentum}")
    ax[1].semilogy(n, effective_learning_rate(r2, lr, momentum), lw=0.6)
    ax[1].set(xlabel="step", ylabel=r"$\eta/((1-\beta)r^2)$", title="effective learning rate per group")
    figures["eq17"] = _save(fig, out / "nld_eq17.png")

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ang = np.asarray(tr.angle)
    ax[0].plot(n, ang[1].max(1), label="mapped RMSProp")
    ax[0].plot(n, ang[2].max(1), label="control (√G × 2)")
    ax[0].set(xlabel="step", ylabel="max angle to SGD's θ̂ (deg)", title="direction match, worst group")
    ax[0].legend()
    w = max(1, steps // 50)
    for k, lab in enumerate(("SGD", "mapped RMSProp", "control")):
        ax[1].plot(_smooth(np.asarray(tr.loss[k]), w), label=lab, lw=1)
    ax[1].set(xlabel="step", ylabel="mini-batch loss (smoothed)", yscale="log", title="loss curves")
    ax[1].legend()
    lre = np.asarray(cmp.lr_eff)
    for i, g in enumerate(pick):
        ax[2].plot(n, lre[0, :, g], c=f"C{i}", lw=1.5)
        ax[2].plot(n, lre[1, :, g], c=f"C{i}", ls="--", lw=1)
    ax[2].set(xlabel="step", ylabel="effective lr", yscale="log", title=r"$\eta/r^2$ (SGD) vs lr/$\sqrt{G}$ (--)")
    figures["rmsprop_match"] = _save(fig, out / "nld_rmsprop_match.png")

    # ---- match as a function of η/r²
    msteps = min(steps, 100 if quick else 500)
    short = min(steps, 200) if quick else steps  # the ×10-init and Adam ablations
    lrs0 = [0.03, 0.1, 0.3] if quick else [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
    lrs9 = [0.003, 0.01, 0.03] if quick else [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
    mv = {"beta0": match_vs_effective_lr(net, sym, x, y, params, state, lrs0, 0.0, weight_decay, key, steps=msteps, batch_size=batch_size),
          "beta0.9_gradient": match_vs_effective_lr(net, sym, x, y, params, state, lrs9, 0.9, weight_decay, key, steps=msteps,
                                                    batch_size=batch_size),
          "beta0.9_momentum": match_vs_effective_lr(net, sym, x, y, params, state, lrs9, 0.9, weight_decay, key, steps=msteps,
                                                    batch_size=batch_size, accumulate="momentum")}
    summary["match_vs_lr"] = _public(mv) | {"steps": msteps}
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, d in mv.items():
        ax.loglog(d["median_eta_over_r2"], d["max_angle_deg"], "o-", label=f"{name} (mapped)")
    ax.loglog(mv["beta0"]["median_eta_over_r2"], mv["beta0"]["control_max_angle_deg"], "x:", c="gray", label="β=0 control")
    ax.set(xlabel=r"median $\eta/r^2$ over the run", ylabel="max angle to SGD (deg)", title=f"match vs effective step ({msteps} steps)")
    ax.legend(fontsize=7)
    figures["match_vs_lr"] = _save(fig, out / "nld_match_vs_lr.png")

    # ---- 3a: ×10 initialisation
    a = init_scale_ablation(net, sym, x, y, params, state, hyper, key, steps=short, batch_size=batch_size)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, lab in enumerate(("×1", "×10")):
        ax[0].plot(_smooth(np.asarray(a["_track"].loss[k]), w), label=lab)
        ax[1].semilogy(np.median(a["_eff"][k], axis=1), label=lab)
    ax[0].set(xlabel="step", ylabel="mini-batch loss (smoothed)", yscale="log", title="×10 init of normalised filters")
    ax[1].set(xlabel="step", ylabel=r"median $\eta/((1-\beta)r^2)$", title="effective learning rate")
    ax[0].legend(), ax[1].legend()
    figures["ablation_init"] = _save(fig, out / "nld_ablation_init.png")

    # ---- 3b: constrained filter norm over η × β × λ (vmapped)
    grid = dict(lrs=[0.01, 0.03, 0.1], momenta=[0.9], weight_decays=[5e-4]) if quick else \
        dict(lrs=[0.003, 0.01, 0.03, 0.1, 0.3], momenta=[0.0, 0.5, 0.9, 0.99], weight_decays=[0.0, 1e-4, 5e-4, 1e-3])
    b = constrained_ablation(net, sym, x, y, params, state, key, steps=steps if quick else 2 * steps,
                             batch_size=batch_size, **grid)
    ib, il = list(b["momentum"]).index(0.9), int(np.argmax(b["weight_decay"]))
    best_u = float(np.nanmin(b["unconstrained"][:, ib, il]))
    best_c = float(np.nanmin(b["constrained"][:, ib, il]))
    fig, ax = plt.subplots(1, len(b["momentum"]), figsize=(4 * len(b["momentum"]), 3.4), squeeze=False)
    for j, beta in enumerate(b["momentum"]):
        for l, wd in enumerate(b["weight_decay"]):
            ax[0, j].loglog(b["lr"], b["unconstrained"][:, j, l], "o-", c=f"C{l}", label=f"unconstrained λ={wd:g}")
            ax[0, j].loglog(b["lr"], b["constrained"][:, j, l], "s--", c=f"C{l}", label=f"constrained λ={wd:g}")
        ax[0, j].set(xlabel="η", ylabel="final training loss", title=f"β = {beta:g}")
    ax[0, 0].legend(fontsize=7)
    figures["ablation_constrained"] = _save(fig, out / "nld_ablation_constrained.png")

    # ---- 3c: Adam / AdamW
    c = adam_norm_check(net, sym, x, y, params, state, key, lr=0.01, weight_decay=0.1, steps=short, batch_size=batch_size)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, name in enumerate(("adam", "adamw", "adam_b1_0")):
        ax[0].plot(np.median(c[name]["_r2"], 1), c=f"C{i}", label=f"{name} measured")
        ax[0].plot(np.median(c[name]["_pred"], 1), c=f"C{i}", ls="--", label=f"{name} recursion")
        ax[1].semilogy(_smooth(np.median(c[name]["_ang_step"], 1), w), c=f"C{i}", label=name)
    ax[0].set(xlabel="step", ylabel=r"median $|W|^2$", title=r"$|W|^2 \leftarrow (1-\eta\lambda)^2|W|^2+\eta^2|u|^2$")
    ax[1].set(xlabel="step", ylabel=r"median $\eta|u_\perp|/|W|$", title="angular step (double adaptivity)")
    ax[0].legend(fontsize=7), ax[1].legend(fontsize=7)
    figures["adam"] = _save(fig, out / "nld_adam.png")

    summary["ablation"] = {
        "constrained_final_loss": best_c,
        "unconstrained_final_loss": best_u,
        "at": {"momentum": 0.9, "weight_decay": float(b["weight_decay"][il]), "best over lr": b["lr"].tolist()},
        "grid": _public({k: v for k, v in b.items() if not k.endswith("_r2_end")}),
        "init_x10": _public({k: v for k, v in a.items()}),
        "adam": _public(c),
    }

    # ---- 4: kinetic symmetry breaking
    summary["ksb"] = ksb_report(net, syms, x, y, params, state, key, lr=lr, steps=40 if quick else 400,
                                snapshots=2 if quick else 4, batch_size=batch_size)

    summary["figures"] = {k: Path(v).name for k, v in figures.items()}
    summary["elapsed_s"] = time.perf_counter() - t0
    np.savez_compressed(out / "nld_data.npz", **arrays)
    (out / "summary.json").write_text(json.dumps(_public(summary), indent=2, allow_nan=True))
    return _public(summary)


def nld_command(
    model: str = "cnn_bn",
    lr: float = 0.1,
    momentum: float = 0.0,
    weight_decay: float = 5e-4,
    steps: int = 2000,
    batch_size: int = 64,
    seed: int = 0,
    width: int = 8,
    quick: bool = False,
    detect: bool = True,
    out: Path = Path("runs/nld"),
) -> None:
    """Noether's Learning Dynamics on digits: eq. 17, SGD vs its mapped RMSProp, the paper's ablations
    and kinetic symmetry breaking; writes summary.json, PNG figures and nld_data.npz."""
    import typer

    try:
        s = nld_report(out, quick=quick, model=model, lr=lr, momentum=momentum, weight_decay=weight_decay, steps=steps,
                       batch_size=batch_size, seed=seed, width=width, detect=detect)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    e, r, a = s["eq17"], s["rmsprop_match"], s["ablation"]
    typer.echo(f"eq. 17: {e['n_groups']} groups, median rel. error {e['median_rel_error']:.2e}, max {e['max_rel_error']:.2e}"
               f" (velocity-forced: median {e['velocity_forced_median_rel_error']:.2e})")
    typer.echo(f"RMSProp map: max angle {r['max_angle_deg']:.2f}° (control {r['mismatched_max_angle_deg']:.2f}°), "
               f"final loss gap {r['final_loss_rel_gap']:.2%}, lr_eff error {r['lr_eff_max_rel_error']:.2%}")
    typer.echo(f"ablation (β=0.9, λ>0): unconstrained {a['unconstrained_final_loss']:.4f} vs constrained {a['constrained_final_loss']:.4f}")
    typer.echo(f"wrote {out}/summary.json, figures and nld_data.npz")


def _annotate_command() -> None:
    """Give :func:`nld_command` typer-style annotated options (kept lazy: typer is a CLI dependency)."""
    try:
        from typing import Annotated

        import typer
    except ImportError:  # pragma: no cover
        return
    helps = {
        "model": "cnn_bn, vgg_bn or mlp_layernorm (a model with scale-invariant groups)",
        "lr": "learning rate η (> 0)", "momentum": "heavy-ball momentum β in [0, 1)",
        "weight_decay": "coupled weight decay λ (≥ 0)", "steps": "SGD steps (> 0)", "batch_size": "mini-batch size",
        "seed": "PRNG seed", "width": "first-block channels", "quick": "CPU-minute sizes for the sweeps",
        "detect": "find the groups with nj.symmetry.detect (else by architecture; cnn_bn/vgg_bn only)",
        "out": "output folder",
    }
    ann = dict(nld_command.__annotations__)
    types = {"model": str, "lr": float, "momentum": float, "weight_decay": float, "steps": int, "batch_size": int,
             "seed": int, "width": int, "quick": bool, "detect": bool, "out": Path}
    for name, tp in types.items():
        ann[name] = Annotated[tp, typer.Option(help=helps[name])]
    nld_command.__annotations__ = ann


_annotate_command()


def nld_report_part(out_dir: Path, *, quick: bool = True):
    """Hook for the main report (``noether_jax._report_parts.PARTS``): ``(summary, [Section])``."""
    from . import _plots
    from ._report import Section

    s = nld_report(Path(out_dir), quick=quick)
    e, r, a = s["eq17"], s["rmsprop_match"], s["ablation"]
    sec = Section(
        title="Noether's Learning Dynamics: effective learning rate, the RMSProp map, ablations",
        claim="SGD on a normalised layer is RMSProp on the unit sphere with √G = r²; removing that implicit "
              "adaptivity (constrained norm) hurts training.",
        prediction="NLD eq. 17 for r⁴; the mapped group RMSProp (lr η, ρ = e^{−4ηλ/(1−β)}, gain 2η²(1+β)/(1−β)³, G(0) = r⁴(0)).",
        measurement=f"cnn_bn on digits, η = {s['config']['lr']}, β = {s['config']['momentum']}, λ = {s['config']['weight_decay']}, "
                    f"{s['config']['steps']} steps; {e['n_groups']} scale groups.",
        error=f"eq. 17 median rel. error {e['median_rel_error']:.2e}; mapped RMSProp max angle {r['max_angle_deg']:.2f}° "
              f"(control {r['mismatched_max_angle_deg']:.1f}°); unconstrained {a['unconstrained_final_loss']:.4f} vs "
              f"constrained {a['constrained_final_loss']:.4f} final loss.",
        anchor="nld",
    )
    for name, file in s["figures"].items():
        sec.figures.append((name.replace("_", " "), _plots.encode_file(Path(out_dir) / file)))
    return s, [sec]
