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
