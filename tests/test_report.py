"""``noether-jax reproduce --quick``: the report is produced, complete, and agrees with summary.json."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest

from noether_jax.report import lookup

# ``reproduced`` (the quick report's folder, built once per session) is in tests/conftest.py


def test_report_is_produced_and_self_contained(reproduced):
    text = (reproduced / "report.html").read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>")
    assert "src='http" not in text and 'src="http' not in text  # figures are embedded, nothing fetched
    assert len(re.findall(r"data:image/png;base64,", text)) >= 5


def test_report_has_a_figure_for_each_symmetry_and_the_required_sections(reproduced):
    text = (reproduced / "report.html").read_text(encoding="utf-8")
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    for kind in ("translation", "scale", "rescale"):
        assert any(c.startswith(kind) for c in captions), kind
    assert "id='eq17'" in text
    assert "id='sweep'" in text
    assert "id='nld'" in text and "RMSProp" in text
    assert text.count("Validity guard") >= 4  # every Neural Mechanics run states where its continuous model holds
    assert "id='environment'" in text and "jax" in text


def _headline(text):
    table = re.search(r"<table id='headline'>(.*?)</table>", text, re.S).group(1)
    return re.findall(r"<tr data-key='(.*?)' data-measured='(.*?)'>(.*?)</tr>", table, re.S)


def test_report_numbers_match_summary_json(reproduced):
    summary = json.loads((reproduced / "summary.json").read_text())
    text = (reproduced / "report.html").read_text(encoding="utf-8")
    embedded = json.loads(html.unescape(re.search(r"id='summary-json'>(.*?)</script>", text, re.S).group(1)))
    assert embedded == summary
    rows = _headline(text)
    assert len(rows) >= 20 and len(rows) == len(summary["verdicts"])
    for (key, measured, cells), verdict in zip(rows, summary["verdicts"], strict=True):
        key = html.unescape(key)
        assert key == verdict["key"] and key, verdict
        value = lookup(summary, key)  # every headline number is the one in summary.json
        assert float(measured) == pytest.approx(value, rel=1e-12, abs=0), key
        # the verdict shown is the comparison of that number with the tolerance shown
        ok = {"<=": value <= verdict["tolerance"], "<": value < verdict["tolerance"], ">=": value >= verdict["tolerance"],
              ">": value > verdict["tolerance"]}[verdict["comparison"]]
        assert ok == verdict["passed"] and ("✔" in cells) == ok and ("✘" in cells) == (not ok), (key, value, verdict)
        if not ok:  # a failing row links to the section that explains it
            assert f"href='#{verdict['section']}'" in cells and f"id='{verdict['section']}'" in text
    for kind in ("translation", "rescale"):
        assert summary["symmetries"][kind]["median_rel_error"] <= 0.01
    assert summary["final_test_accuracy"] >= 0.9


def test_report_is_curated(reproduced):
    """No repeated paragraph or figure, every section with claims opens with its verdict, no raw dotted keys."""
    text = (reproduced / "report.html").read_text(encoding="utf-8")
    body = text.split("<script type='application/json'")[0]
    paragraphs = [p for p in re.findall(r"<p>(.*?)</p>", body, re.S) if len(p) > 80]
    assert len(paragraphs) == len(set(paragraphs)), "a paragraph appears twice"
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", body)
    assert len(images) == len(set(images)), "a figure appears twice"
    for section in re.findall(r"<section id='[^']*'[^>]*>(.*?)</section>", body, re.S):
        if "✔" in section or "✘" in section:
            assert re.match(r"\s*<h[23]>.*?</h[23]>\s*<p class='verdict'>", section, re.S), section[:200]
    assert not re.search(r"<td[^>]*>[a-z_]+\.[a-z_]+</td>", body), "a raw summary key is shown"
    assert "Summary table" not in body


def test_issue_targets_on_digits(reproduced):
    """lr 0.1, batch 128, 2000 steps (the MLP and the BatchNorm CNN; the ResNet and the transformer as QUICK_NM
    sets them): median per-group error ≤ 1% at β = 0 and ≤ 2% at β = 0.9 for every kind the models have, accuracy
    ≥ 90%, guard valid; every model at both β."""
    from noether_jax.report import QUICK_NM

    summary = json.loads((reproduced / "summary.json").read_text())
    kinds = set()
    runs = summary["neural_mechanics"]
    assert len(runs) == len(QUICK_NM)
    for run, want in zip(runs, QUICK_NM, strict=True):
        cfg = run["config"]
        assert {k: cfg[k] for k in want} == want
        if cfg["model"] in ("mlp", "cnn_bn"):
            assert (cfg["lr"], cfg["batch_size"], cfg["steps"]) == (0.1, 128, 2000)
        bound = 0.01 if cfg["momentum"] == 0 else 0.02
        for kind, e in run["symmetries"].items():
            assert e["median_rel_error"] <= bound, (cfg, kind, e)
            kinds.add(kind)
        assert run["final_test_accuracy"] >= 0.9 and run["stability"]["valid"], cfg
    assert kinds == {"translation", "scale", "rescale"}
    by_model = {}
    for r in runs:
        by_model.setdefault(r["config"]["model"], set()).add(r["config"]["momentum"])
    assert by_model == {m: {0.0, 0.9} for m in ("mlp", "cnn_bn", "resnet", "transformer")}
    assert {r["config"]["momentum"] for r in runs if r["config"]["model"] == "cnn_bn" and "scale" in r["symmetries"]} == {0.0, 0.9}
    # the ResNet and the transformer: every kind their hand-derived groups have is recorded, and detect's groups are
    # never more than the hand derivation allows (groups whose gradient vanishes identically left out of both)
    for r in runs:
        hand = r.get("hand_derived_groups")
        assert (hand is not None) == (r["config"]["model"] in ("resnet", "transformer"))
        if hand:
            assert set(r["symmetries"]) == set(hand), r["config"]
            for kind, n in hand.items():
                assert r["symmetries"][kind]["n_groups"] <= n, (r["config"], kind)
    nld = summary["nld"]
    assert {"eq17", "rmsprop_match", "ablation"} <= set(nld)
    # β = 0 on the BatchNorm CNN (500 steps in quick mode; 2000 in the slow test): eq. 17 ≤ 2 %, the mapped
    # RMSProp within 5° of SGD's directions for every group, lr/√G within 5 % of η/r², the control ≥ 3× further
    r = nld["rmsprop_match"]
    assert nld["eq17"]["median_rel_error"] <= 0.02
    assert r["max_angle_deg"] <= 5.0 and r["lr_eff_max_rel_error"] <= 0.05
    assert r["control_max_angle_deg"] >= 3 * r["max_angle_deg"]
    # β = 0.9: the mapping needs momentum (with it the match is closer at every η tried)
    mv = nld["match_vs_lr"]
    assert all(a < b for a, b in zip(mv["beta0.9_momentum"]["max_angle_deg"], mv["beta0.9_gradient"]["max_angle_deg"]))


def test_report_flow_orders_in_eta(reproduced):
    """The report's flow sweeps (mlp_tanh, 256 examples, full batch, η ∈ {0.2, 0.1, 0.05}, 80 steps, width 8): the
    fitted order in η of the distance to the discrete iterates at t = 4 is 2 ± 0.3 for the modified flow and 1 ± 0.2
    for gradient flow, and the headline rows say so (the float64 run of the same grid is a slow test in
    tests/test_sweep_physics.py)."""
    summary = json.loads((reproduced / "summary.json").read_text())
    from noether_jax.report._physics_part import _grids

    assert _grids(True)[1] == dict(lr=[0.2, 0.1, 0.05], momentum=0.0, steps=80, save_every=20, width=8, seed=[0])
    orders = summary["sweep_physics"]["flow_order"]
    assert 1.7 <= orders["modified"] <= 2.3 and 0.8 <= orders["gradient"] <= 1.2, orders
    rows = {v["key"]: v for v in summary["verdicts"]}
    for gap in ("modified_order_gap", "gradient_order_gap"):
        assert rows[f"sweep_physics.checked.{gap}"]["passed"], rows[f"sweep_physics.checked.{gap}"]


def test_nld_ablations_and_kinetic_symmetry_breaking(reproduced):
    """NLD's claims on the report's BatchNorm CNN: ×10 init leaves the loss but divides η/r² by 100 and slows
    training; the constrained filter norm loses at β = 0.9 with weight decay (Fig. 3); every rule keeps
    translation (δK = 0) and breaks scale and rescale."""
    nld = json.loads((reproduced / "summary.json").read_text())["nld"]
    a = nld["ablation"]
    init = a["init_x10"]
    assert init["initial_loss_rel_diff"] <= 1e-4
    assert init["median_lr_eff_start"][0] / init["median_lr_eff_start"][1] == pytest.approx(100.0, rel=1e-9)
    assert init["final_loss"][1] > 2 * init["final_loss"][0]
    assert a["at"]["momentum"] == 0.9 and a["at"]["weight_decay"] > 0
    assert a["unconstrained_final_loss"] < a["constrained_final_loss"]
    assert a["grid"]["constrained_max_norm_drift"] <= 1e-10  # every constrained run ends at its initial group norms
    rows = {(r["symmetry"], r["rule"]): r for r in nld["ksb"]}
    rules = ("sgd", "heavy_ball", "preconditioned", "adam", "adamw", "rmsprop")
    assert {k for k, _ in rows} == {"translation", "scale", "rescale"} and {r for _, r in rows} == set(rules)
    for rule in rules:
        assert rows[("translation", rule)]["breaks"] == 0.0
        assert rows[("translation", rule)]["max_abs_dK"] <= 1e-10 * rows[("scale", rule)]["max_abs_dK"]
        assert rows[("scale", rule)]["breaks"] == 1.0 and rows[("rescale", rule)]["breaks"] == 1.0


def test_report_adam_norm_laws_and_double_adaptivity(reproduced):
    """The report's Adam/AdamW runs on the BatchNorm CNN (η = 0.01, λ = 0.1): r² grows and slows the angular step;
    the law with the measured tilt and drift is the exact identity, and each refinement of the law (keeping the
    momentum's cross term, then the tilt) removes a measured part of the error. The same claims as the slow
    ``test_nld.py::test_adam_norm_recursion_and_double_adaptivity`` (300 steps; the report runs 200)."""
    a = json.loads((reproduced / "summary.json").read_text())["nld"]["ablation"]["adam"]
    assert a["lr"] == 0.01 and a["weight_decay"] == 0.1
    adam, adamw, b0 = a["adam"], a["adamw"], a["adam_b1_0"]
    assert adam["r2_growth_median"] > 1.0
    assert adam["angular_step_end_median"] < adam["angular_step_start_median"]  # double adaptivity
    assert adamw["r2_end_median"] < adam["r2_end_median"]
    # at b1 = 0 the momentum law is the recursion itself, and the tilt alone makes it exact (u = Dg)
    assert b0["momentum_law_median_rel_error"] == pytest.approx(b0["median_rel_error"], rel=1e-6)
    assert b0["momentum_law_max_rel_error"] == pytest.approx(b0["max_rel_error"], rel=1e-6)
    assert b0["tilt_law_max_rel_error"] < 1e-4
    for name, r in (("adam", adam), ("adamw", adamw), ("adam_b1_0", b0)):
        assert r["exact_law_max_rel_error"] < 1e-4, name
    for name, r in (("adam", adam), ("adamw", adamw)):
        assert r["momentum_law_median_rel_error"] < 0.5 * r["median_rel_error"], name
        assert r["tilt_law_median_rel_error"] < 0.6 * r["momentum_law_median_rel_error"], name
        assert r["tilt_law_median_rel_error"] <= 0.05, name  # the issue's target


# ----------------------------------------------------------------------------------------------------
# ``report.html`` in a real headless browser (Debian's chromium, driven by playwright): every figure loads and
# is shown at ≥ 75 % of its size in the page's 800-px column, the page logs no console error, the headline table is
# there and its links land on sections. A full-page screenshot is kept as ``runs/report_browser/report.png``.
#
# Skipped, saying why, where no chromium or no playwright can be had (``.ci/run`` installs both). It is in this module so that
# the worker that builds the session's quick report runs it (another would wait, idle, for the report).

SHOTS = Path(__file__).resolve().parents[1] / "runs" / "report_browser"


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    return exe


def test_report_renders_in_a_headless_browser(reproduced):
    exe = _chromium()
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (it is in the test extra: pip install -e '.[test]')")
    errors: list[str] = []
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        except Error as e:
            pytest.skip(f"chromium at {exe} would not start under playwright: {str(e).splitlines()[0]}")
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1400})
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.goto((reproduced / "report.html").resolve().as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,"
                " natural: i.naturalWidth, shown: i.getBoundingClientRect().width}))")
            rows = page.locator("table#headline tr").count()
            dangling = page.evaluate(
                "Array.from(document.querySelectorAll('table#headline a[href^=\"#\"]'))"
                ".map(a => a.getAttribute('href').slice(1)).filter(id => !document.getElementById(id))")
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert len(images) >= 10
    assert all(i["ok"] for i in images), [i["alt"] for i in images if not i["ok"]]
    assert all(i["shown"] >= 0.75 * i["natural"] for i in images), [(i["alt"][:60], i["natural"], i["shown"]) for i in images
                                                                     if i["shown"] < 0.75 * i["natural"]]
    assert rows >= 21  # a header and one row per claim
    assert not dangling, dangling
    assert not errors, errors
    assert (SHOTS / "report.png").stat().st_size > 10_000
