"""Test-set evaluation of a detector with its figures (what the ``evaluate`` stage calls)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from xpvision import atomic
from xpvision.detection.plots import plot_pr_curves
from xpvision.detection.predict import draw_detections
from xpvision.detection.yolo import DetectionTask, detection_metrics


def evaluate_and_plot(model: Any, meta: dict, loader: Any, test_set: Any, *, score_threshold: float = 0.01,
                      nms_iou: float = 0.45, use_07_metric: bool = False, sample_count: int = 16,
                      figures_dir: str | os.PathLike, draw_threshold: float = 0.3) -> dict[str, float]:
    """VOC and COCO metrics of ``model`` on ``loader`` (unshuffled, over ``test_set``), and PNGs.

    Writes ``figures_dir/pr_curves.png`` (VOC PR curve per class) and ``figures_dir/detections_<i>.png`` for
    the first ``sample_count`` test images (detections scoring ``>= draw_threshold``, ground truth not drawn).

    Returns floats: ``map_50`` (VOC AP@0.5), ``map``, ``map_75``, ``map_small``/``medium``/``large``,
    ``mar_100`` (COCO style), ``loss``, and ``ap50_<class>`` per class (NaN-free: classes without ground
    truth are left out).
    """
    classes = list(meta["classes"])
    task = DetectionTask(model, meta, score_threshold=score_threshold, nms_iou=nms_iou)
    detections, truth, loss = task.predict(model, loader)
    summary, voc, coco = detection_metrics(detections, truth, len(classes), use_07_metric=use_07_metric)
    figures = Path(figures_dir)
    figures.mkdir(parents=True, exist_ok=True)
    metric_name = "VOC07 11-point" if use_07_metric else "VOC all-point"
    plot_pr_curves(figures / "pr_curves.png", voc["precision"], voc["recall"], classes, voc["ap"],
                   title=f"test PR curves, IoU 0.5 ({metric_name}), mAP {voc['map']:.3f}")
    for i in range(min(sample_count, len(detections))):
        d = detections[i]
        shown = d.scores >= draw_threshold
        picture = draw_detections(test_set[i]["image"], d.boxes[shown], d.labels[shown], d.scores[shown],
                                  classes, scale=4)
        with atomic.atomic_path(figures / f"detections_{i:03d}.png") as tmp:
            picture.save(tmp, format="PNG")
    metrics = {**summary, "loss": float(loss)}
    for key in ("map_small", "map_medium", "map_large", "mar_100"):
        metrics[key] = float(coco[key])
    for name, ap in zip(classes, voc["ap"], strict=True):
        if not np.isnan(ap):
            metrics[f"ap50_{name}"] = float(ap)
    return metrics
