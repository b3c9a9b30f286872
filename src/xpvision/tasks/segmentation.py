"""Semantic segmentation: per-pixel softmax cross-entropy, mIoU from a confusion matrix, overlay figures.

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
from xpvision.errors import ConfigError
from xpvision.nn.base import Layer
from xpvision.nn.losses import SoftmaxCrossEntropy
from xpvision.segmentation.fcn import VARIANTS, build_fcn
from xpvision.segmentation.metrics import IGNORE_INDEX, ConfusionMatrix
from xpvision.tasks.base import PerClass, checked_class_weights, evaluation_pass


class SegmentationTask:
    """Per-pixel softmax cross-entropy (pixels labelled ``ignore_index`` skipped); metrics ``miou`` (primary),
    ``pixel_accuracy``, ``mean_class_accuracy`` and ``loss`` (mean over valid pixels).

    ``class_names``: ``num_classes`` names (background first) for per-class reports; default ``'0'``,
    ``'1'``, ... ``class_weights``: optional ``(num_classes,)`` loss weights.
    """

    kind = "segmentation"
    primary_metric = "miou"
    onnx_probabilities = False

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

    # -- what the stages look up -----------------------------------------------------------------------------
    @staticmethod
    def output_classes(classes: Sequence[str]) -> list[str]:
        """The network's classes: ``background`` (mask value 0) in front of the dataset's."""
        return ["background", *classes]

    @staticmethod
    def model_names() -> list[str]:
        return ["fcn" + variant for variant in VARIANTS]

    @staticmethod
    def build_network(name: str, args: dict, input_shape: Sequence[int], classes: Sequence[str],
                      train_set: Any = None) -> tuple[Layer, dict[str, Any]]:
        """:func:`~xpvision.segmentation.fcn.build_fcn` of variant ``name`` (``fcn8s``, ...); it adds nothing
        to the metadata."""
        variant = name.removeprefix("fcn")
        if variant not in VARIANTS:
            names = ", ".join("fcn" + v for v in VARIANTS)
            raise ConfigError(f"train.segmentation.model: expected one of {names}, got {name!r}")
        return build_fcn(variant, in_channels=input_shape[0], num_classes=len(classes), **args), {}

    @classmethod
    def for_model(cls, model: Layer | None, meta: dict, class_weights: Sequence[float] | None = None):
        weights = checked_class_weights(class_weights, meta, cls.kind)
        return cls(len(meta["classes"]), class_names=meta["classes"], class_weights=weights)

    # -- training and evaluation -----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "num_classes": self.num_classes,
                "ignore_index": self.ignore_index, "class_names": self.class_names,
                "class_weights": self.class_weights}

    def forward_loss(self, model: Layer, batch: dict) -> tuple[float, Any]:
        """Loss of one training batch and its gradient w.r.t. the logits ``(N, K, H, W)``."""
        logits = model.forward(backend.to_device(batch["images"], model.device))  # (N, K, H, W)
        loss = self.loss.forward(logits, backend.to_device(batch["masks"], model.device))
        return loss, self.loss.backward()

    def evaluate_full(self, model: Layer, loader: Iterable[dict]) -> dict[str, Any]:
        """Eval-mode pass: the :func:`~xpvision.segmentation.metrics.eval_semantic_segmentation` dict
        (per-class ``iou``/``class_accuracy`` arrays, ``confusion``) plus ``loss``, the mean over valid
        pixels."""
        confusion = ConfusionMatrix(self.num_classes, self.ignore_index)
        loss_fn = SoftmaxCrossEntropy(ignore_index=self.ignore_index, class_weights=self.class_weights)

        def step(batch: dict, logits: Any) -> tuple[float, int]:  # logits (N, K, H, W)
            masks = backend.to_device(batch["masks"], model.device)  # (N, H, W)
            confusion.update(logits.argmax(axis=1), masks)
            return loss_fn.forward(logits, masks), int((masks != self.ignore_index).sum())

        loss = evaluation_pass(model, loader, step,
                               "cannot evaluate segmentation on a loader without labelled pixels")
        return {**confusion.compute(), "loss": loss}

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

    def test_report(self, model: Layer, loader: Iterable[dict], test_set: Any,
                    figures_dir: str | os.PathLike, *,
                    sample_images: int = 8) -> tuple[dict[str, float], PerClass]:
        """Test metrics (``miou``, ``pixel_accuracy``, ``mean_class_accuracy``, ``loss``); image, ground
        truth and prediction overlays ``overlay_<i>.png`` of the first ``sample_images`` test images in
        ``figures_dir`` (normalised as ``loader`` normalises them); the per-class scores ``(classes, 'iou',
        values)`` (NaN for a class absent from the test set)."""
        from xpvision.segmentation.predict import predict_segmentation, write_prediction_images

        full = self.evaluate_full(model, loader)
        shown = range(min(sample_images, len(test_set)))
        if len(shown):
            samples = [test_set[i] for i in shown]
            images = np.stack([s["image"] for s in samples])  # (n, H, W, C) uint8
            inputs = loader.normalization.apply(images).transpose(0, 3, 1, 2)  # (n, C, H, W)
            inputs = np.ascontiguousarray(inputs)
            write_prediction_images(figures_dir, images, predict_segmentation(model, inputs),
                                    [f"overlay_{i:03d}" for i in shown],
                                    ground_truth=[s["mask"] for s in samples])
        metrics = {k: float(full[k]) for k in ("miou", "pixel_accuracy", "mean_class_accuracy", "loss")}
        return metrics, (self.class_names, "iou", [float(v) for v in full["iou"]])

    # -- prediction on images (xpvision predict, the MLflow model, the export checks) ----------------------
    @staticmethod
    def predict_images(model: Layer, meta: dict, x: Any, score_threshold: float = 0.3) -> list[dict]:
        """``{'mask': (H, W) int64 class ids, 'classes': names present}`` per image of the network input
        ``x`` ``(N, C, H, W)`` (``score_threshold`` unused)."""
        from xpvision.segmentation.predict import predict_segmentation

        masks = predict_segmentation(model, x)  # (N, H, W)
        return [{"mask": np.asarray(m, np.int64), "classes": [meta["classes"][k] for k in np.unique(m)]}
                for m in masks]

    @staticmethod
    def prediction_record(meta: dict, result: dict, original_size: tuple[int, int]) -> dict[str, Any]:
        """The number of pixels of each class present."""
        counts = np.bincount(result["mask"].ravel(), minlength=len(meta["classes"]))
        return {"pixels_per_class": {meta["classes"][k]: int(c) for k, c in enumerate(counts) if c}}

    @staticmethod
    def write_prediction(out: Path, path: Path, original: Any, record: dict, result: dict,
                         meta: dict) -> Path | None:
        """``<out>/<stem>_overlay.png`` (and the label PNG ``<stem>_mask.png``), at the model's input size."""
        from PIL import Image

        from xpvision.segmentation.predict import write_prediction_images

        mask = result["mask"]
        resized = np.asarray(original.convert("RGB").resize(mask.shape[::-1], Image.BILINEAR))  # (H, W, 3)
        write_prediction_images(out, [resized], [mask], [f"{path.stem}_overlay"])
        return out / f"{path.stem}_overlay.png"

    @staticmethod
    def describe(record: dict) -> str:
        classes = ", ".join(name for name in record["pixels_per_class"] if name != "background")
        return f"{record['image']}: {classes or 'background'} -> {record['output']}"

    @staticmethod
    def pyfunc_output(results: list[dict]) -> Any:
        """The MLflow model's output: the ``(N, H, W)`` int64 class maps."""
        return np.stack([r["mask"] for r in results])

    @staticmethod
    def pyfunc_agrees(served: Any, results: list[dict]) -> bool:
        return bool(np.array_equal(served, np.stack([r["mask"] for r in results])))
