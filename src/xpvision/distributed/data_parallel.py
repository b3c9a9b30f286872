"""The trainer's hook for data-parallel training (ChainerMN's design) and its single-process default.

:class:`~xpvision.train.Trainer` calls, around each step, ``forward_loss`` (instead of the task's),
``reduce_gradients`` (after the backward), ``evaluate`` (instead of the task's), ``synchronize`` (once,
before training) and writes checkpoints and calls its callbacks only where ``is_root``.

With ``size`` processes (:class:`DataParallel`):

* the root's weights and buffers are broadcast to every process before training;
* each process runs the forward and backward passes on its part of the global batch
  (:class:`~xpvision.distributed.data.ShardedLoader`), inside :func:`xpvision.nn.rng.batch_part` so dropout
  masks are those the whole batch would get;
* a loss is a sum divided by a normaliser (the batch size, or the sum of the class weights of the counted
  entries): the normalisers ``n_r`` and ``n_r * loss_r`` are summed over the processes, giving the loss of the
  whole batch, and ``dloss/dout`` is scaled by ``n_r / sum(n)`` before the backward, so the sum of the
  processes' gradients is the gradient of the whole batch's loss;
* the optimizer's flat gradient buffers are packed into one buffer and summed over the processes with one
  all-reduce (MPI on NumPy, NCCL on CuPy), then unpacked;
* batch normalisation layers share their batch statistics (:func:`sync_batch_norm`).

Sums over processes are computed in MPI's (or NCCL's) reduction order, fixed for a given number of
processes: results are reproducible run to run, and equal to one process's up to float rounding (the
partial sums are added in another order than one process adds them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from xpvision import backend
from xpvision.nn import rng
from xpvision.nn.base import Layer


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

    def __init__(self, comm: Any, model: Layer) -> None:
        self.comm = comm
        self.rank, self.size, self.is_root = comm.rank, comm.size, comm.is_root
        sync_batch_norm(model, comm)

    def synchronize(self, model: Layer) -> None:
        """Broadcast the root's parameters and buffers (packed into one buffer per dtype and device)."""
        arrays = [store[key] for _, layer in model.named_layers()
                  for store in (layer.params, layer.buffers) for key in sorted(store)]
        for group in _by_kind(arrays):
            packed = _pack(group)
            self.comm.bcast(packed)
            _unpack(packed, group)

    def forward_loss(self, task: Any, model: Layer, batch: dict) -> tuple[float, Any, int]:
        """``(loss of the whole batch, this part's dloss/dout scaled for the gradient sum, batch size)``."""
        total, start = batch["global_batch"]
        with rng.batch_part(total, start):
            loss, dout = task.forward_loss(model, batch)
        local = float(task.loss.normalizer)
        sums = np.array([local, loss * local], dtype=np.float64)
        self.comm.allreduce(sums)
        weight = local / sums[0] if sums[0] > 0 else 0.0
        dout = dout * dout.dtype.type(weight)
        return (float(sums[1] / sums[0]) if sums[0] > 0 else 0.0), dout, total

    def reduce_gradients(self, optimizer: Any) -> None:
        """Sum the gradients over the processes: one all-reduce per dtype and device (one in practice)."""
        buffers = list(optimizer.flat_grads())
        for group in _by_kind(buffers):
            if len(group) == 1:
                self.comm.allreduce(group[0])
                continue
            packed = _pack(group)
            self.comm.allreduce(packed)
            _unpack(packed, group)

    def evaluate(self, task: Any, model: Layer, loader: Iterable[dict]) -> dict[str, float]:
        """The task's metrics over every process's block of the evaluation set (gathered exactly)."""
        from xpvision.distributed.evaluate import evaluate_gathered

        return evaluate_gathered(task, model, loader, self.comm)


def sync_batch_norm(model: Layer, comm: Any) -> int:
    """Make every batch normalisation layer of ``model`` use the whole batch across the processes of
    ``comm`` (sets the layers' ``group_sum``); returns how many layers were changed."""
    from xpvision.nn.norm import _BatchNorm

    def group_sum(values):
        out = values.copy()
        comm.allreduce(out)
        return out

    layers = [layer for _, layer in model.named_layers() if isinstance(layer, _BatchNorm)]
    for layer in layers:
        layer.group_sum = group_sum if comm.size > 1 else None
    return len(layers)


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
