"""Semantic segmentation: the FCN builders, metrics (confusion matrix, IoU), prediction, VOC palette and
overlays. The training task is :class:`xpvision.tasks.SegmentationTask`."""

from xpvision.segmentation.fcn import FCN, VARIANTS, build_fcn
from xpvision.segmentation.metrics import ConfusionMatrix, eval_semantic_segmentation, metrics_from_confusion
from xpvision.segmentation.predict import predict_segmentation, write_prediction_images
from xpvision.segmentation.visualize import colorize, overlay, save_comparison, save_label_png, voc_palette

__all__ = [
    "FCN",
    "VARIANTS",
    "ConfusionMatrix",
    "build_fcn",
    "colorize",
    "eval_semantic_segmentation",
    "metrics_from_confusion",
    "overlay",
    "predict_segmentation",
    "save_comparison",
    "save_label_png",
    "voc_palette",
    "write_prediction_images",
]
