"""Colour label maps with the PASCAL VOC palette, blend them over images, write comparison PNGs.

Everything here runs on the host (NumPy + Pillow); CuPy inputs are copied over. Label maps are ``(H, W)``
integers in ``[0, 255]``; 255 (ignore) is drawn in the VOC palette's cream colour ``(224, 224, 192)``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from xpvision import backend
from xpvision.atomic import atomic_path
from xpvision.data.voc import voc_palette
from xpvision.errors import ShapeError

PALETTE = voc_palette()


def colorize(labels: Any) -> np.ndarray:
    """``(H, W)`` integer labels in ``[0, 255]`` -> ``(H, W, 3)`` uint8 RGB in the VOC palette."""
    labels = _label_map(labels)
    return PALETTE[labels]


def overlay(image: Any, labels: Any, alpha: float = 0.5, background: int | None = 0) -> Image.Image:
    """Blend the coloured ``labels`` over ``image`` and return an RGB PIL image.

    Args:
        image: ``(H, W, 3)``, ``(H, W, 1)`` or ``(H, W)`` uint8 (as stored), or float in ``[0, 1]`` of those
            shapes; a single channel is shown as grey.
        labels: ``(H, W)`` integer label map.
        alpha: weight of the label colour, in ``[0, 1]``.
        background: a label left uncoloured (the image shows through), or ``None`` to colour every pixel.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _rgb_image(image)
    labels = _label_map(labels)
    if labels.shape != rgb.shape[:2]:
        raise ShapeError(f"label map shape {labels.shape} does not match image size {rgb.shape[:2]}")
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * PALETTE[labels].astype(np.float32)  # (H, W, 3)
    if background is not None:
        keep = labels == background
        blended[keep] = rgb[keep]
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def comparison_image(image: Any, gt: Any | None, pred: Any, alpha: float = 0.5, scale: int = 1,
                     gap: int = 2) -> Image.Image:
    """Side by side: the image, ground truth over it (skipped when ``gt`` is None), prediction over it.

    ``image`` as in :func:`overlay`; ``gt``/``pred`` ``(H, W)`` label maps. ``scale`` enlarges every panel by
    an integer factor (nearest neighbour, so label edges stay sharp); panels are separated by ``gap`` white
    pixels.
    """
    if scale < 1 or gap < 0:
        raise ValueError(f"scale must be >= 1 and gap >= 0, got scale={scale}, gap={gap}")
    panels = [Image.fromarray(_rgb_image(image))]
    if gt is not None:
        panels.append(overlay(image, gt, alpha))
    panels.append(overlay(image, pred, alpha))
    width, height = panels[0].width * scale, panels[0].height * scale
    canvas = Image.new("RGB", (len(panels) * width + (len(panels) - 1) * gap, height), (255, 255, 255))
    for i, panel in enumerate(panels):
        canvas.paste(panel.resize((width, height), Image.Resampling.NEAREST), (i * (width + gap), 0))
    return canvas


def save_comparison(path: str | os.PathLike, image: Any, gt: Any | None, pred: Any, alpha: float = 0.5,
                    scale: int = 1) -> None:
    """Write :func:`comparison_image` as a PNG, atomically."""
    save_png(path, comparison_image(image, gt, pred, alpha, scale))


def save_label_png(path: str | os.PathLike, labels: Any) -> None:
    """Write an ``(H, W)`` label map as a VOC-style palette PNG (pixel values = labels), atomically.

    Reading it back with ``np.asarray(Image.open(path))`` returns the labels unchanged.
    """
    labels = _label_map(labels)
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels).tobytes())
    image.putpalette(PALETTE.ravel().tolist())
    save_png(path, image)


def save_png(path: str | os.PathLike, image: Image.Image) -> None:
    """Save a PIL image as PNG through a temporary file renamed into place."""
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


def _label_map(labels: Any) -> np.ndarray:
    """Validate an ``(H, W)`` integer label map in ``[0, 255]``; return it as uint8 on the host."""
    labels = np.asarray(backend.to_numpy(labels))
    if labels.ndim != 2:
        raise ShapeError(f"expected an (H, W) label map, got shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise ShapeError(f"expected an integer label map, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ShapeError(f"label values must be in [0, 255], got [{labels.min()}, {labels.max()}]")
    return labels.astype(np.uint8, copy=False)


def _rgb_image(image: Any) -> np.ndarray:
    """``(H, W)``/``(H, W, 1)``/``(H, W, 3)`` uint8 or [0, 1] float -> ``(H, W, 3)`` uint8."""
    image = np.asarray(backend.to_numpy(image))
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]  # (H, W)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)  # (H, W, 3)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ShapeError(f"expected an (H, W), (H, W, 1) or (H, W, 3) image, got shape {image.shape}")
    if image.dtype.kind == "f":
        image = np.clip(np.rint(image * 255.0), 0, 255)
    elif image.dtype != np.uint8:
        raise ShapeError(f"expected a uint8 or float image, got dtype {image.dtype}")
    return image.astype(np.uint8, copy=False)
