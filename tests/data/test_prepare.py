"""prepare(): official archives served over HTTP, fetched through the mirror setting, parsed into shards."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from xpvision.data import registry, scenes, voc
from xpvision.data.prepare import PrepareConfig, prepare
from xpvision.data.registry import RemoteFile
from xpvision.data.scenes import SceneConfig
from xpvision.data.shards import ShardDataset
from xpvision.data.voc import VOC_CLASSES
from xpvision.errors import ConfigError, DataError

from .builders import md5_of, tar_folder, tree_files, write_coco_zips, write_mnist_files, write_voc_tree


def _serve(monkeypatch, dataset, served):
    """Point registry ``dataset`` at the test's files (their real names, the test's checksums)."""
    files = tuple(RemoteFile(f.name, "http://unreachable.invalid/" + f.name,
                             md5_of(served / f.name) if (served / f.name).exists() else f.md5)
                  for f in registry.DATASETS[dataset])
    monkeypatch.setitem(registry.DATASETS, dataset, files)


def _config(source, server, **kwargs):
    return PrepareConfig(source=source, mirrors=(server.url,), use_official=False, progress=False, **kwargs)


def test_mnist_through_http(http_server, tmp_path, monkeypatch):
    arrays = write_mnist_files(http_server.root)
    _serve(monkeypatch, "mnist", http_server.root)
    summary = prepare(_config("mnist", http_server), tmp_path / "raw", tmp_path / "proc")
    assert summary == {"train": 12, "test": 5, "classes": list("0123456789")}
    train = ShardDataset(tmp_path / "proc/train")
    np.testing.assert_array_equal(train[3]["image"][..., 0], arrays["train"][0][3])
    assert train[3]["label"] == arrays["train"][1][3]
    x = arrays["train"][0] / 255.0
    np.testing.assert_allclose(train.meta["mean"], [x.mean()], rtol=1e-9)
    np.testing.assert_allclose(train.meta["std"], [x.std()], rtol=1e-9)
    prepare(_config("mnist", http_server, max_images=4), tmp_path / "raw", tmp_path / "proc")
    assert len(ShardDataset(tmp_path / "proc/train")) == 4
    assert len(http_server.requests) == 4  # the second run found every file present and verified


def test_voc2007_trainval_and_test_tars(http_server, tmp_path, monkeypatch):
    written = {}
    for name, split, ids in (("VOCtrainval_06-Nov-2007", "trainval", ["000005", "000007"]),
                             ("VOCtest_06-Nov-2007", "test", ["000009"])):
        written.update(write_voc_tree(tmp_path / name, "2007", {split: ids}))
        tar_folder(tmp_path / name / "VOCdevkit", http_server.root / f"{name}.tar", "VOCdevkit")
    _serve(monkeypatch, "voc2007", http_server.root)
    config = _config("voc2007", http_server, task="segmentation", image_size=(30, 40))
    summary = prepare(config, tmp_path / "raw", tmp_path / "proc")
    assert summary == {"train": 2, "test": 1, "classes": list(VOC_CLASSES)}
    train = ShardDataset(tmp_path / "proc/train")
    first = train[0]
    np.testing.assert_array_equal(first["image"], written["000005"]["image"])  # already 40x30: no resize
    np.testing.assert_array_equal(first["boxes"], [[2, 3, 20, 25], [9, 1, 40, 30]])
    np.testing.assert_array_equal(first["labels"], [VOC_CLASSES.index("chair"), VOC_CLASSES.index("dog")])
    np.testing.assert_array_equal(first["difficult"], [False, True])
    np.testing.assert_array_equal(first["mask"], written["000005"]["mask"])
    second = train[1]  # 32x24 resized to 40x30
    np.testing.assert_allclose(second["boxes"], [[0, 0, 40, 30]])
    test = ShardDataset(tmp_path / "proc/test")
    assert len(test) == 1 and test.meta["source_split"] == "test"
    np.testing.assert_allclose(test[0]["boxes"][0], np.array([4, 5, 15, 20]) * np.tile([40 / 36, 30 / 28], 2),
                               rtol=1e-6)


def test_voc2012_detection_with_class_subset(http_server, tmp_path, monkeypatch):
    write_voc_tree(tmp_path / "voc12", "2012", {"train": ["000005", "000007"], "val": ["000009"]})
    tar_folder(tmp_path / "voc12/VOCdevkit", http_server.root / "VOCtrainval_11-May-2012.tar", "VOCdevkit")
    _serve(monkeypatch, "voc2012", http_server.root)
    config = _config("voc2012", http_server, task="detection", image_size=(32, 32), classes=("dog",))
    summary = prepare(config, tmp_path / "raw", tmp_path / "proc")
    assert summary == {"train": 1, "test": 1, "classes": ["dog"]}
    train = ShardDataset(tmp_path / "proc/train")
    assert train.targets == ("boxes",) and train[0]["labels"].tolist() == [0]
    np.testing.assert_allclose(train[0]["boxes"], [[9 * 32 / 40, 1 * 32 / 30, 32, 32]], rtol=1e-6)
    assert http_server.requests == ["/VOCtrainval_11-May-2012.tar"]  # one archive serves both splits


def test_coco_val_only(http_server, tmp_path, monkeypatch):
    images = write_coco_zips(http_server.root, extra_ids=(106, 107, 108))  # 106, 107: test by id hash
    _serve(monkeypatch, "coco2017", http_server.root)
    config = _config("coco2017", http_server, task="segmentation", image_size=(20, 24),
                     splits={"train": "val2017", "test": "val2017"})
    summary = prepare(config, tmp_path / "raw", tmp_path / "proc")
    assert summary == {"train": 3, "test": 2, "classes": ["car", "dog"]}  # val2017 divided, not shared
    assert all(len(s["boxes"]) == 0 for s in ShardDataset(tmp_path / "proc/test"))  # 106, 107 (no objects)
    train = ShardDataset(tmp_path / "proc/train")
    np.testing.assert_array_equal(train[0]["image"], images[101])
    np.testing.assert_array_equal(train[0]["boxes"], [[4, 2, 16, 12], [2, 3, 5, 9]])
    np.testing.assert_array_equal(train[0]["labels"], [1, 0])
    assert train[0]["mask"][5, 10] == 2 and (train[0]["mask"][3:9, 2:5] == 1).all()
    assert train[1]["difficult"].tolist() == [True, False]  # the crowd annotation
    assert sorted(set(http_server.requests)) == ["/annotations_trainval2017.zip", "/val2017.zip"]


def test_offline_sources(tmp_path):
    summary = prepare(PrepareConfig(source="digits"), tmp_path / "raw", tmp_path / "digits")
    assert summary["train"] == 1437 and summary["test"] == 360
    scenes = SceneConfig(n_train=6, n_test=3, image_size=40, min_digit_size=10, max_digit_size=20)
    summary = prepare(PrepareConfig(source="digit-scenes", task="detection", scenes=scenes),
                      tmp_path / "raw", tmp_path / "scenes")
    assert summary == {"train": 6, "test": 3, "classes": list("0123456789")}
    train = ShardDataset(tmp_path / "scenes/train")
    assert train.targets == ("boxes", "mask") and train[0]["image"].shape == (40, 40, 3)
    # a fresh run (new raw folder) gives byte-identical processed data
    prepare(PrepareConfig(source="digit-scenes", task="detection", scenes=scenes), tmp_path / "raw2",
            tmp_path / "scenes2")
    for split in ("train", "test"):
        assert ((tmp_path / "scenes" / split / "manifest.json").read_bytes()
                == (tmp_path / "scenes2" / split / "manifest.json").read_bytes())


def test_digit_scene_shards_are_the_same_bytes_for_any_number_of_workers(tmp_path, monkeypatch):
    small = SceneConfig(n_train=24, n_test=7, image_size=40, min_digit_size=10, max_digit_size=20)
    config = PrepareConfig(source="digit-scenes", task="segmentation", shard_size=8, workers=1, scenes=small)
    prepare(config, tmp_path / "raw1", tmp_path / "one")  # one chunk per split, no pool
    expected = tree_files(tmp_path / "one")
    assert sorted(expected) == [f"{split}/{name}" for split, count in (("test", 1), ("train", 3))
                                for name in ["manifest.json"] + [f"shard-{k:05d}.npz" for k in range(count)]]
    monkeypatch.setattr(scenes, "SCENE_CHUNK", 5)
    monkeypatch.setattr(voc, "READ_CHUNK", 3)
    for workers in (2, 3):
        prepare(replace(config, workers=workers), tmp_path / f"raw{workers}", tmp_path / str(workers))
        found = tree_files(tmp_path / str(workers))
        assert found.keys() == expected.keys()
        assert [name for name in expected if found[name] != expected[name]] == [], workers


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown"):
        PrepareConfig(source="imagenet")
    with pytest.raises(ConfigError, match="does not provide"):
        PrepareConfig(source="digits", task="detection")
    with pytest.raises(ConfigError, match="image_size"):
        PrepareConfig(source="voc2007", task="detection")


def test_download_failure_is_a_data_error(http_server, tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz"):
        prepare(_config("mnist", http_server, retries=0), tmp_path / "raw", tmp_path / "proc")
    assert not (tmp_path / "proc").exists()


@pytest.mark.parametrize("damage", ["corrupt-image", "xxe-annotation"])
def test_bad_file_inside_an_archive_leaves_no_processed_data(http_server, tmp_path, monkeypatch, damage):
    write_voc_tree(tmp_path / "voc12", "2012", {"train": ["000005", "000007"], "val": ["000009"]})
    root = tmp_path / "voc12/VOCdevkit/VOC2012"
    if damage == "corrupt-image":
        (root / "JPEGImages/000007.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    else:
        (root / "Annotations/000007.xml").write_text(
            '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotation>&x;'
            "</annotation>")
    tar_folder(tmp_path / "voc12/VOCdevkit", http_server.root / "VOCtrainval_11-May-2012.tar", "VOCdevkit")
    _serve(monkeypatch, "voc2012", http_server.root)
    config = _config("voc2012", http_server, task="detection", image_size=(32, 32))
    with pytest.raises(DataError, match="000007"):
        prepare(config, tmp_path / "raw", tmp_path / "proc")
    assert not (tmp_path / "proc").exists() or not any((tmp_path / "proc").iterdir())


def test_generated_sources_follow_their_parameters(tmp_path):
    small = SceneConfig(n_train=3, n_test=2, image_size=40, min_digit_size=10, max_digit_size=20)
    prepare(PrepareConfig(source="digit-scenes", task="detection", scenes=small), tmp_path / "raw",
            tmp_path / "a")
    bigger = SceneConfig(**{**small.__dict__, "n_train": 5})
    summary = prepare(PrepareConfig(source="digit-scenes", task="detection", scenes=bigger), tmp_path / "raw",
                      tmp_path / "b")
    assert summary["train"] == 5  # the raw scenes were regenerated, not reused
