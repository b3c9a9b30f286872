"""A small ResNet for 28x28 (and other small) inputs: a 3x3 stem and three stages of basic residual blocks."""

from __future__ import annotations

from xpvision.errors import ConfigError
from xpvision.models.convnets import spatial_size
from xpvision.nn.activation import ReLU
from xpvision.nn.base import Sequential
from xpvision.nn.conv import Conv2d
from xpvision.nn.linear import Linear
from xpvision.nn.norm import BatchNorm2d
from xpvision.nn.pooling import GlobalAvgPool2d
from xpvision.nn.residual import ResidualBlock


def resnet_small(in_channels: int = 1, num_classes: int = 10, input_size: int | tuple[int, int] = 28, *,
                 widths: tuple[int, ...] | list[int] = (16, 32, 64), blocks_per_stage: int = 2) -> Sequential:
    """``Sequential(('features', ...), ('head', ...))`` in the style of the CIFAR ResNets (He et al., 2016).

    Features: ``stem`` (conv 3x3 ``widths[0]`` without bias, ``bn``, ``relu``), then ``stage1``,
    ``stage2``, ... (``blocks_per_stage`` :class:`~xpvision.nn.ResidualBlock` each, named ``block1``,
    ``block2``, ...); every stage after the first halves the resolution (its first block has stride 2). Skip
    points: ``stage<i>`` at stride ``2 ** (i - 1)`` with ``widths[i - 1]`` channels; the output (the last
    stage) has stride ``2 ** (len(widths) - 1)`` (4 with the defaults: 64x7x7 for 28x28) and ``widths[-1]``
    channels.
    Head: ``pool`` (global average) and ``fc`` (-> ``num_classes``), so any input size works;
    ``input_size`` is only checked to be large enough.
    """
    widths = tuple(widths)
    if not widths or not all(isinstance(c, int) and c > 0 for c in widths):
        raise ConfigError(f"widths must be positive ints, got {widths!r}")
    if not (isinstance(blocks_per_stage, int) and blocks_per_stage > 0):
        raise ConfigError(f"blocks_per_stage must be a positive int, got {blocks_per_stage!r}")
    stride = 2 ** (len(widths) - 1)
    if min(spatial_size(input_size)) < stride:
        raise ConfigError(f"input_size {input_size!r} is smaller than the network's stride {stride}")
    stem = Sequential(("conv", Conv2d(in_channels, widths[0], 3, padding=1, bias=False)),
                      ("bn", BatchNorm2d(widths[0])), ("relu", ReLU()))
    stages = [("stem", stem)]
    channels = widths[0]
    for i, width in enumerate(widths, start=1):
        blocks = [(f"block{j}", ResidualBlock(channels if j == 1 else width, width,
                                              stride=2 if (i > 1 and j == 1) else 1))
                  for j in range(1, blocks_per_stage + 1)]
        stages.append((f"stage{i}", Sequential(*blocks)))
        channels = width
    head = Sequential(("pool", GlobalAvgPool2d()), ("fc", Linear(channels, num_classes)))
    return Sequential(("features", Sequential(*stages)), ("head", head))
