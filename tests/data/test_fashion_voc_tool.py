"""tools/fashion_voc.py: the VOC2012-layout scenes it builds, read back by the VOC reader with voc_classes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from tests.data.builders import write_mnist_files
from tools.fashion_voc import (
    FASHION_VOC_CLASSES,
    SceneLayout,
    build_fashion_voc,
    fill_holes,
    load_fashion_mnist,
    main,
)

from xpvision.data.mnist import FASHION_CLASSES, ClassificationArrays
from xpvision.data.prepare import PrepareConfig, prepare
from xpvision.data.shards import ShardDataset
from xpvision.data.voc import iter_voc
from xpvision.errors import DataError, XPVisionError

LAYOUT = SceneLayout(image_size=48, item_size=(12, 24), max_items=3, max_occlusion=0.2, seed=3)


def photos(n: int, seed: int) -> ClassificationArrays:
    """``n`` 28x28 'photographs': a bright rectangle of random size on black, with a dark 1-pixel spot."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28, 1), dtype=np.uint8)
    for image in images:
        y, x = rng.integers(2, 8, 2)
        h, w = rng.integers(8, 18, 2)
        image[y:y + h, x:x + w] = rng.integers(120, 250)
        image[y + h // 2, x + w // 2] = 0
    return ClassificationArrays(images, rng.integers(0, 10, n).astype(np.int64), FASHION_CLASSES)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("fashion-voc")
    source = {"train": photos(23, 0), "test": photos(9, 1)}
    return out, source, build_fashion_voc(out, source, LAYOUT)


def test_every_photograph_is_placed_once_per_split(built):
    out, source, summary = built
    root = out / "VOCdevkit" / "VOC2012"
    for split, source_split in (("train", "train"), ("val", "test")):
        assert summary[split]["objects"] == len(source[source_split].labels)
        samples = list(iter_voc(root, split, "segmentation", all_classes=FASHION_VOC_CLASSES))
        assert len(samples) == summary[split]["images"] < summary[split]["objects"]  # scenes hold several
        labels = Counter(int(label) for s in samples for label in s["labels"])
        assert labels == Counter(source[source_split].labels.tolist())
    assert (root / "classes.txt").read_text().split() == list(FASHION_VOC_CLASSES)


def test_boxes_and_masks_agree_with_the_image(built):
    out, _, _ = built
    for sample in iter_voc(out / "VOCdevkit" / "VOC2012", "train", "segmentation",
                           all_classes=FASHION_VOC_CLASSES):
        mask, image = sample["mask"], sample["image"][..., 0].astype(int)
        assert sample["image"].shape == (48, 48, 3) and mask.shape == (48, 48)
        inside_boxes = np.zeros_like(mask, dtype=bool)
        for (x1, y1, x2, y2), label in zip(sample["boxes"].astype(int), sample["labels"], strict=True):
            assert 0 <= x1 < x2 <= 48 and 0 <= y1 < y2 <= 48
            assert (mask[y1:y2, x1:x2] == label + 1).any()
            inside_boxes[y1:y2, x1:x2] = True
        assert set(np.unique(mask)) <= {0, *(int(label) + 1 for label in sample["labels"])}
        assert not mask[~inside_boxes].any()
        # the 1-pixel dark spots are inside the masks (holes filled), the black canvas is background
        assert image[mask > 0].mean() > 100 and image[mask == 0].mean() < 20


def test_the_pipeline_reads_it_with_voc_classes_and_refuses_it_without(built, tmp_path):
    out, source, summary = built
    config = PrepareConfig(source="voc2012", task="detection", root=str(out), image_size=(48, 48),
                           voc_classes=FASHION_VOC_CLASSES, progress=False)
    counts = prepare(config, tmp_path / "raw", tmp_path / "processed")
    assert (counts["train"], counts["test"]) == (summary["train"]["images"], summary["val"]["images"])
    assert counts["classes"] == list(FASHION_VOC_CLASSES)
    train = ShardDataset(tmp_path / "processed" / "train")
    assert sum(len(train[i]["labels"]) for i in range(len(train))) == len(source["train"].labels)
    subset = PrepareConfig(source="voc2012", task="segmentation", root=str(out), image_size=(48, 48),
                           voc_classes=FASHION_VOC_CLASSES, classes=("bag", "tshirt"), progress=False)
    prepare(subset, tmp_path / "raw", tmp_path / "subset")
    masks = ShardDataset(tmp_path / "subset" / "test")
    assert masks.classes == ("bag", "tshirt")
    assert set(np.unique(np.concatenate([masks[i]["mask"].ravel() for i in range(len(masks))]))) <= {0, 1, 2}
    official = PrepareConfig(source="voc2012", task="detection", root=str(out), image_size=(48, 48),
                             progress=False)
    with pytest.raises(DataError, match=r"Annotations/train_\d+\.xml: object #0 class '\w+' is not one of"):
        prepare(official, tmp_path / "raw", tmp_path / "refused")


def test_same_arguments_give_the_same_bytes(built, tmp_path):
    out, source, _ = built
    build_fashion_voc(tmp_path, source, LAYOUT)
    for name in ("JPEGImages/train_000002.jpg", "Annotations/val_000001.xml",
                 "SegmentationClass/train_000000.png", "ImageSets/Main/train.txt"):
        assert (tmp_path / "VOCdevkit/VOC2012" / name).read_bytes() == \
            (out / "VOCdevkit/VOC2012" / name).read_bytes()


def test_fill_holes_fills_small_enclosed_holes_only():
    mask = np.ones((20, 20), dtype=bool)
    mask[0, :] = False          # reaches the border: background
    mask[3:5, 3:5] = False      # 4 pixels = 1%: filled
    mask[8:16, 8:16] = False    # 64 pixels = 16%: kept as a hole
    filled = fill_holes(mask)
    assert not filled[0].any() and filled[3:5, 3:5].all() and not filled[8:16, 8:16].any()
    assert filled.sum() == mask.sum() + 4


def test_source_with_other_content_is_refused_naming_the_file(tmp_path, capsys):
    write_mnist_files(tmp_path / "not-fashion")
    with pytest.raises(XPVisionError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path / "not-fashion")
    assert main(["--source", str(tmp_path / "not-fashion"), "--out", str(tmp_path / "out")]) == 2
    assert "fashion_voc: " in capsys.readouterr().err and not (tmp_path / "out" / "VOCdevkit").exists()


def test_layout_out_of_range_is_refused():
    with pytest.raises(XPVisionError, match="item size"):
        SceneLayout(image_size=32, item_size=(12, 40))
