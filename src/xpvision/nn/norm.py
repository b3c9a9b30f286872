"""Batch normalisation: :class:`BatchNorm2d` (per channel of ``(N, C, H, W)``) and :class:`BatchNorm1d` (per
feature of ``(N, C)``), with PyTorch's semantics.

Training: normalise with the batch mean and the *biased* batch variance, and update the running statistics
with ``running = (1 - momentum) * running + momentum * batch`` using the *unbiased* variance. Eval: normalise
with the running statistics. With ``group_sum`` set (a function summing a ``(k,)`` array over the processes
of data-parallel training, see :func:`xpvision.distributed.sync_batch_norm`), the batch statistics and the
sums of the backward are those of the whole batch across the processes (ChainerMN's multi-node batch
normalisation); the ``gamma``/``beta`` gradients stay this process's part, summed with the other gradients.

Parameters ``gamma`` (scale, ones) and ``beta`` (shift, zeros), both ``(C,)``; buffers ``running_mean``
(zeros) and ``running_var`` (ones), ``(C,)``. (PyTorch calls ``gamma``/``beta`` ``weight``/``bias``.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xpvision import backend
from xpvision.errors import ConfigError, ShapeError
from xpvision.nn import engine
from xpvision.nn import functional as F
from xpvision.nn.activation import ReLU
from xpvision.nn.base import Layer
from xpvision.nn.parallel import single_threaded_blas
from xpvision.nn.reference import group_total
from xpvision.nn.validate import forward_done, grad_like, image_input, matrix_input, positive_int


class _BatchNorm(Layer):
    registered = False

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = positive_int("num_features", num_features)
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"{type(self).__name__} momentum must be in [0, 1], got {momentum!r}")
        if not eps > 0:
            raise ConfigError(f"{type(self).__name__} eps must be positive, got {eps!r}")
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.add_param("gamma", np.ones(self.num_features, dtype=np.float32))
        self.add_param("beta", np.zeros(self.num_features, dtype=np.float32))
        self.buffers["running_mean"] = np.zeros(self.num_features, dtype=np.float32)
        self.buffers["running_var"] = np.ones(self.num_features, dtype=np.float32)
        self.group_sum = None
        self._cache: tuple | None = None

    def config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps}

    def _forward_rows(self, x2):
        """Normalise ``x2`` ``(M, C)`` (M = values per channel) -> ``(M, C)``, through the engine's kernel."""
        if self.training and self.group_sum is None and x2.shape[0] < 2:
            raise ShapeError(f"{type(self).__name__} needs more than 1 value per channel in training, "
                             f"got {x2.shape[0]}")
        kernels = engine.get_engine()
        y2, saved = engine.kernel("batch_norm", kernels)(
            x2, self.params["gamma"], self.params["beta"], self.buffers["running_mean"],
            self.buffers["running_var"], momentum=self.momentum, eps=self.eps, training=self.training,
            group_sum=self.group_sum)
        self._cache = (kernels, saved, x2.shape)
        return y2

    def _backward_rows(self, dy2):
        """Gradient w.r.t. the input rows ``(M, C)`` from ``dy2`` ``(M, C)``; fills ``gamma``/``beta`` grads.
        """
        kernels, saved, _ = self._cache
        dx2, dgamma, dbeta = engine.kernel("batch_norm_backward", kernels)(dy2, saved, self.params["gamma"],
                                                                            group_sum=self.group_sum)
        if self.trainable:
            self.grads["gamma"][...] = dgamma
            self.grads["beta"][...] = dbeta
        return dx2


@engine.register("tuned", "batch_norm")
def batch_norm(x2, gamma, beta, running_mean, running_var, *, momentum: float, eps: float, training: bool,
               group_sum=None):
    """The tuned ``batch_norm`` kernel of :mod:`xpvision.nn.engine`: per-channel sums as GEMVs and affine
    maps on wide rows (:func:`_wide`). Training saves the centred input and ``1 / std``, from which the
    backward rebuilds ``xhat``; evaluation saves the input and the running mean."""
    xp = backend.get_array_module(x2)
    if training:
        sums, m = group_total(group_sum, _channel_sum(x2), x2.shape[0])
        if m < 2:
            raise ShapeError(f"BatchNorm needs more than 1 value per channel in training, got {m}")
        mean = sums / m  # (C,)
        centred = _affine(x2, None, -mean)  # (M, C)
        var = group_total(group_sum, _channel_sum(centred * centred))[0] / m  # (C,) biased
        inv_std = 1 / xp.sqrt(var + eps)
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += (momentum * m / (m - 1)) * var
        return _affine(centred, gamma * inv_std, beta), (centred, inv_std, None, m)
    inv_std = 1 / xp.sqrt(running_var + eps)
    scale = gamma * inv_std  # (C,)
    return _affine(x2, scale, beta - running_mean * scale), (x2, inv_std, running_mean.copy(), None)


