"""Optimizers and gradient clipping (learning-rate schedules: :mod:`xpvision.schedules`).

Optimizers
----------
``SGD``, ``Momentum``, ``Nesterov``, ``AdaGrad``, ``RMSprop``, ``Adam`` and ``AdamW`` follow ``torch.optim``'s
update rules (weight decay is an L2 term added to the gradient, except ``AdamW`` which decays the weights
directly).
The first argument is a model (its trainable parameters) or a list of parameter groups::

    Adam(model, lr=1e-3)
    Adam([{"params": model["features"], "lr": 1e-4}, {"params": model["head"]}], lr=1e-3)

where a group's ``params`` is a ``Layer`` (its trainable parameters) or a list of ``(layer, key)`` pairs, and
any hyper-parameter in a group overrides the optimizer's default for that group.
``optimizer.param_groups[i]['lr']`` is read on every ``step()``, so schedules (or you) may change it between
steps.

Flat buffers
------------
At construction the optimizer packs the parameters of each group (per dtype and device) into one contiguous
flat array and the gradients into another, and rebinds every ``layer.params[key]`` / ``layer.grads[key]``
to a view into them (layers read their parameters from the dict on every call and write gradients in place,
see :mod:`xpvision.nn.base`). An update is then a handful of vectorised operations over one array, written
with ``out=`` into preallocated buffers. Consequences:

* **Build the optimizer after** ``model.to(device)``: moving a model rebinds its arrays, and ``step()`` raises
  :class:`~xpvision.errors.TrainingError` if it finds a parameter that is no longer a view into its buffer.
* Frozen layers (``trainable = False``) are left out and keep their own arrays.
* ``model.load_state_dict`` copies in place, so loading weights after building the optimizer is fine.

Under the reference engine (:mod:`xpvision.nn.engine`) every parameter is a bucket of its own, so each update
rule runs once per parameter, as the textbook writes it; the arithmetic per element is the same, and so are
the results, bit for bit (the optimizer state is saved per bucket: a checkpoint resumes under the engine
that wrote it).

All arrays (buffers, state) live on the device of the parameters: the same code runs on NumPy and CuPy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from xpvision import backend
from xpvision.errors import ConfigError, TrainingError, WeightsError
from xpvision.nn import engine
from xpvision.nn.base import Layer

ParamRef = tuple[Layer, str]


class _Bucket:
    """The parameters of one group with one dtype and device, packed into flat ``(P,)`` buffers.

    ``params`` and ``grads`` are 1-D arrays of the parameters' dtype; every ``layer.params[key]`` becomes a
    view of ``params[offset:offset + size]`` of its shape and memory order (likewise the gradient): a
    parameter kept as a transposed view, as a convolution's weights are, keeps that layout. ``state`` holds
    the optimizer's per-element state (moments, accumulators), each a ``(P,)`` array; ``scratch`` holds
    reusable work buffers.
    """

    def __init__(self, group_index: int, refs: list[ParamRef], names: list[str]) -> None:
        first = refs[0][0].params[refs[0][1]]
        self.xp = backend.get_array_module(first)
        self.group_index = group_index
        self.refs = refs
        self.names = names
        total = sum(int(layer.params[key].size) for layer, key in refs)
        self.params = self.xp.empty(total, dtype=first.dtype)
        self.grads = self.xp.zeros(total, dtype=first.dtype)
        self._segments: list[tuple[int, int, tuple, list[int]]] = []  # (offset, size, shape, memory order)
        offset = 0
        for layer, key in refs:
            value = layer.params[key]
            self._segments.append((offset, int(value.size), value.shape, _memory_order(value)))
            offset += int(value.size)
        self.param_views = self.views(self.params)
        self.grad_views = self.views(self.grads)
        for (layer, key), param_view, grad_view in zip(refs, self.param_views, self.grad_views, strict=True):
            param_view[...] = layer.params[key]
            layer.params[key], layer.grads[key] = param_view, grad_view
        self.state: dict[str, Any] = {}
        self.scratch: dict[str, Any] = {}

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.params.dtype)

    def views(self, flat) -> list[Any]:
        """Each parameter's part of the ``(P,)`` array ``flat``, as a view of the parameter's shape and memory
        order."""
        return [_view_in_order(flat[offset:offset + size], shape, order)
                for offset, size, shape, order in self._segments]

    def logical(self, flat):
        """The ``(P,)`` array ``flat`` with each parameter's values in the order of its shape (as a
        C-contiguous copy of it would hold them; ``flat`` itself when every parameter is C-ordered): how
        state is saved and gradient norms are summed, whatever the layout in memory."""
        if all(order == sorted(order) for _, _, _, order in self._segments):
            return flat
        return self.xp.concatenate([view.reshape(-1) for view in self.views(flat)])

    def set_logical(self, flat, values) -> None:
        """``flat[...] =`` the ``(P,)`` ``values`` of :meth:`logical`'s order."""
        for view, (offset, size, _, _) in zip(self.views(flat), self._segments, strict=True):
            view[...] = values[offset:offset + size].reshape(view.shape)

    def state_buffer(self, name: str, fill: float = 0.0):
        """The ``(P,)`` state array ``name``, created filled with ``fill`` on first use."""
        if name not in self.state:
            self.state[name] = self.xp.full(self.params.shape, fill, dtype=self.params.dtype)
        return self.state[name]

    def scratch_buffer(self, name: str):
        """A reusable uninitialised ``(P,)`` work array."""
        if name not in self.scratch:
            self.scratch[name] = self.xp.empty_like(self.params)
        return self.scratch[name]

    def check_bound(self) -> None:
        """Raise if a layer no longer reads its parameter (or writes its gradient) through our views."""
        for (layer, key), name, pv, gv in zip(self.refs, self.names, self.param_views, self.grad_views,
                                              strict=True):
            if layer.params[key] is not pv or layer.grads[key] is not gv:
                raise TrainingError(
                    f"parameter {name!r} was replaced after the optimizer was built (model.to(device) or an "
                    f"assignment to layer.params/grads); build the optimizer after moving the model")


