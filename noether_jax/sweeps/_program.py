"""The compiled program of one chunk of sweep members: vmap of the Recorder, sharded over devices (private)."""

from __future__ import annotations

import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .. import theory
from ..rules import Hyper
from ..training import Recorder
from ._grid import data_key

_COMPILED: dict[Any, Any] = {}  # (program, shapes, devices) -> compiled executable
N_MEMBER_ARGS = 6  # seed index, seed, lr, momentum, weight decay, init scale


def chunk_program(static, dynamic, params_by_seed, state_by_seed, x_test, y_test, seed_idx, seed, lr, mom, wd, scale,
                  *, scale_only: bool, floor: float):
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
        out = rec.run(p0, st, Hyper(lr_, mom_, wd_), data_key(s))
        logits, _ = rec.net(out.params, out.state, rec.x, train=False)
        final_loss = rec.loss(logits, rec.y)
        test_logits, _ = rec.net(out.params, out.state, x_test, train=False)
        acc = jnp.mean((jnp.argmax(test_logits, -1) == y_test).astype(test_logits.dtype))
        series = {"loss": out.loss}
        summ = {"final_loss": final_loss, "test_accuracy": acc}
        for k in rec.symmetries:
            m, th, ident = out.measured[k], out.theory[k], out.identity[k]
            series[f"measured_{k}"], series[f"theory_{k}"], series[f"identity_{k}"] = m, th, ident
            e_th = theory.relative_error(th, m, floor=floor)
            summ[f"error_median_{k}"], summ[f"error_max_{k}"] = jnp.median(e_th), jnp.max(e_th)
            summ[f"identity_error_median_{k}"] = jnp.median(theory.relative_error(ident, m, floor=floor))
        if "scale" in rec.symmetries:
            series["nld_r4"] = out.nld_r4
        status = out.status
        status = jnp.where((status == 0) & ~jnp.isfinite(final_loss), 2, status)
        diverged = out.diverged_step >= 0
        # mask the series after the divergence (everything when not finite or invalid) and the summaries
        all_bad = (status == 2) | (status == 3)
        bad_t = jnp.where(all_bad, True, diverged & (out.step > out.diverged_step))
        series = {k: jnp.where(bad_t.reshape((-1,) + (1,) * (v.ndim - 1)), jnp.nan, v) for k, v in series.items()}
        keep = (status == 0) | (status == 4)
        summ = {k: jnp.where(keep, v, jnp.nan) for k, v in summ.items()}
        return {**series, **summ, "status": status, "diverged_step": out.diverged_step}

    return jax.vmap(one)(seed_idx, seed, lr, mom, wd, scale)


def compiled(rec: Recorder, shared: tuple, chunk: int, mesh: Mesh, *, scale_only: bool, floor: float, dtype: Any):
    """AOT-compile the chunk program once per (recorder program, shapes, chunk size, devices, dtype).

    Returns (executable, the recorder's arrays, compile seconds, of which XLA seconds).
    """
    dynamic, static = eqx.partition(rec, eqx.is_array)
    fdt = jnp.dtype(dtype)
    member_avals = (jax.ShapeDtypeStruct((chunk,), jnp.int32),) * 2 + (jax.ShapeDtypeStruct((chunk,), fdt),) * 4
    avals = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (dynamic, *shared))
    key = (
        jax.tree.structure(static), jax.tree.structure(avals), tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(avals)),
        chunk, tuple(d.id for d in mesh.devices.flat), scale_only, floor, str(fdt),
    )
    if key in _COMPILED:
        return _COMPILED[key], dynamic, 0.0, 0.0
    repl, mem = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("member"))
    # shard_map: every device runs the same vmapped program on its own members (no communication),
    # so a run on n devices is bit for bit a single-device run with chunk_size / n members per chunk.
    local = jax.shard_map(
        lambda d, *args: chunk_program(static, d, *args, scale_only=scale_only, floor=floor),
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
