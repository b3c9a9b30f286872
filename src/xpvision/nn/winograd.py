"""Winograd F(2x2, 3x3): a 3x3 convolution of stride 1 with 2.25x fewer multiplications than im2col + GEMM
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015).

Each 2x2 tile ``Y`` of the output is computed from the 4x4 tile ``d`` of the padded input under it (input
tiles overlap by two pixels) and the 3x3 kernel ``g`` of one (input, output) channel pair as

    Y = A^T [U * V] A,    U = G g G^T,    V = B^T d B        (U, V: 4x4; *: element-wise)

    B^T = [[1,  0, -1,  0],    G = [[1,    0,    0  ],    A^T = [[1, 1,  1,  0],
           [0,  1,  1,  0],         [1/2,  1/2,  1/2],           [0, 1, -1, -1]]
           [0, -1,  1,  0],         [1/2, -1/2,  1/2],
           [0,  1,  0, -1]]         [0,    0,    1  ]]

Summed over the input channels, the 16 element-wise products of a tile become 16 GEMMs over the ``T`` tiles
of the batch: ``M[k] = V[k] @ U[k]`` with ``V`` ``(16, T, I)``, ``U`` ``(16, I, O)``, ``M`` ``(16, T, O)``
(``k = 4 a + b`` for entry ``(a, b)`` of the 4x4 tile), then ``Y = A^T M A``. That is ``16 I O``
multiplications per four outputs against im2col's ``9 I O`` per output; the transforms only add and subtract
(``B^T`` and ``A^T`` hold 0 and +-1). The bias is added to ``M[1, 1]``, which enters all four outputs of a
tile with coefficient 1 (column 1 of ``A^T`` is ``(1, 1)``).

The backward is the derivative of the same formula:

* weight and bias gradients: ``dM = A dY A^T`` per tile (``dY`` the 2x2 tile of the output gradient),
  ``dU[k] = sum over tiles of V[k]^T @ dM[k]`` (16 GEMMs reducing over the tiles), ``dW = G^T dU G``; the
  bias gradient is the sum of ``dM[1, 1] = dY[0, 0] + dY[0, 1] + dY[1, 0] + dY[1, 1]`` over the tiles;
* input gradient: the output gradient zero-padded by ``2 - P`` and convolved with the kernel flipped and its
  channels swapped (the transposed convolution, as in :mod:`.convblock`), by the forward above.

Layout. Tiles are read from a *parity-major* copy of the zero-padded input, ``(N, 2, 2, TH + 1, TW + 1, C)``
with ``xpar[n, p, q, i, j] = xpad[n, 2 i + p, 2 j + q]`` (``TH, TW``: tiles down and across): row ``a`` of
every tile of a sample is then the one block ``xpar[n, a % 2, :, a // 2 : a // 2 + TH]``, so each transform
step is one array operation over long contiguous runs rather than a loop over runs of ``C`` values. ``V``,
``M`` and the four output taps ``Y[a, b]`` ``(n, TH, TW, O)`` (output pixel ``(2 ty + a, 2 tx + b)``) are
contiguous arrays. The taps are those of a following 2x2 max pool (its windows are the tiles), which fuses
as in :mod:`.convblock`. Tiles past an odd output size read zero padding and their outputs are dropped.

The batch runs in the blocks and chunks of :func:`xpvision.nn.functional.block_and_chunk` on the threads of
:mod:`xpvision.nn.parallel`: block boundaries depend on the shapes alone and weight-gradient partial sums are
added in block order, so any thread count gives the same bits.

Which convolutions take this path is decided by :func:`chosen` from the shapes, never by timing (see
:data:`ENV_MODE`). Results equal im2col's up to rounding: the transforms add inputs before multiplying, so
errors grow with the magnitudes inside a tile (``tests/nn/test_winograd.py`` states the tolerance).
"""

from __future__ import annotations

import math

import numpy as np

from xpvision import backend
from xpvision.nn import engine
from xpvision.nn import functional as F
from xpvision.nn.convblock import ConvGeometry, Scratch, pool4, unpool4
from xpvision.nn.parallel import BatchLayout, current_layout, run_blocks, whole_batch

