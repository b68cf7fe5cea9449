"""Report parts of the later experiments: ``(name, hook)`` with ``hook(out_dir, *, quick)`` returning
``(summary_part, [Section, ...])`` (private)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import plots as _plots
from .._io import atomic_write, write_json
from ._claims import Claim
from ._html import Section


def _derived(summary: dict) -> dict:
    """The NLD claims' derived numbers (ratios of summary entries), kept in the summary so every headline row
    has its number in ``summary.json``."""
    r, a = summary["rmsprop_match"], summary["ablation"]
    init = a["init_x10"]
    rows = {(k["symmetry"], k["rule"]): k for k in summary.get("ksb", [])}
    rules = sorted({rule for _, rule in rows})
    trans = [rows[("translation", q)]["max_abs_dK"] / max(rows[("scale", q)]["max_abs_dK"], 1e-300) for q in rules
             if ("translation", q) in rows and ("scale", q) in rows]
    mv = summary.get("match_vs_lr", {})
    closer = [m < g for m, g in zip(mv.get("beta0.9_momentum", {}).get("max_angle_deg", []),
                                    mv.get("beta0.9_gradient", {}).get("max_angle_deg", []))]
    return {
        "control_over_mapped_angle": r["control_max_angle_deg"] / max(r["max_angle_deg"], 1e-300),
        "init_x10_lr_eff_ratio_error": abs(init["median_lr_eff_start"][0] / init["median_lr_eff_start"][1] / 100.0 - 1.0),
        "init_x10_final_loss_ratio": init["final_loss"][1] / init["final_loss"][0],
        "constrained_over_unconstrained_loss": a["constrained_final_loss"] / a["unconstrained_final_loss"],
        "ksb_translation_over_scale": max(trans) if trans else float("nan"),
        "momentum_closer_fraction": float(np.mean(closer)) if closer else float("nan"),
    }


def nld_outputs(result, out_dir: Path) -> dict:
    """Write an NLD result's figures, ``summary.json`` and ``nld_data.npz`` into ``out_dir``; return the summary."""
    import io

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = _plots.nld_figures(result, out_dir)
    summary = result.to_dict() | {"figures": {k: p.name for k, p in figures.items()}}
    summary["derived"] = _derived(summary)
    tr, cmp = result.comparison.track, result.comparison
    buf = io.BytesIO()
    np.savez_compressed(buf, loss=np.asarray(tr.loss), r2=np.asarray(tr.r2), angle=np.asarray(tr.angle),
                        lr_eff=np.asarray(cmp.lr_eff), eq17_r4=result.eq17.r4, eq17_velocity_r4=result.eq17.r4_velocity)
    atomic_write(out_dir / "nld_data.npz", buf.getvalue())
    write_json(summary, out_dir / "summary.json")
    return summary


def nld_claims(summary: dict, anchor: str = "nld") -> list[Claim]:
    """The NLD rows of the headline table, with the issue's tolerances (keys relative to the NLD summary)."""
    cfg, d = summary["config"], summary["derived"]
    at = f"{cfg['model']}, β = {cfg['momentum']:g}"

    def c(claim, pred, metric, key, tol, cmp="<=", unit=""):
        from ._claims import lookup

        return Claim(claim, pred, metric, lookup(summary, key), tol, cmp, section=anchor, key=key, unit=unit)

    return [
        c(f"NLD eq. 17, {at}", "r⁴ of every normalised group", "median over groups of maxₜ |√r⁴_pred − r²| / r²",
          "eq17.median_rel_error", 0.02, unit="%"),
        c(f"SGD is its mapped RMSProp, {at}", "directions of the mapped group RMSProp", "worst angle over groups and steps",
          "rmsprop_match.max_angle_deg", 5.0, unit="°"),
        c(f"effective learning rate, {at}", "lr/√G of the mapped RMSProp = η/r²", "worst relative error of lr/√G",
          "rmsprop_match.lr_eff_max_rel_error", 0.05, unit="%"),
        c("the match is specific", "a control (√G × 2) is much further", "control's worst angle / the map's",
          "derived.control_over_mapped_angle", 3.0, ">=", "×"),
        c("momentum is part of the map (β = 0.9)", "the map with momentum beats it without", "fraction of η where it is closer",
          "derived.momentum_closer_fraction", 1.0, ">=", "%"),
        c("×10 init divides η/r² by 100", "η/r² ∝ 1/r²", "|ratio of starting η/r² / 100 − 1|",
          "derived.init_x10_lr_eff_ratio_error", 1e-9),
        c("×10 init slows training", "a 100× smaller effective step", "final loss ×10 init / ×1 init",
          "derived.init_x10_final_loss_ratio", 2.0, ">", "×"),
        c("constraining the norm hurts (β = 0.9, λ > 0)", "the implicit adaptivity helps (NLD Fig. 3)",
          "best constrained / best unconstrained final loss", "derived.constrained_over_unconstrained_loss", 1.0, ">", "×"),
        c("Adam norm law, β₁ = 0.9", "|W|² with ⟨W, u⟩ kept, fed the measured |u|² and preconditioner tilt ⟨W, Dg⟩",
          "median over groups of maxₜ |pred − |W|²| / |W|²", "ablation.adam.adam.tilt_law_median_rel_error", 0.05, unit="%"),
        c("AdamW norm law, β₁ = 0.9", "the same law with decoupled weight decay",
          "median over groups of maxₜ |pred − |W|²| / |W|²", "ablation.adam.adamw.tilt_law_median_rel_error", 0.05, unit="%"),
        c("no rule breaks translation", "δK = 0 for translation (Euclidean and diagonal metrics)",
          "max over rules of max|δK| translation / scale", "derived.ksb_translation_over_scale", 1e-10),
    ]


