"""Issue 2 benchmark: the autodiff Euler–Lagrange field against a hand-written equation of motion.

The system is the modified flow of heavy-ball SGD,

    m q̈ + μ q̇ = −∇V(q),   m = η(1+β)/2,  μ = 1 − β,

on a cheap separable non-quadratic potential (Σ log cosh qᵢ by default, or a quartic), so that the
gradient dominates the cost. Three fields are compared, all jit-compiled, in float64:

* ``hand``:      a = (−∇V − μ v)/m, written by hand with ``jax.grad`` of the potential;
* ``rule``:      ``nj.euler_lagrange(nj.rules.sgd(lr=lr, momentum=momentum).lagrangian(loss))`` (Euclidean K,
                 closed-form mass solve; its potential is ``loss + (λ/2)|q|²`` with λ = 0);
* ``euclid``:    ``nj.euler_lagrange(nj.Lagrangian(nj.kinetic.Euclidean(m), V, damping=μ/m))``;
* ``general``:   the same Lagrangian with K given as a plain callable ½ m |v|² (``nj.kinetic.General``:
                 momentum, mass operator and mixed term by autodiff, mass solve by CG). Timed only up to
                 ``--general-max-d`` (slow); it shows what the generic path costs.

Per-step cost is measured two ways: ``call`` (one jitted field evaluation per dispatch, which at small d
is dominated by dispatch overhead) and ``loop`` (a jitted ``fori_loop`` of semi-implicit Euler steps
driven by the field, divided by the number of steps: the cost of the field inside a solver). Compile
time (``lower().compile()``) is reported separately; run times are medians over interleaved repeats (each
repeat times enough back-to-back calls to last ~5 ms)
with ``block_until_ready``. Peak memory is XLA's compiled memory analysis (argument + output + temp
bytes) of one field evaluation, with a log-log slope fitted over d.

    .venv/bin/python benchmarks/el_field.py                   # d = 10, 1e3, 1e5, 1e6
    .venv/bin/python benchmarks/el_field.py --quick           # d = 10, 1e3, 1e5, fewer repeats
    .venv/bin/python benchmarks/el_field.py --json runs/bench/el_field.json
    .venv/bin/python benchmarks/el_field.py --cpus 0                   # let XLA use every core
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import noether_jax as nj

nj.enable_x64()

LR, MOMENTUM = 0.1, 0.9


def make_loss(kind: str):
    if kind == "logcosh":
        # log cosh x = logaddexp(x, −x) − log 2, stable for large |x|.
        return lambda q: jnp.sum(jnp.logaddexp(q, -q) - jnp.log(2.0))
    if kind == "quartic":
        return lambda q: jnp.sum(0.25 * q**4 - 0.5 * q**2)
    raise ValueError(f"unknown potential {kind!r}")


def make_fields(loss):
    rule = nj.rules.sgd(lr=LR, momentum=MOMENTUM)
    m, mu = float(rule.mass), float(rule.friction)
    grad_loss = jax.grad(loss)

    def hand(t, y, args):
        q, v = y
        return v, (-grad_loss(q) - mu * v) / m

    rule_field = nj.euler_lagrange(rule.lagrangian(loss))
    euclid = nj.euler_lagrange(nj.Lagrangian(nj.kinetic.Euclidean(m), lambda q, t: loss(q), damping=mu / m))
    general = nj.euler_lagrange(
        nj.Lagrangian(kinetic=lambda q, v, t: 0.5 * m * jnp.sum(v * v), potential=lambda q, t: loss(q), damping=mu / m)
    )
    return {"hand": hand, "rule": rule_field, "euclid": euclid, "general": general}


def call_fn(field):
    return lambda t, q, v: field(t, (q, v), None)


def loop_fn(field, n_steps: int, h: float = 1e-3):
    """n_steps of semi-implicit Euler driven by ``field``; the cost per step is the field's."""

    def run(t0, q, v):
        def body(i, carry):
            q, v = carry
            t = t0 + i * h
            _, a = field(t, (q, v), None)
            v = v + h * a
            return q + h * v, v

        return jax.lax.fori_loop(0, n_steps, body, (q, v))

    return run


def compile_timed(fn, *args):
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t


