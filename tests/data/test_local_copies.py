"""Data as users hold it: local MNIST folders (.gz or plain IDX), mirrors serving plain IDX, folder mirrors
read in place, archives hashed once, and a checksum mismatch reported as one."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os

import numpy as np
import pytest

from xpvision.data import download, registry
from xpvision.data.download import LOCK_NAME, fetch_files
from xpvision.data.prepare import PrepareConfig, prepare
from xpvision.data.registry import MNIST_FILES, RemoteFile
from xpvision.data.shards import ShardDataset
from xpvision.errors import DataError

from .builders import md5_of, tar_folder, write_coco_zips, write_mnist_files, write_voc_tree


def _register_mnist(monkeypatch, folder):
    """Registry ``mnist`` with the published .gz hashes replaced by the test files' own: .gz bytes and the
    uncompressed content's MD5 (what a plain copy is checked against)."""
    files = []
    for name in MNIST_FILES:
        data = gzip.decompress((folder / name).read_bytes())
        content = hashlib.md5(data, usedforsecurity=False).hexdigest()
        files.append(RemoteFile(name, "http://unreachable.invalid/" + name, md5_of(folder / name), content))
    monkeypatch.setitem(registry.DATASETS, "mnist", tuple(files))


def _gunzip_all(folder):
    for name in MNIST_FILES:
        (folder / name.removesuffix(".gz")).write_bytes(gzip.decompress((folder / name).read_bytes()))
        (folder / name).unlink()


@pytest.mark.parametrize("layout", ["gz", "plain", "recompressed"])
def test_mnist_root_in_place(tmp_path, monkeypatch, layout):
    root = tmp_path / "MNIST" / "raw"
    arrays = write_mnist_files(root)
    _register_mnist(monkeypatch, root)
    if layout == "plain":
        _gunzip_all(root)
    if layout == "recompressed":  # a packager's .gz: other bytes, same content (Debian's Fashion-MNIST)
        for name in MNIST_FILES:
            data = gzip.decompress((root / name).read_bytes())
            (root / name).write_bytes(gzip.compress(data, compresslevel=1, mtime=12345))
    before = sorted(p.name for p in root.iterdir())
    config = PrepareConfig(source="mnist", root=str(root), use_official=False, progress=False)
    summary = prepare(config, tmp_path / "cache", tmp_path / "proc")
    assert summary["train"] == 12 and summary["test"] == 5
    np.testing.assert_array_equal(ShardDataset(tmp_path / "proc/train")[4]["image"][..., 0],
                                  arrays["train"][0][4])
    assert sorted(p.name for p in root.iterdir()) == before  # read in place: nothing written there
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert [p.name for p in cached] == [LOCK_NAME]  # and nothing copied into the cache


def test_mnist_root_plain_file_with_wrong_content_names_file_and_hashes(tmp_path, monkeypatch):
    root = tmp_path / "mnist"
    write_mnist_files(root)
    _register_mnist(monkeypatch, root)
    _gunzip_all(root)
    bad = root / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:-1] + b"\x09")
    expected = registry.DATASETS["mnist"][3].content_md5
    config = PrepareConfig(source="mnist", root=str(root), use_official=False, progress=False)
    with pytest.raises(DataError) as info:
        prepare(config, tmp_path / "cache", tmp_path / "proc")
    message = str(info.value)
    assert str(bad) in message and "checksum mismatch" in message
    assert expected in message and md5_of(bad) in message
    assert not (tmp_path / "proc").exists()


def test_mnist_root_missing_file_is_named(tmp_path, monkeypatch):
    root = tmp_path / "mnist"
    write_mnist_files(root)
    _register_mnist(monkeypatch, root)
    (root / "train-images-idx3-ubyte.gz").unlink()
    config = PrepareConfig(source="mnist", root=str(root), use_official=False, progress=False)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: no such file"):
        prepare(config, tmp_path / "cache", tmp_path / "proc")


