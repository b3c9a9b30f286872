"""Every way DVC runs an experiment logs to the project's MLflow store.

``dvc exp run --queue`` (two experiments run at once by ``dvc queue start -j 2``) and ``dvc exp run --temp``
execute the stages in a temporary copy of the workspace under ``.dvc/tmp/exps/``, deleted afterwards; the runs
must land in the project's ``mlflow.db``, not in the copy's. A tiny classification-only project (the real
dvc.yaml and params.yaml shrunk as in test_pipeline) is run up to ``export@classification``.
"""

import time

import pytest
import yaml

from test_pipeline import BIN, ROOT, make_tiny_project, run, tiny_params

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
TARGET = "export@classification"
STAGES = {"download", "augment", "train", "evaluate", "export"}


def make_project(project, **tracking):
    """A git + DVC project of the real dvc.yaml with tiny params in ``project``; ``tracking`` updates the
    ``tracking`` block."""
    params = tiny_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    params["download"]["classification"]["max_images"] = 100
    params["tracking"].update(tracking)
    return make_tiny_project(project, params)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("experiments"))


def dvc(project, *args):
    return run(project, str(BIN / "dvc"), *args)


def experiment_runs(project, name):
    """The parent run and nested stage runs tagged with the DVC experiment ``name`` in the project's store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("xpvision-classification")
    runs = client.search_runs([experiment.experiment_id], f"tags.`dvc.exp.name` = '{name}'")
    parents = [r for r in runs if r.data.tags.get("xpvision.kind") == "pipeline"]
    assert len(parents) == 1, [(r.info.run_name, r.data.tags) for r in runs]
    parent = parents[0]
    nested = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    return client, parent, nested


def assert_logged(project, name, sample_images):
    client, parent, nested = experiment_runs(project, name)
    assert set(nested) == STAGES
    assert parent.info.status == "FINISHED"
    assert all(r.info.status == "FINISHED" for r in nested.values())
    assert parent.data.params["evaluate.classification.sample_images"] == str(sample_images)
    assert name in parent.info.run_name
    assert {"train_loss", "val_accuracy"} <= set(nested["train"].data.metrics)
    assert "test_accuracy" in nested["evaluate"].data.metrics
    assert {a.path for a in client.list_artifacts(nested["train"].info.run_id, "model")} == {
        "model/model.json", "model/model.npz"}
    assert any(a.path == "mlflow_model" for a in client.list_artifacts(nested["export"].info.run_id))
    assert len(parent.data.tags["dvc.exp.baseline_rev"]) == 40


def test_two_queued_experiments_run_in_parallel_log_to_the_project_store(project):
    dvc(project, "exp", "run", "--queue", "-n", "queued-a", "-S", "evaluate.classification.sample_images=3",
        TARGET)
    dvc(project, "exp", "run", "--queue", "-n", "queued-b", "-S", "evaluate.classification.sample_images=4",
        TARGET)
    dvc(project, "queue", "start", "-j", "2")
    try:
        deadline = time.monotonic() + 1100
        while time.monotonic() < deadline:
            status = dvc(project, "queue", "status")
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(5)
    finally:
        dvc(project, "queue", "stop")
    assert status.count("Success") == 2, status
    assert not list((project / ".dvc/tmp/exps").rglob("mlflow.db"))
    for name, images in (("queued-a", 3), ("queued-b", 4)):
        assert_logged(project, name, images)
    shown = dvc(project, "exp", "show", "--no-pager", "--csv")
    assert "queued-a" in shown and "queued-b" in shown


def test_temp_experiment_logs_to_the_project_store(project):
    # other data, so that no stage is restored from the run cache the queued experiments filled (a stage
    # DVC restores from there runs no command, hence logs no run)
    dvc(project, "exp", "run", "--temp", "-n", "temp-run", "-S", "evaluate.classification.sample_images=5",
        "-S", "download.classification.max_images=80", TARGET)
    assert_logged(project, "temp-run", 5)
