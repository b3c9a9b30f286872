"""Data-parallel training under ``mpiexec`` (MPICH from the ``mpich`` wheel) equals one process.

Each case runs :mod:`tests.distributed.ranks` (the Trainer with the data-parallel hook on shard datasets) for
two epochs with K = 1, 2 and 3 processes at the same global batch of 10 (3 does not divide it: parts of 4, 3,
3, and 2, 1, 1 for the last batch). In float64 the final weights of any K equal one process's to 1e-12
(the sums over processes only change the rounding of 1e-16 terms). In float32 the rounding is 1e-7, and a
ReLU input that lands within it of 0 takes the other branch for another K: the float32 detector then drifts
apart (by as much as one process does with 1 thread instead of 2, see bench/README.md), so the float32
check is the classifier's.
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
LR = {"classification": "0.003", "detection": "0.01"}


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


def assert_same_history(one: list[dict], other: list[dict], rtol: float) -> None:
    assert len(one) == len(other) == 2
    for a, b in zip(one, other, strict=True):
        for key in a:
            if key != "time_s":
                assert b[key] == pytest.approx(a[key], rel=rtol, abs=rtol), key


@pytest.mark.parametrize("kind", ["classification", "detection"])
def test_any_number_of_processes_trains_the_same_model_float64(data, tmp_path, kind):
    runs = {k: train(data, tmp_path / f"{k}.npz", kind, k, "--float64") for k in (1, 2, 3)}
    assert runs[1]["weights"]["head.pred.b" if kind == "detection" else "head.fc2.b"].dtype == np.float64
    for k in (2, 3):
        assert relative_difference(runs[1]["weights"], runs[k]["weights"]) < 1e-12, k
        assert_same_history(runs[1]["history"], runs[k]["history"], 1e-9)
        assert len(runs[k]["digests"]) == k and len(set(runs[k]["digests"])) == 1  # replicas bit-identical
    if kind == "detection":
        assert runs[1]["history"][-1]["val_map_50"] > 0.05  # AP gathered from every process's detections
    else:
        assert runs[1]["history"][-1]["val_accuracy"] > 0.5


@pytest.mark.parametrize("k", [2, 3])
def test_float32_classifier_equals_one_process_within_1e_5(data, tmp_path, k):
    one = train(data, tmp_path / "1.npz", "classification", 1)
    many = train(data, tmp_path / f"{k}.npz", "classification", k)
    assert relative_difference(one["weights"], many["weights"]) < 1e-5
    assert_same_history(one["history"], many["history"], 1e-5)
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
                    "--float64", "--checkpoint", str(checkpoint), "--fail-rank", "1", "--fail-step", "10")
    assert killed.returncode != 0 and checkpoint.exists()  # epoch 1 (7 steps) was saved, epoch 2 was not
    assert json.loads(str(np.load(checkpoint)["history"]))[-1]["epoch"] == 1
    resumed = train(data, tmp_path / "resumed.npz", "detection", 3, "--float64", "--checkpoint",
                    str(checkpoint))
    whole = train(data, tmp_path / "whole.npz", "detection", 1, "--float64")
    assert relative_difference(whole["weights"], resumed["weights"]) < 1e-12
    assert_same_history(whole["history"], resumed["history"], 1e-9)
