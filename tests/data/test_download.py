"""Downloads through mirrors (local HTTP server, directory, file://), checksums, lock file, no re-fetch."""

from __future__ import annotations

import json

import pytest

from xpvision.data import registry
from xpvision.data.download import LOCK_NAME, fetch_dataset, fetch_files
from xpvision.data.registry import RemoteFile
from xpvision.errors import ConfigError, DataError

from .builders import md5_of, write_mnist_files

NAME = "train-labels-idx1-ubyte.gz"


def _remote(md5, name=NAME):
    return RemoteFile(name, f"http://unreachable.invalid/{name}", md5)


def test_http_mirror_delivers_verified_file_and_lock(http_server, tmp_path):
    write_mnist_files(http_server.root)
    expected = md5_of(http_server.root / NAME)
    paths = fetch_files([_remote(expected)], tmp_path / "dl", [http_server.url], use_official=False,
                        progress=False)
    assert paths[NAME].read_bytes() == (http_server.root / NAME).read_bytes()
    assert http_server.requests == [f"/{NAME}"]
    lock = json.loads((tmp_path / "dl" / LOCK_NAME).read_text())
    assert lock[NAME]["md5"] == expected and lock[NAME]["size"] == paths[NAME].stat().st_size
    assert not any((tmp_path / "dl" / ".partial").iterdir())


def test_present_and_verified_file_is_not_fetched_again(http_server, tmp_path):
    write_mnist_files(http_server.root)
    remote = _remote(md5_of(http_server.root / NAME))
    fetch_files([remote], tmp_path / "dl", [http_server.url], use_official=False, progress=False)
    fetch_files([remote], tmp_path / "dl", [http_server.url], use_official=False, progress=False)
    assert http_server.requests == [f"/{NAME}"]


def test_bad_checksum_deletes_partial_and_names_both_hashes(http_server, tmp_path):
    write_mnist_files(http_server.root)
    actual = md5_of(http_server.root / NAME)
    wrong = "0" * 32
    with pytest.raises(DataError) as info:
        fetch_files([_remote(wrong)], tmp_path / "dl", [http_server.url], use_official=False, progress=False)
    message = str(info.value)
    assert NAME in message and wrong in message and actual in message
    assert not (tmp_path / "dl" / NAME).exists()
    assert list((tmp_path / "dl" / ".partial").iterdir()) == []


def test_falls_through_a_failing_mirror_to_the_next(http_server, tmp_path):
    write_mnist_files(http_server.root / "good")
    remote = _remote(md5_of(http_server.root / "good" / NAME))
    paths = fetch_files([remote], tmp_path / "dl", [http_server.url + "/missing", http_server.url + "/good"],
                        use_official=False, progress=False, retries=0)
    assert md5_of(paths[NAME]) == remote.md5
    assert http_server.requests == [f"/missing/{NAME}", f"/good/{NAME}"]


@pytest.mark.parametrize("style", ["directory", "file-url"])
def test_directory_and_file_url_mirrors(tmp_path, style):
    arrays_dir = tmp_path / "mirror"
    write_mnist_files(arrays_dir)
    mirror = str(arrays_dir) if style == "directory" else arrays_dir.as_uri()
    paths = fetch_files([_remote(md5_of(arrays_dir / NAME))], tmp_path / "dl", [mirror], use_official=False,
                        progress=False)
    assert paths[NAME].read_bytes() == (arrays_dir / NAME).read_bytes()


def test_unknown_hash_is_recorded_then_enforced(tmp_path):
    mirror = tmp_path / "mirror"
    write_mnist_files(mirror)
    dest = tmp_path / "dl"
    fetch_files([_remote(None)], dest, [str(mirror)], use_official=False, progress=False)
    recorded = json.loads((dest / LOCK_NAME).read_text())[NAME]["md5"]
    assert recorded == md5_of(mirror / NAME)
    # the local copy goes bad and the mirror now serves different bytes: the recorded hash refuses them
    (dest / NAME).write_bytes(b"tampered")
    (mirror / NAME).write_bytes(b"a different file")
    with pytest.raises(DataError, match=recorded):
        fetch_files([_remote(None)], dest, [str(mirror)], use_official=False, progress=False)
    assert not (dest / NAME).exists() or (dest / NAME).read_bytes() == b"tampered"


def test_corrupt_present_file_is_replaced(tmp_path):
    mirror = tmp_path / "mirror"
    write_mnist_files(mirror)
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / NAME).write_bytes(b"half a file")
    paths = fetch_files([_remote(md5_of(mirror / NAME))], dest, [str(mirror)], use_official=False,
                        progress=False)
    assert paths[NAME] == mirror / NAME  # the verified mirror file, read in place


def test_no_source_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no source"):
        fetch_files([_remote(None)], tmp_path, [], use_official=False)


def test_registry_holds_published_hashes_and_rejects_unknown_names():
    mnist = {f.name: f.md5 for f in registry.dataset_files("mnist")}
    assert mnist["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    voc = {f.name: f.md5 for f in registry.dataset_files("voc2007")}
    assert voc["VOCtrainval_06-Nov-2007.tar"] == "c52e279531787c972589f7e41ab4ae64"
    assert all(len(f.md5) == 32 for files in registry.DATASETS.values() for f in files)
    with pytest.raises(ConfigError, match="unknown dataset"):
        registry.dataset_files("imagenet")
    with pytest.raises(ConfigError, match="no file"):
        registry.dataset_files("mnist", only=("train.zip",))


def test_fetch_dataset_uses_registry_names(http_server, tmp_path, monkeypatch):
    write_mnist_files(http_server.root)
    files = tuple(RemoteFile(f.name, f.url, md5_of(http_server.root / f.name))
                  for f in registry.DATASETS["mnist"])
    monkeypatch.setitem(registry.DATASETS, "mnist", files)
    paths = fetch_dataset("mnist", tmp_path / "dl", [http_server.url], use_official=False, progress=False)
    assert sorted(paths) == sorted(registry.MNIST_FILES)
    assert sorted(http_server.requests) == sorted(f"/{n}" for n in registry.MNIST_FILES)
