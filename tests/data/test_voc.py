"""VOC XML (defusedxml), palette masks and folders: fields, box convention, subsets, unsafe/corrupt input."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
from PIL import Image

from xpvision.data import voc
from xpvision.data.voc import VOC_CLASSES, load_voc, parse_voc_xml, read_voc_mask, voc_palette, write_voc_xml
from xpvision.errors import DataError

from .builders import VOC_IMAGES, voc_xml, write_voc_tree


def test_parse_fields_and_box_convention(tmp_path):
    path = tmp_path / "000005.xml"
    path.write_text(voc_xml("000005", *VOC_IMAGES["000005"]))
    ann = parse_voc_xml(path)
    assert (ann["filename"], ann["width"], ann["height"]) == ("000005.jpg", 40, 30)
    # devkit (3, 4, 20, 25) 1-based inclusive -> 0-based continuous (2, 3, 20, 25): width 18 = 20 - 3 + 1
    np.testing.assert_array_equal(ann["boxes"], np.array([[2, 3, 20, 25], [9, 1, 40, 30]], dtype=np.float32))
    assert ann["boxes"].dtype == np.float32
    np.testing.assert_array_equal(ann["labels"], [VOC_CLASSES.index("chair"), VOC_CLASSES.index("dog")])
    np.testing.assert_array_equal(ann["difficult"], [False, True])
    np.testing.assert_array_equal(ann["truncated"], [True, False])


def test_writer_inverts_the_parser(tmp_path):
    boxes = np.array([[0, 0, 5, 7], [3, 2, 16, 9]], dtype=np.float32)
    write_voc_xml(tmp_path / "a.xml", "a.jpg", (10, 16, 3), boxes, np.array([1, 0]), ("x", "y"))
    ann = parse_voc_xml(tmp_path / "a.xml", ("x", "y"))
    np.testing.assert_array_equal(ann["boxes"], boxes)
    np.testing.assert_array_equal(ann["labels"], [1, 0])
    assert (ann["width"], ann["height"]) == (16, 10)


XXE = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotation><filename>&xxe;</filename><size><width>1</width><height>1</height></size></annotation>"""
BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>
<annotation><filename>&lol2;</filename></annotation>"""


@pytest.mark.parametrize("text, message", [
    (XXE, "unsafe XML"),
    (BILLION_LAUGHS, "unsafe XML"),
    ("<annotation><object><name>dog</name>", "not well-formed"),
    ("<annotation><size><width>4</width><height>4</height></size><object><name>dog</name><bndbox>"
     "<xmin>a</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>"
     "<filename>x.jpg</filename></annotation>", "<xmin> is 'a'"),
    ("<annotation><size><width>4</width><height>4</height></size><object><name>unicorn</name></object>"
     "</annotation>", "#0 class 'unicorn'"),
    ("<annotation><size><width>4</width><height>4</height></size><object><name>dog</name></object>"
     "</annotation>", "#0 'dog' has no <bndbox>"),
    ("<annotation><filename>x.jpg</filename></annotation>", "missing <size>"),
])
def test_bad_xml_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        parse_voc_xml(path)
    assert str(path) in str(info.value)


def test_palette_is_the_devkit_colour_map():
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    np.testing.assert_array_equal(palette[:4], [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]])
    np.testing.assert_array_equal(palette[15], [192, 128, 128])  # person
    np.testing.assert_array_equal(palette[255], [224, 224, 192])  # the ignore colour


def test_load_voc_detection_and_segmentation(tmp_path):
    written = write_voc_tree(tmp_path, "2007", {"trainval": ["000005", "000007"], "test": ["000009"]})
    root = tmp_path / "VOCdevkit/VOC2007"
    samples = load_voc(root, "trainval", "detection")
    assert [s["id"] for s in samples] == ["000005", "000007"]
    np.testing.assert_array_equal(samples[0]["image"], written["000005"]["image"])
    assert samples[0]["image"].shape == (30, 40, 3) and "mask" not in samples[0]
    np.testing.assert_array_equal(samples[1]["boxes"], [[0, 0, 32, 24]])
    seg = load_voc(root, "test", "segmentation")
    np.testing.assert_array_equal(seg[0]["mask"], written["000009"]["mask"])
    assert (seg[0]["mask"] == 255).any() and seg[0]["mask"].dtype == np.uint8
    mask = read_voc_mask(root / "SegmentationClass/000009.png")
    np.testing.assert_array_equal(mask, written["000009"]["mask"])


def test_class_subset_reindexes_labels_and_masks(tmp_path):
    write_voc_tree(tmp_path, "2007", {"trainval": ["000005", "000007", "000009"]})
    root = tmp_path / "VOCdevkit/VOC2007"
    samples = load_voc(root, "trainval", "segmentation", classes=("dog", "person"))
    assert [s["id"] for s in samples] == ["000005", "000009"]  # 000007 has only a car
    np.testing.assert_array_equal(samples[0]["labels"], [0])  # the chair is dropped, dog -> 0
    np.testing.assert_array_equal(samples[1]["labels"], [1, 0])
    mask = samples[1]["mask"]
    assert set(np.unique(mask)) == {0, 1, 2, 255}  # person -> 2, dog -> 1
    assert mask[10, 10] == 2 and mask[15, 25] == 1
    chair_pixel = samples[0]["mask"][10, 5]  # inside the chair only
    assert chair_pixel == 0


def test_resize_keeps_boxes_and_masks_consistent(tmp_path):
    write_voc_tree(tmp_path, "2007", {"trainval": ["000005"]})
    sample = load_voc(tmp_path / "VOCdevkit/VOC2007", "trainval", "segmentation", image_size=(60, 20))[0]
    assert sample["image"].shape == (60, 20, 3) and sample["mask"].shape == (60, 20)
    np.testing.assert_allclose(sample["boxes"][0], [1, 6, 10, 50])  # x / 2, y * 2
    assert set(np.unique(sample["mask"])) <= {0, 9, 12, 255}  # nearest: no blended labels


def test_corrupt_image_and_size_mismatch(tmp_path):
    write_voc_tree(tmp_path, "2007", {"trainval": ["000005"]})
    root = tmp_path / "VOCdevkit/VOC2007"
    jpg = root / "JPEGImages/000005.jpg"
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=r"000005\.jpg"):
        load_voc(root, "trainval")
    Image.new("RGB", (10, 10)).save(jpg)
    with pytest.raises(DataError, match="10x10"):
        load_voc(root, "trainval")


def test_missing_image_list_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"val\.txt"):
        load_voc(tmp_path, "val")


SUBSET = {"classes": ("dog", "car"), "max_images": 2, "image_size": (20, 24)}


@pytest.mark.parametrize("options", [{}, SUBSET], ids=["all", "subset"])
def test_workers_read_the_samples_one_process_reads(tmp_path, monkeypatch, options):
    write_voc_tree(tmp_path, "2007", {"trainval": ["000005", "000007", "000009"]})
    root = tmp_path / "VOCdevkit/VOC2007"
    expected = load_voc(root, "trainval", "segmentation", workers=1, **options)
    monkeypatch.setattr(voc, "READ_CHUNK", 1)  # one task per image
    for workers in (2, 3):
        found = load_voc(root, "trainval", "segmentation", workers=workers, **options)
        assert [s["id"] for s in found] == [s["id"] for s in expected]
        for a, b in zip(found, expected, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_file_read_ahead_is_raised_only_when_reached(tmp_path, monkeypatch, workers):
    write_voc_tree(tmp_path, "2007", {"trainval": ["000005", "000007", "000009"]})
    root = tmp_path / "VOCdevkit/VOC2007"
    (root / "Annotations/000007.xml").write_text("<annotation><object>")
    monkeypatch.setattr(voc, "READ_CHUNK", 2)  # the bad file shares a task with the one image asked for
    # a class subset: images may be dropped, so the reader cannot know where to stop and reads ahead
    kept = load_voc(root, "trainval", classes=("dog", "car"), max_images=1, workers=workers)
    assert [s["id"] for s in kept] == ["000005"]
    with pytest.raises(DataError, match="not well-formed") as info:
        load_voc(root, "trainval", classes=("dog", "car"), workers=workers)
    assert str(root / "Annotations/000007.xml") in str(info.value)
    assert multiprocessing.active_children() == []  # the workers reading ahead were stopped both times
