"""Array kernels behind the layers: layout helpers, im2col/col2im, convolution and pooling, softmax.

Layout: image tensors here are ``(N, H, W, C)`` C-contiguous arrays (channels last); the layers present them
as ``(N, C, H, W)``-shaped views (:func:`nchw`) at their public boundary. Convolution weights are kept in
PyTorch's ``(O, I, kh, kw)`` layout by the layers and used here as a ``(kh * kw * I, O)`` matrix
(:func:`conv_weight_matrix`), so one convolution is one GEMM ``(rows, kh * kw * I) @ (kh * kw * I, O)`` whose
``(rows, O)`` result already is the ``(N, OH, OW, O)`` output.

Every function works on NumPy and CuPy arrays (``xp = backend.get_array_module(x)``). The batch is processed
in chunks whose im2col matrix holds about :data:`CHUNK_ELEMENTS` values on the CPU, so that it stays in
cache, and at most about :data:`GPU_CHUNK_ELEMENTS` on the GPU, so that memory stays bounded.
"""

from __future__ import annotations

import functools

import numpy as np

from xpvision import backend

CHUNK_ELEMENTS = 512 * 1024
"""Values per im2col + GEMM chunk on the CPU: 2 MiB of float32, about a core's L2 cache (1-2 MiB on current
x86 server cores), so that the matrix is still in cache when the GEMM reads it, while each chunk's Python
calls cover enough work. Rows per chunk are ``CHUNK_ELEMENTS / K``: ~3,600 for ``K = 145``, ~900 for ``K =
577``, ~52,000 for a one-channel input (``K = 10``). bench/README.md has the measurements that chose it."""
GPU_CHUNK_ELEMENTS = 16 * 1024 * 1024
"""Values per im2col chunk on the GPU: 64 MiB of float32, a bounded workspace small against any CUDA device's
memory (DeepConvNet's second convolution at batch 1000 would need 455 MB in one piece) and ~100,000 rows per
GEMM for ``K <= 160``, enough to fill the device."""
FEW_COLUMNS = 32
MANY_ROWS = 1024
""":func:`amax` and :func:`asum` reduce a C-contiguous ``(M, C)`` array column by column when ``C <=
FEW_COLUMNS`` and ``M >= MANY_ROWS`` (a segmentation loss's pixels x classes): NumPy's reduction of many short
rows pays a loop per row, ``C - 1`` element-wise passes pay one per column; from ~64 columns on the row
reduction is as fast."""
BLOCK_ROWS = 8192
"""Output pixels per block of element-wise work on the CPU: with 16-64 channels a block's arrays (0.5-2 MiB)
stay in a core's L2 / its share of L3 between the GEMMs and the ReLU / pool passes, while each NumPy call
(a few microseconds of overhead) still covers ~10^5 values."""


# -- layout --------------------------------------------------------------------------------------------------
def nhwc(x):
    """``(N, C, H, W)``-shaped array -> C-contiguous ``(N, H, W, C)`` array.

    A view (no copy) when ``x`` already is channels-last in memory (what the layers return); a copy otherwise.
    """
    xp = backend.get_array_module(x)
    return xp.ascontiguousarray(x.transpose(0, 2, 3, 1))  # (N, H, W, C)


