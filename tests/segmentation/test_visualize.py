"""VOC palette, colorize, overlays and the PNG writers."""

import numpy as np
import pytest
from PIL import Image

from xpvision.errors import ShapeError
from xpvision.segmentation.visualize import (
    colorize,
    comparison_image,
    overlay,
    save_comparison,
    save_label_png,
    voc_palette,
)


def _devkit_palette(n=256):
    """The VOC devkit's labelcolormap, written as the devkit's bit-by-bit loop."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def test_palette_matches_devkit_definition():
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    np.testing.assert_array_equal(palette, _devkit_palette())
    assert tuple(palette[1]) == (128, 0, 0) and tuple(palette[15]) == (192, 128, 128)
    assert tuple(palette[255]) == (224, 224, 192)


def test_colorize_indexes_palette(rng):
    labels = rng.integers(0, 11, size=(5, 7))
    labels[0, 0] = 255
    rgb = colorize(labels)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[2, 3], _devkit_palette()[labels[2, 3]])
    np.testing.assert_array_equal(rgb[0, 0], [224, 224, 192])


def test_overlay_blends_foreground_and_keeps_background():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    labels = np.array([[0, 1], [2, 0]])
    out = np.asarray(overlay(image, labels, alpha=0.5))
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])
    np.testing.assert_array_equal(out[0, 1], [114, 50, 50])  # (100 + 128) / 2, 100 / 2
    np.testing.assert_array_equal(out[1, 0], [50, 114, 50])
    grey_float = np.full((2, 2, 1), 100 / 255, dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(overlay(grey_float, labels, alpha=0.5)), out)


def test_overlay_rejects_mismatched_shapes():
    with pytest.raises(ShapeError, match="does not match image size"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((3, 4), np.int64))
    with pytest.raises(ShapeError, match="label values"):
        colorize(np.full((2, 2), 300))


def test_comparison_png_layout(tmp_path):
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    gt = np.ones((4, 6), dtype=np.int64)
    pred = np.zeros((4, 6), dtype=np.int64)
    path = tmp_path / "out" / "cmp.png"
    save_comparison(path, image, gt, pred, alpha=1.0, scale=2)
    saved = np.asarray(Image.open(path).convert("RGB"))
    assert saved.shape == (8, 3 * 12 + 2 * 2, 3)
    np.testing.assert_array_equal(saved[0, 14], [128, 0, 0])  # gt panel fully class 1
    np.testing.assert_array_equal(saved[0, 28], [0, 0, 0])  # prediction: background, image shows
    np.testing.assert_array_equal(saved[0, 12], [255, 255, 255])  # gap
    assert comparison_image(image, None, pred).size == (6 * 2 + 2, 4)
    assert [p.name for p in path.parent.iterdir()] == ["cmp.png"]  # no temporary file left behind


def test_label_png_round_trips(tmp_path, rng):
    labels = rng.integers(0, 11, size=(5, 9)).astype(np.uint8)
    labels[1, 1] = 255
    save_label_png(tmp_path / "mask.png", labels)
    with Image.open(tmp_path / "mask.png") as img:
        assert img.mode == "P"
        np.testing.assert_array_equal(np.asarray(img), labels)
        assert img.getpalette()[3:6] == [128, 0, 0]
