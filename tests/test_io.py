"""Saving and loading models: .npz weights + JSON spec, atomic writes, clear errors for every bad file."""

import json
import zipfile

import numpy as np
import pytest

from xpvision import io
from xpvision.errors import WeightsError
from xpvision.models import deep_convnet, simple_convnet

META = {"task": "classification", "classes": [str(i) for i in range(10)], "input_size": [28, 28],
        "mean": 0.1, "std": 0.3}


@pytest.fixture
def batch():
    return np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)


@pytest.fixture
def saved(tmp_path):
    model = deep_convnet(batch_norm=True, last_dropout=False)
    model["features"]["bn1"].buffers["running_mean"][...] = 0.25  # buffers travel with the weights
    io.save_model(tmp_path / "m", model, META)
    return model, tmp_path / "m"


def test_round_trip_gives_the_same_model_and_meta(saved, batch):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.npz"]
    document = json.loads((folder / "model.json").read_text())
    assert document["format"] == 1 and document["spec"] == model.spec() and document["meta"] == META
    loaded, meta = io.load_model(folder)
    assert meta == META
    assert not loaded.training
    np.testing.assert_array_equal(loaded["features"]["bn1"].buffers["running_mean"], 0.25)
    np.testing.assert_array_equal(loaded.forward(batch), model.eval().forward(batch))


def test_either_file_of_the_pair_names_the_model(tmp_path, batch):
    model = simple_convnet()
    assert io.save_model(tmp_path / "digits.npz", model, {}) == tmp_path / "digits.json"
    loaded, _ = io.load_model(tmp_path / "digits.json")
    np.testing.assert_array_equal(loaded.forward(batch), model.eval().forward(batch))


def test_load_weights_into_an_existing_model(saved, batch):
    model, folder = saved
    other = deep_convnet(batch_norm=True, last_dropout=False)
    report = io.load_weights(other, folder)
    assert len(report["loaded"]) == len(model.state_dict())
    np.testing.assert_array_equal(other.eval().forward(batch), model.eval().forward(batch))


def test_missing_files(tmp_path, saved):
    with pytest.raises(WeightsError, match=r"model spec .*nowhere[/\\]model\.json not found"):
        io.load_model(tmp_path / "nowhere")
    _, folder = saved
    (folder / "model.npz").unlink()
    with pytest.raises(WeightsError, match=r"weights file .*model\.npz not found"):
        io.load_model(folder)


def test_a_file_that_is_not_npz(tmp_path):
    (tmp_path / "model.npz").write_text("these are not weights")
    with pytest.raises(WeightsError, match=r"model\.npz is not a readable \.npz archive"):
        io.load_weights(simple_convnet(), tmp_path)


