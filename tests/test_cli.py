"""The ``xpvision`` command: user errors are one line on stderr with exit status 2, stages read ``--params``,
and ``predict`` runs a saved model on image files."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from xpvision import cli
from xpvision.io import save_model
from xpvision.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def test_bad_params_is_one_line_with_exit_status_2(tmp_path, capsys):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["classification"]["lr"] = -1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(params))
    assert cli.main(["train", "--task", "classification", "--params", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"xpvision train: error: {tmp_path / 'bad.yaml'}: train.classification.lr: "
        "expected a positive number, got -1"]


def test_missing_params_file_and_no_traceback_from_the_console_script(tmp_path):
    done = subprocess.run([sys.executable, "-m", "xpvision.cli", "download", "--task", "detection",
                           "--params", str(tmp_path / "none.yaml")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "none.yaml: parameter file not found" in done.stderr


def test_unknown_task_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["augment", "--task", "detection_ft"])  # fine-tuned tasks have no data of their own
    assert info.value.code == 2
    assert "invalid choice: 'detection_ft'" in capsys.readouterr().err


@pytest.fixture
def classifier_dir(tmp_path):
    model = build_model("simple_convnet", in_channels=1, num_classes=3, input_size=12)
    meta = {"kind": "classification", "task": "classification", "classes": ["a", "b", "c"],
            "input_shape": [1, 12, 12], "normalization": {"mode": "rescale", "mean": [], "std": []}}
    save_model(tmp_path / "model", model, meta)
    return tmp_path / "model", model


def test_predict_classifies_image_files(classifier_dir, tmp_path, capsys):
    model_dir, model = classifier_dir
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8)).save(path)  # resized to 12 x 12
        paths.append(str(path))
    assert cli.main(["predict", *paths, "--model", str(model_dir), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in records] == paths
    for path, record in zip(paths, records, strict=True):
        pixels = np.asarray(Image.open(path).resize((12, 12), Image.BILINEAR), np.float32) / 255
        logits = model.eval().forward(np.rint(pixels * 255)[None, None].astype(np.float32) / 255)
        assert record["label"] == "abc"[int(np.argmax(logits))]
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert cli.main(["predict", paths[0], "--model", str(model_dir)]) == 0
    assert capsys.readouterr().out.startswith(f"{paths[0]}: ")


def test_predict_reports_unreadable_images(classifier_dir, tmp_path, capsys):
    model_dir, _ = classifier_dir
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert cli.main(["predict", str(tmp_path / "broken.png"), "--model", str(model_dir)]) == 2
    assert "broken.png: not a readable image" in capsys.readouterr().err
