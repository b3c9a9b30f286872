"""Build a VOC2012-layout detection and segmentation dataset from the real Fashion-MNIST photographs.

    python tools/fashion_voc.py --out ~/.cache/xpvision/fashion-voc      # or: make fashion-voc

What the data are. The objects are real: the 70,000 Fashion-MNIST photographs (28x28 grayscale product photos
of clothes, shoes and bags, 10 classes), read from an IDX folder (Debian's ``dataset-fashion-mnist`` by
default) and checked against the published checksums. The scenes are not: each image is a black square canvas
(Fashion-MNIST's own background) holding 1 to ``--max-items`` of those photographs, each cut to its tight
box, enlarged with its aspect kept so that its longer side is ``--item-size`` pixels, and placed at random
where it leaves every earlier item at least ``1 - --max-occlusion`` visible. Layout, scale and overlap are
made up; the appearance of every object is a real photograph.

Splits. ``train`` is composed from the 60,000 training photographs, ``val`` from the 10,000 test photographs,
each photograph used exactly once (an item that does not fit a scene opens the next one), so no object of a
``val`` scene was seen in training.

Labels. An item's mask is its pixels of value >= ``MASK_THRESHOLD`` after enlarging, with enclosed holes of
at most 5% of its box filled (a bag's handle opening stays background), less the pixels later items cover.
Its box is the tight box of that visible mask, its class the photograph's label under a VOC-style name
(:data:`FASHION_VOC_CLASSES`). ``SegmentationClass`` PNGs hold ``label + 1`` (VOC palette), 0 background;
there is no 255 border, since the masks are exact.

Layout under ``--out``::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg              RGB (three equal channels), quality 95
    VOCdevkit/VOC2012/Annotations/<id>.xml             VOC XML, devkit pixels (1-based inclusive)
    VOCdevkit/VOC2012/SegmentationClass/<id>.png       palette PNG
    VOCdevkit/VOC2012/ImageSets/{Main,Segmentation}/{train,val}.txt
    VOCdevkit/VOC2012/classes.txt                      the class names, in label order

Read it with ``download.<task>.dataset: voc2012``, ``root: <out>`` and ``voc_classes:`` the names printed at
the end (README, "Real data"). The same arguments give the same bytes (one seeded generator per split).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from xpvision.atomic import write_bytes, write_text
from xpvision.data.download import fetch_dataset
from xpvision.data.folders import atomic_dir
from xpvision.data.mnist import FASHION_CLASSES, SPLIT_FILES, ClassificationArrays, load_mnist_files
from xpvision.data.scenes import place_object
from xpvision.data.voc import voc_palette, write_voc_xml
from xpvision.errors import ConfigError, DataError, XPVisionError

FASHION_VOC_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                       "ankleboot")
"""Fashion-MNIST's classes (T-shirt/top, ..., Ankle boot) as single lower-case words, as VOC names classes."""
SPLITS = {"train": "train", "val": "test"}
"""VOC split -> the Fashion-MNIST split its photographs come from."""
MASK_THRESHOLD = 8
DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class SceneLayout:
    """Scene geometry, in pixels. ``max_photos`` keeps the first N photographs of each split (all: None)."""

    image_size: int = 96
    item_size: tuple[int, int] = (28, 56)
    max_items: int = 4
    max_occlusion: float = 0.2
    max_photos: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        low, high = self.item_size
        if not 8 <= low <= high <= self.image_size:
            raise ConfigError(f"fashion-voc: need 8 <= item size min <= max <= image size, got "
                              f"{self.item_size} and {self.image_size}")
        if self.max_items < 1 or not 0.0 <= self.max_occlusion < 1.0:
            raise ConfigError(f"fashion-voc: need max_items >= 1 and max_occlusion in [0, 1), got "
                              f"{self.max_items}, {self.max_occlusion}")


def load_fashion_mnist(source: str | Path) -> dict[str, ClassificationArrays]:
    """The ``train`` and ``test`` photographs of the IDX folder ``source``, verified against the published
    checksums (read in place; the verification lock goes to a temporary folder)."""
    names = tuple(f"{name}.gz" for pair in SPLIT_FILES.values() for name in pair)
    with tempfile.TemporaryDirectory(prefix="fashion-voc-lock-") as lock:
        files = fetch_dataset("fashion-mnist", lock, (str(source),), only=names, use_official=False)
        return {split: load_mnist_files(files[f"{image}.gz"], files[f"{label}.gz"], FASHION_CLASSES)
                for split, (image, label) in SPLIT_FILES.items()}


