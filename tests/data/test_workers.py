"""ordered_map: results in task order from worker processes, in-process for one worker, clear errors."""

from __future__ import annotations

import functools
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests.data.worker_tasks import slow_echo

from xpvision.atomic import write_text
from xpvision.data.images import read_image
from xpvision.data.workers import ordered_map, resolve_workers
from xpvision.errors import DataError, XPVisionError
from xpvision.nn import parallel


@pytest.mark.parametrize("workers", [2, 3])
def test_results_come_in_task_order_from_other_processes(workers):
    results = list(ordered_map(functools.partial(slow_echo, count=10), range(10), workers, "echo"))
    assert [task for task, _ in results] == list(range(10))
    assert os.getpid() not in {pid for _, pid in results}


def test_one_worker_runs_in_this_process_without_pickling():
    results = list(ordered_map(lambda task: (task, os.getpid()), range(4), 1, "lambda"))  # a lambda: no pool
    assert results == [(task, os.getpid()) for task in range(4)]


def test_default_is_every_available_core_or_the_environment(monkeypatch):
    monkeypatch.delenv(parallel.ENV_THREADS, raising=False)
    monkeypatch.setattr(parallel, "available_cores", lambda: 12)
    assert resolve_workers(None) == 12  # no ceiling of MAX_DEFAULT_THREADS for processes
    monkeypatch.setenv(parallel.ENV_THREADS, "3")
    assert resolve_workers(None) == 3 and resolve_workers(5) == 5
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            resolve_workers(bad)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_project_error_in_a_worker_is_raised_as_itself(tmp_path, workers):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(DataError) as expected:
        read_image(missing)
    with pytest.raises(DataError) as raised:
        list(ordered_map(read_image, [missing, missing], workers, "images"))
    assert str(raised.value) == str(expected.value) and str(missing) in str(raised.value)
    if workers > 1:
        assert raised.value.__cause__ is None  # not the worker's pickled traceback
    assert multiprocessing.active_children() == []  # the error ended the pool


def test_a_worker_that_dies_is_a_clear_error():
    with pytest.raises(XPVisionError, match="exit tasks: a worker process ended abruptly"):
        list(ordered_map(os._exit, [3, 3, 3], 2, "exit tasks"))
    assert multiprocessing.active_children() == []


def test_leaving_early_cancels_the_tasks_not_started(tmp_path):
    paths = [tmp_path / f"{i:03d}.txt" for i in range(100)]
    results = ordered_map(functools.partial(write_text, text="x"), paths, 2, "writes")
    next(results)
    results.close()  # returns once the running tasks are done
    assert list(results) == []  # and the iteration is over
    written = sorted(tmp_path.iterdir())
    time.sleep(0.3)
    assert sorted(tmp_path.iterdir()) == written  # no worker still writes
    assert len(written) < len(paths)  # only the tasks handed out ahead of the consumer ran


def test_an_iterator_the_garbage_collector_drops_unfinished_waits_for_nothing():
    # The collector may run inside any thread, even one that holds `threading`'s lock a thread takes to start
    # and to end: waiting there for the pool's threads to end would hang for good.
    script = textwrap.dedent("""
        import functools, gc, threading
        from tests.data.worker_tasks import slow_echo
        from xpvision.data.workers import ordered_map
        results = ordered_map(functools.partial(slow_echo, count=10), range(10), 2, "echo")
        next(results)
        cycle = [results]
        cycle.append(cycle)  # only the collector can free it
        del results, cycle
        gc.disable()
        with threading._active_limbo_lock:
            gc.collect()
        print("collected")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0 and done.stdout == "collected\n", done.stderr


def test_a_with_block_ends_the_pool_on_an_error_in_its_body(tmp_path):
    paths = [tmp_path / f"{i:03d}.txt" for i in range(100)]
    write = functools.partial(write_text, text="x")
    with pytest.raises(KeyError), ordered_map(write, paths, 2, "writes") as results:
        next(results)
        raise KeyError("the consumer's own error")
    written = sorted(tmp_path.iterdir())
    time.sleep(0.3)
    assert sorted(tmp_path.iterdir()) == written and len(written) < len(paths)
