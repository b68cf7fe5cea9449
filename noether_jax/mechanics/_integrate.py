"""Integration of continuous models with diffrax: :func:`simulate` and :class:`Trajectory`."""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float, PyTree

from .._tree import as_time, is_concrete, tree_finite, tree_vdot
from .._validate import check_same_structure, positive_definite
from ._lagrangian import AbstractDynamics


class RESULTS(diffrax.RESULTS):  # type: ignore[misc]
    """diffrax's results, and the checks of :func:`simulate` at the initial state (named, so that a
    ``throw=False`` member that failed one says which)."""

    invalid_hyperparameter = ("a constant of the system (mass, damping, friction, weight decay, …) is outside its domain: "
                              "see system.checks(), e.g. a negative learning rate gives a negative mass")
    nonfinite_potential = "the potential V(q, t) or its gradient is not finite at the initial state (a NaN loss?)"
    indefinite_metric = "the kinetic metric is not positive definite at the initial state (random Rayleigh quotients ≤ 0)"


_PROBES = 8  # random Rayleigh quotients per metric check: an indefinite metric escapes all with probability ≤ 2⁻⁸


def _rayleigh(system: AbstractDynamics, y0, t0) -> jax.Array:
    """wᵀMw/|w|² for a few random w: M the kinetic metric (order 2) or the flow's metric (None: no metric)."""
    if system.order == 2:
        kin, (q, v) = system.kinetic, y0
    elif getattr(system, "metric", None) is not None:
        kin, q = system.metric, system.split(y0)[0]
        v = q
    else:
        return jnp.ones((1,))
    leaves, treedef = jax.tree.flatten(v)
    keys = jax.random.split(jax.random.key(0), _PROBES)

    def one(k):
        w = jax.tree.unflatten(treedef, [jax.random.normal(jax.random.fold_in(k, i), jnp.shape(x), jnp.result_type(x, float))
                                         for i, x in enumerate(leaves)])
        return tree_vdot(w, kin.mass_apply(q, v, t0, w)) / tree_vdot(w, w)

    return jax.vmap(one)(keys)


def _initial(system: AbstractDynamics, y0, t0):
    """What the checks need at the initial state: the constants' checks, V, whether ∇V is finite, and
    the metric's Rayleigh quotients (traced-safe)."""
    q = y0[0] if system.order == 2 else system.split(y0)[0]  # a first-order state may carry accumulators
    value, grad = jax.value_and_grad(system.V)(q, t0)
    return system.checks(), value, tree_finite(grad), _rayleigh(system, y0, t0)


def _diagnose(system: AbstractDynamics, y0, t0) -> dict[str, jax.Array]:
    """Traced-safe checks at the initial state: the system's constants, V and ∇V finite, a positive metric."""
    checks, value, grad_ok, r = _initial(system, y0, t0)
    ok = jnp.asarray(True)
    for c in checks.values():
        ok = ok & jnp.all(c)
    return {"constants": ok, "potential": jnp.isfinite(value) & grad_ok, "metric": jnp.all(jnp.isfinite(r) & (r > 0))}


_DIAGNOSIS = {"constants": "invalid_hyperparameter", "potential": "nonfinite_potential", "metric": "indefinite_metric"}
_precheck = eqx.filter_jit(_initial)


def _check_concrete(system: AbstractDynamics, y0, t0) -> None:
    """Named errors before the solve compiles: constants out of their domain, a NaN potential, a bad metric."""
    checks, value, grad_ok, rayleigh = _precheck(system, y0, t0)
    bad = [k for k, ok in checks.items() if not bool(np.all(np.asarray(ok)))]
    if bad:
        raise ValueError(f"simulate: the system's {', '.join(f'`{b}`' for b in bad)} is outside its domain "
                         f"(values: {[np.asarray(_constant(system, b)).tolist() for b in bad]}); see system.checks().")
    if not (np.isfinite(np.asarray(value)) and bool(grad_ok)):
        raise ValueError(f"simulate: the potential V(q, t) at the initial state `q0` is {float(value)!r} or has a "
                         "non-finite gradient: check the loss for NaN (e.g. log or sqrt of a negative number) at q0.")
    positive_definite(rayleigh, "the kinetic metric M = ∂²K/∂v²" if system.order == 2 else "the flow's metric G")


