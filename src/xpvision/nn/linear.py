"""Dense-network layers: :class:`Linear`, :class:`Flatten`, :class:`Dropout`."""

from __future__ import annotations

from typing import Any

import numpy as np

from xpvision import backend
from xpvision.errors import ConfigError, ShapeError
from xpvision.nn import init, rng
from xpvision.nn.base import Layer
from xpvision.nn.convblock import Scratch
from xpvision.nn.parallel import current_layout, single_threaded_blas
from xpvision.nn.validate import check_float, forward_done, grad_like, matrix_input, positive_int


class Linear(Layer):
    """Affine layer ``y = x @ W + b``.

    ``W`` is ``(in_features, out_features)`` (the book's layout, the transpose of PyTorch's ``weight``),
    He-normal initialised with fan-in ``in_features``; ``b`` ``(out_features,)`` zeros. Input ``(N, in)``,
    output ``(N, out)``. The gradients are summed per block of the batch's layout
    (:func:`xpvision.nn.parallel.current_layout`), in block order.
    """

    batch_summed = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        self.add_param("W", init.he_normal((self.in_features, self.out_features), fan_in=self.in_features))
        if bias:
            self.add_param("b", np.zeros(self.out_features, dtype=np.float32))
        self._x = None
        self._layout = None
        self._scratch = Scratch()  # the per-block gradient partials, reused from step to step

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": "b" in self.params}

    def forward(self, x):
        self._x = matrix_input(type(self).__name__, x, self.in_features)
        xp = backend.get_array_module(x)
        self._layout = current_layout(self._x.shape[0], xp)
        w = self.params["W"]
        y = xp.empty((self._x.shape[0], self.out_features), dtype=xp.result_type(self._x.dtype, w.dtype))
        with single_threaded_blas(xp):  # a row's bits depend on its GEMM's height: one GEMM per block
            for _, (x, out) in self._per_block(self._x, y):
                xp.matmul(x, w, out=out)  # ([blocks,] n, out)
        if "b" in self.params:
            y += self.params["b"]
        return y

    def backward(self, dout):
        forward_done(type(self).__name__, self._x)
        grad_like(type(self).__name__, dout, (self._x.shape[0], self.out_features))
        xp = backend.get_array_module(dout)
        with single_threaded_blas(xp):
            if self.trainable:
                self._parameter_grads(dout)
            dx = xp.empty(self._x.shape, dtype=xp.result_type(dout.dtype, self.params["W"].dtype))
            for _, (d, out) in self._per_block(dout, dx):
                xp.matmul(d, self.params["W"].T, out=out)  # ([blocks,] n, in)
            return dx

    def _per_block(self, *arrays):
        """Per run of equal blocks of the layout (:attr:`~xpvision.nn.parallel.BatchLayout.equal_runs`), the
        slice of its block indices and the ``(blocks, n, features)`` views of each of ``arrays`` ``(N,
        features)``: one stacked matmul is one GEMM per block, in one call. A run of one block gives its index
        and its ``(n, features)`` rows (on the GPU a batch is one block: no reshape, a call fewer each)."""
        first = 0
        for a, size, count in self._layout.equal_runs:
            rows = slice(a, a + size * count)
            if count == 1:
                yield first, [x[rows] for x in arrays]
            else:
                yield slice(first, first + count), [x[rows].reshape(count, size, x.shape[1]) for x in arrays]
            first += count

    def _parameter_grads(self, dout) -> None:
        """``W`` and ``b`` gradients: one ``(in [+ 1], out)`` partial per block, folded in block order (at
        once, or with the other layers' at the end of a data-parallel backward: ``BatchLayout.fold_into``).
        The partials are written into one buffer kept from step to step: fresh ones (a fc1's are 200 KB
        each) cost a page fault per 4 KiB on every step."""
        xp = backend.get_array_module(dout)
        bias = "b" in self.params
        blocks = self._layout.blocks
        shape = (len(blocks), self.in_features + bias, self.out_features)  # (blocks, in [+ 1], out)
        parts = self._scratch.get(0, "grad_parts", shape, xp.result_type(self._x.dtype, dout.dtype), xp)
        for run, (x, d) in self._per_block(self._x, dout):
            xp.matmul(x.swapaxes(-1, -2), d, out=parts[run, :self.in_features])  # ([blocks,] in, out)
            if bias:
                xp.sum(d, axis=-2, out=parts[run, self.in_features])  # ([blocks,] out)
        self._layout.fold_into([part[:self.in_features] for part in parts], self.grads["W"])
        if bias:
            self._layout.fold_into([part[self.in_features] for part in parts], self.grads["b"])


class Flatten(Layer):
    """``(N, d1, d2, ...)`` -> ``(N, d1 * d2 * ...)`` in C order of the *shape*: an image ``(N, C, H, W)`` is
    flattened in NCHW order whatever its memory layout, so the next Linear's weights mean what they mean in
    PyTorch. The gradient comes back as a C-contiguous ``(N, C, H, W)`` array."""

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple | None = None

    def forward(self, x):
        check_float(type(self).__name__, x)
        if x.ndim < 2:
            raise ShapeError(f"Flatten expected input (N, ...) with at least 2 dimensions, "
                             f"got {tuple(x.shape)}")
        self._shape = tuple(x.shape)
        return x.reshape(x.shape[0], -1)  # (N, C*H*W), a copy when x is channels-last

    def backward(self, dout):
        forward_done(type(self).__name__, self._shape)
        grad_like(type(self).__name__, dout, (self._shape[0], int(np.prod(self._shape[1:]))))
        return dout.reshape(self._shape)


class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability ``p`` and scale the rest by ``1 / (1
    - p)``; identity in eval mode. Masks are drawn from :mod:`xpvision.nn.rng` on the input's device."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not isinstance(p, int | float) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            raise ConfigError(f"Dropout p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self._scale = None

    def config(self) -> dict[str, Any]:
        return {"p": self.p}

    def forward(self, x):
        check_float(type(self).__name__, x)
        if not self.training or self.p == 0.0:
            self._scale = None
            return x
        xp = backend.get_array_module(x)
        if self.p == 1.0:
            self._scale = xp.zeros(x.shape, dtype=x.dtype)
        else:
            keep = rng.uniform(x.shape, xp, x.dtype) >= self.p
            self._scale = keep * x.dtype.type(1.0 / (1.0 - self.p))  # (same shape as x), 0 or 1/(1-p)
        return xp.multiply(x, self._scale, out=xp.empty_like(x))  # in the layout of x (channels-last)

    def backward(self, dout):
        if self._scale is None:
            return dout
        grad_like(type(self).__name__, dout, self._scale.shape)
        xp = backend.get_array_module(dout)
        return xp.multiply(dout, self._scale, out=xp.empty_like(dout))
