"""The YOLO-style single-scale detector (its training task: :mod:`xpvision.tasks.detection`).

``build_detector`` puts a small convolutional head on the fully-convolutional ``features`` of any registered
model (so a trained classifier's backbone transfers by name, ``features.*``):
``Sequential(('features', backbone), ('head', Sequential(conv1 3x3, bn1, act1 LeakyReLU(0.1), pred 1x1)))``
with ``A·(5 + C)`` output channels (layout in :mod:`xpvision.detection.yolo_spec`). It is a plain Sequential,
so its spec and state dict round-trip through :mod:`xpvision.io`; the anchors, grid, input size and loss
settings go into the model's metadata under ``'detector'``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from xpvision import backend
from xpvision.detection.anchors import kmeans_anchors, mean_best_iou
from xpvision.detection.yolo_loss import YoloLoss
from xpvision.detection.yolo_spec import YoloSpec
from xpvision.errors import ConfigError, DataError
from xpvision.models import build_model, feature_shapes
from xpvision.nn.activation import LeakyReLU
from xpvision.nn.base import Sequential
from xpvision.nn.conv import Conv2d
from xpvision.nn.norm import BatchNorm2d

DETECTORS = ("yolo",)
# The objectness bias starts at logit(0.01): most anchors hold nothing, so training starts near the answer.
OBJECTNESS_PRIOR = 0.01


def build_detector(name: str, *, in_channels: int, classes: Sequence[str], input_size: tuple[int, int],
                   train_set: Any = None, backbone: str = "deep_convnet", num_anchors: int = 3,
                   anchors: Sequence[Sequence[float]] | None = None, backbone_args: dict | None = None,
                   head_channels: int = 128, ignore_iou: float = 0.5, noobj_weight: float = 1.0,
                   class_weight: float = 1.0, anchor_seed: int = 0) -> tuple[Sequential, dict[str, Any]]:
    """A YOLO-style detector and the metadata its task and ``predict`` need.

    Args:
        name: ``'yolo'``.
        in_channels, classes, input_size: image channels, class names, ``(H, W)`` of the (fixed-size) input.
        train_set: a dataset of samples with ``boxes`` ``(R, 4)`` xyxy pixels, for k-means anchors (not needed
            when ``anchors`` are given).
        backbone: a registered model name (its ``features`` are used); backbone_args: its keyword arguments.
        num_anchors: anchors per cell, by k-means (1 - IoU) on the training boxes (seed ``anchor_seed``).
        anchors: explicit ``(A, 2)`` anchor ``(w, h)`` in pixels instead of k-means.
        head_channels: width of the head's 3x3 conv.
        ignore_iou, noobj_weight, class_weight: loss settings (:class:`YoloLoss`).

    Returns:
        ``(model, {'detector': {...}})`` — the model in training mode and the metadata block.
    """
    if name not in DETECTORS:
        raise ConfigError(f"train.detection.model: expected one of {DETECTORS}, got {name!r}")
    height, width = input_size
    classifier = build_model(backbone, in_channels=in_channels, num_classes=max(len(classes), 2),
                             input_size=(height, width), **(backbone_args or {}))
    channels, grid_h, grid_w = list(feature_shapes(classifier, (in_channels, height, width)).values())[-1]
    if anchors is None:
        if train_set is None:
            raise ConfigError("build_detector: give anchors or a train_set to compute them from")
        train_boxes = training_boxes(train_set)
        anchors = kmeans_anchors(train_boxes, num_anchors, seed=anchor_seed)
        anchor_fit = mean_best_iou(train_boxes, anchors)
    else:
        anchor_fit = None
    spec = YoloSpec(np.asarray(anchors, dtype=np.float32), (grid_h, grid_w), (height, width), len(classes))
    head = Sequential(("conv1", Conv2d(channels, head_channels, 3, padding=1, bias=False)),
                      ("bn1", BatchNorm2d(head_channels)), ("act1", LeakyReLU(0.1)),
                      ("pred", Conv2d(head_channels, spec.channels, 1)))
    _init_prediction_layer(head["pred"], spec)
    model = Sequential(("features", classifier["features"]), ("head", head))
    detector = {"type": name, "backbone": backbone, **spec.to_meta(),
                "loss": {"ignore_iou": ignore_iou, "noobj_weight": noobj_weight,
                         "class_weight": class_weight},
                "anchor_mean_iou": anchor_fit}
    YoloLoss(spec, **detector["loss"])  # validates the loss settings now, not at the first step
    return model, {"detector": detector}


def training_boxes(dataset: Any) -> np.ndarray:
    """All ``boxes`` of a detection dataset, ``(R, 4)`` float32."""
    boxes = [np.asarray(dataset[i]["boxes"], dtype=np.float32).reshape(-1, 4) for i in range(len(dataset))]
    if not boxes or sum(len(b) for b in boxes) == 0:
        raise DataError("detection training set holds no boxes to compute anchors from")
    return np.concatenate(boxes)


def _init_prediction_layer(pred: Conv2d, spec: YoloSpec) -> None:
    """Small weights, and the objectness bias at the prior, so early losses are moderate."""
    xp = backend.get_array_module(pred.params["W"])
    rng = np.random.default_rng(0)
    pred.params["W"][...] = xp.asarray(rng.normal(0.0, 0.01, pred.params["W"].shape).astype(np.float32))
    bias = np.zeros(spec.channels, dtype=np.float32)
    bias[4::5 + spec.num_classes] = math.log(OBJECTNESS_PRIOR / (1 - OBJECTNESS_PRIOR))
    pred.params["b"][...] = xp.asarray(bias)
