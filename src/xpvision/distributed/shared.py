"""The ordered fold of :class:`~xpvision.distributed.comm.MPICommunicator` through memory the processes of one
host share (an MPI-3 shared-memory window), instead of messages.

Every process writes its blocks' partial sums into their slots of one shared array ``(blocks + 1, n)``; after
a barrier, each process adds a share of the ``n`` columns over the ``blocks`` rows in block order into the
last row (the total); after a second barrier every process copies the total out, and a third lets the next
fold write. Each value is the same chain
of additions one process makes over all the blocks, so the bits are those of the message path and of one
process. An MPI library moves a large message between two processes of one host several times slower than a
copy (bench/README.md has the figures): a step's gradients, one fold of a few MB, then cost a few copies and
three barriers instead of two such messages in turn.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class SharedFold:
    """Folds over the processes of ``node``, an MPI communicator whose processes all run on one host, ranked
    as in the world communicator. The window grows (collectively: every process folds the same sizes in the
    same order) to the largest fold seen."""

    def __init__(self, node: Any, MPI: Any) -> None:
        self.node, self.MPI = node, MPI
        self.rank, self.size = node.Get_rank(), node.Get_size()
        self._window = None
        self._memory = np.empty(0, dtype=np.uint8)

    def fold(self, parts: list[np.ndarray], blocks: int) -> np.ndarray:
        """The sum of every process's partials in block order: ``parts`` (NumPy arrays of one shape and
        dtype) are this process's consecutive blocks of the ``blocks`` in all (dealt as
        :func:`xpvision.distributed.data.part_bounds` deals them) -> an array of their shape."""
        from xpvision.distributed.data import part_bounds

        first, last = part_bounds(blocks, self.size, self.rank)
        if len(parts) != last - first:
            raise ValueError(f"process {self.rank} holds {len(parts)} partial sums, expected "
                             f"{last - first} of {blocks}")
        shape, dtype, n = parts[0].shape, parts[0].dtype, parts[0].size
        # (blocks, n) partial sums, then the (n,) total
        slots = self._slots((blocks + 1) * n * dtype.itemsize).view(dtype).reshape(blocks + 1, n)
        for row, part in zip(slots[first:last], parts, strict=True):
            row.reshape(shape)[...] = part
        self._barrier()
        a, b = part_bounds(n, self.size, self.rank)  # the columns this process adds
        total = slots[blocks, a:b]
        np.copyto(total, slots[0, a:b])
        for row in range(1, blocks):
            total += slots[row, a:b]
        self._barrier()
        total = slots[blocks].reshape(shape).copy()
        self._barrier()  # the next fold's partial sums may lie where this total is
        return total

    def _slots(self, nbytes: int) -> np.ndarray:
        """At least ``nbytes`` of the shared memory (reallocated, collectively, when too small)."""
        if self._memory.size < nbytes:
            if self._window is not None:
                self.node.Barrier()  # nobody reads the old window any more
                self._window.Unlock_all()
                self._window.Free()
            nbytes = max(nbytes, 2 * self._memory.size)
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
