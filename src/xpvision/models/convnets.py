"""The book's convolutional networks: ``simple_convnet`` (chapter 7) and ``deep_convnet`` (chapter 8).

Each builder returns ``Sequential(('features', Sequential(...)), ('head', Sequential(...)))``: ``features`` is
fully convolutional (a backbone for detection and segmentation, see :func:`xpvision.models.feature_shapes`),
``head`` flattens and classifies (replace it for transfer learning). Input ``(N, in_channels, H, W)`` float32,
output ``(N, num_classes)`` logits. The models are plain Sequentials, so ``spec()`` rebuilds them. Weights are
He-normal (the layers' default), biases zero.
"""

from __future__ import annotations

from xpvision.errors import ConfigError
from xpvision.nn.activation import ReLU
from xpvision.nn.base import Layer, Sequential
from xpvision.nn.conv import Conv2d
from xpvision.nn.functional import conv_output_size
from xpvision.nn.linear import Dropout, Flatten, Linear
from xpvision.nn.norm import BatchNorm2d
from xpvision.nn.pooling import MaxPool2d


def spatial_size(input_size: int | tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` from an int (square) or a pair; :class:`ConfigError` unless positive integers."""
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ConfigError(f"input_size must be a positive int or an (H, W) pair, got {input_size!r}")
    return size


def simple_convnet(in_channels: int = 1, num_classes: int = 10, input_size: int | tuple[int, int] = 28, *,
                   filters: int = 30, kernel_size: int = 5, hidden: int = 100) -> Sequential:
    """The book's SimpleConvNet: conv(30, 5x5) - ReLU - maxpool2 | affine(100) - ReLU - affine(num_classes).

    Features: ``conv1, relu1, pool1``; stride 2, ``filters`` channels (a 28x28 input gives 30x12x12).
    Head: ``flatten, fc1, relu1, fc2``. (The book initialises with N(0, 0.01²); here He-normal.)
    """
    h, w = spatial_size(input_size)
    oh, ow = (conv_output_size(s, kernel_size) // 2 for s in (h, w))
    if min(oh, ow) < 1:
        raise ConfigError(f"input_size {input_size!r} is too small for a {kernel_size}x{kernel_size} conv "
                          f"and a 2x2 pool")
    features = Sequential(("conv1", Conv2d(in_channels, filters, kernel_size)), ("relu1", ReLU()),
                          ("pool1", MaxPool2d(2)))
    head = Sequential(("flatten", Flatten()), ("fc1", Linear(filters * oh * ow, hidden)), ("relu1", ReLU()),
                      ("fc2", Linear(hidden, num_classes)))
    return Sequential(("features", features), ("head", head))


DEEP_CONVNET_CHANNELS = (16, 16, 32, 32, 64, 64)


def deep_convnet(in_channels: int = 1, num_classes: int = 10, input_size: int | tuple[int, int] = 28, *,
                 batch_norm: bool = False, last_dropout: bool = True, dropout: float = 0.5, hidden: int = 50,
                 conv4_padding: int = 2) -> Sequential:
    """The book's DeepConvNet (chapter 8), with options to do better.

    Features (named ``conv1, [bn1,] relu1, conv2, [bn2,] relu2, pool1, conv3, ..., pool2, ..., pool3``): six
    3x3 convolutions with 16, 16, 32, 32, 64, 64 filters, padding 1 except ``conv4`` (``conv4_padding``, 2 in
    the book), ReLU, a 2x2 max pool after every second conv. Skip points for FCN/YOLO: ``pool1`` (stride 2, 16
    channels), ``pool2`` (stride 4, 32), ``pool3`` (stride 8, 64 channels: the output). With the book's
    padding the pad-2 conv adds 2 pixels at stride 2, so a 28x28 input gives 64x4x4
    (``H -> ((H // 2 + 2) // 2) // 2``); ``conv4_padding=1`` gives an exact stride 8 (``H // 8``).

    Head: ``flatten, fc1`` (64·h·w -> ``hidden``), ``relu1, dropout1, fc2`` (-> ``num_classes``) and, as in
    the book, ``dropout2`` after the last affine layer unless ``last_dropout=False`` (recommended: dropping
    logits only adds noise). ``batch_norm=True`` puts a BatchNorm2d after every conv (which then has no bias).
    """
    h, w = spatial_size(input_size)
    if conv4_padding not in (0, 1, 2):
        raise ConfigError(f"conv4_padding must be 0, 1 or 2, got {conv4_padding!r}")
    layers: list[tuple[str, Layer]] = []
    channels = in_channels
    for i, out_channels in enumerate(DEEP_CONVNET_CHANNELS, start=1):
        padding = conv4_padding if i == 4 else 1
        layers.append((f"conv{i}", Conv2d(channels, out_channels, 3, padding=padding, bias=not batch_norm)))
        if batch_norm:
            layers.append((f"bn{i}", BatchNorm2d(out_channels)))
        layers.append((f"relu{i}", ReLU()))
        h, w = (conv_output_size(s, 3, padding=padding) for s in (h, w))
        if i % 2 == 0:
            layers.append((f"pool{i // 2}", MaxPool2d(2)))
            h, w = h // 2, w // 2
        if min(h, w) < 1:
            raise ConfigError(f"input_size {input_size!r} is too small for deep_convnet: the "
                              f"feature map vanishes at {layers[-1][0]}")
        channels = out_channels
    head: list[tuple[str, Layer]] = [("flatten", Flatten()), ("fc1", Linear(channels * h * w, hidden)),
                                     ("relu1", ReLU()), ("dropout1", Dropout(dropout)),
                                     ("fc2", Linear(hidden, num_classes))]
    if last_dropout:
        head.append(("dropout2", Dropout(dropout)))
    return Sequential(("features", Sequential(*layers)), ("head", Sequential(*head)))
