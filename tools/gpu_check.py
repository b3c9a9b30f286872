"""One prepared check of xpvision on a machine with a CUDA GPU: `make gpu-check`.

Runs, each step under its own time limit, and writes everything to one Markdown report:

1. the machine: ``nvidia-smi -L`` and the versions of Python, NumPy, CuPy, the CUDA runtime and PyTorch;
2. every ``gpu``-marked test on the real device (test modules whose optional dependencies are missing on the
   machine are skipped by name, not failed);
3. a short real training of each task (classification, detection, segmentation: a few hundred images of the
   default offline data, one epoch) on the GPU and on the CPU from the same initial weights, with the
   task's metric and the mean step time of each;
4. ``bench/bench_convnet.py --device gpu`` (CuPy against PyTorch CUDA, TF32 off on both sides, cuDNN
   autotuning on);
5. ``compute-sanitizer --tool memcheck`` on the NMS kernels, where the tool works;
6. the NCCL data-parallel smoke run (``tests/distributed/nccl_smoke.py`` under ``mpiexec -n 1``), where
   mpi4py and ``mpiexec`` are there;
7. the CPU engine's scaling over this machine's cores (a lent GPU machine has more than a workstation):
   ``bench/bench_distributed.py --processes 1 2 4 8 16`` and ``bench/bench_convnet.py --threads T`` for T = 1,
   2, 4, 8, 16 up to the cores there.

It needs only what a GPU machine with CuPy has plus ``PYTHONPATH=src`` (no network, no install)::

    python3 tools/gpu_check.py --report reports/gpu-check.md

Exit status 0 when every step that ran passed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Test modules import these at collection; a module needing a missing one is skipped by name.
OPTIONAL_MODULES = ("mlflow", "dvc", "albumentations", "pooch", "defusedxml", "pycocotools", "torch", "onnx",
                    "onnxruntime", "pandas", "matplotlib", "sklearn", "hypothesis", "mpi4py")


def run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, float]:
    """``(exit status, combined output, seconds)``; a time-out gives status 124."""
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        status = 124
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (
            exc.stdout or "")
        output += f"\n[timed out after {timeout:.0f} s]"
    return status, output, time.perf_counter() - start


def _section(what: str | None, status: int, output: str, seconds: float, tail: int = 3000) -> str:
    """A report section for a :func:`run` result (``_section(what, *run(...))``): the command ``what`` (when
    given), the time, the exit status and the last ``tail`` characters of the output."""
    head = f"`{what}` — " if what else ""
    return f"{head}{seconds:.0f} s, exit {status}\n\n```\n{output.strip()[-tail:]}\n```"


def environment() -> str:
    lines = []
    smi = shutil.which("nvidia-smi")
    lines.append(subprocess.run([smi, "-L"], capture_output=True, text=True, check=False).stdout.strip()
                 if smi else "nvidia-smi: not found")
    lines.append(f"python {platform.python_version()}")
    for name in ("numpy", "cupy", "torch", "mpi4py"):
        try:
            module = __import__(name)
            lines.append(f"{name} {module.__version__}")
        except ImportError:
            lines.append(f"{name}: not installed")
    try:
        import cupy

        lines.append(f"CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, driver "
                     f"{cupy.cuda.runtime.driverGetVersion()}, device "
                     f"{cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    except Exception as exc:  # no CuPy or no device: the report says why
        lines.append(f"CuPy device: unavailable ({exc})")
    lines.append(f"CPU cores: {len(os.sched_getaffinity(0))}")
    missing = [m for m in OPTIONAL_MODULES if importlib.util.find_spec(m) is None]
    lines.append(f"optional packages missing here: {', '.join(missing) or 'none'}")
    return "\n".join(lines)


def modules_to_skip() -> list[str]:
    """Test files that import a package this machine lacks (top-level or ``importorskip``-free imports)."""
    missing = {m for m in OPTIONAL_MODULES if importlib.util.find_spec(m) is None}
    skip = []
    pattern = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][\w]*)", re.MULTILINE)
    for path in sorted((ROOT / "tests").rglob("*.py")):
        imported = set(pattern.findall(path.read_text(encoding="utf-8")))
        if imported & missing:
            skip.append(str(path.relative_to(ROOT)))
    return skip


def gpu_tests(env: dict, timeout: float) -> tuple[bool, str]:
    """Every ``gpu`` test on the device. A test module that cannot be imported for want of an optional
    package is reported as skipped; any other collection error, a failure, or no test run fails the step."""
    skip = modules_to_skip()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           "-rfEs", "--tb=short", "--continue-on-collection-errors",
           *[f"--ignore={path}" for path in skip], "tests"]
    status, output, seconds = run(cmd, timeout, env)
    lines = output.strip().splitlines()
    summary = lines[-1] if lines else "(no output)"
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?)", summary)}
    missing = re.findall(r"No module named '([\w.]+)'", output)
    import_errors = counts.get("error", 0) + counts.get("errors", 0)
    optional_only = all(name.split(".")[0] in OPTIONAL_MODULES for name in missing)
    ok = (status in (0, 1) and counts.get("failed", 0) == 0 and counts.get("passed", 0) > 0
          and (import_errors == 0 or (optional_only and len(missing) >= import_errors)))
    text = (f"`pytest -m gpu` — {seconds:.0f} s, exit {status}\n\n**{summary}**\n\n"
            f"modules left out (missing packages): {', '.join(skip) or 'none'}; "
            f"modules failing to import for want of {sorted(set(missing)) or 'nothing'}\n\n"
            "```\n" + "\n".join(lines[-80:]) + "\n```")
    return ok, text


def short_training(env: dict, timeout: float) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "tools" / "gpu_train_check.py"), "--work", tmp]
        result = run(cmd, timeout, env)
    return result[0] == 0, _section(None, *result, tail=6000)


def bench(env: dict, timeout: float) -> tuple[bool, str]:
    if importlib.util.find_spec("torch") is None:
        return True, "skipped: PyTorch is not installed here"
    cmd = [sys.executable, "bench/bench_convnet.py", "--device", "gpu", "--repeats", "9"]
    profile = [sys.executable, "bench/profile_gpu_step.py"]  # host vs device time
    results = [(cmd, run(cmd, timeout * 2 / 3, env)), (profile, run(profile, timeout / 3, env))]
    return (all(result[0] == 0 for _, result in results),
            "\n\n".join(_section(" ".join(c[1:]), *result) for c, result in results))


def sanitizer(env: dict, timeout: float) -> tuple[bool, str]:
    tool = shutil.which("compute-sanitizer") or next(
        (str(p) for p in Path("/usr/local/cuda/bin").glob("compute-sanitizer") if p.exists()), None)
    if tool is None:
        return True, "skipped: compute-sanitizer not found"
    cmd = [tool, "--tool", "memcheck", "--error-exitcode", "3", sys.executable,
           str(ROOT / "tools" / "gpu_nms_probe.py")]
    status, output, seconds = run(cmd, timeout, env)
    ok = status == 0
    if status != 0 and "not supported" in output.lower():
        ok, output = True, "compute-sanitizer does not support this device here:\n" + output
    return ok, _section(None, status, output, seconds)


def nccl(env: dict, timeout: float) -> tuple[bool, str]:
    missing = [m for m in ("mpi4py", "cupy") if importlib.util.find_spec(m) is None]
    if missing:
        return True, f"skipped: {' and '.join(missing)} not installed here"
    from xpvision.distributed.launch import find_mpiexec
    from xpvision.errors import ConfigError

    try:
        mpiexec = find_mpiexec()
    except ConfigError as exc:
        return True, f"skipped: {exc}"
    env = {**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{env['PYTHONPATH']}"}  # the smoke imports tests.*
    with tempfile.TemporaryDirectory() as tmp:
        status, output, seconds = run([mpiexec, "-n", "1", sys.executable, "tests/distributed/nccl_smoke.py",
                                       tmp], timeout, env)
    return (status == 0 and "nccl smoke: ok" in output,
            _section("mpiexec -n 1 python tests/distributed/nccl_smoke.py", status, output, seconds))


def cpu_scaling(env: dict, timeout: float) -> tuple[bool, str]:
    """Data-parallel processes (where mpi4py is there; 60% of ``timeout``) and threads (the rest, shared)."""
    cores = len(os.sched_getaffinity(0))
    runs = [(["bench/bench_convnet.py", f"--threads={t}", "--repeats=3"], 1.0)
            for t in (1, 2, 4, 8, 16) if t <= cores]
    if importlib.util.find_spec("mpi4py") is not None and cores >= 8:
        runs = [(args, 0.4 / len(runs)) for args, _ in runs]
        processes = ["--processes", "1", "2", "4", "8", "16", "--repeats", "2", "--steps", "6"]
        runs.insert(0, (["bench/bench_distributed.py", *processes], 0.6))
    else:
        runs = [(args, 1 / len(runs)) for args, _ in runs]
    texts, ok = [], True
    for args, share in runs:
        status, output, seconds = run([sys.executable, *args], timeout * share, env)
        ok = ok and status == 0
        texts.append(_section(" ".join(args), status, output, seconds, 2500))
    return ok, "\n\n".join(texts)


STEPS = (("GPU tests", gpu_tests, 200),
         ("Short training, GPU vs CPU", short_training, 120),
         ("DeepConvNet against PyTorch CUDA", bench, 90),
         ("compute-sanitizer memcheck on NMS", sanitizer, 60),
         ("NCCL data-parallel smoke", nccl, 60),
         ("CPU scaling over this machine's cores", cpu_scaling, 300))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", default=os.path.join(os.environ.get("OUT", "reports"), "gpu-check.md"))
    parser.add_argument("--only", nargs="*", help="run only steps whose title contains one of these words")
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "NO_ALBUMENTATIONS_UPDATE": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    sections = [f"# xpvision gpu-check ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})", "## Machine",
                "```\n" + environment() + "\n```"]
    failed = []
    for title, step, timeout in STEPS:
        if args.only and not any(word.lower() in title.lower() for word in args.only):
            continue
        print(f"== {title}", flush=True)
        ok, text = step(env, timeout)
        sections += [f"## {title}: {'passed' if ok else 'FAILED'}", text]
        report.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
        print(text[-2500:], flush=True)
        if not ok:
            failed.append(title)
    verdict = f"FAILED: {', '.join(failed)}" if failed else "passed"
    sections.append(f"## Result: {verdict}")
    report.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    print(f"gpu-check {verdict}; report in {report}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
