"""noether_jax.models: every named model builds, its pure form equals the module, BatchNorm state is explicit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noether_jax import models


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(0), (6, 8, 8, 1))


@pytest.mark.parametrize("name", models.MODELS)
def test_functional_matches_module(name, x):
    model = models.make_model(name, width=4, key=0, n_classes=7)
    net, params, state = models.functional(model)
    logits, new_state = net(params, state, x, train=True)
    assert logits.shape == (6, 7) and logits.dtype == jnp.float64  # tests run in float64
    np.testing.assert_allclose(logits, model(x, train=True), rtol=1e-12, atol=1e-12)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    # plain nested dicts in flax's layout: Dense (in, out), Conv (kh, kw, in, out)
    if name.startswith("mlp"):
        assert params["hidden"][0]["kernel"].shape == (64, 4) and params["head"]["kernel"].shape == (4, 7)
    elif name == "resnet":
        assert params["stem"]["kernel"].shape == (3, 3, 1, 4) and params["blocks"][1]["conv2"]["kernel"].shape == (3, 3, 4, 4)
    elif name == "transformer":  # 8 row tokens of 8 pixels, 2 heads of 2 channels
        assert params["embed"]["kernel"].shape == (8, 4) and params["pos"].shape == (8, 4)
        assert params["blocks"][0]["attn"]["value"]["kernel"].shape == (4, 2, 2)
    else:
        assert params["convs"][0]["kernel"].shape == (3, 3, 1, 4)


def test_batchnorm_state_is_updated_in_train_mode_only(x):
    net, params, state = models.functional(models.make_model("cnn_bn", width=4, key=0))
    _, s_train = net(params, state, x, train=True)
    _, s_eval = net(params, state, x, train=False)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(s_train), jax.tree.leaves(state)))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(s_eval), jax.tree.leaves(state)))


def test_loss_fn_and_accuracy(x):
    net, params, state = models.functional(models.make_model("mlp", width=4, key=0))
    y = jnp.arange(6) % 10
    value, _ = models.loss_fn(net)(params, state, (x, y))
    logits, _ = net(params, state, x)
    np.testing.assert_allclose(value, models.cross_entropy(logits, y))
    acc = models.accuracy(net, params, state, x, y, batch=4)
    assert 0.0 <= float(acc) <= 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        models.make_model("resnet50")
    with pytest.raises(ValueError, match="width"):
        models.make_model("mlp", width=0)
    with pytest.raises(ValueError, match="in_shape"):
        models.make_model("vgg", in_shape=(64,))
    with pytest.raises(ValueError, match="in_shape"):
        models.make_model("transformer", in_shape=(64,))
    with pytest.raises(ValueError, match="even"):
        models.make_model("transformer", width=5)


def test_transformer_tokens_and_float32(x):
    """Row tokens and 2×2 patches cut the image as documented; a float32 model stays float32 under x64
    (the attention's softmax included), and the float64 one keeps float64 round-off."""
    import flax.nnx as nnx

    rows = models.Transformer((8, 8, 1), 4, 10, rngs=nnx.Rngs(0))
    patches = models.Transformer((8, 8, 1), 4, 10, patch=2, depth=2, rngs=nnx.Rngs(0))
    img = jnp.arange(64.0).reshape(1, 8, 8, 1)
    np.testing.assert_array_equal(rows.tokens(img)[0, 3], jnp.arange(24.0, 32.0))  # row 3
    np.testing.assert_array_equal(patches.tokens(img)[0, 5], jnp.array([18.0, 19.0, 26.0, 27.0]))  # patch (1, 1)
    assert patches.pos.shape == (16, 4) and len(patches.blocks) == 2
    m32 = models.make_model("transformer", width=4, dtype=jnp.float32)
    assert m32(x.astype(jnp.float32)).dtype == jnp.float32
    r32 = models.make_model("resnet", width=4, dtype=jnp.float32)
    assert r32(x.astype(jnp.float32)).dtype == jnp.float32
