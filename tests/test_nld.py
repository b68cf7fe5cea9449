"""Noether's Learning Dynamics (issue 5): eq. 17, the RMSProp map, ablations and KSB, against ground truth.

Order of trust: first a scale-invariant toy loss with full-batch gradients (eq. 17 and the mapping
to ≤ 1%), then a BatchNorm CNN on digits (reduced sizes by default, the issue's full sizes under
``-m slow``). Scale groups are built from the architecture (``cnn_scale_symmetry``), so these tests do
not depend on detection.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import noether_jax as nj
from noether_jax import data, models, nld, theory
from noether_jax.experiments import nld as xnld


@pytest.fixture(scope="module")
def digits():
    return data.digits()


@pytest.fixture(scope="module")
def cnn4():
    net, params, state = models.functional(models.make_model("cnn_bn", width=4, key=0))
    return net, params, state, nld.cnn_scale_symmetry(params)


# ---------------------------------------------------------------------------------------------
# the scale-invariant toy: G groups of d, L = Σ_g ½ ûᵀA_g û, full-batch gradients
# ---------------------------------------------------------------------------------------------

G, D = 3, 12


def _toy(r0: float, seed: int = 3):
    rng = np.random.default_rng(seed)
    a = []
    for _ in range(G):
        q, _ = np.linalg.qr(rng.normal(size=(D, D)))
        a.append(q @ np.diag(np.linspace(0.1, 1.0, D)) @ q.T)
    a = jnp.asarray(np.stack(a))
    w0 = rng.normal(size=(G, D))
    w0 = r0 * w0 / np.linalg.norm(w0, axis=1, keepdims=True)
    params = {"w": jnp.asarray(w0)}
    sym = nj.symmetry.Scale({"w": jnp.broadcast_to(jnp.arange(G, dtype=jnp.int32)[:, None], (G, D))})

    def loss(p):
        u = p["w"] / jnp.linalg.norm(p["w"], axis=1, keepdims=True)
        return 0.5 * jnp.sum(jnp.einsum("gi,gij,gj->g", u, a, u))

    return params, sym, loss


def _toy_runs(lr, beta, wd, r0, n, accumulate="gradient", mapping=None):
    params, sym, loss = _toy(r0)
    r0_sq = sym.group_norms(params)
    m = nld.rmsprop_mapping(r0_sq, lr=lr, momentum=beta, weight_decay=wd, accumulate=accumulate) if mapping is None else mapping(r0_sq)
    opts = (nj.rules.sgd(lr=lr, momentum=beta, weight_decay=wd).optimizer(), nld.sphere_rmsprop(sym, m, wd))
    p0 = (params, nj.symmetry.normalise_groups(sym, params))

    def step(carry, _):
        ps, os_ = carry
        new_p, new_o = [], []
        for p, o, opt in zip(ps, os_, opts):
            g = jax.grad(loss)(p)
            u, o = opt.update(g, o, p)
            new_p.append(optax.apply_updates(p, u))
            new_o.append(o)
        rec = (sym.group_norms(ps[0]), sym.group_norms(ps[0]) * sym.pair(jax.grad(loss)(ps[0]), jax.grad(loss)(ps[0])),
               nj.symmetry.group_angles(sym, ps[0], ps[1]), jnp.sqrt(optax.tree_utils.tree_get(os_[1], "accumulator")))
        return (tuple(new_p), tuple(new_o)), rec

    (_, _), (r2, ghat2, ang, sqrt_g) = jax.jit(
        lambda: jax.lax.scan(step, (p0, tuple(o.init(p) for o, p in zip(opts, p0))), None, length=n))()
    return np.asarray(r2), np.asarray(ghat2), np.asarray(ang), np.asarray(sqrt_g)


@pytest.mark.parametrize("lr, beta, wd, r0", [(0.1, 0.0, 0.0, 1.0), (0.1, 0.0, 1e-3, 1.0), (0.01, 0.9, 5e-4, 3.0)])
def test_toy_eq17_and_rmsprop_map_to_one_percent(lr, beta, wd, r0):
    """Eq. 17 predicts r² and the mapped group RMSProp tracks SGD: √G vs r² and lr/√G vs η/r² to ≤ 1%,
    the directions to ≤ 0.01 rad (0.57°), on a deterministic scale-invariant loss."""
    n = 3000
    r2, ghat2, ang, sqrt_g = _toy_runs(lr, beta, wd, r0, n)
    assert np.max(np.abs(r2 - r2[0]) / r2) > 1e-2  # the norm really moves
    r4 = np.asarray(theory.predict_nld_r4(r2[0] ** 2, ghat2[:-1], lr=lr, momentum=beta, weight_decay=wd))
    eq17 = float(np.max(np.asarray(nld.eq17_errors(r2, r4))))
    acc = float(np.max(np.abs(sqrt_g - r2) / r2))  # lr/√G vs η/r² (same lr): the same relative error
    print(f"\n  toy (η, β, λ, r0) = ({lr}, {beta}, {wd}, {r0}): eq.17 {eq17:.2e}, √G vs r² {acc:.2e}, max angle {ang.max():.3f}°")
    assert eq17 <= 1e-2
    assert acc <= 1e-2
    assert np.radians(ang.max()) <= 1e-2


def test_toy_momentum_is_part_of_the_map():
    """β = 0.9: the map with momentum tracks; the same accumulator without momentum (lr η/(1−β)) does not."""
    lr, beta, wd, r0, n = 0.01, 0.9, 5e-4, 3.0, 3000
    _, _, ang, _ = _toy_runs(lr, beta, wd, r0, n)

    def no_momentum(r0_sq):
        m = nld.rmsprop_mapping(r0_sq, lr=lr, momentum=beta, weight_decay=wd)
        return m._replace(lr=m.lr / (1 - beta), momentum=jnp.zeros(()))

    _, _, ang0, _ = _toy_runs(lr, beta, wd, r0, n, mapping=no_momentum)
    print(f"\n  toy β=0.9: max angle with momentum {ang.max():.3f}°, without {ang0.max():.3f}°")
    assert ang.max() < 0.6 and ang0.max() > 5 * ang.max()


def test_mapping_table_and_standard_form():
    m = nld.rmsprop_mapping(jnp.array([2.0]), lr=0.1, momentum=0.9, weight_decay=5e-4)
    np.testing.assert_allclose(float(m.decay), np.exp(-4 * 0.1 * 5e-4 / 0.1))
    np.testing.assert_allclose(float(m.gain), 2 * 0.01 * 1.9 / 0.1**3)  # 2η²(1+β)/(1−β)³ = 38
    np.testing.assert_allclose(np.asarray(m.initial_accumulator), [4.0])
    mm = nld.rmsprop_mapping(jnp.array([2.0]), lr=0.1, momentum=0.9, weight_decay=5e-4, accumulate="momentum")
    np.testing.assert_allclose(float(mm.gain), 2 * 0.01 * 1.9 / 0.1)
    # textbook RMSProp (gain 1−ρ) with the rescaled lr and G(0): the same lr/√G
    lr2, g02 = m.standard_form()
    np.testing.assert_allclose(float(lr2 / jnp.sqrt(g02[0])), float(m.lr / jnp.sqrt(m.initial_accumulator[0])))
    with pytest.raises(ValueError, match="accumulate"):
        nld.rmsprop_mapping(1.0, lr=0.1, accumulate="adam")


# ---------------------------------------------------------------------------------------------
# BatchNorm CNN on digits
# ---------------------------------------------------------------------------------------------


def _cnn_map_checks(cmp, lr, beta, wd, window=500):
    tr = cmp.track
    e = xnld.eq17_score(tr, 0, lr=lr, momentum=beta, weight_decay=wd).to_dict()
    s500 = nld.rmsprop_match(cmp, window=window).to_dict()
    s = nld.rmsprop_match(cmp).to_dict()
    return e, s500, s


@pytest.mark.slow  # the same targets are asserted on the main report's NLD part (tests/test_report.py)
def test_cnn_beta0_eq17_and_rmsprop_map_reduced(digits, cnn4):
    """Reduced version (width 4, 500 steps) of the issue's β = 0 targets: eq. 17 median ≤ 2%, the
    mapped RMSProp within 5° of SGD's θ̂ for every group, lr/√G within 5% of η/r², control ≥ 3× further."""
    net, params, state, sym = cnn4
    lr, beta, wd = 0.1, 0.0, 5e-4
    cmp = eqx.filter_jit(nld.compare_rmsprop)(net, sym, digits.x_train, digits.y_train, params, state, nj.Hyper(lr, beta, wd),
                                  jax.random.key(1), steps=500, batch_size=64)
    e, s500, s = _cnn_map_checks(cmp, lr, beta, wd)
    print(f"\n  eq17 median {e['median_rel_error']:.2e} max {e['max_rel_error']:.2e}; angle {s500['max_angle_deg']:.2f}° "
          f"control {s500['control_max_angle_deg']:.2f}°; lr_eff err {s['lr_eff_max_rel_error']:.2e}; "
          f"loss gap {s['final_loss_rel_gap']:.2e}")
    assert e["median_rel_error"] <= 0.02
    assert s500["max_angle_deg"] <= 5.0
    assert s["lr_eff_max_rel_error"] <= 0.05
    assert s500["control_max_angle_deg"] >= 3 * s500["max_angle_deg"]


