"""Time ``xpvision.detection.nms.nms`` on 5,000 boxes against the vectorised NumPy greedy loop.

Usage: ``python bench/bench_nms.py [--boxes 5000] [--repeat 15]``. Not a test: prints a table of the best and
median times per box layout and IoU threshold (the best is the figure to quote on a shared machine), checks
that both give the same indices, and prints the load average before and after.
Layouts: ``uniform`` (sides 10-100 px in a 1000 px image: sparse overlaps), ``clustered`` (50 objects, many
near-duplicates each, as a detector's raw output), ``large`` (torchvision's benchmark style: sides up to
512 px, dense overlaps).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from xpvision.detection.nms import nms


def greedy_loop(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """The textbook vectorised greedy NMS: keep the best box, drop its overlaps, repeat."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0)
        h = np.maximum(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0)
        inter = w * h
        order = rest[~(inter / (area[i] + area[rest] - inter) > np.float32(threshold))]
    return np.array(keep, dtype=np.int64)


def make_boxes(layout: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if layout == "uniform":
        xy = rng.uniform(0, 1000, (n, 2))
        wh = rng.uniform(10, 100, (n, 2))
    elif layout == "clustered":
        xy = rng.uniform(0, 900, (50, 2))[rng.integers(0, 50, n)] + rng.normal(0, 8, (n, 2))
        wh = 40 + rng.normal(0, 5, (n, 2))
    else:
        xy = rng.uniform(0, 512, (n, 2))
        wh = rng.uniform(0, 512, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def time_ms(fn, repeat: int) -> tuple[float, float, np.ndarray]:
    """Best and median wall time of ``repeat`` calls, in ms, and the last result."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times), 1e3 * float(np.median(times)), result


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{args.boxes} boxes, best / median of {args.repeat} runs, load average {load_average()}")
    print(f"{'layout':<10}{'iou':>5}{'kept':>7}{'xpvision ms':>16}{'greedy loop ms':>18}{'speed-up':>10}")
    for layout in ("uniform", "clustered", "large"):
        boxes = make_boxes(layout, args.boxes, rng)
        scores = rng.random(args.boxes).astype(np.float32)
        for threshold in (0.5, 0.7):
            ours_best, ours_median, ours = time_ms(lambda b=boxes, s=scores, t=threshold: nms(b, s, t),
                                                   args.repeat)
            ref_best, ref_median, ref = time_ms(lambda b=boxes, s=scores, t=threshold: greedy_loop(b, s, t),
                                                args.repeat)
            assert np.array_equal(ours, ref), f"{layout} {threshold}: indices differ"
            speed_up = ref_best / ours_best
            print(f"{layout:<10}{threshold:>5}{len(ours):>7}{ours_best:>9.1f} / {ours_median:<5.1f}"
                  f"{ref_best:>11.1f} / {ref_median:<5.1f}{speed_up:>8.1f}x")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
