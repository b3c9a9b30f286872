"""Input checks shared by the layers: clear :class:`~xpvision.errors.ShapeError` messages naming expected and
actual shapes."""

from __future__ import annotations

from typing import Any

import numpy as np

from xpvision.errors import ConfigError, ShapeError
from xpvision.nn.functional import nhwc

FLOAT_DTYPES = (np.float32, np.float64)


def check_float(owner: str, x) -> None:
    """Raise unless ``x`` is a float32/float64 NumPy or CuPy array."""
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise ShapeError(f"{owner} expected an array, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"{owner} expected a float32 or float64 array, got dtype {x.dtype}")


def image_input(owner: str, x, channels: int | None):
    """Check an ``(N, C, H, W)`` input (``C == channels`` unless ``None``) and return its ``(N, H, W, C)``
    C-contiguous form (a view when ``x`` is channels-last already)."""
    check_float(owner, x)
    c = "C" if channels is None else str(channels)
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        raise ShapeError(f"{owner} expected input (N, {c}, H, W), got {tuple(x.shape)}")
    return nhwc(x)


def matrix_input(owner: str, x, features: int | None):
    """Check an ``(N, F)`` input (``F == features`` unless ``None``)."""
    check_float(owner, x)
    f = "F" if features is None else str(features)
    if x.ndim != 2 or (features is not None and x.shape[1] != features):
        raise ShapeError(f"{owner} expected input (N, {f}), got {tuple(x.shape)}")
    return x


def grad_like(owner: str, dout, expected_shape: tuple[int, ...]):
    """Check that ``dout`` has the shape of the last forward output."""
    check_float(owner, dout)
    if tuple(dout.shape) != tuple(expected_shape):
        raise ShapeError(f"{owner}.backward expected dout {tuple(expected_shape)}, got {tuple(dout.shape)}")
    return dout


def forward_done(owner: str, cache: Any) -> None:
    if cache is None:
        raise RuntimeError(f"{owner}.backward called before forward")


def pair(name: str, value, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each ``>= minimum`` -> ``(h, w)``."""
    items = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if len(items) != 2 or not all(isinstance(v, int | np.integer) and v >= minimum for v in items):
        raise ConfigError(f"{name} must be an int or a pair of ints >= {minimum}, got {value!r}")
    return int(items[0]), int(items[1])


def positive_int(name: str, value) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def unpair(value: tuple[int, int]) -> int | list[int]:
    """The JSON form of a pair: an int when both are equal, else a list."""
    return value[0] if value[0] == value[1] else list(value)
