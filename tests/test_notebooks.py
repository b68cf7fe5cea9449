"""The committed notebooks: all four exist, open with a Colab install cell, and carry no outputs.

(Their execution, top to bottom in quick mode, is part of the default test run through nbmake.)
"""

import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ["01_quickstart", "02_neural_mechanics", "03_noether_learning_dynamics", "04_sweeps"]


def test_the_four_notebooks_exist():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_stripped_and_installable(name):
    nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code), "strip outputs before committing"
    assert "pip" in "".join(code[0]["source"]) and "install" in "".join(code[0]["source"])
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith(f"# {name[:2]}")


def _install_cell(name: str) -> str:
    nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    return "".join([c for c in nb["cells"] if c["cell_type"] == "code"][0]["source"])


def _project_repository() -> str | None:
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    urls = tomllib.loads((NOTEBOOKS.parent / "pyproject.toml").read_text())["project"].get("urls", {})
    return urls.get("Repository") or urls.get("repository")


@pytest.mark.parametrize("name", EXPECTED)
def test_install_cell_is_a_no_op_where_importable_and_explains_itself_where_not(name, monkeypatch, capsys):
    """Importable: nothing happens. Missing, with no public repository: it prints the pip command for this
    checkout (its real path) and stops with a one-line reason, never an obscure error."""
    import importlib.util
    import re

    cell = _install_cell(name)
    repo = re.search(r"^\s*REPO = (.*?)\s*(#.*)?$", cell, re.M).group(1)
    assert repo == (repr(_project_repository()) if _project_repository() else "None")  # the URL of [project.urls]
    exec(compile(cell, f"{name}[install]", "exec"), {})  # noqa: S102 - importable here: a no-op
    assert capsys.readouterr().out == ""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "noether_jax" else real(n, *a))
    monkeypatch.chdir(NOTEBOOKS)
    with pytest.raises(SystemExit, match="noether_jax is not installed"):
        exec(compile(cell, f"{name}[install]", "exec"), {})  # noqa: S102
    out = capsys.readouterr().out
    assert f"pip install -e {NOTEBOOKS.parent}" in out


@pytest.mark.parametrize("name", EXPECTED)
def test_no_private_imports_or_keys(name):
    import re

    nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert not re.search(r"noether_jax\._|\bnj\.(\w+\.)*_[a-z]", code), "a private module or name"
    assert not re.search(r"\[\s*['\"]_\w+['\"]\s*\]", code), "a private key"
    assert "THEORY" not in code
