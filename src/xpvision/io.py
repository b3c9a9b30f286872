"""Models on disk: ``model.npz`` (weights) + ``model.json`` (architecture spec and metadata), never a pickle.

``model.json`` reads ``{"format": 1, "spec": model.spec(), "meta": {...}}``; the spec rebuilds the model with
:func:`xpvision.nn.build_layer`, the ``.npz`` holds ``model.state_dict()`` (parameters and buffers, keyed
``'<layer path>.<key>'``) and is read with ``allow_pickle=False``. Both files are written atomically; the
weights first, so a reader never sees a spec whose weights have not been written yet.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from xpvision import atomic
from xpvision.errors import WeightsError
from xpvision.nn.base import Layer, build_layer

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.npz"
SPEC_NAME = "model.json"


def model_paths(dir_or_path: str | os.PathLike) -> tuple[Path, Path]:
    """``(weights .npz, spec .json)`` of a model folder, or of either file of a pair ``x.npz``/``x.json``."""
    path = Path(dir_or_path)
    if path.suffix in (".npz", ".json"):
        return path.with_suffix(".npz"), path.with_suffix(".json")
    return path / WEIGHTS_NAME, path / SPEC_NAME


def save_model(dir_or_path: str | os.PathLike, model: Layer, meta: dict[str, Any]) -> Path:
    """Write the model's weights and ``{"format", "spec", "meta"}`` atomically; return the ``.json`` path.

    ``meta`` must be JSON-able (classes, input size, normalisation, task, ...).
    """
    weights_path, spec_path = model_paths(dir_or_path)
    document = {"format": FORMAT_VERSION, "spec": model.spec(), "meta": dict(meta)}
    # serialise first: a meta that is not JSON-able fails before anything is written
    text = json.dumps(document, indent=2, default=atomic._json_default) + "\n"
    atomic.save_npz(weights_path, model.state_dict())
    atomic.write_text(spec_path, text)
    return spec_path


def read_npz(path: str | os.PathLike, what: str = "weights file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, read with ``allow_pickle=False``.

    Raises :class:`WeightsError` naming the file for a missing file, a file that is not an ``.npz`` archive
    (including a bare ``.npy``), a truncated/corrupt archive, and an object (pickled) array, naming its key.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} {path} not found")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise WeightsError(f"{what} {path} is not a readable .npz archive: {e}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise WeightsError(f"{what} {path} holds a single array, expected an .npz archive of named arrays")
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as e:
                if "allow_pickle" in str(e):
                    raise WeightsError(f"{what} {path}: array {key!r} is an object array (pickled data), "
                                       f"which is never loaded") from None
                raise WeightsError(f"{what} {path}: array {key!r} is corrupt: {e}") from None
            except (OSError, EOFError, zipfile.BadZipFile) as e:
                raise WeightsError(f"{what} {path}: array {key!r} is corrupt: {e}") from None
    return arrays


def load_weights(model: Layer, path: str | os.PathLike, strict: bool = True) -> dict[str, list[str]]:
    """Load an ``.npz`` of ``state_dict()`` (or a model folder's ``model.npz``) into ``model`` in place.

    Returns the report of :meth:`Layer.load_state_dict`. With ``strict`` a missing, unexpected or mismatched
    entry raises :class:`WeightsError` naming the file and listing every such entry (name and shapes), and the
    model is left unchanged.
    """
    weights_path = model_paths(path)[0]
    state = read_npz(weights_path)
    try:
        return model.load_state_dict(state, strict=strict)
    except WeightsError as e:
        raise WeightsError(f"{weights_path}: {e}") from None


def read_spec(path: str | os.PathLike) -> dict[str, Any]:
    """The ``{"format", "spec", "meta"}`` document of a model (folder or ``.json``), validated."""
    spec_path = model_paths(path)[1]
    if not spec_path.is_file():
        raise WeightsError(f"model spec {spec_path} not found")
    try:
        document = json.loads(spec_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"model spec {spec_path} is not valid JSON: {e}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise WeightsError(f"model spec {spec_path}: expected 'format': {FORMAT_VERSION}, found {found!r}")
    for key, kind in (("spec", dict), ("meta", dict)):
        if not isinstance(document.get(key), kind):
            raise WeightsError(f"model spec {spec_path}: key {key!r} must be an object, "
                               f"found {type(document.get(key)).__name__}")
    return document


def load_model(path: str | os.PathLike, device: str = "cpu") -> tuple[Layer, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_model` and load its weights; return ``(model, meta)``.

    The model is returned in eval mode on ``device``. Unknown layer types, invalid layer arguments and weights
    that do not match the spec raise :class:`WeightsError` naming the file.
    """
    document = read_spec(path)
    spec_path = model_paths(path)[1]
    try:
        model = build_layer(document["spec"])
    except WeightsError as e:
        raise WeightsError(f"model spec {spec_path}: {e}") from None
    except (TypeError, ValueError, KeyError) as e:
        raise WeightsError(f"model spec {spec_path}: cannot build the model: {e}") from None
    load_weights(model, path, strict=True)
    model.eval()
    check_meta(model, document["meta"], spec_path)
    return model.to(device), document["meta"]


def check_meta(model: Layer, meta: dict[str, Any], spec_path: Path) -> None:
    """Refuse (WeightsError naming ``spec_path``) metadata whose class count disagrees with the network.

    Checked when ``meta`` has ``kind``, ``classes`` and ``input_shape`` (what the pipeline writes), by one
    forward pass of a zero image of ``input_shape``: ``(1, C)`` logits for a classifier, ``(1, C, H, W)``
    scores for a segmenter (C includes background), ``A * (5 + C)`` head channels for a detector with ``A``
    anchors (``meta['detector']['anchors']``). Weights missing or adding entries are refused earlier, by
    :func:`load_weights`.
    """
    kind, classes, shape = meta.get("kind"), meta.get("classes"), meta.get("input_shape")
    if kind not in ("classification", "segmentation", "detection") or not isinstance(classes, list) \
            or not isinstance(shape, list):
        return
    try:
        out = model.forward(np.zeros((1, *shape), dtype=np.float32))
    except (ValueError, TypeError, IndexError) as e:  # ShapeError included
        raise WeightsError(f"model spec {spec_path}: the network does not run on its meta input_shape "
                           f"{shape}: {type(e).__name__}: {e}") from None
    anchors = len((meta.get("detector") or {}).get("anchors") or [])
    if kind == "detection" and not anchors:
        return
    expected = anchors * (5 + len(classes)) if kind == "detection" else len(classes)
    found = out.shape[-1] if kind == "classification" else out.shape[1]
    if found != expected:
        raise WeightsError(f"model spec {spec_path}: meta lists {len(classes)} classes for a {kind} model, "
                           f"but the weights give {found} output channels (expected {expected})")
