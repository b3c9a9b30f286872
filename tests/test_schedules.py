"""Learning-rate schedules, checked against torch.optim.lr_scheduler driving the same optimizer steps."""

import numpy as np
import pytest

from test_optim import gradient_sequence, max_diff, set_grads, torch_params, toy_model
from xpvision import optim, schedules
from xpvision.errors import ConfigError

torch = pytest.importorskip("torch")


def run_schedule(schedule_factory, torch_factory, epochs, steps_per_epoch=2):
    model = toy_model()
    tparams = torch_params(model)
    opt = optim.Momentum(model, lr=0.1, momentum=0.5)
    topt = torch.optim.SGD(tparams, lr=0.1, momentum=0.5)
    schedule, tschedule = schedule_factory(opt), torch_factory(topt)
    grads = gradient_sequence(model, epochs * steps_per_epoch)
    lrs = []
    for epoch in range(epochs):
        lrs.append((opt.lr, topt.param_groups[0]["lr"]))
        for g in grads[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch]:
            set_grads(model, g)
            for t, gi in zip(tparams, g, strict=True):
                t.grad = torch.tensor(gi)
            opt.step()
            topt.step()
        schedule.step()
        tschedule.step()
    return np.array(lrs), max_diff(model, tparams)


def test_step_decay_matches_torch():
    lrs, diff = run_schedule(lambda o: schedules.StepDecay(o, step_size=3, gamma=0.5),
                             lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5), epochs=8)
    np.testing.assert_allclose(lrs[:, 0], lrs[:, 1], rtol=1e-12)
    assert lrs[-1, 0] == pytest.approx(0.1 * 0.5**2)
    assert diff <= 1e-6


def test_cosine_matches_torch():
    lrs, diff = run_schedule(lambda o: schedules.CosineAnnealing(o, t_max=6, eta_min=1e-3),
                             lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6, eta_min=1e-3),
                             epochs=7)
    np.testing.assert_allclose(lrs[:, 0], lrs[:, 1], rtol=1e-10)
    assert lrs[-1, 0] == pytest.approx(1e-3)
    assert diff <= 1e-6


@pytest.mark.parametrize("decay", ["cosine", "step"])
def test_warmup_then_decay_matches_torch_sequential(decay):
    lr_scheduler = torch.optim.lr_scheduler

    def theirs(o):
        warm = lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=3)
        after = (lr_scheduler.CosineAnnealingLR(o, T_max=5) if decay == "cosine"
                 else lr_scheduler.StepLR(o, step_size=2, gamma=0.5))
        return lr_scheduler.SequentialLR(o, [warm, after], milestones=[3])

    def ours(o):
        return schedules.build_schedule(decay, o, epochs=8, warmup_epochs=3, warmup_start_factor=0.25,
                                        step_size=2, gamma=0.5)

    lrs, diff = run_schedule(ours, theirs, epochs=8)
    np.testing.assert_allclose(lrs[:, 0], lrs[:, 1], rtol=1e-10, atol=1e-15)
    assert lrs[0, 0] == pytest.approx(0.025) and lrs[3, 0] == pytest.approx(0.1)
    assert diff <= 1e-6


def test_schedule_state_restores_the_same_rates():
    opt = optim.Adam(toy_model(), lr=0.1)
    schedule = schedules.CosineAnnealing(opt, t_max=10, warmup_steps=2)
    for _ in range(4):
        schedule.step()
    state = schedule.state_dict()
    other_opt = optim.Adam(toy_model(), lr=0.1)
    other = schedules.CosineAnnealing(other_opt, t_max=10, warmup_steps=2)
    other.load_state_dict(state)
    assert other_opt.lr == opt.lr and other.last_step == 4
    with pytest.raises(ConfigError, match="unknown learning-rate schedule 'poly'"):
        schedules.build_schedule("poly", opt, epochs=5)
