"""``params.yaml`` blocks -> frozen, validated dataclasses.

Names are checked against the library's own registries, never against a copy of them: datasets
(:data:`xpvision.data.prepare.TASK_SOURCES`), models (each task's ``model_names()`` in :mod:`xpvision.tasks`),
optimizers (:data:`xpvision.optim.OPTIMIZERS`), schedules (:data:`xpvision.schedules.SCHEDULES`) and transfer
modes (:data:`xpvision.transfer.MODES`). Augmentation transforms are albumentations classes, checked by
:func:`xpvision.data.augment.parse_transforms` when the augment stage builds them (importing albumentations
takes seconds, too long for every stage).

Every key of ``params.yaml`` is required and every unknown key is refused: DVC tracks parameters by the keys
it finds in the file, so a default hidden in code would change results without DVC noticing. A bad value stops
the stage with :class:`~xpvision.errors.ConfigError` naming the key, e.g.
``params.yaml: train.classification.lr: expected a positive number, got -1``.

The file has one section per stage (``download``, ``augment``, ``train``, ``evaluate``, ``export``) holding
one block per task, plus ``tracking`` (MLflow) and ``transfer`` (the transfer-learning comparison report).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from xpvision.errors import ConfigError
from xpvision.optim import OPTIMIZERS
from xpvision.schedules import SCHEDULES
from xpvision.transfer import MODES

BASE_TASKS = ("classification", "detection", "segmentation")
"""Tasks with their own data (``download`` and ``augment`` blocks)."""
FINETUNED_TASKS = ("detection_ft", "segmentation_ft")
"""Detector and FCN initialised from the digits classifier; they train on their base task's data."""
TASKS = BASE_TASKS + FINETUNED_TASKS
BASE_OF_FINETUNED = tuple(task.removesuffix("_ft") for task in FINETUNED_TASKS)



def data_task(task: str) -> str:
    """The task whose data ``task`` trains on (``'detection_ft'`` -> ``'detection'``)."""
    return task.removesuffix("_ft")


# -- checks --------------------------------------------------------------------------------------------------
Check = tuple[Callable[[Any], bool], str]
POSITIVE: Check = (lambda v: v > 0, "a positive number")
NON_NEGATIVE: Check = (lambda v: v >= 0, "a number >= 0")
PROBABILITY: Check = (lambda v: 0 <= v <= 1, "a number in [0, 1]")
OPEN_UNIT: Check = (lambda v: 0 < v < 1, "a number in (0, 1)")
FRACTION_BELOW_ONE: Check = (lambda v: 0 <= v < 1, "a number in [0, 1)")
WEIGHTS: Check = (lambda v: all(w >= 0 for w in v) and any(w > 0 for w in v),
                  "a list of numbers >= 0, not all 0")
PROCESSES: Check = (lambda v: v == "auto" or (isinstance(v, int) and v > 0), "a positive integer or auto")
DIGIT_SIZE: Check = (lambda v: len(v) == 2 and 4 <= v[0] <= v[1], "[min, max] with 4 <= min <= max")
CLASS_LIST: Check = (lambda v: 1 <= len(v) <= 254 and len(set(v)) == len(v)
                     and all(n and n == n.strip() for n in v),
                     "a list of 1 to 254 distinct names without surrounding spaces")
"""Mask index ``k + 1`` is class ``k`` and 255 means ignore: a VOC-layout dataset has at most 254 classes."""


def _opt(check: Check) -> Check:
    """The same check, letting ``null`` through."""
    predicate, text = check
    return (lambda v: v is None or predicate(v)), f"{text} or null"


def names(registry: Any) -> Any:
    """The type of a field that must be one of a registry's names (its keys, in order)."""
    return Literal[tuple(registry)]


def checked(check: Check) -> Any:
    """A required dataclass field whose value must pass ``check``."""
    return field(metadata={"check": check})