class Optimizer:
    """Base class: parameter groups, flat buffers, ``step``, ``zero_grad``, state (load/save).

    Subclasses define ``defaults`` (hyper-parameter names and default values) and ``_update(bucket, group)``.
    """

    def __init__(self, params: Layer | list, **defaults: Any) -> None:
        self.defaults = defaults
        self.param_groups: list[dict[str, Any]] = []
        self._buckets: list[_Bucket] = []
        self.step_count = 0
        packed = engine.get_engine() == "tuned"  # reference: one bucket, one update, per parameter
        seen: set[tuple[int, str]] = set()
        for index, group in enumerate(_as_groups(params)):
            unknown = set(group) - set(defaults) - {"params"}
            if unknown:
                raise ConfigError(f"parameter group {index} has unknown keys {sorted(unknown)}; "
                                  f"{type(self).__name__} accepts {sorted(defaults)}")
            hyper = {**defaults, **{k: v for k, v in group.items() if k != "params"}}
            self._validate(hyper, where=f"parameter group {index}")
            refs, names = [], []
            for name, layer, key in _resolve_refs(group["params"], index):
                if (id(layer), key) in seen:
                    raise ConfigError(f"parameter {name!r} appears in more than one parameter group")
                seen.add((id(layer), key))
                refs.append((layer, key))
                names.append(name)
            self.param_groups.append({"params": refs, "names": names, **hyper})
            by_kind: dict[tuple, list[int]] = {}
            for i, (layer, key) in enumerate(refs):
                value = layer.params[key]
                kind = (backend.device_of(value), str(value.dtype)) if packed else (i,)
                by_kind.setdefault(kind, []).append(i)
            for indices in by_kind.values():
                self._buckets.append(_Bucket(index, [refs[i] for i in indices], [names[i] for i in indices]))
        if not self._buckets:
            raise ConfigError(f"{type(self).__name__} got no trainable parameters (all layers frozen?)")

    # -- hyper-parameters -----------------------------------------------------------------------------------
    def _validate(self, hyper: dict[str, Any], where: str) -> None:
        for key in ("lr", "weight_decay", "eps", "momentum", "lr_decay"):
            if key in hyper and not (isinstance(hyper[key], int | float) and hyper[key] >= 0):
                raise ConfigError(f"{where}: {key} must be a number >= 0, got {hyper[key]!r}")
        for key in ("alpha",):
            if key in hyper and not 0 <= hyper[key] < 1:
                raise ConfigError(f"{where}: {key} must be in [0, 1), got {hyper[key]!r}")
        if "betas" in hyper:
            betas = tuple(hyper["betas"])
            if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
                raise ConfigError(f"{where}: betas must be two numbers in [0, 1), got {hyper['betas']!r}")
            hyper["betas"] = betas

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group (the one the trainer logs)."""
        return float(self.param_groups[0]["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        """Set the learning rate of *every* group (set ``param_groups[i]['lr']`` for one group)."""
        for group in self.param_groups:
            group["lr"] = float(value)

    def hyperparameters(self) -> dict[str, Any]:
        """JSON-able description: the optimizer type and each group's hyper-parameters and parameter names."""
        return {"type": type(self).__name__,
                "groups": [{k: (list(v) if isinstance(v, tuple) else v)
                            for k, v in g.items() if k != "params"} for g in self.param_groups]}

    # -- updates --------------------------------------------------------------------------------------------
    def zero_grad(self) -> None:
        for bucket in self._buckets:
            bucket.grads.fill(0)

    def step(self) -> None:
        """Apply one update to every trainable parameter from the gradients in ``layer.grads``."""
        self.step_count += 1
        for bucket in self._buckets:
            bucket.check_bound()
            self._update(bucket, self.param_groups[bucket.group_index])

    def _update(self, bucket: _Bucket, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def flat_grads(self) -> Iterator[tuple[Any, Any]]:
        """``(buffer, values)`` of each bucket: its flat ``(P,)`` gradient buffer, and the gradients in each
        parameter's shape order (:meth:`_Bucket.logical`; the buffer itself when that is its order). Used
        by :func:`clip_grad_norm`, whose norm then adds the values in one order whatever the layout."""
        return ((bucket.grads, bucket.logical(bucket.grads)) for bucket in self._buckets)

    @staticmethod
    def _l2_grad(bucket: _Bucket, weight_decay: float):
        """The gradient with the L2 term ``g + weight_decay * p`` (a scratch buffer), or ``g`` itself."""
        if not weight_decay:
            return bucket.grads
        grad = bucket.scratch_buffer("l2_grad")
        bucket.xp.multiply(bucket.params, weight_decay, out=grad)
        grad += bucket.grads
        return grad

    @staticmethod
    def _add_scaled(target, scale: float, source, work) -> None:
        """``target += scale * source`` with no temporaries (``work``: scratch, may be ``source``)."""
        np_or_cp = backend.get_array_module(target)
        np_or_cp.multiply(source, scale, out=work)
        target += work

    # -- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat dict of NumPy arrays (scalars as 0-d arrays) that ``np.savez`` stores without pickle."""
        state: dict[str, np.ndarray] = {"type": np.array(type(self).__name__),
                                        "step": np.array(self.step_count)}
        for i, group in enumerate(self.param_groups):
            for key, value in group.items():
                if key not in ("params", "names"):
                    state[f"group{i}.{key}"] = np.array(value, dtype=np.float64)
        for j, bucket in enumerate(self._buckets):
            state[f"bucket{j}.size"] = np.array(bucket.params.size)
            for name, value in bucket.state.items():
                state[f"bucket{j}.{name}"] = np.array(backend.to_numpy(bucket.logical(value)))  # a copy
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore hyper-parameters, step count and per-element state saved by :meth:`state_dict`.

        Raises :class:`WeightsError` when the state belongs to another optimizer type or parameter layout.
        """
        saved_type = str(np.asarray(state.get("type", "")))
        if saved_type != type(self).__name__:
            raise WeightsError(f"optimizer state is for {saved_type or 'an unknown optimizer'!r}, "
                               f"not {type(self).__name__}")
        for j, bucket in enumerate(self._buckets):
            size = state.get(f"bucket{j}.size")
            if size is None or int(size) != bucket.params.size:
                raise WeightsError(f"optimizer state bucket {j} holds {None if size is None else int(size)} "
                                   f"values, this optimizer {bucket.params.size} (another model or groups?)")
        for i, group in enumerate(self.param_groups):
            for key in group:
                name = f"group{i}.{key}"
                if key in ("params", "names") or name not in state:
                    continue
                value = np.asarray(state[name])
                group[key] = tuple(float(v) for v in value) if value.ndim else float(value)
        self.step_count = int(state["step"])
        for j, bucket in enumerate(self._buckets):
            prefix = f"bucket{j}."
            for name in [k[len(prefix):] for k in state if k.startswith(prefix) and k != f"{prefix}size"]:
                value = np.asarray(state[prefix + name])
                if value.shape != bucket.params.shape:
                    raise WeightsError(f"optimizer state {prefix + name} has shape {value.shape}, "
                                       f"expected {bucket.params.shape}")
                bucket.set_logical(bucket.state_buffer(name), bucket.xp.asarray(value.astype(bucket.dtype,
                                                                                          copy=False)))


def _memory_order(array) -> list[int]:
    """``array``'s axes from the outermost in memory (largest stride) to the innermost."""
    return sorted(range(array.ndim), key=lambda axis: -array.strides[axis])


def _view_in_order(flat, shape: tuple, order: list[int]):
    """The 1-D ``flat`` as an array of ``shape`` whose axes lie in memory in ``order`` (outermost first)."""
    stored = flat.reshape([shape[axis] for axis in order])
    return stored.transpose(np.argsort(order).tolist())


def _as_groups(params: Layer | list) -> list[dict[str, Any]]:
    """Normalise the optimizer's first argument to a list of group dicts with a ``params`` entry."""
    if isinstance(params, Layer):
        return [{"params": params}]
    params = list(params)
    if params and all(isinstance(p, dict) for p in params):
        for i, group in enumerate(params):
            if "params" not in group:
                raise ConfigError(f"parameter group {i} has no 'params' entry")
        return params
    return [{"params": params}]


def _resolve_refs(params: Layer | Iterable[ParamRef], group_index: int) -> Iterator[tuple[str, Layer, str]]:
    """``(name, layer, key)`` for each trainable parameter of a group's ``params`` (frozen layers skipped)."""
    if isinstance(params, Layer):
        yield from params.named_parameters(trainable_only=True)
        return
    for item in params:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Layer)
                and item[1] in item[0].params):
            raise ConfigError(f"parameter group {group_index}: expected a Layer or (layer, key) pairs naming "
                              f"an existing parameter, got {item!r}")
        layer, key = item
        if layer.trainable:
            yield f"{type(layer).__name__}.{key}", layer, key