@pytest.mark.slow
@pytest.mark.parametrize("width", [8])
def test_cnn_beta0_issue_targets_full(digits, width):
    """The issue's sizes: 2000 steps, λ = 5e-4, lr 0.1, β = 0."""
    net, params, state = models.functional(models.make_model("cnn_bn", width=width, key=0))
    sym = nld.cnn_scale_symmetry(params)
    lr, beta, wd = 0.1, 0.0, 5e-4
    cmp = eqx.filter_jit(nld.compare_rmsprop)(net, sym, digits.x_train, digits.y_train, params, state, nj.Hyper(lr, beta, wd),
                                  jax.random.key(1), steps=2000, batch_size=64)
    e, s500, s = _cnn_map_checks(cmp, lr, beta, wd)
    print(f"\n  width {width}: eq17 median {e['median_rel_error']:.2e}; angle(500) {s500['max_angle_deg']:.2f}° "
          f"control {s500['control_max_angle_deg']:.2f}°; lr_eff err(2000) {s['lr_eff_max_rel_error']:.2e}")
    assert e["median_rel_error"] <= 0.02
    assert s500["max_angle_deg"] <= 5.0
    assert s["lr_eff_max_rel_error"] <= 0.05
    assert s500["control_max_angle_deg"] >= 3 * s500["max_angle_deg"]


