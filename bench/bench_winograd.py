"""DeepConvNet's 3x3 convolutions, one by one: Winograd F(2x2, 3x3) against im2col + GEMM, interleaved.

For every convolution of ``deep_convnet()`` on 1x28x28 inputs (with its fused ReLU / 2x2 max pool) and every
case of bench_convnet.py (a training step's forward + backward at batch 100 and 256, inference at batch
1000), both kernels of the tuned engine run on the same float32 inputs, one after the other in each repeat;
the table shows medians and best times and the ratios Winograd / im2col of each (below 1: Winograd is
faster; on a shared machine the best of the repeats is the least disturbed figure). The training
backward computes the input gradient except for conv1, as in training (``needs_input_grad = False``).

    python bench/bench_winograd.py                 # 2 threads, 9 repeats
    python bench/bench_winograd.py --threads 1 --repeats 5

Benchmarks are not tests: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from xpvision.models import deep_convnet
from xpvision.nn import Conv2d, MaxPool2d, ReLU, convblock, parallel, winograd
from xpvision.nn.convblock import ConvGeometry, Scratch

CASES = (("train", 100), ("train", 256), ("infer", 1000))
METHODS = {"im2col": convblock, "winograd": winograd}


def conv_layers(size: int = 28) -> list[tuple[str, Conv2d, bool, bool, tuple[int, int]]]:
    """``(name, layer, relu, pool, input (H, W))`` for each convolution of DeepConvNet, with what it fuses."""
    layers = [item for item in deep_convnet().named_layers()]
    result = []
    hw = (size, size)
    for i, (name, layer) in enumerate(layers):
        if not isinstance(layer, Conv2d):
            continue
        following = [type(lay) for _, lay in layers[i + 1:i + 3]]
        relu = ReLU in following
        pool = following == [ReLU, MaxPool2d]
        result.append((name.split(".")[-1], layer, relu, pool, hw))
        out = layer.output_size(*hw)
        hw = (out[0] // 2, out[1] // 2) if pool else out
    return result


def runner(method, layer: Conv2d, relu: bool, pool: bool, hw: tuple[int, int], kind: str, batch: int,
           need_input: bool):
    data = np.random.default_rng(0)
    x = data.standard_normal((batch, *hw, layer.in_ch), dtype=np.float32)
    w, b = layer.params["W"], layer.params["b"]
    geom = ConvGeometry((3, 3), (1, 1), (1, 1), layer.padding, hw, layer.output_size(*hw))
    scratch = Scratch()
    training = kind == "train"
    dy = None

    def run() -> None:
        nonlocal dy
        y, saved = method.conv2d(x, w, b, geom, relu=relu, pool=pool, training=training, scratch=scratch)
        if training:
            if dy is None:
                dy = data.standard_normal(y.shape, dtype=np.float32)
            method.conv2d_backward(dy, saved, need_params=True, need_bias=True, need_input=need_input,
                                   scratch=scratch)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", nargs="*", help="only these convolutions (conv1 ... conv6)")
    args = parser.parse_args(argv)
    parallel.set_num_threads(args.threads)
    layers = [item for item in conv_layers() if not args.layers or item[0] in args.layers]
    runs = {}
    for name, layer, relu, pool, hw in layers:
        for kind, batch in CASES:
            for label, method in METHODS.items():
                runs[(name, kind, batch, label)] = runner(method, layer, relu, pool, hw, kind, batch,
                                                          need_input=name != "conv1")
    times: dict[tuple, list[float]] = {key: [] for key in runs}
    load_before = os.getloadavg()[0]
    for r in range(args.repeats + 1):  # the first round warms up (buffers, BLAS)
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            if r:
                times[key].append(time.perf_counter() - start)
    print(f"DeepConvNet 3x3 convolutions, float32, {args.threads} threads, median of {args.repeats} "
          f"interleaved repeats (ms); load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    print(f"{'layer':<7}{'I->O':>7}{'H x W':>8}{'fused':>11}{'case':>18}{'median im2col':>15}{'winograd':>10}"
          f"{'ratio':>7}{'best im2col':>13}{'winograd':>10}{'ratio':>7}")
    for name, layer, relu, pool, hw in layers:
        fused = "+".join(t for t, on in (("relu", relu), ("pool", pool)) if on) or "-"
        for kind, batch in CASES:
            cells = ""
            for stat, width in ((statistics.median, 15), (min, 13)):
                ms = [stat(times[(name, kind, batch, label)]) * 1e3 for label in METHODS]
                cells += f"{ms[0]:>{width}.2f}{ms[1]:>10.2f}{ms[1] / ms[0]:>7.2f}"
            print(f"{name:<7}{f'{layer.in_ch}->{layer.out_ch}':>7}{f'{hw[0]}x{hw[1]}':>8}{fused:>11}"
                  f"{f'{kind} batch {batch}':>18}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
