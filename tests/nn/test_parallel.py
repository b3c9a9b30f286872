import threading

import numpy as np
import pytest

from xpvision.nn import parallel


@pytest.mark.parametrize("threads", [1, 2])
def test_run_chunks_covers_every_sample_once(threads):
    seen = np.zeros(23, np.int64)
    workers = set()
    lock = threading.Lock()

    def work(start, stop, worker):
        with lock:
            seen[start:stop] += 1
            workers.add(worker)

    try:
        parallel.set_num_threads(threads)
        used = parallel.run_chunks(work, 23, 5, np)
    finally:
        parallel.set_num_threads(2)
    np.testing.assert_array_equal(seen, 1)
    assert workers == set(range(used))
    if threads == 2 and parallel._blas_controller() is not None:
        assert used == 2


def test_bad_thread_count():
    with pytest.raises(ValueError, match="positive integer"):
        parallel.set_num_threads(0)
    assert parallel.get_num_threads() >= 1
