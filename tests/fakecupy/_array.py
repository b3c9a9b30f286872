"""The stand-in's array type and its device→host synchronisation counter."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

import numpy as np

from fakecupy import _names

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy "
             "array explicitly.")


@dataclass
class SyncCounter:
    """Device→host copies seen while active: ``count`` and, for failing budgets, where each came from."""

    count: int = 0
    sites: list[str] = field(default_factory=list)

    def record(self, what: str) -> None:
        self.count += 1
        self.sites.append(f"{what} at {_caller()}")


_counters: list[SyncCounter] = []
_total = [0]


def _caller() -> str:
    """``file:line`` of the first frame outside the stand-in."""
    frame = sys._getframe(2)
    while frame is not None and "/fakecupy/" in frame.f_code.co_filename:
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename.rsplit('/src/', 1)[-1]}:{frame.f_lineno}"


def record_sync(what: str) -> None:
    _total[0] += 1
    for counter in _counters:
        counter.record(what)


def sync_count() -> int:
    """Device→host copies since the stand-in was imported."""
    return _total[0]


@contextlib.contextmanager
def count_syncs():
    """``with count_syncs() as c: ...``: ``c.count`` device→host copies happened inside (``c.sites`` lists
    them)."""
    counter = SyncCounter()
    _counters.append(counter)
    try:
        yield counter
    finally:
        _counters.remove(counter)


def unwrap(value, where: str):
    """The NumPy buffer of a device array; host arrays are refused (CuPy raises ``TypeError``); lists and
    tuples are unwrapped element by element; scalars pass."""
    if type(value) is ndarray:
        return value._a
    if isinstance(value, np.ndarray):
        raise TypeError(f"{where}: Unsupported type {type(value)} (a NumPy array where CuPy needs a "
                        f"cupy.ndarray; move it with cupy.asarray)")
    if isinstance(value, list | tuple):
        return type(value)(unwrap(v, where) for v in value)
    return value


def wrap(value):
    """Device arrays for NumPy results (scalars become 0-d arrays, as CuPy returns); tuples element-wise."""
    if isinstance(value, np.ndarray):
        return _from_numpy(value)
    if isinstance(value, np.generic):
        return _from_numpy(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(wrap(v) for v in value)
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def _from_numpy(a: np.ndarray) -> ndarray:
    if a.dtype == object or a.dtype.kind in "USV":
        raise ValueError(f"Unsupported dtype {a.dtype}")
    out = object.__new__(ndarray)
    out._a = a
    return out


def _index(key):
    """An index for the NumPy buffer: device index arrays unwrapped; host index arrays and lists are moved
    (CuPy copies them to the device)."""
    if type(key) is ndarray:
        return key._a
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    return key


def _boolean_index(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, ndarray | np.ndarray) and k.dtype == np.bool_ and k.ndim > 0 for k in keys)


class _Flags:
    def __init__(self, a: np.ndarray) -> None:
        self.c_contiguous = bool(a.flags.c_contiguous)
        self.f_contiguous = bool(a.flags.f_contiguous)
        self.owndata = bool(a.flags.owndata)

    def __getitem__(self, key: str) -> bool:
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[key]


class ndarray:
    """A device array: a NumPy buffer that host code cannot reach without an explicit, counted copy."""

    __slots__ = ("_a",)
    __array_priority__ = 100
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("fakecupy: ndarray(memptr=..., strides=...) is not emulated")
        self._a = np.empty(shape, dtype=dtype, order=order)

    # -- attributes ------------------------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    T = property(lambda self: _from_numpy(self._a.T))
    mT = property(lambda self: _from_numpy(self._a.mT))
    real = property(lambda self: _from_numpy(self._a.real))
    imag = property(lambda self: _from_numpy(self._a.imag))

    @property
    def base(self):
        return None if self._a.base is None else _from_numpy(self._a.base)

    @property
    def device(self):
        from fakecupy.cuda import Device
        return Device(0)

    def __getattr__(self, name: str):
        _names.require("cupy.ndarray", name)
        raise NotImplementedError(f"fakecupy: cupy.ndarray.{name} is not emulated")

    # -- explicit device→host copies (counted) ---------------------------------------------------------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        """A NumPy copy (one device→host synchronisation)."""
        record_sync("ndarray.get")
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError("out must be a numpy.ndarray")
            out[...] = self._a
            return out
        return np.array(self._a, order=order)

    def set(self, arr, stream=None):
        """Copy the host array ``arr`` into this array."""
        if not isinstance(arr, np.ndarray) or arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError("set: expected a numpy.ndarray of the same shape and dtype")
        self._a[...] = arr

    def item(self, *args):
        record_sync("ndarray.item")
        return self._a.item(*args)

    def tolist(self):
        record_sync("ndarray.tolist")
        return self._a.tolist()

    def _scalar(self, kind, what: str):
        if self.size != 1:
            raise TypeError(f"only size-1 arrays can be converted to Python scalars ({what})")
        record_sync(what)
        return kind(self._a.reshape(()))

    def __float__(self):
        return self._scalar(float, "float(x)")

    def __int__(self):
        return self._scalar(int, "int(x)")

    def __complex__(self):
        return self._scalar(complex, "complex(x)")

    def __bool__(self):
        if self.size != 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous.")
        record_sync("bool(x)")
        return bool(self._a.reshape(()))

    def __repr__(self):
        record_sync("repr(x)")
        return repr(self._a).replace("array(", "fakecupy.array(", 1)

    def __str__(self):
        record_sync("str(x)")
        return str(self._a)

    def __format__(self, spec):
        record_sync("format(x)")
        return format(self._a.reshape(()) if self.ndim == 0 else self._a, spec)

    # -- refused implicit conversions ------------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        from fakecupy._functions import numpy_ufunc_on_device
        return numpy_ufunc_on_device(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        from fakecupy._functions import array_function
        return array_function(func, args, kwargs)

    # -- shape, indexing -------------------------------------------------------------------------------------
    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (_from_numpy(self._a[i]) for i in range(len(self._a)))

    def __getitem__(self, key):
        if _boolean_index(key):
            record_sync("boolean-mask indexing (result size)")
        return wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray):
            raise TypeError(f"Unsupported type {type(value)}: assigning a NumPy array into a cupy.ndarray "
                            f"(move it with cupy.asarray first)")
        if isinstance(value, list | tuple):
            value = unwrap(value, "__setitem__")
        self._a[_index(key)] = value._a if type(value) is ndarray else value

    # -- methods: NumPy's, on the buffer, with CuPy's rules --------------------------------------------------
    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        return _from_numpy(self._a.astype(dtype, order=order, copy=copy))

    def copy(self, order="C"):
        return _from_numpy(self._a.copy(order=order))

    def view(self, dtype=None, array_class=None):
        return _from_numpy(self._a.view() if dtype is None else self._a.view(dtype))

    def reshape(self, *shape, order="C"):
        return _from_numpy(self._a.reshape(*shape, order=order))

    def sort(self, axis=-1, kind=None):
        _check_kind(kind)
        self._a.sort(axis=axis, kind="stable")

    def argsort(self, axis=-1, kind=None):
        _check_kind(kind)
        return _from_numpy(self._a.argsort(axis=axis, kind="stable"))

    def nonzero(self):
        record_sync("ndarray.nonzero (result size)")
        return wrap(self._a.nonzero())

    def fill(self, value):
        self._a.fill(unwrap(value, "fill"))

    def scatter_add(self, slices, value):
        np.add.at(self._a, _index(slices), unwrap(value, "scatter_add"))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __reduce__(self):  # CuPy arrays pickle through the host; the project never pickles
        raise TypeError("fakecupy arrays do not pickle")


def _check_kind(kind) -> None:
    if kind not in (None, "stable"):
        raise NotImplementedError(f"CuPy sorts are stable; kind={kind!r} is not supported")


def _method(name: str):
    def method(self, *args, **kwargs):
        _names.check_call("cupy.ndarray", name, (self, *args), kwargs)
        out = kwargs.get("out")
        result = getattr(self._a, name)(*unwrap(args, name),
                                        **{k: unwrap(v, name) for k, v in kwargs.items()})
        return out if out is not None else wrap(result)
    method.__name__ = name
    return method


for _name in ("all", "any", "argmax", "argmin", "clip", "conj", "cumprod", "cumsum", "diagonal", "dot",
              "flatten", "max", "mean", "min", "prod", "ptp", "ravel", "repeat", "round", "squeeze",
              "std", "sum", "swapaxes", "take", "trace", "transpose", "var", "searchsorted", "choose",
              "compress", "put", "partition", "argpartition"):
    _names.require("cupy.ndarray", _name)
    if not hasattr(ndarray, _name) and hasattr(np.ndarray, _name):
        setattr(ndarray, _name, _method(_name))


def _binary(ufunc_name: str, name: str, reflected: bool = False):
    def method(self, other):
        from fakecupy._functions import UFUNCS
        if isinstance(other, np.ndarray | list | tuple):
            raise TypeError(f"Unsupported type {type(other)}: {name} of a cupy.ndarray and a {type(other)}")
        return UFUNCS[ufunc_name](other, self) if reflected else UFUNCS[ufunc_name](self, other)
    method.__name__ = name
    return method


def _inplace(ufunc_name: str, name: str):
    def method(self, other):
        from fakecupy._functions import UFUNCS
        if isinstance(other, np.ndarray | list | tuple):
            raise TypeError(f"Unsupported type {type(other)}: {name} of a cupy.ndarray and a {type(other)}")
        UFUNCS[ufunc_name](self, other, out=self)
        return self
    method.__name__ = name
    return method


def _unary(ufunc_name: str, name: str):
    def method(self):
        from fakecupy._functions import UFUNCS
        return UFUNCS[ufunc_name](self)
    method.__name__ = name
    return method


_BINARY = {"add": "add", "sub": "subtract", "mul": "multiply", "truediv": "true_divide",
           "floordiv": "floor_divide", "mod": "remainder", "pow": "power", "and": "bitwise_and",
           "or": "bitwise_or", "xor": "bitwise_xor", "lshift": "left_shift", "rshift": "right_shift"}
for _short, _ufunc in _BINARY.items():
    setattr(ndarray, f"__{_short}__", _binary(_ufunc, f"__{_short}__"))
    setattr(ndarray, f"__r{_short}__", _binary(_ufunc, f"__r{_short}__", reflected=True))
    setattr(ndarray, f"__i{_short}__", _inplace(_ufunc, f"__i{_short}__"))
ndarray.__matmul__ = _binary("matmul", "__matmul__")
ndarray.__rmatmul__ = _binary("matmul", "__rmatmul__", reflected=True)
for _short, _ufunc in {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal", "gt": "greater",
                       "ge": "greater_equal"}.items():
    setattr(ndarray, f"__{_short}__", _binary(_ufunc, f"__{_short}__"))
for _short, _ufunc in {"neg": "negative", "pos": "positive", "abs": "absolute", "invert": "invert"}.items():
    setattr(ndarray, f"__{_short}__", _unary(_ufunc, f"__{_short}__"))

_names.check_defined("cupy.ndarray", {k for k in vars(ndarray) if not k.startswith("_") or k.startswith("__")}
                     - {"__slots__", "__module__", "__doc__", "__dict__", "__weakref__", "__annotations__",
                        "__firstlineno__", "__static_attributes__", "__getattr__", "_a"})
