"""symmetry.detect on real flax models: exactly the groups the architecture implies, all confirmed.

Expected counts are worked out by hand from each architecture (widths are small to keep this fast).
Exact-count tests use Gaussian inputs, so that no ReLU unit is dead on the whole batch and no input
pixel is zero in every example (detection leaves out groups the loss does not feel at all).
"""

from __future__ import annotations

import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from noether_jax import data, models, symmetry
from noether_jax.symmetry import _detect

W = 4  # hidden width / first block's channels
KEY = 2  # an init with no dead ReLU unit on the Gaussian batch (at width 4, key 0 has one)


@pytest.fixture(scope="module")
def gauss():
    kx, ky = jax.random.split(jax.random.key(1))
    return jax.random.normal(kx, (32, 8, 8, 1)), jax.random.randint(ky, (32,), 0, 10)


def counts(found):
    return {k: len(found.names(k)) for k in ("translation", "scale", "rescale")}


def xent(net, s, batch):
    return lambda q: models.cross_entropy(net(q, s, batch[0])[0], batch[1])


def assert_exact_constraints(found, loss, p, tol=1e-6, parts=None, kinds=("translation", "scale", "rescale")):
    """Every detected group satisfies all three identities by the exact (per-group HVP) check.

    ``parts`` and ``kinds`` limit the exact check (each symmetry costs a compile of the model's HVP,
    seconds for a CNN; the MLP tests check every kind exactly); detect's own per-group residuals are
    checked for every group regardless."""
    for kind, sym in found.symmetries.items():
        if kind not in kinds:
            continue
        syms = sym if isinstance(sym, tuple) else (sym,)
        for part in syms[:parts] if kind == "rescale" else syms:
            res = symmetry.constraints(part, loss, p)
            assert float(jnp.max(res.max())) <= tol, kind
    for kind, res in found.residuals.items():  # detect's own (sketched) residuals agree
        assert float(jnp.max(res.max())) <= tol, kind


def test_relu_mlp(gauss):
    net, p, s = models.functional(models.make_model("mlp", width=W, key=KEY))
    found = symmetry.detect(net, p, gauss, state=s)
    # head: one translation group per input unit (W) + the class biases; every hidden ReLU unit of
    # both hidden layers is rescale-symmetric (2W); nothing is normalised, so no scale group.
    assert counts(found) == {"translation": W + 1, "scale": 0, "rescale": 2 * W}
    assert found.names("translation")[0] == "head.kernel[0,:] (input unit 0 → all classes)"
    assert found.names("translation")[-1] == "head.bias (class biases)"
    assert "hidden.0 unit 3 in (kernel+bias) / hidden.1 row 3 out" in found.names("rescale")
    assert found.scale is None and set(found.symmetries) == {"translation", "rescale"}
    assert_exact_constraints(found, xent(net, s, gauss), p)


def test_tanh_units_are_not_rescale_symmetric(gauss):
    net, p, s = models.functional(models.make_model("mlp_tanh", width=W, key=KEY))
    found = symmetry.detect(net, p, gauss, state=s)
    assert counts(found) == {"translation": W + 1, "scale": 0, "rescale": 0}
    assert found.rejected["rescale"] >= 2 * W  # the candidates existed and were refuted


def test_layernorm_scales_whole_layers(gauss):
    net, p, s = models.functional(models.make_model("mlp_layernorm", width=W, key=KEY, norm_epsilon=1e-12))
    found = symmetry.detect(net, p, gauss, state=s)
    assert found.names("scale") == [
        "hidden.0 (whole layer: kernel + bias, normalised after)",
        "hidden.1 (whole layer: kernel + bias, normalised after)",
    ]
    # LayerNorm also removes a shift common to all its inputs: every row of the kernels before it
    # (64 pixels, W units) and their whole bias vectors are translation-symmetric, next to the head's.
    assert counts(found) == {"translation": (W + 1) + (64 + 1) + (W + 1), "scale": 2, "rescale": 2 * W}
    # rescale: a LayerNorm's affine scale+bias of a unit (then ReLU) against its outgoing row
    assert "norms.1 unit 0 in (bias+scale) / head row 0 out" in found.names("rescale")
    assert_exact_constraints(found, xent(net, s, gauss), p, parts=1, kinds=("scale", "rescale"))


