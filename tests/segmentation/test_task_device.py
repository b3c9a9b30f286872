"""Segmentation on the GPU gives what it gives on the CPU: a training step of an FCN, evaluation, and
``predict_segmentation`` (``pytest --fake-gpu`` runs these on the CuPy stand-in)."""

import numpy as np
import pytest

from xpvision import backend, optim
from xpvision.data.loader import DataLoader, ListDataset
from xpvision.nn import rng as rng_module
from xpvision.segmentation.fcn import build_fcn
from xpvision.segmentation.predict import predict_segmentation
from xpvision.tasks import SegmentationTask
from xpvision.train import Trainer

pytestmark = pytest.mark.gpu


def twin_fcn(device: str, variant: str = "8s"):
    rng_module.manual_seed(0)
    return build_fcn(variant, "simple_convnet", in_channels=3, num_classes=3,
                     backbone_args={"input_size": 16}).to(device)


def scenes(rng, n=6, size=16):
    samples = []
    for _ in range(n):
        mask = rng.integers(0, 3, (size, size)).astype(np.uint8)
        mask[0, :3] = 255
        samples.append({"image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "mask": mask})
    return ListDataset(samples, ["bg", "a", "b"])


@pytest.mark.parametrize("variant", ["32s", "16s", "8s", "4s"])
@pytest.mark.parametrize("weights", [None, (0.3, 1.0, 1.0)])
def test_fcn_training_step_matches_the_cpu(gpu, rng, variant, weights):
    dataset = scenes(rng)
    out = {}
    for device in ("cpu", "gpu"):
        model = twin_fcn(device, variant)
        task = SegmentationTask(3, class_weights=weights)
        batch = next(iter(DataLoader(dataset, 6, device=device)))
        assert backend.device_of(batch["masks"]) == device
        loss, dout = task.forward_loss(model, batch)
        model.backward(dout)
        grads = {name: backend.to_numpy(layer.grads[key])
                 for name, layer, key in model.named_parameters(trainable_only=True)}
        out[device] = loss, grads
    assert out["gpu"][0] == pytest.approx(out["cpu"][0], rel=1e-5)
    for name, grad in out["cpu"][1].items():
        np.testing.assert_allclose(out["gpu"][1][name], grad, rtol=1e-3, atol=1e-6, err_msg=name)


def test_evaluate_and_predict_segmentation_match_the_cpu(gpu, rng):
    dataset = scenes(rng, n=5)
    metrics, labels = {}, {}
    images = rng.random((5, 3, 16, 16)).astype(np.float32)
    for device in ("cpu", "gpu"):
        model = twin_fcn(device)
        metrics[device] = SegmentationTask(3).evaluate(model, DataLoader(dataset, 2, device=device))
        labels[device] = predict_segmentation(model, images, batch_size=2)  # host images, moved
    assert isinstance(labels["gpu"], np.ndarray) and labels["gpu"].dtype == np.int64
    np.testing.assert_array_equal(labels["gpu"], labels["cpu"])
    for key, value in metrics["cpu"].items():
        assert metrics["gpu"][key] == pytest.approx(value, rel=1e-5), key


def test_training_an_fcn_on_the_gpu_lowers_the_loss(gpu, rng, tmp_path):
    model = twin_fcn("gpu")
    opt = optim.build_optimizer("adam", model, lr=3e-3)
    trainer = Trainer(model, SegmentationTask(3), opt, epochs=3, checkpoint_path=tmp_path / "c.npz",
                      progress=False)
    history = trainer.fit(DataLoader(scenes(rng, n=8), 4, shuffle=True, device="gpu"))
    assert history[-1]["train_loss"] < history[0]["train_loss"] and model.device == "gpu"


def test_loader_with_masks_on_the_gpu(gpu, rng):
    dataset = scenes(rng, n=5)
    for h, d in zip(DataLoader(dataset, 2), DataLoader(dataset, 2, device="gpu"), strict=True):
        assert backend.is_gpu_array(d["masks"]) and d["masks"].dtype == np.int64
        np.testing.assert_array_equal(backend.to_numpy(d["masks"]), h["masks"])
        np.testing.assert_array_equal(backend.to_numpy(d["images"]), h["images"])
        assert isinstance(d["indices"], np.ndarray)
