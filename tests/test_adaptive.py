"""Adaptive rules (RMSProp, Adam, AdamW) against their ground truth: discrete optax runs.

* order of convergence: the flow's error against optax at fixed t falls as O(η) as η halves;
* bias correction: with a constant gradient optax's bias-corrected Adam steps by exactly −η g/(|g|+ε), from a
  fresh or a warm state; the flow must reproduce that to solver tolerance at every step;
* the edge of stability 2(1+b₁)/(1−b₁) against the frozen-metric Adam recursion on a quadratic, and the
  guard's preconditioned λ_max against a dense eigenvalue problem;
* bad input, concrete and traced.
"""

from __future__ import annotations

import equinox as eqx

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import noether_jax as nj
from test_recorder import mlp_groups
from test_rules import _scan_optax as _scan  # n optax steps of rule.optimizer() in a jitted scan

D = 5
_rng = np.random.default_rng(0)
THETA0 = jnp.asarray(_rng.normal(size=D))
TS = np.array([0.25, 0.5, 0.75, 1.0])
T = float(TS[-1])
TIGHT = dict(rtol=1e-10, atol=1e-12, max_steps=200_000)


def nonconvex(theta):
    return jnp.sum(jnp.sin(theta) * jnp.cos(jnp.roll(theta, 1))) + 0.25 * jnp.sum(theta**2) + 0.05 * jnp.sum(theta**4)


G_CONST = jnp.asarray([0.3, -1.2, 2.0, 1e-3, -0.05])


def linear(theta):
    return jnp.dot(G_CONST, theta)


def discrete(loss, rule, theta0, n, state=None):
    return _scan(loss, rule, theta0, n, rule.optimizer().init(theta0) if state is None else state)


def flow_error(loss, rule):
    """max over TS of |θ(nη) − θₙ| between the flow and n optax steps."""
    eta = float(rule.lr)
    traj = nj.simulate(rule.flow(loss), THETA0, t1=T, ts=jnp.asarray(TS), **TIGHT)
    ths, _ = discrete(loss, rule, THETA0, round(T / eta))
    idx = np.round(TS / eta).astype(int) - 1
    return float(np.max(np.linalg.norm(np.asarray(traj.q) - np.asarray(ths[idx]), axis=-1)))


ETAS = [0.01, 0.005, 0.0025]


@pytest.mark.parametrize("make", [
    pytest.param(lambda e: nj.rules.adam(lr=e), id="adam"),
    pytest.param(lambda e: nj.rules.adamw(lr=e, decoupled_weight_decay=0.3), id="adamw", marks=pytest.mark.slow),
    pytest.param(lambda e: nj.rules.rmsprop(lr=e), id="rmsprop", marks=pytest.mark.slow),
])
def test_flow_converges_at_first_order(make):
    errs = [flow_error(nonconvex, make(e)) for e in ETAS]
    order = float(np.polyfit(np.log(ETAS), np.log(errs), 1)[0])
    assert 0.75 < order < 1.25, (errs, order)
    assert errs[-1] < 0.05


def test_optimizer_is_optax():
    grads = [jax.tree.map(lambda x, i=i: jnp.sin(x + i), {"w": THETA0, "b": THETA0[:2]}) for i in range(4)]
    params = {"w": THETA0, "b": THETA0[:2]}
    pairs = [(nj.rules.adam(lr=0.01, b1=0.8, b2=0.99, eps=1e-6), optax.adam(0.01, b1=0.8, b2=0.99, eps=1e-6)),
             (nj.rules.adamw(lr=0.01, decoupled_weight_decay=0.1), optax.adamw(0.01, weight_decay=0.1)),
             (nj.rules.rmsprop(lr=0.01, decay=0.95, eps=1e-7), optax.rmsprop(0.01, decay=0.95, eps=1e-7))]
    for rule, ref in pairs:
        a, b = rule.optimizer(), ref
        sa, sb = a.init(params), b.init(params)
        for g in grads:
            ua, sa = a.update(g, sa, params)
            ub, sb = b.update(g, sb, params)
            for x, y in zip(jax.tree.leaves(ua), jax.tree.leaves(ub), strict=True):
                np.testing.assert_allclose(x, y, rtol=1e-14, atol=0)


