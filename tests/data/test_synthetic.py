"""Offline default data: digits (MNIST IDX) and digit-scenes (VOC + COCO): determinism, leakage, agreement."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from xpvision.data import scenes
from xpvision.data.coco import load_coco
from xpvision.data.digits import render_digits, write_digits
from xpvision.data.mnist import load_mnist_split, write_idx_gz
from xpvision.data.scenes import SceneConfig, write_digit_scenes
from xpvision.data.voc import load_voc
from xpvision.errors import ConfigError

from .builders import tree_files

SMALL = SceneConfig(n_train=12, n_test=6, image_size=48, min_digit_size=12, max_digit_size=24, seed=5)


def _tree_hash(folder):
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    write_digits(folder)
    return folder


def test_digits_are_mnist_like_stratified_and_deterministic(digits_dir, tmp_path):
    train, test = load_mnist_split(digits_dir, "train"), load_mnist_split(digits_dir, "test")
    assert len(train.labels) + len(test.labels) == 1797 and len(test.labels) == 360
    assert train.images.shape[1:] == (28, 28, 1) and train.images.dtype == np.uint8
    assert train.images.max() == 255
    border = np.concatenate([train.images[:, :4], train.images[:, -4:]], axis=1)
    assert border.max() == 0  # 20x20 digit centred in 28x28
    test_share = np.bincount(test.labels, minlength=10) / np.bincount(
        np.concatenate([train.labels, test.labels]), minlength=10)
    assert np.all(np.abs(test_share - 0.2) < 0.02)  # stratified
    write_digits(tmp_path)
    assert _tree_hash(tmp_path) == _tree_hash(digits_dir)


def test_rendered_digit_matches_its_source():
    from PIL import Image
    from sklearn.datasets import load_digits

    images, labels = render_digits()
    source = load_digits()
    assert (labels == source.target).all()
    for k in range(0, 1797, 97):
        shrunk = Image.fromarray(images[k, 4:24, 4:24]).resize((8, 8), Image.BOX)  # back to 8x8
        corr = np.corrcoef(source.images[k].ravel(), np.asarray(shrunk, dtype=float).ravel())[0, 1]
        assert corr > 0.9, (k, corr)


@pytest.fixture(scope="module")
def scenes_dir(digits_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes") / "digit-scenes"
    write_digit_scenes(folder, digits_dir, SMALL)
    return folder


def test_scenes_are_byte_deterministic(scenes_dir, digits_dir, tmp_path):
    again = tmp_path / "again"
    write_digit_scenes(again, digits_dir, SMALL)
    assert _tree_hash(again) == _tree_hash(scenes_dir)
    other = tmp_path / "other"
    write_digit_scenes(other, digits_dir, SceneConfig(**{**SMALL.__dict__, "seed": 6}))
    assert _tree_hash(other) != _tree_hash(scenes_dir)


def test_scenes_are_the_same_bytes_for_any_number_of_workers(digits_dir, tmp_path, monkeypatch):
    config = SceneConfig(**{**SMALL.__dict__, "n_train": 24, "n_test": 7})
    write_digit_scenes(tmp_path / "one", digits_dir, config, workers=1)  # one chunk per split, no pool
    expected = tree_files(tmp_path / "one")
    assert len(expected) == 3 * 31 + 4 + 2  # jpg, xml, png per scene; 4 image lists; 2 COCO files
    coco = json.loads(expected["annotations/instances_train.json"])
    assert [image["id"] for image in coco["images"]] == list(range(1, 25))
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    assert [a["image_id"] for a in coco["annotations"]] == sorted(a["image_id"] for a in coco["annotations"])
    monkeypatch.setattr(scenes, "SCENE_CHUNK", 5)  # 5 + 2 chunks, shared among the workers
    for workers in (1, 2, 3):
        write_digit_scenes(tmp_path / str(workers), digits_dir, config, workers=workers)
        found = tree_files(tmp_path / str(workers))
        assert found.keys() == expected.keys()
        assert [name for name in expected if found[name] != expected[name]] == [], workers
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_voc_and_coco_views_agree(scenes_dir):
    for split in ("train", "test"):
        voc = load_voc(scenes_dir, split, "segmentation", all_classes=tuple("0123456789"))
        coco, classes = load_coco(scenes_dir / "annotations" / f"instances_{split}.json",
                                  scenes_dir / "JPEGImages")
        assert classes == tuple("0123456789") and len(voc) == len(coco) == (12 if split == "train" else 6)
        for v, c in zip(voc, coco, strict=True):
            np.testing.assert_array_equal(v["image"], c["image"])
            np.testing.assert_array_equal(v["boxes"], c["boxes"])
            np.testing.assert_array_equal(v["labels"], c["labels"])
            np.testing.assert_array_equal(v["mask"], c["mask"])


def test_scene_labels_are_consistent(scenes_dir):
    samples = load_voc(scenes_dir, "train", "segmentation", all_classes=tuple("0123456789"))
    counts = [len(s["labels"]) for s in samples]
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1
    for s in samples:
        assert s["image"].shape == (48, 48, 3) and s["mask"].shape == (48, 48)
        assert 255 not in s["mask"]
        for box, label in zip(s["boxes"], s["labels"], strict=True):
            x1, y1, x2, y2 = box.astype(int)
            inside = s["mask"][y1:y2, x1:x2] == label + 1
            # the box is tight around pixels of its class: all four edges touch one
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert 4 <= y2 - y1 <= 24


def test_coco_file_is_readable_by_pycocotools(scenes_dir):
    from pycocotools.coco import COCO

    path = scenes_dir / "annotations" / "instances_test.json"
    coco = COCO(str(path))
    samples, _ = load_coco(path, scenes_dir / "JPEGImages")
    for sample, image_id in zip(samples, sorted(coco.getImgIds()), strict=True):
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            assert (sample["mask"][coco.annToMask(ann).astype(bool)] == ann["category_id"]).all()
    assert json.loads(path.read_text())["categories"][3] == {"id": 4, "name": "3", "supercategory": "digit"}


def test_train_scenes_use_only_train_digits(tmp_path):
    """Digits folder whose train split holds only 0-4 and test split only 5-9: scenes must follow."""
    images, labels = render_digits()
    low, high = labels < 5, labels >= 5
    folder = tmp_path / "digits"
    write_idx_gz(folder / "train-images-idx3-ubyte.gz", images[low])
    write_idx_gz(folder / "train-labels-idx1-ubyte.gz", labels[low])
    write_idx_gz(folder / "t10k-images-idx3-ubyte.gz", images[high])
    write_idx_gz(folder / "t10k-labels-idx1-ubyte.gz", labels[high])
    write_digit_scenes(tmp_path / "scenes", folder, SMALL)
    train = load_voc(tmp_path / "scenes", "train", all_classes=tuple("0123456789"))
    test = load_voc(tmp_path / "scenes", "test", all_classes=tuple("0123456789"))
    assert set(np.concatenate([s["labels"] for s in train])) <= {0, 1, 2, 3, 4}
    assert set(np.concatenate([s["labels"] for s in test])) <= {5, 6, 7, 8, 9}


def test_bad_scene_config():
    with pytest.raises(ConfigError, match="min_digits"):
        SceneConfig(min_digits=3, max_digits=2)
    with pytest.raises(ConfigError, match="image_size"):
        SceneConfig(image_size=24, max_digit_size=32)
