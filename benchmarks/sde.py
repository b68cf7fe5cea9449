"""Issue 8 benchmark: the SDE of SGD integrated by a ``lax.scan`` Euler–Maruyama loop against diffrax.

Same problem, same step size, same number of paths for every path (an ensemble vmapped over PRNG
keys, jit-compiled once): mini-batch SGD on a softmax regression over scikit-learn's digits
(64 features × 10 classes = 650 parameters, n = 1347 examples, S = 32, η = 0.05), as the Itô SDE
dθ = −ḡ dt + √(ηc/S) Fᵀ dW with the n×d per-example factor F applied as a linear operator.

* ``scan``: ``sde_ensemble(..., method="scan")`` (the library's default);
* ``diffrax-virtual``: ``method="diffrax"`` with ``diffrax.Euler`` and a ``VirtualBrownianTree``
  (reproducible and differentiable, the choice the issue asks for);
* ``diffrax-unsafe``: ``method="diffrax"`` with an ``UnsafeBrownianPath`` (no tree, fixed steps).

Compile time (first call minus a warm call) is reported apart from run time (median of warm calls).
The ensembles' mean final loss is printed with its standard error, so the methods can be seen to
solve the same SDE.

    .venv/bin/python benchmarks/sde.py --json runs/bench/sde.json
    .venv/bin/python benchmarks/sde.py --quick        # smoke run
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
from noether_jax.stochastic import SGDSDE, ensemble_stats, sde_ensemble


def problem(batch_size: int, lr: float):
    ds = nj.data.digits()
    x = ds.x_train.reshape(ds.n_train, -1)
    y = ds.y_train

    def loss(p, xi, yi):
        return -jax.nn.log_softmax(xi @ p["w"] + p["b"])[yi]

    sde = SGDSDE(loss, x, y, lr=lr, batch_size=batch_size)
    p0 = {"w": jnp.zeros((x.shape[1], 10)), "b": jnp.zeros(10)}
    return sde, p0


def bench(sde, p0, method, brownian, keys, t1, dt, repeats):
    def call():
        out = sde_ensemble(sde, p0, t1, keys, dt=dt, save_every=int(round(t1 / dt)), method=method, brownian=brownian)
        return jax.block_until_ready(out)

    t0 = time.perf_counter()
    out = call()
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call()
        runs.append(time.perf_counter() - t0)
    run = float(np.median(runs))
    st = ensemble_stats(out, sde)
    return {"compile_s": first - run, "run_s": run, "final_loss_mean": float(st.loss_mean[-1]),
            "final_loss_se": float(st.standard_error("loss")[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400, help="SDE steps of dt = η/4 per path")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.paths, args.steps, args.repeats = 8, 40, 1
    nj.enable_x64(False)
    lr, s = 0.05, 32
    sde, p0 = problem(s, lr)
    dt = lr / 4
    t1 = args.steps * dt
    keys = jax.random.split(jax.random.key(0), args.paths)
    rows = {}
    for name, method, brownian in (("scan", "scan", "virtual"), ("diffrax-virtual", "diffrax", "virtual"),
                                   ("diffrax-unsafe", "diffrax", "unsafe")):
        rows[name] = bench(sde, p0, method, brownian, keys, t1, dt, args.repeats)
        r = rows[name]
        r["us_per_path_step"] = 1e6 * r["run_s"] / (args.paths * args.steps)
        print(f"{name:16s} compile {r['compile_s']:6.2f} s   run {r['run_s']:7.3f} s   {r['us_per_path_step']:8.1f} µs/(path·step)"
              f"   E[loss(T)] {r['final_loss_mean']:.4f} ± {r['final_loss_se']:.4f}", flush=True)
    for name in ("diffrax-virtual", "diffrax-unsafe"):
        print(f"{name} / scan run time: {rows[name]['run_s'] / rows['scan']['run_s']:.2f}×")
    meta = {"paths": args.paths, "steps": args.steps, "dt": dt, "lr": lr, "batch_size": s, "d": 650, "n": int(sde.n),
            "jax": jax.__version__, "platform": platform.platform(), "devices": [str(d) for d in jax.devices()]}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
