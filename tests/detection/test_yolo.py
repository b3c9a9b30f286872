"""The YOLO-style detector: construction, target assignment, loss gradient, decoding, io round trip."""

import numpy as np
import pytest

from xpvision import io
from xpvision.detection.yolo import build_detector
from xpvision.detection.yolo_loss import YoloLoss, build_targets
from xpvision.detection.yolo_spec import YoloSpec
from xpvision.errors import ConfigError, ShapeError
from xpvision.nn.gradcheck import numerical_gradient
from xpvision.tasks import DetectionTask

CLASSES = ["a", "b", "c"]
ANCHORS = [[6.0, 6.0], [12.0, 8.0]]


def small_detector(**kwargs):
    """deep_convnet features on 32x32 RGB: a 4x4 grid (stride 8)."""
    args = {"anchors": ANCHORS, "head_channels": 16, **kwargs}
    model, extra = build_detector("yolo", in_channels=3, classes=CLASSES, input_size=(32, 32), **args)
    return model, {"classes": CLASSES, **extra}


def test_output_layout_and_meta():
    model, meta = small_detector()
    assert meta["detector"]["grid"] == [4, 4] and meta["detector"]["anchors"] == ANCHORS
    assert list(model.layers) == ["features", "head"]
    out = model.forward(np.zeros((2, 3, 32, 32), np.float32))
    assert out.shape == (2, 2 * (5 + 3), 4, 4)
    spec = YoloSpec.from_meta(meta)
    raw = spec.split(out)
    np.testing.assert_allclose(raw[..., 4], np.log(0.01 / 0.99), atol=0.05)  # objectness starts at the prior
    np.testing.assert_array_equal(spec.merge(raw), out)


def test_kmeans_anchors_from_the_training_set(rng):
    train = [{"boxes": np.array([[0, 0, 8, 8], [0, 0, 20, 12]], np.float32) + rng.uniform(0, 0.5)}
             for _ in range(10)]
    _, extra = build_detector("yolo", in_channels=3, classes=CLASSES, input_size=(32, 32), train_set=train,
                              num_anchors=2, head_channels=8)
    np.testing.assert_allclose(extra["detector"]["anchors"], [[8, 8], [20, 12]], atol=1e-4)
    assert extra["detector"]["anchor_mean_iou"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="anchors or a train_set"):
        build_detector("yolo", in_channels=3, classes=CLASSES, input_size=(32, 32))
    with pytest.raises(ConfigError, match="model"):
        build_detector("ssd", in_channels=3, classes=CLASSES, input_size=(32, 32), anchors=ANCHORS)


def test_round_trip_through_io(tmp_path, rng):
    model, meta = small_detector()
    model.eval()
    x = rng.normal(size=(1, 3, 32, 32)).astype(np.float32)
    io.save_model(tmp_path / "det", model, meta)
    loaded, loaded_meta = io.load_model(tmp_path / "det")
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    assert loaded_meta["detector"] == meta["detector"]


def spec32():
    return YoloSpec(np.array(ANCHORS, np.float32), (4, 4), (32, 32), 3)


def test_target_assignment_by_hand():
    boxes = [np.array([[17, 9, 29, 17], [18, 10, 24, 16], [0, 0, 6, 6]], np.float32), np.zeros((0, 4))]
    labels = [np.array([2, 0, 1]), np.zeros(0, np.int64)]
    difficult = [np.array([False, False, True]), np.zeros(0, bool)]
    t = build_targets(spec32(), boxes, labels, difficult, 2)
    # box 0: centre (23, 13) -> cell row 1, col 2; 12x8 -> anchor 1. box 1: centre (21, 13), 6x6 -> anchor 0,
    # same cell. box 2 is difficult: no positive.
    cells = sorted(zip(*(c.tolist() for c in t.cell), t.labels.tolist(), strict=True))
    assert cells == [(0, 1, 2, 0, 0), (0, 1, 2, 1, 2)]
    order = np.argsort(t.cell[3])
    np.testing.assert_allclose(t.offsets[order], [[21 / 8 - 2, 13 / 8 - 1], [23 / 8 - 2, 13 / 8 - 1]])
    np.testing.assert_allclose(t.log_sizes[order], [[0, 0], [0, 0]], atol=1e-12)
    np.testing.assert_allclose(t.weights[order], [2 - 36 / 1024, 2 - 96 / 1024])
    assert t.gt_valid.tolist() == [[True, True, True], [False, False, False]]  # difficult kept for ignoring


def test_same_cell_and_anchor_keeps_the_first_object():
    boxes = [np.array([[16, 8, 28, 16], [17, 9, 29, 17]], np.float32)]
    t = build_targets(spec32(), boxes, [np.array([1, 2])], None, 1)
    assert t.labels.tolist() == [1]


def test_targets_reject_bad_labels():
    with pytest.raises(ConfigError, match="labels"):
        build_targets(spec32(), [np.array([[0, 0, 4, 4]])], [np.array([3])], None, 1)


def random_batch(rng, n=3):
    boxes, labels = [], []
    for _ in range(n):
        k = int(rng.integers(0, 4))
        xy = rng.uniform(0, 20, (k, 2))
        boxes.append(np.concatenate([xy, xy + rng.uniform(4, 12, (k, 2))], axis=1))
        labels.append(rng.integers(0, 3, k))
    return {"boxes": boxes, "labels": labels, "difficult": [np.zeros(len(b), bool) for b in boxes]}


