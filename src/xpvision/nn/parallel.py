"""Splitting a layer's batch over CPU threads, with results that do not depend on how many.

NumPy releases the GIL inside GEMMs, copies and element-wise loops, so Python threads, each running its own
blocks of the batch with BLAS at one thread, keep every core busy through the element-wise work too (a
multi-threaded BLAS alone leaves it single-threaded). BLAS threads are limited with ``threadpoolctl`` for the
duration of a threaded region; without it the blocks run one after another on the caller's thread. On the GPU
everything runs on the caller's thread.

Thread count: by default the number of cores this process may run on (its CPU affinity, what
``os.sched_getaffinity`` reports: a container's or ``taskset``'s limit, not the machine's core count), at most
:data:`MAX_DEFAULT_THREADS`; ``XPVISION_NUM_THREADS`` in the environment, or :func:`set_num_threads`,
overrides it (any count). More cores are used by processes (:mod:`xpvision.distributed`); data preparation
runs in :func:`default_num_processes` worker processes (the same variable, every core by default).

Results are bit-identical for every thread count: callers cut the batch into blocks whose boundaries depend
on the batch size and the shapes alone (the :func:`global_blocks` below, each cut further by
:func:`xpvision.nn.functional.block_and_chunk`), and each block's partial sums are kept apart and reduced in
block order (:func:`ordered_sum`), whichever thread computed them.

Sums over the batch (weight gradients, batch-norm statistics and their backward sums, the loss) are formed
the same way over a *global* batch that several processes share (:mod:`xpvision.distributed`): the batch is
cut into :func:`global_blocks`, whose boundaries depend on the global batch size alone; a process holds
whole blocks (its :class:`BatchLayout`), computes each block's partial sum from that block alone, and
``layout.fold`` adds the partials of every block of every process in block order. One process, two or three
then perform the same additions in the same order: the results are the same bits for any number of
processes (up to :data:`REDUCTION_BLOCKS`) and threads.

On the GPU each process's part is one block (:data:`GPU_REDUCTION_BLOCKS`): one GEMM and one reduction per
layer over the whole part, since kernel launches, not arithmetic, bound a GPU step. The results there are
the same for any thread count (one thread drives the device) and equal up to rounding, not in every bit,
for different numbers of processes.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from xpvision import backend
from xpvision.errors import ConfigError
from xpvision.nn import heap

ENV_THREADS = "XPVISION_NUM_THREADS"
"""Environment variable overriding the default thread count and the data preparation's worker processes (a
positive integer)."""

MAX_DEFAULT_THREADS = 4
"""The default thread count's ceiling. Past it, the threads wait for one another on Python's interpreter lock
(each block's element-wise calls are short), so more threads make a step slower, not faster (bench/README.md,
"Threads and processes on 16 cores")."""

GIL_SWITCH_INTERVAL = 2e-4
"""Seconds (``sys.setswitchinterval``; Python's default is 5 ms) a thread running Python code may keep the
interpreter lock from another that asks for it, while the engine's threads run blocks: a thread back from a
GEMM or a copy (which run without the lock) gets the lock within this time and feeds its core again, instead
of idling while the other runs its Python between NumPy calls."""

REDUCTION_BLOCKS = 16
"""Blocks a global batch is cut into for its sums (fewer when it holds fewer samples): 1, 2, 4, 8 or 16
processes get equal shares, and one process's threads take several blocks. With more processes than this,
each process gets one block and the blocks (so the bits) depend on the process count."""

GPU_REDUCTION_BLOCKS = 1
"""Blocks of a global batch per process on the GPU: a GPU step's time is that of its kernel launches, which
grow with the blocks (bench/README.md has the counts)."""

_state: dict = {"threads": None, "pool": None, "blas": None, "layout": None}


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask (``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # platforms without sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def default_num_threads() -> int:
    """``XPVISION_NUM_THREADS`` when set, else :func:`available_cores` up to :data:`MAX_DEFAULT_THREADS`;
    a bad value raises ``ConfigError``."""
    return _environment_count() or min(available_cores(), MAX_DEFAULT_THREADS)


def default_num_processes() -> int:
    """Worker processes for the CPU work done in processes (preparing data, :mod:`xpvision.data.workers`):
    ``XPVISION_NUM_THREADS`` when set, else every one of :func:`available_cores` (no ceiling: processes do
    not share an interpreter lock); a bad value raises ``ConfigError``."""
    return _environment_count() or available_cores()


def _environment_count() -> int | None:
    """``XPVISION_NUM_THREADS`` as a positive integer, ``None`` when unset or empty."""
    value = os.environ.get(ENV_THREADS, "").strip()
    if not value:
        return None
    if not value.isdecimal() or int(value) < 1:
        raise ConfigError(f"environment variable {ENV_THREADS}: expected a positive integer, got {value!r}")
    return int(value)


def set_num_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads per layer (1 disables threading; ``None``: back to the default)."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if _state["pool"] is not None:
        _state["pool"].shutdown(wait=True)
    _state.update(threads=threads, pool=None)


def get_num_threads() -> int:
    """The thread count in use (the default of :func:`default_num_threads` until one is set)."""
    if _state["threads"] is None:
        _state["threads"] = default_num_threads()
    return _state["threads"]


def _blas_controller():
    """The ``threadpoolctl`` controller of NumPy's BLAS, or ``None`` when threadpoolctl is not installed."""
    if _state["blas"] is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _state["blas"] = False
        else:
            _state["blas"] = ThreadpoolController().select(user_api="blas")
    return _state["blas"] or None


def single_threaded_blas(xp=np):
    """Context manager: NumPy's BLAS at one thread inside (a no-op on the GPU or without threadpoolctl).

    Every layer GEMM runs under it: a multi-threaded OpenBLAS call leaves its worker threads spinning for a
    while afterwards, stealing the cores from the threads of the next layer.
    """
    controller = _blas_controller() if xp is np else None
    return controller.limit(limits=1) if controller is not None else contextlib.nullcontext()


def run_blocks(work: Callable[[int, int, int], None], blocks: list[tuple[int, int]], xp) -> int:
    """Call ``work(start, stop, worker)`` for each block ``(start, stop)`` of ``blocks``.

    BLAS runs at one thread (the blocks' GEMMs are small: a multi-threaded BLAS spends more on waking its
    threads than it gains, badly so on a busy machine). With more than one thread and more than one block, the
    threads take the blocks in order as they become free, the calling thread among them as worker 0 and the
    pool's as workers 1, 2, ... (``worker``: so a worker may keep per-thread scratch buffers); which thread
    runs a block must not change its result, so partial sums are kept per block, not per worker. Returns the
    number of workers used.
    """
    threads = min(get_num_threads(), len(blocks))
    controller = _blas_controller() if xp is np else None
    if xp is np:
        heap.configure()
    if controller is None or threads == 1:
        with single_threaded_blas(xp):
            for start, stop in blocks:
                work(start, stop, 0)
        return 1
    if _state["pool"] is None:
        _state["pool"] = ThreadPoolExecutor(get_num_threads() - 1, thread_name_prefix="xpvision-nn")
    queue = iter(blocks)
    lock = threading.Lock()

    def run_worker(worker: int) -> None:
        while True:
            with lock:
                block = next(queue, None)
            if block is None:
                return
            work(*block, worker)

    with controller.limit(limits=1), _gil_handover():
        # the caller works too: one thread fewer to wake per call (bench/README.md)
        futures = [_state["pool"].submit(run_worker, w) for w in range(1, threads)]
        try:
            run_worker(0)
        finally:
            for future in futures:
                future.result()
    return threads


@contextlib.contextmanager
def _gil_handover():
    """Inside, Python's switch interval is at most :data:`GIL_SWITCH_INTERVAL` (restored on exit)."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, GIL_SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def ordered_sum(parts: dict[int, object]):
    """Sum of the per-block partial results ``parts`` (block index -> array), added in block order: the same
    bits whichever threads computed them."""
    keys = sorted(parts)
    total = parts[keys[0]].copy()
    for key in keys[1:]:
        total += parts[key]
    return total


def reduction_blocks(xp=np) -> int:
    """Blocks a global batch is cut into for its sums on the device of the array module ``xp``:
    :data:`REDUCTION_BLOCKS` on the CPU, :data:`GPU_REDUCTION_BLOCKS` on the GPU."""
    return REDUCTION_BLOCKS if xp is np else GPU_REDUCTION_BLOCKS


def global_blocks(total: int, processes: int = 1,
                  block_count: int = REDUCTION_BLOCKS) -> list[tuple[int, int]]:
    """``(start, stop)`` of the blocks a global batch of ``total`` samples is cut into for its sums:
    ``min(total, max(block_count, processes))`` blocks as equal as possible, the first ones one sample
    longer (``block_count``: :func:`reduction_blocks` of the device). They depend on ``total`` alone for up
    to ``block_count`` processes."""
    count = min(total, max(block_count, processes))
    base, extra = divmod(total, count)
    starts = [i * base + min(i, extra) for i in range(count + 1)]
    return list(itertools.pairwise(starts))


def local_fold(parts: list):
    """The sum of ``parts`` (arrays of one shape) added in list order: one process's ``fold``."""
    return ordered_sum(dict(enumerate(parts)))


class BatchLayout:
    """Where this process's ``count`` samples lie in a global batch of ``total`` (from sample ``start``),
    and how a sum over that batch is formed.

    ``blocks``: the ``(start, stop)`` sample ranges, in this process's batch, of the :func:`global_blocks` it
    holds (whole blocks, in order; ``block_count`` in the global batch, see :func:`reduction_blocks`).
    ``fold(parts)``: given one partial sum per block of ``blocks`` (arrays of one shape, each computed from
    its block alone), the sum over every block of the global batch, added in block order (:func:`local_fold`
    for one process; a collective over the processes otherwise, which every process calls in the same
    order). :meth:`fold_into` is ``fold`` for the sums nobody reads before the optimizer step (weight and
    bias gradients): with ``defer`` they wait for :meth:`flush`, which folds them all in one collective, so
    the processes meet once per backward pass instead of once per layer; ``staging(rows, n, dtype, xp)``
    may give the ``(rows, n)`` array it lays them out in (one ``fold`` reads without a copy, e.g. shared
    memory), or ``None`` for a new array.
    """

    def __init__(self, total: int, start: int = 0, count: int | None = None, processes: int = 1,
                 fold: Callable[[list], object] = local_fold, block_count: int = REDUCTION_BLOCKS,
                 defer: bool = False, staging: Callable | None = None) -> None:
        count = total - start if count is None else count
        if start < 0 or count <= 0 or start + count > total:
            raise ValueError(f"a part of {count} samples from {start} lies outside a batch of {total}")
        bounds = global_blocks(total, processes, block_count)
        mine = [(a - start, b - start) for a, b in bounds if start <= a < start + count]
        if not mine or mine[0][0] != 0 or mine[-1][1] != count:
            raise ValueError(f"samples {start}:{start + count} of a batch of {total} are not whole blocks "
                             f"of {bounds}")
        self.total, self.start, self.count, self.blocks, self.fold = total, start, count, mine, fold
        self.defer = defer
        self.staging = staging
        self._deferred: list[tuple[list, object, Callable]] = []  # (parts, out, view) of each fold_into

    def fold_into(self, parts: list, out, view: Callable[[object], object] | None = None) -> None:
        """``out[...] = view(fold(parts))`` (``view``: none, or a function giving the sum in ``out``'s shape,
        e.g. a weight matrix as the ``(O, I, kh, kw)`` weights: the parts are then added in their own,
        contiguous layout and rearranged once); at once, or at :meth:`flush` when the layout defers (``out``
        must then stay untouched until the flush; ``parts`` too, which may be a layer's reused buffers)."""
        if len(parts) != len(self.blocks):
            raise ValueError(f"{len(parts)} partial sums for the {len(self.blocks)} blocks of this part")
        view = view or (lambda total: total)
        if self.defer:
            self._deferred.append((parts, out, view))
        else:
            out[...] = view(self.fold(parts))

    @property
    def pending(self) -> int:
        """The number of sums :meth:`fold_into` deferred that :meth:`flush` has not written yet."""
        return len(self._deferred)

    def flush(self) -> None:
        """Fold and write every deferred sum: one ``fold`` per dtype and device of their parts, the sums laid
        end to end in it. Addition is element-wise, so each sum gets the bits its own ``fold`` would give."""
        deferred, self._deferred = self._deferred, []
        groups: dict[tuple, list[tuple[list, object, Callable]]] = {}
        for item in deferred:
            parts = item[0]
            groups.setdefault((backend.device_of(parts[0]), parts[0].dtype.str), []).append(item)
        for items in groups.values():
            first = items[0][0][0]
            ends = list(itertools.accumulate(parts[0].size for parts, _, _ in items))
            xp = backend.get_array_module(first)
            rows, n = len(self.blocks), ends[-1]
            stacked = None if self.staging is None else self.staging(rows, n, first.dtype, xp)
            if stacked is None:
                stacked = xp.empty((rows, n), dtype=first.dtype)  # (blocks, all sums' values)
            for (parts, _, _), end in zip(items, ends, strict=True):
                for row, part in zip(stacked, parts, strict=True):
                    row[end - part.size:end].reshape(part.shape)[...] = part
            total = self.fold(list(stacked))  # (sums,)
            for (parts, out, view), end in zip(items, ends, strict=True):
                out[...] = view(total[end - parts[0].size:end].reshape(parts[0].shape))

    @property
    def equal_runs(self) -> list[tuple[int, int, int]]:
        """``blocks`` as runs of consecutive blocks of one size, ``(start, size, count)`` each (at most two:
        :func:`global_blocks` makes the first ones one sample longer), for stacked calls of one GEMM per
        block."""
        runs: list[tuple[int, int, int]] = []
        for a, b in self.blocks:
            if runs and runs[-1][1] == b - a:
                runs[-1] = (runs[-1][0], b - a, runs[-1][2] + 1)
            else:
                runs.append((a, b - a, 1))
        return runs

    def block_rows(self, rows: int) -> list[tuple[int, int]]:
        """``blocks`` in rows of an array holding ``rows`` rows (``rows / count`` per sample)."""
        per = rows // self.count
        if per * self.count != rows:
            raise ValueError(f"{rows} rows do not divide into {self.count} samples")
        return [(a * per, b * per) for a, b in self.blocks]


@contextlib.contextmanager
def batch_layout(layout: BatchLayout):
    """Inside, the batch being processed is ``layout``'s part of a global batch (:func:`current_layout`)."""
    previous, _state["layout"] = _state["layout"], layout
    try:
        yield
    finally:
        _state["layout"] = previous


def whole_batch(count: int, xp=np) -> BatchLayout:
    """The layout of a batch of ``count`` samples held whole by this process, on the device of ``xp``."""
    return _whole_batch(count, reduction_blocks(xp))


@functools.lru_cache(maxsize=64)
def _whole_batch(count: int, block_count: int) -> BatchLayout:
    """One layout per size, shared by every layer and step (each layer asks for it on every call): it folds
    at once (no ``defer``), so it holds no state."""
    return BatchLayout(count, block_count=block_count)


def current_layout(count: int, xp=np) -> BatchLayout:
    """The layout of a batch of ``count`` samples on the device of ``xp``: the one of :func:`batch_layout`
    when inside it, else :func:`whole_batch`. Layers call it in their forward and keep it for their
    backward."""
    layout = _state["layout"]
    if layout is None:
        return whole_batch(count, xp)
    if layout.count != count:
        raise ValueError(f"a batch of {count} samples inside the layout of a part of {layout.count}")
    return layout
