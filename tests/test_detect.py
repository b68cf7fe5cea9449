"""symmetry.detect on real flax models: exactly the groups the architecture implies, all confirmed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noether_jax import data, models, symmetry


@pytest.fixture(scope="module")
def batch():
    ds = data.digits()
    return ds.x_train[:128], ds.y_train[:128]


def counts(found):
    return {k: len(found.names(k)) for k in ("translation", "scale", "rescale")}


def test_relu_mlp(batch):
    w = 6
    net, p, s = models.functional(models.make_model("mlp", width=w, key=0))
    found = symmetry.detect(net, p, batch, state=s)
    # head: one translation group per input unit (w) plus the class biases; every hidden ReLU unit
    # (two layers of w) is rescale-symmetric; nothing is normalised, so no scale group.
    assert counts(found) == {"translation": w + 1, "scale": 0, "rescale": 2 * w}
    assert all(n.startswith("head") for n in found.names("translation"))
    assert found.scale is None


def test_tanh_units_are_not_rescale_symmetric(batch):
    net, p, s = models.functional(models.make_model("mlp_tanh", width=6, key=0))
    found = symmetry.detect(net, p, batch, state=s)
    assert counts(found)["rescale"] == 0 and found.rejected["rescale"] > 0
    assert counts(found)["translation"] == 7


def test_batchnorm_cnn_and_constraints_to_1e6(batch):
    w = 4
    net, p, s = models.functional(models.make_model("cnn_bn", width=w, key=0, norm_epsilon=1e-12))
    found = symmetry.detect(net, p, batch, state=s)
    c = counts(found)
    assert c["scale"] == w + 2 * w  # every channel of both convolutions (filter + bias) before BatchNorm
    assert c["rescale"] == w + 2 * w  # each BN unit against the next layer's input row(s) (flatten: rows ≡ j mod C)
    assert c["translation"] >= 2 * w * 4  # head rows (2×2×2w inputs) ...
    loss = lambda q: models.cross_entropy(net(q, s, batch[0])[0], batch[1])  # noqa: E731
    for kind, sym in found.symmetries.items():
        for part in sym if isinstance(sym, tuple) else (sym,):
            res = symmetry.constraints(part, loss, p)
            assert float(jnp.max(res.max())) <= 1e-6, kind


def test_layernorm_scales_whole_layers(batch):
    net, p, s = models.functional(models.make_model("mlp_layernorm", width=6, key=0))
    found = symmetry.detect(net, p, batch, state=s)
    assert sorted(found.names("scale")) == ["hidden.0 (whole layer: kernel + bias)", "hidden.1 (whole layer: kernel + bias)"]
    assert counts(found)["rescale"] == 2 * 6  # LayerNorm's affine scale/bias of a unit against its outgoing row


def test_wrong_groups_fail_the_constraints(batch):
    net, p, s = models.functional(models.make_model("mlp", width=6, key=0))
    loss = lambda q: models.cross_entropy(net(q, s, batch[0])[0], batch[1])  # noqa: E731
    mask = jax.tree.map(lambda a: -jnp.ones(a.shape, jnp.int32), p)
    mask["hidden"][0]["kernel"] = jnp.broadcast_to(jnp.arange(6), (64, 6)).astype(jnp.int32)  # no norm after it
    res = symmetry.constraints(symmetry.Scale(mask), loss, p)
    assert float(jnp.min(res.max())) > 1e-2


def test_no_softmax_and_no_normalisation_reports_nothing(batch):
    net, p, s = models.functional(models.make_model("mlp_tanh", width=6, key=0))
    mse = lambda logits, y: jnp.mean((logits - jax.nn.one_hot(y, 10)) ** 2)  # noqa: E731
    found = symmetry.detect(net, p, batch, mse, state=s)
    assert found.symmetries == {}
    assert "translation" in found.summary()


def test_bad_input(batch):
    net, p, s = models.functional(models.make_model("mlp", width=4, key=0))
    with pytest.raises(ValueError, match="params"):
        symmetry.detect(net, None, batch)
    with pytest.raises(TypeError, match="model"):
        symmetry.detect(lambda x: x, p, batch)
    with pytest.raises(ValueError, match="mask"):
        symmetry.Scale({"w": jnp.array([True])}, p)
