"""The library's own small flax NNX classifiers (private; see :mod:`noether_jax.models`).

Every model maps a batch of inputs to class logits (the softmax lives in the loss). BatchNorm runs
in training mode (batch statistics) inside the loss, as in the papers.

=================  ===========================================================  ====================
name               architecture                                                  symmetries
=================  ===========================================================  ====================
``mlp``            Dense-ReLU-Dense-ReLU-Dense                                   translation, rescale
``mlp_tanh``       Dense-tanh-Dense-tanh-Dense                                   translation
``mlp_layernorm``  Dense-LayerNorm-ReLU-Dense-LayerNorm-ReLU-Dense               + scale (per layer)
``cnn_bn``         [Conv-BN-ReLU-pool]×2-Dense                                    + scale (per channel)
``vgg``            [Conv-ReLU-Conv-ReLU-pool]×2-Dense-ReLU-Dense                 translation, rescale
``vgg_bn``         ``vgg`` with BatchNorm after every convolution                 + scale (per channel)
=================  ===========================================================  ====================
"""

from __future__ import annotations

from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

MODELS = ("mlp", "mlp_tanh", "mlp_layernorm", "cnn_bn", "vgg", "vgg_bn")


def _default_dtype(dtype):
    return jnp.zeros(()).dtype if dtype is None else dtype  # float64 when x64 is on


class MLP(nnx.Module):
    """Dense layers with an activation (``relu``, ``tanh``, ...) and optional LayerNorm before it."""

    def __init__(self, in_features: int, widths: tuple[int, ...], n_classes: int, *, activation: str = "relu",
                 layernorm: bool = False, norm_epsilon: float = 1e-6, dtype=None, rngs: nnx.Rngs):
        dtype = _default_dtype(dtype)
        dims = (in_features, *widths)
        self.hidden = nnx.List([nnx.Linear(a, b, param_dtype=dtype, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
        self.norms = nnx.List(
            [nnx.LayerNorm(b, epsilon=norm_epsilon, param_dtype=dtype, rngs=rngs) for b in widths] if layernorm else []
        )
        self.head = nnx.Linear(dims[-1], n_classes, param_dtype=dtype, rngs=rngs)
        self.activation = activation

    def __call__(self, x, *, train: bool = True):
        act = getattr(jax.nn, self.activation)
        x = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if len(self.norms):
                x = self.norms[i](x)
            x = act(x)
        return self.head(x)


class ConvNet(nnx.Module):
    """Blocks of 3×3 convolutions (optionally BatchNorm) with ReLU and 2×2 average pooling, then Dense."""

    def __init__(self, in_shape: tuple[int, int, int], blocks: tuple[tuple[int, ...], ...], dense: tuple[int, ...],
                 n_classes: int, *, batchnorm: bool, norm_epsilon: float = 1e-5, dtype=None, rngs: nnx.Rngs):
        dtype = _default_dtype(dtype)
        h, w, c = in_shape
        convs, norms = [], []
        for block in blocks:
            for ch in block:
                convs.append(nnx.Conv(c, ch, (3, 3), param_dtype=dtype, rngs=rngs))
                if batchnorm:
                    bn = nnx.BatchNorm(ch, epsilon=norm_epsilon, dtype=dtype, param_dtype=dtype, rngs=rngs)
                    bn.mean, bn.var = (nnx.BatchStat(jnp.zeros((ch,), dtype)), nnx.BatchStat(jnp.ones((ch,), dtype)))  # not f32
                    norms.append(bn)
                c = ch
            h, w = h // 2, w // 2
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.block_sizes = tuple(len(b) for b in blocks)
        dims = (h * w * c, *dense)
        self.dense = nnx.List([nnx.Linear(a, b, param_dtype=dtype, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
        self.head = nnx.Linear(dims[-1], n_classes, param_dtype=dtype, rngs=rngs)

    def __call__(self, x, *, train: bool = True):
        i = 0
        for size in self.block_sizes:
            for _ in range(size):
                x = self.convs[i](x)
                if len(self.norms):
                    x = self.norms[i](x, use_running_average=not train)
                x = jax.nn.relu(x)
                i += 1
            x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for layer in self.dense:
            x = jax.nn.relu(layer(x))
        return self.head(x)


def make_model(
    name: str,
    *,
    key: PRNGKeyArray | int = 0,
    in_shape: tuple[int, ...] = (8, 8, 1),
    n_classes: int = 10,
    width: int = 32,
    norm_epsilon: float | None = None,
    dtype: Any = None,
) -> nnx.Module:
    """A named classifier (see :data:`MODELS`), initialised from ``key``.

    ``in_shape`` is one example's shape (images are (H, W, C); MLPs flatten it). ``width`` sets the
    hidden width (MLPs) or the first block's channels (CNNs). ``dtype`` defaults to the default float
    (float64 under :func:`noether_jax.enable_x64`).

    Example:
        >>> import jax.numpy as jnp; from noether_jax import models
        >>> net, params, state = models.functional(models.make_model("cnn_bn", width=4))
        >>> logits, state = net(params, state, jnp.ones((2, 8, 8, 1)))
        >>> logits.shape
        (2, 10)
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)} (argument `model`).")
    if width < 1:
        raise ValueError(f"`width` must be a positive integer, got {width}.")
    rngs = nnx.Rngs(key)
    extra = {} if norm_epsilon is None else {"norm_epsilon": norm_epsilon}
    features = 1
    for s in in_shape:
        features *= int(s)
    if name in ("mlp", "mlp_tanh", "mlp_layernorm"):
        return MLP(features, (width, width), n_classes, activation="tanh" if name == "mlp_tanh" else "relu",
                   layernorm=name == "mlp_layernorm", dtype=dtype, rngs=rngs, **extra)
    if len(in_shape) != 3:
        raise ValueError(f"model {name!r} needs image inputs: `in_shape` must be (H, W, C), got {in_shape}.")
    if name == "cnn_bn":
        return ConvNet(tuple(in_shape), ((width,), (2 * width,)), (), n_classes, batchnorm=True, dtype=dtype, rngs=rngs, **extra)
    return ConvNet(tuple(in_shape), ((width, width), (2 * width, 2 * width)), (2 * width,), n_classes,
                   batchnorm=name == "vgg_bn", dtype=dtype, rngs=rngs, **extra)