def build_fashion_voc(out: str | Path, photos: dict[str, ClassificationArrays],
                      layout: SceneLayout = SceneLayout()) -> dict[str, dict[str, int]]:
    """Write ``out/VOCdevkit/VOC2012`` (atomically, the whole folder) from ``photos`` (``"train"``/``"test"``
    -> images ``(N, 28, 28, 1)`` uint8, labels ``(N,)``).

    Returns ``{voc split: {"images": scenes, "objects": photographs placed}}``.
    """
    palette = voc_palette().reshape(-1).tolist()
    summary = {}
    with atomic_dir(Path(out) / "VOCdevkit" / "VOC2012") as root:
        for split, source_split in SPLITS.items():
            arrays = photos[source_split]
            count = len(arrays.labels) if layout.max_photos is None else min(layout.max_photos,
                                                                             len(arrays.labels))
            rng = np.random.default_rng([layout.seed, list(SPLITS).index(split)])
            order = rng.permutation(count)
            ids, start = [], 0
            while start < count:
                queue = arrays.images[order[start:start + layout.max_items], ..., 0]  # (M, 28, 28)
                image, owner, placed = compose_scene(rng, queue, layout)
                image_id = f"{split}_{len(ids):06d}"
                write_scene(root, image_id, image, owner, arrays.labels[order[start:start + placed]], palette)
                ids.append(image_id)
                start += placed
            listing = "".join(f"{i}\n" for i in ids).encode()
            for kind in ("Main", "Segmentation"):
                write_bytes(root / "ImageSets" / kind / f"{split}.txt", listing)
            summary[split] = {"images": len(ids), "objects": count}
        write_text(root / "classes.txt", "".join(f"{name}\n" for name in FASHION_VOC_CLASSES))
    return summary


