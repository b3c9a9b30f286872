"""digit-scenes: the offline default data for detection and segmentation, in VOC and COCO layouts.

Each RGB scene (``image_size`` square, 64 by default so a detector trains in minutes on 2 cores) holds 1-4
handwritten digits from :mod:`xpvision.data.digits`, ``min_digit_size`` to ``max_digit_size`` px tall (14-32
by default), in contrasting random colours, over a cluttered background (colour gradient, low-frequency
texture, random strokes, pixel noise). Digits may
overlap: a digit is placed only where it leaves every earlier digit at least ``1 - max_occlusion`` visible.
Train scenes draw only train-split digits and test scenes only test-split digits.

Labels. A digit's instance mask is its *visible* pixels (alpha >= 0.5, minus pixels covered by later digits),
its box the tight box of that mask (0-based continuous xyxy: ``x2 = last column + 1``), its class ``"d"`` with
label ``d``; the semantic mask holds ``d + 1`` on the digit, 0 elsewhere. There is no 255 border: the masks
are exact, so none of their pixels need ignoring (the VOC parser handles 255 all the same).

Layout under ``out_dir``::

    JPEGImages/<id>.jpg            quality 95, no chroma subsampling (same bytes for a given Pillow)
    Annotations/<id>.xml           VOC XML (1-based inclusive integer boxes)
    SegmentationClass/<id>.png     palette PNG with the VOC palette
    ImageSets/Main/{train,test}.txt, ImageSets/Segmentation/{train,test}.txt
    annotations/instances_{train,test}.json   COCO, compressed RLE masks, category ids 1..10 for "0".."9"

Every scene is drawn from its own generator seeded by ``(seed, split, index)``: same bytes on every run, for
any number of worker processes (chunks of scenes are shared among them, :mod:`xpvision.data.workers`).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from xpvision.atomic import write_bytes
from xpvision.data.coco import rle_encode
from xpvision.data.folders import atomic_dir
from xpvision.data.mnist import DIGIT_CLASSES, load_mnist_split
from xpvision.data.voc import voc_palette, voc_xml
from xpvision.data.workers import ordered_map
from xpvision.errors import ConfigError

SPLITS = ("train", "test")
SCENE_FOLDERS = ("JPEGImages", "Annotations", "SegmentationClass")  # one file per scene in each
SCENE_CHUNK = 100
"""Scenes per task of a worker process: small enough that the last tasks leave no worker idle for long,
large enough that handing tasks out (and the digits with them) is a small share of the work."""
_PLACEMENT_TRIES = 30


@dataclass(frozen=True)
class SceneConfig:
    """How many scenes and what they look like (sizes in pixels)."""

    n_train: int = 2000
    n_test: int = 500
    image_size: int = 64
    min_digits: int = 1
    max_digits: int = 4
    min_digit_size: int = 14
    max_digit_size: int = 32
    max_occlusion: float = 0.4
    jpeg_quality: int = 95
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits:
            raise ConfigError(f"digit-scenes: need 1 <= min_digits <= max_digits, got {self.min_digits}, "
                              f"{self.max_digits}")
        if not 4 <= self.min_digit_size <= self.max_digit_size <= self.image_size:
            raise ConfigError(f"digit-scenes: need 4 <= min_digit_size <= max_digit_size <= image_size, got "
                              f"{self.min_digit_size}, {self.max_digit_size}, {self.image_size}")
        if not 0.0 <= self.max_occlusion < 1.0:
            raise ConfigError(f"digit-scenes: max_occlusion must be in [0, 1), got {self.max_occlusion}")
        if self.n_train < 1 or self.n_test < 1:
            raise ConfigError(f"digit-scenes: n_train and n_test must be >= 1, got {self.n_train}, "
                              f"{self.n_test}")


def write_digit_scenes(out_dir: str | os.PathLike, digits_dir: str | os.PathLike,
                       config: SceneConfig = SceneConfig(), workers: int | None = None) -> dict[str, int]:
    """Generate the scenes from the MNIST-layout ``digits_dir`` into ``out_dir`` (atomically, whole folder).

    The scenes are drawn and written in chunks of :data:`SCENE_CHUNK` by ``workers`` processes (``None``:
    :func:`xpvision.data.workers.resolve_workers`, every core by default); the COCO files are assembled here
    in scene order, so every file is the same bytes for any number of workers.

    Returns ``{"train": n_train, "test": n_test}``.
    """
    with atomic_dir(out_dir) as root:
        for folder in SCENE_FOLDERS:
            (root / folder).mkdir()
        chunks = []
        for split in SPLITS:
            digits = load_mnist_split(digits_dir, split)
            count = config.n_train if split == "train" else config.n_test
            chunks += [_Chunk(root, split, start, min(start + SCENE_CHUNK, count), digits.images[..., 0],
                              digits.labels, config) for start in range(0, count, SCENE_CHUNK)]
        records: dict[str, list[dict]] = {split: [] for split in SPLITS}
        with ordered_map(_write_chunk, chunks, workers, f"digit-scenes into {out_dir}") as results:
            for chunk, chunk_records in zip(chunks, results, strict=True):
                records[chunk.split] += chunk_records
        for split in SPLITS:
            _write_split_files(root, split, records[split], config)
    return {"train": config.n_train, "test": config.n_test}


@dataclass(frozen=True)
class _Chunk:
    """Scenes ``start:stop`` of ``split``, drawn from ``digit_images`` ``(N, 28, 28)`` uint8 and
    ``digit_labels`` ``(N,)``, written under ``root``: one task of a worker process."""

    root: Path
    split: str
    start: int
    stop: int
    digit_images: np.ndarray
    digit_labels: np.ndarray
    config: SceneConfig


def _write_chunk(chunk: _Chunk) -> list[dict]:
    """Draw and write the chunk's scenes (JPEG, VOC XML, PNG mask); return each scene's COCO record."""
    palette = voc_palette().reshape(-1).tolist()
    records = []
    for index in range(chunk.start, chunk.stop):
        rng = np.random.default_rng([chunk.config.seed, SPLITS.index(chunk.split), index])
        image, owner, labels = render_scene(rng, chunk.digit_images, chunk.digit_labels, chunk.config)
        records.append(_write_scene(chunk.root, _image_id(chunk.split, index), index + 1, image, owner,
                                    labels, palette, chunk.config))
    return records


def _image_id(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


def _write_split_files(root: Path, split: str, records: list[dict], config: SceneConfig) -> None:
    """The split's image lists and COCO json from its scenes' records, in scene order (annotation ids
    1, 2, ... in that order)."""
    listing = "".join(f"{_image_id(split, index)}\n" for index in range(len(records)))
    for kind in ("Main", "Segmentation"):
        write_bytes(root / "ImageSets" / kind / f"{split}.txt", listing.encode())
    categories = [{"id": d + 1, "name": name, "supercategory": "digit"}
                  for d, name in enumerate(DIGIT_CLASSES)]
    coco: dict = {"images": [], "annotations": [], "categories": categories}
    for record in records:
        coco["images"].append(record["image"])
        for annotation in record["annotations"]:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, **annotation})
    coco["info"] = {"description": "xpvision digit-scenes", "config": asdict(config)}
    write_bytes(root / "annotations" / f"instances_{split}.json",
                json.dumps(coco, separators=(",", ":")).encode())


def render_scene(rng: np.random.Generator, digit_images: np.ndarray, digit_labels: np.ndarray,
                 config: SceneConfig) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Draw one scene.

    Args:
        digit_images: ``(N, 28, 28)`` uint8 digits (ink high); digit_labels ``(N,)``.

    Returns:
        image ``(S, S, 3)`` uint8; owner ``(S, S)`` int64 (index of the digit visible at each pixel, -1 none);
        labels (the class of each digit index).
    """
    size = config.image_size
    canvas = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int64)
    labels: list[int] = []
    full_areas: list[int] = []
    for _ in range(int(rng.integers(config.min_digits, config.max_digits + 1))):
        pick = int(rng.integers(len(digit_images)))
        alpha = _digit_alpha(digit_images[pick], int(rng.integers(config.min_digit_size,
                                                                  config.max_digit_size + 1)))
        placed = place_object(rng, alpha >= 0.5, owner, full_areas, config.max_occlusion)
        if placed is None:
            continue
        y, x = placed
        h, w = alpha.shape
        region = canvas[y:y + h, x:x + w]
        colour = _contrasting_colour(rng, region)
        a = alpha[..., None]  # (h, w, 1)
        canvas[y:y + h, x:x + w] = region * (1.0 - a) + colour * a
        owner[y:y + h, x:x + w][alpha >= 0.5] = len(labels)
        labels.append(int(digit_labels[pick]))
        full_areas.append(int((alpha >= 0.5).sum()))
    noisy = canvas + rng.normal(0.0, 6.0, canvas.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), owner, labels


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient + low-frequency texture + strokes, ``(size, size, 3)`` float64 in 0..255."""
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)[..., None]  # (S, S, 1)
    base = start * (1 - t) + end * t
    coarse = rng.uniform(-40, 40, (6, 6, 3)).astype(np.float32)
    texture = np.stack([np.asarray(Image.fromarray(coarse[..., c], mode="F").resize((size, size),
                                                                                   Image.BICUBIC))
                        for c in range(3)], axis=-1)  # (S, S, 3)
    image = Image.fromarray(np.clip(base + texture, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):
        points = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(int(rng.integers(2, 4)))]
        draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 3)))
    return np.asarray(image, dtype=np.float64)


def _digit_alpha(digit: np.ndarray, height: int) -> np.ndarray:
    """The digit's tight crop resized to ``height`` rows (aspect kept), as alpha ``(h, w)`` float in 0..1.

    Intensities below 20% (the faint haze bilinear upsampling of 8x8 digits leaves) become transparent and the
    rest ramps to opaque at 70%, so digits have soft edges but no visible rectangle around them.
    """
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    crop = digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32)
    width = max(2, round(crop.shape[1] * height / crop.shape[0]))
    resized = Image.fromarray(crop, mode="F").resize((width, height), Image.BILINEAR)
    return np.clip((np.asarray(resized, dtype=np.float64) / 255.0 - 0.2) / 0.5, 0.0, 1.0)


def place_object(rng: np.random.Generator, ink: np.ndarray, owner: np.ndarray, full_areas: list[int],
                 max_occlusion: float) -> tuple[int, int] | None:
    """A top-left corner where a new object of mask ``ink`` ``(h, w)`` bool leaves each earlier one >= 1 -
    max_occlusion visible, or None after a few random tries.

    ``owner`` ``(S, S)`` int64: the index of the object visible at each pixel (-1: none); ``full_areas``: each
    earlier object's pixel count before anything covered it. Also used by ``tools/fashion_voc.py``.
    """
    size = owner.shape[0]
    h, w = ink.shape
    if h > size or w > size:
        return None
    objects = len(full_areas)
    visible = np.bincount(owner.ravel() + 1, minlength=objects + 1)[1:]  # (objects,) pixels each shows now
    for _ in range(_PLACEMENT_TRIES):
        y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        covered = np.bincount(owner[y:y + h, x:x + w][ink] + 1, minlength=objects + 1)[1:]  # (objects,)
        visible_after = (visible - covered).tolist()
        if all(v >= (1.0 - max_occlusion) * a for v, a in zip(visible_after, full_areas, strict=True)):
            return y, x
    return None


def _contrasting_colour(rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
    """A random colour whose luminance is far (>= ~90) from the mean luminance of ``region``."""
    luminance = float((region @ np.array([0.299, 0.587, 0.114])).mean())
    hue = rng.uniform(0, 1, 3)
    hue = hue / max(hue.max(), 1e-6)
    if luminance > 128:
        return hue * rng.uniform(0, luminance - 90 if luminance > 90 else 0)
    return 255 - (1 - hue) * rng.uniform(0, 255 - min(luminance + 90, 255))


def _write_scene(root: Path, image_id: str, numeric_id: int, image: np.ndarray, owner: np.ndarray,
                 labels: list[int], palette: list[int], config: SceneConfig) -> dict:
    """Write one scene's JPEG, VOC XML and PNG mask; return its COCO ``{"image", "annotations"}`` (the
    annotations without their ids, which number the split's annotations in scene order)."""
    # plain writes: the files lie in write_digit_scenes' atomic folder, which appears only when complete
    file_name = f"{image_id}.jpg"
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=config.jpeg_quality, subsampling=0)
    (root / "JPEGImages" / file_name).write_bytes(buf.getvalue())
    boxes, annotations = [], []
    semantic = np.zeros(owner.shape, dtype=np.uint8)
    for k, label in enumerate(labels):
        visible = owner == k
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        box = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
        boxes.append(box)
        semantic[visible] = label + 1
        annotations.append({
            "image_id": numeric_id, "category_id": label + 1, "segmentation": rle_encode(visible),
            "area": int(visible.sum()), "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            "iscrowd": 0})
    boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)  # (R, 4)
    (root / "Annotations" / f"{image_id}.xml").write_bytes(
        voc_xml(file_name, image.shape, boxes, np.array(labels), DIGIT_CLASSES))
    mask = Image.fromarray(semantic, mode="P")
    mask.putpalette(palette)
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    (root / "SegmentationClass" / f"{image_id}.png").write_bytes(buf.getvalue())
    return {"image": {"id": numeric_id, "file_name": file_name, "height": int(owner.shape[0]),
                      "width": int(owner.shape[1])}, "annotations": annotations}
