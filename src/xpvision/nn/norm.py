"""Batch normalisation: :class:`BatchNorm2d` (per channel of ``(N, C, H, W)``) and :class:`BatchNorm1d` (per
feature of ``(N, C)``), with PyTorch's semantics.

Training: normalise with the batch mean and the *biased* batch variance, and update the running statistics
with ``running = (1 - momentum) * running + momentum * batch`` using the *unbiased* variance. Eval: normalise
with the running statistics. Parameters ``gamma`` (scale, ones) and ``beta`` (shift, zeros), both ``(C,)``;
buffers ``running_mean`` (zeros) and ``running_var`` (ones), ``(C,)``. (PyTorch calls ``gamma``/``beta``
``weight``/``bias``.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xpvision import backend
from xpvision.errors import ConfigError, ShapeError
from xpvision.nn import functional as F
from xpvision.nn.base import Layer
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
        self._cache: tuple | None = None

    def config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps}

    def _forward_rows(self, x2):
        """Normalise ``x2`` ``(M, C)`` (M = values per channel) -> ``(M, C)``."""
        xp = backend.get_array_module(x2)
        gamma, beta = self.params["gamma"], self.params["beta"]
        if self.training:
            m = x2.shape[0]
            if m < 2:
                raise ShapeError(f"{type(self).__name__} needs more than 1 value per channel in training, "
                                 f"got {m}")
            mean = x2.mean(axis=0)  # (C,)
            centred = x2 - mean  # (M, C)
            var = (centred * centred).mean(axis=0)  # (C,) biased
            inv_std = 1 / xp.sqrt(var + self.eps)
            running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
            running_mean *= 1 - self.momentum
            running_mean += self.momentum * mean
            running_var *= 1 - self.momentum
            running_var += (self.momentum * m / (m - 1)) * var
            xhat = centred * inv_std  # (M, C)
        else:
            inv_std = 1 / xp.sqrt(self.buffers["running_var"] + self.eps)
            xhat = (x2 - self.buffers["running_mean"]) * inv_std
        self._cache = (xhat, inv_std, self.training)
        return (xhat * gamma + beta).astype(x2.dtype, copy=False)

    def _backward_rows(self, dy2):
        """Gradient w.r.t. the input rows ``(M, C)`` from ``dy2`` ``(M, C)``; fills ``gamma``/``beta`` grads.
        """
        xhat, inv_std, training = self._cache
        gamma = self.params["gamma"]
        dbeta = dy2.sum(axis=0)  # (C,)
        dgamma = (dy2 * xhat).sum(axis=0)  # (C,)
        if self.trainable:
            self.grads["gamma"][...] = dgamma
            self.grads["beta"][...] = dbeta
        if not training:
            return dy2 * (gamma * inv_std)
        m = dy2.shape[0]
        return (gamma * inv_std / m) * (m * dy2 - dbeta - xhat * dgamma)


class BatchNorm2d(_BatchNorm):
    """Batch norm over ``(N, C, H, W)``: statistics per channel over ``N * H * W`` values; output an
    NCHW-shaped view of a contiguous NHWC buffer."""

    def forward(self, x):
        x4 = image_input(type(self).__name__, x, self.num_features)  # (N, H, W, C)
        y2 = self._forward_rows(x4.reshape(-1, self.num_features))  # (N*H*W, C)
        self._shape = x4.shape
        return F.nchw(y2.reshape(x4.shape))

    def backward(self, dout):
        forward_done(type(self).__name__, self._cache)
        n, h, w, c = self._shape
        dy = F.nhwc(grad_like(type(self).__name__, dout, (n, c, h, w)))  # (N, H, W, C)
        return F.nchw(self._backward_rows(dy.reshape(-1, c)).reshape(n, h, w, c))


class BatchNorm1d(_BatchNorm):
    """Batch norm over ``(N, C)``: statistics per feature over the batch."""

    def forward(self, x):
        x2 = matrix_input(type(self).__name__, x, self.num_features)  # (N, C)
        return self._forward_rows(x2)

    def backward(self, dout):
        forward_done(type(self).__name__, self._cache)
        grad_like(type(self).__name__, dout, self._cache[0].shape)
        return self._backward_rows(dout)
