"""Running a saved model on raw images: shared by ``xpvision predict`` and the MLflow pyfunc model.

Input convention (also the ONNX model's and the pyfunc's): ``pixels`` ``(N, C, H, W)`` float32 in [0, 1] (a
uint8 image divided by 255) at the model's ``input_shape``; the normalisation recorded in the model's
metadata is applied here, as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xpvision.errors import DataError, ShapeError

LAYER_MODULES = {"segmentation": "xpvision.segmentation.fcn"}
"""Modules defining the custom layer classes a kind of model is built from (imported to register them)."""


def load_trained_model(model_dir: str | Path) -> tuple[Any, dict]:
    """``(model, meta)`` of a saved model, after importing the layer classes its kind needs."""
    import importlib

    from xpvision.io import load_model, read_spec

    kind = read_spec(model_dir)["meta"].get("kind")
    if kind in LAYER_MODULES:
        importlib.import_module(LAYER_MODULES[kind])
    return load_model(model_dir)


def normalization_of(meta: dict):
    """The :class:`~xpvision.data.loader.Normalization` a model was trained with."""
    from xpvision.data.loader import Normalization

    recorded = meta["normalization"]
    return Normalization.from_meta(recorded, recorded["mode"])


def network_input(meta: dict, pixels: np.ndarray) -> np.ndarray:
    """``pixels`` ``(N, C, H, W)`` float32 in [0, 1] -> the normalised network input, same shape."""
    expected = tuple(meta["input_shape"])
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
        raise ShapeError(f"expected images (N, {', '.join(map(str, expected))}) with pixels in [0, 1], "
                         f"got {tuple(pixels.shape)}")
    images = np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)  # (N, H, W, C)
    return np.ascontiguousarray(normalization_of(meta).apply(images).transpose(0, 3, 1, 2))  # (N, C, H, W)


def read_images(paths: Sequence[str | Path], meta: dict) -> tuple[np.ndarray, list[Any]]:
    """Image files -> ``(pixels (N, C, H, W) float32 in [0, 1] at the model's size, original PIL images)``."""
    from PIL import Image, UnidentifiedImageError

    channels, height, width = meta["input_shape"]
    pixels, originals = [], []
    for path in paths:
        try:
            with Image.open(path) as opened:
                image = opened.convert("L" if channels == 1 else "RGB")
        except FileNotFoundError as e:
            raise DataError(f"{path}: no such image file") from e
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{path}: not a readable image ({e})") from e
        originals.append(image)
        resized = np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32) / 255.0
        pixels.append(resized.reshape(height, width, channels).transpose(2, 0, 1))  # (C, H, W)
    return np.stack(pixels), originals  # (N, C, H, W)


def predict(model: Any, meta: dict, pixels: np.ndarray, score_threshold: float = 0.3) -> list[dict]:
    """One result per image, from the model's task (:meth:`predict_images` of :mod:`xpvision.tasks`):

    * classification: ``{"label", "class_id", "score", "probabilities"}``
    * detection: ``{"boxes": (R, 4) xyxy pixels at the model's input size, "labels": [names], "scores"}``
    * segmentation: ``{"mask": (H, W) int64 class ids, "classes": names present}``
    """
    from xpvision.tasks import task_class

    x = network_input(meta, pixels)
    model.eval()
    return task_class(meta["kind"]).predict_images(model, meta, x, score_threshold=score_threshold)
