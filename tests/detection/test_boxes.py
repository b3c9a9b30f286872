"""Box arithmetic against torchvision's definitions, written out inline."""

import numpy as np
import pytest

from xpvision import backend
from xpvision.detection.boxes import (
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    elementwise_box_iou,
    remove_small_boxes,
)
from xpvision.errors import ShapeError


def random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(0, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def reference_iou(a, b):
    """torchvision.ops.box_iou, one pair at a time in float64."""
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a.astype(np.float64)):
        for j, q in enumerate(b.astype(np.float64)):
            w = max(min(p[2], q[2]) - max(p[0], q[0]), 0)
            h = max(min(p[3], q[3]) - max(p[1], q[1]), 0)
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - w * h
            out[i, j] = w * h / union if union > 0 else 0.0
    return out


def test_box_iou_matches_definition(xp, rng):
    a, b = random_boxes(rng, 7), random_boxes(rng, 5)
    iou = box_iou(xp.asarray(a), xp.asarray(b))
    assert iou.shape == (7, 5) and iou.dtype == np.float32
    np.testing.assert_allclose(backend.to_numpy(iou), reference_iou(a, b), rtol=1e-5, atol=1e-6)


def test_box_iou_known_values(xp):
    a = xp.asarray([[0, 0, 10, 10]], dtype=xp.float32)
    b = xp.asarray([[0, 0, 10, 10], [5, 0, 15, 10], [10, 10, 20, 20], [2, 2, 4, 4]], dtype=xp.float32)
    np.testing.assert_allclose(backend.to_numpy(box_iou(a, b))[0], [1.0, 50 / 150, 0.0, 4 / 100], rtol=1e-6)


def test_box_iou_empty_and_degenerate(xp):
    empty = xp.zeros((0, 4), xp.float32)
    one = xp.asarray([[0, 0, 1, 1]], xp.float32)
    assert box_iou(empty, one).shape == (0, 1)
    assert box_iou(one, empty).shape == (1, 0)
    point = xp.asarray([[3, 3, 3, 3]], xp.float32)
    assert float(box_iou(point, point)[0, 0]) == 0.0


@pytest.mark.parametrize("bad", [np.zeros((3, 5)), np.zeros(4), np.zeros((2, 2, 4))])
def test_bad_shapes_raise_shape_error(bad):
    with pytest.raises(ShapeError, match="boxes1"):
        box_iou(bad, np.zeros((1, 4)))
    with pytest.raises(ShapeError, match="boxes"):
        box_area(bad)


def test_box_area(xp):
    boxes = xp.asarray([[0, 0, 2, 3], [1, 1, 1, 5]], xp.float32)
    np.testing.assert_array_equal(backend.to_numpy(box_area(boxes)), [6, 0])


def test_box_convert_known_and_round_trip(xp, rng):
    xyxy = xp.asarray([[1, 2, 5, 10]], xp.float32)
    np.testing.assert_array_equal(backend.to_numpy(box_convert(xyxy, "xyxy", "xywh")), [[1, 2, 4, 8]])
    np.testing.assert_array_equal(backend.to_numpy(box_convert(xyxy, "xyxy", "cxcywh")), [[3, 6, 4, 8]])
    boxes = xp.asarray(random_boxes(rng, 20))
    for fmt in ("xywh", "cxcywh"):
        there = box_convert(boxes, "xyxy", fmt)
        assert there.dtype == xp.float32
        np.testing.assert_allclose(backend.to_numpy(box_convert(there, fmt, "xyxy")), backend.to_numpy(boxes),
                                   atol=1e-4)
    via_xywh = box_convert(box_convert(boxes, "xyxy", "xywh"), "xywh", "cxcywh")
    direct = box_convert(boxes, "xyxy", "cxcywh")
    np.testing.assert_allclose(backend.to_numpy(via_xywh), backend.to_numpy(direct), atol=1e-4)


def test_box_convert_rejects_unknown_format():
    with pytest.raises(ValueError, match="in_fmt"):
        box_convert(np.zeros((1, 4)), "xyz", "xyxy")


def test_clip_boxes_to_image(xp):
    boxes = xp.asarray([[-5, -5, 50, 20], [10, 10, 200, 300]], xp.float32)
    clipped = clip_boxes_to_image(boxes, (30, 40))  # height 30, width 40
    np.testing.assert_array_equal(backend.to_numpy(clipped), [[0, 0, 40, 20], [10, 10, 40, 30]])
    assert float(boxes[0, 0]) == -5  # input untouched


def test_remove_small_boxes(xp):
    boxes = xp.asarray([[0, 0, 1, 5], [0, 0, 5, 5], [0, 0, 5, 0.5]], xp.float32)
    np.testing.assert_array_equal(backend.to_numpy(remove_small_boxes(boxes, 1.0)), [0, 1])


def test_elementwise_box_iou_is_the_diagonal_of_box_iou(xp, rng):
    a, b = xp.asarray(random_boxes(rng, 9)), xp.asarray(random_boxes(rng, 9))
    pairwise = backend.to_numpy(box_iou(a, b))
    np.testing.assert_array_equal(backend.to_numpy(elementwise_box_iou(a, b)), np.diag(pairwise))
    np.testing.assert_array_equal(backend.to_numpy(elementwise_box_iou(a[2], b)), pairwise[2])
    assert float(elementwise_box_iou(a[2], b[3])) == pairwise[2, 3]
    batched = elementwise_box_iou(xp.stack([a, b])[:, :, None, :], xp.stack([b, a])[:, None, :, :])
    assert batched.shape == (2, 9, 9)
    np.testing.assert_array_equal(backend.to_numpy(batched[0]), pairwise)
    np.testing.assert_array_equal(backend.to_numpy(batched[1]), pairwise.T)


def test_plus_one_is_the_voc_inclusive_pixel_rule(xp):
    a = xp.asarray([[0, 0, 9, 9]], xp.float64)  # 10 x 10 pixels, VOC style
    b = xp.asarray([[5, 0, 14, 9], [10, 10, 19, 19]], xp.float64)
    np.testing.assert_allclose(backend.to_numpy(box_iou(a, b, plus_one=True))[0], [50 / 150, 0.0])
    np.testing.assert_allclose(backend.to_numpy(box_area(a, plus_one=True)), [100.0])
    np.testing.assert_allclose(backend.to_numpy(elementwise_box_iou(a, b[:1], plus_one=True)), [50 / 150])


def test_crowd_pairs_divide_by_the_first_box_area(xp):
    det = xp.asarray([[0, 0, 10, 10], [0, 0, 10, 10]], xp.float64)
    crowd_box = xp.asarray([[5, 0, 30, 10], [5, 0, 30, 10]], xp.float64)
    iou = elementwise_box_iou(det, crowd_box, crowd=xp.asarray([False, True]))
    np.testing.assert_allclose(backend.to_numpy(iou), [50 / 300, 50 / 100])


def test_elementwise_box_iou_rejects_bad_shapes():
    with pytest.raises(ShapeError, match="boxes2"):
        elementwise_box_iou(np.zeros((2, 4)), np.zeros((2, 3)))