@engine.register("tuned", "batch_norm_backward")
def batch_norm_backward(dy2, saved, gamma, group_sum=None):
    """The tuned ``batch_norm_backward`` kernel of :mod:`xpvision.nn.engine` -> ``(dx2, dgamma, dbeta)``."""
    x2, inv_std, running_mean, m = saved  # m: values per channel in the (whole) batch
    training = running_mean is None
    dbeta = _channel_sum(dy2)  # (C,)
    if training:  # x2 is the centred input: xhat = x2 * inv_std
        dgamma = _channel_sum(dy2 * x2) * inv_std  # (C,)
    else:
        dgamma = _channel_sum(dy2 * _affine(x2, inv_std, -running_mean * inv_std))
    scale = gamma * inv_std  # (C,)
    if not training:
        return _affine(dy2, scale, None), dgamma, dbeta
    total_dbeta, total_dgamma = dbeta, dgamma  # dx needs them over every process; the parameters their own
    if group_sum is not None:
        c = dbeta.shape[0]
        total = group_total(group_sum, backend.get_array_module(dy2).concatenate([dbeta, dgamma]))[0]
        total_dbeta, total_dgamma = total[:c], total[c:]
    # (gamma * inv_std / m) * (m * dy - dbeta - xhat * dgamma), xhat = centred * inv_std
    dx = _affine(x2, -scale * inv_std * total_dgamma / m, -scale * total_dbeta / m)  # (M, C)
    dx += _affine(dy2, scale, None)
    return dx, dgamma, dbeta


def _wide(a2, *vectors):
    """``a2`` ``(M, C)`` as ``(M / r, r * C)`` rows of about 256 values (``r`` a power of two dividing M),
    with each ``(C,)`` vector (or ``None``) tiled ``r`` times to match: NumPy's per-row loop overhead is paid
    once per wide row instead of once per ``C`` values."""
    xp = backend.get_array_module(a2)
    m, c = a2.shape
    r = 1
    while r * c < 256 and m % (2 * r) == 0:
        r *= 2
    return a2.reshape(m // r, r * c), [None if v is None else xp.tile(v.astype(a2.dtype), r) for v in vectors]


def _affine(a2, scale, shift):
    """``a2 * scale + shift`` per channel (either may be ``None``) for ``a2`` ``(M, C)`` -> new ``(M, C)``."""
    wide, (s, b) = _wide(a2, scale, shift)
    out = wide * s if s is not None else wide + b
    if s is not None and b is not None:
        out += b
    return out.reshape(a2.shape)  # (M, C)


def _channel_sum(a2):
    """Per-channel sum of ``a2`` ``(M, C)`` -> ``(C,)``: a GEMV over wide rows (an axis-0 NumPy reduction
    of ``C``-wide rows is ~7x slower)."""
    xp = backend.get_array_module(a2)
    wide, _ = _wide(a2)
    c = a2.shape[1]
    return (xp.ones(wide.shape[0], dtype=a2.dtype) @ wide).reshape(-1, c).sum(axis=0)  # (C,)


class BatchNorm2d(_BatchNorm):
    """Batch norm over ``(N, C, H, W)``: statistics per channel over ``N * H * W`` values; output an
    NCHW-shaped view of a contiguous NHWC buffer."""

    def fusable(self, following: list[Layer]) -> int:
        """Absorbs a directly following ``ReLU`` (applied in place on the fresh output)."""
        return int(bool(following) and type(following[0]) is ReLU)

    def forward(self, x):
        return self._forward(x, relu=False)

    def forward_fused(self, x, absorbed: list[Layer]):
        return self._forward(x, relu=True)

    def _forward(self, x, relu: bool):
        x4 = image_input(type(self).__name__, x, self.num_features)  # (N, H, W, C)
        xp = backend.get_array_module(x4)
        with single_threaded_blas(xp):  # the channel sums are GEMVs
            y2 = self._forward_rows(x4.reshape(-1, self.num_features))  # (N*H*W, C)
        if relu:
            xp.maximum(y2, 0, out=y2)
        self._relu_out = y2 if relu else None  # its positive entries pass the gradient
        self._shape = x4.shape
        return F.nchw(y2.reshape(x4.shape))

    def backward(self, dout):
        forward_done(type(self).__name__, self._cache)
        n, h, w, c = self._shape
        dy = F.nhwc(grad_like(type(self).__name__, dout, (n, c, h, w)))  # (N, H, W, C)
        xp = backend.get_array_module(dy)
        if self._relu_out is not None:
            dy = xp.multiply(dy, self._relu_out.reshape(dy.shape) > 0, dtype=dy.dtype)  # (N, H, W, C)
        with single_threaded_blas(xp):
            dx2 = self._backward_rows(dy.reshape(-1, c))  # (N*H*W, C)
        return F.nchw(dx2.reshape(n, h, w, c))


class BatchNorm1d(_BatchNorm):
    """Batch norm over ``(N, C)``: statistics per feature over the batch."""

    def forward(self, x):
        x2 = matrix_input(type(self).__name__, x, self.num_features)  # (N, C)
        with single_threaded_blas(backend.get_array_module(x2)):
            return self._forward_rows(x2)

    def backward(self, dout):
        forward_done(type(self).__name__, self._cache)
        grad_like(type(self).__name__, dout, self._cache[2])
        with single_threaded_blas(backend.get_array_module(dout)):
            return self._backward_rows(dout)
