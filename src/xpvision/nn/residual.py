"""The ResNet basic block."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from xpvision import backend
from xpvision.nn.activation import Identity, ReLU
from xpvision.nn.base import Layer, Sequential
from xpvision.nn.conv import Conv2d
from xpvision.nn.norm import BatchNorm2d
from xpvision.nn.validate import positive_int


class ResidualBlock(Layer):
    """Basic block ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``conv1`` 3x3 with ``stride``, ``conv2`` 3x3, both padding 1 and no bias (batch norm follows). The
    shortcut is :class:`Identity` when the shape is kept, else ``Sequential(conv 1x1 with stride,
    BatchNorm2d)`` (torchvision's option B). Input ``(N, in_ch, H, W)``; output ``(N, out_ch, ceil(H /
    stride), ceil(W / stride))``. Sub-layers: ``conv1``, ``bn1``, ``relu1``, ``conv2``, ``bn2``, ``shortcut``,
    ``relu2``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.in_ch = positive_int("in_ch", in_ch)
        self.out_ch = positive_int("out_ch", out_ch)
        self.stride = positive_int("stride", stride)
        self.conv1 = Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(out_ch)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(out_ch)
        if stride != 1 or in_ch != out_ch:
            self.shortcut: Layer = Sequential(("conv", Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)),
                                              ("bn", BatchNorm2d(out_ch)))
        else:
            self.shortcut = Identity()
        self.relu2 = ReLU()

    def config(self) -> dict[str, Any]:
        return {"in_ch": self.in_ch, "out_ch": self.out_ch, "stride": self.stride}

    def children(self) -> Iterator[tuple[str, Layer]]:
        return iter([("conv1", self.conv1), ("bn1", self.bn1), ("relu1", self.relu1), ("conv2", self.conv2),
                     ("bn2", self.bn2), ("shortcut", self.shortcut), ("relu2", self.relu2)])

    def forward(self, x):
        main = self.relu1.forward(self.bn1.forward(self.conv1.forward(x)))
        main = self.bn2.forward(self.conv2.forward(main))
        xp = backend.get_array_module(main)
        # into a buffer of the layout of ``main`` (channels-last): CuPy's ``+`` would return C-ordered NCHW
        return self.relu2.forward(xp.add(main, self.shortcut.forward(x), out=xp.empty_like(main)))

    def backward(self, dout):
        d = self.relu2.backward(dout)
        d_main = self.conv1.backward(self.bn1.backward(self.relu1.backward(self.conv2.backward(
            self.bn2.backward(d)))))
        xp = backend.get_array_module(d_main)
        return xp.add(d_main, self.shortcut.backward(d), out=xp.empty_like(d_main))
