"""Data augmentation with albumentations 2.0 (``NO_ALBUMENTATIONS_UPDATE=1``), configured from params.yaml.

A pipeline is a list of ``{name: <transform>, <argument>: <value>, ...}`` entries, e.g.::

    - {name: Affine, rotate: [-10, 10], translate_percent: [-0.1, 0.1], scale: [0.9, 1.1], shear: [-5, 5], p:
      0.5}
    - {name: HorizontalFlip, p: 0.5}
    - {name: RandomBrightnessContrast, p: 0.5}
    - {name: Standardize, scope: dataset}

``name`` is any albumentations transform class (rotation, shift, zoom and shear: ``Affine`` or
``ShiftScaleRotate``; flips: ``HorizontalFlip``/``VerticalFlip``; brightness: ``RandomBrightnessContrast``;
colour / channel shift: ``RGBShift``, ``HueSaturationValue``, ``ChannelShuffle``; random crop: ``RandomCrop``,
``RandomSizedBBoxSafeCrop``, ...) with its own arguments, or one of xpvision's two normalisation entries,
which are not applied here but recorded for the loader (augmented images stay uint8 on disk):

* ``{name: Rescale}``: pixel rescaling to [0, 1] (the default);
* ``{name: Standardize, scope: dataset}``: mean 0 / std 1 per channel with the augmented training set's
  statistics;
  ``{name: Standardize, scope: sample}``: each image to mean 0 / std 1.

Boxes (``pascal_voc`` = xpvision's 0-based continuous xyxy) and masks move with the image; a box keeps only if
at least ``min_visibility`` of its area stays in the image (boxes that leave the image are dropped, clipped
ones shrink), and ``labels``/``difficult`` stay aligned with the kept boxes. ``Compose(seed=...)`` makes a run
reproducible: the same seed and input give the same bytes.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from xpvision.data.loader import Normalization
from xpvision.data.shards import ShardDataset, copy_shards, write_shards, written_as_shards
from xpvision.errors import ConfigError

NORMALIZATION_ENTRIES = ("Rescale", "Standardize")


def _albumentations():
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


def parse_transforms(spec: Sequence[dict]) -> tuple[list, str]:
    """Validate a transform list; return ``(albumentations transforms, normalization mode)``.

    Raises:
        ConfigError: an entry without ``name``, an unknown transform, an argument the transform does not take,
            or a value it rejects; the message names the entry and the transform.
    """
    A = _albumentations()
    transforms, mode = [], "rescale"
    if not isinstance(spec, Sequence) or isinstance(spec, str | bytes):
        raise ConfigError(f"augment transforms: expected a list of {{name: ..., args}} entries, got {spec!r}")
    for position, entry in enumerate(spec):
        where = f"augment transforms[{position}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{where}: expected a mapping with a 'name' key, got {entry!r}")
        name, args = entry["name"], {k: v for k, v in entry.items() if k != "name"}
        if name in NORMALIZATION_ENTRIES:
            mode = _normalization_mode(where, name, args)
            continue
        cls = getattr(A, str(name), None)
        if not (inspect.isclass(cls) and issubclass(cls, A.BasicTransform)):
            raise ConfigError(f"{where}: unknown transform {name!r}; expected an albumentations transform "
                              f"(Affine, HorizontalFlip, RandomBrightnessContrast, RGBShift, ...) or one of "
                              f"{NORMALIZATION_ENTRIES}")
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
        unknown = sorted(set(args) - accepted)
        if unknown:
            raise ConfigError(f"{where}: transform {name} has no argument(s) {unknown}; it takes "
                              f"{sorted(accepted)}")
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                transforms.append(cls(**args))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}: invalid arguments {args} for {name}: {e}") from e
    return transforms, mode


def _normalization_mode(where: str, name: str, args: dict) -> str:
    if name == "Rescale":
        if args:
            raise ConfigError(f"{where}: Rescale takes no arguments, got {sorted(args)}")
        return "rescale"
    if set(args) != {"scope"} or args["scope"] not in ("dataset", "sample"):
        raise ConfigError(f"{where}: Standardize needs scope: dataset or scope: sample, got {args}")
    return args["scope"]


def build_pipeline(spec: Sequence[dict], *, seed: int, boxes: bool, min_visibility: float = 0.3):
    """An ``albumentations.Compose`` for the list ``spec`` (boxes in pascal_voc with ``labels``/``difficult``
    label fields when ``boxes``), seeded with ``seed``; and the normalization mode of the list."""
    A = _albumentations()
    if not 0.0 <= min_visibility <= 1.0:
        raise ConfigError(f"augment min_visibility must be in [0, 1], got {min_visibility}")
    transforms, mode = parse_transforms(spec)
    bbox_params = None
    if boxes:
        bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels", "difficult"],
                                   min_visibility=min_visibility, clip=True, filter_invalid_bboxes=True)
    return A.Compose(transforms, bbox_params=bbox_params, seed=seed), mode


def augment_sample(pipeline, sample: dict) -> dict:
    """Apply a pipeline to one sample; returns a new sample with the moved image / boxes / mask."""
    kwargs = {"image": sample["image"]}
    if "mask" in sample:
        kwargs["mask"] = sample["mask"]
    if "boxes" in sample:
        kwargs.update(bboxes=np.asarray(sample["boxes"], dtype=np.float32).reshape(-1, 4),
                      labels=np.asarray(sample["labels"], dtype=np.int64),
                      difficult=np.asarray(sample.get("difficult", np.zeros(len(sample["labels"]))),
                                           dtype=bool))
    out = pipeline(**kwargs)
    image = np.asarray(out["image"], dtype=np.uint8)
    result = {"image": image.reshape(*image.shape[:2], sample["image"].shape[2])}  # (H, W, C)
    if "label" in sample:
        result["label"] = sample["label"]
    if "mask" in sample:
        result["mask"] = np.asarray(out["mask"], dtype=np.uint8)
    if "boxes" in sample:
        result["boxes"] = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)  # (R', 4)
        result["labels"] = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        result["difficult"] = np.asarray(out["difficult"], dtype=bool).reshape(-1)
    return result


def augment_dataset(in_dir: str | os.PathLike, out_dir: str | os.PathLike, spec: Sequence[dict], *,
                    copies: int = 1, keep_original: bool = True, seed: int = 0, min_visibility: float = 0.3,
                    shard_size: int = 4096, preview_path: str | os.PathLike | None = None,
                    preview_count: int = 32) -> dict:
    """Write the augmented training set: every sample of the shard folder ``in_dir`` (if ``keep_original``)
    plus ``copies`` augmented variants of it, as shards in ``out_dir``.

    The manifest's ``meta`` records the ``normalization`` the loader should apply (mode from the list,
    mean/std of the written images), the transform list, ``copies`` and ``seed``. With ``preview_path``, a PNG
    grid of the first ``preview_count`` augmented samples (the originals when ``copies`` is 0) with their
    boxes and masks is written there.

    With ``copies`` 0 the output samples are the input's: when ``in_dir``'s shards are what ``write_shards``
    would write for them with ``shard_size`` (:func:`~xpvision.data.shards.written_as_shards`), their files
    are copied (checked against their SHA-256) instead of decoded and encoded again, which gives the same
    bytes.

    Returns ``{"count", "normalization"}``.
    """
    if copies < 0 or (copies == 0 and not keep_original):
        raise ConfigError(f"augment: copies must be >= 0 (and > 0 without keep_original), got {copies}")
    source = ShardDataset(in_dir)
    pipeline, mode = build_pipeline(spec, seed=seed, boxes="boxes" in source.targets,
                                    min_visibility=min_visibility)
    preview: list[dict] = []

    def samples() -> Iterator[dict]:  # streamed into shards; the first augmented ones kept for the preview
        for sample, augmented in _variants(source, pipeline, copies, keep_original):
            if (augmented or copies == 0) and len(preview) < preview_count:
                preview.append(sample)
            yield sample

    def add_normalization(meta: dict) -> None:
        mean, std = tuple(meta["mean"]), tuple(meta["std"])
        meta["normalization"] = (Normalization(mode, mean, std) if mode == "dataset"
                                 else Normalization(mode)).to_dict()

    meta = {**source.meta, "augment": {"transforms": [dict(e) for e in spec], "copies": copies,
                                       "keep_original": keep_original, "seed": seed,
                                       "min_visibility": min_visibility}}
    if copies == 0 and written_as_shards(source, shard_size):  # keep_original: the output is the input
        manifest = copy_shards(source, out_dir, meta=meta, with_stats=True, finalize_meta=add_normalization)
        copied = ShardDataset(out_dir, verify=False, mmap=True)  # hashed while copied; read for the preview
        preview = [copied[i] for i in range(min(preview_count, len(copied)))]
    else:
        manifest = write_shards(out_dir, samples(), classes=source.classes, shard_size=shard_size, meta=meta,
                                with_stats=True, finalize_meta=add_normalization)
    if preview_path is not None:
        from xpvision.data.preview import write_preview

        write_preview(preview_path, preview, source.classes)
    return {"count": manifest["count"], "normalization": manifest["meta"]["normalization"]}


def _variants(source: ShardDataset, pipeline, copies: int, keep_original: bool
              ) -> Iterator[tuple[dict, bool]]:
    """``(sample, augmented)`` pairs: each original (if kept), then its ``copies`` augmented variants."""
    for index in range(len(source)):
        sample = source[index]
        if keep_original:
            yield sample, False
        for _ in range(copies):
            try:
                yield augment_sample(pipeline, sample), True
            except Exception as e:  # albumentations raises its own types (CropSizeError, ...) for misfits
                raise ConfigError(f"augment: the transform list failed on sample {index} of {source.folder} "
                                  f"(image {sample['image'].shape}): {e}") from e

