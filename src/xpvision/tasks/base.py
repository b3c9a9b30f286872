"""What every task shares: the one evaluation loop and the check of a train block's class weights.

A *task* adapts the trainer to a problem: the trainer calls ``forward_loss(model, batch) -> (loss, dout)`` on
every training batch and ``evaluate(model, loader) -> {metric: float}`` after every epoch (the protocol
:class:`xpvision.train.Task`); the stages use the class-level hooks listed in :mod:`xpvision.tasks`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from xpvision import backend
from xpvision.errors import ConfigError
from xpvision.nn.base import Layer, evaluating

PerClass = tuple[list[str], str, list[float]]
"""``(class names, metric name, one score per class)``: what ``test_report`` writes to ``per_class.csv``."""


def evaluation_pass(model: Layer, loader: Iterable[dict], step: Callable[[dict, Any], tuple[float, int]],
                    empty: str) -> float:
    """The evaluation loop of every task: ``model`` in eval mode over ``loader``, returning the weighted mean
    loss.

    Each batch's ``images`` ``(N, C, H, W)`` go to the model's device; ``step(batch, outputs)`` accumulates
    what the task needs from the model's ``outputs`` and returns ``(mean loss of the batch, its weight)``
    (images, or labelled pixels). ``empty`` is the :class:`ConfigError` message when the weights sum to 0.
    """
    total, weight = 0.0, 0
    with evaluating(model):
        for batch in loader:
            outputs = model.forward(backend.to_device(batch["images"], model.device))
            loss, n = step(batch, outputs)
            total += loss * n
            weight += n
    if weight == 0:
        raise ConfigError(empty)
    return total / weight


def checked_class_weights(class_weights: Sequence[float] | None, meta: dict, kind: str,
                          supported: bool = True) -> list[float] | None:
    """``class_weights`` as floats, one per entry of ``meta['classes']``; errors name the train block
    ``train.<meta['task'] or kind>.class_weights``."""
    if class_weights is None:
        return None
    key = f"train.{meta.get('task', kind)}.class_weights"
    if not supported:
        raise ConfigError(f"{key}: expected null (the {kind} loss has no class weights), got "
                          f"{list(class_weights)}")
    if len(class_weights) != len(meta["classes"]):
        raise ConfigError(f"{key}: expected {len(meta['classes'])} weights, one per class "
                          f"({', '.join(meta['classes'])}), got {len(class_weights)}")
    return [float(w) for w in class_weights]
