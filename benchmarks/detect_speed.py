"""Issue 14 benchmark: ``nj.symmetry.detect`` (from the computation) against the shape-based detect of
commit fa9afa0, on the library's models, each call in a fresh process (compile included).

For every model and implementation it reports the wall time of the first call (trace, compile, run),
of a second call in the same process, and the groups found per kind. The earlier detect is loaded
from git (``git show fa9afa0:noether_jax/symmetry/_detect.py``) as a module of the installed package,
so this script needs the repository's git history.

    .venv/bin/python benchmarks/detect_speed.py --json runs/bench/detect_speed.json
    .venv/bin/python benchmarks/detect_speed.py --quick      # mlp and transformer only
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

OLD = "fa9afa0"
MODELS = ("mlp", "cnn_bn", "vgg_bn", "resnet", "transformer")
WIDTH = {"mlp": 32, "cnn_bn": 8, "vgg_bn": 8, "resnet": 8, "transformer": 32}


def one(model: str, impl: str) -> dict:
    import importlib.util

    import jax

    import noether_jax as nj
    from noether_jax import data, models

    nj.enable_x64()
    if impl == "old":
        src = subprocess.run(["git", "show", f"{OLD}:noether_jax/symmetry/_detect.py"], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).parent).stdout
        spec = importlib.util.spec_from_loader("noether_jax.symmetry._detect_old", loader=None)
        mod = importlib.util.module_from_spec(spec)
        mod.__package__ = "noether_jax.symmetry"
        sys.modules[spec.name] = mod
        exec(compile(src, "_detect_old.py", "exec"), mod.__dict__)  # noqa: S102 - the earlier detect, from git
        detect = mod.detect
    else:
        detect = nj.symmetry.detect
    ds = data.digits()
    batch = (ds.x_train[:64], ds.y_train[:64])
    net, params, state = models.functional(models.make_model(model, width=WIDTH[model], key=0))
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        found = detect(net, params, batch, state=state)
        jax.block_until_ready(jax.tree.leaves(found))
        times.append(time.perf_counter() - t0)
    near = len(getattr(found, "near", ()) and [n for m in found.near for n in m.symmetry.names])
    return dict(model=model, impl=impl, first_s=times[0], second_s=times[1], near=near,
                groups={k: len(found.names(k)) for k in ("translation", "scale", "rescale")})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    rows = []
    for model in ("mlp", "transformer") if args.quick else MODELS:
        for impl in ("old", "new"):
            out = subprocess.run([sys.executable, __file__, "--one", model, impl], capture_output=True, text=True, check=False)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{model:12s} {impl:4s} first {row['first_s']:6.2f} s  second {row['second_s']:6.2f} s  "
                  f"groups {row['groups']}  near {row['near']}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(machine=platform.processor() or platform.machine(), rows=rows), indent=1))


if __name__ == "__main__":
    main()
