"""Module-level functions of the stand-in: ufuncs, array creation and transfer, and NumPy's other functions
under CuPy's names and signatures."""

from __future__ import annotations

import numpy as np

from fakecupy import _names
from fakecupy._array import _check_kind, _from_numpy, ndarray, record_sync, unwrap, wrap

# Functions whose results are element-wise: CuPy allocates them C-contiguous whatever the input layout.
_ELEMENTWISE = {"where", "clip", "round", "around", "nan_to_num", "copysign", "heaviside"}
# Functions whose result size depends on the data: CuPy copies the size to the host, a synchronisation.
SIZE_SYNCS = {"nonzero", "flatnonzero", "argwhere", "unique", "compress", "extract"}
# Functions that CuPy answers with Python values or dtypes, not 0-d arrays.
_PLAIN_RESULTS = {"ndim", "size", "shape", "isscalar", "result_type", "can_cast", "may_share_memory",
                  "shares_memory", "iscomplexobj", "isrealobj"}


class ufunc:
    """An element-wise function: device arrays and scalars only, C-contiguous output unless ``out`` is
    given (keyword arguments as CuPy's: ``out``, ``dtype``, ``casting``)."""

    def __init__(self, np_ufunc: np.ufunc) -> None:
        self._ufunc = np_ufunc
        self.__name__ = np_ufunc.__name__
        self.nin, self.nout, self.nargs = np_ufunc.nin, np_ufunc.nout, np_ufunc.nargs
        self.types = np_ufunc.types

    def __repr__(self) -> str:
        return f"<ufunc 'cupy.{self.__name__}'>"

    def _inputs(self, args):
        for a in args:
            if isinstance(a, np.ndarray) and type(a) is not ndarray:
                raise TypeError(f"cupy.{self.__name__}: Unsupported type {type(a)} (a NumPy array)")
            if isinstance(a, list | tuple):
                raise TypeError(f"cupy.{self.__name__}: Unsupported type {type(a)}")
        return unwrap(args, f"cupy.{self.__name__}")

    def __call__(self, *args, out=None, dtype=None, casting="same_kind", **kwargs):
        if kwargs:
            raise TypeError(f"cupy.{self.__name__}: Wrong arguments {sorted(kwargs)}")
        if len(args) != self.nin:
            raise TypeError(f"cupy.{self.__name__}: Wrong number of arguments ({len(args)} for {self.nin})")
        inputs = self._inputs(args)
        if out is not None:
            if type(out) is not ndarray:
                raise TypeError(f"cupy.{self.__name__}: out must be a cupy.ndarray, got {type(out)}")
            self._ufunc(*inputs, out=out._a, dtype=dtype, casting=casting)
            return out
        return wrap(self._ufunc(*inputs, dtype=dtype, casting=casting, order="C"))

    def reduce(self, array, axis=0, dtype=None, out=None, keepdims=False):
        result = self._ufunc.reduce(unwrap(array, self.__name__), axis=axis, dtype=dtype, keepdims=keepdims)
        if out is not None:
            out._a[...] = result
            return out
        return wrap(result)

    def accumulate(self, array, axis=0, dtype=None, out=None):
        return wrap(self._ufunc.accumulate(unwrap(array, self.__name__), axis=axis, dtype=dtype))

    def outer(self, a, b, **kwargs):
        return wrap(np.ascontiguousarray(self._ufunc.outer(*self._inputs((a, b)), **kwargs)))

    def at(self, a, indices, b=None):
        if type(a) is not ndarray:
            raise TypeError(f"cupy.{self.__name__}.at: a must be a cupy.ndarray")
        index = unwrap(indices, "at") if type(indices) is ndarray else indices
        if b is None:
            self._ufunc.at(a._a, index)
        else:
            self._ufunc.at(a._a, index, *self._inputs((b,)))


UFUNCS: dict[str, ufunc] = {}
for _name, _value in vars(np).items():
    if isinstance(_value, np.ufunc) and _names.has("cupy", _name):
        UFUNCS[_name] = ufunc(_value)
UFUNCS.setdefault("true_divide", UFUNCS["divide"])