def time_interleaved(compiled: dict, args, repeats: int, sample_s: float = 5e-3) -> dict:
    """Median wall time per call of each compiled function.

    Each sample times ``number`` back-to-back calls (chosen so a sample lasts about ``sample_s``, as
    ``timeit`` does), and the functions are interleaved within each repeat so that load from other
    processes on the machine hits all of them alike.
    """
    est = {}
    for k, c in compiled.items():  # warm-up and a first estimate
        jax.block_until_ready(c(*args))
        t = time.perf_counter()
        jax.block_until_ready(c(*args))
        est[k] = time.perf_counter() - t
    number = max(1, int(sample_s / max(min(est.values()), 1e-7)))
    samples = {k: [] for k in compiled}
    for _ in range(repeats):
        for k, c in compiled.items():
            t = time.perf_counter()
            for _ in range(number):
                out = c(*args)
            jax.block_until_ready(out)
            samples[k].append((time.perf_counter() - t) / number)
    return {k: statistics.median(s) for k, s in samples.items()}


def memory_bytes(compiled) -> dict:
    ma = compiled.memory_analysis()
    if ma is None:
        return {}
    arg, out, tmp = ma.argument_size_in_bytes, ma.output_size_in_bytes, ma.temp_size_in_bytes
    return {"argument": arg, "output": out, "temp": tmp, "total": arg + out + tmp}


def hlo_summary(compiled) -> dict:
    """Machine-independent evidence: instruction count of the optimised HLO, and whether XLA split a kernel
    across threads (``outer_dimension_partitions``), which costs a thread hand-off on a busy machine."""
    txt = compiled.as_text()
    n = sum(1 for line in txt.splitlines() if " = " in line and not line.lstrip().startswith(("HloModule", "//")))
    return {"instructions": n, "multithreaded": "outer_dimension_partitions" in txt}


def loglog_slope(ds, ys) -> float:
    return float(np.polyfit(np.log(np.asarray(ds, float)), np.log(np.asarray(ys, float)), 1)[0])


