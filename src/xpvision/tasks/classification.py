"""Classification: softmax cross-entropy on ``(N, num_classes)`` logits, accuracy, the confusion matrix."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xpvision import backend
from xpvision.errors import ConfigError
from xpvision.nn.base import Layer
from xpvision.nn.losses import SoftmaxCrossEntropy
from xpvision.tasks.base import PerClass, checked_class_weights, evaluation_pass


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts, rows = true class, columns = predicted class, from ``(N,)`` int labels."""
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)  # (K, K)


class ClassificationTask:
    """Softmax cross-entropy on ``(N, num_classes)`` logits; metrics ``accuracy`` (primary) and ``loss``.

    ``batch['images']`` ``(N, C, H, W)`` float32 and ``batch['labels']`` ``(N,)`` int64 are moved to the
    model's device when they are not there yet. ``class_weights``: optional ``(num_classes,)`` loss weights;
    ``class_names``: names for reports (default ``'0'``, ``'1'``, ...).
    """

    kind = "classification"
    primary_metric = "accuracy"
    onnx_probabilities = True
    """The ONNX graph also outputs softmax ``probabilities``."""

    def __init__(self, num_classes: int, class_weights: Sequence[float] | None = None,
                 class_names: Sequence[str] | None = None) -> None:
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ConfigError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.class_names = [str(c) for c in (class_names if class_names is not None else range(num_classes))]
        self.loss = SoftmaxCrossEntropy(class_weights=self.class_weights)

    # -- what the stages look up -----------------------------------------------------------------------------
    @staticmethod
    def output_classes(classes: Sequence[str]) -> list[str]:
        return list(classes)

    @staticmethod
    def model_names() -> list[str]:
        from xpvision.models import MODELS

        return sorted(MODELS)

    @staticmethod
    def build_network(name: str, args: dict, input_shape: Sequence[int], classes: Sequence[str],
                      train_set: Any = None) -> tuple[Layer, dict[str, Any]]:
        """A registered classifier (:func:`xpvision.models.build_model`); it adds nothing to the metadata."""
        from xpvision.models import build_model

        channels, height, width = input_shape
        return build_model(name, in_channels=channels, num_classes=len(classes), input_size=(height, width),
                           **args), {}

    @classmethod
    def for_model(cls, model: Layer | None, meta: dict, class_weights: Sequence[float] | None = None):
        weights = checked_class_weights(class_weights, meta, cls.kind)
        return cls(len(meta["classes"]), class_weights=weights, class_names=meta["classes"])

    # -- training and evaluation -----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "num_classes": self.num_classes,
                "class_weights": self.class_weights}

    def forward_loss(self, model: Layer, batch: dict) -> tuple[float, Any]:
        logits = model.forward(backend.to_device(batch["images"], model.device))  # (N, K)
        loss = self.loss.forward(logits, backend.to_device(batch["labels"], model.device))
        return loss, self.loss.backward()

    def predict(self, model: Layer, loader: Iterable[dict]) -> tuple[float, np.ndarray, np.ndarray]:
        """Eval-mode pass over ``loader``: ``(mean loss, y_true (N,) int64, y_pred (N,) int64)``."""
        loss_fn = SoftmaxCrossEntropy(class_weights=self.class_weights)
        truths, predictions = [], []

        def step(batch: dict, logits: Any) -> tuple[float, int]:  # logits (N, K)
            labels = backend.to_device(batch["labels"], model.device)
            truths.append(backend.to_numpy(labels).astype(np.int64))
            predictions.append(backend.to_numpy(logits.argmax(axis=1)).astype(np.int64))
            return loss_fn.forward(logits, labels), int(labels.shape[0])

        loss = evaluation_pass(model, loader, step, "cannot evaluate on an empty loader")
        return loss, np.concatenate(truths), np.concatenate(predictions)

    def evaluate_with_confusion(self, model: Layer, loader: Iterable[dict]) -> tuple[dict[str, float],
                                                                                     np.ndarray]:
        """``({'accuracy', 'loss'}, confusion (K, K) int64)`` in one pass."""
        loss, y_true, y_pred = self.predict(model, loader)
        metrics = {"accuracy": float((y_true == y_pred).mean()), "loss": float(loss)}
        return metrics, confusion_matrix(y_true, y_pred, self.num_classes)

    def evaluate(self, model: Layer, loader: Iterable[dict]) -> dict[str, float]:
        return self.evaluate_with_confusion(model, loader)[0]

    def test_report(self, model: Layer, loader: Iterable[dict], test_set: Any,
                    figures_dir: str | os.PathLike, *,
                    sample_images: int = 32) -> tuple[dict[str, float], PerClass]:
        """Test metrics (``accuracy``, ``loss``, ``error_rate``), ``confusion_matrix.png`` and ``samples.png``
        (the first ``sample_images`` test images, titled ``predicted (actual)``) in ``figures_dir``, and the
        per-class scores ``(classes, 'recall', values)`` (NaN for a class without test images)."""
        from xpvision.visualize import plot_confusion, plot_samples

        classes, figures = self.class_names, Path(figures_dir)
        loss, y_true, y_pred = self.predict(model, loader)
        plot_confusion(y_true, y_pred, classes, figures / "confusion_matrix.png")
        shown = range(min(sample_images, len(test_set)))
        plot_samples([test_set[i]["image"] for i in shown],
                     [f"{classes[y_pred[i]]} ({classes[y_true[i]]})" for i in shown],
                     [bool(y_pred[i] == y_true[i]) for i in shown], figures / "samples.png")
        recall = [float(np.mean(y_pred[y_true == k] == k)) if np.any(y_true == k) else float("nan")
                  for k in range(len(classes))]
        metrics = {"accuracy": float(np.mean(y_true == y_pred)), "loss": float(loss),
                   "error_rate": float(np.mean(y_true != y_pred))}
        return metrics, (classes, "recall", recall)

    # -- prediction on images (xpvision predict, the MLflow model, the export checks) ----------------------
    @staticmethod
    def predict_images(model: Layer, meta: dict, x: Any, score_threshold: float = 0.3) -> list[dict]:
        """``{'label', 'class_id', 'score', 'probabilities'}`` per image of the network input ``x``
        ``(N, C, H, W)`` (``score_threshold`` unused)."""
        from xpvision.nn.functional import softmax

        logits = model.forward(backend.to_device(x, model.device))  # on the model's device
        probabilities = np.asarray(backend.to_numpy(softmax(logits, axis=1)))  # (N, K)
        ids = probabilities.argmax(axis=1)
        return [{"label": meta["classes"][k], "class_id": int(k), "score": float(p[k]),
                 "probabilities": p.tolist()} for k, p in zip(ids, probabilities, strict=True)]

    @staticmethod
    def prediction_record(meta: dict, result: dict, original_size: tuple[int, int]) -> dict[str, Any]:
        """A result of :meth:`predict_images` as plain JSON-able Python."""
        return {"label": result["label"], "score": result["score"],
                "probabilities": dict(zip(meta["classes"], result["probabilities"], strict=True))}

    @staticmethod
    def write_prediction(out: Path, path: Path, original: Any, record: dict, result: dict,
                         meta: dict) -> Path | None:
        """Nothing to draw for a class label."""
        return None

    @staticmethod
    def describe(record: dict) -> str:
        return f"{record['image']}: {record['label']} ({record['score']:.3f})"

    @staticmethod
    def pyfunc_output(results: list[dict]) -> Any:
        """The MLflow model's output: a DataFrame, one row (``label``, ``class_id``, ``score``) per image."""
        import pandas as pd

        return pd.DataFrame([{k: r[k] for k in ("label", "class_id", "score")} for r in results])

    @staticmethod
    def pyfunc_agrees(served: Any, results: list[dict]) -> bool:
        return list(served["label"]) == [r["label"] for r in results]
