"""Extracted datasets used in place (``download.<task>.root``): layout checks and a record of their files.

A VOC root is the folder holding ``VOCdevkit``, ``VOCdevkit`` itself, or ``VOCdevkit/VOC<year>``; a COCO root
holds ``annotations/instances_<split>.json`` and one image folder per split (``val2017/``, ...). The layout a
split needs is checked before anything is read, and a missing piece is named. On first use the file list and
sizes of the folders read are recorded (``tree.json`` in the root's record folder, outside the dataset); a
later run that finds a file added, removed or resized stops with a DataError naming them, since results
computed from a silently changed dataset would not be comparable (delete the record to accept the change).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from xpvision.atomic import write_json
from xpvision.errors import DataError

RECORD_NAME = "tree.json"


def voc_folder(root: str | os.PathLike, year: str, split: str, task: str) -> Path:
    """The ``VOC<year>`` folder under ``root`` holding what ``split`` needs for ``task``; DataError naming
    what is missing."""
    root = Path(root).expanduser()
    candidates = [root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root]
    folder = next((c for c in candidates if (c / "Annotations").is_dir() or (c / "JPEGImages").is_dir()),
                  None)
    if folder is None:
        raise DataError(f"VOC root {root}: no VOCdevkit/VOC{year} (or VOC{year}) folder with Annotations/ "
                        "and JPEGImages/ found there")
    list_dir = "Main" if task == "detection" else "Segmentation"
    needed = ["Annotations", "JPEGImages", f"ImageSets/{list_dir}/{split}.txt"]
    needed += ["SegmentationClass"] if task == "segmentation" else []
    missing = [name for name in needed if not (folder / name).exists()]
    if missing:
        raise DataError(f"VOC root {folder}: missing {', '.join(missing)} (the official layout has "
                        f"Annotations/, JPEGImages/, ImageSets/{list_dir}/<split>.txt"
                        + (", SegmentationClass/" if task == "segmentation" else "")
                        + "; VOC2007's test tar extracts into the same VOC2007 folder)")
    return folder


def coco_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """``(annotations/instances_<split>.json, <split>/)`` of a COCO root; DataError naming what is missing."""
    root = Path(root).expanduser()
    json_path, images = root / "annotations" / f"instances_{split}.json", root / split
    missing = [str(p) for p in (json_path, images) if not p.exists()]
    if missing:
        raise DataError(f"COCO root {root}: missing {', '.join(missing)} (the official layout has "
                        "annotations/instances_<split>.json and one image folder per split)")
    return json_path, images


def check_record(base: Path, folders: list[Path], record_path: Path) -> None:
    """Record the files (relative path -> size) under each of ``folders`` (or a single file) of dataset
    ``base`` the first time it is read; later, refuse a folder that differs from its record, naming the files
    that changed."""
    record = {"root": str(base), "folders": {}}
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            record["folders"].items()
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"record {record_path} of {base} is not valid ({e}); delete it to record the "
                            "tree again") from e
    new = False
    for folder in sorted(set(folders)):
        paths = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
        files = {p.relative_to(base).as_posix(): p.stat().st_size for p in paths}
        key = folder.relative_to(base).as_posix()
        recorded = record["folders"].get(key)
        if recorded is None:
            record["folders"][key], new = files, True
        elif recorded != files:
            raise DataError(f"dataset {base} changed since it was first used (record {record_path}): "
                            + _differences(recorded, files)
                            + ". Restore it, or delete the record to accept the new files")
    if new:
        write_json(record_path, record)


def _differences(recorded: dict[str, int], files: dict[str, int]) -> str:
    added = sorted(set(files) - set(recorded))
    removed = sorted(set(recorded) - set(files))
    resized = sorted(n for n in set(files) & set(recorded) if files[n] != recorded[n])
    return "; ".join(f"{label} {len(names)} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                     for label, names in (("added", added), ("removed", removed), ("changed size", resized))
                     if names)
