"""PASCAL VOC detection AP, as the official devkit (``VOCevaldet.m``) computes it.

Per class, detections of all images are ranked by descending score. Each detection takes the ground truth of
its image and class with the highest IoU (the first one on ties); if that IoU is ``>= iou_thresh``, it is a
true positive when the ground truth is not ``difficult`` and not yet taken, a false positive when already
taken, and *neither* when ``difficult``; below the threshold it is a false positive.
``difficult`` ground truths do not count as positives. AP is the VOC2007 11-point interpolation (mean over
recall ``t in {0, .1, ..., 1}`` of the largest precision at recall ``>= t``) with ``use_07_metric=True``,
otherwise the VOC2010+ area under the monotone precision envelope.

Box convention. The devkit works on 1-based *inclusive* integer pixels and adds 1 to widths, heights and
intersections. xpvision boxes are 0-based *continuous* (``x2`` is the right edge; the VOC parser maps
``(xmin, ymin, xmax, ymax)`` to ``(xmin - 1, ymin - 1, xmax, ymax)``), so plain continuous IoU on our boxes
equals the devkit's ``+1`` IoU on the original annotation: that is the default (``plus_one=False``). Pass
``plus_one=True`` only for boxes that hold the devkit's inclusive pixel indices.
"""

from __future__ import annotations

import numpy as np

from xpvision.detection.boxes import elementwise_box_iou
from xpvision.detection.metrics.common import (
    count_classes,
    flatten_detections,
    flatten_ground_truth,
    pairs_by_group,
)


def eval_detection_voc(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_difficult=None,
                       iou_thresh: float = 0.5, use_07_metric: bool = False, plus_one: bool = False,
                       num_classes: int | None = None) -> dict:
    """VOC average precision per class and its mean, one array per image in every list.

    Args:
        pred_boxes: per image ``(R, 4)`` float ``xyxy`` boxes (NumPy or CuPy); pred_labels: ``(R,)`` int;
            pred_scores: ``(R,)`` float.
        gt_boxes, gt_labels: per image ``(G, 4)`` and ``(G,)``; gt_difficult: per image ``(G,)`` bool or None.
        iou_thresh: minimum IoU of a true positive (``>=``).
        use_07_metric: 11-point AP (VOC2007) instead of the all-point area (VOC2010+).
        plus_one: apply the devkit's inclusive-pixel ``+1`` (see the module docstring).
        num_classes: number of classes (default: the largest label seen + 1).

    Returns:
        ``{'ap': (C,) float64 (NaN for classes without non-difficult ground truth), 'map': float (mean over
        classes with an AP), 'precision': [C arrays (n_det_c,)], 'recall': [C arrays (n_det_c,)]}`` — the PR
        curves, by descending score, empty for classes with no detection or no ground truth.
    """
    dets = flatten_detections(pred_boxes, pred_labels, pred_scores)
    gts = flatten_ground_truth(gt_boxes, gt_labels, len(pred_boxes), difficult=(gt_difficult, bool))
    n_class = count_classes(dets, gts, num_classes)
    difficult = gts.flags.get("difficult", np.zeros(len(gts.label), dtype=bool))
    outcome = _match(dets, gts, difficult, iou_thresh, 1.0 if plus_one else 0.0)

    n_positive = np.bincount(gts.label[~difficult], minlength=n_class)[:n_class]
    order = np.lexsort((dets.rank, dets.image, -dets.score, dets.label))  # class, then devkit's ranking
    class_start = np.searchsorted(dets.label[order], np.arange(n_class + 1), side="left")
    ap = np.full(n_class, np.nan)
    precisions, recalls = [], []
    for k in range(n_class):
        result = outcome[order[class_start[k]:class_start[k + 1]]]
        result = result[result != _NEITHER]
        tp = np.cumsum(result == _TRUE_POSITIVE, dtype=np.float64)
        fp = np.cumsum(result == _FALSE_POSITIVE, dtype=np.float64)
        if n_positive[k] == 0:
            precisions.append(np.zeros(0))
            recalls.append(np.zeros(0))
            continue
        recall = tp / n_positive[k]
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        precisions.append(precision)
        recalls.append(recall)
        ap[k] = voc_ap(precision, recall, use_07_metric)
    valid = ~np.isnan(ap)
    return {"ap": ap, "map": float(ap[valid].mean()) if valid.any() else float("nan"),
            "precision": precisions, "recall": recalls}


_NEITHER, _TRUE_POSITIVE, _FALSE_POSITIVE = 0, 1, 2


def _match(dets, gts, difficult, iou_thresh: float, plus_one: float) -> np.ndarray:
    """Outcome of every detection (``_TRUE_POSITIVE``, ``_FALSE_POSITIVE`` or ``_NEITHER``), ``(D,)`` int8.

    Detections of one (image, class) are resolved in score order; the loop walks that rank for all groups at
    once.
    """
    outcome = np.full(len(dets.label), _FALSE_POSITIVE, dtype=np.int8)
    taken = np.zeros(len(gts.label), dtype=bool)
    pairs = pairs_by_group(dets, gts)
    iou = elementwise_box_iou(dets.boxes[pairs.det], gts.boxes[pairs.gt], plus_one=bool(plus_one))  # (P,)
    has_pairs = np.diff(pairs.det_start) > 0
    for rank in range(int(dets.rank.max(initial=-1)) + 1):
        det_ids = np.flatnonzero((dets.rank == rank) & has_pairs)
        if not len(det_ids):
            continue
        starts = pairs.det_start[det_ids]
        counts = pairs.det_start[det_ids + 1] - starts
        seg_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        idx = np.repeat(starts - seg_start, counts) + np.arange(int(counts.sum()))  # (P_r,) pair indices
        seg_of_pair = np.repeat(np.arange(len(det_ids)), counts)
        best = np.maximum.reduceat(iou[idx], seg_start)  # (D_r,)
        first_best = np.where(iou[idx] == best[seg_of_pair], np.arange(len(idx)), len(idx))
        gt_ids = pairs.gt[idx[np.minimum.reduceat(first_best, seg_start)]]  # (D_r,)
        hit = best >= iou_thresh
        fresh = np.where(taken[gt_ids], _FALSE_POSITIVE, _TRUE_POSITIVE)
        result = np.where(difficult[gt_ids], _NEITHER, fresh)
        outcome[det_ids] = np.where(hit, result, _FALSE_POSITIVE)
        taken[gt_ids[hit & ~difficult[gt_ids]]] = True
    return outcome


def voc_ap(precision: np.ndarray, recall: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from a PR curve ``(n,)`` float (detections by descending score): 11-point (VOC2007) or the area
    under the monotone precision envelope (VOC2010+)."""
    if use_07_metric:
        points = [precision[recall >= t].max() if np.any(recall >= t) else 0.0 for t in np.linspace(0, 1, 11)]
        return float(np.mean(points))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