def test_compare_rmsprop_at_new_hyperparameters_compiles_nothing(digits, cnn4):
    """compare_rmsprop traces once per (model, symmetry, shapes, options): other η, β, λ and keys reuse the program."""
    net, params, state, sym = cnn4
    traces = {"n": 0}

    def counted(*args, **kwargs):
        traces["n"] += 1  # a Python side effect: runs only while JAX traces
        return net(*args, **kwargs)

    x, y = digits.x_train[:256], digits.y_train[:256]
    run = lambda h, k: nld.compare_rmsprop(counted, sym, x, y, params, state, h, jax.random.key(k), steps=4, batch_size=32)  # noqa: E731
    a = run(nj.Hyper(0.1), 0)
    n = traces["n"]
    assert n > 0
    b = run(nj.Hyper(0.05, 0.9, 1e-3), 1)
    assert traces["n"] == n, "a second call at new hyperparameters re-traced the model"
    assert not np.allclose(np.asarray(a.track.loss), np.asarray(b.track.loss))  # the new values were used
    nld.compare_rmsprop(counted, sym, x, y, params, state, nj.Hyper(0.1), jax.random.key(0), steps=6, batch_size=32)
    assert traces["n"] > n  # a new number of steps does re-trace: the probe works


def test_compare_rmsprop_runs_a_float32_model_in_float32_under_x64(digits, cnn4):
    """A float32 model (flax's default) with float64 hyperparameters (x64 on): the runs stay in float32, and agree with
    the float64 run to float32 precision (the scan failed on the float64 learning rate before)."""
    net, params, state, sym = cnn4
    net32, p32, s32 = models.functional(models.make_model("cnn_bn", width=4, key=0, dtype=jnp.float32))
    from noether_jax._tree import cast_floats

    params, state = cast_floats(p32, jnp.float64), cast_floats(s32, jnp.float64)  # the float64 run starts at the same point
    x, y = digits.x_train[:256], digits.y_train[:256]
    kw = dict(steps=5, batch_size=32)
    c32 = nld.compare_rmsprop(net32, sym, x, y, p32, s32, nj.Hyper(0.1, 0.9, 5e-4), jax.random.key(0), **kw)
    c64 = nld.compare_rmsprop(net, sym, x, y, params, state, nj.Hyper(0.1, 0.9, 5e-4), jax.random.key(0), **kw)
    assert {a.dtype for a in jax.tree.leaves(c32.track.params) if jnp.issubdtype(a.dtype, jnp.floating)} == {jnp.dtype("float32")}
    assert c32.track.r2.dtype == jnp.float32 and c64.track.r2.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(c32.track.loss), np.asarray(c64.track.loss), rtol=1e-4)


