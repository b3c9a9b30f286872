"""DataLoader: layout, dtypes, targets, normalisation modes, epoch-seeded shuffling."""

from __future__ import annotations

import numpy as np
import pytest

from xpvision.data.loader import DataLoader, ListDataset, Normalization
from xpvision.data.shards import ShardDataset, write_shards
from xpvision.errors import ConfigError, DataError


@pytest.fixture
def classification(rng):
    images = rng.integers(0, 256, (10, 5, 4, 3), dtype=np.uint8)
    samples = [{"image": im, "label": i % 3} for i, im in enumerate(images)]
    return ListDataset(samples, ("a", "b", "c")), images


def test_batches_shapes_layout_and_values(classification):
    ds, images = classification
    batches = list(DataLoader(ds, batch_size=4))
    assert [len(b["labels"]) for b in batches] == [4, 4, 2]
    x = batches[0]["images"]
    assert x.shape == (4, 3, 5, 4) and x.dtype == np.float32
    assert x.transpose(0, 2, 3, 1).flags["C_CONTIGUOUS"]  # NCHW view of an NHWC buffer
    np.testing.assert_allclose(x, images[:4].transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)
    assert batches[0]["labels"].dtype == np.int64 and batches[0]["labels"].tolist() == [0, 1, 2, 0]
    assert batches[2]["indices"].tolist() == [8, 9]
    assert len(DataLoader(ds, batch_size=4, drop_last=True)) == 2


def test_shuffle_is_a_function_of_seed_and_epoch(classification):
    ds, _ = classification
    loader = DataLoader(ds, batch_size=3, shuffle=True, seed=7)
    loader.set_epoch(0)
    first = np.concatenate([b["indices"] for b in loader])
    loader.set_epoch(1)
    second = np.concatenate([b["indices"] for b in loader])
    resumed = DataLoader(ds, batch_size=3, shuffle=True, seed=7)
    resumed.set_epoch(1)
    assert sorted(first.tolist()) == list(range(10)) and first.tolist() != second.tolist()
    assert np.concatenate([b["indices"] for b in resumed]).tolist() == second.tolist()


def test_dataset_and_sample_normalisation(classification):
    ds, images = classification
    x = images.astype(np.float64) / 255.0
    mean, std = x.reshape(-1, 3).mean(0), x.reshape(-1, 3).std(0)
    norm = Normalization("dataset", tuple(mean), tuple(std))
    batch = next(iter(DataLoader(ds, batch_size=10, normalization=norm)))["images"]
    np.testing.assert_allclose(batch.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(batch.std(axis=(0, 2, 3)), 1, atol=1e-4)
    batch = next(iter(DataLoader(ds, batch_size=10, normalization=Normalization("sample"))))["images"]
    np.testing.assert_allclose(batch.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(batch.std(axis=(1, 2, 3)), 1, atol=1e-4)
    flat = ListDataset([{"image": np.full((2, 2, 1), 7, np.uint8), "label": 0}], ("a",))
    assert np.isfinite(next(iter(DataLoader(flat, 1, normalization=Normalization("sample"))))["images"]).all()


def test_normalization_from_meta_and_errors():
    meta = {"mean": [0.5, 0.4], "std": [0.2, 0.1], "normalization": {"mode": "sample"}}
    assert Normalization.from_meta(meta).mode == "sample"
    assert Normalization.from_meta(meta, "dataset") == Normalization("dataset", (0.5, 0.4), (0.2, 0.1))
    with pytest.raises(ConfigError, match="mean/std"):
        Normalization.from_meta({}, "dataset")
    with pytest.raises(ConfigError, match="unknown"):
        Normalization("zscore")
    with pytest.raises(ConfigError, match="std must be > 0"):
        Normalization("dataset", (0.5,), (0.0,))


def test_detection_and_segmentation_targets_from_shards(tmp_path, rng):
    samples = [{"image": rng.integers(0, 256, (6, 6, 3), dtype=np.uint8),
                "boxes": np.array([[0, 0, 2, 2]] * r, np.float32), "labels": np.arange(r),
                "difficult": np.zeros(r, bool), "mask": np.full((6, 6), r, np.uint8)} for r in (2, 0, 1)]
    write_shards(tmp_path / "s", samples, classes=("a", "b"), shard_size=2)
    batch = next(iter(DataLoader(ShardDataset(tmp_path / "s"), batch_size=3)))
    assert [b.shape for b in batch["boxes"]] == [(2, 4), (0, 4), (1, 4)]
    assert [lab.tolist() for lab in batch["labels"]] == [[0, 1], [], [0]]
    assert batch["boxes"][0].dtype == np.float32 and batch["difficult"][2].dtype == bool
    assert batch["masks"].shape == (3, 6, 6) and batch["masks"].dtype == np.int64
    assert batch["masks"][:, 0, 0].tolist() == [2, 0, 1]


def test_bad_arguments(classification):
    ds, _ = classification
    with pytest.raises(ConfigError, match="batch_size"):
        DataLoader(ds, 0)
    with pytest.raises(DataError, match="empty"):
        DataLoader(ListDataset([], ()), 2)
    mixed = ListDataset([{"image": np.zeros((2, 2, 1), np.uint8), "label": 0},
                         {"image": np.zeros((3, 3, 1), np.uint8), "label": 0}], ("a",))
    with pytest.raises(DataError, match="different shapes"):
        next(iter(DataLoader(mixed, 2)))


@pytest.mark.gpu
def test_gpu_batches(classification):
    from xpvision import backend

    if not backend.gpu_available():
        pytest.skip("CuPy with a CUDA device is not available")
    ds, _ = classification
    batch = next(iter(DataLoader(ds, batch_size=4, device="gpu", normalization=Normalization("sample"))))
    assert backend.is_gpu_array(batch["images"]) and backend.is_gpu_array(batch["labels"])
    cpu = next(iter(DataLoader(ds, batch_size=4, normalization=Normalization("sample"))))
    np.testing.assert_allclose(backend.to_numpy(batch["images"]), cpu["images"], rtol=1e-5, atol=1e-6)
