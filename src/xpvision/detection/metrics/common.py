"""Shared machinery of the VOC and COCO evaluators: flattening per-image lists, grouping by (image, class),
and enumerating detection × ground-truth pairs of a group, all vectorised over every image at once.

Arrays here are NumPy float64 (boxes, scores, areas) and int64 (indices): metrics are computed on the host, in
double precision like the reference implementations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from xpvision import backend
from xpvision.errors import ShapeError


class Detections(NamedTuple):
    """All detections, sorted by ``(image, label, -score, position in its image)``."""

    image: np.ndarray  # (D,) int64
    label: np.ndarray  # (D,) int64
    score: np.ndarray  # (D,) float64
    boxes: np.ndarray  # (D, 4) float64 xyxy
    rank: np.ndarray  # (D,) int64 position by descending score inside its (image, label) group


class GroundTruth(NamedTuple):
    """All ground-truth boxes, sorted by ``(image, label, position in its image)``."""

    image: np.ndarray  # (G,) int64
    label: np.ndarray  # (G,) int64
    boxes: np.ndarray  # (G, 4) float64 xyxy
    flags: dict[str, np.ndarray]  # per-box extras (crowd, difficult, area), each (G,)
    position: np.ndarray  # (G,) int64 position inside its (image, label) group


class Pairs(NamedTuple):
    """Every (detection, ground truth) pair of the same image and label, detection-major."""

    det: np.ndarray  # (P,) int64 detection index
    gt: np.ndarray  # (P,) int64 ground-truth index
    det_start: np.ndarray  # (D + 1,) int64: pairs of detection d are det_start[d]:det_start[d + 1]


def _per_image(name: str, arrays: Sequence, n_images: int, shape_tail: tuple[int, ...],
               dtype) -> list[np.ndarray]:
    if len(arrays) != n_images:
        raise ShapeError(f"{name}: expected one array per image ({n_images}), got {len(arrays)}")
    out = []
    for i, a in enumerate(arrays):
        a = np.asarray(backend.to_numpy(a), dtype=dtype)
        if shape_tail and a.size == 0:
            a = a.reshape(0, *shape_tail)
        if a.shape[1:] != shape_tail:
            raise ShapeError(f"{name}[{i}]: expected shape (R, {', '.join(map(str, shape_tail))})"
                             if shape_tail else f"{name}[{i}]: expected shape (R,)" + f", got {a.shape}")
        out.append(a)
    return out


def _concat_with_image(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate per-image arrays; also return each row's image index and position in its image."""
    counts = np.array([len(a) for a in arrays], dtype=np.int64)
    image = np.repeat(np.arange(len(arrays), dtype=np.int64), counts)
    position = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return image, position, counts


def flatten_detections(pred_boxes, pred_labels, pred_scores) -> Detections:
    """Validate per-image prediction lists (``(R, 4)`` xyxy, ``(R,)`` labels, ``(R,)`` scores), flatten."""
    n = len(pred_boxes)
    boxes = _per_image("pred_boxes", pred_boxes, n, (4,), np.float64)
    labels = _per_image("pred_labels", pred_labels, n, (), np.int64)
    scores = _per_image("pred_scores", pred_scores, n, (), np.float64)
    _check_lengths("pred", boxes, labels=labels, scores=scores)
    image, position, _ = _concat_with_image(boxes)
    label = np.concatenate(labels) if n else np.zeros(0, np.int64)
    score = np.concatenate(scores) if n else np.zeros(0)
    order = np.lexsort((position, -score, label, image))
    image, label, score = image[order], label[order], score[order]
    flat_boxes = (np.concatenate(boxes) if n else np.zeros((0, 4)))[order]
    return Detections(image, label, score, flat_boxes, _rank_in_group(image, label))


def flatten_ground_truth(gt_boxes, gt_labels, n_images: int, **flags) -> GroundTruth:
    """Validate per-image ground-truth lists and flatten them; ``flags`` are optional per-box lists
    (``None`` entries are dropped) such as ``crowd`` (bool), ``difficult`` (bool) or ``area`` (float)."""
    boxes = _per_image("gt_boxes", gt_boxes, n_images, (4,), np.float64)
    labels = _per_image("gt_labels", gt_labels, n_images, (), np.int64)
    extra = {}
    for key, (values, dtype) in flags.items():
        if values is not None:
            extra[key] = _per_image(f"gt_{key}", values, n_images, (), dtype)
    _check_lengths("gt", boxes, labels=labels, **extra)
    image, position, _ = _concat_with_image(boxes)
    label = np.concatenate(labels) if n_images else np.zeros(0, np.int64)
    order = np.lexsort((position, label, image))
    flat_flags = {k: np.concatenate(v)[order] for k, v in extra.items()}
    flat_boxes = (np.concatenate(boxes) if n_images else np.zeros((0, 4)))[order]
    return GroundTruth(image[order], label[order], flat_boxes, flat_flags, _rank_in_group(image[order],
                                                                                        label[order]))


def _check_lengths(prefix: str, boxes: list[np.ndarray], **others: list[np.ndarray]) -> None:
    for key, arrays in others.items():
        for i, (b, a) in enumerate(zip(boxes, arrays, strict=True)):
            if len(a) != len(b):
                raise ShapeError(f"{prefix}_{key}[{i}]: expected {len(b)} values (one per box), got {len(a)}")


def _rank_in_group(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Position of each row inside its run of equal ``(image, label)`` (rows already sorted by them)."""
    n = len(image)
    if n == 0:
        return np.zeros(0, np.int64)
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = (image[1:] != image[:-1]) | (label[1:] != label[:-1])
    starts = np.flatnonzero(new_group)
    return np.arange(n, dtype=np.int64) - np.repeat(starts, np.diff(np.append(starts, n)))


def count_classes(dets: Detections, gts: GroundTruth, given: int | None) -> int:
    """Number of classes: ``given``, or one more than the largest label seen."""
    largest = max(int(dets.label.max(initial=-1)), int(gts.label.max(initial=-1)))
    if given is None:
        return largest + 1
    if largest >= given or min(int(dets.label.min(initial=0)), int(gts.label.min(initial=0))) < 0:
        raise ShapeError(f"labels: expected values in [0, {given}), found up to {largest}")
    return given


def pairs_by_group(dets: Detections, gts: GroundTruth, keep=None) -> Pairs:
    """All detection × ground-truth pairs sharing image and label (only detections ``keep`` ``(D,)``)."""
    n_labels = int(max(dets.label.max(initial=0), gts.label.max(initial=0))) + 1
    gt_key = gts.image * n_labels + gts.label  # sorted
    det_key = dets.image * n_labels + dets.label
    first = np.searchsorted(gt_key, det_key, side="left")
    last = np.searchsorted(gt_key, det_key, side="right")
    if keep is not None:
        last = np.where(keep, last, first)
    counts = last - first  # (D,)
    det_start = np.concatenate([[0], np.cumsum(counts)])
    det = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    gt = first[det] + np.arange(int(det_start[-1]), dtype=np.int64) - det_start[det]
    return Pairs(det, gt, det_start)