def test_cnn_beta09_eq17_diagnosis(digits, cnn4):
    """β = 0.9 under mini-batch noise: eq. 17's |ĝ|² forcing overpredicts r² (momentum averages noise,
    |θ̇|²μ²r²/|ĝ|² → (1−β)/(1+β)); the measured forcing ratio sits at that noise limit, not at 1, and
    the velocity-forced form is several times closer. Measured (width 4, 500 steps): forcing ratio 0.047,
    at the noise limit 0.053 (not at 1); eq. 17 median error ≈ 4 against ≈ 0.25 for the velocity form. (The issue's 2% target is the xfail below.)"""
    net, params, state, sym = cnn4
    lr, beta, wd = 0.1, 0.9, 5e-4
    opt = nj.rules.sgd(lr=lr, momentum=beta, weight_decay=wd).optimizer()
    tr = jax.jit(lambda p, s, k: nld.lockstep(net, sym, digits.x_train, digits.y_train, [(p, opt, None)], s, k, steps=500,
                                              batch_size=64))(params, state, jax.random.key(1))
    e = xnld.eq17_score(tr, 0, lr=lr, momentum=beta, weight_decay=wd).to_dict()
    print(f"\n  β=0.9: eq17 median {e['median_rel_error']:.3f}, velocity-forced {e['velocity_forced_median_rel_error']:.3f}, "
          f"forcing ratio {e['forcing_ratio']:.3f} (noise limit {e['noise_limit_ratio']:.3f})")
    # noise-dominated: the ratio is nearer (in log scale) the pure-noise limit than the slow-gradient value 1
    assert abs(np.log(e["forcing_ratio"] / e["noise_limit_ratio"])) < abs(np.log(e["forcing_ratio"]))
    assert e["velocity_forced_median_rel_error"] < e["median_rel_error"] / 3


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="eq. 17 drops inertia and assumes a slowly varying gradient; under mini-batch "
                   "noise at β = 0.9 it overpredicts r² (measured median rel. error ≈ 4, i.e. 400%, on cnn_bn width 4–8).")
def test_cnn_beta09_eq17_issue_target(digits):
    net, params, state = models.functional(models.make_model("cnn_bn", width=8, key=0))
    rec = nj.Recorder(net, {"scale": nld.cnn_scale_symmetry(params)}, digits.x_train, digits.y_train, batch_size=64,
                      steps=2000, save_every=10)
    out = rec.run(params, state, nj.Hyper(0.1, 0.9, 5e-4), jax.random.key(1))
    err = np.asarray(nld.eq17_errors(out.measured["scale"], out.nld_r4))
    assert np.median(err) <= 0.02


@pytest.mark.slow  # the same claims are asserted on the main report's NLD part (tests/test_report.py)
def test_ablation_init_x10_same_loss_different_training(digits, cnn4):
    net, params, state, sym = cnn4
    a = xnld.init_scale_ablation(net, sym, digits.x_train, digits.y_train, params, state, nj.Hyper(0.1, 0.0, 5e-4),
                                jax.random.key(1), steps=300, batch_size=64)
    print(f"\n  ×10 init: loss0 {a.initial_loss}, final {a.final_loss}, lr_eff start {a.median_lr_eff_start}")
    assert a.initial_loss_rel_diff <= 1e-4  # the same function (up to BatchNorm's ε)
    np.testing.assert_allclose(a.median_lr_eff_start[0] / a.median_lr_eff_start[1], 100.0, rtol=1e-9)
    assert a.final_loss[1] > 2 * a.final_loss[0]


