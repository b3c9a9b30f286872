"""NMS on the GPU over inputs that reach every branch of its kernels, compared with the CPU's answer.

Run under ``compute-sanitizer --tool memcheck`` by `make gpu-check`: sizes around the 64-box block edges,
an empty input, a single box, ties, float16/32/64 boxes and ``batched_nms`` groups.
"""

from __future__ import annotations

import sys

import numpy as np

from xpvision import backend
from xpvision.detection.nms import batched_nms, nms


def boxes_and_scores(rng: np.random.Generator, n: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(4, 60, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(dtype)
    scores = np.round(rng.random(n), 2).astype(dtype)  # rounded: ties between scores
    return boxes, scores


def main() -> int:
    cp = backend.xp_for("gpu")
    rng = np.random.default_rng(0)
    mismatches = 0
    for n in (0, 1, 63, 64, 65, 130, 1000):
        for dtype in (np.float16, np.float32, np.float64):
            boxes, scores = boxes_and_scores(rng, n, dtype)
            want = nms(boxes, scores, 0.5)
            got = backend.to_numpy(nms(cp.asarray(boxes), cp.asarray(scores), 0.5))
            groups = rng.integers(0, 4, n)
            want_b = batched_nms(boxes, scores, groups, 0.5)
            on_gpu = [cp.asarray(a) for a in (boxes, scores, groups)]
            got_b = backend.to_numpy(batched_nms(*on_gpu, 0.5))
            if not (np.array_equal(want, got) and np.array_equal(want_b, got_b)):
                mismatches += 1
                print(f"mismatch: n={n} dtype={np.dtype(dtype).name}")
    cp.cuda.runtime.deviceSynchronize()
    print(f"nms probe: {mismatches} mismatches between CPU and GPU")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
