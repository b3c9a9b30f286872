"""Losses: ``forward(pred, target) -> float`` (the reduced loss) and ``backward() -> dpred`` (its gradient
w.r.t. ``pred``, same shape and dtype as ``pred``).

* :class:`SoftmaxCrossEntropy` over class logits ``(N, C)`` with targets ``(N,)``, or per pixel ``(N, C, H,
  W)`` with ``(N, H, W)``; PyTorch's weighted mean ``sum(w_t * nll) / sum(w_t)`` over non-ignored targets.
* :class:`BCEWithLogits`: binary cross-entropy on logits, any shape, computed without overflow.
* :class:`SmoothL1Loss`: Huber-like loss with PyTorch's ``beta`` convention.
"""

from __future__ import annotations

import numpy as np

from xpvision import backend
from xpvision.errors import ConfigError, DataError, ShapeError
from xpvision.nn.activation import sigmoid
from xpvision.nn.functional import log_softmax, nchw, nhwc
from xpvision.nn.parallel import current_layout
from xpvision.nn.validate import check_float, forward_done

REDUCTIONS = ("mean", "sum")


class Loss:
    """Base class: ``forward(pred, target) -> float``, ``backward() -> dpred``; ``loss(pred, target)`` calls
    ``forward``."""

    def forward(self, pred, target) -> float:
        raise NotImplementedError

    def backward(self):
        raise NotImplementedError

    def __call__(self, pred, target) -> float:
        return self.forward(pred, target)


