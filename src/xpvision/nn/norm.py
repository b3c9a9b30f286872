"""Batch normalisation: :class:`BatchNorm2d` (per channel of ``(N, C, H, W)``) and :class:`BatchNorm1d` (per
feature of ``(N, C)``), with PyTorch's semantics.

Training: normalise with the batch mean and the *biased* batch variance, and update the running statistics
with ``running = (1 - momentum) * running + momentum * batch`` using the *unbiased* variance. Eval: normalise
with the running statistics. The batch is the global batch of :func:`xpvision.nn.parallel.current_layout`:
inside data-parallel training the statistics, the sums of the backward and the ``gamma``/``beta`` gradients
are those of the whole batch across the processes (ChainerMN's multi-node batch normalisation), each sum
formed from per-block partial sums added in block order (the same bits for any number of processes).

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
from xpvision.nn.parallel import BatchLayout, current_layout, single_threaded_blas
from xpvision.nn.validate import forward_done, grad_like, image_input, matrix_input, positive_int


class _BatchNorm(Layer):
    registered = False
    batch_summed = True

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

    def _forward_rows(self, x2, samples: int):
        """Normalise ``x2`` ``(M, C)`` (M = values per channel, ``samples`` images) -> ``(M, C)``, through
        the engine's kernel."""
        layout = current_layout(samples, backend.get_array_module(x2))
        if self.training and layout.total * (x2.shape[0] // samples) < 2:
            raise ShapeError(f"{type(self).__name__} needs more than 1 value per channel in training, "
                             f"got {x2.shape[0]}")
        kernels = engine.get_engine()
        y2, saved = engine.kernel("batch_norm", kernels)(
            x2, self.params["gamma"], self.params["beta"], self.buffers["running_mean"],
            self.buffers["running_var"], momentum=self.momentum, eps=self.eps, training=self.training,
            layout=layout)
        self._cache = (kernels, saved, x2.shape)
        return y2

    def _backward_rows(self, dy2):
        """Gradient w.r.t. the input rows ``(M, C)`` from ``dy2`` ``(M, C)``; fills ``gamma``/``beta`` grads.
        """
        kernels, saved, _ = self._cache
        dx2, dgamma, dbeta = engine.kernel("batch_norm_backward", kernels)(dy2, saved, self.params["gamma"])
        if self.trainable:
            self.grads["gamma"][...] = dgamma
            self.grads["beta"][...] = dbeta
        return dx2


@engine.register("tuned", "batch_norm")
def batch_norm(x2, gamma, beta, running_mean, running_var, *, momentum: float, eps: float, training: bool,
               layout: BatchLayout | None = None):
    """The tuned ``batch_norm`` kernel of :mod:`xpvision.nn.engine`: per-channel sums as GEMVs and affine
    maps on wide rows (:func:`_wide`), block by block of ``layout`` (default: ``x2`` is one sample's rows).
    Training saves the centred input and ``1 / std``, from which the backward rebuilds ``xhat``; evaluation
    saves the input and the running mean."""
    xp = backend.get_array_module(x2)
    layout = layout or BatchLayout(1)
    if training:
        m = layout.total * (x2.shape[0] // layout.count)  # values per channel in the whole batch
        if m < 2:
            raise ShapeError(f"BatchNorm needs more than 1 value per channel in training, got {m}")
        mean = _batch_channel_sum(x2, layout) / m  # (C,)
        centred = _affine(x2, None, -mean)  # (M, C)
        var = _batch_channel_sum(centred * centred, layout) / m  # (C,) biased
        inv_std = 1 / xp.sqrt(var + eps)
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += (momentum * m / (m - 1)) * var
        return _affine(centred, gamma * inv_std, beta), (centred, inv_std, None, m, layout)
    inv_std = 1 / xp.sqrt(running_var + eps)
    scale = gamma * inv_std  # (C,)
    return _affine(x2, scale, beta - running_mean * scale), (x2, inv_std, running_mean.copy(), None, layout)


@engine.register("tuned", "batch_norm_backward")
def batch_norm_backward(dy2, saved, gamma):
    """The tuned ``batch_norm_backward`` kernel of :mod:`xpvision.nn.engine` -> ``(dx2, dgamma, dbeta)``,
    ``dgamma``/``dbeta`` summed over the whole batch of the forward's layout."""
    x2, inv_std, running_mean, m, layout = saved  # m: values per channel in the (whole) batch
    training = running_mean is None
    xhat_part = x2 if training else _affine(x2, inv_std, -running_mean * inv_std)  # training: xhat / inv_std
    c = x2.shape[1]
    sums = _batch_channel_sum(dy2, layout, xhat_part)  # (2C,): sum dy, sum dy * xhat_part
    dbeta, dgamma = sums[:c], sums[c:] * inv_std if training else sums[c:]
    scale = gamma * inv_std  # (C,)
    if not training:
        return _affine(dy2, scale, None), dgamma, dbeta
    # (gamma * inv_std / m) * (m * dy - dbeta - xhat * dgamma), xhat = centred * inv_std
    dx = _affine(x2, -scale * inv_std * dgamma / m, -scale * dbeta / m)  # (M, C)
    dx += _affine(dy2, scale, None)
    return dx, dgamma, dbeta


def _wide(a2, *vectors):
    """``a2`` ``(M, C)`` as ``(M / r, r * C)`` rows of about 256 values (``r`` a power of two dividing M),
    with each ``(C,)`` vector (or ``None``) tiled ``r`` times to match: NumPy's per-row loop overhead is paid
    once per wide row instead of once per ``C`` values."""
    xp = backend.get_array_module(a2)
    m, c = a2.shape
    r = _wide_factor(m, c)
    return a2.reshape(m // r, r * c), [None if v is None else xp.tile(v.astype(a2.dtype), r) for v in vectors]


def _wide_factor(m: int, c: int) -> int:
    """The ``r`` of :func:`_wide` for ``(m, c)``: a power of two dividing ``m``, doubled while ``r * c <
    256``."""
    r = 1
    while r * c < 256 and m % (2 * r) == 0:
        r *= 2
    return r


def _affine(a2, scale, shift):
    """``a2 * scale + shift`` per channel (either may be ``None``) for ``a2`` ``(M, C)`` -> new ``(M, C)``."""
    wide, (s, b) = _wide(a2, scale, shift)
    out = wide * s if s is not None else wide + b
    if s is not None and b is not None:
        out += b
    return out.reshape(a2.shape)  # (M, C)


def _batch_channel_sum(a2, layout: BatchLayout, b2=None):
    """Per-channel sum of ``a2`` ``(M, C)`` over the whole batch of ``layout`` -> ``(C,)``: one partial sum
    per block of rows, folded in block order. With ``b2`` ``(M, C)``: the sums of ``a2`` and of ``a2 * b2``
    in one fold -> ``(2C,)``."""
    xp = backend.get_array_module(a2)
    sums = _block_channel_sums(a2, layout)  # (blocks, C)
    if b2 is not None:
        sums = xp.concatenate([sums, _block_channel_sums(a2 * b2, layout)], axis=1)  # (blocks, 2C)
    return layout.fold(list(sums))


def _block_channel_sums(a2, layout: BatchLayout):
    """Per-channel sums of each block of rows of ``a2`` ``(M, C)`` -> ``(blocks, C)``: the blocks of one
    length (at most two lengths) in one stacked GEMV over wide rows (:func:`_wide`; an axis-0 NumPy reduction
    of ``C``-wide rows is ~7x slower). A block's sum depends on that block alone: a stacked product computes
    each item by itself."""
    xp = backend.get_array_module(a2)
    c = a2.shape[1]
    rows = layout.block_rows(a2.shape[0])
    sums = []
    i = 0
    while i < len(rows):
        length = rows[i][1] - rows[i][0]
        k = next((j for j in range(i, len(rows)) if rows[j][1] - rows[j][0] != length), len(rows)) - i
        r0 = rows[i][0]
        blocks = a2[r0:r0 + k * length].reshape(k, length, c)  # (k, L, C)
        r = _wide_factor(length, c)
        wide = blocks.reshape(k, length // r, r * c)  # (k, L / r, r * C)
        sums.append((xp.ones(length // r, dtype=a2.dtype) @ wide).reshape(k, r, c).sum(axis=1))  # (k, C)
        i += k
    return xp.concatenate(sums) if len(sums) > 1 else sums[0]  # (blocks, C)


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
            y2 = self._forward_rows(x4.reshape(-1, self.num_features), x4.shape[0])  # (N*H*W, C)
        if relu:
            F.relu_(y2)
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
            return self._forward_rows(x2, x2.shape[0])

    def backward(self, dout):
        forward_done(type(self).__name__, self._cache)
        grad_like(type(self).__name__, dout, self._cache[2])
        with single_threaded_blas(backend.get_array_module(dout)):
            return self._backward_rows(dout)
