"""``bench_convnet.py --processes K``: the DeepConvNet cases on K xpvision processes of one thread each, as
the pipeline trains (``train.<task>.processes: auto``, :mod:`xpvision.distributed`), timed in the same
interleaved rounds as the in-process runs and PyTorch.

The K processes run under ``mpiexec`` for the whole benchmark. Each holds its part of every global batch
(``batch_part``: whole reduction blocks, so the weights are the same bits as one process's) and waits for
the next case on its own named pipe: a blocking read, so an idle group takes no core from the run being
timed (MPI's own waits poll). A call writes the case to every pipe and returns when the root reports that
every process has finished the step (an ``MPI_Barrier`` after it). A training step is the trainer's:
``zero_grad``, forward + loss, backward, the ordered gradient fold, Adam. Inference runs each process's
part in eval mode and gathers the logits on every process.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path

READY_TIMEOUT_S = 300
"""Seconds to wait for the group to start (imports, the model, MPI) or to finish a call."""


def worker(folder: Path, inputs: dict) -> None:
    """One process of the group: set up, say ``ready`` (root), then run each case read from its pipe.
    ``inputs``: ``(kind, batch) -> (images, labels)`` of the whole batch, as the other runs get them."""
    from xpvision import distributed
    from xpvision.distributed.data import batch_part
    from xpvision.models import deep_convnet
    from xpvision.nn import parallel, rng
    from xpvision.optim import Adam
    from xpvision.tasks import ClassificationTask

    comm = distributed.world("cpu")
    parallel.set_num_threads(1)
    rng.manual_seed(0)
    model = deep_convnet()  # the same initial weights as bench_convnet's other runs
    model.needs_input_grad = False
    optimizer, task = Adam(model, lr=1e-3), ClassificationTask(10)
    hook = distributed.DataParallel(comm, model)
    batches = {}
    for (kind, batch), (x, y) in inputs.items():
        start, stop = batch_part(batch, comm.size, comm.rank)
        batches[(kind, batch)] = {"images": x[start:stop], "labels": y[start:stop],
                                  "global_batch": (batch, start)}
    done = open(folder / "done", "w") if comm.is_root else None  # noqa: SIM115 (open for the whole run)
    _report(done, "ready")
    with open(folder / f"command.{comm.rank}") as commands:
        for line in commands:
            if line.strip() == "quit":
                break
            kind, batch = line.split()
            part = batches[(kind, int(batch))]
            if kind == "train":
                model.train()
                optimizer.zero_grad()
                _, dout, _ = hook.forward_loss(task, model, part)
                model.backward(dout)
                hook.reduce_gradients(optimizer)
                optimizer.step()
            else:
                model.eval()
                comm.allgather_arrays({"logits": model.forward(part["images"])})  # (n, 10) of every process
            comm.barrier()
            _report(done, "done")
    if done is not None:
        done.close()


def _report(done, message: str) -> None:
    if done is not None:
        done.write(message + "\n")
        done.flush()


class ProcessGroup:
    """K xpvision processes under ``mpiexec`` running the cases of ``bench_convnet.py`` on request."""

    def __init__(self, processes: int, script: str) -> None:
        from xpvision.distributed.launch import find_mpiexec

        self.folder = Path(tempfile.mkdtemp(prefix="xpvision-bench-"))
        for name in [f"command.{rank}" for rank in range(processes)] + ["done"]:
            os.mkfifo(self.folder / name)
        # read-write opens of a pipe do not wait for the other end: a group that fails to start cannot hang us
        self.commands = [os.open(self.folder / f"command.{rank}", os.O_RDWR) for rank in range(processes)]
        self.done = os.open(self.folder / "done", os.O_RDWR)
        env = {**os.environ, "XPVISION_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        command = [sys.executable, script, "--group-worker", str(self.folder)]
        self.process = subprocess.Popen(
            [find_mpiexec(), "-n", str(processes), *command], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self._expect("ready")

    def runner(self, kind: str, batch: int):
        def call() -> None:
            for fd in self.commands:
                os.write(fd, f"{kind} {batch}\n".encode())
            self._expect("done")

        return call

    def _expect(self, message: str) -> None:
        """Wait for ``message`` from the root; a group that died or fell silent raises, with its stderr."""
        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([self.done], [], [], READY_TIMEOUT_S)
            if not ready or self.process.poll() is not None:
                self.close()
                raise RuntimeError(f"the xpvision process group did not answer {message!r}:\n"
                                   f"{self.process.stderr.read()[-3000:]}")
            line += os.read(self.done, 64)
        if line.decode().strip() != message:
            raise RuntimeError(f"the xpvision process group answered {line!r}, expected {message!r}")

    def close(self) -> None:
        """Stop the group (``quit`` to every process), remove the pipes; calling it again does nothing."""
        if not self.commands:
            return
        if self.process.poll() is None:
            for fd in self.commands:
                os.write(fd, b"quit\n")
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        for fd in [*self.commands, self.done]:
            os.close(fd)
        self.commands = []
        for path in self.folder.iterdir():
            path.unlink()
        self.folder.rmdir()