def test_batchnorm_cnn(gauss):
    net, p, s = models.functional(models.make_model("cnn_bn", width=W, key=0, norm_epsilon=1e-12))
    found = symmetry.detect(net, p, gauss, state=s)
    # scale: every output channel (filter + bias) of both convolutions, before BatchNorm;
    # rescale: each BN unit of block 1 against conv 2's input channel, and of block 2 against the
    # head's rows ≡ j mod 2W after the flatten; translation: the head's 2·2·2W rows + class biases.
    # (The convolutions' biases are invisible behind BN: their gradient is zero, so not reported.)
    assert counts(found) == {"translation": 2 * 2 * 2 * W + 1, "scale": W + 2 * W, "rescale": W + 2 * W}
    assert "convs.1 channel 5 (+ bias)" in found.names("scale")
    assert f"norms.1 unit 1 in (bias+scale) / head rows ≡ 1 mod {2 * W} out (flatten)" in found.names("rescale")
    flatten = [r for r in found.rescale if "flatten" in r.names[0]]
    assert_exact_constraints(found, xent(net, s, gauss), p, kinds=("scale",))
    res = symmetry.constraints(flatten[0], xent(net, s, gauss), p)  # the strided (flatten) rows
    assert float(jnp.max(res.max())) <= 1e-6


@pytest.mark.slow  # the default run covers four architectures (ReLU, tanh, LayerNorm MLPs; BatchNorm CNN)
@pytest.mark.parametrize("bn", [False, True])
def test_vgg(gauss, bn):
    name = "vgg_bn" if bn else "vgg"
    net, p, s = models.functional(models.make_model(name, width=W, key=5, norm_epsilon=1e-12))
    t0 = time.perf_counter()
    found = symmetry.detect(net, p, gauss, state=s)
    assert time.perf_counter() - t0 < 60
    # [conv W, conv W, pool, conv 2W, conv 2W, pool] → flatten (2·2·2W) → dense 2W → head.
    # A ReLU unit that is 0 on every example (common at init for a Dense layer fed by ReLU
    # features) is invisible to the loss; count them independently: a unit is dead iff the
    # gradient of its outgoing weights vanishes.
    g = jax.grad(xent(net, s, gauss))(p)
    dead_dense = int(np.sum(np.all(np.asarray(g["head"]["kernel"]) == 0, axis=1)))
    dead_conv = sum(int(np.sum(np.all(np.asarray(g["convs"][i + 1]["kernel"]) == 0, axis=(0, 1, 3)))) for i in range(3))
    rescale = W + W + 2 * W + 2 * W + 2 * W - dead_dense - dead_conv  # conv0, conv1, conv2, conv3 (flatten), dense.0
    expected = {"translation": 2 * W + 1 - dead_dense, "scale": (W + W + 2 * W + 2 * W) if bn else 0, "rescale": rescale}
    assert dead_dense + dead_conv < W  # the test still has something to find
    assert counts(found) == expected
    assert_exact_constraints(found, xent(net, s, gauss), p, parts=1, kinds=("scale", "rescale"))


def test_default_epsilon_is_within_default_tol(gauss):
    """With BatchNorm's own ε = 1e-5 scale symmetry is broken at ~ε/var: still found, residual small."""
    net, p, s = models.functional(models.make_model("cnn_bn", width=W, key=0))
    found = symmetry.detect(net, p, gauss, state=s)
    assert counts(found)["scale"] == 3 * W
    assert 1e-10 < float(jnp.max(found.residuals["scale"].max())) < 1e-3


def test_wrong_groups_fail_the_constraints(gauss):
    loss_p = {}
    # scale on a layer with no normalisation after it; rescale on tanh units; translation on a hidden row
    net, p, s = models.functional(models.make_model("mlp", width=W, key=KEY))
    loss = xent(net, s, gauss)
    none = jax.tree.map(lambda a: -jnp.ones(a.shape, jnp.int32), p)
    m = jax.tree.map(lambda a: a, none)
    m["hidden"][0]["kernel"] = jnp.broadcast_to(jnp.arange(W), (64, W)).astype(jnp.int32)
    loss_p["scale"] = symmetry.constraints(symmetry.Scale(m), loss, p)
    m = jax.tree.map(lambda a: a, none)
    m["hidden"][1]["kernel"] = jnp.broadcast_to(jnp.arange(W)[:, None], (W, W)).astype(jnp.int32)
    loss_p["translation"] = symmetry.constraints(symmetry.Translation(m), loss, p)
    net_t, p_t, s_t = models.functional(models.make_model("mlp_tanh", width=W, key=KEY))
    found = symmetry.detect(net_t, p_t, gauss, state=s_t)
    assert found.rescale == ()
    # build the tanh rescale groups by hand from the relu model's (same tree) and check they fail
    found_relu = symmetry.detect(net, p, gauss, state=s)
    loss_p["rescale"] = symmetry.constraints(found_relu.rescale[0], xent(net_t, s_t, gauss), p_t)
    for kind, res in loss_p.items():
        assert float(jnp.min(res.max())) > 1e-2, kind


