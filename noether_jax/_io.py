"""The one writer of each file format the library and the application write, and path checks (private).

Writes are atomic: a temporary file in the same folder, then ``os.replace``, so a killed process
never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

MIN_FREE_BYTES = 16 * 2**20  # an output folder with less free space is refused before any work


def atomic_write(path: str | os.PathLike, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically (fsync'ed temporary file, then ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink(missing_ok=True)
    return path


def jsonable(x: Any) -> Any:
    """Plain JSON values: arrays to lists, NaN/inf to None, numpy scalars to Python ones."""
    import jax

    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray | jax.Array):
        return jsonable(np.asarray(x).tolist())
    if isinstance(x, np.floating | float):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "to_dict"):
        return jsonable(x.to_dict())
    return x


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """The one JSON writer: ``obj`` made :func:`jsonable`, written atomically."""
    return atomic_write(path, json.dumps(jsonable(obj), indent=2, ensure_ascii=False).encode("utf-8"))


def check_out_dir(path: str | os.PathLike, name: str = "out") -> Path:
    """Refuse, before any work, an output folder that is a file, cannot be created, or is not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"`{name}` ({path}) is a file, not a folder: give a folder path.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"`{name}` ({path}) cannot be created: {e.strerror}. Choose a folder you can write to.") from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise ValueError(f"`{name}` ({path}) has only {free / 2**20:.1f} MiB free: not enough to write the outputs. "
                         "Free some space or choose another folder.")
    probe = path / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"`{name}` ({path}) is not writable: {e.strerror}. Choose a folder you can write to.") from None
    return path
