"""Time ``eval_detection_coco`` against pycocotools (evaluate + accumulate + summarize) and check they agree.

Usage: ``python bench/bench_coco_eval.py [--images 5000] [--classes 20] [--repeat 3]``. Not a test: prints a
table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np

from xpvision.detection.metrics.coco import eval_detection_coco

STAT_KEYS = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
             "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]


def make_data(n_images: int, n_class: int, seed: int = 0):
    """Per-image ground truth (all area ranges, 5% crowd) and detections: jittered hits, false positives."""
    rng = np.random.default_rng(seed)
    keys = ("pred_boxes", "pred_labels", "pred_scores", "gt_boxes", "gt_labels", "gt_crowdeds")
    data = {k: [] for k in keys}
    for _ in range(n_images):
        n_gt = int(rng.integers(1, 8))
        size = np.exp(rng.uniform(np.log(8), np.log(300), (n_gt, 2)))
        xy = rng.uniform(0, 640 - size)
        gt = np.concatenate([xy, xy + size], axis=1)
        labels = rng.integers(0, n_class, n_gt)
        copies = rng.integers(0, 3, n_gt)
        hits = np.repeat(gt, copies, axis=0)
        hits += rng.normal(0, 0.1, hits.shape) * np.tile(hits[:, 2:] - hits[:, :2], 2)
        n_fp = int(rng.integers(0, 6))
        xy = rng.uniform(0, 500, (n_fp, 2))
        fps = np.concatenate([xy, xy + rng.uniform(8, 140, (n_fp, 2))], axis=1)
        preds = np.concatenate([hits, fps])
        preds[:, 2:] = np.maximum(preds[:, 2:], preds[:, :2] + 1)
        data["gt_boxes"].append(np.round(gt).astype(np.float32))
        data["gt_labels"].append(labels)
        data["gt_crowdeds"].append(rng.random(n_gt) < 0.05)
        data["pred_boxes"].append(np.round(preds).astype(np.float32))
        fp_labels = rng.integers(0, n_class, n_fp)
        data["pred_labels"].append(np.concatenate([np.repeat(labels, copies), fp_labels]))
        data["pred_scores"].append(rng.random(len(preds)).astype(np.float32))
    return data


def run_pycocotools(data: dict, n_class: int) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (boxes, labels, crowd) in enumerate(zip(data["gt_boxes"], data["gt_labels"], data["gt_crowdeds"],
                                                   strict=True)):
        images.append({"id": i + 1})
        for box, label, c in zip(boxes.astype(np.float64), labels, crowd, strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": int(c)})
        for box, label, score in zip(data["pred_boxes"][i].astype(np.float64), data["pred_labels"][i],
                                     data["pred_scores"][i], strict=True):
            xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            results.append({"image_id": i + 1, "category_id": int(label) + 1, "bbox": xywh,
                            "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": k + 1} for k in range(n_class)]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        start = time.perf_counter()
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        elapsed = time.perf_counter() - start
    return evaluator.stats, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = make_data(args.images, args.classes)
    n_dets = sum(len(b) for b in data["pred_boxes"])
    n_gts = sum(len(b) for b in data["gt_boxes"])
    ours_times, ref_times = [], []
    for _ in range(args.repeat):  # interleaved, so drifts of the machine's speed hit both alike
        start = time.perf_counter()
        ours = eval_detection_coco(**data, num_classes=args.classes)
        ours_times.append(time.perf_counter() - start)
        ref_stats, elapsed = run_pycocotools(data, args.classes)
        ref_times.append(elapsed)
    ours_stats = np.array([ours[k] for k in STAT_KEYS])
    max_diff = float(np.abs(ours_stats - ref_stats).max())
    assert max_diff < 1e-6, f"xpvision and pycocotools disagree by {max_diff}"
    print(f"{args.images} images, {args.classes} classes, {n_gts} ground truths, {n_dets} detections")
    print(f"{'implementation':<34}{'median s':>10}")
    print(f"{'xpvision eval_detection_coco':<34}{np.median(ours_times):>10.3f}")
    print(f"{'pycocotools evaluate+acc+summ':<34}{np.median(ref_times):>10.3f}")
    print(f"speed-up: {np.median(ref_times) / np.median(ours_times):.1f}x; stats agree to {max_diff:.1e}")
    print("AP/AR:", " ".join(f"{k}={v:.4f}" for k, v in zip(STAT_KEYS, ours_stats, strict=True)))


if __name__ == "__main__":
    main()
