"""Image files and resizing of samples whose boxes and masks must follow the image.

Samples are dicts (see docs/architecture.md): ``image`` ``(H, W, C)`` uint8, optionally ``boxes`` ``(R, 4)``
float32 xyxy pixels (0-based, continuous: a box covering pixel columns 0..9 is ``x1 = 0, x2 = 10``) with
``labels``/``difficult``, and ``mask`` ``(H, W)`` uint8 (255 = ignore).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from xpvision.errors import DataError

MAX_PIXELS = 40_000_000
"""Largest image (width x height) decoded: a small file declaring more (a decompression bomb) is refused
before decoding. VOC and COCO images are about 0.2 megapixels, an 8K photograph 33."""
BOX_POLICIES = ("refuse", "clip")
log = logging.getLogger(__name__)


def read_image(path: str | os.PathLike, channels: int = 3, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file into ``(H, W, channels)`` uint8 (RGB for 3 channels, L for 1).

    Raises:
        DataError: missing, not an image, over ``max_pixels`` (checked from the header, before decoding), or
        truncated/corrupt data (the whole file is decoded here).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise DataError(f"image {path} is {im.width}x{im.height} = {im.width * im.height} pixels, "
                                f"over the limit of {max_pixels} (a decompression bomb?); not decoded")
            im.load()
            converted = im.convert("RGB" if channels == 3 else "L")
    except FileNotFoundError as e:
        raise DataError(f"image {path} does not exist") from e
    except Image.DecompressionBombError as e:
        raise DataError(f"image {path}: {e}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"image {path} is corrupt or not an image: {e}") from e
    array = np.asarray(converted, dtype=np.uint8)
    return array.reshape(array.shape[0], array.shape[1], channels)  # (H, W, C)


def inside(folder: Path, name: str, what: str) -> Path:
    """``folder / name``, refused with a DataError naming ``what`` (the annotation file and entry) when it
    resolves (through ``..`` or links) outside ``folder``."""
    path = folder / name
    if Path(name).is_absolute() or not path.resolve().is_relative_to(folder.resolve()):
        raise DataError(f"{what} {name!r} points outside {folder}; refusing to read it")
    return path


def check_boxes(boxes: np.ndarray, width: float, height: float, policy: str, what: str,
                ids: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``(R, 4)`` float32 xyxy boxes of an image of ``width`` x ``height`` pixels.

    A box is bad when a coordinate is not finite, its width or height is not positive, or it reaches outside
    ``[0, width] x [0, height]``. ``policy`` ``"refuse"``: DataError naming ``what`` (the file) and the bad
    object's id (``ids[r]``). ``"clip"``: boxes are clipped to the image; those left without area, or with
    non-finite coordinates, are dropped with a warning naming them.

    Returns ``(boxes, keep)``: the (clipped) boxes kept, and the ``(R,)`` bool mask of the input rows kept.
    """
    if policy not in BOX_POLICIES:
        raise DataError(f"box policy {policy!r} unknown; expected one of {BOX_POLICIES}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1)
    with np.errstate(invalid="ignore"):
        positive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        within = ((boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= width) & (boxes[:, 3] <= height))
    if policy == "refuse":
        bad = np.flatnonzero(~(finite & positive & within))
        if bad.size:
            r = int(bad[0])
            reason = ("a non-finite coordinate" if not finite[r]
                      else "a width or height <= 0" if not positive[r]
                      else f"a box outside the {width:g}x{height:g} image")
            raise DataError(f"{what}: object {ids[r]} has {reason}: xyxy {boxes[r].tolist()} ({bad.size} bad "
                            "box(es); set the box policy to clip to clip them to the image)")
        return boxes, np.ones(len(boxes), dtype=bool)
    clipped = boxes.copy()
    with np.errstate(invalid="ignore"):
        clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0, width)
        clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0, height)
        keep = finite & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    for r in np.flatnonzero(~keep):
        log.warning("%s: object %s dropped: box %s has no area inside the %gx%g image", what, ids[r],
                    boxes[r].tolist(), width, height)
    return clipped[keep], keep


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