# The matrices of the formulas above. The transforms below are their products written out as additions and
# subtractions of whole arrays; tests/nn/test_winograd.py checks each against the matrix product.
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])
A = A_T.T
BIAS_ENTRY = 5
"""``k`` of ``M[1, 1]``, the entry every output of a tile takes with coefficient 1."""

MODES = ("off", "auto", "on")
ENV_MODE = "XPVISION_WINOGRAD"
"""Environment variable: ``off`` (im2col + GEMM everywhere), ``auto`` (the default: the shapes where it was
measured faster) or ``on`` (every convolution it can do with enough channels); see :func:`chosen`."""
DEFAULT_MODE = "auto"
MIN_CHANNELS = 16
"""Fewest input channels ``on`` takes: the 16 GEMMs' inner dimension is the input channel count, far too
small below this for the BLAS (DeepConvNet's one-channel first layer ran 5-9x slower than im2col)."""
AUTO_CHANNELS = 64
"""Fewest input and output channels ``auto`` takes. The multiplications saved per pixel grow with ``I * O``,
the transforms' passes with ``I + O``: at 64 and 64 channels a forward chunk is ~30% cheaper than im2col's,
at 16-32 only 4-12%, which the rest of the layer and the backward's extra transforms eat (bench/README.md)."""
AUTO_TILES = 16_000
"""Fewest 2x2 output tiles in the batch (``N * TH * TW``) ``auto`` takes: each call's fixed costs (three
weight transforms of ``16 I O`` values, Python per chunk) and the backward's extra transforms must be spread
over enough tiles, and how many is enough grows with the speed of the BLAS's GEMM, which Winograd uses less
of. DeepConvNet's 64-channel conv6 (4x4 tiles per image) at batch 1000 (16,000 tiles) ties im2col with
OpenBLAS's AVX-512 kernels and is faster with its AVX2 ones; at batch 256, training, it is slower with both
(bench/README.md)."""
TILE_ELEMENTS_PER_PIXEL = 4
"""Values of ``V`` (and of ``M``) per output pixel and channel: 16 per tile of four pixels."""

_mode = engine.Setting("winograd mode", ENV_MODE, MODES, DEFAULT_MODE)


def set_mode(mode: str | None) -> None:
    """Use ``mode`` (``'off'``, ``'auto'`` or ``'on'``) from now on; ``None``: back to the default."""
    _mode.set(mode)


def get_mode() -> str:
    """The mode in use: the one set, else ``XPVISION_WINOGRAD``, else :data:`DEFAULT_MODE`."""
    return _mode.get()


def applicable(geom: ConvGeometry) -> bool:
    """Whether this module can compute the convolution: a 3x3 kernel, stride 1, dilation 1 and padding at most
    2 (the input gradient is a convolution of the output gradient padded by ``2 - P``)."""
    return (geom.kernel == (3, 3) and geom.stride == (1, 1) and geom.dilation == (1, 1)
            and max(geom.padding) <= 2)


def chosen(geom: ConvGeometry, batch: int, in_ch: int, out_ch: int, xp) -> bool:
    """Whether the tuned engine computes this convolution here (else by im2col + GEMM): an
    :func:`applicable` one on the CPU with, in mode ``auto``, at least :data:`AUTO_CHANNELS` input and output
    channels and :data:`AUTO_TILES` tiles in the ``batch`` (the global batch, so that every process chooses
    alike); in mode ``on``, at least :data:`MIN_CHANNELS` input channels; none in mode ``off``. The GPU keeps
    im2col (not measured there)."""
    mode = get_mode()
    if mode == "off" or xp is not np or not applicable(geom):
        return False
    if mode == "on":
        return in_ch >= MIN_CHANNELS
    return min(in_ch, out_ch) >= AUTO_CHANNELS and batch * math.prod(tiles(geom.out_hw)) >= AUTO_TILES


# -- the transforms ------------------------------------------------------------------------------------------
def weight_transform(w):
    """``U = G g G^T`` for every channel pair of ``w`` ``(O, I, 3, 3)`` -> ``(16, I, O)``."""
    xp = backend.get_array_module(w)
    o, i = w.shape[:2]
    g = xp.asarray(G, dtype=w.dtype)
    return xp.einsum("au,oiuv,bv->abio", g, w, g, optimize=True).reshape(16, i, o)  # in two contractions


