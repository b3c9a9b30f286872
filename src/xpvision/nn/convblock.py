"""The kernels of :class:`~xpvision.nn.Conv2d`: im2col + one GEMM per cache-sized chunk of the batch,
optionally fused with the ReLU and the 2x2 max pool that follow the convolution.

Arrays are channels-last: input ``xpad`` ``(N, Hp, Wp, I)`` (already zero-padded), weights as the GEMM matrix
``w_mat`` ``(kh * kw * I, O)`` (see :func:`xpvision.nn.functional.conv_weight_matrix`), outputs ``(N, OH, OW,
O)`` or, pooled, ``(N, OH // 2, OW // 2, O)``. Each chunk's im2col matrix, GEMM output and gradient stay in
per-worker scratch buffers (:class:`Scratch`) that are reused from call to call, and the chunks run on
:func:`xpvision.nn.parallel.run_chunks` threads. The input gradient of a stride-1 convolution is a transposed
convolution (``dy`` zero-padded by ``D(K - 1) - P``, convolved with the flipped kernel, giving ``(N, H, W,
I)`` directly); other strides use the GEMM + col2im scatter of :mod:`xpvision.nn.functional`.
"""

from __future__ import annotations

from dataclasses import dataclass

from xpvision import backend
from xpvision.nn import functional as F
from xpvision.nn.parallel import run_chunks

DEAD = 4
"""Added to a pool index where the fused ReLU zeroed the output: such a position receives no gradient."""


class Scratch:
    """Reusable per-worker buffers of one layer, keyed by ``(worker, name)``.

    A buffer is reallocated only when the requested shape, dtype or device changes. Buffers requested with
    a ``fill`` value are filled with it when allocated (callers keep the filled parts intact, e.g. the zero
    border of a padded buffer whose interior alone is written).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, str], object] = {}

    def get(self, worker: int, name: str, shape: tuple[int, ...], dtype, xp, fill: float | None = None):
        buf = self._buffers.get((worker, name))
        if buf is None or buf.shape != shape or buf.dtype != dtype or backend.get_array_module(buf) is not xp:
            buf = xp.empty(shape, dtype=dtype) if fill is None else xp.full(shape, fill, dtype=dtype)
            self._buffers[(worker, name)] = buf
        return buf


@dataclass(frozen=True)
class ConvGeometry:
    """Sizes of one convolution call: ``kernel``, ``stride``, ``dilation``, ``padding`` (each ``(h, w)``), the
    unpadded input ``in_hw`` and the output ``out_hw``."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def rows_per_sample(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    @property
    def transposed_padding(self) -> tuple[int, int]:
        """``D(K - 1) - P``: the zero padding of ``dy`` for the transposed-convolution input gradient."""
        return tuple(d * (k - 1) - p
                     for d, k, p in zip(self.dilation, self.kernel, self.padding, strict=True))

    @property
    def input_grad_by_transposed_conv(self) -> bool:
        return self.stride == (1, 1) and min(self.transposed_padding) >= 0


def _im2col(scratch: Scratch, worker: int, name: str, xpad, geom: ConvGeometry, step: int):
    """The ``(m * OH * OW, kh * kw * C)`` im2col matrix of ``xpad`` ``(m, Hp, Wp, C)`` (m <= ``step``
    samples), in a scratch buffer sized for ``step`` samples.

    With one input channel the matrix is built tap-major, ``(kh * kw, rows)`` (one long contiguous copy per
    kernel tap instead of ``kw``-long runs), and returned transposed: GEMMs take it without a copy.
    """
    xp = backend.get_array_module(xpad)
    m, c = xpad.shape[0], xpad.shape[3]
    (oh, ow), (kh, kw), (dh, dw) = geom.out_hw, geom.kernel, geom.dilation
    rows = m * oh * ow
    if c == 1:
        buf = scratch.get(worker, name, (kh * kw, step * oh * ow), xpad.dtype, xp)[:, :rows]  # (kh*kw, rows)
        for i in range(kh):
            for j in range(kw):
                tap = xpad[F.tap_slice((i * dh, j * dw), geom.stride, geom.out_hw)]  # (m, OH, OW, 1)
                buf[i * kw + j].reshape(m, oh, ow)[...] = tap[..., 0]
        return buf.T  # (rows, kh*kw)
    buf = scratch.get(worker, name, (step * oh * ow, kh * kw * c), xpad.dtype, xp)[:rows]
    buf.reshape(m, oh, ow, kh, kw, c)[...] = F.windows(xpad, geom.kernel, geom.stride, geom.dilation,
                                                       geom.out_hw)  # (m, OH, OW, kh, kw, C)
    return buf


