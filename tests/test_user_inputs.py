"""A user's own data files and model on the command line: ``--data`` (.npz, .csv, .npy) and
``--model module.path:callable`` (a function ``nnx.Rngs -> nnx.Module``), end to end; bad files and
specs are refused with exit code 2 and a message naming the file or the option."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import noether_jax as nj
from noether_jax.cli import app

runner = CliRunner()

USER_MODULE = '''
import flax.nnx as nnx, jax


class Net(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(5, 12, rngs=rngs)
        self.out = nnx.Linear(12, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def net(rngs):
    return Net(rngs)
'''


@pytest.fixture
def table(tmp_path):
    """120 examples × 5 features, 3 classes, written as .csv, .npy (label last) and .npz (a split of its own)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5))
    y = np.argmax(x[:, :3] + 0.1 * rng.normal(size=(120, 3)), axis=1)
    t = np.column_stack([x, y])
    np.savetxt(tmp_path / "d.csv", t, delimiter=",")
    np.save(tmp_path / "d.npy", t)
    np.savez(tmp_path / "d.npz", x_train=x[:90], y_train=y[:90], x_test=x[90:], y_test=y[90:])
    return tmp_path, x, y


def test_npz_csv_and_npy_load_what_was_written(table):
    folder, x, y = table
    z = nj.data.load(str(folder / "d.npz"))
    np.testing.assert_array_equal(np.asarray(z.x_train), x[:90])
    np.testing.assert_array_equal(np.asarray(z.y_test), y[90:])
    assert z.n_classes == 3
    c, n = nj.data.load(str(folder / "d.csv")), nj.data.load(str(folder / "d.npy"))
    for a, b in ((c.x_train, n.x_train), (c.y_train, n.y_train), (c.x_test, n.x_test), (c.y_test, n.y_test)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-15)  # the same table, the same split
    assert c.x_train.shape[0] + c.x_test.shape[0] == 120
    rows = {tuple(np.round(r, 10)) for r in np.column_stack([x, y])}
    assert {tuple(np.round(r, 10)) for r in np.column_stack([np.asarray(n.x_test), np.asarray(n.y_test)])} <= rows


def test_bad_data_files_are_refused_naming_the_file(tmp_path):
    np.save(tmp_path / "flat.npy", np.arange(10.0))
    np.savez(tmp_path / "partial.npz", x_train=np.ones((4, 2)), y_train=np.zeros(4))
    np.savetxt(tmp_path / "frac.csv", np.array([[0.0, 0.5], [1.0, 1.5]]), delimiter=",")
    for name, match in (("flat.npy", "2-D table"), ("partial.npz", "lacks the arrays"), ("frac.csv", "integer class labels"),
                        ("missing.npz", "does not exist")):
        with pytest.raises(ValueError, match=match):
            nj.data.load(str(tmp_path / name))
    res = runner.invoke(app, ["neural-mechanics", "--data", str(tmp_path / "flat.npy"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "flat.npy" in res.output


def test_a_user_model_and_data_file_on_the_command_line(table, monkeypatch):
    folder, _, _ = table
    (folder / "user_models_for_cli_test.py").write_text(USER_MODULE)
    monkeypatch.chdir(folder)  # the current folder is importable, as for a user's script
    out = folder / "run"
    res = runner.invoke(app, ["neural-mechanics", "--model", "user_models_for_cli_test:net", "--data", "d.npy",
                              "--steps", "20", "--save-every", "10", "--batch-size", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["symmetries"]) == {"translation", "rescale"}  # a softmax layer and 12 ReLU units
    assert summary["symmetries"]["rescale"]["n_groups"] == 12
    bad = runner.invoke(app, ["neural-mechanics", "--model", "user_models_for_cli_test:nope", "--out", str(out)])
    assert bad.exit_code == 2 and "nope" in bad.output
