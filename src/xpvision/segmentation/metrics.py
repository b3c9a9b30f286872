"""Semantic-segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel and class accuracy.

The confusion matrix is ``(n_class, n_class)`` int64 with rows = ground truth and columns = prediction (the
scikit-learn convention), filled with one ``bincount`` of ``n_class * gt + pred`` over the valid pixels
(``gt != ignore_index``). Definitions, for class ``c`` with ``TP = M[c, c]``:

* ``iou[c] = TP / (row_sum[c] + col_sum[c] - TP)``, NaN when the class is absent from both prediction and
  ground truth; ``miou`` is the NaN-ignoring mean (the FCN / ChainerCV definition).
* ``class_accuracy[c] = TP / row_sum[c]`` (recall), NaN when the class is absent from the ground truth;
  ``mean_class_accuracy`` is its NaN-ignoring mean.
* ``pixel_accuracy = trace(M) / M.sum()`` over valid pixels.

Inputs are label maps: one ``(N, H, W)`` array or a sequence of ``(H, W)`` arrays (sizes may differ), integer
dtype, NumPy or CuPy; the counting runs on the arrays' device and only the small matrix is copied to the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xpvision import backend
from xpvision.errors import DataError, ShapeError

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Streaming confusion matrix: ``update(pred, gt)`` per batch, ``compute()`` for the metrics at the end.

    ``matrix`` is the accumulated ``(n_class, n_class)`` int64 NumPy array (rows = ground truth, columns =
    prediction).
    """

    def __init__(self, n_class: int, ignore_index: int | None = IGNORE_INDEX) -> None:
        if int(n_class) < 1:
            raise ValueError(f"n_class must be >= 1, got {n_class}")
        self.n_class = int(n_class)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.n_class, self.n_class), dtype=np.int64)

    def reset(self) -> None:
        self.matrix[...] = 0

    def update(self, pred_labels: Any, gt_labels: Any) -> ConfusionMatrix:
        """Add label maps: ``(N, H, W)`` / ``(H, W)`` arrays or sequences of ``(H, W)`` arrays."""
        pairs = _pairs(pred_labels, gt_labels)
        if pairs:  # every pixel of the batch counted at once: two copies to the host, whatever N
            xp = backend.get_array_module(*pairs[0])
            pred = xp.concatenate([xp.asarray(p).ravel() for p, _ in pairs])
            gt = xp.concatenate([xp.asarray(g).ravel() for _, g in pairs])
            self.matrix += _confusion_one(pred, gt, self.n_class, self.ignore_index)
        return self

    def compute(self) -> dict[str, Any]:
        """The metrics of :func:`metrics_from_confusion` for everything added so far."""
        return metrics_from_confusion(self.matrix)


def eval_semantic_segmentation(pred_labels: Any, gt_labels: Any, n_class: int,
                               ignore_index: int | None = IGNORE_INDEX) -> dict[str, Any]:
    """Evaluate predicted label maps against ground truth.

    Args:
        pred_labels: ``(N, H, W)`` integer array, or a sequence of ``(H, W)`` integer arrays, values in
            ``[0, n_class)``.
        gt_labels: same shapes as ``pred_labels``; values in ``[0, n_class)`` or ``ignore_index`` (skipped).
        n_class: number of classes (background included).
        ignore_index: ground-truth value to skip, or ``None`` to count every pixel.

    Returns:
        ``{'iou': (n_class,) float64, 'miou': float, 'pixel_accuracy': float, 'class_accuracy': (n_class,)
        float64, 'mean_class_accuracy': float, 'confusion': (n_class, n_class) int64}`` (NumPy arrays and
        Python floats; NaN where a class is absent, see the module docstring).

    Raises:
        ShapeError: prediction and ground truth differ in number or shape.
        DataError: a label is outside ``[0, n_class)`` (and is not ``ignore_index`` in the ground truth).
    """
    return ConfusionMatrix(n_class, ignore_index).update(pred_labels, gt_labels).compute()


