"""The trainer shared by every task.

A *task* adapts the trainer to a problem (:class:`Task`; the tasks live in :mod:`xpvision.tasks`):
``task.forward_loss(model, batch) -> (loss, dout)`` and ``task.evaluate(model, loader) -> {metric: float}``
with ``task.primary_metric`` among the keys.

Reproducibility and resuming
----------------------------
At the start of epoch ``e`` (0-based) the trainer re-seeds :mod:`xpvision.nn.rng` (dropout) from
``(seed, e)`` and calls ``train_loader.set_epoch(e)`` (shuffle order), so nothing depends on process history.
After every epoch it writes one atomic ``.npz`` checkpoint (no pickle): ``model.*`` (weights and buffers),
``optimizer.*``, ``scheduler.*``, ``epoch`` (epochs completed), ``history`` (JSON) and ``fingerprint`` (JSON
of the model spec, optimizer and schedule hyper-parameters, seed and clipping). :meth:`Trainer.fit` resumes
from an existing checkpoint, so a run killed at any moment and started again ends with the same weights, bit
for bit, as a run never interrupted. A checkpoint that cannot be read, or that another configuration wrote, is
an error (never a silent restart from scratch).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from xpvision import atomic, backend
from xpvision.distributed.data_parallel import SingleProcess
from xpvision.errors import ConfigError, TrainingError, WeightsError
from xpvision.io import read_npz
from xpvision.nn import rng
from xpvision.nn.base import Layer
from xpvision.optim import Optimizer, clip_grad_norm
from xpvision.schedules import LRSchedule

DIVERGENCE_FACTOR = 1e6
"""Training stops, like on a NaN loss, when a batch loss exceeds this multiple of the first one."""

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
EpochCallback = Callable[[int, dict[str, float]], None]


class Task(Protocol):
    """What the trainer needs from a task."""

    primary_metric: str

    def forward_loss(self, model: Layer, batch: dict) -> tuple[float, Any]: ...

    def evaluate(self, model: Layer, loader: Iterable[dict]) -> dict[str, float]: ...


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of ``xpvision.nn.rng`` for epoch ``epoch`` (0-based) of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class Trainer:
    """Mini-batch training with per-epoch evaluation, atomic checkpoints and exact resume.

    ``fit`` returns the history: one dict per epoch with ``epoch`` (1-based), ``train_loss`` (sample-weighted
    mean over the epoch), ``lr`` (of the first parameter group during the epoch), ``val_<metric>`` for each
    metric of ``task.evaluate`` when a ``val_loader`` is given, and ``time_s`` (wall time of the epoch,
    evaluation included). ``scheduler.step()`` is called once per epoch. ``grad_clip`` clips the global
    gradient norm before each step. ``callbacks`` are called after each checkpoint as ``cb(epoch, record)``
    (or ``cb.on_epoch_end(epoch, record)``); epochs restored from a checkpoint are not replayed to them.
    ``resume=False`` ignores (and then overwrites) an existing checkpoint. Build the optimizer after moving
    the model to its device (see :mod:`xpvision.optim`). Training that diverges stops with a
    :class:`TrainingError` before the next checkpoint, so the last good one stays: a NaN/inf loss or gradient
    norm, a batch loss over :data:`DIVERGENCE_FACTOR` times the first of this ``fit``, or weights that are no
    longer finite at the end of an epoch.
    ``parallel``: the data-parallel hook (a :class:`xpvision.distributed.DataParallel` when several processes
    train together; only its root writes the checkpoint and calls the callbacks); one process by default.
    """

    def __init__(self, model: Layer, task: Task, optimizer: Optimizer, *, epochs: int,
                 checkpoint_path: str | os.PathLike, scheduler: LRSchedule | None = None, seed: int = 0,
                 grad_clip: float | None = None, callbacks: Sequence[Any] = (), progress: bool = True,
                 resume: bool = True, parallel: Any = None) -> None:
        if not (isinstance(epochs, int) and epochs >= 1):
            raise ConfigError(f"epochs must be an int >= 1, got {epochs!r}")
        if not (isinstance(seed, int) and seed >= 0):
            raise ConfigError(f"seed must be an int >= 0, got {seed!r}")
        if grad_clip is not None and not (isinstance(grad_clip, int | float) and grad_clip > 0):
            raise ConfigError(f"grad_clip must be a positive number or None, got {grad_clip!r}")
        self.model, self.task, self.optimizer, self.scheduler = model, task, optimizer, scheduler
        self.epochs, self.seed, self.grad_clip = epochs, seed, grad_clip
        self.checkpoint_path = Path(checkpoint_path)
        self.callbacks = [getattr(cb, "on_epoch_end", cb) for cb in callbacks]
        self.progress, self.resume = progress, resume
        self._first_loss: float | None = None  # first training loss of this fit(), the divergence yardstick
        self.parallel = SingleProcess() if parallel is None else parallel
        self.fingerprint = {
            "model": model.spec(),
            "optimizer": optimizer.hyperparameters(),
            "scheduler": None if scheduler is None else scheduler.config(),
            "seed": seed,
            "grad_clip": grad_clip,
        }

    # -- training -------------------------------------------------------------------------------------------
    def fit(self, train_loader: Iterable[dict], val_loader: Iterable[dict] | None = None) -> list[dict]:
        """Train from the checkpoint (if any) to ``epochs``; return the full history (restored epochs too)."""
        history = self._restore() if self.resume and self.checkpoint_path.exists() else []
        if len(history) >= self.epochs:
            log.info("checkpoint %s already holds %d epochs; nothing to train", self.checkpoint_path,
                     len(history))
        self.parallel.synchronize(self.model)
        for epoch in range(len(history), self.epochs):
            start = time.perf_counter()
            rng.manual_seed(epoch_seed(self.seed, epoch))
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.lr}
            record["train_loss"] = self._train_epoch(train_loader, epoch)
            if val_loader is not None:
                metrics = self.parallel.evaluate(self.task, self.model, val_loader)
                record.update({f"val_{name}": float(value) for name, value in metrics.items()})
            if self.scheduler is not None:
                self.scheduler.step()
            record["time_s"] = time.perf_counter() - start
            self._check_weights(epoch)
            history.append(record)
            if not self.parallel.is_root:
                continue
            self._save_checkpoint(history)
            log.info("epoch %d/%d %s", epoch + 1, self.epochs,
                     " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
            for callback in self.callbacks:
                callback(epoch + 1, record)
        return history

    def _train_epoch(self, loader: Iterable[dict], epoch: int) -> float:
        """One pass over ``loader``; returns the sample-weighted mean training loss."""
        from tqdm.auto import tqdm

        self.model.train()
        needed = self.model.needs_input_grad
        self.model.needs_input_grad = False  # nobody needs d(loss)/d(images): skips the first conv's dX
        try:
            total, count = 0.0, 0
            show = self.progress and self.parallel.is_root and sys.stderr.isatty()
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch", leave=False,
                       disable=not show)
            for step, batch in enumerate(bar, start=1):
                self.optimizer.zero_grad()
                loss, dout, n = self.parallel.forward_loss(self.task, self.model, batch)
                if not math.isfinite(loss):
                    raise TrainingError(self._diverged(f"the loss became {loss}", epoch, step))
                if self._first_loss is None:
                    self._first_loss = loss
                elif self._first_loss > 0 and loss > DIVERGENCE_FACTOR * self._first_loss:
                    raise TrainingError(self._diverged(
                        f"the loss became {loss:.4g}, over {DIVERGENCE_FACTOR:g} x its first value "
                        f"{self._first_loss:.4g}", epoch, step))
                self.model.backward(dout)
                self.parallel.reduce_gradients(self.optimizer)
                if self.grad_clip is not None:
                    norm = clip_grad_norm(self.optimizer, self.grad_clip)
                    if not math.isfinite(norm):
                        raise TrainingError(self._diverged(f"the gradient norm became {norm}", epoch, step))
                self.optimizer.step()
                total += loss * n
                count += n
                if show:
                    bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        finally:
            self.model.needs_input_grad = needed
        if count == 0:
            raise ConfigError("the training loader yielded no batches")
        return total / count

    def _check_weights(self, epoch: int) -> None:
        """Stop before checkpointing weights that are no longer finite (a step that overflowed)."""
        for name, layer, key in self.model.named_parameters():
            value = layer.params[key]
            if not bool(backend.get_array_module(value).isfinite(value).all()):
                raise TrainingError(self._diverged(f"weight {name} is no longer finite", epoch,
                                                   "end"))

    def _diverged(self, what: str, epoch: int, step: int | str) -> str:
        kept = (f"the last good checkpoint {self.checkpoint_path} (after epoch {epoch}) is left intact"
                if epoch > 0 else "no checkpoint was written")
        return (f"training stopped at epoch {epoch + 1}, step {step}: {what}; {kept}. Lower the learning "
                f"rate or set grad_clip")

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _save_checkpoint(self, history: list[dict]) -> None:
        arrays = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"optimizer.{k}": v for k, v in self.optimizer.state_dict().items()})
        if self.scheduler is not None:
            arrays.update({f"scheduler.{k}": v for k, v in self.scheduler.state_dict().items()})
        arrays.update(format=np.array(CHECKPOINT_FORMAT), epoch=np.array(len(history)),
                      history=np.array(json.dumps(history)),
                      fingerprint=np.array(json.dumps(self.fingerprint, sort_keys=True)))
        atomic.save_npz(self.checkpoint_path, arrays)

    def _restore(self) -> list[dict]:
        """Load the checkpoint into the model, optimizer and schedule; return its history."""
        path = self.checkpoint_path
        state = read_npz(path, what="checkpoint")
        missing = [k for k in ("format", "epoch", "history", "fingerprint") if k not in state]
        if missing:
            raise WeightsError(f"checkpoint {path} lacks {missing}; it is not a checkpoint of this trainer")
        if int(state["format"]) != CHECKPOINT_FORMAT:
            raise WeightsError(f"checkpoint {path} has format {int(state['format'])}, "
                               f"expected {CHECKPOINT_FORMAT}")
        saved = json.loads(str(state["fingerprint"]))
        current = json.loads(json.dumps(self.fingerprint, sort_keys=True))
        differing = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if differing:
            raise TrainingError(f"checkpoint {path} was written by a different configuration (differs in "
                                f"{differing}); delete it, or choose another checkpoint path, to start over")

        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

        try:
            self.model.load_state_dict(part("model."), strict=True)
            self.optimizer.load_state_dict(part("optimizer."))
            if self.scheduler is not None:
                self.scheduler.load_state_dict(part("scheduler."))
        except (WeightsError, KeyError) as e:
            raise WeightsError(f"checkpoint {path}: {e}") from None
        history = json.loads(str(state["history"]))
        if len(history) != int(state["epoch"]):
            raise WeightsError(f"checkpoint {path}: history has {len(history)} epochs, "
                               f"'epoch' says {int(state['epoch'])}")
        log.info("resumed from %s after epoch %d", path, len(history))
        return history
