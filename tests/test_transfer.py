"""Transfer learning: load by name with a report, first-conv channel adaptation, head replacement, the three
modes (frozen weights bit-identical after training, head-only trains only the head), the comparison table."""

import json
from pathlib import Path

import numpy as np
import pytest

from xpvision import io
from xpvision.data.loader import DataLoader, ListDataset
from xpvision.errors import ConfigError, WeightsError
from xpvision.models import deep_convnet
from xpvision.nn import rng
from xpvision.optim import Adam
from xpvision.segmentation.fcn import FCN
from xpvision.tasks import ClassificationTask, SegmentationTask
from xpvision.train import Trainer
from xpvision.transfer import (
    adapt_conv_input_channels,
    compare_transfer,
    convolutionalize_head,
    param_groups,
    replace_head,
    set_transfer_mode,
    transfer_weights,
    write_comparison,
)


def _digits_classifier():
    rng.manual_seed(0)
    return deep_convnet(in_channels=1, num_classes=10, input_size=16)


def _fcn(in_channels=3):
    features = deep_convnet(in_channels=in_channels, input_size=16)["features"]
    return FCN(features, 4, "8s", extra_channels=[8, 8], fc_channels=8)


def test_classifier_backbone_loads_into_rgb_fcn_with_report(tmp_path):
    source = _digits_classifier()
    io.save_model(tmp_path / "cls", source, {"task": "classification"})
    target = _fcn(in_channels=3)
    report = transfer_weights(target, tmp_path / "cls", include=("features.",))
    assert report.adapted == [{"name": "features.conv1.W", "source_shape": [16, 1, 3, 3],
                               "target_shape": [16, 3, 3, 3]}]
    expected_loaded = {k for k in source.state_dict()
                       if k.startswith("features.") and k != "features.conv1.W"}
    assert set(report.loaded) == expected_loaded
    assert set(report.new) == {k for k in target.state_dict() if not k.startswith("features.")}
    assert report.unused == [] and report.mismatched == []
    for name in report.loaded:
        np.testing.assert_array_equal(target.state_dict()[name], source.state_dict()[name])
    # a grey RGB image gives the pretrained first layer's response to the 1-channel image
    grey = np.random.default_rng(0).random((2, 1, 9, 9), dtype=np.float32)
    rgb = np.repeat(grey, 3, axis=1)
    np.testing.assert_allclose(target["features"]["conv1"].forward(rgb),
                               source["features"]["conv1"].forward(grey), rtol=1e-5, atol=1e-6)
    markdown = report.to_markdown()
    assert "| `features.conv1.W` | adapted (input channels) | (16, 1, 3, 3) | (16, 3, 3, 3) |" in markdown
    assert f"{len(expected_loaded)} loaded, 1 adapted" in markdown
    json.dumps(report.to_dict())


def test_adapt_conv_input_channels():
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(adapt_conv_input_channels(w, 1), w.sum(axis=1, keepdims=True))
    five = adapt_conv_input_channels(w, 5)
    assert five.shape == (4, 5, 3, 3) and five.dtype == np.float32
    np.testing.assert_allclose(five, np.concatenate([w, w[:, :2]], axis=1) * 3 / 5, rtol=1e-6)
    six = adapt_conv_input_channels(w, 6)
    x = np.random.default_rng(1).random((3, 3))
    # a multiple of the source channels: equal channels in, same response out
    assert np.einsum("oiyx,yx->o", six, x) == pytest.approx(np.einsum("oiyx,yx->o", w, x), rel=1e-5)


