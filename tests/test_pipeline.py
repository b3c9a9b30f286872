"""End to end: the real dvc.yaml on a tiny params.yaml, in a temporary git + DVC clone of the project files.

One module-scoped ``dvc repro`` (one to four minutes on 2 cores) is shared by the checks: every declared
output exists, a second ``dvc repro`` does nothing, a change to one task's parameters re-runs only that task,
``dvc exp run -S`` shows up in ``dvc exp show``, and the MLflow store holds the parent and nested runs with
their metrics, tags and artifacts. The clone runs its own copy of ``src/`` (``PYTHONPATH``).
"""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def tiny_params(params: dict) -> dict:
    """The project's params.yaml shrunk to seconds per stage (same keys, so validation still applies)."""
    params["download"]["classification"]["max_images"] = 200
    for task in ("detection", "segmentation"):
        params["download"][task].update(num_train=40, num_test=12)
    for block in params["augment"].values():
        block["preview_images"] = 4
    for block in params["train"].values():
        block.update(epochs=1, batch_size=20, warmup_epochs=0)
    for block in params["evaluate"].values():
        block.update(sample_images=2, batch_size=20)
    for block in params["export"].values():
        block["check_samples"] = 2
    params["transfer"].update(subset_size=16, epochs=1, modes=["head"])
    return params


