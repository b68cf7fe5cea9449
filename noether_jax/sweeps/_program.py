"""The compiled program of one chunk of sweep members: vmap of the Recorder, sharded over devices (private)."""

from __future__ import annotations

import time
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .. import theory
from .._tree import float_dtype
from ..nld import eq17_errors
from ..rules import Hyper
from ..training import Recorder
from ._grid import data_key

_COMPILED: dict[Any, Any] = {}  # (program, shapes, devices) -> compiled executable
N_MEMBER_ARGS = 6  # seed index, seed, lr, momentum, weight decay, init scale


def chunk_program(static, dynamic, params_by_seed, state_by_seed, x_test, y_test, seed_idx, seed, lr, mom, wd, scale,
                  *, scale_only: bool, floor: float, flow: str | None = None):
    """vmap over members of: init from the seed's params, Recorder.run, summary, masking."""
    rec: Recorder = eqx.combine(dynamic, static)
    scale_mask = None
    if scale_only:
        scale_mask = jax.tree.map(lambda ids, p: jnp.broadcast_to(ids >= 0, p.shape[1:]), rec.symmetries["scale"].ids, params_by_seed)

    def one(si, s, lr_, mom_, wd_, sc):
        p0 = jax.tree.map(lambda a: a[si], params_by_seed)
        st = jax.tree.map(lambda a: a[si], state_by_seed)
        if scale_mask is None:
            p0 = jax.tree.map(lambda a: a * sc.astype(a.dtype), p0)
        else:
            p0 = jax.tree.map(lambda a, m: jnp.where(m, a * sc.astype(a.dtype), a), p0, scale_mask)
        hyper = Hyper(lr_, mom_, wd_)
        out = rec.run(p0, st, hyper, data_key(s))
        series, summ = _laws(rec, out, x_test, y_test, floor)
        summ |= _physics(rec, out)
        if flow is not None:
            series["flow_distance"] = _flow_distance(rec, out, p0, st, hyper, flow)
        status = out.status
        status = jnp.where((status == 0) & ~jnp.isfinite(summ["final_loss"]), 2, status)
        diverged = out.diverged_step >= 0
        # mask the series after the divergence (everything when not finite or invalid) and the summaries
        all_bad = (status == 2) | (status == 3)
        bad_t = jnp.where(all_bad, True, diverged & (out.step > out.diverged_step))
        series = {k: jnp.where(bad_t.reshape((-1,) + (1,) * (v.ndim - 1)), jnp.nan, v) for k, v in series.items()}
        keep = (status == 0) | (status == 4)
        summ = {k: jnp.where(keep, v, jnp.nan) for k, v in summ.items()}
        return {**series, **summ, "status": status, "diverged_step": out.diverged_step}

    return jax.vmap(one)(seed_idx, seed, lr, mom, wd, scale)


def _laws(rec: Recorder, out, x_test, y_test, floor: float):
    """The measured series, the theory's per-group errors, the final loss and the test accuracy."""
    logits, _ = rec.net(out.params, out.state, rec.x, train=False)
    test_logits, _ = rec.net(out.params, out.state, x_test, train=False)
    acc = jnp.mean((jnp.argmax(test_logits, -1) == y_test).astype(test_logits.dtype))
    series = {"loss": out.loss}
    summ = {"final_loss": rec.loss(logits, rec.y), "test_accuracy": acc}
    for k in rec.symmetries:
        m, th, ident = out.measured[k], out.theory[k], out.identity[k]
        series[f"measured_{k}"], series[f"theory_{k}"], series[f"identity_{k}"] = m, th, ident
        e_th = theory.relative_error(th, m, floor=floor)
        summ[f"error_median_{k}"], summ[f"error_max_{k}"] = jnp.median(e_th), jnp.max(e_th)
        summ[f"identity_error_median_{k}"] = jnp.median(theory.relative_error(ident, m, floor=floor))
    if "scale" in rec.symmetries and out.nld_r4.size:
        series["nld_r4"] = out.nld_r4
        summ["eq17_error_median"] = jnp.median(eq17_errors(out.measured["scale"], out.nld_r4))
    return series, summ


def _physics(rec: Recorder, out) -> dict:
    """Kinetic symmetry breaking, the charge budget, the RMSProp companion and the guard of one member."""
    summ = {}
    for k, v in out.ksb.items():  # median over groups of the time average (save points after step 0)
        summ[f"ksb_{k}"] = jnp.median(jnp.mean(v[1:], axis=0))
    for k, parts in out.budget.items():
        for part, val in parts.items():
            summ[f"budget_{part}_{k}"] = val
    if "rmsprop" in out.companions:
        c = out.companions["rmsprop"]
        summ["rmsprop_angle_max"], summ["rmsprop_lr_eff_error"] = c["angle_max"][-1], c["lr_eff_error_max"][-1]
    for name, err in out.companions.get("eq17", {}).items():
        summ[f"eq17_{name}"] = err
    if rec.sharpness_every:
        g = out.guard
        summ["sharpness_max"] = jnp.max(jnp.where(jnp.isfinite(g.sharpness), g.sharpness, -jnp.inf))
        summ["edge_of_stability"] = jnp.where(jnp.isnan(g.edge).any(), jnp.nan, jnp.max(g.edge))
    return summ


