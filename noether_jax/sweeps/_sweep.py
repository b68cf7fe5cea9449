"""Hyperparameter sweeps: a grid of Recorders as one sharded, chunked, resumable compiled program (private)."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

from .. import _validate
from ..data import Dataset
from ..rules import check_optimizer, sweepable
from ..symmetry import MaskedSymmetry
from ..training import STATUS, Recorder
from . import _grid
from ._grid import HYPERS
from ._init import default_symmetries, init_models
from ._program import compiled, gather, put
from ._store import Store, config_hash, fingerprint

if TYPE_CHECKING:  # xarray is imported when a sweep runs, not with the library
    import xarray as xr


def sweep(
    model: Any = "mlp",
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
    optimizer: Any = None,
    init_scale_on: str = "all",
    floor: float = 1e-3,
    dtype: str = "float32",
    noether: bool = False,
    rmsprop: bool = False,
    eq17_forms: bool = False,
    sharpness_every: int = 0,
    flow: str | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> xr.Dataset:
    """Train and record a whole grid of configurations as one compiled, sharded program.

    Every member runs :meth:`noether_jax.Recorder.run` (real optax training on PRNG mini-batches,
    every group's conservation law measured next to the rule's theory and its exact discrete
    identity) from the model initialised with its seed.

    Args:
        model: a name in :data:`noether_jax.models.MODELS` (built with ``width`` for each seed by
            ``make_model(name, key=seed)``), a factory ``rngs -> nnx.Module`` (called with
            ``nnx.Rngs(seed)`` for each seed: any user model), or ``(net, init)`` with
            ``init(seed) -> (params, state)``.
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
            hash and every chunk's members and sha256. Calling again with the same arguments resumes:
            only missing chunks run; a truncated, corrupted or foreign chunk is recomputed with a
            warning. A store written by a different sweep, or a corrupt manifest, is refused.
        devices: the devices to shard the member axis over (default ``jax.devices()``).
        progress: show a tqdm progress bar over chunks, with a spinner and the elapsed time while a program compiles.
        symmetries: kind -> :class:`~noether_jax.symmetry.MaskedSymmetry` (or a tuple of them, as
            :class:`~noether_jax.Recorder` takes), or a callable ``(net, params, state) -> that``
            called on the first seed's model. Default: ``nj.symmetry.detect`` on the first seed's
            model and 64 training examples (the same groups for every member).
        optimizer: a learning rule whose η, β, λ the sweep replaces per member (default
            ``nj.rules.sgd``), or a factory ``Hyper -> optax.GradientTransformation`` (measured only).
            An optax transformation as it is cannot be swept and is refused. A list (``["sgd", "adam"]``,
            names in :data:`OPTIMIZERS` or rules) sweeps the optimiser as a dimension ``optimizer``: for
            adam and adamw the ``momentum`` axis is b₁ and ``weight_decay`` is AdamW's decoupled decay
            (for SGD it is coupled); ``attrs["optimizer"]`` says so. A rule without a law has NaN theory.
        floor: the error metric's floor (:func:`noether_jax.theory.relative_error`), per member and kind.
        noether: also record, per member and kind, kinetic symmetry breaking ``ksb_<kind>`` (the median over
            groups of the time average over the save points of |δ_gK| / 2K: exactly 0 for translation under
            SGD and heavy ball, > 0 for scale and rescale) and the charge budget integrated over the run,
            ``budget_<part>_<kind>`` per group (parts: dissipation, kinetic_asymmetry, metric, potential).
        rmsprop: train every member's mapped group RMSProp on the unit sphere in lockstep with it, on the same
            mini-batches (:class:`noether_jax.nld.RMSPropCompanion`; needs scale groups): ``rmsprop_angle_max``
            (the worst angle, in degrees, between the two runs' group directions) and ``rmsprop_lr_eff_error``
            (the worst relative error of lr/√G against η/r²).
        eq17_forms: also score every forcing of NLD eq. 17 (paper, noise_aware, spectral, lags, velocity) in both
            forms (bernoulli: inertia-free; oscillator: inertia kept) per member (:class:`noether_jax.nld.Eq17Forms`;
            needs scale groups; keeps per-step statistics, O(steps × groups) per member):
            ``eq17_<forcing>_<form>``, the median over scale groups of the relative error of the predicted r².
        sharpness_every: estimate λ_max every this many steps (a multiple of ``save_every`` dividing ``steps``;
            0: off): ``sharpness_max`` (the largest η·λ_max) and ``edge_of_stability`` (1 where η·λ_max passed
            the rule's threshold 2(1+β), 0 where not, NaN where unknown); such members get status 4.
        flow: ``"modified"`` or ``"gradient"``: integrate every member's continuous model (the modified flow,
            or gradient flow, of the full-batch loss, from the rule's initial velocity) with diffrax inside the
            same program, with a fixed step η/4 (ReLU networks are only piecewise smooth, and an adaptive
            solver crawls at every kink), and record ``flow_distance`` = |θ_flow(nη) − θₙ| / |θₙ| at the save
            points. Full-batch members only (``batch_size`` = the training-set size): a mini-batch run's
            continuous model is the SDE of :mod:`noether_jax.stochastic`. Use a smooth model (e.g.
            ``"mlp_tanh"``); a ReLU model is warned about.
        dtype: the precision of every member: ``"float32"`` (the default: sweeps are about throughput) or
            ``"float64"`` (needs ``nj.enable_x64()``). The model's parameters and state, the data and the
            hyperparameters are cast to it (``attrs["dtype"]`` says which).
        on_chunk: called as ``on_chunk(done, total)`` after each chunk (and its store write).

    Returns:
        An :class:`xarray.Dataset` with dimensions ``lr, momentum, weight_decay, batch_size, seed,
        init_scale`` (always all six, length 1 when not swept; ``member`` instead for a list of
        configurations), ``time`` (coordinate ``step``; data variable ``t = step · lr``) and
        ``<kind>_group``; variables ``measured_<kind>``, ``theory_<kind>``, ``identity_<kind>``,
        ``loss`` (mean mini-batch loss since the previous save), ``nld_r4`` (scale groups),
        summaries ``error_median_<kind>`` / ``error_max_<kind>`` (theory vs measured, over groups),
        ``identity_error_median_<kind>``, ``final_loss`` (full training set), ``test_accuracy``,
        ``status`` (0 ok, 1 diverged, 2 nan, 3 invalid, 4 edge of stability: see ``status.attrs``)
        and ``diverged_step``. A diverged member's series are NaN after its divergence (all of them
        for ``nan`` and ``invalid``) and its summaries NaN; the other members are unaffected.
        ``attrs`` hold ``compile_time_s`` (tracing, lowering and XLA), ``xla_compile_time_s``,
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
        >>> import noether_jax as nj
        >>> ds = nj.sweep(lr=[0.05, 0.1], momentum=[0.0, 0.9], seed=2, steps=20, save_every=10, width=8,
        ...               batch_size=32, progress=False)
        >>> dict(ds.sizes)["lr"], dict(ds.sizes)["seed"], dict(ds.sizes)["time"]
        (2, 2, 3)
        >>> ds.status.values.ravel().tolist() == [0] * 8
        True
    """
    t_all = time.perf_counter()
    if isinstance(optimizer, list | tuple) and not isinstance(optimizer, optax.GradientTransformation):  # a NamedTuple
        return _over_optimizers(model, locals())
    plan = _plan(model, locals())
    ds = _execute(plan, devices=devices, chunk_size=chunk_size, store=store, progress=progress, on_chunk=on_chunk)
    ds.attrs["total_time_s"] = time.perf_counter() - t_all
    return ds


# the optimiser dimension: what the swept η, β and λ mean for each named rule
OPTIMIZERS = {
    "sgd": "η = lr, β = heavy-ball momentum, λ = coupled weight decay (the gradient of (λ/2)|θ|²)",
    "adam": "η = lr, β = b1 (b2 = 0.999, eps = 1e-8), λ must be 0",
    "adamw": "η = lr, β = b1 (b2 = 0.999, eps = 1e-8), λ = decoupled weight decay (AdamW's, applied to θ apart from the gradient)",
    "rmsprop": "η = lr (decay = 0.9, eps = 1e-8), β and λ must be 0",
}


def _named_rule(name: Any):
    from .. import rules

    if not isinstance(name, str):
        return name
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} in the `optimizer` list: use a rule or one of {sorted(OPTIMIZERS)}.")
    return {"sgd": None, "adam": rules.adam(lr=0.1), "adamw": rules.adamw(lr=0.1), "rmsprop": rules.rmsprop(lr=0.1)}[name]


def _over_optimizers(model: Any, args: dict) -> xr.Dataset:
    """``optimizer=[...]``: one sweep per optimiser (each its own compiled program: their states differ),
    joined along an ``optimizer`` dimension; variables one optimiser lacks are NaN for it."""
    import xarray as xr

    names = [o if isinstance(o, str) else type(o).__name__.lower() for o in args["optimizer"]]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"`optimizer` must list distinct optimisers, got {names}.")
    rules_ = [_named_rule(o) for o in args["optimizer"]]  # refuse an unknown name before any compile
    kw = {k: v for k, v in args.items() if k not in ("model", "optimizer", "t_all")}
    parts = []
    from ..rules import LearningRule

    for name, rule in zip(names, rules_, strict=True):
        store = None if kw["store"] is None else os.path.join(os.fspath(kw["store"]), name)
        sgd_only = {} if rule is None or isinstance(rule, LearningRule) else dict(rmsprop=False, eq17_forms=False, flow=None)
        parts.append(sweep(model, **(kw | sgd_only | {"optimizer": rule, "store": store})))  # SGD-only physics: NaN
    every = sorted(set().union(*(p.data_vars for p in parts)))
    for p in parts:
        for v in every:
            if v not in p.data_vars:
                ref = next(q[v] for q in parts if v in q.data_vars)
                p[v] = xr.full_like(ref, np.nan, dtype=float)
    ds = xr.concat(parts, dim=xr.DataArray(names, dims="optimizer", name="optimizer"), data_vars="all", coords="minimal",
                   compat="override", combine_attrs="override")
    ds.attrs["optimizer"] = "; ".join(f"{n}: {OPTIMIZERS.get(n, 'a rule: its with_hyper maps η, β, λ')}" for n in names)
    for k in ("compile_time_s", "xla_compile_time_s", "run_time_s", "chunks_run", "chunks_loaded"):
        ds.attrs[k] = sum(p.attrs.get(k, 0) for p in parts)
    ds.attrs["total_time_s"] = time.perf_counter() - args["t_all"]
    return ds


class _Plan:
    """Everything a sweep needs before it compiles: validated members, models, groups, config."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _plan(model: Any, args: dict) -> _Plan:
    if args["init_scale_on"] not in ("all", "scale"):
        raise ValueError(f"`init_scale_on` must be 'all' or 'scale', got {args['init_scale_on']!r}.")
    steps = _int_arg("steps", args["steps"])
    save_every = _int_arg("save_every", args["save_every"])
    if steps % save_every:
        raise ValueError(f"invalid `save_every` value {save_every!r}: it must be a positive divisor of `steps` ({steps}).")
    if args["chunk_size"] is not None:
        _int_arg("chunk_size", args["chunk_size"])
    optimizer = args["optimizer"]
    check_optimizer(optimizer)
    if not sweepable(optimizer):
        raise TypeError("a sweep varies η, β and λ, but an optax transformation passed as it is has fixed hyperparameters: "
                        "pass an nj.rules rule (e.g. nj.rules.sgd(lr=0.1)), or a factory `hyper -> transformation` built "
                        "with optax.inject_hyperparams.")
    dtype = jnp.dtype(args["dtype"])
    if dtype not in (jnp.dtype("float32"), jnp.dtype("float64")):
        raise ValueError(f"`dtype` must be 'float32' or 'float64', got {args['dtype']!r}.")
    if dtype == jnp.dtype("float64") and not jax.config.jax_enable_x64:
        raise ValueError("`dtype='float64'` needs float64 enabled: call nj.enable_x64() first (or use dtype='float32').")
    seed = args["seed"]
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        seed = list(range(_int_arg("seed", seed)))  # an int is a number of seeds (0 .. n-1)
    data = args["data"]
    if data is None:
        from ..data import digits

        data = digits()
    data = data._replace(x_train=data.x_train.astype(dtype), x_test=data.x_test.astype(dtype)) \
        if jnp.issubdtype(data.x_train.dtype, jnp.floating) else data
    vals = {h: _grid.values(h, seed if h == "seed" else args[h]) for h in HYPERS}
    members = _grid.members(args["grid"], vals)
    for m in members:
        for h in HYPERS:
            _grid.check_value(h, m[h], int(data.x_train.shape[0]))
    _check_options(args, members, data)
    seeds = sorted({m["seed"] for m in members})
    name, net, params_by_seed, state_by_seed = init_models(model, seeds, data, args["width"], dtype)
    p0 = jax.tree.map(lambda a: a[0], params_by_seed)
    s0 = jax.tree.map(lambda a: a[0], state_by_seed)
    syms = default_symmetries(args["symmetries"], net, p0, s0, data)
    if args["init_scale_on"] == "scale" and "scale" not in syms:
        raise ValueError("`init_scale_on='scale'` needs scale groups, but the model has none; use init_scale_on='all'.")
    _check_physics(args, syms, data, net, p0, s0)
    return _Plan(name=name, net=net, params=params_by_seed, state=state_by_seed, seeds=seeds, syms=syms, data=data,
                 members=members, values=vals, cartesian=args["grid"] is True, steps=steps, save_every=save_every,
                 optimizer=optimizer, width=args["width"], init_scale_on=args["init_scale_on"], floor=float(args["floor"]),
                 dtype=dtype, noether=bool(args["noether"]), rmsprop=bool(args["rmsprop"]), eq17_forms=bool(args["eq17_forms"]),
                 sharpness_every=int(args["sharpness_every"]), flow=args["flow"])


def _recorder(plan: _Plan, batch_size: int) -> Recorder:
    from ..nld import Eq17Forms, RMSPropCompanion

    companions = (RMSPropCompanion(plan.syms["scale"]),) if plan.rmsprop else ()
    companions += (Eq17Forms(plan.syms["scale"], steps=plan.steps),) if plan.eq17_forms else ()
    return Recorder(plan.net, plan.syms, plan.data.x_train, plan.data.y_train, batch_size=batch_size, steps=plan.steps,
                    save_every=plan.save_every, optimizer=plan.optimizer, noether=plan.noether, companions=companions,
                    sharpness_every=plan.sharpness_every, save_params=plan.flow is not None)


def _check_options(args: dict, members: list, data) -> None:
    """Refuse, before the model is built or its symmetries found, the options the sweep cannot honour whatever the
    model (naming the argument and the fix)."""
    every = _int_arg("sharpness_every", args["sharpness_every"], minimum=0)
    if every and (every % args["save_every"] or args["steps"] % every):
        raise ValueError(f"invalid `sharpness_every` value {every}: it must be a multiple of `save_every` ({args['save_every']}) "
                         f"that divides `steps` ({args['steps']}).")
    from ..rules import LearningRule

    sgd_like = args["optimizer"] is None or isinstance(args["optimizer"], LearningRule)
    for opt in ("rmsprop", "eq17_forms"):
        if args[opt] and not sgd_like:
            raise ValueError(f"`{opt}=True` maps heavy-ball SGD (NLD), but the optimiser is {type(args['optimizer']).__name__}: "
                             "use optimizer=None or nj.rules.sgd(...).")
    flow = args["flow"]
    if flow is None:
        return
    if flow not in ("modified", "gradient"):
        raise ValueError(f"`flow` must be 'modified', 'gradient' or None, got {flow!r}.")
    if not sgd_like:
        raise ValueError(f"`flow` integrates SGD's modified or gradient flow, but the optimiser is "
                         f"{type(args['optimizer']).__name__}: use optimizer=None (SGD) or nj.rules.sgd(...); an adaptive "
                         "rule's continuous model is nj.simulate(rule.flow(loss), params, ...).")
    n = int(data.x_train.shape[0])
    small = sorted({m["batch_size"] for m in members if m["batch_size"] < n})
    if small:
        raise ValueError(f"`flow` needs full-batch members (batch_size = {n}), but batch sizes {small} draw mini-batches: "
                         "the continuous model of mini-batch SGD is the SDE of noether_jax.stochastic (SGDSDE, sde_ensemble).")


def _check_physics(args: dict, syms: dict, data, net, params, state) -> None:
    """The model-dependent checks, once its symmetries are found: scale groups where the options need them, and a
    warning where a flow is asked of a model with kinks."""
    for opt in ("rmsprop", "eq17_forms"):
        if args[opt] and ("scale" not in syms or isinstance(syms["scale"], tuple)):
            raise ValueError(f"`{opt}=True` needs the model's scale groups (one Scale symmetry, e.g. a BatchNorm CNN); "
                             "this model has none.")
    if args["flow"] is not None and _piecewise(net, params, state, data.x_train[:2]):
        warnings.warn("noether_jax sweep: this model has kinks (ReLU/max/abs), so its flow is only piecewise smooth and "
                      "flow_distance carries the solver's error at the kinks too; a smooth model (e.g. 'mlp_tanh') gives a "
                      "clean order in η.", stacklevel=4)


def _piecewise(net, params, state, x) -> bool:
    """True when the forward pass uses a piecewise-linear primitive (max, min, abs, sign)."""
    jaxpr = jax.make_jaxpr(lambda p: net(p, state, x, train=True)[0])(params)

    def walk(jp) -> bool:
        for eqn in jp.eqns:
            if eqn.primitive.name in ("max", "min", "abs", "sign"):
                return True
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                if walk(sub):
                    return True
        return False

    return walk(jaxpr.jaxpr)


def _int_arg(name: str, value: Any, minimum: int = 1) -> int:
    try:
        return _validate.integer(name, value, minimum=minimum)
    except (TypeError, ValueError) as e:
        raise type(e)(f"invalid `{name}` value {value!r}: {e} Nothing was run.") from None


def _config(plan: _Plan, chunk_of: dict) -> dict:
    data = plan.data
    return {
        "model": plan.name or f"custom:{fingerprint(plan.params)}", "width": plan.width, "steps": plan.steps,
        "save_every": plan.save_every, "members": plan.members, "chunk_size": {str(b): c for b, c in chunk_of.items()},
        "data": fingerprint((data.x_train, data.y_train, data.x_test, data.y_test)),
        "init": fingerprint((plan.params, plan.state)),
        "symmetries": fingerprint(plan.syms) + str(jax.tree.structure(plan.syms)), "init_scale_on": plan.init_scale_on,
        "floor": plan.floor, "dtype": str(plan.dtype),
        "physics": [plan.noether, plan.rmsprop, plan.sharpness_every, plan.flow] + ([True] if plan.eq17_forms else []),
        "optimizer": "sgd" if plan.optimizer is None else f"{type(plan.optimizer).__name__}:{fingerprint(plan.optimizer)}",
    }


def _execute(plan: _Plan, *, devices, chunk_size, store, progress, on_chunk) -> xr.Dataset:
    from tqdm.auto import tqdm

    from .._progress import spinner

    devs = list(devices) if devices is not None else jax.devices()
    mesh = Mesh(np.array(devs), ("member",))
    n_dev = len(devs)
    batch_sizes = list(dict.fromkeys(m["batch_size"] for m in plan.members))
    groups = [[i for i, m in enumerate(plan.members) if m["batch_size"] == b] for b in batch_sizes]
    chunk_of = {b: -(-(chunk_size or len(g)) // n_dev) * n_dev for b, g in zip(batch_sizes, groups, strict=True)}
    config = json.loads(json.dumps(_config(plan, chunk_of), default=str))
    st = Store(store, config, writer=jax.process_index() == 0) if store is not None else None
    repl, mem = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("member"))
    shared_host = (plan.params, plan.state, plan.data.x_test, plan.data.y_test)
    shared = jax.tree.map(lambda a: put(a, repl), shared_host)
    seed_pos = {s: i for i, s in enumerate(plan.seeds)}
    fdt = plan.dtype
    n_chunks = sum(-(-len(g) // chunk_of[b]) for b, g in zip(batch_sizes, groups, strict=True))
    results: dict[int, dict[str, np.ndarray]] = {}
    t = {"compile": 0.0, "xla": 0.0, "run": 0.0, "ran": 0, "loaded": 0}
    bar = tqdm(total=n_chunks, desc="sweep chunks", unit="chunk", disable=not progress)
    done = 0
    for g, (b, idx) in enumerate(zip(batch_sizes, groups, strict=True)):
        chunk = chunk_of[b]
        rec = _recorder(plan, b)
        exe = dynamic = None
        for c, start in enumerate(range(0, len(idx), chunk)):
            ids = np.asarray(idx[start : start + chunk])
            cfgs = [plan.members[int(i)] for i in ids]
            out = st.load(g, c, ids, cfgs) if st is not None else None
            if out is not None:
                t["loaded"] += 1
            else:
                if exe is None:
                    with spinner(f"compiling (batch size {b})", enabled=progress, bar=bar):  # the elapsed compile time
                        exe, dynamic, dt, dx = compiled(rec, shared_host, chunk, mesh, scale_only=plan.init_scale_on == "scale",
                                                        floor=plan.floor, dtype=fdt, flow=plan.flow)
                    t["compile"] += dt
                    t["xla"] += dx
                    dynamic = jax.tree.map(lambda a: put(a, repl), dynamic)
                padded = np.concatenate([ids, np.full(chunk - len(ids), ids[0])])
                ms = [plan.members[i] for i in padded]
                args = [
                    np.array([seed_pos[m["seed"]] for m in ms], np.int32), np.array([m["seed"] for m in ms], np.int32),
                    *(np.array([m[h] for m in ms], fdt) for h in ("lr", "momentum", "weight_decay", "init_scale")),
                ]
                t0 = time.perf_counter()
                res = exe(dynamic, *shared, *(put(a, mem) for a in args))
                out = {k: v[: len(ids)] for k, v in gather(res).items()}
                t["run"] += time.perf_counter() - t0
                t["ran"] += 1
                if st is not None:
                    st.save(g, c, ids, out, cfgs)
            for j, i in enumerate(ids):
                results[int(i)] = {k: v[j] for k, v in out.items()}
            done += 1
            bar.update(1)
            if on_chunk is not None:
                on_chunk(done, n_chunks)
    bar.close()
    ds = _assemble(results, plan.members, plan.values, plan.cartesian, plan.syms, plan.steps, plan.save_every)
    ds.attrs.update(
        compile_time_s=t["compile"], xla_compile_time_s=t["xla"], run_time_s=t["run"], chunks_run=t["ran"],
        chunks_loaded=t["loaded"], n_devices=n_dev, n_members=len(plan.members),
        config_hash=config_hash(config),
        batch_size_groups=len(batch_sizes), model=str(plan.name or "custom"), steps=plan.steps, save_every=plan.save_every,
        init_scale_on=plan.init_scale_on, dtype=str(fdt), versions=_versions(),
        optimizer="sgd (heavy ball, coupled weight decay)" if plan.optimizer is None else type(plan.optimizer).__name__,
    )
    return ds


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for p in ("noether_jax", "jax", "jaxlib", "equinox", "optax", "flax", "xarray"):
        try:
            out.append(f"{p}={version(p)}")
        except PackageNotFoundError:  # e.g. running from a source tree: recorded as such, not hidden
            out.append(f"{p}=not installed")
    return ", ".join(out)


def _assemble(results, members, values, cartesian: bool, syms, steps: int, save_every: int) -> xr.Dataset:
    import xarray as xr

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
        if k in ("loss", "flow_distance"):
            return ["time"]
        if k == "nld_r4":
            return ["time", "scale_group"]
        for kind in syms:
            if k in (f"measured_{kind}", f"theory_{kind}", f"identity_{kind}"):
                return ["time", f"{kind}_group"]
            if k.startswith("budget_") and k.endswith(f"_{kind}"):
                return [f"{kind}_group"]
        return []

    for k, v in stacked.items():
        ds[k] = (mdims + dims_of(k), v.reshape(mshape + list(v.shape[1:])))
    lr = ds["lr"]
    ds["t"] = lr * ds["step"]
    ds["t"].attrs["long_name"] = "continuous time t = step · lr"
    ds["status"].attrs.update(flag_values=list(STATUS), flag_meanings=" ".join(STATUS.values()),
                              description="0 ok; 1 diverged (loss exploded: series NaN after diverged_step); 2 nan (not finite: "
                                          "all NaN); 3 invalid (a hyperparameter out of its domain: all NaN); 4 edge_of_stability "
                                          "(η·λ_max beyond the rule's threshold: kept, but not a test of the continuous theory)")
    for kind in syms:
        ds[f"error_median_{kind}"].attrs["description"] = (f"median over {kind} groups of max_t |theory - measured| / "
                                                           "max(|measured|, floor · median group scale)")
    for var in ds.data_vars:
        text = _DESCRIPTIONS.get(var) or next((t for p, t in _DESCRIPTIONS.items() if p.endswith("_") and var.startswith(p)), None)
        if text is not None:
            ds[var].attrs.setdefault("description", text.format(kind=var.rsplit("_", 1)[-1]))
    return ds


# what each optional variable means (the sweep's ``noether``, ``rmsprop``, ``sharpness_every`` and ``flow`` options)
_DESCRIPTIONS = {
    "ksb_": "kinetic symmetry breaking: median over {kind} groups of the time average over the save points of |δK| / 2K "
            "at (θ, v) of the step before each save point (dimensionless; 0: the learning rule keeps the symmetry)",
    "budget_dissipation_": "charge budget, dissipation part −∫ρQ̃ dt over the run, per {kind} group",
    "budget_kinetic_asymmetry_": "charge budget, kinetic symmetry breaking part ∫δK dt over the run, per {kind} group",
    "budget_metric_": "charge budget, non-Euclidean metric part over the run, per {kind} group (0 for a Euclidean kinetic energy)",
    "budget_potential_": "charge budget, potential part −∫δV dt over the run (weight decay's breaking), per {kind} group",
    "rmsprop_angle_max": "worst angle (degrees) between the SGD run's and its mapped group RMSProp's group directions, "
                         "trained in lockstep on the same mini-batches",
    "rmsprop_lr_eff_error": "worst relative error of the mapped RMSProp's lr/√G against SGD's effective step η/r²",
    "sharpness_max": "largest η·λ_max over the sharpness estimates (λ_max: top Hessian eigenvalue of the mini-batch loss, Lanczos)",
    "edge_of_stability": "1 where η·λ_max passed the rule's threshold 2(1+β), 0 where not, NaN where no threshold is known",
    "eq17_": "NLD eq. 17 with one forcing and form (eq17_<forcing>_<form>): median over scale groups of the relative error "
             "(max over the steps) of the predicted r² against the measured r²",
    "eq17_error_median": ("median over scale groups of the relative error (max over the save points) of r² = √r⁴ "
                          "from NLD eq. 17 (the paper's forcing) against the measured r² = |θ_𝒜|²"),
    "flow_distance": "|θ_flow(t) − θₙ| / |θₙ| at the save points, t = nη: the discrete iterates against the continuous model",
}


def status_names(ds: xr.Dataset) -> xr.DataArray:
    """The ``status`` codes of a sweep as strings (``ok``, ``diverged``, ``nan``, ``invalid``, ``edge_of_stability``).

    Example:
        >>> import xarray as xr, numpy as np, noether_jax as nj
        >>> nj.status_names(xr.Dataset({"status": ("m", np.array([0, 2]))})).values.tolist()
        ['ok', 'nan']
    """
    import xarray as xr

    return xr.apply_ufunc(np.vectorize(STATUS.get, otypes=[object]), ds["status"])


def sweep_summary(ds: xr.Dataset) -> dict:
    """A JSON-ready summary: the configuration axes, status counts, timings and the best member.

    Example:
        >>> import numpy as np, xarray as xr, noether_jax as nj
        >>> ds = xr.Dataset({"status": ("lr", np.array([0, 1])), "final_loss": ("lr", np.array([0.3, np.nan]))},
        ...                 coords={"lr": [0.1, 9.0]})
        >>> s = nj.sweep_summary(ds); s["status"]["ok"], s["status"]["diverged"], s["best_final_loss"]["lr"]
        (1, 1, 0.1)
    """
    status = np.asarray(ds["status"].values).ravel()
    summ = {
        "axes": {h: [float(v) if h not in ("batch_size", "seed") else int(v) for v in np.atleast_1d(ds[h].values)]
                 for h in HYPERS if h in ds.dims},
        "n_members": int(status.size),
        "status": {STATUS[c]: int((status == c).sum()) for c in STATUS},
        **{k: ds.attrs[k] for k in ("compile_time_s", "xla_compile_time_s", "run_time_s", "chunks_run", "chunks_loaded", "n_devices", "versions") if k in ds.attrs},
    }
    scalars = [v for v in ds.data_vars if v.startswith(("error_", "ksb_", "eq17_")) or v in ("final_loss", "test_accuracy")]
    for var in scalars + [v for v in _DESCRIPTIONS if v in ds.data_vars and not v.endswith("_") and v not in scalars]:
        vals = np.asarray(ds[var].isel(time=-1).values if "time" in ds[var].dims else ds[var].values, float)
        summ[var] = {"median": float(np.nanmedian(vals)) if np.isfinite(vals).any() else None,
                     "max": float(np.nanmax(vals)) if np.isfinite(vals).any() else None}
    fl = ds["final_loss"]
    if np.isfinite(fl.values).any():
        best = fl.where(np.isfinite(fl)).argmin(...)
        summ["best_final_loss"] = {d: (ds[d].values[int(i)].item() if d in ds.coords else int(i)) for d, i in best.items()}
        summ["best_final_loss"]["final_loss"] = float(np.nanmin(fl.values))
    return summ


__all__ = ["OPTIMIZERS", "status_names", "sweep", "sweep_summary"]
