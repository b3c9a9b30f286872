"""The YOLO-style detection loss: target assignment, objectness, classification and box regression.

Assignment (YOLOv2). A ground truth belongs to the grid cell holding its centre and to the anchor whose size
has the highest IoU with its own (anchors and box compared on a common centre); one cell holds several objects
through its anchors. When two objects claim the same cell and anchor, the first one listed keeps it.
``difficult`` objects are never positives, but predictions overlapping them are not punished either.

Loss, summed and divided by the batch size ``N`` (of the whole batch of
:func:`xpvision.nn.parallel.current_layout`: in data-parallel training, of every process's part, the sums
taken block by block in block order):

* box: for positives, ``BCE(tx, x_off) + BCE(ty, y_off)`` on the logits of the centre offsets inside the cell
  (YOLOv3) and ``½(tw - log(w / p_w))² + ½(th - log(h / p_h))²``, each weighted ``2 - wh / (W·H)`` (small
  boxes count more);
* objectness: ``BCE(to, 1)`` for positives; ``noobj_weight · BCE(to, 0)`` for the other anchors, except those
  whose decoded box already overlaps a ground truth with IoU ``> ignore_iou`` (they are ignored);
* class: ``class_weight`` times the softmax cross-entropy over the ``C`` class logits of positives.

``forward(pred, target)`` returns the loss (a Python float) and keeps the parts in :attr:`YoloLoss.parts`;
``backward()`` returns ``dloss / dpred`` in ``pred``'s shape and dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from xpvision import backend
from xpvision.detection.anchors import wh_iou
from xpvision.detection.boxes import elementwise_box_iou
from xpvision.detection.yolo_spec import YoloSpec
from xpvision.errors import ConfigError
from xpvision.nn.activation import sigmoid
from xpvision.nn.functional import log_softmax
from xpvision.nn.parallel import current_layout


class Targets(NamedTuple):
    """Assigned positives (``P`` of them) and the per-image ground truth used for ignoring."""

    cell: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # (n, i, j, a), each (P,) int64
    offsets: np.ndarray  # (P, 2) float: centre offset inside the cell, x then y, in [0, 1]
    log_sizes: np.ndarray  # (P, 2) float: log(w / p_w), log(h / p_h)
    labels: np.ndarray  # (P,) int64
    weights: np.ndarray  # (P,) float: 2 - wh / (W·H)
    gt_boxes: np.ndarray  # (N, G_max, 4) float xyxy, every ground truth (difficult too), zero-padded
    gt_valid: np.ndarray  # (N, G_max) bool


def build_targets(spec: YoloSpec, boxes, labels, difficult, batch_size: int) -> Targets:
    """Assign per-image ground truth (lists of ``(R, 4)`` xyxy, ``(R,)`` labels, ``(R,)`` bool or None) to
    cells and anchors. Computed on the host in float64."""
    boxes = [np.asarray(backend.to_numpy(b), dtype=np.float64).reshape(-1, 4) for b in boxes]
    labels = [np.asarray(backend.to_numpy(lab), dtype=np.int64).reshape(-1) for lab in labels]
    if difficult is None:
        difficult = [np.zeros(len(b), dtype=bool) for b in boxes]
    difficult = [np.asarray(backend.to_numpy(d), dtype=bool).reshape(-1) for d in difficult]
    if not len(boxes) == len(labels) == len(difficult) == batch_size:
        raise ConfigError(f"detection targets: expected {batch_size} images of boxes/labels/difficult, got "
                          f"{len(boxes)}/{len(labels)}/{len(difficult)}")
    counts = np.array([len(b) for b in boxes], dtype=np.int64)
    g_max = max(int(counts.max(initial=0)), 1)
    gt_boxes = np.zeros((batch_size, g_max, 4))
    gt_valid = np.arange(g_max)[None, :] < counts[:, None]  # (N, G_max)
    for n, b in enumerate(boxes):
        gt_boxes[n, :len(b)] = b
    image = np.repeat(np.arange(batch_size), counts)
    flat = np.concatenate(boxes) if batch_size else np.zeros((0, 4))
    flat_labels = np.concatenate(labels) if batch_size else np.zeros(0, np.int64)
    if np.any((flat_labels < 0) | (flat_labels >= spec.num_classes)):
        raise ConfigError(f"detection targets: labels must lie in [0, {spec.num_classes}), got "
                          f"{sorted(set(flat_labels.tolist()))}")
    wh = flat[:, 2:] - flat[:, :2]  # (G, 2)
    keep = ~np.concatenate(difficult) & (wh > 0).all(axis=1) if batch_size else np.zeros(0, bool)
    image, flat, flat_labels, wh = image[keep], flat[keep], flat_labels[keep], wh[keep]
    stride_y, stride_x = spec.stride
    centre = (flat[:, :2] + flat[:, 2:]) * 0.5  # (P, 2) x, y in pixels
    col = np.clip(np.floor(centre[:, 0] / stride_x), 0, spec.grid[1] - 1).astype(np.int64)
    row = np.clip(np.floor(centre[:, 1] / stride_y), 0, spec.grid[0] - 1).astype(np.int64)
    anchors = spec.anchors.astype(np.float64)
    anchor = wh_iou(wh, anchors).argmax(axis=1) if len(wh) else np.zeros(0, np.int64)
    key = ((image * spec.grid[0] + row) * spec.grid[1] + col) * spec.num_anchors + anchor
    _, first = np.unique(key, return_index=True)  # one object per (image, cell, anchor): the first listed
    image, row, col, anchor = image[first], row[first], col[first], anchor[first]
    centre, wh, flat_labels = centre[first], wh[first], flat_labels[first]
    offsets = np.clip(np.stack([centre[:, 0] / stride_x - col, centre[:, 1] / stride_y - row], axis=1), 0, 1)
    log_sizes = np.log(wh / anchors[anchor])
    weights = 2.0 - wh[:, 0] * wh[:, 1] / float(spec.input_size[0] * spec.input_size[1])
    return Targets((image, row, col, anchor), offsets, log_sizes, flat_labels, weights, gt_boxes, gt_valid)


def bce_with_logits(x, target):
    """Element-wise ``-t·log σ(x) - (1 - t)·log(1 - σ(x))`` (stable) and its gradient ``σ(x) - t``."""
    xp = backend.get_array_module(x)
    loss = xp.maximum(x, 0) - x * target + xp.log1p(xp.exp(-xp.abs(x)))
    return loss, sigmoid(x) - target


class YoloLoss:
    """Loss of a YOLO-style head (see the module docstring). ``target`` is a dict with per-image lists
    ``boxes`` ``(R, 4)`` xyxy pixels, ``labels`` ``(R,)`` int and optionally ``difficult`` ``(R,)`` bool."""

    def __init__(self, spec: YoloSpec, ignore_iou: float = 0.5, noobj_weight: float = 1.0,
                 class_weight: float = 1.0) -> None:
        if not 0.0 < ignore_iou <= 1.0:
            raise ConfigError(f"detector ignore_iou: expected a value in (0, 1], got {ignore_iou}")
        if noobj_weight < 0:
            raise ConfigError(f"detector noobj_weight: expected >= 0, got {noobj_weight}")
        if class_weight < 0:
            raise ConfigError(f"detector class_weight: expected >= 0, got {class_weight}")
        self.spec = spec
        self.ignore_iou = float(ignore_iou)
        self.noobj_weight = float(noobj_weight)
        self.class_weight = float(class_weight)
        self.parts: dict[str, float] = {}
        self._grad = None
        self._pred_shape: tuple[int, ...] | None = None

    def config(self) -> dict[str, Any]:
        return {"ignore_iou": self.ignore_iou, "noobj_weight": self.noobj_weight,
                "class_weight": self.class_weight}

    def forward(self, pred, target: dict) -> float:
        """``pred``: head output ``(N, A·(5 + C), S_h, S_w)`` float32/float64 (NumPy or CuPy)."""
        xp = backend.get_array_module(pred)
        raw = self.spec.split(pred)  # (N, S_h, S_w, A, 5 + C)
        n = raw.shape[0]
        dtype = raw.dtype
        t = build_targets(self.spec, target["boxes"], target["labels"], target.get("difficult"), n)
        cell = tuple(xp.asarray(c) for c in t.cell)
        grad = xp.zeros(raw.shape, dtype=dtype)

        # objectness: every anchor, negatives overlapping a ground truth ignored
        with_gt = xp.asarray(t.gt_valid)
        decoded = self.spec.decode_boxes(raw).reshape(n, -1, 4)  # (N, S_h·S_w·A, 4)
        iou = elementwise_box_iou(decoded[:, :, None, :], xp.asarray(t.gt_boxes, dtype=dtype)[:, None, :, :])
        # iou: (N, M, G_max)
        best = xp.where(with_gt[:, None, :], iou, 0).max(axis=2).reshape(raw.shape[:4])  # (N, S_h, S_w, A)
        weight = xp.where(best > self.ignore_iou, 0.0, self.noobj_weight).astype(dtype)
        obj_target = xp.zeros(raw.shape[:4], dtype=dtype)
        weight[cell] = 1.0
        obj_target[cell] = 1.0
        obj_loss, obj_grad = bce_with_logits(raw[..., 4], obj_target)
        grad[..., 4] = weight * obj_grad

        # box and class terms of the positives
        positive = raw[cell]  # (P, 5 + C)
        box_weight = xp.asarray(t.weights, dtype=dtype)[:, None]  # (P, 1)
        xy_loss, xy_grad = bce_with_logits(positive[:, :2], xp.asarray(t.offsets, dtype=dtype))
        wh_diff = positive[:, 2:4] - xp.asarray(t.log_sizes, dtype=dtype)
        log_p = log_softmax(positive[:, 5:], axis=1)  # (P, C)
        labels = xp.asarray(t.labels)
        rows = xp.arange(len(t.labels))
        class_grad = xp.exp(log_p)
        class_grad[rows, labels] -= 1
        class_grad *= dtype.type(self.class_weight)
        grad[(*cell, slice(0, 2))] = box_weight * xy_grad
        grad[(*cell, slice(2, 4))] = box_weight * wh_diff
        grad[(*cell, slice(5, None))] = class_grad

        # sums over the whole batch of the layout (every process's part), block by block in block order; the
        # positives are sorted by image, so a block's are a contiguous run
        layout = current_layout(n, xp)
        scale = 1.0 / max(layout.total, 1)
        box_terms = box_weight * (xy_loss + 0.5 * wh_diff * wh_diff)  # (P, 2)
        obj_terms, class_terms = weight * obj_loss, -log_p[rows, labels]  # (N, S_h, S_w, A), (P,)
        runs = np.searchsorted(t.cell[0], [a for a, _ in layout.blocks] + [n])
        sums = layout.fold([xp.stack([box_terms[p0:p1].sum(), obj_terms[a:b].sum(), class_terms[p0:p1].sum()])
                            for (a, b), p0, p1 in zip(layout.blocks, runs[:-1], runs[1:], strict=True)])
        box, objectness, class_ = backend.to_numpy(sums).tolist()  # (3,): one copy to the host
        self.parts = {"box": box * scale, "objectness": objectness * scale,
                      "class": self.class_weight * class_ * scale}
        self._grad = grad * dtype.type(scale)
        self._pred_shape = tuple(pred.shape)
        return sum(self.parts.values())

    def backward(self):
        """``dloss / dpred`` ``(N, A·(5 + C), S_h, S_w)``, an NCHW-shaped view of a channels-last buffer."""
        if self._grad is None:
            raise RuntimeError("YoloLoss.backward called before forward")
        return self.spec.merge(self._grad)
