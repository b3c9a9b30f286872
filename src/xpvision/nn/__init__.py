"""Neural-network layers, losses and initialisers (public API)."""

from xpvision.nn.base import LAYERS, Layer, Sequential, build_layer

__all__ = ["LAYERS", "Layer", "Sequential", "build_layer"]
