"""Sweeps that answer the design's question: KSB, the charge budget, the RMSProp analogy, the guard and the
continuous flow, per member, inside the same compiled program.

Ground truth: the library's Noether functions evaluated by the test on the recorded states; the exact
gradient constraint (the loss's part of the potential term vanishes, so it is −λX); a standalone
``compare_rmsprop`` of the same configuration; an order-of-convergence fit across the swept η; a sweep
without the diverging member.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest
from _groups import mlp_groups

import noether_jax as nj
from noether_jax import models


@pytest.fixture(scope="module")
def digits():
    return nj.data.digits()


def test_ksb_and_budget_match_the_library_on_the_recorded_states(digits):
    lr, wd = 0.1, 1e-2
    rule = nj.rules.sgd(lr=lr, momentum=0.9, weight_decay=wd)
    for name in ("mlp_layernorm",):  # all three kinds: translation, scale (LayerNorm) and rescale (ReLU units)
        net, params, state = models.functional(models.make_model(name, width=8, key=0))
        syms = mlp_groups(name, params)
        rec = nj.Recorder(net, syms, digits.x_train, digits.y_train, batch_size=32, steps=6, save_every=1, optimizer=rule,
                          noether=True, save_params=True)
        out = rec.run(params, state, key=jax.random.key(1))
        qs = out.params_series
        for kind, sym in syms.items():
            ksb = np.asarray(out.ksb[kind])
            assert np.isnan(ksb[0]).all()
            for s in range(1, ksb.shape[0]):  # at (θ, v) of the step θ → θ' before save point s
                q = jax.tree.map(lambda a, s=s: a[s - 1], qs)
                v = jax.tree.map(lambda a, s=s: (a[s] - a[s - 1]) / lr, qs)
                expected = np.abs(np.asarray(nj.kinetic_symmetry_breaking(rule, sym)(q, v))) / (2 * float(rule.kinetic()(q, v, 0.0)))
                np.testing.assert_allclose(ksb[s], expected, rtol=1e-10, atol=1e-300)
            if kind == "translation":
                assert np.all(ksb[1:] == 0.0)  # a Euclidean kinetic energy keeps translations exactly
            else:
                assert np.all(ksb[1:] > 0.0)
            # the loss's share of the potential part vanishes (gradient constraint): what is left is −λX at θ
            x = np.asarray(out.measured[kind])[:-1]  # X at the θ of each step before a save point
            pot = np.asarray(out.budget[kind]["potential"])
            tol = 1e-9 if kind != "scale" else 1e-4  # LayerNorm's ε breaks scale invariance at O(ε/var)
            # relative to λΣ|X|Δt, with an absolute floor for ⟨g, ξ⟩'s round-off where X ≈ 0 (the class biases' sum)
            bound = tol * wd * lr * np.abs(x).sum(0) + 1e-15 * lr * x.shape[0]
            np.testing.assert_array_less(np.abs(pot + wd * lr * x.sum(0)), bound)


def test_sweep_ksb_budget_rmsprop_and_guard_per_member(digits):
    lr, mom = [0.05, 0.1], [0.0, 0.9]
    kw = dict(steps=10, save_every=5, width=8, batch_size=32, seed=[0], progress=False, dtype="float64", data=digits)
    ds = nj.sweep("mlp_layernorm", lr=lr, momentum=mom, noether=True, rmsprop=True, sharpness_every=5, **kw)
    assert (ds.status.values == 0).all()
    assert (ds.ksb_translation.values == 0.0).all() and (ds.ksb_scale.values > 0).all()
    assert np.isfinite(ds.sharpness_max.values).all() and (ds.edge_of_stability.values == 0.0).all()
    # one member against a standalone compare_rmsprop of the same configuration (same key, same batches)
    net, params, state = models.functional(models.make_model("mlp_layernorm", key=0, width=8))
    found = nj.symmetry.detect(net, params, (digits.x_train[:64], digits.y_train[:64]), state=state)
    for a in lr:
        for b in mom:
            cmp = nj.nld.compare_rmsprop(net, found.symmetries["scale"], digits.x_train, digits.y_train, params, state,
                                         nj.Hyper(a, b), nj.sweeps.data_key(0), steps=10, batch_size=32)
            m = nj.nld.rmsprop_match(cmp)
            sel = ds.sel(lr=a, momentum=b).squeeze()
            # angles come from arccos, whose resolution near 0 is √(2ε) rad ≈ 1e-6°
            np.testing.assert_allclose(float(sel.rmsprop_angle_max), float(m.max_angle_deg), rtol=1e-8, atol=2e-6)
            np.testing.assert_allclose(float(sel.rmsprop_lr_eff_error), float(m.lr_eff_max_rel_error), rtol=1e-8, atol=1e-12)


def test_a_diverging_member_leaves_every_other_members_new_variables_unchanged(digits):
    kw = dict(momentum=0.9, steps=10, save_every=5, width=4, batch_size=32, seed=[0], progress=False, dtype="float64",
              data=digits, noether=True, sharpness_every=5)
    both = nj.sweep("mlp", lr=[0.05, 1e4], **kw)
    # the same program shape with a healthy second member: vmap widths equal, so the arithmetic is the same
    alone = nj.sweep("mlp", lr=[0.05, 0.07], **kw)
    assert both.status.sel(lr=1e4).item() == 1 and both.status.sel(lr=0.05).item() == 0
    new = [v for v in alone.data_vars if v.startswith(("ksb_", "budget_", "sharpness_", "edge_"))]
    assert len(new) >= 6
    for v in new:
        np.testing.assert_array_equal(both[v].sel(lr=0.05).values, alone[v].sel(lr=0.05).values, err_msg=v)
        assert np.isnan(both[v].sel(lr=1e4).values).all(), v


@pytest.mark.slow  # 60-70 s in the default run; the report (tests/test_report.py) asserts the same orders on the same grid
def test_flow_distance_is_second_order_for_the_modified_flow_and_first_for_gradient_flow(digits):
    """In float64; ``test_report.py::test_report_flow_orders_in_eta`` holds the report's float32 run of the same grid
    to the same bounds in the default run."""
    x, y = digits.x_train[:256], digits.y_train[:256]
    data = digits._replace(x_train=x, y_train=y)
    lrs = [0.2, 0.1, 0.05]
    kw = dict(lr=lrs, momentum=0.0, steps=80, save_every=20, width=8, batch_size=256, seed=[0], progress=False,
              dtype="float64", data=data)
    slopes = {}
    for flow in ("modified", "gradient"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a smooth model: no piecewise-smooth warning
            ds = nj.sweep("mlp_tanh", flow=flow, **kw)
        # the distance at the common time t = 4: step 20, 40, 80 for η = 0.2, 0.1, 0.05
        d = [float(ds.flow_distance.sel(lr=a).squeeze().values[int(4.0 / a) // 20]) for a in lrs]
        slopes[flow] = np.polyfit(np.log(lrs), np.log(d), 1)[0]
    print(f"\n  flow_distance order in η at t = 4: {slopes}")
    assert 1.7 <= slopes["modified"] <= 2.3, slopes
    assert 0.8 <= slopes["gradient"] <= 1.2, slopes


def test_flow_needs_full_batches_and_warns_on_kinks(digits):
    with pytest.raises(ValueError, match="SDE"):
        nj.sweep("mlp_tanh", lr=0.1, steps=2, save_every=1, batch_size=32, width=4, data=digits, progress=False, flow="modified")
    small = digits._replace(x_train=digits.x_train[:64], y_train=digits.y_train[:64])
    with pytest.warns(UserWarning, match="piecewise smooth"):
        nj.sweep("mlp", lr=0.1, steps=2, save_every=1, batch_size=64, width=4, data=small, progress=False, flow="gradient")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a smooth model: no piecewise-smooth warning
        nj.sweep("mlp_tanh", lr=0.1, steps=2, save_every=1, batch_size=64, width=4, data=small, progress=False, flow="gradient")
    with pytest.raises(ValueError, match="flow"):
        nj.sweep("mlp_tanh", lr=0.1, steps=2, save_every=1, batch_size=64, width=4, data=small, progress=False, flow="euler")
    with pytest.raises(ValueError, match="rule.flow"):  # Adam iterates are not scored against SGD's flow
        nj.sweep("mlp_tanh", lr=0.1, steps=2, save_every=1, batch_size=64, width=4, data=small, progress=False,
                 flow="modified", optimizer=nj.rules.adam(lr=0.1))
    with pytest.raises(ValueError, match="maps heavy-ball SGD"):
        nj.sweep("mlp_layernorm", lr=0.1, steps=2, save_every=1, batch_size=16, width=4, data=digits, progress=False,
                 rmsprop=True, optimizer=nj.rules.adam(lr=0.1))
    with pytest.raises(ValueError, match="scale groups"):
        nj.sweep("mlp", lr=0.1, steps=2, save_every=1, batch_size=16, width=4, data=digits, progress=False, rmsprop=True)


def test_model_independent_options_are_refused_before_the_model_is_built(digits, monkeypatch):
    """Flow with mini-batches and the NLD companions with Adam are refused whatever the model: before it is built
    or its symmetries found (building it would fail here)."""
    import noether_jax.sweeps._sweep as sw

    def never(*a, **k):
        raise AssertionError("the model was built before the options were checked")

    monkeypatch.setattr(sw, "init_models", never)
    kw = dict(lr=0.1, steps=2, save_every=1, width=4, data=digits, progress=False)
    with pytest.raises(ValueError, match="full-batch"):
        nj.sweep("mlp_tanh", batch_size=32, flow="modified", **kw)
    for opt in ("rmsprop", "eq17_forms"):
        with pytest.raises(ValueError, match="maps heavy-ball SGD"):
            nj.sweep("mlp_layernorm", batch_size=16, optimizer=nj.rules.adam(lr=0.1), **{opt: True}, **kw)
    with pytest.raises(ValueError, match="sharpness_every"):
        nj.sweep("mlp", batch_size=16, sharpness_every=3, **kw)


def test_the_optimizer_is_a_swept_dimension_and_adam_members_are_optax_adam(digits):
    kw = dict(lr=[1e-3, 1e-2], momentum=[0.0, 0.9], steps=10, save_every=5, width=4, batch_size=32, seed=[0], progress=False,
              dtype="float64", data=digits)
    ds = nj.sweep("mlp", optimizer=["sgd", "adam"], **kw)
    assert list(ds.optimizer.values) == ["sgd", "adam"] and "b1" in ds.attrs["optimizer"]
    assert (ds.status.values == 0).all()
    # ground truth: optax's own Adam, passed as it is to a Recorder on the same model, data and batches
    import optax

    net, params, state = models.functional(models.make_model("mlp", key=0, width=4))
    for a in kw["lr"]:
        for b in kw["momentum"]:
            rec = nj.Recorder(net, {}, digits.x_train, digits.y_train, batch_size=32, steps=10, save_every=5,
                              optimizer=optax.adam(a, b1=b))
            out = rec.run(params, state, key=nj.sweeps.data_key(0))
            got = ds.loss.sel(optimizer="adam", lr=a, momentum=b).squeeze().values
            np.testing.assert_allclose(got[1:], np.asarray(out.loss)[1:], rtol=1e-10)
    # the SGD slice is the plain SGD sweep
    sgd = nj.sweep("mlp", **kw)
    np.testing.assert_array_equal(ds.final_loss.sel(optimizer="sgd").values, sgd.final_loss.values)


def test_every_eq17_form_of_a_member_equals_the_nld_experiments_scoring(digits):
    from noether_jax.experiments.nld import eq17_forms

    kw = dict(lr=[0.05], momentum=[0.0, 0.9], weight_decay=[5e-4], steps=12, save_every=6, width=2, batch_size=32, seed=[0],
              progress=False, dtype="float64", data=digits)
    ds = nj.sweep("cnn_bn", eq17_forms=True, **kw)
    # ground truth: the nld experiment's scoring of a per-step lockstep run of the same configuration (same batches)
    net, params, state = models.functional(models.make_model("cnn_bn", key=0, width=2))
    sym = nj.symmetry.detect(net, params, (digits.x_train[:64], digits.y_train[:64]), state=state).symmetries["scale"]
    for b in kw["momentum"]:
        rule = nj.rules.sgd(lr=0.05, momentum=b, weight_decay=5e-4)
        tr = nj.nld.lockstep(net, sym, digits.x_train, digits.y_train, [(params, rule.optimizer(), None)], state,
                             nj.sweeps.data_key(0), steps=12, batch_size=32, lags=4)
        want = eq17_forms(tr, 0, lr=0.05, momentum=b, weight_decay=5e-4)
        sel = ds.sel(momentum=b).squeeze()
        for forcing, forms in want.items():
            for form, err in forms.items():
                np.testing.assert_allclose(float(sel[f"eq17_{forcing}_{form}"]), err, rtol=1e-9, atol=1e-12,
                                           err_msg=f"{forcing} {form} β={b}")
        # the paper's Bernoulli form is the sweep's in-scan eq. 17 (the same law, two codes), scored over every step
        # rather than at the save points only: its worst case over more points can only be larger
        assert float(sel.eq17_paper_bernoulli) >= float(sel.eq17_error_median) * (1 - 1e-9)
