"""Label maps predicted by a segmentation network, and the overlay images of ``xpvision predict``.

The model maps images ``(N, C, H, W)`` float32 (normalised as in training) to logits
``(N, num_classes, H, W)`` (an :class:`~xpvision.segmentation.fcn.FCN`). The training task is
:mod:`xpvision.tasks.segmentation`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xpvision import backend
from xpvision.errors import ConfigError, ShapeError
from xpvision.nn.base import Layer, evaluating
from xpvision.segmentation.visualize import save_comparison, save_label_png


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
