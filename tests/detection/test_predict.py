"""Decoding head output into detections, ``detect``, ``draw_detections`` and ``evaluate_and_plot``."""

import numpy as np
import pytest

from xpvision.data.loader import DataLoader, ListDataset
from xpvision.detection.predict import detect, draw_detections, postprocess
from xpvision.detection.yolo import build_detector
from xpvision.detection.yolo_spec import YoloSpec
from xpvision.tasks.detection import evaluate_and_plot

SPEC = YoloSpec(np.array([[6.0, 6.0], [12.0, 8.0]], np.float32), (4, 4), (32, 32), 3)


def confident_output(xp=np):
    """Nothing anywhere except: anchor 1 of cell (2, 1) sure of class 2, anchor 0 of the same cell a weaker
    near-duplicate of class 2, and anchor 0 of cell (0, 3) a class-0 box."""
    raw = np.full((1, 4, 4, 2, 8), -10.0, np.float32)
    raw[..., :4] = 0.0
    raw[0, 2, 1, 1, 4], raw[0, 2, 1, 1, 5:] = 6.0, [0.0, 0.0, 8.0]
    raw[0, 2, 1, 0, 4], raw[0, 2, 1, 0, 2:4], raw[0, 2, 1, 0, 5:] = 2.0, [np.log(2.0), 0.0], [0.0, 0.0, 8.0]
    raw[0, 0, 3, 0, 4], raw[0, 0, 3, 0, 5:] = 4.0, [5.0, 0.0, 0.0]
    return xp.asarray(SPEC.merge(raw))


def test_postprocess_decodes_suppresses_and_thresholds(xp):
    (found,) = postprocess(confident_output(xp), SPEC, score_threshold=0.1, nms_iou=0.45)
    boxes, labels, scores = (np.asarray(a.get() if hasattr(a, "get") else a) for a in found)
    assert labels.tolist() == [2, 0]  # the near-duplicate (12x6 in 12x8: IoU 0.75) is suppressed
    np.testing.assert_allclose(boxes, [[6, 16, 18, 24], [25, 1, 31, 7]], atol=1e-4)
    assert scores.dtype == np.float32 and scores[0] > scores[1] > 0.1
    (loose,) = postprocess(confident_output(xp), SPEC, score_threshold=0.1, nms_iou=0.8)
    assert len(loose.labels) == 3
    (strict,) = postprocess(confident_output(xp), SPEC, score_threshold=0.99)
    assert len(strict.labels) == 1


def test_boxes_are_clipped_to_the_image():
    raw = np.full((1, 4, 4, 2, 8), -10.0, np.float32)
    raw[..., :4] = 0.0
    raw[0, 3, 3, 1, 4], raw[0, 3, 3, 1, 2:4], raw[0, 3, 3, 1, 5] = 6.0, [1.0, 1.0], 8.0
    (found,) = postprocess(SPEC.merge(raw), SPEC)
    assert found.boxes.max() <= 32 and found.boxes.min() >= 0


def tiny_scenes(rng, n=6):
    samples = []
    for _ in range(n):
        image = rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)
        samples.append({"image": image, "boxes": np.array([[4, 4, 14, 16]], np.float32),
                        "labels": np.array([1]), "difficult": np.zeros(1, bool)})
    return ListDataset(samples, ("a", "b", "c"))


def test_detect_returns_numpy_detections_per_image(rng):
    model, extra = build_detector("yolo", in_channels=3, classes=["a", "b", "c"], input_size=(32, 32),
                                  anchors=[[8, 8]], head_channels=8)
    results = detect(model, rng.normal(size=(2, 3, 32, 32)).astype(np.float32),
                     {"classes": ["a", "b", "c"], **extra}, score_threshold=0.0, max_detections=5)
    assert len(results) == 2
    for d in results:
        assert d.boxes.shape == (5, 4) and d.labels.dtype == np.int64 and d.scores.dtype == np.float32
        assert np.all(np.diff(d.scores) <= 0)
    assert model.training  # detect restores the mode it found


def test_draw_detections_outlines_each_box():
    image = np.zeros((20, 30, 1), np.uint8)
    picture = draw_detections(image, np.array([[2, 10, 12, 19]]), np.array([1]), np.array([0.87]),
                              ["cat", "dog"], scale=2)
    array = np.asarray(picture)
    assert picture.size == (60, 40) and array.shape == (40, 60, 3)
    assert array[37, 4:24].min() > 0  # bottom edge of the box: last pixel row y2·2 - 1 = 37, x 4..23
    assert array[30, 30:50].max() == 0  # outside the box nothing is drawn


def test_evaluate_and_plot_writes_figures_and_metrics(tmp_path, rng):
    dataset = tiny_scenes(rng)
    model, extra = build_detector("yolo", in_channels=3, classes=list(dataset.classes), input_size=(32, 32),
                                  anchors=[[8, 8], [12, 12]], head_channels=8)
    meta = {"classes": list(dataset.classes), **extra}
    metrics = evaluate_and_plot(model, meta, DataLoader(dataset, 4), dataset, sample_count=2,
                                figures_dir=tmp_path)
    assert {"map_50", "map", "map_75", "loss", "ap50_b"} <= set(metrics)
    assert "ap50_a" not in metrics  # no ground truth of class a
    assert all(isinstance(v, float) for v in metrics.values())
    assert 0.0 <= metrics["map_50"] <= 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detections_000.png", "detections_001.png",
                                                           "pr_curves.png"]


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_detections_respect_max_detections(threshold, rng):
    pred = rng.normal(0, 3, (2, SPEC.channels, 4, 4)).astype(np.float32)
    for found in postprocess(pred, SPEC, score_threshold=threshold, nms_iou=1.0, max_detections=7):
        assert len(found.scores) <= 7 and np.all(found.scores > threshold)
