"""MLflow tracking for the pipeline: the only module importing ``mlflow`` (lazily: the import takes seconds).

Runs are organised as one experiment per task (``<prefix>-<task>``, tagged as a model-training experiment so
the MLflow UI opens on its runs), one *parent run* per pipeline execution of that task, and one *nested run*
per stage. DVC starts each stage as its own process, so the parent run id travels in
``reports/<task>/pipeline_run.json``, written by the task's ``start_run`` stage and read by the task's other
stages (see dvc.yaml and README, "How MLflow runs map onto DVC stages").

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri`` from params.yaml (``sqlite:///mlflow.db``).
A relative SQLite path is taken from the project root (:func:`xpvision.provenance.project_root`), never from
a temporary copy made by ``dvc exp run --temp`` / ``--queue``, so every way of running the pipeline logs to
the same store. For SQLite stores the artifacts of experiment ``E`` go to ``mlartifacts/E`` beside the
database file. A remote server that does not answer within ``tracking.connect_timeout_s``, or answers its REST
API with errors (a broken backend store), stops the stage *before any work* with :class:`TrackingError`
(``on_unreachable: fail``) or switches to ``tracking.local_uri`` with a warning (``on_unreachable: local``),
so no training result is ever computed and then lost. Processes that first use a fresh SQLite store at the
same time create its tables one at a time (a file lock beside it).

Run status: a stage run ends FINISHED; FAILED with the error in the tag ``xpvision.error`` when the stage
raises; KILLED on SIGINT or SIGTERM. A run left RUNNING by a process that cannot clean up (SIGKILL, power
loss) is marked KILLED when the same stage of the same task next starts on that host.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xpvision import atomic, provenance
from xpvision.config import TrackingConfig
from xpvision.errors import DataError, XPVisionError

PARENT_TAG = "mlflow.parentRunId"
ERROR_TAG = "xpvision.error"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value
MAX_TAG_LENGTH = 5000  # under MLflow's limit on a tag value
# Marks each experiment as model training (not GenAI) for MLflow clients and UIs that read the tag. The
# MLflow 3.17 UI ignores it and follows its own "GenAI | Model training" switch instead: see ui_url.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# The MLflow UI's query parameter that selects its model-training view (runs table and charts).
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
CANDIDATE_ALIAS = "candidate"


class TrackingError(XPVisionError, RuntimeError):
    """The MLflow tracking store cannot be reached or refuses a request."""


class Terminated(BaseException):
    """SIGTERM arrived while a stage run was open (raised by the handler :func:`stage_run` installs)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


# -- tracking URI --------------------------------------------------------------------------------------------
def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """The tracking URI to log to, after the environment override and the reachability check; a relative
    SQLite path is made absolute from the project root."""
    uri = anchored(os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri)
    if not _is_server(uri):
        return uri
    problem = _server_problem(uri, cfg.connect_timeout_s)
    if problem is None:
        return uri
    if cfg.on_unreachable == "fail":
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({problem}); nothing was run. Start the server, "
            f"unset MLFLOW_TRACKING_URI, or set tracking.on_unreachable: local in params.yaml to log to "
            f"{cfg.local_uri} instead")
    local = anchored(cfg.local_uri)
    print(f"warning: MLflow tracking server {uri} is unreachable ({problem}); logging to {local}",
          file=sys.stderr)
    return local


