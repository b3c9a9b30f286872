"""Tasks: what adapts the trainer and the stages to a problem, side by side, and the registry of them.

``TASKS`` maps a task kind (a model's ``meta['kind']``: ``classification``, ``detection``,
``segmentation``) to its class; the stages look a kind up here (:func:`task_class`) instead of switching on
it. Each class gives ``output_classes`` (the network's class names), ``model_names`` (what
``train.<task>.model`` accepts), ``build_network`` (calls the model's own builder), ``for_model`` (the task
object for a model and its metadata) and, on the object, ``forward_loss`` / ``evaluate`` for the trainer and
``test_report`` for the ``evaluate`` stage. :func:`~xpvision.tasks.base.evaluation_pass` is the one
evaluation loop they share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xpvision.errors import ConfigError
from xpvision.tasks.base import evaluation_pass
from xpvision.tasks.classification import ClassificationTask, confusion_matrix
from xpvision.tasks.detection import DetectionTask, detection_metrics, evaluate_and_plot
from xpvision.tasks.segmentation import SegmentationTask

TASKS: dict[str, type] = {cls.kind: cls for cls in (ClassificationTask, DetectionTask, SegmentationTask)}


def task_class(kind: str) -> type:
    """The task class of ``kind``; :class:`ConfigError` listing the known kinds otherwise."""
    try:
        return TASKS[kind]
    except KeyError:
        raise ConfigError(f"unknown task kind {kind!r}; expected one of {', '.join(TASKS)}") from None


def output_classes(kind: str, classes: Sequence[str]) -> list[str]:
    """Names of the network's classes for a dataset's ``classes`` (segmentation adds ``background``)."""
    return task_class(kind).output_classes(classes)


def build_task(kind: str, model: Any, meta: dict[str, Any], class_weights: Sequence[float] | None = None):
    """The task object of a model of ``kind`` and its metadata; ``class_weights`` (a train block's, one per
    entry of ``meta['classes']``) weight the classification and segmentation losses, detection refuses them.
    """
    return task_class(kind).for_model(model, meta, class_weights)


__all__ = [
    "TASKS",
    "ClassificationTask",
    "DetectionTask",
    "SegmentationTask",
    "build_task",
    "confusion_matrix",
    "detection_metrics",
    "evaluate_and_plot",
    "evaluation_pass",
    "output_classes",
    "task_class",
]
