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
