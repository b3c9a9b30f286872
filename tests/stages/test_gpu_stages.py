"""The stages a GPU user runs — ``xpvision download / augment / train / evaluate / export / predict`` — with
``train.<task>.device: gpu``, in-process in a temporary project (so ``pytest --fake-gpu`` runs them against
the CuPy stand-in; on a machine with CUDA, against CuPy)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from xpvision import cli, io

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]
TASKS = ("classification", "detection", "segmentation")


def gpu_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"]["classification"]["max_images"] = 120
    for task in ("detection", "segmentation"):
        params["download"][task].update(num_train=24, num_test=8)
    for block in params["augment"].values():
        block.update(preview_images=2, copies=0)
    for block in params["train"].values():
        block.update(epochs=1, batch_size=8, warmup_epochs=0, device="gpu")
    for block in params["evaluate"].values():
        block.update(sample_images=1, batch_size=8)
    for block in params["export"].values():
        block["check_samples"] = 2
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory, gpu_module):
    for package in ("mlflow", "albumentations", "onnxruntime"):  # pipeline extra: a bare GPU box may lack it
        pytest.importorskip(package)
    root = tmp_path_factory.mktemp("gpu_project")
    (root / "params.yaml").write_text(yaml.safe_dump(gpu_params(), sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("XPVISION_DOWNLOAD_CACHE", str(root / ".downloads"))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for task in TASKS:
            for stage in ("start-run", "download", "augment", "train", "evaluate", "export"):
                assert cli.main([stage, "--task", task]) == 0, f"{stage} {task}"
    return root


@pytest.fixture(scope="module")
def gpu_module():
    from xpvision import backend

    if not backend.gpu_available():
        pytest.skip("CuPy with a CUDA device is not available (pytest --fake-gpu runs the CPU stand-in)")
    return backend.xp_for("gpu")


@pytest.mark.parametrize("task", TASKS)
def test_train_on_gpu_writes_a_model_and_its_report(project, task):
    train = json.loads((project / "reports" / task / "train.json").read_text())
    assert train, "empty train report"
    model, _ = io.load_model(project / "models" / task)
    assert model.device == "cpu"  # a model on disk is device-free: NumPy weights
    for value in model.state_dict().values():
        assert np.isfinite(value).all()


@pytest.mark.parametrize("task", TASKS)
def test_evaluate_on_the_training_device_reports_the_primary_metric(project, task):
    metrics = json.loads((project / "reports" / task / "metrics.json").read_text())
    primary = {"classification": "accuracy", "detection": "map_50", "segmentation": "miou"}[task]
    assert 0.0 <= metrics[primary] <= 1.0


@pytest.mark.parametrize("task", TASKS)
def test_export_after_gpu_training_checks_onnx(project, task):
    export = json.loads((project / "reports" / task / "export.json").read_text())
    assert (project / "models" / task / "model.onnx").exists()
    assert export


@pytest.mark.parametrize("task", TASKS)
def test_predict_runs_the_gpu_trained_model(project, task, tmp_path, capsys):
    _, meta = io.load_model(project / "models" / task)
    channels, height, width = meta["input_shape"]
    pixels = (np.random.default_rng(0).random((height, width, channels)) * 255).astype(np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(path)
    out = tmp_path / "out"
    args = ["predict", str(path), "--model", str(project / "models" / task), "--json", "--out", str(out)]
    assert cli.main(args) == 0
    on_cpu = json.loads(capsys.readouterr().out)
    assert cli.main([*args, "--device", "gpu"]) == 0
    on_gpu = json.loads(capsys.readouterr().out)
    assert on_gpu[0]["image"] == str(path)
    for a, b in zip(on_cpu, on_gpu, strict=True):  # the same model gives the same answer on both devices
        assert {k for k in a if k != "output"} == {k for k in b if k != "output"}
        if task == "classification":
            assert a["label"] == b["label"] and abs(a["score"] - b["score"]) < 1e-5
        elif task == "segmentation":
            assert a["pixels_per_class"] == b["pixels_per_class"]
