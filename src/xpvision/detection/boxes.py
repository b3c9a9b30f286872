"""Box arithmetic with torchvision's names and semantics.

Boxes are ``(N, 4)`` float arrays (float32 by default) in pixels. ``xyxy`` boxes are ``(x1, y1, x2, y2)`` with
continuous, 0-based coordinates: ``x2`` is the right *edge*, so a box's width is ``x2 - x1``;
``plus_one=True`` gives the VOC devkit's inclusive integer pixels (width ``x2 - x1 + 1``). Every function runs
on NumPy or CuPy arrays (``xp = backend.get_array_module(...)``).

This module is the one place where IoU is computed: :func:`box_iou` (all pairs) and
:func:`elementwise_box_iou` (broadcast pairs) share one intersection / union core, used by NMS, the YOLO loss,
the anchors and the VOC / COCO metrics. NMS keeps two specialised forms of the same arithmetic for its hot
paths (an in-place block form and the CUDA kernel), tested equal to :func:`box_iou`.
"""

from __future__ import annotations

import numpy as np

from xpvision import backend
from xpvision.errors import ShapeError

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def check_boxes(boxes, name: str = "boxes"):
    """Return ``boxes`` as an array of shape ``(N, 4)``; raise :class:`ShapeError` naming ``name`` otherwise.

    Integer boxes are converted to float32; float arrays keep their dtype.
    """
    xp = backend.get_array_module(boxes)
    boxes = xp.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ShapeError(f"{name}: expected shape (N, 4), got {tuple(boxes.shape)}")
    if boxes.dtype.kind not in "f":
        boxes = boxes.astype(xp.float32)
    return boxes


def box_area(boxes, *, plus_one: bool = False):
    """Areas ``(N,)`` of ``xyxy`` boxes ``(N, 4)``, same float dtype. Degenerate boxes give 0 or negatives, as
    in torchvision (no clamping). ``plus_one``: the VOC devkit's inclusive integer pixels (``+1`` to widths
    and heights)."""
    boxes = check_boxes(boxes)
    return _area(boxes, 1 if plus_one else 0)


def box_iou(boxes1, boxes2, *, plus_one: bool = False):
    """Pairwise IoU ``(N, M)`` of ``xyxy`` boxes ``(N, 4)`` and ``(M, 4)``.

    The result has the promoted float dtype of the inputs (float32 for float32 boxes). Where the union is 0
    (two empty boxes) the IoU is 0, not NaN as in torchvision. ``plus_one``: the VOC devkit's inclusive
    integer pixels (``+1`` to every width and height).
    """
    boxes1 = check_boxes(boxes1, "boxes1")
    boxes2 = check_boxes(boxes2, "boxes2")
    return _iou(boxes1[:, None, :], boxes2[None, :, :], 1 if plus_one else 0)


def elementwise_box_iou(boxes1, boxes2, *, plus_one: bool = False, crowd=None):
    """IoU of box pairs: ``boxes1`` ``(..., 4)`` and ``boxes2`` ``(..., 4)`` broadcast against each other (row
    ``k`` with row ``k``: ``(P, 4), (P, 4) -> (P,)``; one box against many: ``(4,), (P, 4) -> (P,)``; image by
    image: ``(B, N, 1, 4), (B, 1, G, 4) -> (B, N, G)``).

    Same arithmetic, dtype and empty-union rule as :func:`box_iou`. ``crowd``: optional boolean array
    broadcasting with the result; where true the denominator is the area of ``boxes1`` instead of the union
    (COCO's rule for crowd regions: the fraction of the detection inside the crowd box).
    """
    xp = backend.get_array_module(boxes1, boxes2)
    boxes1, boxes2 = xp.asarray(boxes1), xp.asarray(boxes2)
    for boxes, name in ((boxes1, "boxes1"), (boxes2, "boxes2")):
        if boxes.ndim < 1 or boxes.shape[-1] != 4:
            raise ShapeError(f"{name}: expected shape (..., 4), got {tuple(boxes.shape)}")
    if boxes1.dtype.kind != "f":
        boxes1 = boxes1.astype(xp.float32)
    if boxes2.dtype.kind != "f":
        boxes2 = boxes2.astype(xp.float32)
    return _iou(boxes1, boxes2, 1 if plus_one else 0, crowd)


