"""Element-wise layers: :class:`ReLU`, :class:`LeakyReLU`, :class:`Sigmoid`, :class:`Identity`.

They accept arrays of any shape and keep the memory layout of their input, so a channels-last activation
stays channels-last: results are written into ``xp.empty_like(x)`` (CuPy allocates a plain ufunc result
C-contiguous, NumPy keeps the input's layout).
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
        return xp.multiply(x, self._mask, out=xp.empty_like(x))

    def backward(self, dout):
        forward_done(type(self).__name__, self._mask)
        grad_like(type(self).__name__, dout, self._mask.shape)
        xp = backend.get_array_module(dout)
        return xp.multiply(dout, self._mask, out=xp.empty_like(dout))


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
        return _leaky(xp, x, self._positive, self.negative_slope)

    def backward(self, dout):
        forward_done(type(self).__name__, self._positive)
        grad_like(type(self).__name__, dout, self._positive.shape)
        xp = backend.get_array_module(dout)
        return _leaky(xp, dout, self._positive, self.negative_slope)


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
        xp = backend.get_array_module(dout)
        return xp.multiply(dout, self._y * (1 - self._y), out=xp.empty_like(dout))


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
    out = xp.empty_like(x)
    out[...] = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return out


def _leaky(xp, a, positive, slope: float):
    """``a`` where ``positive`` else ``slope · a``, in the layout of ``a``."""
    out = xp.multiply(a, a.dtype.type(slope), out=xp.empty_like(a))
    xp.copyto(out, a, where=positive)
    return out