def nld_section(summary: dict, out_dir: Path) -> Section:
    e, r, a = summary["eq17"], summary["rmsprop_match"], summary["ablation"]
    cfg = summary["config"]
    sec = Section(
        title="Noether's Learning Dynamics: effective learning rate, the RMSProp map, ablations",
        claim="SGD on a normalised layer is RMSProp on the unit sphere with √G = r²; removing that implicit "
              "adaptivity (constrained norm) hurts training (Tanaka and Kunin, NeurIPS 2021).",
        prediction="NLD eq. 17 for r⁴; the mapped group RMSProp (lr η, ρ = e^{−4ηλ/(1−β)}, gain 2η²(1+β)/(1−β)³, G(0) = r⁴(0)), "
                   "trained in lockstep with SGD on the same mini-batches.",
        measurement=f"{cfg['model']} on digits, η = {cfg['lr']}, β = {cfg['momentum']}, λ = {cfg['weight_decay']}, "
                    f"{cfg['steps']} steps; {e['n_groups']} scale groups.",
        error=f"<b>Angle</b>: between SGD's and the mapped RMSProp's unit direction θ̂ of a group, worst over groups and steps: "
              f"{r['max_angle_deg']:.2f}° (control {r['control_max_angle_deg']:.1f}°). <b>Effective learning rate error</b>: "
              f"max |lr/√G − η/r²| / (η/r²) = {r['lr_eff_max_rel_error']:.2%}. Eq. 17 median relative error "
              f"{e['median_rel_error']:.2e}. Final training loss, unconstrained {a['unconstrained_final_loss']:.4f} against "
              f"constrained {a['constrained_final_loss']:.4f}.",
        anchor="nld", claims=nld_claims(summary),
    )
    captions = {
        "eq17": "Eq. 17: measured r² (solid) against eq. 17 (dashed) and its velocity-forced form (dotted), groups spread over "
                "their growth; right: the effective learning rate η/((1−β)r²) of every group.",
        "rmsprop_match": "SGD against its mapped group RMSProp and a control (√G × 2): the worst angle between their directions, "
                         "the loss curves, and the effective learning rates.",
        "match_vs_lr": "Worst angle between SGD and the mapped RMSProp against the median effective step η/r², over η.",
        "ablation_init": "×10 initialisation of the normalised filters: the same loss function, a 100× smaller effective "
                         "learning rate, slower training.",
        "ablation_constrained": "Constrained filter norm against unconstrained training, over η (final training loss).",
        "adam": "Adam and AdamW on normalised layers: |W|² against the norm recursion, and the angular step.",
    }
    for name, file in summary["figures"].items():
        sec.figures.append((captions.get(name, f"NLD: {name.replace('_', ' ')}"), _plots.encode_file(Path(out_dir) / file)))
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
    part["ok_fraction"] = part["status"]["ok"] / part["n_members"]
    claims = [Claim(f"{kind} law across the grid", "the per-group theory of every member",
                    "median over members of the median per-group relative error", (part.get(f"error_median_{kind}") or {}).get("median"),
                    0.02, section="sweep", key=f"error_median_{kind}.median", unit="%")
              for kind in ("translation", "scale", "rescale") if f"error_median_{kind}" in part]
    claims.append(Claim("every member trains", "no member diverges or leaves the stable region", "fraction of members with status ok",
                        part["ok_fraction"], 1.0, ">=", section="sweep", key="ok_fraction", unit="%"))
    sec = Section(
        title="Sweep: the theory's error and the final loss over η × β",
        claim="A whole grid of training runs with their per-group theory is one vmapped, compiled program.",
        prediction="Per member, the Neural Mechanics theory of every translation and rescale group.",
        measurement=f"MLP on digits, η ∈ {grid['lr']}, β ∈ {grid['momentum']}, λ = {grid['weight_decay']}, "
                    f"{grid['seed']} seeds, {grid['steps']} steps.",
        error="Per member, the median over groups of the relative error (defined at the top); the "
              "claims quote its median over members, held to 2 % because the grid mixes β = 0 (1 %) and momentum (2 %). "
              "Heat maps: the median over seeds.",
        anchor="sweep", claims=claims,
    )
    for p in paths:
        var = p.stem.removeprefix("heatmap_")
        sec.figures.append((f"{_plots.sweep_label(var)} over η × β ({grid['seed']} seeds, median).", _plots.encode_file(p)))
    return part, [sec]


def _sweep_physics_part(out_dir: Path, *, quick: bool = True):
    from ._physics_part import sweep_physics_part

    return sweep_physics_part(out_dir, quick=quick)


PARTS: list = [("nld", nld_part), ("sweep", sweep_part), ("sweep_physics", _sweep_physics_part)]
__all__ = ["PARTS", "nld_claims", "nld_outputs", "nld_part", "nld_section", "sweep_part"]
