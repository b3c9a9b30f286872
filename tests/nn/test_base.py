import json

import numpy as np
import pytest

from xpvision.errors import WeightsError
from xpvision.nn import (
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    ResidualBlock,
    Sequential,
    build_layer,
    rng,
)


def _model():
    return Sequential(
        ("features", Sequential(Conv2d(1, 4, 3, padding=1), BatchNorm2d(4), ReLU(), MaxPool2d(2),
                                ResidualBlock(4, 6, stride=2))),
        ("head", Sequential(Flatten(), Linear(6 * 2 * 2, 5), Dropout(0.5), Linear(5, 3))),
    )


def test_spec_round_trip_through_json_rebuilds_identical_outputs():
    rng.manual_seed(0)
    model = _model()
    clone = build_layer(json.loads(json.dumps(model.spec())))
    clone.load_state_dict(model.state_dict())
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(clone.eval().forward(x), model.eval().forward(x))
    assert clone.spec() == model.spec()


def test_state_dict_round_trip_and_names():
    model = _model()
    state = model.state_dict()
    assert "features.0.W" in state and "features.1.running_var" in state and "head.3.b" in state
    assert "features.4.shortcut.conv.W" in state
    other = _model()
    report = other.load_state_dict(state)
    assert sorted(report["loaded"]) == sorted(state)
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(value, state[key])


def test_mismatched_weights_raise_and_change_nothing():
    model = _model()
    before = model.state_dict()
    state = _model().state_dict()
    state["head.1.W"] = np.zeros((7, 5), np.float32)
    del state["features.0.b"]
    state["extra.W"] = np.zeros(1, np.float32)
    with pytest.raises(WeightsError) as err:
        model.load_state_dict(state)
    message = str(err.value)
    assert "head.1.W: file (7, 5) vs model (24, 5)" in message
    assert "features.0.b" in message and "extra.W" in message
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    report = model.load_state_dict(state, strict=False)
    assert report["missing"] == ["features.0.b"] and report["unexpected"] == ["extra.W"]


def test_unknown_layer_type_in_spec():
    with pytest.raises(WeightsError, match="unknown layer type in spec: 'Conv3d'"):
        build_layer({"type": "Conv3d", "config": {}})


def test_frozen_layer_skips_parameter_gradients_but_passes_input_gradient(rng):
    conv = Conv2d(2, 3, 3, padding=1).freeze()
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    conv.forward(x)
    dx = conv.backward(np.ones((1, 3, 4, 4), np.float32))
    assert dx.shape == x.shape and np.abs(dx).sum() > 0
    assert not conv.grads["W"].any()
    names = [name for name, _, _ in Sequential(conv, Linear(2, 2)).named_parameters(trainable_only=True)]
    assert names == ["1.W", "1.b"]


def test_astype_and_parameter_count():
    model = _model().astype(np.float64)
    assert all(layer.params[k].dtype == np.float64 for _, layer, k in model.named_parameters())
    assert model.num_parameters() == sum(v.size for k, v in model.state_dict().items() if "running" not in k)
