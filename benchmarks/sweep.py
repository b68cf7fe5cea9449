"""Issue 6 benchmark: a vmapped ``nj.sweep`` against a Python loop and a PyTorch loop, and its scaling in N.

Same work everywhere: the library's MLP (64-32-32-10, ReLU) on scikit-learn digits, mini-batches of
128, heavy-ball SGD with coupled weight decay, ``--steps`` steps (1000), N = ``--n`` configurations
(64 = 4 lr × 2 momentum × 2 weight decay × 4 seeds), float32.

* ``sweep``: ``nj.sweep`` (one AOT-compiled vmapped program; compile time apart from run time).
* ``loop``: a Python loop over the configurations calling the same jit'd ``Recorder.run``
  (compiled once; the compile is timed apart).
* ``torch``: one PyTorch CPU training loop per configuration in the style of the reference code:
  forward, backward, ``torch.optim.SGD``; per step it also computes the per-group squared gradient
  norms of the recorded groups (the theory's forcing), and at every save point it measures the
  groups' quantities. It does NOT advance the theory recursions, so it does less work than the
  other two (the comparison favours torch).
* scaling: ``nj.sweep`` for N = 1, 4, 16, … (``--scaling``) at ``--scaling-steps`` steps: time per
  configuration-step and XLA's memory analysis of the compiled program (argument + output + temp).

    .venv/bin/pip install torch==2.13.0      # the `bench` extra; only this script needs it
    .venv/bin/python benchmarks/sweep.py --json runs/bench/sweep.json
    .venv/bin/python benchmarks/sweep.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import noether_jax as nj
from noether_jax import data, models
from noether_jax.sweeps import _program

LRS, MOMS, WDS = [0.01, 0.03, 0.1, 0.3], [0.0, 0.9], [0.0, 1e-4]


def grid(n: int):
    seeds = max(1, n // (len(LRS) * len(MOMS) * len(WDS)))
    configs = list(itertools.product(LRS, MOMS, WDS, range(seeds)))[:n]
    return [dict(lr=a, momentum=b, weight_decay=c, seed=d) for a, b, c, d in configs]


def bench_sweep(ds, configs, steps, save_every, width, batch, repeats=2):
    kw = dict(steps=steps, save_every=save_every, width=width, batch_size=batch, data=ds, progress=False,
              lr=0.1, momentum=0.0, weight_decay=0.0, seed=sorted({c["seed"] for c in configs}))
    t0 = time.perf_counter()
    first = nj.sweep(grid=configs, **kw)
    wall_first = time.perf_counter() - t0
    compiled = list(_program._COMPILED.values())[-1]
    mem = compiled.memory_analysis()
    runs = []
    for _ in range(repeats):  # warm calls: the compiled program is cached
        again = nj.sweep(grid=configs, **kw)
        runs.append(again.attrs["run_time_s"])
    assert (first.status.values == 0).all(), first.status.values
    nbytes = None if mem is None else int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)
    return dict(compile_s=first.attrs["compile_time_s"], first_run_s=first.attrs["run_time_s"], first_wall_s=wall_first,
                run_s=float(np.median(runs)), xla_bytes=nbytes, final_loss=float(np.nanmedian(first.final_loss.values)))


def bench_loop(ds, configs, steps, save_every, width, batch):
    inits = {}
    for c in configs:
        if c["seed"] not in inits:
            inits[c["seed"]] = models.functional(models.make_model("mlp", key=c["seed"], width=width, in_shape=ds.x_train.shape[1:]))
    net, p0, s0 = inits[configs[0]["seed"]]
    syms = nj.symmetry.detect(net, p0, (ds.x_train[:64], ds.y_train[:64]), state=s0).symmetries  # what the sweep uses
    rec = nj.Recorder(net, syms, ds.x_train, ds.y_train, batch_size=batch, steps=steps, save_every=save_every)
    c = configs[0]
    t0 = time.perf_counter()
    jax.block_until_ready(rec.run(p0, s0, nj.Hyper(c["lr"], c["momentum"], c["weight_decay"]), nj.sweeps.data_key(c["seed"])))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    last = None
    for c in configs:
        _, p, s = inits[c["seed"]]
        last = rec.run(p, s, nj.Hyper(c["lr"], c["momentum"], c["weight_decay"]), nj.sweeps.data_key(c["seed"]))
        jax.block_until_ready(last)
    run = time.perf_counter() - t0
    per = run / len(configs)
    return dict(first_call_s=first, compile_s=max(first - per, 0.0), run_s=run)


def bench_torch(ds, configs, steps, save_every, width, batch, threads=1):
    import torch

    if threads:
        torch.set_num_threads(threads)  # 1 by default: these matmuls are tiny, and 2 OpenMP threads on a busy 2-core machine are 5-20x slower
    x = torch.tensor(np.asarray(ds.x_train).reshape(ds.x_train.shape[0], -1), dtype=torch.float32)
    y = torch.tensor(np.asarray(ds.y_train), dtype=torch.long)
    n = x.shape[0]
    t0 = time.perf_counter()
    for c in configs:
        torch.manual_seed(c["seed"])
        net = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU(),
                                  torch.nn.Linear(width, 10))
        opt = torch.optim.SGD(net.parameters(), lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"])
        w2, b2, w3, b3 = net[2].weight, net[2].bias, net[4].weight, net[4].bias
        forcing = torch.zeros(2 * width + 1)
        saves = []
        for step in range(steps):
            idx = torch.randperm(n)[:batch]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():  # per-group forcing |g_A|^2: rescale (last hidden units), translation (head)
                g_in = (w2.grad ** 2).sum(1) + b2.grad ** 2
                g_out = (w3.grad ** 2).sum(0)
                forcing[:width] += g_in - g_out
                forcing[width:2 * width] += w3.grad.sum(0) ** 2
                forcing[-1] += b3.grad.sum() ** 2
            opt.step()
            if (step + 1) % save_every == 0:
                with torch.no_grad():
                    resc = (w2 ** 2).sum(1) + b2 ** 2 - (w3 ** 2).sum(0)
                    trans = torch.cat([w3.sum(0), b3.sum()[None]])
                    saves.append((loss.item(), resc.clone(), trans.clone(), forcing.clone()))
    return dict(run_s=time.perf_counter() - t0, threads=torch.get_num_threads(), version=torch.__version__)


def profile(ds, configs, steps, width, batch, model_step_flops):
    """Where a sweep step's time goes, by construction: the same vmapped N-member scan with more and more of the
    step switched on (each program timed apart from its compile). Shares: sampling, forward+backward, optimiser and
    divergence bookkeeping, and the Recorder's per-group recording."""
    import optax

    from noether_jax.data import sample_batch
    from noether_jax.training import Batches, Engine, run

    n = len(configs)
    net, params, state = models.functional(models.make_model("mlp", key=0, width=width, in_shape=ds.x_train.shape[1:]))
    syms = nj.symmetry.detect(net, params, (ds.x_train[:64], ds.y_train[:64]), state=state).symmetries
    stack = lambda t: jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), t)  # noqa: E731
    P, S = stack(params), stack(state)
    lrs = jnp.asarray([c["lr"] for c in configs], jnp.float32)
    keys = jax.random.split(jax.random.key(0), n)
    lossf = models.loss_fn(net)
    x, y = ds.x_train, ds.y_train

    def sampling(key):
        def body(acc, k):
            xb, yb = sample_batch(k, x, y, batch)
            return acc + xb.ravel()[0] + yb[0], None
        return jax.lax.scan(body, jnp.zeros(()), jax.random.split(key, steps))[0]

    def fwd_bwd(p, s):
        xb, yb = x[:batch], y[:batch]
        def body(acc, _):
            g = jax.grad(lambda q: lossf(q, s, (xb, yb))[0])(jax.tree.map(lambda a: a + acc, p))
            return acc + 1e-9 * jax.tree.leaves(g)[0].ravel()[0], None
        return jax.lax.scan(body, jnp.zeros(()), None, length=steps)[0]

    def train(p, s, lr, key):
        eng = Engine(lossf, [optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(lr, momentum=0.9))],
                     Batches(x, y, batch_size=batch))
        return run(eng, [p], [s], key, steps=steps, save_every=steps).params[0]

    rec = nj.Recorder(net, syms, x, y, batch_size=batch, steps=steps, save_every=max(1, steps // 10))

    def record(p, s, lr, key):
        return rec.run(p, s, nj.Hyper(lr, 0.9, 1e-4), key).measured

    progs = {"sampling": (jax.jit(jax.vmap(sampling)), (keys,)),
             "forward+backward": (jax.jit(jax.vmap(fwd_bwd)), (P, S)),
             "training (sampling, grad, optimiser, divergence)": (jax.jit(jax.vmap(train)), (P, S, lrs, keys)),
             "Recorder (training + per-group recording)": (jax.jit(jax.vmap(record)), (P, S, lrs, keys))}
    out = {}
    for name, (fn, args) in progs.items():
        t0 = time.perf_counter()
        exe = fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(exe(*args))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(exe(*args))
            times.append(time.perf_counter() - t0)
        cost = exe.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
        run_s = float(np.median(times))
        # XLA's cost analysis counts a while (scan) body once, not once per iteration: `xla_flops` is the FLOPs of one
        # pass through each loop body, not of the program. The FLOP rate below is the model's: the exact FLOPs of the
        # N members' forward+backward per step (step_flops) times the steps, over the run time.
        model = model_step_flops * steps if name != "sampling" else float("nan")  # sampling has no forward+backward
        out[name] = dict(compile_s=compile_s, run_s=run_s, us_per_config_step=1e6 * run_s / (n * steps),
                         xla_flops_one_loop_body=flops, model_flops=model, model_flops_per_s=model / run_s)
        print(f"  {name:52s} {out[name]['us_per_config_step']:8.1f} µs/(config·step)  "
              f"model FLOP/s {model / run_s:.3g}")
    return out


def step_flops(ds, n, width, batch):
    """FLOPs of one step's forward+backward for N members (XLA's cost analysis of the vmapped gradient, no loop)."""
    net, params, state = models.functional(models.make_model("mlp", key=0, width=width, in_shape=ds.x_train.shape[1:]))
    lossf = models.loss_fn(net)
    stack = lambda t: jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), t)  # noqa: E731
    xb, yb = ds.x_train[:batch], ds.y_train[:batch]
    g = jax.jit(jax.vmap(jax.grad(lambda q, s: lossf(q, s, (xb, yb))[0])))
    cost = g.lower(stack(params), stack(state)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def peak_flops(n=1024, repeats=5):
    """This CPU's attainable float32 matmul FLOP/s on the same threads (one jitted n×n matmul)."""
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda m: m @ m)
    jax.block_until_ready(f(a))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--torch-configs", type=int, default=None, help="torch configurations to time (default: all N); scaled to N")
    ap.add_argument("--scaling", default="1,4,16,64,256,1024")
    ap.add_argument("--scaling-steps", type=int, default=100)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--torch-only", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--sampler", choices=("library", "topk", "choice"), default="library",
                    help="patch the recorder's mini-batch sampler: topk = top_k of uniform keys (the library's since "
                         "006f94f), choice = jax.random.choice(replace=False) (the library's before)")
    ap.add_argument("--profile", action="store_true", help="also time the step by parts (sampling, grad, optimiser, recording)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.quick:
        a.n, a.steps, a.save_every, a.scaling, a.scaling_steps, a.torch_configs = 16, 50, 10, "1,16", 20, 4
    ds = data.digits(dtype=jnp.float32)
    configs = grid(a.n)
    if a.torch_only:
        print(json.dumps(bench_torch(ds, configs[: a.torch_only], a.steps, a.save_every, a.width, a.batch, a.torch_threads)))
        return
    if a.sampler == "topk":
        from noether_jax.training import _engine  # the engine's sampler

        def topk_sample(key, x, y, batch_size):  # a uniform random subset without replacement, no full sort
            idx = jax.lax.top_k(jax.random.uniform(key, (x.shape[0],)), batch_size)[1]
            return x[idx], y[idx]

        _engine.sample_batch = topk_sample
    if a.sampler == "choice":
        from noether_jax.training import _engine

        def choice_sample(key, x, y, batch_size):  # the earlier sampler: a full sort of a permutation per step
            idx = jax.random.choice(key, x.shape[0], (batch_size,), replace=False)
            return x[idx], y[idx]

        _engine.sample_batch = choice_sample
    res = {"machine": f"{platform.machine()} {platform.processor()} ({jax.device_count()} CPU device, "
                      f"{len(__import__('os').sched_getaffinity(0))} cores)", "jax": jax.__version__, "dtype": "float32",
           "n": len(configs), "steps": a.steps, "sampler": a.sampler, "width": a.width, "batch": a.batch}
    print(f"N = {len(configs)} configurations × {a.steps} steps, MLP width {a.width}, batch {a.batch}, float32")

    res["peak_matmul_flops"] = peak = peak_flops()
    print(f"peak: a 1024² float32 matmul runs at {peak / 1e9:.1f} GFLOP/s on this machine")
    res["model_step_flops"] = fl = step_flops(ds, len(configs), a.width, a.batch)
    print(f"model: one step's forward+backward of the {len(configs)} members is {fl / 1e6:.1f} MFLOP "
          f"({fl / len(configs) / 1e6:.2f} MFLOP per member)")
    if a.profile:
        print("profile (same N and steps, vmapped):")
        res["profile"] = profile(ds, configs, a.steps, a.width, a.batch, fl)
        for v in res["profile"].values():
            v["fraction_of_peak"] = v["model_flops_per_s"] / peak
    res["sweep"] = s = bench_sweep(ds, configs, a.steps, a.save_every, a.width, a.batch)
    s["model_flops_per_s"] = fl * a.steps / s["run_s"]
    s["fraction_of_peak"] = s["model_flops_per_s"] / peak
    print(f"sweep : compile {s['compile_s']:.2f} s, run {s['run_s']:.2f} s (first {s['first_run_s']:.2f} s); "
          f"model FLOP/s {s['model_flops_per_s']:.3g} = {100 * s['fraction_of_peak']:.1f} % of the matmul peak")
    res["loop"] = lp = bench_loop(ds, configs, a.steps, a.save_every, a.width, a.batch)
    lp["model_flops_per_s"] = fl * a.steps / lp["run_s"]
    lp["fraction_of_peak"] = lp["model_flops_per_s"] / peak
    print(f"loop  : compile {lp['compile_s']:.2f} s, run {lp['run_s']:.2f} s ({100 * lp['fraction_of_peak']:.1f} % of "
          f"peak) -> sweep is {lp['run_s'] / s['run_s']:.1f}x faster")
    if not a.no_torch:
        import subprocess
        import sys

        k = a.torch_configs or len(configs)
        cmd = [sys.executable, __file__, "--torch-only", str(k), "--n", str(a.n), "--steps", str(a.steps),
               "--save-every", str(a.save_every), "--width", str(a.width), "--batch", str(a.batch),
               "--torch-threads", str(a.torch_threads)]
        tr = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        tr["run_s_measured"], tr["configs_measured"] = tr["run_s"], k
        tr["run_s"] = tr["run_s"] * len(configs) / k
        res["torch"] = tr
        print(f"torch : run {tr['run_s']:.2f} s ({k} configs timed, {tr['threads']} threads) -> sweep is "
              f"{tr['run_s'] / s['run_s']:.1f}x faster")

    res["scaling"] = []
    print("\nscaling (steps = %d):\n     N   compile s     run s   µs / (config·step)   XLA bytes" % a.scaling_steps)
    for n in [int(v) for v in a.scaling.split(",")]:
        cf = grid(n) if n <= 64 else [dict(lr=0.01 + 0.3 * i / n, momentum=0.9 * (i % 2), weight_decay=1e-4 * (i % 3 == 0),
                                           seed=i % 8) for i in range(n)]
        r = bench_sweep(ds, cf, a.scaling_steps, a.scaling_steps // 10 or 1, a.width, a.batch, repeats=1)
        per = r["run_s"] / (n * a.scaling_steps) * 1e6
        res["scaling"].append(dict(n=n, **r, us_per_config_step=per))
        print(f"{n:6d} {r['compile_s']:11.2f} {r['run_s']:9.3f} {per:20.2f} {r['xla_bytes']:11,d}")
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the process: {res['peak_rss_mb']:.0f} MB")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
