"""The detector on the GPU gives what it gives on the CPU: YOLO loss and gradient, DetectionTask training
step and evaluation, post-processing (``pytest --fake-gpu`` runs these on the CuPy stand-in)."""

import numpy as np
import pytest
from test_yolo import random_batch, small_detector

from xpvision import backend
from xpvision.data.loader import DataLoader, ListDataset
from xpvision.detection.predict import detect, detections_to_numpy, postprocess
from xpvision.detection.yolo_loss import YoloLoss
from xpvision.detection.yolo_spec import YoloSpec
from xpvision.nn import rng as rng_module
from xpvision.tasks import DetectionTask

pytestmark = pytest.mark.gpu


def twin_detector(device: str):
    """The same detector (seeded weights) on ``device``."""
    rng_module.manual_seed(0)
    model, meta = small_detector()
    return model.to(device), meta


def scene_dataset(rng, n):
    samples = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        xy = rng.uniform(0, 20, (k, 2))
        samples.append({"image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                        "boxes": np.concatenate([xy, xy + rng.uniform(4, 12, (k, 2))], 1).astype(np.float32),
                        "labels": rng.integers(0, 3, k), "difficult": rng.random(k) < 0.2})
    return ListDataset(samples, ["a", "b", "c"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("settings", [{}, {"class_weight": 2.5}, {"noobj_weight": 0.5, "ignore_iou": 0.3}])
def test_yolo_loss_and_gradient_equal_on_both_devices(gpu, rng, dtype, settings):
    _, meta = small_detector()
    spec = YoloSpec.from_meta(meta)
    pred = rng.normal(size=(3, spec.channels, 4, 4)).astype(dtype)
    batch = random_batch(rng)
    cpu_loss = YoloLoss(spec, **settings)
    gpu_loss = YoloLoss(spec, **settings)
    loss = cpu_loss.forward(pred, batch)
    assert gpu_loss.forward(gpu.asarray(pred), batch) == pytest.approx(loss, rel=1e-6 if dtype == np.float32
                                                                        else 1e-12)
    grad = gpu_loss.backward()
    assert backend.is_gpu_array(grad) and grad.dtype == dtype
    np.testing.assert_allclose(backend.to_numpy(grad), cpu_loss.backward(),
                               rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-9)


def test_detection_task_training_step_on_the_gpu_matches_the_cpu(gpu, rng):
    dataset = scene_dataset(rng, 6)
    results = {}
    for device in ("cpu", "gpu"):
        model, meta = twin_detector(device)
        task = DetectionTask(model, meta)
        batch = next(iter(DataLoader(dataset, 6, device=device)))
        loss, dout = task.forward_loss(model, batch)
        model.backward(dout)
        results[device] = (loss, backend.to_numpy(model["head"]["pred"].grads["W"]))
    assert results["gpu"][0] == pytest.approx(results["cpu"][0], rel=1e-5)
    np.testing.assert_allclose(results["gpu"][1], results["cpu"][1], rtol=1e-4, atol=1e-7)


def test_detection_task_evaluate_on_the_gpu_matches_the_cpu(gpu, rng):
    dataset = scene_dataset(rng, 10)
    metrics = {}
    for device in ("cpu", "gpu"):
        model, meta = twin_detector(device)
        task = DetectionTask(model, meta, score_threshold=0.0)
        metrics[device] = task.evaluate(model, DataLoader(dataset, 4, device=device))
    assert set(metrics["gpu"]) == set(metrics["cpu"])
    for key, value in metrics["cpu"].items():
        assert metrics["gpu"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("max_detections", [1, 5, 100])
def test_post_processing_keeps_the_same_boxes_on_both_devices(gpu, rng, max_detections):
    _, meta = small_detector()
    spec = YoloSpec.from_meta(meta)
    pred = rng.normal(size=(4, spec.channels, 4, 4)).astype(np.float32) * 3
    on_cpu = postprocess(pred, spec, 0.01, 0.45, max_detections)
    on_gpu = detections_to_numpy(postprocess(gpu.asarray(pred), spec, 0.01, 0.45, max_detections))
    assert len(on_gpu) == 4 and any(len(d.boxes) for d in on_cpu)
    for c, g in zip(on_cpu, on_gpu, strict=True):
        assert isinstance(g.boxes, np.ndarray) and len(g.boxes) <= max_detections
        np.testing.assert_array_equal(g.labels, c.labels)
        # CUDA's expf / sigmoid may differ from NumPy's by a few float32 ulps (seen: 4e-6 px on an H200)
        np.testing.assert_allclose(g.boxes, c.boxes, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(g.scores, c.scores, rtol=1e-5, atol=1e-7)
        assert np.all(np.diff(g.scores) <= 0)


def test_post_processing_equals_suppressing_each_image_alone(rng):
    """Suppressing the batch at once (image-and-class groups) keeps what per-image suppression keeps."""
    _, meta = small_detector()
    spec = YoloSpec.from_meta(meta)
    pred = rng.normal(size=(3, spec.channels, 4, 4)).astype(np.float32) * 3
    together = postprocess(pred, spec, 0.01, 0.3, 7)
    for k in range(3):
        alone = postprocess(pred[k:k + 1], spec, 0.01, 0.3, 7)[0]
        for a, b in zip(alone, together[k], strict=True):
            np.testing.assert_array_equal(a, b)


def test_detect_moves_host_images_to_the_gpu_model(gpu, rng):
    model, meta = small_detector()
    images = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    on_cpu = detect(model, images, meta, score_threshold=0.0)
    model.to("gpu")
    on_gpu = detect(model, images, meta, score_threshold=0.0)
    for c, g in zip(on_cpu, on_gpu, strict=True):
        np.testing.assert_array_equal(g.labels, c.labels)
        np.testing.assert_allclose(g.scores, c.scores, rtol=1e-4, atol=1e-7)


def test_loader_with_boxes_on_the_gpu(gpu, rng):
    dataset = scene_dataset(rng, 5)
    host = list(DataLoader(dataset, 2))
    device = list(DataLoader(dataset, 2, device="gpu"))
    for h, d in zip(host, device, strict=True):
        assert backend.is_gpu_array(d["images"]) and d["images"].dtype == np.float32
        np.testing.assert_array_equal(backend.to_numpy(d["images"]), h["images"])
        for key in ("boxes", "labels", "difficult"):  # per-image target lists stay on the host
            for a, b in zip(h[key], d[key], strict=True):
                assert isinstance(b, np.ndarray)
                np.testing.assert_array_equal(a, b)
