"""Pooling layers: :class:`MaxPool2d`, :class:`AvgPool2d`, :class:`GlobalAvgPool2d` (PyTorch semantics,
``ceil_mode=False``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from xpvision import backend
from xpvision.errors import ConfigError, ShapeError
from xpvision.nn import engine
from xpvision.nn import functional as F
from xpvision.nn.base import Layer
from xpvision.nn.convblock import max_pool2x2, max_unpool2x2
from xpvision.nn.validate import forward_done, grad_like, image_input, pair, unpair

POOL_CHUNK_ELEMENTS = 128 * 1024
"""Output values per chunk of samples in the tuned general max pool on the CPU: the chunk's running
maximum, index and masks (about 7 bytes a value) then stay in a core's L2 cache (1-2 MiB) over all the
window's taps."""


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
        kernels = engine.get_engine()
        y, index = engine.kernel("max_pool2d", kernels)(xpad, self.kernel_size, self.stride, out_hw,
                                                        need_index=self.training)
        # in evaluation the kernel may keep no index: a backward (rare there) recomputes it from the input
        self._cache = (kernels, index, xpad.shape[1:3], y.shape, xpad if index is None else None)
        return F.nchw(y)

    def backward(self, dout):
        kernels, index, padded_hw, y_shape, xpad = self._cache or (None,) * 5
        dy = self._grad_output(dout, y_shape)  # (N, OH, OW, C)
        if index is None:
            _, index = engine.kernel("max_pool2d", kernels)(xpad, self.kernel_size, self.stride, y_shape[1:3],
                                                            need_index=True)
        dxpad = engine.kernel("max_pool2d_backward", kernels)(dy, index, padded_hw, self.kernel_size,
                                                              self.stride)  # (N, Hp, Wp, C)
        return F.nchw(F.crop_nhwc(dxpad, self.padding))


@engine.register("tuned", "max_pool2d")
def max_pool2d(xpad, kernel, stride, out_hw, *, need_index: bool):
    """The tuned ``max_pool2d`` kernel of :mod:`xpvision.nn.engine`: the fused 2x2 stride-2 pool of
    :mod:`.convblock` (no index without ``need_index``), else a running maximum over the window's taps
    (:func:`max_pool_taps`)."""
    if _fused_2x2(kernel, stride):
        xp = backend.get_array_module(xpad)
        y = xp.empty((xpad.shape[0], *out_hw, xpad.shape[3]), dtype=xpad.dtype)  # (N, OH, OW, C)
        index = xp.empty(y.shape, dtype=xp.uint8) if need_index else None
        max_pool2x2(xpad, y, index, relu=False)
        return y, index
    return max_pool_taps(xpad, kernel, stride, out_hw, need_index)


@engine.register("tuned", "max_pool2d_backward")
def max_pool2d_backward(dy, index, padded_hw, kernel, stride):
    """The tuned ``max_pool2d_backward`` kernel: :func:`xpvision.nn.convblock.max_unpool2x2` for the 2x2
    stride-2 pool, else :func:`max_pool_taps_backward`."""
    if _fused_2x2(kernel, stride):
        xp = backend.get_array_module(dy)
        dxpad = xp.empty((dy.shape[0], *padded_hw, dy.shape[3]), dtype=dy.dtype)
        max_unpool2x2(dy, index, dxpad)  # writes all of it
        return dxpad
    return max_pool_taps_backward(dy, index, padded_hw, kernel, stride)


def _fused_2x2(kernel, stride) -> bool:
    """Whether the tuned kernels take :mod:`.convblock`'s 2x2 stride-2 pool (any padding: ``xpad`` has it)."""
    return tuple(kernel) == tuple(stride) == (2, 2)


