"""Every registered model on the GPU: forward and backward equal to the CPU (ResNet's batch norm and
residual sums included), channels-last kept between layers (CuPy allocates element-wise results C-ordered,
so a layer that forgot the layout would hand NCHW to the next), and training mode on the device
(``pytest --fake-gpu`` runs these on the CuPy stand-in)."""

import numpy as np
import pytest

from xpvision import backend
from xpvision.models import build_model
from xpvision.nn import rng
from xpvision.nn.base import LAYERS

pytestmark = pytest.mark.gpu
MODELS = {
    "simple_convnet": ("simple_convnet", {"in_channels": 1, "num_classes": 4, "input_size": 12}),
    "deep_convnet": ("deep_convnet", {"in_channels": 1, "num_classes": 4, "input_size": 16}),
    "deep_convnet_bn": ("deep_convnet", {"in_channels": 3, "num_classes": 4, "input_size": 16,
                                         "batch_norm": True}),
    "resnet_small": ("resnet_small", {"in_channels": 1, "num_classes": 4, "widths": (4, 8, 8),
                                      "blocks_per_stage": 1}),
    "resnet_small_2": ("resnet_small", {"in_channels": 3, "num_classes": 4, "widths": (4, 8, 16),
                                        "blocks_per_stage": 2}),
}


def twin(name: str, device: str):
    """The same model (seeded weights) on ``device``, dropout off (its draws differ by device)."""
    rng.manual_seed(0)
    builder, args = MODELS[name]
    model = build_model(builder, **args).to(device)
    for _, layer in model.named_layers():
        if type(layer).__name__ == "Dropout":
            layer.p = 0.0
    return model


def input_for(name: str, rs):
    args = MODELS[name][1]
    size = args.get("input_size", 16)
    return rs.standard_normal((3, args["in_channels"], size, size)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("training", [True, False])
def test_forward_and_backward_equal_on_both_devices(gpu, name, training):
    x = input_for(name, np.random.default_rng(1))
    results = {}
    for device in ("cpu", "gpu"):
        model = twin(name, device).train(training)
        out = model.forward(backend.to_device(x, device))
        dx = model.backward(backend.to_device(np.ones(out.shape, np.float32), device))
        grads = {n: backend.to_numpy(layer.grads[k]) for n, layer, k in model.named_parameters()}
        results[device] = backend.to_numpy(out), backend.to_numpy(dx), grads
    np.testing.assert_allclose(results["gpu"][0], results["cpu"][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results["gpu"][1], results["cpu"][1], rtol=1e-3, atol=1e-5)
    for key, grad in results["cpu"][2].items():
        np.testing.assert_allclose(results["gpu"][2][key], grad, rtol=1e-3, atol=1e-4, err_msg=key)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("fusion", [True, False])
def test_channels_last_is_kept_between_layers_on_the_device(gpu, name, fusion, monkeypatch):
    """Every 4-D output of every layer is an NCHW view of a C-contiguous NHWC buffer."""
    model = twin(name, "gpu")
    for _, layer in model.named_layers():
        if hasattr(layer, "fusion"):
            layer.fusion = fusion
    outputs = []
    for cls in set(LAYERS.values()):
        for method in ("forward", "forward_fused"):
            original = cls.__dict__.get(method)
            if original is None:
                continue

            def spy(self, x, *args, _original=original, **kwargs):
                y = _original(self, x, *args, **kwargs)
                outputs.append((type(self).__name__, y))
                return y
            monkeypatch.setattr(cls, method, spy)
    model.forward(backend.to_device(input_for(name, np.random.default_rng(2)), "gpu"))
    images = [(layer, y) for layer, y in outputs if getattr(y, "ndim", 0) == 4 and y.shape[1] > 1]
    assert images
    for layer, y in images:
        assert y.transpose(0, 2, 3, 1).flags.c_contiguous, f"{layer} returned a non-channels-last array"