def test_new_number_of_classes_replace_head_and_mismatch_report():
    source = _digits_classifier()
    target = deep_convnet(in_channels=1, num_classes=10, input_size=16)
    new_layer = replace_head(target, 3)
    assert new_layer is target["head"]["fc2"] and new_layer.params["W"].shape == (50, 3)
    assert target.forward(np.zeros((2, 1, 16, 16), np.float32)).shape == (2, 3)
    report = transfer_weights(target, source)
    assert {e["name"] for e in report.mismatched} == {"head.fc2.W", "head.fc2.b"}
    assert "head.fc1.W" in report.loaded and report.new == []
    assert "| `head.fc2.W` | shape differs, new | (50, 10) | (50, 3) |" in report.to_markdown()
    renamed = transfer_weights(_fcn(1), source, rename={"features.": "features."}, include=("features.",))
    assert renamed.unused == [] and len(renamed.loaded) == 12
    with pytest.raises(ConfigError, match="'head' part"):
        replace_head(_fcn(), 3)


def test_set_transfer_mode_freezes_only_the_pretrained_part():
    model = _fcn()
    report = transfer_weights(model, _digits_classifier())
    convs = [f"features.conv{i}" for i in range(1, 7)]
    assert set_transfer_mode(model, "head", report) == convs
    assert all(not model["features"][f"conv{i}"].trainable for i in range(1, 7))
    assert model.extra.trainable and model.scores[8].trainable
    assert not model.final_upsampler.trainable  # fixed by construction, untouched
    assert set_transfer_mode(model, "partial", report, freeze_layers=2) == convs[:2]
    assert [model["features"][f"conv{i}"].trainable for i in range(1, 7)] == [False, False] + [True] * 4
    assert set_transfer_mode(model, "full", report) == []
    assert all(model["features"][f"conv{i}"].trainable for i in range(1, 7))
    assert not model.final_upsampler.trainable
    with pytest.raises(ConfigError, match=r"freeze_layers must be in \[1, 5\]"):
        set_transfer_mode(model, "partial", report, freeze_layers=6)
    with pytest.raises(ConfigError, match="mode"):
        set_transfer_mode(model, "last", report)


def test_param_groups_scale_the_pretrained_learning_rate():
    model = _fcn()
    report = transfer_weights(model, _digits_classifier())
    set_transfer_mode(model, "partial", report, freeze_layers=1)
    old, new = param_groups(model, 1e-3, 0.1, report)
    assert old["lr"] == pytest.approx(1e-4) and new["lr"] == 1e-3
    assert len(old["params"]) == 10  # conv2..conv6, W and b; conv1 is frozen
    assert all(layer.trainable for layer, _ in old["params"] + new["params"])


