"""``xpvision predict IMAGE... --model models/<task> [--json] [--out DIR]``: run a model on image files.

* classification: prints ``image: label (score)`` lines;
* detection: draws the boxes on each image and writes ``<out>/<stem>_detections.png``;
* segmentation: writes the overlay ``<out>/<stem>_overlay.png`` (and the label PNG ``<stem>_mask.png``).

With ``--json`` the predictions are printed as JSON (boxes in the original image's pixels).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_OUT = "predictions"


def run(images: Sequence[str], model_dir: str, *, as_json: bool = False, out_dir: str | None = None,
        score_threshold: float = 0.3) -> list[dict[str, Any]]:
    from xpvision.export.inference import load_trained_model, predict, read_images

    model, meta = load_trained_model(model_dir)
    pixels, originals = read_images(images, meta)
    results = predict(model, meta, pixels, score_threshold=score_threshold)
    out = Path(out_dir or DEFAULT_OUT)
    records = []
    for path, original, result in zip(images, originals, results, strict=True):
        record = {"image": str(path), **_json_ready(meta, result, original.size)}
        if meta["kind"] == "detection":
            record["output"] = str(_draw_detections(out, Path(path), original, record, meta))
        elif meta["kind"] == "segmentation":
            record["output"] = str(_write_overlay(out, Path(path), original, result["mask"]))
        records.append(record)
    if as_json:
        json.dump(records, sys.stdout, indent=2)
        print()
    else:
        for record in records:
            print(_summary(meta["kind"], record))
    return records


def _json_ready(meta: dict, result: dict, original_size: tuple[int, int]) -> dict[str, Any]:
    """Plain-Python predictions; detection boxes rescaled from the model's input to the original image."""
    if meta["kind"] == "classification":
        return {"label": result["label"], "score": result["score"],
                "probabilities": dict(zip(meta["classes"], result["probabilities"], strict=True))}
    if meta["kind"] == "segmentation":
        counts = np.bincount(result["mask"].ravel(), minlength=len(meta["classes"]))
        return {"pixels_per_class": {meta["classes"][k]: int(c) for k, c in enumerate(counts) if c}}
    _, height, width = meta["input_shape"]
    scale = np.array([original_size[0] / width, original_size[1] / height] * 2, dtype=np.float32)
    return {"detections": [{"label": label, "score": float(score), "box": (box * scale).round(1).tolist()}
                           for box, label, score in zip(result["boxes"], result["labels"], result["scores"],
                                                        strict=True)]}


def _draw_detections(out: Path, path: Path, original: Any, record: dict, meta: dict) -> Path:
    from xpvision import atomic
    from xpvision.detection.predict import draw_detections

    detections = record["detections"]
    boxes = np.array([d["box"] for d in detections], dtype=np.float32).reshape(-1, 4)  # (R, 4)
    labels = np.array([meta["classes"].index(d["label"]) for d in detections], dtype=np.int64)
    scores = np.array([d["score"] for d in detections], dtype=np.float32)
    drawn = draw_detections(np.asarray(original.convert("RGB")), boxes, labels, scores, meta["classes"])
    target = out / f"{path.stem}_detections.png"
    with atomic.atomic_path(target) as tmp:
        drawn.save(tmp, format="PNG")
    return target


def _write_overlay(out: Path, path: Path, original: Any, mask: np.ndarray) -> Path:
    from PIL import Image

    from xpvision.segmentation.predict import write_prediction_images

    # the mask is at the model's input size: draw it on the image at that size, nearest-neighbour for labels
    resized = np.asarray(original.convert("RGB").resize(mask.shape[::-1], Image.BILINEAR))  # (H, W, 3)
    write_prediction_images(out, [resized], [mask], [f"{path.stem}_overlay"])
    return out / f"{path.stem}_overlay.png"


def _summary(kind: str, record: dict) -> str:
    if kind == "classification":
        return f"{record['image']}: {record['label']} ({record['score']:.3f})"
    if kind == "detection":
        found = ", ".join(f"{d['label']} {d['score']:.2f}" for d in record["detections"]) or "nothing"
        return f"{record['image']}: {found} -> {record['output']}"
    classes = ", ".join(name for name in record["pixels_per_class"] if name != "background") or "background"
    return f"{record['image']}: {classes} -> {record['output']}"
