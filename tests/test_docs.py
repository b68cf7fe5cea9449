"""The documentation stands on its own: every page in the nav exists, every file and test the pages and the
README name exists (the physics pages cite the test behind each formula), nothing cites a file the project
lacks, and (slow) the site builds with ``mkdocs build --strict``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
PATH = re.compile(r"\b((?:tests|benchmarks|notebooks|noether_jax|docs)/[\w./-]+\.(?:py|md|sh|ipynb))\b")
TEST = re.compile(r"\b(test_\w+\.py)::(test_\w+?)(…|\*)?(?=[`\s,|)])")


def _nav_files(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _nav_files(value) if isinstance(value, list) else [value]
    return out


def test_every_nav_page_exists():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    for page in _nav_files(config["nav"]):
        src = ROOT / "notebooks" / Path(page).name if page.startswith("notebooks/") else ROOT / "docs" / page
        assert src.exists(), page


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_files_and_tests_exist(page):
    text = page.read_text(encoding="utf-8")
    for path in PATH.findall(text):
        assert (ROOT / path).exists(), f"{page.name} names {path}, which the project does not have"
    for file, name, wildcard in TEST.findall(text):
        source = (ROOT / "tests" / file).read_text(encoding="utf-8")
        pattern = "^def " + re.escape(name) + ("" if wildcard else r"\b")
        assert re.search(pattern, source, re.M), f"{page.name} cites {file}::{name}{wildcard}, which does not exist"


def test_nothing_cites_the_private_theory_notes():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    me = Path(__file__).name
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".py", ".md", ".ipynb", ".toml", ".yml", ".sh", ".txt"} and path.name != me and path.exists():
            assert "THEORY.md" not in path.read_text(encoding="utf-8", errors="replace"), name


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    if shutil.which("mkdocs") is None and subprocess.run([sys.executable, "-m", "mkdocs", "--version"],
                                                         capture_output=True, check=False).returncode:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, check=False, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "site" / "physics" / "conservation" / "index.html").exists()
    assert (tmp_path / "site" / "api" / "theory" / "index.html").exists()