def nchw(y):
    """``(N, H, W, C)`` array -> ``(N, C, H, W)``-shaped view of the same memory."""
    return y.transpose(0, 3, 1, 2)  # (N, C, H, W)


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution or pooling along one axis: ``(H + 2P - D(K - 1) - 1) // S + 1``."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def block_and_chunk(n: int, rows_per_sample: int, xp, row_elements: int) -> tuple[int, int]:
    """``(block, chunk)`` sample counts: element-wise work runs on equal blocks of about :data:`BLOCK_ROWS`
    rows, each split into equal GEMM chunks of about :func:`chunk_size` (``row_elements``: the im2col row
    length ``K``). Both depend on the shapes alone, never on the thread count (results do not change with
    it); the threads share a batch through the blocks of its layout
    (:func:`xpvision.nn.parallel.global_blocks`, each cut by this function). On the GPU the block is the
    whole batch, cut into equal chunks of :func:`chunk_size`."""
    chunk = chunk_size(n, rows_per_sample, xp, row_elements)
    if xp is np:
        block = min(n, chunk * max(1, BLOCK_ROWS // (chunk * max(rows_per_sample, 1))))
        block = -(-n // -(-n // block))  # equal blocks (the last may be shorter)
    else:
        block = n
    chunk = -(-block // -(-block // chunk))  # equal chunks in a block
    return block, min(chunk, block)


def chunk_size(n: int, rows_per_sample: int, xp, row_elements: int) -> int:
    """Samples per chunk (at least one): about ``CHUNK_ELEMENTS / row_elements`` im2col rows of
    ``row_elements`` values on the CPU, ``GPU_CHUNK_ELEMENTS / row_elements`` on the GPU."""
    elements = CHUNK_ELEMENTS if xp is np else GPU_CHUNK_ELEMENTS
    rows = elements // max(row_elements, 1)
    return max(1, min(n, rows // max(rows_per_sample, 1)))


# -- padding and windows -------------------------------------------------------------------------------------
def pad_nhwc(x, pad: tuple[int, int], value: float = 0.0, out=None):
    """Pad the spatial axes of ``x`` ``(N, H, W, C)`` by ``pad = (ph, pw)`` on each side -> ``(N, H+2ph,
    W+2pw, C)``.

    ``out``, when given with the right shape, dtype and device, is reused: only its interior is written, so
    its border must already hold ``value`` (a persistent zero-bordered buffer saves an allocation per call).
    """
    ph, pw = pad
    if ph == 0 and pw == 0:
        return x
    xp = backend.get_array_module(x)
    n, h, w, c = x.shape
    shape = (n, h + 2 * ph, w + 2 * pw, c)
    if out is None or out.shape != shape or out.dtype != x.dtype or backend.get_array_module(out) is not xp:
        out = xp.full(shape, value, dtype=x.dtype)
    out[:, ph:ph + h, pw:pw + w, :] = x
    return out


def windows(xpad, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
            out_hw: tuple[int, int]):
    """Strided view ``(N, OH, OW, kh, kw, C)`` of the receptive fields of a padded ``(N, Hp, Wp, C)`` array.
    """
    xp = backend.get_array_module(xpad)
    n, _, _, c = xpad.shape
    s_n, s_h, s_w, s_c = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=(n, out_hw[0], out_hw[1], kernel[0], kernel[1], c),
        strides=(s_n, s_h * stride[0], s_w * stride[1], s_h * dilation[0], s_w * dilation[1], s_c))


def im2col(xpad, kernel, stride, dilation, out_hw):
    """Padded ``(N, Hp, Wp, C)`` -> contiguous ``(N * OH * OW, kh * kw * C)`` matrix of receptive fields."""
    xp = backend.get_array_module(xpad)
    cols = xp.ascontiguousarray(windows(xpad, kernel, stride, dilation, out_hw))  # (N, OH, OW, kh, kw, C)
    return cols.reshape(-1, kernel[0] * kernel[1] * xpad.shape[3])  # (N*OH*OW, kh*kw*C)


def tap_slice(offset: tuple[int, int], stride, out_hw) -> tuple[slice, ...]:
    """Index of the ``(N, OH, OW, C)`` strided sub-grid of a padded ``(N, Hp, Wp, C)`` array that one kernel
    tap at ``offset = (row, col)`` reads."""
    (r0, c0), (sh, sw), (oh, ow) = offset, stride, out_hw
    rows = slice(r0, r0 + sh * (oh - 1) + 1, sh)
    cols = slice(c0, c0 + sw * (ow - 1) + 1, sw)
    return slice(None), rows, cols, slice(None)


def col2im_add(dxpad, dcols, kernel, stride, dilation):
    """Scatter-add ``dcols`` ``(N, OH, OW, kh, kw, C)`` into the padded ``dxpad`` ``(N, Hp, Wp, C)`` in place.
    """
    _, oh, ow = dcols.shape[:3]
    for i in range(kernel[0]):
        r0 = i * dilation[0]
        for j in range(kernel[1]):
            c0 = j * dilation[1]
            dxpad[tap_slice((r0, c0), stride, (oh, ow))] += dcols[:, :, :, i, j, :]


# -- convolution ---------------------------------------------------------------------------------------------
def conv_weight_storage(w):
    """Weights ``(O, I, kh, kw)`` -> the same values, as an ``(O, I, kh, kw)`` view of a contiguous
    ``(kh, kw, I, O)`` array: how the layers keep their weights, so that :func:`conv_weight_matrix` is a
    reshape, not a transposing copy, and a weight gradient formed as that matrix is written back by a plain
    copy."""
    xp = backend.get_array_module(w)
    return xp.ascontiguousarray(w.transpose(2, 3, 1, 0)).transpose(3, 2, 0, 1)  # (O, I, kh, kw) view


def conv_weight_matrix(w):
    """Weights ``(O, I, kh, kw)`` -> contiguous GEMM matrix ``(kh * kw * I, O)`` (rows ordered kh, kw, I): a
    view when ``w`` is kept as :func:`conv_weight_storage` keeps it, else a copy."""
    xp = backend.get_array_module(w)
    o, i, kh, kw = w.shape
    return xp.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(kh * kw * i, o)  # (kh*kw*I, O)


def conv_weight_from_matrix(w_mat, kernel):
    """GEMM matrix ``(kh * kw * I, O)`` -> weights ``(O, I, kh, kw)`` (a transposed view)."""
    kh, kw = kernel
    k, o = w_mat.shape
    return w_mat.reshape(kh, kw, k // (kh * kw), o).transpose(3, 2, 0, 1)  # (O, I, kh, kw)


def conv2d_nhwc(xpad, w_mat, kernel, stride=(1, 1), dilation=(1, 1), out=None):
    """Convolution of a padded input ``(N, Hp, Wp, I)`` with a ``(kh*kw*I, O)`` weight matrix -> ``(N, OH, OW,
    O)``.

    No bias. The batch is processed in cache-sized chunks, each one im2col copy and one GEMM written straight
    into ``out`` (allocated when not given).
    """
    xp = backend.get_array_module(xpad)
    n, hp, wp, _ = xpad.shape
    oh = conv_output_size(hp, kernel[0], stride[0], 0, dilation[0])
    ow = conv_output_size(wp, kernel[1], stride[1], 0, dilation[1])
    o = w_mat.shape[1]
    if out is None:
        out = xp.empty((n, oh, ow, o), dtype=xp.result_type(xpad.dtype, w_mat.dtype))
    step = chunk_size(n, oh * ow, xp, w_mat.shape[0])
    for n0 in range(0, n, step):
        cols = im2col(xpad[n0:n0 + step], kernel, stride, dilation, (oh, ow))  # (n*OH*OW, kh*kw*I)
        xp.matmul(cols, w_mat, out=out[n0:n0 + step].reshape(-1, o))  # (n*OH*OW, O)
    return out


def conv2d_grad_weight(xpad, dy, kernel, stride=(1, 1), dilation=(1, 1)):
    """Weight gradient as a ``(kh*kw*I, O)`` matrix from the padded input ``(N, Hp, Wp, I)`` and ``dy`` ``(N,
    OH, OW, O)``."""
    xp = backend.get_array_module(xpad)
    n, oh, ow, o = dy.shape
    step = chunk_size(n, oh * ow, xp, kernel[0] * kernel[1] * xpad.shape[3])
    dw = xp.zeros((kernel[0] * kernel[1] * xpad.shape[3], o), dtype=xp.result_type(xpad.dtype, dy.dtype))
    for n0 in range(0, n, step):
        cols = im2col(xpad[n0:n0 + step], kernel, stride, dilation, (oh, ow))  # (n*OH*OW, kh*kw*I)
        dw += cols.T @ dy[n0:n0 + step].reshape(-1, o)  # (kh*kw*I, O)
    return dw


def flipped_weight_matrix(w_mat, kernel):
    """The ``(kh*kw*O, I)`` matrix of the spatially flipped, in/out-swapped kernel: the weights of the
    transposed convolution that maps ``dy`` back to ``dx``."""
    xp = backend.get_array_module(w_mat)
    kh, kw = kernel
    k, o = w_mat.shape
    w = w_mat.reshape(kh, kw, k // (kh * kw), o)[::-1, ::-1]  # (kh, kw, I, O) flipped
    return xp.ascontiguousarray(w.transpose(0, 1, 3, 2)).reshape(kh * kw * o, k // (kh * kw))  # (kh*kw*O, I)


def conv2d_grad_input(dy, w_mat, padded_hw, kernel, stride=(1, 1), dilation=(1, 1)):
    """Gradient w.r.t. the *padded* input, ``(N, Hp, Wp, I)``, from ``dy`` ``(N, OH, OW, O)``.

    Stride 1: a transposed convolution (``dy`` zero-padded by ``D(K-1)`` convolved with the flipped kernel),
    one GEMM per chunk and no scatter. Larger strides: GEMM to ``(rows, kh*kw*I)`` columns, then col2im
    scatter-add. Rows and columns of the padded input that no window reaches (stride > 1) get zero gradient.
    """
    xp = backend.get_array_module(dy)
    n, oh, ow, o = dy.shape
    hp, wp = padded_hw
    i_ch = w_mat.shape[0] // (kernel[0] * kernel[1])
    if stride == (1, 1):  # with stride 1 every input pixel is reached: Hp = OH + D(K-1)
        ext = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))
        dypad = pad_nhwc(dy, ext)  # (N, Hp + ext, Wp + ext, O)
        w_flip = flipped_weight_matrix(w_mat, kernel)  # (kh*kw*O, I)
        return conv2d_nhwc(dypad, w_flip, kernel, (1, 1), dilation)  # (N, Hp, Wp, I)
    dxpad = xp.zeros((n, hp, wp, i_ch), dtype=xp.result_type(dy.dtype, w_mat.dtype))
    step = chunk_size(n, oh * ow, xp, w_mat.shape[0])
    w_t = w_mat.T  # (O, kh*kw*I)
    for n0 in range(0, n, step):
        dcols = dy[n0:n0 + step].reshape(-1, o) @ w_t  # (n*OH*OW, kh*kw*I)
        dcols = dcols.reshape(-1, oh, ow, kernel[0], kernel[1], i_ch)  # (n, OH, OW, kh, kw, I)
        col2im_add(dxpad[n0:n0 + step], dcols, kernel, stride, dilation)
    return dxpad


def crop_nhwc(xpad, pad: tuple[int, int]):
    """Remove ``pad = (ph, pw)`` from each side of the spatial axes of ``(N, Hp, Wp, C)`` (a view)."""
    ph, pw = pad
    return xpad[:, ph:xpad.shape[1] - ph, pw:xpad.shape[2] - pw, :]


# -- pooling -------------------------------------------------------------------------------------------------
def max_pool_nhwc(xpad, kernel, stride, out_hw):
    """Max pooling of a (``-inf``-)padded ``(N, Hp, Wp, C)`` input.

    Returns ``(y, argmax)``: ``y`` ``(N, OH, OW, C)`` and ``argmax`` ``(N, OH, OW, C)`` uint8/int64, the index
    ``i * kw + j`` of the first maximum in each window (PyTorch's tie rule), for :func:`max_pool_backward`.
    """
    xp = backend.get_array_module(xpad)
    n, c = xpad.shape[0], xpad.shape[3]
    kk = kernel[0] * kernel[1]
    cols = xp.ascontiguousarray(windows(xpad, kernel, stride, (1, 1), out_hw))  # (N, OH, OW, kh, kw, C)
    cols = cols.reshape(n, out_hw[0], out_hw[1], kk, c)  # (N, OH, OW, kh*kw, C)
    argmax = cols.argmax(axis=3)  # (N, OH, OW, C)
    y = xp.take_along_axis(cols, argmax[:, :, :, None, :], axis=3)[:, :, :, 0, :]  # (N, OH, OW, C)
    return y, argmax.astype(pool_index_dtype(kk, xp))


def pool_index_dtype(taps: int, xp):
    """The dtype of a max pool's index over windows of ``taps`` positions: uint8 up to 256, else int64."""
    return xp.uint8 if taps <= 256 else xp.int64


def max_pool_backward(dy, argmax, padded_hw, kernel, stride):
    """Route ``dy`` ``(N, OH, OW, C)`` to the argmax of each window -> gradient of the padded input ``(N, Hp,
    Wp, C)`` (overlapping windows accumulate)."""
    xp = backend.get_array_module(dy)
    n, oh, ow, c = dy.shape
    dxpad = xp.zeros((n, padded_hw[0], padded_hw[1], c), dtype=dy.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            routed = xp.where(argmax == i * kernel[1] + j, dy, 0).astype(dy.dtype, copy=False)
            dxpad[tap_slice((i, j), stride, (oh, ow))] += routed
    return dxpad


def avg_pool_nhwc(xpad, kernel, stride, out_hw):
    """Average pooling of a zero-padded ``(N, Hp, Wp, C)`` input -> ``(N, OH, OW, C)``; the divisor is always
    ``kh * kw`` (padding counts, PyTorch's ``count_include_pad=True``)."""
    win = windows(xpad, kernel, stride, (1, 1), out_hw)  # (N, OH, OW, kh, kw, C)
    return win.sum(axis=(3, 4)) * xpad.dtype.type(1.0 / (kernel[0] * kernel[1]))


def avg_pool_backward(dy, padded_hw, kernel, stride):
    """Spread ``dy / (kh * kw)`` ``(N, OH, OW, C)`` over each window -> gradient of the padded input."""
    xp = backend.get_array_module(dy)
    n, oh, ow, c = dy.shape
    share = dy * dy.dtype.type(1.0 / (kernel[0] * kernel[1]))
    dxpad = xp.zeros((n, padded_hw[0], padded_hw[1], c), dtype=dy.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            dxpad[tap_slice((i, j), stride, (oh, ow))] += share
    return dxpad


# -- activation ----------------------------------------------------------------------------------------------
ZERO_ROW = 16 * 1024
"""Length of the row of zeros :func:`relu_` takes its maxima with on the CPU: NumPy (2.x) runs ``maximum``
with a scalar operand in a scalar loop, several times slower than with an array operand, which it runs in
SIMD (bench/README.md); a row of 64 KiB stays in L1/L2 while it is broadcast over the rows of the array."""


def relu_(x):
    """``x = max(x, 0)`` in place (``x`` float, any shape); returns ``x``. On the CPU, for a C-contiguous
    ``x``, the zeros are an array (:data:`ZERO_ROW`): the same values, NaN propagated alike."""
    xp = backend.get_array_module(x)
    if xp is not np or not x.flags.c_contiguous:
        return xp.maximum(x, 0, out=x)
    flat = x.reshape(-1)  # a view: x is contiguous
    zeros = _zero_row(x.dtype)
    main = flat.size - flat.size % ZERO_ROW
    if main:
        rows = flat[:main].reshape(-1, ZERO_ROW)  # (R, ZERO_ROW)
        np.maximum(rows, zeros, out=rows)
    np.maximum(flat[main:], zeros[:flat.size - main], out=flat[main:])
    return x


@functools.cache
def _zero_row(dtype) -> np.ndarray:
    zeros = np.zeros(ZERO_ROW, dtype=dtype)
    zeros.flags.writeable = False
    return zeros


# -- softmax -------------------------------------------------------------------------------------------------
def log_softmax(x, axis: int = -1):
    """``log(softmax(x))`` along ``axis``, computed stably (max subtracted); same shape and dtype as ``x``."""
    xp = backend.get_array_module(x)
    shifted = x - amax(x, axis)
    return shifted - xp.log(asum(xp.exp(shifted), axis))


def amax(x, axis: int):
    """``x.max(axis=axis, keepdims=True)``. For a C-contiguous NumPy ``(M, C)`` array with many rows of at
    most :data:`FEW_COLUMNS` values (per-pixel class scores) taken along ``C``, as ``C - 1`` element-wise
    maxima of its columns: NumPy reduces each short row with a loop of its own, while the columns are a few
    long passes. The same values either way (a maximum is exact; NaN propagates in both)."""
    if not _by_columns(x, axis):
        return x.max(axis=axis, keepdims=True)
    out = x[:, 0].copy()  # (M,)
    for column in range(1, x.shape[1]):
        np.maximum(out, x[:, column], out=out)
    return out[:, None]  # (M, 1)


def asum(x, axis: int):
    """``x.sum(axis=axis, keepdims=True)``; for the arrays :func:`amax` takes by columns, the columns added in
    the order NumPy adds a short contiguous row (its pairwise summation below 128 values: eight running sums
    over columns ``j, j + 8, ...``, combined as ``((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))``, then
    the columns left over, one by one): the same bits, in a few long passes."""
    if not _by_columns(x, axis):
        return x.sum(axis=axis, keepdims=True)
    c = x.shape[1]
    if c < 8:
        total = x[:, 0].copy()  # (M,)
        for column in range(1, c):
            total += x[:, column]
        return total[:, None]
    sums = [x[:, j].copy() for j in range(8)]  # 8 x (M,)
    blocked = c - c % 8
    for start in range(8, blocked, 8):
        for j in range(8):
            sums[j] += x[:, start + j]
    total = ((sums[0] + sums[1]) + (sums[2] + sums[3])) + ((sums[4] + sums[5]) + (sums[6] + sums[7]))
    for column in range(blocked, c):
        total += x[:, column]
    return total[:, None]  # (M, 1)


def _by_columns(x, axis: int) -> bool:
    """Whether :func:`amax` and :func:`asum` take ``x`` column by column (see :data:`FEW_COLUMNS`)."""
    return (backend.get_array_module(x) is np and x.ndim == 2 and axis in (1, -1) and x.flags.c_contiguous
            and 1 < x.shape[1] <= FEW_COLUMNS and x.shape[0] >= MANY_ROWS)


def softmax(x, axis: int = -1):
    """Softmax along ``axis`` (max subtracted for stability); same shape and dtype as ``x``."""
    xp = backend.get_array_module(x)
    e = xp.exp(x - amax(x, axis))
    return e / asum(e, axis)
