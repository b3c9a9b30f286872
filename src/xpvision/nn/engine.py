"""The seam between layers and kernels: a layer calls its kernel by name, the engine setting picks which
implementation answers.

Two engines implement the same functional interface (same arguments, same shapes, same layouts):

* ``"reference"`` (:mod:`xpvision.nn.reference`): the textbook, one step per line - im2col of the whole
  batch and one GEMM, ReLU and pooling as separate passes, batch statistics as plain means. Read it first.
* ``"tuned"`` (the default: :mod:`xpvision.nn.convblock`, :mod:`xpvision.nn.conv`, :mod:`xpvision.nn.norm`):
  the same arithmetic rearranged for speed - cache-sized chunks on several threads, fused ReLU and pooling,
  reused buffers, a separable path for fixed bilinear upsampling. Its ``conv2d``
  (:func:`xpvision.nn.conv.conv2d`) can also compute 3x3 stride-1 convolutions by Winograd F(2x2, 3x3)
  (:mod:`xpvision.nn.winograd`: fewer multiplications, other rounding), chosen by the shapes
  (``XPVISION_WINOGRAD``: by default at least 64 input and output channels and 4096 output tiles).

Tests run both on random inputs and compare them (bit for bit where the arithmetic is the same, within a
stated tolerance where the order of additions differs). The engine is chosen by :func:`set_engine` or the
environment variable ``XPVISION_ENGINE``, never by timing: two runs on one machine always take the same path.
Optimizers follow the same setting (:mod:`xpvision.optim`: one update per parameter, or one per flat buffer).

Kernels (``x``: channels-last ``(N, H, W, C)``; ``geom``: :class:`xpvision.nn.convblock.ConvGeometry`):

* ``conv2d(x, w, b, geom, *, relu, pool, training, scratch) -> (y, saved)``: convolution of the unpadded
  ``x`` with ``w`` ``(O, I, kh, kw)`` and ``b`` ``(O,)`` or ``None``, then a ReLU and a 2x2 stride-2 max pool
  when asked -> ``y`` ``(N, OH, OW, O)`` (pooled: ``(N, OH // 2, OW // 2, O)``); ``saved``: what the
  backward needs.
* ``conv2d_backward(dy, saved, *, grads, need_input, scratch) -> dx``: ``dx`` ``(N, H, W, I)`` (``None``
  unless ``need_input``); the weight and bias gradients are written into ``grads``, a dict holding the
  arrays of those wanted (``'W'`` ``(O, I, kh, kw)``, ``'b'`` ``(O,)``; a frozen layer's is empty), by
  ``layout.fold_into``: on return in one process, by the trainer's ``reduce_gradients`` in several.
* ``conv_transpose2d(x, w, b, stride, padding, *, upsampling, scratch) -> (y, saved)``: transposed
  convolution of ``x`` ``(N, H, W, I)`` with ``w`` ``(I, O, kh, kw)`` -> ``(N, (H - 1) * S - 2P + K, ...,
  O)``; ``upsampling``: ``None``, or ``(U_h, U_w)`` ``(OH, H)``, ``(OW, W)`` when ``w`` is frozen and one
  separable kernel on the channel diagonal (``y[n, :, :, c] = U_h @ x[n, :, :, c] @ U_w^T``), which a kernel
  may use.
* ``conv_transpose2d_backward(dy, saved, *, grads, scratch) -> dx``: ``grads`` as above, ``'W'`` ``(I, O,
  kh, kw)``.
* ``batch_norm(x2, gamma, beta, running_mean, running_var, *, momentum, eps, training, layout) -> (y2,
  saved)``: per channel of ``x2`` ``(M, C)``, the rows of ``layout``'s samples
  (:class:`xpvision.nn.parallel.BatchLayout`); in training the running statistics are updated in place.
* ``batch_norm_backward(dy2, saved, gamma) -> (dx2, dgamma, dbeta)``.
* ``max_pool2d(xpad, kernel, stride, out_hw, *, need_index) -> (y, index)``: the maximum of each window of
  the ``-inf``-padded ``xpad`` ``(N, Hp, Wp, C)`` -> ``y`` ``(N, OH, OW, C)``, and ``index`` of ``y``'s
  shape (uint8; int64 beyond 256 taps), the tap ``i * kw + j`` of each window's first maximum (PyTorch's tie
  rule; a NaN is a maximum). Without ``need_index`` a kernel may return ``None`` for it.
* ``max_pool2d_backward(dy, index, padded_hw, kernel, stride) -> dxpad``: ``dy`` ``(N, OH, OW, C)`` routed to
  each window's maximum, the gradient of the padded input ``(N, Hp, Wp, C)`` (overlapping windows add up).

Every sum over the batch (weight and bias gradients, batch statistics) is formed per block of the batch's
layout (``conv2d`` takes it from :func:`xpvision.nn.parallel.current_layout`) and added with
``layout.fold`` (``fold_into`` for the parameter gradients): the result does not depend on how many processes
or threads share the batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from xpvision.errors import ConfigError

ENGINES = ("reference", "tuned")
ENV_ENGINE = "XPVISION_ENGINE"
"""Environment variable choosing the engine (``reference`` or ``tuned``)."""
KERNELS = ("conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward", "batch_norm",
           "batch_norm_backward", "max_pool2d", "max_pool2d_backward")

_registry: dict[str, dict[str, Callable]] = {engine: {} for engine in ENGINES}


def register(engine: str, name: str) -> Callable[[Callable], Callable]:
    """Decorator: the function implements kernel ``name`` for ``engine``."""
    if engine not in ENGINES or name not in KERNELS:
        raise ValueError(f"unknown engine {engine!r} or kernel {name!r}")

    def add(function: Callable) -> Callable:
        _registry[engine][name] = function
        return function

    return add


class Setting:
    """A process-wide choice among ``choices``: the value set with :meth:`set`, else the environment variable
    ``variable`` (read once, at the first :meth:`get`), else ``default``. A value outside ``choices`` is a
    :class:`ConfigError` naming ``what`` (or the variable)."""

    def __init__(self, what: str, variable: str, choices: tuple[str, ...], default: str) -> None:
        self.what, self.variable, self.choices, self.default = what, variable, choices, default
        self._value: str | None = None

    def set(self, value: str | None) -> None:
        """Use ``value`` from now on; ``None``: back to the environment's choice or the default."""
        if value is not None and value not in self.choices:
            raise ConfigError(f"{self.what}: expected one of {', '.join(self.choices)}, got {value!r}")
        self._value = value

    def get(self) -> str:
        """The value in use (see the class docstring)."""
        if self._value is None:
            self._value = choice_from_environment(self.variable, self.choices, self.default)
        return self._value


def choice_from_environment(variable: str, choices: tuple[str, ...], default: str) -> str:
    """The value of environment variable ``variable`` (``default`` when unset or blank), one of ``choices``;
    anything else is a :class:`ConfigError` naming the variable."""
    value = os.environ.get(variable, "").strip() or default
    if value not in choices:
        raise ConfigError(f"environment variable {variable}: expected one of {', '.join(choices)}, "
                          f"got {value!r}")
    return value


_engine = Setting("engine", ENV_ENGINE, ENGINES, "tuned")


def set_engine(engine: str | None) -> None:
    """Use ``engine`` (``'reference'`` or ``'tuned'``) from now on; ``None``: back to the default."""
    _engine.set(engine)


def get_engine() -> str:
    """The engine in use: the one set, else ``XPVISION_ENGINE``, else ``'tuned'``."""
    return _engine.get()


def kernel(name: str, engine: str | None = None) -> Callable:
    """The implementation of kernel ``name`` in ``engine`` (default: the engine in use)."""
    return _registry[engine or get_engine()][name]
