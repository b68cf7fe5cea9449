"""Learning rules against their ground truth: discrete optax runs.

The reference trajectory is always the discrete optimiser itself, stepped with optax in a jitted
``lax.scan`` (or, for the preconditioned rule, a hand-written numpy recursion). Continuous models are
integrated with ``nj.simulate`` at tight tolerances, so the measured error is the model error: the
modified flow must converge to the discrete run at order η², gradient flow at order η.

Errors are measured as the largest Euclidean distance between the discrete iterate θₙ and the
continuous solution θ(nη) over the check times ``TS`` (common multiples of every η used), which is
less prone to accidental cancellations than the error at one time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import noether_jax as nj

TS = np.array([0.4, 0.8, 1.2, 1.6, 2.0])  # check times; T = 2
T = float(TS[-1])
ETAS = [0.1, 0.05, 0.025, 0.0125]  # every TS is an integer multiple of each η
TIGHT = dict(rtol=1e-10, atol=1e-12, max_steps=200_000)

# --- losses ------------------------------------------------------------------------------------

D = 5
_rng = np.random.default_rng(0)
_Q, _ = np.linalg.qr(_rng.normal(size=(D, D)))
A = jnp.asarray(_Q @ np.diag(np.linspace(0.5, 3.0, D)) @ _Q.T)  # SPD, eigenvalues 0.5 .. 3
THETA0 = jnp.asarray(_rng.normal(size=D))

_X = jnp.asarray(_rng.normal(size=(8, 3)))
_Y = jnp.asarray(np.sin(np.asarray(_X) @ np.array([1.0, -0.5, 0.7])))
NET0 = {
    "W1": jnp.asarray(_rng.normal(size=(3, 4))),
    "b1": jnp.asarray(0.1 * _rng.normal(size=4)),
    "w2": jnp.asarray(_rng.normal(size=4)),
}


def quadratic(theta):
    return 0.5 * theta @ A @ theta


def nonconvex(theta):
    """Sin/cos couplings plus a quartic: indefinite Hessian near θ₀, bounded below."""
    return (
        jnp.sum(jnp.sin(theta) * jnp.cos(jnp.roll(theta, 1)))
        + 0.25 * jnp.sum(theta**2)
        + 0.05 * jnp.sum(theta**4)
    )


def tanh_net(p):
    """A 2-layer tanh network on fixed random data (a pytree of parameters); Hessian eigenvalues in
    about [−0.4, 2.6] at NET0, so every η here is well inside the stable range."""
    h = jnp.tanh(_X @ p["W1"] + p["b1"])
    return 0.5 * jnp.mean((h @ p["w2"] - _Y) ** 2)


def quadratic_slow(theta):
    """0.1 × the quadratic: with β = 0.9 the slow flow 0.1 θ̇ = −∇ℒ then evolves on an O(1) time scale."""
    return 0.1 * quadratic(theta)


def nonconvex_slow(theta):
    return 0.1 * nonconvex(theta)


# --- discrete ground truth ---------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 3))
def _scan_optax(loss, rule, theta, n, state):
    opt = rule.optimizer()

    def body(carry, _):
        th, s = carry
        updates, s = opt.update(jax.grad(loss)(th), s, th)
        th = optax.apply_updates(th, updates)
        return (th, s), th

    (th, s), ths = jax.lax.scan(body, (theta, state), None, length=n)
    return ths, s


def discrete(loss, rule, theta0, n, opt_state=None):
    """n optax steps of ``rule.optimizer()``: (all iterates θ₁..θₙ stacked, final opt_state)."""
    state = rule.optimizer().init(theta0) if opt_state is None else opt_state
    return _scan_optax(loss, rule, theta0, n, state)


def discrete_at_ts(loss, rule, theta0, eta, opt_state=None):
    """The discrete iterates at the check times t = nη ∈ TS."""
    n = round(T / eta)
    ths, _ = discrete(loss, rule, theta0, n, opt_state)
    idx = np.round(TS / eta).astype(int) - 1
    assert np.allclose(idx + 1, TS / eta)
    return jax.tree.map(lambda x: x[idx], ths)


def flat_rows(tree):
    return np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(tree))


def traj_err(cont, disc):
    """max over the check times of |θ(nη) − θₙ|."""
    return float(np.max(np.linalg.norm(flat_rows(cont) - flat_rows(disc), axis=-1)))


def slope(etas, errs):
    return float(np.polyfit(np.log(etas), np.log(errs), 1)[0])


def grad_of(loss, theta):
    return jax.grad(loss)(theta)


def sim(system, theta0, v0=None):
    traj = nj.simulate(system, theta0, v0, t1=T, ts=TS, **TIGHT)
    assert bool(traj.successful)
    return traj.q


# ---------------------------------------------------------------------------------------------
# 1. Modified flow, gradient flow and modified loss against discrete optax runs
# ---------------------------------------------------------------------------------------------

GD_CASES = [
    pytest.param(quadratic, THETA0, 0.0, id="quadratic"),
    pytest.param(quadratic, THETA0, 0.3, id="quadratic-wd"),
    pytest.param(nonconvex, THETA0, 0.0, id="nonconvex"),
    pytest.param(nonconvex, THETA0, 0.3, id="nonconvex-wd"),
    pytest.param(tanh_net, NET0, 0.1, id="tanh-net-wd"),
]


@pytest.mark.parametrize("loss, theta0, wd", GD_CASES)
def test_gd_orders_against_optax(loss, theta0, wd):
    """β = 0: modified flow and modified loss are O(η²) from the optax run, gradient flow O(η)."""
    errs = {"modified_flow": [], "gradient_flow": [], "modified_loss": []}
    for eta in ETAS:
        rule = nj.rules.sgd(lr=eta, momentum=0.0, weight_decay=wd)
        ref = discrete_at_ts(loss, rule, theta0, eta)
        v0 = rule.initial_velocity(theta0, grad_of(loss, theta0))
        errs["modified_flow"].append(traj_err(sim(rule.lagrangian(loss), theta0, v0), ref))
        errs["gradient_flow"].append(traj_err(sim(rule.gradient_flow(loss), theta0), ref))
        errs["modified_loss"].append(traj_err(sim(rule.modified_loss(loss), theta0), ref))
    slopes = {k: slope(ETAS, v) for k, v in errs.items()}
    print(f"\n[gd orders] wd={wd} slopes={slopes} errs={errs}")
    assert 1.8 <= slopes["modified_flow"] <= 2.3, slopes
    assert 1.8 <= slopes["modified_loss"] <= 2.3, slopes
    assert 0.85 <= slopes["gradient_flow"] <= 1.2, slopes
    # and the second-order models are far closer than gradient flow at every η
    for k in ("modified_flow", "modified_loss"):
        assert all(a < 0.5 * b for a, b in zip(errs[k], errs["gradient_flow"], strict=True)), errs


MOMENTUM_ETAS = [0.1, 0.05, 0.025, 0.0125, 0.00625]


@pytest.mark.parametrize(
    "loss, wd",
    [
        pytest.param(quadratic_slow, 0.0, id="quadratic"),
        pytest.param(nonconvex_slow, 0.01, id="nonconvex-wd"),
    ],
)
def test_heavy_ball_modified_flow_beats_first_order_flow(loss, wd):
    """β = 0.9: the modified flow is closer to optax than (1−β)θ̇ = −∇V at every η, and converges."""
    beta = 0.9
    mf, gf = [], []
    for eta in MOMENTUM_ETAS:
        rule = nj.rules.sgd(lr=eta, momentum=beta, weight_decay=wd)
        ref = discrete_at_ts(loss, rule, THETA0, eta)
        v0 = rule.initial_velocity(THETA0, grad_of(loss, THETA0))
        mf.append(traj_err(sim(rule.lagrangian(loss), THETA0, v0), ref))
        gf.append(traj_err(sim(rule.gradient_flow(loss), THETA0), ref))
    print(f"\n[heavy ball] slope mf={slope(MOMENTUM_ETAS, mf):.3f} gf={slope(MOMENTUM_ETAS, gf):.3f} mf={mf} gf={gf}")
    assert all(a < 0.05 * b for a, b in zip(mf, gf, strict=True)), (mf, gf)
    assert all(a > b for a, b in zip(mf[:-1], mf[1:], strict=True)), mf  # falls as η falls
    assert mf[-1] < 0.05 * mf[0], mf
    assert float(rule.friction) == pytest.approx(1.0 - beta)


def test_heavy_ball_modified_flow_is_asymptotically_second_order():
    """β = 0.9 at small η (once the momentum transient, ~10 steps, is short against T): order ≈ 2."""
    beta = 0.9
    etas = [0.003125, 0.0015625, 0.00078125, 0.000390625]
    errs = []
    for eta in etas:
        rule = nj.rules.sgd(lr=eta, momentum=beta)
        ref = discrete_at_ts(nonconvex_slow, rule, THETA0, eta)
        v0 = rule.initial_velocity(THETA0, grad_of(nonconvex_slow, THETA0))
        errs.append(traj_err(sim(rule.lagrangian(nonconvex_slow), THETA0, v0), ref))
    s = slope(etas, errs)
    print(f"\n[heavy ball, small eta] slope={s:.3f} errs={errs}")
    assert 1.8 <= s <= 2.3, (s, errs)


# ---------------------------------------------------------------------------------------------
# 2. The initial-velocity mapping and the optimiser itself
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", [quadratic, nonconvex], ids=["quadratic", "nonconvex"])
def test_gd_initial_velocity_order(loss):
    """β = 0: v(0) = −∇ℒ gives order 2; v(0) = 0 costs an order (the transient is O(η) off)."""
    mapped, zero = [], []
    for eta in ETAS:
        rule = nj.rules.sgd(lr=eta)
        g0 = grad_of(loss, THETA0)
        v0 = rule.initial_velocity(THETA0, g0)
        np.testing.assert_allclose(np.asarray(v0), -np.asarray(g0), rtol=0, atol=0)
        ref = discrete_at_ts(loss, rule, THETA0, eta)
        mapped.append(traj_err(sim(rule.lagrangian(loss), THETA0, -g0), ref))
        zero.append(traj_err(sim(rule.lagrangian(loss), THETA0, jnp.zeros_like(THETA0)), ref))
    s_mapped, s_zero = slope(ETAS, mapped), slope(ETAS, zero)
    print(f"\n[v0 GD] slope v0=-g: {s_mapped:.3f}, v0=0: {s_zero:.3f}; errs {mapped} {zero}")
    assert 1.8 <= s_mapped <= 2.3
    assert 0.85 <= s_zero <= 1.2


def test_gd_initial_velocity_includes_weight_decay():
    """With λ > 0 the mapped v(0) = −(g₀ + λθ₀); dropping λθ₀ is worse at every η."""
    wd = 0.3
    mapped, no_wd = [], []
    for eta in ETAS:
        rule = nj.rules.sgd(lr=eta, weight_decay=wd)
        g0 = grad_of(nonconvex, THETA0)
        v0 = rule.initial_velocity(THETA0, g0)
        np.testing.assert_allclose(np.asarray(v0), -(np.asarray(g0) + wd * np.asarray(THETA0)), rtol=1e-15)
        ref = discrete_at_ts(nonconvex, rule, THETA0, eta)
        mapped.append(traj_err(sim(rule.lagrangian(nonconvex), THETA0, v0), ref))
        no_wd.append(traj_err(sim(rule.lagrangian(nonconvex), THETA0, -g0), ref))
    assert all(a < 0.5 * b for a, b in zip(mapped, no_wd, strict=True)), (mapped, no_wd)


@pytest.mark.parametrize("loss", [quadratic_slow, nonconvex_slow], ids=["quadratic", "nonconvex"])
def test_heavy_ball_initial_velocity_fresh_optimizer(loss):
    """β = 0.9, fresh optimiser: v(0) = −f₀/(1+β) beats v(0) = 0 and v(0) = −g₀ clearly at every η."""
    beta = 0.9
    mapped, zero, neg_g = [], [], []
    for eta in MOMENTUM_ETAS:
        rule = nj.rules.sgd(lr=eta, momentum=beta)
        g0 = grad_of(loss, THETA0)
        v0 = rule.initial_velocity(THETA0, g0, rule.optimizer().init(THETA0))
        np.testing.assert_allclose(np.asarray(v0), -np.asarray(g0) / (1 + beta), rtol=1e-14)
        ref = discrete_at_ts(loss, rule, THETA0, eta)
        lag = rule.lagrangian(loss)
        mapped.append(traj_err(sim(lag, THETA0, v0), ref))
        zero.append(traj_err(sim(lag, THETA0, jnp.zeros_like(THETA0)), ref))
        neg_g.append(traj_err(sim(lag, THETA0, -g0), ref))
    print(f"\n[v0 heavy ball fresh] mapped={mapped}\n zero={zero}\n -g0={neg_g}")
    for a, b, c in zip(mapped, zero, neg_g, strict=True):
        assert a < 0.2 * min(b, c), (mapped, zero, neg_g)


@pytest.mark.parametrize("loss", [quadratic_slow, nonconvex_slow], ids=["quadratic", "nonconvex"])
def test_heavy_ball_initial_velocity_warm_optimizer(loss):
    """β = 0.9 after k discrete steps: the mapping that reads the momentum trace from opt_state wins."""
    beta, k, wd = 0.9, 5, 0.01
    with_trace, without = [], []
    for eta in MOMENTUM_ETAS:
        rule = nj.rules.sgd(lr=eta, momentum=beta, weight_decay=wd)
        ths, state_k = discrete(loss, rule, THETA0, k)
        theta_k = ths[-1]
        g_k = grad_of(loss, theta_k)
        ref = discrete_at_ts(loss, rule, theta_k, eta, opt_state=state_k)
        lag = rule.lagrangian(loss)
        with_trace.append(traj_err(sim(lag, theta_k, rule.initial_velocity(theta_k, g_k, state_k)), ref))
        without.append(traj_err(sim(lag, theta_k, rule.initial_velocity(theta_k, g_k, None)), ref))
    print(f"\n[v0 heavy ball warm] with trace={with_trace}\n opt_state=None={without}")
    for a, b in zip(with_trace, without, strict=True):
        assert a < 0.1 * b, (with_trace, without)


def test_initial_velocity_reads_the_trace_of_an_independent_optax_state():
    """θ̇(0) = −(f₀ + 2βb₀)/(1+β) with b₀ computed by a numpy heavy-ball recursion, and the trace found
    in the state of an independently built optax optimiser as well as in the rule's own."""
    eta, beta, wd, k = 0.05, 0.9, 0.02, 7
    rule = nj.rules.sgd(lr=eta, momentum=beta, weight_decay=wd)
    ind = optax.chain(optax.add_decayed_weights(wd), optax.sgd(eta, momentum=beta))
    th, s_rule, s_ind = THETA0, rule.optimizer().init(THETA0), ind.init(THETA0)
    th_np, b_np = np.asarray(THETA0).copy(), np.zeros(D)
    a_np = np.asarray(A)
    for _ in range(k):
        g = A @ th
        u, s_rule = rule.optimizer().update(g, s_rule, th)
        _, s_ind = ind.update(g, s_ind, th)
        th = optax.apply_updates(th, u)
        b_np = beta * b_np + a_np @ th_np + wd * th_np
        th_np = th_np - eta * b_np
    np.testing.assert_allclose(np.asarray(th), th_np, rtol=1e-13)
    f0 = a_np @ th_np + wd * th_np
    expected = -(f0 + 2 * beta * b_np) / (1 + beta)
    for state in (s_rule, s_ind):
        v0 = rule.initial_velocity(th, A @ th, state)
        np.testing.assert_allclose(np.asarray(v0), expected, rtol=1e-12)


