"""``RawModule``/``RawKernel`` of the stand-in: launches checked against the CUDA signature, run by a NumPy
transcription of the kernel.

A launch ``kernel(grid, block, args)`` is refused (``TypeError``/``ValueError``, as a wrong launch would
crash or silently corrupt memory on a GPU) when the grid or block is not 1-3 positive ints within CUDA's
limits, when the number of arguments differs from the kernel's parameters, when a pointer argument is not a
C-contiguous device array of the pointed-to type, or when a scalar argument is not a NumPy scalar of exactly
the parameter's type (a Python ``int``/``float`` is passed by CuPy as 64 bits: wrong for ``int``/``float``).
The transcription then runs over exactly the blocks and threads of the launch, so too small a grid or block
leaves results unwritten, as on the device.

Every CUDA kernel of the project has a transcription in :data:`TRANSCRIPTIONS`, keyed by kernel name; an
unknown kernel raises ``NotImplementedError`` (write its transcription here).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from fakecupy import _names
from fakecupy._array import ndarray

_SCALARS = {"int": np.int32, "unsigned int": np.uint32, "long long": np.int64,
            "unsigned long long": np.uint64,
            "float": np.float32, "double": np.float64, "bool": np.bool_, "size_t": np.uint64}
_MAX_GRID = (2**31 - 1, 65535, 65535)
_MAX_BLOCK = (1024, 1024, 64)

TRANSCRIPTIONS: dict[str, Callable] = {}


def transcription(name: str):
    """Register the NumPy transcription of the CUDA kernel ``name``: ``fn(grid, block, *args)`` with pointer
    arguments as NumPy views of the device buffers (writes land in the device arrays)."""
    def register(fn):
        TRANSCRIPTIONS[name] = fn
        return fn
    return register


def _typedefs(code: str) -> dict[str, str]:
    return {alias: target.strip() for target, alias in re.findall(r"typedef\s+([\w\s]+?)\s+(\w+)\s*;", code)}


def parse_kernel(code: str, name: str) -> list[tuple[str, bool]]:
    """Parameters of ``extern "C" __global__ void name(...)`` in ``code`` as ``(C type, is_pointer)``."""
    match = re.search(r'extern\s+"C"\s+__global__\s+void\s+' + re.escape(name) + r"\s*\(([^)]*)\)", code)
    if match is None:
        raise ValueError(f"CUDA_ERROR_NOT_FOUND: named symbol {name!r} not found in the module")
    aliases = _typedefs(code)
    params = []
    for piece in match.group(1).split(","):
        words = piece.replace("*", " * ").split()
        pointer = "*" in words
        words = [w for w in words if w not in ("const", "*", "__restrict__")][:-1]  # drop the name
        ctype = " ".join(aliases.get(w, w) for w in words)
        if ctype not in _SCALARS:
            raise NotImplementedError(f"fakecupy: kernel {name}: parameter type {ctype!r} is not emulated")
        params.append((ctype, pointer))
    return params


def _dims(value, limits, what: str) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, int | np.integer) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, int | np.integer) for d in dims):
        raise ValueError(f"{what} must be 1 to 3 ints, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    if any(d < 1 for d in dims) or any(d > m for d, m in zip(dims, limits, strict=True)):
        raise ValueError(f"CUDA_ERROR_INVALID_VALUE: {what} {dims} outside 1..{limits}")
    return dims


class RawKernel:
    """One kernel of CUDA source: ``kernel(grid, block, args, shared_mem=0)``."""

    def __init__(self, code: str, name: str, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, jitify=False) -> None:
        self.code, self.name, self.options = code, name, tuple(options)
        self.params = parse_kernel(code, name)
        if name not in TRANSCRIPTIONS:
            raise NotImplementedError(f"fakecupy: no NumPy transcription of CUDA kernel {name!r}; add one to "
                                      f"tests/fakecupy/kernels.py")
        self.launches = 0

    def __call__(self, grid, block, args, *, shared_mem=0, enable_cooperative_groups=False):
        grid = _dims(grid, _MAX_GRID, "grid")
        block = _dims(block, _MAX_BLOCK, "block")
        if block[0] * block[1] * block[2] > 1024:
            raise ValueError(f"CUDA_ERROR_INVALID_VALUE: {block} is more than 1024 threads per block")
        if not isinstance(args, tuple):
            raise TypeError("args must be a tuple")
        if len(args) != len(self.params):
            raise TypeError(f"kernel {self.name}: {len(args)} arguments for {len(self.params)} parameters")
        values = []
        for k, (arg, (ctype, pointer)) in enumerate(zip(args, self.params, strict=True)):
            expected = np.dtype(_SCALARS[ctype])
            if pointer:
                if type(arg) is not ndarray:
                    raise TypeError(f"kernel {self.name} argument {k}: expected a cupy.ndarray for {ctype}*, "
                                    f"got {type(arg).__name__}")
                if arg.dtype != expected:
                    raise TypeError(f"kernel {self.name} argument {k}: {ctype}* needs {expected}, got "
                                    f"{arg.dtype}")
                if not arg.flags.c_contiguous:
                    raise ValueError(f"kernel {self.name} argument {k}: the array is not C-contiguous")
                values.append(arg._a.reshape(-1))
            else:
                if not isinstance(arg, np.generic) or arg.dtype != expected:
                    raise TypeError(f"kernel {self.name} argument {k}: {ctype} needs a numpy.{expected} "
                                    f"scalar, got {type(arg).__name__} {getattr(arg, 'dtype', '')}")
                values.append(arg)
        self.launches += 1
        TRANSCRIPTIONS[self.name](grid, block, *values)

    def __getattr__(self, name: str):
        _names.require("cupy.RawKernel", name)
        raise NotImplementedError(f"fakecupy: RawKernel.{name} is not emulated")


class RawModule:
    """CUDA source holding several kernels: ``module.get_function(name)``."""

    def __init__(self, code: str | None = None, *, path=None, options=(), backend="nvrtc",
                 translate_cucomplex=False, enable_cooperative_groups=False, name_expressions=None,
                 jitify=False) -> None:
        if code is None:
            raise NotImplementedError("fakecupy: RawModule(path=...) is not emulated")
        self.code, self.options = code, tuple(options)

    def get_function(self, name: str) -> RawKernel:
        return RawKernel(self.code, name, self.options)


# -- transcriptions ----------------------------------------------------------------------------------------
@transcription("nms_mask")
def _nms_mask(grid, block, n, row_start, threshold, boxes, areas, groups, mask, col_blocks):
    """detection/nms.py ``nms_mask``: bit ``k`` of ``mask[i - row_start, col_block]`` is set when box ``i``
    and box ``64·col_block + k`` (later than ``i``, same group) have IoU above ``threshold``; only the rows
    and columns that the launch's threads cover are written."""
    n, row_start, col_blocks = int(n), int(row_start), int(col_blocks)
    real = boxes.dtype.type
    boxes = boxes.reshape(-1, 4)
    mask = mask.reshape(-1, col_blocks)
    threads = block[0]
    zero = real(0)
    for by in range(grid[1]):
        row_block = row_start // 64 + by
        rows = min(n - row_block * 64, 64, threads)
        if rows <= 0:
            continue
        i = row_block * 64 + np.arange(rows)  # (R,)
        last = min(grid[0] * 64, n)  # columns of the blocks the grid covers
        if last <= row_block * 64:
            continue
        j = np.arange(row_block * 64, last)  # (J,) from this row block's own column block on
        b, c = boxes[i][:, None, :], boxes[j][None, :, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.fmax(np.fmin(b[..., 2], c[..., 2]) - np.fmax(b[..., 0], c[..., 0]), zero)
            h = np.fmax(np.fmin(b[..., 3], c[..., 3]) - np.fmax(b[..., 1], c[..., 1]), zero)
            inter = w * h
            hit = inter / (areas[i][:, None] + areas[j][None, :] - inter) > threshold  # (R, J)
        hit &= groups[i][:, None] == groups[j][None, :]
        hit &= (j % 64 < threads)[None, :]  # shared memory holds only the columns a thread loaded
        hit &= j[None, :] > i[:, None]  # in the diagonal block, later boxes only
        blocks = (last - row_block * 64 + 63) // 64
        padded = np.zeros((rows, blocks * 64), bool)
        padded[:, :hit.shape[1]] = hit
        weights = np.uint64(1) << np.arange(64, dtype=np.uint64)
        bits = (padded.reshape(rows, blocks, 64).astype(np.uint64) * weights).sum(axis=2, dtype=np.uint64)
        mask[(i - row_start)[:, None], np.arange(row_block, row_block + blocks)[None, :]] = bits


@transcription("nms_gather")
def _nms_gather(grid, block, row_start, row_end, col_blocks, mask, removed, keep):
    """detection/nms.py ``nms_gather``: one block walks rows ``row_start..row_end-1`` in order, keeping a row
    not yet removed and OR-ing its mask into ``removed``."""
    if grid != (1, 1, 1):
        raise ValueError(f"nms_gather is a single-block kernel (shared state in global memory), grid {grid}")
    row_start, row_end, col_blocks = int(row_start), int(row_end), int(col_blocks)
    mask = mask.reshape(-1, col_blocks)
    for i in range(row_start, row_end):
        block_index = i // 64
        if not int(removed[block_index]) >> (i % 64) & 1:
            keep[i] = True
            removed[block_index:] |= mask[i - row_start, block_index:]


@transcription("im2col_nhwc")
def _im2col_nhwc(grid, block, x, cols, total, start, hp, wp, c, oh, ow, pooled, kh, kw, sh, sw, dh, dw, ld):
    """nn/convblock.py ``im2col_nhwc``: element ``idx`` of ``cols`` (row ``idx // ld``, column ``idx % ld``)
    is the input value under kernel tap ``(i, j)``, channel ``ch`` of the row's output pixel (rows ``(n, OH,
    OW)`` or pool-major ``(n, a, b, PH, PW)``), or 1 in the columns past ``kh * kw * c``; the grid-stride loop
    of ``grid * block`` threads covers every element. Index arithmetic as the kernel's, in slices of
    elements (bounded memory)."""
    total, start, hp, wp, c, oh, ow, pooled, kh, kw, sh, sw, dh, dw, ld = (
        int(v) for v in (total, start, hp, wp, c, oh, ow, pooled, kh, kw, sh, sw, dh, dw, ld))
    if grid[0] * block[0] < 1:
        return
    k, ph, pw = kh * kw * c, oh // 2, ow // 2
    per = 4 * ph * pw if pooled else oh * ow
    step = 1 << 20
    for first in range(0, total, step):
        idx = np.arange(first, min(first + step, total), dtype=np.int64)
        row, col = idx // ld, idx % ld
        ones = col >= k
        ch, tap = col % c, col // c
        j, i = tap % kw, tap // kw
        n, r = row // per, row % per
        if pooled:
            ab, q = r // (ph * pw), r % (ph * pw)
            y, xx = 2 * (q // pw) + ab // 2, 2 * (q % pw) + ab % 2
        else:
            y, xx = r // ow, r % ow
        src = (((start + n) * hp + y * sh + i * dh) * wp + xx * sw + j * dw) * c + ch
        values = x[np.where(ones, 0, src)]
        cols[idx] = np.where(ones, cols.dtype.type(1), values)
