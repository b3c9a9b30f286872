"""Transfer learning into a model on the GPU: the pretrained weights land on the device, equal to a CPU
transfer, from a model on either device or a saved folder (``pytest --fake-gpu`` runs these on the CuPy
stand-in)."""

import numpy as np
import pytest

from xpvision import backend, io
from xpvision.models import deep_convnet
from xpvision.nn import rng
from xpvision.segmentation.fcn import FCN
from xpvision.transfer import set_transfer_mode, transfer_weights

pytestmark = pytest.mark.gpu


def classifier():
    rng.manual_seed(0)
    return deep_convnet(in_channels=1, num_classes=10, input_size=16)


def fcn(device):
    rng.manual_seed(1)
    return FCN(deep_convnet(in_channels=3, input_size=16)["features"], 4, "8s", extra_channels=[8, 8],
               fc_channels=8).to(device)


@pytest.mark.parametrize("source_kind", ["cpu model", "gpu model", "saved folder", "gpu state dict"])
def test_transfer_into_a_gpu_model_equals_a_cpu_transfer(gpu, tmp_path, source_kind):
    source = classifier()
    if source_kind == "saved folder":
        io.save_model(tmp_path / "cls", source, {"task": "classification"})
        given = tmp_path / "cls"
    elif source_kind == "gpu model":
        given = classifier().to("gpu")
    elif source_kind == "gpu state dict":
        given = {k: gpu.asarray(v) for k, v in source.state_dict().items()}
    else:
        given = source
    on_cpu, on_gpu = fcn("cpu"), fcn("gpu")
    report_cpu = transfer_weights(on_cpu, source, include=("features.",))
    report_gpu = transfer_weights(on_gpu, given, include=("features.",))
    assert report_gpu.loaded == report_cpu.loaded and report_gpu.adapted == report_cpu.adapted
    assert on_gpu.device == "gpu"
    for name, layer, key in on_gpu.named_parameters():
        assert backend.is_gpu_array(layer.params[key]), name
    expected = on_cpu.state_dict()
    for name, value in on_gpu.state_dict().items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


@pytest.mark.parametrize("mode", ["head", "partial", "full"])
def test_transfer_modes_freeze_the_same_layers_on_the_gpu(gpu, mode):
    model = fcn("gpu")
    report = transfer_weights(model, classifier(), include=("features.",))
    set_transfer_mode(model, mode, report, freeze_layers=2)
    x = backend.to_device(np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32), "gpu")
    out = model.forward(x)
    assert backend.is_gpu_array(out) and out.shape == (2, 4, 16, 16)
    frozen = {n for n, layer, _ in model.named_parameters() if not layer.trainable}
    assert (mode == "full") == (not any(n.startswith("features.") for n in frozen))


def test_load_state_dict_accepts_device_arrays_on_either_side(gpu):
    source = classifier()
    state = source.state_dict()
    for target_device in ("cpu", "gpu"):
        target = deep_convnet(in_channels=1, num_classes=10, input_size=16).to(target_device)
        target.load_state_dict({k: gpu.asarray(v) for k, v in state.items()})
        assert target.device == target_device
        for name, value in target.state_dict().items():
            np.testing.assert_array_equal(value, state[name], err_msg=name)