@pytest.mark.parametrize("class_settings", [{}, {"class_weight": 2.5}])
def test_loss_gradient_matches_central_differences(rng, class_settings):
    spec = spec32()
    loss = YoloLoss(spec, ignore_iou=0.5, noobj_weight=0.7, **class_settings)
    batch = random_batch(rng)
    batch["boxes"][0] = np.array([[17.0, 9.0, 29.0, 17.0]])  # at least one positive
    batch["labels"][0] = np.array([1])
    batch["difficult"][0] = np.zeros(1, bool)
    pred = rng.normal(0, 1, (3, spec.channels, 4, 4))  # float64
    value = loss.forward(pred, batch)
    assert value == pytest.approx(sum(loss.parts.values())) and loss.parts["box"] > 0
    analytic = loss.backward()
    assert analytic.shape == pred.shape and analytic.dtype == np.float64
    t = build_targets(spec, batch["boxes"], batch["labels"], batch["difficult"], 3)
    indices = [tuple(int(v) for v in (n, a * 8 + c, i, j))
               for n, i, j, a in zip(*t.cell, strict=True) for c in range(8)]  # every channel of positives
    indices += [tuple(int(rng.integers(0, s)) for s in pred.shape) for _ in range(40)]
    numeric = numerical_gradient(lambda: loss.forward(pred, batch), pred, indices)
    picked = np.array([analytic[i] for i in indices])
    np.testing.assert_allclose(picked, numeric, atol=1e-7, rtol=1e-6)


def test_class_loss_weight_by_hand():
    spec = spec32()
    raw = np.zeros((1, 4, 4, 2, 8))
    raw[0, 1, 1, 1, 5:] = [2.0, 0.0, -1.0]  # class logits of the positive (anchor 1 of cell (1, 1))
    batch = {"boxes": [np.array([[8.0, 8.0, 16.0, 16.0]])], "labels": [np.array([0])]}
    log_p = raw[0, 1, 1, 1, 5:] - np.log(np.exp(raw[0, 1, 1, 1, 5:]).sum())
    target = np.array([1.0, 0.0, 0.0])  # one-hot of class 0
    loss = YoloLoss(spec, class_weight=3.0)
    loss.forward(spec.merge(raw), batch)
    assert loss.parts["class"] == pytest.approx(-3.0 * log_p[0])
    grad = spec.split(loss.backward())
    np.testing.assert_allclose(grad[0, 1, 1, 1, 5:], 3.0 * (np.exp(log_p) - target))
    plain = YoloLoss(spec)
    plain.forward(spec.merge(raw), batch)
    assert plain.parts["class"] == pytest.approx(-log_p[0])
    with pytest.raises(ConfigError, match="class_weight"):
        YoloLoss(spec, class_weight=-1.0)


def test_ignored_anchors_get_no_objectness_gradient():
    spec = spec32()
    raw = np.zeros((1, 4, 4, 2, 8))
    raw[..., 4] = 3.0  # confident everywhere
    batch = {"boxes": [np.array([[8.0, 8.0, 16.0, 16.0]])], "labels": [np.array([0])]}
    loss = YoloLoss(spec, ignore_iou=0.5)
    loss.forward(spec.merge(raw), batch)
    grad = spec.split(loss.backward())
    # the 8x8 box fits anchor 1 (12x8, IoU 2/3) better than anchor 0 (6x6, IoU 0.56): anchor 1 of cell (1, 1)
    # is the positive; anchor 0's decoded box there (6x6 at the same centre) has IoU 0.56 > 0.5 with the
    # ground truth: ignored. A far cell is a plain negative.
    assert grad[0, 1, 1, 1, 4] < 0 and grad[0, 1, 1, 0, 4] == 0 and grad[0, 3, 3, 1, 4] > 0
    stricter = YoloLoss(spec, ignore_iou=0.6)  # now anchor 0 counts as a (confident) negative
    assert stricter.forward(spec.merge(raw), batch) > loss.forward(spec.merge(raw), batch)


def test_decode_boxes_at_zero_logits():
    spec = spec32()
    boxes = spec.decode_boxes(np.zeros((1, 4, 4, 2, 8), np.float32))
    assert boxes.dtype == np.float32
    np.testing.assert_allclose(boxes[0, 2, 1, 1], [12 - 6, 20 - 4, 12 + 6, 20 + 4])  # centre of cell (2, 1)


def test_split_rejects_wrong_output_shape():
    with pytest.raises(ShapeError, match="detector output"):
        spec32().split(np.zeros((1, 15, 4, 4)))


def test_task_forward_loss_runs_model_and_returns_gradient(rng):
    model, meta = small_detector()
    task = DetectionTask(model, meta)
    batch = {"images": rng.normal(size=(3, 3, 32, 32)).astype(np.float32), **random_batch(rng)}
    loss, dout = task.forward_loss(model, batch)
    assert np.isfinite(loss) and dout.shape == (3, 16, 4, 4)
    dx = model.backward(dout)
    assert dx.shape == (3, 3, 32, 32) and np.abs(model["head"]["pred"].grads["W"]).sum() > 0