def _scene_loader(n=8, size=16, seed=0):
    generator = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        image = generator.integers(0, 255, (size, size, 3), dtype=np.uint8)
        mask = (image[..., 0] // 64).astype(np.uint8)  # classes 0..3 readable from the red channel
        samples.append({"image": image, "mask": mask})
    return DataLoader(ListDataset(samples, ["a", "b", "c"]), batch_size=4, shuffle=True, seed=seed)


@pytest.mark.parametrize(("mode", "frozen"), [("head", 6), ("partial", 2)])
def test_frozen_weights_are_bit_identical_after_training(tmp_path, mode, frozen):
    model = _fcn()
    report = transfer_weights(model, _digits_classifier())
    set_transfer_mode(model, mode, report, freeze_layers=2)
    before = model.state_dict()
    trainer = Trainer(model, SegmentationTask(4), Adam(model, lr=1e-2), epochs=2,
                      checkpoint_path=tmp_path / "ck.npz", progress=False)
    trainer.fit(_scene_loader())
    after = model.state_dict()
    frozen_names = {f"features.conv{i}.{k}" for i in range(1, frozen + 1) for k in "Wb"}
    trainable_names = {name for name, _, _ in model.named_parameters(trainable_only=True)}
    assert frozen_names.isdisjoint(trainable_names)
    for name in frozen_names | {"upsample.W"}:
        assert after[name].tobytes() == before[name].tobytes(), name
    changed = {name for name in trainable_names if not np.array_equal(after[name], before[name])}
    assert changed == trainable_names  # everything else did train
    if mode == "head":
        assert not any(name.startswith("features.") for name in changed)


def test_compare_transfer_rows_and_files(tmp_path):
    source = _digits_classifier()
    loader = _scene_loader(n=4)
    rows = compare_transfer(_fcn, source, SegmentationTask(4), loader, loader, epochs=1, seed=0,
                            modes=("head", "full"), include=("features.",))
    assert [(r["mode"], r["pretrained"]) for r in rows] == [("head", True), ("head", False), ("full", True),
                                                             ("full", False)]
    assert all(r["metric"] == "miou" and 0.0 <= r["value"] <= 1.0 and r["train_time_s"] > 0 for r in rows)
    head_params, full_params = rows[0]["trainable_parameters"], rows[2]["trainable_parameters"]
    assert head_params == rows[1]["trainable_parameters"] < full_params
    md, js = write_comparison(rows, tmp_path / "reports")
    table = Path(md).read_text()
    assert table.count("\n") == 2 + len(rows) and "| head | no (scratch) | miou |" in table
    assert json.loads(Path(js).read_text())[0]["mode"] == "head"


def test_classification_comparison_uses_the_primary_metric(tmp_path):
    generator = np.random.default_rng(0)
    samples = [{"image": generator.integers(0, 255, (16, 16, 1), dtype=np.uint8), "label": i % 3}
               for i in range(6)]
    loader = DataLoader(ListDataset(samples, ["a", "b", "c"]), batch_size=3)

    def build():
        model = deep_convnet(in_channels=1, num_classes=10, input_size=16)
        replace_head(model, 3)
        return model

    rows = compare_transfer(build, _digits_classifier(), ClassificationTask(3), loader, loader, epochs=1,
                            modes=("partial",), freeze_layers=3)
    assert [r["metric"] for r in rows] == ["accuracy", "accuracy"]


def test_convolutionalized_head_scores_the_classifier_logits(tmp_path):
    rng.manual_seed(0)
    source = deep_convnet(in_channels=1, num_classes=10, input_size=28)  # pool3 (64, 4, 4) -> fc1 -> fc2
    io.save_model(tmp_path / "cls", source, {"task": "classification"})
    rng.manual_seed(1)
    target = FCN(deep_convnet(in_channels=1, input_size=28)["features"], 11, "8s", fc_channels=50,
                 encoder_stride=8, fc_kernel=4)
    report = transfer_weights(target, tmp_path / "cls", include=("features.",))
    report = convolutionalize_head(target, tmp_path / "cls", report)
    converted = {e["name"]: e for e in report.converted}
    assert set(converted) == {"extra.fc6.W", "extra.fc6.b", "extra.fc7.W", "extra.fc7.b", "score8.W",
                              "score8.b"}
    assert converted["extra.fc6.W"]["source_shape"] == [1024, 50]
    assert converted["extra.fc6.W"]["target_shape"] == [50, 64, 4, 4]
    assert not set(converted) & set(report.new) and set(converted) <= set(report.pretrained)
    assert "| `score8.W` | converted from `head.fc2.W` | (50, 10) | (11, 50, 1, 1) |" in report.to_markdown()
    source.eval()
    target.eval()
    images = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    logits = source.forward(images)  # (3, 10)
    scores = target["score8"].forward(target["extra"].forward(target["features"].forward(images)))
    # fc6 (4x4, padding 2) on the 4x4 pool3 map: output (2, 2) is the one window fc1 saw
    np.testing.assert_allclose(scores[:, 1:, 2, 2], logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(scores[:, 0], 0)  # background starts at zero


def test_convolutionalize_head_rejects_shapes_that_do_not_fit(tmp_path):
    io.save_model(tmp_path / "cls", _digits_classifier(), {"task": "classification"})  # fc1 (64*2*2, 50)
    target = FCN(deep_convnet(in_channels=1, input_size=28)["features"], 11, "8s", fc_channels=50,
                 encoder_stride=8, fc_kernel=4)
    with pytest.raises(WeightsError, match=r"head.fc1.W \(256, 50\) does not fit extra.fc6.W"):
        convolutionalize_head(target, tmp_path / "cls")
    with pytest.raises(WeightsError, match="missing"):
        convolutionalize_head(target, {"features.conv1.W": np.zeros((16, 1, 3, 3), np.float32)})
