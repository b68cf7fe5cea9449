"""Models: any flax model in pure form (:func:`functional`, :func:`as_model`), and the library's own.

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

The hand-derived groups of ``resnet`` and ``transformer`` are listed in :class:`ResNet` and :class:`Transformer`.
"""

from ._functional import (
    LinenNetwork,
    Model,
    Network,
    accuracy,
    as_model,
    as_pure,
    call_mode,
    cross_entropy,
    functional,
    loss_fn,
)
from ._zoo import MLP, MODELS, ConvNet, ResidualBlock, ResNet, Transformer, TransformerBlock, make_model

__all__ = [
    "MLP",
    "MODELS",
    "ConvNet",
    "LinenNetwork",
    "Model",
    "Network",
    "ResNet",
    "ResidualBlock",
    "Transformer",
    "TransformerBlock",
    "accuracy",
    "as_model",
    "as_pure",
    "call_mode",
    "cross_entropy",
    "functional",
    "loss_fn",
    "make_model",
]
