"""Training on the GPU: checkpoint resume with the optimizer state on the device gives the weights of an
uninterrupted GPU run, bit for bit, for every optimizer (``pytest --fake-gpu`` runs it on the stand-in)."""

import pytest

from test_train import NUM_CLASSES, loaders, tiny_model
from xpvision import backend, optim, schedules
from xpvision.nn import rng
from xpvision.tasks import ClassificationTask
from xpvision.train import Trainer

pytestmark = pytest.mark.gpu
OPTIMIZERS = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]


def gpu_trainer(checkpoint, name: str, epochs: int):
    rng.manual_seed(0)
    model = tiny_model().to("gpu")
    opt = optim.build_optimizer(name, model, lr=0.01)
    schedule = schedules.build_schedule("cosine", opt, epochs=4, warmup_epochs=1)
    return model, Trainer(model, ClassificationTask(NUM_CLASSES), opt, epochs=epochs,
                          checkpoint_path=checkpoint, scheduler=schedule, seed=7, grad_clip=5.0,
                          progress=False)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_resume_on_the_gpu_is_bit_identical_to_an_uninterrupted_run(tmp_path, gpu, name):
    model, trainer = gpu_trainer(tmp_path / "straight.npz", name, epochs=3)
    straight = trainer.fit(*loaders())
    expected = model.state_dict()

    _, trainer = gpu_trainer(tmp_path / "resumed.npz", name, epochs=1)
    trainer.fit(*loaders())
    resumed_model, trainer = gpu_trainer(tmp_path / "resumed.npz", name, epochs=3)  # a new process, say
    resumed = trainer.fit(*loaders())
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in straight]
    assert resumed_model.device == "gpu"
    buckets = trainer.optimizer._buckets
    assert all(backend.is_gpu_array(v) for b in buckets for v in (b.params, *b.state.values()))
    assert name in ("sgd",) or any(b.state for b in buckets)  # restored state, on the device
    for key, value in resumed_model.state_dict().items():
        assert value.tobytes() == expected[key].tobytes(), key