# -- blocks --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrackingConfig:
    """MLflow settings. ``MLFLOW_TRACKING_URI`` (environment) overrides ``uri``."""

    uri: str
    """Tracking URI; the default ``sqlite:///mlflow.db`` is a store in the project root."""
    experiment_prefix: str
    """Experiments are named ``<prefix>-<task>`` (one experiment per task)."""
    on_unreachable: Literal["fail", "local"]
    """What a stage does when the tracking server does not answer: stop before any work, or log locally."""
    local_uri: str
    """The store used when ``on_unreachable`` is ``local`` and the server is down."""
    connect_timeout_s: float = checked(POSITIVE)
    log_models: bool


@dataclass(frozen=True)
class DownloadConfig:
    """Which digits dataset the classifier reads and how much of it."""

    dataset: str
    """One of :data:`xpvision.data.prepare.TASK_SOURCES` for the task (checked in :func:`parse_params`)."""
    mirrors: tuple[str, ...]
    """Mirrors tried before the official URLs: http(s) URLs, ``file://`` URLs or directories."""
    use_official: bool
    """Also try the official URLs after the mirrors (false for air-gapped teams)."""
    root: str | None
    """A local copy used in place instead of downloading: a folder holding the four IDX files (``.gz`` or
    plain), verified against the published checksums."""
    max_images: int | None = checked(_opt(POSITIVE))
    """Keep at most ``max_images`` images per split (null = all)."""
    shard_size: int = checked(POSITIVE)
    seed: int = checked(NON_NEGATIVE)
    """Seed of the offline ``digits`` train/test split."""


@dataclass(frozen=True)
class SceneDownloadConfig:
    """Which scene dataset (boxes and masks) a detection or segmentation task reads."""

    dataset: str
    mirrors: tuple[str, ...]
    use_official: bool
    root: str | None
    """A local, extracted copy used in place: the folder holding ``VOCdevkit`` (or ``VOCdevkit/VOC<year>``
    itself), or a COCO folder with ``annotations/`` and the image folders."""
    splits: tuple[str, ...] | None
    """The source's splits to read: null for the defaults, ``[train, test]`` (e.g. ``[train2017, val2017]``)
    or one split (e.g. ``[val2017]``) divided into train and test images (see ``xpvision.data.prepare``)."""
    box_policy: Literal["refuse", "clip"]
    """Boxes outside the image, with width or height <= 0, or non-finite: ``refuse`` (an error naming the file
    and object) or ``clip`` (clipped to the image; dropped, with a warning, when nothing is left)."""
    voc_pixel_origin: Literal[0, 1]
    """VOC XML coordinates: ``1`` the devkit's 1-based pixels, ``0`` the 0-based corners CVAT, LabelImg and
    labelme write."""
    classes: tuple[str, ...] | None
    """Keep only these classes (null = all of the dataset's classes)."""
    voc_classes: tuple[str, ...] | None = checked(_opt(CLASS_LIST))
    """``voc2007`` / ``voc2012`` only: the class names, in order, of a VOC-layout dataset with classes of its
    own (the ``<name>`` of its objects; mask index ``k + 1`` is the ``k``-th name). null = the 20 official VOC
    classes."""
    max_images: int | None = checked(_opt(POSITIVE))
    image_size: int = checked(POSITIVE)
    """Side of the square images the task trains on (scenes are generated at, or resized to, this size)."""
    num_train: int = checked(POSITIVE)
    """``digit-scenes`` only: number of generated training scenes (real datasets use ``max_images``)."""
    num_test: int = checked(POSITIVE)
    digit_size: tuple[int, ...] = checked(DIGIT_SIZE)
    """``digit-scenes`` only: ``[min, max]`` height in pixels of the digits drawn (at most ``image_size``)."""
    max_occlusion: float = checked(FRACTION_BELOW_ONE)
    """``digit-scenes`` only: the largest fraction of a digit's ink that later digits may cover."""
    shard_size: int = checked(POSITIVE)
    seed: int = checked(NON_NEGATIVE)


