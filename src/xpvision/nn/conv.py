"""Convolution layers: :class:`Conv2d` and :class:`ConvTranspose2d` (channels-last inside, see ``base.py``).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from xpvision import backend
from xpvision.errors import ShapeError
from xpvision.nn import convblock, engine, init, winograd
from xpvision.nn import functional as F
from xpvision.nn.activation import ReLU
from xpvision.nn.base import Layer
from xpvision.nn.convblock import ConvGeometry, Scratch
from xpvision.nn.parallel import current_layout, single_threaded_blas
from xpvision.nn.pooling import MaxPool2d
from xpvision.nn.validate import forward_done, grad_like, image_input, pair, positive_int, unpair


class Conv2d(Layer):
    """2-D convolution (cross-correlation, as PyTorch).

    Parameters: ``W`` ``(out_ch, in_ch, kh, kw)`` (PyTorch's shape; in memory ``(kh, kw, in_ch, out_ch)``, the
    GEMM's layout, see :func:`~xpvision.nn.functional.conv_weight_storage`), He-normal initialised with fan-in
    ``in_ch * kh * kw``; ``b`` ``(out_ch,)`` zeros (when ``bias``). ``kernel_size``, ``stride``, ``padding``
    and ``dilation`` are ints or ``(h, w)`` pairs; padding is zeros.

    Input ``(N, in_ch, H, W)`` float32/float64; output ``(N, out_ch, OH, OW)`` with ``OH = (H + 2P - D(K - 1)
    - 1) // S + 1``, an NCHW-shaped view of a contiguous NHWC buffer.
    """

    batch_summed = True

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int], stride: int | tuple = 1,
                 padding: int | tuple = 0, dilation: int | tuple = 1, bias: bool = True) -> None:
        super().__init__()
        self.in_ch = positive_int("in_ch", in_ch)
        self.out_ch = positive_int("out_ch", out_ch)
        self.kernel_size = pair("kernel_size", kernel_size, 1)
        self.stride = pair("stride", stride, 1)
        self.padding = pair("padding", padding, 0)
        self.dilation = pair("dilation", dilation, 1)
        kh, kw = self.kernel_size
        self.add_param("W", F.conv_weight_storage(init.he_normal((self.out_ch, self.in_ch, kh, kw),
                                                                 fan_in=self.in_ch * kh * kw)))
        if bias:
            self.add_param("b", np.zeros(self.out_ch, dtype=np.float32))
        self._scratch = Scratch()  # reused buffers, the zero-bordered padded input among them
        self._cache: tuple | None = None

    def config(self) -> dict[str, Any]:
        return {"in_ch": self.in_ch, "out_ch": self.out_ch, "kernel_size": unpair(self.kernel_size),
                "stride": unpair(self.stride), "padding": unpair(self.padding),
                "dilation": unpair(self.dilation), "bias": "b" in self.params}

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """``(OH, OW)`` for an ``H x W`` input."""
        return tuple(F.conv_output_size(size, k, s, p, d) for size, k, s, p, d in zip(
            (h, w), self.kernel_size, self.stride, self.padding, self.dilation, strict=True))

    def fusable(self, following: list[Layer]) -> int:
        """Absorbs a directly following ``ReLU``, then a 2x2 stride-2 unpadded ``MaxPool2d``."""
        count = 0
        if count < len(following) and type(following[count]) is ReLU:
            count += 1
        if count < len(following) and type(following[count]) is MaxPool2d and following[count].is_2x2():
            count += 1
        return count

    def forward(self, x):
        return self._forward(x, relu=False, pool=False)

    def forward_fused(self, x, absorbed: list[Layer]):
        return self._forward(x, relu=any(type(a) is ReLU for a in absorbed),
                             pool=any(type(a) is MaxPool2d for a in absorbed))

    def _forward(self, x, relu: bool, pool: bool):
        """Convolution + bias, then optionally ReLU and a 2x2 max pool -> ``(N, O, OH, OW)``-shaped view."""
        self._cache = None  # the last output's buffer can be reused unless the caller still holds it
        x4 = image_input(type(self).__name__, x, self.in_ch)  # (N, H, W, I)
        oh, ow = self.output_size(x4.shape[1], x4.shape[2])
        if oh < 1 or ow < 1:
            raise ShapeError(f"{type(self).__name__} input {tuple(x.shape)} is smaller than its kernel "
                             f"{self.kernel_size} (dilation {self.dilation}, padding {self.padding})")
        if pool and min(oh, ow) < 2:
            raise ShapeError(f"MaxPool2d input {(x4.shape[0], self.out_ch, oh, ow)} is smaller than its "
                             f"kernel (2, 2) (padding (0, 0))")
        geom = ConvGeometry(self.kernel_size, self.stride, self.dilation, self.padding, x4.shape[1:3],
                            (oh, ow))
        kernels = engine.get_engine()
        y, saved = engine.kernel("conv2d", kernels)(
            x4, self.params["W"], self.params.get("b"), geom, relu=relu, pool=pool, training=self.training,
            scratch=self._scratch)
        self._cache = (kernels, saved, y.shape)
        return F.nchw(y)

    def backward(self, dout):
        forward_done(type(self).__name__, self._cache)
        kernels, saved, y_shape = self._cache
        dy = F.nhwc(grad_like(type(self).__name__, dout, (y_shape[0], y_shape[3], y_shape[1], y_shape[2])))
        dx = engine.kernel("conv2d_backward", kernels)(
            dy, saved, grads=self.wanted_grads(), need_input=self.needs_input_grad, scratch=self._scratch)
        return None if dx is None else F.nchw(dx)  # (N, I, H, W)


@engine.register("tuned", "conv2d")
def conv2d(x, w, b, geom: ConvGeometry, *, relu: bool, pool: bool, training: bool, scratch: Scratch):
    """The tuned ``conv2d`` kernel of :mod:`xpvision.nn.engine`: Winograd F(2x2, 3x3) (:mod:`.winograd`) for
    the convolutions :func:`xpvision.nn.winograd.chosen` takes by their shapes (``XPVISION_WINOGRAD``), im2col
    + GEMM (:mod:`.convblock`) for the others. ``saved`` records which of the two ran."""
    xp = backend.get_array_module(x)
    batch = current_layout(x.shape[0], xp).total  # the global batch: the same choice in every process
    method = winograd if winograd.chosen(geom, batch, w.shape[1], w.shape[0], xp) else convblock
    y, saved = method.conv2d(x, w, b, geom, relu=relu, pool=pool, training=training, scratch=scratch)
    return y, (method, saved)


@engine.register("tuned", "conv2d_backward")
def conv2d_backward(dy, saved, *, grads: dict, need_input: bool, scratch: Scratch):
    """The tuned ``conv2d_backward`` kernel: the backward of the method :func:`conv2d` used."""
    method, state = saved
    return method.conv2d_backward(dy, state, grads=grads, need_input=need_input, scratch=scratch)


class ConvTranspose2d(Layer):
    """2-D transposed convolution (the gradient of a convolution w.r.t. its input), as PyTorch's.

    Parameters: ``W`` ``(in_ch, out_ch, kh, kw)`` (PyTorch's shape; in memory ``(kh, kw, out_ch, in_ch)``, the
    matching convolution's GEMM layout), He-normal initialised with fan-in
    ``in_ch * kh * kw / (sh * sw)`` (the input terms per output pixel); ``b`` ``(out_ch,)`` zeros.

    Input ``(N, in_ch, H, W)``; output ``(N, out_ch, (H - 1) * S - 2P + K, ...)``, an NCHW-shaped view of a
    contiguous NHWC buffer. Computed as the input gradient of the convolution with the same ``W``, ``stride``
    and ``padding`` (which maps the output back to the input).

    A frozen layer whose ``W`` filters each channel alone with one separable kernel (``W[i, o] = 0`` for
    ``i != o``, ``W[i, i] = outer(a, b)`` for every ``i``: bilinear upsampling, as FCN's fixed final layer)
    runs as two small matrix products per channel, ``U_h @ x @ U_w^T``, instead of a dense GEMM over all
    channel pairs: the same sums (up to float rounding), and no weight gradient to compute.

    Its weight and bias gradients are sums over the batch formed block by block of the batch's layout
    (:attr:`~xpvision.nn.base.Layer.batch_summed`), as :class:`Conv2d`'s are.
    """

    batch_summed = True

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int], stride: int | tuple = 1,
                 padding: int | tuple = 0, bias: bool = True) -> None:
        super().__init__()
        self.in_ch = positive_int("in_ch", in_ch)
        self.out_ch = positive_int("out_ch", out_ch)
        self.kernel_size = pair("kernel_size", kernel_size, 1)
        self.stride = pair("stride", stride, 1)
        self.padding = pair("padding", padding, 0)
        kh, kw = self.kernel_size
        fan_in = max(1, self.in_ch * kh * kw // (self.stride[0] * self.stride[1]))
        self.add_param("W", F.conv_weight_storage(init.he_normal((self.in_ch, self.out_ch, kh, kw),
                                                                 fan_in=fan_in)))
        if bias:
            self.add_param("b", np.zeros(self.out_ch, dtype=np.float32))
        self._scratch = Scratch()  # the zero-bordered padded output gradient, as Conv2d's padded input
        self._cache: tuple | None = None
        self._frozen: tuple | None = None  # (W, separable factors or None, {(H, W, dtype): (U_h, U_w)})

    def config(self) -> dict[str, Any]:
        return {"in_ch": self.in_ch, "out_ch": self.out_ch, "kernel_size": unpair(self.kernel_size),
                "stride": unpair(self.stride), "padding": unpair(self.padding), "bias": "b" in self.params}

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """``(OH, OW) = ((H - 1) * S - 2P + K, ...)``."""
        return tuple((size - 1) * s - 2 * p + k for size, k, s, p in zip(
            (h, w), self.kernel_size, self.stride, self.padding, strict=True))

    def forward(self, x):
        x4 = image_input(type(self).__name__, x, self.in_ch)  # (N, H, W, I)
        oh, ow = self.output_size(x4.shape[1], x4.shape[2])
        if oh < 1 or ow < 1:
            raise ShapeError(f"{type(self).__name__} input {tuple(x.shape)} gives an empty output "
                             f"({oh}, {ow})")
        kernels = engine.get_engine()
        # a frozen per-channel separable W (bilinear upsampling): its 1-D matrices, found once per W
        upsampling = None if self.trainable else self._frozen_matrices(x4.shape[1:3], x4.dtype)
        y, saved = engine.kernel("conv_transpose2d", kernels)(
            x4, self.params["W"], self.params.get("b"), self.stride, self.padding, upsampling=upsampling,
            scratch=self._scratch)
        self._cache = (kernels, saved, y.shape)
        return F.nchw(y)

    def _frozen_matrices(self, hw: tuple[int, int], dtype):
        """``(U_h, U_w)`` of a frozen separable ``W`` for an input of ``hw``, or ``None``. Cached while ``W``
        is the same array (``to``/``astype`` replace it; ``load_state_dict`` calls :meth:`weights_loaded`),
        so the factors, whose test reads the weights back to the host, are found once, not every forward."""
        w = self.params["W"]
        if self._frozen is None or self._frozen[0] is not w:
            self._frozen = (w, _separable_factors(w), {})
        _, separable, mats = self._frozen
        if separable is None:
            return None
        key = (*hw, str(dtype))
        if key not in mats:
            mats[key] = [_upsampling_matrix(f, n, s, p, dtype) for f, n, s, p in zip(
                separable, hw, self.stride, self.padding, strict=True)]  # (OH, H), (OW, W)
        return mats[key]

    def weights_loaded(self) -> None:
        self._frozen = None

    def backward(self, dout):
        forward_done(type(self).__name__, self._cache)
        kernels, saved, y_shape = self._cache
        dy = F.nhwc(grad_like(type(self).__name__, dout, (y_shape[0], y_shape[3], y_shape[1], y_shape[2])))
        # a layer frozen at the forward and unfrozen since gets its gradients too
        dx = engine.kernel("conv_transpose2d_backward", kernels)(dy, saved, grads=self.wanted_grads(),
                                                                  scratch=self._scratch)
        return F.nchw(dx)  # (N, I, H, W)


@engine.register("tuned", "conv_transpose2d")
def conv_transpose2d(x, w, b, stride, padding, *, upsampling, scratch: Scratch):
    """The tuned ``conv_transpose2d`` kernel of :mod:`xpvision.nn.engine`: the input gradient of the
    convolution with the same weights (no spread zeros); with ``upsampling`` (the 1-D matrices of a frozen
    ``W`` that is one separable kernel on the channel diagonal) two small matrix products per channel. Both
    run block by block of the batch's layout (:func:`xpvision.nn.parallel.current_layout`): a sample's
    bits must not depend on the samples its products share a GEMM with."""
    xp = backend.get_array_module(x)
    layout = current_layout(x.shape[0], xp)
    kernel = w.shape[2:]
    oh, ow = ((size - 1) * s - 2 * p + k for size, k, s, p in zip(x.shape[1:3], kernel, stride, padding,
                                                                  strict=True))
    if upsampling is not None:
        mats = list(upsampling)  # (OH, H), (OW, W)
        with single_threaded_blas(xp):
            y = _by_block(layout, lambda a, e: _apply_per_channel(x[a:e], *mats))  # (N, OH, OW, C)
        if b is not None:
            y += b
        return y, (x, w, mats, stride, padding, layout)
    w_mat = F.conv_weight_matrix(w)  # (kh*kw*O, I): the matching convolution maps O -> I
    padded_hw = (oh + 2 * padding[0], ow + 2 * padding[1])
    with single_threaded_blas(xp):
        ypad = _by_block(layout, lambda a, e: F.conv2d_grad_input(x[a:e], w_mat, padded_hw, kernel, stride))
    y = F.crop_nhwc(ypad, padding)  # (N, OH, OW, O)
    if padding != (0, 0):
        y = y.copy()  # contiguous (N, OH, OW, O)
    if b is not None:
        y += b
    return y, (x, w, w_mat, stride, padding, layout)


@engine.register("tuned", "conv_transpose2d_backward")
def conv_transpose2d_backward(dy, saved, *, grads: dict, scratch: Scratch):
    """The tuned ``conv_transpose2d_backward`` kernel: ``dx`` is the convolution of ``dy`` with ``W``; the
    weight and bias gradients are one partial sum per block of the layout, added by its ``fold_into``."""
    x, w, weights, stride, padding, layout = saved
    kernel = w.shape[2:]
    xp = backend.get_array_module(dy)
    separable = isinstance(weights, list)
    dypad = dy
    if padding != (0, 0) and ("W" in grads or not separable):
        (p0, p1), (n, h, w_out, c) = padding, dy.shape
        buffer = scratch.get(0, "dypad", (n, h + 2 * p0, w_out + 2 * p1, c), dy.dtype, xp, fill=0)
        dypad = F.pad_nhwc(dy, padding, out=buffer)  # (N, OHp, OWp, O), border zero
    blocks = layout.blocks
    with single_threaded_blas(xp):
        if "W" in grads:  # (kh*kw*O, I) per block, seen as (I, O, kh, kw)
            parts = [F.conv2d_grad_weight(dypad[a:e], x[a:e], kernel, stride) for a, e in blocks]
            layout.fold_into(parts, grads["W"],
                             view=functools.partial(F.conv_weight_from_matrix, kernel=kernel))
        if "b" in grads:
            layout.fold_into([dy[a:e].reshape(-1, dy.shape[3]).sum(axis=0) for a, e in blocks], grads["b"])
        if separable:  # weights holds (U_h, U_w)
            u_h, u_w = weights
            return _by_block(layout, lambda a, e: _apply_per_channel(dy[a:e], u_h.T, u_w.T))
        return _by_block(layout, lambda a, e: F.conv2d_nhwc(dypad[a:e], weights, kernel, stride))


def _by_block(layout, compute):
    """``compute(start, stop)`` for each block of ``layout``, concatenated along the batch."""
    parts = [compute(a, e) for a, e in layout.blocks]
    return parts[0] if len(parts) == 1 else backend.get_array_module(parts[0]).concatenate(parts)


def _separable_factors(w):
    """``(a, b)`` 1-D kernels ``(kh,)``, ``(kw,)`` when ``W`` ``(C, C, kh, kw)`` is ``outer(a, b)`` on the
    channel diagonal for every channel and zero elsewhere (within float32 rounding); else ``None``."""
    xp = backend.get_array_module(w)
    c_in, c_out = w.shape[:2]
    if c_in != c_out:
        return None
    channels = xp.arange(c_in)
    diagonal = w[channels, channels]  # (C, kh, kw)
    kernel = diagonal[0]
    total = float(kernel.sum())
    off_diagonal = channels[:, None] != channels[None, :]  # (C, C)
    if total == 0 or bool(xp.any(diagonal != kernel)) or bool(xp.any(w[off_diagonal])):
        return None
    a, b = kernel.sum(axis=1), kernel.sum(axis=0) / total  # (kh,), (kw,)
    scale = float(xp.abs(kernel).max())
    if not bool(xp.all(xp.abs(xp.outer(a, b) - kernel) <= 1e-6 * scale)):
        return None
    return a, b


def _upsampling_matrix(kernel, length: int, stride: int, padding: int, dtype):
    """``U`` ``(out, length)`` with ``U[o, i] = kernel[o + padding - i * stride]`` (0 outside the kernel): the
    1-D transposed convolution along one axis, cropped by ``padding`` at both ends."""
    xp = backend.get_array_module(kernel)
    size = len(kernel)
    out = (length - 1) * stride - 2 * padding + size
    tap = xp.arange(out)[:, None] + padding - xp.arange(length)[None, :] * stride  # (out, length)
    inside = (tap >= 0) & (tap < size)
    return xp.where(inside, kernel[xp.clip(tap, 0, size - 1)], 0).astype(dtype)


def _apply_per_channel(x4, u_h, u_w):
    """``U_h @ x[n, :, :, c] @ U_w^T`` for every image and channel: ``x4`` ``(N, H, W, C)``, ``u_h``
    ``(OH, H)``, ``u_w`` ``(OW, W)`` -> contiguous ``(N, OH, OW, C)``."""
    xp = backend.get_array_module(x4)
    n, h, w, c = x4.shape
    rows = u_h @ x4.transpose(1, 0, 2, 3).reshape(h, n * w * c)  # (OH, N*W*C)
    rows = rows.reshape(u_h.shape[0] * n, w, c)  # (OH*N, W, C)
    both = xp.matmul(u_w, rows)  # (OH*N, OW, C)
    return xp.ascontiguousarray(both.reshape(u_h.shape[0], n, u_w.shape[0], c).transpose(1, 0, 2, 3))