def _constant(system: Any, name: str) -> Any:
    """The value behind a check name such as ``kinetic.mass`` (looked up on the system, then its potential)."""
    for root in (system, getattr(system, "potential", None)):
        obj = root
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            return obj
    return np.nan


def _check_ts(ts: Any, t0: jax.Array, t1: jax.Array) -> None:
    if jnp.ndim(ts) != 1:
        raise ValueError(f"`ts` must be a 1-D array of save times, got shape {jnp.shape(ts)}; pass e.g. jnp.linspace(t0, t1, n).")
    if is_concrete((ts, t0, t1)):
        a = np.asarray(ts)
        if a.size and not np.all(np.isfinite(a)):
            raise ValueError("`ts` holds non-finite times; every save time must be finite.")
        if a.size > 1 and np.any(np.diff(a) < 0):
            i = int(np.argmax(np.diff(a) < 0))
            raise ValueError(f"`ts` must be increasing, but ts[{i}] = {a[i]} > ts[{i + 1}] = {a[i + 1]}; sort it (jnp.sort).")
        if a.size and (a.min() < float(t0) or a.max() > float(t1)):
            raise ValueError(f"`ts` must lie in [t0, t1] = [{float(t0)}, {float(t1)}], got times from {a.min()} to {a.max()}.")


def _runtime_message(e: Exception) -> str:
    """The library's own message inside an EquinoxRuntimeError (without JAX's stack and debugging hints)."""
    text = str(e)
    core = text.split("EquinoxRuntimeError: ", 1)[-1].split("\n\n-------------------", 1)[0]
    return core.strip()


class Trajectory(eqx.Module):
    """The output of :func:`simulate`.

    Attributes:
        ts: save times, shape ``(n,)``.
        q: positions, a pytree like ``q0`` with a leading axis of length ``n``.
        v: velocities q̇ at the save times (for first-order flows, the flow's velocity).
        result: an ``nj.RESULTS`` value (diffrax's results and the initial-state checks of
            :func:`simulate`: ``invalid_hyperparameter``, ``nonfinite_potential``, ``indefinite_metric``);
            ``RESULTS.successful`` unless the solve or a check failed (with ``throw=False`` a failure is
            returned as data, per member under ``vmap``; unsaved points are ``inf``).
        stats: diffrax's statistics (number of steps, accepted and rejected steps, …).
        aux: the auxiliary state at the save times (an adaptive rule's accumulators), or None.
    """

    ts: Float[Array, " n"]
    q: PyTree
    v: PyTree
    result: RESULTS
    stats: dict[str, Any]
    aux: PyTree = None

    @property
    def successful(self) -> jax.Array:
        return self.result == RESULTS.successful


def _array(x: Any, dtype) -> Any:
    """``x`` as an array of ``dtype`` without a device dispatch per argument: a JAX array of that dtype as
    it is, a tracer cast inside the trace, a Python or NumPy value as NumPy (moved with the call's arguments)."""
    if isinstance(x, jax.Array):
        return x if x.dtype == dtype else x.astype(dtype)
    return np.asarray(x, dtype=dtype)


def _default_solver() -> diffrax.AbstractSolver:
    return diffrax.Tsit5()


def _flat(field, unravel):
    """The vector field on one flat vector: diffrax's per-leaf work (error norms, the stage sums of an
    explicit Runge–Kutta step) becomes one fused kernel instead of one per leaf."""

    def flat_field(t, y, args):
        return ravel_pytree(field(t, unravel(y), args))[0]

    return flat_field


def _on_pytree(saveat: diffrax.SaveAt, unravel) -> diffrax.SaveAt:
    """Every saved value (``fn(t, y, args)``, by default y itself) is computed from the state as a pytree,
    so the trajectory comes back in the user's structure."""

    def wrap(sub):
        fn = sub.fn
        return eqx.tree_at(lambda s: s.fn, sub, lambda t, y, args: fn(t, unravel(y), args))

    is_sub = lambda x: isinstance(x, diffrax.SubSaveAt)  # noqa: E731
    return eqx.tree_at(lambda s: s.subs, saveat, jax.tree.map(wrap, saveat.subs, is_leaf=is_sub), is_leaf=lambda x: x is None)