@dataclass(frozen=True)
class AugmentConfig:
    """Training-set augmentation: albumentations transforms, ``copies`` augmented variants per image.

    ``transforms`` is the list :func:`xpvision.data.augment.parse_transforms` validates (transform names and
    arguments are checked there, when the stage runs); its ``Standardize``/``Rescale`` entry sets the input
    normalisation used in training, evaluation and prediction.
    """

    transforms: tuple[Mapping[str, Any], ...]
    copies: int = checked(NON_NEGATIVE)
    keep_original: bool
    min_visibility: float = checked(PROBABILITY)
    """A box is kept only if this fraction of its area stays in the augmented image."""
    seed: int = checked(NON_NEGATIVE)
    preview_images: int = checked(NON_NEGATIVE)


@dataclass(frozen=True)
class TrainConfig:
    """Model, optimiser and schedule of one training run."""

    model: str
    """One of the task's ``model_names()`` (:mod:`xpvision.tasks`; checked in :func:`parse_params`)."""
    model_args: Mapping[str, Any]
    init_from: str | None
    """Task whose trained model initialises this one's backbone (``features.*`` weights, loaded by name)."""
    transfer_mode: names(MODES)
    """With ``init_from``: ``full`` trains everything, ``head`` only the layers that are new, ``partial``
    all but the first ``freeze_layers`` pretrained layers (see :mod:`xpvision.transfer`)."""
    freeze_layers: int = checked(NON_NEGATIVE)
    pretrained_lr_scale: float = checked(POSITIVE)
    """Learning-rate factor of the pretrained layers (``init_from`` only)."""
    optimizer: names(OPTIMIZERS)
    lr: float = checked(POSITIVE)
    weight_decay: float = checked(NON_NEGATIVE)
    schedule: names(SCHEDULES)
    warmup_epochs: int = checked(NON_NEGATIVE)
    epochs: int = checked(POSITIVE)
    batch_size: int = checked(POSITIVE)
    grad_clip: float | None = checked(_opt(POSITIVE))
    class_weights: tuple[float, ...] | None = checked(_opt(WEIGHTS))
    """Loss weight of each class (segmentation: background first), or null for equal weights; classification
    and segmentation only."""
    val_fraction: float = checked(OPEN_UNIT)
    seed: int = checked(NON_NEGATIVE)
    device: Literal["cpu", "gpu"]
    processes: int | str = checked(PROCESSES)
    """Processes training together, data-parallel (``xpvision train`` starts them under ``mpiexec``), or
    ``auto``: one per core (:func:`xpvision.distributed.launch.process_count`); the result is the same for any
    number (see :mod:`xpvision.distributed`)."""
    hosts: str | None
    """Where the processes run: null (this host), ``host[:slots]`` entries separated by commas, or the path
    of an MPICH hostfile."""


@dataclass(frozen=True)
class EvaluateConfig:
    """Test-set evaluation of a classifier or an FCN, and the sample plots drawn from it."""

    batch_size: int = checked(POSITIVE)
    sample_images: int = checked(NON_NEGATIVE)
    """Test images drawn with their predictions into ``reports/<task>/samples.png``."""


@dataclass(frozen=True)
class DetectionEvaluateConfig:
    """Test-set evaluation of a detector: VOC and COCO mAP, PR curves, sample detections."""

    batch_size: int = checked(POSITIVE)
    sample_images: int = checked(NON_NEGATIVE)
    score_threshold: float = checked(PROBABILITY)
    """Detections scoring less are dropped before NMS."""
    nms_iou: float = checked(PROBABILITY)
    """NMS suppresses boxes whose IoU with a better-scoring box of the same class exceeds this."""
    voc07_metric: bool
    """11-point VOC2007 AP instead of the all-point area (VOC2010+)."""


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export, checked against xpvision's own outputs with onnxruntime."""

    opset: int = checked((lambda v: 13 <= v <= 21, "an ONNX opset in [13, 21]"))
    check_samples: int = checked(POSITIVE)
    atol: float = checked((lambda v: 0 < v <= 1e-4, "a tolerance in (0, 1e-4]"))


