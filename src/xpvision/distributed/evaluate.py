"""Evaluation over the processes of data-parallel training: each process runs the task's prediction pass on
its run of the evaluation batches (each one a batch one process would evaluate: the same predictions, bit for
bit), every process gathers all runs' raw results (labels, detections, confusion counts) and computes the
task's metrics from them, exactly as one process would from the whole set: VOC/COCO AP from every process's
detections, never an average of per-process metrics. The mean loss combines the processes' loss sums (equal
to one process's up to float64 rounding). A process without evaluation batches contributes nothing."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np

from xpvision.nn.base import Layer


def evaluate_gathered(task: Any, model: Layer, loader: Iterable[dict], comm: Any) -> dict[str, float]:
    """``task.evaluate`` over the union of every process's ``loader`` (blocks in rank order)."""
    gather = GATHERED.get(type(task).__name__)
    if gather is None:
        raise TypeError(f"no gathered evaluation for {type(task).__name__}; known: {sorted(GATHERED)}")
    return gather(task, model, loader, comm)


def _classification(task, model, loader, comm) -> dict[str, float]:
    loss, y_true, y_pred = task.predict(model, loader) if len(loader) else (0.0, _no_labels(), _no_labels())
    parts = comm.allgather_arrays({"loss_sum": np.array([loss * len(y_true)]), "y_true": y_true,
                                   "y_pred": y_pred})
    y_true = np.concatenate([p["y_true"] for p in parts])
    y_pred = np.concatenate([p["y_pred"] for p in parts])
    return {"accuracy": float((y_true == y_pred).mean()),
            "loss": float(sum(float(p["loss_sum"][0]) for p in parts) / len(y_true))}


def _detection(task, model, loader, comm) -> dict[str, float]:
    from xpvision.detection.predict import Detections
    from xpvision.tasks.detection import detection_metrics

    detections, truth, loss = (task.predict(model, loader) if len(loader)
                               else ([], {"boxes": [], "labels": [], "difficult": []}, 0.0))
    local = {"loss_sum": np.array([loss * len(detections)])}
    for name, values in (("det_" + f, [getattr(d, f) for d in detections]) for f in Detections._fields):
        local.update(_ragged(name, values))
    for key, values in truth.items():
        local.update(_ragged("gt_" + key, values))
    parts = comm.allgather_arrays(local)
    all_detections = [Detections(*fields) for p in parts
                      for fields in zip(*(_unragged(p, "det_" + f) for f in Detections._fields), strict=True)]
    all_truth = {key: [a for p in parts for a in _unragged(p, "gt_" + key)] for key in truth}
    metrics = detection_metrics(all_detections, all_truth, task.spec.num_classes)[0]
    return metrics | {"loss": float(sum(float(p["loss_sum"][0]) for p in parts) / len(all_detections))}


def _segmentation(task, model, loader, comm) -> dict[str, float]:
    from xpvision.segmentation.metrics import metrics_from_confusion

    full = (task.evaluate_full(model, loader) if len(loader)
            else {"confusion": np.zeros((task.num_classes, task.num_classes), np.int64), "loss": 0.0})
    confusion = np.asarray(full["confusion"], dtype=np.int64)
    parts = comm.allgather_arrays({"confusion": confusion,
                                   "loss_sum": np.array([full["loss"] * confusion.sum()])})
    total = sum(p["confusion"] for p in parts)
    metrics = metrics_from_confusion(total)
    loss = sum(float(p["loss_sum"][0]) for p in parts) / int(total.sum())
    return {key: float(metrics[key]) for key in ("miou", "pixel_accuracy", "mean_class_accuracy")} | {
        "loss": loss}


GATHERED = {"ClassificationTask": _classification, "DetectionTask": _detection,
            "SegmentationTask": _segmentation}
"""Task class name -> its gathered evaluation."""


def _no_labels() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


def _ragged(name: str, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-image arrays (first axis ragged) as ``name`` (concatenated) and ``name.offsets`` ``(n + 1,)``."""
    offsets = np.cumsum([0] + [len(a) for a in arrays]).astype(np.int64)
    return {name: np.concatenate(arrays) if arrays else np.zeros(0), f"{name}.offsets": offsets}


def _unragged(part: dict[str, np.ndarray], name: str) -> list[np.ndarray]:
    offsets, values = part[f"{name}.offsets"], part[name]
    return [values[lo:hi] for lo, hi in itertools.pairwise(offsets)]
