"""COCO: RLE (compressed, uncompressed) and polygons checked against pycocotools; the instances parser."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from xpvision.data.coco import (
    counts_to_rle_string,
    load_coco,
    polygons_to_mask,
    rle_decode,
    rle_encode,
    rle_string_to_counts,
    segmentation_to_mask,
)
from xpvision.data.images import read_image
from xpvision.errors import DataError

from .builders import coco_instances, write_coco_zips


def _random_masks(rng, count=20):
    for _ in range(count):
        h, w = rng.integers(1, 40, 2)
        density = rng.uniform(0.05, 0.95)
        yield (rng.random((h, w)) < density).astype(np.uint8)
    yield np.ones((5, 7), np.uint8)
    yield np.zeros((6, 3), np.uint8)


def test_rle_encode_matches_pycocotools_byte_for_byte(rng):
    for mask in _random_masks(rng):
        ours = rle_encode(mask)
        theirs = mask_utils.encode(np.asfortranarray(mask))
        assert ours["counts"] == theirs["counts"].decode("ascii")
        assert ours["size"] == list(theirs["size"])


def test_compressed_rle_decodes_like_pycocotools(rng):
    for mask in _random_masks(rng):
        rle = mask_utils.encode(np.asfortranarray(mask))
        counts = rle["counts"].decode("ascii")
        np.testing.assert_array_equal(rle_decode(counts, *mask.shape), mask_utils.decode(rle))
        assert counts_to_rle_string(rle_string_to_counts(counts)) == counts


def test_large_runs_use_multi_group_and_negative_deltas(rng):
    mask = np.zeros((300, 200), np.uint8)
    mask[10:290, 5:6] = 1  # a long run then short ones: deltas of both signs, values > 31
    mask[100:101, 50:150] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    np.testing.assert_array_equal(rle_decode(rle["counts"].decode(), 300, 200), mask)


def test_uncompressed_rle_matches_pycocotools():
    counts = [2 * 20 + 3, 6, 14, 6, 14, 6, 391]
    theirs = mask_utils.decode(mask_utils.frPyObjects({"size": [20, 24], "counts": counts}, 20, 24))
    ours = segmentation_to_mask({"size": [20, 24], "counts": counts}, 20, 24)
    np.testing.assert_array_equal(ours, theirs)
    assert ours[3:9, 2:5].all() and ours.sum() == 18


def test_polygons_agree_with_pycocotools_up_to_outline_pixels(rng):
    from scipy.ndimage import binary_dilation, binary_erosion

    total_disagreement, total_area_bias = 0, 0
    for _ in range(30):
        h, w = 40, 50
        n = int(rng.integers(3, 9))
        centre, radius = rng.uniform(15, 25, 2), rng.uniform(3, 14)
        angles = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n
        poly = np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], 1)
        flat = poly.reshape(-1).tolist()
        ours = polygons_to_mask([flat], h, w).astype(bool)
        theirs = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([flat], h, w))).astype(bool)
        outline = binary_dilation(theirs) & ~binary_erosion(theirs)
        assert not (ours ^ theirs)[~outline].any()  # disagreement only on pycocotools' outline pixels
        total_disagreement += int((ours ^ theirs).sum())
        total_area_bias += int(ours.sum()) - int(theirs.sum())
    assert total_disagreement / 30 < 6 and abs(total_area_bias) / 30 < 2


def test_polygon_rasteriser_fills_pixel_centres():
    square = polygons_to_mask([[2, 1, 6, 1, 6, 4, 2, 4]], 6, 8)  # pixels 2..5 x 1..3
    expected = np.zeros((6, 8), np.uint8)
    expected[1:4, 2:6] = 1
    np.testing.assert_array_equal(square, expected)
    two = polygons_to_mask([[0, 0, 2, 0, 2, 2, 0, 2], [5, 5, 5.4, 5, 5.4, 6]], 6, 8)
    assert two[0:2, 0:2].all() and two.sum() == 4 + 0  # the thin triangle covers no pixel centre


def test_bad_rle_and_polygons_are_clear_errors():
    with pytest.raises(DataError, match="sum to"):
        rle_decode([3, 4], 4, 4)
    with pytest.raises(DataError, match="differs from the image size"):
        segmentation_to_mask({"size": [5, 5], "counts": [25]}, 4, 4)
    with pytest.raises(DataError, match="even number"):
        polygons_to_mask([[1, 2, 3, 4, 5]], 8, 8)
    with pytest.raises(DataError, match="middle of a count"):
        rle_string_to_counts("0`")


def test_load_coco_fields(tmp_path):
    import zipfile

    images = write_coco_zips(tmp_path)
    for name in ("annotations_trainval2017.zip", "val2017.zip"):
        zipfile.ZipFile(tmp_path / name).extractall(tmp_path)
    samples, classes = load_coco(tmp_path / "annotations/instances_val2017.json", tmp_path / "val2017")
    assert classes == ("car", "dog")  # sorted by category id: 3 -> 0, 18 -> 1
    first, second = samples  # sorted by image id
    assert first["id"] == 101 and second["id"] == 102
    np.testing.assert_array_equal(first["image"], images[101])
    np.testing.assert_array_equal(first["boxes"], [[4, 2, 16, 12], [2, 3, 5, 9]])
    assert first["boxes"].dtype == np.float32
    np.testing.assert_array_equal(first["labels"], [1, 0])
    np.testing.assert_array_equal(first["difficult"], [False, False])
    mask = first["mask"]
    assert (mask[3:9, 2:5] == 1).all()  # car (label 0) -> 1, painted last as the smaller object
    assert mask[5, 10] == 2 and mask[0, 0] == 0
    np.testing.assert_array_equal(second["difficult"], [True, False])
    np.testing.assert_array_equal(second["iscrowd"], [True, False])
    assert (second["mask"][0:4, 0:4] == 255).all()  # crowd region -> ignore
    assert second["mask"][10, 10] == 2


def test_load_coco_agrees_with_pycocotools(tmp_path):
    import zipfile

    from pycocotools.coco import COCO

    write_coco_zips(tmp_path)
    for name in ("annotations_trainval2017.zip", "val2017.zip"):
        zipfile.ZipFile(tmp_path / name).extractall(tmp_path)
    json_path = tmp_path / "annotations/instances_val2017.json"
    coco = COCO(str(json_path))
    samples, _ = load_coco(json_path, tmp_path / "val2017")
    for sample in samples:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[sample["id"]]))
        for box, ann in zip(sample["boxes"], anns, strict=True):
            x, y, w, h = ann["bbox"]
            np.testing.assert_allclose(box, [x, y, x + w, y + h])
        rle_anns = [a for a in anns if isinstance(a["segmentation"], dict)]
        for ann in rle_anns:
            label = sample["labels"][anns.index(ann)] + 1
            theirs = coco.annToMask(ann).astype(bool)
            expected = 255 if ann["iscrowd"] else label
            assert (sample["mask"][theirs] == expected).all()


def test_class_subset_and_max_images(tmp_path):
    import zipfile

    write_coco_zips(tmp_path)
    for name in ("annotations_trainval2017.zip", "val2017.zip"):
        zipfile.ZipFile(tmp_path / name).extractall(tmp_path)
    json_path = tmp_path / "annotations/instances_val2017.json"
    samples, classes = load_coco(json_path, tmp_path / "val2017", classes=("dog",), image_size=(40, 48))
    assert classes == ("dog",) and len(samples) == 2
    np.testing.assert_array_equal(samples[0]["labels"], [0])
    np.testing.assert_allclose(samples[0]["boxes"], [[8, 4, 32, 24]])  # doubled by the resize
    assert samples[0]["image"].shape == (40, 48, 3) and set(np.unique(samples[0]["mask"])) == {0, 1}
    assert len(load_coco(json_path, tmp_path / "val2017", max_images=1)[0]) == 1


@pytest.mark.parametrize("content, message", [
    (b"{\"images\": [", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b"{\"images\": [], \"annotations\": []}", "'categories' missing"),
])
def test_malformed_json_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "instances.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_coco(path, tmp_path)
    assert str(path) in str(info.value)


def test_malformed_entries_are_clear_errors(tmp_path):
    data = coco_instances()
    data["annotations"][0]["category_id"] = 99
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="unknown category_id 99"):
        load_coco(path, tmp_path)
    data = coco_instances()
    del data["images"][0]["id"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="malformed"):
        load_coco(path, tmp_path)


def test_corrupt_image_file(tmp_path):
    images_dir = tmp_path / "val2017"
    images_dir.mkdir()
    (images_dir / "000000000101.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco_instances()))
    with pytest.raises(DataError, match=r"000000000101\.jpg"):
        load_coco(path, images_dir)
    with pytest.raises(DataError, match="does not exist"):
        read_image(images_dir / "missing.jpg")
