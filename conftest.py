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

# Most tests are compile-bound (many small programs, each run briefly): they compile with the flags of
# :data:`FAST_COMPILE_FLAGS` (benchmarks/README.md, "XLA's flags in the test suite"): backend optimisation level 0
# (one test 38.6 s -> 22.3 s) and XLA:CPU's fusion emitters off (then 19.3 s -> 12.9 s). The execution-bound runs
# (the quick report, notebook 03: 3x slower at level 0) keep the default level and only turn the emitters off, which
# also runs them faster (the quick report alone, 392 s -> 295 s): :data:`EXECUTION_XLA_FLAGS`, the
# ``execution_xla_env`` fixture, :data:`EXECUTION_BOUND_NOTEBOOKS`. ``NOETHER_JAX_TEST_XLA_OPT=default`` adds none of
# them. They must be set before JAX creates its CPU client, so before anything here touches a device; the first
# process (the controller) decides them once, keeping only flags this jaxlib knows (an unknown one aborts XLA), and
# the workers inherit its decision through the environment. A flag the user already set is left as the user set it.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
_COMPILE_ONLY = ("--xla_backend_optimization_level",)  # left out for execution-bound runs

# the flags the session started with, read once by the controller and inherited by the workers
USER_XLA_FLAGS = os.environ.setdefault("NOETHER_JAX_TEST_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))


def _xla_accepts(flags: str) -> bool:
    """Whether this jaxlib's XLA starts with ``flags`` (an unknown flag aborts the process that creates a client)."""
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    try:
        return subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True,
                              timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _join(*flags: str) -> str:
    return " ".join(f for f in flags if f).strip()


def _session_xla_flags() -> tuple[str, str]:
    """(the flags of this session's own processes, those of its execution-bound subprocesses)."""
    if "NOETHER_JAX_TEST_XLA_FLAGS" in os.environ:  # a worker: the controller has decided
        return os.environ["NOETHER_JAX_TEST_XLA_FLAGS"], os.environ["NOETHER_JAX_TEST_EXECUTION_XLA_FLAGS"]
    extra = [f for f in FAST_COMPILE_FLAGS if f.split("=")[0] not in USER_XLA_FLAGS]
    if os.environ.get("NOETHER_JAX_TEST_XLA_OPT", "fast") == "default":
        extra = []
    elif extra and not _xla_accepts(_join(USER_XLA_FLAGS, *extra)):
        extra = [f for f in extra if _xla_accepts(_join(USER_XLA_FLAGS, f))]
    flags = _join(USER_XLA_FLAGS, *extra)
    execution = _join(USER_XLA_FLAGS, *(f for f in extra if not f.startswith(_COMPILE_ONLY)))
    os.environ["NOETHER_JAX_TEST_XLA_FLAGS"], os.environ["NOETHER_JAX_TEST_EXECUTION_XLA_FLAGS"] = flags, execution
    return flags, execution


SESSION_XLA_FLAGS, EXECUTION_XLA_FLAGS = _session_xla_flags()
if SESSION_XLA_FLAGS:
    os.environ["XLA_FLAGS"] = SESSION_XLA_FLAGS


def _execution_xla_env() -> dict[str, str]:
    env = dict(os.environ)
    if EXECUTION_XLA_FLAGS:
        env["XLA_FLAGS"] = EXECUTION_XLA_FLAGS
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
"""Notebooks whose kernel runs with :data:`EXECUTION_XLA_FLAGS` (measured 497 s at level 0 against 162 s)."""


@pytest.fixture(scope="session")
def execution_xla_env() -> dict[str, str]:
    """``os.environ`` with :data:`EXECUTION_XLA_FLAGS`, for an execution-bound subprocess."""
    return _execution_xla_env()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Start the kernel of an execution-bound notebook (nbmake launches it with ``os.environ``) with
    :data:`EXECUTION_XLA_FLAGS`; this process's own JAX client keeps the flags it started with."""
    if Path(str(item.fspath)).name not in EXECUTION_BOUND_NOTEBOOKS:
        yield
        return
    saved = os.environ.pop("XLA_FLAGS", None)
    if EXECUTION_XLA_FLAGS:
        os.environ["XLA_FLAGS"] = EXECUTION_XLA_FLAGS
    try:
        yield
    finally:
        os.environ.pop("XLA_FLAGS", None)
        if saved is not None:
            os.environ["XLA_FLAGS"] = saved