def test_bias_correction_exact_for_a_constant_gradient():
    """Bias-corrected moments of a constant gradient are g and g², at every step: the flow must match optax
    to solver tolerance, from a fresh state and from a warm optax state after 7 steps. (Without the
    correction, or with a weight 1 − b^{t/η} that does not match the kernel's rate, it is off by ~10⁻³.)"""
    rule = nj.rules.adam(lr=0.01, b1=0.8, b2=0.99)
    eta, n = float(rule.lr), 20
    ts = eta * np.arange(1, n + 1)
    fresh = rule.optimizer().init(THETA0)
    ths, warm = discrete(linear, rule, THETA0, 7)
    for theta, state in ((THETA0, fresh), (ths[-1], warm)):  # a fresh optax state: count 0, w = 0
        ref, _ = discrete(linear, rule, theta, n, state)
        traj = nj.simulate(rule.flow(linear, state), theta, t1=ts[-1], ts=jnp.asarray(ts), **TIGHT)
        np.testing.assert_allclose(traj.q, ref, rtol=0, atol=1e-9)
        mu_hat = traj.aux.mu / traj.aux.w_mu[:, None]
        np.testing.assert_allclose(mu_hat, np.broadcast_to(G_CONST, mu_hat.shape), rtol=1e-8)
        # θ̇(0) of the flow: the bias-corrected step direction −g/(|g|+ε)
        v0 = rule.initial_velocity(theta, G_CONST, state)
        np.testing.assert_allclose(v0, -G_CONST / (jnp.abs(G_CONST) + rule.eps), rtol=1e-10)
    # AdamW: θ̇(0) adds the decoupled decay −λθ
    w = nj.rules.adamw(lr=0.01, decoupled_weight_decay=0.5)
    v0 = w.initial_velocity(THETA0, G_CONST)
    np.testing.assert_allclose(v0, -G_CONST / (jnp.abs(G_CONST) + w.eps) - 0.5 * THETA0, rtol=1e-10)


def test_warm_state_maps_optax_fields():
    rule = nj.rules.adam(lr=0.01, b1=0.8, b2=0.9)
    ths, state = discrete(nonconvex, rule, THETA0, 5)
    aux = rule.initial_state(ths[-1], state)
    np.testing.assert_allclose(aux.mu, state[0].mu)
    np.testing.assert_allclose(aux.w_nu, 1 - 0.9**5)
    pre = rule.edge().preconditioner(ths[-1], state)
    np.testing.assert_allclose(pre, np.sqrt(state[0].nu / (1 - 0.9**5)) + 1e-8, rtol=1e-12)
    with pytest.raises(ValueError, match="holds no `mu`"):
        rule.initial_state(THETA0, optax.sgd(0.1).init(THETA0))


@pytest.mark.parametrize("b1", [0.0, 0.9])
def test_adam_edge_threshold(b1):
    """Adam with its metric frozen, on a quadratic of preconditioned curvature s: stable below the rule's
    threshold, unstable above (the iteration is linear, so 3000 steps decide it)."""
    rule = nj.rules.adam(lr=0.1, b1=b1)
    thr = float(rule.edge().threshold)
    np.testing.assert_allclose(thr, 2 * (1 + b1) / (1 - b1), rtol=1e-12)

    def final(s):
        def body(c, _):
            m, th = c
            m = b1 * m + (1 - b1) * s * th  # g = Hθ with ηP⁻¹H = s
            return (m, th - m), None
        return abs(float(jax.lax.scan(body, (0.0, 1.0), None, length=3000)[0][1]))

    assert final(0.98 * thr) < 1.0 < final(1.02 * thr)


def test_guard_lambda_max_is_preconditioned():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(D, D))
    h = a @ a.T + np.eye(D)
    p = rng.uniform(0.5, 2.0, size=D)
    lam = nj.training.lambda_max(lambda th: 0.5 * th @ jnp.asarray(h) @ th, THETA0, preconditioner=jnp.asarray(p), iters=D)
    ref = np.max(np.linalg.eigvals(h / p[:, None]).real)
    np.testing.assert_allclose(float(lam), ref, rtol=1e-6)


@pytest.mark.parametrize("kwargs,name", [(dict(b1=1.0), "b1"), (dict(b2=-0.1), "b2"), (dict(eps=0.0), "eps"),
                                         (dict(lr=-1e-3), "lr")])
