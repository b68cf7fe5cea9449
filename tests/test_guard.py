"""The edge-of-stability guard.

Ground truths: λ_max of a quadratic built from a known spectrum, dense ``numpy.linalg.eigvalsh`` of
the Hessian of a small network (fine at d ≈ 60, which is why the library never does it), and the
discrete optax runs themselves: beyond η·λ_max = 2(1+β) the iterates of GD / heavy ball on a
quadratic grow without bound, below it they contract.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import noether_jax as nj
from noether_jax.stochastic import edge_of_stability, lambda_max, stability_guard

D = 40
_rng = np.random.default_rng(0)
_Q, _ = np.linalg.qr(_rng.normal(size=(D, D)))
SPECTRUM = np.concatenate([[5.0, 4.0], _rng.uniform(0.1, 3.0, size=D - 2)])  # λ_max = 5
H = jnp.asarray(_Q @ np.diag(SPECTRUM) @ _Q.T)


def quad(p):
    return 0.5 * p @ H @ p


def _diverges(lr: float, beta: float, steps: int = 3000) -> bool:
    """Run optax heavy ball on the positive-definite quadratic and see whether the iterates blow up."""
    opt = nj.rules.sgd(lr=lr, momentum=beta).optimizer()
    p = jnp.asarray(_Q[:, 0] + 0.1 * _Q[:, 1])  # mostly along the top eigenvector
    s = opt.init(p)

    def body(c, _):
        p, s = c
        u, s = opt.update(jax.grad(quad)(p), s, p)
        return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(body, (p, s), None, length=steps)
    return bool(~jnp.isfinite(jnp.linalg.norm(p)) | (jnp.linalg.norm(p) > 10.0))


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_lambda_max_of_known_spectrum(method):
    iters = 40 if method == "lanczos" else 2000
    lam = float(lambda_max(quad, jnp.zeros(D), method=method, iters=iters, tol=1e-13))
    np.testing.assert_allclose(lam, 5.0, rtol=1e-6)


def test_power_iteration_finds_the_largest_when_the_dominant_eigenvalue_is_negative():
    q = jnp.asarray(_Q @ np.diag(np.linspace(-9.0, 2.0, D)) @ _Q.T)
    lam = float(lambda_max(lambda p: 0.5 * p @ q @ p, jnp.zeros(D), method="power", iters=5000, tol=1e-14))
    np.testing.assert_allclose(lam, 2.0, rtol=1e-4)


def test_lambda_max_of_a_network_matches_dense_eigvalsh():
    """A tanh MLP on a pytree: Lanczos (HVPs) against the dense Hessian's eigvalsh, weight decay included."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x, y = jax.random.normal(k1, (32, 5)), jax.random.normal(k2, (32,))
    p = {"w1": 0.8 * jax.random.normal(k3, (5, 8)), "w2": jnp.linspace(-1, 1, 8)}

    def loss(q):
        return jnp.mean((jnp.tanh(x @ q["w1"]) @ q["w2"] - y) ** 2)

    flat, unravel = jax.flatten_util.ravel_pytree(p)
    dense = jax.hessian(lambda f: loss(unravel(f)) + 0.5 * 0.3 * f @ f)(flat)
    ref = float(np.linalg.eigvalsh(np.asarray(dense))[-1])
    got = float(lambda_max(loss, p, weight_decay=0.3, iters=flat.size))
    np.testing.assert_allclose(got, ref, rtol=1e-8)


@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_guard_flags_exactly_the_runs_that_leave_the_stable_region(beta):
    thr = 2.0 * (1.0 + beta)
    lrs = np.array([0.5, 0.8, 0.95, 0.99, 1.01, 1.05, 1.2]) * thr / 5.0  # straddle η·λ_max = 2(1+β)
    guard = stability_guard(quad, jnp.zeros(D), lr=jnp.asarray(lrs), momentum=beta, iters=40)
    flagged = np.asarray(guard.flagged)
    diverged = np.array([_diverges(float(lr), beta) for lr in lrs])
    np.testing.assert_array_equal(flagged, lrs * 5.0 > thr)  # against the analytic λ_max
    np.testing.assert_array_equal(flagged, diverged)  # and against the discrete runs themselves
    assert flagged.any() and not flagged.all()
    s = guard.summary()
    assert s["flagged"] == int((lrs * 5.0 > thr).sum()) and s["checked"] == len(lrs) and s["valid"] is False
    np.testing.assert_allclose(s["threshold"], thr)


def test_guard_along_a_path_flags_the_sharp_steps():
    """ℒ = ½ c(p₀) |p|² with curvature growing in p₀: the flagged steps are those a dense eigvalsh flags."""

    def loss(p):
        return 0.5 * (1.0 + p[0] ** 2) * jnp.sum(p[1:] ** 2) + 0.5 * p[0] ** 2

    path = jnp.stack([jnp.array([a, 0.3, -0.2]) for a in np.linspace(0.0, 3.0, 13)])
    g = stability_guard(loss, path, lr=0.5, along_path=True, iters=3)
    dense = np.array([np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(p)))[-1] for p in path])
    np.testing.assert_allclose(np.asarray(g.lambda_max), dense, rtol=1e-8)
    np.testing.assert_array_equal(np.asarray(g.flagged), 0.5 * dense > 2.0)
    assert 0 < int(np.asarray(g.flagged).sum()) < len(path)


