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
from ._claims import Claim
from ._html import Report, Section, environment
from ._parts import PARTS

QUICK_NM = (
    dict(model="mlp", momentum=0.0, weight_decay=1e-4),
    dict(model="mlp", momentum=0.9, weight_decay=5e-4),
    dict(model="cnn_bn", momentum=0.0, weight_decay=5e-4, width=8),
    dict(model="cnn_bn", momentum=0.9, weight_decay=5e-4, width=8),
    # XLA:CPU runs the kernel-gradient convolutions of a training scan slowly (~12 ms a step at width 8), hence 500
    # steps; heavy ball at η = 0.1, β = 0.9 (an effective step η/(1−β) = 1) leaves it at 89 % after them, η = 0.05 at 96 %
    dict(model="resnet", momentum=0.0, weight_decay=5e-4, width=8, steps=500),
    dict(model="resnet", lr=0.05, momentum=0.9, weight_decay=5e-4, width=8, steps=500),
    # at η = 0.1, β = 0 the transformer trains at the edge of stability (η·λ_max ≈ 2.7–3 > 2, measured): η = 0.025
    dict(model="transformer", lr=0.025, momentum=0.0, weight_decay=5e-4, width=16),
    dict(model="transformer", lr=0.025, momentum=0.9, weight_decay=5e-4, width=16),
)
"""The Neural Mechanics runs of ``reproduce --quick`` (fields of :class:`noether_jax.experiments.NMConfig`;
``steps`` 2000 and ``lr`` 0.1 unless given)."""

FULL_NM = tuple({**c, "width": 4 * c.get("width", 32), "steps": 5 * c.get("steps", 2000)} for c in QUICK_NM)
"""The same runs at paper scale (``reproduce --full``, for a GPU): four times the width, five times the steps."""


KIND_LAW = {"translation": "⟨θ_𝒜, 𝟙⟩", "scale": "|θ_𝒜|²", "rescale": "|θ_𝒜₁|² − |θ_𝒜₂|²"}
METRIC = "median over groups of the relative error"


def config_tag(cfg) -> str:
    """A file-name tag that says the run's configuration, e.g. ``_mlp_lr0.1_beta0.9_wd0.0005_S128``."""
    return f"_{cfg.model}_lr{cfg.lr:g}_beta{cfg.momentum:g}_wd{cfg.weight_decay:g}_S{cfg.batch_size}"


