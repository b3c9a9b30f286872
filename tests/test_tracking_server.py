"""The team's tracking server as scripts/tracking-server runs it: PostgreSQL + ``mlflow server``.

CI (.ci/run) starts the server once and gives its URI in ``XPVISION_TRACKING_SERVER``; without it the test
starts its own with scripts/tracking-server in a temporary folder (free ports) and stops it. A tiny pipeline
run is logged through the server, then its REST API is asked for what the MLflow UI shows: the experiment's
kind tag, the dataset inputs with their DVC digests, and the registered model version with its alias.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from xpvision import tracking
from xpvision.config import TrackingConfig

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """The URI of a tracking server on PostgreSQL (CI's, or one started here and stopped at the end)."""
    if os.environ.get("XPVISION_TRACKING_SERVER"):
        yield os.environ["XPVISION_TRACKING_SERVER"]
        return
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="xpvision-server-", dir="/tmp"))
    folder.chmod(0o755)  # the database runs as the postgres user when the tests run as root
    env = {**os.environ, "XPVISION_SERVER_DIR": str(folder), "MLFLOW_PORT": str(free_port()),
           "PG_PORT": str(free_port()), "MLFLOW_WORKERS": "1",
           "MLFLOW": str(Path(sys.executable).parent / "mlflow")}
    script = str(ROOT / "scripts" / "tracking-server")
    started = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stderr
        yield started.stdout.strip()
    finally:
        subprocess.run([script, "stop"], env=env, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def rest(uri: str, endpoint: str, **query) -> dict:
    with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}",
                                timeout=30) as response:
        return json.loads(response.read())


def test_rest_api_shows_kind_tag_dataset_inputs_and_the_candidate_version(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    prefix = f"ci-{uuid.uuid4().hex[:8]}"  # a shared server keeps earlier runs: names of this test's own
    cfg = TrackingConfig(uri=server, experiment_prefix=prefix, on_unreachable="fail",
                         local_uri="sqlite:///local.db", connect_timeout_s=5.0, log_models=True)
    md5 = "0123456789abcdef0123456789abcdef.dir"
    lock = {"schema": "2.0", "stages": {"download@classification": {"cmd": "x", "outs": [
        {"path": "data/classification/processed", "md5": md5, "hash": "md5"}]}}}
    Path("dvc.lock").write_text(yaml.safe_dump(lock))
    parent = tracking.start_pipeline_run("classification", cfg, {"train.classification": {"lr": 0.01}})
    parent.write("run.json")
    assert parent.tracking_uri == server
    with tracking.stage_run("train", "run.json", cfg, data_paths=("data/classification/processed",)) as stage:
        stage.on_epoch_end(1, {"train_loss": 0.5})
        train_id = stage.run_id
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    with tracking.stage_run("export", "run.json", cfg, final=True) as stage:
        stage.log_artifact(tmp_path / "model", "mlflow_model")
        version = stage.register_model(f"{prefix}-classification", "mlflow_model", {"test_accuracy": 0.9})

    experiment = rest(server, "experiments/get-by-name", experiment_name=f"{prefix}-classification")
    tags = {t["key"]: t["value"] for t in experiment["experiment"]["tags"]}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    run = rest(server, "runs/get", run_id=train_id)["run"]
    datasets = [i["dataset"] for i in run["inputs"]["dataset_inputs"]]
    assert [(d["name"], d["digest"], d["source_type"]) for d in datasets] == [
        ("data/classification/processed", md5, "dvc")]
    assert [m["value"] for m in run["data"]["metrics"] if m["key"] == "train_loss"] == [0.5]
    found = rest(server, "registered-models/alias", name=f"{prefix}-classification", alias="candidate")
    model_version = found["model_version"]
    assert model_version["version"] == version
    assert {t["key"]: t["value"] for t in model_version["tags"]} == {"test_accuracy": "0.9"}
    assert model_version["run_id"] == stage.run_id
    parent_run = rest(server, "runs/get", run_id=parent.run_id)["run"]
    assert parent_run["info"]["status"] == "FINISHED"


def test_tiny_repro_logs_every_stage_through_the_server(server, tmp_path):
    """``dvc repro`` of the classification chain with ``tracking.uri`` on the server: its parent and stage
    runs, metrics and artifacts are on the server (uploaded through it), and the model version under
    ``@candidate``; nothing is written to a local store."""
    from mlflow import MlflowClient

    from test_dvc_experiments import STAGES, TARGET, make_project
    from test_pipeline import BIN, run

    prefix = f"ci-{uuid.uuid4().hex[:8]}"
    project = make_project(tmp_path, uri=server, experiment_prefix=prefix)
    run(project, str(BIN / "dvc"), "repro", TARGET)
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name(f"{prefix}-classification")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("xpvision.kind") == "pipeline"]
    nested = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(nested) == STAGES and len(runs) == len(STAGES) + 1
    assert all(r.info.status == "FINISHED" for r in runs)
    assert "test_accuracy" in nested["evaluate"].data.metrics
    assert {a.path for a in client.list_artifacts(nested["train"].info.run_id, "model")} == {
        "model/model.json", "model/model.npz"}
    candidate = client.get_model_version_by_alias(f"{prefix}-classification", "candidate")
    assert candidate.run_id == nested["export"].info.run_id
    assert not (project / "mlflow.db").exists()


def test_two_pipelines_logging_to_the_server_at_once_lose_nothing(server, tmp_path):
    """Two projects run ``dvc repro`` at the same time into the same experiment (created by whichever comes
    first): both complete with their parent and five stage runs, and two model versions are registered."""
    import json
    import subprocess

    from mlflow import MlflowClient

    from test_dvc_experiments import STAGES, TARGET, make_project
    from test_pipeline import BIN

    prefix = f"ci-{uuid.uuid4().hex[:8]}"
    projects = [make_project(tmp_path / name, uri=server, experiment_prefix=prefix) for name in "ab"]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MPLBACKEND": "Agg"}
    env.pop("MLFLOW_TRACKING_URI", None)
    processes = [subprocess.Popen([str(BIN / "dvc"), "repro", TARGET], cwd=project, text=True,
                                  env={**env, "PYTHONPATH": str(project / "src")},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for project in projects]
    for process in processes:
        output = process.communicate(timeout=500)[0]
        assert process.returncode == 0, output[-3000:]
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name(f"{prefix}-classification")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 * (len(STAGES) + 1)
    for project in projects:
        parent_id = json.loads((project / "reports/classification/pipeline_run.json").read_text())["run_id"]
        nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
        assert sorted(r.info.run_name for r in nested) == sorted(STAGES)
        assert client.get_run(parent_id).info.status == "FINISHED"
    versions = client.search_model_versions(f"name = '{prefix}-classification'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    # both set the alias, perhaps at the same moment: it points at one of the two
    assert client.get_model_version_by_alias(f"{prefix}-classification", "candidate").version in ("1", "2")
