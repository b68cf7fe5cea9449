"""Small flax NNX classifiers (MLP, CNN with BatchNorm, VGG-style) and their pure functional form."""

from ._models import MLP, MODELS, ConvNet, Network, accuracy, cross_entropy, functional, loss_fn, make_model

__all__ = ["MLP", "MODELS", "ConvNet", "Network", "accuracy", "cross_entropy", "functional", "loss_fn", "make_model"]