@eqx.filter_jit
def _solve(system, y0, t0, t1, saveat, solver, controller, dt0, max_steps, adjoint, args, progress_meter, throw):
    field = system.vector_field()
    diag = _diagnose(system, y0, t0)
    if throw:  # inside a user's jit: a bad member raises, naming the check (with throw=False it is data)
        for name, ok in system.checks().items():
            y0 = eqx.error_if(y0, ~jnp.all(ok), f"simulate: the system's `{name}` is outside its domain (a traced value; "
                                                 "e.g. a negative learning rate gives a negative mass)")
        for k in ("potential", "metric"):
            y0 = eqx.error_if(y0, ~diag[k], f"simulate: {RESULTS[getattr(RESULTS, _DIAGNOSIS[k])]}")
    flat0, unravel = ravel_pytree(y0)  # any pytree state → one vector (a common dtype; unravel casts back)
    saveat = _on_pytree(saveat, unravel)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_flat(field, unravel)),
        solver,
        t0,
        t1,
        dt0,
        flat0,
        args,
        saveat=saveat,
        stepsize_controller=controller,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=throw,
        progress_meter=progress_meter,
    )
    aux = None
    if system.order == 2:
        q, v = sol.ys
    else:
        q, aux = system.split(sol.ys)
        v = system.split(jax.vmap(lambda t, y: field(t, y, args))(sol.ts, sol.ys))[0]
    result = RESULTS.promote(sol.result)
    for k, name in reversed(_DIAGNOSIS.items()):  # a failed check at the start outranks what the solver then did;
        # the constants come last, so they name the cause when they are also why the metric is indefinite
        result = RESULTS.where(diag[k], result, getattr(RESULTS, name))
    return Trajectory(ts=sol.ts, q=q, v=v, result=result, stats=sol.stats, aux=aux)


