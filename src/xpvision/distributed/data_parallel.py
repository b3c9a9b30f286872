"""The trainer's hook for data-parallel training (ChainerMN's design) and its single-process default.

:class:`~xpvision.train.Trainer` calls, around each step, ``forward_loss`` (instead of the task's),
``reduce_gradients`` (after the backward), ``evaluate`` (instead of the task's), ``synchronize`` (once,
before training) and writes checkpoints and calls its callbacks only where ``is_root``.

With ``size`` processes (:class:`DataParallel`):

* the root's weights and buffers are broadcast to every process before training;
* a global batch is cut into blocks whose boundaries depend on its size alone
  (:func:`xpvision.nn.parallel.global_blocks`); each process reads whole blocks
  (:class:`~xpvision.distributed.data.ShardedLoader`) and runs the forward and backward passes on them inside
  :func:`xpvision.nn.parallel.batch_layout` (and :func:`xpvision.nn.rng.batch_part`, so dropout masks are
  those the whole batch would get);
* every sum over the batch (the loss and its normaliser, batch-norm statistics and the sums of their backward,
  the weight and bias gradients of convolutions (transposed ones too), linear and batch-norm layers) is formed
  by the layer or loss from one partial sum per block and ``layout.fold``, which adds the blocks of every
  process in block order (:meth:`~xpvision.distributed.comm.MPICommunicator.fold`, ``reduction='ordered'``,
  the default): one process and any number of them perform the same additions in the same order, so the
  loss, the gradients and the trained weights are the same bits for any number of processes (up to
  :data:`xpvision.nn.parallel.REDUCTION_BLOCKS`) and threads. The sums the backward pass itself does not
  read (the weight and bias gradients of convolutions and linear layers) wait in the layout (``fold_into``)
  and ``reduce_gradients`` folds them together: one collective per step where each layer would make one, so
  the processes meet once per backward pass instead of at every layer;
* with ``reduction='allreduce'`` each process adds its own blocks and the totals are summed with an
  all-reduce (MPI's or NCCL's order, fixed for a given number of processes): equal to one process's result
  up to float rounding, and reproducible run to run;
* gradients of layers that do not sum over the batch through the layout (:attr:`Layer.batch_summed` false:
  none of xpvision's, a user's own layers perhaps) are summed with one all-reduce of a packed buffer after
  the backward, in the all-reduce's order.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from xpvision import backend
from xpvision.errors import ConfigError
from xpvision.nn import parallel, rng
from xpvision.nn.base import Layer

REDUCTIONS = ("ordered", "allreduce")


class SingleProcess:
    """The default hook: one process does everything."""

    rank, size, is_root = 0, 1, True

    def synchronize(self, model: Layer) -> None:
        pass

    def forward_loss(self, task: Any, model: Layer, batch: dict) -> tuple[float, Any, int]:
        """``(loss, dloss/dout, samples)`` of the batch."""
        loss, dout = task.forward_loss(model, batch)
        return loss, dout, len(batch["images"])

    def reduce_gradients(self, optimizer: Any) -> None:
        pass

    def evaluate(self, task: Any, model: Layer, loader: Iterable[dict]) -> dict[str, float]:
        return task.evaluate(model, loader)


class DataParallel:
    """Data-parallel training over a communicator (see the module docstring)."""

    def __init__(self, comm: Any, model: Layer, reduction: str = "ordered") -> None:
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction: expected one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.comm, self.model = comm, model
        self.rank, self.size, self.is_root = comm.rank, comm.size, comm.is_root
        self.reduction = reduction
        self.block_count = parallel.reduction_blocks(backend.xp_for(model.device))
        self._layout: parallel.BatchLayout | None = None  # the last forward's: its gradient sums wait in it

    def synchronize(self, model: Layer) -> None:
        """Broadcast the root's parameters and buffers (packed into one buffer per dtype and device)."""
        arrays = [store[key] for _, layer in model.named_layers()
                  for store in (layer.params, layer.buffers) for key in sorted(store)]
        for group in _by_kind(arrays):
            packed = _pack(group)
            self.comm.bcast(packed)
            _unpack(packed, group)

    def forward_loss(self, task: Any, model: Layer, batch: dict) -> tuple[float, Any, int]:
        """``(loss of the whole batch, this part's dloss/dout, global batch size)``: the task's loss, run
        on this process's blocks inside the batch's layout, is already the whole batch's."""
        total, start = batch["global_batch"]
        blocks = len(parallel.global_blocks(total, self.size, self.block_count))
        fold, staging = self._allreduce, None
        if self.reduction == "ordered":
            fold = functools.partial(self.comm.fold, blocks=blocks)
            staging = functools.partial(self.comm.fold_staging, blocks=blocks)
        if self._layout is not None and self._layout.pending:
            raise RuntimeError("a backward's gradient sums were never folded: call reduce_gradients after "
                               "each backward, before the next forward_loss")
        self._layout = parallel.BatchLayout(total, start, len(batch["images"]), self.size, fold,
                                            self.block_count, defer=True, staging=staging)
        with rng.batch_part(total, start), parallel.batch_layout(self._layout):
            loss, dout = task.forward_loss(model, batch)
        return loss, dout, total

    def reduce_gradients(self, optimizer: Any) -> None:
        """Fold the weight and bias gradients the layers left in the batch's layout (every layer's in one
        collective), then sum over the processes those the layers did not sum through the layout: one
        all-reduce per dtype and device of those of the trainable layers whose ``batch_summed`` is false."""
        if self._layout is not None:
            self._layout.flush()
        grads = [layer.grads[key] for _, layer in self.model.named_layers()
                 if layer.trainable and not layer.batch_summed for key in sorted(layer.grads)]
        for group in _by_kind(grads):
            packed = _pack(group)
            self.comm.allreduce(packed)
            _unpack(packed, group)

    def evaluate(self, task: Any, model: Layer, loader: Iterable[dict]) -> dict[str, float]:
        """The task's metrics over every process's block of the evaluation set (gathered exactly)."""
        from xpvision.distributed.evaluate import evaluate_gathered

        return evaluate_gathered(task, model, loader, self.comm)

    def _allreduce(self, parts: list) -> Any:
        """This process's blocks added in order, then summed over the processes by an all-reduce."""
        total = parallel.local_fold(parts)
        self.comm.allreduce(total)
        return total


def _by_kind(arrays: list[Any]) -> list[list[Any]]:
    """``arrays`` grouped by ``(device, dtype)``, in order."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for a in arrays:
        groups.setdefault((backend.device_of(a), str(a.dtype)), []).append(a)
    return list(groups.values())


def _pack(arrays: list[Any]) -> Any:
    """One contiguous 1-D copy of ``arrays`` (same dtype and device)."""
    xp = backend.get_array_module(arrays[0])
    return xp.concatenate([a.reshape(-1) for a in arrays])


def _unpack(packed: Any, arrays: list[Any]) -> None:
    """Copy ``packed`` back into ``arrays`` (the inverse of :func:`_pack`)."""
    offset = 0
    for a in arrays:
        a[...] = packed[offset:offset + a.size].reshape(a.shape)
        offset += a.size
