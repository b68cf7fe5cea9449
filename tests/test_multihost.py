"""Several hosts, proven: two processes joined by ``jax.distributed.initialize`` run one sweep.

Each process has two CPU devices (``--xla_force_host_platform_device_count=2``), so the sweep's mesh has
four devices across two processes, with a coordinator on 127.0.0.1. Ground truth: the same sweep in this
process on one device, one member per chunk (bit for bit: every device runs the single-device program on
its own member). Only process 0 writes the store; killing one process mid-sweep and restarting both
resumes from the store.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import xarray as xr
from _groups import mlp_groups

import noether_jax as nj

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(lr=[0.05, 0.2], momentum=[0.0, 0.9], weight_decay=0.0, seed=2, steps=6, save_every=3, width=4, batch_size=16,
            progress=False, dtype="float64")

WORKER = textwrap.dedent("""
    import sys, time
    port, pid, out, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")   # CPU collectives across processes
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    sys.path.insert(0, "tests")
    import noether_jax as nj
    from noether_jax.sweeps import _store
    from _groups import mlp_groups
    real = _store.atomic_write
    def logged(path, payload):                 # record every file this process writes
        print("WRITE", path, flush=True)
        return real(path, payload)
    _store.atomic_write = logged
    BASE = %r
    slow = (lambda done, total: time.sleep(2.0)) if mode == "slow" else None
    ds = nj.sweep(data=nj.data.digits(), **BASE, chunk_size=4, store=out + "/store", on_chunk=slow,
                  symmetries=lambda net, p, s: mlp_groups("mlp", p))
    assert jax.device_count() == 4 and jax.process_count() == 2
    if pid == 0:
        ds.to_netcdf(out + "/multi.nc", engine="scipy")
    print("DONE", pid, ds.attrs["chunks_run"], ds.attrs["chunks_loaded"], flush=True)
""") % BASE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp: Path, mode: str) -> list[subprocess.Popen]:
    script = tmp / "worker.py"
    script.write_text(WORKER)
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"  # keeps the session's level
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    port = _free_port()
    return [subprocess.Popen([sys.executable, str(script), str(port), str(i), str(tmp), mode], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]


def _finish(procs, timeout=240) -> list[str]:
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out[-3000:]
        outs.append(out)
    return outs


@pytest.mark.slow  # three pairs of processes, each compiling the sweep: over a minute on 2 cores
def test_two_processes_equal_one_write_once_and_resume_after_a_kill(tmp_path):
    digits = nj.data.digits()
    reference = nj.sweep(data=digits, **BASE, chunk_size=1, devices=jax.devices()[:1],
                         symmetries=lambda net, p, s: mlp_groups("mlp", p))

    # 1. a killed sweep: process 1 dies after the first chunk is stored; process 0 cannot go on alone
    procs = _launch(tmp_path, "slow")
    store = tmp_path / "store"
    deadline = time.time() + 240
    while not list(store.glob("chunk-*.nc")):
        assert all(p.poll() is None for p in procs), [p.communicate()[0][-2000:] for p in procs]
        assert time.time() < deadline, "no chunk written in time"
        time.sleep(0.05)
    os.kill(procs[1].pid, signal.SIGKILL)
    try:
        procs[0].wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait()
    for p in procs:
        p.communicate()
    written = sorted(store.glob("chunk-*.nc"))
    assert len(written) == 1

    # 2. both restarted: the stored chunk is loaded, the other one run; only process 0 writes
    outs = _finish(_launch(tmp_path, "fast"))
    done = [line.split() for out in outs for line in out.splitlines() if line.startswith("DONE")]
    assert sorted((d[1], d[2], d[3]) for d in done) == [("0", "1", "1"), ("1", "1", "1")]
    writes = [[line for line in out.splitlines() if line.startswith("WRITE")] for out in outs]
    assert writes[0] and not writes[1], writes
    got = xr.open_dataset(tmp_path / "multi.nc", engine="scipy").load()
    assert set(got.data_vars) == set(reference.data_vars)
    for k in reference.data_vars:
        np.testing.assert_array_equal(got[k].values, reference[k].values, err_msg=k)
