"""Where a pipeline stage runs and what it ran from: project root, git commit, DVC experiment, data hashes,
and the process itself. Plain facts for :mod:`xpvision.tracking` to log; nothing here imports MLflow.

``dvc exp run --temp`` and ``dvc exp run --queue`` execute the stages in a temporary copy of the workspace
under ``<project>/.dvc/tmp/exps/``, deleted afterwards: a store found by a relative path there would be the
copy's and would vanish with it. :func:`project_root` finds the real project: DVC sets ``DVC_ROOT`` to it
for every stage command (for experiments too, in their copy), and a path inside ``.dvc/tmp/exps/`` is mapped
to the project above it when the variable is missing (a stage command run by hand in the copy).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path

import yaml

EXPERIMENT_COPIES = (".dvc", "tmp", "exps")  # where DVC puts the temporary copies of --temp / --queue runs


def project_root(cwd: str | Path | None = None) -> Path:
    """The project's root folder (absolute), never a temporary experiment copy of it.

    ``DVC_ROOT`` if set (DVC sets it for stage commands), else the git top level of ``cwd`` (default: the
    working directory), else ``cwd``; a folder inside ``<project>/.dvc/tmp/exps/`` gives ``<project>``.
    """
    cwd = Path(cwd or os.getcwd())
    root = Path(os.environ.get("DVC_ROOT") or _git(cwd, "rev-parse", "--show-toplevel") or cwd).resolve()
    parts = root.parts
    for i in range(len(parts) - len(EXPERIMENT_COPIES) + 1):
        if parts[i:i + len(EXPERIMENT_COPIES)] == EXPERIMENT_COPIES:
            return Path(*parts[:i])
    return root


def git_tags(cwd: str | Path = ".") -> dict[str, str]:
    """``mlflow.source.git.commit`` and ``xpvision.git_dirty`` (tracked files modified); empty outside git.

    In a DVC experiment the commit is the experiment's baseline (``DVC_EXP_BASELINE_REV``): the commit its
    changes apply to, whatever DVC's temporary copy has checked out.
    """
    commit = os.environ.get("DVC_EXP_BASELINE_REV") or _git(cwd, "rev-parse", "HEAD")
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    if commit is None or status is None:
        return {}
    return {"mlflow.source.git.commit": commit, "xpvision.git_dirty": str(bool(status)).lower()}


def experiment_tags() -> dict[str, str]:
    """``dvc.exp.name`` and ``dvc.exp.baseline_rev`` inside ``dvc exp run`` (any kind); empty in
    ``dvc repro``."""
    tags = {"dvc.exp.name": os.environ.get("DVC_EXP_NAME"),
            "dvc.exp.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV")}
    return {key: value for key, value in tags.items() if value}


def dvc_output_hashes(paths: tuple[str, ...], lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """The md5 DVC recorded in ``dvc.lock`` for each path (an earlier stage's output), ``unknown`` if none.

    A stage's own entry in dvc.lock is written only after it succeeds, so the hashes of the data it reads are
    taken from the stages that produced them.
    """
    hashes: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        lock = yaml.safe_load(Path(lock_path).read_text(encoding="utf-8")) or {}
        for entry in (lock.get("stages") or {}).values():
            for out in entry.get("outs") or ():
                hashes[out["path"]] = out.get("md5", "unknown")
    return {path: hashes.get(path, "unknown") for path in paths}


# -- the process logging a run -------------------------------------------------------------------------------
def process_tags() -> dict[str, str]:
    """``xpvision.host``, ``xpvision.pid`` and ``xpvision.pid_start`` (the process's start time, so that a
    recycled pid is not taken for this process): what :func:`process_gone` checks."""
    return {"xpvision.host": socket.gethostname(), "xpvision.pid": str(os.getpid()),
            "xpvision.pid_start": _start_time(os.getpid()) or "unknown"}


def process_gone(tags: dict[str, str]) -> bool:
    """True if the process named by :func:`process_tags` ran on this host and no longer exists.

    False for another host's process (nothing can be known of it) and for runs without those tags.
    """
    if tags.get("xpvision.host") != socket.gethostname() or not tags.get("xpvision.pid", "").isdigit():
        return False
    started = _start_time(int(tags["xpvision.pid"]))
    return started is None or started != tags.get("xpvision.pid_start", started)


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` as text, None if there is no such process."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # ended, not yet reaped by its parent
            return None
        return f"{process.create_time():.3f}"
    except psutil.NoSuchProcess:
        return None


def _git(cwd: str | Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()
