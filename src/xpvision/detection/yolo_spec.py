"""Geometry of the YOLO-style detector, shared by the loss, the decoder and the task.

A detector's head outputs ``(N, A·(5 + C), S_h, S_w)``: for every cell of the ``S_h × S_w`` grid (the
backbone's output, stride ``H / S_h`` by ``W / S_w`` pixels) and every anchor ``a``, the channels
``a·(5 + C) + [0, 1, 2, 3, 4, 5...]`` hold ``tx, ty, tw, th``, the objectness logit and ``C`` class logits
(YOLOv2). A box decodes to centre ``((σ(tx) + j)·stride_x, (σ(ty) + i)·stride_y)`` and size
``(p_w·e^tw, p_h·e^th)`` for anchor ``(p_w, p_h)`` in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xpvision import backend
from xpvision.errors import ConfigError, ShapeError
from xpvision.nn.activation import sigmoid

# e^tw is clamped at e^TW_MAX so an untrained head cannot overflow float32 (boxes stay under ~22k × anchor).
TW_MAX = 10.0


@dataclass(frozen=True)
class YoloSpec:
    """Anchors ``(A, 2)`` ``(w, h)`` float32 pixels, grid ``(S_h, S_w)``, input ``(H, W)``, class count."""

    anchors: np.ndarray
    grid: tuple[int, int]
    input_size: tuple[int, int]
    num_classes: int

    def __post_init__(self) -> None:
        anchors = np.asarray(self.anchors, dtype=np.float32)
        if anchors.ndim != 2 or anchors.shape[1] != 2 or len(anchors) == 0 or np.any(anchors <= 0):
            raise ConfigError(f"detector anchors: expected (A, 2) positive sizes, got {anchors.tolist()}")
        object.__setattr__(self, "anchors", anchors)
        if self.num_classes < 1:
            raise ConfigError(f"detector: expected at least one class, got {self.num_classes}")

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    @property
    def channels(self) -> int:
        """Output channels of the head: ``A·(5 + C)``."""
        return self.num_anchors * (5 + self.num_classes)

    @property
    def stride(self) -> tuple[float, float]:
        """Pixels per cell ``(stride_y, stride_x)``."""
        return self.input_size[0] / self.grid[0], self.input_size[1] / self.grid[1]

    def to_meta(self) -> dict[str, Any]:
        return {"anchors": self.anchors.tolist(), "grid": list(self.grid),
                "input_size": list(self.input_size)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> YoloSpec:
        """From a model's metadata: ``meta['detector']`` (anchors, grid, input size), ``meta['classes']``."""
        try:
            detector = meta["detector"]
            return cls(np.asarray(detector["anchors"], dtype=np.float32), tuple(detector["grid"]),
                       tuple(detector["input_size"]), len(meta["classes"]))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"model meta: not a detector's metadata (missing {e})") from None

    def split(self, pred):
        """Head output ``(N, A·(5 + C), S_h, S_w)`` -> ``(N, S_h, S_w, A, 5 + C)`` (a view for the network's
        channels-last buffers)."""
        n, channels, height, width = pred.shape
        if channels != self.channels or (height, width) != tuple(self.grid):
            expected = (self.channels, *self.grid)
            raise ShapeError(f"detector output: expected (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(pred.shape)}")
        return pred.transpose(0, 2, 3, 1).reshape(n, height, width, self.num_anchors, 5 + self.num_classes)

    def merge(self, raw):
        """Inverse of :meth:`split`: ``(N, S_h, S_w, A, 5 + C)`` -> ``(N, A·(5 + C), S_h, S_w)`` (a view)."""
        n, height, width = raw.shape[:3]
        return raw.reshape(n, height, width, self.channels).transpose(0, 3, 1, 2)

    def decode_boxes(self, raw):
        """``xyxy`` pixel boxes ``(N, S_h, S_w, A, 4)`` from split output ``raw`` ``(N, S_h, S_w, A, 5 + C)``,
        in ``raw``'s dtype."""
        xp = backend.get_array_module(raw)
        dtype = raw.dtype
        stride_y, stride_x = self.stride
        rows = xp.arange(self.grid[0], dtype=dtype)[None, :, None, None]  # (1, S_h, 1, 1)
        cols = xp.arange(self.grid[1], dtype=dtype)[None, None, :, None]  # (1, 1, S_w, 1)
        anchors = xp.asarray(self.anchors, dtype=dtype)  # (A, 2)
        centre_x = (sigmoid(raw[..., 0]) + cols) * dtype.type(stride_x)
        centre_y = (sigmoid(raw[..., 1]) + rows) * dtype.type(stride_y)
        half_w = anchors[:, 0] * xp.exp(xp.minimum(raw[..., 2], TW_MAX)) * dtype.type(0.5)
        half_h = anchors[:, 1] * xp.exp(xp.minimum(raw[..., 3], TW_MAX)) * dtype.type(0.5)
        return xp.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], axis=-1)

