"""The resumable on-disk store of a sweep: one netCDF file per chunk, verified before it is trusted (private).

``manifest.json`` holds the sweep's configuration hash and, per finished chunk, the members it holds,
their configurations (seed, η, β, λ, batch size, init scale) and the sha256 of its file. On resume a
chunk is loaded only when its file exists, its checksum matches and its member ids and configurations
are the expected ones; a missing, truncated, corrupted or foreign chunk is recomputed (with a warning
that names the file), never loaded. A manifest that cannot be read is refused, naming it and the fix.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .._io import atomic_write

FORMAT = 2


def fingerprint(tree: Any) -> str:
    h = hashlib.sha256()
    for a in jax.tree.leaves(tree):
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def config_hash(config: dict) -> str:
    """The short hash that identifies a sweep's configuration (in its store and its dataset's attrs)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Store:
    """The chunk files and manifest of one sweep in folder ``path`` (only process 0 writes)."""

    def __init__(self, path: str | Path, config: dict, *, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self.config_hash = config_hash(config)
        self.manifest_path = self.path / "manifest.json"
        self.chunks: dict[str, dict] = {}
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"`store` ({self.path}) is a file, not a folder: give a folder path.")
        if self.manifest_path.exists():
            try:
                old = json.loads(self.manifest_path.read_text())
                if not isinstance(old, dict) or "config_hash" not in old:
                    raise ValueError("it has no config_hash")
                if not isinstance(old.get("chunks", {}), dict) or not all(
                        isinstance(e, dict) for e in old.get("chunks", {}).values()):
                    raise ValueError("its chunk entries are not records")
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"the store's manifest {self.manifest_path} is corrupt ({e}); delete the store folder "
                                 f"{self.path} to start the sweep over.") from None
            if old.get("config_hash") != self.config_hash:
                diff = sorted(k for k in set(old.get("config", {})) | set(config)
                              if old.get("config", {}).get(k) != config.get(k))
                raise ValueError(
                    f"the store {self.path} holds a different sweep (config hash {old.get('config_hash')} vs "
                    f"{self.config_hash}; differing: {', '.join(diff) or 'unknown'}). Use a new `store` path, "
                    "or delete it to start over."
                )
            self.chunks = dict(old.get("chunks", {}))
        self.config = config
        if writer:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ValueError(f"`store` ({self.path}) cannot be created: {e.strerror}.") from None
            for stale in self.path.glob(".*.tmp-*"):  # half-written files of a killed run
                stale.unlink(missing_ok=True)
            self._write_manifest()

    def _write_manifest(self) -> None:
        body = {"format": FORMAT, "config_hash": self.config_hash, "config": self.config, "chunks": self.chunks}
        atomic_write(self.manifest_path, json.dumps(body, indent=1, sort_keys=True, default=str).encode())

    @staticmethod
    def name(group: int, index: int) -> str:
        return f"chunk-g{group:02d}-{index:05d}.nc"

    def load(self, group: int, index: int, members: np.ndarray, configs: list[dict] | None = None
             ) -> dict[str, np.ndarray] | None:
        """The chunk's arrays when its file is present and verified; None (recompute) otherwise."""
        name = self.name(group, index)
        path = self.path / name
        entry = self.chunks.get(name)
        if entry is None or not path.exists():
            if path.exists():
                warnings.warn(f"noether_jax sweep: {path} is not in the manifest (a run killed mid-write?); recomputing it.",
                              stacklevel=3)
            elif entry is not None:
                warnings.warn(f"noether_jax sweep: {path} is listed in {self.manifest_path} but missing; recomputing it.",
                              stacklevel=3)
            return None
        payload = path.read_bytes()
        problem = None
        if hashlib.sha256(payload).hexdigest() != entry.get("sha256"):
            problem = "its checksum does not match the manifest (truncated or corrupted)"
        elif list(entry.get("members", [])) != [int(m) for m in members]:
            problem = "the manifest lists other members for it (a chunk of another layout)"
        elif configs is not None and "configs" in entry and entry["configs"] != _plain(configs):
            problem = "the manifest lists other member configurations for it (a chunk of another sweep)"
        if problem is None:
            got, out = _read(payload)
            if not np.array_equal(got, members):
                problem = f"it holds members {got.tolist()}, expected {members.tolist()} (a foreign chunk)"
            else:
                return out
        warnings.warn(f"noether_jax sweep: {path}: {problem}; recomputing it.", stacklevel=3)
        return None

    def save(self, group: int, index: int, members: np.ndarray, out: dict[str, np.ndarray],
             configs: list[dict] | None = None) -> None:
        if not self.writer:
            return
        name = self.name(group, index)
        payload = _write(members, out)
        atomic_write(self.path / name, payload)
        entry: dict[str, Any] = {"members": [int(m) for m in members], "sha256": hashlib.sha256(payload).hexdigest()}
        if configs is not None:
            entry["configs"] = _plain(configs)
        self.chunks[name] = entry
        self._write_manifest()


def _plain(configs: list[dict]) -> list[dict]:
    """Member configurations as the manifest stores them (JSON round trip: what a resumed run reads back)."""
    return json.loads(json.dumps(configs, sort_keys=True, default=str))


def _write(members: np.ndarray, out: dict[str, np.ndarray]) -> bytes:
    import xarray as xr

    ds = xr.Dataset({"member": ("member", members.astype(np.int32))})
    for k, v in out.items():
        ds[k] = (("member", *(f"d{k}_{i}" for i in range(1, v.ndim))), v)
    return bytes(ds.to_netcdf(None, engine="scipy"))


def _read(payload: bytes) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    import xarray as xr

    with xr.open_dataset(io.BytesIO(payload), engine="scipy", mask_and_scale=False, decode_times=False) as ds:
        ds = ds.load()
    return ds["member"].values.astype(np.int64), {k: ds[k].values for k in ds.data_vars}