def test_sketched_residuals_of_false_candidates_are_large(gauss):
    net, p, s = models.functional(models.make_model("mlp_tanh", width=W, key=KEY))
    sets = _detect._candidate_sets(net, p, s, gauss[0], gauss[1], models.cross_entropy)
    pairs = [b for b in sets if b.kind == "rescale"]
    assert pairs and all(b.structural.startswith("broken") for b in pairs)  # tanh is not homogeneous
    theta = jax.flatten_util.ravel_pytree(p)[0]
    unravel = jax.flatten_util.ravel_pytree(p)[1]
    f = lambda t: models.cross_entropy(net(unravel(t), s, gauss[0])[0], gauss[1])  # noqa: E731
    g = jax.grad(f)(theta)
    U = jax.random.normal(jax.random.key(0), (8, theta.size))
    HU = jax.vmap(lambda u: jax.jvp(jax.grad(f), (theta,), (u,))[1])(U)
    h = float(jnp.mean(jnp.linalg.norm(HU, axis=1) / jnp.linalg.norm(U, axis=1)))
    loc = _detect._Local(*(np.asarray(a, np.float64) for a in (theta, g, U, HU)), h, float(f(theta)), 2e-16)
    worst = [min(_detect._local_residuals(b, loc, 1e-8)[1].min(), 1.0) for b in pairs if b.names]
    assert len(worst) >= 2 and min(worst) > 1e-2  # Hessian sketch refutes every tanh unit


def test_digits_and_nnx_module_input():
    """An nnx.Module is split by detect itself; on digits some pixels are always 0, so the rows of
    those pixels (dead: the loss ignores them) are left out, and nothing else changes."""
    ds = data.digits()
    x, y = ds.x_train[:64], ds.y_train[:64]
    model = models.make_model("mlp", width=W, key=KEY)
    found = symmetry.detect(model, None, (x, y))
    assert counts(found) == {"translation": W + 1, "scale": 0, "rescale": 2 * W}
    assert isinstance(found, symmetry.Detected)
    assert len(jax.tree.leaves(found)) > 0  # a pytree
    table = found.summary()
    assert "translation" in table and "rescale" in table and "head.kernel[0,:]" in table
    assert "head.bias (class biases)" in found.names("translation")


def test_no_softmax_and_no_normalisation_reports_nothing(gauss):
    net, p, s = models.functional(models.make_model("mlp_tanh", width=W, key=KEY))
    mse = lambda out, y: jnp.mean((out - jax.nn.one_hot(y, 10)) ** 2)  # noqa: E731
    found = symmetry.detect(net, p, gauss, mse, state=s)
    assert found.symmetries == {} and found.residuals == {}
    assert found.translation is None and found.scale is None and found.rescale == ()
    assert "translation" in found.summary() and found.names("scale") == []


def test_bad_input(gauss):
    net, p, s = models.functional(models.make_model("mlp", width=W, key=KEY))
    with pytest.raises(ValueError, match="params"):
        symmetry.detect(net, None, gauss)
    with pytest.raises(TypeError, match="model"):
        symmetry.detect(lambda x: x, p, gauss)
    with pytest.raises(ValueError, match="batch"):
        symmetry.detect(net, p, gauss[0])
    with pytest.raises(ValueError, match="tol"):
        symmetry.detect(net, p, gauss, tol=0.0)
    with pytest.raises(ValueError, match="kind"):
        symmetry.detect(net, p, gauss).names("rotation")
    # a mask whose tree does not match the parameters
    with pytest.raises(ValueError, match="structure"):
        symmetry.Scale({"w": jnp.array([True])}, p)
    bad = jax.tree.map(lambda a: jnp.ones(a.shape[:-1] + (a.shape[-1] + 1,), bool), p)
    with pytest.raises(ValueError, match="does not broadcast"):
        symmetry.Scale(bad, p)
    # an action that does not return the parameters' structure
    loss = xent(net, s, gauss)
    act = symmetry.Action(lambda q, a: q["head"])
    with pytest.raises(ValueError, match="structure"):
        symmetry.constraints(act, loss, p)
    act = symmetry.Action(lambda q, a: jax.tree.map(lambda x: x[..., :1] * a, q))
    with pytest.raises(ValueError, match="shapes"):
        symmetry.constraints(act, loss, p)
