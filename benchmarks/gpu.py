"""A ready accelerator run (issue 18): sweeps to the largest N that fits, a VGG-scale Neural Mechanics run,
``simulate`` at d = 10⁶, and the device's attainable peak, written as one JSON file.

    bash benchmarks/gpu.sh                  # on a GPU: under 8 minutes, writes runs/bench/gpu.json
    python benchmarks/gpu.py --quick        # the same code path on a CPU in about a minute (tested)

Measured, each with compile time apart from run time:

* ``peak``: a float32 matmul's FLOP/s and a large float32 axpy's memory bandwidth on the default device;
* ``sweep``: ``nj.sweep`` of the library's MLP (width 32, batch 128) for N = 1, 4, 16, ... configurations,
  until the device runs out of memory or the time budget is spent: configurations·steps per second,
  XLA memory of the compiled chunk, and the largest N that fitted;
* ``vgg``: Neural Mechanics on a VGG with BatchNorm at the papers' η = 0.1, λ = 1e-4, S = 256, on synthetic
  32×32×3 data (10 classes): the Recorder's time per step and the theory's median error per kind;
* ``simulate``: the modified flow of SGD(η = 0.1, β = 0.9) on V = Σ log cosh θ at d = 10⁶ with diffrax Tsit5:
  µs per solver step and the implied memory bandwidth.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import noether_jax as nj


def _timed(fn, *args, repeats=3):
    out = jax.block_until_ready(fn(*args))  # first call: compile + run
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def peak(n_mm: int, n_bw: int) -> dict:
    a = jax.random.normal(jax.random.key(0), (n_mm, n_mm), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    _, t = _timed(mm, a)
    x = jnp.ones((n_bw,), jnp.float32)
    axpy = jax.jit(lambda v: 2.0 * v + 1.0)
    _, tb = _timed(axpy, x)
    return {"matmul_n": n_mm, "matmul_flops": 2.0 * n_mm**3 / t, "axpy_n": n_bw, "bandwidth_bytes_s": 2 * 4 * n_bw / tb}


def sweep_scaling(max_n: int, steps: int, budget_s: float) -> dict:
    from noether_jax.sweeps import _program

    ds = nj.data.digits(dtype=jnp.float32)
    rows, largest, t_start = [], 0, time.perf_counter()
    n = 1
    while n <= max_n and time.perf_counter() - t_start < budget_s:
        grid = [dict(lr=0.01 + 0.3 * (i % 97) / 97, momentum=0.9 * (i % 2), weight_decay=1e-4, seed=0) for i in range(n)]
        try:
            res = nj.sweep("mlp", grid=grid, lr=0.1, seed=[0], steps=steps, save_every=max(1, steps // 10), width=32,
                           batch_size=128, data=ds, progress=False)
        except Exception as e:  # noqa: BLE001 - the device ran out of memory: the last N that fitted is the answer
            rows.append({"n": n, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            break
        mem = list(_program._COMPILED.values())[-1].memory_analysis()
        rows.append({"n": n, "compile_s": res.attrs["compile_time_s"], "xla_compile_s": res.attrs["xla_compile_time_s"],
                     "run_s": res.attrs["run_time_s"], "config_steps_per_s": n * steps / res.attrs["run_time_s"],
                     "xla_bytes": None if mem is None else int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                                                + mem.temp_size_in_bytes),
                     "ok_members": int((res.status.values == 0).sum())})
        largest = n
        print(f"sweep N={n}: compile {rows[-1]['compile_s']:.1f} s, run {rows[-1]['run_s']:.2f} s, "
              f"{rows[-1]['config_steps_per_s']:.0f} config·steps/s", flush=True)
        n *= 4
    return {"steps": steps, "rows": rows, "largest_n": largest}


def vgg(width: int, steps: int, n_train: int, batch_size: int = 256) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_train, 32, 32, 3)).astype(np.float32)
    w = rng.normal(size=(32 * 32 * 3, 10)).astype(np.float32)
    y = np.argmax(x.reshape(n_train, -1) @ w, -1).astype(np.int32)
    model = nj.models.make_model("vgg_bn", in_shape=(32, 32, 3), width=width, dtype=jnp.float32)
    net, params, state = nj.models.functional(model)
    t0 = time.perf_counter()
    syms = nj.symmetry.detect(net, params, (jnp.asarray(x[:256]), jnp.asarray(y[:256])), state=state).symmetries
    t_detect = time.perf_counter() - t0
    rec = nj.Recorder(net, syms, x, y, batch_size=batch_size, steps=steps, save_every=max(1, steps // 10))
    hyper = nj.Hyper(0.1, 0.0, 1e-4)
    t0 = time.perf_counter()
    exe = jax.jit(nj.Recorder.run).lower(rec, params, state, hyper, jax.random.key(0)).compile()
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(exe(rec, params, state, hyper, jax.random.key(0)))
    t_run = time.perf_counter() - t0
    errors = {k: float(np.median(np.asarray(nj.theory.relative_error(out.theory[k], out.measured[k])))) for k in syms}
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    return {"width": width, "batch_size": batch_size, "params": n_params, "steps": steps, "detect_s": t_detect, "compile_s": t_compile, "run_s": t_run,
            "ms_per_step": 1e3 * t_run / steps, "groups": {k: int(np.asarray(out.measured[k]).shape[1]) for k in syms},
            "median_rel_error": errors, "status": out.status_name()}


def simulate_big(d: int, t1: float) -> dict:
    rule = nj.rules.sgd(lr=0.1, momentum=0.9)
    loss = lambda q: jnp.sum(jnp.log(jnp.cosh(q)))  # noqa: E731
    q0 = jnp.linspace(-2.0, 2.0, d, dtype=jnp.float32)
    v0 = rule.initial_velocity(q0, jax.grad(loss)(q0))
    lag = rule.lagrangian(loss)

    def solve(q, v):
        return nj.simulate(lag, q, v, t1=t1, rtol=1e-5, atol=1e-7, max_steps=100_000)

    t0 = time.perf_counter()
    traj = jax.block_until_ready(solve(q0, v0))
    first = time.perf_counter() - t0
    traj, t = _timed(solve, q0, v0, repeats=2)
    steps = int(traj.stats["num_steps"])
    # each Tsit5 step: 7 stages reading/writing (q, v) and stage buffers; count 7 field evaluations of 4 d floats
    bytes_moved = 7 * 4 * 4 * d * steps
    return {"d": d, "t1": t1, "solver_steps": steps, "compile_s": max(first - t, 0.0), "run_s": t,
            "us_per_step": 1e6 * t / steps, "approx_bandwidth_bytes_s": bytes_moved / t, "successful": bool(traj.successful)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU-sized smoke run of every part (about a minute)")
    ap.add_argument("--out", default="runs/bench/gpu.json")
    a = ap.parse_args()
    dev = jax.devices()[0]
    res = {"device": f"{dev.platform}: {dev.device_kind}", "n_devices": jax.device_count(), "jax": jax.__version__,
           "host": platform.node(), "quick": a.quick, "dtype": "float32"}
    t_all = time.perf_counter()
    if a.quick:
        res["peak"] = peak(512, 1 << 22)
        res["sweep"] = sweep_scaling(4, 10, 60)
        res["vgg"] = vgg(4, 4, 256, batch_size=32)
        res["simulate"] = simulate_big(10_000, 1.0)
    else:
        res["peak"] = peak(8192, 1 << 28)
        res["sweep"] = sweep_scaling(16384, 200, 240)
        res["vgg"] = vgg(64, 300, 4096)
        res["simulate"] = simulate_big(1_000_000, 5.0)
    p = res["peak"]
    s = res["vgg"]
    res["summary"] = {
        "matmul_tflops": p["matmul_flops"] / 1e12, "bandwidth_gb_s": p["bandwidth_bytes_s"] / 1e9,
        "largest_sweep_n": res["sweep"]["largest_n"],
        "best_config_steps_per_s": max((r.get("config_steps_per_s", 0.0) for r in res["sweep"]["rows"]), default=0.0),
        "vgg_ms_per_step": s["ms_per_step"],
        "simulate_bandwidth_fraction_of_axpy": res["simulate"]["approx_bandwidth_bytes_s"] / p["bandwidth_bytes_s"],
        "total_s": time.perf_counter() - t_all,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res["summary"], indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
