"""SGD as an SDE: stationary covariance, weak error, no noise along a symmetry, Itô charge rates.

Every statistical comparison states its confidence band: the Monte Carlo standard error (SE) is
estimated from the ensemble itself and the tests require agreement within 4 SE (two-sided; a
Gaussian false-alarm rate of 6e-5 per comparison). Keys are fixed, so the tests are deterministic.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
import pytest
import scipy.linalg

import noether_jax as nj
from noether_jax.stochastic import (
    SGDSDE,
    charge,
    ensemble_stats,
    noether_noise,
    predicted_charge_mean,
    sde_ensemble,
    sde_path,
    sgd_ensemble,
    sgd_path,
)

# --------------------------------------------------------------------------- (a) stationary covariance
# ℓₑ(θ) = ½θᵀHθ + aₑᵀθ with Σₑ aₑ = 0: ḡ = Hθ, per-example noise gₑ − ḡ = aₑ, so Σ_g = (1/n)Σ aₑaₑᵀ is
# known and constant, and C∞ solves HC + CH = (ηc/S)Σ_g (exact for the SDE, O(η) relative for SGD).
_rng = np.random.default_rng(0)
D, N_EX, S = 3, 16, 4
_Q, _ = np.linalg.qr(_rng.normal(size=(D, D)))
H = _Q @ np.diag([0.5, 1.0, 2.0]) @ _Q.T
A = _rng.normal(size=(N_EX, D)) @ np.diag([1.0, 2.0, 0.5])
A -= A.mean(0)
SIGMA_G = A.T @ A / N_EX
_HJ = jnp.asarray(H)


def _quad(p, a, y):
    return 0.5 * p @ _HJ @ p + a @ p


def _cov_z(samples: np.ndarray, c_ref: np.ndarray) -> np.ndarray:
    """(Ĉ − C)/SE elementwise, with SE the standard error of each sample-covariance entry."""
    n = samples.shape[0]
    x = samples - samples.mean(0)
    prod = x[:, :, None] * x[:, None, :]
    c_hat = prod.mean(0) * n / (n - 1)
    se = prod.std(0, ddof=1) / np.sqrt(n)
    return (c_hat - c_ref) / se


@pytest.fixture(scope="module")
def stationary():
    eta, n_paths, t1 = 0.01, 4096, 8.0  # relaxation e^{−2·0.5·8} = 3e−4 of C: negligible
    sde = SGDSDE(_quad, A, jnp.zeros(N_EX), lr=eta, batch_size=S)
    c_ref = scipy.linalg.solve_continuous_lyapunov(H, eta * sde.population_factor / S * SIGMA_G)
    keys = jax.random.split(jax.random.key(1), n_paths)
    sde_final = np.asarray(sde_ensemble(sde, jnp.zeros(D), t1, keys, dt=eta / 2, save_every=1600).params[:, -1])
    steps = int(round(t1 / eta))
    sgd_final = np.asarray(sgd_ensemble(sde, jnp.zeros(D), steps, keys, save_every=steps).params[:, -1])
    return c_ref, sde_final, sgd_final


def test_stationary_covariance_sde_solves_lyapunov(stationary):
    c_ref, sde_final, _ = stationary
    z = _cov_z(sde_final, c_ref)
    assert np.all(np.abs(z) < 4.0), z  # measured max |z| ≈ 1.2 (N = 4096, relative SE ≈ 2–3 %)


def test_stationary_covariance_discrete_sgd_solves_lyapunov(stationary):
    c_ref, _, sgd_final = stationary
    z = _cov_z(sgd_final, c_ref)  # O(ηλ_max) = 2 % bias of the discrete rule is below the band
    assert np.all(np.abs(z) < 4.0), z
    # falsifiable: forgetting the finite-population factor c = (n−S)/(n−1) = 0.8 is a 25 % error, ≫ 4 SE
    assert np.any(np.abs(_cov_z(sgd_final, c_ref / 0.8)) > 4.0)


# --------------------------------------------------------------------------- (b) weak error
def test_weak_error_first_order_in_lr():
    """|E_SDE[ℒ(T)] − E_SGD[ℒ(T)]| = O(η): linear regression (Σ depends on θ), N = 8192 paths each.

    The SDE is solved with dt = η/8, so its own Euler–Maruyama error is also ∝ η and cannot bend the slope.
    """
    rng = np.random.default_rng(1)
    n, d, s = 32, 3, 8
    x = rng.normal(size=(n, d))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.5 * rng.normal(size=n)
    th0, t1, n_paths = jnp.array([2.0, 1.0, -1.0]), 1.0, 8192
    etas, diffs, ses = [0.2, 0.1, 0.05, 0.025], [], []
    for eta in etas:
        sde = SGDSDE(lambda p, xi, yi: 0.5 * (xi @ p - yi) ** 2, x, y, lr=eta, batch_size=s)
        a = ensemble_stats(sde_ensemble(sde, th0, t1, jax.random.split(jax.random.key(2), n_paths), dt=eta / 8, save_every=8 * int(round(t1 / eta))), sde)
        steps = int(round(t1 / eta))
        b = ensemble_stats(sgd_ensemble(sde, th0, steps, jax.random.split(jax.random.key(3), n_paths), save_every=steps), sde)
        diffs.append(float(a.loss_mean[-1] - b.loss_mean[-1]))
        ses.append(float(np.hypot(a.standard_error("loss")[-1], b.standard_error("loss")[-1])))
    diffs, ses = np.array(diffs), np.array(ses)
    assert np.all(diffs > 4 * ses), (diffs, ses)  # every difference is resolved
    # weighted least squares of log|Δ| on log η; σ(log Δ) = SE/Δ
    w = diffs / ses
    coef, cov = np.polyfit(np.log(etas), np.log(diffs), 1, w=w, cov="unscaled")
    order, order_se = coef[0], np.sqrt(cov[0, 0])
    assert 0.7 < order < 1.3, (order, order_se, diffs, ses)
    assert abs(diffs[-1]) < 0.25 * abs(diffs[0])  # it does converge


# --------------------------------------------------------------------------- (c) symmetry: softmax regression + a scale-invariant block
D_IN, K, M = 3, 4, 3


def _sym_data():
    rng = np.random.default_rng(2)
    n = 24
    x = rng.normal(size=(n, D_IN + M))
    y = rng.integers(0, K, size=n)
    return x, y


def _sym_loss(p, xi, yi):
    logits = xi[:D_IN] @ p["W"] + p["b"]
    ce = -jax.nn.log_softmax(logits)[yi]
    v = p["v"] / jnp.linalg.norm(p["v"])
    return ce + 0.5 * (jnp.tanh(xi[D_IN:] @ v) - 0.3 * xi[0]) ** 2


def _sym_params():
    rng = np.random.default_rng(3)
    return {"W": jnp.asarray(rng.normal(size=(D_IN, K))), "b": jnp.asarray(rng.normal(size=K)), "v": jnp.asarray(rng.normal(size=M))}


def _symmetries(p):
    ids = {"W": np.broadcast_to(np.arange(D_IN)[:, None], (D_IN, K)), "b": np.full(K, D_IN), "v": np.full(M, -1)}
    trans = nj.symmetry.Translation(ids)  # each input's weights to all classes, and the bias vector
    scale = nj.symmetry.Scale({"W": False, "b": False, "v": True}, params=p)
    return trans, scale


@pytest.mark.parametrize("method", ["scan", "diffrax"])
def test_translation_charge_is_deterministic_scale_charge_spreads(method):
    x, y = _sym_data()
    p0 = _sym_params()
    trans, scale = _symmetries(p0)
    lam, dt, t1 = 0.1, 0.025, 2.0
    sde = SGDSDE(_sym_loss, x, y, lr=0.1, batch_size=4, weight_decay=lam)
    ens = sde_ensemble(sde, p0, t1, jax.random.split(jax.random.key(4), 64), dt=dt, save_every=8, method=method)
    q_t = np.asarray(jax.vmap(jax.vmap(lambda p: charge(trans, p)))(ens.params))  # (N, S, G)
    k = np.asarray(ens.ts[0]) / dt
    law = np.asarray(charge(trans, p0))[None, None, :] * ((1.0 - lam * dt) ** k)[None, :, None]  # Euler of Q̇ = −λQ
    assert np.max(np.abs(q_t - law)) < 1e-10
    assert np.max(np.abs(law[0, -1] - np.asarray(charge(trans, p0)) * np.exp(-lam * t1))) < 1e-3 * np.max(np.abs(law[0, 0]))
    q_s = np.asarray(jax.vmap(jax.vmap(lambda p: charge(scale, p)))(ens.params))[..., 0]
    spread = q_s.std(0)
    assert np.all(q_s[:, 0] == q_s[0, 0])  # every path starts from the same θ(0)
    assert spread[-1] > 1e-3 * q_s[:, -1].mean()  # and the scale charge spreads
    # and keeps spreading: measured 4.9e-4 at the first save point, 1.5e-3 at t = 2 (the sample std of
    # 64 paths is good to ≈ 9 %, so a factor 2 is many standard errors; step-to-step it is not monotone)
    assert spread[-1] > 2.0 * spread[1]
    # other parameters do feel the noise
    assert float(jnp.std(ens.params["W"][:, -1], axis=0).min()) > 1e-3


def test_no_noise_along_any_symmetry_and_ito_terms():
    x, y = _sym_data()
    p0 = _sym_params()
    trans, scale = _symmetries(p0)
    sde = SGDSDE(_sym_loss, x, y, lr=0.1, batch_size=4)
    nt, ns = noether_noise(sde, p0, trans), noether_noise(sde, p0, scale)
    assert np.max(np.abs(nt.quadratic_variation)) < 1e-25 and np.max(np.abs(ns.quadratic_variation)) < 1e-25
    np.testing.assert_array_equal(nt.ito, 0.0)
    # Itô term of the scale charge: (ηc/S)·Tr Σ_𝒜 from a dense Σ (fine at this size)
    g = np.asarray(sde.per_example_grads(p0)["v"])
    sig = np.cov(g.T, bias=True)
    c = (24 - 4) / 23
    np.testing.assert_allclose(float(ns.ito[0]), 0.1 * c / 4 * np.trace(sig), rtol=1e-12)


def test_scale_charge_drift_matches_discrete_ensemble():
    """E[|v|²] of discrete SGD grows by the Itô term plus the step's η|ḡ_𝒜|², not by the latter alone."""
    x, y = _sym_data()
    p0 = _sym_params()
    _, scale = _symmetries(p0)
    eta, steps, n_paths = 0.1, 40, 2048
    sde = SGDSDE(_sym_loss, x, y, lr=eta, batch_size=4)
    ens = sgd_ensemble(sde, p0, steps, jax.random.split(jax.random.key(5), n_paths), save_every=1)
    q = np.asarray(jax.vmap(jax.vmap(lambda p: charge(scale, p)))(ens.params))[..., 0]  # (N, S)
    rates = jax.vmap(jax.vmap(lambda p: noether_noise(sde, p, scale)))(ens.params)
    ito, disc = np.asarray(rates.ito)[..., 0], np.asarray(rates.discretisation)[..., 0]
    # per path: Q(T) − Q(0) − Σ η·rate(θₙ) is a sum of martingale increments (exact for λ = 0)
    resid_full = q[:, -1] - q[:, 0] - eta * (ito + disc)[:, :-1].sum(1)
    resid_det = q[:, -1] - q[:, 0] - eta * disc[:, :-1].sum(1)
    se = resid_full.std(ddof=1) / np.sqrt(n_paths)
    assert abs(resid_full.mean()) < 4 * se, (resid_full.mean(), se)
    assert abs(resid_det.mean()) > 10 * se  # the Itô term is resolved
    pred = np.asarray(predicted_charge_mean(ens, sde, scale))[:, 0]
    np.testing.assert_allclose(pred[-1], q[:, -1].mean(), atol=4 * se)
    # translation: no Itô term and no spread in the discrete runs either
    trans, _ = _symmetries(p0)
    qt = np.asarray(jax.vmap(jax.vmap(lambda p: charge(trans, p)))(ens.params))
    assert np.max(np.abs(qt - qt[:1, :1])) < 1e-12


