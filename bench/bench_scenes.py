"""The download stage's work for digit-scenes (params.yaml's block of a task): generating the scenes and
writing the shards, with 1 worker process and with the default (every core), each run in its own process,
alternating. Each run also hashes what it wrote, to show that the bytes are the same.

    python bench/bench_scenes.py                          # segmentation's block, 1 round
    python bench/bench_scenes.py --task detection --rounds 2 --workers 1 2

Benchmarks are not tests: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tree_sha256(folder: Path) -> str:
    """One SHA-256 over every file's relative path and bytes, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run(task: str, workers: int | None) -> None:
    """One process: ``prepare`` as the stage calls it (digits, scenes, shards), then ``prepare`` again on the
    same raw folder (the scenes are kept: reading them back and writing the shards alone)."""
    from dataclasses import replace

    from xpvision.config import load_params
    from xpvision.data.prepare import prepare
    from xpvision.stages.download import prepare_config

    config = replace(prepare_config(task, load_params().download[task]), workers=workers)
    with tempfile.TemporaryDirectory(prefix="bench-scenes-") as scratch:
        raw, out = Path(scratch) / "raw", Path(scratch) / "processed"
        start = time.perf_counter()
        summary = prepare(config, raw, out)
        total = time.perf_counter() - start
        start = time.perf_counter()
        prepare(config, raw, Path(scratch) / "again")
        shards = time.perf_counter() - start
        print(json.dumps({"total_s": total, "shards_s": shards, "images": summary["train"] + summary["test"],
                          "scenes_sha256": tree_sha256(raw / "digit-scenes"),
                          "processed_sha256": tree_sha256(out)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="segmentation", choices=("detection", "segmentation"))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", nargs="+", default=["1", "default"],
                        help="worker counts to alternate ('default': every core)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run(args.task, None if args.run == "default" else int(args.run))
        return
    print(f"digit-scenes for {args.task}, {len(os.sched_getaffinity(0))} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    for r in range(1, args.rounds + 1):
        for workers in args.workers:
            done = subprocess.run([sys.executable, __file__, "--task", args.task, "--run", workers],
                                  capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"round {r}  workers {workers:>7s}  {result['images']} images  digits + scenes + shards "
                  f"{result['total_s']:6.1f} s  shards alone {result['shards_s']:5.1f} s  scenes "
                  f"{result['scenes_sha256'][:12]}  processed {result['processed_sha256'][:12]}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