class SGD(Optimizer):
    """Plain gradient descent: ``p -= lr * (g + weight_decay * p)``."""

    def __init__(self, params: Layer | list, lr: float = 1e-2, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay)

    def _update(self, bucket: _Bucket, group: dict[str, Any]) -> None:
        grad = self._l2_grad(bucket, group["weight_decay"])
        self._add_scaled(bucket.params, -group["lr"], grad, bucket.scratch_buffer("work"))


class Momentum(Optimizer):
    """Heavy-ball momentum as in ``torch.optim.SGD(momentum=mu)``: ``v = mu * v + g``, ``p -= lr * v``.

    With a constant learning rate this equals the book's ``v = mu * v - lr * g``, ``p += v``.
    """

    nesterov = False

    def __init__(self, params: Layer | list, lr: float = 1e-2, momentum: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def _update(self, bucket: _Bucket, group: dict[str, Any]) -> None:
        xp, mu = bucket.xp, group["momentum"]
        grad = self._l2_grad(bucket, group["weight_decay"])
        velocity = bucket.state_buffer("velocity")
        velocity *= mu
        velocity += grad
        work = bucket.scratch_buffer("work")
        if self.nesterov:  # step along g + mu * v
            xp.multiply(velocity, mu, out=work)
            work += grad
            work *= group["lr"]
        else:
            xp.multiply(velocity, group["lr"], out=work)
        bucket.params -= work


class Nesterov(Momentum):
    """Nesterov momentum as in ``torch.optim.SGD(momentum=mu, nesterov=True)``: ``p -= lr * (g + mu * v)``."""

    nesterov = True


class AdaGrad(Optimizer):
    """AdaGrad as in ``torch.optim.Adagrad``: ``s += g²``, ``p -= lr_t * g / (sqrt(s) + eps)``,
    ``lr_t = lr / (1 + (t - 1) * lr_decay)``."""

    def __init__(self, params: Layer | list, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, eps: float = 1e-10) -> None:
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps)

    def _update(self, bucket: _Bucket, group: dict[str, Any]) -> None:
        xp = bucket.xp
        grad = self._l2_grad(bucket, group["weight_decay"])
        step_lr = group["lr"] / (1 + (self.step_count - 1) * group["lr_decay"])
        squares, work = bucket.state_buffer("sum_squares"), bucket.scratch_buffer("work")
        xp.multiply(grad, grad, out=work)
        squares += work
        xp.sqrt(squares, out=work)
        work += group["eps"]
        xp.divide(grad, work, out=work)
        work *= step_lr
        bucket.params -= work


