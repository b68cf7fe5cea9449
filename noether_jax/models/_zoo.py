"""The library's own small flax NNX classifiers (private; see :mod:`noether_jax.models`).

Every model maps a batch of inputs to class logits (the softmax lives in the loss). BatchNorm runs
in training mode (batch statistics) inside the loss, as in the papers. The symmetric groups of
``resnet`` and ``transformer``, derived by hand, are in :class:`ResNet` and :class:`Transformer`
(and checked by a finite move of each group in ``tests/test_archs.py``).

=================  ===========================================================  ====================
name               architecture                                                  symmetries
=================  ===========================================================  ====================
``mlp``            Dense-ReLU-Dense-ReLU-Dense                                   translation, rescale
``mlp_tanh``       Dense-tanh-Dense-tanh-Dense                                   translation
``mlp_layernorm``  Dense-LayerNorm-ReLU-Dense-LayerNorm-ReLU-Dense               + scale (per layer)
``cnn_bn``         [Conv-BN-ReLU-pool]×2-Dense                                    + scale (per channel)
``vgg``            [Conv-ReLU-Conv-ReLU-pool]×2-Dense-ReLU-Dense                 translation, rescale
``vgg_bn``         ``vgg`` with BatchNorm after every convolution                 + scale (per channel)
``resnet``         Conv/2-BN-ReLU, [x ← ReLU(x + BN-Conv-ReLU-BN-Conv x)]×2,    translation, rescale
                   global average pool, Dense                                   + scale (per channel)
``transformer``    pre-LN: row tokens, Dense + positional embedding,            translation, rescale
                   [x + MHA(LN x), x + MLP(LN x)], LN, token mean, Dense        + scale (the stream)
=================  ===========================================================  ====================
"""

from __future__ import annotations

from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

MODELS = ("mlp", "mlp_tanh", "mlp_layernorm", "cnn_bn", "vgg", "vgg_bn", "resnet", "transformer")


def _default_dtype(dtype):
    return jnp.zeros(()).dtype if dtype is None else dtype  # float64 when x64 is on


