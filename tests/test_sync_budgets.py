"""Device→host synchronisation budgets, counted by the CuPy stand-in (``pytest --fake-gpu``; skipped on a
real GPU, where nothing counts them). A copy from the GPU stalls the host until the device has caught up, so
the work a GPU user repeats — a training step, post-processing, metrics — makes a fixed, small number of them,
never one per image or per box. The budgets are stated in the README (section "GPU")."""

import numpy as np
import pytest

from xpvision import backend, optim
from xpvision.data.loader import DataLoader, ListDataset
from xpvision.detection.nms import soft_nms
from xpvision.detection.predict import detections_to_numpy, postprocess
from xpvision.detection.yolo import build_detector
from xpvision.detection.yolo_spec import YoloSpec
from xpvision.models import build_model
from xpvision.segmentation.fcn import build_fcn
from xpvision.segmentation.metrics import ConfusionMatrix
from xpvision.tasks import ClassificationTask, DetectionTask, SegmentationTask
from xpvision.train import Trainer

pytestmark = pytest.mark.gpu

# device->host copies per training step (forward, loss, backward, optimizer step)
STEP_BUDGET = {"classification": 1, "detection": 1, "segmentation": 1}
STEP_BUDGET_WITH_CLIPPING = 1  # one more: the global gradient norm


def classification_setup(rng, n):
    samples = [{"image": rng.integers(0, 255, (12, 12, 1), dtype=np.uint8), "label": int(k % 3)}
               for k in range(n)]
    model = build_model("simple_convnet", in_channels=1, num_classes=3, input_size=12)
    return model, ClassificationTask(3), ListDataset(samples, ["a", "b", "c"])


def detection_setup(rng, n):
    model, extra = build_detector("yolo", in_channels=3, classes=["a", "b"], input_size=(32, 32),
                                  anchors=[[6.0, 6.0], [12.0, 8.0]], head_channels=8)
    samples = []
    for _ in range(n):
        xy = rng.uniform(0, 20, (3, 2))
        samples.append({"image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                        "boxes": np.concatenate([xy, xy + rng.uniform(4, 12, (3, 2))], 1).astype(np.float32),
                        "labels": rng.integers(0, 2, 3), "difficult": np.zeros(3, bool)})
    meta = {"classes": ["a", "b"], **extra}
    return model, DetectionTask(model, meta), ListDataset(samples, ["a", "b"])


def segmentation_setup(rng, n):
    model = build_fcn("8s", "simple_convnet", in_channels=3, num_classes=3,
                      backbone_args={"input_size": 16})
    samples = [{"image": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                "mask": rng.integers(0, 3, (16, 16)).astype(np.uint8)} for _ in range(n)]
    return model, SegmentationTask(3), ListDataset(samples, ["bg", "a", "b"])


SETUPS = {"classification": classification_setup, "detection": detection_setup,
          "segmentation": segmentation_setup}


def training_syncs(syncs, rng, task_name, steps, grad_clip=None):
    model, task, dataset = SETUPS[task_name](rng, 4 * steps)
    model.to("gpu")
    optimizer = optim.build_optimizer("adam", model, lr=1e-3)
    trainer = Trainer(model, task, optimizer, epochs=1, checkpoint_path="unused.npz", grad_clip=grad_clip,
                      progress=False)
    loader = DataLoader(dataset, 4, shuffle=True, device="gpu")
    trainer._train_epoch(loader, 0)  # once-per-model work (the frozen upsampler's factors) happens here
    with syncs() as counted:
        trainer._train_epoch(loader, 1)
    return counted


@pytest.mark.parametrize("task_name", sorted(SETUPS))
def test_a_training_step_makes_a_fixed_number_of_copies(syncs, rng, task_name):
    counted = training_syncs(syncs, rng, task_name, steps=3)
    assert counted.count <= 3 * STEP_BUDGET[task_name], counted.sites
    # per step, not per image
    assert training_syncs(syncs, rng, task_name, steps=6).count == 2 * counted.count


@pytest.mark.parametrize("task_name", sorted(SETUPS))
def test_gradient_clipping_adds_one_copy_per_step(syncs, rng, task_name):
    counted = training_syncs(syncs, rng, task_name, steps=2, grad_clip=1.0)
    assert counted.count <= 2 * (STEP_BUDGET[task_name] + STEP_BUDGET_WITH_CLIPPING), counted.sites


def test_detection_targets_make_no_round_trip(syncs, rng):
    """The loader keeps the box lists on the host, the targets are assigned there and sent once: the loss
    forward copies back only its three partial sums, in one transfer."""
    model, task, dataset = detection_setup(rng, 8)
    model.to("gpu")
    batch = next(iter(DataLoader(dataset, 8, device="gpu")))
    assert backend.is_gpu_array(batch["images"]) and isinstance(batch["boxes"][0], np.ndarray)
    with syncs() as counted:
        task.forward_loss(model, batch)
    assert counted.count == 1, counted.sites


def test_the_frozen_bilinear_upsampler_does_not_recompute_its_factors(syncs, rng):
    model = build_fcn("8s", "simple_convnet", in_channels=3, num_classes=3, backbone_args={"input_size": 16})
    model.to("gpu")
    x = backend.to_device(rng.random((2, 3, 16, 16)).astype(np.float32), "gpu")
    model.forward(x)  # the first forward finds the factors of the frozen upsampler
    with syncs() as counted:
        for _ in range(3):
            model.forward(x)
    assert counted.count == 0, counted.sites
    frozen = [layer for _, layer in model.named_layers() if getattr(layer, "_frozen", None)]
    assert frozen and all(layer._frozen[1] is not None for layer in frozen)


@pytest.mark.parametrize("images", [2, 8])
def test_detection_post_processing_copies_do_not_grow_with_images(syncs, rng, images):
    model, task, _ = detection_setup(rng, 1)
    model.to("gpu")
    pred = model.forward(backend.to_device(rng.normal(size=(images, 3, 32, 32)).astype(np.float32), "gpu"))
    with syncs() as counted:
        found = detections_to_numpy(postprocess(pred, task.spec, score_threshold=0.0))
    assert len(found) == images and sum(len(d.boxes) for d in found) > images
    # nonzero, unique of the NMS groups, the NMS keep list, the per-image counts, three result arrays
    assert counted.count <= 7, counted.sites


@pytest.mark.parametrize("boxes", [20, 200])
def test_soft_nms_copies_do_not_grow_with_boxes(syncs, rng, boxes, gpu):
    xy = rng.uniform(0, 100, (boxes, 2))
    b = gpu.asarray(np.concatenate([xy, xy + rng.uniform(10, 40, (boxes, 2))], 1))
    with syncs() as counted:
        keep, _ = soft_nms(b, gpu.asarray(rng.random(boxes)), 0.3)
    assert len(keep) > 5 and counted.count == 2, counted.sites


@pytest.mark.parametrize("images", [2, 16])
def test_confusion_matrix_copies_do_not_grow_with_images(syncs, rng, images, gpu):
    pred = gpu.asarray(rng.integers(0, 4, (images, 8, 8)))
    gt = gpu.asarray(rng.integers(0, 4, (images, 8, 8)))
    with syncs() as counted:
        matrix = ConfusionMatrix(4).update(pred, gt).matrix
    assert matrix.sum() == images * 64 and counted.count == 2, counted.sites


def test_yolo_spec_is_used_as_built(rng):
    _, task, _ = detection_setup(rng, 1)
    assert isinstance(task.spec, YoloSpec)
