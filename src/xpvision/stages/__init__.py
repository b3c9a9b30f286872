"""DVC stages: one module per stage, each a thin command over library functions.

A stage reads its block of ``params.yaml`` (:mod:`xpvision.config`), calls the library, writes its
outputs atomically under the paths below and logs a nested MLflow run (:mod:`xpvision.tracking`). All paths
are relative to the project root, where DVC runs the commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xpvision.config import data_task


@dataclass(frozen=True)
class TaskPaths:
    """Where a task's stages read and write (mirrors the ``outs`` of ``dvc.yaml``)."""

    task: str

    @property
    def data(self) -> Path:
        return Path("data") / data_task(self.task)

    @property
    def raw(self) -> Path:
        """Downloaded or generated source files (``download``)."""
        return self.data / "raw"

    @property
    def processed(self) -> Path:
        """Train and test shards + manifest (``download``)."""
        return self.data / "processed"

    @property
    def augmented(self) -> Path:
        """Augmented training shards + manifest (``augment``)."""
        return self.data / "augmented"

    @property
    def reports(self) -> Path:
        return Path("reports") / self.task

    @property
    def pipeline_run(self) -> Path:
        """The parent MLflow run of this task's pipeline execution (``start_run``)."""
        return self.reports / "pipeline_run.json"

    @property
    def pipeline_order(self) -> Path:
        """``start_run``'s second output, whose content never changes: a stage that depends on it runs after
        ``start_run`` but is not re-run when only the parent run is new (``dvc.yaml``'s header)."""
        return self.reports / "pipeline_order.json"

    @property
    def figures(self) -> Path:
        """PNG figures of the task (confusion matrix, PR curves, samples, overlays)."""
        return self.reports / "figures"

    @property
    def model_dir(self) -> Path:
        return Path("models") / self.task

    @property
    def checkpoints(self) -> Path:
        """Persistent training checkpoints (a ``persist: true`` output, so a killed run resumes)."""
        return Path("checkpoints") / self.task
