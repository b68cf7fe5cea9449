"""``report.html`` in a real headless browser (Debian's chromium, driven by playwright): every figure loads and
is shown at ≥ 75 % of its size in the page's 800-px column, the page logs no console error, the headline table is
there and its links land on sections. A full-page screenshot is kept as ``runs/report_browser/report.png``.

Skipped, saying why, where no chromium or no playwright can be had (``.ci/run`` installs both). It reuses the
session's quick report (tests/conftest.py), so it adds seconds, not a second report.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
