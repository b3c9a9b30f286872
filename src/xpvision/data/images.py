"""Image files and resizing of samples whose boxes and masks must follow the image.

Samples are dicts (see docs/architecture.md): ``image`` ``(H, W, C)`` uint8, optionally ``boxes`` ``(R, 4)``
float32 xyxy pixels (0-based, continuous: a box covering pixel columns 0..9 is ``x1 = 0, x2 = 10``) with
``labels``/``difficult``, and ``mask`` ``(H, W)`` uint8 (255 = ignore).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from xpvision.errors import DataError


def read_image(path: str | os.PathLike, channels: int = 3) -> np.ndarray:
    """Decode an image file into ``(H, W, channels)`` uint8 (RGB for 3 channels, L for 1).

    Raises:
        DataError: missing, not an image, or truncated/corrupt data (the whole file is decoded here).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            converted = im.convert("RGB" if channels == 3 else "L")
    except FileNotFoundError as e:
        raise DataError(f"image {path} does not exist") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {path} is corrupt or not an image: {e}") from e
    array = np.asarray(converted, dtype=np.uint8)
    return array.reshape(array.shape[0], array.shape[1], channels)  # (H, W, C)


def read_index_png(path: str | os.PathLike) -> np.ndarray:
    """Read a palette (mode ``P``) or grey PNG as its raw indices ``(H, W)`` uint8, never through the
    palette."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("P", "L"):
                raise DataError(f"mask {path}: expected a palette (P) or grey (L) PNG, got mode {im.mode}")
            return np.array(im, dtype=np.uint8)
    except FileNotFoundError as e:
        raise DataError(f"mask {path} does not exist") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"mask {path} is corrupt or not an image: {e}") from e


def resize_sample(sample: dict, size: tuple[int, int]) -> dict:
    """Resize a sample to ``size = (height, width)``: image bilinear, mask nearest, boxes scaled.

    The aspect ratio is not kept (like YOLOv1's fixed input). Returns a new dict; other keys are copied.
    """
    image = sample["image"]
    h, w = image.shape[:2]
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return dict(sample)
    out = dict(sample)
    channels = image.shape[2]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out["image"] = np.asarray(pil.resize((out_w, out_h), Image.BILINEAR), dtype=np.uint8).reshape(
        out_h, out_w, channels)  # (H', W', C)
    if "mask" in sample:
        out["mask"] = np.asarray(Image.fromarray(sample["mask"]).resize((out_w, out_h), Image.NEAREST),
                                 dtype=np.uint8)
    if "boxes" in sample:
        scale = np.array([out_w / w, out_h / h, out_w / w, out_h / h], dtype=np.float32)
        out["boxes"] = (sample["boxes"] * scale).astype(np.float32)
    return out