def _reduction(owner: str, reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ConfigError(f"{owner} reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


class SoftmaxCrossEntropy(Loss):
    """Softmax + negative log-likelihood, PyTorch's ``cross_entropy``.

    ``pred``: logits ``(N, C)`` or ``(N, C, H, W)`` float32/float64. ``target``: integer class indices
    ``(N,)`` or ``(N, H, W)``; entries equal to ``ignore_index`` count neither in the loss nor in the
    normaliser. ``class_weights``: optional ``(C,)`` per-class weights ``w``. Loss ``sum(w_t * -log p_t) /
    sum(w_t)`` over the non-ignored entries; when every entry is ignored (or their weights sum to 0) the loss
    is 0 and the gradient is zero. The sums run over the whole batch of
    :func:`xpvision.nn.parallel.current_layout` (every process's part in data-parallel training), per block,
    in block order.
    """

    def __init__(self, ignore_index: int = -100, class_weights=None) -> None:
        self.ignore_index = int(ignore_index)
        self.class_weights = None
        if class_weights is not None:
            weights = np.asarray(backend.to_numpy(class_weights), dtype=np.float64)
            if weights.ndim != 1 or (weights < 0).any() or not np.isfinite(weights).all():
                raise ConfigError(f"class_weights must be a 1-D array of non-negative finite numbers, "
                                  f"got {weights.tolist()!r}")
            self.class_weights = weights
        self._cache: tuple | None = None

    def forward(self, pred, target) -> float:
        check_float(type(self).__name__, pred)
        xp = backend.get_array_module(pred)
        target = xp.asarray(target)
        if pred.ndim not in (2, 4) or target.shape != (pred.shape[0], *pred.shape[2:]):
            raise ShapeError(f"SoftmaxCrossEntropy expected logits (N, C) with targets (N,) or "
                             f"(N, C, H, W) with (N, H, W), got logits {tuple(pred.shape)} "
                             f"and targets {tuple(target.shape)}")
        if target.dtype.kind not in "iu":
            raise ShapeError(f"SoftmaxCrossEntropy expected integer targets, got dtype {target.dtype}")
        c = pred.shape[1]
        if self.class_weights is not None and self.class_weights.shape != (c,):
            raise ShapeError(f"SoftmaxCrossEntropy class_weights has shape {self.class_weights.shape}, "
                             f"expected ({c},) for logits {tuple(pred.shape)}")
        logits = pred if pred.ndim == 2 else nhwc(pred).reshape(-1, c)  # (M, C)
        labels = target.reshape(-1).astype(xp.int64)  # (M,)
        valid = labels != self.ignore_index
        bad = valid & ((labels < 0) | (labels >= c))
        # (M,) ignored rows point at class 0, then get weight 0 (out-of-range ones too: an error below)
        safe = xp.where(valid & ~bad, labels, 0)
        if self.class_weights is None:
            weights = valid.astype(pred.dtype)  # (M,)
        else:
            weights = xp.asarray(self.class_weights.astype(pred.dtype))[safe] * valid  # (M,)
        logp = log_softmax(logits, axis=1)  # (M, C)
        nll = -xp.take_along_axis(logp, safe[:, None], axis=1)[:, 0]  # (M,)
        weighted = weights * nll  # (M,)
        layout = current_layout(pred.shape[0], xp)
        total, loss_sum = layout.fold([xp.stack([weights[r0:r1].sum(), weighted[r0:r1].sum()])
                                       for r0, r1 in layout.block_rows(labels.shape[0])])
        # all ignored: total 0, then loss 0 and gradient 0 (0 / tiny); otherwise norm is total itself
        norm = xp.maximum(total, xp.finfo(pred.dtype).tiny)
        # the bad-label flag and the loss in one copy to the host
        any_bad, loss = backend.to_numpy(xp.stack([bad.any().astype(pred.dtype), loss_sum / norm])).tolist()
        if any_bad:
            raise DataError(f"SoftmaxCrossEntropy targets must be in [0, {c}) or ignore_index "
                            f"{self.ignore_index}, got {int(labels[bad][0])}")
        self._cache = (logp, safe, weights / norm, pred.shape)
        return float(loss)

    def backward(self):
        forward_done(type(self).__name__, self._cache)
        xp = backend.get_array_module(self._cache[0])
        logp, safe, scale, shape = self._cache
        grad = xp.exp(logp)  # softmax (M, C)
        grad[xp.arange(grad.shape[0]), safe] -= 1
        grad *= scale[:, None]
        if len(shape) == 2:
            return grad
        n, c, h, w = shape
        return nchw(grad.reshape(n, h, w, c))  # (N, C, H, W) view of NHWC


class BCEWithLogits(Loss):
    """Binary cross-entropy on logits: ``pw * y * softplus(-x) + (1 - y) * softplus(x)`` per element, reduced
    by ``'mean'`` or ``'sum'``. ``pred`` and ``target`` (probabilities in [0, 1]) have the same shape;
    ``pos_weight`` broadcasts against them like PyTorch's (e.g. ``(C,)`` for ``(N, C)``)."""

    def __init__(self, pos_weight=None, reduction: str = "mean") -> None:
        self.pos_weight = None if pos_weight is None else np.asarray(backend.to_numpy(pos_weight), np.float64)
        self.reduction = _reduction(type(self).__name__, reduction)
        self._cache: tuple | None = None

    def forward(self, pred, target) -> float:
        xp, target = _elementwise_target(type(self).__name__, pred, target)
        pos = 1 if self.pos_weight is None else xp.asarray(self.pos_weight.astype(pred.dtype))
        softplus_pos = xp.logaddexp(0, pred)  # softplus(x) = -log(1 - sigmoid(x))
        softplus_neg = softplus_pos - pred  # softplus(-x) = -log(sigmoid(x))
        loss = pos * target * softplus_neg + (1 - target) * softplus_pos
        scale = 1.0 / pred.size if self.reduction == "mean" else 1.0
        self._cache = (pred, target, pos, scale)
        return float(loss.sum() * scale)

    def backward(self):
        forward_done(type(self).__name__, self._cache)
        pred, target, pos, scale = self._cache
        p = sigmoid(pred)
        grad = (1 - target) * p - pos * target * (1 - p)
        return (grad * scale).astype(pred.dtype, copy=False)


class SmoothL1Loss(Loss):
    """``0.5 * d**2 / beta`` where ``|d| < beta`` else ``|d| - 0.5 * beta`` (``d = pred - target``), reduced
    by ``'mean'`` or ``'sum'``; ``beta = 0`` is the L1 loss. Same shapes for ``pred`` and ``target``."""

    def __init__(self, beta: float = 1.0, reduction: str = "mean") -> None:
        if not beta >= 0:
            raise ConfigError(f"SmoothL1Loss beta must be >= 0, got {beta!r}")
        self.beta = float(beta)
        self.reduction = _reduction(type(self).__name__, reduction)
        self._cache: tuple | None = None

    def forward(self, pred, target) -> float:
        xp, target = _elementwise_target(type(self).__name__, pred, target)
        diff = pred - target
        absd = xp.abs(diff)
        quadratic = absd < self.beta  # all False when beta == 0 (the L1 loss)
        loss = absd if self.beta == 0 else xp.where(quadratic, (0.5 / self.beta) * diff * diff,
                                                    absd - 0.5 * self.beta)
        scale = 1.0 / pred.size if self.reduction == "mean" else 1.0
        self._cache = (diff, quadratic, scale)
        return float(loss.sum() * scale)

    def backward(self):
        forward_done(type(self).__name__, self._cache)
        diff, quadratic, scale = self._cache
        xp = backend.get_array_module(diff)
        grad = xp.sign(diff)
        if self.beta > 0:
            grad = xp.where(quadratic, diff * (1.0 / self.beta), grad)
        return (grad * scale).astype(diff.dtype, copy=False)


def _elementwise_target(name: str, pred, target):
    """``(xp, target)`` with ``target`` as an array of ``pred``'s dtype, checked to have ``pred``'s shape."""
    check_float(name, pred)
    xp = backend.get_array_module(pred)
    target = xp.asarray(target, dtype=pred.dtype)
    if target.shape != pred.shape:
        raise ShapeError(f"{name} expected targets of the predictions' shape {tuple(pred.shape)}, "
                         f"got {tuple(target.shape)}")
    return xp, target
