"""``eval_detection_voc`` on cases computed by hand from the devkit's rules."""

import numpy as np
import pytest

from xpvision.detection.metrics.voc import eval_detection_voc, voc_ap


def one_image(gt, preds, scores, difficult=None, labels=None, pred_labels=None):
    gt = np.array(gt, np.float32).reshape(-1, 4)
    preds = np.array(preds, np.float32).reshape(-1, 4)
    return dict(
        pred_boxes=[preds], pred_scores=[np.array(scores, np.float32)],
        pred_labels=[np.zeros(len(preds), np.int64) if pred_labels is None else np.array(pred_labels)],
        gt_boxes=[gt], gt_labels=[np.zeros(len(gt), np.int64) if labels is None else np.array(labels)],
        gt_difficult=None if difficult is None else [np.array(difficult, bool)])


GT = [[0, 0, 10, 10], [20, 20, 30, 30]]
# hit on gt 0 (0.9), duplicate of gt 0 (0.8, false positive), hit on gt 1 (0.7):
# precision [1, 1/2, 2/3], recall [1/2, 1/2, 1]
PREDS = [[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 30, 30]]


def test_all_point_and_11_point_ap_by_hand():
    result = eval_detection_voc(**one_image(GT, PREDS, [0.9, 0.8, 0.7]))
    np.testing.assert_allclose(result["precision"][0], [1, 1 / 2, 2 / 3])
    np.testing.assert_allclose(result["recall"][0], [1 / 2, 1 / 2, 1])
    assert result["ap"][0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # area under the envelope
    assert result["map"] == pytest.approx(5 / 6)
    voc07 = eval_detection_voc(**one_image(GT, PREDS, [0.9, 0.8, 0.7]), use_07_metric=True)
    assert voc07["ap"][0] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)  # t = 0..0.5 -> 1, t = 0.6..1 -> 2/3


def test_difficult_ground_truth_is_neither_positive_nor_false_positive():
    gt = [*GT, [50, 50, 60, 60]]
    preds = [*PREDS, [50, 50, 60, 60], [50, 50, 59, 60]]  # on the difficult box: ignored, duplicate too
    result = eval_detection_voc(**one_image(gt, preds, [0.9, 0.8, 0.7, 0.85, 0.75], difficult=[0, 0, 1]))
    np.testing.assert_allclose(result["precision"][0], [1, 1 / 2, 2 / 3])
    assert result["ap"][0] == pytest.approx(5 / 6)
    # without the flag, the difficult box counts: 3 positives and the duplicate on it is a false positive
    plain = eval_detection_voc(**one_image(gt, preds, [0.9, 0.8, 0.7, 0.85, 0.75]))
    np.testing.assert_allclose(plain["precision"][0], [1, 1, 2 / 3, 2 / 4, 3 / 5])


def test_detection_on_difficult_box_does_not_take_a_regular_one():
    """The best-IoU ground truth decides, even when it is difficult and a regular one overlaps enough."""
    gt = [[0, 0, 10, 10], [0, 0, 10, 12]]
    result = eval_detection_voc(**one_image(gt, [[0, 0, 10, 10]], [0.9], difficult=[1, 0]))
    np.testing.assert_array_equal(result["precision"][0], [])
    assert result["ap"][0] == 0.0


def test_threshold_is_inclusive_and_plus_one_convention():
    gt = [[0, 0, 10, 10]]
    half = [[0, 0, 10, 5]]  # IoU exactly 0.5 on continuous boxes
    assert eval_detection_voc(**one_image(gt, half, [1.0]))["ap"][0] == 1.0
    assert eval_detection_voc(**one_image(gt, half, [1.0]), iou_thresh=0.51)["ap"][0] == 0.0
    # inclusive pixels 0..9 x 0..9 (100 px) vs 0..9 x 0..4 (50 px): 0.5 with +1, 36/81 without
    inclusive_gt, inclusive_half = [[0, 0, 9, 9]], [[0, 0, 9, 4]]
    assert eval_detection_voc(**one_image(inclusive_gt, inclusive_half, [1.0]), plus_one=True)["ap"][0] == 1.0
    assert eval_detection_voc(**one_image(inclusive_gt, inclusive_half, [1.0]))["ap"][0] == 0.0


def test_ranking_across_images_and_classes():
    data = {
        "pred_boxes": [np.array([[0, 0, 10, 10], [40, 40, 50, 50]], np.float32),
                       np.array([[0, 0, 10, 10]], np.float32)],
        "pred_labels": [np.array([0, 0]), np.array([0])],
        "pred_scores": [np.array([0.5, 0.9]), np.array([0.7])],
        "gt_boxes": [np.array([[0, 0, 10, 10]], np.float32),
                     np.array([[0, 0, 10, 10], [5, 5, 9, 9]], np.float32)],
        "gt_labels": [np.array([0]), np.array([0, 2])],
    }
    result = eval_detection_voc(**data, num_classes=4)
    # by score: 0.9 (false positive, image 0), 0.7 (hit, image 1), 0.5 (hit, image 0); 2 positives
    np.testing.assert_allclose(result["precision"][0], [0, 1 / 2, 2 / 3])
    np.testing.assert_allclose(result["recall"][0], [0, 1 / 2, 1])
    assert result["ap"][0] == pytest.approx(0.5 * 2 / 3 + 0.5 * 2 / 3)
    assert np.isnan(result["ap"][1]) and np.isnan(result["ap"][3])  # no ground truth
    assert result["ap"][2] == 0.0  # ground truth but no detection
    assert result["map"] == pytest.approx(np.mean([2 / 3, 0.0]))


def test_first_ground_truth_wins_ties():
    gt = [[0, 0, 10, 10], [0, 0, 10, 10]]
    result = eval_detection_voc(**one_image(gt, [[0, 0, 10, 10]] * 3, [0.9, 0.8, 0.7], difficult=[0, 1]))
    # every detection picks gt 0 (the first of equal IoU): hit, then two duplicates
    np.testing.assert_allclose(result["precision"][0], [1, 1 / 2, 1 / 3])


def test_voc_ap_known_curves():
    assert voc_ap(np.array([1.0, 1.0]), np.array([0.5, 1.0])) == pytest.approx(1.0)
    assert voc_ap(np.array([0.0]), np.array([0.0]), use_07_metric=True) == 0.0
    assert voc_ap(np.array([1.0]), np.array([0.3])) == pytest.approx(0.3)
