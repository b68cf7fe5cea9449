"""Process-wide switches: float64, and JAX's persistent compilation cache (both only when asked)."""

from __future__ import annotations

import os
from pathlib import Path

import jax


def enable_x64(enabled: bool = True) -> None:
    """Switch JAX to float64 (``True``) or back to float32.

    Call it before creating arrays; ``JAX_ENABLE_X64=1`` in the environment does the same.

    Example:
        >>> import jax, jax.numpy as jnp, noether_jax as nj
        >>> before = jax.config.jax_enable_x64
        >>> nj.enable_x64(True); jnp.zeros(1).dtype.name
        'float64'
        >>> nj.enable_x64(before)
    """
    jax.config.update("jax_enable_x64", bool(enabled))


def default_cache_dir() -> Path:
    """Where the compilation cache lives: ``$JAX_COMPILATION_CACHE_DIR`` if set, else
    ``$XDG_CACHE_HOME/noether_jax`` (default ``~/.cache/noether_jax``)."""
    env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "noether_jax"


def compilation_cache(enabled: bool = True, *, path: str | os.PathLike | None = None,
                      min_compile_time_s: float | None = None) -> Path | None:
    """Turn JAX's persistent compilation cache on (or off) for this process, and return its folder.

    A program compiled once is then loaded from disk by every later process (a second identical
    ``noether-jax sweep`` skips most of its XLA compile). The library never turns it on by itself;
    the command line does, unless given ``--no-cache``. Clear it by deleting the folder.

    Args:
        enabled: False turns the cache off.
        path: the folder; default :func:`default_cache_dir`.
        min_compile_time_s: only programs that took at least this long to compile are stored; default
            ``$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` if set, else 0.2 s.

    Example:
        >>> import jax, tempfile, noether_jax as nj
        >>> before = jax.config.jax_compilation_cache_dir
        >>> nj.compilation_cache(path=tempfile.mkdtemp()).is_dir()
        True
        >>> jax.config.update("jax_compilation_cache_dir", before)
    """
    if not enabled:
        jax.config.update("jax_compilation_cache_dir", None)
        try:
            jax.config.update("jax_enable_compilation_cache", False)
        except AttributeError:  # pragma: no cover - older jax
            pass
        return None
    if min_compile_time_s is None:
        min_compile_time_s = float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 0.2))
    folder = Path(path) if path is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        jax.config.update("jax_enable_compilation_cache", True)
    except AttributeError:  # pragma: no cover - older jax
        pass
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
