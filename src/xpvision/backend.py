"""Array backend: NumPy on the CPU, CuPy on the GPU.

This is the only module that imports CuPy. Array code elsewhere is written once against an ``xp`` module
obtained from :func:`get_array_module`, so the same function runs on either device.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from xpvision.errors import XPVisionError

DEVICES = ("cpu", "gpu")


class DeviceError(XPVisionError):
    """Raised when a device is requested that this machine cannot provide."""


@functools.cache
def _cupy():
    """Return the ``cupy`` module, or ``None`` when it is not installed."""
    try:
        import cupy
    except ImportError:
        return None
    return cupy


@functools.cache
def gpu_available() -> bool:
    """True when CuPy is installed *and* a CUDA device answers (CuPy imports fine without one)."""
    cp = _cupy()
    if cp is None:
        return False
    try:
        return bool(cp.cuda.is_available()) and cp.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CUDARuntimeError and driver errors all mean: no usable GPU
        return False


def get_array_module(*arrays: Any):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    Non-array arguments (``None``, scalars, lists) are ignored, so optional inputs can be passed as they are.
    """
    cp = _cupy()
    if cp is not None:
        for a in arrays:
            if isinstance(a, cp.ndarray):
                return cp
    return np


def is_gpu_array(a: Any) -> bool:
    cp = _cupy()
    return cp is not None and isinstance(a, cp.ndarray)


def check_device(device: str) -> str:
    """Validate a device name; raise :class:`DeviceError` with the reason when ``gpu`` cannot be used."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; expected one of {DEVICES}")
    if device == "gpu" and not gpu_available():
        reason = "CuPy is not installed (pip install 'xpvision[gpu]')" if _cupy() is None else (
            "CuPy is installed but no CUDA device is available")
        raise DeviceError(f"device 'gpu' requested but {reason}")
    return device


def xp_for(device: str):
    """The array module for a device name (``'cpu'`` -> numpy, ``'gpu'`` -> cupy)."""
    return _cupy() if check_device(device) == "gpu" else np


def to_device(a: Any, device: str):
    """Move an array (or a dict/list/tuple of arrays, recursively) to ``device``. Non-arrays pass through."""
    if isinstance(a, dict):
        return {k: to_device(v, device) for k, v in a.items()}
    if isinstance(a, list | tuple):
        return type(a)(to_device(v, device) for v in a)
    if check_device(device) == "gpu":
        return _cupy().asarray(a) if isinstance(a, np.ndarray) else a
    return to_numpy(a)


def to_numpy(a: Any):
    """Return a NumPy array for a NumPy or CuPy array (copying from the GPU); other objects pass through."""
    return a.get() if is_gpu_array(a) else a


def device_of(a: Any) -> str:
    return "gpu" if is_gpu_array(a) else "cpu"


# -- multi-GPU (data-parallel training, see xpvision.distributed) ------------------------------------------
def gpu_count() -> int:
    """The number of CUDA devices this process sees (0 without CuPy or a GPU)."""
    return _cupy().cuda.runtime.getDeviceCount() if gpu_available() else 0


def use_gpu(index: int) -> None:
    """Make CUDA device ``index`` the current one of this process (CuPy allocates there from now on)."""
    check_device("gpu")
    _cupy().cuda.Device(index).use()


def nccl_module():
    """``cupy.cuda.nccl`` (NCCL's communicators and constants); :class:`DeviceError` when unavailable."""
    check_device("gpu")
    from cupy.cuda import nccl

    if not nccl.available:
        raise DeviceError("device 'gpu' with processes > 1 needs NCCL, which this CuPy build lacks "
                          "(pip install nvidia-nccl-cu12)")
    return nccl


def current_stream_ptr() -> int:
    """The handle of CuPy's current CUDA stream (NCCL enqueues its collectives there)."""
    return _cupy().cuda.get_current_stream().ptr


def synchronize() -> None:
    """Wait for the work queued on CuPy's current stream (timing GPU steps); nothing without a GPU."""
    if gpu_available():
        _cupy().cuda.get_current_stream().synchronize()