def max_pool2x2(y, out, index, relu: bool) -> None:
    """2x2 stride-2 max pool of ``y`` ``(n, OH, OW, C)`` into ``out`` ``(n, OH // 2, OW // 2, C)``, with
    ``index`` (uint8, same shape) the position ``2a + b`` of the *first* maximum of each window (PyTorch's tie
    rule). With ``relu`` the pooled values are ReLU-ed (``max(relu(x)) = relu(max(x))``) and ``DEAD`` is added
    to the index where they are not positive."""
    xp = backend.get_array_module(y)
    ph, pw = out.shape[1:3]
    taps = [y[:, a:2 * ph:2, b:2 * pw:2] for a in (0, 1) for b in (0, 1)]  # 4 x (n, PH, PW, C) views
    xp.maximum(taps[0], taps[1], out=out)
    xp.maximum(out, taps[2], out=out)
    xp.maximum(out, taps[3], out=out)
    # first maximum: 0 if tap0 wins, else 1 if tap1, else 2 if tap2, else 3
    xp.not_equal(taps[2], out, out=index)
    index += 1
    index *= taps[1] != out
    index += 1
    index *= taps[0] != out
    if relu:
        dead = out <= 0
        index += dead.view(xp.uint8) * xp.uint8(DEAD)
        xp.maximum(out, 0, out=out)


def max_unpool2x2(dy, index, dconv) -> None:
    """Gradient of :func:`max_pool2x2`: route ``dy`` ``(n, PH, PW, C)`` to the recorded maxima, writing all of
    ``dconv`` ``(n, OH, OW, C)`` (rows/columns outside the pooled area get zero)."""
    xp = backend.get_array_module(dy)
    ph, pw = dy.shape[1:3]
    for a in (0, 1):
        for b in (0, 1):
            xp.multiply(dy, index == 2 * a + b, out=dconv[:, a:2 * ph:2, b:2 * pw:2])
    if dconv.shape[1] > 2 * ph:
        dconv[:, 2 * ph:] = 0
    if dconv.shape[2] > 2 * pw:
        dconv[:, :, 2 * pw:] = 0


