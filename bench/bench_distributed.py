"""Data-parallel training throughput: K processes of 1 thread each against 1 process of K threads.

The DeepConvNet classifier (the pipeline's, batch-normalised or not) trains on random 1x28x28 images at a
global batch of ``--batch``: each process runs its part of every batch (:mod:`xpvision.distributed`, MPI
through mpi4py), every sum over the batch formed in global block order (``reduction='ordered'``, the
default: the same bits for any K) or, for comparison, each process's totals all-reduced
(``reduction='allreduce'``). Throughput is samples per second over ``--steps`` timed
steps after 3 warm-up steps; scaling efficiency is throughput(K processes) / (K x throughput(1 process, 1
thread)). Each configuration runs ``--repeats`` times, interleaved with the others (so drifts of the machine's
load hit them alike); the table shows the best step time of each.

    python bench/bench_distributed.py                          # K = 1, 2 here
    python bench/bench_distributed.py --processes 1 2 4 8      # a bigger machine
    python bench/bench_distributed.py --device gpu --processes 1 2   # NCCL, one GPU per process

Benchmarks are not tests: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from xpvision.distributed.launch import find_mpiexec


def worker(args) -> None:
    """One process of a run (alone, or under mpiexec): time the steps, the root prints a JSON line."""
    from xpvision import backend, distributed
    from xpvision.data.loader import DataLoader, ListDataset
    from xpvision.models import build_model
    from xpvision.nn import parallel, rng
    from xpvision.optim import Adam
    from xpvision.tasks import ClassificationTask

    comm = distributed.world(args.device)
    parallel.set_num_threads(args.threads)
    gen = np.random.default_rng(0)
    count = args.batch * (args.steps + 3)
    rng.manual_seed(0)
    if args.model == "fcn":  # segmentation_ft's network and scene size, 11 classes
        from xpvision.segmentation.fcn import build_fcn
        from xpvision.tasks import SegmentationTask

        classes = 11
        samples = [{"image": gen.integers(0, 256, (96, 96, 3), dtype=np.uint8),
                    "mask": gen.integers(0, classes, (96, 96), dtype=np.uint8)} for _ in range(count)]
        model = build_fcn("8s", in_channels=3, num_classes=classes, backbone="deep_convnet",
                          encoder_stride=16, extra_channels=[128])  # params.yaml's train.segmentation_ft
        task = SegmentationTask(classes)
    else:
        classes = 10
        samples = [{"image": gen.integers(0, 256, (28, 28, 1), dtype=np.uint8),
                    "label": int(gen.integers(classes))} for _ in range(count)]
        model, task = build_model("deep_convnet", batch_norm=args.batch_norm), ClassificationTask(classes)
    data = ListDataset(samples, [str(i) for i in range(classes)])
    model.to(args.device)
    optimizer = Adam(model, lr=1e-3)
    if comm.size > 1:
        loader = distributed.ShardedLoader(data, args.batch, rank=comm.rank, size=comm.size,
                                           device=args.device)
        hook = distributed.DataParallel(comm, model, args.reduction)
    else:
        loader, hook = DataLoader(data, args.batch, device=args.device), distributed.SingleProcess()
    hook.synchronize(model)
    model.train()
    model.needs_input_grad = False
    times = []
    for step, batch in enumerate(loader):
        comm.barrier()
        start = time.perf_counter()
        optimizer.zero_grad()
        _, dout, _ = hook.forward_loss(task, model, batch)
        model.backward(dout)
        hook.reduce_gradients(optimizer)
        optimizer.step()
        backend.synchronize()
        comm.barrier()
        if step >= 3:
            times.append(time.perf_counter() - start)
    if comm.is_root:
        print(json.dumps({"processes": comm.size, "threads": args.threads, "reduction": args.reduction,
                          "step_s": float(np.median(times)), "samples_per_s": args.batch / np.median(times)}))


def run(k: int, threads: int, reduction: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", "--threads", str(threads), "--batch", str(args.batch),
               "--steps", str(args.steps), "--device", args.device, "--reduction", reduction,
               "--model", args.model]
    if args.batch_norm:
        command.append("--batch-norm")
    if k > 1:
        command = [find_mpiexec(), "-n", str(k), *command]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=128, help="global batch (default 128)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-norm", action="store_true", help="DeepConvNet with BatchNorm (synchronised)")
    parser.add_argument("--model", choices=["deep_convnet", "fcn"], default="deep_convnet",
                        help="fcn: segmentation_ft's FCN-8s on 96x96 scenes (use --batch 4 as it does)")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--reduction", default="ordered", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    name = "FCN-8s (96 px)" if args.model == "fcn" else "DeepConvNet" + (" + BatchNorm" * args.batch_norm)
    print(f"{name} training, global batch {args.batch}, "
          f"{args.device}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    configs = [("1 process x 1 thread", 1, 1, "ordered")]
    for k in args.processes:
        if k > 1:
            configs.append((f"{k} processes x 1 thread", k, 1, "ordered"))
            configs.append((f"{k} processes, allreduce", k, 1, "allreduce"))
            if args.device == "cpu":
                configs.append((f"1 process x {k} threads", 1, k, "ordered"))
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, k, threads, reduction in configs:
            result = run(k, threads, reduction, args)
            if name not in best or result["step_s"] < best[name]["step_s"]:
                best[name] = result
    base = best[configs[0][0]]
    print(f"{'run':<28}{'step ms':>10}{'samples/s':>12}{'speed-up':>10}{'efficiency':>12}")
    for name, result in best.items():
        k = result["processes"] * result["threads"] if args.device == "cpu" else result["processes"]
        speedup = result["samples_per_s"] / base["samples_per_s"]
        print(f"{name:<28}{1000 * result['step_s']:>10.1f}{result['samples_per_s']:>12.0f}{speedup:>10.2f}"
              f"{speedup / k:>12.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
