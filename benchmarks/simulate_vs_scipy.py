"""Issue 2 benchmark: ``nj.simulate`` (diffrax, jit) against ``scipy.integrate.solve_ivp`` on the same flow.

The flow is the modified flow of heavy-ball SGD with coupled weight decay on logistic regression:

    m q̈ + μ q̇ = −∇ℒ(q) − λq,   ℒ(q) = mean_i softplus(−yᵢ xᵢ·q),   m = η(1+β)/2,  μ = 1 − β,

with random Gaussian data X (n × d), d = 1000 by default, from v(0) = ``rule.initial_velocity``.
Both sides integrate the same first-order system in (q, v) ∈ R^{2d} with the same embedded
Runge–Kutta order and the same tolerances:

* ``--order 5`` (default): diffrax ``Tsit5`` against scipy ``RK45`` (Dormand–Prince 5(4));
* ``--order 8``: diffrax ``Dopri8`` against scipy ``DOP853``.

Both use an RMS error norm and rtol/atol on every component; the step-size controllers differ in detail,
so the number of steps and right-hand-side evaluations is printed for each. The scipy right-hand side is
hand-written NumPy (vectorised; the fastest honest baseline), and, as a second baseline, the jitted JAX
field called from scipy. nj.simulate's compile time (first call − median of later calls) is reported
separately from its run time. Both final states are compared with each other and with a tight reference
(Dopri8, rtol = atol = 1e-12), so the speed-up is not bought with accuracy.

    .venv/bin/python benchmarks/simulate_vs_scipy.py
    .venv/bin/python benchmarks/simulate_vs_scipy.py --order 8 --json runs/bench/simulate_vs_scipy.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import scipy
from scipy.integrate import solve_ivp
from scipy.special import expit

import noether_jax as nj

nj.enable_x64()

SOLVERS = {5: (diffrax.Tsit5, "Tsit5", "RK45"), 8: (diffrax.Dopri8, "Dopri8", "DOP853")}


def make_problem(d: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * (2.0 / np.sqrt(d))
    teacher = rng.standard_normal(d)
    y = np.sign(X @ teacher + 0.3 * rng.standard_normal(n))
    q0 = 0.1 * rng.standard_normal(d)
    return X, y, q0


def run_case(a, n: int) -> dict:
    """Integrate the modified flow on one data set (n points) with both libraries; time and compare."""
    X, y, q0 = make_problem(a.d, n, a.seed)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def loss(q):
        return jnp.mean(jax.nn.softplus(-yj * (Xj @ q)))

    rule = nj.rules.sgd(lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
    lag = rule.lagrangian(loss)
    m, mu, lam = float(rule.mass), float(rule.friction), float(rule.weight_decay)
    q0j = jnp.asarray(q0)
    v0j = rule.initial_velocity(q0j, jax.grad(loss)(q0j))
    v0 = np.asarray(v0j)
    d = a.d
    solver_cls, dname, sname = SOLVERS[a.order]

    # --- nj.simulate ---------------------------------------------------------------------------
    def run_nj():
        tr = nj.simulate(lag, q0j, v0j, t1=a.t1, solver=solver_cls(), rtol=a.rtol, atol=a.atol, max_steps=200_000)
        jax.block_until_ready(tr.q)
        return tr

    t = time.perf_counter()
    tr = run_nj()
    first = time.perf_counter() - t
    nj_times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        tr = run_nj()
        nj_times.append(time.perf_counter() - t)
    nj_run = statistics.median(nj_times)
    q_nj, v_nj = np.asarray(tr.q[-1]), np.asarray(tr.v[-1])
    nj_steps = int(tr.stats["num_steps"])

    # --- the same diffrax solve on the (q, v) tuple state, jitted directly (simulate's layout before it
    # ravelled its state into one vector): separates the state layout from simulate's per-call overhead
    ctrl = diffrax.PIDController(rtol=a.rtol, atol=a.atol)
    el = nj.euler_lagrange(lag)

    @jax.jit
    def tuple_solve(q0_, v0_):
        sol = diffrax.diffeqsolve(diffrax.ODETerm(el), solver_cls(), 0.0, a.t1, None, (q0_, v0_), None,
                                  stepsize_controller=ctrl, max_steps=200_000, saveat=diffrax.SaveAt(t1=True))
        return sol.ys, sol.stats["num_steps"]

    jax.block_until_ready(tuple_solve(q0j, v0j))
    tuple_times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        (_, tuple_steps) = jax.block_until_ready(tuple_solve(q0j, v0j))
        tuple_times.append(time.perf_counter() - t)
    t = time.perf_counter()
    nj.simulate(lag, q0j, v0j, t1=1e-6, solver=solver_cls(), rtol=a.rtol, atol=a.atol, max_steps=200_000).q.block_until_ready()
    one_step = time.perf_counter() - t  # a one-step solve: simulate's fixed per-call cost

    # --- scipy.solve_ivp -------------------------------------------------------------------------
    def rhs_numpy(t, y_):  # hand-written NumPy: the same equation, no JAX
        q, v = y_[:d], y_[d:]
        g = X.T @ (-y * expit(-y * (X @ q))) / n + lam * q
        return np.concatenate([v, (-g - mu * v) / m])

    field = nj.euler_lagrange(lag)
    flat_field = jax.jit(lambda t, y_: jnp.concatenate(field(t, (y_[:d], y_[d:]), None)))

    def rhs_jax(t, y_):  # the library's own field, jitted, called from scipy (one dispatch per evaluation)
        return np.asarray(flat_field(t, y_))

    y0 = np.concatenate([q0, v0])
    rhs_jax(0.0, y0)  # compile outside the timing

    # --- the field alone, K evaluations in one jitted loop: what nj.simulate's evaluations cost by
    # themselves, hence the speed-up a solver with zero overhead of its own would reach
    K = 2000
    field_loop = jax.jit(lambda y_: jax.lax.fori_loop(0, K, lambda i, z: z + 1e-12 * flat_field(0.0, z), y_))
    jax.block_until_ready(field_loop(jnp.asarray(y0)))
    field_times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        jax.block_until_ready(field_loop(jnp.asarray(y0)))
        field_times.append(time.perf_counter() - t)
    field_eval_s = statistics.median(field_times) / K
    tab = solver_cls().tableau
    evals = nj_steps * (len(tab.c) + 1 - int(tab.fsal))  # new field evaluations per step (FSAL reuses one)
    assert np.allclose(rhs_jax(0.3, y0), rhs_numpy(0.3, y0), rtol=1e-12, atol=1e-12)
    sp_reps = max(1, min(a.repeats, 3))
    scipy_out = {}
    for label, rhs in (("numpy", rhs_numpy), ("jax-jit", rhs_jax)):
        times = []
        for _ in range(sp_reps):
            t = time.perf_counter()
            sol = solve_ivp(rhs, (0.0, a.t1), y0, method=sname, rtol=a.rtol, atol=a.atol, t_eval=[a.t1])
            times.append(time.perf_counter() - t)
        assert sol.success, sol.message
        # solve_ivp reports RHS evaluations, not steps: nfev ≈ stages × (accepted + rejected) steps.
        scipy_out[label] = {"run_s": statistics.median(times), "nfev": int(sol.nfev),
                            "steps_est": round(sol.nfev / {"RK45": 6, "DOP853": 12}[sname]), "y": sol.y[:, -1]}

    # --- reference and agreement -----------------------------------------------------------------
    ref = nj.simulate(lag, q0j, v0j, t1=a.t1, solver=diffrax.Dopri8(), rtol=1e-12, atol=1e-12, max_steps=400_000)
    q_ref = np.asarray(ref.q[-1])
    y_sp = scipy_out["numpy"]["y"]
    q_sp, v_sp = y_sp[:d], y_sp[d:]
    diff = {
        "nj_vs_scipy_q": float(np.max(np.abs(q_nj - q_sp))),
        "nj_vs_scipy_v": float(np.max(np.abs(v_nj - v_sp))),
        "nj_vs_ref_q": float(np.max(np.abs(q_nj - q_ref))),
        "scipy_vs_ref_q": float(np.max(np.abs(q_sp - q_ref))),
    }
    return {
        "n": n, "loss": [float(loss(q0j)), float(loss(jnp.asarray(q_ref)))], "moved": float(np.max(np.abs(q_ref - q0))),
        "nj": {"compile_s": first - nj_run, "first_call_s": first, "run_s": nj_run, "steps": nj_steps,
               "rejected": int(tr.stats["num_rejected_steps"])},
        "tuple_state": {"run_s": statistics.median(tuple_times), "steps": int(tuple_steps)},
        "one_step_call_s": one_step,
        "field": {"eval_s": field_eval_s, "evals": evals, "share_of_nj_run": evals * field_eval_s / nj_run,
                  "zero_overhead_speedup_vs_scipy_numpy": scipy_out["numpy"]["run_s"] / (evals * field_eval_s)},
        "scipy": {k: {kk: vv for kk, vv in v.items() if kk != "y"} for k, v in scipy_out.items()},
        "speedup_vs_scipy_numpy": scipy_out["numpy"]["run_s"] / nj_run,
        "speedup_vs_scipy_jax": scipy_out["jax-jit"]["run_s"] / nj_run,
        "max_abs_diff": diff,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=1000, help="number of parameters")
    p.add_argument("--n", type=int, nargs="+", default=[20, 500],
                   help="numbers of data points (small n: cheap RHS, solver overhead dominates; large n: matvecs dominate)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--t1", type=float, default=20.0, help="horizon (t1 / lr optimiser steps)")
    p.add_argument("--rtol", type=float, default=1e-8)
    p.add_argument("--atol", type=float, default=1e-10)
    p.add_argument("--order", type=int, choices=[5, 8], default=5)
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported); scipy gets min(repeats, 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="t1 = 5, 3 repeats")
    p.add_argument("--json", type=Path, default=None, help="write results as JSON (e.g. runs/bench/simulate_vs_scipy.json)")
    a = p.parse_args(argv)
    if a.quick:
        a.t1, a.repeats = min(a.t1, 5.0), min(a.repeats, 3)
    _, dname, sname = SOLVERS[a.order]

    cases = []
    for n in a.n:
        cases.append(run_case(a, n))
        print(f"n={n} done", flush=True)

    print(f"\nModified flow of SGD(lr={a.lr}, momentum={a.momentum}, wd={a.weight_decay}) on logistic regression, "
          f"d={a.d}, t ∈ [0, {a.t1}] ({a.t1 / a.lr:.0f} optimiser steps), float64, rtol={a.rtol}, atol={a.atol}, "
          f"diffrax {dname} vs scipy {sname}")
    print(f"jax {jax.__version__}, diffrax {diffrax.__version__}, scipy {scipy.__version__}, "
          f"{os.cpu_count()} CPU cores ({platform.machine()}); medians of {a.repeats} (nj) / {min(a.repeats, 3)} (scipy)")
    hdr = (f"{'n':>4} | {'integrator':<30} | {'compile':>8} | {'run':>9} | {'steps':>6} | {'µs/step':>7} | "
           f"{'speed-up':>8}")
    print(hdr)
    print("-" * len(hdr))
    for c in cases:
        nj_ = c["nj"]
        rows = [(f"nj.simulate ({dname})", f"{nj_['compile_s']:.2f} s", nj_["run_s"], str(nj_["steps"]), nj_["steps"])]
        tu = c["tuple_state"]
        rows.append((f"diffrax {dname}, (q, v) tuple, jit", "—", tu["run_s"], str(tu["steps"]), tu["steps"]))
        for label in ("numpy", "jax-jit"):
            s = c["scipy"][label]
            rows.append((f"solve_ivp {sname}, {label} RHS", "—", s["run_s"], f"~{s['steps_est']}", s["steps_est"]))
        for name, comp, run, steps, ns in rows:
            print(f"{c['n']:>4} | {name:<30} | {comp:>8} | {run * 1e3:>6.1f} ms | {steps:>6} | {run / ns * 1e6:>7.1f} | "
                  f"{nj_['run_s'] and run / nj_['run_s']:>7.2f}x")
        print(f"{'':>4} | a one-step nj.simulate call (fixed cost): {c['one_step_call_s'] * 1e3:.2f} ms")
        f = c["field"]
        print(f"{'':>4} | the field alone: {f['eval_s'] * 1e6:.2f} µs per evaluation × {f['evals']} evaluations = "
              f"{f['share_of_nj_run']:.0%} of nj.simulate's run; a solver with no overhead of its own would be "
              f"{f['zero_overhead_speedup_vs_scipy_numpy']:.2f}x scipy (numpy RHS)")
        print(f"{'':>4} | loss {c['loss'][0]:.4f} → {c['loss'][1]:.4f}, max|q(t1) − q0| {c['moved']:.3f}; final state, max abs: "
              + ", ".join(f"{k} {v:.1e}" for k, v in c["max_abs_diff"].items()))
    print("(speed-up = that row's run time / nj.simulate's run time, i.e. how much faster nj.simulate is; "
          "compile = first call − median run)")

    out = {"d": a.d, "t1": a.t1, "rtol": a.rtol, "atol": a.atol, "order": a.order, "diffrax_solver": dname,
           "scipy_method": sname, "jax": jax.__version__, "cpu_count": os.cpu_count(), "cases": cases}
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1))
        print(f"wrote {a.json}")
    return out


if __name__ == "__main__":
    main()