def steps_for(d: int, budget: float) -> int:
    return int(np.clip(budget // d, 10, 20_000))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 1_000, 100_000, 1_000_000])
    p.add_argument("--repeats", type=int, default=21, help="timed repeats per field (median reported)")
    p.add_argument("--potential", choices=["logcosh", "quartic"], default="logcosh")
    p.add_argument("--loop-budget", type=float, default=2e7, help="loop steps per call ≈ budget / d (10 ≤ n ≤ 20000)")
    p.add_argument("--general-max-d", type=int, default=100_000, help="largest d at which to time the General (CG) path")
    p.add_argument("--cpus", type=int, default=1,
                   help="pin the process to this many CPUs before JAX starts (0: no pinning). With 2+ cores XLA "
                        "splits some kernels across threads depending on its cost model, so on a shared machine the "
                        "per-step time depends on whether the other core is free; 1 core measures the cost itself")
    p.add_argument("--quick", action="store_true", help="d ≤ 1e5, 5 repeats, smaller loops")
    p.add_argument("--json", type=Path, default=None, help="write results as JSON (e.g. runs/bench/el_field.json)")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes = [d for d in a.sizes if d <= 100_000]
        a.repeats = min(a.repeats, 5)
        a.loop_budget = min(a.loop_budget, 2e6)

    if a.cpus > 0:  # before the first JAX computation creates XLA's CPU client and its thread pool
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: a.cpus])
    cpus = len(os.sched_getaffinity(0))
    loss = make_loss(a.potential)
    fields = make_fields(loss)
    key = jax.random.PRNGKey(0)
    rows = []
    for d in a.sizes:
        kq, kv = jax.random.split(jax.random.fold_in(key, d))
        q = jax.random.normal(kq, (d,))
        v = jax.random.normal(kv, (d,))
        t = jnp.asarray(0.3)
        names = ["hand", "rule", "euclid"] + (["general"] if d <= a.general_max_d else [])
        # correctness: the fields agree
        ref = fields["hand"](t, (q, v), None)[1]
        err = {k: float(jnp.max(jnp.abs(fields[k](t, (q, v), None)[1] - ref))) for k in names}

        n = steps_for(d, a.loop_budget)
        res = {"d": d, "loop_steps": n, "max_abs_diff_vs_hand": err}
        for mode, make in (("call", call_fn), ("loop", lambda f: loop_fn(f, n))):
            compiled, ctime = {}, {}
            for k in names:
                compiled[k], ctime[k] = compile_timed(make(fields[k]), t, q, v)
            run = time_interleaved(compiled, (t, q, v), a.repeats)
            per = n if mode == "loop" else 1
            res[mode] = {k: {"compile_s": ctime[k], "run_s_per_step": run[k] / per} for k in names}
            if mode == "call":
                res["memory_bytes"] = {k: memory_bytes(compiled[k]) for k in names}
                res["hlo"] = {k: hlo_summary(compiled[k]) for k in names}
        rows.append(res)
        print(f"d={d:>8}  done", flush=True)

    # --- report ---------------------------------------------------------------------------------
    print(f"\nEuler–Lagrange field, {a.potential} potential, float64, jax {jax.__version__}, "
          f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), process pinned to {cpus}; "
          f"medians of {a.repeats}")
    hdr = (f"{'d':>8} | {'mode':>4} | {'hand /step':>11} | {'rule /step':>11} | {'rule/hand':>9} | "
           f"{'euclid/hand':>11} | {'general/hand':>12} | {'compile hand / rule / euclid / general':>40}")
    print(hdr)
    print("-" * len(hdr))
    fmt_t = lambda s_: f"{s_ * 1e6:.2f} µs" if s_ < 1e-3 else f"{s_ * 1e3:.2f} ms"  # noqa: E731
    for r in rows:
        for mode in ("call", "loop"):
            x = r[mode]
            h = x["hand"]["run_s_per_step"]
            ratio = {k: (f"{x[k]['run_s_per_step'] / h:.2f}x" if k in x else "—") for k in ("rule", "euclid", "general")}
            comp = " / ".join(f"{x[k]['compile_s'] * 1e3:.0f}" if k in x else "—" for k in ("hand", "rule", "euclid", "general"))
            print(f"{r['d']:>8} | {mode:>4} | {fmt_t(h):>11} | {fmt_t(x['rule']['run_s_per_step']):>11} | "
                  f"{ratio['rule']:>9} | {ratio['euclid']:>11} | {ratio['general']:>12} | {comp + ' ms':>40}")
    print("\n(call: one jitted field evaluation per dispatch; loop: n semi-implicit Euler steps in one jitted "
          "fori_loop, time / n, with n per d: " + ", ".join(f"{r['d']}→{r['loop_steps']}" for r in rows) + ")")
    print("max |a − a_hand|: " + "; ".join(
        f"d={r['d']}: " + ", ".join(f"{k} {e:.1e}" for k, e in r["max_abs_diff_vs_hand"].items() if k != "hand")
        for r in rows))

    print("optimised HLO instructions (* = a kernel split across threads): " + "; ".join(
        f"d={r['d']}: " + ", ".join(f"{k} {h['instructions']}{'*' if h['multithreaded'] else ''}" for k, h in r["hlo"].items())
        for r in rows))

    print("\nPeak memory of one field evaluation, bytes (XLA compiled memory analysis: argument + output + temp)")
    hdr = f"{'d':>8} | {'hand':>12} | {'rule':>12} | {'rule temp':>10} | {'euclid':>12} | {'general':>12}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        mb = r["memory_bytes"]
        gen = mb.get("general", {}).get("total")
        gen = f"{gen:,}" if gen else "—"
        print(f"{r['d']:>8} | {mb['hand']['total']:>12,} | {mb['rule']['total']:>12,} | {mb['rule']['temp']:>10,} | "
              f"{mb['euclid']['total']:>12,} | {gen:>12}")
    big = [r for r in rows if r["d"] >= 1000]
    slopes = {}
    if len(big) >= 2:
        for k in ("hand", "rule", "euclid"):
            slopes[k] = loglog_slope([r["d"] for r in big], [r["memory_bytes"][k]["total"] for r in big])
        gen_rows = [r for r in big if "general" in r["memory_bytes"]]
        if len(gen_rows) >= 2:
            slopes["general"] = loglog_slope([r["d"] for r in gen_rows], [r["memory_bytes"]["general"]["total"] for r in gen_rows])
        print("log-log slope of peak memory vs d (d ≥ 1e3): "
              + ", ".join(f"{k} {s_:.3f}" for k, s_ in slopes.items()) + "  (1 = linear)")

    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"jax": jax.__version__, "cpu_count": os.cpu_count(), "pinned_cpus": cpus, "potential": a.potential,
                                      "repeats": a.repeats, "rows": rows, "memory_loglog_slope": slopes}, indent=1))
        print(f"wrote {a.json}")
    return rows


if __name__ == "__main__":
    main()
