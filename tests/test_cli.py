"""The command line: outputs, clear errors with non-zero exit codes, divergence reported as data."""

from __future__ import annotations

import json

import pytest
import xarray as xr
from typer.testing import CliRunner

from noether_jax.cli import app, diverged_message, members_note

runner = CliRunner()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "resnet9000"], "unknown model"),
        (["--batch-size", "-3"], "batch_size"),
        (["--steps", "0"], "steps"),
        (["--lr", "0"], "lr"),
        (["--momentum", "1.5"], "momentum"),
    ],
)
def test_neural_mechanics_bad_input_exits_non_zero_with_a_clear_message(tmp_path, args, needle):
    res = runner.invoke(app, ["neural-mechanics", *args, "--out", str(tmp_path / "x")])
    assert res.exit_code != 0
    assert needle in res.output
    assert not (tmp_path / "x" / "summary.json").exists()


def test_neural_mechanics_writes_summary_figures_and_series(tmp_path):
    out = tmp_path / "nm"
    res = runner.invoke(app, ["neural-mechanics", "--width", "8", "--steps", "200", "--batch-size", "64",
                              "--momentum", "0.9", "--weight-decay", "5e-4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["steps"] == 200 and summary["config"]["momentum"] == 0.9
    assert set(summary["symmetries"]) == {"translation", "rescale"}
    for kind, e in summary["symmetries"].items():
        assert {"n_groups", "median_rel_error", "max_rel_error"} <= set(e)
        assert (out / f"{kind}.png").stat().st_size > 1000
        assert 0 <= e["median_rel_error"] <= e["max_rel_error"]
    assert 0.0 <= summary["final_test_accuracy"] <= 1.0
    ds = xr.open_dataset(out / "series.nc")
    assert ds["measured_rescale"].shape == (21, summary["symmetries"]["rescale"]["n_groups"])
    ds.close()


def test_a_diverging_run_is_reported_as_diverged_and_nothing_else(tmp_path):
    out = tmp_path / "div"
    res = runner.invoke(app, ["neural-mechanics", "--width", "8", "--steps", "40", "--lr", "1e6", "--out", str(out)])
    assert res.exit_code == 1
    assert "diverged" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["diverged"] is True and summary["diverged_step"] >= 0
    # the sentence every single-run command (demo, neural-mechanics, nld) uses for a diverged run
    assert f"error: {diverged_message(summary['diverged_step'], out)}" in res.output
    assert summary["final_test_accuracy"] is None
    assert all(set(e) == {"n_groups"} for e in summary["symmetries"].values())
    assert not list(out.glob("*.png"))
    with xr.open_dataset(out / "series.nc") as ds:
        after = ds["step"] > summary["diverged_step"]  # the saved series hold nothing after the divergence
        assert bool(after.any())
        for name in ds.data_vars:
            if "step" in ds[name].dims:
                assert bool(ds[name].where(after, drop=True).isnull().all()), name


@pytest.mark.parametrize(
    "args, match",
    [(["--model", "mlp"], "no scale-invariant group"), (["--model", "resnet50"], "unknown model"),
     (["--model", "mlp", "--no-detect"], "detect"), (["--lr", "0"], "lr"), (["--momentum", "1"], "momentum")],
)
def test_nld_bad_input_is_refused_with_exit_code_2(tmp_path, args, match):
    res = runner.invoke(app, ["nld", *args, "--steps", "10", "--out", str(tmp_path / "nld")])
    assert res.exit_code == 2, res.output
    assert match in res.output


def test_demo_runs(tmp_path):
    res = runner.invoke(app, ["demo", "--time", "2", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "demo" / "demo.png").exists()


def test_sweep_note_and_the_compile_spinner():
    """``sweep``/``reproduce`` name the members that did not finish ok in one sentence; the spinner animates an
    existing bar with the elapsed time while a block (a compilation) runs, then says how long it took."""
    import io
    import time

    from tqdm import tqdm

    from noether_jax._progress import spinner

    assert members_note({"ok": 4, "diverged": 0}) == ""
    assert members_note({"ok": 2, "diverged": 1, "edge": 1}) == (
        "note: 2 of 4 members did not finish ok: 1 diverged (status 'diverged'), 1 edge (status 'edge'); "
        "the other members are unaffected")
    buf = io.StringIO()
    bar = tqdm(total=2, desc="sweep chunks", file=buf)
    with spinner("compiling (batch size 8)", bar=bar, interval=0.05):
        time.sleep(0.4)
    bar.update(2)
    bar.close()
    text = buf.getvalue()
    assert "compiling (batch size 8)" in text and "compiling took 0 s" in text
    assert any(f"{frame} 0 s" in text for frame in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
    assert text.rstrip().splitlines()[-1].lstrip("\r").split("\r")[-1].startswith("sweep chunks")


def test_compilation_cache_location_and_threshold_follow_the_environment(tmp_path, monkeypatch):
    """The cache folder is ``$JAX_COMPILATION_CACHE_DIR``, else ``$XDG_CACHE_HOME/noether_jax``, else
    ``~/.cache/noether_jax``; the threshold is ``$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` when set, else 0.2 s."""
    from pathlib import Path

    import jax

    from noether_jax._config import compilation_cache, default_cache_dir

    before = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
    try:
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "a"))
        assert default_cache_dir() == tmp_path / "a"
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert default_cache_dir() == tmp_path / "xdg" / "noether_jax"
        monkeypatch.delenv("XDG_CACHE_HOME")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        assert default_cache_dir() == Path(tmp_path / "home" / ".cache" / "noether_jax")
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1.5")
        assert compilation_cache(path=tmp_path / "b") == tmp_path / "b" and (tmp_path / "b").is_dir()
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.5
        monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
        compilation_cache(path=tmp_path / "b")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.2
        assert compilation_cache(False) is None and jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before["jax_compilation_cache_dir"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before["jax_persistent_cache_min_compile_time_secs"])


def test_noether_jax_cache_variable_turns_the_command_line_cache_off(tmp_path, monkeypatch):
    """``NOETHER_JAX_CACHE=0`` is ``--no-cache`` (the test run sets it); ``1`` turns the cache on at
    ``$JAX_COMPILATION_CACHE_DIR``."""
    import jax

    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "c"))
        for value, on in (("0", False), ("1", True)):
            monkeypatch.setenv("NOETHER_JAX_CACHE", value)
            res = runner.invoke(app, ["demo", "--time", "0.5", "--out", str(tmp_path / f"demo{value}")])
            assert res.exit_code == 0, res.output
            assert (jax.config.jax_compilation_cache_dir == str(tmp_path / "c")) == on
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
