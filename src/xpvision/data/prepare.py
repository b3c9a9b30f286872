"""One call per data source: raw files (generated or downloaded) -> processed ``train`` / ``test`` shards.

Sources: ``digits`` and ``digit-scenes`` (offline, generated), ``mnist``, ``fashion-mnist``, ``voc2007``,
``voc2012``, ``coco2017`` (downloaded through mirrors, see :mod:`xpvision.data.download`). The processed
folder gets ``train/`` and ``test/`` shard folders (:mod:`xpvision.data.shards`) whose manifests' ``meta``
hold the source, the split mapping and, for ``train``, the per-channel ``mean``/``std`` of the images in
[0, 1]. Generated sources are rebuilt under ``raw_dir`` whenever their parameters change (a
``generated-with.json`` beside them records the parameters).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xpvision.atomic import write_json, write_text
from xpvision.data.archives import extract_archive
from xpvision.data.download import fetch_dataset, locked_md5, md5sum
from xpvision.data.folders import atomic_dir
from xpvision.data.local import RECORD_NAME, check_record, coco_paths, voc_folder
from xpvision.data.mnist import (
    DIGIT_CLASSES,
    FASHION_CLASSES,
    SPLIT_FILES,
    load_mnist_files,
    load_mnist_split,
)
from xpvision.data.scenes import SceneConfig
from xpvision.data.shards import write_shards
from xpvision.errors import ConfigError

TASK_SOURCES = {
    "classification": ("digits", "mnist", "fashion-mnist"),
    "detection": ("digit-scenes", "voc2007", "voc2012", "coco2017"),
    "segmentation": ("digit-scenes", "voc2012", "coco2017"),
}
"""The sources the pipeline offers each task (``download.<task>.dataset`` is checked against it)."""
SOURCES = tuple(dict.fromkeys(source for sources in TASK_SOURCES.values() for source in sources))
TASKS = tuple(TASK_SOURCES)
DEFAULT_SPLITS = {"voc2007": {"train": "trainval", "test": "test"},
                  "voc2012": {"train": "train", "test": "val"},
                  "coco2017": {"train": "train2017", "test": "val2017"}}
HOLDOUT_EVERY = 5
_VOC_ARCHIVES = {("voc2007", "trainval"): "VOCtrainval_06-Nov-2007.tar",
                 ("voc2007", "test"): "VOCtest_06-Nov-2007.tar"}


@dataclass(frozen=True)
class PrepareConfig:
    """What to prepare. ``classes``/``max_images``/``image_size`` subset and resize (image sources only).

    ``splits`` maps xpvision's ``train``/``test`` to the source's split names (defaults in
    :data:`DEFAULT_SPLITS`). When both name the same split (``{"train": "val2017", "test": "val2017"}`` avoids
    the 19 GB COCO train zip) its images are divided, never shared: an image is a test image when the MD5 of
    its id, as an integer, is a multiple of :data:`HOLDOUT_EVERY` (one in five, the same images on every
    machine). ``root`` is a local extracted copy read in place (:mod:`xpvision.data.local`); ``box_policy``
    and ``voc_pixel_origin`` are passed to the VOC / COCO readers. ``voc_classes`` names the classes, in
    order, of a VOC-layout dataset with classes of its own (``None``: the 20 official VOC classes).
    ``workers``: processes generating digit-scenes and decoding VOC-layout images
    (:mod:`xpvision.data.workers`; ``None``: every core by default); the files written do not depend on it.
    ``image_size`` is ``(height, width)`` for VOC / COCO (required there: shards hold one size); ``None``
    keeps the generated sizes of digits and digit-scenes.
    """

    source: str = "digits"
    task: str = "classification"
    mirrors: tuple[str, ...] = ()
    use_official: bool = True
    root: str | None = None
    box_policy: str = "refuse"
    voc_pixel_origin: int = 1
    classes: tuple[str, ...] | None = None
    voc_classes: tuple[str, ...] | None = None
    max_images: int | None = None
    image_size: tuple[int, int] | None = None
    splits: dict[str, str] | None = None
    shard_size: int = 4096
    digits_seed: int = 0
    scenes: SceneConfig = field(default_factory=SceneConfig)
    progress: bool = True
    retries: int = 2
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"data source {self.source!r} unknown; expected one of {SOURCES}")
        if self.task not in TASKS:
            raise ConfigError(f"task {self.task!r} unknown; expected one of {TASKS}")
        image_source = self.source in ("digit-scenes", "voc2007", "voc2012", "coco2017")
        if image_source == (self.task == "classification"):
            raise ConfigError(f"source {self.source!r} does not provide task {self.task!r}: digits/mnist/"
                              "fashion-mnist are classification, the others detection or segmentation")
        if self.source in DEFAULT_SPLITS and self.image_size is None:
            raise ConfigError(f"source {self.source!r} has images of many sizes: set image_size [H, W]")
        if self.voc_classes is not None and self.source not in ("voc2007", "voc2012"):
            raise ConfigError(f"voc_classes applies to voc2007 / voc2012, not to source {self.source!r}")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"max_images must be >= 1 or null, got {self.max_images}")


def prepare(config: PrepareConfig, raw_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Fetch or generate ``config.source`` under ``raw_dir`` and write ``out_dir/{train,test}`` shards.

    Returns ``{"train": count, "test": count, "classes": [...]}``.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    defaults = DEFAULT_SPLITS.get(config.source, {"train": "train", "test": "test"})
    splits = {**defaults, **(config.splits or {})}
    summary: dict = {}
    with atomic_dir(out_dir) as tmp:  # a failure in either split leaves the previous out_dir as it was
        divided = splits["train"] == splits["test"] and config.source in DEFAULT_SPLITS
        for split in ("train", "test"):
            samples, classes = _load_split(config, raw_dir, splits[split], split if divided else None)
            meta = {"source": config.source, "task": config.task, "split": split,
                    "source_split": splits[split]}
            manifest = write_shards(tmp / split, samples, classes=classes, shard_size=config.shard_size,
                                    meta=meta, with_stats=split == "train")
            summary[split] = manifest["count"]
            summary["classes"] = list(classes)
    return summary


def in_part(image_id: object, part: str | None) -> bool:
    """Whether an image of a divided split belongs to ``part`` (``"train"``/``"test"``; ``None``: whole)."""
    if part is None:
        return True
    digest = int(hashlib.md5(str(image_id).encode(), usedforsecurity=False).hexdigest(), 16)
    return (digest % HOLDOUT_EVERY == 0) == (part == "test")


def _load_split(config: PrepareConfig, raw_dir: Path, split: str, part: str | None
                ) -> tuple[Iterable[dict], tuple[str, ...]]:
    """The samples of ``split`` (or of its ``part`` when divided; an iterable, read lazily where the source
    allows) and the class names."""
    source = config.source
    if source in ("digits", "mnist", "fashion-mnist"):
        classes = FASHION_CLASSES if source == "fashion-mnist" else DIGIT_CLASSES
        if source == "digits":
            arrays = load_mnist_split(_digits_folder(config, raw_dir), split, classes)
        else:
            image_name, label_name = (f"{name}.gz" for name in SPLIT_FILES[split])
            files = _fetch(config, raw_dir, (image_name, label_name))
            arrays = load_mnist_files(files[image_name], files[label_name], classes)
        count = len(arrays.labels) if config.max_images is None else min(config.max_images,
                                                                         len(arrays.labels))
        samples = ({"image": arrays.images[i], "label": int(arrays.labels[i])} for i in range(count))
        return samples, arrays.classes
    if source == "coco2017":
        return _load_coco(config, raw_dir, split, part)
    from xpvision.data.voc import iter_voc

    # digit-scenes have masks for every image: keep boxes and masks so one prepared set serves both tasks
    with_masks = config.task == "segmentation" or config.source == "digit-scenes"
    task = "segmentation" if with_masks else "detection"
    root, all_classes = _voc_root(config, raw_dir, split, task)
    samples = iter_voc(root, split, task, all_classes=all_classes, classes=config.classes,
                       max_images=config.max_images, image_size=config.image_size,
                       pixel_origin=config.voc_pixel_origin, box_policy=config.box_policy,
                       keep_id=lambda image_id: in_part(image_id, part), workers=config.workers)
    return samples, tuple(config.classes or all_classes)


def _fetch(config: PrepareConfig, raw_dir: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """Registry files of ``config.source``: from ``config.root`` in place (nothing else tried), or fetched
    into ``raw_dir/<source>`` through the mirrors. A root's lock lives in ``raw_dir/local/``, one per root."""
    if config.root is None:
        return fetch_dataset(config.source, raw_dir / config.source, config.mirrors, only=names,
                             use_official=config.use_official, progress=config.progress,
                             retries=config.retries)
    record = local_record_dir(raw_dir, config.source, config.root)
    return fetch_dataset(config.source, record, (config.root,), only=names, use_official=False)


