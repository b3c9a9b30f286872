"""The ordered fold of :class:`~xpvision.distributed.comm.MPICommunicator` through memory the processes of one
host share (an MPI-3 shared-memory window), instead of messages.

Every process writes its blocks' partial sums into their slots of one shared array ``(blocks + 1, n)``; after
a barrier, each process adds a share of the ``n`` values over the ``blocks`` rows in block order into the
last row (the total); after a second barrier every process copies the total out, and a third lets the next
fold write. Large folds go chunk by chunk, so the shared memory stays small; a fold that fits in one chunk
may have its partial sums written straight into their slots (:meth:`SharedFold.staging`). Each value is the
same chain of additions one process makes over all the blocks: the bits of the message path and of one
process. A step's gradients, one fold of a few MB, then cost a few copies and three barriers instead of two
large messages in turn, which an MPI library moves between two processes of one host several times slower
than a copy (bench/README.md has the figures).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xpvision.distributed.data import part_bounds

WINDOW_BYTES = 17 << 20
"""The most shared memory a fold uses: a chunk of each block's partial sums and of the total, ``blocks + 1``
rows (1 MiB each for 16 blocks), whatever the model's size, within a container's small ``/dev/shm`` (Docker's
is 64 MiB)."""


class SharedFold:
    """Folds over the processes of ``node``, an MPI communicator whose processes all run on one host, ranked
    as in the world communicator. Large folds go in chunks of ``blocks + 1`` rows of at most
    :data:`WINDOW_BYTES` in all; the window grows (collectively: every process folds the same sizes in the
    same order) to the largest chunk seen."""

    def __init__(self, node: Any, MPI: Any) -> None:
        self.node, self.MPI = node, MPI
        self.rank, self.size = node.Get_rank(), node.Get_size()
        self._window = None
        self._memory = np.empty(0, dtype=np.uint8)

    def fold(self, parts: list[np.ndarray], blocks: int) -> np.ndarray:
        """The sum of every process's partials in block order: ``parts`` (NumPy arrays of one shape and
        dtype) are this process's consecutive blocks of the ``blocks`` in all (dealt as
        :func:`xpvision.distributed.data.part_bounds` deals them) -> an array of their shape."""
        first, last = part_bounds(blocks, self.size, self.rank)
        if len(parts) != last - first:
            raise ValueError(f"process {self.rank} holds {len(parts)} partial sums, expected "
                             f"{last - first} of {blocks}")
        shape, dtype, n = parts[0].shape, parts[0].dtype, parts[0].size
        values = [part.reshape(-1) for part in parts]  # (n,) each: a copy only of a non-contiguous part
        total = np.empty(n, dtype=dtype)
        step = _chunk_values(blocks, dtype)
        for start in range(0, n, step):
            stop = min(start + step, n)
            self._fold_chunk([v[start:stop] for v in values], blocks, first, total[start:stop])
        return total.reshape(shape)

    def _fold_chunk(self, values: list[np.ndarray], blocks: int, first: int, out: np.ndarray) -> None:
        """``out`` ``(m,)`` = the block-order sum of every process's ``values`` (this one's: blocks
        ``first``, ``first + 1``, ... of ``blocks``; ``(m,)`` each)."""
        m, dtype = out.size, out.dtype
        # (blocks, m) partial sums, then the (m,) total
        slots = self._slots((blocks + 1) * m * dtype.itemsize).view(dtype).reshape(blocks + 1, m)
        for row, value in zip(slots[first:first + len(values)], values, strict=True):
            if not _same_memory(row, value):  # else written there through staging()
                row[...] = value
        self._barrier()
        a, b = part_bounds(m, self.size, self.rank)  # the values this process adds
        total = slots[blocks, a:b]
        np.copyto(total, slots[0, a:b])
        for row in range(1, blocks):
            total += slots[row, a:b]
        self._barrier()
        out[...] = slots[blocks]
        self._barrier()  # the next chunk's partial sums may lie where this total is

    def staging(self, count: int, n: int, dtype, blocks: int) -> np.ndarray | None:
        """Where this process may write its ``count`` blocks' partial sums ``(count, n)`` of a fold of
        ``blocks`` (collective, as the fold itself) so that the fold copies nothing in: their rows of the
        shared window when the fold fits in one chunk, else ``None``."""
        dtype = np.dtype(dtype)
        if n > _chunk_values(blocks, dtype):
            return None
        first, _ = part_bounds(blocks, self.size, self.rank)
        slots = self._slots((blocks + 1) * n * dtype.itemsize).view(dtype).reshape(blocks + 1, n)
        return slots[first:first + count]

    def _slots(self, nbytes: int) -> np.ndarray:
        """At least ``nbytes`` of the shared memory (reallocated, collectively, when too small)."""
        if self._memory.size < nbytes:
            if self._window is not None:
                self.node.Barrier()  # nobody reads the old window any more
                self._window.Unlock_all()
                self._window.Free()
            self._window = self.MPI.Win.Allocate_shared(nbytes if self.rank == 0 else 0, 1, comm=self.node)
            self._window.Lock_all(self.MPI.MODE_NOCHECK)
            buffer, _ = self._window.Shared_query(0)  # rank 0's allocation, mapped into every process
            self._memory = np.frombuffer(buffer, dtype=np.uint8)[:nbytes]
        return self._memory[:nbytes]

    def _barrier(self) -> None:
        """The MPI-3 shared-memory pattern: writes visible (``Sync``), every process arrives, then reads."""
        self._window.Sync()
        self.node.Barrier()
        self._window.Sync()


def _chunk_values(blocks: int, dtype: np.dtype) -> int:
    """The values of each block folded at a time: ``blocks + 1`` rows of them fill :data:`WINDOW_BYTES`."""
    return max(1, WINDOW_BYTES // ((blocks + 1) * dtype.itemsize))


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` and ``b`` are the same values in memory (one array, or views of the same bytes)."""
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.strides == b.strides
