"""Starting ``processes`` under mpiexec: the command, host lists, and the errors raised before any work."""

import dataclasses
import sys
from pathlib import Path

import pytest

from xpvision.config import load_params
from xpvision.distributed import launch
from xpvision.errors import ConfigError
from xpvision.nn.parallel import REDUCTION_BLOCKS

ROOT = Path(__file__).resolve().parents[2]


def train_block(**changes):
    return dataclasses.replace(load_params(ROOT / "params.yaml").train["classification"], **changes)


def test_the_command_runs_the_stage_under_mpiexec_with_a_thread_share_each():
    command, env = launch.launch_command(train_block(processes=2), "classification",
                                         ["train", "--task", "classification", "--params", "p.yaml"])
    assert Path(command[0]).name == "mpiexec" and command[1:3] == ["-n", "2"]
    assert command[3:] == [sys.executable, "-m", "xpvision.cli", "train", "--task", "classification",
                           "--params", "p.yaml"]
    assert env["OPENBLAS_NUM_THREADS"] == str(max(1, launch.cpu_count() // 2))


def test_hosts_lists_and_hostfiles(tmp_path):
    assert launch.host_arguments(None, "k") == ([], None)
    assert launch.host_arguments("node1:4,node2:4", "k") == (["-hosts", "node1:4,node2:4"], 8)
    assert launch.host_arguments("10.0.0.1,10.0.0.2:3", "k") == (["-hosts", "10.0.0.1,10.0.0.2:3"], 4)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the cluster\nnode1:2\n\nnode2:2  # second\n")
    assert launch.host_arguments(str(hostfile), "k") == (["-f", str(hostfile)], 4)
    with pytest.raises(ConfigError, match=r"train\.x\.hosts: expected host\[:slots\] entries.*'node1:'"):
        launch.host_arguments("node1:,node2", "train.x.hosts")


def test_too_many_processes_are_refused_before_anything_starts():
    with pytest.raises(ConfigError, match=r"processes: 9 is larger than allowed: .*hosts offers 8 slots"):
        launch.launch_command(train_block(processes=9, hosts="a:4,b:4"), "classification", [])
    with pytest.raises(ConfigError, match="processes: 60 is larger than allowed: batch_size 50"):
        launch.launch_command(train_block(processes=60), "classification", [])
    with pytest.raises(ConfigError, match="device 'gpu' needs one GPU per process"):
        launch.launch_command(train_block(processes=2, device="gpu"), "classification", [])


def test_auto_is_a_process_per_core_within_the_batch_and_the_reduction_blocks(monkeypatch):
    """``auto``: the cores this process may run on, at most the batch and REDUCTION_BLOCKS (so that the bits
    are the same on every machine), the slots of ``hosts``, one process on the GPU; numbers pass through."""
    monkeypatch.setattr(launch, "cpu_count", lambda: 2)
    assert launch.process_count(train_block(processes="auto"), "classification") == 2
    monkeypatch.setattr(launch, "cpu_count", lambda: 64)
    assert launch.process_count(train_block(processes="auto"), "classification") == REDUCTION_BLOCKS
    assert launch.process_count(train_block(processes="auto", batch_size=4), "classification") == 4
    assert launch.process_count(train_block(processes="auto", hosts="a:4,b:2"), "classification") == 6
    assert launch.process_count(train_block(processes="auto", device="gpu"), "classification") == 1
    assert launch.process_count(train_block(processes=3), "classification") == 3
    command, _ = launch.launch_command(train_block(processes="auto", batch_size=4), "classification", [])
    assert command[1:3] == ["-n", "4"]


def test_auto_without_mpi_trains_in_one_process_and_says_why(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(launch, "cpu_count", lambda: 8)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert launch.process_count(train_block(processes="auto"), "detection") == 1
    said = capsys.readouterr().err
    assert "train.detection.processes auto: one process (processes > 1 needs mpiexec" in said


def test_a_missing_mpiexec_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"needs mpiexec.*pip install 'xpvision\[distributed\]'"):
        launch.launch_command(train_block(processes=2), "classification", [])