def test_a_truncated_archive(saved):
    model, folder = saved
    data = (folder / "model.npz").read_bytes()
    (folder / "model.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"model\.npz"):
        io.load_weights(model, folder)


def test_a_bare_npy_is_refused(tmp_path):
    with open(tmp_path / "model.npz", "wb") as f:
        np.save(f, np.zeros(3, dtype=np.float32))
    with pytest.raises(WeightsError, match=r"single array, expected an \.npz archive"):
        io.load_weights(simple_convnet(), tmp_path)


def test_an_object_array_is_never_unpickled(tmp_path):
    model = simple_convnet()
    state = model.state_dict()
    state["features.conv1.W"] = np.array([{"evil": 1}], dtype=object)
    np.savez(tmp_path / "model.npz", **state)
    with pytest.raises(WeightsError, match=r"'features\.conv1\.W' is an object array \(pickled data\)"):
        io.load_weights(model, tmp_path)


def test_spec_and_weights_that_disagree_list_every_difference(tmp_path):
    io.save_model(tmp_path, simple_convnet(hidden=100), {})
    small = simple_convnet(hidden=20)
    (tmp_path / "model.json").write_text(json.dumps({"format": 1, "spec": small.spec(), "meta": {}}))
    with pytest.raises(WeightsError) as excinfo:
        io.load_model(tmp_path)
    message = str(excinfo.value)
    assert "model.npz" in message
    assert "head.fc1.W: file (4320, 100) vs model (4320, 20)" in message
    assert "head.fc2.W: file (100, 10) vs model (20, 10)" in message


def test_missing_and_unexpected_names_are_listed(tmp_path):
    io.save_model(tmp_path, deep_convnet(), {})
    with pytest.raises(WeightsError, match=r"missing.*features\.bn1\.gamma.*unexpected.*features\.conv1\.b"):
        io.load_weights(deep_convnet(batch_norm=True), tmp_path)
    report = io.load_weights(deep_convnet(batch_norm=True), tmp_path, strict=False)
    assert "features.conv2.W" in report["loaded"] and "features.bn1.gamma" in report["missing"]


@pytest.mark.parametrize(("document", "message"), [
    ("{not json", "is not valid JSON"),
    ('{"format": 2, "spec": {}, "meta": {}}', "expected 'format': 1, found 2"),
    ('{"format": 1, "meta": {}}', "key 'spec' must be an object, found NoneType"),
    ('{"format": 1, "spec": {"type": "Transformer", "config": {}}, "meta": {}}',
     "unknown layer type in spec: 'Transformer'"),
    ('{"format": 1, "spec": {"type": "Linear", "config": {"in_features": 3}}, "meta": {}}',
     "cannot build the model"),
])
def test_bad_spec_files(tmp_path, document, message):
    (tmp_path / "model.json").write_text(document)
    np.savez(tmp_path / "model.npz", x=np.zeros(1))
    with pytest.raises(WeightsError, match=message):
        io.load_model(tmp_path)


def test_a_failed_save_leaves_the_previous_model_intact(saved):
    _, folder = saved
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(TypeError):
        io.save_model(folder, simple_convnet(), {"not json": object()})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert zipfile.is_zipfile(folder / "model.npz")


def test_load_model_onto_a_device(saved, batch, xp):
    model, folder = saved
    device = "cpu" if xp is np else "gpu"
    loaded, _ = io.load_model(folder, device=device)
    assert loaded.device == device
    out = loaded.forward(xp.asarray(batch))
    np.testing.assert_allclose(xp.asnumpy(out) if xp is not np else out, model.eval().forward(batch),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind, classes, extra", [
    ("classification", 7, {}),
    ("segmentation", 4, {}),
    ("detection", 3, {"detector": {"anchors": [[4, 4], [8, 8], [16, 16]]}}),
])
def test_meta_whose_class_count_disagrees_with_the_weights(tmp_path, kind, classes, extra):
    from xpvision.nn import Conv2d, Sequential

    if kind == "classification":
        model = simple_convnet(hidden=20)  # 10 logits
    else:  # a 1x1 conv head: 3 output channels for segmentation, 3 * (5 + 2) = 21 for detection
        model = Sequential(("head", Conv2d(1, 3 if kind == "segmentation" else 21, 1)))
    meta = {"kind": kind, "classes": [f"c{i}" for i in range(classes)], "input_shape": [1, 28, 28], **extra}
    io.save_model(tmp_path, model, meta)
    with pytest.raises(WeightsError, match=f"meta lists {classes} classes for a {kind} model") as info:
        io.load_model(tmp_path)
    assert str(tmp_path / "model.json") in str(info.value)
    right = {"classification": 10, "segmentation": 3, "detection": 2}[kind]
    io.save_model(tmp_path, model, {**meta, "classes": [f"c{i}" for i in range(right)]})
    assert io.load_model(tmp_path)[1]["kind"] == kind


def test_meta_input_shape_the_network_cannot_run(tmp_path):
    io.save_model(tmp_path, simple_convnet(hidden=20),
                  {"kind": "classification", "classes": list("0123456789"), "input_shape": [1, 20, 20]})
    with pytest.raises(WeightsError, match="does not run on its meta input_shape"):
        io.load_model(tmp_path)