def _area(boxes, offset):
    """Areas ``(...)`` of ``(..., 4)`` xyxy boxes, ``offset`` added to widths and heights."""
    if offset:
        return (boxes[..., 2] - boxes[..., 0] + offset) * (boxes[..., 3] - boxes[..., 1] + offset)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _intersection_union(boxes1, boxes2, offset):
    """The IoU core: intersection, union and area of ``boxes1``, each ``(...)``, of broadcasting ``(..., 4)``
    xyxy boxes; ``offset`` (0, or 1 for VOC pixels) is added to every width and height."""
    xp = backend.get_array_module(boxes1, boxes2)
    width = xp.asarray(xp.minimum(boxes1[..., 2], boxes2[..., 2]))  # an array even for two single boxes
    width -= xp.maximum(boxes1[..., 0], boxes2[..., 0])
    height = xp.asarray(xp.minimum(boxes1[..., 3], boxes2[..., 3]))
    height -= xp.maximum(boxes1[..., 1], boxes2[..., 1])
    if offset:
        width += offset
        height += offset
    inter = xp.maximum(width, 0, out=width)
    inter *= xp.maximum(height, 0, out=height)
    area1 = _area(boxes1, offset)
    union = area1 + _area(boxes2, offset)
    union -= inter
    return inter, union, area1


def _iou(boxes1, boxes2, offset, crowd=None):
    """``inter / union`` of broadcasting ``(..., 4)`` boxes, 0 where the denominator is not positive."""
    xp = backend.get_array_module(boxes1, boxes2)
    inter, union, area1 = _intersection_union(boxes1, boxes2, offset)
    if crowd is not None:
        union = xp.where(xp.asarray(crowd), area1, union)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 and x / negative are replaced below
        iou = inter / union
    return xp.where(union > 0, iou, 0).astype(inter.dtype, copy=False)


def box_convert(boxes, in_fmt: str, out_fmt: str):
    """Convert ``(N, 4)`` boxes between ``'xyxy'``, ``'xywh'`` (top-left corner, size) and ``'cxcywh'``
    (centre, size). Returns a new array of the same dtype."""
    for fmt, key in ((in_fmt, "in_fmt"), (out_fmt, "out_fmt")):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"{key}={fmt!r}; expected one of {BOX_FORMATS}")
    boxes = check_boxes(boxes)
    xp = backend.get_array_module(boxes)
    if in_fmt == out_fmt:
        return boxes.copy()
    a, b, c, d = (boxes[:, i] for i in range(4))
    if in_fmt == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        x1, y1, x2, y2 = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    else:
        x1, y1, x2, y2 = a, b, c, d
    if out_fmt == "xywh":
        out = (x1, y1, x2 - x1, y2 - y1)
    elif out_fmt == "cxcywh":
        out = ((x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1)
    else:
        out = (x1, y1, x2, y2)
    return xp.stack(out, axis=1).astype(boxes.dtype, copy=False)


def clip_boxes_to_image(boxes, size: tuple[int, int]):
    """Clip ``xyxy`` boxes ``(N, 4)`` to an image of ``size = (height, width)``: x into ``[0, width]``, y into
    ``[0, height]`` (torchvision's rule). Returns a new array of the same dtype."""
    boxes = check_boxes(boxes)
    if len(size) != 2:
        raise ShapeError(f"size: expected (height, width), got {size!r}")
    xp = backend.get_array_module(boxes)
    height, width = size
    out = boxes.copy()
    out[:, 0::2] = xp.clip(out[:, 0::2], 0, width)
    out[:, 1::2] = xp.clip(out[:, 1::2], 0, height)
    return out


def remove_small_boxes(boxes, min_size: float):
    """Indices (int64) of ``xyxy`` boxes ``(N, 4)`` whose width and height are both ``>= min_size``."""
    boxes = check_boxes(boxes)
    xp = backend.get_array_module(boxes)
    wh = boxes[:, 2:] - boxes[:, :2]  # (N, 2)
    return xp.nonzero((wh[:, 0] >= min_size) & (wh[:, 1] >= min_size))[0].astype(xp.int64)
