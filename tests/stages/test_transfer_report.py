"""Transfer-report stage: its runs give the same rows in one process or in worker processes, and an error
in a worker reaches the caller with its message."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from xpvision import io
from xpvision.config import TransferConfig, load_params
from xpvision.data.shards import write_shards
from xpvision.errors import WeightsError
from xpvision.models import deep_convnet
from xpvision.nn import rng
from xpvision.nn.base import Sequential
from xpvision.nn.linear import Linear
from xpvision.stages.transfer_report import SOURCE, comparison_rows

PARAMS = load_params(Path(__file__).resolve().parents[2] / "params.yaml")


def _tiny_params():
    """The project's params with a 2-mode, 1-epoch comparison of a small FCN on 8 images."""
    block = replace(PARAMS.train["segmentation_ft"], batch_size=4,
                    model_args={"backbone": "deep_convnet", "encoder_stride": 16, "extra_channels": [8],
                                "fc_channels": 8})
    return replace(PARAMS, train={**PARAMS.train, "segmentation_ft": block},
                   transfer=TransferConfig(tasks=("segmentation",), modes=("head", "full"), subset_size=8,
                                           epochs=1, seed=0))


def _scenes(root: Path) -> None:
    """Random 16x16 RGB scenes with 11-class masks, as the download stage's processed shards."""
    generator = np.random.default_rng(0)
    for split in ("train", "test"):
        samples = [{"image": generator.integers(0, 256, (16, 16, 3), dtype=np.uint8),
                    "mask": generator.integers(0, 11, (16, 16), dtype=np.uint8)} for _ in range(8)]
        write_shards(root / split, samples, classes=[str(d) for d in range(10)], with_stats=True)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A project folder with the processed segmentation data; the classifier is saved by each test."""
    monkeypatch.chdir(tmp_path)
    _scenes(Path("data/segmentation/processed"))
    return tmp_path


def test_rows_are_the_same_for_one_and_two_workers(workspace):
    rng.manual_seed(0)
    io.save_model(SOURCE, deep_convnet(in_channels=1, num_classes=10, input_size=16),
                  {"task": "classification"})
    params = _tiny_params()
    one, two = comparison_rows(params, workers=1), comparison_rows(params, workers=2)
    assert [(r["task"], r["mode"], r["pretrained"]) for r in two] == [
        ("segmentation", "head", True), ("segmentation", "head", False),
        ("segmentation", "full", True), ("segmentation", "full", False)]
    for row_one, row_two in zip(one, two, strict=True):
        assert row_one.pop("train_time_s") > 0 and row_two.pop("train_time_s") > 0
        assert row_one == row_two  # value, metrics and trainable_parameters, in every bit
    assert one[0]["value"] != one[1]["value"]  # pretrained and scratch runs did differ


def test_an_error_in_a_worker_reaches_the_caller(workspace):
    io.save_model(SOURCE, Sequential(("other", Linear(4, 2))), {"task": "classification"})
    with pytest.raises(WeightsError, match=r"no weights of models/classification/model\.npz fit the network"):
        comparison_rows(_tiny_params(), workers=2)