def _flow_distance(rec: Recorder, out, p0, st, hyper, flow: str):
    """|θ_flow(nη) − θₙ| / |θₙ| at the save points: the member's continuous model (modified or gradient
    flow of the full-batch loss, from the rule's initial velocity) integrated with a fixed step η/4 (Tsit5):
    ReLU networks are only piecewise smooth, and an adaptive solver crawls at every kink."""
    from ..mechanics import simulate
    from ..rules import resolve

    x, y = rec.x.astype(float_dtype(p0)) if jnp.issubdtype(rec.x.dtype, jnp.floating) else rec.x, rec.y

    def loss(p):
        return rec.loss(rec.net(p, st, x, train=True)[0], y)

    rule = resolve(rec.optimizer, hyper).rule.astype(float_dtype(p0))  # the rule the member trained with
    ts = out.step.astype(rule.lr.dtype) * rule.lr
    opts = dict(t1=ts[-1], ts=ts, solver=diffrax.Tsit5(), stepsize_controller=diffrax.ConstantStepSize(), dt0=rule.lr / 4,
                max_steps=4 * rec.steps + 16, throw=False)
    if flow == "modified":
        traj = simulate(rule.lagrangian(loss), p0, rule.initial_velocity(p0, jax.grad(loss)(p0)), **opts)
    else:
        traj = simulate(rule.gradient_flow(loss), p0, **opts)
    disc = out.params_series
    num = sum(jnp.sum((a - b) ** 2, axis=tuple(range(1, a.ndim))) for a, b in zip(jax.tree.leaves(traj.q), jax.tree.leaves(disc),
                                                                                     strict=True))
    den = sum(jnp.sum(b**2, axis=tuple(range(1, b.ndim))) for b in jax.tree.leaves(disc))
    return jnp.where(traj.successful, jnp.sqrt(num / den), jnp.nan)


def compiled(rec: Recorder, shared: tuple, chunk: int, mesh: Mesh, *, scale_only: bool, floor: float, dtype: Any,
             flow: str | None = None):
    """AOT-compile the chunk program once per (recorder program, shapes, chunk size, devices, dtype).

    Returns (executable, the recorder's arrays, compile seconds, of which XLA seconds).
    """
    dynamic, static = eqx.partition(rec, eqx.is_array)
    fdt = jnp.dtype(dtype)
    member_avals = (jax.ShapeDtypeStruct((chunk,), jnp.int32),) * 2 + (jax.ShapeDtypeStruct((chunk,), fdt),) * 4
    avals = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (dynamic, *shared))
    key = (
        jax.tree.structure(static), jax.tree.structure(avals), tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(avals)),
        chunk, tuple(d.id for d in mesh.devices.flat), scale_only, floor, str(fdt), flow,
    )
    if key in _COMPILED:
        return _COMPILED[key], dynamic, 0.0, 0.0
    repl, mem = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("member"))
    # shard_map: every device runs the same vmapped program on its own members (no communication),
    # so a run on n devices is bit for bit a single-device run with chunk_size / n members per chunk.
    local = jax.shard_map(
        lambda d, *args: chunk_program(static, d, *args, scale_only=scale_only, floor=floor, flow=flow),
        mesh=mesh, in_specs=(PartitionSpec(),) * 5 + (PartitionSpec("member"),) * N_MEMBER_ARGS,
        out_specs=PartitionSpec("member"), check_vma=False,
    )
    fn = jax.jit(
        local,
        in_shardings=(jax.tree.map(lambda _: repl, avals[0]), *jax.tree.map(lambda _: repl, avals[1:]), *(mem,) * N_MEMBER_ARGS),
        out_shardings=mem,
    )
    t0 = time.perf_counter()
    lowered = fn.lower(*avals, *member_avals)
    t1 = time.perf_counter()
    exe = lowered.compile()
    t2 = time.perf_counter()
    _COMPILED[key] = exe
    return exe, dynamic, t2 - t0, t2 - t1


def put(x, sharding):
    """Host array -> global jax.Array with ``sharding`` (each process supplies its own shards: multi-host safe)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def gather(tree):
    if jax.process_count() > 1:  # pragma: no cover - multi-host only
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree.map(np.asarray, jax.device_get(tree))
