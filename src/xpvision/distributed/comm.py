"""Communicators: the collective operations data-parallel training needs, over MPI (mpi4py) or NCCL (CuPy).

A communicator joins ``size`` processes; process ``rank`` 0 is the root. Operations are collective: every
process calls them in the same order. Arrays are reduced in place:

* :meth:`allreduce` sums a contiguous NumPy or CuPy array over the processes (float32/float64), in the
  MPI library's (or NCCL's) order;
* :meth:`fold` sums per-block partial sums in block order over every process's blocks (the processes holding
  consecutive runs of ``blocks`` blocks, as :func:`xpvision.distributed.data.batch_part` deals them, rank 0
  the first), the additions being those one process makes over all the blocks, in the same order: the same
  bits for any number of processes. When every process runs on one host, through shared memory
  (:mod:`xpvision.distributed.shared`: each process adds a share of the values). Between hosts, by messages.
  Small partials (:data:`GATHER_BYTES`): rank 0 adds its own blocks, and
  one all-gather gives every process that running sum and every other process's blocks, which each adds to
  it in order. Larger ones travel as a running sum: rank ``r`` receives it from rank ``r - 1``, adds its
  blocks and passes it on; the last rank broadcasts the total (about twice an all-reduce's traffic, where an
  all-gather would carry every block);
* :meth:`bcast` overwrites it with the root's copy;
* :meth:`allgather_arrays` gives every process the ``{name: NumPy array}`` dict of every process, in rank
  order (sent as uncompressed ``.npz`` bytes, read back with ``allow_pickle=False``: nothing is pickled).

:class:`MPICommunicator` moves CuPy arrays through host memory (no CUDA-aware MPI is assumed);
:class:`NCCLCommunicator` reduces and broadcasts CuPy arrays with NCCL on the GPU of the process's local rank
(ChainerMN's ``pure_nccl`` design) and uses MPI for everything on the host. Its :meth:`fold` of CuPy
partials stays on the GPU when every process holds as many blocks (one each with the GPU's
:data:`~xpvision.nn.parallel.GPU_REDUCTION_BLOCKS`): one NCCL all-gather of every block, then the blocks
added in order on each device; otherwise the partials go through host memory (one copy per call).
"""

from __future__ import annotations

import functools
import io
import os
from typing import Any

import numpy as np

from xpvision import backend
from xpvision.errors import ConfigError

MPI_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
"""Environment variables that MPI launchers (MPICH/Hydra, Open MPI, MVAPICH, PMIx) set in every process."""


def launched_size() -> int:
    """The number of processes the MPI launcher started this process among (1 when not under ``mpiexec``).
    """
    for name in MPI_SIZE_VARIABLES:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


