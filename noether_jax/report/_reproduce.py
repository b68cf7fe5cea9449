"""The main job: the Neural Mechanics runs, eq. 17, flows, NLD and a sweep, in one report (private).

:func:`reproduce` is ``noether-jax reproduce``; it writes ``report.html`` (self-contained, figures
embedded), ``summary.json`` and the runs' figures and series.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import plots as _plots
from .._io import atomic_write, write_json
from ..symmetry import group_names
from ._html import Report, Section, environment
from ._parts import PARTS

QUICK_NM = (
    dict(model="mlp", momentum=0.0, weight_decay=1e-4),
    dict(model="mlp", momentum=0.9, weight_decay=5e-4),
    dict(model="cnn_bn", momentum=0.0, weight_decay=5e-4, width=8),
    dict(model="cnn_bn", momentum=0.9, weight_decay=5e-4, width=8),
)


def nm_outputs(result, out_dir: Path, *, tag: str = "") -> tuple[dict, list[tuple[str, str, Any]]]:
    """Write one run's figures (PNG) and series (netCDF) into ``out_dir``; return (summary, figures).

    ``figures`` is a list of (kind, caption, Figure-as-base64) for the report.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rec, syms, cfg = result.record, result.symmetries, result.config
    summary = dict(result.summary)
    figs = []
    atomic_write(out_dir / f"series{tag}.nc", bytes(result.dataset.to_netcdf(None, engine="scipy")))
    if summary["diverged"]:
        return summary, figs
    step = np.asarray(rec.step)
    names = {k: group_names(s) for k, s in syms.items()}
    title = f"{cfg.model}, η={cfg.lr}, β={cfg.momentum}, λ={cfg.weight_decay}"
    for kind in syms:
        fig = _plots.plot_conservation(step, {kind: rec.measured[kind]}, {kind: rec.theory[kind]}, names=names, title=title)
        b64 = _plots.write_figure(fig, out_dir / f"{kind}{tag}.png")
        figs.append((kind, f"{kind}: measured (solid) and theory (dashed) per group, {cfg.model} β={cfg.momentum}", b64))
    if "scale" in syms:
        r2 = np.asarray(rec.measured["scale"])
        pred = np.sqrt(np.maximum(np.asarray(rec.nld_r4), 0.0))
        fig = _plots.plot_conservation(step, {"scale": r2}, {"scale": pred}, title=f"NLD eq. 17: r² measured vs predicted, β = {cfg.momentum}")
        b64 = _plots.write_figure(fig, out_dir / f"eq17{tag}.png")
        figs.append(("eq17", f"NLD eq. 17 (β = {cfg.momentum}): r² = |θ_𝒜|² measured (solid) and sqrt of the predicted r⁴ (dashed)", b64))
    return summary, figs


def nm_section(summary: dict, figs, anchor: str) -> Section:
    cfg = summary["config"]
    tab = {}
    for kind, e in summary.get("symmetries", {}).items():
        for k in ("n_groups", "median_rel_error", "max_rel_error", "median_broken_fraction", "identity_max_rel_error",
                  "eq17_median_rel_error"):
            if k in e:
                tab[f"{kind}.{k}"] = e[k]
    tab["final_test_accuracy"] = summary.get("final_test_accuracy")
    stab = summary.get("stability") or {}
    for k in ("max_sharpness", "threshold", "valid"):
        if k in stab:
            tab[f"stability.{k}"] = stab[k]
    theory = "NM eqs. 18–20 fed the applied mini-batch |g_𝒜|²" if cfg["momentum"] == 0 else \
        "the driven damped oscillator Ẍ + 2γẊ + ω²X = 2|θ̇_𝒜|² fed the measured velocities"
    sec = Section(
        title=f"Neural Mechanics: {cfg['model']}, η={cfg['lr']}, β={cfg['momentum']}, λ={cfg['weight_decay']}, S={cfg['batch_size']}",
        claim="Weight decay, momentum, a finite learning rate and mini-batch noise break each symmetry's conservation law "
              "in a way closed forms predict neuron by neuron.",
        prediction=f"Per group, {theory}; groups from <code>symmetry.detect</code>, never from layer names.",
        measurement=f"Real optax training on digits for {cfg['steps']} steps, recorded in one compiled scan.",
        error="Per-group relative error maxₜ|pred − meas| / max(|meas|, floor), floor = 1e-3 × the median group scale."
        if not summary["diverged"] else f"The run diverged at step {summary.get('diverged_step')}: no figures are shown.",
        table=tab,
        anchor=anchor,
    )
    sec.figures = [(c, b) for _, c, b in figs]
    sec.error += " " + stability_note(stab)
    return sec


def stability_note(stab: dict) -> str:
    """One sentence on the edge-of-stability guard of a run, for reports (empty when it was not run)."""
    if not stab:
        return ""
    if stab.get("valid"):
        return (f"<b>Validity guard:</b> max η·λ_max = {stab['max_sharpness']:.3g} &lt; 2(1+β) = {stab['threshold']:.3g} "
                f"at all {len(stab['step'])} checked steps: the continuous model applies.")
    if stab.get("not_finite_steps"):
        return (f"<b>Validity guard:</b> λ_max was not finite at steps {stab['not_finite_steps']}: the continuous model "
                "cannot be checked there.")
    return (f"<b>Validity guard: EDGE OF STABILITY.</b> η·λ_max reached {stab.get('max_sharpness') or float('nan'):.3g} "
            f"&gt; 2(1+β) = {stab['threshold']:.3g} at steps {stab['flagged_steps']}: no modified flow applies there, "
            "so these errors are not a test of the continuous theory.")


