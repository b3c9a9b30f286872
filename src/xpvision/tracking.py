"""MLflow tracking for the pipeline: the only module importing ``mlflow`` (lazily: the import takes seconds).

Runs are organised as one experiment per task (``<prefix>-<task>``), one *parent run* per pipeline execution
of that task, and one *nested run* per stage. DVC starts each stage as its own process, so the parent run id
travels in ``reports/<task>/pipeline_run.json``, written by the task's ``start_run`` stage and read by the
task's other stages (see dvc.yaml and README, "How MLflow runs map onto DVC stages").

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri`` from params.yaml (``sqlite:///mlflow.db``).
For SQLite stores the artifacts of experiment ``E`` go to ``mlartifacts/E`` beside the database file. A remote
server that does not answer within ``tracking.connect_timeout_s``, or answers its REST API with errors (a
broken backend store), stops the stage *before any work* with
:class:`TrackingError` (``on_unreachable: fail``) or switches to ``tracking.local_uri`` with a warning
(``on_unreachable: local``), so no training result is ever computed and then lost. Processes that first use
a fresh SQLite store at the same time create its tables one at a time (a file lock beside it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from xpvision import atomic
from xpvision.config import TrackingConfig
from xpvision.errors import DataError, XPVisionError

PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value


class TrackingError(XPVisionError, RuntimeError):
    """The MLflow tracking store cannot be reached or refuses a request."""


# -- tracking URI --------------------------------------------------------------------------------------------
def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """The tracking URI to log to, after the environment override and the reachability check."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri
    if not uri.startswith(("http://", "https://")):
        return uri
    problem = _server_problem(uri, cfg.connect_timeout_s)
    if problem is None:
        return uri
    if cfg.on_unreachable == "fail":
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({problem}); nothing was run. Start the server, "
            f"unset MLFLOW_TRACKING_URI, or set tracking.on_unreachable: local in params.yaml to log to "
            f"{cfg.local_uri} instead")
    print(f"warning: MLflow tracking server {uri} is unreachable ({problem}); logging to {cfg.local_uri}",
          file=sys.stderr)
    return cfg.local_uri


def _server_problem(uri: str, timeout_s: float) -> str | None:
    """None if the MLflow server at ``uri`` answers ``/health`` and a read of its REST API (a server whose
    store is broken passes the first and fails the second), else what went wrong."""
    for path in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + path, timeout=timeout_s) as response:
                if response.status != 200:
                    return f"{path} answered HTTP {response.status}"
        except urllib.error.HTTPError as e:
            body = e.read(300).decode("utf-8", "replace").strip()
            return f"{path} answered HTTP {e.code} with errors{': ' + body if body else ''}"
        except (urllib.error.URLError, OSError) as e:
            return str(getattr(e, "reason", e))
    return None


def _artifact_location(uri: str, experiment: str) -> str | None:
    """``file://`` artifact folder beside a SQLite store; None (the server decides) for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = Path(uri.removeprefix("sqlite:///"))
    return (db_path.parent.resolve() / "mlartifacts" / experiment).as_uri()


def _client(uri: str):
    from mlflow import MlflowClient

    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    db_path = Path(uri.removeprefix("sqlite:///"))
    db_path.parent.mkdir(parents=True, exist_ok=True)
    # two stages starting on a fresh store at once would both create its tables: one at a time
    with open(db_path.with_name(db_path.name + ".init-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # creates or migrates the tables, under the lock
    return client


def _experiment_id(client, uri: str, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri, name))
    except MlflowException:  # another process created it since the look-up
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


# -- parent run ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PipelineRun:
    """The parent run of a task's pipeline execution, as stored in ``reports/<task>/pipeline_run.json``."""

    task: str
    run_id: str
    experiment_id: str
    experiment_name: str
    tracking_uri: str

    def write(self, path: str | Path) -> None:
        atomic.write_json(path, asdict(self))

    @classmethod
    def read(cls, path: str | Path) -> PipelineRun:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(**data)
        except FileNotFoundError as e:
            raise DataError(f"{path}: missing; run the task's start_run stage first (dvc repro)") from e
        except (json.JSONDecodeError, TypeError) as e:
            raise DataError(f"{path}: not a pipeline run file ({e})") from e


