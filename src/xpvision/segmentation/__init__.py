"""Semantic segmentation: metrics (confusion matrix, IoU), VOC palette and overlays."""

from xpvision.segmentation.metrics import ConfusionMatrix, eval_semantic_segmentation, metrics_from_confusion
from xpvision.segmentation.visualize import colorize, overlay, save_comparison, save_label_png, voc_palette

__all__ = [
    "ConfusionMatrix",
    "colorize",
    "eval_semantic_segmentation",
    "metrics_from_confusion",
    "overlay",
    "save_comparison",
    "save_label_png",
    "voc_palette",
]