def local_record_dir(raw_dir: Path, source: str, root: str) -> Path:
    """Where the lock / file record of local copy ``root`` of ``source`` is kept (one folder per root)."""
    resolved = str(Path(root).expanduser().resolve())
    return raw_dir / "local" / f"{source}-{hashlib.sha1(resolved.encode()).hexdigest()[:12]}"


def _digits_folder(config: PrepareConfig, raw_dir: Path) -> Path:
    from xpvision.data.digits import write_digits

    folder = raw_dir / "digits"
    seed = config.digits_seed
    _generate_once(folder, {"seed": seed}, lambda: write_digits(folder, seed=seed))
    return folder


def _generate_once(folder: Path, params: dict, build) -> None:
    """Run ``build()`` (which writes ``folder``) unless ``folder`` was generated with the same ``params``."""
    marker = folder / "generated-with.json"
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == params:
        return
    build()
    write_json(marker, params)


def _voc_root(config: PrepareConfig, raw_dir: Path, split: str, task: str) -> tuple[Path, tuple[str, ...]]:
    """The folder holding JPEGImages/Annotations/ImageSets for ``split``, and the dataset's class order."""
    if config.source == "digit-scenes":
        from xpvision.data.scenes import write_digit_scenes

        folder = raw_dir / "digit-scenes"
        digits = _digits_folder(config, raw_dir)
        params = {**asdict(config.scenes), "digits_seed": config.digits_seed}
        _generate_once(folder, params, lambda: write_digit_scenes(folder, digits, config.scenes,
                                                                  config.workers))
        return folder, DIGIT_CLASSES
    from xpvision.data.voc import VOC_CLASSES

    year, classes = config.source[-4:], config.voc_classes or VOC_CLASSES
    if config.root is not None:
        folder = voc_folder(config.root, year, split, task)
        lists = folder / "ImageSets" / ("Main" if task == "detection" else "Segmentation")
        read = [folder / "Annotations", folder / "JPEGImages", lists]
        read += [folder / "SegmentationClass"] if task == "segmentation" else []
        check_record(folder, read, local_record_dir(raw_dir, config.source, config.root) / RECORD_NAME)
        return folder, classes
    archive_name = _VOC_ARCHIVES.get((config.source, split), "VOCtrainval_11-May-2012.tar" if year == "2012"
                                     else "VOCtrainval_06-Nov-2007.tar")
    archive = fetch_dataset(config.source, raw_dir / config.source, config.mirrors, only=(archive_name,),
                            use_official=config.use_official, progress=config.progress,
                            retries=config.retries)[archive_name]
    extracted = _extract_once(archive, raw_dir / config.source / archive_name.removesuffix(".tar"),
                              raw_dir / config.source)
    return extracted / "VOCdevkit" / f"VOC{year}", classes


