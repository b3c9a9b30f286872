"""xpvision: convolutional networks from scratch on NumPy (CPU) and CuPy (GPU).

The models and saving / loading them are importable from here; ``import xpvision`` needs NumPy alone.
Detection and segmentation have their own flat APIs (:mod:`xpvision.detection`,
:mod:`xpvision.segmentation`); see docs/api.md.
"""

from xpvision.io import load_model, save_model
from xpvision.models import MODELS, build_model, deep_convnet, resnet_small, simple_convnet

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "__version__",
    "build_model",
    "deep_convnet",
    "load_model",
    "resnet_small",
    "save_model",
    "simple_convnet",
]
