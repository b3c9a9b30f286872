"""Where each feature-map pixel sits in the input image: the coordinate maps that align FCN skip connections.

Along one spatial axis, pixel ``i`` of a feature map is centred on input coordinate ``stride * i + offset``
(:class:`AxisMap`). A convolution or pooling layer with kernel ``K``, stride ``S``, padding ``P`` and
dilation ``D`` maps its output pixel ``i`` to input pixel ``S * i - P + D * (K - 1) / 2``; a transposed
convolution is the inverse map. Composing these through the network gives, for every feature map, the exact
offset between it and the image, which is how the FCN crops its fused score maps (Caffe's ``coord_map`` does
the same for the original FCN). Lengths follow the layers' size formulas, so the padding an input size needs
is found without running the network.

Layers without spatial effect (activations, batch norm, dropout) are identities; a layer whose geometry is not
known raises :class:`~xpvision.errors.ConfigError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

from xpvision.errors import ConfigError
from xpvision.nn.base import Layer, Sequential

SPATIAL_IDENTITY = frozenset({"ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Dropout", "BatchNorm2d", "Identity"})
"""Layer types that keep every pixel where it is."""


@dataclass(frozen=True)
class AxisMap:
    """Pixel ``i`` of a feature map is centred on input coordinate ``stride * i + offset`` (one axis)."""

    stride: float = 1.0
    offset: float = 0.0

    def through(self, kernel: int, stride: int, padding: int, dilation: int = 1) -> AxisMap:
        """The map after a convolution / pooling window with these settings."""
        centre = dilation * (kernel - 1) / 2 - padding
        return AxisMap(self.stride * stride, self.offset + self.stride * centre)

    def upsampled(self, kernel: int, stride: int, padding: int) -> AxisMap:
        """The map after a transposed convolution (input ``i`` lands on output ``S i + (K - 1) / 2 - P``)."""
        new_stride = self.stride / stride
        return AxisMap(new_stride, self.offset - new_stride * ((kernel - 1) / 2 - padding))


def window_settings(layer: Layer, axis: int) -> tuple[int, int, int, int] | None:
    """``(kernel, stride, padding, dilation)`` of a convolution/pooling ``layer`` along ``axis`` (0 = H,
    1 = W); ``None`` for a layer that does not move pixels."""
    name = type(layer).__name__
    if name in SPATIAL_IDENTITY:
        return None
    if name in ("Conv2d", "MaxPool2d", "AvgPool2d"):
        def setting(attr: str, default: int) -> int:
            value = getattr(layer, attr, default)
            return int(value[axis] if isinstance(value, tuple | list) else value)
        return (setting("kernel_size", 1), setting("stride", 1), setting("padding", 0),
                setting("dilation", 1))
    raise ConfigError(f"cannot place the pixels of a {name} layer in the image: the FCN encoder may contain "
                      f"only Conv2d, MaxPool2d, AvgPool2d and {sorted(SPATIAL_IDENTITY)}")


def leaf_layers(layer: Layer, prefix: str = "") -> list[tuple[str, Layer]]:
    """The layers of a (possibly nested) :class:`Sequential` in execution order, with dotted names."""
    if not isinstance(layer, Sequential):
        return [(prefix, layer)]
    leaves = []
    for name, child in layer.children():
        leaves.extend(leaf_layers(child, f"{prefix}.{name}" if prefix else name))
    return leaves


def trace(layers: list[Layer], axis: int, start: AxisMap | None = None) -> list[AxisMap]:
    """The :class:`AxisMap` after each of ``layers`` (run in order) along ``axis``."""
    current = start or AxisMap()
    maps = []
    for layer in layers:
        settings = window_settings(layer, axis)
        if settings is not None:
            current = current.through(*settings)
        maps.append(current)
    return maps


def output_length(layers: list[Layer], axis: int, length: int) -> list[int]:
    """The length along ``axis`` after each of ``layers`` for an input of ``length`` pixels."""
    lengths = []
    for layer in layers:
        settings = window_settings(layer, axis)
        if settings is not None:
            kernel, stride, padding, dilation = settings
            length = (length + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
        lengths.append(length)
    return lengths
