"""The trainer: learning, history, checkpoints, exact resume after SIGKILL, NaN stop, bad checkpoints; and the
classification task's metrics."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from xpvision import io, optim, schedules
from xpvision.data.loader import DataLoader, ListDataset
from xpvision.errors import ConfigError, TrainingError, WeightsError
from xpvision.nn import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential, rng
from xpvision.nn.base import evaluating
from xpvision.tasks import ClassificationTask, confusion_matrix
from xpvision.train import Trainer, epoch_seed

NUM_CLASSES = 3


def blob_dataset(n: int, seed: int) -> ListDataset:
    """8x8 one-channel images whose class is where a bright 3x3 blob sits (plus noise)."""
    rs = np.random.default_rng(seed)
    corners = [(0, 0), (0, 5), (5, 2)]
    samples = []
    for i in range(n):
        label = i % NUM_CLASSES
        image = rs.integers(0, 60, (8, 8, 1)).astype(np.uint8)
        r, c = corners[label]
        image[r:r + 3, c:c + 3] = 200
        samples.append({"image": image, "label": label})
    return ListDataset(samples, classes=[str(k) for k in range(NUM_CLASSES)])


def tiny_model() -> Sequential:
    features = Sequential(("conv1", Conv2d(1, 4, 3, padding=1)), ("relu1", ReLU()), ("pool1", MaxPool2d(2)))
    head = Sequential(("flatten", Flatten()), ("fc1", Linear(4 * 4 * 4, 16)), ("relu1", ReLU()),
                      ("dropout1", Dropout(0.3)), ("fc2", Linear(16, NUM_CLASSES)))
    return Sequential(("features", features), ("head", head))


def loaders(batch_size=16):
    train = DataLoader(blob_dataset(96, seed=0), batch_size, shuffle=True, seed=3)
    val = DataLoader(blob_dataset(30, seed=1), batch_size)
    return train, val


def make_trainer(checkpoint, epochs=4, callbacks=(), lr=0.01):
    """Model, Adam with warm-up + cosine, and a trainer (seeded: every process builds the same model)."""
    rng.manual_seed(0)
    model = tiny_model()
    opt = optim.Adam(model, lr=lr)
    schedule = schedules.build_schedule("cosine", opt, epochs=epochs, warmup_epochs=1 if epochs > 1 else 0)
    trainer = Trainer(model, ClassificationTask(NUM_CLASSES), opt, epochs=epochs, checkpoint_path=checkpoint,
                      scheduler=schedule, seed=7, grad_clip=5.0, callbacks=callbacks, progress=False)
    return model, trainer


def run_training(checkpoint: str, out: str, pause: float) -> None:
    """Entry point of the subprocesses: train (pausing ``pause`` s after each epoch), then save the model."""
    model, trainer = make_trainer(checkpoint, callbacks=[lambda epoch, record: time.sleep(pause)])
    history = trainer.fit(*loaders())
    io.save_model(out, model, {"history": [{k: v for k, v in r.items() if k != "time_s"} for r in history]})


def start_training(checkpoint: Path, out: Path, pause: float = 0.0) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_train; "
            f"test_train.run_training({str(checkpoint)!r}, {str(out)!r}, {pause})")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output.decode()


def test_fit_learns_and_records_history(tmp_path):
    seen = []
    model, trainer = make_trainer(tmp_path / "ckpt.npz", epochs=5,
                                  callbacks=[lambda epoch, record: seen.append((epoch, record["lr"]))])
    history = trainer.fit(*loaders())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    assert set(history[0]) == {"epoch", "lr", "train_loss", "val_accuracy", "val_loss", "time_s"}
    expected_lrs = [0.001] + [0.01 * (1 + np.cos(np.pi * t / 4)) / 2 for t in range(4)]
    np.testing.assert_allclose([r["lr"] for r in history], expected_lrs, rtol=1e-12)
    assert seen == [(r["epoch"], r["lr"]) for r in history]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["val_accuracy"] == 1.0
    assert model.training  # evaluation restored the training mode
    state = np.load(tmp_path / "ckpt.npz", allow_pickle=False)
    assert int(state["epoch"]) == 5 and json.loads(str(state["history"]))[-1]["epoch"] == 5
    np.testing.assert_array_equal(state["model.head.fc2.W"], model["head"]["fc2"].params["W"])


def test_resume_after_sigkill_gives_bit_identical_weights(tmp_path):
    straight = start_training(tmp_path / "straight.npz", tmp_path / "straight")
    killed = start_training(tmp_path / "resumed.npz", tmp_path / "unused", pause=1.0)
    deadline = time.monotonic() + 60
    while not (tmp_path / "resumed.npz").exists():
        assert killed.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    epochs_done = int(np.load(tmp_path / "resumed.npz", allow_pickle=False)["epoch"])
    assert 1 <= epochs_done < 4 and not (tmp_path / "unused").exists()

    finish(start_training(tmp_path / "resumed.npz", tmp_path / "resumed"))
    finish(straight)
    a, meta_a = io.load_model(tmp_path / "straight")
    b, meta_b = io.load_model(tmp_path / "resumed")
    assert meta_a == meta_b  # same losses, accuracies and rates, epoch by epoch
    for key, value in a.state_dict().items():
        assert np.array_equal(b.state_dict()[key], value), key
    assert len(meta_a["history"]) == 4


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    def poison(epoch, record):
        if epoch == 2:
            model["head"]["fc1"].params["W"][0, 0] = np.nan

    model, trainer = make_trainer(tmp_path / "ckpt.npz", callbacks=[poison])
    with pytest.raises(TrainingError, match=r"epoch 3, step 1: the loss became nan.*after epoch 2\) is left"):
        trainer.fit(*loaders())
    state = np.load(tmp_path / "ckpt.npz", allow_pickle=False)
    assert int(state["epoch"]) == 2
    assert model.needs_input_grad  # the training-only switch is restored on the way out
    assert all(np.isfinite(v).all() for k, v in state.items() if k.startswith("model."))


def test_training_restores_the_models_own_input_gradient_setting(tmp_path):
    model, trainer = make_trainer(tmp_path / "ckpt.npz", epochs=1)
    model.needs_input_grad = False
    trainer.fit(*loaders())
    assert model.needs_input_grad is False


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_checkpoint_is_an_error_not_a_silent_restart(tmp_path, damage):
    checkpoint = tmp_path / "ckpt.npz"
    make_trainer(checkpoint, epochs=1)[1].fit(*loaders())
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(b"garbage" if damage == "garbage" else data[: len(data) // 3])
    with pytest.raises(WeightsError, match=r"checkpoint .*ckpt\.npz"):
        make_trainer(checkpoint, epochs=2)[1].fit(*loaders())
    assert checkpoint.read_bytes() == (b"garbage" if damage == "garbage" else data[: len(data) // 3])


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    checkpoint = tmp_path / "ckpt.npz"
    make_trainer(checkpoint, epochs=1)[1].fit(*loaders())
    with pytest.raises(TrainingError, match=r"different configuration \(differs in \['optimizer'"):
        make_trainer(checkpoint, epochs=1, lr=0.05)[1].fit(*loaders())


def test_a_finished_checkpoint_is_not_trained_again_unless_resume_is_off(tmp_path):
    checkpoint = tmp_path / "ckpt.npz"
    first = make_trainer(checkpoint, epochs=2)[1].fit(*loaders())
    model, trainer = make_trainer(checkpoint, epochs=2)
    assert trainer.fit(*loaders()) == first
    np.testing.assert_array_equal(model["head"]["fc2"].params["W"],
                                  np.load(checkpoint, allow_pickle=False)["model.head.fc2.W"])
    _, fresh = make_trainer(checkpoint, epochs=2)
    fresh.resume = False
    history = fresh.fit(*loaders())
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in first]  # same seed, same run


def test_bad_arguments_are_config_errors(tmp_path):
    model = tiny_model()
    opt = optim.SGD(model)
    with pytest.raises(ConfigError, match="epochs"):
        Trainer(model, ClassificationTask(3), opt, epochs=0, checkpoint_path=tmp_path / "c.npz")
    with pytest.raises(ConfigError, match="grad_clip"):
        Trainer(model, ClassificationTask(3), opt, epochs=1, checkpoint_path=tmp_path / "c.npz", grad_clip=-1)


def test_epoch_seeds_differ_by_epoch_and_seed():
    seeds = {epoch_seed(s, e) for s in range(3) for e in range(5)}
    assert len(seeds) == 15 and epoch_seed(1, 2) == epoch_seed(1, 2)


def test_classification_metrics_and_confusion_matrix():
    from sklearn.metrics import confusion_matrix as sk_confusion

    rng.manual_seed(0)
    model = tiny_model()
    _, val = loaders()
    task = ClassificationTask(NUM_CLASSES)
    metrics, confusion = task.evaluate_with_confusion(model, val)
    images = np.concatenate([b["images"] for b in val])
    labels = np.concatenate([b["labels"] for b in val])
    with evaluating(model):
        logits = model.forward(images)
    predictions = logits.argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(float((predictions == labels).mean()))
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected_loss = float(-log_probs[np.arange(len(labels)), labels].mean())
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_array_equal(confusion, sk_confusion(labels, predictions, labels=range(NUM_CLASSES)))
    np.testing.assert_array_equal(confusion_matrix(np.array([0, 1, 1]), np.array([1, 1, 0]), 2),
                                  [[0, 1], [1, 1]])
    assert task.evaluate(model, val) == metrics
    assert model.training and model["head"]["dropout1"].training


def test_each_epoch_seeds_the_loader_and_the_layer_randomness(tmp_path, monkeypatch):
    class RecordingLoader:
        def __init__(self, loader):
            self.loader, self.epochs = loader, []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)
            self.loader.set_epoch(epoch)

        def __iter__(self):
            return iter(self.loader)

    train, val = loaders()
    recording = RecordingLoader(train)
    _, trainer = make_trainer(tmp_path / "ckpt.npz", epochs=3)
    seeds = []
    monkeypatch.setattr(rng, "manual_seed", lambda seed: seeds.append(seed))
    trainer.fit(recording, val)
    assert recording.epochs == [0, 1, 2]
    assert seeds == [epoch_seed(7, e) for e in range(3)]


def test_training_on_the_device_of_the_model(tmp_path, xp):
    device = "cpu" if xp is np else "gpu"
    rng.manual_seed(0)
    model = tiny_model().to(device)
    opt = optim.Momentum(model, lr=0.05)  # built after moving the model
    trainer = Trainer(model, ClassificationTask(NUM_CLASSES), opt, epochs=2,
                      checkpoint_path=tmp_path / "c.npz", progress=False)
    history = trainer.fit(*loaders())  # CPU batches, moved by the task
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert model.device == device
    state = np.load(tmp_path / "c.npz", allow_pickle=False)
    assert int(state["epoch"]) == 2 and isinstance(state["model.head.fc2.W"], np.ndarray)


def test_a_loss_that_explodes_without_nan_stops_like_nan(tmp_path):
    def blow_up(epoch, record):
        if epoch == 1:  # finite, but every logit now about 1e9 times too large
            model["head"]["fc2"].params["W"][...] *= 1e9

    model, trainer = make_trainer(tmp_path / "ckpt.npz", callbacks=[blow_up])
    with pytest.raises(TrainingError, match=r"epoch 2, step 1: the loss became .*, over 1e\+06 x its first"):
        trainer.fit(*loaders())
    state = np.load(tmp_path / "ckpt.npz", allow_pickle=False)
    assert int(state["epoch"]) == 1 and float(np.abs(state["model.head.fc2.W"]).max()) < 1e3


def test_non_finite_weights_at_the_end_of_an_epoch_are_never_checkpointed(tmp_path):
    model, trainer = make_trainer(tmp_path / "ckpt.npz")
    batches_per_epoch = len(list(loaders()[0]))
    real_step, steps = trainer.optimizer.step, []

    def overflowing_step():  # the epoch's last step leaves an inf behind, after its loss was computed
        real_step()
        steps.append(1)
        if len(steps) == 2 * batches_per_epoch:
            model["head"]["fc1"].params["b"][0] = np.inf

    trainer.optimizer.step = overflowing_step
    with pytest.raises(TrainingError, match=r"epoch 2, step end: weight head\.fc1\.b is no longer finite"):
        trainer.fit(*loaders())
    assert int(np.load(tmp_path / "ckpt.npz", allow_pickle=False)["epoch"]) == 1
