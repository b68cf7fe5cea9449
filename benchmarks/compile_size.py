"""Issue 18 benchmark: the size and compile time of one Neural Mechanics training program, per model.

    python benchmarks/compile_size.py [--models mlp,cnn_bn,resnet,transformer] [--json runs/bench/compile_size.json]

For each model of the quick report (its first configuration in ``QUICK_NM``), detects the symmetries, builds the
``Recorder`` of the report (2000 steps, a save every 10, the λ_max guard) and lowers ``Recorder.run`` twice in the
same process: once with the library's group sums (one segment sum over the leaves laid end to end) and once with
per-leaf references of ``pair``, ``segment_sum`` and ``gradient_residuals`` (one scatter per parameter leaf, the
implementation before this change, kept here only to measure against). Prints, for both, the StableHLO lines and scatters, the tracing + lowering time and the XLA
compile time; the ratios are per-leaf ÷ flat from the same run. Nothing is cached to disk.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import noether_jax as nj
import noether_jax.symmetry._groups as G
import noether_jax.training._hooks as H
import noether_jax.training._recorder as RC
from noether_jax.symmetry import MaskedSymmetry


def per_leaf_pair(self, q, w):
    """The per-leaf ⟨w, ξ_g⟩: one segment sum for every leaf (the reference)."""
    dtype = jnp.result_type(*jax.tree.leaves(q), *jax.tree.leaves(w), float)
    total = jnp.zeros(self.groups, dtype)
    for x, wi, ids, c, d in zip(*(jax.tree.leaves(t) for t in (q, w, self.ids, self.scale, self.shift)), strict=True):
        contrib = (wi * (jnp.asarray(c, dtype) * x + jnp.asarray(d, dtype))).ravel().astype(dtype)
        idx = jnp.ravel(jnp.broadcast_to(ids, jnp.shape(x)))
        total = total + jax.ops.segment_sum(jnp.where(idx >= 0, contrib, 0.0), jnp.clip(idx, 0), self.groups)
    return total


def per_leaf_segment_sum(sym, values):
    dtype = jnp.result_type(*jax.tree.leaves(values), float)
    total = jnp.zeros(sym.n_groups, dtype)
    for v, ids in zip(jax.tree.leaves(values), jax.tree.leaves(sym.ids), strict=True):
        idx = jnp.ravel(jnp.broadcast_to(ids, jnp.shape(v)))
        total = total + jax.ops.segment_sum(jnp.where(idx >= 0, jnp.ravel(v), 0.0), jnp.clip(idx, 0), sym.n_groups)
    return total


def per_leaf_gradient_residuals(sym, params, grads):
    out = []
    for s in G.parts(sym):
        dot = jnp.abs(per_leaf_pair(s, params, grads))
        xi = jax.tree.map(lambda c, d, x: c * x + d, s.scale, s.shift, params)
        den = jnp.sqrt(per_leaf_segment_sum(s, jax.tree.map(jnp.square, grads)) * per_leaf_segment_sum(s, jax.tree.map(jnp.square, xi)))
        out.append(jnp.where(den > 0, dot / jnp.where(den > 0, den, 1.0), 0.0))
    return jnp.concatenate(out)


# where the library's functions are looked up: patched together, restored after
SITES = ((MaskedSymmetry, "pair"), (G, "segment_sum"), (G, "gradient_residuals"), (H, "gradient_residuals"),
         (RC, "gradient_residuals"))
PER_LEAF = (per_leaf_pair, per_leaf_segment_sum, per_leaf_gradient_residuals, per_leaf_gradient_residuals,
            per_leaf_gradient_residuals)


def measure(rec, params, state) -> dict:
    hyper = nj.Hyper(0.1, 0.9, 5e-4)
    t0 = time.perf_counter()
    low = jax.jit(nj.Recorder.run).lower(rec, params, state, hyper, jax.random.key(0))
    t_lower = time.perf_counter() - t0
    text = low.as_text()
    t0 = time.perf_counter()
    low.compile()
    return {"stablehlo_lines": text.count("\n"), "scatters": len(re.findall(r"stablehlo\.scatter", text)),
            "lower_s": t_lower, "xla_compile_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,cnn_bn,resnet,transformer")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    nj.enable_x64()
    from noether_jax.experiments.neural_mechanics import NMConfig, build_model, load_data, sharpness_every
    from noether_jax.report._reproduce import QUICK_NM

    ds = load_data("digits")
    flat = tuple(getattr(obj, attr) for obj, attr in SITES)
    out = {}
    for name in a.models.split(","):
        cfg = NMConfig(**{"steps": 2000, **next(c for c in QUICK_NM if c["model"] == name)})
        net, params, state = nj.models.functional(build_model(name, key=0, ds=ds, width=cfg.width))
        syms = nj.symmetry.detect(net, params, (ds.x_train[:256], ds.y_train[:256]), state=state).symmetries
        rec = nj.Recorder(net, syms, ds.x_train, ds.y_train, batch_size=cfg.batch_size, steps=cfg.steps, save_every=10,
                          sharpness_every=sharpness_every(cfg.steps, 10))
        row = {"leaves": len(jax.tree.leaves(params))}
        for label, impl in (("flat", flat), ("per_leaf", PER_LEAF)):
            for (obj, attr), f in zip(SITES, impl, strict=True):
                setattr(obj, attr, f)
            try:
                jax.clear_caches()
                row[label] = measure(rec, params, state)
            finally:
                for (obj, attr), f in zip(SITES, flat, strict=True):
                    setattr(obj, attr, f)
        f, p = row["flat"], row["per_leaf"]
        row["ratio_xla_compile"] = p["xla_compile_s"] / f["xla_compile_s"]
        row["ratio_lower"] = p["lower_s"] / f["lower_s"]
        out[name] = row
        print(f"{name:12s} {row['leaves']:3d} leaves | per-leaf: {p['stablehlo_lines']:6d} lines, {p['scatters']:5d} scatters, "
              f"lower {p['lower_s']:5.1f} s, XLA {p['xla_compile_s']:5.1f} s | flat: {f['stablehlo_lines']:6d} lines, "
              f"{f['scatters']:4d} scatters, lower {f['lower_s']:5.1f} s, XLA {f['xla_compile_s']:5.1f} s | "
              f"XLA ratio {row['ratio_xla_compile']:.2f}x, lower ratio {row['ratio_lower']:.2f}x", flush=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
