"""COCO-style box AP/AR, computing exactly what pycocotools' ``COCOeval`` (``iouType='bbox'``) computes.

The rules followed (``evaluate`` + ``accumulate`` + ``summarize``):

* IoU thresholds ``.50:.05:.95``; 101 recall points ``linspace(0, 1, 101)``; max detections 1, 10, 100 *per
image
  and class*; area ranges all, small ``[0, 32²]``, medium ``[32², 96²]``, large ``[96², 1e10]`` (bounds
  inclusive).
* Per (image, class) the detections are sorted by score and cut at 100. Each detection, in score order,
matches
  the ground truth of highest IoU ``>= t`` that is still free, preferring non-ignored ground truths (crowd
  boxes and boxes outside the area range are ignored); equal IoUs go to the later ground truth. Crowd boxes
  may match many detections and their IoU is ``intersection / detection area``. Detections matched to ignored
  ground truths, and unmatched detections outside the area range, are ignored.
* Per class the detections of all images are merged by descending score (ties: image order, then rank);
  precision is made monotone by a backward maximum and read at ``searchsorted(recall, recThrs, 'left')``
  (0 past the last recall reached). Entries without ground truth are -1 and left out of the averages.

Everything is vectorised over images: the greedy matching walks the detection *rank* (at most 100 steps) and
processes that rank of every (image, class) group, every IoU threshold and every area range at once.
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

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = (1, 10, 100)
AREA_RANGES = {
    "all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e10),
}


def eval_detection_coco(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_areas=None,
                        gt_crowdeds=None, num_classes: int | None = None) -> dict:
    """COCO box metrics of predictions against ground truth, one array per image in every list.

    Args:
        pred_boxes: per image ``(R, 4)`` float ``xyxy`` boxes in pixels (NumPy or CuPy).
        pred_labels: per image ``(R,)`` int class indices; pred_scores: per image ``(R,)`` float.
        gt_boxes, gt_labels: per image ``(G, 4)`` and ``(G,)``.
        gt_areas: per image ``(G,)`` areas used for the small/medium/large split (COCO gives the mask area);
            default the box area.
        gt_crowdeds: per image ``(G,)`` bool, crowd regions; default none.
        num_classes: number of classes (default: the largest label seen + 1).

    Returns:
        ``{'map', 'map_50', 'map_75', 'map_small', 'map_medium', 'map_large', 'mar_1', 'mar_10', 'mar_100',
        'mar_small', 'mar_medium', 'mar_large'}`` as floats (-1 where undefined, as pycocotools prints), plus
        ``'ap_per_class'`` ``(C,)`` float64 (AP@[.5:.95], NaN for classes without ground truth), and the raw
        ``'precision'`` ``(T=10, R=101, C, A=4, M=3)`` and ``'recall'`` ``(T, C, A, M)`` arrays of
        pycocotools.
    """
    dets = flatten_detections(pred_boxes, pred_labels, pred_scores)
    gts = flatten_ground_truth(gt_boxes, gt_labels, len(pred_boxes), crowd=(gt_crowdeds, bool),
                               area=(gt_areas, np.float64))
    n_class = count_classes(dets, gts, num_classes)
    crowd = gts.flags.get("crowd", np.zeros(len(gts.label), dtype=bool))
    gt_area = gts.flags.get("area", _box_area(gts.boxes))
    bounds = np.array(list(AREA_RANGES.values()))  # (A, 2)
    outside = (gt_area[None, :] < bounds[:, :1]) | (gt_area[None, :] > bounds[:, 1:])  # (A, G)
    gt_ignored = crowd[None, :] | outside
    det_area = _box_area(dets.boxes)
    det_outside = (det_area[None, :] < bounds[:, :1]) | (det_area[None, :] > bounds[:, 1:])  # (A, D)

    in_top = dets.rank < MAX_DETECTIONS[-1]
    matched, ignored = _match(dets, gts, crowd, gt_ignored, in_top)
    ignored |= ~matched & det_outside[:, None, :]
    precision, recall = _accumulate(dets, gts, n_class, matched, ignored, gt_ignored, in_top)
    return _summarize(precision, recall)


def _box_area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _match(dets, gts, crowd, gt_ignored, in_top):
    """Greedy matching; returns ``matched`` and ``ignored`` bool arrays ``(A, T, D)``."""
    n_area, n_thr, n_det = len(AREA_RANGES), len(IOU_THRESHOLDS), len(dets.label)
    matched = np.zeros((n_area, n_thr, n_det), dtype=bool)
    ignored = np.zeros((n_area, n_thr, n_det), dtype=bool)
    gt_taken = np.zeros((n_area, n_thr, len(gts.label)), dtype=bool)
    pairs = pairs_by_group(dets, gts, keep=in_top)
    iou = elementwise_box_iou(dets.boxes[pairs.det], gts.boxes[pairs.gt], crowd=crowd[pairs.gt])  # (P,)
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, :, None]  # (1, T, 1)
    has_pairs = np.diff(pairs.det_start) > 0
    for rank in range(int(dets.rank.max(initial=-1)) + 1):
        det_ids = np.flatnonzero((dets.rank == rank) & has_pairs)
        if not len(det_ids):
            continue
        counts = pairs.det_start[det_ids + 1] - pairs.det_start[det_ids]
        seg_start = np.concatenate([[0], np.cumsum(counts)[:-1]])  # (D_r,)
        idx = np.repeat(pairs.det_start[det_ids] - seg_start, counts) + np.arange(int(counts.sum()))  # (P_r,)
        gt_ids, pair_iou_r = pairs.gt[idx], iou[idx]
        regular = ~gt_ignored[:, gt_ids][:, None, :]  # (A, 1, P_r)
        free = ~gt_taken[:, :, gt_ids] | crowd[gt_ids]  # (A, T, P_r)
        eligible = free & (pair_iou_r >= thresholds)
        # a regular ground truth wins over an ignored one; among the chosen kind, highest IoU, then the latest
        any_regular = np.logical_or.reduceat(eligible & regular, seg_start, axis=2)  # (A, T, D_r)
        seg_of_pair = np.repeat(np.arange(len(det_ids)), counts)
        candidate = eligible & (regular == any_regular[:, :, seg_of_pair])
        best_iou = np.maximum.reduceat(np.where(candidate, pair_iou_r, -1.0), seg_start, axis=2)
        winner = candidate & (pair_iou_r == best_iou[:, :, seg_of_pair])
        position = np.where(winner, gts.position[gt_ids], -1)
        best_pos = np.maximum.reduceat(position, seg_start, axis=2)  # (A, T, D_r)
        hit = best_pos >= 0
        # the winning pair of each segment: the one whose gt position is best_pos
        winner_pair = winner & (position == best_pos[:, :, seg_of_pair])
        a_idx, t_idx, p_idx = np.nonzero(winner_pair)
        gt_taken[a_idx, t_idx, gt_ids[p_idx]] = True
        ignored[a_idx, t_idx, det_ids[seg_of_pair[p_idx]]] = gt_ignored[a_idx, gt_ids[p_idx]]
        matched[:, :, det_ids] = hit
    return matched, ignored


def _accumulate(dets, gts, n_class, matched, ignored, gt_ignored, in_top):
    """pycocotools' ``accumulate``: precision ``(T, R, C, A, M)`` and recall ``(T, C, A, M)``."""
    n_thr, n_rec = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    n_area, n_max = len(AREA_RANGES), len(MAX_DETECTIONS)
    precision = -np.ones((n_thr, n_rec, n_class, n_area, n_max))
    recall = -np.ones((n_thr, n_class, n_area, n_max))
    n_positive = np.zeros((n_area, n_class), dtype=np.int64)
    for a in range(n_area):
        n_positive[a] = np.bincount(gts.label[~gt_ignored[a]], minlength=n_class)[:n_class]
    # merge order: class, descending score, image, rank
    order = np.lexsort((dets.rank, dets.image, -dets.score, dets.label))
    order = order[in_top[order]]
    class_start = np.searchsorted(dets.label[order], np.arange(n_class + 1), side="left")
    for k in range(n_class):
        rows = order[class_start[k]:class_start[k + 1]]
        for m, max_det in enumerate(MAX_DETECTIONS):
            sel = rows[dets.rank[rows] < max_det]
            tp = np.cumsum(matched[:, :, sel] & ~ignored[:, :, sel], axis=2, dtype=np.float64)  # (A, T, nd)
            fp = np.cumsum(~matched[:, :, sel] & ~ignored[:, :, sel], axis=2, dtype=np.float64)
            for a in range(n_area):
                npig = n_positive[a, k]
                if npig == 0:
                    continue
                recall_curve = tp[a] / npig  # (T, nd)
                precision_curve = tp[a] / (fp[a] + tp[a] + np.spacing(1))
                envelope = np.maximum.accumulate(precision_curve[:, ::-1], axis=1)[:, ::-1]
                recall[:, k, a, m] = recall_curve[:, -1] if len(sel) else 0.0
                for t in range(n_thr):
                    at = np.searchsorted(recall_curve[t], RECALL_THRESHOLDS, side="left")
                    reached = at < len(sel)
                    precision[t, :, k, a, m] = np.where(reached, envelope[t][np.minimum(at, len(sel) - 1)]
                                                        if len(sel) else 0.0, 0.0)
    return precision, recall