def metrics_from_confusion(confusion: np.ndarray) -> dict[str, Any]:
    """Metrics from an ``(n_class, n_class)`` confusion matrix (rows = ground truth, columns = prediction)."""
    confusion = np.asarray(confusion, dtype=np.int64)
    true_pos = np.diag(confusion).astype(np.float64)
    gt_count = confusion.sum(axis=1).astype(np.float64)
    pred_count = confusion.sum(axis=0).astype(np.float64)
    union = gt_count + pred_count - true_pos
    total = float(confusion.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_pos / union, np.nan)
        class_accuracy = np.where(gt_count > 0, true_pos / gt_count, np.nan)
    return {
        "iou": iou,
        "miou": _nanmean(iou),
        "pixel_accuracy": float(true_pos.sum() / total) if total > 0 else float("nan"),
        "class_accuracy": class_accuracy,
        "mean_class_accuracy": _nanmean(class_accuracy),
        "confusion": confusion.copy(),
    }


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN (without a RuntimeWarning) when all are NaN."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _pairs(pred_labels: Any, gt_labels: Any) -> list[tuple[Any, Any]]:
    """Pair up per-image ``(H, W)`` maps from arrays of ``(N, H, W)`` / ``(H, W)`` or sequences of them."""
    preds, gts = _as_maps(pred_labels, "pred_labels"), _as_maps(gt_labels, "gt_labels")
    if len(preds) != len(gts):
        raise ShapeError(f"got {len(preds)} predicted label maps but {len(gts)} ground-truth maps")
    for i, (pred, gt) in enumerate(zip(preds, gts, strict=True)):
        if pred.shape != gt.shape:
            raise ShapeError(f"label map {i}: prediction shape {tuple(pred.shape)} != ground truth "
                             f"shape {tuple(gt.shape)}")
    return list(zip(preds, gts, strict=True))


def _as_maps(labels: Any, name: str) -> list[Any]:
    if isinstance(labels, Sequence) and not hasattr(labels, "shape"):
        maps = [_as_array(m) for m in labels]
    else:
        array = _as_array(labels)
        maps = [array] if array.ndim == 2 else list(array)
    for i, m in enumerate(maps):
        if m.ndim != 2:
            raise ShapeError(f"{name}[{i}]: expected an (H, W) label map, got shape {tuple(m.shape)}")
        if m.dtype.kind not in "iub":
            raise ShapeError(f"{name}[{i}]: expected an integer label map, got dtype {m.dtype}")
    return maps


def _as_array(a: Any):
    return a if hasattr(a, "shape") and hasattr(a, "dtype") else np.asarray(a)


def _confusion_one(pred, gt, n_class: int, ignore_index: int | None) -> np.ndarray:
    """``(n_class, n_class)`` int64 NumPy confusion of label arrays ``pred``, ``gt`` of one shape, counted
    on the arrays' device with two copies to the host (the label range, then the counts).

    Ignored pixels are counted in an extra bin that is dropped (no boolean selection, whose size a GPU would
    have to report to the host)."""
    xp = backend.get_array_module(pred, gt)
    pred = xp.asarray(pred).ravel().astype(xp.int64)  # (P,)
    gt = xp.asarray(gt).ravel().astype(xp.int64)  # (P,)
    if pred.size == 0:
        return np.zeros((n_class, n_class), dtype=np.int64)
    valid = gt != ignore_index if ignore_index is not None else xp.ones(gt.shape, dtype=bool)
    gt_valid = xp.where(valid, gt, 0)
    limits = xp.stack([xp.where(valid, gt, n_class).min(), xp.where(valid, gt, -1).max(), pred.min(),
                       pred.max()])
    _check_range(backend.to_numpy(limits).tolist(), n_class, ignore_index)
    codes = xp.where(valid, n_class * gt_valid + pred, n_class * n_class)  # (P,), ignored -> extra bin
    counts = backend.to_numpy(xp.bincount(codes, minlength=n_class * n_class + 1))[:n_class * n_class]
    return np.asarray(counts, dtype=np.int64).reshape(n_class, n_class)  # (gt, pred)


def _check_range(limits: list[int], n_class: int, ignore_index: int | None) -> None:
    """``limits``: lowest and highest valid ground-truth label (``n_class``/``-1`` when there is none), lowest
    and highest prediction."""
    gt_low, gt_high, pred_low, pred_high = limits
    extra = f" or ignore_index {ignore_index}" if ignore_index is not None else ""
    for what, low, high, tail in (("ground-truth", gt_low, gt_high, extra),
                                  ("predicted", pred_low, pred_high, "")):
        if low < 0 or high >= n_class:
            bad = low if low < 0 else high
            raise DataError(f"{what} label {bad} is outside the valid range [0, {n_class}){tail}")
