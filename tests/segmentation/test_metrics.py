"""eval_semantic_segmentation and ConfusionMatrix against a direct per-class reference and scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from xpvision.errors import DataError, ShapeError
from xpvision.segmentation.metrics import ConfusionMatrix, eval_semantic_segmentation


def _random_maps(rng, sizes, n_class, ignore_fraction=0.2):
    """Per-image (pred, gt) int64 maps; gt has some 255 pixels; class n_class - 1 never appears."""
    preds, gts = [], []
    for h, w in sizes:
        gt = rng.integers(0, n_class - 1, size=(h, w))
        gt[rng.random((h, w)) < ignore_fraction] = 255
        # Predictions agree with gt on ~half the pixels so IoUs are neither 0 nor 1.
        noise = rng.integers(0, n_class - 1, (h, w))
        pred = np.where(rng.random((h, w)) < 0.5, np.where(gt == 255, 0, gt), noise)
        preds.append(pred)
        gts.append(gt)
    return preds, gts


def _reference(preds, gts, n_class, ignore=255):
    """Per-class IoU / accuracy from boolean masks, the textbook definitions, one class at a time."""
    pred = np.concatenate([p.ravel() for p in preds])
    gt = np.concatenate([g.ravel() for g in gts])
    valid = gt != ignore
    pred, gt = pred[valid], gt[valid]
    iou, acc = np.full(n_class, np.nan), np.full(n_class, np.nan)
    for c in range(n_class):
        inter = np.sum((pred == c) & (gt == c))
        union = np.sum((pred == c) | (gt == c))
        if union:
            iou[c] = inter / union
        if np.sum(gt == c):
            acc[c] = inter / np.sum(gt == c)
    return iou, acc, np.mean(pred == gt), confusion_matrix(gt, pred, labels=np.arange(n_class))


def test_matches_reference_on_list_of_different_sizes(rng):
    n_class = 6
    preds, gts = _random_maps(rng, [(17, 23), (8, 5), (31, 12)], n_class)
    result = eval_semantic_segmentation(preds, gts, n_class)
    iou, acc, pixel_acc, confusion = _reference(preds, gts, n_class)
    np.testing.assert_array_equal(result["confusion"], confusion)
    assert result["confusion"].dtype == np.int64
    np.testing.assert_allclose(result["iou"], iou, equal_nan=True)
    assert np.isnan(result["iou"][n_class - 1])  # absent from both prediction and ground truth
    assert result["miou"] == pytest.approx(np.nanmean(iou))
    np.testing.assert_allclose(result["class_accuracy"], acc, equal_nan=True)
    assert result["mean_class_accuracy"] == pytest.approx(np.nanmean(acc))
    assert result["pixel_accuracy"] == pytest.approx(pixel_acc)


def test_batched_array_equals_list_and_streaming_accumulates(xp, rng):
    n_class = 4
    preds, gts = _random_maps(rng, [(9, 11)] * 5, n_class)
    pred_batch = xp.asarray(np.stack(preds)).astype(xp.uint8)  # (N, H, W), uint8 as read from PNG masks
    gt_batch = xp.asarray(np.stack(gts)).astype(xp.uint8)
    whole = eval_semantic_segmentation(pred_batch, gt_batch, n_class)
    streaming = ConfusionMatrix(n_class)
    for i in range(0, 5, 2):
        streaming.update(pred_batch[i:i + 2], gt_batch[i:i + 2])
    np.testing.assert_array_equal(streaming.matrix, whole["confusion"])
    np.testing.assert_array_equal(whole["confusion"], _reference(preds, gts, n_class)[3])
    assert streaming.compute()["miou"] == pytest.approx(whole["miou"])
    streaming.reset()
    assert streaming.matrix.sum() == 0


def test_perfect_prediction_and_class_present_only_in_prediction():
    gt = np.array([[0, 1], [1, 255]])
    perfect = eval_semantic_segmentation(np.where(gt == 255, 2, gt), gt, 3)
    assert perfect["miou"] == 1.0 and perfect["pixel_accuracy"] == 1.0
    assert np.isnan(perfect["iou"][2])
    # Class 2 predicted where gt says 1: IoU 0 for class 2 (present in prediction only), not NaN.
    wrong = eval_semantic_segmentation(np.array([[0, 2], [1, 0]]), gt, 3)
    np.testing.assert_allclose(wrong["iou"], [1.0, 0.5, 0.0])
    assert np.isnan(wrong["class_accuracy"][2])
    assert wrong["pixel_accuracy"] == pytest.approx(2 / 3)


def test_ignore_index_none_counts_every_pixel():
    gt = np.array([[0, 1], [1, 1]])
    result = eval_semantic_segmentation(np.zeros((2, 2), dtype=np.int64), gt, 2, ignore_index=None)
    assert result["confusion"].sum() == 4


@pytest.mark.parametrize(("pred", "gt", "error", "match"), [
    ([[0, 1]], [[0, 7]], DataError, "ground-truth label 7 .*\\[0, 3\\)"),
    ([[0, 1]], [[-1, 0]], DataError, "ground-truth label -1"),
    ([[0, 255]], [[0, 1]], DataError, "predicted label 255"),
    ([[0, 1]], [[0, 1, 1]], ShapeError, "prediction shape \\(1, 2\\) != ground truth shape \\(1, 3\\)"),
    ([[0.0, 1.0]], [[0, 1]], ShapeError, "integer label map"),
])
def test_bad_inputs_raise_clear_errors(pred, gt, error, match):
    with pytest.raises(error, match=match):
        eval_semantic_segmentation(np.array(pred), np.array(gt), 3)


def test_count_mismatch_raises():
    with pytest.raises(ShapeError, match="2 predicted label maps but 1"):
        eval_semantic_segmentation([np.zeros((2, 2), int)] * 2, [np.zeros((2, 2), int)], 2)
