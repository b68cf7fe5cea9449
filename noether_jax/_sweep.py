"""Hyperparameter sweeps: a grid of training recorders as one sharded, chunked, resumable jit.

:func:`sweep` runs :class:`~noether_jax.Recorder` for every configuration of learning rate η,
momentum β, weight decay λ, mini-batch size, seed and initialisation scale, and returns a labelled
:class:`xarray.Dataset`. See its docstring for the design (vmap, batch-size groups, chunks,
sharding, the on-disk store) and :func:`sweep_command` for the ``noether-jax sweep`` command.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Int, PyTree

from ._data import Dataset, check_batch_size
from ._recorder import KINDS, Hyper, Recorder
from ._symmetry import MaskedSymmetry, Rescale, Scale, Translation

HYPERS = ("lr", "momentum", "weight_decay", "batch_size", "seed", "init_scale")
STATUS = {0: "ok", 1: "diverged", 2: "nan"}
_DATA_STREAM = 0x5EED  # the mini-batch key of seed s is fold_in(key(s), _DATA_STREAM)
_COMPILED: dict[Any, Any] = {}  # (program, shapes, devices) -> compiled executable; see _compiled()
_STORE_FORMAT = 1


def data_key(seed: int | Int[Array, ""]) -> jax.Array:
    """The mini-batch PRNG key of a sweep member with ``seed`` (its model is initialised from ``seed``)."""
    return jax.random.fold_in(jax.random.key(seed), _DATA_STREAM)


# ------------------------------------------------------------------------------------------ validation
def _values(name: str, value: Any, *, integer: bool = False) -> list:
    vals = list(value) if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str) else [value]
    if not vals:
        raise ValueError(f"`{name}` must hold at least one value, got an empty list.")
    out = []
    for v in vals:
        if integer:
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise TypeError(f"`{name}` values must be integers, got {v!r}.")
            out.append(int(v))
        else:
            if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                raise TypeError(f"`{name}` values must be numbers, got {v!r}.")
            out.append(float(v))
    return out


def _check_value(name: str, v: Any, n_train: int) -> None:
    """Refuse one invalid hyperparameter value, naming it."""
    bad = None
    if name in ("lr", "momentum", "weight_decay", "init_scale") and not np.isfinite(v):
        bad = "it must be finite"
    elif name == "lr" and v <= 0:
        bad = "the learning rate must be > 0"
    elif name == "momentum" and not 0 <= v < 1:
        bad = "the momentum must be in [0, 1)"
    elif name == "weight_decay" and v < 0:
        bad = "the weight decay must be ≥ 0"
    elif name == "init_scale" and v <= 0:
        bad = "the initialisation scale must be > 0"
    elif name == "seed" and v < 0:
        bad = "seeds must be ≥ 0"
    elif name == "batch_size":
        try:
            check_batch_size(v, n_train)
        except ValueError as e:
            bad = str(e).rstrip(".")
    if bad:
        raise ValueError(f"invalid `{name}` value {v!r}: {bad}. Nothing was run.")


def _members(grid: bool | Sequence[Mapping[str, Any]], values: dict[str, list]) -> list[dict[str, Any]]:
    if grid is True:
        return [dict(zip(HYPERS, combo, strict=True)) for combo in itertools.product(*(values[h] for h in HYPERS))]
    if grid is False or isinstance(grid, str | Mapping) or not isinstance(grid, Sequence):
        raise TypeError("`grid` must be True (the cartesian product of the value lists) or a list of dicts (one configuration each).")
    members = []
    for i, cfg in enumerate(grid):
        if not isinstance(cfg, Mapping):
            raise TypeError(f"`grid[{i}]` must be a dict of hyperparameters, got {type(cfg).__name__}.")
        unknown = set(cfg) - set(HYPERS)
        if unknown:
            raise ValueError(f"`grid[{i}]` has unknown keys {sorted(unknown)}; use among {HYPERS}.")
        m = {}
        for h in HYPERS:
            if h in cfg:
                m[h] = _values(h, [cfg[h]], integer=h in ("batch_size", "seed"))[0]
            elif len(values[h]) == 1:
                m[h] = values[h][0]
            else:
                raise ValueError(f"`grid[{i}]` gives no `{h}` and the `{h}` argument has several values {values[h]}; give one.")
        members.append(m)
    if not members:
        raise ValueError("`grid` is an empty list of configurations.")
    return members


# ------------------------------------------------------------------------------------------ models
def _hand_symmetries(name: str, params: PyTree) -> dict[str, MaskedSymmetry]:
    """Groups of the library's MLPs by construction: translation (head rows + class biases), rescale
    (units of the last hidden layer, ReLU only) and scale (each hidden Linear before a LayerNorm)."""
    none = jax.tree.map(lambda a: np.full(a.shape, -1, np.int32), params)

    def copy():
        return jax.tree.map(lambda a: a.copy(), none)

    head = params["head"]["kernel"]
    w = head.shape[0]
    rows = np.broadcast_to(np.arange(w)[:, None], head.shape).astype(np.int32)
    t = copy()
    t["head"]["kernel"], t["head"]["bias"] = rows, np.full(params["head"]["bias"].shape, w, np.int32)
    out = {"translation": Translation(t)}
    layers = list(params["hidden"].keys()) if isinstance(params["hidden"], Mapping) else list(range(len(params["hidden"])))
    if name == "mlp":
        inc, outg = copy(), copy()
        last = layers[-1]
        k = params["hidden"][last]["kernel"]
        inc["hidden"][last]["kernel"] = np.broadcast_to(np.arange(k.shape[1])[None], k.shape).astype(np.int32)
        inc["hidden"][last]["bias"] = np.arange(k.shape[1], dtype=np.int32)
        outg["head"]["kernel"] = rows
        out["rescale"] = Rescale(inc, outg)
    if name == "mlp_layernorm":
        s = copy()
        for i, li in enumerate(layers):
            layer = params["hidden"][li]
            s["hidden"][li]["kernel"] = np.full(layer["kernel"].shape, i, np.int32)
            s["hidden"][li]["bias"] = np.full(layer["bias"].shape, i, np.int32)
        out["scale"] = Scale(s)
    return out


def _default_symmetries(name: str | None, net, params, state, ds: Dataset) -> dict[str, MaskedSymmetry]:
    try:  # automatic detection, when the library has it
        from . import symmetry as _sym

        detect = getattr(_sym, "detect", None)
        if detect is not None:
            return dict(detect(net, params, (ds.x_train[:64], ds.y_train[:64]), state=state).symmetries)
    except Exception:  # pragma: no cover - fall back on the architecture's known groups
        if name is None:
            raise
    if name in ("mlp", "mlp_tanh", "mlp_layernorm"):
        return _hand_symmetries(name, params)
    raise ValueError(
        f"no symmetry groups for model {name or 'given as (net, init)'}: pass `symmetries=` "
        "(kind -> MaskedSymmetry, e.g. nj.symmetry.Translation(...))."
    )


def _init_models(model, seeds: list[int], ds: Dataset, width: int):
    """(name or None, net, params stacked over seeds, state stacked over seeds)."""
    from ._models import functional, make_model

    if isinstance(model, str):
        name = model

        def init(seed):
            m = make_model(name, key=seed, width=width, in_shape=tuple(ds.x_train.shape[1:]), n_classes=ds.n_classes,
                           dtype=ds.x_train.dtype)
            return functional(m)
    elif isinstance(model, tuple) and len(model) == 2 and callable(model[1]):
        name, (net0, params_fn) = None, model

        def init(seed):
            p, s = params_fn(seed)
            return net0, p, s
    else:
        raise TypeError("`model` must be a model name (see noether_jax.models.MODELS) or a pair (net, init) with init(seed) -> (params, state).")
    inits = [init(s) for s in seeds]
    net = inits[0][0]
    stack = lambda *xs: jnp.stack([jnp.asarray(x) for x in xs])  # noqa: E731
    params = jax.tree.map(stack, *[i[1] for i in inits])
    state = jax.tree.map(stack, *[i[2] for i in inits]) if jax.tree.leaves(inits[0][2]) else inits[0][2]
    return name, net, params, state


# ------------------------------------------------------------------------------------------ the program
def _chunk_program(static, dynamic, params_by_seed, state_by_seed, x_test, y_test, seed_idx, seed, lr, mom, wd, scale,
                   *, scale_only: bool, floor_rel: float):
    """vmap over members of: init from the seed's params, Recorder.run, summary, masking."""
    rec: Recorder = eqx.combine(dynamic, static)
    scale_mask = None
    if scale_only:
        scale_mask = jax.tree.map(lambda ids, p: jnp.broadcast_to(ids >= 0, p.shape[1:]), rec.symmetries["scale"].ids, params_by_seed)

    def one(si, s, lr_, mom_, wd_, sc):
        p0 = jax.tree.map(lambda a: a[si], params_by_seed)
        st = jax.tree.map(lambda a: a[si], state_by_seed)
        if scale_mask is None:
            p0 = jax.tree.map(lambda a: a * sc.astype(a.dtype), p0)
        else:
            p0 = jax.tree.map(lambda a, m: jnp.where(m, a * sc.astype(a.dtype), a), p0, scale_mask)
        out = rec.run(p0, st, Hyper(lr_, mom_, wd_), data_key(s))
        logits, _ = rec.net(out.params, out.state, rec.x, train=False)
        final_loss = rec.loss(logits, rec.y)
        test_logits, _ = rec.net(out.params, out.state, x_test, train=False)
        acc = jnp.mean((jnp.argmax(test_logits, -1) == y_test).astype(test_logits.dtype))
        series = {"loss": out.loss}
        summ = {"final_loss": final_loss, "test_accuracy": acc}
        finite = jnp.isfinite(final_loss) & jnp.isfinite(out.loss[1:]).all()
        finite &= jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(out.params)]))
        for k in rec.symmetries:
            m, th, ident = out.measured[k], out.theory[k], out.identity[k]
            series[f"measured_{k}"], series[f"theory_{k}"], series[f"identity_{k}"] = m, th, ident
            floor = floor_rel * jnp.max(jnp.abs(m))
            e_th = jnp.max(jnp.abs(th - m) / jnp.maximum(jnp.abs(m), floor), axis=0)
            e_id = jnp.max(jnp.abs(ident - m) / jnp.maximum(jnp.abs(m), floor), axis=0)
            summ[f"error_median_{k}"], summ[f"error_max_{k}"] = jnp.median(e_th), jnp.max(e_th)
            summ[f"identity_error_median_{k}"] = jnp.median(e_id)
            finite &= jnp.isfinite(m).all() & jnp.isfinite(th).all()
        if "scale" in rec.symmetries:
            series["nld_r4"] = out.nld_r4
        diverged = out.diverged_step >= 0
        status = jnp.where(~finite, 2, jnp.where(diverged, 1, 0)).astype(jnp.int32)
        # mask the series after the divergence (everything when not finite) and the summaries
        bad_t = jnp.where(status == 2, True, diverged & (out.step > out.diverged_step))
        series = {k: jnp.where(bad_t.reshape((-1,) + (1,) * (v.ndim - 1)), jnp.nan, v) for k, v in series.items()}
        summ = {k: jnp.where(status == 0, v, jnp.nan) for k, v in summ.items()}
        return {**series, **summ, "status": status, "diverged_step": out.diverged_step}

    return jax.vmap(one)(seed_idx, seed, lr, mom, wd, scale)


