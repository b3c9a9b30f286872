"""NCCL smoke check on real GPUs, run under ``mpiexec -n G`` (G GPUs on this host; 1 is enough):

    PYTHONPATH=. .venv/bin/mpiexec -n 1 .venv/bin/python tests/distributed/nccl_smoke.py /tmp/nccl-smoke

Each process drives GPU ``local_rank`` through :class:`xpvision.distributed.NCCLCommunicator`: an all-reduce
and a broadcast of CuPy arrays are checked against their definitions, then the classifier of
:mod:`tests.distributed.ranks` trains one epoch on the GPU through the NCCL path and through one process
without a communicator; the root prints ``nccl smoke: ok`` and the largest relative weight difference, which
must be within 1e-5 (on the GPU each process's part of a batch is one block, so several processes add the
sums over the batch in other groupings than one: equal up to rounding, not in every bit).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tests.distributed.ranks import write_data

from xpvision import backend, distributed
from xpvision.data.loader import DataLoader
from xpvision.data.shards import ShardDataset
from xpvision.models import build_model
from xpvision.nn import rng
from xpvision.optim import Adam
from xpvision.tasks import ClassificationTask
from xpvision.train import Trainer


def train(comm, folder: Path, checkpoint: Path) -> dict:
    data = ShardDataset(folder)
    rng.manual_seed(0)
    model = build_model("deep_convnet", in_channels=1, num_classes=3, input_size=(16, 16), batch_norm=True)
    model.to("gpu")
    parallel = None if comm is None else distributed.DataParallel(comm, model)
    loader = (DataLoader(data, 10, shuffle=True, seed=1, device="gpu") if comm is None else
              distributed.ShardedLoader(data, 10, rank=comm.rank, size=comm.size, shuffle=True, seed=1,
                                        device="gpu"))
    Trainer(model, ClassificationTask(3), Adam(model, lr=0.003), epochs=1, checkpoint_path=checkpoint,
            progress=False, parallel=parallel).fit(loader)
    return model.state_dict()


def main() -> None:
    comm = distributed.NCCLCommunicator()
    cp = backend.xp_for("gpu")
    x = cp.arange(1000, dtype=cp.float32) * (comm.rank + 1)
    comm.allreduce(x)
    expected = np.arange(1000, dtype=np.float32) * sum(range(1, comm.size + 1))
    assert np.array_equal(backend.to_numpy(x), expected), "NCCL all-reduce"
    y = cp.full(7, comm.rank, dtype=cp.float64)
    comm.bcast(y)
    assert float(y.sum()) == 0.0, "NCCL broadcast"
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "nccl-smoke")
    if comm.is_root:
        write_data(work / "train", "classification", 60, 0)
    comm.barrier()
    many = train(comm, work / "train", work / f"nccl-{comm.size}.npz")
    if comm.is_root:
        one = train(None, work / "train", work / "single.npz")
        worst = max(float(np.linalg.norm(one[k] - many[k]) / max(np.linalg.norm(one[k]), 1e-30)) for k in one)
        assert worst <= 1e-5, f"NCCL training differs from one process by {worst:.2e} (relative)"
        print(f"nccl smoke: ok ({comm.size} processes, GPUs {backend.gpu_count()}, largest relative weight "
              f"difference to one process {worst:.2e})")


if __name__ == "__main__":
    main()
