"""Shards: round trip of every target kind, reproducible bytes, manifest and checksum errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xpvision.data.shards import ShardDataset, channel_stats, read_manifest, write_shards
from xpvision.errors import DataError


def _detection_samples(rng, n=7, size=(12, 10)):
    samples = []
    for i in range(n):
        r = i % 3  # 0, 1 or 2 boxes
        samples.append({"image": rng.integers(0, 256, (*size, 3), dtype=np.uint8),
                        "boxes": rng.uniform(0, 10, (r, 4)).astype(np.float32),
                        "labels": rng.integers(0, 5, r), "difficult": rng.random(r) < 0.5,
                        "mask": rng.integers(0, 6, size, dtype=np.uint8)})
    return samples


def test_round_trip_across_shards(tmp_path, rng):
    samples = _detection_samples(rng)
    manifest = write_shards(tmp_path / "s", samples, classes=("a", "b"), shard_size=3, meta={"k": 1})
    assert [s["count"] for s in manifest["shards"]] == [3, 3, 1]
    assert manifest["targets"] == ["boxes", "mask"] and manifest["image_shape"] == [12, 10, 3]
    ds = ShardDataset(tmp_path / "s")
    assert len(ds) == 7 and ds.classes == ("a", "b") and ds.meta == {"k": 1}
    for i, expected in enumerate(samples):
        got = ds[i]
        np.testing.assert_array_equal(got["image"], expected["image"])
        np.testing.assert_array_equal(got["boxes"], expected["boxes"])
        assert got["boxes"].shape == (i % 3, 4) and got["boxes"].dtype == np.float32
        np.testing.assert_array_equal(got["labels"], expected["labels"])
        np.testing.assert_array_equal(got["difficult"], expected["difficult"])
        np.testing.assert_array_equal(got["mask"], expected["mask"])
    np.testing.assert_array_equal(ds[-1]["image"], samples[-1]["image"])
    with pytest.raises(IndexError):
        ds[7]


def test_classification_round_trip_and_lru(tmp_path, rng):
    samples = [{"image": rng.integers(0, 256, (4, 4, 1), dtype=np.uint8), "label": i % 10} for i in range(10)]
    write_shards(tmp_path / "s", samples, classes=tuple("0123456789"), shard_size=4)
    ds = ShardDataset(tmp_path / "s", max_cached_shards=1)
    assert [ds[i]["label"] for i in range(10)] == [i % 10 for i in range(10)]
    assert len(ds._cache) == 1


def test_same_samples_give_same_bytes(tmp_path, rng):
    samples = _detection_samples(rng)
    write_shards(tmp_path / "a", samples, classes=("x",), shard_size=4)
    write_shards(tmp_path / "b", samples, classes=("x",), shard_size=4)
    for name in ("shard-00000.npz", "shard-00001.npz", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_shard_files_load_with_numpy_without_pickle(tmp_path, rng):
    write_shards(tmp_path / "s", _detection_samples(rng, n=2), classes=("x",))
    with np.load(tmp_path / "s" / "shard-00000.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["box_offsets", "boxes", "difficult", "images", "labels", "masks"]
        assert npz["box_offsets"].tolist() == [0, 0, 1]


def test_tampered_shard_and_bad_manifest(tmp_path, rng):
    write_shards(tmp_path / "s", _detection_samples(rng, n=2), classes=("x",))
    shard = tmp_path / "s" / "shard-00000.npz"
    data = bytearray(shard.read_bytes())
    data[-30] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="SHA-256"):
        ShardDataset(tmp_path / "s")[0]
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["format"] = "something-else"
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="format"):
        read_manifest(tmp_path / "s")
    with pytest.raises(DataError, match="does not exist"):
        ShardDataset(tmp_path / "missing")


def test_mixed_sizes_are_refused_and_nothing_written(tmp_path, rng):
    samples = _detection_samples(rng, n=2) + _detection_samples(rng, n=1, size=(8, 8))
    with pytest.raises(DataError, match="image shape"):
        write_shards(tmp_path / "s", samples, classes=("x",))
    assert list(tmp_path.iterdir()) == []


def test_channel_stats_match_numpy(rng):
    images = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    mean, std = channel_stats([images[:2], images[2:]])
    x = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-10)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-8)


def test_memory_mapped_shards_read_the_same_samples(tmp_path):
    samples = [{"image": np.full((3, 4, 1), i, np.uint8), "boxes": np.full((i % 3, 4), i, np.float32),
                "labels": np.arange(i % 3), "difficult": np.zeros(i % 3, bool)} for i in range(11)]
    write_shards(tmp_path / "s", samples, classes=["a"], shard_size=4)
    loaded, mapped = ShardDataset(tmp_path / "s"), ShardDataset(tmp_path / "s", mmap=True)
    for i in range(11):
        a, b = loaded[i], mapped[i]
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert isinstance(mapped._shard(0)["images"], np.memmap)
    assert not mapped[0]["image"].flags.writeable
    (tmp_path / "s" / "shard-00002.npz").write_bytes(b"PK broken")
    with pytest.raises(DataError, match="SHA-256"):
        ShardDataset(tmp_path / "s", mmap=True)[10]
    with pytest.raises(DataError, match="corrupt"):
        ShardDataset(tmp_path / "s", mmap=True, verify=False)[10]
