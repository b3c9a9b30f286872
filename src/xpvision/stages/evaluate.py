"""Stage ``evaluate``: test-set metrics of a trained model and the figures drawn from them.

Outputs: ``reports/<task>/metrics.json`` (DVC metrics), ``reports/<task>/figures/`` (PNG: confusion matrix
and sample predictions; PR curves and drawn detections; segmentation overlays) and
``reports/<task>/per_class.csv`` (``class, metric, score``: recall, AP@0.5 or IoU per class; a DVC plot).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xpvision import atomic, tracking
from xpvision.config import Params, block_dict
from xpvision.stages import TaskPaths, tasks


def run(params: Params, task: str) -> None:
    from xpvision.data.loader import DataLoader, Normalization
    from xpvision.data.shards import ShardDataset
    from xpvision.export.inference import load_trained_model

    cfg = params.evaluate[task]
    paths = TaskPaths(task)
    with tracking.stage_run("evaluate", paths.pipeline_run, params.tracking,
                            data_paths=(str(paths.processed),)) as stage:
        stage.log_params(block_dict(cfg))
        model, meta = load_trained_model(paths.model_dir)
        model.to(params.train[task].device)  # evaluated where it was trained
        test_set = ShardDataset(paths.processed / "test")
        normalization = Normalization.from_meta(meta["normalization"], meta["normalization"]["mode"])
        loader = DataLoader(test_set, cfg.batch_size, normalization=normalization)
        paths.figures.mkdir(parents=True, exist_ok=True)
        evaluate = {"classification": evaluate_classifier, "detection": evaluate_detector,
                    "segmentation": evaluate_segmenter}[meta["kind"]]
        metrics, per_class = evaluate(model, meta, loader, test_set, cfg, paths)
        write_per_class(paths.reports / "per_class.csv", *per_class)
        atomic.write_json(paths.reports / "metrics.json", metrics)
        stage.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        stage.log_artifact(paths.reports / "metrics.json")
        stage.log_artifact(paths.figures, "figures")
        print(f"{task}: " + ", ".join(f"test {k}={v:.4g}" for k, v in metrics.items()
                                      if isinstance(v, float)))


def sample_indices(count: int, available: int) -> np.ndarray:
    """The first ``count`` test images, or all of them."""
    return np.arange(min(count, available))


def evaluate_classifier(model: Any, meta: dict, loader: Any, test_set: Any, cfg: Any,
                        paths: TaskPaths) -> tuple[dict[str, float], tuple]:
    """Accuracy and loss; confusion-matrix and sample-prediction PNGs; recall per class."""
    task = tasks.build_task("classification", model, meta)
    classes = meta["classes"]
    loss, y_true, y_pred = task.predict(model, loader)
    plot_confusion(y_true, y_pred, classes, paths.figures / "confusion_matrix.png")
    shown = sample_indices(cfg.sample_images, len(test_set))
    plot_samples([test_set[int(i)]["image"] for i in shown],
                 [f"{classes[y_pred[i]]} ({classes[y_true[i]]})" for i in shown],
                 [bool(y_pred[i] == y_true[i]) for i in shown], paths.figures / "samples.png")
    recall = [float(np.mean(y_pred[y_true == k] == k)) if np.any(y_true == k) else float("nan")
              for k in range(len(classes))]
    metrics = {"accuracy": float(np.mean(y_true == y_pred)), "loss": float(loss),
               "error_rate": float(np.mean(y_true != y_pred))}
    return metrics, (classes, "recall", recall)


def write_per_class(path: Path, classes: list[str], metric: str, scores: list[float]) -> None:
    """``class,metric,score`` rows (classes without test examples are left out)."""
    import pandas as pd

    table = pd.DataFrame({"class": classes, "metric": metric, "score": scores}).dropna()
    atomic.write_text(path, table.to_csv(index=False, float_format="%.6g"))


def evaluate_detector(model: Any, meta: dict, loader: Any, test_set: Any, cfg: Any,
                      paths: TaskPaths) -> tuple[dict[str, float], tuple]:
    """VOC mAP@0.5 and COCO-style mAP; PR-curve and drawn-detection PNGs; AP@0.5 per class."""
    from xpvision.detection.pipeline import evaluate_and_plot

    metrics = evaluate_and_plot(model, meta, loader, test_set, score_threshold=cfg.score_threshold,
                                nms_iou=cfg.nms_iou, use_07_metric=cfg.voc07_metric,
                                sample_count=cfg.sample_images, figures_dir=paths.figures)
    per_class = {k.removeprefix("ap50_"): metrics.pop(k) for k in list(metrics) if k.startswith("ap50_")}
    return metrics, (list(per_class), "ap50", list(per_class.values()))


def evaluate_segmenter(model: Any, meta: dict, loader: Any, test_set: Any, cfg: Any,
                       paths: TaskPaths) -> tuple[dict[str, float], tuple]:
    """mIoU, pixel and class accuracy; image / ground truth / prediction overlay PNGs; IoU per class."""
    from xpvision.export.inference import network_input
    from xpvision.segmentation.task import predict_segmentation, write_prediction_images

    task = tasks.build_task("segmentation", model, meta)
    full = task.evaluate_full(model, loader)
    shown = sample_indices(cfg.sample_images, len(test_set))
    if len(shown):
        samples = [test_set[int(i)] for i in shown]
        images = np.stack([s["image"] for s in samples])  # (n, H, W, C) uint8
        pixels = images.transpose(0, 3, 1, 2).astype(np.float32) / 255  # (n, C, H, W)
        predictions = predict_segmentation(model, network_input(meta, pixels))
        write_prediction_images(paths.figures, images, predictions, [f"overlay_{i:03d}" for i in shown],
                                ground_truth=[s["mask"] for s in samples])
    metrics = {k: float(full[k]) for k in ("miou", "pixel_accuracy", "mean_class_accuracy", "loss")}
    return metrics, (meta["classes"], "iou", [float(v) for v in full["iou"]])


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], path: Path) -> None:
    """Confusion matrix (rows: actual class) drawn by scikit-learn, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = 2 + 0.45 * len(classes)
    figure, axes = plt.subplots(figsize=(size, size), constrained_layout=True)
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=range(len(classes)),
                                            display_labels=classes, ax=axes, colorbar=False)
    axes.set_title("test confusion matrix")
    _save(figure, path)


def plot_samples(images: list[np.ndarray], titles: list[str], correct: list[bool], path: Path) -> None:
    """A grid of ``(H, W, C)`` uint8 images titled ``predicted (actual)``, mistakes in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not images:
        return
    columns = min(8, len(images))
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.4 * columns, 1.6 * rows), squeeze=False,
                                constrained_layout=True)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title, ok in zip(axes.flat, images, titles, correct, strict=False):
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        ax.set_title(title, fontsize=8, color="black" if ok else "red")
    _save(figure, path)


def _save(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic.atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)
