"""Data-parallel training under ``mpiexec`` (MPICH from the ``mpich`` wheel) equals one process, bit for bit.

Each case (classifier, BatchNorm detector, FCN-8s) runs :mod:`tests.distributed.ranks` (the Trainer with the
data-parallel hook on shard datasets) for two epochs with K = 1, 2 and 3 processes at the same global batch of
10 (3 does not divide it: parts of 4, 3, 3, and 2, 1, 1 for the last batch of 4), in float32. Every sum over
the batch is formed from per-block partial sums added in block order over the processes
(``reduction='ordered'``, the default), so the final weights, the training losses and the metrics computed
from the gathered predictions (each process evaluates whole batches of one process's) are the same bits for
every K; the validation loss adds the processes' loss sums, so it agrees to float64 rounding (1e-15 relative).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

BIN = Path(sys.executable).parent
RANKS = Path(__file__).with_name("ranks.py")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
LR = {"classification": "0.003", "detection": "0.01", "segmentation": "0.001"}


def src_path() -> str:
    """``PYTHONPATH`` for the processes: this checkout's ``src`` and the repository root (for ``tests``)."""
    root = Path(__file__).parents[2]
    return os.pathsep.join([str(root / "src"), str(root)])


def launch(k: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, str(RANKS), *args]
    if k > 1:
        command = [str(BIN / "mpiexec"), "-n", str(k), *command]
    env = {**os.environ, "PYTHONPATH": src_path()}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def train(data: Path, out: Path, kind: str, k: int, *extra: str) -> dict:
    done = launch(k, kind, str(data / kind), str(out), "--lr", LR[kind], *extra)
    assert done.returncode == 0, done.stderr[-4000:]
    saved = np.load(out)
    return {"weights": {key[2:]: saved[key] for key in saved.files if key.startswith("w.")},
            "history": json.loads(str(saved["history"])), "digests": list(saved["digests"])}


def running(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def relative_difference(a: dict, b: dict) -> float:
    """The largest ``|a - b| / |a|`` (Frobenius norms) over the tensors of two state dicts."""
    assert a.keys() == b.keys()
    return max(float(np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(a[k]), 1e-30)) for k in a)


def assert_same_bits(one: dict, other: dict, what: str) -> None:
    assert one.keys() == other.keys()
    for name, value in one.items():
        np.testing.assert_array_equal(other[name], value, err_msg=f"{name}, {what}")


def assert_same_history(one: list[dict], other: list[dict]) -> None:
    """Equal training losses and metrics; the validation loss to float64 rounding (module docstring)."""
    assert len(one) == len(other) == 2
    for a, b in zip(one, other, strict=True):
        for key in a:
            if key == "val_loss":
                assert b[key] == pytest.approx(a[key], rel=1e-12)
            elif key != "time_s":
                assert b[key] == a[key], key


@pytest.mark.parametrize("kind", ["classification", "detection", "segmentation"])
def test_any_number_of_processes_trains_the_same_bits(data, tmp_path, kind):
    runs = {k: train(data, tmp_path / f"{k}.npz", kind, k) for k in (1, 2, 3)}
    assert all(w.dtype == np.float32 for w in runs[1]["weights"].values())
    for k in (2, 3):
        assert_same_bits(runs[1]["weights"], runs[k]["weights"], f"{k} processes")
        assert_same_history(runs[1]["history"], runs[k]["history"])
        assert len(runs[k]["digests"]) == k and len(set(runs[k]["digests"])) == 1  # replicas bit-identical
    history = runs[1]["history"]
    if kind == "detection":
        assert history[-1]["val_map_50"] > 0.05  # AP gathered from every process's detections
    elif kind == "segmentation":  # FCN-8s: learnable and frozen transposed convolutions, summed per block too
        assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
        assert history[-1]["val_pixel_accuracy"] > 0.5
    else:
        assert history[-1]["val_accuracy"] > 0.5


def test_the_allreduce_reduction_equals_one_process_within_1e_5(data, tmp_path):
    one = train(data, tmp_path / "1.npz", "classification", 1)
    many = train(data, tmp_path / "3.npz", "classification", 3, "--reduction", "allreduce")
    assert 0 < relative_difference(one["weights"], many["weights"]) < 1e-5  # MPI's order: not the same bits
    assert len(set(many["digests"])) == 1


def test_each_process_reads_its_own_samples_only(data, tmp_path):
    done = launch(2, "classification", str(data / "classification"), str(tmp_path / "x.npz"), "--epochs", "1")
    assert done.returncode == 0, done.stderr[-4000:]
    saved = np.load(tmp_path / "x.npz")
    counts, asked = saved["asked_counts"], saved["asked"]
    assert counts.tolist() == [32, 32]  # batches of 10 split 5 + 5, the last (4) 2 + 2
    assert sorted(asked.tolist()) == list(range(64))  # disjoint parts covering the epoch
    assert bool(saved["memory_mapped"])  # shards memory-mapped: only the pages of those samples are read


def test_a_failing_process_ends_every_process_within_30_s(data, tmp_path):
    start = time.monotonic()
    done = launch(3, "classification", str(data / "classification"), str(tmp_path / "x.npz"),
                  "--fail-rank", "1", "--fail-step", "3", timeout=60)
    assert done.returncode != 0
    assert done.stderr.count("injected failure at step 3") == 1, done.stderr
    assert "(process 1 of 3)" in done.stderr
    pids = [int(path.read_text()) for path in tmp_path.glob("pid-*")]
    assert len(pids) == 3
    while [pid for pid in pids if running(pid)] and time.monotonic() - start < 30:
        time.sleep(0.1)
    elapsed = time.monotonic() - start
    assert not [pid for pid in pids if running(pid)], "a process outlived the failure by 30 s"
    print(f"every process ended {elapsed:.1f} s after the start (failure at step 3)")


def test_an_error_every_process_hits_is_shown_once(data, tmp_path):
    # 64 samples in batches of 31: the last batch holds 2 samples, fewer than 3 processes
    done = launch(3, "classification", str(data / "classification"), str(tmp_path / "x.npz"), "--batch", "31",
                  timeout=60)
    assert done.returncode != 0
    assert done.stderr.count("is larger than allowed") == 1, done.stderr
    assert "(process 0 of 3)" in done.stderr


def test_a_run_killed_with_2_processes_resumes_with_3(data, tmp_path):
    checkpoint = tmp_path / "shared.ckpt.npz"
    killed = launch(2, "detection", str(data / "detection"), str(tmp_path / "killed.npz"), "--lr", "0.01",
                    "--checkpoint", str(checkpoint), "--fail-rank", "1", "--fail-step", "10")
    assert killed.returncode != 0 and checkpoint.exists()  # epoch 1 (7 steps) was saved, epoch 2 was not
    assert json.loads(str(np.load(checkpoint)["history"]))[-1]["epoch"] == 1
    resumed = train(data, tmp_path / "resumed.npz", "detection", 3, "--checkpoint", str(checkpoint))
    whole = train(data, tmp_path / "whole.npz", "detection", 1)
    assert_same_bits(whole["weights"], resumed["weights"], "resumed with 3 processes")
    assert_same_history(whole["history"], resumed["history"])
