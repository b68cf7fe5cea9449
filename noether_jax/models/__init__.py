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
=================  ===========================================================  ====================
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
from ._zoo import MLP, MODELS, ConvNet, make_model

__all__ = [
    "MLP",
    "MODELS",
    "ConvNet",
    "LinenNetwork",
    "Model",
    "Network",
    "accuracy",
    "as_model",
    "as_pure",
    "call_mode",
    "cross_entropy",
    "functional",
    "loss_fn",
    "make_model",
]
