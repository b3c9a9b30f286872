"""Splitting a layer's batch over CPU threads.

NumPy releases the GIL inside GEMMs, copies and element-wise loops, so two Python threads, each running its
own cache-sized chunks of the batch with BLAS at one thread, keep both cores busy through the element-wise
work too (a multi-threaded BLAS alone leaves them single-threaded). BLAS threads are limited with
``threadpoolctl`` for the duration of a threaded region; without it the chunks run one after another on the
caller's thread. On the GPU everything runs on the caller's thread (one chunk holds the whole batch).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_state: dict = {"threads": min(2, os.cpu_count() or 1), "pool": None, "blas": None}


def set_num_threads(threads: int) -> None:
    """Use ``threads`` CPU threads per layer (1 disables threading)."""
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if _state["pool"] is not None:
        _state["pool"].shutdown(wait=True)
    _state.update(threads=threads, pool=None)


def get_num_threads() -> int:
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


def run_chunks(work: Callable[[int, int, int], None], n: int, step: int, xp) -> int:
    """Call ``work(start, stop, worker)`` for the chunks ``[start, stop)`` of ``range(n)`` of length ``step``.

    On the CPU, BLAS is limited to one thread (the chunks' GEMMs are small: a multi-threaded BLAS spends more
    on waking its threads than it gains, badly so on a busy machine). With more than one thread and more than
    one chunk, the chunks are dealt round-robin to the threads (``worker`` = thread index, so a worker may
    keep per-thread scratch buffers and partial sums), which run concurrently. Returns the number of workers
    used.
    """
    chunks = [(start, min(start + step, n)) for start in range(0, n, step)]
    threads = min(_state["threads"], len(chunks))
    controller = _blas_controller() if xp is np else None
    if controller is None or threads == 1:
        with single_threaded_blas(xp):
            for start, stop in chunks:
                work(start, stop, 0)
        return 1
    if _state["pool"] is None:
        _state["pool"] = ThreadPoolExecutor(_state["threads"], thread_name_prefix="xpvision-nn")

    def run_worker(worker: int) -> None:
        for start, stop in chunks[worker::threads]:
            work(start, stop, worker)

    with controller.limit(limits=1):
        futures = [_state["pool"].submit(run_worker, w) for w in range(threads)]
        for future in futures:
            future.result()
    return threads
