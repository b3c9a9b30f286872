"""Run pycocotools (test-only reference) on per-image box lists, building the COCO dicts in memory."""

import contextlib
import io

import numpy as np


def random_scene_set(rng, n_images=60, n_class=5, crowd_rate=0.1, image_size=400.0, grid=1 / 64):
    """Ground truth of all three area ranges (some crowd) and detections near it: jittered true positives,
    duplicates, wrong classes, background false positives, coarse (tied) scores. Coordinates lie on a 1/64
    grid so xyxy -> xywh -> xyxy is exact in float64."""
    gt_boxes, gt_labels, gt_crowd, pred_boxes, pred_labels, pred_scores = [], [], [], [], [], []
    for _ in range(n_images):
        n_gt = int(rng.integers(0, 7))
        size = np.exp(rng.uniform(np.log(6), np.log(220), (n_gt, 2)))
        xy = rng.uniform(0, image_size - size)
        g = np.round(np.concatenate([xy, xy + size], axis=1) / grid) * grid
        labels = rng.integers(0, n_class, n_gt)
        preds, plabels = [], []
        for box, label in zip(g, labels, strict=True):
            for _ in range(int(rng.integers(0, 4))):
                wh = box[2:] - box[:2]
                jitter = rng.normal(0, 0.12, 4) * np.concatenate([wh, wh])
                preds.append(box + jitter)
                plabels.append(label if rng.random() > 0.15 else rng.integers(0, n_class))
        for _ in range(int(rng.integers(0, 4))):
            size = rng.uniform(5, 150, 2)
            xy = rng.uniform(0, image_size - size)
            preds.append(np.concatenate([xy, xy + size]))
            plabels.append(rng.integers(0, n_class))
        p = np.array(preds, dtype=np.float64).reshape(-1, 4)
        p[:, 2:] = np.maximum(p[:, 2:], p[:, :2] + grid)
        p = np.round(p / grid) * grid
        gt_boxes.append(g.astype(np.float32))
        gt_labels.append(labels.astype(np.int64))
        gt_crowd.append(rng.random(n_gt) < crowd_rate)
        pred_boxes.append(p.astype(np.float32))
        pred_labels.append(np.array(plabels, dtype=np.int64))
        pred_scores.append((np.round(rng.random(len(p)) * 20) / 20).astype(np.float32))
    return pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_crowd


def _xywh(box):
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def pycocotools_eval(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_crowd, n_class,
                     gt_areas=None):
    """``COCOeval.stats`` (12 numbers) and ``eval['precision']``/``eval['recall']`` of pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
        images.append({"id": i + 1, "width": 1000, "height": 1000})
        for j, (box, label) in enumerate(zip(boxes, labels, strict=True)):
            bbox = _xywh(box)
            area = bbox[2] * bbox[3] if gt_areas is None else float(gt_areas[i][j])
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                                "bbox": bbox, "area": area, "iscrowd": int(gt_crowd[i][j])})
        for box, label, score in zip(pred_boxes[i], pred_labels[i], pred_scores[i], strict=True):
            results.append({"image_id": i + 1, "category_id": int(label) + 1, "bbox": _xywh(box),
                            "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": k + 1, "name": str(k)} for k in range(n_class)]}
        gt.createIndex()
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats, evaluator.eval["precision"], evaluator.eval["recall"]