@pytest.mark.slow  # the same claim, and the constraint holding, are asserted on the main report's NLD part (test_report.py)
def test_ablation_constrained_norm_loses_at_beta09_with_weight_decay(digits, cnn4):
    """NLD Fig. 3's direction, reduced: at β = 0.9 with λ = 5e-4, the best unconstrained run over η reaches a
    lower final training loss than the best constrained one (one vmapped Recorder per side)."""
    net, params, state, sym = cnn4
    b = xnld.constrained_ablation(net, sym, digits.x_train, digits.y_train, params, state, jax.random.key(1),
                                 lrs=[0.1], momenta=[0.9], weight_decays=[5e-4], steps=400, batch_size=64)
    u, c = np.nanmin(b.unconstrained), np.nanmin(b.constrained)
    print(f"\n  final training loss: unconstrained {b.unconstrained.ravel()}, constrained {b.constrained.ravel()}")
    assert u < c
    # the constraint holds: every group ends at its initial norm
    r2_0 = np.asarray(sym.group_norms(params))
    np.testing.assert_allclose(b.constrained_r2_end[0, 0, 0], r2_0, rtol=1e-10)
    assert b.constrained_max_norm_drift <= 1e-10


def test_constrain_norm_and_sphere_helpers():
    sym = nj.symmetry.Scale({"w": jnp.array([0, 0, 1, 1, -1])})
    p0 = {"w": jnp.array([3.0, 4.0, 1.0, 0.0, 9.0])}
    p = {"w": jnp.array([6.0, 8.0, 0.0, 2.0, 5.0])}
    out = nld.constrain_norm(sym)(p, p0)
    np.testing.assert_allclose(np.asarray(sym.group_norms(out)), np.asarray(sym.group_norms(p0)))
    assert float(out["w"][4]) == 5.0
    np.testing.assert_allclose(np.asarray(nj.symmetry.group_angles(sym, p0, p)), [0.0, 90.0], atol=1e-6)


@pytest.mark.slow  # 15-18 s; test_report.py::test_report_adam_norm_laws_and_double_adaptivity holds the report's run of
# the same model and optimisers (200 steps) to the same claims in the default run
def test_adam_norm_recursion_and_double_adaptivity(digits, cnn4):
    """Adam/AdamW on normalised layers: |W|² ← (1−ηλ)²|W|² + η²|u|² with the run's own u. The recursion
    neglects 2η(1−ηλ)⟨W,u⟩; the test pins how large that is, and that r² grows and slows the angular step."""
    net, params, state, sym = cnn4
    c = xnld.adam_norm_check(net, sym, digits.x_train, digits.y_train, params, state, jax.random.key(1), lr=0.01,
                            weight_decay=0.1, steps=300, batch_size=64)
    for name in ("adam", "adamw", "adam_b1_0"):
        d = c.runs[name].to_dict()
        print(f"\n  {name}: recursion median rel err {d['median_rel_error']:.3f}, cross-term share {d['cross_term_share_median']:.3f},"
              f" r² ×{d['r2_growth_median']:.2f}, angular step {d['angular_step_start_median']:.4f} → {d['angular_step_end_median']:.4f}")
    # with the neglected cross term added back, the recursion is an identity (checks the bookkeeping)
    d = c.runs["adam"]
    assert d.r2_growth_median > 1.0
    assert d.angular_step_end_median < d.angular_step_start_median  # double adaptivity: r² grows, θ̂ slows
    assert c.runs["adamw"].r2_end_median < c.runs["adam"].r2_end_median
    # the law that keeps ⟨W,u⟩ through the gradient's moving average: at b1 = 0 it is the recursion itself;
    # at b1 = 0.9 it removes the momentum part of the cross term (measured: 49 %/53 % → 9.4 %/9.4 %)
    b0 = c.runs["adam_b1_0"]
    np.testing.assert_allclose(b0.momentum_law_pred, b0.pred, rtol=1e-6)
    for name in ("adam", "adamw"):
        r = c.runs[name]
        assert r.momentum_law_median_rel_error < 0.5 * r.median_rel_error, name
    # the tilt T = ⟨W, Dg⟩ and the drift Δ recorded in the same run (AdamTilt, from optax's state): fed both,
    # the law is the exact identity; at b1 = 0 the tilt alone is (u = Dg); at b1 = 0.9 the tilt removes
    # half of what the law without it misses (measured here, float64, 300 steps: Adam 8.6 % → 4.3 %,
    # AdamW 8.4 % → 4.3 %; the rest is the drift Δ of ν̂ over one step, built up in the first 50 steps)
    for name in ("adam", "adamw", "adam_b1_0"):
        r = c.runs[name]
        print(f"  {name}: |W|² median rel err GT {r.median_rel_error:.4f}, no tilt {r.momentum_law_median_rel_error:.4f},"
              f" with tilt {r.tilt_law_median_rel_error:.4f}, with tilt and drift (max) {r.exact_law_max_rel_error:.1e}")
        assert r.exact_law_max_rel_error < 1e-4, name
        assert r.tilt.shape == r.drift.shape == (300, sym.n_groups)
    assert b0.tilt_law_max_rel_error < 1e-4
    for name in ("adam", "adamw"):
        r = c.runs[name]
        assert r.tilt_law_median_rel_error < 0.6 * r.momentum_law_median_rel_error, name
        assert r.tilt_law_median_rel_error <= 0.05, name  # the issue's target