def test_guard_runs_under_jit_and_vmap_without_recompiling():
    f = jax.jit(lambda p, lr: stability_guard(quad, p, lr=lr, iters=20).sharpness)
    a = f(jnp.zeros(D), 0.1)
    b = f(jnp.ones(D), 0.2)  # new values, same shapes: no retrace
    assert f._cache_size() == 1
    np.testing.assert_allclose([float(a), float(b)], [0.5, 1.0], rtol=1e-6)
    lam = jax.vmap(lambda s: lambda_max(lambda p: s * quad(p), jnp.zeros(D), iters=40))(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(np.asarray(lam), [5.0, 10.0], rtol=1e-6)


@pytest.mark.parametrize(
    "kw, match",
    [(dict(lr=0.0), "`lr`"), (dict(lr=-1.0), "`lr`"), (dict(momentum=1.0), "`momentum`"), (dict(momentum=-0.5), "`momentum`")],
)
def test_bad_hyperparameters(kw, match):
    args = dict(lr=0.1, momentum=0.0) | kw
    with pytest.raises(ValueError, match=match):
        edge_of_stability(3.0, **args)
    with pytest.raises(ValueError, match=match):
        stability_guard(quad, jnp.zeros(D), **args)


def test_bad_method_and_iters():
    with pytest.raises(ValueError, match="method"):
        lambda_max(quad, jnp.zeros(D), method="arnoldi")
    with pytest.raises(ValueError, match="iters"):
        lambda_max(quad, jnp.zeros(D), iters=0)
    with pytest.raises(ValueError, match="scalar"):
        lambda_max(lambda p: p, jnp.zeros(D))


# --------------------------------------------------------------------------- the guard along real training
def test_recorder_estimates_lambda_max_along_training_without_changing_it():
    """Full-batch GD of a ReLU MLP on digits: the recorder's λ_max at the first and the last step equal
    the top eigenvalue of the dense Hessian (d = 247) there; the training itself is bit for bit the same."""
    ds = nj.data.digits()
    x, y = ds.x_train[:256], ds.y_train[:256]
    net, params, state = nj.models.functional(nj.models.make_model("mlp", width=3, key=3))
    syms = {"translation": nj.symmetry.Translation({"head": {"bias": True, "kernel": False},
                                                    "hidden": {0: {"bias": False, "kernel": False}, 1: {"bias": False, "kernel": False}}})}
    hyper = nj.Hyper(0.5, 0.0, 1e-3)
    kw = dict(batch_size=256, steps=40, save_every=10)  # a batch of all 256 examples: the full-batch loss
    plain = nj.Recorder(net, syms, x, y, **kw).run(params, state, hyper, jax.random.key(0))
    rec = nj.Recorder(net, syms, x, y, sharpness_every=20, sharpness_iters=80, **kw)
    out = jax.jit(nj.Recorder.run)(rec, params, state, hyper, jax.random.key(0))
    assert np.asarray(out.sharpness_step).tolist() == [0, 20, 40]
    for a, b in zip(jax.tree.leaves((plain.params, plain.measured, plain.loss)), jax.tree.leaves((out.params, out.measured, out.loss))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def dense_top(p):
        f = lambda v: nj.models.cross_entropy(net(unravel(v), state, x, train=True)[0], y) + 0.5e-3 * v @ v  # noqa: E731
        return float(np.linalg.eigvalsh(np.asarray(jax.hessian(f)(jax.flatten_util.ravel_pytree(p)[0])))[-1])

    lam = np.asarray(out.lambda_max)
    np.testing.assert_allclose(lam[[0, -1]], [dense_top(params), dense_top(out.params)], rtol=1e-6)
    assert np.all(lam > 0)


def test_neural_mechanics_summary_carries_the_guard():
    from noether_jax.experiments import NMConfig, neural_mechanics

    res = neural_mechanics(NMConfig(width=8, steps=40, save_every=10, lr=0.1))
    stab = res.summary["stability"]
    lam = np.asarray(res.record.lambda_max)
    assert len(stab["step"]) == lam.size >= 2 and np.all(np.isfinite(lam))
    np.testing.assert_allclose(stab["max_sharpness"], 0.1 * lam.max())
    assert stab["valid"] == bool(0.1 * lam.max() <= 2.0)
    assert "lambda_max" in res.dataset and res.dataset["lambda_max"].dims == ("sharpness_step",)


def test_summaries_and_reports_state_the_flag():
    """η·λ_max against 2(1+β) in a run's summary and its report sentence (λ_max values given, so exact)."""
    from noether_jax.report import stability_note

    def stability(lr, momentum, *lams):
        edge = nj.rules.sgd(lr=lr, momentum=momentum).edge()
        return nj.training.StabilityGuard.from_edge(np.array(lams), edge, np.arange(len(lams)) * 10).summary()

    s = stability(0.1, 0.0, 10.0, 25.0, 15.0)  # η·λ = 1, 2.5, 1.5 against 2
    assert s["flagged_steps"] == [10] and not s["valid"] and s["max_sharpness"] == pytest.approx(2.5)
    assert "EDGE OF STABILITY" in stability_note(s) and "[10]" in stability_note(s)
    s = stability(0.1, 0.9, 10.0, 25.0, 15.0)  # against 2(1+β) = 3.8
    assert s["valid"] and s["flagged_steps"] == [] and "applies" in stability_note(s)
    s = stability(0.1, 0.0, 10.0, np.nan)
    assert not s["valid"] and s["not_finite_steps"] == [10] and "not finite" in stability_note(s)