def _compiled(rec: Recorder, shared: tuple, chunk: int, mesh: Mesh, *, scale_only: bool, floor_rel: float):
    """AOT-compile the chunk program once per (recorder program, shapes, chunk size, devices)."""
    dynamic, static = eqx.partition(rec, eqx.is_array)
    fdt = jnp.result_type(float)
    member_avals = (jax.ShapeDtypeStruct((chunk,), jnp.int32),) * 2 + (jax.ShapeDtypeStruct((chunk,), fdt),) * 4
    avals = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (dynamic, *shared))
    key = (
        jax.tree.structure(static), jax.tree.structure(avals), tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(avals)),
        chunk, tuple(d.id for d in mesh.devices.flat), scale_only, floor_rel, str(fdt),
    )
    if key in _COMPILED:
        return _COMPILED[key], dynamic, 0.0
    repl, mem = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("member"))
    # shard_map: every device runs the same vmapped program on its own members (no communication),
    # so a run on n devices is bit for bit a single-device run with chunk_size / n members per chunk.
    local = jax.shard_map(
        lambda d, *args: _chunk_program(static, d, *args, scale_only=scale_only, floor_rel=floor_rel),
        mesh=mesh, in_specs=(PartitionSpec(),) * 5 + (PartitionSpec("member"),) * 6, out_specs=PartitionSpec("member"),
        check_vma=False,
    )
    fn = jax.jit(
        local,
        in_shardings=(jax.tree.map(lambda _: repl, avals[0]), *jax.tree.map(lambda _: repl, avals[1:]), *(mem,) * 6),
        out_shardings=mem,
    )
    t0 = time.perf_counter()
    compiled = fn.lower(*avals, *member_avals).compile()
    _COMPILED[key] = compiled
    return compiled, dynamic, time.perf_counter() - t0