def test_http_mirror_serving_plain_idx(http_server, tmp_path, monkeypatch):
    arrays = write_mnist_files(http_server.root)
    _register_mnist(monkeypatch, http_server.root)
    _gunzip_all(http_server.root)
    config = PrepareConfig(source="mnist", mirrors=(http_server.url,), use_official=False, progress=False,
                           retries=0)
    prepare(config, tmp_path / "cache", tmp_path / "proc")
    np.testing.assert_array_equal(ShardDataset(tmp_path / "proc/test")[2]["image"][..., 0],
                                  arrays["t10k"][0][2])
    # the .gz name is asked for first, then the plain name; a second run asks for nothing
    assert http_server.requests[:2] == ["/train-images-idx3-ubyte.gz", "/train-images-idx3-ubyte"]
    assert (tmp_path / "cache/mnist/train-images-idx3-ubyte").is_file()
    asked = len(http_server.requests)
    prepare(config, tmp_path / "cache", tmp_path / "proc")
    assert len(http_server.requests) == asked


def test_folder_mirror_is_read_in_place_not_copied(tmp_path):
    mirror = tmp_path / "mirror"
    write_mnist_files(mirror)
    name = MNIST_FILES[0]
    remote = RemoteFile(name, "http://unreachable.invalid/" + name, md5_of(mirror / name))
    dest = tmp_path / "dl"
    paths = fetch_files([remote], dest, [str(mirror)], use_official=False, progress=False)
    assert paths[name] == mirror / name
    assert sorted(p.name for p in dest.iterdir()) == [LOCK_NAME]
    assert os.stat(paths[name]).st_ino == os.stat(mirror / name).st_ino


def test_present_file_with_wrong_checksum_says_checksum_mismatch(tmp_path):
    dest = tmp_path / "dl"
    dest.mkdir()
    name = MNIST_FILES[1]
    (dest / name).write_bytes(b"not the file")
    expected = "0123456789abcdef0123456789abcdef"
    with pytest.raises(DataError) as info:
        fetch_files([RemoteFile(name, "http://unreachable.invalid/x", expected)], dest, [],
                    use_official=False)
    message = str(info.value)
    assert "checksum mismatch" in message and "not present" not in message
    assert str(dest / name) in message and expected in message
    assert hashlib.md5(b"not the file", usedforsecurity=False).hexdigest() in message
    assert (dest / name).read_bytes() == b"not the file"  # nothing lost


