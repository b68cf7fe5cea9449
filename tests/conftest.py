"""Fixtures shared by test modules, and the order in which pytest-xdist hands modules to its workers.

``reproduced``: the quick ``noether-jax reproduce`` output folder, built once per test session (only
tests/test_report.py uses it, so one worker builds it and no other waits for it). The lock keeps that true if
another module ever asks for it: the first worker to get the lock builds it in the session's shared temporary
folder, the others wait and reuse it.

Order: ``--dist loadscope`` gives each worker a whole module at a time, and with ``--no-loadscope-reorder``
(pyproject.toml) in collection order. :data:`LONGEST_FIRST` puts the modules that take longest first, so the
two workers of a 2-core machine do not end the run with one long module running alone (longest processing
time first). The list is of measured times; a module not in it keeps its place after them.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest

# The command line does not turn on a cache of its own in the test run: the root conftest.py already runs the
# whole session on JAX's persistent cache (1 s threshold) and hands its folder to subprocesses and notebook
# kernels. Measured (benchmarks/README.md, "The persistent compilation cache in the test suite"): with that cache
# off, one test takes 4-5x its time with it warm, and a cold folder costs about what no cache costs.
os.environ.setdefault("NOETHER_JAX_CACHE", "0")

LONGEST_FIRST = (  # from one full default run's --durations (2026-12-02): the report's fixture 804 s,
    "tests/test_report.py",  # notebook 03 173 s, sweep physics (KSB test) 124 s, notebook 02 120 s
    "notebooks/03_noether_learning_dynamics.ipynb",
    "tests/test_sweep_physics.py",
    "notebooks/02_neural_mechanics.ipynb",
)


def pytest_collection_modifyitems(config, items):
    """Put the modules of :data:`LONGEST_FIRST` first, in its order; keep the rest in collection order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory, execution_xla_env):
    """Built by the command line in a subprocess with the root conftest's ``EXECUTION_XLA_FLAGS``: XLA's default
    optimisation level (the session's level 0 is for compile-bound tests; this run is execution-bound: 2350 s at
    level 0 against 640 s, measured), fusion emitters off (392 s against 295 s alone, measured)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    out = root / "reproduce"
    with open(root / "reproduce.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "report.html").exists():
            res = subprocess.run([sys.executable, "-m", "noether_jax.cli", "reproduce", "--quick", "--out", str(out)],
                                 env=execution_xla_env, capture_output=True, text=True)
            assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return out
