"""Symmetries, Noether charges, kinetic symmetry breaking and the charge budget.

Ground truth here never comes from the code under test: angular momentum m(x v_y − y v_x) written
out by hand, per-group sums as explicit Python loops, softmax-regression gradients in closed form,
Hessians from ``jax.hessian`` on a flattened parameter vector, the equation of motion of the
modified flow written out by hand, and time integrals/derivatives of the charge taken numerically
(Simpson, finite differences) from the simulated trajectory.
"""

from __future__ import annotations

import diffrax
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import cumulative_simpson

import noether_jax as nj

TIGHT = dict(solver=diffrax.Dopri8(), rtol=1e-12, atol=1e-12, max_steps=400_000)


def rel(a, b):
    """max|a − b| / max|b| (b the reference)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def rotate(q, a):
    c, s = jnp.cos(a), jnp.sin(a)
    return jnp.stack([c * q[0] - s * q[1], s * q[0] + c * q[1]])


ROT = nj.symmetry.Action(rotate)


def ang_mom(m, q, v):
    """m (x v_y − y v_x), in numpy; q, v of shape (..., 2)."""
    q, v = np.asarray(q), np.asarray(v)
    return m * (q[..., 0] * v[..., 1] - q[..., 1] * v[..., 0])


# ---------------------------------------------------------------------------------------------
# 1. A user-written rotation of a central potential: angular momentum
# ---------------------------------------------------------------------------------------------


def test_kepler_angular_momentum_conserved_over_100_periods():
    m, k = 1.3, 2.0
    lag = nj.Lagrangian(nj.kinetic.Euclidean(m), lambda q, t: -k / jnp.sqrt(jnp.sum(q**2)))
    q0, v0 = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.6])
    # Kepler period for the one-body problem with mass m: T = 2π sqrt(m a³ / k), a = −k / (2E).
    E = 0.5 * m * 1.6**2 - k / 1.0
    assert E < 0
    a = -k / (2 * E)
    T = 2 * np.pi * np.sqrt(m * a**3 / k)
    ts = jnp.linspace(0.0, 100 * T, 2001)
    traj = nj.simulate(lag, q0, v0, t1=100 * T, ts=ts, **TIGHT)

    L = np.asarray(jax.vmap(nj.noether_charge(lag, ROT))(traj.q, traj.v))
    assert L.shape == (2001, 1)
    hand = ang_mom(m, traj.q, traj.v)
    # the charge is the hand-written angular momentum at every saved state ...
    assert rel(L[:, 0], hand) < 1e-13
    # ... and it is conserved (relative to its initial value, computed from the initial data alone)
    L0 = m * (1.0 * 1.6 - 0.0)
    drift = rel(L[:, 0], np.full(2001, L0))
    assert drift < 1e-8, drift
    # sanity of the integration itself: the orbit closes after 100 periods (Kepler orbits are closed)
    assert float(np.max(np.abs(np.asarray(traj.q[-1]) - np.asarray(q0)))) < 1e-6


def test_damped_central_potential_charge_decays_exponentially():
    m, rho = 0.7, 0.15
    V = lambda q, t: 0.5 * jnp.sum(q**2) + 0.25 * jnp.sum(q**2) ** 2  # noqa: E731
    lag = nj.Lagrangian(nj.kinetic.Euclidean(m), V, damping=rho)
    q0, v0 = jnp.array([1.2, -0.3]), jnp.array([0.4, 1.1])
    ts = jnp.linspace(0.0, 30.0, 601)
    traj = nj.simulate(lag, q0, v0, t1=30.0, ts=ts, **TIGHT)
    Q = np.asarray(jax.vmap(nj.noether_charge(lag, ROT))(traj.q, traj.v))[:, 0]
    expected = ang_mom(m, q0, v0) * np.exp(-rho * np.asarray(ts))
    err = float(np.max(np.abs(Q - expected) / np.abs(expected)))
    assert err < 1e-6, err
    assert rel(Q, ang_mom(m, traj.q, traj.v)) < 1e-13
    # the budget: pure dissipation, no kinetic or potential breaking of a rotation
    b = jax.vmap(lambda q, v, t: nj.charge_budget(lag, ROT, q, v, t))(traj.q, traj.v, ts)
    scale = float(np.max(np.abs(expected))) * rho
    np.testing.assert_allclose(np.asarray(b.dissipation[:, 0]), -rho * Q, rtol=1e-12, atol=1e-14)
    assert float(np.max(np.abs(np.asarray(b.kinetic_asymmetry)))) < 1e-12 * scale
    assert float(np.max(np.abs(np.asarray(b.metric)))) < 1e-12 * scale
    assert float(np.max(np.abs(np.asarray(b.potential)))) < 1e-12 * scale
    assert rel(b.rate[:, 0], -rho * Q) < 1e-11


# ---------------------------------------------------------------------------------------------
# 2. Kinetic symmetry breaking
# ---------------------------------------------------------------------------------------------


def _random_tree(rng, like):
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=np.shape(x))), like)


def test_ksb_scale_euclidean_multi_group_matches_hand():
    rng = np.random.default_rng(1)
    params = {"W": jnp.zeros((4, 3)), "b": jnp.zeros(3), "c": jnp.zeros(5)}
    # one group per column of W, together with the matching bias entry; "c" untouched
    mask = {"W": np.tile(np.arange(3), (4, 1)), "b": np.arange(3), "c": np.full(5, -1)}
    sym = nj.symmetry.Scale(mask, params)
    assert sym.n_groups == 3
    m = 0.37
    dK = nj.kinetic_symmetry_breaking(nj.kinetic.Euclidean(m), sym)
    for _ in range(5):
        q, v = _random_tree(rng, params), _random_tree(rng, params)
        W, b = np.asarray(v["W"]), np.asarray(v["b"])
        hand = np.array([m * (np.sum(W[:, g] ** 2) + b[g] ** 2) for g in range(3)])
        assert rel(dK(q, v), hand) < 1e-14
        metric, velocity = dK.parts(q, v)
        assert float(np.max(np.abs(np.asarray(metric)))) == 0.0
        assert rel(velocity, hand) < 1e-14
    # the learning rule's own kinetic term: m = η(1+β)/2
    rule = nj.rules.sgd(lr=0.1, momentum=0.9)
    q, v = _random_tree(rng, params), _random_tree(rng, params)
    hand = np.array([0.095 * (np.sum(np.asarray(v["W"])[:, g] ** 2) + np.asarray(v["b"])[g] ** 2) for g in range(3)])
    assert rel(nj.kinetic_symmetry_breaking(rule, sym)(q, v), hand) < 1e-14


def test_ksb_translation_rotation_zero_euclidean_and_diagonal_breaks_rotation():
    rng = np.random.default_rng(2)
    lr, beta = 0.2, 0.5
    m = lr * (1 + beta) / 2
    P = jnp.array([1.0, 3.0])
    trans = nj.symmetry.Translation(jnp.array([True, True]))
    euclid = nj.rules.sgd(lr=lr, momentum=beta)
    pre = nj.rules.preconditioned(P, lr=lr, momentum=beta)
    for _ in range(5):
        q, v = jnp.asarray(rng.normal(size=2)), jnp.asarray(rng.normal(size=2))
        scale = m * float(jnp.sum(v**2))
        for sym in (trans, ROT):
            assert abs(float(nj.kinetic_symmetry_breaking(euclid, sym)(q, v)[0])) < 1e-15 * scale
        # translation under a constant diagonal metric: ξ = 𝟙 is constant, so δK = 0
        assert abs(float(nj.kinetic_symmetry_breaking(pre, trans)(q, v)[0])) < 1e-15 * scale
        # rotation: ξ = Jq, (∂ξ)v = Jv, δK = ⟨m P v, J v⟩ = m (P₁ − P₀) v₀ v₁
        hand = m * (3.0 - 1.0) * float(v[0] * v[1])
        got = float(nj.kinetic_symmetry_breaking(pre, ROT)(q, v)[0])
        assert abs(got - hand) < 1e-14 * abs(hand)
        # same through a Diagonal kinetic term written directly
        got_k = float(nj.kinetic_symmetry_breaking(nj.kinetic.Diagonal(P), ROT)(q, v)[0])
        assert abs(got_k - 2.0 * float(v[0] * v[1])) < 1e-14 * abs(2.0 * float(v[0] * v[1]))

    q = jnp.array([0.8, -0.4])
    assert not bool(nj.breaks_symmetry(euclid, ROT, q).breaks[0])
    assert not bool(nj.breaks_symmetry(euclid, trans, q).breaks[0])
    assert not bool(nj.breaks_symmetry(pre, trans, q).breaks[0])
    assert bool(nj.breaks_symmetry(pre, ROT, q).breaks[0])
    # scale with every parameter in the group: δK / 2K = m|v|² / (m|v|²) = 1 exactly, for any v
    every = nj.symmetry.Scale(jnp.array([True, True]))
    out = nj.breaks_symmetry(euclid, every, q)
    assert bool(out.breaks[0])
    assert abs(float(out.relative[0]) - 1.0) < 1e-14
    # rotation under P: |m(P₁−P₀)v₀v₁| / (m(P₀v₀² + P₁v₁²)) ≤ 2|v₀v₁| / (v₀² + 3v₁²) ≤ 1/√3
    r = float(nj.breaks_symmetry(pre, ROT, q, n_samples=64).relative[0])
    assert 1e-3 < r <= 1 / np.sqrt(3) + 1e-12


# ---------------------------------------------------------------------------------------------
# 3. The charge budget along the modified flow of SGD with momentum and weight decay
# ---------------------------------------------------------------------------------------------

C = jnp.array([[0.7, -1.2, 0.4], [0.3, 0.9, -0.8]])
E_ = jnp.array([[1.5, -0.5, 2.0], [0.7, 1.1, -1.3]])
B0 = jnp.array([0.5, -1.0, 0.25, 2.0])


def _scale_loss(p):
    a = p["a"]
    u = a / jnp.linalg.norm(a, axis=1, keepdims=True)  # each row scale invariant
    f = jnp.sum(C * u) + jnp.sum(jnp.sin(E_ * u))
    b = p["b"]
    return f + 0.5 * jnp.sum((b - B0) ** 2) + 0.1 * jnp.sum(b**4)


def test_charge_budget_along_modified_flow():
    lr, beta, lam = 0.1, 0.9, 0.02
    m, mu = lr * (1 + beta) / 2, 1 - beta
    rho = mu / m
    rule = nj.rules.sgd(lr=lr, momentum=beta, weight_decay=lam)
    lag = rule.lagrangian(_scale_loss)
    params = {"a": jnp.array([[1.0, -0.5, 0.3], [0.2, 0.8, -1.1]]), "b": jnp.array([0.1, 0.4, -0.3, 1.0])}
    sym = nj.symmetry.Scale({"a": np.array([[0, 0, 0], [1, 1, 1]]), "b": np.full(4, -1)}, params)
    v0 = {"a": jnp.array([[0.3, 0.7, -0.2], [-0.6, 0.1, 0.4]]), "b": jnp.array([-0.2, 0.3, 0.5, -0.1])}
    t1 = 6.0
    ts = jnp.linspace(0.0, t1, 1201)
    traj = nj.simulate(lag, params, v0, t1=t1, ts=ts, **TIGHT)
    budget = jax.vmap(lambda q, v, t: nj.charge_budget(lag, sym, q, v, t))(traj.q, traj.v, ts)

    A, VA = np.asarray(traj.q["a"]), np.asarray(traj.v["a"])
    X = np.sum(A**2, axis=2)  # |θ_𝒜|² per group, shape (n, 2)
    tv = np.sum(A * VA, axis=2)  # ⟨θ_𝒜, v_𝒜⟩
    vv = np.sum(VA**2, axis=2)  # |v_𝒜|²
    Q = np.asarray(budget.charge)
    qscale = float(np.max(np.abs(Q)))
    rscale = float(np.max(np.abs(np.asarray(budget.rate))))

    # the parts sum to the rate
    assert float(np.max(np.abs(np.asarray(budget.residual())))) < 1e-12 * rscale
    # the charge and each part, by hand (Euclidean K = (m/2)|v|², V = ℒ + (λ/2)|θ|², ⟨∇ℒ_𝒜, θ_𝒜⟩ = 0)
    assert rel(Q, m * tv) < 1e-13
    assert rel(budget.kinetic_asymmetry, m * vv) < 1e-13
    assert rel(budget.potential, -lam * X) < 1e-9
    assert rel(budget.dissipation, -mu * tv) < 1e-12
    assert float(np.max(np.abs(np.asarray(budget.metric)))) < 1e-14 * rscale

    # the rate from the hand-written equation of motion m θ̈ = −∇ℒ − λθ − μθ̇
    def hand_rate(q, v):
        g = jax.grad(_scale_loss)(q)["a"]
        acc = (-g - lam * q["a"] - mu * v["a"]) / m
        return m * (jnp.sum(v["a"] ** 2, axis=1) + jnp.sum(q["a"] * acc, axis=1))

    hr = np.asarray(jax.vmap(hand_rate)(traj.q, traj.v))
    assert rel(budget.rate, hr) < 1e-11
    assert rel(budget.rate, m * vv - lam * X - rho * m * tv) < 1e-9

    # (a) integrate the rate along the trajectory: Q(t) = Q(0) + ∫ rate dt
    integral = cumulative_simpson(np.asarray(budget.rate), x=np.asarray(ts), axis=0, initial=0.0)
    err_int = float(np.max(np.abs(Q - (Q[0] + integral)))) / qscale
    assert err_int < 1e-6, err_int
    # the charge changes by a lot more than that over the run (the test has teeth)
    assert float(np.max(np.abs(Q - Q[0]))) > 0.1 * qscale

    # (b) Q̃ = (m/2) d|θ_𝒜|²/dt, with the derivative from positions only (4th-order differences)
    h = float(ts[1] - ts[0])
    dX = (X[:-4] - 8 * X[1:-3] + 8 * X[3:-1] - X[4:]) / (12 * h)
    err_fd = float(np.max(np.abs(Q[2:-2] - 0.5 * m * dX))) / qscale
    assert err_fd < 1e-6, err_fd


# ---------------------------------------------------------------------------------------------
# 4. Gradient and Hessian constraints on hand-built models
# ---------------------------------------------------------------------------------------------


def _softmax_problem():
    rng = np.random.default_rng(3)
    n, d, k = 30, 4, 3
    X = rng.normal(size=(n, d))
    y = rng.integers(0, k, size=n)
    params = {"w": jnp.asarray(rng.normal(size=(d, k))), "b": jnp.asarray(rng.normal(size=k))}

    def loss(p):
        logits = X @ p["w"] + p["b"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(n), y])

    def hand_grad(p):
        z = X @ np.asarray(p["w"]) + np.asarray(p["b"])
        s = np.exp(z - z.max(axis=1, keepdims=True))
        s /= s.sum(axis=1, keepdims=True)
        r = (s - np.eye(k)[y]) / n
        return {"w": X.T @ r, "b": r.sum(axis=0)}

    return X, y, params, loss, hand_grad


def test_softmax_translation_constraints_hold():
    X, y, params, loss, hand_grad = _softmax_problem()
    d, k = params["w"].shape
    # one group per input row of w (its weights to all classes) and the bias vector as group d
    mask = {"w": np.repeat(np.arange(d)[:, None], k, axis=1), "b": np.full(k, d)}
    sym = nj.symmetry.Translation(mask, params)
    res = nj.symmetry.constraints(sym, loss, params)
    assert res.invariance.shape == (d + 1,)
    assert float(jnp.max(res.max())) < 1e-8, res
    assert bool(jnp.all(res.holds(1e-8)))

    g = hand_grad(params)
    jg = jax.grad(loss)(params)
    assert rel(jg["w"], g["w"]) < 1e-12 and rel(jg["b"], g["b"]) < 1e-12
    gscale = np.sqrt(np.sum(g["w"] ** 2) + np.sum(g["b"] ** 2))
    # ⟨∇ℒ, ξ_i⟩ = row sums of the gradient (softmax probabilities sum to one)
    assert float(np.max(np.abs(g["w"].sum(axis=1)))) < 1e-14 * gscale * 10
    assert abs(float(g["b"].sum())) < 1e-14 * gscale * 10
    # the generators are the indicator vectors of the groups
    for grp in range(d + 1):
        xi = sym.generator(params, grp)
        ind_w = np.zeros((d, k))
        if grp < d:
            ind_w[grp] = 1.0
        np.testing.assert_array_equal(np.asarray(xi["w"]), ind_w)
        np.testing.assert_array_equal(np.asarray(xi["b"]), np.full(k, float(grp == d)))

    # negative control: a translation per *column* (per class) is no symmetry
    bad = nj.symmetry.Translation({"w": np.tile(np.arange(k), (d, 1)), "b": np.full(k, -1)}, params)
    rb = nj.symmetry.constraints(bad, loss, params)
    assert float(jnp.min(rb.max())) > 1e-3
    # its gradient residual is |⟨g, ξ_j⟩| / (‖g‖‖ξ_j‖) with ⟨g, ξ_j⟩ the column sum, ‖ξ_j‖ = √d
    hand_res = np.abs(g["w"].sum(axis=0)) / (gscale * np.sqrt(d))
    assert rel(rb.gradient, hand_res) < 1e-10
    assert float(np.min(hand_res)) > 1e-3


def _mlp_problem(act, batchnorm=False):
    rng = np.random.default_rng(4)
    n, d, h, o = 40, 3, 5, 2
    X = rng.normal(size=(n, d))
    Y = rng.normal(size=(n, o))
    params = {
        "W1": jnp.asarray(rng.normal(size=(d, h))),
        "b1": jnp.asarray(0.3 * rng.normal(size=h)),
        "W2": jnp.asarray(rng.normal(size=(h, o))),
        "b2": jnp.asarray(rng.normal(size=o)),
    }

    def loss(p):
        z = X @ p["W1"] + p["b1"]
        if batchnorm:
            z = (z - z.mean(axis=0)) / jnp.sqrt(z.var(axis=0))
        out = act(z) @ p["W2"] + p["b2"]
        return 0.5 * jnp.mean(jnp.sum((out - Y) ** 2, axis=1))

    incoming = {"W1": np.tile(np.arange(h), (d, 1)), "b1": np.arange(h), "W2": np.full((h, o), -1), "b2": np.full(o, -1)}
    outgoing = {"W1": np.full((d, h), -1), "b1": np.full(h, -1), "W2": np.repeat(np.arange(h)[:, None], o, axis=1), "b2": np.full(o, -1)}
    return params, loss, incoming, outgoing


def _hand_rescale_pairing(params, g):
    """⟨g, ξ_j⟩ = ⟨θ_in, g_in⟩ − ⟨θ_out, g_out⟩ per hidden unit j."""
    W1, b1, W2 = (np.asarray(params[k]) for k in ("W1", "b1", "W2"))
    return np.array(
        [np.dot(W1[:, j], g["W1"][:, j]) + b1[j] * g["b1"][j] - np.dot(W2[j], g["W2"][j]) for j in range(W1.shape[1])]
    )


def test_relu_rescale_holds_tanh_does_not():
    params, loss, inc, out = _mlp_problem(jax.nn.relu)
    sym = nj.symmetry.Rescale(inc, out, params)
    assert sym.n_groups == 5
    res = nj.symmetry.constraints(sym, loss, params)
    assert float(jnp.max(res.max())) < 1e-8, res
    g = jax.tree.map(np.asarray, jax.grad(loss)(params))
    gn = np.sqrt(sum(np.sum(x**2) for x in g.values()))
    pn = np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in params.values()))
    assert float(np.max(np.abs(_hand_rescale_pairing(params, g)))) < 1e-13 * gn * pn

    t_params, t_loss, _, _ = _mlp_problem(jnp.tanh)
    t_sym = nj.symmetry.Rescale(inc, out, t_params)
    t_res = nj.symmetry.constraints(t_sym, t_loss, t_params)
    assert float(jnp.min(t_res.max())) > 1e-3, t_res
    tg = jax.tree.map(np.asarray, jax.grad(t_loss)(t_params))
    assert float(np.min(np.abs(_hand_rescale_pairing(t_params, tg)))) > 1e-4

    # scaling a unit's incoming weights is no symmetry without a normalisation after it
    no_norm = nj.symmetry.Scale({k: np.asarray(v) for k, v in inc.items()}, params)
    assert float(jnp.min(nj.symmetry.constraints(no_norm, loss, params).max())) > 1e-3


def test_scale_under_batchnorm_holds_and_hessian_constraint_by_hand():
    params, loss, inc, _ = _mlp_problem(jax.nn.relu, batchnorm=True)
    sym = nj.symmetry.Scale(inc, params)
    res = nj.symmetry.constraints(sym, loss, params)
    assert float(jnp.max(res.max())) < 1e-8, res

    # independent: H θ_𝒜 = −g_𝒜 with a dense Hessian of the flattened 32 parameters
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    f = lambda x: loss(unravel(x))  # noqa: E731
    H = np.asarray(jax.hessian(f)(flat))
    g = np.asarray(jax.grad(f)(flat))
    ids, _ = jax.flatten_util.ravel_pytree(jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), inc))
    ids = np.asarray(ids).astype(int)
    x = np.asarray(flat)
    for j in range(5):
        ind = ids == j
        xi = np.where(ind, x, 0.0)
        assert abs(g @ xi) < 1e-12 * np.linalg.norm(g) * np.linalg.norm(xi)
        r = H @ xi + np.where(ind, g, 0.0)
        assert np.linalg.norm(r) < 1e-9 * (np.linalg.norm(H @ xi) + np.linalg.norm(g[ind]))
        # and the library's generator is this ξ
        xi_lib, _ = jax.flatten_util.ravel_pytree(sym.generator(params, j))
        np.testing.assert_array_equal(np.asarray(xi_lib), xi)


def test_rotation_constraints_use_transposed_generator_derivative():
    """Differentiating ⟨∇ℒ, ξ⟩ = 0 gives Hξ + (∂ξ)ᵀ∇ℒ = 0; for a rotation ∂ξ = J is antisymmetric."""
    J = np.array([[0.0, -1.0], [1.0, 0.0]])
    loss = lambda q: jnp.log1p(jnp.sum(q**2)) + 0.3 * jnp.sum(q**2) ** 2  # noqa: E731  (central)
    q = jnp.array([0.9, -0.4])
    H, g, x = np.asarray(jax.hessian(loss)(q)), np.asarray(jax.grad(loss)(q)), np.asarray(q)
    xi = J @ x
    assert np.linalg.norm(H @ xi + J.T @ g) < 1e-14 * np.linalg.norm(H @ xi)
    assert np.linalg.norm(H @ xi + J @ g) > 0.5 * np.linalg.norm(H @ xi)  # the untransposed form fails
    res = nj.symmetry.constraints(ROT, loss, q)
    assert float(res.max()[0]) < 1e-12, res
    # a loss that is not rotation invariant fails every identity
    aniso = lambda q: jnp.log1p(q[0] ** 2 + 3.0 * q[1] ** 2)  # noqa: E731
    r2 = nj.symmetry.constraints(ROT, aniso, q)
    assert min(float(r2.invariance[0]), float(r2.gradient[0]), float(r2.hessian[0])) > 1e-3, r2


# ---------------------------------------------------------------------------------------------
# 5. Many groups at once: vectorised pairing against a Python loop; jit and vmap
# ---------------------------------------------------------------------------------------------


def test_hundred_groups_match_python_loop_and_transform():
    rng = np.random.default_rng(5)
    G, rows, m = 100, 7, 0.8
    params = {"W": jnp.zeros((rows, G)), "b": jnp.zeros(G), "c": jnp.zeros(3)}
    sym = nj.symmetry.Scale({"W": np.tile(np.arange(G), (rows, 1)), "b": np.arange(G), "c": -1}, params)
    assert sym.n_groups == G
    q, v = _random_tree(rng, params), _random_tree(rng, params)

    def loop_pair(q, w):
        qW, qb, wW, wb = (np.asarray(x) for x in (q["W"], q["b"], w["W"], w["b"]))
        return np.array([sum(qW[i, g] * wW[i, g] for i in range(rows)) + qb[g] * wb[g] for g in range(G)])

    ref = loop_pair(q, v)
    assert rel(sym.pair(q, v), ref) < 1e-14
    assert rel(sym.group_norms(q), loop_pair(q, q)) < 1e-14
    # the generic autodiff (VJP) path of a user Action agrees with the segment sum
    as_action = nj.symmetry.Action(sym.act, groups=G)
    assert rel(as_action.pair(q, v), ref) < 1e-14

    K = nj.kinetic.Euclidean(m)
    charge = nj.noether_charge(K, sym)
    dK = nj.kinetic_symmetry_breaking(K, sym)
    assert rel(charge(q, v), m * ref) < 1e-14
    assert rel(nj.noether_charge(K, as_action)(q, v), m * ref) < 1e-14
    assert rel(dK(q, v), m * loop_pair(v, v)) < 1e-14
    # jit with the module closed over, and with the module passed as a pytree argument
    assert rel(jax.jit(lambda q, v: charge(q, v))(q, v), m * ref) < 1e-14
    assert rel(jax.jit(lambda c, q, v: c(q, v))(charge, q, v), m * ref) < 1e-14
    assert rel(jax.jit(lambda f, q, v: f(q, v))(dK, q, v), m * loop_pair(v, v)) < 1e-14

    B = 4
    qs = _random_tree(rng, jax.tree.map(lambda x: jnp.zeros((B, *x.shape)), params))
    vs = _random_tree(rng, qs)
    got = jax.jit(jax.vmap(lambda q, v: charge(q, v)))(qs, vs)
    got_k = jax.vmap(dK)(qs, vs)
    assert got.shape == (B, G)
    for i in range(B):
        qi, vi = jax.tree.map(lambda x: x[i], qs), jax.tree.map(lambda x: x[i], vs)
        assert rel(got[i], m * loop_pair(qi, vi)) < 1e-14
        assert rel(got_k[i], m * loop_pair(vi, vi)) < 1e-14

    # the budget under jit(vmap): with V = (λ/2)|θ|² and ρ, rate = m|v_g|² − λ|θ_g|² − ρ Q̃_g
    lam, rho = 0.3, 0.6
    lag = nj.Lagrangian(K, lambda q, t: 0.5 * lam * sum(jnp.sum(x**2) for x in jax.tree.leaves(q)), damping=rho)
    bud = jax.jit(jax.vmap(lambda q, v: nj.charge_budget(lag, sym, q, v)))(qs, vs)
    for i in range(B):
        qi, vi = jax.tree.map(lambda x: x[i], qs), jax.tree.map(lambda x: x[i], vs)
        hand = m * loop_pair(vi, vi) - lam * loop_pair(qi, qi) - rho * m * loop_pair(qi, vi)
        assert rel(bud.rate[i], hand) < 1e-13


# ---------------------------------------------------------------------------------------------
# 6. Bad input
# ---------------------------------------------------------------------------------------------


def test_mask_errors():
    params = {"W": jnp.ones((2, 3)), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"mask.*structure"):
        nj.symmetry.Scale({"W": np.ones((2, 3), bool)}, params)
    sym = nj.symmetry.Scale({"W": np.ones((2, 3), bool)})
    with pytest.raises(ValueError, match=r"mask.*structure"):
        sym.pair(params, params)
    with pytest.raises(ValueError, match=r"mask.*structure"):
        nj.noether_charge(nj.kinetic.Euclidean(1.0), sym)(params, params)
    # a leaf of the wrong shape is named as such, not left to a broadcasting error deep inside jax
    with pytest.raises(ValueError, match=r"mask.*shape"):
        nj.symmetry.Scale({"W": np.ones(4, bool), "b": np.ones(3, bool)}, params)
    bad_shape = nj.symmetry.Scale({"W": np.ones(4, bool), "b": np.ones(3, bool)})
    with pytest.raises(ValueError, match=r"mask.*shape"):
        bad_shape.pair(params, params)
    with pytest.raises(ValueError, match=r"mask.*shape"):
        bad_shape.act(params, jnp.zeros(1))
    # masks selecting nothing
    with pytest.raises(ValueError, match="selects no parameter"):
        nj.symmetry.Scale({"W": np.zeros((2, 3), bool), "b": np.zeros(3, bool)})
    with pytest.raises(ValueError, match="selects no parameter"):
        nj.symmetry.Translation({"W": np.full((2, 3), -1), "b": np.full(3, -1)}, params)
    with pytest.raises(TypeError, match="boolean"):
        nj.symmetry.Scale({"W": np.ones((2, 3)), "b": np.ones(3)})
    # overlapping rescale sets
    with pytest.raises(ValueError, match="disjoint"):
        nj.symmetry.Rescale({"W": np.ones((2, 3), bool), "b": np.zeros(3, bool)}, {"W": np.eye(2, 3, dtype=bool), "b": np.ones(3, bool)})


def test_scalar_false_mask_leaf_without_params():
    """The error message advises False for untouched leaves; such a mask must work without ``params``."""
    rng = np.random.default_rng(6)
    q = {"W": jnp.asarray(rng.normal(size=(2, 3))), "b": jnp.asarray(rng.normal(size=3))}
    v = _random_tree(rng, q)
    sym = nj.symmetry.Scale({"W": np.array([[0, 1, 2], [0, 1, 2]]), "b": False})
    W, V = np.asarray(q["W"]), np.asarray(v["W"])
    hand = np.array([W[0, g] * V[0, g] + W[1, g] * V[1, g] for g in range(3)])
    assert rel(sym.pair(q, v), hand) < 1e-15
    assert rel(sym.group_norms(q), np.sum(W**2, axis=0)) < 1e-15
    assert rel(nj.noether_charge(nj.kinetic.Euclidean(2.0), sym)(q, v), 2.0 * hand) < 1e-15
    # a broadcasting (1, 3) leaf gives the same as the full (2, 3) one
    row = nj.symmetry.Scale({"W": np.array([[0, 1, 2]]), "b": False})
    assert rel(row.pair(q, v), hand) < 1e-15


def test_action_structure_errors():
    q = {"x": jnp.array([1.0, 2.0]), "y": jnp.array([0.5, -0.5, 0.1])}
    loss = lambda p: jnp.sum(p["x"] ** 2) + jnp.sum(p["y"] ** 2)  # noqa: E731
    wrong_tree = nj.symmetry.Action(lambda p, a: {"x": rotate(p["x"], a)})
    with pytest.raises(ValueError, match="structure"):
        wrong_tree.check(q)
    with pytest.raises(ValueError, match="structure"):
        nj.symmetry.constraints(wrong_tree, loss, q)
    wrong_shape = nj.symmetry.Action(lambda p, a: {"x": rotate(p["x"], a), "y": p["y"][:2]})
    with pytest.raises(ValueError, match="shape"):
        wrong_shape.check(q)
    with pytest.raises(ValueError, match="shape"):
        nj.symmetry.constraints(wrong_shape, loss, q)
    # a correct action passes the check and is a symmetry of this rotation-invariant loss
    good = nj.symmetry.Action(lambda p, a: {"x": rotate(p["x"], a), "y": p["y"]})
    good.check(q)
    assert float(nj.symmetry.constraints(good, loss, q).max()[0]) < 1e-12


def test_non_symmetry_objects_are_type_errors():
    lag = nj.Lagrangian(nj.kinetic.Euclidean(1.0), lambda q, t: jnp.sum(q**2))
    for bad in (object(), rotate, "rotation"):
        with pytest.raises(TypeError, match="sym"):
            nj.noether_charge(lag, bad)
        with pytest.raises(TypeError, match="sym"):
            nj.kinetic_symmetry_breaking(lag, bad)
        with pytest.raises(TypeError, match="sym"):
            nj.charge_budget(lag, bad, jnp.ones(2), jnp.ones(2))
    with pytest.raises(TypeError, match="Lagrangian"):
        nj.noether_charge(lambda q, v, t: 0.0, ROT)
    with pytest.raises(TypeError, match="Lagrangian"):
        nj.charge_budget(nj.kinetic.Euclidean(1.0), ROT, jnp.ones(2), jnp.ones(2))


def test_charge_budget_with_a_state_dependent_metric():
    """A non-Euclidean kinetic term K = ½ Σ mᵢ(q) vᵢ² breaks rotation symmetry through the metric part of the
    budget; the four parts still sum to the rate, and the rate integrates to the charge along a trajectory."""
    rot = nj.symmetry.Action(lambda q, a: jnp.array([jnp.cos(a) * q[0] - jnp.sin(a) * q[1],
                                                      jnp.sin(a) * q[0] + jnp.cos(a) * q[1]]))
    kin = nj.kinetic.Diagonal(lambda q, t: jnp.array([1.0 + q[0] ** 2, 2.0 + jnp.sin(q[1])]))
    lag = nj.Lagrangian(kin, lambda q, t: 0.5 * jnp.sum(q**2), damping=0.2)  # V is rotation invariant
    ts = jnp.linspace(0.0, 4.0, 801)
    traj = nj.simulate(lag, jnp.array([1.0, 0.3]), jnp.array([-0.2, 0.9]), t1=4.0, ts=ts, **TIGHT)
    b = jax.vmap(lambda q, v, t: nj.charge_budget(lag, rot, q, v, t))(traj.q, traj.v, ts)
    rate = np.asarray(b.rate)[:, 0]
    scale = float(np.max(np.abs(rate)))
    assert float(np.max(np.abs(np.asarray(b.residual())))) < 1e-12 * scale
    assert float(np.max(np.abs(np.asarray(b.potential)))) < 1e-12 * scale  # V keeps the symmetry
    metric_and_kinetic = np.asarray(b.metric)[:, 0] + np.asarray(b.kinetic_asymmetry)[:, 0]
    assert float(np.max(np.abs(metric_and_kinetic))) > 0.1 * scale  # the kinetic term breaks it
    q = np.asarray(b.charge)[:, 0]
    integral = cumulative_simpson(rate, x=np.asarray(ts), initial=0.0)
    assert float(np.max(np.abs(q - (q[0] + integral)))) < 1e-6 * float(np.max(np.abs(q)))
    # the charge by hand: Q̃ = ⟨M(q) v, ξ⟩ with ξ = (−q₁, q₀)
    Q, V_ = np.asarray(traj.q), np.asarray(traj.v)
    hand = (1.0 + Q[:, 0] ** 2) * V_[:, 0] * (-Q[:, 1]) + (2.0 + np.sin(Q[:, 1])) * V_[:, 1] * Q[:, 0]
    np.testing.assert_allclose(q, hand, rtol=1e-12, atol=1e-14)