# --------------------------------------------------------------------------- reproducible, differentiable, low rank
def test_reproducible_and_differentiable():
    x, y = _sym_data()
    p0 = _sym_params()
    sde = SGDSDE(_sym_loss, x, y, lr=0.1, batch_size=4)
    key = jax.random.key(7)
    for method, brownian in (("scan", "virtual"), ("diffrax", "virtual"), ("diffrax", "unsafe")):
        a = sde_path(sde, p0, 0.5, key, dt=0.05, method=method, brownian=brownian)
        b = sde_path(sde, p0, 0.5, key, dt=0.05, method=method, brownian=brownian)
        assert all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
    # same Brownian increments in law: scan and diffrax paths differ, but both are finite and close in the mean
    f = lambda s: sde.loss(jax.tree.map(lambda z: z[-1], sde_path(sde, {**p0, "b": p0["b"] * s}, 0.5, key, dt=0.05).params))  # noqa: E731
    g = jax.grad(f)(1.0)
    h = 1e-6
    np.testing.assert_allclose(float(g), (float(f(1.0 + h)) - float(f(1.0 - h))) / (2 * h), rtol=1e-5)
    fd = lambda s: sde.loss(jax.tree.map(lambda z: z[-1], sde_path(sde, {**p0, "b": p0["b"] * s}, 0.5, key, dt=0.05, method="diffrax").params))  # noqa: E731
    np.testing.assert_allclose(float(jax.grad(fd)(1.0)), (float(fd(1.0 + h)) - float(fd(1.0 - h))) / (2 * h), rtol=1e-5)


