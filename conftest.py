"""Tests and doctests run in float64 unless a test asks for float32 explicitly (as the overflow checks do).

JAX's persistent compilation cache is on for the test session (``nj.compilation_cache()``: the folder
``$JAX_COMPILATION_CACHE_DIR`` or ``~/.cache/noether_jax``, inherited by the notebook kernels and the
subprocesses of the command-line tests), so a second run of the suite loads most programs instead of
compiling them; ``NOETHER_JAX_NO_CACHE=1`` turns it off.

Every compiled XLA:CPU executable keeps its machine code in memory mappings of its own. One pytest
process compiles thousands of programs, and without a clean-up it passes Linux's default
``vm.max_map_count`` (65 530) about two thirds of the way through the suite, where LLVM's next
allocation aborts the process ("Fatal Python error: Aborted" inside ``backend_compile_and_load``).
So after a test module, once the process holds more than half the allowed mappings, JAX's caches are
dropped. (Not after every module: that also drops the per-primitive executables that eager tests
share, and recompiling them costs minutes over the suite.)
"""

import gc
import os
from pathlib import Path

# Most tests are compile-bound (many small programs, each run briefly): they compile at XLA's backend optimisation
# level 0, measured to cut their time by about a quarter (benchmarks/README.md, "XLA's optimisation level in the
# test suite"). The few execution-bound runs (the quick report, notebook 03: 3x slower at level 0) get the
# default level back (the ``default_xla_env`` fixture, :data:`EXECUTION_BOUND_NOTEBOOKS`). ``NOETHER_JAX_TEST_XLA_OPT=default`` turns this off. It
# must be set before JAX creates its CPU client, so before anything here touches a device.
# the flags the session started with, read once by the first process (the controller) and inherited by the workers
USER_XLA_FLAGS = os.environ.setdefault("NOETHER_JAX_TEST_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
if os.environ.get("NOETHER_JAX_TEST_XLA_OPT", "0") != "default" and "xla_backend_optimization_level" not in USER_XLA_FLAGS:
    os.environ["XLA_FLAGS"] = f"{USER_XLA_FLAGS} --xla_backend_optimization_level=0".strip()


def _default_xla_env() -> dict[str, str]:
    env = dict(os.environ)
    if USER_XLA_FLAGS:
        env["XLA_FLAGS"] = USER_XLA_FLAGS
    else:
        env.pop("XLA_FLAGS", None)
    return env


import jax  # noqa: E402
import pytest

jax.config.update("jax_enable_x64", True)
if not os.environ.get("NOETHER_JAX_NO_CACHE"):
    from noether_jax._config import compilation_cache, default_cache_dir

    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(default_cache_dir()))  # for subprocesses and kernels
    compilation_cache(min_compile_time_s=1.0)


def _read_int(path: str, default: int) -> int:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _mappings() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux: no such limit to guard
        return 0


def _keep_executed_notebooks() -> None:
    """Save each notebook the test run executes (nbmake) to ``runs/notebooks/``, outputs included: the docs
    site renders those copies (``docs/hooks.py``), while the repository keeps the stripped ones."""
    try:
        import nbformat
        from nbmake.nb_run import NotebookRun
    except ImportError:  # nbmake not installed: nothing to keep
        return
    execute = NotebookRun.execute
    if getattr(execute, "_keeps_copies", False):
        return

    def execute_and_keep(self):
        res = execute(self)
        if res.error is None:
            from noether_jax._io import atomic_write

            out = Path(__file__).resolve().parent / "runs" / "notebooks"
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out / Path(self.filename).name, nbformat.writes(res.nb).encode("utf-8"))
        return res

    execute_and_keep._keeps_copies = True
    NotebookRun.execute = execute_and_keep


_keep_executed_notebooks()

_LIMIT = _read_int("/proc/sys/vm/max_map_count", 65530) // 2


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    yield
    if _mappings() > _LIMIT:
        jax.clear_caches()
        gc.collect()


EXECUTION_BOUND_NOTEBOOKS = ("03_noether_learning_dynamics.ipynb",)
"""Notebooks whose kernel compiles at the default optimisation level (measured 497 s at level 0 against 162 s)."""


@pytest.fixture(scope="session")
def default_xla_env() -> dict[str, str]:
    """``os.environ`` with the XLA flags the session started with, for an execution-bound subprocess."""
    return _default_xla_env()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Start the kernel of an execution-bound notebook (nbmake launches it with ``os.environ``) at the default
    optimisation level; this process's own JAX client keeps the level it started with."""
    if Path(str(item.fspath)).name not in EXECUTION_BOUND_NOTEBOOKS:
        yield
        return
    saved = os.environ.pop("XLA_FLAGS", None)
    if USER_XLA_FLAGS:
        os.environ["XLA_FLAGS"] = USER_XLA_FLAGS
    try:
        yield
    finally:
        os.environ.pop("XLA_FLAGS", None)
        if saved is not None:
            os.environ["XLA_FLAGS"] = saved
