"""``noether-jax reproduce --quick``: the report is produced, complete, and agrees with summary.json."""

from __future__ import annotations

import html
import json
import re

import pytest
from typer.testing import CliRunner

from noether_jax._cli import app
from noether_jax._report import flatten


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    res = CliRunner().invoke(app, ["reproduce", "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


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
    assert "id='environment'" in text and "jax" in text


def test_report_numbers_match_summary_json(reproduced):
    summary = json.loads((reproduced / "summary.json").read_text())
    text = (reproduced / "report.html").read_text(encoding="utf-8")
    embedded = json.loads(html.unescape(re.search(r"id='summary-json'>(.*?)</script>", text, re.S).group(1)))
    assert embedded == summary
    rows = dict(re.findall(r"<tr><td class='k'>(.*?)</td><td>(.*?)</td></tr>", text))
    flat = {k: v for k, v in flatten(summary).items() if isinstance(v, float)}
    assert len(flat) > 10
    for key, value in flat.items():
        shown = rows[html.escape(key)]
        assert float(shown) == pytest.approx(value, rel=1e-3, abs=1e-12), key
    for kind in ("translation", "rescale"):
        assert summary["symmetries"][kind]["median_rel_error"] <= 0.01
    assert summary["final_test_accuracy"] >= 0.9
