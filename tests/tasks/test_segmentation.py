"""SegmentationTask (loss with the ignore label, metrics over a loader), predict_segmentation, PNGs."""

import numpy as np
import pytest
from PIL import Image

from xpvision.data.loader import DataLoader, ListDataset
from xpvision.errors import ConfigError, ShapeError
from xpvision.nn import Conv2d, Sequential
from xpvision.segmentation.metrics import eval_semantic_segmentation
from xpvision.segmentation.predict import predict_segmentation, write_prediction_images
from xpvision.tasks import SegmentationTask


class _FixedLogits(Sequential):
    """A 1x1 conv 'model' whose logits are the input channels themselves (identity weights)."""

    registered = False

    def __init__(self, channels):
        conv = Conv2d(channels, channels, 1, bias=False)
        conv.params["W"][...] = np.eye(channels, dtype=np.float32)[:, :, None, None]
        super().__init__(("score", conv))


def _loader(rng, n=5, size=(6, 7), classes=3):
    samples = []
    for _ in range(n):
        mask = rng.integers(0, classes, size).astype(np.uint8)
        mask[0, :2] = 255
        samples.append({"image": rng.integers(0, 255, (*size, classes), dtype=np.uint8), "mask": mask})
    return DataLoader(ListDataset(samples, ["a", "b"]), batch_size=2), samples


def test_evaluate_matches_metrics_on_argmax_of_the_images(rng):
    loader, samples = _loader(rng)
    model = _FixedLogits(3)
    task = SegmentationTask(3, class_names=["bg", "a", "b"])
    metrics = task.evaluate(model, loader)
    expected = eval_semantic_segmentation([s["image"].argmax(axis=2) for s in samples],
                                          [s["mask"] for s in samples], 3)
    assert set(metrics) == {"miou", "pixel_accuracy", "mean_class_accuracy", "loss"}
    assert metrics["miou"] == pytest.approx(expected["miou"])
    assert metrics["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"])
    assert task.primary_metric == "miou" and model.training  # mode restored
    report = task.report(task.evaluate_full(model, loader))
    assert list(report["iou"]) == ["bg", "a", "b"] and len(report["confusion"]) == 3


def test_forward_loss_ignores_255_and_returns_the_logit_gradient(rng):
    loader, _ = _loader(rng)
    batch = next(iter(loader))
    task = SegmentationTask(3)
    loss, dout = task.forward_loss(_FixedLogits(3), batch)
    assert dout.shape == batch["images"].shape and loss > 0
    ignored = batch["masks"] == 255
    assert np.all(np.asarray(dout).transpose(0, 2, 3, 1)[ignored] == 0)
    assert np.all(np.abs(np.asarray(dout).sum(axis=1)) < 1e-6)  # softmax - one-hot sums to 0 per pixel


def test_predict_segmentation_in_batches(rng):
    images = rng.random((5, 3, 4, 6)).astype(np.float32)
    labels = predict_segmentation(_FixedLogits(3), images, batch_size=2)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, images.argmax(axis=1))
    with pytest.raises(ShapeError, match=r"\(N, C, H, W\)"):
        predict_segmentation(_FixedLogits(3), images[0])


def test_write_prediction_images(tmp_path, rng):
    images = rng.integers(0, 255, (2, 4, 5, 3), dtype=np.uint8)
    preds = rng.integers(0, 3, (2, 4, 5))
    written = write_prediction_images(tmp_path, images, preds, ["a", "b"], ground_truth=preds, scale=1)
    assert [p.name for p in written] == ["a.png", "a_mask.png", "b.png", "b_mask.png"]
    assert Image.open(tmp_path / "a.png").size == (3 * 5 + 2 * 2, 4)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b_mask.png")), preds[1])
    with pytest.raises(ConfigError, match="plain file stem"):
        write_prediction_images(tmp_path, images[:1], preds[:1], ["../x"])
    with pytest.raises(ShapeError, match="2 images, 2 predictions and 1 names"):
        write_prediction_images(tmp_path, images, preds, ["a"])