def _extract_once(archive: Path, target: Path, lock_dir: Path) -> Path:
    """Extract ``archive`` into ``target`` unless a marker says this exact archive (by MD5) is already
    there. The MD5 is the one the download lock holds for the unchanged archive: it is not read again."""
    marker = target / ".extracted-from.md5"
    digest = locked_md5(archive, lock_dir) or md5sum(archive)
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == digest:
        return target
    extract_archive(archive, target)
    write_text(marker, digest + "\n")
    return target


def _load_coco(config: PrepareConfig, raw_dir: Path, split: str, part: str | None
               ) -> tuple[Iterable[dict], tuple[str, ...]]:
    from xpvision.data.coco import iter_coco

    if config.root is not None:
        json_path, image_dir = coco_paths(config.root, split)
        base = Path(config.root).expanduser()
        check_record(base, [json_path, image_dir],
                     local_record_dir(raw_dir, config.source, config.root) / RECORD_NAME)
    else:
        folder = raw_dir / "coco2017"
        names = ("annotations_trainval2017.zip", f"{split}.zip")
        files = fetch_dataset("coco2017", folder, config.mirrors, only=names,
                              use_official=config.use_official, progress=config.progress,
                              retries=config.retries)
        annotations = _extract_once(files[names[0]], folder / "annotations_trainval2017", folder)
        json_path = annotations / "annotations" / f"instances_{split}.json"
        image_dir = _extract_once(files[names[1]], folder / split, folder) / split
    return iter_coco(json_path, image_dir, classes=config.classes, max_images=config.max_images,
                     image_size=config.image_size, with_masks=config.task == "segmentation",
                     box_policy=config.box_policy, keep_id=lambda image_id: in_part(image_id, part))
