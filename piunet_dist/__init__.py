"""Distributed training and evaluation of PIUnet on PROBA-V scenes.

The public names are importable from here, wherever their module lies in the layers.
"""

from .core.version import VERSION as __version__
from .network.baselines import challenge_baseline
from .network.losses import registered_l1, registered_laplace
from .network.metrics import challenge_score, cpsnr, cssim
from .network.model import PIUNet, denormalise, normalise, scale_dn
from .network.weights import model_from_weights

__all__ = [
    "PIUNet",
    "normalise",
    "denormalise",
    "scale_dn",
    "model_from_weights",
    "registered_l1",
    "registered_laplace",
    "cpsnr",
    "cssim",
    "challenge_score",
    "challenge_baseline",
    "__version__",
]
