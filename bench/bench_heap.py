"""Minor page faults and time of a DeepConvNet training step with the heap kept (``XPVISION_HEAP=keep``,
the default) and with glibc's own policy (``system``), each in its own process, alternating.

    python bench/bench_heap.py                       # batch 100, the default thread count, 2 rounds
    python bench/bench_heap.py --batch 256 --threads 2 --rounds 3

Benchmarks are not tests: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def worker(batch: int) -> None:
    """One process: 3 warm-up steps, then the median step time and the faults per step over 10 steps."""
    import resource
    import statistics
    import time

    import numpy as np

    from xpvision.models import deep_convnet
    from xpvision.nn import SoftmaxCrossEntropy, rng
    from xpvision.optim import Adam

    rng.manual_seed(0)
    model = deep_convnet()
    model.needs_input_grad = False
    optimizer, loss = Adam(model, lr=1e-3), SoftmaxCrossEntropy()
    data = np.random.default_rng(0)
    x = data.random((batch, 1, 28, 28), dtype=np.float32)
    y = data.integers(0, 10, batch)

    def step() -> None:
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        optimizer.step()

    for _ in range(3):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(10):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 10
    print(json.dumps({"step_ms": 1000 * statistics.median(times), "faults": faults}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="XPVISION_NUM_THREADS (default: unset)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.batch)
        return
    print(f"DeepConvNet training step, batch {args.batch}, threads {args.threads or 'default'}, "
          f"load average {os.getloadavg()[0]:.2f}")
    for r in range(1, args.rounds + 1):
        for mode in ("system", "keep"):
            env = {**os.environ, "XPVISION_HEAP": mode}
            if args.threads:
                env["XPVISION_NUM_THREADS"] = str(args.threads)
            done = subprocess.run([sys.executable, __file__, "--worker", "--batch", str(args.batch)], env=env,
                                  capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"round {r}  {mode:6s}  {result['step_ms']:7.1f} ms  {result['faults']:6.0f} faults/step")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