def reproduce(out: Path, *, quick: bool = True) -> dict:
    """Run the default suite and write ``out/report.html`` and ``out/summary.json``.

    ``quick`` (CPU, minutes): the digits runs of the issues' targets at CPU scale. ``quick=False``:
    paper-scale settings (wider models, more steps), for a GPU.
    """
    from ..experiments import NMConfig, compare_flows, neural_mechanics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report = Report("noether_jax: symmetry and broken conservation laws in learning dynamics")
    summary: dict[str, Any] = {"mode": "quick" if quick else "full", "environment": environment()}
    steps = 2000 if quick else 10000
    nm_summaries = []
    for i, overrides in enumerate(QUICK_NM):
        cfg = NMConfig(steps=steps, **({**overrides} if quick else {**overrides, "width": 4 * overrides.get("width", 32)}))
        res = neural_mechanics(cfg)
        s, figs = nm_outputs(res, out / "neural_mechanics", tag=f"_{cfg.model}_beta{cfg.momentum:g}")
        nm_summaries.append(s)
        report.add(nm_section(s, figs, anchor=f"nm{i}"))
    summary["neural_mechanics"] = nm_summaries
    # the headline numbers of the first (β = 0) and second (β = 0.9) runs, in the layout
    summary["config"] = nm_summaries[0]["config"]
    summary["symmetries"] = nm_summaries[0].get("symmetries", {})
    summary["final_test_accuracy"] = nm_summaries[0].get("final_test_accuracy")

    # eq. 17 on the BatchNorm CNN, β = 0 and β = 0.9 (recorded in the same scans)
    bn_runs = [(i, s) for i, s in enumerate(nm_summaries) if "scale" in s.get("symmetries", {})]

    def eq17_of(s):
        e = s["symmetries"]["scale"]
        return {"n_groups": e.get("n_groups"), "median_rel_error": e.get("eq17_median_rel_error"),
                "max_rel_error": e.get("eq17_max_rel_error"), "momentum": s["config"]["momentum"],
                "oscillator_median_rel_error": e.get("median_rel_error")}

    summary["eq17"] = eq17_of(bn_runs[0][1])
    if len(bn_runs) > 1:
        summary["eq17_beta09"] = eq17_of(bn_runs[1][1])
    bn = bn_runs[0][1]
    e9 = summary.get("eq17_beta09")
    eq_sec = Section(
        title="Noether's Learning Dynamics: eq. 17 on a BatchNorm CNN",
        claim="Under SGD a normalised group's r⁴ = |θ_𝒜|⁴ integrates |ĝ|² like RMSProp's accumulator (NLD eq. 17).",
        prediction="r⁴(t) = e^{−4kt/μ}r⁴(0) + (2η(1+β)/(1−β)³)∫e^{−4k(t−τ)/μ}|ĝ|²dτ with the recorded |ĝ|².",
        measurement=f"{bn['config']['model']} on digits, {bn['config']['steps']} steps, β = 0"
                    + (" and β = 0.9" if e9 else "") + ".",
        error="Per group maxₜ |√r⁴_pred − r²| / r²."
        + ("" if not e9 else
           f" At β = 0.9 the median is {e9['median_rel_error']:.3g}: eq. 17 drops inertia and takes the velocity to be "
           "the terminal |ĝ|/(μr), which holds when the gradient varies slowly over the momentum time 1/(1−β); "
           "under mini-batch noise momentum averages the noise away and |θ̇|² falls towards (1−β)/(1+β) of that, so "
           "eq. 17 overpredicts r². The driven-oscillator law fed the measured velocities (the Neural Mechanics "
           f"section above) stays at a median {e9['oscillator_median_rel_error']:.3g}."),
        table={**{f"β=0 {k}": v for k, v in summary["eq17"].items()}, **({f"β=0.9 {k}": v for k, v in e9.items()} if e9 else {})},
        anchor="eq17",
    )
    for i, _ in bn_runs:
        for sec in report.sections:
            if sec.anchor == f"nm{i}":
                eq_sec.figures += [f for f in sec.figures if f[0].startswith("NLD eq. 17")]
    report.add(eq_sec)

    flows = compare_flows(steps=200 if quick else 1000)
    summary["flows"] = flows.to_dict()
    fsec = Section(
        title="Discrete training against its modified flow and its gradient flow",
        claim="The modified flow (η(1+β)/2)θ̈ + (1−β)θ̇ = −∇V tracks discrete training to O(η²); gradient flow only to O(η).",
        prediction="Both flows integrated by diffrax on the flax parameter pytree from the optimiser's initial velocity.",
        measurement="Full-batch GD (η = 0.1) of a tanh MLP on 256 digits.",
        error=f"max |θ_flow − θₙ|: modified {summary['flows']['max_dist_modified']:.3g}, gradient {summary['flows']['max_dist_gradient']:.3g} "
              f"(|θ₀| = {flows.param_scale:.3g}).",
        anchor="flows",
    )
    fsec.figures = [("discrete vs modified flow vs gradient flow", _plots.write_figure(_plots.plot_flows(dataclasses.asdict(flows))))]
    report.add(fsec)

    for name, hook in PARTS:
        part, sections = hook(out / name, quick=quick)
        summary[name] = part
        for s in sections:
            report.add(s)

    summary["elapsed_s"] = time.perf_counter() - t_start
    write_json(summary, out / "summary.json")
    report.write(out / "report.html", summary)
    return summary
