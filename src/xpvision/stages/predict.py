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

DEFAULT_OUT = "predictions"


def run(images: Sequence[str], model_dir: str, *, as_json: bool = False, out_dir: str | None = None,
        score_threshold: float = 0.3, device: str = "cpu") -> list[dict[str, Any]]:
    from xpvision.export.inference import load_trained_model, predict, read_images
    from xpvision.tasks import task_class

    model, meta = load_trained_model(model_dir)
    model.to(device)
    task = task_class(meta["kind"])
    pixels, originals = read_images(images, meta)
    results = predict(model, meta, pixels, score_threshold=score_threshold)
    out = Path(out_dir or DEFAULT_OUT)
    records = []
    for path, original, result in zip(images, originals, results, strict=True):
        record = {"image": str(path), **task.prediction_record(meta, result, original.size)}
        written = task.write_prediction(out, Path(path), original, record, result, meta)
        if written is not None:
            record["output"] = str(written)
        records.append(record)
    if as_json:
        json.dump(records, sys.stdout, indent=2)
        print()
    else:
        for record in records:
            print(task.describe(record))
    return records
