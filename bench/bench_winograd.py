"""DeepConvNet's 3x3 convolutions, one by one: Winograd F(2x2, 3x3) against im2col + GEMM, interleaved.

For every convolution of ``deep_convnet()`` on 1x28x28 inputs (with its fused ReLU / 2x2 max pool) and every
case of bench_convnet.py (a training step's forward + backward at batch 100 and 256, inference at batch
1000), both kernels of the tuned engine run on the same float32 inputs, one after the other in each repeat;
the table shows medians and best times and the ratios Winograd / im2col of each (below 1: Winograd is
faster; on a shared machine the best of the repeats is the least disturbed figure). The training
backward computes the input gradient except for conv1, as in training (``needs_input_grad = False``).

    python bench/bench_winograd.py                 # 2 threads, 9 repeats
    python bench/bench_winograd.py --threads 1 --repeats 5
    python bench/bench_winograd.py --pieces        # the forward's pieces on one chunk, 1 thread

``--pieces`` times the pieces of one forward chunk (the samples :func:`xpvision.nn.winograd.forward` and
:func:`xpvision.nn.convblock.conv_forward` put in one, at batch 100), each called 200 times in a row, 10th
percentile: Winograd's input transform, 16 GEMMs and output transform against im2col's copy and GEMM.

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
from xpvision.models import deep_convnet
from xpvision.nn import Conv2d, MaxPool2d, ReLU, convblock, parallel, winograd
from xpvision.nn import functional as F
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
    grads = {"W": np.empty_like(w), "b": np.empty_like(b)}

    def run() -> None:
        nonlocal dy
        y, saved = method.conv2d(x, w, b, geom, relu=relu, pool=pool, training=training, scratch=scratch)
        if training:
            if dy is None:
                dy = data.standard_normal(y.shape, dtype=np.float32)
            method.conv2d_backward(dy, saved, grads=grads, need_input=need_input, scratch=scratch)

    return run


def pieces(layers, calls: int = 200) -> None:
    """Microseconds per forward chunk, piece by piece, at 1 thread (see the module docstring)."""
    print(f"forward chunk pieces, float32, 1 thread, 10th percentile of {calls} calls (us); load average "
          f"{os.getloadavg()[0]:.1f}")
    print(blas_description())
    print(f"{'layer':<7}{'chunk':>6}{'V = BtdB':>10}{'16 GEMMs':>10}{'GFLOP/s':>9}{'Y = AtMA':>10}{'sum':>8}"
          f"{'im2col copy':>13}{'GEMM':>8}{'GFLOP/s':>9}{'sum':>8}")
    with parallel.single_threaded_blas():
        for name, layer, _, _, hw in layers:
            m, wino, flops, im2col = chunk_pieces(layer, hw, calls)
            print(f"{name:<7}{m:>6}{wino[0]:>10.1f}{wino[1]:>10.1f}{flops * 16 / 36 / wino[1] / 1e3:>9.0f}"
                  f"{wino[2]:>10.1f}{sum(wino):>8.1f}{im2col[0]:>13.1f}{im2col[1]:>8.1f}"
                  f"{flops / im2col[1] / 1e3:>9.0f}{sum(im2col):>8.1f}")


def chunk_pieces(layer: Conv2d, hw: tuple[int, int], calls: int):
    """``(m, winograd, flops, im2col)``: the samples ``m`` of one Winograd chunk at batch 100, the times of
    its three pieces, im2col's FLOPs for ``m`` samples and the times of im2col's two pieces scaled to ``m``
    samples (its chunks hold other sample counts)."""
    def timed(function) -> float:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return float(np.percentile(times, 10)) * 1e6

    data = np.random.default_rng(0)
    (oh, ow), c, o = layer.output_size(*hw), layer.in_ch, layer.out_ch
    th, tw = winograd.tiles((oh, ow))
    m = F.block_and_chunk(100, oh * ow, np, winograd.TILE_ELEMENTS_PER_PIXEL * c)[1]  # as winograd.forward
    xpar = data.standard_normal((m, 2, 2, th + 1, tw + 1, c), dtype=np.float32)
    u = data.standard_normal((16, c, o), dtype=np.float32)
    v, mm = np.empty((16, m, th, tw, c), np.float32), np.empty((16, m, th, tw, o), np.float32)
    cols = np.empty((4, m, 2, th + 1, tw, c), np.float32)
    rows, taps = np.empty((2, 4, m, th, tw, o), np.float32), np.empty((4, m, th, tw, o), np.float32)
    wino = [timed(lambda: winograd.input_transform(xpar, v, cols)),
            timed(lambda: np.matmul(v.reshape(16, -1, c), u, out=mm.reshape(16, -1, o))),
            timed(lambda: winograd.output_transform(mm, taps, rows))]
    k = F.block_and_chunk(100, oh * ow, np, 9 * c + 1)[1]  # as convblock.conv_forward
    xpad = data.standard_normal((k, oh + 2, ow + 2, c), dtype=np.float32)
    fields = F.windows(xpad, (3, 3), (1, 1), (1, 1), (oh, ow))  # (k, OH, OW, 3, 3, C)
    matrix = np.ones((k * oh * ow, 9 * c + 1), np.float32)  # the last column: ones for the bias
    w_mat = data.standard_normal((9 * c + 1, o), dtype=np.float32)
    y = np.empty((k * oh * ow, o), np.float32)
    im2col = [timed(lambda: matrix[:, :-1].reshape(fields.shape).__setitem__(Ellipsis, fields)) * m / k,
              timed(lambda: convblock._gemm(matrix, w_mat, y)) * m / k]
    return m, wino, 2 * m * oh * ow * 9 * c * o, im2col


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", nargs="*", help="only these convolutions (conv1 ... conv6)")
    parser.add_argument("--pieces", action="store_true", help="time the pieces of one forward chunk instead")
    args = parser.parse_args(argv)
    parallel.set_num_threads(args.threads)
    layers = [item for item in conv_layers() if not args.layers or item[0] in args.layers]
    if args.pieces:
        pieces(layers)
        return 0
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
    print(blas_description())
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
