"""The random source of the network: initialisers and dropout draw from here.

One module-level state, re-seeded by :func:`manual_seed` (the trainer calls it at the start of every epoch
with a seed derived from ``(seed, epoch)``). Initialisers always draw on the CPU with NumPy and move the
result, so a seed gives the same weights on either device. Dropout masks are drawn on the device of the
activations: a NumPy ``Generator`` on the CPU, a CuPy ``Generator`` on the GPU (seeded from the same seed, so
runs are reproducible per device, though the CPU and GPU streams differ).
"""

from __future__ import annotations

import numpy as np

_state: dict = {"seed": None, "cpu": np.random.default_rng(), "gpu": None}


def manual_seed(seed: int) -> None:
    """Re-seed the generators used by initialisers and dropout (NumPy now, CuPy lazily on first use)."""
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _state.update(seed=int(seed), cpu=np.random.default_rng(int(seed)), gpu=None)


def generator(xp=np):
    """The generator for the array module ``xp``: a ``numpy.random.Generator`` or a ``cupy.random.Generator``.
    """
    if xp is np:
        return _state["cpu"]
    if _state["gpu"] is None:
        seed = _state["seed"]
        if seed is None:  # unseeded: derive the GPU seed from the CPU stream, itself seeded from OS entropy
            seed = int(_state["cpu"].integers(2**62))
        gpu_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1, dtype=np.uint64)[0] >> 1)
        _state["gpu"] = xp.random.default_rng(gpu_seed)
    return _state["gpu"]


def uniform(shape: tuple[int, ...], xp=np, dtype=np.float32):
    """Uniform samples in ``[0, 1)`` of ``shape`` and ``dtype`` on the device of ``xp``."""
    return generator(xp).random(shape, dtype=dtype)


def standard_normal(shape: tuple[int, ...], dtype=np.float32):
    """Standard normal samples of ``shape`` and ``dtype``, drawn on the CPU (NumPy array)."""
    return _state["cpu"].standard_normal(shape, dtype=dtype)


def cpu_uniform(shape: tuple[int, ...], low: float, high: float, dtype=np.float32):
    """Uniform samples in ``[low, high)`` drawn on the CPU (NumPy array of ``dtype``)."""
    return (low + (high - low) * _state["cpu"].random(shape, dtype=np.float64)).astype(dtype)