def _toy_adam(b1: float, wd: float, n: int = 120, lr: float = 0.005, noise: float = 0.0, seed: int = 5):
    """optax Adam/AdamW on a scale-invariant toy L = ½ ûᵀ(A + σBₙ)û (A diagonal, so that Adam's
    per-coordinate D is anisotropic; Bₙ a fresh random term per step when σ > 0; ⟨W, g⟩ = 0 at every
    step): per step and group |Wₙ|², |uₙ|², the tilt
    Tₙ = ⟨Wₙ, Dₙgₙ⟩ and the drift Δₙ = ⟨Wₙ, (Dₙ − rₙDₙ₋₁)mₙ₋₁⟩, measured here from optax's state
    independently of ``experiments.nld.AdamTilt``."""
    params, sym, _ = _toy(1.0, seed)
    a0 = jnp.asarray(np.stack([np.diag(np.linspace(0.1, 1.0, D))] * G))
    b2, eps = 0.999, 1e-8
    opt = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd)

    def loss(p, b):
        u = p["w"] / jnp.linalg.norm(p["w"], axis=1, keepdims=True)
        return 0.5 * jnp.sum(jnp.einsum("gi,gij,gj->g", u, a0 + noise * b, u))

    def step(carry, key):
        p, o, m_prev, d_prev, w1_prev = carry
        b = jax.random.normal(key, (G, D, D))
        g = jax.grad(loss)(p, 0.5 * (b + jnp.swapaxes(b, 1, 2)))
        upd, o = opt.update(g, o, p)
        s = o[0]  # ScaleByAdamState after the step: count = n + 1
        w1, w2 = 1.0 - b1 ** s.count.astype(float), 1.0 - b2 ** s.count.astype(float)
        d = 1.0 / (w1 * (jnp.sqrt(s.nu["w"] / w2) + eps))
        u = -upd["w"] / lr - wd * p["w"]
        w = p["w"]
        rec = (jnp.sum(w * w, 1), jnp.sum(u * u, 1), jnp.sum(w * d * g["w"], 1),
               jnp.sum(w * (d - w1_prev / w1 * d_prev) * m_prev, 1), jnp.sum(w * g["w"], 1))
        return (optax.apply_updates(p, upd), o, s.mu["w"], d, w1), rec

    zeros = jnp.zeros_like(params["w"])
    keys = jax.random.split(jax.random.key(seed), n)
    (p, *_), (r2, u_sq, tilt, drift, wg) = jax.jit(
        lambda: jax.lax.scan(step, (params, opt.init(params), zeros, zeros, jnp.zeros(())), keys))()
    r2 = np.concatenate([np.asarray(r2), np.asarray(sym.group_norms(p))[None]])
    return r2, np.asarray(u_sq), np.asarray(tilt), np.asarray(drift), np.asarray(wg)