def simulate(
    system: AbstractDynamics,
    q0: PyTree,
    v0: PyTree | None = None,
    *,
    t1: ArrayLike,
    t0: ArrayLike = 0.0,
    ts: Float[ArrayLike, " n"] | None = None,
    saveat: diffrax.SaveAt | None = None,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    dt0: ArrayLike | None = None,
    max_steps: int | None = 16384,
    adjoint: diffrax.AbstractAdjoint | None = None,
    args: Any = None,
    progress_meter: diffrax.AbstractProgressMeter | None = None,
    throw: bool = True,
) -> Trajectory:
    """Integrate a continuous model (a :class:`Lagrangian` or a first-order flow) with diffrax.

    Args:
        system: an ``nj.Lagrangian`` (state ``(q, v)``) or a first-order flow such as
            ``nj.GradientFlow`` (state ``q``; leave ``v0`` out). An adaptive rule's flow
            (``nj.rules.adam(...).flow(loss)``) brings its own initial accumulators, integrated with
            ``q`` and returned as ``Trajectory.aux``.
        q0, v0: initial position and velocity, pytrees of the same structure.
        t1, t0: the time span (one optimiser step is ``lr`` units of time).
        ts: times at which to save; default: only ``t1``. ``saveat`` overrides it.
        solver: any diffrax ODE solver; default ``diffrax.Tsit5()``. Explicit solvers keep the
            integration matrix-free; diffrax's implicit solvers build dense Jacobians, so keep them for
            small stiff problems.
        rtol, atol: tolerances of the default PID step-size controller.
        stepsize_controller: overrides the PID controller (e.g. ``diffrax.ConstantStepSize()`` with ``dt0``).
        dt0: the first step; default: chosen by the controller.
        max_steps: the most solver steps; past it the solve fails (see ``throw``).
        throw: raise on failure (default). With ``throw=False`` failure is data: check
            ``trajectory.result`` against ``nj.RESULTS``.

    Before compiling, concrete inputs are checked and refused with a named error: the system's
    constants (``system.checks()``: mass, damping, friction, weight decay, and a rule's η and β), ``ts``
    (1-D, finite, increasing, inside [t0, t1]), V and ∇V finite at ``q0``, and the kinetic metric
    positive definite at ``(q0, v0)`` (random Rayleigh quotients). Inside ``jit``/``vmap`` the same checks
    give each member its own ``result`` (``throw=False``) or raise naming the failed check (``throw=True``).

    The call is jit-compiled; a second call with new values (``q0``, ``t1``, ``ts``, hyperparameters
    stored as arrays in ``system``) of the same shapes does not recompile. For float64, call
    ``nj.enable_x64()`` (or set ``JAX_ENABLE_X64=1``) before creating arrays.

    Example:
        >>> import jax.numpy as jnp, noether_jax as nj
        >>> lag = nj.Lagrangian(nj.kinetic.Euclidean(1.0), lambda q, t: 0.5 * jnp.sum(q**2))
        >>> traj = nj.simulate(lag, jnp.array([1.0]), jnp.array([0.0]), t1=jnp.pi, ts=jnp.array([0.0, jnp.pi]))
        >>> [round(float(x), 4) for x in traj.q[:, 0]]
        [1.0, -1.0]
    """
    if not isinstance(system, AbstractDynamics):
        raise TypeError(
            f"`system` must be an nj.Lagrangian or a first-order flow such as nj.GradientFlow, got "
            f"{type(system).__name__}. Wrap your functions: nj.Lagrangian(kinetic=..., potential=...)."
        )
    if system.order == 2:
        if v0 is None:
            raise ValueError(
                "`v0` is required for a second-order (Lagrangian) system. For a learning rule use "
                "rule.initial_velocity(params, grad, opt_state) to map the optimiser's state to v0."
            )
        check_same_structure(q0, v0, "q0", "v0")
        y0 = (q0, v0)
    else:
        if v0 is not None:
            raise ValueError("`v0` must be left out for a first-order flow: its state is q alone.")
        y0 = system.initial_state(q0)
    kin = system.kinetic if system.order == 2 else getattr(system, "metric", None)
    if kin is not None:
        kin.check_state(q0)
    leaves = jax.tree.leaves(y0)
    if not leaves:
        raise ValueError("`q0` has no array leaves: there is nothing to integrate.")
    dtype = jnp.result_type(*leaves, float)
    y0 = jax.tree.map(lambda x: _array(x, jnp.result_type(x, float)), y0)
    t0, t1 = _array(t0, dtype), _array(t1, dtype)
    if ts is not None:
        _check_ts(ts, t0, t1)
    if saveat is None:
        saveat = diffrax.SaveAt(ts=_array(ts, dtype)) if ts is not None else diffrax.SaveAt(t1=True)
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps <= 0):
        raise ValueError(f"`max_steps` must be a positive int or None, got {max_steps!r}.")
    if concrete := is_concrete((t0, t1)):
        if not bool(t1 > t0):
            raise ValueError(f"`t1` ({float(t1)}) must be larger than `t0` ({float(t0)}).")
    controller = (
        stepsize_controller
        if stepsize_controller is not None
        else diffrax.PIDController(rtol=_array(rtol, dtype), atol=_array(atol, dtype))
    )
    traced = not (concrete and is_concrete((y0, system)))
    if not traced:
        try:
            _check_concrete(system, y0, t0)
        except eqx.EquinoxRuntimeError as e:
            raise ValueError(f"simulate: at the initial state, {_runtime_message(e)}") from None
    try:
        traj = _solve(
            system,
            y0,
            t0,
            t1,
            saveat,
            _default_solver() if solver is None else solver,
            controller,
            None if dt0 is None else as_time(dt0),
            max_steps,
            diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
            args,
            diffrax.NoProgressMeter() if progress_meter is None else progress_meter,
            throw and traced,  # inside a user's jit, diffrax raises; outside, we raise a clearer error
        )
    except eqx.EquinoxRuntimeError as e:
        if traced:
            raise
        raise RuntimeError(f"simulate failed: {_runtime_message(e)}") from None
    if throw and not traced and not bool(traj.successful):
        stats = {k: int(v) for k, v in traj.stats.items() if jnp.ndim(v) == 0}
        if traj.result == RESULTS.max_steps_reached:
            raise RuntimeError(
                f"simulate: the solver reached `max_steps`={max_steps} before t1={float(t1)} "
                f"(stats: {stats}). Raise `max_steps`, loosen `rtol`/`atol`, or check the system for a "
                "blow-up, or the potential for NaN along the path; pass throw=False to get the partial trajectory as data."
            )
        raise RuntimeError(
            f"simulate failed: {RESULTS[traj.result]} (stats: {stats}). Pass throw=False to inspect the "
            "partial trajectory."
        )
    return traj
