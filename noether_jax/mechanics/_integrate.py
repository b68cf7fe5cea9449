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

from .._tree import as_time, is_concrete
from .._validate import check_same_structure
from ._lagrangian import AbstractDynamics

RESULTS = diffrax.RESULTS


class Trajectory(eqx.Module):
    """The output of :func:`simulate`.

    Attributes:
        ts: save times, shape ``(n,)``.
        q: positions, a pytree like ``q0`` with a leading axis of length ``n``.
        v: velocities q̇ at the save times (for first-order flows, the flow's velocity).
        result: a ``diffrax.RESULTS`` value; ``RESULTS.successful`` unless the solve failed
            (with ``throw=False`` a failed solve is returned as data, unsaved points being ``inf``).
        stats: diffrax's statistics (number of steps, accepted and rejected steps, …).
        aux: the auxiliary state at the save times (an adaptive rule's accumulators), or None.
    """

    ts: Float[Array, " n"]
    q: PyTree
    v: PyTree
    result: diffrax.RESULTS
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
    return Trajectory(ts=sol.ts, q=q, v=v, result=sol.result, stats=sol.stats, aux=aux)


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
    leaves = jax.tree.leaves(y0)
    if not leaves:
        raise ValueError("`q0` has no array leaves: there is nothing to integrate.")
    dtype = jnp.result_type(*leaves, float)
    y0 = jax.tree.map(lambda x: _array(x, jnp.result_type(x, float)), y0)
    t0, t1 = _array(t0, dtype), _array(t1, dtype)
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
    traced = not (concrete and is_concrete(y0))
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
    if throw and not traced and not bool(traj.successful):
        stats = {k: int(v) for k, v in traj.stats.items() if jnp.ndim(v) == 0}
        if traj.result == RESULTS.max_steps_reached:
            raise RuntimeError(
                f"simulate: the solver reached `max_steps`={max_steps} before t1={float(t1)} "
                f"(stats: {stats}). Raise `max_steps`, loosen `rtol`/`atol`, or check the system for a "
                "blow-up; pass throw=False to get the partial trajectory as data."
            )
        raise RuntimeError(
            f"simulate failed: {RESULTS[traj.result]} (stats: {stats}). Pass throw=False to inspect the "
            "partial trajectory."
        )
    return traj