def _mean_defined(values: np.ndarray) -> float:
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else -1.0


def _summarize(precision: np.ndarray, recall: np.ndarray) -> dict:
    """The twelve numbers of pycocotools' ``summarize``, per-class AP and the raw arrays."""
    area = {name: i for i, name in enumerate(AREA_RANGES)}
    last = len(MAX_DETECTIONS) - 1
    t50, t75 = 0, 5  # indices of IoU .50 and .75 in IOU_THRESHOLDS
    stats = {
        "map": _mean_defined(precision[:, :, :, 0, last]),
        "map_50": _mean_defined(precision[t50, :, :, 0, last]),
        "map_75": _mean_defined(precision[t75, :, :, 0, last]),
        "map_small": _mean_defined(precision[:, :, :, area["small"], last]),
        "map_medium": _mean_defined(precision[:, :, :, area["medium"], last]),
        "map_large": _mean_defined(precision[:, :, :, area["large"], last]),
        "mar_1": _mean_defined(recall[:, :, 0, 0]),
        "mar_10": _mean_defined(recall[:, :, 0, 1]),
        "mar_100": _mean_defined(recall[:, :, 0, last]),
        "mar_small": _mean_defined(recall[:, :, area["small"], last]),
        "mar_medium": _mean_defined(recall[:, :, area["medium"], last]),
        "mar_large": _mean_defined(recall[:, :, area["large"], last]),
    }
    per_class = np.array([_mean_defined(precision[:, :, k, 0, last]) for k in range(precision.shape[2])])
    stats["ap_per_class"] = np.where(per_class > -1, per_class, np.nan)
    stats["precision"] = precision
    stats["recall"] = recall
    return stats