def compose_scene(rng: np.random.Generator, queue: np.ndarray, layout: SceneLayout
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """Place the photographs ``queue`` ``(M, 28, 28)`` uint8 in order until the scene is full.

    Returns the image ``(S, S)`` uint8, ``owner`` ``(S, S)`` int64 (index into ``queue`` of the item visible
    at each pixel, -1 none) and how many items of ``queue`` were placed (>= 1: the first always fits).
    """
    size = layout.image_size
    canvas = np.zeros((size, size), dtype=np.uint8)
    owner = np.full((size, size), -1, dtype=np.int64)
    full_areas: list[int] = []
    wanted = int(rng.integers(1, layout.max_items + 1))
    while len(full_areas) < min(wanted, len(queue)):
        pixels, mask = enlarged_item(queue[len(full_areas)],
                                     int(rng.integers(layout.item_size[0], layout.item_size[1] + 1)))
        corner = place_object(rng, mask, owner, full_areas, layout.max_occlusion)
        if corner is None:
            break  # this photograph opens the next scene
        y, x = corner
        h, w = mask.shape
        canvas[y:y + h, x:x + w][mask] = pixels[mask]
        owner[y:y + h, x:x + w][mask] = len(full_areas)
        full_areas.append(int(mask.sum()))
    return canvas, owner, len(full_areas)


def enlarged_item(photo: np.ndarray, longer_side: int) -> tuple[np.ndarray, np.ndarray]:
    """A photograph ``(28, 28)`` uint8 cut to its tight box and resized (bilinear, aspect kept) so that its
    longer side is ``longer_side``: pixels ``(h, w)`` uint8 and mask ``(h, w)`` bool (pixels >=
    :data:`MASK_THRESHOLD`, small enclosed holes filled)."""
    if not (photo >= MASK_THRESHOLD).any():
        raise DataError(f"fashion-voc: a photograph has no pixel >= {MASK_THRESHOLD}: nothing to place")
    rows = np.flatnonzero((photo >= MASK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((photo >= MASK_THRESHOLD).any(axis=0))
    crop = photo[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = longer_side / max(crop.shape)
    height, width = (max(1, round(n * scale)) for n in crop.shape)
    pixels = np.asarray(Image.fromarray(crop).resize((width, height), Image.BILINEAR))
    return pixels, fill_holes(pixels >= MASK_THRESHOLD)


def fill_holes(mask: np.ndarray, max_fraction: float = 0.05) -> np.ndarray:
    """``mask`` ``(h, w)`` bool with its small holes filled: each region of False pixels that does not reach
    the border and covers at most ``max_fraction`` of ``h * w`` (dark spots on a garment) becomes True;
    larger ones (the opening of a bag's handle) stay background."""
    # .copy(): an image made by fromarray shares the array's read-only buffer, and floodfill would not write
    canvas = Image.fromarray(np.pad(mask, 1).astype(np.uint8) * 255).copy()
    ImageDraw.floodfill(canvas, (0, 0), 128)  # the outside, reached from the padding's corner
    pixels = np.asarray(canvas).copy()
    while (pixels == 0).any():  # one enclosed hole at a time
        y, x = (int(v[0]) for v in np.nonzero(pixels == 0))
        canvas = Image.fromarray(pixels).copy()
        ImageDraw.floodfill(canvas, (x, y), 64)
        pixels = np.asarray(canvas).copy()
        hole = pixels == 64
        pixels[hole] = 255 if hole.sum() <= max_fraction * mask.size else 128
    return (pixels == 255)[1:-1, 1:-1]


def write_scene(root: Path, image_id: str, image: np.ndarray, owner: np.ndarray, labels: np.ndarray,
                palette: list[int]) -> None:
    """The JPEG, annotation XML and class mask of one scene (``owner`` ``(S, S)``, ``labels`` per item)."""
    rgb = np.repeat(image[..., None], 3, axis=2)  # (S, S, 3)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, subsampling=0)
    write_bytes(root / "JPEGImages" / f"{image_id}.jpg", buf.getvalue())
    boxes, semantic = [], np.zeros(owner.shape, dtype=np.uint8)
    for k, label in enumerate(labels):
        visible = owner == k
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
        semantic[visible] = label + 1
    write_voc_xml(root / "Annotations" / f"{image_id}.xml", f"{image_id}.jpg", rgb.shape,
                  np.array(boxes, dtype=np.float32).reshape(-1, 4), labels, FASHION_VOC_CLASSES,
                  folder="VOC2012")
    mask = Image.fromarray(semantic, mode="P")
    mask.putpalette(palette)
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    write_bytes(root / "SegmentationClass" / f"{image_id}.png", buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="Fashion-MNIST IDX folder (.gz or plain)")
    parser.add_argument("--out", required=True, help="folder that receives VOCdevkit/VOC2012")
    parser.add_argument("--image-size", type=int, default=SceneLayout.image_size)
    parser.add_argument("--item-size", type=int, nargs=2, default=SceneLayout.item_size,
                        metavar=("MIN", "MAX"), help="longer side of the enlarged photographs")
    parser.add_argument("--max-items", type=int, default=SceneLayout.max_items)
    parser.add_argument("--max-occlusion", type=float, default=SceneLayout.max_occlusion)
    parser.add_argument("--max-photos", type=int, default=None, help="first N photographs per split")
    parser.add_argument("--seed", type=int, default=SceneLayout.seed)
    args = parser.parse_args(argv)
    try:
        layout = SceneLayout(args.image_size, tuple(args.item_size), args.max_items, args.max_occlusion,
                             args.max_photos, args.seed)
        summary = build_fashion_voc(args.out, load_fashion_mnist(args.source), layout)
    except XPVisionError as e:
        print(f"fashion_voc: {e}", file=sys.stderr)
        return 2
    root = Path(args.out).expanduser().resolve()
    for split, counts in summary.items():
        print(f"{split}: {counts['images']} scenes, {counts['objects']} photographs")
    names = ",".join(FASHION_VOC_CLASSES)
    print(f"{root}/VOCdevkit/VOC2012 written; read it with\n  -S download.<task>.dataset=voc2012 "
          f"-S download.<task>.root={root} -S 'download.<task>.voc_classes=[{names}]'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
