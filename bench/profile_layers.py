"""Where a DeepConvNet step goes, layer by layer: the median time of each layer's forward (and, in a
training step, its backward, the loss and Adam) over repeated steps of one case of bench_convnet.py.

The default is one process's part of ``bench_convnet.py --processes 2``'s inference: 500 samples at one
thread. ``--beside`` runs the same case in a second process on the other cores at the same time, as the two
processes of the group run (their memory traffic and the cores' clocks are then shared).

    python bench/profile_layers.py                              # inference, batch 500, 1 thread
    python bench/profile_layers.py --beside                     # the same, beside a twin process
    python bench/profile_layers.py --kind train --batch 50      # one process's part of training at batch 100

A layer's time includes the ReLU and pool it fuses (they then show no time of their own). Benchmarks are
not tests: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np

from bench_convnet import blas_description
from xpvision.models import deep_convnet
from xpvision.nn import SoftmaxCrossEntropy, heap, parallel, rng
from xpvision.optim import Adam


def timed(times: dict[str, list[float]], key: str, method):
    """``method``, adding the duration of each call to ``times[key]``."""
    def call(*args):
        start = time.perf_counter()
        result = method(*args)
        times[key].append(time.perf_counter() - start)
        return result
    return call


def time_every_layer(model, loss, optimizer, times: dict[str, list[float]]) -> None:
    """Make every leaf layer of ``model`` (``'forward conv1'``, ``'backward conv1'``, ...), the loss and the
    optimizer add their calls' durations to ``times``, by instance attributes over their methods."""
    for name, layer in model.named_layers():
        if next(layer.children(), None) is not None:
            continue  # a container: its time is its layers'
        short = name.split(".")[-1]
        for method in ("forward", "forward_fused", "backward"):
            kind = "backward" if method == "backward" else "forward"
            setattr(layer, method, timed(times, f"{kind} {short}", getattr(layer, method)))
    loss.forward = timed(times, "loss forward", loss.forward)
    loss.backward = timed(times, "loss backward", loss.backward)
    optimizer.step = timed(times, "Adam step", optimizer.step)


def profile(kind: str, batch: int, threads: int, repeats: int) -> tuple[list[float], dict[str, list[float]]]:
    """``(step times, per-layer times)`` of ``repeats`` steps after two untimed ones."""
    heap.configure()
    parallel.set_num_threads(threads)
    rng.manual_seed(0)
    model = deep_convnet()
    model.needs_input_grad = False
    optimizer, loss = Adam(model, lr=1e-3), SoftmaxCrossEntropy()
    data = np.random.default_rng(0)
    x, y = data.random((batch, 1, 28, 28), dtype=np.float32), data.integers(0, 10, batch)
    times: dict[str, list[float]] = defaultdict(list)
    time_every_layer(model, loss, optimizer, times)
    steps = []
    for r in range(repeats + 2):
        start = time.perf_counter()
        if kind == "train":
            model.train()
            loss.forward(model.forward(x), y)
            model.backward(loss.backward())
            optimizer.step()
        else:
            model.eval()
            model.forward(x)
        steps.append(time.perf_counter() - start)
        if r < 2:
            times.clear()
    return steps[2:], times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("infer", "train"), default="infer")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--beside", action="store_true", help="run a twin process at the same time")
    args = parser.parse_args(argv)
    twin = None
    if args.beside:
        command = [sys.executable, __file__, "--kind", args.kind, "--batch", str(args.batch), "--threads",
                   str(args.threads), "--repeats", str(args.repeats + 10)]  # outlasts this process's steps
        twin = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    steps, times = profile(args.kind, args.batch, args.threads, args.repeats)
    if twin is not None:
        twin.wait()
    print(f"DeepConvNet {args.kind} at batch {args.batch}, {args.threads} thread(s)"
          f"{', beside a twin process' if twin else ''}, median of {args.repeats} steps (ms); load average "
          f"{os.getloadavg()[0]:.1f}")
    print(blas_description())
    print(f"{'step':<22}{statistics.median(steps) * 1e3:>8.2f}")
    for key, values in times.items():
        print(f"{key:<22}{statistics.median(values) * 1e3:>8.2f}")
    print(f"{'sum of the layers':<22}{sum(statistics.median(v) for v in times.values()) * 1e3:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
