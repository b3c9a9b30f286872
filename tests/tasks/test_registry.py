"""tasks registry: the train block's class weights reach the task's loss, and bad ones name their key."""

import numpy as np
import pytest

from xpvision.errors import ConfigError
from xpvision.tasks import build_task, output_classes

SEGMENTATION_META = {"task": "segmentation", "classes": output_classes("segmentation", ["0", "1"])}


def test_segmentation_class_weights_weight_the_loss():
    weights = [0.25, 1.0, 2.0]
    task = build_task("segmentation", None, SEGMENTATION_META, weights)
    assert task.class_weights == weights
    logits = np.random.default_rng(0).normal(size=(1, 3, 2, 2)).astype(np.float32)  # (N, K, H, W)
    masks = np.array([[[0, 1], [2, 2]]])  # (N, H, W)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))  # (N, K, H, W)
    nll = -np.take_along_axis(log_p, masks[:, None], axis=1)[:, 0]  # (N, H, W)
    w = np.asarray(weights)[masks]  # (N, H, W)
    expected = (w * nll).sum() / w.sum()
    assert task.loss.forward(logits, masks) == pytest.approx(expected, rel=1e-5)
    unweighted = build_task("segmentation", None, SEGMENTATION_META)
    assert unweighted.loss.forward(logits, masks) == pytest.approx(nll.mean(), rel=1e-5)


def test_classification_class_weights_reach_the_task():
    task = build_task("classification", None, {"classes": ["a", "b"]}, [1.0, 3.0])
    assert task.class_weights == [1.0, 3.0]


def test_class_weights_of_the_wrong_length_name_the_key():
    with pytest.raises(ConfigError, match=r"train\.segmentation\.class_weights: expected 3 weights, one per "
                                          r"class \(background, 0, 1\), got 2"):
        build_task("segmentation", None, SEGMENTATION_META, [1.0, 1.0])


def test_detection_refuses_class_weights():
    with pytest.raises(ConfigError, match=r"train\.detection\.class_weights: expected null"):
        build_task("detection", None, {"task": "detection", "classes": ["0"]}, [1.0])
