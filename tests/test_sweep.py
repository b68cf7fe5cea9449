"""nj.sweep: a grid of training recorders as one sharded, chunked, resumable jit.

* every member equals its own :meth:`Recorder.run` (to 1e-12), batch-size groups equal separate sweeps;
* a diverging member is flagged and masked, the others unchanged; invalid values refused up front;
* no recompilation on later chunks or calls; kill -9 mid-sweep and resume is bit-for-bit an
  uninterrupted run; four forced host devices give the single-device numbers.

All sweeps share one small configuration (width 4, 6 steps) so the compiled programs are reused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import xarray as xr

import noether_jax as nj
from _groups import mlp_groups
from noether_jax import data, models, sweeps
from noether_jax.cli import app as cli_app
from noether_jax.sweeps import _program, _store

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(lr=[0.05, 0.2], momentum=[0.0, 0.9], weight_decay=0.0, seed=2, steps=6, save_every=3, width=4,
            batch_size=16, progress=False, dtype="float64", symmetries=lambda net, params, state: mlp_groups("mlp", params))
# fixed groups by construction: the tests do not depend on (nor recompile for) nj.symmetry.detect


@pytest.fixture(scope="module")
def digits():
    return data.digits()


@pytest.fixture(scope="module")
def base(digits):
    return nj.sweep(data=digits, **BASE)


def _same(a: xr.Dataset, b: xr.Dataset, *, exact: bool = True, rtol: float = 0.0) -> None:
    assert set(a.data_vars) == set(b.data_vars)
    for k in a.data_vars:
        x, y = np.asarray(a[k].values), np.asarray(b[k].values)
        if exact:
            np.testing.assert_array_equal(x, y, err_msg=k)
        else:
            if "error" in k:  # relative errors at rounding level (1e-15) are noise: compare them absolutely
                np.testing.assert_allclose(x, y, rtol=0, atol=1e-9, err_msg=k)
                continue
            scale = np.nanmax(np.abs(y)) if np.isfinite(y).any() else 0.0  # values that are 0 in exact arithmetic
            np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-14 * scale + 1e-300, err_msg=k)


def test_members_equal_their_own_recorder_run(base, digits):
    assert base.status.values.ravel().tolist() == [0] * 8
    assert dict(base.sizes)["time"] == 3 and base.step.values.tolist() == [0, 3, 6]
    np.testing.assert_allclose(base.t.sel(lr=0.2).values, [0, 0.6, 1.2])
    for lr in BASE["lr"]:
        for mom in BASE["momentum"]:
            for seed in (0, 1):
                net, params, state = models.functional(models.make_model("mlp", key=seed, width=4, in_shape=(8, 8, 1)))
                syms = mlp_groups("mlp", params)  # what the sweep uses (BASE)
                rec = nj.Recorder(net, syms, digits.x_train, digits.y_train, batch_size=16, steps=6, save_every=3)
                out = rec.run(params, state, nj.Hyper(lr, mom, 0.0), sweeps.data_key(seed))
                got = base.sel(lr=lr, momentum=mom, seed=seed).squeeze()
                np.testing.assert_allclose(got.loss.values[1:], out.loss[1:], rtol=1e-12)
                for k in syms:
                    for series in ("measured", "theory", "identity"):
                        np.testing.assert_allclose(got[f"{series}_{k}"].values, getattr(out, series)[k], rtol=1e-12, atol=1e-14)
                acc = models.accuracy(net, out.params, out.state, digits.x_test, digits.y_test)
                assert float(got.test_accuracy) == pytest.approx(float(acc), abs=1e-12)


def test_a_diverging_member_is_flagged_and_spoils_nothing(base, digits):
    cfgs = [dict(lr=0.05, momentum=0.0, seed=0), dict(lr=1e6, momentum=0.9, seed=0), dict(lr=0.2, momentum=0.9, seed=1),
            dict(lr=0.05, momentum=0.9, seed=1)]
    ds = nj.sweep(data=digits, **{**BASE, "lr": 0.1, "momentum": 0.0, "seed": [0, 1]}, grid=cfgs)
    status = nj.status_names(ds).values.tolist()
    assert status[0] == status[2] == status[3] == "ok" and status[1] in ("diverged", "nan")
    bad = ds.isel(member=1)
    assert int(bad.diverged_step) >= 0 and np.isnan(bad.final_loss) and np.isnan(bad.error_median_rescale)
    assert np.isnan(bad.measured_rescale.values[-1]).all()
    for i, c in enumerate(cfgs):
        if i == 1:
            continue
        ref = base.sel(lr=c["lr"], momentum=c["momentum"], seed=c["seed"]).squeeze()
        for k in ("loss", "measured_rescale", "theory_translation", "final_loss", "error_max_rescale"):
            np.testing.assert_allclose(ds[k].isel(member=i).values, ref[k].values, rtol=1e-12, err_msg=k)


@pytest.mark.parametrize(
    ("kw", "named"),
    [({"lr": [0.1, -0.5]}, "-0.5"), ({"lr": 0.0}, "0.0"), ({"momentum": [0.0, 1.0]}, "1.0"), ({"momentum": -0.1}, "-0.1"),
     ({"weight_decay": -1e-4}, "-0.0001"), ({"batch_size": 0}, "0"), ({"batch_size": [16, 5000]}, "5000"),
     ({"steps": 0}, "0"), ({"init_scale": 0.0}, "0.0"), ({"lr": float("nan")}, "nan")],
)
def test_invalid_values_are_refused_before_running(kw, named, digits, monkeypatch):
    monkeypatch.setattr(nj.sweeps._sweep, "compiled", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(ValueError, match="invalid") as err:
        nj.sweep(data=digits, **{**BASE, **kw})
    assert named in str(err.value)


def test_no_recompilation_across_chunks_and_calls(base, digits):
    events = []
    jax.monitoring.register_event_duration_secs_listener(lambda name, *a, **k: events.append(name))
    n_cached = len(_program._COMPILED)
    first = nj.sweep(data=digits, **BASE, chunk_size=3)  # 8 members: 3 chunks, the last padded
    assert first.attrs["chunks_run"] == 3 and len(_program._COMPILED) == n_cached + 1
    events.clear()
    second = nj.sweep(data=digits, **BASE, chunk_size=3)
    assert second.attrs["compile_time_s"] == 0.0
    assert not [e for e in events if "backend_compile" in e or "compile_time" in e], events
    _same(first, second)
    _same(first, base, exact=False, rtol=1e-12)


def test_batch_size_groups_equal_separate_sweeps(digits):
    kw = {**BASE, "momentum": 0.9, "lr": 0.1}
    both = nj.sweep(data=digits, **{**kw, "batch_size": [16, 24]})
    assert both.attrs["batch_size_groups"] == 2
    for b in (16, 24):
        alone = nj.sweep(data=digits, **{**kw, "batch_size": b})
        _same(both.sel(batch_size=[b]), alone, exact=False, rtol=1e-12)


def test_store_refuses_another_sweep(tmp_path, digits):
    store = tmp_path / "store"
    nj.sweep(data=digits, **{**BASE, "lr": 0.1, "momentum": 0.0}, store=store)
    again = nj.sweep(data=digits, **{**BASE, "lr": 0.1, "momentum": 0.0}, store=store)
    assert again.attrs["chunks_loaded"] == 1 and again.attrs["chunks_run"] == 0
    with pytest.raises(ValueError, match="different sweep.*steps"):
        nj.sweep(data=digits, **{**BASE, "lr": 0.1, "momentum": 0.0, "steps": 3}, store=store)


def _script(body: str) -> str:
    return textwrap.dedent(
        """
        import sys, time
        import jax
        jax.config.update("jax_enable_x64", True)
        import numpy as np
        sys.path.insert(0, "tests")
        import noether_jax as nj
        from _groups import mlp_groups
        from noether_jax import data
        BASE = dict(lr=[0.05, 0.2], momentum=[0.0, 0.9], weight_decay=0.0, seed=2, steps=6, save_every=3, width=4,
                    batch_size=16, progress=False, dtype="float64", symmetries=lambda n, p, s: mlp_groups("mlp", p))
        """
    ) + textwrap.dedent(body)


def _listed(store: Path) -> list[str]:
    """The chunk files that the store's manifest lists (empty while none is, or the manifest is mid-rename)."""
    try:
        return sorted(json.loads((store / "manifest.json").read_text())["chunks"])
    except (OSError, ValueError, KeyError):
        return []


