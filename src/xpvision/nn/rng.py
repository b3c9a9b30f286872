"""The random source of the network: initialisers and dropout draw from here.

One module-level state, re-seeded by :func:`manual_seed` (the trainer calls it at the start of every epoch
with a seed derived from ``(seed, epoch)``). Initialisers and dropout draw on the CPU with NumPy, and a draw
for the GPU is moved there (a host-to-device copy, which does not wait for the device): a seed gives the same
weights and the same dropout masks on either device, so a model trains on the GPU as on the CPU up to float
rounding.

Data-parallel training (:mod:`xpvision.distributed`) runs each process on part of every batch inside
:func:`batch_part`, where a dropout mask is drawn for the whole batch and the process keeps its rows: the
masks, and so the results, do not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

_state: dict = {"cpu": np.random.default_rng(), "part": None}


def manual_seed(seed: int) -> None:
    """Re-seed the generator used by initialisers and dropout."""
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _state["cpu"] = np.random.default_rng(int(seed))


@contextlib.contextmanager
def batch_part(total: int, start: int) -> Iterator[None]:
    """Inside, this process holds samples ``start:start + n`` of a batch of ``total``: :func:`uniform` draws
    its ``(n, ...)`` batch-shaped samples as rows ``start:start + n`` of a ``(total, ...)`` draw."""
    if not 0 <= start < total:
        raise ValueError(f"batch part starting at {start} lies outside a batch of {total}")
    previous, _state["part"] = _state["part"], (int(total), int(start))
    try:
        yield
    finally:
        _state["part"] = previous


def uniform(shape: tuple[int, ...], xp=np, dtype=np.float32):
    """Uniform samples in ``[0, 1)`` of ``shape`` (first axis the batch) and ``dtype`` on the device of
    ``xp`` (drawn on the CPU, the same values for either); inside :func:`batch_part`, this process's rows of
    the whole batch's draw."""
    part = _state["part"]
    if part is None:
        draw = _state["cpu"].random(shape, dtype=dtype)
    else:
        total, start = part
        if start + shape[0] > total:
            raise ValueError(f"a draw of {shape[0]} rows from row {start} exceeds the batch of {total}")
        draw = _state["cpu"].random((total, *shape[1:]), dtype=dtype)[start:start + shape[0]]
    return draw if xp is np else xp.asarray(draw)


def standard_normal(shape: tuple[int, ...], dtype=np.float32):
    """Standard normal samples of ``shape`` and ``dtype``, drawn on the CPU (NumPy array)."""
    return _state["cpu"].standard_normal(shape, dtype=dtype)


def cpu_uniform(shape: tuple[int, ...], low: float, high: float, dtype=np.float32):
    """Uniform samples in ``[low, high)`` drawn on the CPU (NumPy array of ``dtype``)."""
    return (low + (high - low) * _state["cpu"].random(shape, dtype=np.float64)).astype(dtype)