def _chunk(out_shape: tuple[int, ...], xp) -> int:
    """Samples per chunk: about :data:`POOL_CHUNK_ELEMENTS` output values on the CPU, the batch on the GPU."""
    per_sample = int(np.prod(out_shape[1:]))
    return max(1, POOL_CHUNK_ELEMENTS // per_sample) if xp is np else out_shape[0]


def max_pool_taps(xpad, kernel, stride, out_hw, need_index: bool = True):
    """Max pool of the ``-inf``-padded ``xpad`` ``(N, Hp, Wp, C)`` as a running maximum over the ``kh * kw``
    taps (strided views of ``xpad``, nothing copied), a chunk of samples at a time -> ``(y, index)`` of
    ``(N, OH, OW, C)``, equal to :func:`xpvision.nn.functional.max_pool_nhwc`'s bit for bit: the index moves
    to a later tap only where it is greater than the maximum so far, or NaN where the maximum is not (the
    first NaN wins, as with ``argmax``). ``index`` is ``None`` without ``need_index``."""
    xp = backend.get_array_module(xpad)
    n, c, taps = xpad.shape[0], xpad.shape[3], kernel[0] * kernel[1]
    y = xp.empty((n, *out_hw, c), dtype=xpad.dtype)
    index = xp.zeros(y.shape, dtype=F.pool_index_dtype(taps, xp)) if need_index else None
    chunk = _chunk(y.shape, xp)
    if need_index:  # masks of one chunk, reused
        later, real = xp.empty((chunk, *y.shape[1:]), dtype=bool), xp.empty((chunk, *y.shape[1:]), dtype=bool)
        step = xp.empty(later.shape, dtype=index.dtype)
    for a in range(0, n, chunk):
        part, best = xpad[a:a + chunk], y[a:a + chunk]
        at = None if index is None else index[a:a + chunk]
        m = best.shape[0]
        best[...] = part[F.tap_slice((0, 0), stride, out_hw)]
        for t in range(1, taps):
            tap = part[F.tap_slice(divmod(t, kernel[1]), stride, out_hw)]  # (m, OH, OW, C) view
            if need_index:
                xp.less_equal(tap, best, out=later[:m])
                xp.logical_not(later[:m], out=later[:m])  # tap > best, or tap is NaN
                xp.equal(best, best, out=real[:m])
                later[:m] &= real[:m]  # ... while best is no NaN
                xp.subtract(index.dtype.type(t), at, out=step[:m])
                step[:m] *= later[:m]
                at += step[:m]  # t where later, else unchanged: no branch per element
            xp.maximum(best, tap, out=best)
    return y, index


def max_pool_taps_backward(dy, index, padded_hw, kernel, stride):
    """Gradient of :func:`max_pool_taps`: for each tap, ``dy`` where ``index`` names it and +0.0 elsewhere
    (``dy``'s bits ANDed with an all-ones or all-zeros mask: ``where(index == tap, dy, 0)`` bit for bit, NaN
    included, without a branch per element) added into the tap's positions of the ``(N, Hp, Wp, C)``
    gradient, a chunk of samples at a time."""
    xp = backend.get_array_module(dy)
    n, oh, ow, c = dy.shape
    dxpad = xp.zeros((n, *padded_hw, c), dtype=dy.dtype)
    bits = dy.view(f"u{dy.dtype.itemsize}")  # (N, OH, OW, C) unsigned ints of dy's width
    ones = np.iinfo(bits.dtype).max
    chunk = _chunk(dy.shape, xp)
    hit = xp.empty((chunk, oh, ow, c), dtype=bool)
    mask, routed = xp.empty(hit.shape, dtype=bits.dtype), xp.empty(hit.shape, dtype=bits.dtype)
    for a in range(0, n, chunk):
        m = min(chunk, n - a)
        for t in range(kernel[0] * kernel[1]):
            xp.equal(index[a:a + m], index.dtype.type(t), out=hit[:m])
            xp.multiply(hit[:m], bits.dtype.type(ones), out=mask[:m])
            xp.bitwise_and(bits[a:a + m], mask[:m], out=routed[:m])
            dxpad[a:a + m][F.tap_slice(divmod(t, kernel[1]), stride, (oh, ow))] += routed[:m].view(dy.dtype)
    return dxpad


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
