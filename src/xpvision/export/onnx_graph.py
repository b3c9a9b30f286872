"""Translate an xpvision model into an ONNX graph with the ``onnx`` package, layer by layer.

Each layer type has a *converter* ``(graph, layer, input_name, scope) -> output_name`` registered with
:func:`converter`; containers convert their children in order. The model is exported in eval mode (dropout is
the identity, batch norm uses its running statistics). Tensors are NCHW float32 as at xpvision's public
boundary; the input is ``images`` ``(N, C, H, W)`` with a symbolic batch size ``N``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xpvision.errors import XPVisionError
from xpvision.nn.base import Layer


class ExportError(XPVisionError):
    """A model cannot be exported, or its export does not reproduce its outputs."""


Converter = Callable[["OnnxGraph", Layer, str, str], str]
CONVERTERS: dict[str, Converter] = {}


def converter(*layer_types: str) -> Callable[[Converter], Converter]:
    """Register a converter for the layer classes named ``layer_types``."""
    def register(function: Converter) -> Converter:
        for name in layer_types:
            CONVERTERS[name] = function
        return function
    return register


class OnnxGraph:
    """Nodes and initialisers of a graph under construction, with unique tensor names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._used: set[str] = set()
        self.input_shape: tuple[int, ...] = ()

    def unique(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self._used:
            candidate, i = f"{name}_{i}", i + 1
        self._used.add(candidate)
        return candidate

    def constant(self, name: str, array) -> str:
        """Add an initialiser holding ``array`` (copied to NumPy); return its name."""
        from onnx import numpy_helper

        from xpvision import backend

        name = self.unique(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(backend.to_numpy(array)), name))
        return name

    def node(self, op: str, inputs: Sequence[str], name: str, **attributes: Any) -> str:
        """Add node ``op`` reading ``inputs``; return the name of its (single) output."""
        from onnx import helper

        output = self.unique(name)
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=output, **attributes))
        return output

    def layer(self, layer: Layer, x: str, scope: str) -> str:
        """Convert ``layer`` applied to tensor ``x``; ``scope`` (its dotted path) prefixes tensor names."""
        kind = type(layer).__name__
        if kind not in CONVERTERS:
            raise ExportError(f"no ONNX converter for layer {scope} of type {kind}; "
                              f"supported: {', '.join(sorted(CONVERTERS))}")
        return CONVERTERS[kind](self, layer, x, scope)


def to_onnx(model: Layer, input_shape: Sequence[int], *, opset: int = 17, probabilities: bool = False,
            normalization: dict | None = None, name: str = "xpvision") -> Any:
    """A checked ``onnx.ModelProto`` computing ``model`` (eval mode) on ``images`` ``(N, *input_shape)``.

    With ``normalization`` (a model's ``meta['normalization']``: ``{"mode", "mean", "std"}``) the graph takes
    pixels in [0, 1] and normalises them itself, as :class:`xpvision.data.loader.Normalization` does; without,
    it takes the network's (normalised) input. Outputs: ``output`` (the model's raw output: logits, detector
    head map or per-pixel scores) and, with ``probabilities``, ``probabilities`` = softmax over axis 1.
    """
    import onnx
    from onnx import TensorProto, helper

    model.eval()
    probe = np.zeros((1, *input_shape), dtype=np.float32)
    out_shape = ["N", *np.shape(model.forward(probe))[1:]]
    graph = OnnxGraph()
    graph.input_shape = tuple(input_shape)
    images = graph.unique("images")
    x = images if normalization is None else _normalize(graph, normalization, opset)
    out = graph.layer(model, x, "model")
    outputs = [graph.node("Identity", [out], "output")]
    if probabilities:
        outputs.append(graph.node("Softmax", [out], "probabilities", axis=1))
    proto = helper.make_graph(
        graph.nodes, name, [helper.make_tensor_value_info(images, TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, out_shape) for o in outputs], graph.initializers)
    onnx_model = helper.make_model(proto, opset_imports=[helper.make_opsetid("", opset)],
                                   producer_name="xpvision")
    onnx_model.ir_version = min(onnx_model.ir_version, 10)  # readable by the onnxruntime releases of late
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported ONNX graph is invalid: {e}") from e
    return onnx_model


