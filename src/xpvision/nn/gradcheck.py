"""Numerical gradient checks (central differences), for the tests of layers and losses and for anyone writing
a new one.

Run them in float64 (``layer.astype(np.float64)``, float64 inputs): with ``eps = 1e-6`` central differences
are accurate to about ``1e-9`` relative, so a mistake shows up as an error many orders of magnitude larger.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from xpvision import backend
from xpvision.nn.base import Layer


def sample_indices(shape: tuple[int, ...], max_entries: int,
                   rng: np.random.Generator) -> list[tuple[int, ...]]:
    """All indices of an array of ``shape`` when it has at most ``max_entries`` entries, else a random subset.
    """
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= max_entries else rng.choice(size, max_entries, replace=False)
    return [tuple(int(i) for i in np.unravel_index(f, shape)) for f in flat]


def numerical_gradient(f: Callable[[], float], x, indices: list[tuple[int, ...]],
                       eps: float = 1e-6) -> np.ndarray:
    """Central differences ``(f(x + eps e_i) - f(x - eps e_i)) / 2 eps`` of the scalar ``f()`` w.r.t. the
    entries ``indices`` of ``x`` (perturbed in place and restored) -> float64 ``(len(indices),)``."""
    grads = np.empty(len(indices), dtype=np.float64)
    for k, idx in enumerate(indices):
        original = float(x[idx])
        x[idx] = original + eps
        plus = f()
        x[idx] = original - eps
        minus = f()
        x[idx] = original
        grads[k] = (plus - minus) / (2 * eps)
    return grads


def _max_error(analytic, numeric: np.ndarray, indices) -> float:
    """``max |analytic - numeric|`` over ``indices``, relative to ``max(1, max |numeric|)``."""
    analytic = backend.to_numpy(analytic)
    picked = np.array([float(analytic[idx]) for idx in indices])
    return float(np.abs(picked - numeric).max() / max(1.0, float(np.abs(numeric).max())))


def layer_gradient_errors(layer: Layer, x, *, max_entries: int = 40, eps: float = 1e-6,
                          seed: int = 0) -> dict[str, float]:
    """Compare ``layer.backward`` with central differences of ``sum(forward(x) * R)`` for a fixed random
    ``R``.

    Returns the relative max error for the input (key ``'input'``) and every parameter (``'W'``, ``'b'``, ...
    and dotted names for sub-layers). ``x`` and the layer should be float64; the layer keeps its training flag
    (batch norm in training mode is checked with its batch statistics).
    """
    xp = backend.get_array_module(x)
    rng = np.random.default_rng(seed)
    y = layer.forward(x)
    weights = xp.asarray(rng.standard_normal(y.shape))  # R, same shape as the output

    def objective() -> float:
        return float((layer.forward(x) * weights).sum())

    layer.forward(x)
    dx = layer.backward(weights)
    analytic = {"input": dx.copy()}
    for name, sub, key in layer.named_parameters():
        analytic[name] = sub.grads[key].copy()
    errors = {}
    idx = sample_indices(x.shape, max_entries, rng)
    errors["input"] = _max_error(analytic["input"], numerical_gradient(objective, x, idx, eps), idx)
    for name, sub, key in layer.named_parameters():
        param = sub.params[key]
        idx = sample_indices(param.shape, max_entries, rng)
        errors[name] = _max_error(analytic[name], numerical_gradient(objective, param, idx, eps), idx)
    return errors


def loss_gradient_error(loss, pred, target, *, max_entries: int = 60, eps: float = 1e-6,
                        seed: int = 0) -> float:
    """Relative max error between ``loss.backward()`` and central differences of ``loss.forward(pred,
    target)`` w.r.t. ``pred`` (float64)."""
    rng = np.random.default_rng(seed)
    loss.forward(pred, target)
    analytic = loss.backward().copy()
    idx = sample_indices(pred.shape, max_entries, rng)
    numeric = numerical_gradient(lambda: loss.forward(pred, target), pred, idx, eps)
    return _max_error(analytic, numeric, idx)
