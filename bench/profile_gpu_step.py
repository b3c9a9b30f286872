"""Where a CuPy DeepConvNet step spends its time: host dispatch against device time, layer by layer.

For a training step at batch 256 and inference at batch 1000 it prints the host (CPU) time to issue the
step and the device (GPU) time from CUDA events (``cupyx.profiler.benchmark``): when the two are close, the
step is bound by Python and kernel launches rather than by the GPU's arithmetic. Then, per top-level layer,
the host and device time of its forward and backward (each call between two CUDA events).

    PYTHONPATH=src python3 bench/profile_gpu_step.py
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

import numpy as np

from xpvision import backend
from xpvision.models import deep_convnet
from xpvision.nn import SoftmaxCrossEntropy, rng
from xpvision.optim import Adam


def main() -> int:
    if not backend.gpu_available():
        print("needs CuPy with a CUDA device", file=sys.stderr)
        return 2
    cp = backend.xp_for("gpu")
    from cupyx.profiler import benchmark

    rng.manual_seed(0)
    model = deep_convnet()
    model.to("gpu")
    model.needs_input_grad = False
    optimizer, loss = Adam(model, lr=1e-3), SoftmaxCrossEntropy()
    data = np.random.default_rng(0)
    x256 = cp.asarray(data.random((256, 1, 28, 28), dtype=np.float32))
    y256 = cp.asarray(data.integers(0, 10, 256))
    x1000 = cp.asarray(data.random((1000, 1, 28, 28), dtype=np.float32))

    def train():
        model.train()
        loss.forward(model.forward(x256), y256)
        model.backward(loss.backward())
        optimizer.step()

    def infer():
        model.eval()
        model.forward(x1000)

    for name, fn in (("train batch 256", train), ("infer batch 1000", infer)):
        result = benchmark(fn, n_repeat=30, n_warmup=5)
        print(f"{name:<18} host {1e3 * result.cpu_times.mean():6.2f} ms   device "
              f"{1e3 * result.gpu_times.mean():6.2f} ms")

    times: dict[str, list] = defaultdict(list)  # (layer.method) -> [(host s, start event, end event)]
    for name, layer in model.named_layers():
        if "." in name:
            continue
        for method in ("forward", "forward_fused", "backward"):
            original = getattr(layer, method, None)
            if original is None:
                continue

            def timed(*args, _original=original, _key=f"{name}.{method}", **kwargs):
                start, end = cp.cuda.Event(), cp.cuda.Event()
                start.record()
                tic = time.perf_counter()
                out = _original(*args, **kwargs)
                host = time.perf_counter() - tic
                end.record()
                times[_key].append((host, start, end))
                return out

            setattr(layer, method, timed)
    for _ in range(10):
        train()
    cp.cuda.runtime.deviceSynchronize()
    print(f"\n{'layer call (train b256)':<34}{'host ms':>9}{'device ms':>11}")
    for key, calls in times.items():
        calls = calls[2:]
        host = 1e3 * float(np.mean([c[0] for c in calls]))
        device = float(np.mean([cp.cuda.get_elapsed_time(c[1], c[2]) for c in calls]))
        print(f"{key:<34}{host:>9.3f}{device:>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
