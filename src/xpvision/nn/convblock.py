"""The kernels of :class:`~xpvision.nn.Conv2d`: im2col + one GEMM per cache-sized chunk of the batch,
optionally fused with the ReLU and the 2x2 max pool that follow the convolution.

With a fused pool the rows of the im2col matrix (the output pixels) are ordered *pool-major*, ``(n, a, b, PH,
PW)`` for pool tap ``(a, b)``, so the GEMM output is four contiguous blocks per sample and the pool (and its
gradient) is element-wise work on contiguous arrays; rows and columns an odd output size leaves out of the
pool are not computed at all.

Arrays are channels-last: input ``xpad`` ``(N, Hp, Wp, I)`` (zero-bordered; :func:`conv_forward` can copy
its interior in, block by block), weights as the GEMM matrix ``w_mat`` ``(kh * kw * I, O)`` (see
:func:`xpvision.nn.functional.conv_weight_matrix`), outputs ``(N, OH, OW, O)`` or, pooled, ``(N, OH // 2, OW
// 2, O)``. Each chunk's im2col matrix, GEMM output and gradient stay in per-worker scratch buffers
(:class:`Scratch`) that are reused from call to call, as are the outputs when nobody holds them any more, and
the chunks run on :func:`xpvision.nn.parallel.run_blocks` threads. On the CPU each chunk's GEMM is split into
row pieces small enough for OpenBLAS's unpacked kernel (:data:`SMALL_GEMM`). The input gradient of a
stride-1 convolution is a transposed convolution (``dy`` zero-padded by ``D(K - 1) - P``, convolved with the
flipped kernel, giving ``(N, H, W, I)`` directly); other strides use the GEMM + col2im scatter of
:mod:`xpvision.nn.functional`.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass

import numpy as np

from xpvision import backend
from xpvision.nn import functional as F
from xpvision.nn.parallel import BatchLayout, current_layout, ordered_sum, run_blocks, whole_batch

DEAD = 4
"""Added to a pool index where the fused ReLU zeroed the output: such a position receives no gradient."""
SMALL_GEMM = 1_000_000
"""``rows * K * N`` up to which OpenBLAS (0.3.x, x86-64 AVX-512 builds) multiplies without packing its
operands, so narrow GEMMs run faster in pieces of at most this size (a property of the BLAS build and the
core's cache; bench/README.md has the measurements)."""
MIN_SMALL_GEMM_ROWS = 64
"""Below this many rows per piece (large ``K * N``) the calls cost more than the packing they save."""


class Scratch:
    """Reusable buffers of one layer, keyed by ``(worker, name, shape, dtype, device)``.

    Several shapes are kept (training, evaluation and last-batch sizes alternate), the oldest dropped beyond
    :attr:`capacity`. Buffers requested with a ``fill`` value are filled with it when allocated (callers keep
    the filled parts intact, e.g. the zero border of a padded buffer whose interior alone is written).
    """

    capacity = 64

    def __init__(self) -> None:
        self._buffers: dict[tuple, object] = {}

    def get_free(self, name: str, shape: tuple[int, ...], dtype, xp):
        """An uninitialised buffer that the caller hands out (a layer's output, its cached pool index).

        On the CPU the buffer of the previous call is reused when no array outside this scratch refers to it
        any more (NumPy views keep their base alive, so a held view counts), else a fresh one replaces it: a
        fresh large array costs a page fault per 4 KiB page on first write (glibc maps allocations above 32
        MiB anew every time), a reused one none. On the GPU CuPy's memory pool recycles: a fresh array.
        """
        if xp is not np:
            return xp.empty(shape, dtype=dtype)
        key = (-1, name, shape, dtype, xp)
        if key not in self._buffers or _references(self._buffers, key) > _UNSHARED_REFERENCES:
            self._buffers.pop(key, None)
            return self.get(-1, name, shape, dtype, xp)
        return self._buffers[key]

    def get(self, worker: int, name: str, shape: tuple[int, ...], dtype, xp, fill: float | None = None):
        key = (worker, name, shape, dtype, xp)
        buf = self._buffers.get(key)
        if buf is None:
            buf = xp.empty(shape, dtype=dtype) if fill is None else xp.full(shape, fill, dtype=dtype)
            if len(self._buffers) >= self.capacity:
                del self._buffers[next(iter(self._buffers))]
            self._buffers[key] = buf
        return buf


def _references(store: dict, key) -> int:
    """Reference count of ``store[key]`` as seen from here (compared with :data:`_UNSHARED_REFERENCES`)."""
    buf = store[key]
    return sys.getrefcount(buf)


_UNSHARED_REFERENCES = _references({0: np.empty(0)}, 0)
"""What :func:`_references` counts for an array that only its store refers to (measured, not assumed)."""


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


def _patch_sources(xpad, geom: ConvGeometry, pool_major: bool) -> tuple[str, object]:
    """What :func:`_im2col` copies chunks of, prepared once per call (a strided view costs microseconds; per
    chunk it would add up), as ``(kind, sources)``.

    On the CPU, views of the whole padded batch ``(N, Hp, Wp, C)``: with one channel, ``'taps'`` and the
    ``kh * kw`` shifted taps, each ``(N, *pixels)``; otherwise ``'fields'`` and the receptive fields ``(N,
    *pixels, kh, kw, C)``. ``pixels`` is ``(OH, OW)``, or ``(2, 2, PH, PW)`` when ``pool_major``. On the GPU,
    ``'kernel'`` and ``(xpad, geom, pool_major)`` for float32 and float64: one kernel gathers each chunk
    (:func:`_im2col_gpu`), where the views would cost a copy per tap or a slow six-dimensional strided copy.
    """
    if backend.get_array_module(xpad) is not np and xpad.dtype in (np.float32, np.float64):
        return "kernel", (xpad if xpad.flags.c_contiguous else xpad.copy(), geom, pool_major)
    (kh, kw), (dh, dw) = geom.kernel, geom.dilation
    if xpad.shape[3] == 1:
        views = [xpad[F.tap_slice((i * dh, j * dw), geom.stride, geom.out_hw)][..., 0]
                 for i in range(kh) for j in range(kw)]  # kh*kw x (N, OH, OW)
        return "taps", [_pool_major(v) if pool_major else v for v in views]
    fields = F.windows(xpad, geom.kernel, geom.stride, geom.dilation, geom.out_hw)  # (N, OH, OW, kh, kw, C)
    return "fields", [_pool_major(fields) if pool_major else fields]


def _pool_major(a):
    """``(N, OH, OW, ...)`` -> the ``(N, 2, 2, PH, PW, ...)`` view of its pooled area (``PH = OH // 2``)."""
    n, oh, ow = a.shape[:3]
    ph, pw = oh // 2, ow // 2
    a = a[:, :2 * ph, :2 * pw].reshape(n, ph, 2, pw, 2, *a.shape[3:])  # (N, PH, a, PW, b, ...)
    return a.transpose(0, 2, 4, 1, 3, *range(5, a.ndim))  # (N, a, b, PH, PW, ...)


def _im2col(scratch: Scratch, worker: int, name: str, patches: tuple[str, object], start: int, stop: int,
            step: int, ones_column: bool):
    """The im2col matrix ``(rows, K)`` of samples ``start:stop`` (at most ``step``), ``rows = m * pixels``,
    ``K = kh * kw * C``, plus a last column of ones when ``ones_column`` (so that the GEMM adds the bias and
    the weight-gradient GEMM yields the bias gradient as its last row); in a scratch buffer sized for
    ``step``. ``patches``: :func:`_patch_sources`.

    With one input channel on the CPU the matrix is built tap-major, ``(K, rows)`` (one long contiguous copy
    per kernel tap instead of ``kw``-long runs), and returned transposed: GEMMs take it without a copy.
    """
    kind, sources = patches
    if kind == "kernel":
        return _im2col_gpu(scratch, worker, name, *sources, start, stop, step, ones_column)
    first = sources[0][start:stop]
    xp = backend.get_array_module(first)
    extra = int(ones_column)
    if kind == "taps":
        per_sample = math.prod(first.shape[1:])
        buf = scratch.get(worker, name, (len(sources) + extra, step * per_sample), first.dtype, xp, fill=1)
        buf = buf[:, :first.shape[0] * per_sample]  # (K [+ 1], rows)
        for tap, source in enumerate(sources):
            buf[tap].reshape(first.shape)[...] = source[start:stop]
        return buf.T  # (rows, K [+ 1])
    per_sample, k = math.prod(first.shape[1:-3]), math.prod(first.shape[-3:])
    buf = scratch.get(worker, name, (step * per_sample, k + extra), first.dtype, xp, fill=1)
    buf = buf[:first.shape[0] * per_sample]  # (rows, K [+ 1])
    buf[:, :k].reshape(first.shape)[...] = first  # (m, *pixels, kh, kw, C)
    return buf


_IM2COL_KERNEL = r"""
extern "C" __global__ void im2col_nhwc(const REAL* x, REAL* cols, long long total, int start, int hp, int wp,
                                       int c, int oh, int ow, int pooled, int kh, int kw, int sh, int sw,
                                       int dh, int dw, int ld)
{
    // cols (rows, ld), rows = (n, OH, OW) or pool-major (n, a, b, PH, PW); columns (i, j, ch), then ones.
    const int k = kh * kw * c, ph = oh / 2, pw = ow / 2;
    const int per = pooled ? 4 * ph * pw : oh * ow;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long row = idx / ld;
        const int col = (int)(idx - row * ld);
        if (col >= k) { cols[idx] = (REAL)1; continue; }
        const int ch = col % c, tap = col / c, j = tap % kw, i = tap / kw;
        const long long n = row / per;
        const int r = (int)(row - n * per);
        int y, xx;
        if (pooled) {
            const int ab = r / (ph * pw), q = r - ab * ph * pw;
            y = 2 * (q / pw) + ab / 2;
            xx = 2 * (q % pw) + ab % 2;
        } else {
            y = r / ow;
            xx = r - y * ow;
        }
        cols[idx] = x[(((start + n) * hp + y * sh + i * dh) * wp + xx * sw + j * dw) * c + ch];
    }
}
"""
_GPU_THREADS = 256
_GPU_MAX_BLOCKS = 65536  # a grid-stride loop covers the rest


@functools.cache
def _im2col_kernel(cp, real: str):
    return cp.RawKernel(_IM2COL_KERNEL.replace("REAL", real), "im2col_nhwc")


def _im2col_gpu(scratch: Scratch, worker: int, name: str, xpad, geom: ConvGeometry, pooled: bool, start: int,
                stop: int, step: int, ones_column: bool):
    """:func:`_im2col` on the GPU: the same matrix, gathered from the C-contiguous padded batch ``xpad``
    ``(N, Hp, Wp, C)`` (float32 or float64) by one kernel launch."""
    cp = backend.get_array_module(xpad)
    _, hp, wp, c = xpad.shape
    (oh, ow), (kh, kw) = geom.out_hw, geom.kernel
    per_sample = 4 * (oh // 2) * (ow // 2) if pooled else oh * ow
    ld = kh * kw * c + int(ones_column)
    buf = scratch.get(worker, name, (step * per_sample, ld), xpad.dtype, cp)[:(stop - start) * per_sample]
    total = buf.size
    i32 = np.int32
    _im2col_kernel(cp, "double" if xpad.dtype == np.float64 else "float")(
        (min(-(-total // _GPU_THREADS), _GPU_MAX_BLOCKS),), (_GPU_THREADS,),
        (xpad, buf, np.int64(total), i32(start), i32(hp), i32(wp), i32(c), i32(oh), i32(ow), i32(pooled),
         i32(kh), i32(kw), i32(geom.stride[0]), i32(geom.stride[1]), i32(geom.dilation[0]),
         i32(geom.dilation[1]), i32(ld)))
    return buf  # (rows, K [+ 1])


def pool4(taps, out, index, relu: bool) -> None:
    """Max of the four pool taps ``(0, 0), (0, 1), (1, 0), (1, 1)`` (arrays of ``out``'s shape) into ``out``,
    with ``index`` (uint8) the tap ``2a + b`` of the *first* maximum in that order (PyTorch's tie rule): the
    max of each row pair (ties go left), then of the two rows (ties go up). With ``relu`` the result is
    ReLU-ed (``max(relu(x)) = relu(max(x))``) and ``DEAD`` added to the index where it is not positive.
    Without ``index`` (``None``: inference) the max alone, in four in-place passes over ``out``."""
    xp = backend.get_array_module(out)
    if index is None:
        xp.maximum(taps[0], taps[1], out=out)
        xp.maximum(out, taps[2], out=out)
        xp.maximum(out, taps[3], out=out)
        if relu:
            F.relu_(out)
        return
    top, bottom = xp.maximum(taps[0], taps[1]), xp.maximum(taps[2], taps[3])
    bottom_wins = top < bottom
    xp.maximum(top, bottom, out=out)
    xp.multiply(bottom_wins, xp.uint8(2), out=index)
    index += _select(bottom_wins, taps[2] < taps[3], taps[0] < taps[1])
    if relu:
        index += (out <= 0).view(xp.uint8) * xp.uint8(DEAD)
        F.relu_(out)


def _select(condition, if_true, if_false):
    """``where(condition, if_true, if_false)`` of three bool arrays of one shape. On the CPU by bitwise
    operations, in place in ``if_true``: NumPy's ``where`` branches on every element, and a condition that
    follows the data (which pool tap won) is mispredicted half the time (bench/README.md has the figures)."""
    xp = backend.get_array_module(condition)
    if xp is not np:
        return xp.where(condition, if_true, if_false)
    if_true ^= if_false
    if_true &= condition
    if_true ^= if_false  # ((t ^ f) & c) ^ f: t where c, f elsewhere
    return if_true


def _pieces(a, n: int) -> int:
    """Rows per piece for GEMMs of ``a`` ``(rows, K)`` with ``N = n`` output columns (see
    :data:`SMALL_GEMM`); 0 for one GEMM (on the GPU, when pieces would be too small or not fewer than the
    rows, or when ``a``'s rows are not contiguous)."""
    piece = SMALL_GEMM // (a.shape[1] * n)
    small = MIN_SMALL_GEMM_ROWS <= piece < a.shape[0] and a.strides[1] == a.itemsize
    return piece if small and backend.get_array_module(a) is np else 0


def _gemm(a, b, out) -> None:
    """``out = a @ b`` for ``a`` ``(rows, K)``, ``b`` ``(K, N)``, ``out`` ``(rows, N)`` C-contiguous; on the
    CPU as one stacked matmul over row pieces of :func:`_pieces` rows (one call: NumPy runs the stack's
    GEMMs without the GIL) plus the remainder. A row's result does not depend on the split."""
    xp = backend.get_array_module(a)
    piece = _pieces(a, b.shape[1]) if out.flags.c_contiguous else 0
    if not piece:
        xp.matmul(a, b, out=out)
        return
    k, n = a.shape[1], b.shape[1]
    stack = a.shape[0] // piece
    main = stack * piece
    np.matmul(a[:main].reshape(stack, piece, k), b, out=out[:main].reshape(stack, piece, n))
    if main < a.shape[0]:
        np.matmul(a[main:], b, out=out[main:])


def _gemm_tn(a, d, scratch: Scratch, worker: int, acc=None):
    """``a.T @ d`` for ``a`` ``(rows, K)``, ``d`` ``(rows, N)`` (C-contiguous): added to ``acc`` ``(K, N)``
    and returned when ``acc`` is given, else a new array. On the CPU the reduction over ``rows`` is split as
    in :func:`_gemm` (a stack of partial products, summed)."""
    piece = _pieces(a, d.shape[1])
    if not piece:
        product = a.T @ d
        if acc is None:
            return product
        acc += product
        return acc
    (rows, k), n = a.shape, d.shape[1]
    stack = rows // piece
    main = stack * piece
    parts = scratch.get(worker, "gemm_parts", (stack, k, n), a.dtype, np)  # (P, K, N)
    np.matmul(a[:main].reshape(stack, piece, k).transpose(0, 2, 1), d[:main].reshape(stack, piece, n),
              out=parts)
    total = parts.sum(axis=0)
    if acc is not None:
        acc += total
        total = acc
    if main < rows:
        total += a[main:].T @ d[main:]
    return total


def unpool4(dy, index, targets) -> None:
    """Gradient of :func:`pool4`: ``dy`` goes to ``targets[t]`` where ``index == t``, zero elsewhere."""
    xp = backend.get_array_module(dy)
    for tap, target in enumerate(targets):
        xp.multiply(dy, index == tap, out=target)


def max_pool2x2(y, out, index, relu: bool) -> None:
    """2x2 stride-2 max pool of ``y`` ``(n, OH, OW, C)`` (spatial order) into ``out`` ``(n, OH // 2, OW // 2,
    C)`` with the uint8 ``index`` of :func:`pool4` (none when ``index`` is ``None``)."""
    ph, pw = out.shape[1:3]
    pool4([y[:, a:2 * ph:2, b:2 * pw:2] for a in (0, 1) for b in (0, 1)], out, index, relu)


def max_unpool2x2(dy, index, dconv) -> None:
    """Gradient of :func:`max_pool2x2`: route ``dy`` ``(n, PH, PW, C)`` to the recorded maxima, writing all of
    ``dconv`` ``(n, OH, OW, C)`` (rows/columns outside the pooled area get zero)."""
    ph, pw = dy.shape[1:3]
    unpool4(dy, index, [dconv[:, a:2 * ph:2, b:2 * pw:2] for a in (0, 1) for b in (0, 1)])
    _zero_unpooled_edge(dconv, ph, pw)


def _zero_unpooled_edge(a, ph: int, pw: int) -> None:
    """Zero the last row/column of ``a`` ``(n, OH, OW, C)`` that an odd size leaves out of a 2x2 pool."""
    if a.shape[1] > 2 * ph:
        a[:, 2 * ph:] = 0
    if a.shape[2] > 2 * pw:
        a[:, :, 2 * pw:] = 0


class Plan:
    """How a batch is worked on (:func:`_plan`; shared between calls, so never changed), from its sub-blocks,
    ``(start, stop, chunk, part)`` each: what the kernels look up in them, ``ranges`` (their ``(start,
    stop)``, for ``run_blocks``), ``by_start`` (``start -> (index, chunk)``), ``of_part`` (the indices of each
    block's sub-blocks, in order), the largest sub-block and chunk (``block``, ``chunk``: buffer sizes)."""

    def __init__(self, sub_blocks: tuple[tuple[int, int, int, int], ...]) -> None:
        self.ranges = [(a, e) for a, e, _, _ in sub_blocks]
        self.by_start = {a: (j, c) for j, (a, _, c, _) in enumerate(sub_blocks)}
        self.of_part = [[j for j, sub in enumerate(sub_blocks) if sub[3] == part]
                        for part in range(sub_blocks[-1][3] + 1)]
        self.block = max(e - a for a, e, _, _ in sub_blocks)
        self.chunk = max(c for _, _, c, _ in sub_blocks)


def _plan(layout: BatchLayout, rows_per_sample: int, xp, row_elements: int) -> Plan:
    """How a batch is worked on, as a :class:`Plan` of ``(start, stop, chunk, part)`` sub-blocks: each block
    ``part`` of ``layout`` cut as :func:`~xpvision.nn.functional.block_and_chunk` cuts a batch of that
    block's size, with GEMM chunks of ``chunk`` samples. Every GEMM's rows, so every result, then depend on
    the block's size and the shapes alone, not on the samples around the block (BLAS may round a row
    differently in a GEMM of other height)."""
    return _plan_of_blocks(tuple(layout.blocks), rows_per_sample, xp, row_elements)


@functools.lru_cache(maxsize=256)
def _plan_of_blocks(blocks: tuple[tuple[int, int], ...], rows_per_sample: int, xp, row_elements: int) -> Plan:
    """:func:`_plan` for the blocks ``blocks``, kept: every layer call of every step asks for the same few."""
    plan = []
    for part, (a, b) in enumerate(blocks):
        block, chunk = F.block_and_chunk(b - a, rows_per_sample, xp, row_elements)  # of this block alone
        plan += [(start, min(start + block, b), chunk, part) for start in range(a, b, block)]
    return Plan(tuple(plan))


def conv_forward(xpad, w_mat, bias, geom: ConvGeometry, *, relu: bool, pool: bool, scratch: Scratch,
                 need_index: bool = True, source=None, layout: BatchLayout | None = None):
    """Convolution (+ bias) (+ ReLU) (+ 2x2 max pool) of ``xpad`` ``(N, Hp, Wp, I)``, in the sub-blocks of
    :func:`_plan` for ``layout`` (default: the whole batch in this process).

    ``source``, when given, is the unpadded input ``(N, H, W, I)``: it is copied into the interior of
    ``xpad`` (whose border must be zero) block by block, just before the block's im2col reads it from cache
    (and on the block's thread).

    Returns ``(out, pool_index)``: ``out`` ``(N, OH, OW, O)``, or ``(N, OH // 2, OW // 2, O)`` with ``pool``;
    and the uint8 pool index of :func:`pool4` (``None`` without ``pool`` or without ``need_index``: the
    index-free pool is cheaper, and the index can be recomputed by a second call, bit for bit).
    """
    xp = backend.get_array_module(xpad)
    n = xpad.shape[0]
    (oh, ow), o = geom.out_hw, w_mat.shape[1]
    ph, pw = oh // 2, ow // 2
    dtype = xp.result_type(xpad.dtype, w_mat.dtype)
    plan = _plan(layout or whole_batch(n, xp), geom.rows_per_sample, xp, w_mat.shape[0])
    block, chunk = plan.block, plan.chunk  # buffer sizes
    index = None
    if pool:
        out = scratch.get_free("out", (n, ph, pw, o), dtype, xp)
        if need_index:
            index = scratch.get_free("index", out.shape, xp.uint8, xp)
    else:
        out = scratch.get_free("out", (n, oh, ow, o), dtype, xp)
    patches = _patch_sources(xpad, geom, pool_major=pool)
    if bias is not None:
        w_mat = xp.concatenate([w_mat, bias.reshape(1, o).astype(w_mat.dtype)])  # (kh*kw*I + 1, O)

    def work(start: int, stop: int, worker: int) -> None:
        """One block of samples: GEMMs chunk by chunk, then the element-wise epilogue on the whole block."""
        m = stop - start
        if source is not None:
            (p0, p1), (h, w) = geom.padding, geom.in_hw
            xpad[start:stop, p0:p0 + h, p1:p1 + w] = source[start:stop]  # (m, H, W, I) interior
        # (m, 2, 2, PH, PW, O) pool-major blocks, or the (m, OH, OW, O) output itself
        y = scratch.get(worker, "y", (block, 2, 2, ph, pw, o), dtype, xp)[:m] if pool else out[start:stop]
        step = plan.by_start[start][1]
        for s in range(0, m, step):
            e = min(s + step, m)
            cols = _im2col(scratch, worker, "cols", patches, start + s, start + e, chunk, bias is not None)
            _gemm(cols, w_mat, y[s:e].reshape(-1, o))  # (rows, O), bias included
        if pool:
            taps = [y[:, a, b] for a in (0, 1) for b in (0, 1)]  # 4 x (m, PH, PW, O)
            pool4(taps, out[start:stop], None if index is None else index[start:stop], relu)
        elif relu:
            F.relu_(y)

    run_blocks(work, plan.ranges, xp)
    return out, index


def conv_backward(dout, xpad, w_mat, geom: ConvGeometry, *, relu_out, pool_index, grads: dict,
                  need_input: bool, scratch: Scratch, layout: BatchLayout | None = None):
    """Gradients of :func:`conv_forward` from ``dout``, the gradient of its output.

    ``relu_out``: the forward output when a ReLU was fused without a pool (its positive entries pass the
    gradient), else ``None``; ``pool_index``: the forward's pool index, or ``None``. The batch is worked on
    in the blocks of ``layout`` (default: the whole batch in this process, see
    :class:`xpvision.nn.parallel.BatchLayout`), each block's weight gradient computed from it alone and the
    blocks summed by ``layout.fold_into`` into ``grads``: ``'W'`` ``(O, I, kh, kw)`` and ``'b'`` ``(O,)``,
    those wanted. Returns ``dx`` ``(N, H, W, I)``, ``None`` unless ``need_input``.
    """
    xp = backend.get_array_module(dout)
    need_params, need_bias = bool(grads), "b" in grads  # the bias gradient is the weight GEMM's last row
    n = dout.shape[0]
    (oh, ow), (h, w), o, k = geom.out_hw, geom.in_hw, w_mat.shape[1], w_mat.shape[0]
    (kh, kw), i_ch = geom.kernel, k // (geom.kernel[0] * geom.kernel[1])
    ph, pw = oh // 2, ow // 2
    pooled = pool_index is not None
    dtype = xp.result_type(dout.dtype, w_mat.dtype)
    layout = layout or whole_batch(n, xp)
    plan = _plan(layout, geom.rows_per_sample, xp, k)
    block, chunk = plan.block, plan.chunk  # buffer sizes
    transposed = geom.input_grad_by_transposed_conv
    q0, q1 = geom.transposed_padding
    dx = dxpad = w_flip = None
    if need_input and transposed:
        dx = scratch.get_free("dx", (n, h, w, i_ch), dtype, xp)
        w_flip = F.flipped_weight_matrix(w_mat, geom.kernel)  # (kh*kw*O, I)
    elif need_input:
        dxpad = xp.zeros((n, xpad.shape[1], xpad.shape[2], i_ch), dtype=dtype)
    dgeom = ConvGeometry(geom.kernel, (1, 1), geom.dilation, (0, 0), (oh, ow), (h, w))  # dy -> dx
    patches = _patch_sources(xpad, geom, pool_major=pooled) if need_params else None
    dw_parts: dict[int, object] = {}
    dpad_patches: dict[int, tuple] = {}

    def conv_output_grad(start: int, stop: int, worker: int):
        """Gradient w.r.t. the convolution's output for samples ``start:stop``: ``(m, 2, 2, PH, PW, O)``
        pool-major blocks after a fused pool, else ``(m, OH, OW, O)``."""
        m = stop - start
        if pooled:
            dconv = scratch.get(worker, "dconv", (block, 2, 2, ph, pw, o), dtype, xp)[:m]
            blocks = [dconv[:, a, b] for a in (0, 1) for b in (0, 1)]  # 4 x (m, PH, PW, O)
            unpool4(dout[start:stop], pool_index[start:stop], blocks)
            return dconv
        if relu_out is not None:
            dconv = scratch.get(worker, "dconv", (block, oh, ow, o), dtype, xp)[:m]
            xp.multiply(dout[start:stop], relu_out[start:stop] > 0, out=dconv)
            return dconv
        return dout[start:stop]

    def work(start: int, stop: int, worker: int) -> None:
        """One block of samples: the element-wise output gradient on the whole block, then GEMMs by chunk."""
        dconv_block = conv_output_grad(start, stop, worker)
        j, step = plan.by_start[start]
        for s in range(0, stop - start, step):
            e = min(s + step, stop - start)
            chunk_grads(start + s, start + e, dconv_block[s:e], worker, j)

    def chunk_grads(start: int, stop: int, dconv, worker: int, part: int) -> None:
        """Gradients of one chunk; its weight gradient is added to sub-block ``part``'s partial sum."""
        m = stop - start
        dmat = dconv.reshape(-1, o)  # (rows, O), rows in the order of the forward's im2col
        if need_params:
            cols = _im2col(scratch, worker, "cols", patches, start, stop, chunk, need_bias)  # (rows, K[+1])
            # (K[+1], O): with the ones column, the bias gradient is the last row
            dw_parts[part] = _gemm_tn(cols, dmat, scratch, worker, dw_parts.get(part))
        if need_input and transposed:
            dpad = scratch.get(worker, "dpad", (chunk, oh + 2 * q0, ow + 2 * q1, o), dtype, xp, fill=0)
            interior = dpad[:m, q0:q0 + oh, q1:q1 + ow]  # (m, OH, OW, O)
            if pooled:
                _pool_major(interior)[...] = dconv
                _zero_unpooled_edge(interior, ph, pw)
            else:
                interior[...] = dconv
            if worker not in dpad_patches:
                dpad_patches[worker] = _patch_sources(dpad, dgeom, pool_major=False)
            dcols = _im2col(scratch, worker, "dcols", dpad_patches[worker], 0, m, chunk, False)  # (m*H*W, K)
            _gemm(dcols, w_flip, dx[start:stop].reshape(-1, i_ch))  # (m*H*W, I)
        elif need_input:
            if pooled:
                spatial = xp.zeros((m, oh, ow, o), dtype=dtype)
                _pool_major(spatial)[...] = dconv
                dmat = spatial.reshape(-1, o)  # (m*OH*OW, O)
            dcols = (dmat @ w_mat.T).reshape(m, oh, ow, kh, kw, i_ch)
            F.col2im_add(dxpad[start:stop], dcols, geom.kernel, geom.stride, geom.dilation)

    run_blocks(work, plan.ranges, xp)
    # (K[+1], O) per block: its sub-blocks added in order; the fold adds the blocks in block order
    parts = [_block_sum([dw_parts[j] for j in subs]) for subs in plan.of_part] if need_params else []
    if "W" in grads:
        layout.fold_into([part[:k] for part in parts], grads["W"],
                         view=functools.partial(F.conv_weight_from_matrix, kernel=geom.kernel))
    if need_bias:
        layout.fold_into([part[k] for part in parts], grads["b"])
    if dxpad is not None:
        dx = F.crop_nhwc(dxpad, geom.padding)
    return dx


def _block_sum(sub_sums: list):
    """One block's partial sum from those of its sub-blocks, added in order (the only one as it is)."""
    return sub_sums[0] if len(sub_sums) == 1 else ordered_sum(dict(enumerate(sub_sums)))


def conv2d(x, w, b, geom: ConvGeometry, *, relu: bool, pool: bool, training: bool, scratch: Scratch):
    """The ``conv2d`` kernel of :mod:`xpvision.nn.engine` by im2col + GEMM (what the tuned engine,
    :func:`xpvision.nn.conv.conv2d`, runs where :mod:`xpvision.nn.winograd` does not): :func:`conv_forward` on
    a reused zero-bordered padded buffer whose interior is copied in block by block; in evaluation
    (``training`` false) the pool keeps no index (a backward recomputes it)."""
    xp = backend.get_array_module(x)
    (n, h, w_in, c), (p0, p1) = x.shape, geom.padding
    padded = geom.padding != (0, 0)
    # (N, Hp, Wp, I) with a zero border; conv_forward copies the interior in, block by block
    xpad = scratch.get(0, "xpad", (n, h + 2 * p0, w_in + 2 * p1, c), x.dtype, xp, fill=0) if padded else x
    w_mat = F.conv_weight_matrix(w)  # (kh*kw*I, O)
    bias = None if b is None else b.copy()  # (O,), as used here
    layout = current_layout(n, xp)
    y, pool_index = conv_forward(xpad, w_mat, bias, geom, relu=relu, pool=pool, scratch=scratch,
                                 need_index=training, source=x if padded else None, layout=layout)
    return y, (xpad, w_mat, bias, geom, relu, pool, y if relu and not pool else None, pool_index, layout)


def conv2d_backward(dy, saved, *, grads: dict, need_input: bool, scratch: Scratch):
    """The ``conv2d_backward`` kernel of :mod:`xpvision.nn.engine` for :func:`conv2d`'s ``saved``
    (:func:`conv_backward`)."""
    xpad, w_mat, bias, geom, relu, pool, relu_out, pool_index, layout = saved
    if pool and pool_index is None:
        _, pool_index = conv_forward(xpad, w_mat, bias, geom, relu=relu, pool=True, scratch=scratch,
                                     layout=layout)
    return conv_backward(dy, xpad, w_mat, geom, relu_out=relu_out, pool_index=pool_index, grads=grads,
                         need_input=need_input, scratch=scratch, layout=layout)


__all__ = ["ConvGeometry", "Scratch", "conv2d", "conv2d_backward", "conv_backward", "conv_forward",
           "max_pool2x2", "max_unpool2x2"]
