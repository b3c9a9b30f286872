"""Augmentation: boxes follow their objects, leaving boxes are dropped, seeds reproduce, configs validated."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from xpvision.data.augment import augment_dataset, augment_sample, build_pipeline, parse_transforms
from xpvision.data.shards import (
    ShardDataset,
    channel_stats,
    copy_shards,
    npz_bytes,
    read_manifest,
    write_shards,
    written_as_shards,
)
from xpvision.errors import ConfigError, DataError

# Rectangles (x1, y1, x2, y2) in 0-based continuous pixels, one per object, mask value = label + 1.
OBJECTS = [(20, 18, 34, 40), (40, 10, 52, 24), (2, 44, 10, 56)]


def _scene(rng, size=64):
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(OBJECTS):
        mask[y1:y2, x1:x2] = k + 1
        image[y1:y2, x1:x2] = (60 * k, 200, 255 - 60 * k)
    return {"image": image, "boxes": np.array(OBJECTS, np.float32), "labels": np.arange(len(OBJECTS)),
            "difficult": np.array([False, True, False]), "mask": mask}


def _mask_box(mask, value):
    rows, cols = np.flatnonzero((mask == value).any(1)), np.flatnonzero((mask == value).any(0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


GEOMETRIC = [
    {"name": "Affine", "rotate": [-25, 25], "p": 1.0},
    {"name": "Affine", "shear": [-15, 15], "p": 1.0},
    {"name": "Affine", "scale": [0.7, 1.3], "p": 1.0},
    {"name": "Affine", "translate_percent": [-0.15, 0.15], "p": 1.0},
    {"name": "ShiftScaleRotate", "shift_limit": 0.1, "scale_limit": 0.2, "rotate_limit": 20, "p": 1.0},
    {"name": "HorizontalFlip", "p": 1.0},
    {"name": "VerticalFlip", "p": 1.0},
    {"name": "RandomCrop", "height": 48, "width": 48, "p": 1.0},
    {"name": "RandomResizedCrop", "size": [64, 64], "scale": [0.5, 1.0], "p": 1.0},
]


@pytest.mark.parametrize("entry", GEOMETRIC, ids=lambda e: f"{e['name']}-{sorted(e)[0]}")
def test_boxes_stay_on_their_objects(rng, entry):
    pipeline, _ = build_pipeline([entry], seed=3, boxes=True, min_visibility=0.0)
    for _ in range(5):
        out = augment_sample(pipeline, _scene(rng))
        assert len(out["boxes"]) == len(out["labels"]) == len(out["difficult"])
        for box, label, difficult in zip(out["boxes"], out["labels"], out["difficult"], strict=True):
            assert difficult == (label == 1)  # flags stay with their objects
            if (out["mask"] == label + 1).sum() < 4:
                continue  # a sliver left at the border: its mask box is not meaningful
            np.testing.assert_allclose(box, _mask_box(out["mask"], label + 1), atol=1.6)


def test_boxes_leaving_the_image_are_dropped_with_their_labels(rng):
    entry = {"name": "Affine", "translate_px": {"x": [-16, -16], "y": [0, 0]}, "p": 1.0}
    pipeline, _ = build_pipeline([entry], seed=0, boxes=True, min_visibility=0.5)
    out = augment_sample(pipeline, _scene(rng))
    assert out["labels"].tolist() == [0, 1]  # object 2 (x 2..10) left the image, the others moved left
    assert out["difficult"].tolist() == [False, True]
    np.testing.assert_allclose(out["boxes"], [[4, 18, 18, 40], [24, 10, 36, 24]], atol=1e-4)
    assert not (out["mask"] == 3).any()


def test_partly_visible_box_is_clipped_not_corrupted(rng):
    entry = {"name": "Affine", "translate_px": {"x": [-6, -6], "y": [0, 0]}, "p": 1.0}
    pipeline, _ = build_pipeline([entry], seed=0, boxes=True, min_visibility=0.3)
    out = augment_sample(pipeline, _scene(rng))
    np.testing.assert_allclose(out["boxes"][2], [0, 44, 4, 56], atol=1e-4)  # 4 of 8 px wide remain
    pipeline, _ = build_pipeline([entry], seed=0, boxes=True, min_visibility=0.6)
    assert augment_sample(pipeline, _scene(rng))["labels"].tolist() == [0, 1]


def test_same_seed_same_bytes_and_other_seed_differs():
    spec = [{"name": "Affine", "rotate": [-20, 20], "scale": [0.8, 1.2], "p": 0.8},
            {"name": "RandomBrightnessContrast", "p": 0.8}, {"name": "RGBShift", "p": 0.5},
            {"name": "HueSaturationValue", "p": 0.5}, {"name": "ChannelShuffle", "p": 0.5}]

    def run(seed):
        pipeline, _ = build_pipeline(spec, seed=seed, boxes=True)
        rng = np.random.default_rng(0)
        outs = [augment_sample(pipeline, _scene(rng)) for _ in range(4)]
        return b"".join(o["image"].tobytes() + o["mask"].tobytes() + o["boxes"].tobytes() for o in outs)

    assert run(11) == run(11)
    assert run(11) != run(12)


@pytest.mark.parametrize("spec, message", [
    ([{"name": "Rotato", "p": 1}], "unknown transform 'Rotato'"),
    ([{"name": "Affine", "rotation": 10}], r"Affine has no argument\(s\) \['rotation'\]"),
    ([{"name": "Affine", "rotate": "lots"}], "invalid arguments"),
    ([{"name": "HorizontalFlip", "p": 3}], "invalid arguments"),
    ([{"rotate": 10}], "'name' key"),
    ([{"name": "Standardize", "scope": "batch"}], "scope: dataset or scope: sample"),
    ([{"name": "Rescale", "factor": 2}], "no arguments"),
    ({"name": "Affine"}, "a list"),
])
def test_bad_transform_lists_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_transforms(spec)
    if isinstance(spec, list) and "name" in spec[0]:
        assert "transforms[0]" in str(info.value)


def test_normalisation_entries_set_the_mode_not_a_transform():
    spec = [{"name": "HorizontalFlip"}, {"name": "Standardize", "scope": "sample"}]
    transforms, mode = parse_transforms(spec)
    assert len(transforms) == 1 and mode == "sample"
    assert parse_transforms([{"name": "Rescale"}])[1] == "rescale"
    assert parse_transforms([])[1] == "rescale"


def _write_source(folder, rng, n=5):
    write_shards(folder, [_scene(rng) for _ in range(n)], classes=("a", "b", "c"), shard_size=2,
                 meta={"source": "test"})


def test_augment_dataset_writes_copies_stats_and_preview(tmp_path, rng):
    _write_source(tmp_path / "in", rng)
    spec = [{"name": "Affine", "rotate": [-10, 10], "p": 1.0}, {"name": "Standardize", "scope": "dataset"}]
    summary = augment_dataset(tmp_path / "in", tmp_path / "out", spec, copies=2, seed=4,
                              preview_path=tmp_path / "reports/preview.png", preview_count=6)
    out = ShardDataset(tmp_path / "out")
    assert summary["count"] == len(out) == 15
    source = ShardDataset(tmp_path / "in")
    np.testing.assert_array_equal(out[0]["image"], source[0]["image"])  # originals kept
    assert not np.array_equal(out[1]["image"], source[0]["image"])
    mean, std = channel_stats(out.images())
    assert out.meta["normalization"]["mode"] == "dataset"
    np.testing.assert_allclose(out.meta["normalization"]["mean"], mean, rtol=1e-9)
    np.testing.assert_allclose(out.meta["normalization"]["std"], std, rtol=1e-9)
    assert out.meta["source"] == "test" and out.meta["augment"]["copies"] == 2
    with Image.open(tmp_path / "reports/preview.png") as preview:
        assert preview.format == "PNG" and preview.size == (6 * (128 + 2), 128 + 2)
    augment_dataset(tmp_path / "in", tmp_path / "again", spec, copies=2, seed=4)
    first, again = (tmp_path / "out/shard-00000.npz"), (tmp_path / "again/shard-00000.npz")
    assert first.read_bytes() == again.read_bytes()


def test_no_copies_keeps_the_originals_and_previews_them(tmp_path, rng):
    _write_source(tmp_path / "in", rng)
    spec = [{"name": "Affine", "rotate": [-10, 10], "p": 1.0}]
    summary = augment_dataset(tmp_path / "in", tmp_path / "out", spec, copies=0, seed=4,
                              preview_path=tmp_path / "preview.png", preview_count=3)
    source, out = ShardDataset(tmp_path / "in"), ShardDataset(tmp_path / "out")
    assert summary["count"] == len(out) == len(source) == 5
    for i in range(5):
        np.testing.assert_array_equal(out[i]["image"], source[i]["image"])
    with Image.open(tmp_path / "preview.png") as preview:
        assert preview.size == (3 * (128 + 2), 128 + 2)


def test_augment_classification_keeps_grey_channel(tmp_path, rng):
    samples = [{"image": rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), "label": i} for i in range(3)]
    write_shards(tmp_path / "in", samples, classes=tuple("0123456789"))
    augment_dataset(tmp_path / "in", tmp_path / "out", [{"name": "Affine", "rotate": [-10, 10], "p": 1.0}],
                    copies=1, keep_original=False, seed=0, preview_path=tmp_path / "p.png")
    out = ShardDataset(tmp_path / "out")
    assert len(out) == 3 and out[0]["image"].shape == (28, 28, 1)
    assert [out[i]["label"] for i in range(3)] == [0, 1, 2]


def test_transform_failing_on_the_data_is_a_config_error(tmp_path, rng):
    samples = [{"image": rng.integers(0, 256, (8, 8, 1), dtype=np.uint8), "label": 0}]
    write_shards(tmp_path / "in", samples, classes=("0",))
    with pytest.raises(ConfigError, match="sample 0"):
        augment_dataset(tmp_path / "in", tmp_path / "out",
                        [{"name": "RandomCrop", "height": 16, "width": 16}], copies=1)
    assert not (tmp_path / "out").exists()


FLIP = [{"name": "HorizontalFlip", "p": 0.5}]


def _detection_scene(rng, i):
    scene = _scene(rng)
    keep = i % 4  # 0 to 3 objects, so some samples own no box
    return {"image": scene["image"], "boxes": scene["boxes"][:keep], "labels": scene["labels"][:keep],
            "difficult": scene["difficult"][:keep]}


def _segmentation_scene(rng, i):
    scene = _scene(rng)
    return {"image": scene["image"], "mask": scene["mask"]}


def _files(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("make", [_detection_scene, _segmentation_scene], ids=["detection", "segmentation"])
def test_no_copies_copies_the_shard_files_with_the_bytes_of_encoding_them(tmp_path, rng, make, monkeypatch):
    import xpvision.data.augment as augment

    write_shards(tmp_path / "in", [make(rng, i) for i in range(7)], classes=("a", "b", "c"), shard_size=3,
                 meta={"source": "test"})
    spec = [{"name": "Affine", "rotate": [-10, 10], "p": 1.0}, {"name": "Standardize", "scope": "dataset"}]
    assert augment.written_as_shards(ShardDataset(tmp_path / "in"), 3)
    copied = []
    monkeypatch.setattr(augment, "copy_shards", lambda *a, **k: copied.append(1) or copy_shards(*a, **k))
    fast = augment_dataset(tmp_path / "in", tmp_path / "fast", spec, copies=0, shard_size=3,
                           preview_path=tmp_path / "fast.png", preview_count=5)
    assert copied == [1]
    monkeypatch.setattr(augment, "written_as_shards", lambda source, shard_size: False)  # encode each sample
    slow = augment_dataset(tmp_path / "in", tmp_path / "slow", spec, copies=0, shard_size=3,
                           preview_path=tmp_path / "slow.png", preview_count=5)
    assert copied == [1] and fast == slow
    assert _files(tmp_path / "fast") == _files(tmp_path / "slow")  # shards and manifest, byte for byte
    assert sorted(_files(tmp_path / "fast")) == ["manifest.json", *(f"shard-0000{k}.npz" for k in range(3))]
    assert read_manifest(tmp_path / "fast") == read_manifest(tmp_path / "slow")
    assert (tmp_path / "fast.png").read_bytes() == (tmp_path / "slow.png").read_bytes()


def test_shards_laid_out_otherwise_are_encoded_again(tmp_path, rng):
    samples = [_detection_scene(rng, i) for i in range(7)]
    write_shards(tmp_path / "in", samples, classes=("a", "b", "c"), shard_size=2)
    source = ShardDataset(tmp_path / "in")
    assert not written_as_shards(source, 3) and not written_as_shards(source, 1)
    assert written_as_shards(source, 2)
    augment_dataset(tmp_path / "in", tmp_path / "out", FLIP, copies=0, shard_size=3)
    write_shards(tmp_path / "expected", samples, classes=("a", "b", "c"), shard_size=3, with_stats=True)
    for name in ("shard-00000.npz", "shard-00001.npz", "shard-00002.npz"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()


def test_shards_with_other_arrays_are_encoded_again(tmp_path, rng):
    samples = [_detection_scene(rng, i) for i in range(4)]
    write_shards(tmp_path / "in", samples, classes=("a", "b", "c"), shard_size=4)
    shard = tmp_path / "in" / "shard-00000.npz"
    with np.load(shard) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays["boxes"] = arrays["boxes"].astype(np.float64)  # _flush writes float32
    shard.write_bytes(npz_bytes(arrays))
    manifest = read_manifest(tmp_path / "in")
    manifest["shards"][0]["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (tmp_path / "in" / "manifest.json").write_text(json.dumps(manifest))
    assert not written_as_shards(ShardDataset(tmp_path / "in"), 4)
    augment_dataset(tmp_path / "in", tmp_path / "out", FLIP, copies=0, shard_size=4)
    write_shards(tmp_path / "expected", samples, classes=("a", "b", "c"), shard_size=4)
    assert _files(tmp_path / "out")["shard-00000.npz"] == _files(tmp_path / "expected")["shard-00000.npz"]


def test_a_corrupt_input_shard_is_refused_when_copied_and_nothing_is_written(tmp_path, rng):
    samples = [_segmentation_scene(rng, i) for i in range(5)]
    write_shards(tmp_path / "in", samples, classes=("a",), shard_size=2)
    shard = tmp_path / "in" / "shard-00001.npz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1  # a pixel: the arrays' headers still read
    shard.write_bytes(bytes(data))
    assert written_as_shards(ShardDataset(tmp_path / "in"), 2)  # so the copy is what refuses it
    with pytest.raises(DataError, match=r"shard-00001\.npz: SHA-256"):
        augment_dataset(tmp_path / "in", tmp_path / "out", FLIP, copies=0, shard_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
