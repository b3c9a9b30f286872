"""k-means anchors with the 1 - IoU distance."""

import numpy as np
import pytest

from xpvision.detection.anchors import kmeans_anchors, mean_best_iou, wh_iou
from xpvision.errors import ConfigError


def boxes_from_sizes(wh):
    return np.concatenate([np.zeros_like(wh), wh], axis=1).astype(np.float32)


def test_wh_iou_known():
    np.testing.assert_allclose(wh_iou(np.array([[10.0, 10.0]]), np.array([[10.0, 10.0], [5, 10], [20, 20]])),
                               [[1.0, 0.5, 0.25]])


def test_recovers_well_separated_clusters_sorted_by_area(rng):
    true = np.array([[8, 8], [30, 12], [12, 30], [60, 60]], dtype=np.float64)
    wh = np.repeat(true, 50, axis=0) * rng.uniform(0.95, 1.05, (200, 2))
    anchors = kmeans_anchors(boxes_from_sizes(wh), k=4, seed=3)
    assert anchors.shape == (4, 2) and anchors.dtype == np.float32
    areas = anchors[:, 0] * anchors[:, 1]
    assert np.all(np.diff(areas) >= 0)
    for target in true:  # each true size has an anchor within 5%
        assert np.min(np.abs(anchors / target - 1).max(axis=1)) < 0.05
    assert mean_best_iou(boxes_from_sizes(wh), anchors) > 0.9


def test_deterministic_for_a_seed_and_better_than_one_anchor(rng):
    wh = rng.uniform(5, 80, (300, 2))
    boxes = boxes_from_sizes(wh)
    np.testing.assert_array_equal(kmeans_anchors(boxes, 5, seed=1), kmeans_anchors(boxes, 5, seed=1))
    one = mean_best_iou(boxes, kmeans_anchors(boxes, 1))
    assert mean_best_iou(boxes, kmeans_anchors(boxes, 5)) > one + 0.05


def test_too_few_boxes():
    with pytest.raises(ConfigError, match="k=3"):
        kmeans_anchors(boxes_from_sizes(np.ones((2, 2))), 3)
