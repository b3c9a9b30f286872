"""Glue between the pipeline and each kind of task: which library builder makes the network, which task object
trains and evaluates it. No ML logic here: every function calls the library.

A model's metadata (``models/<task>/model.json`` ``meta``) holds what prediction and export need:
``kind`` (classification / detection / segmentation), ``classes`` (names of the network's outputs, background
included for segmentation), ``input_shape`` ``[C, H, W]``, ``normalization`` (the loader's), plus what the
detection head adds (anchors, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xpvision.config import TrainConfig, data_task
from xpvision.errors import ConfigError


def kind_of(task: str) -> str:
    """``classification``, ``detection`` or ``segmentation`` for a pipeline task name."""
    return data_task(task)


def output_classes(kind: str, classes: Sequence[str]) -> list[str]:
    """Names of the network's classes: segmentation adds ``background`` (mask value 0) in front."""
    return ["background", *classes] if kind == "segmentation" else list(classes)


def build_network(kind: str, cfg: TrainConfig, input_shape: Sequence[int], classes: Sequence[str],
                  train_set: Any) -> tuple[Any, dict[str, Any]]:
    """The untrained network of a ``train`` block and the metadata it adds to ``model.json``."""
    channels, height, width = input_shape
    args = dict(cfg.model_args)
    if kind == "classification":
        from xpvision.models import build_model

        model = build_model(cfg.model, in_channels=channels, num_classes=len(classes),
                            input_size=(height, width), **args)
        return model, {}
    if kind == "segmentation":
        from xpvision.segmentation.fcn import VARIANTS, build_fcn

        variant = cfg.model.removeprefix("fcn")
        if variant not in VARIANTS:
            raise ConfigError(f"train.{kind}.model: expected one of "
                              f"{', '.join('fcn' + v for v in VARIANTS)}, got {cfg.model!r}")
        return build_fcn(variant, in_channels=channels, num_classes=len(classes), **args), {}
    from xpvision.detection.yolo import build_detector

    return build_detector(cfg.model, in_channels=channels, classes=list(classes), input_size=(height, width),
                          train_set=train_set, **args)


def build_task(kind: str, model: Any, meta: dict[str, Any],
               class_weights: Sequence[float] | None = None) -> Any:
    """The trainer's task object (``forward_loss``, ``evaluate``, ``primary_metric``) for a model.

    ``class_weights`` (a train block's, one per entry of ``meta['classes']``) weight the classification and
    segmentation losses; detection refuses them.
    """
    if class_weights is not None:
        key = f"train.{meta.get('task', kind)}.class_weights"
        if kind == "detection":
            raise ConfigError(f"{key}: expected null (the detection loss has no class weights), got "
                              f"{list(class_weights)}")
        if len(class_weights) != len(meta["classes"]):
            raise ConfigError(f"{key}: expected {len(meta['classes'])} weights, one per class "
                              f"({', '.join(meta['classes'])}), got {len(class_weights)}")
    if kind == "classification":
        from xpvision.train import ClassificationTask

        return ClassificationTask(len(meta["classes"]), class_weights=class_weights)
    if kind == "segmentation":
        from xpvision.segmentation.task import SegmentationTask

        return SegmentationTask(len(meta["classes"]), class_names=meta["classes"],
                                class_weights=class_weights)
    from xpvision.detection.yolo import DetectionTask

    return DetectionTask(model, meta)
