"""Element-wise layers: :class:`ReLU`, :class:`LeakyReLU`, :class:`Sigmoid`, :class:`Identity`.

They accept arrays of any shape and keep the memory layout of their input (NumPy's ``order='K'``), so a
channels-last activation stays channels-last.
"""

from __future__ import annotations

from typing import Any

from xpvision import backend
from xpvision.errors import ConfigError
from xpvision.nn.base import Layer
from xpvision.nn.validate import check_float, forward_done, grad_like


class ReLU(Layer):
    """``max(x, 0)``; gradient 0 at ``x <= 0`` (PyTorch's choice at 0)."""

    def __init__(self) -> None:
        super().__init__()
        self._mask = None

    def forward(self, x):
        check_float(type(self).__name__, x)
        xp = backend.get_array_module(x)
        self._mask = x > 0
        return xp.multiply(x, self._mask, dtype=x.dtype)

    def backward(self, dout):
        forward_done(type(self).__name__, self._mask)
        grad_like(type(self).__name__, dout, self._mask.shape)
        return backend.get_array_module(dout).multiply(dout, self._mask, dtype=dout.dtype)


class LeakyReLU(Layer):
    """``x`` for ``x > 0`` else ``negative_slope * x``."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        if not isinstance(negative_slope, int | float) or isinstance(negative_slope, bool):
            raise ConfigError(f"negative_slope must be a number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)
        self._positive = None

    def config(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}

    def forward(self, x):
        check_float(type(self).__name__, x)
        xp = backend.get_array_module(x)
        self._positive = x > 0
        return xp.where(self._positive, x, x * x.dtype.type(self.negative_slope))

    def backward(self, dout):
        forward_done(type(self).__name__, self._positive)
        grad_like(type(self).__name__, dout, self._positive.shape)
        xp = backend.get_array_module(dout)
        return xp.where(self._positive, dout, dout * dout.dtype.type(self.negative_slope))


class Sigmoid(Layer):
    """``1 / (1 + exp(-x))``, computed without overflow for large ``|x|``."""

    def __init__(self) -> None:
        super().__init__()
        self._y = None

    def forward(self, x):
        check_float(type(self).__name__, x)
        self._y = sigmoid(x)
        return self._y

    def backward(self, dout):
        forward_done(type(self).__name__, self._y)
        grad_like(type(self).__name__, dout, self._y.shape)
        return dout * self._y * (1 - self._y)


class Identity(Layer):
    """Returns its input unchanged (a placeholder, e.g. for a removed head or a plain shortcut)."""

    def forward(self, x):
        return x

    def backward(self, dout):
        return dout


def sigmoid(x):
    """Numerically stable logistic function; same shape and dtype as ``x``."""
    xp = backend.get_array_module(x)
    e = xp.exp(-xp.abs(x))  # in (0, 1]: never overflows
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