class SingleCommunicator:
    """One process: every collective is the identity."""

    rank, size, local_rank, local_size = 0, 1, 0, 1

    @property
    def is_root(self) -> bool:
        return True

    def allreduce(self, array: Any) -> None:
        pass

    def fold(self, parts: list, blocks: int | None = None) -> Any:
        from xpvision.nn.parallel import local_fold

        return local_fold(parts)

    def fold_staging(self, count: int, n: int, dtype, xp, blocks: int | None = None) -> None:
        """One process's fold reads its partial sums wherever they lie: no memory of its own to offer."""
        return None

    def bcast(self, array: Any) -> None:
        pass

    def allgather_arrays(self, arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [dict(arrays)]

    def barrier(self) -> None:
        pass

    def abort(self, code: int) -> None:
        os._exit(code)


class MPICommunicator:
    """MPI_COMM_WORLD through mpi4py; CuPy arrays are reduced through host copies. When every process runs
    on one host, :meth:`fold` goes through shared memory (:class:`~xpvision.distributed.shared.SharedFold`;
    ``shared_memory=False`` keeps it to messages, as between hosts)."""

    def __init__(self, shared_memory: bool = True) -> None:
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise ConfigError("training with processes > 1 needs mpi4py and an MPI library: "
                              "pip install 'xpvision[distributed]'") from e
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        launched = launched_size()
        if launched > 1 and self.size != launched:  # each process would train the whole model alone
            library = MPI.Get_library_version().splitlines()[0].strip()
            raise ConfigError(f"the MPI launcher started {launched} processes but mpi4py's MPI library "
                              f"({library}) sees {self.size}: mpi4py loaded another MPI than the launcher's; "
                              f"use that MPI's mpiexec, or point mpi4py at the launcher's library "
                              f"(MPI4PY_LIBMPI=<its libmpi.so>)")
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        self.shared = None  # every process on one host: folds through shared memory (SharedFold)
        if self.local_size == self.size and shared_memory:
            from xpvision.distributed.shared import SharedFold

            self.shared = SharedFold(local, MPI)
        else:
            local.Free()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce(self, array: Any) -> None:
        host = backend.to_numpy(array)
        self.comm.Allreduce(self.MPI.IN_PLACE, _contiguous(host), op=self.MPI.SUM)
        if host is not array:
            array[...] = backend.get_array_module(array).asarray(host)

    def bcast(self, array: Any) -> None:
        host = backend.to_numpy(array)
        self.comm.Bcast(_contiguous(host), root=0)
        if host is not array:
            array[...] = backend.get_array_module(array).asarray(host)

    def fold(self, parts: list, blocks: int) -> Any:
        """The sum of every process's ``parts`` (one array per block, all of one shape; ``blocks`` in all),
        added in block order (see the module docstring); on the host, returned on the device of ``parts``."""
        from xpvision.nn.parallel import local_fold

        xp = backend.get_array_module(parts[0])
        host = parts if xp is np else list(backend.to_numpy(xp.stack(parts)))  # one copy for all blocks
        if self.shared is not None:
            return xp.asarray(self.shared.fold(host, blocks))
        if blocks * host[0].nbytes <= GATHER_BYTES:
            mine = np.stack([local_fold(host)] if self.rank == 0 else host)  # rank 0: its running sum
            base, extra = divmod(blocks, self.size)
            rows = [1] + [base + (r < extra) for r in range(1, self.size)]
            gathered = np.empty((sum(rows), *host[0].shape), dtype=host[0].dtype)
            self.comm.Allgatherv(mine, [gathered, [n * host[0].size for n in rows]])
            return xp.asarray(local_fold(list(gathered)))
        total = None
        if self.rank > 0:
            total = np.empty(host[0].shape, dtype=host[0].dtype)
            self.comm.Recv(total, source=self.rank - 1, tag=FOLD_TAG)
        for part in host:
            if total is None:
                total = part.copy()
            else:
                total += part
        if self.rank < self.size - 1:
            self.comm.Send(total, dest=self.rank + 1, tag=FOLD_TAG)
        self.comm.Bcast(total, root=self.size - 1)
        return xp.asarray(total)

    def fold_staging(self, count: int, n: int, dtype, xp, blocks: int) -> np.ndarray | None:
        """A ``(count, n)`` array for this process's partial sums of a fold of ``blocks`` that :meth:`fold`
        reads without copying them (the shared window's rows, see
        :meth:`~xpvision.distributed.shared.SharedFold.staging`), or ``None`` (other hosts, arrays of ``xp``
        other than NumPy, a fold of several chunks). Collective: every process calls it, with the same sizes,
        before the fold of those partial sums."""
        if self.shared is None or xp is not np:
            return None
        return self.shared.staging(count, n, dtype, blocks)

    def allgather_arrays(self, arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        from xpvision.data.shards import npz_bytes

        data = np.frombuffer(npz_bytes(arrays), dtype=np.uint8)
        sizes = np.zeros(self.size, dtype=np.int64)
        self.comm.Allgather(np.array([data.size], dtype=np.int64), sizes)
        received = np.empty(int(sizes.sum()), dtype=np.uint8)
        self.comm.Allgatherv(data, [received, sizes.tolist()])
        ends = np.cumsum(sizes)
        result = []
        for start, end in zip(ends - sizes, ends, strict=True):
            with np.load(io.BytesIO(received[start:end].tobytes()), allow_pickle=False) as npz:
                result.append({key: npz[key] for key in npz.files})
        return result

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int) -> None:
        self.comm.Abort(code)


GATHER_BYTES = 64 * 1024
"""Up to this size of all blocks' partial sums together, :meth:`MPICommunicator.fold` all-gathers them."""
FOLD_TAG = 17
"""MPI tag of the running sums :meth:`MPICommunicator.fold` passes from process to process."""

UNIQUE_ID_BYTES = 128
"""Size of NCCL's ``ncclUniqueId``."""


def pack_unique_id(unique_id: bytes | tuple[int, ...]) -> np.ndarray:
    """``cupy.cuda.nccl.get_unique_id()`` as ``(UNIQUE_ID_BYTES + 1,)`` int16 for an MPI broadcast: the bytes
    as signed chars, then 1 when CuPy gave ``bytes`` (CuPy 14) or 0 for a tuple of ints (earlier CuPy)."""
    is_bytes = isinstance(unique_id, bytes | bytearray)
    chars = np.frombuffer(bytes(unique_id), dtype=np.int8) if is_bytes else np.asarray(unique_id)
    if chars.shape != (UNIQUE_ID_BYTES,):
        raise ValueError(f"an NCCL unique id has {UNIQUE_ID_BYTES} bytes, got {chars.shape}")
    return np.concatenate([chars.astype(np.int16), [int(is_bytes)]]).astype(np.int16)


def unpack_unique_id(packed: np.ndarray) -> bytes | tuple[int, ...]:
    """The inverse of :func:`pack_unique_id`: the id in the form ``NcclCommunicator`` of that CuPy takes."""
    chars = packed[:UNIQUE_ID_BYTES]
    return chars.astype(np.int8).tobytes() if packed[UNIQUE_ID_BYTES] else tuple(int(v) for v in chars)


class NCCLCommunicator(MPICommunicator):
    """MPI on the host plus an NCCL communicator for CuPy arrays; process ``r`` drives GPU ``local_rank``."""

    def __init__(self) -> None:
        super().__init__()
        nccl = backend.nccl_module()
        count = backend.gpu_count()
        if self.local_size > count:
            raise ConfigError(f"{self.local_size} processes on this host but only {count} GPUs: with "
                              f"device 'gpu' each process needs its own GPU")
        backend.use_gpu(self.local_rank)
        packed = np.zeros(UNIQUE_ID_BYTES + 1, dtype=np.int16)
        if self.rank == 0:
            packed[:] = pack_unique_id(nccl.get_unique_id())
        self.comm.Bcast(packed, root=0)
        self.nccl = nccl
        self.nccl_comm = nccl.NcclCommunicator(self.size, unpack_unique_id(packed), self.rank)

    def _nccl_type(self, array: Any) -> int:
        types = {np.dtype(np.float32): self.nccl.NCCL_FLOAT32, np.dtype(np.float64): self.nccl.NCCL_FLOAT64,
                 np.dtype(np.int64): self.nccl.NCCL_INT64}
        if array.dtype not in types:
            raise TypeError(f"NCCL collectives take float32, float64 or int64 arrays, got {array.dtype}")
        return types[array.dtype]

    def allreduce(self, array: Any) -> None:
        if not backend.is_gpu_array(array):
            super().allreduce(array)
            return
        buf = _contiguous(array)
        self.nccl_comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._nccl_type(buf),
                                 self.nccl.NCCL_SUM, backend.current_stream_ptr())

    def bcast(self, array: Any) -> None:
        if not backend.is_gpu_array(array):
            super().bcast(array)
            return
        buf = _contiguous(array)
        self.nccl_comm.bcast(buf.data.ptr, buf.size, self._nccl_type(buf), 0, backend.current_stream_ptr())

    def fold(self, parts: list, blocks: int) -> Any:
        """:meth:`MPICommunicator.fold`, on the GPU by one NCCL all-gather when ``blocks`` divides evenly
        over the processes (each then holds ``blocks / size`` consecutive ones; the test is the same on every
        process, so all take the same path)."""
        from xpvision.nn.parallel import local_fold

        if not backend.is_gpu_array(parts[0]) or blocks % self.size:
            return super().fold(parts, blocks)
        cp = backend.get_array_module(parts[0])
        mine = cp.stack(parts)  # (blocks / size, *shape)
        gathered = cp.empty((blocks, *mine.shape[1:]), dtype=mine.dtype)  # rank r's blocks at r * blocks/size
        self.nccl_comm.allGather(mine.data.ptr, gathered.data.ptr, mine.size, self._nccl_type(mine),
                                 backend.current_stream_ptr())
        return local_fold(list(gathered))


def _contiguous(array: Any) -> Any:
    if not array.flags.c_contiguous:
        raise ValueError("collectives reduce contiguous arrays in place; got a non-contiguous view")
    return array


@functools.cache
def world(device: str = "cpu") -> SingleCommunicator | MPICommunicator:
    """The communicator of this process: single when not started by an MPI launcher, else MPI (NCCL for
    ``device='gpu'``)."""
    if launched_size() == 1:
        return SingleCommunicator()
    return NCCLCommunicator() if device == "gpu" else MPICommunicator()
