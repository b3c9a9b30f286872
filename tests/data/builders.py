"""Tiny datasets built in the official layouts (MNIST gz, VOC tree and tar, COCO zips) for the data tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from xpvision.data.mnist import idx_bytes
from xpvision.data.voc import voc_palette


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def tree_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def write_mnist_files(folder: Path, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict:
    """Tiny MNIST-layout gz files with random 28x28 images; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
        arrays[prefix] = (images, labels)
    return arrays


# One VOC image: (id, width, height, objects [(class, xmin, ymin, xmax, ymax, difficult, truncated)]) with
# 1-based inclusive devkit coordinates.
VOC_IMAGES = {
    "000005": (40, 30, [("chair", 3, 4, 20, 25, 0, 1), ("dog", 10, 2, 40, 30, 1, 0)]),
    "000007": (32, 24, [("car", 1, 1, 32, 24, 0, 0)]),
    "000009": (36, 28, [("person", 5, 6, 15, 20, 0, 0), ("dog", 20, 10, 30, 22, 0, 1)]),
}


def voc_xml(image_id: str, width: int, height: int, objects) -> str:
    parts = [f"<annotation><folder>VOC</folder><filename>{image_id}.jpg</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, x1, y1, x2, y2, difficult, truncated in objects:
        parts.append(f"<object><name>{name}</name><pose>Left</pose><truncated>{truncated}</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                     f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def voc_mask(width: int, height: int, objects, classes) -> np.ndarray:
    """A mask with each object's box filled by ``class index + 1`` and a 255 border one pixel wide."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for name, x1, y1, x2, y2, _, _ in objects:
        mask[y1 - 1:y2, x1 - 1:x2] = 255
        mask[y1:y2 - 1, x1:x2 - 1] = classes.index(name) + 1
    return mask


def write_voc_tree(base: Path, year: str, splits: dict[str, list[str]], seed: int = 0) -> dict:
    """``base/VOCdevkit/VOC<year>`` with JPEGImages, Annotations, SegmentationClass, ImageSets for ``splits``.

    Returns ``{image_id: {"image": (H, W, 3) uint8 as decoded, "mask": (H, W) uint8}}``.
    """
    from xpvision.data.voc import VOC_CLASSES

    root = base / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for ids in splits.values():
        for image_id in ids:
            width, height, objects = VOC_IMAGES[image_id]
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(image_id, width, height, objects))
            mask = voc_mask(width, height, objects, VOC_CLASSES)
            png = Image.fromarray(mask, mode="P")
            png.putpalette(voc_palette().reshape(-1).tolist())
            png.save(root / "SegmentationClass" / f"{image_id}.png")
            decoded = np.asarray(Image.open(root / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
            written[image_id] = {"image": decoded, "mask": mask}
    for split, ids in splits.items():
        for kind in ("Main", "Segmentation"):
            (root / "ImageSets" / kind / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return written


def tar_folder(folder: Path, archive: Path, arcname: str) -> None:
    with tarfile.open(archive, "w") as tf:
        tf.add(folder, arcname=arcname)


# COCO fixture: two categories with non-contiguous ids, polygons, uncompressed RLE and a crowd annotation.
COCO_SIZE = {101: (20, 24), 102: (16, 16)}  # image id -> (height, width)


def coco_instances() -> dict:
    rle_counts = [2 * 20 + 3, 6, 14, 6, 14, 6, 391]  # column-major: columns 2..4, rows 3..8 of a 20x24 image
    return {
        "images": [{"id": 102, "file_name": "000000000102.jpg", "height": 16, "width": 16},
                   {"id": 101, "file_name": "000000000101.jpg", "height": 20, "width": 24}],
        "categories": [{"id": 18, "name": "dog", "supercategory": "animal"},
                       {"id": 3, "name": "car", "supercategory": "vehicle"}],
        "annotations": [
            {"id": 1, "image_id": 101, "category_id": 18, "iscrowd": 0, "area": 120.0, "bbox": [4, 2, 12, 10],
             "segmentation": [[4, 2, 16, 2, 16, 12, 4, 12]]},
            {"id": 2, "image_id": 101, "category_id": 3, "iscrowd": 0, "area": 18.0, "bbox": [2, 3, 3, 6],
             "segmentation": {"size": [20, 24], "counts": rle_counts}},
            {"id": 3, "image_id": 102, "category_id": 3, "iscrowd": 1, "area": 16.0, "bbox": [0, 0, 4, 4],
             "segmentation": {"size": [16, 16], "counts": [0, 4, 12, 4, 12, 4, 12, 4, 12 + 16 * 12]}},
            {"id": 4, "image_id": 102, "category_id": 18, "iscrowd": 0, "area": 36.0, "bbox": [8, 8, 6, 6],
             "segmentation": [[8, 8, 14, 8, 14, 14, 8, 14]]},
        ],
    }


def write_coco_zips(folder: Path, split: str = "val2017", seed: int = 0, extra_ids: tuple[int, ...] = ()
                    ) -> dict:
    """``annotations_trainval2017.zip`` (annotations/instances_<split>.json) and ``<split>.zip``
    (<split>/*.jpg); ``extra_ids`` adds 16x16 images without objects. Returns ``{image id: (H, W, 3)
    uint8}``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = coco_instances()
    data["images"] += [{"id": i, "file_name": f"{i:012d}.jpg", "height": 16, "width": 16} for i in extra_ids]
    with zipfile.ZipFile(folder / "annotations_trainval2017.zip", "w") as zf:
        zf.writestr(f"annotations/instances_{split}.json", json.dumps(data))
    images = {}
    with zipfile.ZipFile(folder / f"{split}.zip", "w") as zf:
        for info in data["images"]:
            image = rng.integers(0, 256, (info["height"], info["width"], 3), dtype=np.uint8)
            buf = io.BytesIO()
            # lossless PNG bytes under the .jpg name: decoders go by content, and the test compares exactly
            Image.fromarray(image).save(buf, format="PNG")
            zf.writestr(f"{split}/{info['file_name']}", buf.getvalue())
            images[info["id"]] = image
    return images
