"""``cupy.lib.stride_tricks`` of the stand-in: views of a device array's buffer (strides in bytes)."""

from __future__ import annotations

import numpy as np

from fakecupy import _names
from fakecupy._array import ndarray, wrap


def as_strided(x, shape=None, strides=None):
    if type(x) is not ndarray:
        raise TypeError(f"as_strided: expected a cupy.ndarray, got {type(x)}")
    return wrap(np.lib.stride_tricks.as_strided(x._a, shape=shape, strides=strides))


def sliding_window_view(x, window_shape, axis=None, *, subok=False, writeable=False):
    if type(x) is not ndarray:
        raise TypeError(f"sliding_window_view: expected a cupy.ndarray, got {type(x)}")
    return wrap(np.lib.stride_tricks.sliding_window_view(x._a, window_shape, axis=axis, writeable=writeable))


_names.check_defined("cupy.lib.stride_tricks", {"as_strided", "sliding_window_view"})