def _is_server(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (http or https), not a local store."""
    return uri.startswith(("http://", "https://"))


def anchored(uri: str) -> str:
    """``uri`` with a relative SQLite path (``sqlite:///mlflow.db``) made absolute from the project root."""
    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:////"):
        return uri
    return f"sqlite:///{provenance.project_root() / uri.removeprefix('sqlite:///')}"


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
    """The id of experiment ``name``, created (or completed) with the model-training kind tag."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(uri, name),
                                            tags=EXPERIMENT_KIND)
        except MlflowException:  # another process created it since the look-up
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def _lineage_tags() -> dict[str, str]:
    """Git commit and dirty flag, DVC experiment name and baseline."""
    return {**provenance.git_tags(), **provenance.experiment_tags()}


def _run_name(name: str) -> str:
    """``name``, followed by the DVC experiment's name inside ``dvc exp run`` (parent runs; stage runs keep
    the stage's name and carry the experiment in their ``dvc.exp.name`` tag)."""
    experiment = provenance.experiment_tags().get("dvc.exp.name")
    return f"{name} ({experiment})" if experiment else name


def ui_url(tracking_uri: str, experiment_id: str) -> str | None:
    """The MLflow UI page of an experiment's runs table on the tracking server ``tracking_uri``, in the
    UI's model-training view (its default is the GenAI overview); ``None`` for a local store, which has
    no UI until ``mlflow ui`` serves it."""
    if not _is_server(tracking_uri):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}?{MODEL_TRAINING_VIEW}"


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
    run = client.create_run(experiment_id, run_name=_run_name(f"{task} pipeline"), tags={
        "xpvision.task": task, "xpvision.kind": "pipeline", **_lineage_tags()})
    _log_params(client, run.info.run_id, params)
    return PipelineRun(task=task, run_id=run.info.run_id, experiment_id=experiment_id, experiment_name=name,
                       tracking_uri=uri)


# -- stage runs ----------------------------------------------------------------------------------------------
class StageRun:
    """A nested MLflow run for one stage; built by :func:`stage_run`."""

    def __init__(self, client, run_id: str, experiment_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a (nested) mapping as flat dotted parameter names."""
        _log_params(self.client, self.run_id, params)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log the finite numeric entries of ``metrics`` (others, e.g. arrays, are skipped)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, step or 0) for key, value in _numbers(metrics).items()]
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

    def log_datasets(self, hashes: Mapping[str, str], context: str) -> None:
        """The data this stage read as MLflow dataset inputs of its run (see :func:`_log_datasets`)."""
        _log_datasets(self.client, self.run_id, hashes, context)

    def register_model(self, name: str, artifact_path: str, metrics: Mapping[str, Any]) -> str:
        """Register the MLflow model logged at ``artifact_path`` of this run as a new version of ``name``,
        with ``metrics`` (the evaluation results) as the version's tags and the alias ``candidate`` moved
        onto it; return the version number."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as e:  # made by an earlier run, or by another pipeline at the same moment
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        tags = {key: f"{value:.6g}" for key, value in _numbers(metrics).items()}
        version = self.client.create_model_version(name, f"runs:/{self.run_id}/{artifact_path}",
                                                   run_id=self.run_id, tags=tags)
        try:
            self.client.set_registered_model_alias(name, CANDIDATE_ALIAS, version.version)
        except MlflowException:
            # another pipeline created the alias at the same moment (the store's unique key refused the
            # second insert): now it exists, and setting it again moves it
            self.client.set_registered_model_alias(name, CANDIDATE_ALIAS, version.version)
        return str(version.version)

    @contextlib.contextmanager
    def system_metrics(self, interval_s: float = 10.0) -> Iterator[None]:
        """Log MLflow's system metrics (``system/cpu_utilization_percentage``, memory, disk, network, and
        GPU where available) every ``interval_s`` seconds while the block runs
        (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides the interval)."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s,
                                       tracking_uri=self.client.tracking_uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()


@contextlib.contextmanager
def stage_run(stage: str, pipeline_file: str | Path, cfg: TrackingConfig, *, data_paths: tuple[str, ...] = (),
              final: bool = False) -> Iterator[StageRun]:
    """Open the nested run of ``stage`` under the parent run recorded in ``pipeline_file``.

    Tags: stage, task, git commit and dirty flag, DVC experiment name, the process (host, pid) and the DVC
    md5 of every path in ``data_paths`` (from ``dvc.lock``), which are also logged as dataset inputs. Runs of
    the same stage and task left RUNNING by a process that no longer exists are marked KILLED first. The run
    ends FINISHED, FAILED (exception; ``xpvision.error`` holds the message) or KILLED (SIGINT, SIGTERM), and
    the parent with it; ``final`` marks the parent FINISHED when this (the task's last) stage succeeds. When
    the parent run is not in the store (a fresh clone, another server), the stage run is logged at the top
    level, tagged with the parent id.
    """
    parent = PipelineRun.read(pipeline_file)
    uri = resolve_tracking_uri(cfg)
    client = _client(uri)
    experiment_id = _experiment_id(client, uri, parent.experiment_name)
    mark_abandoned_runs(client, experiment_id, parent.task, stage)
    hashes = provenance.dvc_output_hashes(data_paths)
    tags = {"xpvision.task": parent.task, "xpvision.stage": stage, "xpvision.kind": "stage",
            "xpvision.pipeline_run": parent.run_id, **_lineage_tags(),
            **{f"dvc.md5.{path}": md5 for path, md5 in hashes.items()}}
    parent_id = parent.run_id if _run_exists(client, parent.run_id) else None
    if parent_id is not None:
        tags[PARENT_TAG] = parent_id
        if client.get_run(parent_id).info.status != "RUNNING":  # a stage runs again under it
            client.update_run(parent_id, status="RUNNING")
    with _logged_run(client, experiment_id, stage, tags, parent_id, final) as run:
        run.log_datasets(hashes, stage)
        if parent_id is not None:  # the UI lists parents: their Dataset column shows all data read
            _log_datasets(client, parent_id, hashes, stage)
        yield run


@contextlib.contextmanager
def standalone_run(name: str, experiment_task: str, cfg: TrackingConfig, *,
                   data_paths: tuple[str, ...] = ()) -> Iterator[StageRun]:
    """A top-level run ``name`` in experiment ``<prefix>-<experiment_task>`` (a stage outside the tasks'
    pipelines, such as the transfer-learning report), with the same tags and statuses as :func:`stage_run`."""
    uri = resolve_tracking_uri(cfg)
    client = _client(uri)
    experiment_id = _experiment_id(client, uri, f"{cfg.experiment_prefix}-{experiment_task}")
    mark_abandoned_runs(client, experiment_id, experiment_task, name)
    hashes = provenance.dvc_output_hashes(data_paths)
    tags = {"xpvision.task": experiment_task, "xpvision.stage": name, "xpvision.kind": "stage",
            **_lineage_tags(), **{f"dvc.md5.{path}": md5 for path, md5 in hashes.items()}}
    with _logged_run(client, experiment_id, name, tags, None, False) as run:
        run.log_datasets(hashes, name)
        yield run


def _log_datasets(client, run_id: str, hashes: Mapping[str, str], context: str) -> None:
    """Log ``hashes`` (DVC output path -> md5) as MLflow dataset inputs of ``run_id``: named after the DVC
    output (``data/<task>/processed``), the DVC md5 as digest, ``context`` (the stage) as the input's context.
    Outputs DVC has not hashed yet are left out (their ``dvc.md5.*`` tags say ``unknown``); a dataset the run
    already has is not added twice (MLflow keeps the first context)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    inputs = [DatasetInput(Dataset(name=path, digest=md5, source_type="dvc",
                                   source=json.dumps({"path": path, "md5": md5})),
                           tags=[InputTag("mlflow.data.context", context)])
              for path, md5 in hashes.items() if md5 != "unknown"]
    if not inputs:
        return
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as e:  # another pipeline created the same dataset row since the store's look-up
        if "unique" not in str(e).lower():
            raise
        client.log_inputs(run_id, datasets=inputs)  # the row exists now and is reused


@contextlib.contextmanager
def _logged_run(client, experiment_id: str, name: str, tags: dict[str, str], parent_id: str | None,
                final: bool) -> Iterator[StageRun]:
    run = client.create_run(experiment_id, run_name=name, tags={**tags, **provenance.process_tags()})
    run_id = run.info.run_id
    try:
        with _sigterm_raises():
            yield StageRun(client, run_id, experiment_id)
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt | Terminated) else "FAILED"
        message = "interrupted by SIGINT" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        with _signals_held():  # a second Ctrl-C must not leave the run open
            client.set_tag(run_id, ERROR_TAG, message[:MAX_TAG_LENGTH])
            client.set_terminated(run_id, status)
            if parent_id is not None:
                client.set_terminated(parent_id, status)
        raise
    client.set_terminated(run_id, "FINISHED")
    if final and parent_id is not None:
        client.set_terminated(parent_id, "FINISHED")


def mark_abandoned_runs(client, experiment_id: str, task: str, stage: str) -> list[str]:
    """Mark KILLED the runs of ``stage`` of ``task`` still RUNNING although the process that opened them on
    this host has ended (SIGKILL, a crash of the machine); their parent runs too. Return their ids.

    Runs of live processes (another pipeline running the same stage at this moment) and of other hosts are
    left alone.
    """
    filter_string = (f"attributes.status = 'RUNNING' and tags.`xpvision.task` = '{task}' "
                     f"and tags.`xpvision.stage` = '{stage}'")
    marked = []
    for run in client.search_runs([experiment_id], filter_string=filter_string):
        tags = run.data.tags
        if not provenance.process_gone(tags):
            continue
        client.set_tag(run.info.run_id, ERROR_TAG,
                       f"process {tags['xpvision.pid']} on {tags['xpvision.host']} ended without closing the "
                       "run (killed); marked when the stage next started")
        client.set_terminated(run.info.run_id, "KILLED")
        parent_id = tags.get(PARENT_TAG)
        if parent_id is not None and _run_exists(client, parent_id) and (
                client.get_run(parent_id).info.status == "RUNNING"):
            client.set_terminated(parent_id, "KILLED")
        marked.append(run.info.run_id)
    return marked


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM raises :class:`Terminated` instead of ending the
    process on the spot, so the run can be closed as KILLED."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM ignored while the block runs (main thread only), then restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


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


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a (nested) mapping, flattened to dotted names."""
    return {key: float(value) for key, value in _flatten(values).items()
            if _is_number(value) and math.isfinite(float(value))}


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

    @contextlib.contextmanager
    def system_metrics(self, interval_s: float = 10.0) -> Iterator[None]:
        yield
