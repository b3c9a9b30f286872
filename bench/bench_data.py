"""Time the offline default data path: ``download`` (generate + shard) and ``augment`` for the three tasks
with the default params, then DataLoader throughput. Prints a table; never part of the test suite.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python bench/bench_data.py [--scenes 1000 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

AFFINE_SMALL = {"name": "Affine", "scale": [0.9, 1.1], "translate_percent": [-0.05, 0.05], "p": 0.5}
TRANSFORMS = {
    "classification": [{"name": "Affine", "rotate": [-10, 10], "translate_percent": [-0.08, 0.08],
                        "scale": [0.9, 1.1], "p": 0.7}, {"name": "Standardize", "scope": "dataset"}],
    "detection": [AFFINE_SMALL, {"name": "RandomBrightnessContrast", "p": 0.5},
                  {"name": "Standardize", "scope": "dataset"}],
    "segmentation": [AFFINE_SMALL, {"name": "RandomBrightnessContrast", "p": 0.5},
                     {"name": "Standardize", "scope": "dataset"}],
}


def main() -> None:
    from xpvision.data.augment import augment_dataset
    from xpvision.data.loader import DataLoader, Normalization
    from xpvision.data.prepare import PrepareConfig, prepare
    from xpvision.data.scenes import SceneConfig
    from xpvision.data.shards import ShardDataset

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, nargs=2, default=(1000, 200), metavar=("TRAIN", "TEST"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        total = time.perf_counter()
        for task, seed in (("classification", 0), ("detection", 0), ("segmentation", 1)):
            if task == "classification":
                config = PrepareConfig(source="digits", task=task)
            else:
                config = PrepareConfig(source="digit-scenes", task=task, scenes=SceneConfig(
                    n_train=args.scenes[0], n_test=args.scenes[1], seed=seed))
            start = time.perf_counter()
            summary = prepare(config, root / "raw" / task, root / task)
            rows.append((f"download {task}", time.perf_counter() - start, summary["train"] + summary["test"]))
            start = time.perf_counter()
            result = augment_dataset(root / task / "train", root / f"{task}-aug", TRANSFORMS[task], copies=1,
                                     preview_path=root / f"{task}.png", preview_count=16)
            rows.append((f"augment {task}", time.perf_counter() - start, result["count"]))
        rows.append(("download + augment, all tasks", time.perf_counter() - total, 0))
        for task in ("classification", "detection"):
            dataset = ShardDataset(root / f"{task}-aug")
            loader = DataLoader(dataset, 100, shuffle=True, seed=0,
                                normalization=Normalization.from_meta(dataset.meta))
            start = time.perf_counter()
            count = sum(len(batch["indices"]) for batch in loader)
            rows.append((f"one epoch of DataLoader({task}, 100)", time.perf_counter() - start, count))
    print(f"{'step':44s} {'seconds':>8s} {'samples':>8s} {'samples/s':>10s}")
    for name, seconds, count in rows:
        rate = f"{count / seconds:10.0f}" if count else ""
        print(f"{name:44s} {seconds:8.2f} {count or '':>8} {rate}")


if __name__ == "__main__":
    main()
