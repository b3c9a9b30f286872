"""Pooling layers: :class:`MaxPool2d`, :class:`AvgPool2d`, :class:`GlobalAvgPool2d` (PyTorch semantics,
``ceil_mode=False``)."""

from __future__ import annotations

from typing import Any

from xpvision import backend
from xpvision.errors import ConfigError, ShapeError
from xpvision.nn import functional as F
from xpvision.nn.base import Layer
from xpvision.nn.convblock import max_pool2x2, max_unpool2x2
from xpvision.nn.validate import forward_done, grad_like, image_input, pair, unpair


class _Pool2d(Layer):
    registered = False
    pad_value = 0.0

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple | None = None,
                 padding: int | tuple = 0) -> None:
        super().__init__()
        self.kernel_size = pair("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else pair("stride", stride, 1)
        self.padding = pair("padding", padding, 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ConfigError(f"{type(self).__name__} padding {self.padding} must be at most half the kernel "
                              f"{self.kernel_size}")
        self._pad_buffer = None
        self._cache: tuple | None = None

    def config(self) -> dict[str, Any]:
        return {"kernel_size": unpair(self.kernel_size), "stride": unpair(self.stride),
                "padding": unpair(self.padding)}

    def _padded_input(self, x):
        """Check ``x`` ``(N, C, H, W)``; return ``(padded (N, Hp, Wp, C), (OH, OW))``."""
        x4 = image_input(type(self).__name__, x, None)  # (N, H, W, C)
        out_hw = tuple(F.conv_output_size(size, k, s, p) for size, k, s, p in zip(
            x4.shape[1:3], self.kernel_size, self.stride, self.padding, strict=True))
        if min(out_hw) < 1:
            raise ShapeError(f"{type(self).__name__} input {tuple(x.shape)} is smaller than its kernel "
                             f"{self.kernel_size} (padding {self.padding})")
        xpad = F.pad_nhwc(x4, self.padding, value=self.pad_value, out=self._pad_buffer)
        if xpad is not x4:
            self._pad_buffer = xpad
        return xpad, out_hw

    def _grad_output(self, dout, y_shape):
        """Check ``dout`` against the last output ``(N, OH, OW, C)``; return it as ``(N, OH, OW, C)``."""
        forward_done(type(self).__name__, self._cache)
        return F.nhwc(grad_like(type(self).__name__, dout, (y_shape[0], y_shape[3], y_shape[1], y_shape[2])))


class MaxPool2d(_Pool2d):
    """Max pooling. Input ``(N, C, H, W)``; output ``(N, C, OH, OW)``, ``OH = (H + 2P - K) // S + 1``;
    ``stride`` defaults to ``kernel_size``; implicit ``-inf`` padding. Ties send the gradient to the first
    maximum (row-major in the window), as PyTorch."""

    pad_value = float("-inf")

    def is_2x2(self) -> bool:
        """True for the common 2x2, stride 2, unpadded pool (which has a faster kernel)."""
        return self.kernel_size == (2, 2) and self.stride == (2, 2) and self.padding == (0, 0)

    def forward(self, x):
        xpad, out_hw = self._padded_input(x)
        if self.is_2x2():
            xp = backend.get_array_module(xpad)
            y = xp.empty((xpad.shape[0], *out_hw, xpad.shape[3]), dtype=xpad.dtype)  # (N, OH, OW, C)
            # in evaluation no index: a backward (rare there) recomputes it from the cached input
            argmax = xp.empty(y.shape, dtype=xp.uint8) if self.training else None
            max_pool2x2(xpad, y, argmax, relu=False)
            self._cache = (argmax, xpad.shape[1:3], y.shape, None if self.training else xpad)
        else:
            y, argmax = F.max_pool_nhwc(xpad, self.kernel_size, self.stride, out_hw)  # (N, OH, OW, C) both
            self._cache = (argmax, xpad.shape[1:3], y.shape, None)
        return F.nchw(y)

    def backward(self, dout):
        argmax, padded_hw, y_shape, x_eval = self._cache or (None, None, None, None)
        dy = self._grad_output(dout, y_shape)  # (N, OH, OW, C)
        if argmax is None:  # an evaluation-mode forward: the index from the cached input
            xp = backend.get_array_module(dy)
            argmax = xp.empty(y_shape, dtype=xp.uint8)
            max_pool2x2(x_eval, xp.empty(y_shape, dtype=dy.dtype), argmax, relu=False)
        if self.is_2x2():
            dx = backend.get_array_module(dy).empty((dy.shape[0], *padded_hw, dy.shape[3]), dtype=dy.dtype)
            max_unpool2x2(dy, argmax, dx)
            return F.nchw(dx)
        dxpad = F.max_pool_backward(dy, argmax, padded_hw, self.kernel_size, self.stride)
        return F.nchw(F.crop_nhwc(dxpad, self.padding))


class AvgPool2d(_Pool2d):
    """Average pooling with zero padding counted in the divisor ``kh * kw`` (PyTorch's default
    ``count_include_pad=True``). Input ``(N, C, H, W)``; output ``(N, C, OH, OW)``."""

    def forward(self, x):
        xpad, out_hw = self._padded_input(x)
        y = F.avg_pool_nhwc(xpad, self.kernel_size, self.stride, out_hw)  # (N, OH, OW, C)
        self._cache = (xpad.shape[1:3], y.shape)
        return F.nchw(y)

    def backward(self, dout):
        padded_hw, y_shape = self._cache or (None, None)
        dy = self._grad_output(dout, y_shape)  # (N, OH, OW, C)
        dxpad = F.avg_pool_backward(dy, padded_hw, self.kernel_size, self.stride)
        return F.nchw(F.crop_nhwc(dxpad, self.padding))


class GlobalAvgPool2d(Layer):
    """Mean over the spatial axes: ``(N, C, H, W)`` -> ``(N, C)``."""

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple | None = None

    def forward(self, x):
        x4 = image_input(type(self).__name__, x, None)  # (N, H, W, C)
        self._shape = x4.shape
        return x4.mean(axis=(1, 2))  # (N, C)

    def backward(self, dout):
        forward_done(type(self).__name__, self._shape)
        n, h, w, c = self._shape
        dout = grad_like(type(self).__name__, dout, (n, c))
        xp = backend.get_array_module(dout)
        dx = xp.empty((n, h, w, c), dtype=dout.dtype)
        dx[...] = (dout * dout.dtype.type(1.0 / (h * w)))[:, None, None, :]  # (N, H, W, C)
        return F.nchw(dx)
