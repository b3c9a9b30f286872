"""The segmentation task for the trainer, prediction, and the overlay images of ``xpvision predict``.

Batches (from :class:`xpvision.data.loader.DataLoader`): ``images`` ``(N, C, H, W)`` float32 (normalised as
the model was trained), ``masks`` ``(N, H, W)`` int64 with 255 = ignore. The model maps images to logits
``(N, num_classes, H, W)`` (an :class:`~xpvision.segmentation.fcn.FCN`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xpvision import backend
from xpvision.errors import ConfigError, ShapeError
from xpvision.nn.base import Layer
from xpvision.nn.losses import SoftmaxCrossEntropy
from xpvision.segmentation.metrics import IGNORE_INDEX, ConfusionMatrix
from xpvision.segmentation.visualize import save_comparison, save_label_png
from xpvision.train import evaluating


class SegmentationTask:
    """Per-pixel softmax cross-entropy (pixels labelled ``ignore_index`` skipped); metrics ``miou`` (primary),
    ``pixel_accuracy``, ``mean_class_accuracy`` and ``loss`` (mean over valid pixels).

    ``class_names``: ``num_classes`` names (background first) for per-class reports; default ``'0'``,
    ``'1'``, ... ``class_weights``: optional ``(num_classes,)`` loss weights.
    """

    primary_metric = "miou"

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 class_names: Sequence[str] | None = None,
                 class_weights: Sequence[float] | None = None) -> None:
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ConfigError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"class_names has {len(class_names)} names, expected num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        names = class_names if class_names is not None else range(num_classes)
        self.class_names = [str(c) for c in names]
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.loss = SoftmaxCrossEntropy(ignore_index=self.ignore_index, class_weights=self.class_weights)

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "num_classes": self.num_classes,
                "ignore_index": self.ignore_index, "class_names": self.class_names,
                "class_weights": self.class_weights}

    def _inputs(self, model: Layer, batch: dict):
        device = model.device
        return backend.to_device(batch["images"], device), backend.to_device(batch["masks"], device)

    def forward_loss(self, model: Layer, batch: dict) -> tuple[float, Any]:
        """Loss of one training batch and its gradient w.r.t. the logits ``(N, K, H, W)``."""
        images, masks = self._inputs(model, batch)
        logits = model.forward(images)  # (N, K, H, W)
        loss = self.loss.forward(logits, masks)
        return loss, self.loss.backward()

    def evaluate_full(self, model: Layer, loader: Iterable[dict]) -> dict[str, Any]:
        """Eval-mode pass: the :func:`~xpvision.segmentation.metrics.eval_semantic_segmentation` dict
        (per-class ``iou``/``class_accuracy`` arrays, ``confusion``) plus ``loss``, the mean over valid
        pixels."""
        confusion = ConfusionMatrix(self.num_classes, self.ignore_index)
        loss_fn = SoftmaxCrossEntropy(ignore_index=self.ignore_index, class_weights=self.class_weights)
        total_loss, total_pixels = 0.0, 0
        with evaluating(model):
            for batch in loader:
                images, masks = self._inputs(model, batch)
                logits = model.forward(images)  # (N, K, H, W)
                valid = int((masks != self.ignore_index).sum())
                total_loss += loss_fn.forward(logits, masks) * valid
                total_pixels += valid
                confusion.update(logits.argmax(axis=1), masks)  # (N, H, W) both
        if total_pixels == 0:
            raise ConfigError("cannot evaluate segmentation on a loader without labelled pixels")
        return {**confusion.compute(), "loss": total_loss / total_pixels}

    def evaluate(self, model: Layer, loader: Iterable[dict]) -> dict[str, float]:
        """``{'miou', 'pixel_accuracy', 'mean_class_accuracy', 'loss'}`` as Python floats."""
        full = self.evaluate_full(model, loader)
        return {key: float(full[key]) for key in ("miou", "pixel_accuracy", "mean_class_accuracy", "loss")}

    def report(self, full: dict[str, Any]) -> dict[str, Any]:
        """JSON-able form of :meth:`evaluate_full`: scalars, per-class ``{name: value}`` (``None`` where the
        class is absent) and the confusion matrix as nested lists (rows = ground truth)."""
        def per_class(values: np.ndarray) -> dict[str, float | None]:
            return {name: (None if math.isnan(v) else float(v))
                    for name, v in zip(self.class_names, values.tolist(), strict=True)}
        return {"miou": float(full["miou"]), "pixel_accuracy": float(full["pixel_accuracy"]),
                "mean_class_accuracy": float(full["mean_class_accuracy"]), "loss": float(full["loss"]),
                "iou": per_class(full["iou"]), "class_accuracy": per_class(full["class_accuracy"]),
                "classes": list(self.class_names), "confusion": full["confusion"].tolist()}


def predict_segmentation(model: Layer, images: Any, batch_size: int = 32) -> np.ndarray:
    """Label maps for a batch of images: ``(N, C, H, W)`` float32 (normalised as in training) -> ``(N, H, W)``
    int64 NumPy array (argmax of the logits). Runs in eval mode on the model's device, ``batch_size``
    images at a time.
    """
    if not hasattr(images, "ndim") or images.ndim != 4:
        raise ShapeError(f"predict_segmentation expected images (N, C, H, W), got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device = model.device
    labels = []
    with evaluating(model):
        for start in range(0, images.shape[0], batch_size):
            chunk = backend.to_device(images[start:start + batch_size], device)
            logits = model.forward(chunk)  # (n, K, H, W)
            labels.append(backend.to_numpy(logits.argmax(axis=1)).astype(np.int64))  # (n, H, W)
    if not labels:
        return np.zeros((0, *images.shape[2:]), dtype=np.int64)
    return np.concatenate(labels)


def write_prediction_images(out_dir: str | os.PathLike, images: Sequence[np.ndarray] | np.ndarray,
                            predictions: Sequence[np.ndarray] | np.ndarray, names: Sequence[str],
                            ground_truth: Sequence[np.ndarray] | np.ndarray | None = None, alpha: float = 0.5,
                            scale: int = 2) -> list[Path]:
    """For each image write ``<name>.png`` (image | ground truth | prediction, overlaid in the VOC palette;
    the ground-truth panel only when ``ground_truth`` is given) and ``<name>_mask.png`` (the predicted labels
    as a palette PNG), atomically. Returns the written paths.

    ``images``: ``(H, W, C)`` uint8 images as stored (C = 1 or 3); ``predictions`` / ``ground_truth``:
    ``(H, W)`` integer label maps; ``names``: file stems (no folders).
    """
    if not len(images) == len(predictions) == len(names):
        raise ShapeError(f"got {len(images)} images, {len(predictions)} predictions and {len(names)} names")
    if ground_truth is not None and len(ground_truth) != len(images):
        raise ShapeError(f"got {len(ground_truth)} ground-truth masks for {len(images)} images")
    out_dir = Path(out_dir)
    written = []
    for i, name in enumerate(names):
        if Path(name).name != name or name in ("", ".", ".."):
            raise ConfigError(f"output name {name!r} must be a plain file stem without folders")
        gt = None if ground_truth is None else ground_truth[i]
        save_comparison(out_dir / f"{name}.png", images[i], gt, predictions[i], alpha=alpha, scale=scale)
        save_label_png(out_dir / f"{name}_mask.png", predictions[i])
        written += [out_dir / f"{name}.png", out_dir / f"{name}_mask.png"]
    return written
