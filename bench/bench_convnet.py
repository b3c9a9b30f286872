"""DeepConvNet speed: xpvision (NumPy / CuPy) against PyTorch, interleaved.

Cases: a training step (forward + loss + backward + Adam, float32) at batch 100 and 256, and inference at
batch 1000, on 1x28x28 inputs, with the same architecture and the same initial weights. PyTorch runs in NCHW
and in channels_last; the ratio is xpvision over the better of the two. Every repeat times each case once per
implementation in turn (so drifts of the machine's speed hit all of them alike) and the table shows medians.

    python bench/bench_convnet.py              # CPU, 2 threads on both sides (--threads)
    python bench/bench_convnet.py --quick      # smoke run: 2 repeats
    python bench/bench_convnet.py --device gpu # CuPy vs PyTorch CUDA
    python bench/bench_convnet.py --winograd on  # also xpvision with XPVISION_WINOGRAD=on, in the same rounds
    python bench/bench_convnet.py --processes 2  # xpvision as 2 processes of 1 thread (as the pipeline)

Benchmarks are not tests: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import convnet_processes
from xpvision import backend
from xpvision.models import deep_convnet
from xpvision.nn import (
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    SoftmaxCrossEntropy,
    heap,
    parallel,
    rng,
    winograd,
)
from xpvision.optim import Adam

CASES = (("train", 100), ("train", 256), ("infer", 1000))


def torch_twin(model, torch):
    """A ``torch.nn.Sequential`` with the architecture and the current weights of an xpvision Sequential."""
    nn = torch.nn
    layers = []
    for _, layer in model.named_layers():
        if isinstance(layer, Conv2d):
            conv = nn.Conv2d(layer.in_ch, layer.out_ch, layer.kernel_size, layer.stride, layer.padding,
                             layer.dilation, bias="b" in layer.params)
            conv.weight.data = torch.tensor(backend.to_numpy(layer.params["W"]))
            if "b" in layer.params:
                conv.bias.data = torch.tensor(backend.to_numpy(layer.params["b"]))
            layers.append(conv)
        elif isinstance(layer, Linear):
            linear = nn.Linear(layer.in_features, layer.out_features)
            linear.weight.data = torch.tensor(backend.to_numpy(layer.params["W"]).T.copy())  # (out, in)
            linear.bias.data = torch.tensor(backend.to_numpy(layer.params["b"]))
            layers.append(linear)
        elif isinstance(layer, ReLU):
            layers.append(nn.ReLU())
        elif isinstance(layer, MaxPool2d):
            layers.append(nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding))
        elif isinstance(layer, Flatten):
            layers.append(nn.Flatten())
        elif isinstance(layer, Dropout):
            layers.append(nn.Dropout(layer.p))
    return nn.Sequential(*layers)


def blas_description() -> str:
    """NumPy's BLAS as it runs here (library, version, the kernel it picked for this CPU), and the environment
    variables that override that pick: an OpenBLAS told ``OPENBLAS_CORETYPE=Haswell`` on an AVX-512 CPU runs
    its AVX2 kernels, with GEMMs up to 2x slower."""
    from threadpoolctl import threadpool_info

    libs = [f"{i['internal_api']} {i['version']} {i.get('architecture') or ''}".strip()
            for i in threadpool_info() if i["user_api"] == "blas"]
    forced = [f"{name}={os.environ[name]}" for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
              if name in os.environ]
    note = f" (set here: {' '.join(forced)})" if forced else ""
    return f"NumPy BLAS: {', '.join(libs) or 'unknown'}{note}"


def case_inputs() -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """The inputs of every case, the same for every implementation: images ``(batch, 1, 28, 28)`` float32
    and labels ``(batch,)`` int64."""
    data = np.random.default_rng(0)
    return {(kind, batch): (data.random((batch, 1, 28, 28), dtype=np.float32), data.integers(0, 10, batch))
            for kind, batch in CASES}


def xpvision_runners(xp, sync: Callable[[], None], winograd_mode: str | None = None
                     ) -> dict[tuple[str, int], Callable[[], None]]:
    """The cases on an xpvision DeepConvNet, each call run in Winograd mode ``winograd_mode`` (default: the
    mode in use, as ``XPVISION_WINOGRAD`` sets it)."""
    winograd_mode = winograd_mode or winograd.get_mode()
    rng.manual_seed(0)
    model = deep_convnet()
    if xp is not np:
        model.to("gpu")
    model.needs_input_grad = False  # like PyTorch for an input without requires_grad
    optimizer = Adam(model, lr=1e-3)
    loss = SoftmaxCrossEntropy()
    runners = {}
    for (kind, batch), (x, y) in case_inputs().items():
        x, y = xp.asarray(x), xp.asarray(y)

        def train(x=x, y=y):
            winograd.set_mode(winograd_mode)
            model.train()
            loss.forward(model.forward(x), y)
            model.backward(loss.backward())
            optimizer.step()
            sync()

        def infer(x=x):
            winograd.set_mode(winograd_mode)
            model.eval()
            model.forward(x)
            sync()

        runners[(kind, batch)] = train if kind == "train" else infer
    return runners


def torch_runners(torch, device: str, channels_last: bool) -> dict[tuple[str, int], Callable[[], None]]:
    rng.manual_seed(0)
    model = torch_twin(deep_convnet(), torch).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    runners = {}
    for (kind, batch), (x, y) in case_inputs().items():
        x = torch.tensor(x, device=device).contiguous(memory_format=fmt)
        y = torch.tensor(y, device=device)

        def train(x=x, y=y):
            model.train()
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            sync()

        def infer(x=x):
            model.eval()
            with torch.inference_mode():
                model(x)
            sync()

        runners[(kind, batch)] = train if kind == "train" else infer
    return runners


def measure(impls: dict[str, dict], repeats: int, warmup: int) -> dict[str, dict]:
    """Median seconds per call for every implementation and case, interleaved. Each timed call follows an
    untimed one of the same implementation and case, so it finds its caches, buffers and thread pool as a
    training loop's next step would, not as the other library left them."""
    times: dict[str, dict] = {name: {case: [] for case in CASES} for name in impls}
    for r in range(warmup + repeats):
        for case in CASES:
            for name, runners in impls.items():
                runners[case]()
                start = time.perf_counter()
                runners[case]()
                elapsed = time.perf_counter() - start
                if r >= warmup:
                    times[name][case].append(elapsed)
    return {name: {case: statistics.median(values) for case, values in by_case.items()}
            for name, by_case in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, 1 warm-up")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both xpvision and PyTorch")
    parser.add_argument("--winograd", choices=winograd.MODES,
                        help="also time xpvision in this Winograd F(2x2, 3x3) mode (XPVISION_WINOGRAD)")
    parser.add_argument("--processes", type=int, default=0,
                        help="time xpvision data-parallel in this many processes of one thread each, as "
                             "train.<task>.processes trains (instead of one process of --threads threads; "
                             "needs mpiexec, see bench/convnet_processes.py)")
    parser.add_argument("--group-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.group_worker:
        convnet_processes.worker(args.group_worker, case_inputs())
        return 0
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: pip install 'xpvision[parity]'", file=sys.stderr)
        return 2
    group = None
    if args.device == "gpu":
        if not backend.gpu_available() or not torch.cuda.is_available():
            print(f"--device gpu needs CuPy with a CUDA device (available: {backend.gpu_available()}) and a "
                  f"CUDA build of PyTorch (available: {torch.cuda.is_available()})", file=sys.stderr)
            return 2
        # full float32 on both sides (CuPy uses TF32 only when CUPY_TF32=1); cuDNN picks its fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        os.environ.pop("CUPY_TF32", None)
        xp = backend.xp_for("gpu")
        impls = {"xpvision (CuPy)": xpvision_runners(xp, xp.cuda.runtime.deviceSynchronize),
                 "torch CUDA NCHW": torch_runners(torch, "cuda", False),
                 "torch CUDA channels_last": torch_runners(torch, "cuda", True)}
    else:
        torch.set_num_threads(args.threads)
        parallel.set_num_threads(args.threads)
        # glibc's malloc as xpvision's engine sets it, process-wide: PyTorch's large allocations then reuse
        # memory too, as they do beside in-process runs (which set it at their first call)
        heap.configure()
        if args.processes > 1:  # instead of the in-process runs, which slow the calls after them
            group = convnet_processes.ProcessGroup(args.processes, __file__)
            impls = {f"xpvision {args.processes} processes": {case: group.runner(*case) for case in CASES}}
        else:
            impls = {"xpvision (NumPy)": xpvision_runners(np, lambda: None)}
            if args.winograd:
                name = f"xpvision Winograd {args.winograd}"
                impls[name] = xpvision_runners(np, lambda: None, args.winograd)
        impls |= {"torch NCHW": torch_runners(torch, "cpu", False),
                 "torch channels_last": torch_runners(torch, "cpu", True)}
    repeats, warmup = (2, 1) if args.quick else (args.repeats, 2)
    load_before = os.getloadavg()[0]
    try:
        medians = measure(impls, repeats, warmup)
    finally:
        if group is not None:
            group.close()
    names = list(impls)
    ours = [name for name in names if name.startswith("xpvision")]
    print(f"DeepConvNet, float32, {args.device}, median of {repeats} interleaved repeats (ms); "
          f"ratio = xpvision / best torch; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    if args.device == "cpu":
        print(blas_description())
    print(f"{'case':<16}" + "".join(f"{name:>26}" for name in names) + "".join(
        f"{'ratio ' + name.split(maxsplit=1)[-1]:>22}" for name in ours))
    for case in CASES:
        row = {name: medians[name][case] * 1e3 for name in names}
        best_torch = min(v for name, v in row.items() if name not in ours)
        cells = "".join(f"{v:>26.1f}" for v in row.values())
        ratios = "".join(f"{row[name] / best_torch:>22.2f}" for name in ours)
        print(f"{case[0] + ' batch ' + str(case[1]):<16}{cells}{ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
