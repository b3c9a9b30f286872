"""Object detection, with torchvision's names: box arithmetic and IoU, NMS, VOC and COCO metrics, anchors and
the YOLO-style detector.

Everything public is importable from here (``from xpvision.detection import nms, box_iou``); the submodules
hold the implementations: :mod:`.boxes` (the one IoU), :mod:`.nms`, :mod:`.metrics`, :mod:`.anchors`,
:mod:`.yolo` (builder), :mod:`.yolo_loss`, :mod:`.yolo_spec` (head layout), :mod:`.predict` (decoding and
drawing). The training task is :class:`xpvision.tasks.DetectionTask`.
"""

from xpvision.detection.anchors import kmeans_anchors, mean_best_iou
from xpvision.detection.boxes import (
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    elementwise_box_iou,
    remove_small_boxes,
)
from xpvision.detection.metrics import eval_detection_coco, eval_detection_voc, voc_ap
from xpvision.detection.nms import batched_nms, nms, soft_nms
from xpvision.detection.predict import Detections, detect, draw_detections, postprocess
from xpvision.detection.yolo import DETECTORS, build_detector
from xpvision.detection.yolo_loss import YoloLoss
from xpvision.detection.yolo_spec import YoloSpec

__all__ = [
    "DETECTORS",
    "Detections",
    "YoloLoss",
    "YoloSpec",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "build_detector",
    "clip_boxes_to_image",
    "detect",
    "draw_detections",
    "elementwise_box_iou",
    "eval_detection_coco",
    "eval_detection_voc",
    "kmeans_anchors",
    "mean_best_iou",
    "nms",
    "postprocess",
    "remove_small_boxes",
    "soft_nms",
    "voc_ap",
]
