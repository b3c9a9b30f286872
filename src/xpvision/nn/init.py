"""Weight initialisers and the FCN bilinear upsampling kernel.

Initialisers draw on the CPU from :mod:`xpvision.nn.rng` (so a seed gives the same weights on either device)
and return an array of ``shape`` and ``dtype`` (float32 by default) on the device of ``xp``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from xpvision import backend
from xpvision.nn import rng

if TYPE_CHECKING:
    from xpvision.nn.conv import ConvTranspose2d


def _check_fans(*fans: int) -> None:
    for fan in fans:
        if not isinstance(fan, int | np.integer) or fan <= 0:
            raise ValueError(f"fan-in/fan-out must be positive integers, got {fan!r}")


def he_normal(shape: tuple[int, ...], fan_in: int, xp=np, dtype=np.float32):
    """He (Kaiming) normal: N(0, 2 / fan_in), for layers followed by ReLU."""
    _check_fans(fan_in)
    std = math.sqrt(2.0 / fan_in)
    return xp.asarray((rng.standard_normal(shape, dtype=np.float64) * std).astype(dtype))


def he_uniform(shape: tuple[int, ...], fan_in: int, xp=np, dtype=np.float32):
    """He (Kaiming) uniform: U(-b, b) with b = sqrt(6 / fan_in)."""
    _check_fans(fan_in)
    bound = math.sqrt(6.0 / fan_in)
    return xp.asarray(rng.cpu_uniform(shape, -bound, bound, dtype))


def xavier_normal(shape: tuple[int, ...], fan_in: int, fan_out: int, xp=np, dtype=np.float32):
    """Xavier (Glorot) normal: N(0, 2 / (fan_in + fan_out)), for tanh/sigmoid layers."""
    _check_fans(fan_in, fan_out)
    std = math.sqrt(2.0 / (fan_in + fan_out))
    return xp.asarray((rng.standard_normal(shape, dtype=np.float64) * std).astype(dtype))


def xavier_uniform(shape: tuple[int, ...], fan_in: int, fan_out: int, xp=np, dtype=np.float32):
    """Xavier (Glorot) uniform: U(-b, b) with b = sqrt(6 / (fan_in + fan_out))."""
    _check_fans(fan_in, fan_out)
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return xp.asarray(rng.cpu_uniform(shape, -bound, bound, dtype))


def bilinear_kernel(kernel_size: int) -> np.ndarray:
    """The FCN bilinear interpolation kernel, ``(k, k)`` float32.

    factor ``f = (k + 1) // 2``, centre ``c = f - 1`` if ``k`` is odd else ``f - 0.5``, weight
    ``(1 - |x - c| / f) * (1 - |y - c| / f)``.
    """
    if not isinstance(kernel_size, int | np.integer) or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive integer, got {kernel_size!r}")
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - np.abs(np.arange(kernel_size, dtype=np.float64) - centre) / factor  # (k,)
    return np.outer(taps, taps).astype(np.float32)


def bilinear_upsampling_(layer: ConvTranspose2d) -> ConvTranspose2d:
    """Initialise a square-kernel ``ConvTranspose2d`` with ``in == out`` channels as bilinear upsampling, in
    place.

    The kernel goes on the channel diagonal (``W[c, c] = bilinear_kernel(k)``, zeros elsewhere) and the bias
    is zeroed. With ``kernel = 2 * stride`` and ``padding = stride // 2`` the layer upsamples by ``stride``.
    """
    w = layer.params["W"]  # (in, out, kh, kw)
    c_in, c_out, kh, kw = w.shape
    if c_in != c_out or kh != kw:
        raise ValueError(f"bilinear upsampling needs in == out channels and a square kernel, got W {w.shape}")
    weights = np.zeros(w.shape, dtype=w.dtype)
    weights[np.arange(c_in), np.arange(c_in)] = bilinear_kernel(kh)
    w[...] = backend.get_array_module(w).asarray(weights)
    if "b" in layer.params:
        layer.params["b"][...] = 0
    return layer