@pytest.mark.parametrize("b1, wd", [(0.9, 0.0), (0.9, 0.5), (0.0, 0.0)])
def test_adam_norm_law_with_measured_tilt(b1, wd):
    """theory.adam_norm fed the measured tilt T = ⟨W, Dg⟩ against |W|² of an optax run on the
    scale-invariant toy. Fed T and the drift Δ it is the exact identity (float32 round-off); fed T
    alone its only approximation is Δ = 0, so its error is bounded by the same recursion run on |Δ|
    alone (it is linear in Δ; the bound is 0 at b₁ = 0, where u = Dg and C = T exactly). The law
    without T must miss by more than twice that bound, or the test would not see the tilt. (Here Δ is
    one-signed: ν̂ lags the gradient as it decays toward the minimum, so the bound is tight; with a
    noisy loss, σ > 0, Δ changes sign and the |Δ| bound is loose.)"""
    r2, u_sq, tilt, drift, wg = _toy_adam(b1, wd)
    assert np.max(np.abs(wg)) < 1e-5 * np.sqrt(np.max(r2))  # scale-invariant: ⟨W, g⟩ = 0
    law = {"lr": 0.005, "b1": b1, "decoupled_weight_decay": wd}
    x0 = jnp.asarray(r2[0])
    exact = np.asarray(theory.adam_norm(x0, u_sq, tilt=tilt, drift=drift, **law))
    with_tilt = np.asarray(theory.adam_norm(x0, u_sq, tilt=tilt, **law))
    no_tilt = np.asarray(theory.adam_norm(x0, u_sq, **law))
    bound = np.abs(np.asarray(theory.adam_norm(jnp.zeros(G), np.zeros_like(u_sq), drift=np.abs(drift), **law)))

    def rel(p):
        return np.abs(p - r2) / r2

    print(f"\n  toy Adam b1={b1} λ={wd}: |W|² ×{np.round(r2[-1] / r2[0], 2)}; max rel err exact {rel(exact).max():.1e}, "
          f"with T {rel(with_tilt).max():.2e} (Δ bound {np.max(bound / r2):.2e}), without T {rel(no_tilt).max():.2e}")
    assert np.max(np.abs(r2 / r2[0] - 1)) > 0.05  # the norm moves
    assert rel(exact).max() < 2e-5
    assert np.all(np.abs(with_tilt - r2) <= bound + 2e-5 * r2)
    assert rel(no_tilt).max() > 2.0 * np.max(bound / r2) + 1e-4
    with pytest.raises(ValueError, match="cross_term"):
        theory.adam_norm(x0, u_sq, tilt=tilt, cross_term=False, **law)
    with pytest.raises(ValueError, match="shape"):
        theory.adam_norm(x0, u_sq, tilt=tilt[1:], **law)


@pytest.mark.slow  # the same claims are asserted on the main report's KSB rows (tests/test_report.py)
def test_ksb_report_rules(digits):
    """Euclidean rules break scale (δK = m|v_𝒜|²) and not translation; a diagonal metric constant in θ (a fixed
    preconditioner, or the accumulators of Adam, AdamW and RMSProp) breaks scale and not translation either."""
    net, params, state = models.functional(models.make_model("cnn_bn", width=2, key=0))
    head = params["head"]["kernel"]
    tmask = jax.tree.map(lambda a: -jnp.ones(a.shape, jnp.int32), params)
    tmask["head"]["kernel"] = jnp.broadcast_to(jnp.arange(head.shape[0], dtype=jnp.int32)[:, None], head.shape)
    syms = {"scale": nld.cnn_scale_symmetry(params), "translation": nj.symmetry.Translation(tmask)}
    rows = xnld.ksb_report(net, syms, digits.x_train, digits.y_train, params, state, jax.random.key(0), steps=20,
                          snapshots=2, batch_size=32)
    by = {(r.symmetry, r.rule): r.to_dict() for r in rows}
    assert len(rows) == 12
    for rule in ("sgd", "heavy_ball", "preconditioned", "adam", "adamw", "rmsprop"):
        assert by[("scale", rule)]["breaks"] == 1.0 and by[("scale", rule)]["median_abs_dK"] > 0
        assert by[("translation", rule)]["breaks"] == 0.0
        assert by[("translation", rule)]["max_abs_dK"] <= 1e-10 * max(1.0, by[("scale", rule)]["max_abs_dK"])


