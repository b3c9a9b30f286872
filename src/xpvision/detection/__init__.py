"""Object detection: box arithmetic (``boxes``), NMS (``nms``), anchors, VOC/COCO metrics, the YOLO-style
detector and its training task. Import from the submodules (``from xpvision.detection.nms import nms``)."""