def _put(x, sharding):
    """Host array -> global jax.Array with ``sharding`` (each process supplies its own shards: multi-host safe)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _gather(tree):
    if jax.process_count() > 1:  # pragma: no cover - multi-host only
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree.map(np.asarray, jax.device_get(tree))


# ------------------------------------------------------------------------------------------ the store
def _fingerprint(tree) -> str:
    h = hashlib.sha256()
    for a in jax.tree.leaves(tree):
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _open_store(store: Path, config: dict) -> None:
    store.mkdir(parents=True, exist_ok=True)
    manifest = store / "manifest.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("config_hash") != config["config_hash"]:
            diff = sorted(k for k in set(old.get("config", {})) | set(config["config"])
                          if old.get("config", {}).get(k) != config["config"].get(k))
            raise ValueError(
                f"the store {store} holds a different sweep (config hash {old.get('config_hash')} vs "
                f"{config['config_hash']}; differing: {', '.join(diff) or 'unknown'}). Use a new `store` path, "
                "or delete it to start over."
            )
    else:
        _atomic_write(manifest, json.dumps(config, indent=1, sort_keys=True).encode())
    for stale in store.glob(".*.tmp-*"):  # half-written files of a killed run
        stale.unlink(missing_ok=True)


def _chunk_path(store: Path, group: int, index: int) -> Path:
    return store / f"chunk-g{group:02d}-{index:05d}.nc"


def _write_chunk(path: Path, members: np.ndarray, out: dict[str, np.ndarray]) -> None:
    ds = xr.Dataset({"member": ("member", members.astype(np.int32))})
    for k, v in out.items():
        ds[k] = (("member", *(f"d{k}_{i}" for i in range(1, v.ndim))), v)
    _atomic_write(path, bytes(ds.to_netcdf(None, engine="scipy")))


def _read_chunk(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with xr.open_dataset(path, engine="scipy", mask_and_scale=False, decode_times=False) as ds:
        ds = ds.load()
    return ds["member"].values.astype(np.int64), {k: ds[k].values for k in ds.data_vars}


# ------------------------------------------------------------------------------------------ public API
def sweep(
    model: str | tuple[Any, Callable[[int], tuple[PyTree, PyTree]]] = "mlp",
    *,
    lr: float | Sequence[float],
    momentum: float | Sequence[float] = 0.0,
    weight_decay: float | Sequence[float] = 0.0,
    batch_size: int | Sequence[int] = 128,
    seed: int | Sequence[int] = 1,
    init_scale: float | Sequence[float] = 1.0,
    steps: int = 100,
    save_every: int = 10,
    data: Dataset | None = None,
    width: int = 32,
    grid: bool | Sequence[Mapping[str, Any]] = True,
    chunk_size: int | None = None,
    store: str | os.PathLike | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
    symmetries: Mapping[str, MaskedSymmetry | tuple[MaskedSymmetry, ...]] | Callable[..., Mapping] | None = None,
    init_scale_on: str = "all",
    floor: float = 1e-3,
    on_chunk: Callable[[int, int], None] | None = None,
) -> xr.Dataset:
    """Train and record a whole grid of configurations as one compiled, sharded program.

    Every member runs :meth:`noether_jax.Recorder.run` (real heavy-ball SGD with coupled weight decay
    on PRNG mini-batches, every group's conservation law measured next to its theory and its exact
    discrete identity) from the model initialised with its seed.

    Args:
        model: a name in :data:`noether_jax.models.MODELS` (built with ``width`` for each seed by
            ``make_model(name, key=seed)``), or ``(net, init)`` with ``init(seed) -> (params, state)``.
        lr, momentum, weight_decay, batch_size, init_scale: one value or a list of values each.
        seed: a list of seeds, or an int ``n`` for the seeds ``0 .. n-1``. A member with seed ``s``
            is initialised from ``s`` and draws its mini-batches from :func:`data_key` ``(s)``.
        init_scale: multiplies the initial parameters: all of them (``init_scale_on="all"``, the
            default), or only the entries of the scale groups (``init_scale_on="scale"``, the
            normalised filters of NLD Fig. 1b).
        steps, save_every: training steps and the save interval (``steps // save_every + 1`` points).
        data: a :class:`noether_jax.data.Dataset`; default scikit-learn digits.
        grid: ``True`` for the cartesian product of the value lists (one dimension per
            hyperparameter), or a list of dicts, one configuration each (one ``member`` dimension;
            keys not given take the argument's single value).
        chunk_size: members per compiled call (memory bound); default all members of a batch-size
            group at once. Rounded up to a multiple of the number of devices; the last chunk is padded
            (with copies of its first member, discarded) so no chunk ever recompiles.
        store: a directory. Each finished chunk is written there atomically (a temporary file, then
            ``os.replace``) as a netCDF file, next to a ``manifest.json`` holding the sweep's config
            hash. Calling again with the same arguments resumes: only missing chunks run. A store
            written by a different sweep is refused.
        devices: the devices to shard the member axis over (default ``jax.devices()``).
        progress: show a tqdm progress bar over chunks.
        symmetries: kind -> :class:`~noether_jax.symmetry.MaskedSymmetry` (or a tuple of them, as
            :class:`~noether_jax.Recorder` takes), or a callable ``(net, params, state) -> that``
            called on the first seed's model. Default: ``nj.symmetry.detect`` on the first seed's
            model and 64 training examples (the same groups for every member), else the library
            MLPs' groups by construction.
        floor: relative errors divide by max(|measured|, floor × max|measured|) per member and kind.
        on_chunk: called as ``on_chunk(done, total)`` after each chunk (and its store write).

    Returns:
        An :class:`xarray.Dataset` with dimensions ``lr, momentum, weight_decay, batch_size, seed,
        init_scale`` (always all six, length 1 when not swept; ``member`` instead for a list of
        configurations), ``time`` (coordinate ``step``; data variable ``t = step · lr``) and
        ``<kind>_group``; variables ``measured_<kind>``, ``theory_<kind>``, ``identity_<kind>``,
        ``loss`` (mean mini-batch loss since the previous save), ``nld_r4`` (scale groups),
        summaries ``error_median_<kind>`` / ``error_max_<kind>`` (theory vs measured, over groups),
        ``identity_error_median_<kind>``, ``final_loss`` (full training set), ``test_accuracy``,
        ``status`` (0 ok, 1 diverged, 2 nan: see ``status.attrs``) and ``diverged_step``.
        A diverged member's series are NaN after its divergence (all of them for ``nan``) and its
        summaries NaN; the other members are unaffected. ``attrs`` hold ``compile_time_s``,
        ``run_time_s``, ``chunks_run``, ``chunks_loaded``, the device count and package versions.

    **How it runs.** Members are grouped by batch size, the one hyperparameter that changes array
    shapes: each group is ONE ahead-of-time compiled program (``jax.jit(...).lower().compile()``,
    timed apart from execution) that ``jax.vmap``-s the recorder over (seed's params × init scale,
    η, β, λ, PRNG key), so a grid compiles once per distinct batch size, never per member, and the
    compiled program is cached in-process across calls. The member axis is sharded over a 1-D
    ``jax.sharding.Mesh`` of ``devices`` (inputs placed with ``NamedSharding(mesh, P("member"))``;
    the data and the seeds' initial parameters replicated) and run under ``jax.shard_map``: every
    device runs the same vmapped program on its own members, with no communication. On CPU a run
    over n devices is bit for bit the single-device run with ``chunk_size / n`` members per chunk;
    other chunk widths change XLA's vectorisation and may differ at rounding level (~1e-16).

    **Several hosts.** Call ``jax.distributed.initialize()`` (coordinator address, process count
    and id, or the cluster's auto-detection) in every process before anything else, then run the
    same ``sweep(...)`` call in every process: ``jax.devices()`` is then the global device list,
    each process feeds the shards of its own devices, results are gathered to all processes, and
    only process 0 writes the store (give a path on a shared file system).

    Example:
        >>> from noether_jax._sweep import sweep   # exported as nj.sweep
        >>> ds = sweep(lr=[0.05, 0.1], momentum=[0.0, 0.9], seed=2, steps=20, save_every=10, width=8,
        ...               batch_size=32, progress=False)
        >>> dict(ds.sizes)["lr"], dict(ds.sizes)["seed"], dict(ds.sizes)["time"]
        (2, 2, 3)
        >>> ds.status.values.ravel().tolist() == [0] * 8
        True
    """
    t_all = time.perf_counter()
    if init_scale_on not in ("all", "scale"):
        raise ValueError(f"`init_scale_on` must be 'all' or 'scale', got {init_scale_on!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps <= 0:
        raise ValueError(f"invalid `steps` value {steps!r}: it must be a positive integer. Nothing was run.")
    if isinstance(save_every, bool) or not isinstance(save_every, int | np.integer) or save_every <= 0 or steps % save_every:
        raise ValueError(f"invalid `save_every` value {save_every!r}: it must be a positive divisor of `steps` ({steps}).")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) or chunk_size < 1):
        raise ValueError(f"invalid `chunk_size` value {chunk_size!r}: use a positive integer or None.")
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        if seed < 1:
            raise ValueError(f"invalid `seed` value {seed!r}: an int is a number of seeds (0 .. n-1) and must be ≥ 1.")
        seed = list(range(int(seed)))
    if data is None:
        from ._data import digits

        data = digits()
    n_train = int(data.x_train.shape[0])
    values = {
        "lr": _values("lr", lr), "momentum": _values("momentum", momentum),
        "weight_decay": _values("weight_decay", weight_decay), "batch_size": _values("batch_size", batch_size, integer=True),
        "seed": _values("seed", seed, integer=True), "init_scale": _values("init_scale", init_scale),
    }
    for h, vs in values.items():
        if grid is True and len(set(vs)) != len(vs):
            raise ValueError(f"`{h}` has repeated values {vs}; give each value once.")
    members = _members(grid, values)
    for m in members:
        for h in HYPERS:
            _check_value(h, m[h], n_train)
    seeds = sorted({m["seed"] for m in members})

    name, net, params_by_seed, state_by_seed = _init_models(model, seeds, data, width)
    p0 = jax.tree.map(lambda a: a[0], params_by_seed)
    s0 = jax.tree.map(lambda a: a[0], state_by_seed)
    if callable(symmetries):
        symmetries = symmetries(net, p0, s0)
    syms = dict(symmetries) if symmetries is not None else _default_symmetries(name, net, p0, s0, data)
    syms = {k: syms[k] for k in KINDS if k in syms}
    if init_scale_on == "scale" and "scale" not in syms:
        raise ValueError("`init_scale_on='scale'` needs scale groups, but the model has none; use init_scale_on='all'.")

    devs = list(devices) if devices is not None else jax.devices()
    mesh = Mesh(np.array(devs), ("member",))
    n_dev = len(devs)
    batch_sizes = list(dict.fromkeys(m["batch_size"] for m in members))
    groups = [[i for i, m in enumerate(members) if m["batch_size"] == b] for b in batch_sizes]
    sizes = {b: len(g) for b, g in zip(batch_sizes, groups, strict=True)}
    chunk_of = {b: -(-(chunk_size or sizes[b]) // n_dev) * n_dev for b in batch_sizes}

    fdt = jnp.result_type(float)
    config = {
        "format": _STORE_FORMAT, "model": name or f"custom:{_fingerprint(params_by_seed)}", "width": width,
        "steps": int(steps), "save_every": int(save_every), "members": members, "chunk_size": {str(b): c for b, c in chunk_of.items()},
        "data": _fingerprint((data.x_train, data.y_train, data.x_test, data.y_test)), "init": _fingerprint((params_by_seed, state_by_seed)),
        "symmetries": _fingerprint(syms) + str(jax.tree.structure(syms)), "init_scale_on": init_scale_on, "floor": floor,
        "dtype": str(fdt),
    }
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    store_path = Path(store) if store is not None else None
    writer = jax.process_index() == 0
    if store_path is not None and writer:
        _open_store(store_path, {"config_hash": config_hash, "config": json.loads(json.dumps(config, default=str))})

    from tqdm.auto import tqdm

    n_chunks = sum(-(-sizes[b] // chunk_of[b]) for b in batch_sizes)
    results: dict[int, dict[str, np.ndarray]] = {}
    compile_s = run_s = 0.0
    ran = loaded = 0
    repl = NamedSharding(mesh, PartitionSpec())
    mem = NamedSharding(mesh, PartitionSpec("member"))
    shared_host = (params_by_seed, state_by_seed, data.x_test, data.y_test)
    shared = jax.tree.map(lambda a: _put(a, repl), shared_host)
    seed_pos = {s: i for i, s in enumerate(seeds)}
    bar = tqdm(total=n_chunks, desc="sweep chunks", unit="chunk", disable=not progress)
    done = 0
    for g, (b, idx) in enumerate(zip(batch_sizes, groups, strict=True)):
        chunk = chunk_of[b]
        rec = Recorder(net, syms, data.x_train, data.y_train, batch_size=b, steps=steps, save_every=save_every)
        compiled = dynamic = None
        for c, start in enumerate(range(0, len(idx), chunk)):
            ids = np.asarray(idx[start : start + chunk])
            path = _chunk_path(store_path, g, c) if store_path is not None else None
            if path is not None and path.exists():
                got, out = _read_chunk(path)
                if not np.array_equal(got, ids):  # pragma: no cover - guarded by the config hash
                    raise RuntimeError(f"{path} holds members {got.tolist()}, expected {ids.tolist()}; the store is corrupt.")
                loaded += 1
            else:
                if compiled is None:
                    compiled, dynamic, dt = _compiled(rec, shared_host, chunk, mesh, scale_only=init_scale_on == "scale", floor_rel=floor)
                    compile_s += dt
                    dynamic = jax.tree.map(lambda a: _put(a, repl), dynamic)
                padded = np.concatenate([ids, np.full(chunk - len(ids), ids[0])])
                ms = [members[i] for i in padded]
                args = [
                    np.array([seed_pos[m["seed"]] for m in ms], np.int32), np.array([m["seed"] for m in ms], np.int32),
                    *(np.array([m[h] for m in ms], fdt) for h in ("lr", "momentum", "weight_decay", "init_scale")),
                ]
                t0 = time.perf_counter()
                res = compiled(dynamic, *shared, *(_put(a, mem) for a in args))
                out = {k: v[: len(ids)] for k, v in _gather(res).items()}
                run_s += time.perf_counter() - t0
                ran += 1
                if path is not None and writer:
                    _write_chunk(path, ids, out)
            for j, i in enumerate(ids):
                results[int(i)] = {k: v[j] for k, v in out.items()}
            done += 1
            bar.update(1)
            if on_chunk is not None:
                on_chunk(done, n_chunks)
    bar.close()

    ds = _assemble(results, members, values, grid is True, syms, steps, save_every)
    ds.attrs.update(
        compile_time_s=compile_s, run_time_s=run_s, total_time_s=time.perf_counter() - t_all, chunks_run=ran,
        chunks_loaded=loaded, n_devices=n_dev, n_members=len(members), config_hash=config_hash,
        batch_size_groups=len(batch_sizes), model=str(name or "custom"), steps=int(steps), save_every=int(save_every),
        init_scale_on=init_scale_on, dtype=str(fdt), versions=_versions(),
    )
    return ds


def _versions() -> str:
    from importlib.metadata import version

    out = []
    for p in ("noether_jax", "jax", "jaxlib", "equinox", "optax", "flax", "xarray"):
        try:
            out.append(f"{p}={version(p)}")
        except Exception:  # pragma: no cover
            pass
    return ", ".join(out)


def _assemble(results, members, values, cartesian: bool, syms, steps: int, save_every: int) -> xr.Dataset:
    n = len(members)
    keys = list(results[0])
    stacked = {k: np.stack([results[i][k] for i in range(n)]) for k in keys}
    step = np.arange(0, steps + 1, save_every)
    if cartesian:
        mdims = list(HYPERS)
        mshape = [len(values[h]) for h in HYPERS]
        coords = {h: values[h] for h in HYPERS}
    else:
        mdims, mshape = ["member"], [n]
        coords = {"member": np.arange(n), **{h: ("member", [m[h] for m in members]) for h in HYPERS}}
    coords["step"] = ("time", step)
    ds = xr.Dataset(coords=coords)

    def dims_of(k):
        if k == "loss":
            return ["time"]
        if k == "nld_r4":
            return ["time", "scale_group"]
        for kind in syms:
            if k in (f"measured_{kind}", f"theory_{kind}", f"identity_{kind}"):
                return ["time", f"{kind}_group"]
        return []

    for k, v in stacked.items():
        ds[k] = (mdims + dims_of(k), v.reshape(mshape + list(v.shape[1:])))
    lr = ds["lr"]
    ds["t"] = lr * ds["step"]
    ds["t"].attrs["long_name"] = "continuous time t = step · lr"
    ds["status"].attrs.update(flag_values=[0, 1, 2], flag_meanings="ok diverged nan",
                              description="0 ok; 1 diverged (loss exploded: series NaN after diverged_step); 2 nan (not finite: all NaN)")
    for kind in syms:
        ds[f"error_median_{kind}"].attrs["description"] = f"median over {kind} groups of max_t |theory - measured| / max(|measured|, floor)"
    return ds


def status_names(ds: xr.Dataset) -> xr.DataArray:
    """The ``status`` codes of a sweep as strings (``ok``, ``diverged``, ``nan``).

    Example:
        >>> import xarray as xr, numpy as np
        >>> status_names(xr.Dataset({"status": ("m", np.array([0, 2]))})).values.tolist()
        ['ok', 'nan']
    """
    return xr.apply_ufunc(np.vectorize(STATUS.get, otypes=[object]), ds["status"])


# ------------------------------------------------------------------------------------------ figures and CLI
def sweep_figures(ds: xr.Dataset, out_dir: str | os.PathLike) -> list[Path]:
    """Heat maps over lr × momentum (median over seeds; one panel per value of the other swept
    hyperparameters) of each kind's theory median error and of the final loss. Returns the PNG paths.

    Example:
        >>> import tempfile
        >>> from noether_jax._sweep import sweep, sweep_figures   # exported as nj.sweep, nj.sweep_figures
        >>> ds = sweep(lr=[0.05, 0.1], momentum=[0.0, 0.9], steps=10, save_every=5, width=4, progress=False)
        >>> sorted(p.name for p in sweep_figures(ds, tempfile.mkdtemp()))
        ['heatmap_error_median_rescale.png', 'heatmap_error_median_translation.png', 'heatmap_final_loss.png']
    """
    import matplotlib
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if "member" in ds.dims:
        raise ValueError("sweep_figures needs a grid sweep (grid=True), not a list of configurations.")
    names = [v for v in ds.data_vars if v.startswith("error_median_")] + ["final_loss"]
    facet_dims = [d for d in ("weight_decay", "batch_size", "init_scale") if ds.sizes.get(d, 1) > 1]
    paths = []
    for var in names:
        da = ds[var].median("seed") if "seed" in ds[var].dims else ds[var]
        da = da.squeeze([d for d in ("weight_decay", "batch_size", "init_scale") if d not in facet_dims and d in da.dims])
        facets = list(itertools.product(*(ds[d].values for d in facet_dims))) or [()]
        ncol = min(len(facets), 4)
        nrow = -(-len(facets) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow), squeeze=False)
        finite = np.asarray(da.values, float)[np.isfinite(np.asarray(da.values, float))]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        log = var.startswith("error") and vmin > 0
        norm = matplotlib.colors.LogNorm(vmin, max(vmax, vmin * 1.0001)) if log else matplotlib.colors.Normalize(vmin, vmax)
        for ax, facet in zip(axes.flat, facets):
            sel = da.sel(dict(zip(facet_dims, facet))) if facet_dims else da
            z = np.asarray(sel.transpose("momentum", "lr").values, float)
            im = ax.imshow(np.ma.masked_invalid(z), origin="lower", aspect="auto", cmap="viridis", norm=norm)
            ax.set_xticks(range(ds.sizes["lr"]), [f"{v:g}" for v in ds["lr"].values], rotation=45)
            ax.set_yticks(range(ds.sizes["momentum"]), [f"{v:g}" for v in ds["momentum"].values])
            ax.set_xlabel("lr η")
            ax.set_ylabel("momentum β")
            ax.set_title(", ".join(f"{d}={v:g}" for d, v in zip(facet_dims, facet)) or var, fontsize=9)
            for (i, j), val in np.ndenumerate(z):
                ax.text(j, i, "—" if not np.isfinite(val) else f"{val:.2g}", ha="center", va="center", fontsize=7, color="w")
        for ax in list(axes.flat)[len(facets):]:
            ax.axis("off")
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=var + (" (median over seeds)" if "seed" in ds.dims else ""))
        fig.suptitle(f"{var}: {ds.attrs.get('model', '')}, {ds.attrs.get('steps', '')} steps", fontsize=10)
        path = out / f"heatmap_{var}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def sweep_summary(ds: xr.Dataset) -> dict:
    """A JSON-ready summary: the configuration axes, status counts, timings and the best member.

    Example:
        >>> import numpy as np, xarray as xr
        >>> ds = xr.Dataset({"status": ("lr", np.array([0, 1])), "final_loss": ("lr", np.array([0.3, np.nan]))},
        ...                 coords={"lr": [0.1, 9.0]})
        >>> s = sweep_summary(ds); s["status"], s["best_final_loss"]["lr"]
        ({'ok': 1, 'diverged': 1, 'nan': 0}, 0.1)
    """
    status = np.asarray(ds["status"].values).ravel()
    summ = {
        "axes": {h: [float(v) if h not in ("batch_size", "seed") else int(v) for v in np.atleast_1d(ds[h].values)]
                 for h in HYPERS if h in ds.dims},
        "n_members": int(status.size),
        "status": {STATUS[c]: int((status == c).sum()) for c in STATUS},
        **{k: ds.attrs[k] for k in ("compile_time_s", "run_time_s", "chunks_run", "chunks_loaded", "n_devices", "versions") if k in ds.attrs},
    }
    for var in [v for v in ds.data_vars if v.startswith("error_") or v in ("final_loss", "test_accuracy")]:
        vals = np.asarray(ds[var].values, float)
        summ[var] = {"median": float(np.nanmedian(vals)) if np.isfinite(vals).any() else None,
                     "max": float(np.nanmax(vals)) if np.isfinite(vals).any() else None}
    fl = ds["final_loss"]
    if np.isfinite(fl.values).any():
        best = fl.where(np.isfinite(fl)).argmin(...)
        summ["best_final_loss"] = {d: (ds[d].values[int(i)].item() if d in ds.coords else int(i)) for d, i in best.items()}
        summ["best_final_loss"]["final_loss"] = float(np.nanmin(fl.values))
    return summ


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"`--{name}` must be a comma-separated list of numbers, got {text!r}.") from None


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"`--{name}` must be a comma-separated list of integers, got {text!r}.") from None


def _opt(help_: str):
    import typer

    return typer.Option(help=help_)


def sweep_command(
    lr: Annotated[str, _opt("learning rates η > 0, comma-separated, e.g. 0.01,0.03,0.1")] = "0.01,0.03,0.1",
    momentum: Annotated[str, _opt("momenta β in [0, 1), comma-separated")] = "0",
    weight_decay: Annotated[str, _opt("coupled weight decays λ ≥ 0, comma-separated")] = "0",
    batch_size: Annotated[str, _opt("mini-batch sizes, comma-separated (one compile per size)")] = "128",
    seeds: Annotated[int, _opt("number of seeds (0 .. n-1)")] = 2,
    init_scale: Annotated[str, _opt("initialisation scales (multiply all initial parameters), comma-separated")] = "1",
    steps: Annotated[int, _opt("training steps per member")] = 200,
    save_every: Annotated[int, _opt("save interval (divides --steps)")] = 10,
    model: Annotated[str, _opt("model name: mlp, mlp_tanh, mlp_layernorm, cnn_bn, vgg, vgg_bn")] = "mlp",
    width: Annotated[int, _opt("hidden width (MLP) or first channels (CNN)")] = 32,
    chunk_size: Annotated[int, _opt("members per compiled call (0: all at once)")] = 0,
    out: Annotated[Path, _opt("output folder: store/, sweep.nc, summary.json, heat maps")] = Path("runs/sweep"),
    progress: Annotated[bool, _opt("progress bar over chunks")] = True,
) -> None:
    """Sweep a grid on digits; resumable (run it again with the same options to finish a killed sweep)."""
    import typer

    try:
        ds = sweep(
            model, lr=_floats(lr, "lr"), momentum=_floats(momentum, "momentum"),
            weight_decay=_floats(weight_decay, "weight-decay"), batch_size=_ints(batch_size, "batch-size"),
            seed=seeds, init_scale=_floats(init_scale, "init-scale"), steps=steps, save_every=save_every, width=width,
            chunk_size=chunk_size or None, store=out / "store", progress=progress,
        )
    except (ValueError, TypeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "sweep.nc", bytes(ds.to_netcdf(None, engine="scipy")))
    summ = sweep_summary(ds)
    figs = sweep_figures(ds, out)
    summ["figures"] = [p.name for p in figs]
    (out / "summary.json").write_text(json.dumps(summ, indent=2, default=str))
    typer.echo(
        f"{summ['n_members']} members: {summ['status']}; compile {ds.attrs['compile_time_s']:.1f} s, "
        f"run {ds.attrs['run_time_s']:.1f} s ({ds.attrs['chunks_run']} chunks run, {ds.attrs['chunks_loaded']} loaded)"
    )
    typer.echo(f"wrote {out / 'sweep.nc'}, {out / 'summary.json'} and {len(figs)} heat maps in {out}")


__all__ = ["data_key", "status_names", "sweep", "sweep_command", "sweep_figures", "sweep_summary"]
