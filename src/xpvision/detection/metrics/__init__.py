"""Detection metrics: PASCAL VOC AP (:mod:`.voc`) and COCO AP/AR (:mod:`.coco`)."""

from xpvision.detection.metrics.coco import eval_detection_coco
from xpvision.detection.metrics.voc import eval_detection_voc, voc_ap

__all__ = ["eval_detection_coco", "eval_detection_voc", "voc_ap"]
