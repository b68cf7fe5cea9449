"""Issue 16 benchmark: what the sweep's per-member physics costs against the plain sweep.

Same work in every row: the library's ``mlp_layernorm`` (LayerNorm MLP: translation, scale and rescale
groups) on scikit-learn digits, heavy-ball SGD with coupled weight decay, N = ``--n`` members
(lr × momentum × weight decay × seeds), float32, one compiled vmapped program per row. Rows:

* ``plain``: ``nj.sweep`` as it is (conservation laws, their theory and exact identity, NLD eq. 17's r⁴);
* ``noether+sharpness``: plus kinetic symmetry breaking and the charge budget per step
  (``noether=True``) and η·λ_max by Lanczos at every save point (``sharpness_every=save_every``);
* ``noether`` and ``sharpness`` alone; ``noether+sharpness/5``: λ_max at every fifth save point only;
* ``eq17_forms``: every eq. 17 forcing in both forms (per-step buffers, scored after the last step);
* ``rmsprop``: plus the mapped group RMSProp trained in lockstep on the same mini-batches;
* ``all``: all of the above;
* ``plain (full batch)`` and ``flow=modified``: ``mlp_tanh`` (smooth) full-batch members, with the modified
  flow integrated by diffrax (Tsit5, fixed step η/4) inside the program.

Run time is the median of ``--repeats`` warm calls (the compiled program is cached); compile time is
the first call's extra. Ratios are run-time ratios measured in the same process, side by side.

    .venv/bin/python benchmarks/sweep_physics.py --json runs/bench/sweep_physics.json
    .venv/bin/python benchmarks/sweep_physics.py --quick
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np

import noether_jax as nj

LRS, MOMS, WDS = [0.01, 0.03, 0.1, 0.3], [0.0, 0.9], [0.0, 1e-4]


def timed(repeats: int, model: str = "mlp_layernorm", **kw) -> dict:
    t = time.perf_counter()
    ds = nj.sweep(model, progress=False, **kw)
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        nj.sweep(model, progress=False, **kw)
        runs.append(time.perf_counter() - t)
    run = statistics.median(runs)
    return {"run_s": run, "compile_s": first - run, "status_ok": int((np.asarray(ds.status.values) == 0).sum())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64, help="members (lr × momentum × weight decay × seeds)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--full-batch", type=int, default=256, help="training examples of the full-batch (flow) rows")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="N = 16, 100 steps, 1 repeat")
    ap.add_argument("--rows", default="", help="comma-separated row names to run (default: all; 'plain' is always run)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.steps, a.save_every, a.repeats, a.width = 16, 100, 50, 1, 8
    seeds = max(1, a.n // (len(LRS) * len(MOMS) * len(WDS)))
    configs = [dict(lr=p, momentum=b, weight_decay=c, seed=s) for p, b, c, s in itertools.product(LRS, MOMS, WDS, range(seeds))][: a.n]
    data = nj.data.digits()
    base = dict(grid=configs, lr=0.1, seed=sorted({c["seed"] for c in configs}), steps=a.steps, save_every=a.save_every,
                width=a.width, data=data)
    rows = {
        "plain": dict(batch_size=a.batch),
        "noether": dict(batch_size=a.batch, noether=True),
        "sharpness": dict(batch_size=a.batch, sharpness_every=a.save_every),
        "noether+sharpness": dict(batch_size=a.batch, noether=True, sharpness_every=a.save_every),
        "noether+sharpness/5": dict(batch_size=a.batch, noether=True, sharpness_every=5 * a.save_every),
        "eq17_forms": dict(batch_size=a.batch, eq17_forms=True),
        "noether+eq17+sharpness/5": dict(batch_size=a.batch, noether=True, eq17_forms=True, sharpness_every=5 * a.save_every),
        "rmsprop": dict(batch_size=a.batch, rmsprop=True),
        "all": dict(batch_size=a.batch, noether=True, sharpness_every=a.save_every, rmsprop=True, eq17_forms=True),
    }
    small = data._replace(x_train=data.x_train[: a.full_batch], y_train=data.y_train[: a.full_batch])
    flow_rows = {"plain (full batch)": dict(model="mlp_tanh", batch_size=a.full_batch, data=small),
                 "flow=modified": dict(model="mlp_tanh", batch_size=a.full_batch, data=small, flow="modified")}
    todo = rows | flow_rows
    if a.rows:
        keep = {"plain", *a.rows.split(",")} | ({"plain (full batch)"} if "flow=modified" in a.rows else set())
        todo = {k: v for k, v in todo.items() if k in keep}
        flow_rows = {k: v for k, v in flow_rows.items() if k in keep}
    out = {}
    for name, kw in todo.items():
        out[name] = timed(a.repeats, **(base | kw))
        print(f"{name} done: run {out[name]['run_s']:.2f} s", flush=True)
    print(f"\nnj.sweep('mlp_layernorm', width={a.width}) on digits, N = {len(configs)}, {a.steps} steps, float32; "
          f"run = median of {a.repeats} warm calls")
    print(f"{'row':<20} | {'compile':>8} | {'run':>8} | {'µs / member·step':>16} | {'× plain':>7}")
    for name, r in out.items():
        ref = out["plain (full batch)" if name in flow_rows else "plain"]["run_s"]
        r["ratio"] = r["run_s"] / ref
        print(f"{name:<20} | {r['compile_s']:>6.1f} s | {r['run_s']:>6.2f} s | {r['run_s'] / len(configs) / a.steps * 1e6:>16.1f} | "
              f"{r['ratio']:>6.2f}×")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"n": len(configs), "steps": a.steps, "width": a.width, "rows": out}, indent=1))
    return out


if __name__ == "__main__":
    main()
