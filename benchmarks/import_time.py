"""Import cost of ``noether_jax`` against its core dependencies, measured side by side in fresh processes.

    python benchmarks/import_time.py [--repeats 15]

Each sample is a new interpreter timing ``import jax, optax, diffrax, equinox, lineax, flax.nnx``
(the core) or ``import noether_jax``; samples alternate so that machine load affects both alike.
Reports the medians and their ratio (the target is ≤ 1.15×), and which heavy modules a plain
``import noether_jax`` loads (it must load none of matplotlib, typer, xarray or scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CORE = "import jax, optax, diffrax, equinox, lineax, flax.nnx"
LIB = "import noether_jax"
PROBE = "import time, sys; t = time.perf_counter(); {stmt}; dt = time.perf_counter() - t; " \
        "heavy = [m for m in ('matplotlib', 'typer', 'xarray', 'sklearn', 'pandas', 'tqdm') if m in sys.modules]; " \
        "print(dt, ','.join(heavy))"


def sample(stmt: str) -> tuple[float, str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(stmt=stmt)], capture_output=True, text=True, check=True)
    dt, _, heavy = out.stdout.strip().partition(" ")
    return float(dt), heavy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", default=None, help="write the numbers here")
    a = ap.parse_args()
    sample(LIB)  # warm the file-system cache once
    core, lib, heavy = [], [], ""
    for _ in range(a.repeats):
        core.append(sample(CORE)[0])
        t, heavy = sample(LIB)
        lib.append(t)
    res = {"core_median_s": statistics.median(core), "noether_jax_median_s": statistics.median(lib),
           "ratio": statistics.median(lib) / statistics.median(core), "repeats": a.repeats, "heavy_modules_loaded": heavy}
    print(f"core deps {res['core_median_s']:.3f} s, noether_jax {res['noether_jax_median_s']:.3f} s: "
          f"ratio {res['ratio']:.3f} (target ≤ 1.15); heavy modules loaded: {heavy or 'none'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
