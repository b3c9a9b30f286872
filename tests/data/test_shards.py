"""Shards: round trip of every target kind, reproducible bytes, manifest and checksum errors."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from xpvision.data.shards import ChannelStats, ShardDataset, channel_stats, read_manifest, write_shards
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
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-13)


def test_channel_stats_are_the_exact_values_rounded(rng):
    images = rng.integers(0, 256, (3, 5, 4, 2), dtype=np.uint8)
    mean, std = channel_stats([images])
    for c in range(2):
        values = [int(v) for v in images[..., c].ravel()]  # exact, pixel by pixel
        exact_mean = Fraction(sum(values), 255 * len(values))
        exact_var = sum((Fraction(v, 255) - exact_mean) ** 2 for v in values) / len(values)
        assert mean[c] == float(exact_mean)  # the float nearest the exact mean
        assert std[c] == math.sqrt(float(exact_var))
        assert abs(Fraction(std[c]) ** 2 - exact_var) <= exact_var * Fraction(1, 10**15)


def test_channel_stats_do_not_depend_on_grouping_or_order(rng):
    images = rng.integers(0, 256, (9, 8, 6, 3), dtype=np.uint8)
    by_block = channel_stats([images])
    per_sample = ChannelStats()
    for k in rng.permutation(9):
        per_sample.add(images[k][None])  # (1, H, W, C)
    assert per_sample.result() == by_block  # bit for bit
    assert channel_stats([images[:4], images[4:]]) == by_block


def test_channel_stats_of_large_blocks_go_in_pieces(rng, monkeypatch):
    images = rng.integers(0, 256, (4, 7, 5, 3), dtype=np.uint8)
    whole = channel_stats([images])
    monkeypatch.setattr(ChannelStats, "PIECE_PIXELS", 11)  # pieces that split images and blocks unevenly
    assert channel_stats([images]) == whole


def test_channel_stats_edge_values_and_constant_images():
    image = np.zeros((1, 4, 4, 3), np.uint8)
    image[..., 0] = 255
    image[:, :2, :, 1] = 255  # channel 1: half 0, half 255
    image[..., 2] = 37
    mean, std = channel_stats([image])
    assert mean == [1.0, 0.5, 37 / 255] and std == [0.0, 0.5, 0.0]
    assert channel_stats([np.zeros((2, 3, 3, 1), np.uint8)]) == ([0.0], [0.0])


def test_channel_stats_refuse_other_inputs():
    stats = ChannelStats()
    with pytest.raises(DataError, match="no images"):
        stats.result()
    with pytest.raises(DataError, match="uint8"):
        stats.add(np.zeros((1, 2, 2, 3), np.float32))
    with pytest.raises(DataError, match="uint8"):
        stats.add(np.zeros((2, 2, 3), np.uint8))  # one image without its batch axis
    stats.add(np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(DataError, match="1 channels"):
        stats.add(np.zeros((1, 2, 2, 1), np.uint8))


def test_written_statistics_are_those_of_the_images(tmp_path, rng):
    samples = _detection_samples(rng)
    manifest = write_shards(tmp_path / "s", samples, classes=("x",), shard_size=3, with_stats=True)
    expected = channel_stats([s["image"][None] for s in samples])
    assert (manifest["meta"]["mean"], manifest["meta"]["std"]) == expected
    assert channel_stats(ShardDataset(tmp_path / "s").images()) == expected


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