def _batchnorm(ch: int, norm_epsilon: float, dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm over ``ch`` channels in ``dtype``, its running statistics too (flax keeps them in float32)."""
    bn = nnx.BatchNorm(ch, epsilon=norm_epsilon, dtype=dtype, param_dtype=dtype, rngs=rngs)
    bn.mean, bn.var = (nnx.BatchStat(jnp.zeros((ch,), dtype)), nnx.BatchStat(jnp.ones((ch,), dtype)))  # not f32
    return bn


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
                    norms.append(_batchnorm(ch, norm_epsilon, dtype, rngs))
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


class ResidualBlock(nnx.Module):
    """``x ← ReLU(x + BN₂(Conv₂(ReLU(BN₁(Conv₁(x))))))`` at constant width: an identity skip, no projection."""

    def __init__(self, width: int, *, norm_epsilon: float, dtype, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(width, width, (3, 3), param_dtype=dtype, rngs=rngs)
        self.norm1 = _batchnorm(width, norm_epsilon, dtype, rngs)
        self.conv2 = nnx.Conv(width, width, (3, 3), param_dtype=dtype, rngs=rngs)
        self.norm2 = _batchnorm(width, norm_epsilon, dtype, rngs)

    def __call__(self, x, *, train: bool = True):
        h = jax.nn.relu(self.norm1(self.conv1(x), use_running_average=not train))
        return jax.nn.relu(x + self.norm2(self.conv2(h), use_running_average=not train))


class ResNet(nnx.Module):
    """A small ResNet for images: a stem Conv(3×3)-BN-ReLU to ``width`` channels, ``blocks``
    :class:`ResidualBlock` s at that width (identity skips), global average pooling and a Dense head.
    The stem has stride ``stem_stride`` (default 2, as ResNet stems downsample: 8×8 digits → 4×4
    maps; it also keeps the mini-batch sharpness η·λ_max well below 2 at η = 0.1, and XLA:CPU's
    kernel-gradient convolutions inside a training scan are slow at full resolution).

    BatchNorm follows :class:`ConvNet`: batch statistics in training mode (inside the loss),
    ``norm_epsilon``, parameters and running statistics in ``dtype``.

    Symmetric groups, derived by hand (parameter paths as :func:`noether_jax.models.functional`
    writes them; ``b`` a block, ``j`` a channel; "exact" means for every input, "up to ε" means up
    to BatchNorm's ε, a relative error of order ε/var):

    * **scale**, one group per output channel ``j`` of every convolution (each feeds a BatchNorm):
      ``stem.kernel[..., j]`` with ``stem.bias[j]``, and ``blocks.b.conv1`` / ``blocks.b.conv2``
      likewise; up to ε. The bias alone is in a trivial translation group (BatchNorm subtracts the
      batch mean, so the loss does not depend on it: its gradient vanishes identically and only
      weight decay moves it).
    * **rescale**, block ``b``'s inner unit ``j``: ``blocks.b.norm1.scale[j]``, ``.bias[j]`` (× e^α)
      against the input channel ``j`` of the next convolution, ``blocks.b.conv2.kernel[:, :, j, :]``
      (× e^−α): ReLU is positively homogeneous and the zero padding stays zero; exact.
    * **rescale**, the residual stream's channel ``j``, one group with several producers and
      several consumers: ``stem_norm.scale[j]``, ``stem_norm.bias[j]`` and every block's
      ``norm2.scale[j]``, ``norm2.bias[j]`` (× e^α) against every block's
      ``conv1.kernel[:, :, j, :]`` and the head's row ``head.kernel[j, :]`` (× e^−α). Channel ``j``
      of the stream is then e^α times itself after every block (the skip adds two scaled terms and
      ReLU commutes with a positive factor), and its readers (the blocks' first convolutions and,
      through the linear pooling, the head) undo the factor; exact.
    * **translation** of the head: each row ``head.kernel[i, :]`` and the class biases
      ``head.bias`` (the softmax ignores a common shift of the logits); exact.

    ``tests/test_archs.py`` moves every one of these groups by a finite α and finds the loss
    unchanged to round-off in float64 (with ``norm_epsilon=1e-12``).
    """

    def __init__(self, in_shape: tuple[int, int, int], width: int, n_classes: int, *, blocks: int = 2,
                 stem_stride: int = 2, norm_epsilon: float = 1e-5, dtype=None, rngs: nnx.Rngs):
        dtype = _default_dtype(dtype)
        self.stem = nnx.Conv(in_shape[2], width, (3, 3), strides=stem_stride, param_dtype=dtype, rngs=rngs)
        self.stem_norm = _batchnorm(width, norm_epsilon, dtype, rngs)
        self.blocks = nnx.List([ResidualBlock(width, norm_epsilon=norm_epsilon, dtype=dtype, rngs=rngs)
                                for _ in range(blocks)])
        self.head = nnx.Linear(width, n_classes, param_dtype=dtype, rngs=rngs)

    def __call__(self, x, *, train: bool = True):
        x = jax.nn.relu(self.stem_norm(self.stem(x), use_running_average=not train))
        for block in self.blocks:
            x = block(x, train=train)
        return self.head(jnp.mean(x, axis=(1, 2)))


def _attention(query, key, value, *, mask=None, is_causal=False, precision=None, **_):
    """Softmax attention in the inputs' precision (no mask, no dropout).

    flax's default dispatches to :func:`jax.nn.dot_product_attention`, whose softmax is always float32:
    that caps a float64 model at ~1e-7 (its symmetries too). This one keeps float64 float64.
    """
    if mask is not None or is_causal:
        raise ValueError("the library's attention takes no mask")
    logits = jnp.einsum("...qhd,...khd->...hqk", query, key, precision=precision) * query.shape[-1] ** -0.5
    return jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(logits, axis=-1), value, precision=precision)


class TransformerBlock(nnx.Module):
    """Pre-LayerNorm: ``x ← x + MHA(LN₁(x))``, then ``x ← x + MLP(LN₂(x))`` (ReLU, hidden ``2·width``)."""

    def __init__(self, width: int, heads: int, *, norm_epsilon: float, dtype, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(width, epsilon=norm_epsilon, param_dtype=dtype, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, width, width, width, param_dtype=dtype, dropout_rate=0.0,
                                           deterministic=True, decode=False, keep_rngs=False,
                                           attention_fn=_attention, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, epsilon=norm_epsilon, param_dtype=dtype, rngs=rngs)
        self.mlp_in = nnx.Linear(width, 2 * width, param_dtype=dtype, rngs=rngs)
        self.mlp_out = nnx.Linear(2 * width, width, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x), deterministic=True)
        return x + self.mlp_out(jax.nn.relu(self.mlp_in(self.norm2(x))))


class Transformer(nnx.Module):
    """A small pre-LayerNorm transformer classifier for images.

    The image is cut into tokens: its ``H`` rows of ``W·C`` pixels (``patch=None``, the default:
    8 tokens of 8 pixels for digits) or ``patch × patch`` patches (``patch=2``: 16 tokens of 4
    pixels). A Dense token embedding plus a learned positional embedding (``pos``, one row per
    token) starts the residual stream; ``depth`` :class:`TransformerBlock` s (``heads`` heads of
    ``width // heads`` channels, deterministic, no dropout, the softmax in the model's dtype) update it; a final LayerNorm, the mean
    over tokens and a Dense head give the logits. ``width`` is the model dimension.

    Symmetric groups, derived by hand (paths as :func:`noether_jax.models.functional` writes them;
    ``b`` a block, ``(h, c)`` a head and its channel, ``j`` a unit; "up to ε" means up to
    LayerNorm's ε):

    * **translation** of the head: each row ``head.kernel[i, :]`` and ``head.bias``; exact.
    * **translation of the residual stream**, through the mean-centring of every LayerNorm: each
      input row of each writer of the stream, ``embed.kernel[i, :]``, ``embed.bias``, ``pos[t, :]``,
      and every block's ``attn.out.kernel[h, c, :]``, ``attn.out.bias``, ``mlp_out.kernel[j, :]``,
      ``mlp_out.bias``. Adding α to every entry of such a row adds a multiple of 𝟙 to each token's
      stream vector, and the stream is read only by LayerNorms (pre-LN), which subtract each
      token's mean over channels; exact.
    * **translation** of the key biases ``attn.key.bias[h, c]``: it adds q_{h,c} to every key's
      logit of a query alike, which the softmax over keys ignores; the gradient vanishes
      identically (a trivial group, like a bias before BatchNorm).
    * **scale of the residual stream**, one group: every writer's kernel and bias together
      (``embed``, ``pos``, every block's ``attn.out`` and ``mlp_out``). The stream is then e^α times
      itself at every depth and every LayerNorm reading it is scale invariant; up to ε.
    * **rescale**, per block and per ``(h, c)``: the value channel ``attn.value.kernel[:, h, c]``,
      ``attn.value.bias[h, c]`` (× e^α) against the output projection's row
      ``attn.out.kernel[h, c, :]`` (× e^−α), since attention mixes values linearly; and the query
      channel ``attn.query.kernel[:, h, c]``, ``attn.query.bias[h, c]`` (× e^α) against the key
      channel ``attn.key.kernel[:, h, c]``, ``attn.key.bias[h, c]`` (× e^−α), since the logits
      are Σ_c q_c k_c; exact.
    * **rescale**, every MLP hidden unit ``j``: ``mlp_in.kernel[:, j]``, ``mlp_in.bias[j]`` against
      ``mlp_out.kernel[j, :]`` (ReLU); exact.
    * **rescale**, every LayerNorm's channel ``j``: its ``scale[j]``, ``bias[j]`` (× e^α) against
      the rows ``j`` of its readers (× e^−α): ``norm1`` → ``attn.query``, ``attn.key`` and
      ``attn.value`` ``.kernel[j, :, :]`` (one group, three consumers), ``norm2`` →
      ``mlp_in.kernel[j, :]``, the final ``norm`` → ``head.kernel[j, :]`` (the mean over tokens
      is linear); exact.

    A kernel's rows and columns belong to different rescale groups (``attn.value.kernel[j, h, c]``
    is in LN₁'s unit ``j`` and in the value channel ``(h, c)``), so one mask cannot hold them all.
    ``tests/test_archs.py`` moves every one of these groups by a finite α and finds the loss
    unchanged to round-off in float64 (with ``norm_epsilon=1e-12``).
    """

    def __init__(self, in_shape: tuple[int, int, int], width: int, n_classes: int, *, depth: int = 1, heads: int = 2,
                 patch: int | None = None, norm_epsilon: float = 1e-6, dtype=None, rngs: nnx.Rngs):
        dtype = _default_dtype(dtype)
        h, w, c = in_shape
        if width % heads:
            raise ValueError(f"`width` ({width}) must be a multiple of the number of heads ({heads}).")
        if patch is not None and (h % patch or w % patch):
            raise ValueError(f"`patch` ({patch}) must divide the image's height and width {h, w}.")
        n_tokens, token = (h, w * c) if patch is None else ((h // patch) * (w // patch), patch * patch * c)
        self.patch = patch
        self.embed = nnx.Linear(token, width, param_dtype=dtype, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (n_tokens, width), dtype))
        self.blocks = nnx.List([TransformerBlock(width, heads, norm_epsilon=norm_epsilon, dtype=dtype, rngs=rngs)
                                for _ in range(depth)])
        self.norm = nnx.LayerNorm(width, epsilon=norm_epsilon, param_dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(width, n_classes, param_dtype=dtype, rngs=rngs)

    def tokens(self, x):
        """(B, H, W, C) images → (B, tokens, pixels per token)."""
        b, h, w, c = x.shape
        if self.patch is None:
            return x.reshape(b, h, w * c)
        p = self.patch
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def __call__(self, x, *, train: bool = True):  # no dropout or BatchNorm: the mode changes nothing
        x = self.embed(self.tokens(x)) + self.pos[...]
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(self.norm(x), axis=1))


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
    hidden width (MLPs), the first block's channels (CNNs), the channels of every block (``resnet``)
    or the model dimension (``transformer``: 2 heads, one block, row tokens; build
    :class:`Transformer` itself for 2×2 patches or more blocks). ``dtype`` defaults to the default float
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
    if name == "resnet":
        return ResNet(tuple(in_shape), width, n_classes, dtype=dtype, rngs=rngs, **extra)
    if name == "transformer":
        if width % 2:
            raise ValueError(f"model 'transformer' has 2 heads: `width` must be even, got {width}.")
        return Transformer(tuple(in_shape), width, n_classes, dtype=dtype, rngs=rngs, **extra)
    if name == "cnn_bn":
        return ConvNet(tuple(in_shape), ((width,), (2 * width,)), (), n_classes, batchnorm=True, dtype=dtype, rngs=rngs, **extra)
    return ConvNet(tuple(in_shape), ((width, width), (2 * width, 2 * width)), (2 * width,), n_classes,
                   batchnorm=name == "vgg_bn", dtype=dtype, rngs=rngs, **extra)
