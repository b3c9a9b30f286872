"""``cupy.random`` of the stand-in: ``default_rng`` generators drawing on the device (NumPy's PCG64 inside;
real CuPy's streams differ, so tests compare statistics or devices against themselves, not values)."""

from __future__ import annotations

import numpy as np

from fakecupy import _names
from fakecupy._array import ndarray, unwrap, wrap


class Generator:
    """``cupy.random.Generator``: the methods and signatures of CuPy's, results on the device."""

    def __init__(self, bit_generator) -> None:
        self._rng = np.random.Generator(bit_generator)

    def __getattr__(self, name: str):
        _names.require("cupy.random.Generator", name)
        method = getattr(self._rng, name, None)
        if method is None:
            raise NotImplementedError(f"fakecupy: cupy.random.Generator.{name} is not emulated")

        def call(*args, **kwargs):
            _names.check_call("cupy.random.Generator", name, (self, *args), kwargs)
            out = kwargs.pop("out", None)
            result = method(*unwrap(args, name), **{k: unwrap(v, name) for k, v in kwargs.items()})
            if out is not None:
                if type(out) is not ndarray:
                    raise TypeError("out must be a cupy.ndarray")
                out._a[...] = result
                return out
            return wrap(np.asarray(result))
        return call


def default_rng(seed=None) -> Generator:
    if isinstance(seed, ndarray):
        raise TypeError("default_rng: seed must be a host integer")
    return Generator(np.random.PCG64(seed))


def __getattr__(name: str):
    _names.require("cupy.random", name)
    raise NotImplementedError(f"fakecupy: cupy.random.{name} is not emulated")


_names.check_defined("cupy.random", {"Generator", "default_rng"})
