"""One data-parallel fold of a training step's gradients: through shared memory (the default on one host) and
by MPI messages (as between hosts), K processes under mpiexec.

Each process holds its share of ``--blocks`` partial sums of ``--mb`` megabytes of float32 (segmentation_ft's
FCN-8s has 544,054 parameters: 2.2 MB, and 4 blocks at batch 4); the table shows the median time of a fold
over ``--repeats`` folds, the two paths interleaved, and the time of a plain copy of the same bytes for scale.

    python bench/bench_fold.py                 # 2 processes (starts mpiexec itself)
    python bench/bench_fold.py --processes 3 --mb 8

Benchmarks are not tests: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def worker(args) -> None:
    from xpvision.distributed.comm import MPICommunicator
    from xpvision.distributed.data import part_bounds

    paths = {"shared memory": MPICommunicator(), "messages": MPICommunicator(shared_memory=False)}
    comm = paths["messages"]
    first, last = part_bounds(args.blocks, comm.size, comm.rank)
    n = int(args.mb * 1e6 / 4)
    parts = [np.random.default_rng(i).standard_normal(n).astype(np.float32) for i in range(first, last)]
    times: dict[str, list[float]] = {name: [] for name in paths}
    for repeat in range(args.repeats + 3):
        for name, path in paths.items():
            comm.barrier()
            start = time.perf_counter()
            path.fold(parts, args.blocks)
            if repeat >= 3:  # the first folds allocate the shared window and touch its pages
                times[name].append(time.perf_counter() - start)
    copy = np.empty_like(parts[0])
    start = time.perf_counter()
    for _ in range(args.repeats):
        np.copyto(copy, parts[0])
    if comm.rank == 0:
        print(f"fold of {args.blocks} blocks of {args.mb} MB float32 over {comm.size} processes, median of "
              f"{args.repeats}; load average {os.getloadavg()[0]:.1f}")
        for name, values in times.items():
            print(f"  {name:14s} {1000 * statistics.median(values):7.3f} ms")
        print(f"  {'one copy':14s} {1000 * (time.perf_counter() - start) / args.repeats:7.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--mb", type=float, default=2.2, help="megabytes of partial sums per block")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from xpvision.distributed.launch import find_mpiexec

    command = [find_mpiexec(), "-n", str(args.processes), sys.executable, __file__, "--worker", "--mb",
               str(args.mb), "--blocks", str(args.blocks), "--repeats", str(args.repeats)]
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