def test_a_second_path_at_new_values_compiles_nothing():
    """sde_path and sgd_path trace once per (SDE, shapes, options): new parameter values and a new key reuse the program."""
    traces = {"n": 0}

    def loss(p, xi, yi):
        traces["n"] += 1  # a Python side effect: runs only while JAX traces
        return _sym_loss(p, xi, yi)

    x, y = _sym_data()
    p0 = _sym_params()
    sde = SGDSDE(loss, x, y, lr=0.1, batch_size=4)
    p1 = jax.tree.map(lambda a: 1.3 * a, p0)
    for path in (lambda p, k: sde_path(sde, p, 0.5, k, dt=0.05), lambda p, k: sde_path(sde, p, 0.5, k, dt=0.05, method="diffrax"),
                 lambda p, k: sgd_path(sde, p, 5, k)):
        a = path(p0, jax.random.key(0))
        n = traces["n"]
        b = path(p1, jax.random.key(1))
        assert traces["n"] == n, "a second call with new values re-traced the loss"
        assert not np.allclose(np.asarray(a.params["W"][-1]), np.asarray(b.params["W"][-1]))  # the new values were used
    sde_path(sde, p0, 1.0, jax.random.key(0), dt=0.05)  # a new number of steps does re-trace: the probe works
    assert traces["n"] > n


