"""Optimizer step speed: xpvision's flat-buffer updates against torch.optim on the same parameter shapes.

For each model (DeepConvNet, the small ResNet, and a wide 2-layer MLP with ~4M parameters) and each
optimizer, one ``step()`` is timed per implementation in turn (interleaved, so drifts of the machine's speed
hit both alike); the table shows medians in milliseconds and the ratio xpvision / PyTorch (< 1 is faster).

    python bench/bench_optim.py            # torch.set_num_threads(2)
    python bench/bench_optim.py --quick    # smoke run

Benchmarks are not tests: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from xpvision import optim
from xpvision.models import build_model
from xpvision.nn import Linear, ReLU, Sequential

OPTIMIZERS = {"SGD": ("SGD", {}), "Momentum": ("SGD", {"momentum": 0.9}), "Adam": ("Adam", {}),
              "AdamW": ("AdamW", {})}


def models():
    yield "deep_convnet", build_model("deep_convnet")
    yield "resnet_small", build_model("resnet_small")
    yield "mlp_4M", Sequential(Linear(2048, 1024), ReLU(), Linear(1024, 2048))


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    repeats, rounds = (3, 2) if args.quick else (20, 5)
    print(f"{'model':<14}{'params':>10} {'optimizer':<10}{'xpvision ms':>12}{'torch ms':>10}{'ratio':>8}")
    for name, model in models():
        rs = np.random.default_rng(0)
        for _, layer, key in model.named_parameters():
            layer.grads[key][...] = rs.standard_normal(layer.grads[key].shape)
        tparams = [torch.tensor(layer.params[key].copy()) for _, layer, key in model.named_parameters()]
        for t, (_, layer, key) in zip(tparams, model.named_parameters(), strict=True):
            t.grad = torch.tensor(layer.grads[key].copy())
        for label, (torch_name, extra) in OPTIMIZERS.items():
            ours = optim.build_optimizer(label, model, lr=1e-3)
            theirs = getattr(torch.optim, torch_name)(tparams, lr=1e-3, **extra)
            ours.step()  # warm-up: state buffers are allocated on the first step
            theirs.step()
            ours_ms, theirs_ms = [], []
            for _ in range(rounds):
                ours_ms.append(timed(ours.step, repeats))
                theirs_ms.append(timed(theirs.step, repeats))
            a, b = statistics.median(ours_ms), statistics.median(theirs_ms)
            print(f"{name:<14}{model.num_parameters():>10} {label:<10}{a:>12.3f}{b:>10.3f}{a / b:>8.2f}")


if __name__ == "__main__":
    main()
