"""The detector trains on PASCAL VOC 2007-format data (a small fixture written here) through the same code."""

import numpy as np
from PIL import Image

from xpvision import optim
from xpvision.data.loader import DataLoader, ListDataset
from xpvision.data.voc import iter_voc
from xpvision.detection.yolo import build_detector
from xpvision.nn import rng as nn_rng
from xpvision.tasks import DetectionTask
from xpvision.train import Trainer

OBJECT_XML = """  <object>
    <name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{difficult}</difficult>
    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>
  </object>
"""


def write_voc2007_fixture(root, rng, n_images=8):
    """VOC2007 layout: JPEGImages/, Annotations/ (1-based inclusive boxes, a difficult object),
    ImageSets/Main/trainval.txt; images of different sizes with a dog (red) and a car (blue) block."""
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    ids = []
    for k in range(n_images):
        height, width = int(rng.integers(60, 90)), int(rng.integers(70, 100))
        image = rng.integers(90, 140, (height, width, 3)).astype(np.uint8)
        objects = []
        for name, colour in (("dog", (220, 30, 30)), ("car", (30, 30, 220))):
            h, w = int(rng.integers(18, 30)), int(rng.integers(18, 30))
            y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
            image[y:y + h, x:x + w] = colour
            objects.append(OBJECT_XML.format(name=name, difficult=0, xmin=x + 1, ymin=y + 1, xmax=x + w,
                                             ymax=y + h))
        objects.append(OBJECT_XML.format(name="person", difficult=1, xmin=1, ymin=1, xmax=6, ymax=6))
        image_id = f"{k:06d}"
        ids.append(image_id)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation>\n  <folder>VOC2007</folder><filename>{image_id}.jpg</filename>\n"
            f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>\n"
            f"{''.join(objects)}</annotation>\n")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in ids))


def test_trains_a_few_steps_on_voc_format_data(tmp_path, rng):
    write_voc2007_fixture(tmp_path, rng)
    samples = list(iter_voc(tmp_path, "trainval", "detection", image_size=(32, 32)))
    assert len(samples) == 8 and samples[0]["difficult"].tolist() == [False, False, True]
    dataset = ListDataset(samples, ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
                                    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
                                    "pottedplant", "sheep", "sofa", "train", "tvmonitor"))
    nn_rng.manual_seed(0)  # initial weights independent of the tests that ran before
    model, extra = build_detector("yolo", in_channels=3, classes=dataset.classes, input_size=(32, 32),
                                  train_set=dataset, num_anchors=2, head_channels=32,
                                  backbone_args={"batch_norm": True})
    task = DetectionTask(model, {"classes": list(dataset.classes), **extra})
    loader = DataLoader(dataset, batch_size=4, shuffle=True, seed=0)
    optimizer = optim.build_optimizer("adam", model, lr=3e-3)
    trainer = Trainer(model, task, optimizer, epochs=12, checkpoint_path=tmp_path / "ckpt.npz",
                      progress=False)
    history = trainer.fit(loader, loader)
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    # it starts finding the objects of the images it trains on (about 0.5 after 12 epochs here)
    assert history[0]["val_map_50"] < 0.05 and history[-1]["val_map_50"] > 0.3
