"""Training-step time of the segmentation_ft network (FCN-8s on DeepConvNet, 96 px, batch 4, Adam), three
ways in one process, interleaved round by round: the tuned engine with the encoder fused (the default), the
tuned engine layer by layer (``fcn.fusion = False``), and the reference engine.

    python bench/bench_fcn_step.py                 # 10 rounds, the default thread count
    python bench/bench_fcn_step.py --rounds 20 --batch 8
    XPVISION_NUM_THREADS=1 python bench/bench_fcn_step.py

Each round times every variant once (an untimed step, then the best of ``--steps`` steps); the table shows
medians over rounds and each variant's median per-round ratio to the default. Benchmarks are not tests: the
numbers depend on the machine and on what else runs on it (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from xpvision import optim
from xpvision.nn import engine, parallel, rng
from xpvision.segmentation.fcn import build_fcn
from xpvision.tasks import SegmentationTask

NUM_CLASSES = 11
VARIANTS = (("tuned, fused encoder", "tuned", True), ("tuned, layer by layer", "tuned", False),
            ("reference", "reference", True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2, help="steps per variant and round (best is kept)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    rs = np.random.default_rng(0)
    batch = {"images": rs.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32),
             "masks": rs.integers(0, NUM_CLASSES, (args.batch, args.size, args.size))}
    task = SegmentationTask(NUM_CLASSES)
    setups = []
    for _, kernels, fusion in VARIANTS:
        engine.set_engine(kernels)
        rng.manual_seed(0)
        model = build_fcn("8s", in_channels=3, num_classes=NUM_CLASSES, backbone="deep_convnet",
                          encoder_stride=16, extra_channels=[128])
        model.train()
        model.needs_input_grad = False
        model.fusion = fusion
        setups.append((kernels, model, optim.Adam(model, lr=1e-4)))
    load_before = os.getloadavg()[0]

    def step(kernels, model, opt) -> float:
        engine.set_engine(kernels)
        start = time.perf_counter()
        opt.zero_grad()
        _, dout = task.forward_loss(model, batch)
        model.backward(dout)
        opt.step()
        return time.perf_counter() - start

    for setup in setups:  # warm-up: buffers, plans
        step(*setup)
    times = [[] for _ in setups]
    for _ in range(args.rounds):
        for i, setup in enumerate(setups):
            step(*setup)  # untimed: lets the previous variant's BLAS threads go idle, refills the caches
            times[i].append(min(step(*setup) for _ in range(args.steps)))
    print(f"segmentation_ft training step, batch {args.batch}, {args.size} px, {parallel.get_num_threads()} "
          f"threads, median of {args.rounds} interleaved rounds; load average {load_before:.1f} -> "
          f"{os.getloadavg()[0]:.1f} on {parallel.available_cores()} available cores")
    print(f"{'variant':28s} {'ms':>8s} {'ratio to default':>18s}")
    for (name, _, _), variant in zip(VARIANTS, times, strict=True):
        ratio = statistics.median(t / d for t, d in zip(variant, times[0], strict=True))
        print(f"{name:28s} {1000 * statistics.median(variant):8.1f} {ratio:18.2f}")


if __name__ == "__main__":
    main()