def nm_outputs(result, out_dir: Path, *, tag: str = "") -> tuple[dict, list[tuple[str, str, Any]]]:
    """Write one run's figures (PNG) and series (netCDF) into ``out_dir``; return (summary, figures).

    ``figures`` is a list of (kind, caption, PNG as base64) for the report: one per symmetry, and
    ``"eq17"`` for NLD eq. 17 when the model has scale groups.
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
    title = f"{cfg.model} on digits, η = {cfg.lr:g}, β = {cfg.momentum:g}, λ = {cfg.weight_decay:g}, S = {cfg.batch_size}"
    for kind in syms:
        fig = _plots.plot_conservation(step, {kind: rec.measured[kind]}, {kind: rec.theory[kind]}, names=names, title=title)
        b64 = _plots.write_figure(fig, out_dir / f"{kind}{tag}.png")
        figs.append((kind, f"{kind}: {KIND_LAW[kind]} measured (solid) against its theory (dashed) for groups spread over "
                           f"how far training moved them; below, every group's relative residual with the median and "
                           f"10–90 % band ({title}).", b64))
    if "scale" in syms:
        r2 = np.asarray(rec.measured["scale"])
        pred = np.sqrt(np.maximum(np.asarray(rec.nld_r4), 0.0))
        fig = _plots.plot_conservation(step, {"scale": r2}, {"scale": pred}, names=names,
                                       title=f"NLD eq. 17: r² measured against √(predicted r⁴), {title}")
        b64 = _plots.write_figure(fig, out_dir / f"eq17{tag}.png")
        figs.append(("eq17", f"NLD eq. 17, β = {cfg.momentum:g}: r² = |θ_𝒜|² measured (solid) and the square root of the "
                             "predicted r⁴ (dashed); below, every group's relative residual.", b64))
    return summary, figs


def nm_claims(summary: dict, index: int, anchor: str) -> list[Claim]:
    """The headline rows of one Neural Mechanics run: each symmetry's law (≤ 1 % at β = 0, ≤ 2 % with momentum),
    the test accuracy (≥ 90 %) and the validity guard (η·λ_max below the rule's stability threshold)."""
    cfg = summary["config"]
    beta = cfg["momentum"]
    label = f"{cfg['model']}, β = {beta:g}, λ = {cfg['weight_decay']:g}" + (f", η = {cfg['lr']:g}" if cfg["lr"] != 0.1 else "")
    theory = "NM eqs. 18–20 (SGD)" if beta == 0 else "driven damped oscillator (heavy ball)"
    tol = 0.01 if beta == 0 else 0.02
    base = f"neural_mechanics.{index}"
    claims = []
    for kind, e in summary.get("symmetries", {}).items():
        claims.append(Claim(f"{kind} law, {label}", f"{KIND_LAW[kind]} by {theory}", METRIC, e.get("median_rel_error"), tol,
                            section=anchor, key=f"{base}.symmetries.{kind}.median_rel_error", unit="%"))
    claims.append(Claim(f"training works, {label}", "a network that learns digits", "test accuracy after training",
                        summary.get("final_test_accuracy"), 0.9, ">=", section=anchor, key=f"{base}.final_test_accuracy", unit="%"))
    stab = summary.get("stability") or {}
    if stab.get("checked"):
        claims.append(Claim(f"continuous model applies, {label}", "η·λ_max below the edge of stability 2(1+β)",
                            "largest η·λ_max over the checked steps", stab.get("max_sharpness"), stab.get("threshold"), "<",
                            section=anchor, key=f"{base}.stability.max_sharpness"))
    return claims


def nm_section(summary: dict, figs, anchor: str, index: int = 0, note: str = "") -> Section:
    """One Neural Mechanics run as a sub-section: its measurement (and ``note``, e.g. the model's groups), a table
    per symmetry, its figures and claims (the claim, prediction and metric are stated once, in :func:`nm_intro`)."""
    cfg = summary["config"]
    rows = {}
    for kind, e in summary.get("symmetries", {}).items():
        if "median_rel_error" not in e:
            continue
        ident = e.get("identity_max_rel_error")
        rows[f"<b>{kind}</b> ({e['n_groups']} groups): median / max relative error"] = \
            f"{e['median_rel_error']:.2e} / {e['max_rel_error']:.2e}"
        rows[f"{kind}: law broken by (median)"] = f"{e['median_broken_fraction']:.3g}"
        if ident is not None:
            rows[f"{kind}: exact discrete identity, max relative error"] = f"{ident:.1e}"
    hand = summary.get("hand_derived_groups")
    if hand:
        rows["groups found by detect / derived by hand (gradient not identically zero)"] = ", ".join(
            f"{k} {summary.get('symmetries', {}).get(k, {}).get('n_groups', 0)} / {n}" for k, n in hand.items())
    if summary.get("final_test_accuracy") is not None:
        rows["test accuracy"] = f"{summary['final_test_accuracy']:.3f}"
    stab = summary.get("stability") or {}
    theory = "NM eqs. 18–20 fed the applied mini-batch |g_𝒜|²" if cfg["momentum"] == 0 else \
        "the driven damped oscillator Ẍ + 2γẊ + ω²X = 2|θ̇_𝒜|² fed the measured velocities"
    sec = Section(
        title=f"{cfg['model']}, η = {cfg['lr']:g}, β = {cfg['momentum']:g}, λ = {cfg['weight_decay']:g}, S = {cfg['batch_size']}",
        measurement=f"{cfg['model']} (width {cfg['width']}) trained on digits for {cfg['steps']} steps by optax heavy-ball SGD "
                    f"with η = {cfg['lr']:g}, β = {cfg['momentum']:g}, λ = {cfg['weight_decay']:g}, batch {cfg['batch_size']}; "
                    f"theory: {theory}." + (f" {note}" if note else ""),
        error=(f"The run diverged at step {summary.get('diverged_step')}: no figures are shown." if summary["diverged"] else "")
        + " " + stability_note(stab),
        table=rows, anchor=anchor, level=3, claims=nm_claims(summary, index, anchor),
    )
    sec.figures = [(c, b) for k, c, b in figs if k != "eq17"]
    return sec


GROUP_NOTES = {
    "resnet": (
        "<b>Groups</b> (derived by hand in <code>nj.models.ResNet</code>, each checked by a finite move in "
        "<code>tests/test_archs.py</code>): translation of the head (its rows and the class biases); scale of every "
        "convolution's output channel with its bias (each feeds a BatchNorm); rescale of each block's inner unit (the first "
        "BatchNorm's γ<sub>j</sub>, β<sub>j</sub> against the second convolution's input channel j); and rescale of the "
        "residual stream's channel j, one group with several producers (the stem's and every block's second BatchNorm "
        "γ<sub>j</sub>, β<sub>j</sub>) and several consumers (every block's first convolution and the head's row j). "
        "<b>Where a law does not apply:</b> a convolution's bias alone is a translation group of its own, but BatchNorm "
        "subtracts the batch mean, so the loss does not depend on it and its gradient vanishes identically: only weight "
        "decay moves it (⟨θ_𝒜, 𝟙⟩ shrinks by exactly 1 − ηλ a step under SGD), whatever the loss, so its law tests none "
        "of the theory; <code>nj.symmetry.detect</code> leaves out groups whose gradient vanishes identically, and they "
        "are not counted below."),
    "transformer": (
        "<b>Groups</b> (derived by hand in <code>nj.models.Transformer</code>, each checked by a finite move in "
        "<code>tests/test_archs.py</code>): translation of the head; translation of the residual stream through the "
        "mean-centring of every LayerNorm (each row of the token embedding, its bias, each positional row, and each row "
        "and the bias of every block's attention output and MLP output: adding α to a row adds a multiple of 𝟙 to a "
        "token, which the next LayerNorm removes); scale of the whole stream (all its writers together); rescale of each "
        "(head, channel) value against the output projection's row and query against key, of each MLP hidden unit, and of "
        "each LayerNorm channel's γ<sub>j</sub>, β<sub>j</sub> against row j of its readers (query, key and value; the "
        "MLP; the head). <b>Where a law does not apply:</b> the key biases are translation groups too, but they shift "
        "every key's logit for a query alike, which the softmax ignores: their gradient vanishes identically and only "
        "weight decay moves them, whatever the loss, so their law tests none of the theory; "
        "<code>nj.symmetry.detect</code> leaves them out, and they are not counted below. The attention's softmax runs "
        "in float64 (flax's default runs it in float32, which would hold every law at ~10⁻⁷)."),
}


def hand_derived_groups(model: str, params) -> dict[str, int] | None:
    """The numbers of symmetric groups of ``resnet`` / ``transformer`` derived by hand (their docstrings), from the
    parameter shapes, leaving out the groups whose gradient vanishes identically (None for other models)."""
    if model == "resnet":
        w, b = int(np.shape(params["stem"]["kernel"])[-1]), len(params["blocks"])
        return {"translation": w + 1, "scale": (1 + 2 * b) * w, "rescale": b * w + w}
    if model == "transformer":
        d, depth = int(np.shape(params["embed"]["kernel"])[1]), len(params["blocks"])
        pixels, tokens = int(np.shape(params["embed"]["kernel"])[0]), int(np.shape(params["pos"])[0])
        hidden = int(np.shape(params["blocks"][next(iter(params["blocks"]))]["mlp_in"]["kernel"])[1])
        # head rows + bias, embedding rows + bias, positions, per block: output rows + bias, MLP output rows + bias
        translation = (d + 1) + (pixels + 1) + tokens + depth * ((d + 1) + (hidden + 1))
        # per block: value–output and query–key per (head, channel), MLP units, LN₁ and LN₂ channels; the final LN's
        return {"translation": translation, "scale": 1, "rescale": depth * (2 * d + hidden + 2 * d) + d}
    return None


def nm_intro() -> Section:
    """The Neural Mechanics claim, prediction and metrics, stated once for all its runs."""
    return Section(
        title="Neural Mechanics: symmetry and broken conservation laws",
        claim="Weight decay, momentum, a finite learning rate and mini-batch noise break each symmetry's conservation law "
              "in a way closed forms predict, neuron by neuron (Kunin et al., ICLR 2021).",
        prediction="Per group 𝒜 found by <code>nj.symmetry.detect</code> (never from layer names): ⟨θ_𝒜, 𝟙⟩ (translation), "
                   "|θ_𝒜|² (scale), |θ_𝒜₁|² − |θ_𝒜₂|² (rescale), which gradient flow would conserve, predicted by "
                   "NM eqs. 18–20 for SGD and by a driven damped oscillator for heavy ball.",
        measurement="Real optax training on digits (lr 0.1, batch 128, 2000 steps for the MLP and the BatchNorm CNN; the "
                    "ResNet and the transformer as their sections say), every group recorded in one compiled scan.",
        error="The claims quote the median over groups of the relative error defined at the top. <b>Law broken by</b>: the "
              "median over groups of maxₜ |X(t) − X(0)| / maxₜ |X|, how far training moved the quantity; an error far "
              "below it is a real test. <b>Exact discrete identity</b> (β = 0): |θ_𝒜,n+1|² = (1−ηλ)²|θ_𝒜,n|² + η²|g_𝒜,n|² "
              "and its translation and rescale forms, which hold to rounding for SGD and check the recording itself.",
        anchor="nm",
    )


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


INTRO = (
    "Generated by <code>noether-jax reproduce</code>. Each claim of the theory is held to a stated tolerance: the "
    "table below gives, per claim, what is predicted, the measured error (its metric in small print, defined in the "
    "section), the tolerance, and the verdict (✔ holds, ✘ fails; a failing row links to the section that explains it). "
    "Each section then opens with its verdict and states the claim, the prediction, the measurement and the error. "
    "Every number is also in <code>summary.json</code>, embedded at the end of this page. "
    "<b>Relative error</b>, the metric of most rows: for one group of parameters, maxₜ |prediction − measurement| / "
    "max(maxₜ |measurement|, floor), the worst deviation over the run relative to the size of the measured quantity, "
    "the floor being 10⁻³ × the median group's scale (so a quantity that sits at zero cannot divide by zero); a row quotes "
    "its median over the groups of one symmetry."
)


def _eq17_section(summary: dict, bn: dict, figures: list) -> Section:
    e0, e9 = summary["eq17"], summary.get("eq17_beta09")
    claims = [Claim(f"NLD eq. 17, {bn['config']['model']}, β = 0", "r⁴ of every normalised group (NLD eq. 17)",
                    "median over groups of maxₜ |√r⁴_pred − r²| / r²", e0["median_rel_error"], 0.02, section="eq17",
                    key="eq17.median_rel_error", unit="%")]
    if e9:
        claims.append(Claim(f"NLD eq. 17, {bn['config']['model']}, β = 0.9", "r⁴ of every normalised group (NLD eq. 17)",
                            "median over groups of maxₜ |√r⁴_pred − r²| / r²", e9["median_rel_error"], 0.02, section="eq17",
                            key="eq17_beta09.median_rel_error", unit="%"))
    return Section(
        title="Noether's Learning Dynamics: eq. 17 on a BatchNorm CNN",
        claim="Under SGD a normalised group's r⁴ = |θ_𝒜|⁴ integrates |ĝ|² like RMSProp's accumulator (NLD eq. 17).",
        prediction="r⁴(t) = e^{−4kt/μ}r⁴(0) + (2η(1+β)/(1−β)³)∫e^{−4k(t−τ)/μ}|ĝ|²dτ, μ = 1 − β, k = λ, with the recorded |ĝ|² "
                   "(ĝ = r·g_𝒜, the gradient on the unit sphere).",
        measurement=f"The scale groups of the {bn['config']['model']} runs above ({bn['config']['steps']} steps), β = 0"
                    + (" and β = 0.9" if e9 else "") + ".",
        error="Per group maxₜ |√r⁴_pred − r²| / r² (r² = |θ_𝒜|² measured); the claims quote the median over groups."
        + ("" if not e9 else
           f" <b>Why β = 0.9 fails:</b> the median is {e9['median_rel_error']:.3g}. Eq. 17 drops inertia and takes the "
           "velocity to be the terminal |ĝ|/(μr), which holds when the gradient varies slowly over the momentum time "
           "1/(1−β). Under mini-batch noise momentum averages the noise away, and |θ̇|² falls towards (1−β)/(1+β) of that, "
           "so eq. 17 overpredicts r². The driven-oscillator law fed the measured velocities (the scale row of the "
           f"Neural Mechanics run at β = 0.9) stays at a median {e9['oscillator_median_rel_error']:.3g}: the failure is "
           "eq. 17's forcing, not the mechanics."),
        table={f"β = {e['momentum']:g}: {k.replace('_', ' ')}": v for e in (e0, e9) if e for k, v in e.items() if k != "momentum"},
        anchor="eq17", claims=claims, figures=figures,
    )


def _flows_section(flows) -> tuple[dict, Section]:
    d = flows.to_dict()
    ratio = d["max_dist_modified"] / d["max_dist_gradient"]
    d["modified_over_gradient"] = ratio
    sec = Section(
        title="Discrete training against its modified flow and its gradient flow",
        claim="The modified flow (η(1+β)/2)θ̈ + (1−β)θ̇ = −∇V tracks discrete training to O(η²); gradient flow only to O(η).",
        prediction="Both flows integrated by diffrax on the flax parameter pytree from the optimiser's initial velocity.",
        measurement="Full-batch GD (η = 0.1) of a tanh MLP on 256 digits.",
        error=f"max over the run of |θ_flow(nη) − θₙ|: modified {d['max_dist_modified']:.3g}, gradient {d['max_dist_gradient']:.3g} "
              f"(|θ₀| = {flows.param_scale:.3g}); the claim quotes their ratio. At one learning rate an O(η²) against an "
              "O(η) error means a ratio of order η = 0.1, so the tolerance asks for the modified flow to be at least "
              "twice as close; the convergence orders themselves are measured by the test suite over several η.",
        anchor="flows",
        claims=[Claim("modified flow beats gradient flow", "|θ_flow − θₙ| = O(η²) against O(η)",
                      "max |θ_modified − θₙ| / max |θ_gradient − θₙ|", ratio, 0.5, section="flows",
                      key="flows.modified_over_gradient")],
    )
    sec.figures = [("Discrete training (optax) against its modified flow and its gradient flow: the full-batch loss and the "
                    "distance to the discrete iterates.", _plots.write_figure(_plots.plot_flows(dataclasses.asdict(flows))))]
    return d, sec


def release_compiled() -> None:
    """Drop JAX's in-memory compiled programs (the persistent cache keeps them on disk).

    Every XLA:CPU executable holds memory mappings of its own; one quick report compiles enough of them
    (≈ 49 000 mappings, 14 000 of them the ResNet and transformer runs) to approach Linux's default
    ``vm.max_map_count`` (65 530), past which the next compile aborts. :func:`reproduce` calls this between
    models and parts, which share no compiled program."""
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


def reproduce(out: Path, *, quick: bool = True) -> dict:
    """Run the default suite and write ``out/report.html`` and ``out/summary.json``.

    ``quick`` (CPU, minutes): the digits runs of the issues' targets at CPU scale. ``quick=False``:
    paper-scale settings (wider models, more steps), for a GPU. The report opens with the headline table
    of every :class:`Claim` (prediction, measured error, tolerance, verdict); each part adds its own.
    """
    from ..experiments import NMConfig, compare_flows, neural_mechanics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report = Report("noether_jax: symmetry and broken conservation laws in learning dynamics", intro=INTRO)
    summary: dict[str, Any] = {"mode": "quick" if quick else "full", "environment": environment()}
    nm_summaries, nm_sections, eq17_figs = [], [], []
    timings: dict[str, float] = {}  # wall seconds of each run and part, compile included, in the summary

    def lap(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0

    for i, overrides in enumerate(QUICK_NM if quick else FULL_NM):
        cfg = NMConfig(**{"steps": 2000, **overrides})
        if nm_summaries and nm_summaries[-1]["config"]["model"] != cfg.model:
            release_compiled()  # the runs of one model (β = 0 and 0.9) share their programs; models share none
        t0 = time.perf_counter()
        res = neural_mechanics(cfg)
        s, figs = nm_outputs(res, out / "neural_mechanics", tag=config_tag(cfg))
        hand = hand_derived_groups(cfg.model, res.params0)
        if hand:
            s["hand_derived_groups"] = hand
        note = GROUP_NOTES.get(cfg.model, "")
        if note and any(r["config"]["model"] == cfg.model for r in nm_summaries):  # stated once per model
            note = f"<b>Groups:</b> those of the {cfg.model} run above, and the same groups left out."
        nm_summaries.append(s)
        lap(f"neural_mechanics{config_tag(cfg)}", t0)
        nm_sections.append(nm_section(s, figs, anchor=f"nm{i}", index=i, note=note))
        if cfg.model == "cnn_bn":
            eq17_figs += [(c, b) for k, c, b in figs if k == "eq17"]
    report.add(nm_intro())
    for sec in nm_sections:
        report.add(sec)
    summary["neural_mechanics"] = nm_summaries
    # the headline numbers of the first (β = 0) run, in the layout
    summary["config"] = nm_summaries[0]["config"]
    summary["symmetries"] = nm_summaries[0].get("symmetries", {})
    summary["final_test_accuracy"] = nm_summaries[0].get("final_test_accuracy")

    # eq. 17 on the BatchNorm CNN, β = 0 and β = 0.9 (recorded in the same scans)
    bn_runs = [s for s in nm_summaries if s["config"]["model"] == "cnn_bn" and "scale" in s.get("symmetries", {})]

    def eq17_of(s):
        e = s["symmetries"]["scale"]
        return {"n_groups": e.get("n_groups"), "median_rel_error": e.get("eq17_median_rel_error"),
                "max_rel_error": e.get("eq17_max_rel_error"), "momentum": s["config"]["momentum"],
                "oscillator_median_rel_error": e.get("median_rel_error")}

    summary["eq17"] = eq17_of(bn_runs[0])
    if len(bn_runs) > 1:
        summary["eq17_beta09"] = eq17_of(bn_runs[1])
    report.add(_eq17_section(summary, bn_runs[0], eq17_figs))

    release_compiled()
    t0 = time.perf_counter()
    summary["flows"], fsec = _flows_section(compare_flows(steps=200 if quick else 1000))
    report.add(fsec)
    lap("flows", t0)

    for name, hook in PARTS:
        release_compiled()
        t0 = time.perf_counter()
        part, sections = hook(out / name, quick=quick)
        lap(name, t0)
        summary[name] = part
        for s in sections:  # a part's claim keys are relative to its own summary
            s.claims = [dataclasses.replace(c, key=f"{name}.{c.key}") if c.key else c for c in s.claims]
            report.add(s)

    summary["verdicts"] = [{"claim": c.claim, "measured": c.measured, "tolerance": c.tolerance, "comparison": c.comparison,
                            "passed": c.passed, "key": c.key, "section": c.section} for c in report.claims]
    summary["timings_s"] = timings
    summary["elapsed_s"] = time.perf_counter() - t_start
    write_json(summary, out / "summary.json")
    report.write(out / "report.html", summary)
    return summary
