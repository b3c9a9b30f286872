"""MLflow tracking: parent and nested runs in a SQLite store and on a real ``mlflow server``, lineage tags,
run statuses (exception, SIGINT / SIGTERM, SIGKILL repaired later), dataset inputs, the model registry,
system metrics, and what happens when the server is unreachable (``tracking.on_unreachable: fail | local``).
The store a relative URI names is the project root's (``sqlite:///mlflow.db`` below is ``tmp_path``'s)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from xpvision import tracking
from xpvision.config import TrackingConfig

pytest.importorskip("mlflow")


def config(uri: str, on_unreachable: str = "fail", local_uri: str = "sqlite:///local.db") -> TrackingConfig:
    return TrackingConfig(uri=uri, experiment_prefix="test", on_unreachable=on_unreachable,
                          local_uri=local_uri, connect_timeout_s=2.0, log_models=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def absolute(uri: str) -> str:
    """A relative SQLite URI made absolute from the working directory (MLflow caches stores by URI text)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path.cwd() / uri.removeprefix('sqlite:///')}"
    return uri


def runs_by_name(uri: str, experiment: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=absolute(uri))
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"experiment {experiment} missing in {uri}"
    return {run.info.run_name: run for run in client.search_runs([found.experiment_id])}


def log_a_pipeline(cfg: TrackingConfig, workdir: Path) -> tracking.PipelineRun:
    """A parent run and two stage runs, as the pipeline's processes log them."""
    parent = tracking.start_pipeline_run("classification", cfg, {"train.classification": {"lr": 0.01}})
    run_file = workdir / "reports" / "classification" / "pipeline_run.json"
    parent.write(run_file)
    with tracking.stage_run("train", run_file, cfg) as stage:
        stage.log_params({"lr": 0.01, "transforms": [{"name": "Affine"}]})
        for epoch, loss in ((1, 0.9), (2, 0.5)):
            stage.on_epoch_end(epoch, {"train_loss": loss, "val_accuracy": 1 - loss, "history": [1, 2]})
        (workdir / "curve.csv").write_text("epoch,loss\n1,0.9\n")
        stage.log_artifact(workdir / "curve.csv", "training")
    with tracking.stage_run("export", run_file, cfg, final=True) as stage:
        stage.log_metrics({"onnx_max_abs_error": 1e-6})
    return parent


def check_logged(uri: str, parent: tracking.PipelineRun) -> None:
    from mlflow import MlflowClient

    runs = runs_by_name(uri, "test-classification")
    assert set(runs) == {"classification pipeline", "train", "export"}
    assert runs["classification pipeline"].info.run_id == parent.run_id
    assert runs["classification pipeline"].info.status == "FINISHED"  # the final stage closed it
    assert runs["classification pipeline"].data.params == {"train.classification.lr": "0.01"}
    for name in ("train", "export"):
        assert runs[name].data.tags["mlflow.parentRunId"] == parent.run_id
        assert runs[name].data.tags["xpvision.stage"] == name
    train = runs["train"]
    assert train.data.params == {"lr": "0.01", "transforms": '[{"name": "Affine"}]'}
    client = MlflowClient(tracking_uri=absolute(uri))
    history = client.get_metric_history(train.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.9), (2, 0.5)]
    assert "history" not in train.data.metrics  # lists are not metrics
    assert [a.path for a in client.list_artifacts(train.info.run_id, "training")] == ["training/curve.csv"]


def test_sqlite_store_holds_parent_and_nested_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = "sqlite:///mlflow.db"
    parent = log_a_pipeline(config(uri), tmp_path)
    check_logged(uri, parent)
    assert (tmp_path / "mlartifacts" / "test-classification").is_dir()  # artifacts beside the database


def test_failing_stage_marks_its_run_and_the_parent_failed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config("sqlite:///mlflow.db")
    parent = tracking.start_pipeline_run("detection", cfg, {})
    parent.write("run.json")
    with pytest.raises(RuntimeError, match="boom"), tracking.stage_run("train", "run.json", cfg):
        raise RuntimeError("boom")
    runs = runs_by_name("sqlite:///mlflow.db", "test-detection")
    assert runs["train"].info.status == "FAILED"
    assert runs["detection pipeline"].info.status == "FAILED"


def test_environment_overrides_the_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from_env.db")
    assert tracking.resolve_tracking_uri(config("sqlite:///from_params.db")) == (
        f"sqlite:///{tmp_path.resolve()}/from_env.db")  # relative: the project root's, made absolute


