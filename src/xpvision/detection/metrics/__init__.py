"""Detection metrics: PASCAL VOC AP (:mod:`.voc`) and COCO AP/AR (:mod:`.coco`)."""

from xpvision.detection.metrics.coco import eval_detection_coco

__all__ = ["eval_detection_coco"]
