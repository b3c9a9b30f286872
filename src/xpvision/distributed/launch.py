"""Starting the processes of a data-parallel ``xpvision train`` and ending them all when one fails.

:func:`train_command` is what ``xpvision train`` runs. Outside MPI with ``processes: K > 1`` (or ``auto``, one
per core: :func:`process_count`) it checks that ``mpiexec`` exists and that K fits (the slots of ``hosts``,
the GPUs of this host), then starts ``mpiexec -n K [-hosts ... | -f hostfile] python -m xpvision.cli train
...`` and returns its exit status; BLAS and the layers' threads are set to split this host's cores among its
processes. Under MPI (started by the line above, or by a user's own ``mpiexec``/scheduler) it runs the stage
as one process of the group: an exception in any process prints its error once and aborts the whole group
(``MPI_Abort``), so no process waits forever in a collective for one that died. The root reports first; the
others wait :data:`REPORT_DELAY_S` before reporting, so an error every process hits is shown once.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from xpvision.distributed.comm import launched_size
from xpvision.errors import ConfigError, XPVisionError

REPORT_DELAY_S = 4.0
HOST_ENTRY = re.compile(r"^[A-Za-z0-9._-]+(:[1-9][0-9]*)?$")
EXIT_USER_ERROR = 2
EXIT_FAILURE = 1


def cpu_count() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def find_mpiexec() -> str:
    """The ``mpiexec`` beside this Python (the ``mpich`` wheel installs it there), else on ``PATH``."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise ConfigError("processes > 1 needs mpiexec, which is neither beside this Python nor on PATH: "
                          "pip install 'xpvision[distributed]' (MPICH and mpi4py)")
    return found


def host_arguments(hosts: str | None, key: str) -> tuple[list[str], int | None]:
    """``mpiexec`` arguments for ``hosts`` and the number of slots they offer (``None``: this host only).

    ``hosts``: ``null``; a comma-separated ``host[:slots]`` list (``node1:8,node2:8``); or the path of an
    MPICH hostfile (one ``host[:slots]`` per line, ``#`` comments).
    """
    if hosts is None:
        return [], None
    path = Path(hosts)
    if path.is_file():
        lines = [line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
        entries, arguments, where = [line for line in lines if line], ["-f", str(path)], f"{key} file {path}"
    else:
        entries, arguments, where = [e.strip() for e in hosts.split(",")], ["-hosts", hosts], key
    bad = [e for e in entries if not HOST_ENTRY.match(e)]
    if bad or not entries:
        raise ConfigError(f"{where}: expected host[:slots] entries (e.g. node1:8,node2:8) or an existing "
                          f"hostfile, got {bad[0] if bad else hosts!r}")
    slots = sum(int(e.split(":")[1]) if ":" in e else 1 for e in entries)
    return arguments, slots


def process_count(cfg: Any, task: str) -> int:
    """The processes ``train.<task>`` trains with: ``cfg.processes``, or for ``auto`` one per CPU core this
    process may run on, at most the batch size and :data:`xpvision.nn.parallel.REDUCTION_BLOCKS` (so that the
    trained bits are the same on every machine); the slots of ``hosts`` when they are given; 1 on the GPU (one
    process per GPU is asked for with a number) and where MPI is not installed (said on stderr)."""
    from xpvision.nn.parallel import REDUCTION_BLOCKS

    if cfg.processes != "auto":
        return cfg.processes
    if cfg.device == "gpu":
        return 1
    _, slots = host_arguments(cfg.hosts, f"train.{task}.hosts")
    k = min(slots or min(cpu_count(), REDUCTION_BLOCKS), cfg.batch_size)
    missing = _missing_mpi() if k > 1 else None
    if missing:
        print(f"xpvision train: train.{task}.processes auto: one process ({missing})", file=sys.stderr)
        return 1
    return k


def _missing_mpi() -> str | None:
    """What is missing to start processes (``None``: nothing)."""
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed: pip install 'xpvision[distributed]'"
    try:
        find_mpiexec()
    except ConfigError as e:
        return str(e)
    return None


def launch_command(cfg: Any, task: str, argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``(command, environment)`` starting the :func:`process_count` processes of ``xpvision <argv>``;
    raises :class:`ConfigError` when they cannot be started."""
    from xpvision import backend

    key, k = f"train.{task}", process_count(cfg, task)
    host_args, slots = host_arguments(cfg.hosts, f"{key}.hosts")
    if slots is not None and k > slots:
        raise ConfigError(f"{key}.processes: {k} is larger than allowed: {key}.hosts offers {slots} slots")
    if cfg.device == "gpu" and slots is None and k > backend.gpu_count():
        raise ConfigError(f"{key}.processes: {k} is larger than allowed: device 'gpu' needs one GPU per "
                          f"process and this host has {backend.gpu_count()}")
    if k > cfg.batch_size:
        raise ConfigError(f"{key}.processes: {k} is larger than allowed: batch_size {cfg.batch_size} leaves "
                          f"a process without samples")
    threads = max(1, cpu_count() // k) if slots is None else 1  # BLAS threads; the layers' are set per host
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    command = [find_mpiexec(), "-n", str(k), *host_args, sys.executable, "-m", "xpvision.cli", *argv]
    return command, env


def train_command(run: Callable[[Any, str], None], params: Any, task: str, params_path: str) -> int:
    """Run the train stage of ``task``: directly (one process), as one process of an MPI group, or by
    starting ``processes`` of them under ``mpiexec``. Returns the exit status."""
    if launched_size() > 1:
        run_in_group(lambda: run(params, task), params.train[task].device)
        return 0
    cfg = params.train[task]
    k = process_count(cfg, task)
    if k == 1:
        run(params, task)
        return 0
    command, env = launch_command(cfg, task, ["train", "--task", task, "--params", params_path])
    print(f"xpvision train: starting {k} processes: {' '.join(command)}", file=sys.stderr, flush=True)
    return subprocess.run(command, env=env, check=False).returncode or 0


def run_in_group(work: Callable[[], None], device: str, command: str = "xpvision train") -> None:
    """Run ``work`` as one process of the MPI group (the communicator of ``device``); if it raises, report
    the error (once for the group, see the module docstring) and abort every process of the group."""
    from xpvision.distributed.comm import world
    from xpvision.nn import parallel

    comm = world(device)
    parallel.set_num_threads(max(1, cpu_count() // comm.local_size))
    try:
        work()
    except BaseException as e:  # any failure must end every process of the group
        if not comm.is_root:
            time.sleep(REPORT_DELAY_S)  # a failure the root shares is reported by the root alone
        where = f"(process {comm.rank} of {comm.size})"
        if isinstance(e, XPVisionError):
            print(f"{command}: error {where}: {e}", file=sys.stderr, flush=True)
            code = EXIT_USER_ERROR
        else:
            print(f"{command}: failed {where}:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            code = EXIT_FAILURE
        comm.abort(code)
    comm.barrier()
