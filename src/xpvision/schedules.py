"""Learning-rate schedules: a closed-form lr per step, warm-up, and the names the config accepts.

``SCHEDULES`` lists the names ``train.<task>.schedule`` accepts; :func:`build_schedule` builds one for a run
of ``epochs`` epochs (:class:`xpvision.train.Trainer` steps a schedule once per epoch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xpvision.errors import ConfigError, WeightsError
from xpvision.optim import Optimizer


class LRSchedule:
    """Base schedule: sets every group's lr to ``lr_at(base_lr, t)``, ``t`` = number of :meth:`step` calls.

    The unit of ``t`` is whatever the caller steps: :class:`xpvision.train.Trainer` calls ``step()`` once per
    **epoch** (so ``warmup_steps``, ``step_size`` and ``t_max`` count epochs there). The lr is a closed-form
    function of ``t`` (no accumulated rounding), so a schedule restored from :meth:`state_dict` gives exactly
    the same rates as an uninterrupted one. Base rates are the groups' lrs when the schedule is built.

    Linear warm-up: for ``t < warmup_steps`` the factor goes linearly from ``warmup_start_factor`` to 1 (as
    ``torch.optim.lr_scheduler.LinearLR``); afterwards the subclass's decay runs with ``t - warmup_steps``.
    """

    def __init__(self, optimizer: Optimizer, *, warmup_steps: int = 0,
                 warmup_start_factor: float = 0.1) -> None:
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
            raise ConfigError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if not 0 < warmup_start_factor <= 1:
            raise ConfigError(f"warmup_start_factor must be in (0, 1], got {warmup_start_factor!r}")
        self.optimizer = optimizer
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = float(warmup_start_factor)
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def decayed_lr(self, base_lr: float, t: int) -> float:
        """The lr ``t`` steps after the warm-up (subclasses override; constant here)."""
        return base_lr

    def lr_at(self, base_lr: float, t: int) -> float:
        if t < self.warmup_steps:
            start = self.warmup_start_factor
            return base_lr * (start + (1 - start) * t / self.warmup_steps)
        return self.decayed_lr(base_lr, t - self.warmup_steps)

    def _apply(self) -> None:
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = self.lr_at(base_lr, self.last_step)

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def config(self) -> dict[str, Any]:
        """JSON-able description of the schedule (type and arguments)."""
        return {"type": type(self).__name__, "warmup_steps": self.warmup_steps,
                "warmup_start_factor": self.warmup_start_factor, "base_lrs": self.base_lrs}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"last_step": np.array(self.last_step), "base_lrs": np.array(self.base_lrs, dtype=np.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        base_lrs = np.asarray(state["base_lrs"], dtype=np.float64)
        if base_lrs.shape != (len(self.base_lrs),):
            raise WeightsError(f"schedule state has {base_lrs.size} base rates, the optimizer "
                               f"{len(self.base_lrs)} parameter groups")
        self.base_lrs = [float(v) for v in base_lrs]
        self.last_step = int(state["last_step"])
        self._apply()


class Constant(LRSchedule):
    """The base lr after the (optional) warm-up."""


class StepDecay(LRSchedule):
    """``lr = base_lr * gamma ** (t // step_size)`` (``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, **warmup: Any) -> None:
        if not (isinstance(step_size, int) and step_size > 0):
            raise ConfigError(f"step_size must be a positive integer, got {step_size!r}")
        if not 0 < gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {gamma!r}")
        self.step_size, self.gamma = step_size, float(gamma)
        super().__init__(optimizer, **warmup)

    def decayed_lr(self, base_lr: float, t: int) -> float:
        return base_lr * self.gamma ** (t // self.step_size)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "step_size": self.step_size, "gamma": self.gamma}


class CosineAnnealing(LRSchedule):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / t_max)) / 2``, then ``eta_min`` for
    ``t >= t_max`` (``torch.optim.lr_scheduler.CosineAnnealingLR`` within its first period)."""

    def __init__(self, optimizer: Optimizer, t_max: int, eta_min: float = 0.0, **warmup: Any) -> None:
        if not (isinstance(t_max, int) and t_max > 0):
            raise ConfigError(f"t_max must be a positive integer, got {t_max!r}")
        if eta_min < 0:
            raise ConfigError(f"eta_min must be >= 0, got {eta_min!r}")
        self.t_max, self.eta_min = t_max, float(eta_min)
        super().__init__(optimizer, **warmup)

    def decayed_lr(self, base_lr: float, t: int) -> float:
        if t >= self.t_max:
            return self.eta_min
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.t_max)) / 2

    def config(self) -> dict[str, Any]:
        return {**super().config(), "t_max": self.t_max, "eta_min": self.eta_min}


SCHEDULES = ("constant", "step", "cosine")


def build_schedule(name: str, optimizer: Optimizer, *, epochs: int, warmup_epochs: int = 0,
                   warmup_start_factor: float = 0.1, step_size: int | None = None, gamma: float = 0.1,
                   eta_min: float = 0.0) -> LRSchedule:
    """A per-epoch schedule by name for a run of ``epochs`` epochs (the decay spans the epochs after warm-up).

    ``'constant'``, ``'step'`` (``step_size`` defaults to a third of the decay epochs) or ``'cosine'``.
    """
    warmup = {"warmup_steps": warmup_epochs, "warmup_start_factor": warmup_start_factor}
    decay_epochs = epochs - warmup_epochs
    if decay_epochs < 1:
        raise ConfigError(f"warmup_epochs ({warmup_epochs}) must be smaller than epochs ({epochs})")
    if name == "constant":
        return Constant(optimizer, **warmup)
    if name == "step":
        return StepDecay(optimizer, step_size or max(1, decay_epochs // 3), gamma, **warmup)
    if name == "cosine":
        return CosineAnnealing(optimizer, decay_epochs, eta_min, **warmup)
    raise ConfigError(f"unknown learning-rate schedule {name!r}; known: {list(SCHEDULES)}")