def weight_grad_transform(du):
    """``dW = G^T dU G``: ``du`` ``(16, I, O)`` -> ``(O, I, 3, 3)``."""
    xp = backend.get_array_module(du)
    g = xp.asarray(G, dtype=du.dtype)
    return xp.einsum("au,abio,bv->oiuv", g, du.reshape(4, 4, *du.shape[1:]), g, optimize=True)


def flipped(w):
    """The kernel of the input-gradient convolution: ``w`` ``(O, I, 3, 3)`` flipped in space, channels swapped
    -> ``(I, O, 3, 3)``."""
    xp = backend.get_array_module(w)
    return xp.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def tiles(out_hw: tuple[int, int]) -> tuple[int, int]:
    """``(TH, TW)``: 2x2 tiles covering an ``(OH, OW)`` output."""
    return tuple(-(-size // 2) for size in out_hw)


def to_parity(x, xpar, offset: tuple[int, int]) -> None:
    """Copy ``x`` ``(m, H, W, C)`` into the parity-major ``xpar`` ``(m, 2, 2, Hh, Wh, C)`` of a padded grid
    holding ``x`` at ``offset`` (``xpad[o0 + y, o1 + x] = x[y, x]``); the rest of ``xpar`` is left alone."""
    for p in (0, 1):
        y0 = (p - offset[0]) % 2  # the first row of x on padded rows of parity p
        rows = x[:, y0::2]
        for q in (0, 1):
            x0 = (q - offset[1]) % 2
            part = rows[:, :, x0::2]  # (m, h_p, w_q, C)
            i0, j0 = (y0 + offset[0]) // 2, (x0 + offset[1]) // 2
            xpar[:, p, q, i0:i0 + part.shape[1], j0:j0 + part.shape[2]] = part


def _slabs(scratch: Scratch, worker: int, name: str, count: int, shape: tuple[int, ...], capacity: int, dtype,
           xp):
    """``count`` contiguous arrays of ``shape`` ``(m, ...)`` as one ``(count, m, ...)`` view of a scratch
    buffer sized for ``capacity`` samples."""
    per_sample = math.prod(shape[1:])
    buf = scratch.get(worker, name, (count, capacity * per_sample), dtype, xp)
    return buf[:, :shape[0] * per_sample].reshape(count, *shape)


def input_transform(xpar, v, cols) -> None:
    """``V = B^T d B`` for every tile: ``xpar`` ``(m, 2, 2, TH + 1, TW + 1, C)`` -> ``v`` ``(16, m, TH, TW,
    C)`` (``V[a, b]`` at ``4 a + b``); ``cols`` ``(4, m, 2, TH + 1, TW, C)`` holds ``d B`` in between.

    Tile column ``b`` of every tile is ``d_b = xpar[:, :, b % 2, :, b // 2 : b // 2 + TW]``, so the columns
    of ``d B`` (``d0 - d2, d1 + d2, d2 - d1, d1 - d3``) take three array operations, columns 0 and 3 being one
    subtraction over both parities; then ``B^T (d B)`` the same way along the tile rows, for the four columns
    at once (long contiguous runs: the rows are the outer axis).
    """
    xp = backend.get_array_module(xpar)
    th, tw = v.shape[2:4]
    v4 = v.reshape(4, 4, *v.shape[1:])  # V[a, b]
    d_lo, d_hi = xpar[..., :tw, :], xpar[..., 1:, :]  # tile columns q and q + 2: (m, 2, 2, TH + 1, TW, C)
    xp.subtract(d_lo, d_hi, out=cols[0::3].transpose(1, 2, 0, 3, 4, 5))  # d0 - d2, d1 - d3
    xp.add(d_lo[:, :, 1], d_hi[:, :, 0], out=cols[1])  # d1 + d2
    xp.subtract(d_hi[:, :, 0], d_lo[:, :, 1], out=cols[2])  # d2 - d1
    r_lo, r_hi = cols[:, :, :, :th], cols[:, :, :, 1:]  # tile rows p and p + 2: (4, m, 2, TH, TW, C)
    xp.subtract(r_lo, r_hi, out=v4[0::3].transpose(1, 2, 0, 3, 4, 5))  # rows 0 and 3
    xp.add(r_lo[:, :, 1], r_hi[:, :, 0], out=v4[1])
    xp.subtract(r_hi[:, :, 0], r_lo[:, :, 1], out=v4[2])


def output_transform(m, taps, rows) -> None:
    """``Y = A^T M A`` for every tile: ``m`` ``(16, n, TH, TW, O)`` -> ``taps`` ``(4, n, TH, TW, O)`` (``Y[a,
    b]`` at ``2 a + b``); ``rows`` ``(2, 4, n, TH, TW, O)`` holds ``A^T M`` in between. Rows of ``A^T M``:
    ``M0 + M1 + M2`` and ``M1 - M2 - M3``, for the four columns at once; then the same along the columns."""
    xp = backend.get_array_module(m)
    m4, t4 = m.reshape(4, 4, *m.shape[1:]), taps.reshape(2, 2, *taps.shape[1:])
    xp.add(m4[1], m4[2], out=rows[0])
    rows[0] += m4[0]
    xp.subtract(m4[1], m4[2], out=rows[1])
    rows[1] -= m4[3]
    xp.add(rows[:, 1], rows[:, 2], out=t4[:, 0])
    t4[:, 0] += rows[:, 0]
    xp.subtract(rows[:, 1], rows[:, 2], out=t4[:, 1])
    t4[:, 1] -= rows[:, 3]


def output_grad_transform(dy_taps, dm, rows) -> None:
    """``dM = A dY A^T`` for every tile: ``dy_taps`` (``dY[i, j]`` at ``2 i + j``, each ``(n, TH, TW, O)``) ->
    ``dm`` ``(16, n, TH, TW, O)``; ``rows`` ``(4, 2, n, TH, TW, O)`` holds ``A dY`` in between. Rows of ``A
    dY``: ``dY0, dY0 + dY1, dY0 - dY1, -dY1``; then the same along the columns, for the four rows at once."""
    xp = backend.get_array_module(dm)
    for j in (0, 1):
        top, bottom = dy_taps[j], dy_taps[2 + j]
        xp.copyto(rows[0, j], top)
        xp.add(top, bottom, out=rows[1, j])
        xp.subtract(top, bottom, out=rows[2, j])
        xp.negative(bottom, out=rows[3, j])
    dm4 = dm.reshape(4, 4, *dm.shape[1:])
    xp.copyto(dm4[:, 0], rows[:, 0])
    xp.add(rows[:, 0], rows[:, 1], out=dm4[:, 1])
    xp.subtract(rows[:, 0], rows[:, 1], out=dm4[:, 2])
    xp.negative(rows[:, 1], out=dm4[:, 3])


# -- one chunk of tiles ------------------------------------------------------------------------------------
def _tiles_forward(xpar, u, bias, taps, scratch: Scratch, worker: int, capacity: int) -> None:
    """The four output taps ``(4, m, TH, TW, O)`` of ``xpar`` ``(m, 2, 2, TH + 1, TW + 1, I)`` (+ bias)."""
    xp = backend.get_array_module(xpar)
    (m, _, _, th1, tw1, c), o = xpar.shape, u.shape[2]
    th, tw = th1 - 1, tw1 - 1
    cols = _slabs(scratch, worker, "db_cols", 4, (m, 2, th1, tw, c), capacity, xpar.dtype, xp)
    v = _slabs(scratch, worker, "v", 16, (m, th, tw, c), capacity, xpar.dtype, xp)
    input_transform(xpar, v, cols)
    mm = _slabs(scratch, worker, "m", 16, (m, th, tw, o), capacity, taps.dtype, xp)
    xp.matmul(v.reshape(16, -1, c), u, out=mm.reshape(16, -1, o))  # 16 x (T, I) @ (I, O)
    if bias is not None:
        mm[BIAS_ENTRY] += bias
    output_transform(mm, taps, _slabs(scratch, worker, "at_rows", 8, (m, th, tw, o), capacity, taps.dtype,
                                      xp).reshape(2, 4, m, th, tw, o))


def _chunks(layout: BatchLayout, out_hw: tuple[int, int], channels: int, xp) -> tuple[int, int]:
    """``(block, chunk)`` samples: ``block`` the largest of ``layout``'s blocks (the sizes of per-block
    buffers), ``chunk`` as :func:`xpvision.nn.functional.block_and_chunk` cuts im2col for the whole global
    batch (a chunk's ``V`` holds about as many values as an im2col chunk's matrix). Both depend on the global
    batch only, so every process and thread count runs the same GEMMs."""
    block = max(b - a for a, b in layout.blocks)
    _, chunk = F.block_and_chunk(layout.total, out_hw[0] * out_hw[1], xp, TILE_ELEMENTS_PER_PIXEL * channels)
    return block, min(block, chunk)


def forward(xpar, u, bias, out_hw: tuple[int, int], *, relu: bool, pool: bool, scratch: Scratch,
            need_index: bool = True, source=None, layout: BatchLayout | None = None):
    """Convolution (+ bias) (+ ReLU) (+ 2x2 max pool) of the parity-major padded input ``xpar`` ``(N, 2, 2, TH
    + 1, TW + 1, I)`` with ``u`` ``(16, I, O)`` (:func:`weight_transform`).

    ``source``, when given, is ``(x, padding)``: the unpadded input ``(N, H, W, I)``, copied into ``xpar``
    (whose border must be zero) block by block on the block's thread. Returns ``(out, pool_index)`` as
    :func:`xpvision.nn.convblock.conv_forward`: ``out`` ``(N, OH, OW, O)``, or ``(N, OH // 2, OW // 2, O)``
    with ``pool``, and the uint8 pool index (``None`` without ``pool`` or ``need_index``). The batch is worked
    on in the blocks of ``layout`` (default: the whole batch in this process).
    """
    xp = backend.get_array_module(xpar)
    n, th, tw = xpar.shape[0], xpar.shape[3] - 1, xpar.shape[4] - 1
    (oh, ow), o = out_hw, u.shape[2]
    ph, pw = oh // 2, ow // 2
    dtype = xp.result_type(xpar.dtype, u.dtype)
    layout = layout or whole_batch(n, xp)
    block, chunk = _chunks(layout, out_hw, xpar.shape[5], xp)
    out = scratch.get_free("out", (n, ph, pw, o) if pool else (n, oh, ow, o), dtype, xp)
    index = scratch.get_free("index", out.shape, xp.uint8, xp) if pool and need_index else None

    def work(start: int, stop: int, worker: int) -> None:
        """One block: the tiles chunk by chunk, then the pool or the ReLU on the whole block's taps."""
        m = stop - start
        if source is not None:
            to_parity(source[0][start:stop], xpar[start:stop], source[1])
        taps = _slabs(scratch, worker, "taps", 4, (m, th, tw, o), block, dtype, xp)  # Y[a, b] at 2a + b
        for s in range(0, m, chunk):
            e = min(s + chunk, m)
            _tiles_forward(xpar[start + s:start + e], u, bias, taps[:, s:e], scratch, worker, chunk)
        if pool:
            block_index = None if index is None else index[start:stop]
            pool4([t[:, :ph, :pw] for t in taps], out[start:stop], block_index, relu)
        else:
            _untile(taps, out[start:stop], relu)

    run_blocks(work, layout.blocks, xp)
    return out, index


def _untile(taps, out, relu: bool) -> None:
    """Output pixels from the taps: ``out[:, 2 ty + a, 2 tx + b] = taps[2 a + b][:, ty, tx]`` (ReLU-ed)."""
    xp = backend.get_array_module(out)
    for a in (0, 1):
        for b in (0, 1):
            target = out[:, a::2, b::2]  # (m, rows of parity a, columns of parity b, O)
            tap = taps[2 * a + b][:, :target.shape[1], :target.shape[2]]
            if relu:
                xp.maximum(tap, 0, out=target)
            else:
                xp.copyto(target, tap)


def _output_grad_taps(dout, relu_out, pool_index, taps, out_hw: tuple[int, int]) -> None:
    """The gradient w.r.t. the convolution's output, as taps ``dY[a, b]`` (each ``(m, TH, TW, O)``, zero past
    the output and outside the pool): routed back through the pool (``pool_index``) or the ReLU (``relu_out``:
    the forward output) when they were fused."""
    xp = backend.get_array_module(dout)
    (oh, ow), th, tw = out_hw, taps[0].shape[1], taps[0].shape[2]
    if pool_index is not None:
        ph, pw = oh // 2, ow // 2
        unpool4(dout, pool_index, [t[:, :ph, :pw] for t in taps])
        valid = [(ph, pw)] * 4
    else:
        valid = []
        for a in (0, 1):
            for b in (0, 1):
                grad = dout[:, a::2, b::2]  # (m, rows, columns, O) of parity (a, b)
                rows, columns = grad.shape[1:3]
                target = taps[2 * a + b][:, :rows, :columns]
                if relu_out is None:
                    xp.copyto(target, grad)
                else:
                    xp.multiply(grad, relu_out[:, a::2, b::2] > 0, out=target)
                valid.append((rows, columns))
    for tap, (rows, columns) in zip(taps, valid, strict=True):
        if rows < th:
            tap[:, rows:] = 0
        if columns < tw:
            tap[:, :rows, columns:] = 0


def backward(dout, xpar, w, geom: ConvGeometry, *, relu_out, pool_index, grads: dict, need_input: bool,
             scratch: Scratch, layout: BatchLayout | None = None):
    """Gradients of :func:`forward` from ``dout``, the gradient of its output (``relu_out`` and
    ``pool_index`` as in :func:`xpvision.nn.convblock.conv_backward`). Returns ``dx`` ``(N, H, W, I)``
    (``None`` unless ``need_input``). The weight and bias gradients wanted, ``grads['W']`` ``(O, I, 3, 3)``
    and ``grads['b']`` ``(O,)``, are summed per block of ``layout`` (``dW = G^T dU G`` of each block's
    ``dU``) and the blocks' sums added by ``layout.fold_into``."""
    xp = backend.get_array_module(dout)
    need_params, need_bias = bool(grads), "b" in grads  # the bias gradient comes with the weights' GEMMs
    n, (h, wi) = dout.shape[0], geom.in_hw
    o, c = w.shape[:2]
    dtype = xp.result_type(dout.dtype, w.dtype)
    th, tw = tiles(geom.out_hw)
    thx, twx = tiles(geom.in_hw)  # tiles of the input gradient
    q0, q1 = geom.transposed_padding  # dY's place in the padded grid of the input-gradient convolution
    layout = layout or whole_batch(n, xp)
    block, chunk = _chunks(layout, geom.out_hw, max(c, o), xp)
    part_of = {start: part for part, (start, _) in enumerate(layout.blocks)}
    u_flip = weight_transform(flipped(w)) if need_input else None  # (16, O, I)
    dx = scratch.get_free("dx", (n, h, wi, c), dtype, xp) if need_input else None
    du_parts: dict[int, object] = {}
    db_parts: dict[int, object] = {}

    def work(start: int, stop: int, worker: int) -> None:
        """One block: dY into the parity-major padded buffer of the input-gradient convolution, then by
        chunk the weight-gradient GEMMs and the input gradient's tiles."""
        m = stop - start
        dpar = scratch.get(worker, "dpar", (block, 2, 2, thx + 1, twx + 1, o), dtype, xp, fill=0)[:m]
        # dY[a, b] at padded (q0 + 2 ty + a, q1 + 2 tx + b): one parity plane each; the rest of dpar stays 0
        dy_taps = [dpar[:, (a + q0) % 2, (b + q1) % 2, (a + q0) // 2:(a + q0) // 2 + th,
                        (b + q1) // 2:(b + q1) // 2 + tw] for a in (0, 1) for b in (0, 1)]
        _output_grad_taps(dout[start:stop], None if relu_out is None else relu_out[start:stop],
                          None if pool_index is None else pool_index[start:stop], dy_taps, geom.out_hw)
        part = part_of[start]
        for s in range(0, m, chunk):
            e = min(s + chunk, m)
            if need_params:
                _chunk_param_grads(xpar[start + s:start + e], [t[s:e] for t in dy_taps], part, worker)
            if need_input:
                taps = _slabs(scratch, worker, "dx_taps", 4, (e - s, thx, twx, c), chunk, dtype, xp)
                _tiles_forward(dpar[s:e], u_flip, None, taps, scratch, worker, chunk)
                _untile(taps, dx[start + s:start + e], relu=False)

    def _chunk_param_grads(xpar_chunk, dy_taps, part: int, worker: int) -> None:
        """``dU += V^T dM`` (and ``db += sum dM[1, 1]``) over a chunk's tiles, into block ``part``'s sums."""
        m = xpar_chunk.shape[0]
        cols = _slabs(scratch, worker, "db_cols", 4, (m, 2, th + 1, tw, c), chunk, dtype, xp)
        v = _slabs(scratch, worker, "v", 16, (m, th, tw, c), chunk, dtype, xp)
        input_transform(xpar_chunk, v, cols)
        dm = _slabs(scratch, worker, "m", 16, (m, th, tw, o), chunk, dtype, xp)
        a_rows = _slabs(scratch, worker, "a_rows", 8, (m, th, tw, o), chunk, dtype, xp)
        output_grad_transform(dy_taps, dm, a_rows.reshape(4, 2, m, th, tw, o))
        du = xp.matmul(v.reshape(16, -1, c).transpose(0, 2, 1), dm.reshape(16, -1, o))  # 16 x (I, T) @ (T, O)
        if part in du_parts:
            du_parts[part] += du
        else:
            du_parts[part] = du
        if need_bias:
            db = dm[BIAS_ENTRY].reshape(-1, o).sum(axis=0)  # (O,)
            if part in db_parts:
                db_parts[part] += db
            else:
                db_parts[part] = db

    run_blocks(work, layout.blocks, xp)
    parts = range(len(layout.blocks))
    if "W" in grads:
        layout.fold_into([weight_grad_transform(du_parts[i]) for i in parts], grads["W"])
    if need_bias:
        layout.fold_into([db_parts[i] for i in parts], grads["b"])
    return dx


# -- the engine's conv2d interface ---------------------------------------------------------------------------
def conv2d(x, w, b, geom: ConvGeometry, *, relu: bool, pool: bool, training: bool, scratch: Scratch):
    """The ``conv2d`` kernel of :mod:`xpvision.nn.engine` by Winograd (for :func:`applicable` geometries): the
    input copied block by block into a reused zero-bordered parity-major buffer, then :func:`forward`; in
    evaluation (``training`` false) the pool keeps no index (a backward recomputes it)."""
    xp = backend.get_array_module(x)
    th, tw = tiles(geom.out_hw)
    xpar = scratch.get(0, "xpar", (x.shape[0], 2, 2, th + 1, tw + 1, x.shape[3]), x.dtype, xp, fill=0)
    w = w.copy()  # (O, I, 3, 3), as used here
    bias = None if b is None else b.copy()
    layout = current_layout(x.shape[0], xp)
    y, pool_index = forward(xpar, weight_transform(w), bias, geom.out_hw, relu=relu, pool=pool,
                            scratch=scratch, need_index=training, source=(x, geom.padding), layout=layout)
    return y, (xpar, w, bias, geom, relu, pool, y if relu and not pool else None, pool_index, layout)


def conv2d_backward(dy, saved, *, grads: dict, need_input: bool, scratch: Scratch):
    """The ``conv2d_backward`` kernel of :mod:`xpvision.nn.engine` for :func:`conv2d`'s ``saved``."""
    xpar, w, bias, geom, relu, pool, relu_out, pool_index, layout = saved
    if pool and pool_index is None:
        _, pool_index = forward(xpar, weight_transform(w), bias, geom.out_hw, relu=relu, pool=True,
                                scratch=scratch, layout=layout)
    return backward(dy, xpar, w, geom, relu_out=relu_out, pool_index=pool_index, grads=grads,
                    need_input=need_input, scratch=scratch, layout=layout)