def test_bad_input_named(kwargs, name):
    args = dict(lr=1e-3) | kwargs
    with pytest.raises(ValueError, match=f"`{name}`"):
        nj.rules.adam(**args)
    if name != "b1":
        with pytest.raises(ValueError, match=f"`{'decay' if name == 'b2' else name}`"):
            nj.rules.rmsprop(**({"lr": 1e-3} | ({"decay": kwargs["b2"]} if name == "b2" else kwargs)))


def test_bad_input_traced_gives_status():
    rule = nj.rules.adamw(lr=1e-3)
    lr, b1 = jnp.array([1e-3, 1e-3, -1.0]), jnp.array([0.9, 1.0, 0.9])
    ok = jax.vmap(lambda a, b: rule.with_hyper(nj.Hyper(lr=a, momentum=b)).valid())(lr, b1)
    assert ok.tolist() == [True, False, False]
    # Adam has no weight decay to sweep: concrete λ refused, traced λ flagged
    with pytest.raises(ValueError, match="weight_decay"):
        nj.rules.adam(lr=1e-3).with_hyper(nj.Hyper(lr=1e-3, weight_decay=0.1))
    ok = jax.jit(lambda w: nj.rules.adam(lr=1e-3).with_hyper(nj.Hyper(lr=1e-3, weight_decay=w)).valid())(0.1)
    assert not bool(ok)


def test_law_of_a_rule_without_one_names_the_rules_that_have_one():
    with pytest.raises(ValueError, match="nj.rules.sgd"):
        nj.rules.adam(lr=1e-3).law("scale")
    assert nj.rules.adam(lr=1e-3).laws("scale") == {}
    assert isinstance(nj.rules.sgd(lr=0.1).law("scale"), nj.theory.AbstractLaw)


# --------------------------------------------------------------------------- Noether under adaptive rules
_C = jnp.asarray(_rng.normal(size=4))


def symmetric_loss(p):
    """Translation-invariant in t, scale-invariant in s, rescale-invariant in (a, b) per unit."""
    t = p["t"] - jnp.mean(p["t"])
    s = p["s"] / jnp.linalg.norm(p["s"])
    return (jnp.sum(jnp.sin(t) * _C) + jnp.sum(jnp.cos(3 * s) * _C[:3]) + jnp.sum(jnp.tanh(p["a"] * p["b"]) * _C[:2])
            + 0.1 * jnp.sum(t**2))


P0 = {"t": jnp.asarray(_rng.normal(size=4)), "s": jnp.asarray(_rng.normal(size=3)),
      "a": jnp.asarray(_rng.normal(size=2)), "b": jnp.asarray(_rng.normal(size=2))}
_F = {k: jnp.zeros(v.shape, bool) for k, v in P0.items()}
_NONE = {k: -jnp.ones(v.shape, int) for k, v in P0.items()}
SYMS = {
    "translation": nj.symmetry.Translation(_F | {"t": jnp.ones(4, bool)}),
    "scale": nj.symmetry.Scale(_F | {"s": jnp.ones(3, bool)}),
    "rescale": nj.symmetry.Rescale(_NONE | {"a": jnp.arange(2)}, _NONE | {"b": jnp.arange(2)}),  # one group per unit
}


@pytest.mark.parametrize("rule,kinds", [
    pytest.param(nj.rules.adam(lr=0.01, b2=0.99), ("translation",), id="adam-translation"),
    pytest.param(nj.rules.adam(lr=0.01, b2=0.99), ("scale", "rescale"), id="adam-scale-rescale", marks=pytest.mark.slow),
    pytest.param(nj.rules.adamw(lr=0.01, b2=0.99, decoupled_weight_decay=0.2), tuple(SYMS), id="adamw", marks=pytest.mark.slow)])
def test_charge_budget_closes_along_the_flow(rule, kinds):
    """The parts of dQ/dt, each from its own formula, sum to the rate differentiated along the flow; the
    non-Euclidean-metric part is non-zero (for translation it is the whole breaking at λ = 0)."""
    flow = rule.flow(symmetric_loss)
    traj = nj.simulate(flow, P0, t1=0.3, ts=jnp.array([0.05, 0.3]), rtol=1e-8, atol=1e-10)
    budget = eqx.filter_jit(nj.charge_budget)
    for kind in kinds:
        b = budget(flow, SYMS[kind], traj)
        scale = np.max(np.abs([b.rate, b.dissipation, b.metric, b.kinetic_asymmetry, b.potential]))
        np.testing.assert_allclose(b.residual(), 0.0, atol=1e-9 * scale)
        assert np.min(np.abs(b.metric)) > 1e-6 * scale, kind
    with pytest.raises(ValueError, match="aux="):
        nj.charge_budget(flow, SYMS["scale"], P0)


