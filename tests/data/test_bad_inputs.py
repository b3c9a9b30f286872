"""Every bad input of a real dataset is a DataError naming the file (and the object / annotation), and
annotation files written by common tools (CVAT, LabelImg, labelme, FiftyOne) read correctly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from xpvision.data.coco import load_coco
from xpvision.data.images import MAX_PIXELS, read_image
from xpvision.data.mnist import read_idx
from xpvision.data.voc import load_voc, parse_voc_xml
from xpvision.errors import DataError

from .builders import coco_instances, voc_xml, write_voc_tree


def _xml(tmp_path, boxes, width=40, height=30, name="a.xml"):
    objects = [("dog", *box, 0, 0) for box in boxes]
    path = tmp_path / name
    path.write_text(voc_xml("a", width, height, objects))
    return path


@pytest.mark.parametrize("box, reason", [
    ((0, 4, 20, 25), "outside the 40x30 image"),     # xmin 0 is column -1 in 1-based devkit pixels
    ((3, 4, 41, 25), "outside the 40x30 image"),
    ((20, 4, 3, 25), "width or height <= 0"),
    (("nan", 4, 20, 25), "non-finite"),
    ((3, "inf", 20, 25), "non-finite"),
])
def test_voc_bad_boxes_are_refused_naming_file_and_object(tmp_path, box, reason):
    path = _xml(tmp_path, [(5, 5, 10, 10), box])
    with pytest.raises(DataError, match=reason) as info:
        parse_voc_xml(path)
    assert str(path) in str(info.value) and "object #1 'dog'" in str(info.value)


def test_voc_clip_policy_clips_or_drops_and_never_keeps_a_bad_box(tmp_path, caplog):
    path = _xml(tmp_path, [(0, 4, 45, 25), (20, 4, 3, 25), ("nan", 1, 2, 3), (3, 4, 20, 25)])
    ann = parse_voc_xml(path, box_policy="clip")
    np.testing.assert_array_equal(ann["boxes"], [[0, 3, 40, 25], [2, 3, 20, 25]])
    assert ann["labels"].tolist() == [11, 11] and len(ann["difficult"]) == 2
    assert "object #1 'dog' dropped" in caplog.text and "object #2 'dog' dropped" in caplog.text


@pytest.mark.parametrize("bbox, reason", [
    ([20, 2, 10, 10], "outside the 24x20 image"),
    ([4, 2, -3, 10], "width or height <= 0"),
    ([4, 2, float("nan"), 10], "non-finite"),
])
def test_coco_bad_boxes_are_refused_naming_file_and_annotation(tmp_path, bbox, reason):
    json_path, image_dir = _coco(tmp_path, lambda d: d["annotations"][0].update(bbox=bbox))
    with pytest.raises(DataError, match=reason) as info:
        load_coco(json_path, image_dir)
    assert str(json_path) in str(info.value) and "annotation 1 " in str(info.value)


def _coco(tmp_path, edit=None):
    data = coco_instances()
    if edit is not None:
        edit(data)
    image_dir = tmp_path / "val2017"
    image_dir.mkdir(exist_ok=True)
    for info in coco_instances()["images"]:
        Image.new("RGB", (info["width"], info["height"])).save(image_dir / info["file_name"], format="PNG")
    json_path = tmp_path / "instances_val2017.json"
    json_path.write_text(json.dumps(data))
    return json_path, image_dir


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["images"][1].pop("height"), "image 101 .* no valid height / width"),
    (lambda d: d["images"][0].update(width="16"), "image 102 .* no valid height / width"),
    (lambda d: d["annotations"][1]["segmentation"].update(counts={"a": 1}), "annotation 2: RLE counts of"),
    (lambda d: d["annotations"][1]["segmentation"].update(counts=["6", 14]), "annotation 2: RLE counts"),
    (lambda d: d["annotations"][0].update(segmentation=[["4", 2, 16, 2, 16, 12]]), "annotation 1: COCO poly"),
    (lambda d: d["annotations"][0].update(segmentation=[4, 2, 16, 2, 16, 12]), "annotation 1: COCO polygons"),
    (lambda d: d["annotations"][0].update(segmentation=7), "annotation 1: COCO segmentation of type int"),
    (lambda d: d["annotations"][0].pop("segmentation"), "annotation 1: no 'segmentation'"),
    (lambda d: d["images"][1].update(file_name="../../etc/passwd"), "image 101: file_name .* outside"),
    (lambda d: d["images"][1].update(file_name="/etc/passwd"), "image 101: file_name .* outside"),
])
def test_coco_bad_entries_name_file_and_id(tmp_path, edit, message):
    json_path, image_dir = _coco(tmp_path, edit)
    with pytest.raises(DataError, match=message) as info:
        load_coco(json_path, image_dir)
    assert str(json_path) in str(info.value)


@pytest.mark.parametrize("filename", ["../../../etc/passwd", "/etc/passwd", "sub/../../a.jpg"])
def test_voc_filename_may_not_leave_the_image_folder(tmp_path, filename):
    write_voc_tree(tmp_path, "2007", {"trainval": ["000005"]})
    root = tmp_path / "VOCdevkit/VOC2007"
    xml = root / "Annotations/000005.xml"
    xml.write_text(xml.read_text().replace("000005.jpg</filename>", f"{filename}</filename>"))
    with pytest.raises(DataError, match="points outside") as info:
        load_voc(root, "trainval")
    assert str(xml) in str(info.value)


def test_voc_filename_through_a_symlink_out_is_refused(tmp_path):
    write_voc_tree(tmp_path, "2007", {"trainval": ["000005"]})
    root = tmp_path / "VOCdevkit/VOC2007"
    outside = tmp_path / "secret.jpg"
    (root / "JPEGImages/000005.jpg").rename(outside)
    (root / "JPEGImages/000005.jpg").symlink_to(outside)
    with pytest.raises(DataError, match="points outside"):
        load_voc(root, "trainval")


def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    side = int(MAX_PIXELS ** 0.5) + 16
    Image.new("1", (side, side)).save(path)  # a few kB declaring more than MAX_PIXELS
    assert path.stat().st_size < 2_000_000
    with pytest.raises(DataError, match="over the limit") as info:
        read_image(path)
    assert str(path) in str(info.value)
    small = tmp_path / "small.png"
    Image.new("RGB", (30, 20)).save(small)
    with pytest.raises(DataError, match=r"600 pixels, over the limit of 500"):
        read_image(small, max_pixels=500)


@pytest.mark.parametrize("dims, data", [
    ((-2, -2, 4), 16),            # the product (16) matches the data, the shape is impossible
    ((2**21, 2**21, 2**22), 0),   # the product is 2**64: 0 in int64 arithmetic, as many bytes as given
])
def test_idx_header_with_impossible_dimensions(tmp_path, dims, data):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + np.asarray(dims, ">i4").tobytes() + bytes(data))
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)


# -- files written by annotation tools ----------------------------------------------------------------
CVAT_VOC = """<?xml version="1.0" encoding="utf-8"?>
<annotation><folder></folder><filename>a.jpg</filename><source><database>Unknown</database></source>
<size><height>30</height><width>40</width><depth>3</depth></size><segmented>0</segmented>
<object><name>dog</name><pose>Unspecified</pose><truncated>false</truncated><occluded>0</occluded>
<difficult>false</difficult>
<bndbox><xmin>3.25</xmin><ymin>4.5</ymin><xmax>20.75</xmax><ymax>29.96</ymax></bndbox>
<attributes><attribute><name>occluded</name><value>false</value></attribute></attributes></object>
</annotation>"""
LABELIMG_VOC = """<annotation verified="yes"><folder>imgs</folder><filename>a.jpg</filename>
<path>/home/user/imgs/a.jpg</path><source><database>Unknown</database></source>
<size><width>40</width><height>30</height><depth>3</depth></size><segmented>0</segmented>
<object><name>dog</name><pose>Unspecified</pose><truncated>1</truncated><difficult>0</difficult>
<bndbox><xmin>0</xmin><ymin>0</ymin><xmax>40</xmax><ymax>12</ymax></bndbox></object></annotation>"""


@pytest.mark.parametrize("text, expected, truncated", [
    (CVAT_VOC, [3.25, 4.5, 20.75, 29.96], False),
    (LABELIMG_VOC, [0, 0, 40, 12], True),
])
def test_tool_voc_xml_with_zero_based_origin(tmp_path, text, expected, truncated):
    path = tmp_path / "a.xml"
    path.write_text(text)
    ann = parse_voc_xml(path, pixel_origin=0)
    np.testing.assert_allclose(ann["boxes"], [expected], rtol=1e-6)
    assert ann["truncated"].tolist() == [truncated] and ann["difficult"].tolist() == [False]
    shifted = parse_voc_xml(path, box_policy="clip")  # read as 1-based, every corner moves by one pixel
    assert shifted["boxes"][0, 0] == max(expected[0] - 1, 0)


def test_labelimg_zero_corner_read_as_one_based_is_outside(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(LABELIMG_VOC)
    with pytest.raises(DataError, match="outside the 40x30 image") as info:
        parse_voc_xml(path)
    assert str(path) in str(info.value)


def test_labelme_coco_background_category_is_not_a_class(tmp_path):
    def labelme(data):
        data["categories"].insert(0, {"id": 0, "name": "_background_", "supercategory": None})
        data["categories"].append({"id": -1, "name": "__ignore__", "supercategory": None})
        data["annotations"].append({"id": 9, "image_id": 101, "category_id": -1, "iscrowd": 0, "area": 4.0,
                                    "bbox": [0, 0, 2, 2], "segmentation": [[0, 0, 2, 0, 2, 2]]})

    samples, classes = load_coco(*_coco(tmp_path, labelme))
    assert classes == ("car", "dog")
    assert [len(s["boxes"]) for s in samples] == [2, 2]  # the __ignore__ annotation is not an object


def test_fiftyone_and_cvat_coco_without_area_iscrowd_or_masks(tmp_path):
    def fiftyone(data):
        for ann in data["annotations"]:
            ann.pop("area")
            ann.pop("iscrowd")
        data["annotations"][3]["segmentation"] = []  # CVAT writes [] for a box drawn without a mask

    samples, _ = load_coco(*_coco(tmp_path, fiftyone))
    (tmp_path / "ref").mkdir()
    reference, _ = load_coco(*_coco(tmp_path / "ref"))
    by_id = {s["id"]: s for s in samples}
    assert not by_id[102]["iscrowd"].any()  # iscrowd absent: not a crowd
    np.testing.assert_array_equal(by_id[101]["mask"], {s["id"]: s for s in reference}[101]["mask"])
    expected = np.zeros((16, 16), np.uint8)
    expected[:4, :4] = 1  # the former crowd region, now a plain car; the dog drawn without a mask: nothing
    np.testing.assert_array_equal(by_id[102]["mask"], expected)
