"""Anchor boxes from the training boxes: k-means on ``(w, h)`` with the distance ``1 - IoU`` (YOLOv2).

Boxes are compared as if they shared a centre, so only their sizes matter. The result is deterministic for a
given ``seed``.
"""

from __future__ import annotations

import numpy as np

from xpvision import backend
from xpvision.detection.boxes import box_iou
from xpvision.errors import ConfigError, ShapeError


def wh_iou(wh1: np.ndarray, wh2: np.ndarray) -> np.ndarray:
    """IoU ``(N, K)`` of boxes of sizes ``wh1`` ``(N, 2)`` and ``wh2`` ``(K, 2)`` placed on one centre (the
    same as placing both corners at the origin: :func:`box_iou` of ``(0, 0, w, h)`` boxes)."""
    def at_origin(wh):
        wh = np.asarray(wh)
        return np.concatenate([np.zeros_like(wh), wh], axis=1)  # (n, 4)
    return box_iou(at_origin(wh1), at_origin(wh2))


def kmeans_anchors(boxes, k: int, seed: int = 0, max_iter: int = 300) -> np.ndarray:
    """Cluster box sizes into ``k`` anchors.

    Args:
        boxes: ``(N, 4)`` float ``xyxy`` boxes in pixels (all training boxes, NumPy or CuPy); boxes of zero
            width or height are left out.
        k: number of anchors (``N`` non-empty boxes must be at least ``k``).
        seed: seeds the k-means++ initialisation.
        max_iter: Lloyd iterations at most (stops when the assignment no longer changes).

    Returns:
        ``(k, 2)`` float32 anchor ``(w, h)`` in pixels, sorted by area (smallest first). Each is the mean size
        of its cluster.
    """
    boxes = np.asarray(backend.to_numpy(boxes), dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ShapeError(f"boxes: expected shape (N, 4), got {boxes.shape}")
    wh = boxes[:, 2:] - boxes[:, :2]  # (N, 2)
    wh = wh[(wh > 0).all(axis=1)]
    if k < 1 or len(wh) < k:
        raise ConfigError(f"anchors: cannot make k={k} anchors from {len(wh)} non-empty boxes")
    rng = np.random.default_rng(seed)
    centres = _kmeans_plus_plus(wh, k, rng)
    assignment = None
    for _ in range(max_iter):
        distance = 1.0 - wh_iou(wh, centres)  # (N, k)
        new_assignment = distance.argmin(axis=1)
        if assignment is not None and np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        for c in range(k):
            members = wh[assignment == c]
            # an emptied cluster restarts at the box worst served by the current anchors
            centres[c] = members.mean(axis=0) if len(members) else wh[distance.min(axis=1).argmax()]
    order = np.argsort(centres[:, 0] * centres[:, 1], kind="stable")
    return centres[order].astype(np.float32)


def _kmeans_plus_plus(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding under the ``1 - IoU`` distance: ``(k, 2)`` float64 sizes drawn from ``wh``."""
    centres = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):
        distance = (1.0 - wh_iou(wh, np.array(centres))).min(axis=1)
        weights = distance**2
        total = weights.sum()
        index = rng.choice(len(wh), p=weights / total) if total > 0 else rng.integers(len(wh))
        centres.append(wh[index])
    return np.array(centres, dtype=np.float64)


def mean_best_iou(boxes, anchors) -> float:
    """Average over boxes ``(N, 4)`` xyxy of the best IoU with any anchor ``(K, 2)``: how well anchors fit."""
    boxes = np.asarray(backend.to_numpy(boxes), dtype=np.float64)
    wh = boxes[:, 2:] - boxes[:, :2]
    return float(wh_iou(wh, np.asarray(anchors, dtype=np.float64)).max(axis=1).mean())
