"""From head output to detections, and detections drawn on images (used by evaluation and ``xpvision
predict``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from xpvision import backend
from xpvision.detection.boxes import clip_boxes_to_image
from xpvision.detection.nms import batched_nms
from xpvision.detection.yolo_spec import YoloSpec
from xpvision.nn.activation import sigmoid
from xpvision.nn.base import Layer
from xpvision.nn.functional import softmax


class Detections(NamedTuple):
    """Detections of one image, by descending score (NumPy or CuPy, as the model's output)."""

    boxes: np.ndarray  # (K, 4) float32 xyxy pixels of the network input
    labels: np.ndarray  # (K,) int64
    scores: np.ndarray  # (K,) float32: objectness x class probability


def postprocess(pred, spec: YoloSpec, score_threshold: float = 0.01, nms_iou: float = 0.45,
                max_detections: int = 100) -> list[Detections]:
    """Decode head output ``(N, A·(5 + C), S_h, S_w)`` into per-image detections.

    Every (anchor, class) pair scoring ``σ(objectness)·softmax(class)`` above ``score_threshold`` is a
    candidate (so one box may be reported for two classes); boxes are clipped to the image, suppressed per
    image and class by :func:`batched_nms` (IoU ``> nms_iou``), and each image's best ``max_detections`` kept.
    The whole batch is decoded and suppressed at once, so on the GPU the number of synchronisations does not
    grow with the number of images or boxes.
    """
    xp = backend.get_array_module(pred)
    raw = spec.split(pred)  # (N, S_h, S_w, A, 5 + C)
    n = raw.shape[0]
    boxes = spec.decode_boxes(raw).reshape(n, -1, 4).astype(xp.float32)  # (N, M, 4)
    scores = (sigmoid(raw[..., 4:5]) * softmax(raw[..., 5:], axis=-1)).reshape(n, -1, spec.num_classes)
    scores = scores.astype(xp.float32)  # (N, M, C)
    image, anchor_idx, label = xp.nonzero(scores > score_threshold)  # (K,) each, image-major
    candidate_boxes = clip_boxes_to_image(boxes[image, anchor_idx], spec.input_size)  # (K, 4)
    candidate_scores = scores[image, anchor_idx, label]  # (K,)
    keep = batched_nms(candidate_boxes, candidate_scores, image * spec.num_classes + label, nms_iou)
    # by image, each image's boxes still by descending score (a stable sort)
    keep = keep[_stable_argsort(xp, image[keep])]
    counts = np.asarray(backend.to_numpy(xp.bincount(image[keep], minlength=n)))  # (N,) on the host
    starts = np.cumsum(counts) - counts
    results = []
    for k in range(n):
        chosen = keep[int(starts[k]):int(starts[k]) + min(int(counts[k]), max_detections)]
        results.append(Detections(candidate_boxes[chosen], label[chosen].astype(xp.int64),
                                  candidate_scores[chosen]))
    return results


def detections_to_numpy(detections: Sequence[Detections]) -> list[Detections]:
    """Per-image detections as NumPy arrays, copied from the GPU in three transfers whatever their number."""
    if not detections or not backend.is_gpu_array(detections[0].boxes):
        return [Detections(*(np.asarray(a) for a in d)) for d in detections]
    xp = backend.get_array_module(detections[0].boxes)
    sizes = np.cumsum([len(d.boxes) for d in detections])[:-1]
    parts = [np.split(backend.to_numpy(xp.concatenate([d[f] for d in detections])), sizes) for f in range(3)]
    return [Detections(*fields) for fields in zip(*parts, strict=True)]


def _stable_argsort(xp, keys):
    """int64 indices sorting ``keys`` ascending, equal keys in index order."""
    if xp is np:
        return np.argsort(keys, kind="stable")
    return xp.argsort(keys)  # CuPy's sorts are stable


def detect(model: Layer, images, meta: dict, score_threshold: float = 0.01, nms_iou: float = 0.45,
           max_detections: int = 100) -> list[Detections]:
    """Run a detector on a batch and return NumPy detections per image.

    Args:
        model: a detector from :func:`xpvision.detection.yolo.build_detector` (or ``io.load_model``).
        images: ``(N, C, H, W)`` float32, normalised as in training (``meta['normalization']``), ``(H, W)``
        the
            model's input size; moved to the model's device.
        meta: the model's metadata (``meta['detector']``, ``meta['classes']``).

    Returns:
        One :class:`Detections` per image (NumPy), boxes in input pixels.
    """
    from xpvision.nn.base import evaluating

    spec = YoloSpec.from_meta(meta)
    with evaluating(model):
        pred = model.forward(backend.to_device(images, model.device))
    return detections_to_numpy(postprocess(pred, spec, score_threshold, nms_iou, max_detections))


def draw_detections(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                    class_names: Sequence[str], scale: int = 1):
    """Draw boxes with ``name score`` captions on a copy of ``image`` and return a PIL image.

    Args:
        image: ``(H, W, C)`` uint8, C = 1 or 3 (the boxes' pixel frame).
        boxes: ``(K, 4)`` xyxy pixels; labels: ``(K,)`` int; scores: ``(K,)`` float.
        class_names: names indexed by label.
        scale: integer upscaling (nearest) before drawing, so captions stay legible on small images.
    """
    from PIL import Image, ImageDraw

    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    canvas = Image.fromarray(array).convert("RGB")
    if scale != 1:
        canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for box, label, score in zip(np.asarray(boxes, dtype=np.float64), np.asarray(labels),
                                 np.asarray(scores), strict=True):
        colour = _colour(int(label))
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        draw.rectangle([x1, y1, max(x2 - 1, x1), max(y2 - 1, y1)], outline=colour, width=max(1, scale // 2))
        caption = f"{class_names[int(label)]} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), caption)
        top_y = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle([x1, top_y, x1 + (right - left) + 2, top_y + (bottom - top) + 2], fill=colour)
        draw.text((x1 + 1, top_y), caption, fill=(0, 0, 0))
    return canvas


def _colour(label: int) -> tuple[int, int, int]:
    """A bright colour per class (golden-ratio hue steps)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)