@dataclass(frozen=True)
class TransferConfig:
    """The transfer-learning comparison: fine-tuned vs from scratch, for each mode, on a small subset."""

    tasks: tuple[names(BASE_OF_FINETUNED), ...]
    modes: tuple[names(MODES), ...]
    subset_size: int = checked(POSITIVE)
    epochs: int = checked(POSITIVE)
    seed: int = checked(NON_NEGATIVE)


@dataclass(frozen=True)
class Params:
    """The whole ``params.yaml``: ``params.train['classification']`` is a :class:`TrainConfig`, etc."""

    tracking: TrackingConfig
    download: Mapping[str, DownloadConfig | SceneDownloadConfig]
    augment: Mapping[str, AugmentConfig]
    train: Mapping[str, TrainConfig]
    evaluate: Mapping[str, EvaluateConfig | DetectionEvaluateConfig]
    export: Mapping[str, ExportConfig]
    transfer: TransferConfig


SECTIONS: dict[str, dict[str, type]] = {
    "download": {"classification": DownloadConfig, "detection": SceneDownloadConfig,
                 "segmentation": SceneDownloadConfig},
    "augment": dict.fromkeys(BASE_TASKS, AugmentConfig),
    "train": dict.fromkeys(TASKS, TrainConfig),
    "evaluate": {task: DetectionEvaluateConfig if data_task(task) == "detection" else EvaluateConfig
                 for task in TASKS},
    "export": dict.fromkeys(TASKS, ExportConfig),
}
"""Section -> task -> the dataclass of that block."""