def numpy_ufunc_on_device(np_ufunc, method: str, inputs, kwargs):
    """``np.<ufunc>(device array, ...)``: run as CuPy's ufunc (CuPy's ``__array_ufunc__``); a NumPy array
    among the inputs raises ``TypeError``."""
    fake = UFUNCS.get(np_ufunc.__name__)
    if fake is None:
        raise TypeError(f"cupy has no ufunc {np_ufunc.__name__!r}")
    if "out" in kwargs:
        out = kwargs["out"]
        kwargs = {**kwargs, "out": out[0] if isinstance(out, tuple) and len(out) == 1 else out}
    return getattr(fake, method)(*inputs, **kwargs)


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    """A device array from a device array (no copy when nothing changes), a host array, a list or a scalar."""
    if type(a) is ndarray:
        if (dtype is None or np.dtype(dtype) == a.dtype) and order in (None, "K", "A") and not copy:
            return a
        return _from_numpy(np.array(a._a, dtype=dtype, order=order or "K", copy=True))
    host = np.array(unwrap(a, "asarray") if isinstance(a, list | tuple) else a, dtype=dtype,
                    order=order or "K")
    return _from_numpy(host)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if type(obj) is ndarray:
        return _from_numpy(np.array(obj._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    host = unwrap(obj, "array") if isinstance(obj, list | tuple) else obj
    return _from_numpy(np.array(host, dtype=dtype, order=order, ndmin=ndmin))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    """A NumPy array (a counted device→host copy for a device array)."""
    if type(a) is ndarray:
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


def ascontiguousarray(a, dtype=None):
    if type(a) is not ndarray:
        raise TypeError(f"ascontiguousarray: Argument 'a' has incorrect type (expected cupy.ndarray, got "
                        f"{type(a).__name__})")
    if a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return _from_numpy(np.ascontiguousarray(a._a, dtype=dtype))


def get_array_module(*args):
    import fakecupy
    return fakecupy if any(type(a) is ndarray for a in args) else np


def _sorting(name: str):
    np_func = getattr(np, name)

    def sort(*args, **kwargs):
        _names.check_call("cupy", name, args, kwargs)
        return _sorted(*args, **kwargs)

    def _sorted(a, axis=-1, kind=None):
        _check_kind(kind)
        return wrap(np_func(unwrap(a, f"cupy.{name}"), axis=axis, kind="stable"))
    sort.__name__ = name
    return sort


_SPECIAL = {"asarray": asarray, "array": array, "asnumpy": asnumpy, "ascontiguousarray": ascontiguousarray,
            "get_array_module": get_array_module, "sort": _sorting("sort"), "argsort": _sorting("argsort")}


def make_module_function(name: str):
    """The stand-in for ``cupy.<name>``: NumPy's function of the same name on the buffers of device arrays
    (host arrays refused), results as device arrays."""
    _names.require("cupy", name)
    if name in _SPECIAL:
        return _SPECIAL[name]
    if name in UFUNCS:
        return UFUNCS[name]
    np_func = getattr(np, name, None)
    if np_func is None or not callable(np_func):
        raise NotImplementedError(f"fakecupy: cupy.{name} is not emulated")

    def function(*args, **kwargs):
        _names.check_call("cupy", name, args, kwargs)
        if name in SIZE_SYNCS:
            record_sync(f"cupy.{name} (result size)")
        out = kwargs.get("out")
        if out is not None and type(out) is not ndarray:
            raise TypeError(f"cupy.{name}: out must be a cupy.ndarray")
        result = np_func(*unwrap(args, f"cupy.{name}"), **{k: unwrap(v, f"cupy.{name}")
                                                           for k, v in kwargs.items()})
        if out is not None:
            return out
        if name in _PLAIN_RESULTS:
            return result
        if name in _ELEMENTWISE and isinstance(result, np.ndarray):
            result = np.ascontiguousarray(result)
        return wrap(result)
    function.__name__ = name
    return function


def array_function(func, args, kwargs):
    """``np.<function>(device arrays)`` runs ``cupy.<function>`` (CuPy's ``__array_function__``)."""
    name = func.__name__
    if not _names.has("cupy", name):
        raise TypeError(f"no implementation of numpy.{name} for cupy.ndarray")
    import fakecupy
    return getattr(fakecupy, name)(*args, **kwargs)


__all__ = ["UFUNCS", "array", "array_function", "asarray", "ascontiguousarray", "asnumpy", "get_array_module",
           "make_module_function", "numpy_ufunc_on_device", "record_sync", "ufunc"]