def run_onnx(onnx_model: Any, images: np.ndarray) -> list[np.ndarray]:
    """Run an ONNX model (proto, bytes or path) with onnxruntime on ``images`` ``(N, C, H, W)`` float32."""
    import onnxruntime

    source = onnx_model.SerializeToString() if hasattr(onnx_model, "SerializeToString") else str(onnx_model)
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(images, dtype=np.float32)})


def onnx_parity(model: Layer, onnx_model: Any, images: np.ndarray, network_input: np.ndarray | None = None
                ) -> float:
    """Max abs difference between the ONNX ``output`` on ``images`` and ``model.forward`` (eval mode) on
    ``network_input`` (default: ``images``; give the normalised images for a graph that normalises)."""
    from xpvision import backend

    model.eval()
    x = images if network_input is None else network_input
    expected = np.asarray(backend.to_numpy(model.forward(x)), dtype=np.float32)
    (actual, *_) = run_onnx(onnx_model, images)
    if actual.shape != expected.shape:
        raise ExportError(f"ONNX output shape {actual.shape} differs from the model's {expected.shape}")
    return float(np.max(np.abs(actual - expected))) if expected.size else 0.0


def _normalize(graph: OnnxGraph, normalization: dict, opset: int) -> str:
    """Nodes applying ``Normalization(mode, mean, std)`` to ``images`` (pixels in [0, 1]); the output name."""
    mode = normalization["mode"]
    if mode == "rescale":
        return "images"
    if mode == "dataset":
        shape = (1, len(normalization["mean"]), 1, 1)
        mean = graph.constant("norm.mean", np.asarray(normalization["mean"], np.float32).reshape(shape))
        inv_std = (1 / np.asarray(normalization["std"], np.float32)).reshape(shape)
        inv_std = graph.constant("norm.inv_std", inv_std)
        return graph.node("Mul", [graph.node("Sub", ["images", mean], "norm.centred"), inv_std], "norm")
    if mode != "sample":
        raise ExportError(f"unknown normalization mode {mode!r}")
    axes = [1, 2, 3]

    def mean_of(x: str, name: str) -> str:  # ReduceMean took its axes as an attribute before opset 18
        if opset >= 18:
            return graph.node("ReduceMean", [x, graph.constant(f"{name}.axes", np.asarray(axes, np.int64))],
                              name, keepdims=1)
        return graph.node("ReduceMean", [x], name, axes=axes, keepdims=1)

    centred = graph.node("Sub", ["images", mean_of("images", "norm.mean")], "norm.centred")
    variance = mean_of(graph.node("Mul", [centred, centred], "norm.squares"), "norm.variance")
    floor = graph.constant("norm.floor", np.asarray(1 / np.sqrt(np.prod(graph.input_shape)), np.float32))
    std = graph.node("Max", [graph.node("Sqrt", [variance], "norm.std_raw"), floor], "norm.std")
    return graph.node("Div", [centred, std], "norm")


def _pairs(layer: Layer, key: str, default: int) -> list[int]:
    value = layer.config().get(key, default)
    return [int(value), int(value)] if isinstance(value, int | np.integer) else [int(v) for v in value]


def _bias_or_none(graph: OnnxGraph, layer: Layer, scope: str) -> list[str]:
    return [graph.constant(f"{scope}.b", layer.params["b"])] if "b" in layer.params else []


# -- converters ----------------------------------------------------------------------------------------------
@converter("Sequential")
def _sequential(graph: OnnxGraph, layer: Layer, x: str, scope: str) -> str:
    for name, child in layer.children():
        x = graph.layer(child, x, f"{scope}.{name}")
    return x


@converter("Conv2d")
def _conv(graph: OnnxGraph, layer: Layer, x: str, scope: str) -> str:
    ph, pw = _pairs(layer, "padding", 0)
    return graph.node("Conv", [x, graph.constant(f"{scope}.W", layer.params["W"]),
                               *_bias_or_none(graph, layer, scope)], scope,
                      kernel_shape=_pairs(layer, "kernel_size", 1), strides=_pairs(layer, "stride", 1),
                      pads=[ph, pw, ph, pw], dilations=_pairs(layer, "dilation", 1))