@pytest.mark.parametrize("mirror", ["http", "folder"])
def test_archive_is_hashed_once_across_two_runs(http_server, tmp_path, monkeypatch, mirror):
    name = "VOCtrainval_11-May-2012"
    write_voc_tree(tmp_path / name, "2012", {"train": ["000005"], "val": ["000007"]})
    tar_folder(tmp_path / name / "VOCdevkit", http_server.root / f"{name}.tar", "VOCdevkit")
    archive_md5 = md5_of(http_server.root / f"{name}.tar")
    monkeypatch.setitem(registry.DATASETS, "voc2012",
                        (RemoteFile(f"{name}.tar", "http://x.invalid", archive_md5),))
    reads: list[str] = []
    real = download.file_digests

    def counting(path, *args, **kwargs):
        reads.append(os.path.basename(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(download, "file_digests", counting)
    source = http_server.url if mirror == "http" else str(http_server.root)
    config = PrepareConfig(source="voc2012", task="detection", image_size=(30, 40), mirrors=(source,),
                           use_official=False, progress=False)
    prepare(config, tmp_path / "cache", tmp_path / "proc")
    assert reads == [f"{name}.tar"]  # verified once after download; extraction and the test split trust it
    prepare(config, tmp_path / "cache", tmp_path / "proc")
    assert reads == [f"{name}.tar"]  # the second run reads it not at all
    # a changed archive (size / mtime differ from the lock) is hashed again and refused
    archive = (tmp_path / "cache/voc2012" if mirror == "http" else http_server.root) / f"{name}.tar"
    archive.write_bytes(archive.read_bytes() + b"\0" * 512)
    with pytest.raises(DataError, match="checksum mismatch"):
        prepare(PrepareConfig(source="voc2012", task="detection", image_size=(30, 40), use_official=False,
                              progress=False), tmp_path / "cache", tmp_path / "proc")


def _snapshot(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*"))


@pytest.mark.parametrize("where", ["base", "VOCdevkit", "VOC2007"])
def test_voc2007_extracted_tree_in_place(tmp_path, where):
    splits = {"trainval": ["000005", "000007"], "test": ["000009"]}
    written = write_voc_tree(tmp_path / "data", "2007", splits)
    root = {"base": tmp_path / "data", "VOCdevkit": tmp_path / "data/VOCdevkit",
            "VOC2007": tmp_path / "data/VOCdevkit/VOC2007"}[where]
    before = _snapshot(tmp_path / "data")
    config = PrepareConfig(source="voc2007", task="segmentation", root=str(root), image_size=(30, 40),
                           use_official=False, progress=False)
    summary = prepare(config, tmp_path / "cache", tmp_path / "proc")
    assert (summary["train"], summary["test"]) == (2, 1)
    first = ShardDataset(tmp_path / "proc/train")[0]
    np.testing.assert_array_equal(first["image"], written["000005"]["image"])
    assert _snapshot(tmp_path / "data") == before  # read in place, nothing written into the dataset
    assert [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == ["tree.json"]


def test_voc2012_tree_missing_layout_is_named(tmp_path):
    write_voc_tree(tmp_path, "2012", {"train": ["000005"], "val": ["000007"]})
    voc = tmp_path / "VOCdevkit/VOC2012"
    (voc / "ImageSets/Segmentation/val.txt").unlink()
    config = PrepareConfig(source="voc2012", task="segmentation", root=str(tmp_path), image_size=(30, 40),
                           use_official=False, progress=False)
    with pytest.raises(DataError, match=r"VOC2012: missing ImageSets/Segmentation/val\.txt"):
        prepare(config, tmp_path / "cache", tmp_path / "proc")
    with pytest.raises(DataError, match="no VOCdevkit/VOC2012"):
        prepare(dataclasses.replace(config, root=str(tmp_path / "elsewhere")), tmp_path / "cache",
                tmp_path / "proc")


def test_voc_tree_changed_after_first_use_is_noticed(tmp_path):
    write_voc_tree(tmp_path, "2012", {"train": ["000005", "000009"], "val": ["000007"]})
    config = PrepareConfig(source="voc2012", task="detection", root=str(tmp_path), image_size=(30, 40),
                           use_official=False, progress=False)
    prepare(config, tmp_path / "cache", tmp_path / "proc")
    prepare(config, tmp_path / "cache", tmp_path / "proc")  # unchanged: fine
    image = tmp_path / "VOCdevkit/VOC2012/JPEGImages/000009.jpg"
    image.write_bytes(image.read_bytes() + b"\0")
    (tmp_path / "VOCdevkit/VOC2012/JPEGImages/extra.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="changed since it was first used") as info:
        prepare(config, tmp_path / "cache", tmp_path / "proc")
    assert "added 1 (JPEGImages/extra.jpg)" in str(info.value)
    assert "changed size 1 (JPEGImages/000009.jpg)" in str(info.value)
    assert len(ShardDataset(tmp_path / "proc/train")) == 2  # the earlier output is kept


def test_coco_folder_with_only_val2017(tmp_path):
    import zipfile

    served = tmp_path / "zips"
    images = write_coco_zips(served, extra_ids=(106, 107, 108))
    root = tmp_path / "coco"
    for name in ("annotations_trainval2017.zip", "val2017.zip"):
        with zipfile.ZipFile(served / name) as zf:
            zf.extractall(root)
    config = PrepareConfig(source="coco2017", task="detection", root=str(root), image_size=(20, 24),
                           splits={"train": "val2017", "test": "val2017"}, use_official=False,
                           progress=False)
    summary = prepare(config, tmp_path / "cache", tmp_path / "proc")
    assert (summary["train"], summary["test"]) == (3, 2)  # no train2017 anywhere, val2017 divided
    np.testing.assert_array_equal(ShardDataset(tmp_path / "proc/train")[0]["image"], images[101])
    default = PrepareConfig(source="coco2017", task="detection", root=str(root), image_size=(20, 24),
                            use_official=False, progress=False)
    with pytest.raises(DataError, match=r"missing .*instances_train2017\.json"):
        prepare(default, tmp_path / "cache", tmp_path / "proc2")
