"""Tasks for the worker-process tests, in a module the workers import by the name the tests use
(``tests.data.worker_tasks``): a function defined in a test module pickles under the name pytest gave that
module, which a worker cannot import when the test file runs alone."""

from __future__ import annotations

import os
import time


def slow_echo(task: int, count: int) -> tuple[int, int]:
    """``(task, pid)`` after a delay that shrinks with ``task``: later tasks finish first."""
    time.sleep(0.01 * (count - task))
    return task, os.getpid()