def test_translation_law_breaks_under_adam_but_its_noether_charge_holds():
    """Under discrete Adam at λ = 0, ⟨θ_𝒜, 𝟙⟩ drifts (SGD keeps it to rounding), the flow predicts the
    drift, and the Noether charge of Adam's metric kinetic term, ⟨μ_𝒜, 𝟙⟩, stays 0 exactly."""
    rule = nj.rules.adam(lr=0.005, b2=0.99)
    n = 100
    def run(opt):
        def body(c, _):
            p, s = c
            u, s = opt.update(jax.grad(symmetric_loss)(p), s, p)
            return (optax.apply_updates(p, u), s), None
        return jax.lax.scan(body, (P0, opt.init(P0)), None, length=n)[0]
    p_adam, s_adam = run(rule.optimizer())
    p_sgd, _ = run(optax.sgd(0.005))
    x0 = float(jnp.sum(P0["t"]))
    drift = float(jnp.sum(p_adam["t"])) - x0
    assert abs(float(jnp.sum(p_sgd["t"])) - x0) < 1e-12
    assert abs(drift) > 1e-3
    assert abs(float(jnp.sum(s_adam[0].mu["t"]))) < 1e-13
    traj = nj.simulate(rule.flow(symmetric_loss), P0, t1=n * 0.005, rtol=1e-9, atol=1e-11)
    pred = float(jnp.sum(traj.q["t"][-1])) - x0
    assert abs(pred - drift) < 0.05 * abs(drift), (pred, drift)


def test_ksb_of_adam_uses_its_accumulators():
    rule = nj.rules.adam(lr=0.01)
    g = jax.grad(symmetric_loss)(P0)
    aux = rule.initial_state(P0, rule.optimizer().update(g, rule.optimizer().init(P0), P0)[1])
    v = jax.tree.map(lambda x: jnp.cos(x), P0)
    pre = rule.metric_diagonal(aux)
    dk = eqx.filter_jit(lambda r, s, a, q, w: nj.kinetic_symmetry_breaking(r, s, aux=a)(q, w))(rule, SYMS["scale"], aux, P0, v)
    np.testing.assert_allclose(dk, jnp.sum(pre["s"] * v["s"] ** 2) / rule.damping, rtol=1e-12)  # m Σ P v² on the group
    brk = eqx.filter_jit(lambda r, s, q, a: nj.breaks_symmetry(r, s, q, aux=a, n_samples=2).breaks)
    assert not bool(brk(rule, SYMS["translation"], P0, aux)[0])  # a diagonal metric constant in θ: no KSB
    with pytest.raises(ValueError, match="aux="):
        nj.kinetic_symmetry_breaking(rule, SYMS["scale"])


@pytest.mark.slow
def test_recorder_runs_an_adaptive_rule_with_noether_and_guard():
    """A Recorder with nj.rules.adam: no law, Noether quantities from Adam's metric (translation exactly
    unbroken by the diagonal metric, rescale broken), and the guard on the preconditioned sharpness (at
    step 0 from the first gradient, not the empty accumulators)."""
    d = nj.data.digits()
    net, params, state = nj.models.functional(nj.models.make_model("mlp", width=8, key=1))
    rec = nj.Recorder(net, mlp_groups(params), d.x_train, d.y_train, batch_size=16, steps=12, save_every=4,
                      optimizer=nj.rules.adam(lr=0.01), noether=True, sharpness_every=12)
    out = rec.run(params, state, None, jax.random.key(0))
    assert "no closed-form law for adam" in out.law
    assert np.all(np.asarray(out.ksb["translation"])[1:] == 0.0)
    assert np.nanmin(np.asarray(out.ksb["rescale"])[1:]) > 0.0
    g = out.guard.summary()
    assert g["threshold"] == pytest.approx(38.0) and g["not_finite"] == 0 and g["flagged"] == 0
    assert 0.0 < g["max_sharpness"] < g["threshold"]  # η·λ_max of the preconditioned Hessian