def run(clone: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(clone / "src"), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "XPVISION_DOWNLOAD_CACHE": str(clone / ".downloads"), "NO_ALBUMENTATIONS_UPDATE": "1",
           "MPLBACKEND": "Agg", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(list(args), cwd=clone, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout + done.stderr


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def make_tiny_project(project: Path, params: dict) -> Path:
    """A committed git + DVC project in ``project``: the real ``src/`` and ``dvc.yaml`` with ``params`` as its
    ``params.yaml``."""
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(ROOT / name, project / name)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(project, "git", "init", "-q")
    run(project, str(BIN / "dvc"), "init", "-q")
    run(project, str(BIN / "dvc"), "config", "core.analytics", "false")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "tiny project")
    return project


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    clone = make_tiny_project(tmp_path_factory.mktemp("clone"),
                              tiny_params(yaml.safe_load((ROOT / "params.yaml").read_text())))
    output = run(clone, str(BIN / "dvc"), "repro")
    run(clone, "git", "add", "-A")
    run(clone, "git", "commit", "-qm", "first run")
    return clone, output


def test_repro_produces_every_declared_output(clone):
    clone, output = clone
    stages = run(clone, str(BIN / "dvc"), "stage", "list", "--name-only").split()
    assert len(stages) == 5 + 3 + 3 + 5 + 5 + 5 + 1
    assert ran_stages(output) == set(stages)
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(stages)
    outs = [out["path"] for entry in lock.values() for out in entry.get("outs", [])]
    missing = [path for path in outs if not (clone / path).exists()]
    assert not missing
    for task in ("classification", "detection", "segmentation", "detection_ft", "segmentation_ft"):
        metrics = json.loads((clone / "reports" / task / "metrics.json").read_text())
        assert metrics, task
        export = json.loads((clone / "reports" / task / "export.json").read_text())
        assert export["onnx_max_abs_error"] <= 1e-4
        assert list((clone / "reports" / task / "figures").glob("*.png")), task
    assert 0 <= json.loads((clone / "reports/classification/metrics.json").read_text())["accuracy"] <= 1
    assert (clone / "reports/transfer/transfer_comparison.md").read_text().startswith("| mode |")
    assert (clone / "models/segmentation_ft/mlflow/MLmodel").is_file()


def test_second_repro_does_nothing(clone):
    clone, _ = clone
    output = run(clone, str(BIN / "dvc"), "repro")
    assert not ran_stages(output)
    assert "up to date" in output


def test_changing_one_tasks_params_reruns_only_that_task(clone):
    clone, _ = clone
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["evaluate"]["segmentation"]["sample_images"] = 3
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = run(clone, str(BIN / "dvc"), "repro")
    # a new parent run, the data re-made identically, the stage whose parameters changed, and export, which
    # closes the new parent run (its test metrics are unchanged, so only the parent run brings it back):
    assert ran_stages(output) == {"start_run@segmentation", "download@segmentation", "evaluate@segmentation",
                                  "export@segmentation"}
    assert len(list((clone / "reports/segmentation/figures").glob("overlay_*[0-9].png"))) == 3
    parent = json.loads((clone / "reports/segmentation/pipeline_run.json").read_text())["run_id"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{clone / 'mlflow.db'}")
    assert client.get_run(parent).info.status == "FINISHED"
    stages = client.search_runs([client.get_run(parent).info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{parent}'")
    assert {r.info.run_name for r in stages} == {"download", "evaluate", "export"}
    run(clone, "git", "checkout", "--", "params.yaml")
    run(clone, str(BIN / "dvc"), "checkout")


def test_changing_a_fine_tuned_tasks_evaluation_does_not_retrain_it(clone):
    """The fine-tuned task's first stage is train: a new parent run alone (an evaluate change) must not re-run
    it (it depends on start_run's unchanging pipeline_order.json, not on the run id)."""
    clone, _ = clone
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["evaluate"]["detection_ft"]["sample_images"] = 3
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = run(clone, str(BIN / "dvc"), "repro")
    assert ran_stages(output) == {"start_run@detection_ft", "evaluate@detection_ft", "export@detection_ft"}
    parent = json.loads((clone / "reports/detection_ft/pipeline_run.json").read_text())["run_id"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{clone / 'mlflow.db'}")
    assert client.get_run(parent).info.status == "FINISHED"
    stages = client.search_runs([client.get_run(parent).info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{parent}'")
    assert {r.info.run_name for r in stages} == {"evaluate", "export"}
    run(clone, "git", "checkout", "--", "params.yaml")
    run(clone, str(BIN / "dvc"), "checkout")


def test_experiment_is_visible_in_exp_show(clone):
    clone, _ = clone
    run(clone, str(BIN / "dvc"), "exp", "run", "-n", "more-previews", "-S",
        "evaluate.classification.sample_images=3")
    shown = run(clone, str(BIN / "dvc"), "exp", "show", "--no-pager", "--csv")
    rows = [row for row in csv.DictReader(io.StringIO(shown)) if row["Experiment"] == "more-previews"]
    assert len(rows) == 1, shown
    assert rows[0]["evaluate.classification.sample_images"] == "3"


def test_mlflow_holds_parent_and_nested_runs(clone):
    from mlflow import MlflowClient

    clone, _ = clone
    client = MlflowClient(tracking_uri=f"sqlite:///{clone / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("xpvision-classification")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parent = next(r for r in runs if r.data.tags.get("xpvision.kind") == "pipeline")
    nested = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(nested) == {"download", "augment", "train", "evaluate", "export"}
    assert parent.info.status == "FINISHED"
    train_block = yaml.safe_load((clone / "params.yaml").read_text())["train"]["classification"]
    assert parent.data.params["train.classification.lr"] == str(train_block["lr"])
    train = nested["train"]
    assert {"train_loss", "val_accuracy", "lr", "time_s"} <= set(train.data.metrics)
    assert train.data.params["optimizer"] == train_block["optimizer"]
    assert len(train.data.tags["mlflow.source.git.commit"]) == 40
    assert train.data.tags["dvc.md5.data/classification/augmented"].endswith(".dir")
    artifacts = {a.path for a in client.list_artifacts(train.info.run_id, "model")}
    assert artifacts == {"model/model.json", "model/model.npz"}
    assert {a.path for a in client.list_artifacts(train.info.run_id, "training")} == {
        "training/history.csv", "training/training_curves.png"}
    assert "test_accuracy" in nested["evaluate"].data.metrics
    figures = {a.path for a in client.list_artifacts(nested["evaluate"].info.run_id, "figures")}
    assert {"figures/confusion_matrix.png", "figures/samples.png"} <= figures
    assert any(a.path == "mlflow_model" for a in client.list_artifacts(nested["export"].info.run_id))
    transfer = client.get_experiment_by_name("xpvision-transfer")
    assert client.search_runs([transfer.experiment_id])


def test_mlflow_models_predict_runs_the_exported_model(clone, tmp_path):
    import numpy as np

    clone, _ = clone
    pixels = np.random.default_rng(0).uniform(size=(2, 1, 28, 28)).astype(np.float32)
    (tmp_path / "input.json").write_text(json.dumps({"inputs": pixels.tolist()}))
    output = run(clone, str(BIN / "mlflow"), "models", "predict", "-m", "models/classification/mlflow",
                 "-i", str(tmp_path / "input.json"), "--content-type", "json", "--env-manager", "local",
                 "-o", str(tmp_path / "out.json"))
    predictions = json.loads((tmp_path / "out.json").read_text())["predictions"]
    assert len(predictions) == 2, output
    assert {p["label"] for p in predictions} <= set("0123456789")


def test_exp_run_with_two_processes_logs_one_run_tree(clone):
    """``processes: 2`` starts the train stage under mpiexec; the root alone logs: one train run, nested in
    the parent run of the experiment's configuration, with ``processes`` = 2 among its parameters. (The seed
    changes too: a change of ``processes`` alone would resume the checkpoint of the same configuration.)"""
    from mlflow import MlflowClient

    clone, _ = clone
    output = run(clone, str(BIN / "dvc"), "exp", "run", "-S", "train.classification.processes=2",
                 "-S", "train.classification.seed=1")
    assert {"train_classification", "evaluate@classification"} <= ran_stages(output)
    assert "starting 2 processes" in output
    assert output.count("classification: 1 epochs, train_loss=") == 1  # the root's summary line alone
    client = MlflowClient(tracking_uri=f"sqlite:///{clone / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("xpvision-classification")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parent = [r for r in runs if r.data.tags.get("xpvision.kind") == "pipeline"][-1]
    assert parent.data.params["train.classification.processes"] == "2"
    later = [r for r in runs if r.info.start_time >= parent.info.start_time and r is not parent]
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in later)
    assert sorted(r.info.run_name for r in later) == ["download", "evaluate", "export", "train"]
    train = next(r for r in later if r.info.run_name == "train")
    assert train.data.params["processes"] == "2" and train.info.status == "FINISHED"
    assert len(client.get_metric_history(train.info.run_id, "train_loss")) == 1  # one epoch, logged once