def start_pipeline_run(task: str, cfg: TrackingConfig, params: Mapping[str, Any]) -> PipelineRun:
    """Create the parent run of this task's pipeline execution, logging ``params`` (the task's blocks)."""
    uri = resolve_tracking_uri(cfg)
    client = _client(uri)
    name = f"{cfg.experiment_prefix}-{task}"
    experiment_id = _experiment_id(client, uri, name)
    run = client.create_run(experiment_id, run_name=f"{task} pipeline", tags={
        "xpvision.task": task, "xpvision.kind": "pipeline", **git_tags()})
    _log_params(client, run.info.run_id, params)
    return PipelineRun(task=task, run_id=run.info.run_id, experiment_id=experiment_id, experiment_name=name,
                       tracking_uri=uri)


# -- stage runs ----------------------------------------------------------------------------------------------
class StageRun:
    """A nested MLflow run for one stage; built by :func:`stage_run`."""

    def __init__(self, client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a (nested) mapping as flat dotted parameter names."""
        _log_params(self.client, self.run_id, params)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log the finite numeric entries of ``metrics`` (others, e.g. arrays, are skipped)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, step or 0) for key, value in _flatten(metrics).items()
                   if _is_number(value) and math.isfinite(float(value))]
        for start in range(0, len(entries), 1000):
            self.client.log_batch(self.run_id, metrics=entries[start:start + 1000])

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Trainer callback: per-epoch metrics (loss, accuracy/mAP/mIoU, lr, epoch time), ``step=epoch``."""
        self.log_metrics(metrics, step=epoch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file, or every file under a folder."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))


@contextlib.contextmanager
def stage_run(stage: str, pipeline_file: str | Path, cfg: TrackingConfig, *, data_paths: tuple[str, ...] = (),
              final: bool = False) -> Iterator[StageRun]:
    """Open the nested run of ``stage`` under the parent run recorded in ``pipeline_file``.

    Tags: stage, task, git commit and dirty flag, and the DVC md5 of every path in ``data_paths`` (from
    ``dvc.lock``). The run ends FINISHED, or FAILED if the block raises (the parent is marked FAILED too);
    ``final`` marks the parent FINISHED when this (the task's last) stage succeeds. When the parent run is not
    in the store (a fresh clone, another server), the stage run is logged at the top level, tagged with the
    parent id.
    """
    parent = PipelineRun.read(pipeline_file)
    uri = resolve_tracking_uri(cfg)
    client = _client(uri)
    experiment_id = _experiment_id(client, uri, parent.experiment_name)
    tags = {"xpvision.task": parent.task, "xpvision.stage": stage, "xpvision.kind": "stage",
            "xpvision.pipeline_run": parent.run_id, **git_tags(), **dvc_lineage_tags(data_paths)}
    parent_id = parent.run_id if _run_exists(client, parent.run_id) else None
    if parent_id is not None:
        tags[PARENT_TAG] = parent_id
    with _logged_run(client, experiment_id, stage, tags, parent_id, final) as run:
        yield run


@contextlib.contextmanager
def standalone_run(name: str, experiment_task: str, cfg: TrackingConfig, *,
                   data_paths: tuple[str, ...] = ()) -> Iterator[StageRun]:
    """A top-level run ``name`` in experiment ``<prefix>-<experiment_task>`` (a stage outside the tasks'
    pipelines, such as the transfer-learning report), with the same tags as :func:`stage_run`."""
    uri = resolve_tracking_uri(cfg)
    client = _client(uri)
    experiment_id = _experiment_id(client, uri, f"{cfg.experiment_prefix}-{experiment_task}")
    tags = {"xpvision.task": experiment_task, "xpvision.stage": name, "xpvision.kind": "stage", **git_tags(),
            **dvc_lineage_tags(data_paths)}
    with _logged_run(client, experiment_id, name, tags, None, False) as run:
        yield run


@contextlib.contextmanager
def _logged_run(client, experiment_id: str, name: str, tags: dict[str, str], parent_id: str | None,
                final: bool) -> Iterator[StageRun]:
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    try:
        yield StageRun(client, run.info.run_id)
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        if parent_id is not None:
            client.set_terminated(parent_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    if final and parent_id is not None:
        client.set_terminated(parent_id, "FINISHED")


def _run_exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


# -- lineage -------------------------------------------------------------------------------------------------
def git_tags(cwd: str | Path = ".") -> dict[str, str]:
    """``mlflow.source.git.commit`` and ``xpvision.git_dirty`` (tracked files modified); empty outside git."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"mlflow.source.git.commit": commit, "xpvision.git_dirty": str(dirty).lower()}


def dvc_lineage_tags(paths: tuple[str, ...], lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """``dvc.md5.<path>``: the md5 DVC recorded in ``dvc.lock`` for each path (an earlier stage's output).

    A stage's own entry in dvc.lock is written only after it succeeds, so the hashes of the data it reads are
    taken from the stages that produced them. Paths DVC has not recorded yet are tagged ``unknown``.
    """
    hashes: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        lock = yaml.safe_load(Path(lock_path).read_text(encoding="utf-8")) or {}
        for entry in (lock.get("stages") or {}).values():
            for out in entry.get("outs") or ():
                hashes[out["path"]] = out.get("md5", "unknown")
    return {f"dvc.md5.{path}": hashes.get(path, "unknown") for path in paths}


# -- helpers -------------------------------------------------------------------------------------------------
def _log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    entries = [Param(key, _param_text(value)) for key, value in _flatten(params).items()]
    for start in range(0, len(entries), 100):
        client.log_batch(run_id, params=entries[start:start + 100])


def _param_text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[:MAX_PARAM_LENGTH - 3] + "..."


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) or (
        hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0)


# -- MLflow models -------------------------------------------------------------------------------------------
def save_pyfunc_model(model_dir: str | Path, out_dir: str | Path, example: Any) -> Path:
    """Write ``model_dir`` (model.npz + model.json) as an MLflow pyfunc model in ``out_dir`` (replaced).

    The model's ``loader_module`` is :mod:`xpvision.export.pyfunc` and the xpvision package is bundled as its
    code, so ``mlflow models predict --env-manager local`` needs no installed xpvision. ``example`` is an
    input ``(N, C, H, W)`` float32 array in [0, 1], stored with the model and used to infer its signature.
    """
    import shutil
    import tempfile
    import warnings

    import mlflow.pyfunc
    import numpy as np
    from mlflow.models import infer_signature

    from xpvision.export.pyfunc import XPVisionPyfunc

    out_dir = Path(out_dir)
    package = Path(__file__).resolve().parent
    output = XPVisionPyfunc(str(model_dir)).predict(example)
    with warnings.catch_warnings():  # MLflow hints that integer columns cannot hold missing values
        warnings.simplefilter("ignore", UserWarning)
        signature = infer_signature(example, output)
    requirements = [f"numpy=={np.__version__}", "pillow", "pyyaml", "pandas"]
    # staged beside the model folder (not inside it: MLflow copies data_path) and renamed into place
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=Path(model_dir).parent) as scratch:
        data = Path(scratch) / "model"
        data.mkdir()
        for name in ("model.npz", "model.json"):
            shutil.copy2(Path(model_dir) / name, data / name)
        staged = Path(scratch) / out_dir.name
        mlflow.pyfunc.save_model(
            str(staged), loader_module="xpvision.export.pyfunc", data_path=str(data),
            code_paths=[str(package)], pip_requirements=requirements,
            signature=signature, input_example=example)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staged.rename(out_dir)
    return out_dir


class Untracked:
    """A stage run that logs nothing: what the processes other than the root of a data-parallel stage
    use (the root's run is the run)."""

    def log_params(self, params: dict) -> None: ...
    def set_tags(self, tags: dict) -> None: ...
    def log_artifact(self, path: Any, artifact_path: str | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, metrics: dict) -> None: ...
