"""The ``Layer`` base class and the ``Sequential`` container.

Conventions every layer follows -------------------------------
* **Layout.** Image tensors have the *shape* ``(N, C, H, W)`` at every public boundary, as in PyTorch. Inside,
  the layers keep them *channels-last in memory* (PyTorch's ``channels_last``): a layer's output is an ``(N,
  C, H, W)``-shaped view of a C-contiguous ``(N, H, W, C)`` buffer, so that a convolution's GEMM output is
  already the next layer's input and no transposes are paid between layers. A plain C-contiguous NCHW array is
  accepted too (it is converted once). :func:`xpvision.nn.functional.nhwc` gives the ``(N, H, W, C)`` view.
* **dtype.** float32 unless the caller passes float64 (gradient checks); layers never upcast silently.
* **Parameters.** ``params[name]`` holds the array and ``grads[name]`` the gradient of the same shape,
  allocated by :meth:`Layer.add_param`. ``backward`` writes gradients *in place* (``self.grads['W'][...] =
  dW``, or through ``layout.fold_into``, which in data-parallel training writes them at the end of the
  backward pass), never rebinds them, and ``forward`` reads ``self.params[...]`` on every call: optimizers
  may replace both by views into one flat buffer. ``buffers`` hold non-trained state saved with the weights
  (batch-norm running statistics).
* **Training flag.** ``training`` switches dropout and batch norm; ``train()``/``eval()`` set it recursively.
* **Freezing.** ``trainable = False`` (``freeze()``) keeps a layer's parameters out of the optimizer; its
  ``backward`` still returns the input gradient but need not fill its parameter gradients.
* **Input gradient.** ``needs_input_grad = False`` lets a layer skip the gradient w.r.t. its input (its
  ``backward`` may then return ``None``). A ``Sequential`` with the flag off skips the backward of the layers
  before its first trainable one and turns the flag off on that one (and on for the others), so
  ``model.needs_input_grad = False`` saves the first convolution's input gradient, or a frozen backbone's
  whole backward, in training.
* **Fusion.** ``fusable(following)`` says how many of the layers that follow a layer it can compute itself
  (``Conv2d`` absorbs a following ``ReLU`` and 2x2 ``MaxPool2d``, ``BatchNorm2d`` a ``ReLU``), and
  ``forward_fused(x, absorbed)`` runs them; ``Sequential.forward`` uses it (unless ``fusion = False``) and its
  ``backward`` then skips the absorbed layers. Specs and weights do not change: fusion is an execution detail.
* **Device.** A layer holding parameters checks that its input is on the same device as they are (NumPy for
  ``'cpu'``, CuPy for ``'gpu'``) before its ``forward``/``forward_fused`` runs, and raises
  :class:`InputDeviceError` naming the layer (its path inside a ``Sequential``), the expected and the actual
  device; the check is one type test per call.
* **Spec.** ``config()`` returns the JSON-able constructor arguments; :func:`build_layer` rebuilds a layer
  from ``spec()``, so a model on disk is an ``.npz`` of ``state_dict()`` plus a JSON spec, never a pickle.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from xpvision import backend
from xpvision.errors import WeightsError

LAYERS: dict[str, type[Layer]] = {}


class InputDeviceError(backend.DeviceError):
    """A layer got an input on another device than its parameters."""

    def __init__(self, layer: Layer, expected: str, actual: str, kind: str, path: str = "") -> None:
        self.layer, self.expected, self.actual, self.kind, self.path = layer, expected, actual, kind, path
        where = f"layer {path!r} ({type(layer).__name__})" if path else f"layer {type(layer).__name__}"
        super().__init__(f"{where} holds its parameters on the {expected} but got an input on the {actual} "
                         f"({kind}); move the input with xpvision.backend.to_device(x, {expected!r}) or the "
                         f"model with .to({actual!r})")

    def within(self, name: str) -> InputDeviceError:
        """The same error, its layer path prefixed by the name of the container holding it."""
        return InputDeviceError(self.layer, self.expected, self.actual, self.kind,
                                f"{name}.{self.path}" if self.path else name)


def check_input_device(layer: Layer, x) -> None:
    """Raise :class:`InputDeviceError` when ``x`` (a NumPy or CuPy array) is not on the device of the
    parameters of ``layer``; other inputs, and layers without parameters, pass."""
    weights = next(iter(layer.params.values()))
    on_gpu = backend.is_gpu_array(x)
    if on_gpu != backend.is_gpu_array(weights) and (on_gpu or isinstance(x, np.ndarray)):
        expected, actual = ("cpu", "gpu") if on_gpu else ("gpu", "cpu")
        raise InputDeviceError(layer, expected, actual, f"{type(x).__module__}.{type(x).__name__}")


def _device_checked(method):
    """Wrap a layer's ``forward``/``forward_fused`` with :func:`check_input_device`."""
    @functools.wraps(method)
    def checked(self, x, *args, **kwargs):
        if self.params:
            check_input_device(self, x)
        return method(self, x, *args, **kwargs)
    checked.device_checked = True
    return checked