def test_a_float32_model_on_float64_data_runs_in_float32():
    """x64 on, float64 data, float32 parameters (flax's default): the scan path runs in float32 (it failed on the
    scan's carry dtypes before) and agrees with the float64 path to float32 precision; diffrax refuses, saying why."""
    x, y = _sym_data()
    p64 = _sym_params()
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), p64)
    sde = SGDSDE(_sym_loss, x, y, lr=0.1, batch_size=4)
    assert {leaf.dtype for leaf in jax.tree.leaves(sde_path(sde, p32, 0.5, jax.random.key(0), dt=0.05).params)} == {jnp.dtype("float32")}
    # full batches: c = (n − S)/(n − 1) = 0, no noise, so both precisions follow the same deterministic path
    full = SGDSDE(_sym_loss, x, y, lr=0.1, batch_size=len(y))
    a = sde_path(full, p32, 0.5, jax.random.key(0), dt=0.05)
    b = sde_path(full, p64, 0.5, jax.random.key(0), dt=0.05)
    assert {leaf.dtype for leaf in jax.tree.leaves(a.params)} == {jnp.dtype("float32")}
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-3, atol=1e-4)
    assert {leaf.dtype for leaf in jax.tree.leaves(sgd_path(sde, p32, 5, jax.random.key(0)).params)} == {jnp.dtype("float32")}
    with pytest.raises(ValueError, match="method='scan'"):
        sde_path(sde, p32, 0.5, jax.random.key(0), dt=0.05, method="diffrax")


def test_heavy_ball_noise_enters_velocity():
    x, y = _sym_data()
    p0 = _sym_params()
    sde = SGDSDE(_sym_loss, x, y, lr=0.1, batch_size=4, momentum=0.9)
    assert sde.second_order
    state = sde.initial_state(p0)
    op = sde.diffusion(0.0, state)
    out = op.mv(jnp.ones(24))
    assert all(float(jnp.max(jnp.abs(leaf))) == 0.0 for leaf in jax.tree.leaves(out[0]))  # no noise in dθ
    assert any(float(jnp.max(jnp.abs(leaf))) > 0.0 for leaf in jax.tree.leaves(out[1]))
    p = sde_path(sde, p0, 0.5, jax.random.key(0), dt=0.025, save_every=4)
    assert p.velocity is not None and p.ts.shape == (6,)


# --------------------------------------------------------------------------- (e) bad input
@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=-3), "batch_size"),
        (dict(batch_size=25), "batch_size"),
        (dict(batch_size=2.0), "batch_size"),
        (dict(lr=0.0), "`lr`"),
        (dict(lr=-0.1), "`lr`"),
        (dict(momentum=1.0), "`momentum`"),
        (dict(momentum=-0.1), "`momentum`"),
        (dict(weight_decay=-1.0), "`weight_decay`"),
    ],
)
def test_bad_input(kw, match):
    x, y = _sym_data()
    args = dict(lr=0.1, batch_size=4) | kw
    with pytest.raises((ValueError, TypeError), match=match):
        SGDSDE(_sym_loss, x, y, **args)


def test_bad_grid():
    x, y = _sym_data()
    sde = SGDSDE(_sym_loss, x, y, lr=0.1, batch_size=4)
    with pytest.raises(ValueError, match="multiple of `dt`"):
        sde_path(sde, _sym_params(), 0.33, jax.random.key(0), dt=0.1)
    with pytest.raises(ValueError, match="save_every"):
        sde_path(sde, _sym_params(), 1.0, jax.random.key(0), dt=0.1, save_every=3)
    with pytest.raises(ValueError, match="method"):
        sde_path(sde, _sym_params(), 1.0, jax.random.key(0), dt=0.1, method="rk4")
