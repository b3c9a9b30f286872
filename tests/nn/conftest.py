"""Fixtures for the ``xpvision.nn`` tests: gradient checks in float64 on the device under test, and PyTorch
(for parity tests only)."""

import numpy as np
import pytest

from xpvision.nn.gradcheck import layer_gradient_errors, loss_gradient_error

GRAD_TOL = 1e-6  # relative error of analytic vs central-difference gradients in float64


@pytest.fixture
def f64(xp):
    """``f64(layer)``: the layer cast to float64 and moved to the device of ``xp``; ``f64(array)``: the
    same for an array."""

    def convert(obj):
        if isinstance(obj, np.ndarray):
            return xp.asarray(obj.astype(np.float64))
        obj.astype(np.float64)
        return obj.to("gpu") if xp is not np else obj

    return convert


@pytest.fixture
def check_layer_grads(f64):
    """``check_layer_grads(layer, x)``: assert that every input and parameter gradient of the layer (cast to
    float64, on the device under test) matches central differences; returns the errors."""

    def run(layer, x: np.ndarray, **kwargs) -> dict[str, float]:
        errors = layer_gradient_errors(f64(layer), f64(x), **kwargs)
        bad = {k: v for k, v in errors.items() if not v < GRAD_TOL}
        assert not bad, f"gradient check failed for {layer!r}: {bad}"
        assert "input" in errors
        return errors

    return run


@pytest.fixture
def check_loss_grad(f64, xp):
    """``check_loss_grad(loss, pred, target)``: assert ``loss.backward()`` matches central differences."""

    def run(loss, pred: np.ndarray, target: np.ndarray, **kwargs) -> float:
        error = loss_gradient_error(loss, f64(pred), xp.asarray(target), **kwargs)
        assert error < GRAD_TOL, f"gradient check failed for {type(loss).__name__}: {error}"
        return error

    return run


@pytest.fixture
def torch():
    """PyTorch on the CPU, for parity tests (skipped where it is not installed)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch
