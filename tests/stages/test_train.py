"""Train-stage glue: checkpoints are keyed by configuration, the same block gives the same initial network."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from xpvision.config import load_params
from xpvision.stages import TaskPaths
from xpvision.stages.checkpoints import checkpoint_path, fingerprint
from xpvision.stages.start_run import task_params

PARAMS = load_params(Path(__file__).resolve().parents[2] / "params.yaml")


def test_fingerprint_follows_params_and_files(tmp_path):
    data = tmp_path / "manifest.json"
    data.write_text("{}")
    cfg = PARAMS.train["classification"]
    key = fingerprint(cfg, [data])
    assert key == fingerprint(cfg, [data])
    assert key != fingerprint(replace(cfg, lr=cfg.lr * 2), [data])
    assert key == fingerprint(replace(cfg, processes=3, hosts="node1:2,node2:2"), [data])  # resume with any K
    data.write_text('{"count": 1}')
    assert key != fingerprint(cfg, [data])


def test_checkpoints_of_other_configurations_are_deleted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = TaskPaths("classification")
    stale = checkpoint_path(paths, "aaaa")
    stale.write_bytes(b"old")
    current = checkpoint_path(paths, "bbbb")
    assert current == Path("checkpoints/classification/bbbb.npz")
    assert not stale.exists()
    current.write_bytes(b"x")
    assert checkpoint_path(paths, "bbbb").read_bytes() == b"x"  # the matching one is kept for resuming


def test_parent_run_params_are_the_blocks_the_task_reads():
    blocks = task_params(PARAMS, "detection_ft")
    assert set(blocks) == {"download.detection", "augment.detection", "train.detection_ft",
                           "evaluate.detection_ft", "export.detection_ft"}
    assert blocks["train.detection_ft"]["init_from"] == "classification"


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_same_train_block_gives_the_same_initial_network_whatever_the_rng_state(task):
    from xpvision.config import data_task as kind_of
    from xpvision.nn import rng
    from xpvision.stages.train import build_seeded_network
    from xpvision.tasks import output_classes

    kind, cfg = kind_of(task), PARAMS.train[task]
    shape = (1, 28, 28) if kind == "classification" else (3, 32, 32)
    classes = output_classes(kind, [str(d) for d in range(10)])
    weights = []
    for disturbance in (1, 2):
        rng.manual_seed(disturbance)  # the state an earlier stage or test left behind
        rng.uniform((disturbance * 7,))
        model, _ = build_seeded_network(kind, cfg, shape, classes, train_set=None)
        weights.append(model.state_dict())
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert np.array_equal(weights[0][name], weights[1][name]), name
    changed, _ = build_seeded_network(kind, replace(cfg, seed=cfg.seed + 1), shape, classes, train_set=None)
    assert any(not np.array_equal(w, changed.state_dict()[n]) for n, w in weights[0].items() if w.size > 1)