# -- loading -------------------------------------------------------------------------------------------------
def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the whole parameter file; raise :class:`ConfigError` naming the first bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: parameter file not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return parse_params(raw, source=str(path))


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-parsed parameter mapping (see :func:`load_params`)."""
    top = _mapping(raw, source, "")
    _check_keys(top, {"tracking", "transfer", *SECTIONS}, source, "")
    sections = {}
    for name, classes in SECTIONS.items():
        blocks = _mapping(top[name], source, name)
        _check_keys(blocks, set(classes), source, name)
        sections[name] = types.MappingProxyType(
            {task: build_block(cls, blocks[task], source, f"{name}.{task}") for task, cls in classes.items()})
    from xpvision.data.prepare import TASK_SOURCES
    from xpvision.tasks import task_class

    for task, block in sections["download"].items():
        if block.dataset not in TASK_SOURCES[task]:
            _fail(source, f"download.{task}.dataset", f"one of {', '.join(TASK_SOURCES[task])}",
                  block.dataset)
        if isinstance(block, SceneDownloadConfig) and block.digit_size[1] > block.image_size:
            _fail(source, f"download.{task}.digit_size", f"a max <= image_size {block.image_size}",
                  list(block.digit_size))
        if isinstance(block, SceneDownloadConfig) and len(block.splits or "ab") not in (1, 2):
            _fail(source, f"download.{task}.splits", "null, [split] or [train split, test split]",
                  list(block.splits))
        if isinstance(block, SceneDownloadConfig):
            _check_voc_classes(block, source, f"download.{task}")
    for task, block in sections["train"].items():
        models = task_class(data_task(task)).model_names()
        if block.model not in models:
            _fail(source, f"train.{task}.model", f"one of {', '.join(models)}", block.model)
        if block.init_from is not None and block.init_from not in TASKS:
            _fail(source, f"train.{task}.init_from", f"null or one of {', '.join(TASKS)}", block.init_from)
        if block.init_from is None and block.transfer_mode != "full":
            _fail(source, f"train.{task}.transfer_mode", "full when init_from is null", block.transfer_mode)
    return Params(tracking=build_block(TrackingConfig, top["tracking"], source, "tracking"),
                  transfer=build_block(TransferConfig, top["transfer"], source, "transfer"), **sections)


def _check_voc_classes(block: SceneDownloadConfig, source: str, key: str) -> None:
    """``voc_classes`` only for VOC datasets; ``classes`` of a VOC dataset among its class names."""
    from xpvision.data.voc import VOC_CLASSES

    is_voc = block.dataset in ("voc2007", "voc2012")
    if block.voc_classes is not None and not is_voc:
        _fail(source, f"{key}.voc_classes", f"null for dataset {block.dataset} (voc2007 and voc2012 only)",
              list(block.voc_classes))
    names = block.voc_classes or VOC_CLASSES
    if is_voc and block.classes is not None and not set(block.classes) <= set(names):
        unknown = sorted(set(block.classes) - set(names))
        where = "voc_classes" if block.voc_classes else "the 20 VOC classes (or set voc_classes)"
        _fail(source, f"{key}.classes", f"names from {where}; unknown: {', '.join(unknown)}",
              list(block.classes))


def build_block(cls: type, raw: Any, source: str, key: str) -> Any:
    """Build dataclass ``cls`` from mapping ``raw`` found at dotted ``key`` of file ``source``."""
    values = _mapping(raw, source, key)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(values, set(fields), source, key)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        check = f.metadata.get("check")
        try:
            value = _coerce(values[name], hints[name], source, f"{key}.{name}")
        except ConfigError:
            if check is None or not _several_types(hints[name]):
                raise
            _fail(source, f"{key}.{name}", check[1], values[name])  # not only the last type's name
        if check is not None and not check[0](value):
            _fail(source, f"{key}.{name}", check[1], values[name])
        kwargs[name] = value
    return cls(**kwargs)


def block_dict(block: Any) -> dict[str, Any]:
    """A block as plain JSON-able Python (tuples -> lists, mappings -> dicts), e.g. to log it as params."""
    return {f.name: _plain(getattr(block, f.name)) for f in dataclasses.fields(block)}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _several_types(hint: Any) -> bool:
    """Whether ``hint`` is a union of more than one type besides ``None`` (``int | str``)."""
    return (typing.get_origin(hint) in (typing.Union, types.UnionType)
            and len([a for a in typing.get_args(hint) if a is not type(None)]) > 1)


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for hint_choice in inner[:-1]:  # e.g. int | str: the first type the value is, the field's check after
            with contextlib.suppress(ConfigError):
                return _coerce(value, hint_choice, source, key)
        return _coerce(value, inner[-1], source, key)
    if origin is Literal:
        if value not in args:
            _fail(source, key, f"one of {', '.join(map(str, args))}", value)
        return value
    if origin is tuple:
        if not isinstance(value, list):
            _fail(source, key, "a list", value)
        return tuple(_coerce(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is Mapping:
        return types.MappingProxyType(dict(_mapping(value, source, key)))
    if hint is bool:
        if not isinstance(value, bool):
            _fail(source, key, "true or false", value)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(source, key, "an integer", value)
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads `1e-3` (no dot) as a string: accept what users type
            try:
                value = float(value.strip())
            except ValueError:
                _fail(source, key, "a number", value)
            if not math.isfinite(value):
                _fail(source, key, "a finite number", value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(source, key, "a number", value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            _fail(source, key, "a string", value)
        return value
    raise TypeError(f"config field {key} has an unsupported annotation {hint!r}")


def _mapping(value: Any, source: str, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(source, key or "(top level)", "a mapping of keys to values", value)
    return value


def _check_keys(values: Mapping[str, Any], expected: set[str], source: str, key: str) -> None:
    prefix = f"{key}." if key else ""
    unknown = sorted(set(map(str, values)) - expected)
    if unknown:
        raise ConfigError(
            f"{source}: {prefix}{unknown[0]}: unknown key; expected one of {', '.join(sorted(expected))}")
    missing = sorted(expected - set(values))
    if missing:
        raise ConfigError(f"{source}: {prefix}{missing[0]}: missing key (required: {', '.join(missing)})")


def _fail(source: str, key: str, expected: str, got: Any) -> typing.NoReturn:
    shown = "null" if got is None else (f"{got!r}" if isinstance(got, str) else str(got))
    raise ConfigError(f"{source}: {key}: expected {expected}, got {shown}")
