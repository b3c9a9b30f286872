"""``eval_detection_coco`` against pycocotools on randomised detections (crowds and all area ranges)."""

import numpy as np
import pytest
from coco_reference import pycocotools_eval, random_scene_set

from xpvision.detection.metrics.coco import eval_detection_coco
from xpvision.errors import ShapeError

STAT_KEYS = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
             "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocotools(seed):
    rng = np.random.default_rng(seed)
    data = random_scene_set(rng, n_images=80, n_class=5)
    ours = eval_detection_coco(*data[:5], gt_crowdeds=data[5], num_classes=5)
    stats, precision, recall = pycocotools_eval(*data, n_class=5)
    np.testing.assert_allclose([ours[k] for k in STAT_KEYS], stats, atol=1e-6)
    np.testing.assert_allclose(ours["precision"], precision, atol=1e-6)
    np.testing.assert_allclose(ours["recall"], recall, atol=1e-6)
    assert len({round(v, 3) for v in stats}) > 6  # the data exercises distinct values in every range
    per_class = precision[:, :, :, 0, 2]
    expected = [per_class[:, :, k][per_class[:, :, k] > -1].mean() for k in range(5)]
    np.testing.assert_allclose(ours["ap_per_class"], expected, atol=1e-6)


def test_equals_pycocotools_with_given_areas_many_detections_and_empty_class():
    """More than 100 detections in one image (the per-image cap), explicit gt areas, a class with no gt."""
    rng = np.random.default_rng(7)
    pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_crowd = random_scene_set(rng, 20, 4)
    xy = np.round(rng.uniform(0, 300, (150, 2)) * 64) / 64
    pred_boxes[0] = np.concatenate([pred_boxes[0], np.concatenate([xy, xy + 40], 1).astype(np.float32)])
    pred_labels[0] = np.concatenate([pred_labels[0], np.zeros(150, np.int64)])
    pred_scores[0] = np.concatenate([pred_scores[0], rng.random(150).astype(np.float32)])
    gt_labels = [np.where(lab == 3, 2, lab) for lab in gt_labels]  # class 3: detections only
    areas = [rng.uniform(0, 2 * 96**2, len(b)) for b in gt_boxes]
    ours = eval_detection_coco(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_areas=areas,
                               gt_crowdeds=gt_crowd, num_classes=4)
    stats, precision, _ = pycocotools_eval(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels,
                                           gt_crowd,
                                           n_class=4, gt_areas=areas)
    np.testing.assert_allclose([ours[k] for k in STAT_KEYS], stats, atol=1e-6)
    np.testing.assert_allclose(ours["precision"], precision, atol=1e-6)
    assert np.isnan(ours["ap_per_class"][3])


def test_perfect_and_empty_predictions():
    boxes = [np.array([[10, 10, 60, 60], [100, 100, 300, 300]], np.float32)]
    labels = [np.array([0, 1])]
    perfect = eval_detection_coco(boxes, labels, [np.array([0.9, 0.8])], boxes, labels)
    assert perfect["map"] == pytest.approx(1.0) and perfect["mar_100"] == pytest.approx(1.0)
    assert perfect["map_small"] == -1.0  # no small ground truth: undefined, as pycocotools prints
    empty = eval_detection_coco([np.zeros((0, 4))], [np.zeros(0, np.int64)], [np.zeros(0)], boxes, labels)
    assert empty["map"] == 0.0 and empty["mar_100"] == 0.0


def test_bad_input_is_named():
    with pytest.raises(ShapeError, match="pred_scores"):
        eval_detection_coco([np.zeros((2, 4))], [np.zeros(2, np.int64)], [np.zeros(3)],
                            [np.zeros((0, 4))], [np.zeros(0, np.int64)])
    with pytest.raises(ShapeError, match="gt_boxes"):
        eval_detection_coco([np.zeros((0, 4))], [np.zeros(0, np.int64)], [np.zeros(0)], [], [])


def test_ties_and_exact_thresholds_equal_pycocotools():
    """Detection d has equal IoU with ground truths A and B (pycocotools gives it the later one, B); the next
    detection then overlaps A with IoU exactly 0.5 (matched at .50: ``>=``); one more has IoU exactly .75."""
    gt_boxes = [np.array([[5, 0, 20, 10], [10, 0, 25, 10], [100, 100, 140, 140]], np.float32)]
    gt_labels = [np.zeros(3, np.int64)]
    pred_boxes = [np.array([[10, 0, 20, 10], [0, 0, 15, 10], [100, 100, 140, 130]], np.float32)]
    pred_labels = [np.zeros(3, np.int64)]
    pred_scores = [np.array([0.9, 0.8, 0.7], np.float32)]
    crowd = [np.zeros(3, bool)]
    ours = eval_detection_coco(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_crowdeds=crowd)
    stats, _, recall = pycocotools_eval(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, crowd,
                                                n_class=1)
    np.testing.assert_allclose([ours[k] for k in STAT_KEYS], stats, atol=1e-6)
    np.testing.assert_allclose(ours["recall"], recall, atol=1e-6)
    assert recall[0, 0, 0, 2] == pytest.approx(1.0)  # at IoU .50 all three ground truths are found
    assert recall[5, 0, 0, 2] == pytest.approx(1 / 3)  # at .75 only the exact-.75 detection matches