@converter("ConvTranspose2d")
def _conv_transpose(graph: OnnxGraph, layer: Layer, x: str, scope: str) -> str:
    ph, pw = _pairs(layer, "padding", 0)
    return graph.node("ConvTranspose", [x, graph.constant(f"{scope}.W", layer.params["W"]),
                                        *_bias_or_none(graph, layer, scope)], scope,
                      kernel_shape=_pairs(layer, "kernel_size", 1), strides=_pairs(layer, "stride", 1),
                      pads=[ph, pw, ph, pw])


@converter("MaxPool2d", "AvgPool2d")
def _pool(graph: OnnxGraph, layer: Layer, x: str, scope: str) -> str:
    ph, pw = _pairs(layer, "padding", 0)
    kernel = _pairs(layer, "kernel_size", 1)
    attributes = {"kernel_shape": kernel, "strides": _pairs(layer, "stride", kernel[0]),
                  "pads": [ph, pw, ph, pw]}
    if type(layer).__name__ == "AvgPool2d":
        return graph.node("AveragePool", [x], scope, count_include_pad=1, **attributes)
    return graph.node("MaxPool", [x], scope, **attributes)


@converter("GlobalAvgPool2d")
def _global_avg_pool(graph: OnnxGraph, layer: Layer, x: str, scope: str) -> str:
    pooled = graph.node("GlobalAveragePool", [x], f"{scope}.pool")  # (N, C, 1, 1)
    return graph.node("Flatten", [pooled], scope, axis=1)  # (N, C)


@converter("BatchNorm2d", "BatchNorm1d")
def _batch_norm(graph: OnnxGraph, layer: Layer, x: str, scope: str) -> str:
    scale, shift = ("gamma", "beta") if "gamma" in layer.params else ("W", "b")
    inputs = [graph.constant(f"{scope}.{key}", store[key]) for store, key in (
        (layer.params, scale), (layer.params, shift), (layer.buffers, "running_mean"),
        (layer.buffers, "running_var"))]
    epsilon = float(layer.config().get("eps", 1e-5))
    return graph.node("BatchNormalization", [x, *inputs], scope, epsilon=epsilon)


@converter("Linear")
def _linear(graph: OnnxGraph, layer: Layer, x: str, scope: str) -> str:
    # xpvision's W is (in, out): y = x @ W + b, Gemm without transposition.
    return graph.node("Gemm", [x, graph.constant(f"{scope}.W", layer.params["W"]),
                               *_bias_or_none(graph, layer, scope)], scope)


@converter("Flatten")
def _flatten(graph: OnnxGraph, layer: Layer, x: str, scope: str) -> str:
    return graph.node("Flatten", [x], scope, axis=1)  # (N, C*H*W) in NCHW order, as xpvision's Flatten


@converter("ReLU")
def _relu(graph: OnnxGraph, layer: Layer, x: str, scope: str) -> str:
    return graph.node("Relu", [x], scope)


@converter("LeakyReLU")
def _leaky_relu(graph: OnnxGraph, layer: Layer, x: str, scope: str) -> str:
    return graph.node("LeakyRelu", [x], scope, alpha=float(layer.config()["negative_slope"]))


@converter("Sigmoid")
def _sigmoid(graph: OnnxGraph, layer: Layer, x: str, scope: str) -> str:
    return graph.node("Sigmoid", [x], scope)


@converter("Dropout", "Identity")
def _identity(graph: OnnxGraph, layer: Layer, x: str, scope: str) -> str:
    return x  # dropout is the identity at inference


@converter("ResidualBlock")
def _residual_block(graph: OnnxGraph, layer: Layer, x: str, scope: str) -> str:
    main = x
    for name in ("conv1", "bn1", "relu1", "conv2", "bn2"):
        main = graph.layer(getattr(layer, name), main, f"{scope}.{name}")
    shortcut = graph.layer(layer.shortcut, x, f"{scope}.shortcut")
    return graph.layer(layer.relu2, graph.node("Add", [main, shortcut], f"{scope}.add"), f"{scope}.relu2")


