"""The reference engine: each kernel of :mod:`xpvision.nn.engine` as the textbook writes it.

A convolution is im2col of the whole padded batch and a GEMM per block of it (Deep Learning from Scratch, ch.
7), the ReLU and the max pool separate passes after it; its backward is a GEMM per block for the weights, the
bias gradient a column sum, and GEMMs + a col2im scatter for the input. Batch norm is the plain mean /
variance / xhat formula. The blocks are those of :func:`xpvision.nn.parallel.current_layout`: sums over the
batch are taken per block and added in block order (``layout.fold``), as in the tuned engine, so that
data-parallel training gives the same bits for any number of processes. No chunks, no threads, no reused
buffers: memory grows with the batch (im2col of DeepConvNet's second convolution at batch 1000 holds 114 M
values), which is what the tuned engine avoids.

Arrays are channels-last, as everywhere inside the layers (see :mod:`xpvision.nn.engine` for the shapes).
"""

from __future__ import annotations

from xpvision import backend
from xpvision.nn import engine
from xpvision.nn import functional as F
from xpvision.nn.parallel import BatchLayout, current_layout

POOL = ((2, 2), (2, 2))
"""Kernel and stride of the max pool a convolution may be followed by."""


@engine.register("reference", "conv2d")
def conv2d(x, w, b, geom, *, relu: bool, pool: bool, training: bool, scratch=None):
    """Convolution (+ bias) (+ ReLU) (+ 2x2 max pool) of ``x`` ``(N, H, W, I)`` -> ``(y, saved)``."""
    xp = backend.get_array_module(x)
    n, o = x.shape[0], w.shape[0]
    xpad = F.pad_nhwc(x, geom.padding)  # (N, Hp, Wp, I)
    cols = F.im2col(xpad, geom.kernel, geom.stride, geom.dilation, geom.out_hw)  # (N*OH*OW, kh*kw*I)
    w_mat = F.conv_weight_matrix(w)  # (kh*kw*I, O)
    layout = current_layout(n, xp)  # one GEMM per block: a row's bits depend on its GEMM's height
    y = xp.concatenate([cols[r0:r1] @ w_mat for r0, r1 in layout.block_rows(cols.shape[0])])  # (N*OH*OW, O)
    if b is not None:
        y = y + b
    y = y.reshape(n, *geom.out_hw, o)  # (N, OH, OW, O)
    if relu:
        y = xp.maximum(y, 0)
    conv_out, index = y, None
    if pool:
        y, index = F.max_pool_nhwc(y, *POOL, (geom.out_hw[0] // 2, geom.out_hw[1] // 2))
    return y, (xpad.shape, cols, w_mat, geom, relu, conv_out, index, layout)


@engine.register("reference", "conv2d_backward")
def conv2d_backward(dy, saved, *, grads: dict, need_input: bool, scratch=None):
    """Gradients of :func:`conv2d` from ``dy``, the gradient of its output: the weight and bias gradients into
    ``grads`` (see :mod:`xpvision.nn.engine`), the input gradient ``dx`` returned."""
    padded_shape, cols, w_mat, geom, relu, conv_out, index, layout = saved
    xp = backend.get_array_module(dy)
    if index is not None:  # route each pooled gradient to its window's maximum
        dy = F.max_pool_backward(dy, index, conv_out.shape[1:3], *POOL)  # (N, OH, OW, O)
    if relu:
        dy = dy * (conv_out > 0)
    dmat = dy.reshape(-1, w_mat.shape[1])  # (N*OH*OW, O)
    dx = None
    blocks = layout.block_rows(dmat.shape[0])
    if "W" in grads:  # per block (kh*kw*I, O), seen as (O, I, kh, kw)
        layout.fold_into([F.conv_weight_from_matrix(cols[r0:r1].T @ dmat[r0:r1], geom.kernel)
                          for r0, r1 in blocks], grads["W"])
    if "b" in grads:
        layout.fold_into([dmat[r0:r1].sum(axis=0) for r0, r1 in blocks], grads["b"])  # (O,) per block
    if need_input:
        kh, kw = geom.kernel
        i_ch = w_mat.shape[0] // (kh * kw)
        dcols = xp.concatenate([dmat[r0:r1] @ w_mat.T for r0, r1 in blocks])  # (N*OH*OW, kh*kw*I)
        dcols = dcols.reshape(-1, *geom.out_hw, kh, kw, i_ch)  # (N, OH, OW, kh, kw, I)
        dxpad = xp.zeros(padded_shape, dtype=dmat.dtype)  # (N, Hp, Wp, I)
        F.col2im_add(dxpad, dcols, geom.kernel, geom.stride, geom.dilation)
        dx = F.crop_nhwc(dxpad, geom.padding)  # (N, H, W, I)
    return dx


def batch_sum(a2, layout: BatchLayout):
    """``a2`` ``(M, C)`` summed over its rows and over the whole batch of ``layout`` -> ``(C,)``."""
    return layout.fold([a2[r0:r1].sum(axis=0) for r0, r1 in layout.block_rows(a2.shape[0])])


@engine.register("reference", "batch_norm")
def batch_norm(x2, gamma, beta, running_mean, running_var, *, momentum: float, eps: float, training: bool,
               layout: BatchLayout | None = None):
    """``gamma * (x - mean) / sqrt(var + eps) + beta`` per channel of ``x2`` ``(M, C)`` -> ``(y2, saved)``.

    Training uses the batch mean and biased variance and moves the running statistics (unbiased variance)
    towards them by ``momentum``; evaluation uses the running statistics. The batch: the whole batch of
    ``layout`` (default: ``x2`` is one sample's rows).
    """
    xp = backend.get_array_module(x2)
    m = None
    layout = layout or BatchLayout(1)
    if training:  # the statistics of the whole batch, over every process
        m = layout.total * (x2.shape[0] // layout.count)
        mean = batch_sum(x2, layout) / m  # (C,)
        var = batch_sum((x2 - mean) ** 2, layout) / m  # (C,) biased
        running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        running_var[...] = (1 - momentum) * running_var + momentum * var * m / (m - 1)
    else:
        mean, var = running_mean, running_var
    inv_std = 1 / xp.sqrt(var + eps)  # (C,)
    xhat = (x2 - mean) * inv_std  # (M, C)
    return gamma * xhat + beta, (xhat, inv_std, m, layout)


@engine.register("reference", "batch_norm_backward")
def batch_norm_backward(dy2, saved, gamma):
    """Gradients of :func:`batch_norm` from ``dy2`` ``(M, C)`` -> ``(dx2, dgamma, dbeta)``, ``dgamma`` and
    ``dbeta`` summed over the whole batch."""
    xhat, inv_std, m, layout = saved  # m: values per channel of the (whole) batch, None in evaluation
    dbeta = batch_sum(dy2, layout)  # (C,)
    dgamma = batch_sum(dy2 * xhat, layout)  # (C,)
    if m is None:  # the statistics are constants
        return dy2 * gamma * inv_std, dgamma, dbeta
    dx2 = (m * dy2 - dbeta - xhat * dgamma) * (gamma * inv_std / m)
    return dx2, dgamma, dbeta


@engine.register("reference", "conv_transpose2d")
def conv_transpose2d(x, w, b, stride, padding, *, upsampling=None, scratch=None):
    """Transposed convolution as the study guide defines it: spread the input pixels ``stride`` apart, pad
    ``kernel - 1`` around, remove ``padding``, then convolve with the flipped, in/out-swapped kernel.
    ``x`` ``(N, H, W, I)``, ``w`` ``(I, O, kh, kw)`` -> ``(y, saved)``, ``y`` ``(N, OH, OW, O)``; the dense
    sum whatever ``upsampling`` says (see :mod:`xpvision.nn.engine`)."""
    from xpvision.nn.convblock import ConvGeometry

    xp = backend.get_array_module(x)
    (n, h, w_in, i_ch), (sh, sw), (kh, kw) = x.shape, stride, w.shape[2:]
    spread = xp.zeros((n, (h - 1) * sh + 1, (w_in - 1) * sw + 1, i_ch), dtype=x.dtype)
    spread[:, ::sh, ::sw] = x
    edges = [(k - 1 - p) for k, p in zip((kh, kw), padding, strict=True)]  # < 0: crop instead of padding
    cropped = spread[:, max(0, -edges[0]):spread.shape[1] - max(0, -edges[0]),
                     max(0, -edges[1]):spread.shape[2] - max(0, -edges[1])]
    pad = (max(0, edges[0]), max(0, edges[1]))
    w_conv = w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]  # (O, I, kh, kw), flipped
    out_hw = tuple(size + 2 * p - k + 1 for size, p, k in zip(cropped.shape[1:3], pad, (kh, kw), strict=True))
    geom = ConvGeometry((kh, kw), (1, 1), (1, 1), pad, cropped.shape[1:3], out_hw)
    y, conv_saved = conv2d(xp.ascontiguousarray(cropped), w_conv, b, geom, relu=False, pool=False,
                           training=True)
    return y, (conv_saved, spread.shape, edges, stride)


@engine.register("reference", "conv_transpose2d_backward")
def conv_transpose2d_backward(dy, saved, *, grads: dict, scratch=None):
    """Gradients of :func:`conv_transpose2d`: back through the convolution, the crop and the spreading."""
    conv_saved, spread_shape, edges, (sh, sw) = saved
    conv_grads = dict(grads)
    if "W" in grads:  # the convolution's (O, I, kh, kw) kernel is W (I, O, kh, kw) flipped and swapped
        conv_grads["W"] = grads["W"][:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    dcropped = conv2d_backward(dy, conv_saved, grads=conv_grads, need_input=True)
    xp = backend.get_array_module(dy)
    dspread = xp.zeros(spread_shape, dtype=dcropped.dtype)
    c0, c1 = max(0, -edges[0]), max(0, -edges[1])
    dspread[:, c0:spread_shape[1] - c0, c1:spread_shape[2] - c1] = dcropped
    return dspread[:, ::sh, ::sw]


@engine.register("reference", "max_pool2d")
def max_pool2d(xpad, kernel, stride, out_hw, *, need_index: bool = True):
    """Max pool of the ``-inf``-padded ``xpad`` ``(N, Hp, Wp, C)`` -> ``(y, index)``: the windows copied out,
    then ``argmax`` over each (:func:`xpvision.nn.functional.max_pool_nhwc`); the index always."""
    return F.max_pool_nhwc(xpad, kernel, stride, out_hw)


@engine.register("reference", "max_pool2d_backward")
def max_pool2d_backward(dy, index, padded_hw, kernel, stride):
    """Gradient of :func:`max_pool2d`: ``where(index == tap, dy, 0)`` added into each tap's positions."""
    return F.max_pool_backward(dy, index, padded_hw, kernel, stride)