class RMSprop(Optimizer):
    """RMSprop as in ``torch.optim.RMSprop``: ``s = alpha * s + (1 - alpha) * g²``,
    ``d = g / (sqrt(s) + eps)``; ``p -= lr * d``, or with momentum ``v = mu * v + d``, ``p -= lr * v``."""

    def __init__(self, params: Layer | list, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0) -> None:
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum)

    def _update(self, bucket: _Bucket, group: dict[str, Any]) -> None:
        xp, alpha = bucket.xp, group["alpha"]
        grad = self._l2_grad(bucket, group["weight_decay"])
        mean_square, work = bucket.state_buffer("mean_square"), bucket.scratch_buffer("work")
        mean_square *= alpha
        xp.multiply(grad, grad, out=work)
        work *= 1 - alpha
        mean_square += work
        xp.sqrt(mean_square, out=work)
        work += group["eps"]
        xp.divide(grad, work, out=work)
        if group["momentum"]:
            velocity = bucket.state_buffer("velocity")
            velocity *= group["momentum"]
            velocity += work
            self._add_scaled(bucket.params, -group["lr"], velocity, work)
        else:
            work *= group["lr"]
            bucket.params -= work


class Adam(Optimizer):
    """Adam as in ``torch.optim.Adam`` (weight decay as an L2 term on the gradient)::

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g²
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    decoupled_weight_decay = False

    def __init__(self, params: Layer | list, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _update(self, bucket: _Bucket, group: dict[str, Any]) -> None:
        xp, (beta1, beta2), lr, t = bucket.xp, group["betas"], group["lr"], self.step_count
        if self.decoupled_weight_decay:
            bucket.params *= 1 - lr * group["weight_decay"]
            grad = bucket.grads
        else:
            grad = self._l2_grad(bucket, group["weight_decay"])
        mean, mean_square = bucket.state_buffer("exp_avg"), bucket.state_buffer("exp_avg_sq")
        work = bucket.scratch_buffer("work")
        mean *= beta1
        self._add_scaled(mean, 1 - beta1, grad, work)
        mean_square *= beta2
        xp.multiply(grad, grad, out=work)
        work *= 1 - beta2
        mean_square += work
        xp.sqrt(mean_square, out=work)
        work *= 1 / math.sqrt(1 - beta2**t)
        work += group["eps"]
        xp.divide(mean, work, out=work)
        work *= lr / (1 - beta1**t)
        bucket.params -= work


class AdamW(Adam):
    """AdamW as in ``torch.optim.AdamW``: ``p *= 1 - lr * weight_decay`` (decoupled), then the Adam step."""

    decoupled_weight_decay = True

    def __init__(self, params: Layer | list, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.__name__.lower(): cls for cls in
                                          (SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam, AdamW)}


def build_optimizer(name: str, params: Layer | list, **hyper: Any) -> Optimizer:
    """An optimizer by (case-insensitive) name, e.g. ``build_optimizer('adam', model, lr=1e-3)``."""
    try:
        cls = OPTIMIZERS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}") from None
    try:
        return cls(params, **hyper)
    except TypeError as e:
        raise ConfigError(f"optimizer {name!r}: {e}") from None


def clip_grad_norm(model_or_optimizer: Layer | Optimizer, max_norm: float) -> float:
    """Scale all trainable gradients in place so that their global L2 norm is at most ``max_norm``.

    Returns the norm *before* clipping (a Python float; ``inf``/``nan`` when a gradient is not finite, in
    which case nothing is scaled). Through an optimizer this is one dot product per flat buffer, over its
    values in the parameters' shape order (so the bits do not depend on how parameters lie in memory).
    """
    if not (isinstance(max_norm, int | float) and max_norm > 0):
        raise ConfigError(f"max_norm must be a positive number, got {max_norm!r}")
    if isinstance(model_or_optimizer, Optimizer):
        grads, ordered = zip(*model_or_optimizer.flat_grads(), strict=True)
    else:
        grads = ordered = [layer.grads[key]
                           for _, layer, key in model_or_optimizer.named_parameters(trainable_only=True)]
    total = math.sqrt(sum(float(backend.get_array_module(g).vdot(g.ravel(), g.ravel())) for g in ordered))
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g *= scale
    return total