def test_unreachable_server_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dead = f"http://127.0.0.1:{free_port()}"
    tracking.PipelineRun("classification", "0" * 32, "1", "test-classification", dead).write("run.json")
    ran = []
    start = time.monotonic()
    expected = r"unreachable .*nothing was run.*on_unreachable: local"
    with pytest.raises(tracking.TrackingError, match=expected), tracking.stage_run("train", "run.json",
                                                                                     config(dead, "fail")):
        ran.append(True)
    assert not ran
    assert time.monotonic() - start < 10  # fails fast, no minutes of HTTP retries
    with pytest.raises(tracking.TrackingError):
        tracking.start_pipeline_run("classification", config(dead, "fail"), {})


def test_unreachable_server_with_local_fallback_logs_locally(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = config(dead, "local", local_uri="sqlite:///fallback.db")
    parent = log_a_pipeline(cfg, tmp_path)
    assert parent.tracking_uri == f"sqlite:///{tmp_path.resolve()}/fallback.db"
    assert "unreachable" in capsys.readouterr().err
    check_logged("sqlite:///fallback.db", parent)


def test_stage_of_a_parent_missing_from_the_store_is_logged_top_level(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config("sqlite:///mlflow.db")
    tracking.PipelineRun("segmentation", "f" * 32, "9", "test-segmentation", "sqlite:///elsewhere.db").write("r.json")
    with tracking.stage_run("evaluate", "r.json", cfg):
        pass
    run = runs_by_name("sqlite:///mlflow.db", "test-segmentation")["evaluate"]
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.tags["xpvision.pipeline_run"] == "f" * 32


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on a free local port (SQLite backend, one worker)."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    process = subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "art")],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("mlflow server did not answer /health within 90 s")
    yield uri
    os.killpg(process.pid, signal.SIGKILL)  # server and worker (own process group); nothing to keep
    process.wait()


@pytest.mark.slow
def test_real_server_holds_parent_and_nested_runs(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    parent = log_a_pipeline(config(mlflow_server), tmp_path)
    assert parent.tracking_uri == mlflow_server
    check_logged(mlflow_server, parent)
    assert not Path("local.db").exists()  # nothing fell back to the local store



def test_server_answering_with_errors_fails_before_any_work(tmp_path, monkeypatch):
    """/health says OK but the REST API answers 500 (a server whose backend store is broken)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Broken(BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/health"
            self.send_response(200 if ok else 500)
            self.end_headers()
            self.wfile.write(b"OK" if ok else b'{"error_code": "INTERNAL_ERROR", "message": "database gone"}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        ran = []
        start = time.monotonic()
        expected = r"HTTP 500 with errors.*database gone.*nothing was run"
        with pytest.raises(tracking.TrackingError, match=expected):
            tracking.start_pipeline_run("classification", config(uri, "fail"), {})
            ran.append(True)
        assert not ran and time.monotonic() - start < 10
    finally:
        server.shutdown()
        server.server_close()


def _first_use(db: str, barrier, results, index):
    barrier.wait()
    try:
        run = tracking.start_pipeline_run("classification", config(f"sqlite:///{db}"), {"i": index})
        results[index] = run.run_id
    except Exception as e:  # the test reports whatever failed
        results[index] = f"failed: {type(e).__name__}: {e}"


def test_two_processes_first_using_a_fresh_sqlite_store_both_succeed(tmp_path, monkeypatch):
    import multiprocessing

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Manager().dict()
    workers = [context.Process(target=_first_use, args=(str(tmp_path / "fresh.db"), barrier, results, i))
               for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert sorted(results.keys()) == [0, 1], dict(results)
    assert all(len(v) == 32 for v in results.values()), dict(results)
    assert set(runs_by_name(f"sqlite:///{tmp_path / 'fresh.db'}", "test-classification")) == {
        "classification pipeline"}
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'fresh.db'}")
    experiment = client.get_experiment_by_name("test-classification")
    assert len(client.search_runs([experiment.experiment_id])) == 2


# -- run statuses --------------------------------------------------------------------------------------------
def test_exception_marks_the_run_failed_with_the_error_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config("sqlite:///mlflow.db")
    tracking.start_pipeline_run("classification", cfg, {}).write("run.json")
    with pytest.raises(ValueError, match="bad shard"), tracking.stage_run("augment", "run.json", cfg):
        raise ValueError("bad shard 3 in data/x")
    run = runs_by_name("sqlite:///mlflow.db", "test-classification")["augment"]
    assert run.info.status == "FAILED"
    assert run.data.tags["xpvision.error"] == "ValueError: bad shard 3 in data/x"


STAGE_SCRIPT = """
import sys, time
from pathlib import Path
from xpvision import tracking
from xpvision.config import TrackingConfig

cfg = TrackingConfig(uri="sqlite:///mlflow.db", experiment_prefix="test", on_unreachable="fail",
                     local_uri="sqlite:///mlflow.db", connect_timeout_s=2.0, log_models=True)
try:
    with tracking.stage_run("train", "run.json", cfg):
        Path("ready").write_text("")
        time.sleep(300)
except tracking.Terminated as e:
    sys.exit(128 + e.signum)
"""


def start_stage_process(workdir: Path) -> subprocess.Popen:
    """A process with an open ``train`` stage run (like ``xpvision train``), once it has opened the run."""
    src = Path(__file__).resolve().parents[1] / "src"
    # SIGINT at its default in the child: a runner started in the background (`cmd &`) passes it on ignored,
    # and Python then installs no KeyboardInterrupt handler
    process = subprocess.Popen([sys.executable, "-c", STAGE_SCRIPT], cwd=workdir, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(src)},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (workdir / "ready").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"stage process did not open its run: {process.communicate()[1].decode()[-3000:]}")
        time.sleep(0.2)
    return process


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_marks_the_run_and_its_parent_killed(tmp_path, monkeypatch, sig):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.start_pipeline_run("classification", config("sqlite:///mlflow.db"), {}).write("run.json")
    process = start_stage_process(tmp_path)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode in (128 + sig, -sig), stderr.decode()[-2000:]
    runs = runs_by_name("sqlite:///mlflow.db", "test-classification")
    assert runs["train"].info.status == "KILLED"
    assert runs["train"].info.end_time is not None
    assert runs["classification pipeline"].info.status == "KILLED"


def test_run_left_running_by_sigkill_is_marked_when_the_stage_next_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config("sqlite:///mlflow.db")
    parent = tracking.start_pipeline_run("classification", cfg, {})
    parent.write("run.json")
    process = start_stage_process(tmp_path)
    process.kill()
    process.wait()
    abandoned = runs_by_name("sqlite:///mlflow.db", "test-classification")["train"]
    assert abandoned.info.status == "RUNNING"  # nothing could close it
    with tracking.stage_run("evaluate", "run.json", cfg):  # another stage leaves it alone
        pass
    assert runs_by_name("sqlite:///mlflow.db", "test-classification")["train"].info.status == "RUNNING"
    with tracking.stage_run("train", "run.json", cfg) as again:
        from mlflow import MlflowClient

        client = MlflowClient(absolute("sqlite:///mlflow.db"))
        repaired = client.get_run(abandoned.info.run_id)
        assert repaired.info.status == "KILLED"
        assert f"process {process.pid}" in repaired.data.tags["xpvision.error"]
        assert client.get_run(parent.run_id).info.status == "RUNNING"  # reopened by the stage running again
        # a run of a live process (this one, open right now) is never taken for an abandoned one
        assert tracking.mark_abandoned_runs(client, parent.experiment_id, "classification", "train") == []
        assert client.get_run(again.run_id).info.status == "RUNNING"
    assert client.get_run(again.run_id).info.status == "FINISHED"


# -- what the MLflow UI shows --------------------------------------------------------------------------------
def test_experiments_are_tagged_as_model_training(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(absolute("sqlite:///mlflow.db"))
    client.create_experiment("test-detection")  # made earlier, without the tag
    tracking.start_pipeline_run("detection", config("sqlite:///mlflow.db"), {})
    tags = client.get_experiment_by_name("test-detection").tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_data_a_stage_read_are_dataset_inputs_with_dvc_digests(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    md5 = "0123456789abcdef0123456789abcdef.dir"
    lock = {"schema": "2.0", "stages": {"download@classification": {"cmd": "x", "outs": [
        {"path": "data/classification/processed", "md5": md5, "hash": "md5"}]}}}
    Path("dvc.lock").write_text(yaml.safe_dump(lock))
    cfg = config("sqlite:///mlflow.db")
    tracking.start_pipeline_run("classification", cfg, {}).write("run.json")
    with tracking.stage_run("train", "run.json", cfg,
                            data_paths=("data/classification/processed", "data/classification/augmented")):
        pass
    run = runs_by_name("sqlite:///mlflow.db", "test-classification")["train"]
    inputs = run.inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest, i.dataset.source_type) for i in inputs] == [
        ("data/classification/processed", md5, "dvc")]  # augmented: not hashed by DVC yet, left out
    assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "train"}
    assert run.data.tags["dvc.md5.data/classification/augmented"] == "unknown"
    with tracking.stage_run("evaluate", "run.json", cfg, data_paths=("data/classification/processed",)):
        pass
    parent = runs_by_name("sqlite:///mlflow.db", "test-classification")["classification pipeline"]
    assert [(i.dataset.name, i.dataset.digest) for i in parent.inputs.dataset_inputs] == [
        ("data/classification/processed", md5)]  # the UI's runs table shows parents: listed there, once


def test_a_dataset_another_pipeline_created_at_the_same_moment_is_logged_once(tmp_path):
    """Two pipelines logging the same data into one experiment race in the store (look-up, then insert): the
    loser's insert fails on the unique key (PostgreSQL's UniqueViolation, as a server returned it in CI); the
    inputs are logged again, reusing the row. Other errors are not retried."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    class RacingClient:
        """The real client, whose next ``log_inputs`` fails first with ``error``, as the server's would."""

        def __init__(self, client, error: str) -> None:
            self.client, self.error, self.calls = client, error, 0

        def log_inputs(self, run_id, datasets):
            self.calls += 1
            if self.calls == 1:
                raise MlflowException(self.error)
            self.client.log_inputs(run_id, datasets=datasets)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("race")).info.run_id
    md5 = "0123456789abcdef0123456789abcdef.dir"
    race = 'BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint'
    racing = RacingClient(client, race + ' "dataset_pk"')
    tracking._log_datasets(racing, run_id, {"data/x/processed": md5}, "train")
    assert racing.calls == 2
    assert [i.dataset.digest for i in client.get_run(run_id).inputs.dataset_inputs] == [md5]
    other = RacingClient(client, "INTERNAL_ERROR: the store is down")
    with pytest.raises(MlflowException, match="store is down"):
        tracking._log_datasets(other, run_id, {"data/x/processed": md5}, "train")
    assert other.calls == 1


def test_ui_url_opens_the_model_training_view_that_the_installed_mlflow_ui_reads():
    import mlflow

    url = tracking.ui_url("http://127.0.0.1:5000/", "7")
    assert url == "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    assert tracking.ui_url("sqlite:////tmp/mlflow.db", "7") is None
    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    ui_code = "".join(path.read_text(encoding="utf-8") for path in bundle.glob("main.*.js"))
    key, value = tracking.MODEL_TRAINING_VIEW.split("=")
    assert f'get("{key}")' in ui_code and f'"{value}"' in ui_code


@pytest.fixture
def export_project(tmp_path, monkeypatch):
    """A project folder (the working directory) with a pipeline run in ``run.json`` on a local SQLite store
    and an MLflow model folder ``model/``: the tracking config of an export stage."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config("sqlite:///mlflow.db")
    tracking.start_pipeline_run("classification", cfg, {}).write("run.json")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    return cfg


def test_the_candidate_alias_is_moved_even_when_a_concurrent_pipeline_created_it_first(
        tmp_path, monkeypatch, export_project):
    """Two pipelines registering at once both insert the alias: the store refuses the second insert (a
    unique-key violation on PostgreSQL), and setting it again then updates it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    real_set = MlflowClient.set_registered_model_alias
    refused = []

    def set_alias_raced(client, name, alias, version):
        if not refused:  # the other pipeline's insert lands first
            real_set(client, name, alias, version)
            refused.append(version)
            raise MlflowException("duplicate key value violates unique constraint", error_code="BAD_REQUEST")
        return real_set(client, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", set_alias_raced)
    with tracking.stage_run("export", "run.json", export_project, final=True) as stage:
        stage.log_artifact(tmp_path / "model", "mlflow_model")
        assert stage.register_model("raced-classification", "mlflow_model", {"test_accuracy": 0.9}) == "1"
    candidate = MlflowClient(absolute("sqlite:///mlflow.db")).get_model_version_by_alias(
        "raced-classification", "candidate")
    assert refused and str(candidate.version) == "1"


def test_registered_version_carries_metrics_and_the_candidate_alias(tmp_path, export_project):
    from mlflow import MlflowClient

    versions = []
    for accuracy in (0.9, 0.95):
        with tracking.stage_run("export", "run.json", export_project, final=True) as stage:
            stage.log_artifact(tmp_path / "model", "mlflow_model")
            versions.append(stage.register_model("test-classification", "mlflow_model",
                                                 {"test_accuracy": accuracy, "test_loss": 0.25,
                                                  "figures": [1, 2]}))
    assert versions == ["1", "2"]
    client = MlflowClient(absolute("sqlite:///mlflow.db"))
    candidate = client.get_model_version_by_alias("test-classification", "candidate")
    assert str(candidate.version) == "2"
    assert candidate.tags == {"test_accuracy": "0.95", "test_loss": "0.25"}
    assert candidate.source.endswith("mlflow_model")
    assert candidate.run_id == stage.run_id


def test_system_metrics_are_logged_while_the_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    cfg = config("sqlite:///mlflow.db")
    tracking.start_pipeline_run("classification", cfg, {}).write("run.json")
    with tracking.stage_run("train", "run.json", cfg) as stage, stage.system_metrics():
        time.sleep(2.5)
    metrics = runs_by_name("sqlite:///mlflow.db", "test-classification")["train"].data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