def test_initial_velocity_with_a_state_that_has_no_trace():
    """Plain ``optax.sgd(lr)`` keeps no momentum buffer: for GD that is b₀ = 0; for a momentum rule it
    is a mismatched state and must be refused clearly (not a TypeError from inside a tree_map)."""
    wd = 0.1
    state = optax.chain(optax.add_decayed_weights(wd), optax.sgd(0.1)).init(THETA0)
    g0 = grad_of(quadratic, THETA0)
    v0 = nj.rules.sgd(lr=0.1, weight_decay=wd).initial_velocity(THETA0, g0, state)
    np.testing.assert_allclose(np.asarray(v0), -(np.asarray(g0) + wd * np.asarray(THETA0)), rtol=1e-15)
    with pytest.raises(ValueError, match="trace"):
        nj.rules.sgd(lr=0.1, momentum=0.9).initial_velocity(THETA0, g0, state)


@pytest.mark.parametrize("beta, wd", [(0.0, 0.0), (0.0, 0.1), (0.9, 0.0), (0.5, 0.05)])
def test_optimizer_equals_independent_optax_construction(beta, wd):
    eta = 0.07
    rule = nj.rules.sgd(lr=eta, momentum=beta, weight_decay=wd)
    opts = [optax.chain(optax.add_decayed_weights(wd), optax.sgd(eta, momentum=beta))]
    if beta == 0.0 and wd == 0.0:
        opts.append(optax.sgd(eta))  # plain SGD, no momentum argument
    mine = rule.optimizer()
    params = {"a": THETA0, "b": jnp.arange(3.0)}
    s_mine = mine.init(params)
    states = [o.init(params) for o in opts]
    th = params
    rng = np.random.default_rng(1)
    for _ in range(6):
        g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), th)
        u_mine, s_mine = mine.update(g, s_mine, th)
        for i, o in enumerate(opts):
            u, states[i] = o.update(g, states[i], th)
            for x, y in zip(jax.tree.leaves(u_mine), jax.tree.leaves(u), strict=True):
                np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-14, atol=1e-15)
        th = optax.apply_updates(th, u_mine)


