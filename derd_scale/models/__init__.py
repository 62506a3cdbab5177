"""Networks: derd_scale CIFAR nets, timm models, generators, normalisation, safe loading."""

from .checkpoint import CheckpointError, load_weights, read_state_dict
from .cifar import CIFAR_MODELS
from .factory import NormalizedModel, create_model, freeze, unwrap_normalized

__all__ = [
    "CIFAR_MODELS",
    "CheckpointError",
    "NormalizedModel",
    "create_model",
    "freeze",
    "load_weights",
    "read_state_dict",
    "unwrap_normalized",
]
