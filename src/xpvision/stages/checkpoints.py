"""Checkpoint files of the train stage, named by a fingerprint of everything that determines the result.

The train block, the training data manifests, the initial weights and the xpvision source code: a checkpoint
written by another configuration is never resumed, and stale ones are deleted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from xpvision.config import TrainConfig, block_dict
from xpvision.distributed import SingleCommunicator
from xpvision.stages import TaskPaths

PLACEMENT_KEYS = ("processes", "hosts")
"""Train-block keys that say where training runs, not what it computes: a run killed with K processes resumes
with any number."""


def fingerprint(cfg: TrainConfig, files: list[Path]) -> str:
    """SHA-256 (16 hex digits) of the train block (but :data:`PLACEMENT_KEYS`), the given files and the
    xpvision source code."""
    block = {k: v for k, v in block_dict(cfg).items() if k not in PLACEMENT_KEYS}
    digest = hashlib.sha256(json.dumps(block, sort_keys=True).encode())
    package = Path(__file__).resolve().parents[1]
    for path in [*files, *sorted(package.rglob("*.py"))]:
        digest.update(str(path.relative_to(package) if path.is_relative_to(package) else path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def checkpoint_path(paths: TaskPaths, key: str, comm: Any = None) -> Path:
    """``checkpoints/<task>/<key>.npz``, after deleting checkpoints of other configurations (by the root
    process of ``comm``, the others waiting for it)."""
    comm = comm or SingleCommunicator()
    if comm.is_root:
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in paths.checkpoints.glob("*.npz"):
            if stale.stem != key:
                stale.unlink()
    comm.barrier()
    return paths.checkpoints / f"{key}.npz"
