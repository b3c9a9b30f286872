"""Communicators: the NCCL unique id crosses MPI as integers and comes back in the form the installed CuPy
takes; one process folds block sums in order."""

import numpy as np
import pytest

from xpvision.distributed.comm import UNIQUE_ID_BYTES, pack_unique_id, unpack_unique_id


def test_a_bytes_id_as_cupy_14_gives_it_comes_back_as_the_same_bytes():
    unique_id = bytes(np.random.default_rng(0).integers(0, 256, UNIQUE_ID_BYTES, dtype=np.uint8))
    packed = pack_unique_id(unique_id)
    assert packed.dtype == np.int16 and packed.shape == (UNIQUE_ID_BYTES + 1,)
    assert unpack_unique_id(packed.copy()) == unique_id


def test_a_tuple_id_as_earlier_cupy_gives_it_comes_back_as_the_same_tuple():
    unique_id = tuple(int(v) for v in np.random.default_rng(1).integers(-128, 128, UNIQUE_ID_BYTES))
    assert unpack_unique_id(pack_unique_id(unique_id)) == unique_id


def test_an_id_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="128 bytes"):
        pack_unique_id(b"\x01" * 12)


def test_one_process_folds_its_blocks_in_order_and_an_unknown_reduction_is_refused():
    from xpvision.distributed import DataParallel, SingleCommunicator
    from xpvision.errors import ConfigError
    from xpvision.nn import Linear

    parts = [np.float32([1.0]), np.float32([1e8]), np.float32([-1e8])]
    np.testing.assert_array_equal(SingleCommunicator().fold(parts, 3), np.float32([0.0]))  # (1 + 1e8) - 1e8
    with pytest.raises(ConfigError, match="reduction: expected one of ordered, allreduce, got 'sum'"):
        DataParallel(SingleCommunicator(), Linear(2, 2), "sum")


def test_an_mpi4py_of_another_mpi_than_the_launchers_is_a_clear_error(tmp_path):
    """A launcher that started 3 processes (its size variable set) while mpi4py's MPI sees one process (as
    when mpi4py loads another MPI library than the launcher's): an error, not 3 processes training alone."""
    import os
    import subprocess
    import sys

    code = ("from xpvision.distributed.comm import MPICommunicator\n"
            "from xpvision.errors import ConfigError\n"
            "try:\n    MPICommunicator()\nexcept ConfigError as e:\n    print(e)\n")
    env = {**os.environ, "OMPI_COMM_WORLD_SIZE": "3"}  # Open MPI's variable: MPICH ignores it
    for name in ("PMI_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, check=True).stdout
    assert "started 3 processes but mpi4py's MPI library" in out and "sees 1" in out


FOLD_RANKS = """
import numpy as np
from xpvision.distributed.comm import MPICommunicator
from xpvision.distributed.data import part_bounds
from xpvision.distributed.shared import WINDOW_BYTES
from xpvision.nn.parallel import local_fold

shared, messages = MPICommunicator(), MPICommunicator(shared_memory=False)
assert shared.shared is not None and messages.shared is None, "one host: the shared-memory fold"
rs = np.random.default_rng(0)
cases = [(16, (3, 5), np.float32), (4, (70000,), np.float32), (3, (7,), np.float64), (5, (2,), np.float32),
         (16, (40, 33), np.float32)]
chunked = [(4, (2000000, 2), np.float32), (3, (1200000,), np.float64)]  # several chunks of WINDOW_BYTES
for blocks, shape, dtype in cases * 20 + chunked:  # the window reused and reallocated, sums over old totals
    every = [(rs.standard_normal(shape) * 10.0 ** rs.integers(-6, 7, shape)).astype(dtype)
             for _ in range(blocks)]  # magnitudes 1e-6 .. 1e6: any other order of additions shows
    first, last = part_bounds(blocks, shared.size, shared.rank)
    expected = local_fold(every)
    for name, comm in (("shared", shared), ("messages", messages)):
        total = comm.fold(every[first:last], blocks)
        assert total.dtype == dtype and total.shape == shape, name
        assert np.array_equal(total, expected), f"{name}: {blocks} blocks of {shape}"
        staged = comm.fold_staging(last - first, expected.size, dtype, np, blocks)  # as a deferred flush does
        fits = name == "shared" and (blocks + 1) * expected.nbytes <= WINDOW_BYTES
        assert (staged is not None) == fits, name
        if staged is None:
            staged = np.empty((last - first, expected.size), dtype=dtype)
        else:
            assert np.shares_memory(staged, comm.shared._memory), name
        for row, part in zip(staged, every[first:last], strict=True):
            row[...] = part.reshape(-1)
        total = comm.fold(list(staged), blocks)
        assert np.array_equal(total, expected.reshape(-1)), f"{name}, staged: {blocks} blocks of {shape}"
assert shared.shared._memory.size <= WINDOW_BYTES, "bounded, whatever the fold"
shared.barrier()  # every process got here: an assertion anywhere ends mpiexec with an error instead
if shared.rank == 0:
    print("folded", shared.size)
"""


@pytest.mark.slow
@pytest.mark.parametrize("k", [2, 3])
def test_the_shared_memory_and_the_message_folds_add_as_one_process_does(tmp_path, k):
    """Through the shared window (the one-host default) and by messages (as between hosts), each of 102
    folds of growing and shrinking sizes (the window is reallocated; the largest go in chunks), float32 and
    float64, gives the bits of one process adding every block in order; so does each fold of partial sums
    written where ``fold_staging`` says: the window's rows exactly when the fold fits in one chunk."""
    import os
    import subprocess
    import sys

    from tests.distributed.test_data_parallel import BIN, src_path

    script = tmp_path / "fold_ranks.py"
    script.write_text(FOLD_RANKS)
    done = subprocess.run([str(BIN / "mpiexec"), "-n", str(k), sys.executable, str(script)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": src_path()})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["folded", str(k)]
