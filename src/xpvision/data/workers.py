"""Data preparation on every core: tasks cut by index alone, run in worker processes, results in task order.

A caller cuts its work into tasks whose boundaries depend on the data alone (fixed chunks of scene or image
indices), never on the worker count, and consumes the results in task order: the files it writes are then
the same bytes for one worker or many. One worker (or a single task) runs in this process, with no pool.

Workers are started by ``forkserver`` (``spawn`` where there is none), never ``fork``: the stage process may
hold MLflow's threads and their locks, which a forked child would inherit in whatever state they were in.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Generic, TypeVar

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


def ordered_map(fn: Callable[[T], R], tasks: Iterable[T], workers: int | None,
                what: str) -> OrderedResults[R]:
    """``fn(task)`` for each of ``tasks``, in task order, computed by up to ``workers`` processes.

    ``fn`` and the tasks must pickle (a module-level function, or a ``functools.partial`` of one). A project
    error raised by ``fn`` is raised here as itself, without the worker's traceback attached; a worker that
    dies (killed, out of memory) raises :class:`XPVisionError` naming ``what``. See :class:`OrderedResults`
    for leaving early.
    """
    tasks = list(tasks)
    return OrderedResults(fn, tasks, min(resolve_workers(workers), len(tasks)), what)


class OrderedResults(Generic[R]):
    """The iterator :func:`ordered_map` returns, and a context manager.

    The end of the iteration, an error, :meth:`close` or the end of a ``with`` block cancel the tasks not
    started and wait for the running ones, so no worker still writes after them (callers write into folders
    that are deleted on error). An iterator dropped unfinished without them waits for nothing: its pool runs
    the few tasks queued ahead and ends in the background. Waiting there could hang for good, because the
    garbage collector may drop it inside any thread, even one that holds the lock a thread takes to end.
    """

    def __init__(self, fn: Callable[[T], R], tasks: list[T], count: int, what: str) -> None:
        self._what = what
        self._pool = None
        if count <= 1:
            self._in_process = map(fn, tasks)  # one worker, or one task: no pool, no pickling
            return
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            # the server (one per process) imports the task's module, NumPy and Pillow with it, once: the
            # workers forked from it start with them imported
            context.set_forkserver_preload([getattr(fn, "func", fn).__module__])
        self._pool = ProcessPoolExecutor(count, mp_context=context)
        self._submit = functools.partial(self._pool.submit, fn)
        self._queue = iter(tasks)
        self._pending = deque()
        self._ahead = count * (1 + AHEAD)

    def __iter__(self) -> OrderedResults[R]:
        return self

    def __next__(self) -> R:
        if self._pool is None:
            return next(self._in_process)
        try:  # a worker that dies breaks the pool: the next submit raises too
            self._hand_out()  # the first call hands out the first tasks
            if not self._pending:
                raise StopIteration
            result = self._pending.popleft().result()
            self._hand_out()
        except BaseException as e:
            self.close()
            if isinstance(e, XPVisionError):
                raise e from None  # the message names the file; the worker's traceback adds nothing
            if isinstance(e, BrokenProcessPool):
                raise XPVisionError(f"{self._what}: a worker process ended abruptly (killed, or out of "
                                    "memory?); XPVISION_NUM_THREADS=1 runs it in one process") from e
            raise
        return result

    def _hand_out(self) -> None:
        """Submits tasks until ``workers * (1 + AHEAD)`` are handed out and not yet consumed."""
        tasks = itertools.islice(self._queue, self._ahead - len(self._pending))
        self._pending.extend(map(self._submit, tasks))

    def close(self) -> None:
        """Cancels the tasks not started and waits for the running ones to end; the iteration is over."""
        if self._pool is None:
            self._in_process = iter(())
            return
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._queue = iter(())
        self._pending.clear()

    def __enter__(self) -> OrderedResults[R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
