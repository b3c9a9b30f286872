"""Preview grids: samples drawn with their boxes, class names and masks, for reports and sanity checks."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from xpvision.atomic import write_bytes
from xpvision.data.voc import IGNORE, voc_palette

_BOX_COLOURS = ((255, 64, 64), (64, 255, 64), (64, 160, 255), (255, 255, 64), (255, 64, 255), (64, 255, 255))


def render_sample(sample: dict, classes: Sequence[str], scale: int = 2) -> Image.Image:
    """One sample as an RGB image ``scale`` times larger: mask blended in VOC colours (ignore in white), boxes
    outlined with their class name (difficult ones dashed-looking thin), or the class name for a ``label``."""
    image = sample["image"]
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image  # (H, W, 3)
    if "mask" in sample:
        mask = sample["mask"]
        colours = voc_palette()[mask].astype(np.float32)  # (H, W, 3)
        colours[mask == IGNORE] = 255
        blend = np.where((mask > 0)[..., None], 0.55 * rgb + 0.45 * colours, rgb)
        rgb = np.clip(blend, 0, 255).astype(np.uint8)
    h, w = rgb.shape[:2]
    canvas = Image.fromarray(np.ascontiguousarray(rgb)).resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    if "boxes" in sample:
        for k, (box, label) in enumerate(zip(sample["boxes"], sample["labels"], strict=True)):
            colour = _BOX_COLOURS[int(label) % len(_BOX_COLOURS)]
            x1, y1, x2, y2 = (float(v) * scale for v in box)
            width = 1 if sample.get("difficult") is not None and sample["difficult"][k] else 2
            draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=colour, width=width)
            draw.text((x1 + 2, y1 + 1), classes[int(label)], fill=colour)
    if "label" in sample:
        draw.text((2, 1), classes[int(sample["label"])], fill=(255, 64, 64))
    return canvas


def write_preview(path: str | os.PathLike, samples: Sequence[dict], classes: Sequence[str], columns: int = 8,
                  scale: int = 2) -> None:
    """Write a PNG grid of ``samples`` (see :func:`render_sample`) atomically to ``path``."""
    if not samples:
        return
    tiles = [render_sample(s, classes, scale) for s in samples]
    tile_w, tile_h = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = -(-len(tiles) // columns)
    grid = Image.new("RGB", (min(columns, len(tiles)) * (tile_w + 2), rows * (tile_h + 2)), (32, 32, 32))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % columns) * (tile_w + 2), (i // columns) * (tile_h + 2)))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    write_bytes(path, buf.getvalue())
