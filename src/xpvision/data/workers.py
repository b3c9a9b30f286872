"""Data preparation on every core: tasks cut by index alone, run in worker processes, results in task order.

A caller cuts its work into tasks whose boundaries depend on the data alone (fixed chunks of scene or image
indices), never on the worker count, and consumes the results in task order: the files it writes are then
the same bytes for one worker or many. One worker (or a single task) runs in this process, with no pool.

Workers are started by ``forkserver`` (``spawn`` where there is none), never ``fork``: the stage process may
hold MLflow's threads and their locks, which a forked child would inherit in whatever state they were in.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from xpvision.errors import XPVisionError

T = TypeVar("T")
R = TypeVar("R")
AHEAD = 2
"""Tasks queued per worker beyond the one it runs: keeps every worker busy while bounding the results held in
memory (a task's result may be a chunk of decoded images)."""


def resolve_workers(workers: int | None) -> int:
    """``workers``, or when ``None`` :func:`xpvision.nn.parallel.default_num_processes`
    (``XPVISION_NUM_THREADS``, else every core this process may run on)."""
    if workers is None:
        from xpvision.nn.parallel import default_num_processes

        return default_num_processes()
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    return workers


def ordered_map(fn: Callable[[T], R], tasks: Iterable[T], workers: int | None, what: str) -> Iterator[R]:
    """``fn(task)`` for each of ``tasks``, yielded in task order, computed by up to ``workers`` processes.

    ``fn`` and the tasks must pickle (a module-level function, or a ``functools.partial`` of one). A project
    error raised by ``fn`` is raised here as itself, without the worker's traceback attached; a worker that
    dies (killed, out of memory) raises :class:`XPVisionError` naming ``what``. Leaving the iteration early,
    or an error, cancels the tasks not started and waits for the running ones, so no worker still writes
    once this returns (callers write into folders that are deleted on error).
    """
    tasks = list(tasks)
    count = min(resolve_workers(workers), len(tasks))
    if count <= 1:
        for task in tasks:
            yield fn(task)
        return
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        # the server (one per process) imports the task's module, NumPy and Pillow with it, once: the workers
        # forked from it start with them imported
        context.set_forkserver_preload([getattr(fn, "func", fn).__module__])
    pool = ProcessPoolExecutor(count, mp_context=context)
    try:
        queue = iter(tasks)
        pending = deque(pool.submit(fn, task) for task in itertools.islice(queue, count * (1 + AHEAD)))
        while pending:
            try:
                result = pending.popleft().result()
            except XPVisionError as e:
                raise e from None  # the message names the file; the worker's traceback adds nothing
            except BrokenProcessPool as e:
                raise XPVisionError(f"{what}: a worker process ended abruptly (killed, or out of memory?); "
                                    "XPVISION_NUM_THREADS=1 runs it in one process") from e
            pending.extend(pool.submit(fn, task) for task in itertools.islice(queue, 1))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