# ---------------------------------------------------------------------------------------------
# 3. The preconditioned rule
# ---------------------------------------------------------------------------------------------

P_DIAG = jnp.asarray([0.5, 1.0, 2.0, 1.5, 3.0])


@pytest.mark.parametrize("beta, wd", [(0.0, 0.0), (0.9, 0.05)])
def test_preconditioned_optimizer_matches_numpy_recursion(beta, wd):
    eta = 0.05
    rule = nj.rules.preconditioned(P_DIAG, lr=eta, momentum=beta, weight_decay=wd)
    opt = rule.optimizer()
    th, s = THETA0, opt.init(THETA0)
    th_np, v_np, p_np = np.asarray(THETA0).copy(), np.zeros(D), np.asarray(P_DIAG)
    for _ in range(12):
        g = jax.grad(nonconvex)(th)
        u, s = opt.update(g, s, th)
        th = optax.apply_updates(th, u)
        g_np = np.asarray(jax.grad(nonconvex)(jnp.asarray(th_np)))  # the gradient at the numpy iterate
        v_np = beta * v_np + (g_np + wd * th_np) / p_np
        th_np = th_np - eta * v_np
        np.testing.assert_allclose(np.asarray(th), th_np, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("loss, wd", [(quadratic, 0.2), (nonconvex, 0.0)], ids=["quadratic-wd", "nonconvex"])
def test_preconditioned_modified_flow_second_order(loss, wd):
    mf, gf, ml = [], [], []
    for eta in ETAS:
        rule = nj.rules.preconditioned(P_DIAG, lr=eta, momentum=0.0, weight_decay=wd)
        ref = discrete_at_ts(loss, rule, THETA0, eta)
        v0 = rule.initial_velocity(THETA0, grad_of(loss, THETA0))
        expected_v0 = -(np.asarray(grad_of(loss, THETA0)) + wd * np.asarray(THETA0)) / np.asarray(P_DIAG)
        np.testing.assert_allclose(np.asarray(v0), expected_v0, rtol=1e-14)
        mf.append(traj_err(sim(rule.lagrangian(loss), THETA0, v0), ref))
        gf.append(traj_err(sim(rule.gradient_flow(loss), THETA0), ref))
        ml.append(traj_err(sim(rule.modified_loss(loss), THETA0), ref))
    s = dict(mf=slope(ETAS, mf), gf=slope(ETAS, gf), ml=slope(ETAS, ml))
    print(f"\n[preconditioned] slopes={s} mf={mf} gf={gf} ml={ml}")
    assert 1.8 <= s["mf"] <= 2.3, s
    assert 1.8 <= s["ml"] <= 2.3, s
    assert 0.85 <= s["gf"] <= 1.2, s


# ---------------------------------------------------------------------------------------------
# 4. Hyperparameter validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=0.0), "lr"),
        (dict(lr=-0.1), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(lr=float("inf")), "lr"),
        (dict(lr=0.1, momentum=1.0), "momentum"),
        (dict(lr=0.1, momentum=-0.1), "momentum"),
        (dict(lr=0.1, momentum=float("nan")), "momentum"),
        (dict(lr=0.1, weight_decay=-1e-4), "weight_decay"),
    ],
)
@pytest.mark.parametrize("factory", [nj.rules.sgd, nj.rules.heavy_ball, nj.rules.gradient_flow, nj.rules.modified_loss])
def test_invalid_hyperparameters_raise(factory, kwargs, name):
    with pytest.raises(ValueError, match=name):
        factory(**kwargs)


