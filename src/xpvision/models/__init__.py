"""The model zoo: ``simple_convnet``, ``deep_convnet``, ``resnet_small`` and the registry ``build_model``.

Every classifier is ``Sequential(('features', fully convolutional backbone), ('head', classifier))``.
"""

from xpvision.models.convnets import deep_convnet, simple_convnet
from xpvision.models.registry import MODELS, build_model, feature_shapes
from xpvision.models.resnet import resnet_small

__all__ = ["MODELS", "build_model", "deep_convnet", "feature_shapes", "resnet_small", "simple_convnet"]