def conv_forward(xpad, w_mat, bias, geom: ConvGeometry, *, relu: bool, pool: bool, scratch: Scratch):
    """Convolution (+ bias) (+ ReLU) (+ 2x2 max pool) of ``xpad`` ``(N, Hp, Wp, I)``.

    Returns ``(out, pool_index)``: ``out`` ``(N, OH, OW, O)``, or ``(N, OH // 2, OW // 2, O)`` with ``pool``;
    and the uint8 pool index of :func:`max_pool2x2` (``None`` without ``pool``).
    """
    xp = backend.get_array_module(xpad)
    n = xpad.shape[0]
    (oh, ow), o = geom.out_hw, w_mat.shape[1]
    dtype = xp.result_type(xpad.dtype, w_mat.dtype)
    step = F.chunk_size(n, geom.rows_per_sample, xp)
    if pool:
        out = xp.empty((n, oh // 2, ow // 2, o), dtype=dtype)
        index = xp.empty(out.shape, dtype=xp.uint8)
    else:
        out, index = xp.empty((n, oh, ow, o), dtype=dtype), None

    def work(start: int, stop: int, worker: int) -> None:
        m = stop - start
        cols = _im2col(scratch, worker, "cols", xpad[start:stop], geom, step)  # (m*OH*OW, kh*kw*I)
        y = scratch.get(worker, "y", (step, oh, ow, o), dtype, xp)[:m] if pool else out[start:stop]
        xp.matmul(cols, w_mat, out=y.reshape(-1, o))  # (m*OH*OW, O)
        if bias is not None:
            y += bias
        if pool:
            max_pool2x2(y, out[start:stop], index[start:stop], relu)
        elif relu:
            xp.maximum(y, 0, out=y)

    run_chunks(work, n, step, xp)
    return out, index


def conv_backward(dout, xpad, w_mat, geom: ConvGeometry, *, relu_out, pool_index, need_params: bool,
                  need_bias: bool, need_input: bool, scratch: Scratch):
    """Gradients of :func:`conv_forward` from ``dout``, the gradient of its output.

    ``relu_out``: the forward output when a ReLU was fused without a pool (its positive entries pass the
    gradient), else ``None``; ``pool_index``: the forward's pool index, or ``None``. Returns ``(dx, dw_mat,
    db)``: ``dx`` ``(N, H, W, I)`` (``None`` unless ``need_input``), ``dw_mat`` ``(kh * kw * I, O)`` and
    ``db`` ``(O,)`` (``None`` unless ``need_params`` / ``need_bias``).
    """
    xp = backend.get_array_module(dout)
    n = dout.shape[0]
    (oh, ow), (h, w), o, k = geom.out_hw, geom.in_hw, w_mat.shape[1], w_mat.shape[0]
    (kh, kw), i_ch = geom.kernel, k // (geom.kernel[0] * geom.kernel[1])
    dtype = xp.result_type(dout.dtype, w_mat.dtype)
    step = F.chunk_size(n, geom.rows_per_sample, xp)
    transposed = geom.input_grad_by_transposed_conv
    q0, q1 = geom.transposed_padding
    dx = dxpad = w_flip = None
    if need_input and transposed:
        dx = xp.empty((n, h, w, i_ch), dtype=dtype)
        w_flip = F.flipped_weight_matrix(w_mat, geom.kernel)  # (kh*kw*O, I)
    elif need_input:
        dxpad = xp.zeros((n, xpad.shape[1], xpad.shape[2], i_ch), dtype=dtype)
    dgeom = ConvGeometry(geom.kernel, (1, 1), geom.dilation, (0, 0), (oh, ow), (h, w))  # dy -> dx
    dw_parts: dict[int, object] = {}
    db_parts: dict[int, object] = {}

    def accumulate(parts: dict, worker: int, value) -> None:
        if worker in parts:
            parts[worker] += value
        else:
            parts[worker] = value

    def work(start: int, stop: int, worker: int) -> None:
        m = stop - start
        if pool_index is not None:
            dconv = scratch.get(worker, "dconv", (step, oh, ow, o), dtype, xp)[:m]
            max_unpool2x2(dout[start:stop], pool_index[start:stop], dconv)
        elif relu_out is not None:
            dconv = scratch.get(worker, "dconv", (step, oh, ow, o), dtype, xp)[:m]
            xp.multiply(dout[start:stop], relu_out[start:stop] > 0, out=dconv)
        else:
            dconv = dout[start:stop]
        dmat = dconv.reshape(-1, o)  # (m*OH*OW, O)
        if need_params:
            cols = _im2col(scratch, worker, "cols", xpad[start:stop], geom, step)  # (m*OH*OW, kh*kw*I)
            accumulate(dw_parts, worker, cols.T @ dmat)  # (kh*kw*I, O)
        if need_bias:  # a matrix-vector product: far faster than a sum over axis 0
            ones = scratch.get(worker, "ones", (step * oh * ow,), dtype, xp, fill=1)[:m * oh * ow]
            accumulate(db_parts, worker, ones @ dmat)  # (O,)
        if need_input and transposed:
            dpad = scratch.get(worker, "dpad", (step, oh + 2 * q0, ow + 2 * q1, o), dtype, xp, fill=0)[:m]
            dpad[:, q0:q0 + oh, q1:q1 + ow] = dconv
            dcols = _im2col(scratch, worker, "dcols", dpad, dgeom, step)  # (m*H*W, kh*kw*O)
            xp.matmul(dcols, w_flip, out=dx[start:stop].reshape(-1, i_ch))  # (m*H*W, I)
        elif need_input:
            dcols = (dmat @ w_mat.T).reshape(m, oh, ow, kh, kw, i_ch)
            F.col2im_add(dxpad[start:stop], dcols, geom.kernel, geom.stride, geom.dilation)

    run_chunks(work, n, step, xp)
    dw = sum(dw_parts[key] for key in sorted(dw_parts)) if need_params else None
    db = sum(db_parts[key] for key in sorted(db_parts)) if need_bias else None
    if dxpad is not None:
        dx = F.crop_nhwc(dxpad, geom.padding)
    return dx, dw, db


__all__ = ["ConvGeometry", "Scratch", "conv_backward", "conv_forward", "max_pool2x2", "max_unpool2x2"]
