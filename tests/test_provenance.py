"""Where a stage runs: the project root seen from DVC's temporary experiment copies, git and DVC experiment
tags, DVC hashes from dvc.lock, and whether the process that opened a run still exists."""

import subprocess
import sys

import yaml

from xpvision import provenance


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_project_root_is_the_git_top_level_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    git(tmp_path, "init", "-q")
    (tmp_path / "src" / "deep").mkdir(parents=True)
    assert provenance.project_root(tmp_path / "src" / "deep") == tmp_path.resolve()


def test_project_root_leaves_dvcs_temporary_experiment_copy(tmp_path, monkeypatch):
    """``dvc exp run --temp / --queue`` run in <project>/.dvc/tmp/exps/<run>/, a git repository of its own."""
    monkeypatch.delenv("DVC_ROOT", raising=False)
    copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    copy.mkdir(parents=True)
    git(copy, "init", "-q")
    assert provenance.project_root(copy) == (tmp_path / "project").resolve()
    assert provenance.project_root(copy / "reports") == (tmp_path / "project").resolve()


def test_project_root_follows_dvc_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "real"))
    assert provenance.project_root(tmp_path) == (tmp_path / "real").resolve()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "real" / ".dvc" / "tmp" / "exps" / "run1"))
    assert provenance.project_root(tmp_path) == (tmp_path / "real").resolve()


def test_git_tags_record_commit_and_dirty_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    git(tmp_path, "init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git(tmp_path, "add", "f.txt")
    git(tmp_path, "commit", "-qm", "c")
    tags = provenance.git_tags(tmp_path)
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["xpvision.git_dirty"] == "false"
    (tmp_path / "f.txt").write_text("b")
    assert provenance.git_tags(tmp_path)["xpvision.git_dirty"] == "true"
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "b" * 40)  # inside dvc exp run: the experiment's baseline
    assert provenance.git_tags(tmp_path)["mlflow.source.git.commit"] == "b" * 40
    assert provenance.git_tags(tmp_path.parent / "nowhere") == {}


def test_experiment_tags_come_from_dvcs_environment(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert provenance.experiment_tags() == {}
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-1")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "c" * 40)
    assert provenance.experiment_tags() == {"dvc.exp.name": "lr-sweep-1", "dvc.exp.baseline_rev": "c" * 40}


def test_output_hashes_come_from_dvc_lock(tmp_path):
    lock = {"schema": "2.0", "stages": {"download@classification": {"cmd": "x", "outs": [
        {"path": "data/classification/processed", "md5": "abc123.dir", "hash": "md5"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    hashes = provenance.dvc_output_hashes(("data/classification/processed", "data/classification/augmented"),
                                          tmp_path / "dvc.lock")
    assert hashes == {"data/classification/processed": "abc123.dir",
                      "data/classification/augmented": "unknown"}
    assert provenance.dvc_output_hashes(("a",), tmp_path / "missing.lock") == {"a": "unknown"}


def test_process_gone_tells_a_live_process_from_an_ended_one():
    tags = provenance.process_tags()
    assert not provenance.process_gone(tags)  # this process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert provenance.process_gone({**tags, "xpvision.pid": str(child.pid)})
    assert provenance.process_gone({**tags, "xpvision.pid_start": "1.000"})  # the pid names another process
    other_host = {**tags, "xpvision.host": "another-host", "xpvision.pid": str(child.pid)}
    assert not provenance.process_gone(other_host)
    assert not provenance.process_gone({})
