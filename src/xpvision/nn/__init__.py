"""Neural-network layers, losses and initialisers (public API).

Layers keep ``(N, C, H, W)`` shapes at their boundaries and channels-last memory inside (see :mod:`.base`).
"""

from xpvision.nn import engine, functional, init, reference, rng
from xpvision.nn.activation import Identity, LeakyReLU, ReLU, Sigmoid
from xpvision.nn.base import LAYERS, Layer, Sequential, build_layer, evaluating
from xpvision.nn.conv import Conv2d, ConvTranspose2d
from xpvision.nn.functional import log_softmax, softmax
from xpvision.nn.linear import Dropout, Flatten, Linear
from xpvision.nn.losses import BCEWithLogits, Loss, SmoothL1Loss, SoftmaxCrossEntropy
from xpvision.nn.norm import BatchNorm1d, BatchNorm2d
from xpvision.nn.pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from xpvision.nn.residual import ResidualBlock

__all__ = [
    "LAYERS", "AvgPool2d", "BCEWithLogits", "BatchNorm1d", "BatchNorm2d", "Conv2d", "ConvTranspose2d",
    "Dropout", "Flatten", "GlobalAvgPool2d", "Identity", "Layer", "LeakyReLU", "Linear", "Loss", "MaxPool2d",
    "ReLU", "ResidualBlock", "Sequential", "Sigmoid", "SmoothL1Loss", "SoftmaxCrossEntropy", "build_layer",
    "engine", "evaluating", "functional", "init", "log_softmax", "reference", "rng", "softmax",
]