def test_sigkill_mid_sweep_then_resume_is_bit_for_bit(tmp_path, digits):
    store = tmp_path / "store"
    script = tmp_path / "run.py"
    script.write_text(_script(f"""
        nj.sweep(data=data.digits(), **BASE, chunk_size=2, store={str(store)!r}, on_chunk=lambda d, t: time.sleep(1.0))
        print("FINISHED")
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not _listed(store):  # a chunk counts once the manifest names it: the file is renamed into place first,
        assert proc.poll() is None, proc.stdout.read().decode()  # so a kill between the two leaves an unlisted chunk
        assert time.time() < deadline, "no chunk written in time"  # (recomputed on resume, as it must be)
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    written = [store / name for name in _listed(store)]
    assert 1 <= len(written) < 4 and all(p.exists() for p in written)
    stamps = {p.name: p.stat().st_mtime_ns for p in written}
    (store / ".chunk-g00-00003.nc.tmp-1").write_bytes(b"half a file")  # as if killed inside a write

    resumed = nj.sweep(data=digits, **BASE, chunk_size=2, store=store)
    assert resumed.attrs["chunks_loaded"] == len(written) and resumed.attrs["chunks_run"] == 4 - len(written)
    assert not list(store.glob(".*tmp*"))
    assert {p.name: p.stat().st_mtime_ns for p in written} == stamps  # loaded, not re-run
    members = np.concatenate([_store._read(p.read_bytes())[0] for p in sorted(store.glob("chunk-*.nc"))])
    assert sorted(members.tolist()) == list(range(8))  # nothing lost, nothing duplicated
    uninterrupted = nj.sweep(data=digits, **BASE, chunk_size=2)
    _same(resumed, uninterrupted)
    assert json.loads((store / "manifest.json").read_text())["config_hash"] == resumed.attrs["config_hash"]


def test_four_host_devices_equal_one(tmp_path):
    script = tmp_path / "shard.py"
    out = tmp_path / "out"
    script.write_text(_script(f"""
        assert len(jax.devices()) == 4, jax.devices()
        ds = data.digits()
        one = nj.sweep(data=ds, **BASE, chunk_size=1, devices=jax.devices()[:1])
        four = nj.sweep(data=ds, **BASE, chunk_size=3)   # rounded up to 4: one member per device
        assert four.attrs["n_devices"] == 4 and four.attrs["chunks_run"] == 2
        wide = nj.sweep(data=ds, **BASE)                 # one chunk of 8: two members per device
        for name, d in (("1", one), ("4", four), ("w", wide)):
            d.to_netcdf({str(out)!r} + name + ".nc", engine="scipy")
    """))
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"  # keeps the session's level
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = {n: xr.open_dataset(f"{out}{n}.nc", engine="scipy").load() for n in "14w"}
    _same(got["1"], got["4"])  # bit for bit: every device runs the single-device program on its member
    _same(got["1"], got["w"], exact=False, rtol=1e-12)  # other vmap widths: XLA may round differently


def test_command_writes_store_summary_and_heat_maps(tmp_path):
    from typer.testing import CliRunner

    app = cli_app
    args = ["--no-cache", "sweep", "--lr", "0.05,0.2", "--momentum", "0,0.9", "--weight-decay", "0", "--seeds", "2", "--steps", "6",
            "--save-every", "3", "--width", "4", "--batch-size", "16", "--out", str(tmp_path), "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summ = json.loads((tmp_path / "summary.json").read_text())
    assert summ["n_members"] == 8 and summ["status"]["ok"] == 8
    assert (tmp_path / "heatmap_final_loss.png").stat().st_size > 1000
    assert (tmp_path / "heatmap_error_median_rescale.png").exists() and list((tmp_path / "store").glob("chunk-*.nc"))
    bad = CliRunner().invoke(app, [*args[:3], "0.05,-1", *args[4:]])
    assert bad.exit_code == 2 and "-1.0" in bad.output


def test_sweeps_run_in_float32_by_default_and_refuse_an_unknown_dtype(digits):
    kw = {k: v for k, v in BASE.items() if k != "dtype"}
    ds = nj.sweep(data=digits, **{**kw, "lr": 0.1, "momentum": 0.9, "seed": [0]})
    assert ds.attrs["dtype"] == "float32" and ds["measured_rescale"].dtype == np.float32
    net, params, state = models.functional(models.make_model("mlp", key=0, width=4, dtype=np.float32))
    rec = nj.Recorder(net, mlp_groups("mlp", params), digits.x_train.astype(np.float32), digits.y_train, batch_size=16, steps=6,
                      save_every=3)
    out = rec.run(params, state, nj.Hyper(0.1, 0.9), sweeps.data_key(0))
    sel = ds.squeeze()
    np.testing.assert_allclose(sel["measured_rescale"].values, np.asarray(out.measured["rescale"]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="dtype"):
        nj.sweep(data=digits, **{**kw, "dtype": "float16"})
