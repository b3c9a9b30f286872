"""SimpleConvNet and DeepConvNet: the book's architectures, checked layer by layer and against PyTorch."""

import numpy as np
import pytest

from xpvision.errors import ConfigError
from xpvision.models import deep_convnet, feature_shapes, simple_convnet
from xpvision.nn import rng
from xpvision.nn.base import build_layer

torch = pytest.importorskip("torch")


def layer_summary(seq):
    return [(name, type(layer).__name__, layer.config()) for name, layer in seq.children()]


def test_deep_convnet_is_the_books_architecture():
    model = deep_convnet()
    convs = [(n, c["in_ch"], c["out_ch"], c["kernel_size"], c["padding"])
             for n, kind, c in layer_summary(model["features"]) if kind == "Conv2d"]
    assert convs == [("conv1", 1, 16, 3, 1), ("conv2", 16, 16, 3, 1), ("conv3", 16, 32, 3, 1),
                     ("conv4", 32, 32, 3, 2), ("conv5", 32, 64, 3, 1), ("conv6", 64, 64, 3, 1)]
    assert list(model["features"].layers) == [
        "conv1", "relu1", "conv2", "relu2", "pool1", "conv3", "relu3", "conv4", "relu4", "pool2",
        "conv5", "relu5", "conv6", "relu6", "pool3"]
    assert [(n, k) for n, k, _ in layer_summary(model["head"])] == [
        ("flatten", "Flatten"), ("fc1", "Linear"), ("relu1", "ReLU"), ("dropout1", "Dropout"),
        ("fc2", "Linear"), ("dropout2", "Dropout")]
    assert model["head"]["fc1"].params["W"].shape == (64 * 4 * 4, 50)
    assert model["head"]["fc2"].params["W"].shape == (50, 10)
    assert model["head"]["dropout1"].p == model["head"]["dropout2"].p == 0.5
    assert feature_shapes(model, (1, 28, 28))["pool3"] == (64, 4, 4)
    assert model.num_parameters() == sum(w.size for w in model.state_dict().values())


def test_deep_convnet_weights_are_he_initialised_in_float32():
    rng.manual_seed(0)
    model = deep_convnet()
    w = model["features"]["conv6"].params["W"]  # fan-in 64 * 3 * 3
    assert w.dtype == np.float32
    assert float(w.std()) == pytest.approx(np.sqrt(2 / 576), rel=0.03)
    assert float(model["head"]["fc1"].params["W"].std()) == pytest.approx(np.sqrt(2 / 1024), rel=0.03)
    assert not model["features"]["conv1"].params["b"].any()


def test_deep_convnet_options():
    model = deep_convnet(in_channels=3, num_classes=5, input_size=(32, 40), batch_norm=True,
                         last_dropout=False, conv4_padding=1)
    names = list(model["features"].layers)
    assert names[:3] == ["conv1", "bn1", "relu1"] and "bn6" in names
    assert "b" not in model["features"]["conv1"].params
    assert "dropout2" not in model["head"].layers
    assert feature_shapes(model, (3, 32, 40))["pool3"] == (64, 4, 5)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 40)).astype(np.float32)
    assert model.forward(x).shape == (2, 5)
    with pytest.raises(ConfigError, match="too small for deep_convnet: the feature map vanishes at pool3"):
        deep_convnet(input_size=3)
    with pytest.raises(ConfigError, match="conv4_padding"):
        deep_convnet(conv4_padding=3)


def torch_deep_convnet(model):
    """The same network in PyTorch with our weights copied in (Linear weights transposed)."""
    nn = torch.nn
    layers = []
    for _, layer in model["features"].children():
        kind, c = type(layer).__name__, layer.config()
        if kind == "Conv2d":
            conv = nn.Conv2d(c["in_ch"], c["out_ch"], c["kernel_size"], padding=c["padding"])
            conv.weight.data = torch.tensor(layer.params["W"])
            conv.bias.data = torch.tensor(layer.params["b"])
            layers.append(conv)
        else:
            layers.append(nn.ReLU() if kind == "ReLU" else nn.MaxPool2d(2))
    layers.append(nn.Flatten())
    for name in ("fc1", "fc2"):
        fc = model["head"][name]
        linear = nn.Linear(*fc.params["W"].shape)
        linear.weight.data = torch.tensor(fc.params["W"].T.copy())
        linear.bias.data = torch.tensor(fc.params["b"])
        layers += [linear, nn.ReLU()] if name == "fc1" else [linear]
    return nn.Sequential(*layers)


def test_deep_convnet_logits_and_input_gradient_match_pytorch():
    rng.manual_seed(1)
    model = deep_convnet().eval()
    reference = torch_deep_convnet(model)
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    tout = reference(tx)
    tout.sum().backward()
    out = model.forward(x)
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.backward(np.ones_like(out)), tx.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_simple_convnet_is_the_books_architecture():
    model = simple_convnet()
    assert [(n, k) for n, k, _ in layer_summary(model["features"])] == [
        ("conv1", "Conv2d"), ("relu1", "ReLU"), ("pool1", "MaxPool2d")]
    conv = model["features"]["conv1"].config()
    assert (conv["out_ch"], conv["kernel_size"], conv["padding"], conv["stride"]) == (30, 5, 0, 1)
    assert model["head"]["fc1"].params["W"].shape == (30 * 12 * 12, 100)
    assert model["head"]["fc2"].params["W"].shape == (100, 10)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    out = model.forward(x)
    assert out.shape == (2, 10) and out.dtype == np.float32
    assert model.backward(np.ones_like(out)).shape == x.shape


@pytest.mark.parametrize("builder", [simple_convnet, deep_convnet])
def test_rebuilds_from_spec_with_identical_outputs(builder):
    model = builder(batch_norm=True) if builder is deep_convnet else builder()
    clone = build_layer(model.spec())
    clone.load_state_dict(model.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(clone.eval().forward(x), model.eval().forward(x))
