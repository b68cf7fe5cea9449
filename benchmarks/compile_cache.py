"""Issue 18 benchmark: JAX's persistent compilation cache across processes, through the command line.

    python benchmarks/compile_cache.py [--steps 100] [--json runs/bench/compile_cache.json]

Runs the same ``noether-jax sweep`` twice, each in a new process, with a fresh cache folder
(``JAX_COMPILATION_CACHE_DIR``), and reads each run's ``summary.json``: ``compile_time_s`` (tracing,
lowering and XLA compilation of the sweep program) and ``xla_compile_time_s`` (XLA alone), plus the
wall time of each whole command. Targets: second / first ≤ 0.3 for XLA and ≤ 0.5 for the total compile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp / "cache")}
    cli = Path(sys.executable).parent / "noether-jax"  # this interpreter's entry point: the script may run unactivated
    args = [str(cli) if cli.exists() else "noether-jax", "sweep", "--lr", "0.03,0.1", "--momentum", "0,0.9",
            "--seeds", "2", "--steps", str(a.steps), "--no-progress"]
    runs = []
    for i in range(2):
        t0 = time.perf_counter()
        subprocess.run([*args, "--out", str(tmp / f"run{i}")], env=env, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        s = json.loads((tmp / f"run{i}" / "summary.json").read_text())
        runs.append({"wall_s": wall, "compile_time_s": s["compile_time_s"], "xla_compile_time_s": s["xla_compile_time_s"],
                     "run_time_s": s["run_time_s"]})
        print(f"process {i + 1}: compile {s['compile_time_s']:.2f} s (XLA {s['xla_compile_time_s']:.2f} s), "
              f"run {s['run_time_s']:.2f} s, whole command {wall:.1f} s")
    res = {"runs": runs, "xla_ratio": runs[1]["xla_compile_time_s"] / runs[0]["xla_compile_time_s"],
           "compile_ratio": runs[1]["compile_time_s"] / runs[0]["compile_time_s"]}
    print(f"second/first: XLA {res['xla_ratio']:.3f} (target ≤ 0.3), total compile {res['compile_ratio']:.3f} (target ≤ 0.5)")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
