"""A max pool other than 2x2 stride 2 (a ResNet stem's 3x3 stride 2, padding 1): xpvision's tuned and
reference kernels against PyTorch (channels_last), interleaved, at one thread.

Cases: training (forward keeping the index, then backward) and evaluation (forward alone), float32, on
``(64, 64, 56, 56)`` inputs. Every repeat times each implementation once per case in turn; the table shows
medians.

    python bench/bench_pool.py
    python bench/bench_pool.py --repeats 5 --shape 16 64 112 112

Benchmarks are not tests: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from bench_convnet import blas_description
from xpvision.nn import MaxPool2d, engine, parallel
from xpvision.nn import functional as F


def xpvision_runners(name: str, x: np.ndarray, dy: np.ndarray) -> dict:
    """The cases on one layer of engine ``name`` (kept, as a model keeps it: its buffers are reused), fed as
    inside a model: an NCHW-shaped view of a channels-last buffer."""
    layer = MaxPool2d(3, stride=2, padding=1)
    x, dy = (F.nchw(np.ascontiguousarray(a.transpose(0, 2, 3, 1))) for a in (x, dy))  # (N, C, H, W) views

    def train() -> None:
        engine.set_engine(name)
        layer.train().forward(x)
        layer.backward(dy)

    def infer() -> None:
        engine.set_engine(name)
        layer.eval().forward(x)

    return {"train": train, "infer": infer}


def torch_runners(x: np.ndarray, dy: np.ndarray) -> dict:
    import torch

    torch.set_num_threads(1)
    pool = torch.nn.MaxPool2d(3, 2, 1)
    xt = torch.tensor(x).contiguous(memory_format=torch.channels_last).requires_grad_()
    dyt = torch.tensor(dy).contiguous(memory_format=torch.channels_last)

    def train() -> None:
        xt.grad = None
        pool(xt).backward(dyt)

    def infer() -> None:
        with torch.no_grad():
            pool(xt)

    return {"train": train, "infer": infer}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--shape", type=int, nargs=4, default=(64, 64, 56, 56), metavar=("N", "C", "H", "W"))
    args = parser.parse_args(argv)
    parallel.set_num_threads(1)
    data = np.random.default_rng(0)
    x = data.standard_normal(args.shape, dtype=np.float32)
    out = (args.shape[0], args.shape[1], (args.shape[2] - 1) // 2 + 1, (args.shape[3] - 1) // 2 + 1)
    dy = data.standard_normal(out, dtype=np.float32)
    impls = {"xpvision tuned": xpvision_runners("tuned", x, dy),
             "xpvision reference": xpvision_runners("reference", x, dy),
             "torch channels_last": torch_runners(x, dy)}
    times = {(impl, case): [] for impl in impls for case in ("train", "infer")}
    load = os.getloadavg()[0]
    for r in range(args.repeats + 1):  # the first round warms up
        for case in ("train", "infer"):
            for impl, runners in impls.items():
                start = time.perf_counter()
                runners[case]()
                if r:
                    times[(impl, case)].append(time.perf_counter() - start)
    engine.set_engine(None)
    print(f"MaxPool2d(3, stride=2, padding=1) on {tuple(args.shape)} float32, 1 thread, median of "
          f"{args.repeats} interleaved repeats (ms); load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(blas_description())
    print(f"{'case':<8}" + "".join(f"{impl:>22}" for impl in impls) + f"{'tuned / torch':>16}")
    for case in ("train", "infer"):
        ms = [statistics.median(times[(impl, case)]) * 1e3 for impl in impls]
        print(f"{case:<8}" + "".join(f"{m:>22.1f}" for m in ms) + f"{ms[0] / ms[2]:>16.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
