"""A strict CPU stand-in for CuPy, used by ``pytest --fake-gpu``.

It behaves like CuPy where device bugs hide, so that every ``gpu`` test runs on a machine without a GPU:

* arrays have their own type, :class:`ndarray`, holding a NumPy buffer that only this package touches;
* implicit conversion to NumPy raises ``TypeError`` (``np.asarray(x)``, ``np.testing``, ``host[...] = x``), as
  does mixing a NumPy array into a device operation (``x + host``, ``x[...] = host``,
  ``cupy.maximum(x, host)``);
* only names that the real ``cupy`` package has exist, with its signatures (``cupy_names.json``, a snapshot of
  the installed package written by ``snapshot_names.py``); a name CuPy has but the stand-in does not emulate
  raises ``NotImplementedError`` naming it;
* element-wise results are C-contiguous whatever the layout of the inputs (CuPy allocates them so), sorts are
  stable (``kind`` other than ``None``/``'stable'`` raises, as in CuPy), reductions return 0-d arrays;
* ``RawModule``/``RawKernel`` launches check argument dtypes, contiguity, grid and block against the kernel's
  CUDA signature and run a NumPy transcription of the kernel (:mod:`fakecupy.kernels`);
* every device→host copy is counted (``get``, ``asnumpy``, ``float``/``int``/``bool``, ``item``, ``tolist``,
  printing): :func:`count_syncs`.
"""

from __future__ import annotations

import numpy as _np

from fakecupy import _names
from fakecupy._array import (
    count_syncs,
    ndarray,
    sync_count,
)
from fakecupy._functions import (
    array_function,
    asarray,
    asnumpy,
    get_array_module,
    make_module_function,
    ufunc,
)
from fakecupy.kernels import RawKernel, RawModule

from . import cuda, lib, random

__version__ = _names.VERSION

# CuPy re-exports NumPy's scalar types and dtype utilities: they are the same objects.
_NUMPY_OBJECTS = (
    "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
    "float64", "complex64", "complex128", "intp", "uintp", "dtype", "finfo", "iinfo", "integer", "floating",
    "number", "signedinteger", "unsignedinteger", "generic", "inexact", "complexfloating", "bool", "byte",
    "ubyte", "short", "ushort", "intc", "uintc", "longlong", "ulonglong", "half", "single", "double",
    "csingle", "cdouble", "newaxis", "inf", "nan", "pi", "e", "euler_gamma", "issubdtype", "result_type",
    "can_cast", "promote_types", "min_scalar_type", "common_type", "isscalar", "ndim", "shape", "size",
)
for _name in _NUMPY_OBJECTS:
    if _names.has("cupy", _name) and hasattr(_np, _name):
        globals()[_name] = getattr(_np, _name)

__all__ = ["RawKernel", "RawModule", "array_function", "asarray", "asnumpy", "count_syncs", "cuda",
           "get_array_module", "lib", "ndarray", "random", "sync_count", "ufunc"]


def __getattr__(name: str):
    """Module functions: NumPy's of the same name, wrapped (device arrays only, C-ordered element-wise
    outputs, 0-d results), for names the real ``cupy`` has."""
    if name.startswith("__"):
        raise AttributeError(name)
    function = make_module_function(name)
    globals()[name] = function
    return function


_names.check_defined("cupy", {k for k in globals() if not k.startswith("_")}
                     - {"annotations", "count_syncs", "sync_count", "array_function", "make_module_function",
                        "kernels"})
