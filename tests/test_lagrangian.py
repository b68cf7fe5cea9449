"""The Lagrangian machinery against textbook mechanics.

Every expected value here is independent of the code under test: hand-derived accelerations and
closed-form solutions written out in numpy, or scipy's DOP853 on the textbook equations of motion.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import noether_jax as nj
import noether_jax.mechanics._integrate as nj_integrate

TIGHT = dict(rtol=1e-11, atol=1e-12, max_steps=200_000)


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def accel_both_ways(lag, q, v, t):
    """Acceleration from Lagrangian.acceleration and from the Euler–Lagrange vector field; they must agree."""
    a1 = lag.acceleration(q, v, t)
    qdot, a2 = nj.euler_lagrange(lag)(t, (q, v), None)
    for x, y in zip(jax.tree.leaves(qdot), jax.tree.leaves(v), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a1), jax.tree.leaves(a2), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-14, atol=1e-14)
    return a1


# ---------------------------------------------------------------------------------------------
# 1. Textbook systems
# ---------------------------------------------------------------------------------------------

# --- harmonic oscillator -------------------------------------------------------------------


def test_harmonic_oscillator_acceleration_and_trajectory():
    m, k = 1.7, 3.1
    w = np.sqrt(k / m)
    lag = nj.Lagrangian(nj.kinetic.Euclidean(m), lambda q, t: 0.5 * k * jnp.sum(q**2))
    rng = np.random.default_rng(0)
    for _ in range(4):
        q, v, t = rng.normal(size=3), rng.normal(size=3), rng.uniform(0, 5)
        a = accel_both_ways(lag, jnp.asarray(q), jnp.asarray(v), t)
        assert rel_err(a, -k / m * q) <= 1e-9

    q0, v0 = np.array([1.0, -0.4, 0.0]), np.array([0.3, 0.9, -1.2])
    ts = np.linspace(0.0, 8.0, 33)
    traj = nj.simulate(lag, jnp.asarray(q0), jnp.asarray(v0), t1=ts[-1], ts=ts, solver=diffrax.Tsit5(), **TIGHT)
    T = ts[:, None]
    q_exact = q0 * np.cos(w * T) + v0 / w * np.sin(w * T)
    v_exact = -q0 * w * np.sin(w * T) + v0 * np.cos(w * T)
    assert traj.q.shape == (33, 3) and traj.v.shape == (33, 3)
    np.testing.assert_allclose(np.asarray(traj.ts), ts, rtol=0, atol=1e-14)
    assert np.max(np.abs(np.asarray(traj.q) - q_exact)) <= 1e-7
    assert np.max(np.abs(np.asarray(traj.v) - v_exact)) <= 1e-7
    assert bool(traj.successful)


# --- damped oscillator ---------------------------------------------------------------------


def test_damped_oscillator_acceleration_and_trajectory():
    # L = e^{ρt}(½ m v² − ½ k q²)  ⇒  m q̈ + ρ m q̇ + k q = 0.
    m, k, rho = 0.8, 2.5, 0.6
    lag = nj.Lagrangian(nj.kinetic.Euclidean(m), lambda q, t: 0.5 * k * jnp.sum(q**2), damping=rho)
    rng = np.random.default_rng(1)
    for _ in range(4):
        q, v, t = rng.normal(size=2), rng.normal(size=2), rng.uniform(0, 5)
        a = accel_both_ways(lag, jnp.asarray(q), jnp.asarray(v), t)
        assert rel_err(a, -k / m * q - rho * v) <= 1e-9

    gamma = rho / 2.0
    Om = np.sqrt(k / m - gamma**2)  # underdamped
    assert k / m > gamma**2
    q0, v0 = np.array([1.2, -0.5]), np.array([-0.3, 0.8])
    ts = np.linspace(0.0, 10.0, 41)
    traj = nj.simulate(lag, jnp.asarray(q0), jnp.asarray(v0), t1=ts[-1], ts=ts, solver=diffrax.Tsit5(), **TIGHT)
    T = ts[:, None]
    A, B = q0, (v0 + gamma * q0) / Om
    e = np.exp(-gamma * T)
    q_exact = e * (A * np.cos(Om * T) + B * np.sin(Om * T))
    v_exact = e * ((-gamma * A + Om * B) * np.cos(Om * T) + (-gamma * B - Om * A) * np.sin(Om * T))
    assert np.max(np.abs(np.asarray(traj.q) - q_exact)) <= 1e-7
    assert np.max(np.abs(np.asarray(traj.v) - v_exact)) <= 1e-7
    # the decay is real: the final amplitude is well below the initial one
    assert np.max(np.abs(q_exact[-1])) < 0.1 * np.max(np.abs(q0))


def test_time_dependent_damping_callable():
    # ρ(t) = c t, φ = e^{c t²/2}: q̈ + c t q̇ + ω² q = 0; check the acceleration pointwise.
    c, w2 = 0.7, 2.0
    lag = nj.Lagrangian(nj.kinetic.Euclidean(1.0), lambda q, t: 0.5 * w2 * jnp.sum(q**2), damping=lambda t: c * t)
    rng = np.random.default_rng(11)
    for _ in range(4):
        q, v, t = rng.normal(size=2), rng.normal(size=2), rng.uniform(0, 3)
        a = accel_both_ways(lag, jnp.asarray(q), jnp.asarray(v), t)
        assert rel_err(a, -w2 * q - c * t * v) <= 1e-9


# --- double pendulum -----------------------------------------------------------------------

M1, M2, L1, L2, G = 1.3, 0.7, 1.1, 0.8, 9.81


def dp_kinetic(q, v, t):
    th1, th2 = q[0], q[1]
    w1, w2 = v[0], v[1]
    return (
        0.5 * (M1 + M2) * L1**2 * w1**2
        + 0.5 * M2 * L2**2 * w2**2
        + M2 * L1 * L2 * w1 * w2 * jnp.cos(th1 - th2)
    )


def dp_potential(q, t):
    return -(M1 + M2) * G * L1 * jnp.cos(q[0]) - M2 * G * L2 * jnp.cos(q[1])


def dp_textbook_accel(th1, th2, w1, w2):
    """The standard closed-form double-pendulum accelerations (e.g. myPhysicsLab)."""
    d = th1 - th2
    den = 2 * M1 + M2 - M2 * np.cos(2 * th1 - 2 * th2)
    a1 = (
        -G * (2 * M1 + M2) * np.sin(th1)
        - M2 * G * np.sin(th1 - 2 * th2)
        - 2 * np.sin(d) * M2 * (w2**2 * L2 + w1**2 * L1 * np.cos(d))
    ) / (L1 * den)
    a2 = (2 * np.sin(d) * (w1**2 * L1 * (M1 + M2) + G * (M1 + M2) * np.cos(th1) + w2**2 * L2 * M2 * np.cos(d))) / (
        L2 * den
    )
    return np.array([a1, a2])


def dp_textbook_energy(th1, th2, w1, w2):
    T = 0.5 * (M1 + M2) * L1**2 * w1**2 + 0.5 * M2 * L2**2 * w2**2 + M2 * L1 * L2 * w1 * w2 * np.cos(th1 - th2)
    V = -(M1 + M2) * G * L1 * np.cos(th1) - M2 * G * L2 * np.cos(th2)
    return T + V


def test_double_pendulum_accelerations_match_textbook():
    # A plain callable kinetic: the General path (CG solve, mixed ∂p/∂q term).
    lag = nj.Lagrangian(dp_kinetic, dp_potential)
    assert isinstance(lag.kinetic, nj.kinetic.General)
    rng = np.random.default_rng(2)
    for _ in range(8):
        q = rng.uniform(-np.pi, np.pi, size=2)
        v = rng.normal(scale=2.0, size=2)
        a = accel_both_ways(lag, jnp.asarray(q), jnp.asarray(v), rng.uniform(0, 3))
        assert rel_err(a, dp_textbook_accel(*q, *v)) <= 1e-9
        E = float(lag.energy(jnp.asarray(q), jnp.asarray(v), 0.0))
        np.testing.assert_allclose(E, dp_textbook_energy(*q, *v), rtol=1e-12)


def test_double_pendulum_trajectory_vs_scipy_and_energy_conservation():
    lag = nj.Lagrangian(dp_kinetic, dp_potential)
    q0, v0 = np.array([0.9, -0.4]), np.array([0.2, 0.5])
    t1 = 4.0
    ts = np.linspace(0.0, t1, 41)
    traj = nj.simulate(lag, jnp.asarray(q0), jnp.asarray(v0), t1=t1, ts=ts, solver=diffrax.Dopri8(), **TIGHT)

    def rhs(t, y):
        return np.concatenate([y[2:], dp_textbook_accel(*y)])

    ref = solve_ivp(rhs, (0.0, t1), np.concatenate([q0, v0]), method="DOP853", rtol=1e-12, atol=1e-13, t_eval=ts)
    assert ref.success
    assert np.max(np.abs(np.asarray(traj.q) - ref.y[:2].T)) <= 1e-7
    assert np.max(np.abs(np.asarray(traj.v) - ref.y[2:].T)) <= 1e-7

    # 6. Energy conservation along the undamped trajectory: lag.energy and the textbook T + V.
    E = np.asarray(jax.vmap(lambda q, v: lag.energy(q, v, 0.0))(traj.q, traj.v))
    E0 = dp_textbook_energy(*q0, *v0)
    scale = abs(E0)
    assert np.max(np.abs(E - E0)) <= 1e-8 * scale
    # the motion is non-trivial (energy is traded between the two terms)
    assert np.ptp(np.asarray(traj.q)[:, 1]) > 0.5


# --- charged particle in a magnetic field --------------------------------------------------


def test_charged_particle_uniform_magnetic_field():
    m, e, Bz = 1.4, 0.9, 2.3
    B = jnp.array([0.0, 0.0, Bz])

    def kinetic(x, v, t):  # ½ m |v|² + e v·A(x), A = ½ B × x
        A = 0.5 * jnp.cross(B, x)
        return 0.5 * m * jnp.sum(v**2) + e * jnp.dot(v, A)

    lag = nj.Lagrangian(kinetic, lambda x, t: jnp.zeros((), x.dtype))
    Bn = np.array([0.0, 0.0, Bz])
    rng = np.random.default_rng(3)
    for _ in range(5):
        x, v = rng.normal(size=3), rng.normal(size=3)
        a = accel_both_ways(lag, jnp.asarray(x), jnp.asarray(v), 0.0)
        assert rel_err(a, e / m * np.cross(v, Bn)) <= 1e-9

    w = e * Bz / m  # cyclotron frequency
    x0, v0 = np.array([0.3, -0.2, 0.1]), np.array([0.7, 0.4, 0.25])
    ts = np.linspace(0.0, 3 * 2 * np.pi / w, 37)
    traj = nj.simulate(lag, jnp.asarray(x0), jnp.asarray(v0), t1=ts[-1], ts=ts, solver=diffrax.Tsit5(), **TIGHT)
    s, c = np.sin(w * ts), np.cos(w * ts)
    vx0, vy0, vz0 = v0
    x_exact = np.stack(
        [
            x0[0] + (vx0 * s + vy0 * (1 - c)) / w,
            x0[1] + (vx0 * (c - 1) + vy0 * s) / w,
            x0[2] + vz0 * ts,
        ],
        axis=1,
    )
    v_exact = np.stack([vx0 * c + vy0 * s, -vx0 * s + vy0 * c, np.full_like(ts, vz0)], axis=1)
    q, vv = np.asarray(traj.q), np.asarray(traj.v)
    assert np.max(np.abs(q - x_exact)) <= 1e-7 * max(1.0, np.max(np.abs(x_exact)))
    assert np.max(np.abs(vv - v_exact)) <= 1e-7
    # circular orbit about the guiding centre with the Larmor radius |v_perp|/ω
    centre = x0[:2] + np.array([vy0, -vx0]) / w
    radius = np.hypot(vx0, vy0) / w
    np.testing.assert_allclose(np.hypot(*(q[:, :2] - centre).T), radius, rtol=1e-7)


# --- time-dependent Lagrangians ------------------------------------------------------------


def test_time_dependent_mass_exercises_dp_dt():
    # K = ½ e^{γt} v², V = ½ k e^{γt} q²  ⇒  d/dt(e^{γt} q̇) = −k e^{γt} q  ⇒  q̈ + γ q̇ + k q = 0.
    gam, k = 0.5, 3.0
    lag = nj.Lagrangian(
        lambda q, v, t: 0.5 * jnp.exp(gam * t) * jnp.sum(v**2),
        lambda q, t: 0.5 * k * jnp.exp(gam * t) * jnp.sum(q**2),
    )
    rng = np.random.default_rng(4)
    for _ in range(4):
        q, v, t = rng.normal(size=2), rng.normal(size=2), rng.uniform(0, 3)
        a = accel_both_ways(lag, jnp.asarray(q), jnp.asarray(v), t)
        assert rel_err(a, -gam * v - k * q) <= 1e-9

    g2 = gam / 2
    Om = np.sqrt(k - g2**2)
    q0, v0 = np.array([0.7, -1.1]), np.array([0.4, 0.2])
    ts = np.linspace(0.0, 6.0, 25)
    traj = nj.simulate(lag, jnp.asarray(q0), jnp.asarray(v0), t1=ts[-1], ts=ts, solver=diffrax.Tsit5(), **TIGHT)
    T = ts[:, None]
    A, Bc = q0, (v0 + g2 * q0) / Om
    q_exact = np.exp(-g2 * T) * (A * np.cos(Om * T) + Bc * np.sin(Om * T))
    assert np.max(np.abs(np.asarray(traj.q) - q_exact)) <= 1e-7


def test_driven_oscillator_closed_form():
    # V = ½ k q² − F cos(Ω t) q  ⇒  m q̈ + k q = F cos Ω t.
    m, k, F, Wd = 1.0, 4.0, 0.8, 1.3
    w0 = np.sqrt(k / m)
    lag = nj.Lagrangian(nj.kinetic.Euclidean(m), lambda q, t: jnp.sum(0.5 * k * q**2 - F * jnp.cos(Wd * t) * q))
    rng = np.random.default_rng(5)
    for _ in range(4):
        q, v, t = rng.normal(size=1), rng.normal(size=1), rng.uniform(0, 5)
        a = accel_both_ways(lag, jnp.asarray(q), jnp.asarray(v), t)
        assert rel_err(a, (-k * q + F * np.cos(Wd * t)) / m) <= 1e-9

    q0, v0 = np.array([0.5]), np.array([-0.2])
    C = F / m / (w0**2 - Wd**2)
    ts = np.linspace(0.0, 12.0, 49)
    traj = nj.simulate(lag, jnp.asarray(q0), jnp.asarray(v0), t1=ts[-1], ts=ts, solver=diffrax.Tsit5(), **TIGHT)
    q_exact = (q0[0] - C) * np.cos(w0 * ts) + v0[0] / w0 * np.sin(w0 * ts) + C * np.cos(Wd * ts)
    assert np.max(np.abs(np.asarray(traj.q)[:, 0] - q_exact)) <= 1e-7


# ---------------------------------------------------------------------------------------------
# 2. Closed-form and matrix-free mass solves agree
# ---------------------------------------------------------------------------------------------


def _tree_potential(p, t):
    W, b = p["dense"]["kernel"], p["dense"]["bias"]
    return jnp.sum(jnp.cos(W)) + 0.25 * jnp.sum(b**4) + jnp.sum(b * jnp.sum(W**2, axis=0))


def _tree_potential_grad(p):
    W, b = np.asarray(p["dense"]["kernel"]), np.asarray(p["dense"]["bias"])
    return {"dense": {"kernel": -np.sin(W) + 2 * W * b[None, :], "bias": b**3 + np.sum(W**2, axis=0)}}


def _random_tree(rng):
    return {"dense": {"kernel": jnp.asarray(rng.normal(size=(3, 4))), "bias": jnp.asarray(rng.normal(size=(4,)))}}


def _assert_tree_close(a, b, rel=1e-9):
    assert jax.tree.structure(a) == jax.tree.structure(jax.tree.map(jnp.asarray, b))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.shape(x) == np.shape(y)
        assert rel_err(x, y) <= rel


def test_kinetic_variants_agree_on_pytree_state():
    m, rho = 2.5, 0.3
    rng = np.random.default_rng(6)
    q, v = _random_tree(rng), _random_tree(rng)
    kinetics = {
        "euclidean": nj.kinetic.Euclidean(m),
        "diagonal": nj.kinetic.Diagonal(jax.tree.map(lambda x: m * jnp.ones_like(x), q)),
        "metric": nj.kinetic.Metric(lambda q, w, t: jax.tree.map(lambda x: m * x, w)),
        "callable": lambda q, v, t: 0.5 * m * sum(jnp.sum(x**2) for x in jax.tree.leaves(v)),
    }
    g = _tree_potential_grad(q)
    expected = jax.tree.map(lambda gi, vi: -gi / m - rho * np.asarray(vi), g, v)
    for name, kin in kinetics.items():
        lag = nj.Lagrangian(kin, _tree_potential, damping=rho)
        a = accel_both_ways(lag, q, v, 0.4)
        _assert_tree_close(a, expected)


def test_heterogeneous_diagonal_metric_and_callable_agree():
    rng = np.random.default_rng(7)
    q, v = _random_tree(rng), _random_tree(rng)
    mass = jax.tree.map(lambda x: jnp.asarray(rng.uniform(0.5, 3.0, size=x.shape)), q)
    kinetics = [
        nj.kinetic.Diagonal(mass),
        nj.kinetic.Metric(lambda q, w, t: jax.tree.map(jnp.multiply, mass, w)),
        lambda q, v, t: 0.5 * sum(jnp.sum(mi * vi**2) for mi, vi in zip(jax.tree.leaves(mass), jax.tree.leaves(v))),
    ]
    g = _tree_potential_grad(q)
    expected = jax.tree.map(lambda gi, mi: -gi / np.asarray(mi), g, mass)
    for kin in kinetics:
        a = accel_both_ways(nj.Lagrangian(kin, _tree_potential), q, v, 0.0)
        _assert_tree_close(a, expected)


def test_state_dependent_metric_matches_hand_derivation():
    # K = ½ (1 + q²) v² (1-D): (1+q²) q̈ + q q̇² = −V'(q). Metric path, and the same K as a callable.
    def V(q, t):
        return jnp.sum(q**4 / 4 - q**2)

    rng = np.random.default_rng(8)
    for kin in (nj.kinetic.Metric(lambda q, w, t: (1 + q**2) * w), lambda q, v, t: 0.5 * jnp.sum((1 + q**2) * v**2)):
        lag = nj.Lagrangian(kin, V)
        for _ in range(3):
            q, v = rng.normal(size=3), rng.normal(size=3)
            a = accel_both_ways(lag, jnp.asarray(q), jnp.asarray(v), 0.0)
            assert rel_err(a, (-(q**3 - 2 * q) - q * v**2) / (1 + q**2)) <= 1e-9


# ---------------------------------------------------------------------------------------------
# 3. Pytree states end to end
# ---------------------------------------------------------------------------------------------


def test_simulate_pytree_state_end_to_end():
    # uncoupled oscillators: leaf i has its own masses, V = ½ Σ k x²
    k = 2.0
    rng = np.random.default_rng(9)
    q0 = {"dense": {"kernel": jnp.asarray(rng.normal(size=(3, 4))), "bias": jnp.asarray(rng.normal(size=(4,)))}}
    v0 = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), q0)
    mass = {"dense": {"kernel": jnp.full((3, 4), 0.5), "bias": jnp.full((4,), 2.0)}}
    lag = nj.Lagrangian(
        nj.kinetic.Diagonal(mass), lambda q, t: 0.5 * k * sum(jnp.sum(x**2) for x in jax.tree.leaves(q))
    )
    ts = np.linspace(0.0, 3.0, 7)
    traj = nj.simulate(lag, q0, v0, t1=3.0, ts=ts, solver=diffrax.Tsit5(), **TIGHT)
    assert jax.tree.structure(traj.q) == jax.tree.structure(q0)
    assert jax.tree.structure(traj.v) == jax.tree.structure(q0)
    for path in (("dense", "kernel"), ("dense", "bias")):
        x0, xv0, mi = (np.asarray(d[path[0]][path[1]]) for d in (q0, v0, mass))
        w = np.sqrt(k / mi[(0,) * mi.ndim])
        got_q, got_v = np.asarray(traj.q[path[0]][path[1]]), np.asarray(traj.v[path[0]][path[1]])
        assert got_q.shape == (len(ts),) + x0.shape
        assert got_v.shape == (len(ts),) + x0.shape
        T = ts.reshape((-1,) + (1,) * x0.ndim)
        np.testing.assert_allclose(got_q, x0 * np.cos(w * T) + xv0 / w * np.sin(w * T), rtol=0, atol=1e-7)
        np.testing.assert_allclose(got_v, -x0 * w * np.sin(w * T) + xv0 * np.cos(w * T), rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# 4. No recompilation for new values
# ---------------------------------------------------------------------------------------------

_TRACES = {"n": 0}


def _counting_potential(q, t):
    _TRACES["n"] += 1  # Python side effect: runs only while JAX traces
    return 0.5 * jnp.sum(q**2) + 0.1 * jnp.sum(q**4)


def test_second_simulate_call_does_not_recompile():
    def run(mass, damping, q0, v0, t1):
        lag = nj.Lagrangian(nj.kinetic.Euclidean(jnp.asarray(mass)), _counting_potential, damping=damping)
        ts = jnp.linspace(0.0, t1, 5)
        return nj.simulate(lag, jnp.asarray(q0), jnp.asarray(v0), t1=t1, ts=ts, rtol=1e-8, atol=1e-10)

    cache = getattr(nj_integrate._solve, "_cached", None)
    size = getattr(cache, "_cache_size", None)
    first = run(1.0, 0.1, [1.0, 0.5], [0.0, 0.2], 2.0)
    n_traces = _TRACES["n"]
    assert n_traces > 0
    size_after_first = size() if size is not None else None

    second = run(1.7, 0.35, [-0.3, 2.0], [0.4, -0.1], 3.5)
    assert _TRACES["n"] == n_traces, "simulate re-traced the potential for new values of the same shapes"
    if size is not None:
        assert size() == size_after_first
    # and the second call really used the new values
    np.testing.assert_allclose(np.asarray(second.ts), np.linspace(0.0, 3.5, 5), atol=1e-14)
    np.testing.assert_allclose(np.asarray(second.q[0]), [-0.3, 2.0], atol=1e-14)
    assert not np.allclose(np.asarray(first.q[-1]), np.asarray(second.q[-1]))

    # sanity: a new shape does recompile (the counter is a working probe)
    run(1.0, 0.1, [1.0, 0.5, 0.2], [0.0, 0.2, 0.0], 2.0)
    assert _TRACES["n"] > n_traces


# ---------------------------------------------------------------------------------------------
# 5. Bad input is named in the error
# ---------------------------------------------------------------------------------------------


def _quad(q, t):
    return 0.5 * jnp.sum(q**2)


def test_non_scalar_kinetic_is_rejected():
    lag = nj.Lagrangian(lambda q, v, t: 0.5 * v**2, _quad)
    q = jnp.array([1.0, 2.0])
    with pytest.raises(ValueError, match="kinetic energy must return a scalar"):
        lag.acceleration(q, q, 0.0)
    with pytest.raises(ValueError, match="kinetic energy must return a scalar"):
        nj.simulate(lag, q, q, t1=1.0)


def test_non_scalar_potential_is_rejected():
    lag = nj.Lagrangian(nj.kinetic.Euclidean(1.0), lambda q, t: 0.5 * q**2)
    q = jnp.array([1.0, 2.0])
    with pytest.raises(ValueError, match="potential must return a scalar"):
        lag.acceleration(q, q, 0.0)
    with pytest.raises(ValueError, match="potential must return a scalar"):
        nj.simulate(lag, q, q, t1=1.0)


def test_mismatched_q0_v0_are_rejected():
    lag = nj.Lagrangian(nj.kinetic.Euclidean(1.0), lambda q, t: 0.5 * sum(jnp.sum(x**2) for x in jax.tree.leaves(q)))
    q0 = {"a": jnp.ones(3), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"`v0` must have the same pytree structure as `q0`"):
        nj.simulate(lag, q0, {"a": jnp.ones(3)}, t1=1.0)
    with pytest.raises(ValueError, match=r"`v0` must have the same pytree structure as `q0`"):
        nj.simulate(lag, q0, {"a": jnp.ones(3), "c": jnp.ones(2)}, t1=1.0)
    with pytest.raises(ValueError, match=r"leaf 1 of `v0` has shape \(3,\).*`q0` has shape \(2,\)"):
        nj.simulate(lag, q0, {"a": jnp.ones(3), "b": jnp.ones(3)}, t1=1.0)
    with pytest.raises(ValueError, match="`v` must have the same pytree structure as `q`"):
        lag.acceleration(q0, {"a": jnp.ones(3)}, 0.0)


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf")])
def test_sgd_rejects_bad_lr(lr):
    with pytest.raises(ValueError, match="`lr`"):
        nj.rules.sgd(lr=lr)


@pytest.mark.parametrize("beta", [1.0, 1.5, -0.1, float("nan")])
def test_sgd_rejects_bad_momentum(beta):
    with pytest.raises(ValueError, match="`momentum`"):
        nj.rules.sgd(lr=0.1, momentum=beta)


def test_sgd_accepts_boundary_momentum():
    rule = nj.rules.sgd(lr=0.1, momentum=0.0)
    assert float(rule.friction) == 1.0
    nj.rules.sgd(lr=0.1, momentum=0.999)


def test_singular_metrics_are_rejected():
    with pytest.raises(ValueError, match=r"`mass`(.|\n)*singular"):
        nj.kinetic.Euclidean(0.0)
    with pytest.raises(ValueError, match=r"`mass`"):
        nj.kinetic.Euclidean(-1.0)
    with pytest.raises(ValueError, match=r"`mass`(.|\n)*singular"):
        nj.kinetic.Diagonal(jnp.array([1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match=r"`mass`(.|\n)*singular"):
        nj.kinetic.Diagonal({"a": jnp.ones(2), "b": jnp.array([0.0])})


def test_degenerate_callable_kinetic_is_reported_singular():
    lag = nj.Lagrangian(lambda q, v, t: 0.5 * v[0] ** 2, _quad)
    q, v = jnp.array([1.0, 2.0]), jnp.array([0.5, -0.5])
    with pytest.raises(Exception, match="singular"):
        jax.block_until_ready(lag.acceleration(q, v, 0.0))
    with pytest.raises(Exception, match="singular"):
        jax.block_until_ready(nj.simulate(lag, q, v, t1=1.0).q)


def test_state_dependent_diagonal_mass_hitting_zero_is_singular():
    kin = nj.kinetic.Diagonal(lambda q, t: q**2)  # vanishes where q = 0
    lag = nj.Lagrangian(kin, _quad)
    with pytest.raises(Exception, match="singular"):
        jax.block_until_ready(lag.acceleration(jnp.array([1.0, 0.0]), jnp.array([0.1, 0.1]), 0.0))


def test_max_steps_exceeded():
    m, k = 1.0, 1.0
    lag = nj.Lagrangian(nj.kinetic.Euclidean(m), lambda q, t: 0.5 * k * jnp.sum(q**2))
    q0, v0 = jnp.array([1.0]), jnp.array([0.0])
    with pytest.raises(RuntimeError, match="max_steps"):
        nj.simulate(lag, q0, v0, t1=50.0, rtol=1e-10, atol=1e-12, max_steps=5)
    traj = nj.simulate(lag, q0, v0, t1=50.0, rtol=1e-10, atol=1e-12, max_steps=5, throw=False)
    assert isinstance(traj, nj.Trajectory)
    assert traj.result == nj.RESULTS.max_steps_reached
    assert not bool(traj.successful)
    with pytest.raises(ValueError, match="`max_steps`"):
        nj.simulate(lag, q0, v0, t1=1.0, max_steps=0)


# --------------------------------------------------------------------------- natural-gradient flow and saveat
def test_natural_gradient_flow_with_a_user_metric_matches_scipy():
    """μ q̇ = −G(q)⁻¹∇V with a state-dependent SPD metric given matrix-free (nj.kinetic.Metric, CG solves),
    against scipy integrating the same flow with the inverse written out by hand."""

    def G(q):  # SPD: [[2 + q1², q0 q1 / 2], [q0 q1 / 2, 1 + q0²]] (diagonally dominant)
        return jnp.array([[2.0 + q[1] ** 2, 0.5 * q[0] * q[1]], [0.5 * q[0] * q[1], 1.0 + q[0] ** 2]])

    def V(q, t):
        return jnp.log(jnp.cosh(q[0] - 1.0)) + 0.5 * (q[1] + 0.5) ** 2 + 0.3 * q[0] * q[1]

    mu = 0.7
    flow = nj.GradientFlow(V, metric=nj.kinetic.Metric(lambda q, w, t: G(q) @ w), friction=mu)
    q0, t1 = jnp.array([2.0, 1.5]), 3.0
    ts = jnp.linspace(0.0, t1, 31)
    traj = nj.simulate(flow, q0, t1=t1, ts=ts, solver=diffrax.Dopri8(), rtol=1e-12, atol=1e-12)

    def rhs(_, q):
        q = jnp.asarray(q)
        return np.asarray(-jnp.linalg.solve(G(q), jax.grad(V)(q, 0.0)) / mu)

    ref = solve_ivp(rhs, (0.0, t1), np.asarray(q0), t_eval=np.asarray(ts), method="DOP853", rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(traj.q), ref.y.T, atol=1e-8)
    # it is not plain gradient flow (the metric matters)
    plain = nj.simulate(nj.GradientFlow(V, friction=mu), q0, t1=t1, solver=diffrax.Dopri8(), rtol=1e-12, atol=1e-12)
    assert float(jnp.max(jnp.abs(plain.q[-1] - traj.q[-1]))) > 1e-2


def test_saveat_is_passed_to_diffrax():
    """A user SaveAt (dense output and steps) overrides ``ts``; the harmonic oscillator is exact at every saved step."""
    lag = nj.Lagrangian(lambda q, v, t: 0.5 * jnp.sum(v**2), lambda q, t: 0.5 * jnp.sum(q**2))
    traj = nj.simulate(lag, jnp.array([1.0]), jnp.array([0.0]), t1=2.0, saveat=diffrax.SaveAt(steps=True, dense=True),
                       solver=diffrax.Dopri8(), rtol=1e-12, atol=1e-12, max_steps=1000)
    ts = np.asarray(traj.ts)
    ok = np.isfinite(ts)
    assert ok.sum() > 3 and np.isclose(ts[ok][-1], 2.0)
    np.testing.assert_allclose(np.asarray(traj.q)[ok, 0], np.cos(ts[ok]), atol=1e-10)
