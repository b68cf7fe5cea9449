"""Fixtures shared by test modules.

``reproduced``: the quick ``noether-jax reproduce`` output folder, built once per test session even when
pytest-xdist spreads the modules that use it (tests/test_report.py, tests/test_report_browser.py) over
several workers: the first worker to get the lock builds it in the session's shared temporary folder, the
others wait and reuse it.
"""

from __future__ import annotations

import fcntl
import os

import pytest


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's in-memory compiled programs after each test module (the persistent cache keeps them).

    Every XLA:CPU executable holds memory mappings of its own; a worker that runs many modules can pass
    Linux's default ``vm.max_map_count`` (65 530), and the next compile then aborts the worker."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory):
    from typer.testing import CliRunner

    from noether_jax.cli import app

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    out = root / "reproduce"
    with open(root / "reproduce.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "report.html").exists():
            res = CliRunner().invoke(app, ["reproduce", "--quick", "--out", str(out)])
            assert res.exit_code == 0, res.output
    return out
