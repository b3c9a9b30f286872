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
from xpvision.nn import functional as F
from xpvision.nn.activation import ReLU
from xpvision.nn.base import Layer
from xpvision.nn.parallel import single_threaded_blas
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
        """Normalise ``x2`` ``(M, C)`` (M = values per channel) -> ``(M, C)``.

        Training caches the centred input and ``1 / std``, from which the backward rebuilds ``xhat``; the
        per-channel sums are GEMVs and the per-channel affine maps run on wide rows (:func:`_wide`).
        """
        xp = backend.get_array_module(x2)
        gamma, beta = self.params["gamma"], self.params["beta"]
        if self.training:
            sums, m = self._group_sums(_channel_sum(x2), x2.shape[0])
            if m < 2:
                raise ShapeError(f"{type(self).__name__} needs more than 1 value per channel in training, "
                                 f"got {m}")
            mean = sums / m  # (C,)
            centred = _affine(x2, None, -mean)  # (M, C)
            var = self._group_sums(_channel_sum(centred * centred))[0] / m  # (C,) biased
            inv_std = 1 / xp.sqrt(var + self.eps)
            running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
            running_mean *= 1 - self.momentum
            running_mean += self.momentum * mean
            running_var *= 1 - self.momentum
            running_var += (self.momentum * m / (m - 1)) * var
            self._cache = (centred, inv_std, m)
            return _affine(centred, gamma * inv_std, beta)
        inv_std = 1 / xp.sqrt(self.buffers["running_var"] + self.eps)
        scale = gamma * inv_std  # (C,)
        self._cache = (x2, inv_std, None)
        return _affine(x2, scale, beta - self.buffers["running_mean"] * scale)

    def _group_sums(self, sums, count: int = 0):
        """``(sums, count)`` over every process when :attr:`group_sum` is set, else as given."""
        if self.group_sum is None:
            return sums, count
        xp = backend.get_array_module(sums)
        total = self.group_sum(xp.concatenate([sums, xp.asarray([count], dtype=sums.dtype)]))
        return total[:-1], round(float(total[-1]))

    def _backward_rows(self, dy2):
        """Gradient w.r.t. the input rows ``(M, C)`` from ``dy2`` ``(M, C)``; fills ``gamma``/``beta`` grads.
        """
        x2, inv_std, m = self._cache  # m: values per channel in the (whole) batch, None in eval mode
        training = m is not None
        gamma = self.params["gamma"]
        dbeta = _channel_sum(dy2)  # (C,)
        if training:  # x2 is the centred input: xhat = x2 * inv_std
            dgamma = _channel_sum(dy2 * x2) * inv_std  # (C,)
        else:
            dgamma = _channel_sum(dy2 * _affine(x2, inv_std, -self.buffers["running_mean"] * inv_std))
        if self.trainable:
            self.grads["gamma"][...] = dgamma
            self.grads["beta"][...] = dbeta
        scale = gamma * inv_std  # (C,)
        if not training:
            return _affine(dy2, scale, None)
        if self.group_sum is not None:
            c = self.num_features
            total = self._group_sums(backend.get_array_module(dy2).concatenate([dbeta, dgamma]))[0]
            dbeta, dgamma = total[:c], total[c:]
        # (gamma * inv_std / m) * (m * dy - dbeta - xhat * dgamma), xhat = centred * inv_std
        dx = _affine(x2, -scale * inv_std * dgamma / m, -scale * dbeta / m)  # (M, C)
        dx += _affine(dy2, scale, None)
        return dx


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
        grad_like(type(self).__name__, dout, self._cache[0].shape)
        with single_threaded_blas(backend.get_array_module(dout)):
            return self._backward_rows(dout)
