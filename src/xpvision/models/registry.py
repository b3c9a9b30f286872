"""Model registry: ``build_model(name, **kwargs)`` and :func:`feature_shapes` for backbone users."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from xpvision.errors import ConfigError
from xpvision.models.convnets import deep_convnet, simple_convnet
from xpvision.models.resnet import resnet_small
from xpvision.nn.base import Layer, Sequential, evaluating

MODELS: dict[str, Callable[..., Sequential]] = {
    "simple_convnet": simple_convnet,
    "deep_convnet": deep_convnet,
    "resnet_small": resnet_small,
}


def build_model(name: str, **kwargs: Any) -> Sequential:
    """Build a registered classifier by name with its builder's keyword arguments.

    Unknown names and unknown or missing arguments raise :class:`ConfigError` listing what is accepted.
    """
    try:
        builder = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known models: {sorted(MODELS)}") from None
    signature = inspect.signature(builder)
    try:
        signature.bind(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model {name!r}: {e}; accepted arguments: {list(signature.parameters)}") from None
    return builder(**kwargs)


def feature_shapes(model: Sequential, input_shape: tuple[int, int, int]) -> dict[str, tuple[int, int, int]]:
    """``{child name: (C, H, W)}`` of every top-level layer of ``model['features']`` for one input of shape
    ``input_shape`` ``(C, H, W)``, in order; the last entry is the backbone's output.

    Found by one eval-mode forward of a zero image (layer modes restored afterwards), so it is exact for any
    padding. Example: ``feature_shapes(deep_convnet(), (1, 28, 28))['pool3'] == (64, 4, 4)``.
    """
    features = model["features"]
    with evaluating(features):
        x = np.zeros((1, *input_shape), dtype=np.float32)  # (1, C, H, W)
        shapes = {}
        for name, layer in features.children():
            x = layer.forward(x)
            shapes[name] = tuple(int(s) for s in x.shape[1:])
    return shapes


def is_classifier(model: Layer) -> bool:
    """True for the ``Sequential(('features', ...), ('head', ...))`` layout the builders produce."""
    return isinstance(model, Sequential) and list(model.layers) == ["features", "head"]