# --------------------------------------------------------------------------- eq. 17 forcings under noise
def _buffer_power(g, beta):
    """Ground truth: |vₙ|² of the heavy-ball buffer vₙ = βvₙ₋₁ + gₙ, per group (numpy)."""
    v, out = np.zeros_like(g[0]), []
    for gn in g:
        v = beta * v + gn
        out.append((v**2).sum(-1))
    return np.array(out)


def _lag_products(g, lags):
    n = g.shape[0]
    out = np.full((n, lags, g.shape[1]), np.nan)
    for i in range(n):
        for k in range(1, min(lags, i) + 1):
            out[i, k - 1] = (g[i] * g[i - k]).sum(-1)
    return out


def test_eq17_forcings_against_the_buffer_power():
    """Every lag is recorded and none averaged: the 'lags' model is the buffer power exactly; a constant
    gradient makes the noise-aware and geometric models exact too, and the paper's its n → ∞ limit."""
    rng, beta, n = np.random.default_rng(0), 0.8, 40
    g = rng.normal(size=(n, 3, 5))
    kw = dict(lr=0.1, momentum=beta, grad_sq=(g**2).sum(-1))
    v2 = nld.squared_velocity("lags", grad_lag=_lag_products(g, n), window=1, **kw)
    np.testing.assert_allclose(v2, _buffer_power(g, beta), rtol=1e-10)
    c = np.broadcast_to(rng.normal(size=(1, 3, 5)), g.shape)
    kc = dict(lr=0.1, momentum=beta, grad_sq=(c**2).sum(-1), grad_lag=_lag_products(c, 4))
    for forcing in ("noise_aware", "spectral", "lags"):
        got = nld.squared_velocity(forcing, **(kc | ({"grad_lag": _lag_products(c, n)} if forcing == "lags" else {})))
        np.testing.assert_allclose(got, _buffer_power(c, beta), rtol=1e-10, err_msg=forcing)
    paper = nld.squared_velocity("paper", **kc)
    np.testing.assert_allclose(paper[-1], _buffer_power(c, beta)[-1], rtol=1e-3)
    with pytest.raises(ValueError, match="grad_lag"):
        nld.squared_velocity("spectral", lr=0.1, momentum=beta, grad_sq=(g**2).sum(-1))


@pytest.mark.slow  # 20 s: a 60-step lockstep run with 60 recorded lags
def test_eq17_forms_on_a_bn_cnn(digits):
    """SGD with β = 0.9 on the BN CNN: the recorded lag products rebuild the buffer power exactly (λ = 0,
    all lags, no averaging), the oscillator fed the momentum-filtered forcing holds to 0.5 %, and the
    paper's forcing is far off (the buffer averages the mini-batch noise)."""
    net, params, state = models.functional(models.make_model("cnn_bn", width=2, key=0))
    sym = nld.cnn_scale_symmetry(params)
    lr, beta, n = 0.03, 0.9, 60
    opt = nj.rules.sgd(lr=lr, momentum=beta).optimizer()
    tr = nld.lockstep(net, sym, digits.x_train, digits.y_train, [(params, opt, None)], state, jax.random.key(1), steps=n,
                      batch_size=32, lags=n)
    v_true = np.asarray(tr.step_sq[0]) / lr**2
    v_lags = nld.squared_velocity("lags", lr=lr, momentum=beta, grad_sq=tr.grad_sq[0], grad_lag=tr.grad_lag, window=1)
    np.testing.assert_allclose(v_lags, v_true, rtol=1e-4)
    r2 = tr.r2[0]
    err = lambda f, form: float(np.median(nj.theory.relative_error(  # noqa: E731
        nld.predict_eq17(f, form, r2, lr=lr, momentum=beta, grad_sq=tr.grad_sq[0], step_sq=tr.step_sq[0],
                         grad_lag=tr.grad_lag), r2)))
    assert err("velocity", "oscillator") < 5e-3
    assert err("paper", "bernoulli") > 10 * err("velocity", "oscillator")