@converter("FCN")
def _fcn(graph: OnnxGraph, layer: Layer, x: str, scope: str) -> str:
    """FCN-32s/16s/8s for the export's fixed input size: zero-pad, encoder, score layers, 2x upsampling fused
    with the skips over their overlap (Slice + Add), final upsampling, crop (see ``segmentation/fcn.py``).
    The slice bounds come from a probe forward of one zero image through the same layers."""
    from xpvision.segmentation.geometry import leaf_layers

    channels, height, width = graph.input_shape
    plan = layer.plan(height, width)
    (top, left), (bottom, right) = plan.pad_before, plan.pad_after
    pads = graph.constant(f"{scope}.pads", np.asarray([0, 0, top, left, 0, 0, bottom, right], np.int64))
    x = graph.node("Pad", [x, pads], f"{scope}.pad")
    probe = np.zeros((1, channels, height + top + bottom, width + left + right), np.float32)  # (1, C, Hp, Wp)
    taps, probe_taps = {}, {}
    tap_of = {index: stride for stride, index in layer.taps.items()}
    encoder = leaf_layers(layer.features, "features") + leaf_layers(layer.extra, "extra")
    for index, (name, leaf) in enumerate(encoder):
        x, probe = graph.layer(leaf, x, f"{scope}.{name}"), leaf.forward(probe)
        if index in tap_of:
            taps[tap_of[index]], probe_taps[tap_of[index]] = x, probe
    top = layer.scores[layer.encoder_stride]
    score, probe = graph.layer(top, x, f"{scope}.score{layer.encoder_stride}"), top.forward(probe)
    for stride, (fusion_h, fusion_w) in zip(layer.skip_strides, plan.fusions, strict=True):
        up = graph.layer(layer.upsamplers[stride], score, f"{scope}.up{2 * stride}")
        probe_up = layer.upsamplers[stride].forward(probe)  # (1, K, Hu, Wu)
        skip = graph.layer(layer.scores[stride], taps[stride], f"{scope}.score{stride}")
        probe_skip = layer.scores[stride].forward(probe_taps[stride])  # (1, K, Hs, Ws)
        size = (min(probe_up.shape[2] - fusion_h.up_start, probe_skip.shape[2] - fusion_h.skip_start),
                min(probe_up.shape[3] - fusion_w.up_start, probe_skip.shape[3] - fusion_w.skip_start))
        starts_up = (fusion_h.up_start, fusion_w.up_start)
        starts_skip = (fusion_h.skip_start, fusion_w.skip_start)
        score = graph.node("Add", [_crop(graph, up, starts_up, size, f"{scope}.up{2 * stride}_crop"),
                                   _crop(graph, skip, starts_skip, size, f"{scope}.score{stride}_crop")],
                           f"{scope}.fuse{stride}")
        probe = (probe_up[:, :, starts_up[0]:starts_up[0] + size[0], starts_up[1]:starts_up[1] + size[1]]
                 + probe_skip[:, :, starts_skip[0]:starts_skip[0] + size[0],
                              starts_skip[1]:starts_skip[1] + size[1]])  # (1, K, lh, lw)
    full = graph.layer(layer.final_upsampler, score, f"{scope}.upsample")
    return _crop(graph, full, plan.crop_start, (height, width), f"{scope}.crop")


def _crop(graph: OnnxGraph, x: str, starts: tuple[int, int], size: tuple[int, int], name: str) -> str:
    """``x[:, :, starts[0]:starts[0] + size[0], starts[1]:starts[1] + size[1]]`` as an ONNX Slice."""
    begin = graph.constant(f"{name}.starts", np.asarray(starts, np.int64))
    end = graph.constant(f"{name}.ends", np.asarray(starts, np.int64) + np.asarray(size, np.int64))
    axes = graph.constant(f"{name}.axes", np.asarray([2, 3], np.int64))
    return graph.node("Slice", [x, begin, end, axes], name)