def test_invalid_preconditioned_hyperparameters_raise():
    with pytest.raises(ValueError, match="lr"):
        nj.rules.preconditioned(P_DIAG, lr=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        nj.rules.preconditioned(P_DIAG, lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        nj.rules.preconditioned(P_DIAG, lr=0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match="positive"):
        nj.rules.preconditioned(P_DIAG.at[2].set(0.0), lr=0.1)


def test_boundary_hyperparameters_are_accepted():
    rule = nj.rules.sgd(lr=1e-3, momentum=0.0, weight_decay=0.0)
    assert float(rule.momentum) == 0.0 and float(rule.weight_decay) == 0.0
    assert float(nj.rules.sgd(lr=0.1, momentum=0.999).friction) == pytest.approx(1e-3)


# ---------------------------------------------------------------------------------------------
# 5. Rules are pytrees: vmap and jit
# ---------------------------------------------------------------------------------------------


def test_vmap_builds_a_batch_of_rules_and_runs_them():
    lrs = jnp.array([0.1, 0.2])
    rules = jax.vmap(lambda lr: nj.rules.sgd(lr=lr, momentum=0.9))(lrs)
    assert isinstance(rules, nj.LearningRule)
    np.testing.assert_allclose(np.asarray(rules.lr), np.asarray(lrs))
    np.testing.assert_allclose(np.asarray(rules.mass), np.asarray(lrs) * 1.9 / 2)

    n = 10

    def run(rule):
        ths, _ = discrete(quadratic, rule, THETA0, n)
        return ths[-1]

    batched = jax.vmap(run)(rules)
    for i, lr in enumerate([0.1, 0.2]):
        single = run(nj.rules.sgd(lr=lr, momentum=0.9))
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(single), rtol=1e-13)

    # and the continuous models vmap over the same batch
    def flow_end(rule):
        v0 = rule.initial_velocity(THETA0, jax.grad(quadratic)(THETA0))
        return nj.simulate(rule.lagrangian(quadratic), THETA0, v0, t1=0.5, rtol=1e-9, atol=1e-11).q[-1]

    batched_flow = jax.vmap(flow_end)(rules)
    for i, lr in enumerate([0.1, 0.2]):
        np.testing.assert_allclose(
            np.asarray(batched_flow[i]), np.asarray(flow_end(nj.rules.sgd(lr=lr, momentum=0.9))), rtol=1e-7, atol=1e-9
        )


def test_jit_of_a_function_taking_a_rule_does_not_recompile():
    traces = []

    @jax.jit
    def final_params(rule, theta):
        traces.append(None)
        opt = rule.optimizer()
        state = opt.init(theta)
        for _ in range(3):
            u, state = opt.update(jax.grad(quadratic)(theta), state, theta)
            theta = optax.apply_updates(theta, u)
        return theta, rule.mass, rule.damping

    out1 = final_params(nj.rules.sgd(lr=0.1, momentum=0.9, weight_decay=1e-3), THETA0)
    out2 = final_params(nj.rules.sgd(lr=0.05, momentum=0.5, weight_decay=0.0), THETA0)
    assert len(traces) == 1
    for out, (lr, beta, wd) in ((out1, (0.1, 0.9, 1e-3)), (out2, (0.05, 0.5, 0.0))):
        th, b = np.asarray(THETA0).copy(), np.zeros(D)
        for _ in range(3):
            b = beta * b + np.asarray(A) @ th + wd * th
            th = th - lr * b
        np.testing.assert_allclose(np.asarray(out[0]), th, rtol=1e-13)
        m = lr * (1 + beta) / 2
        assert float(out[1]) == pytest.approx(m)
        assert float(out[2]) == pytest.approx((1 - beta) / m)
