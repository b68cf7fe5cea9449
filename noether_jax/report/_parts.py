"""Report parts of the later experiments: ``(name, hook)`` with ``hook(out_dir, *, quick)`` returning
``(summary_part, [Section, ...])`` (private)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import plots as _plots
from .._io import atomic_write, write_json
from ._html import Section


def nld_outputs(result, out_dir: Path) -> dict:
    """Write an NLD result's figures, ``summary.json`` and ``nld_data.npz`` into ``out_dir``; return the summary."""
    import io

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = _plots.nld_figures(result, out_dir)
    summary = result.to_dict() | {"figures": {k: p.name for k, p in figures.items()}}
    tr, cmp = result.comparison.track, result.comparison
    buf = io.BytesIO()
    np.savez_compressed(buf, loss=np.asarray(tr.loss), r2=np.asarray(tr.r2), angle=np.asarray(tr.angle),
                        lr_eff=np.asarray(cmp.lr_eff), eq17_r4=result.eq17.r4, eq17_velocity_r4=result.eq17.r4_velocity)
    atomic_write(out_dir / "nld_data.npz", buf.getvalue())
    write_json(summary, out_dir / "summary.json")
    return summary


def nld_section(summary: dict, out_dir: Path) -> Section:
    e, r, a = summary["eq17"], summary["rmsprop_match"], summary["ablation"]
    cfg = summary["config"]
    sec = Section(
        title="Noether's Learning Dynamics: effective learning rate, the RMSProp map, ablations",
        claim="SGD on a normalised layer is RMSProp on the unit sphere with √G = r²; removing that implicit "
              "adaptivity (constrained norm) hurts training.",
        prediction="NLD eq. 17 for r⁴; the mapped group RMSProp (lr η, ρ = e^{−4ηλ/(1−β)}, gain 2η²(1+β)/(1−β)³, G(0) = r⁴(0)).",
        measurement=f"{cfg['model']} on digits, η = {cfg['lr']}, β = {cfg['momentum']}, λ = {cfg['weight_decay']}, "
                    f"{cfg['steps']} steps; {e['n_groups']} scale groups.",
        error=f"eq. 17 median rel. error {e['median_rel_error']:.2e}; mapped RMSProp max angle {r['max_angle_deg']:.2f}° "
              f"(control {r['control_max_angle_deg']:.1f}°); unconstrained {a['unconstrained_final_loss']:.4f} vs "
              f"constrained {a['constrained_final_loss']:.4f} final loss.",
        anchor="nld",
    )
    captions = {
        "eq17": "Eq. 17: measured r² (solid) against eq. 17 (dashed) and its velocity-forced form (dotted); right: η/((1−β)r²) of every group.",
        "rmsprop_match": "SGD against its mapped group RMSProp and a control (√G × 2): worst angle, loss curves, effective learning rates.",
        "match_vs_lr": "Worst angle between SGD and the mapped RMSProp against the median effective step η/r².",
        "ablation_init": "×10 initialisation of the normalised filters: loss and effective learning rate.",
        "ablation_constrained": "Constrained filter norm against unconstrained training over η (final training loss).",
        "adam": "Adam and AdamW on normalised layers: |W|² against the norm recursion, and the angular step.",
    }
    for name, file in summary["figures"].items():
        sec.figures.append((captions.get(name, name), _plots.encode_file(Path(out_dir) / file)))
    return sec


def nld_part(out_dir: Path, *, quick: bool = True):
    from ..experiments import NLDConfig, run_nld

    summary = nld_outputs(run_nld(NLDConfig(quick=quick)), out_dir)
    return summary, [nld_section(summary, out_dir)]


def sweep_part(out_dir: Path, *, quick: bool = True):
    from ..sweeps import sweep, sweep_summary

    out_dir.mkdir(parents=True, exist_ok=True)
    grid = dict(lr=[0.03, 0.1, 0.3], momentum=[0.0, 0.9], weight_decay=[1e-4], seed=2, steps=300, save_every=30, width=16) \
        if quick else dict(lr=[0.01, 0.03, 0.1, 0.3], momentum=[0.0, 0.8, 0.9, 0.99], weight_decay=[0.0, 1e-4, 5e-4], seed=4,
                           steps=2000, save_every=20, width=64)
    ds = sweep("mlp", progress=False, **grid)
    atomic_write(out_dir / "sweep.nc", bytes(ds.to_netcdf(None, engine="scipy")))
    paths = _plots.sweep_figures(ds, out_dir)
    part = sweep_summary(ds)
    sec = Section(
        title="Sweep: the theory's error and the final loss over η × β",
        claim="A whole grid of training runs with their per-group theory is one vmapped, compiled program.",
        prediction="Per member, the Neural Mechanics theory of every translation and rescale group.",
        measurement=f"MLP on digits, η ∈ {grid['lr']}, β ∈ {grid['momentum']}, λ = {grid['weight_decay']}, "
                    f"{grid['seed']} seeds, {grid['steps']} steps.",
        error="Median per-group relative error of each member (heat maps: median over seeds).",
        anchor="sweep",
    )
    for p in paths:
        sec.figures.append((p.stem.replace("_", " "), _plots.encode_file(p)))
    return part, [sec]


PARTS: list = [("nld", nld_part), ("sweep", sweep_part)]
__all__ = ["PARTS", "nld_outputs", "nld_part", "nld_section", "sweep_part"]
