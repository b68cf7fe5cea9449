"""Tests and doctests run in float64 unless a test asks for float32 explicitly (as the overflow checks do).

Every compiled XLA:CPU executable keeps its machine code in memory mappings of its own. One pytest
process compiles thousands of programs, and without a clean-up it passes Linux's default
``vm.max_map_count`` (65 530) about two thirds of the way through the suite, where LLVM's next
allocation aborts the process ("Fatal Python error: Aborted" inside ``backend_compile_and_load``).
So the caches are dropped after every test module; a module's own compiles are still shared by its
tests.
"""

import gc

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    yield
    jax.clear_caches()
    gc.collect()
