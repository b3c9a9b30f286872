"""ONNX export: onnxruntime reproduces xpvision's outputs (max abs error <= 1e-4) for each layer kind."""

import numpy as np
import pytest

from xpvision import nn
from xpvision.export.onnx_graph import ExportError, onnx_parity, run_onnx, to_onnx
from xpvision.models import build_model

pytest.importorskip("onnxruntime")


def randomise_batch_norm(model, rng):
    """Give batch-norm layers non-trivial affine parameters and running statistics (eval mode uses them)."""
    for _, layer in model.named_layers():
        if isinstance(layer, nn.BatchNorm2d):
            c = layer.num_features
            layer.params["gamma"][...] = rng.uniform(0.5, 1.5, c)
            layer.params["beta"][...] = rng.normal(0, 0.1, c)
            layer.buffers["running_mean"][...] = rng.normal(0, 0.1, c)
            layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, c)


@pytest.mark.parametrize(("name", "kwargs", "input_shape"), [
    ("deep_convnet", {}, (1, 28, 28)),
    ("deep_convnet", {"batch_norm": True}, (1, 28, 28)),
    ("simple_convnet", {}, (1, 28, 28)),
    ("resnet_small", {"in_channels": 3}, (3, 20, 20)),
])
def test_classifier_export_matches_xpvision(name, kwargs, input_shape):
    rng = np.random.default_rng(0)
    model = build_model(name, **kwargs)
    randomise_batch_norm(model, rng)
    onnx_model = to_onnx(model, input_shape, probabilities=True)
    images = rng.uniform(0, 1, (5, *input_shape)).astype(np.float32)
    assert onnx_parity(model, onnx_model, images) <= 1e-4
    logits, probabilities = run_onnx(onnx_model, images)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(probabilities.argmax(axis=1), logits.argmax(axis=1))


def test_every_layer_kind_and_odd_geometry():
    """Stride, asymmetric padding, dilation, overlapping and padded pools, transposed conv, activations."""
    rng = np.random.default_rng(1)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1),
        nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1), nn.AvgPool2d(3, stride=1, padding=1),
        nn.ConvTranspose2d(6, 5, 4, stride=2, padding=1), nn.Sigmoid(), nn.Identity(),
        nn.GlobalAvgPool2d(), nn.Dropout(0.5), nn.Linear(5, 3))
    randomise_batch_norm(model, rng)
    images = rng.normal(size=(2, 3, 13, 11)).astype(np.float32)
    assert onnx_parity(model, to_onnx(model, (3, 13, 11)), images) <= 1e-4


def test_batch_size_is_symbolic():
    model = build_model("simple_convnet")
    onnx_model = to_onnx(model, (1, 28, 28))
    for n in (1, 7):
        (out,) = run_onnx(onnx_model, np.zeros((n, 1, 28, 28), np.float32))
        assert out.shape == (n, 10)


def test_unknown_layer_is_a_clear_error():
    class Mystery(nn.Layer):
        def forward(self, x):
            return x

    with pytest.raises(ExportError, match=r"model\.1 of type Mystery"):
        to_onnx(nn.Sequential(nn.ReLU(), Mystery()), (1, 4, 4))


def test_parity_detects_a_wrong_graph():
    """The check is not vacuous: changing a weight after export is caught."""
    model = build_model("simple_convnet")
    onnx_model = to_onnx(model, (1, 28, 28))
    last_linear = [layer for _, layer in model.named_layers() if isinstance(layer, nn.Linear)][-1]
    last_linear.params["b"][...] += 0.01
    images = np.random.default_rng(2).uniform(size=(3, 1, 28, 28)).astype(np.float32)
    assert onnx_parity(model, onnx_model, images) >= 0.009


def randomise_parameters(model, rng, scale=0.1):
    """Non-zero weights everywhere (FCN score layers start at zero, which would hide a wrong graph)."""
    for _, layer, key in model.named_parameters():
        layer.params[key][...] = rng.normal(0, scale, layer.params[key].shape)


@pytest.mark.parametrize(("variant", "input_shape"), [("8s", (3, 64, 64)), ("16s", (3, 33, 41)),
                                                      ("32s", (1, 29, 30)), ("4s", (3, 35, 38))])
def test_fcn_export_matches_xpvision_for_odd_and_even_sizes(variant, input_shape):
    from xpvision.segmentation.fcn import build_fcn

    rng = np.random.default_rng(3)
    model = build_fcn(variant, in_channels=input_shape[0], num_classes=5)
    randomise_parameters(model, rng)
    images = rng.uniform(size=(2, *input_shape)).astype(np.float32)
    onnx_model = to_onnx(model, input_shape)
    assert onnx_parity(model, onnx_model, images) <= 1e-4
    assert run_onnx(onnx_model, images)[0].shape == (2, 5, *input_shape[1:])


def test_fcn_with_its_head_on_the_backbone_exports():
    from xpvision.segmentation.fcn import build_fcn

    rng = np.random.default_rng(5)
    model = build_fcn("8s", in_channels=3, num_classes=5, encoder_stride=8, fc_kernel=4, fc_channels=8)
    randomise_parameters(model, rng)
    images = rng.uniform(size=(2, 3, 37, 40)).astype(np.float32)
    assert onnx_parity(model, to_onnx(model, (3, 37, 40)), images) <= 1e-4


def test_detector_export_matches_xpvision():
    from xpvision.detection.yolo import build_detector

    rng = np.random.default_rng(4)
    model, _ = build_detector("yolo", in_channels=3, classes=list("0123456789"), input_size=(64, 64),
                              anchors=[[10, 14], [20, 24], [30, 30]])
    randomise_batch_norm(model, rng)
    images = rng.uniform(size=(2, 3, 64, 64)).astype(np.float32)
    assert onnx_parity(model, to_onnx(model, (3, 64, 64)), images) <= 1e-4


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("mode", ["rescale", "dataset", "sample"])
def test_graph_applies_the_models_normalization(mode, opset):
    """The exported graph takes pixels in [0, 1] and normalises them as the DataLoader does."""
    from xpvision.data.loader import Normalization

    rng = np.random.default_rng(5)
    model = build_model("simple_convnet", in_channels=3, input_size=12)
    normalization = Normalization(mode, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)) if mode == "dataset" else (
        Normalization(mode))
    images = rng.integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)  # (N, H, W, C)
    pixels = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255  # (N, C, H, W)
    network_input = np.ascontiguousarray(normalization.apply(images).transpose(0, 3, 1, 2))
    onnx_model = to_onnx(model, (3, 12, 12), opset=opset, normalization=normalization.to_dict())
    assert onnx_parity(model, onnx_model, pixels, network_input=network_input) <= 1e-4
    if mode != "rescale":  # the normalisation is not a no-op, so skipping it would be caught
        assert onnx_parity(model, onnx_model, pixels, network_input=pixels) > 1e-3