class Layer:
    """Base class: ``forward(x)``, ``backward(dout)``, ``params``/``grads``/``buffers``, ``training``."""

    registered: ClassVar[bool] = True
    batch_summed: ClassVar[bool] = False
    """True when the layer's parameter gradients are sums over the whole batch of its
    :func:`xpvision.nn.parallel.current_layout` (every process's part in data-parallel training)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("registered", True):
            LAYERS[cls.__name__] = cls
        for name in ("forward", "forward_fused"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "device_checked", False):
                setattr(cls, name, _device_checked(method))

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.buffers: dict[str, Any] = {}
        self.training = True
        self.trainable = True
        self.needs_input_grad = True

    # -- computation -----------------------------------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def fusable(self, following: list[Layer]) -> int:
        """How many of the ``following`` layers this layer can compute inside its own forward (default 0)."""
        return 0

    def weights_loaded(self) -> None:
        """Called after :meth:`load_state_dict` wrote into this layer's arrays in place: a layer caching
        something derived from its weights drops it here (default: nothing)."""

    def forward_fused(self, x, absorbed: list[Layer]):
        """Forward through this layer and the ``absorbed`` layers that follow it (see :meth:`fusable`);
        ``backward`` then returns the gradient w.r.t. ``x`` from the gradient of the last absorbed output."""
        raise NotImplementedError(f"{type(self).__name__} does not fuse layers")

    def __call__(self, x):
        return self.forward(x)

    # -- parameters ------------------------------------------------------------------------------------------
    def add_param(self, name: str, value) -> None:
        """Register a parameter and allocate its zero gradient of the same shape, dtype and device."""
        xp = backend.get_array_module(value)
        self.params[name] = value
        self.grads[name] = xp.zeros_like(value)

    def wanted_grads(self) -> dict:
        """The gradient arrays a backward fills: every one of ``grads`` when the layer is trainable, none
        when frozen (the destinations the engine's backward kernels write into)."""
        return dict(self.grads) if self.trainable else {}

    def children(self) -> Iterator[tuple[str, Layer]]:
        """Direct sub-layers with their names. Containers override this."""
        return iter(())

    def named_layers(self, prefix: str = "") -> Iterator[tuple[str, Layer]]:
        """This layer (named ``prefix``) and all sub-layers, depth first, with dotted names."""
        yield prefix, self
        for name, child in self.children():
            yield from child.named_layers(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, trainable_only: bool = False) -> Iterator[tuple[str, Layer, str]]:
        """``(qualified_name, layer, key)`` for every parameter; ``layer.params[key]`` is the array."""
        for lname, layer in self.named_layers():
            if trainable_only and not layer.trainable:
                continue
            for key in layer.params:
                yield (f"{lname}.{key}" if lname else key), layer, key

    def zero_grad(self) -> None:
        for _, layer, key in self.named_parameters():
            layer.grads[key][...] = 0

    def num_parameters(self) -> int:
        return int(sum(layer.params[key].size for _, layer, key in self.named_parameters()))

    # -- modes -----------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Layer:
        for _, layer in self.named_layers():
            layer.training = mode
        return self

    def eval(self) -> Layer:
        return self.train(False)

    def freeze(self) -> Layer:
        for _, layer in self.named_layers():
            layer.trainable = False
        return self

    def unfreeze(self) -> Layer:
        for _, layer in self.named_layers():
            layer.trainable = True
        return self

    # -- device ----------------------------------------------------------------------------------------------
    def to(self, device: str) -> Layer:
        """Move parameters, gradients and buffers of this layer and its sub-layers to ``'cpu'`` or ``'gpu'``.
        """
        backend.check_device(device)
        for _, layer in self.named_layers():
            for store in (layer.params, layer.grads, layer.buffers):
                for key, value in store.items():
                    store[key] = backend.to_device(value, device)
        return self

    def astype(self, dtype) -> Layer:
        """Cast parameters, gradients and buffers of this layer and its sub-layers to ``dtype`` (e.g. float64
        for gradient checks)."""
        for _, layer in self.named_layers():
            for store in (layer.params, layer.grads, layer.buffers):
                for key, value in store.items():
                    store[key] = value.astype(dtype)
        return self

    @property
    def device(self) -> str:
        for _, layer, key in self.named_parameters():
            return backend.device_of(layer.params[key])
        return "cpu"

    # -- weights ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers as NumPy copies, keyed ``'<layer path>.<key>'`` (buffers too)."""
        state = {}
        for lname, layer in self.named_layers():
            for key, value in {**layer.params, **layer.buffers}.items():
                state[f"{lname}.{key}" if lname else key] = np.array(backend.to_numpy(value))
        return state

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> dict[str, list[str]]:
        """Copy arrays from ``state`` (NumPy or CuPy, on either device) into the parameters and buffers of
        matching names, on the device of each parameter.

        Returns a report ``{'loaded': [...], 'missing': [...], 'unexpected': [...], 'mismatched': [...]}``,
        where ``mismatched`` entries read ``'name: file (shape) vs model (shape)'``. With ``strict`` any
        missing, unexpected or mismatched entry raises :class:`WeightsError` listing them all, and nothing is
        changed.
        """
        targets: dict[str, tuple[dict, str]] = {}
        for lname, layer in self.named_layers():
            for store in (layer.params, layer.buffers):
                for key in store:
                    targets[f"{lname}.{key}" if lname else key] = (store, key)
        report: dict[str, list[str]] = {"loaded": [], "missing": [], "unexpected": [], "mismatched": []}
        updates = []
        for name, (store, key) in targets.items():
            if name not in state:
                report["missing"].append(name)
                continue
            value = state[name] if backend.is_gpu_array(state[name]) else np.asarray(state[name])
            if value.shape != tuple(store[key].shape):
                report["mismatched"].append(
                    f"{name}: file {tuple(value.shape)} vs model {tuple(store[key].shape)}")
                continue
            updates.append((name, store, key, value))
        report["unexpected"] = sorted(set(state) - set(targets))
        if strict and (report["missing"] or report["unexpected"] or report["mismatched"]):
            problems = {k: v for k, v in report.items() if k != "loaded" and v}
            raise WeightsError(f"weights do not match the model: {problems}")
        for name, store, key, value in updates:  # NumPy or CuPy values, copied to the parameter's device
            store[key][...] = backend.to_device(value.astype(store[key].dtype, copy=False),
                                                backend.device_of(store[key]))
            report["loaded"].append(name)
        for _, layer in self.named_layers():
            layer.weights_loaded()
        return report

    # -- spec ------------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments that rebuild this layer (without its weights)."""
        return {}

    def spec(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "config": self.config()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "layers")
        return f"{type(self).__name__}({args})"


@contextlib.contextmanager
def evaluating(model: Layer) -> Iterator[Layer]:
    """Put every layer of ``model`` in eval mode for the block, then restore each layer's previous mode."""
    modes = [(layer, layer.training) for _, layer in model.named_layers()]
    model.eval()
    try:
        yield model
    finally:
        for layer, mode in modes:
            layer.training = mode


def build_layer(spec: dict[str, Any]) -> Layer:
    """Rebuild a layer (or a whole model) from :meth:`Layer.spec` output."""
    try:
        cls = LAYERS[spec["type"]]
    except KeyError as e:
        raise WeightsError(f"unknown layer type in spec: {spec.get('type')!r}; "
                           f"known: {sorted(LAYERS)}") from e
    config = spec.get("config", {})
    return cls.from_config(config) if hasattr(cls, "from_config") else cls(**config)


def first_trainable(layers: Sequence[Layer]) -> int:
    """Index of the first of ``layers`` holding trainable parameters (itself or a sublayer), ``len(layers)``
    if none: the layers before it need no backward when nobody needs the input gradient."""
    return next((i for i, layer in enumerate(layers)
                 if any(sub.trainable and sub.params for _, sub in layer.named_layers())), len(layers))


class Sequential(Layer):
    """Layers applied in order. Built from layers (named ``'0'``, ``'1'``, ...) or ``(name, layer)`` pairs."""

    def __init__(self, *layers: Layer | tuple[str, Layer] | Iterable[tuple[str, Layer]]) -> None:
        super().__init__()
        if len(layers) == 1 and not isinstance(layers[0], Layer | tuple):
            layers = tuple(layers[0])
        self.layers: dict[str, Layer] = {}
        for i, item in enumerate(layers):
            name, layer = item if isinstance(item, tuple) else (str(i), item)
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential item {name!r} is a {type(layer).__name__}, not a Layer")
            if name in self.layers or "." in name:
                raise ValueError(f"layer name {name!r} is duplicated or contains '.'")
            self.layers[name] = layer
        self.fusion = True
        self._steps: list[Layer] | None = None

    def children(self) -> Iterator[tuple[str, Layer]]:
        return iter(self.layers.items())

    def forward(self, x):
        """Run the layers in order, letting a layer absorb those after it when it can (:meth:`Layer.fusable`);
        the layers that ran (the "steps") are remembered for :meth:`backward`."""
        layers = list(self.layers.values())
        steps = []
        i = 0
        while i < len(layers):
            layer = layers[i]
            absorbed = layers[i + 1:i + 1 + layer.fusable(layers[i + 1:])] if self.fusion else []
            try:
                x = layer.forward_fused(x, absorbed) if absorbed else layer.forward(x)
            except InputDeviceError as e:
                raise e.within(list(self.layers)[i]) from None
            steps.append(layer)
            i += 1 + len(absorbed)
        self._steps = steps
        return x

    def backward(self, dout):
        """Backpropagate through the steps of the last forward. Without ``needs_input_grad``, the layers
        before the first one with trainable parameters are skipped (a frozen backbone costs nothing) and that
        one is told not to compute its input gradient; the result is then ``None``."""
        steps = self._steps if self._steps is not None else list(self.layers.values())
        first = 0 if self.needs_input_grad else first_trainable(steps)
        for i, layer in enumerate(steps):
            layer.needs_input_grad = i > first or (i == first and self.needs_input_grad)
        for layer in reversed(steps[first:]):
            dout = layer.backward(dout)
        return dout if self.needs_input_grad else None

    def __getitem__(self, key: int | str) -> Layer:
        return list(self.layers.values())[key] if isinstance(key, int) else self.layers[key]

    def __len__(self) -> int:
        return len(self.layers)

    def __setitem__(self, name: str, layer: Layer) -> None:
        """Replace (or append) the layer called ``name`` (used to swap a model's head)."""
        self.layers[name] = layer
        self._steps = None

    def config(self) -> dict[str, Any]:
        return {"layers": [[name, layer.spec()] for name, layer in self.layers.items()]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Sequential:
        return cls(*[(name, build_layer(spec)) for name, spec in config["layers"]])
