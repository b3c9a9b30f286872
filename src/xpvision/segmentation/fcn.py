"""Fully convolutional networks (Long, Shelhamer and Darrell): FCN-32s, -16s, -8s and -4s on any conv
backbone.

Architecture
------------
``features`` is a classifier's convolutional part (for DeepConvNet: three conv-conv-pool stages, output
stride 8, 64 channels), named ``features`` so that a classifier's ``features.*`` weights load by name. On top
of it the encoder adds downsampling stages until the output stride is 32, standing in for VGG's pool4 / pool5
(``down16``, ``down32``: conv 3x3 + ReLU + max-pool 2x2), then ``fc6`` (conv 3x3) and ``fc7`` (conv 1x1) with
ReLU (and dropout when ``dropout > 0``): VGG's fully connected layers as convolutions. So FCN-32s, -16s and
-8s keep their paper meaning: scores predicted at stride 32, then refined with skips from the stride-16 and
stride-8 maps (the last encoder layer at that stride; for DeepConvNet stride 8 is the backbone's ``pool3``).
FCN-4s goes one step further with the stride-4 map (DeepConvNet's ``pool2``); the paper stopped at 8s, where
a further skip returned little on VOC.

``encoder_stride`` (8, 16 or 32; default 32) sets where the added stages stop: with ``encoder_stride = 8`` on
DeepConvNet there are none and ``fc6`` (kernel ``fc_kernel``) sits on ``pool3``, exactly where the
classifier's first Linear layer sat; with ``fc_kernel = 4`` and ``fc_channels = 50`` the classifier's head can
then be convolutionalised into ``fc6`` / ``fc7`` / the score layer (the FCN paper's way of reusing a
classifier, :func:`xpvision.transfer.convolutionalize_head`). Skips are taken only from strides below
``encoder_stride``; the top score layer is ``score<encoder_stride>``.

Decoder: ``score32`` (1x1 conv to classes) on ``fc7``; for 16s/8s, ``up32`` (2x transposed conv) +
``score16`` (1x1 on the stride-16 map), summed; for 8s the same again with ``up16`` + ``score8``, for 4s
once more with ``up8`` + ``score4``; finally ``upsample``, a transposed conv by the remaining factor ``f``
(kernel ``2f``, stride ``f``, padding ``f / 2``).
All transposed convolutions are initialised as bilinear interpolation and have no bias; the 2x ones are
learnable unless ``learnable_upsampling=False`` (then frozen, ``trainable = False``); the final one is always
fixed, as in the paper. Score layers start at zero (the paper's choice: the net starts from a constant
prediction and each skip starts from the coarser net's output).

Alignment and sizes (the modern alternative to the paper's pad-100-and-crop)
---------------------------------------------------------------------------
Every feature map's pixel centres are traced back to the image (:mod:`xpvision.segmentation.geometry`), so
the skips are fused at exactly computed offsets whatever paddings the backbone uses (DeepConvNet's ``conv4``
has padding 2, which shifts its later maps by 2 pixels). The input is zero-padded at the bottom and right by
the smallest amount that lets every upsampled map cover the map it is fused with and the final map cover the
whole image; a fused map is the overlap of the two; the output is cropped back to the input size. Any input
size the backbone accepts works, odd or even (64 x 64 runs at 68 x 68 inside). The added stages pool with
padding 1 (``-inf``), which keeps a border cell on the coarse maps, as Caffe's ceil-mode pooling did for the
original FCN.

Output: logits ``(N, num_classes, H, W)`` for an input ``(N, C, H, W)`` (float32 or float64), channels-last in
memory like every layer's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from xpvision import backend
from xpvision.errors import ConfigError, ShapeError
from xpvision.nn import functional as F
from xpvision.nn import init
from xpvision.nn.activation import ReLU
from xpvision.nn.base import Layer, Sequential, build_layer, first_trainable
from xpvision.nn.conv import Conv2d, ConvTranspose2d
from xpvision.nn.linear import Dropout
from xpvision.nn.pooling import MaxPool2d
from xpvision.nn.validate import check_float, forward_done
from xpvision.segmentation import geometry as geo

VARIANTS = {"32s": 32, "16s": 16, "8s": 8, "4s": 4}
ENCODER_STRIDE = 32


@dataclass(frozen=True)
class _Fusion:
    """Fusing an upsampled score map with a skip score map along one axis: ``up[up_start + j]`` meets
    ``skip[skip_start + j]``."""

    up_start: int
    skip_start: int


@dataclass(frozen=True)
class _Plan:
    """How an ``H x W`` input runs: zero padding at the top/left and bottom/right, per skip the fusion offsets
    ``(along H, along W)``, and where the ``H x W`` output starts in the final upsampled map."""

    pad_before: tuple[int, int]
    pad_after: tuple[int, int]
    fusions: tuple[tuple[_Fusion, _Fusion], ...]
    crop_start: tuple[int, int]


class FCN(Layer):
    """FCN-32s / -16s / -8s (``variant``) on a convolutional backbone ``features``; see the module docstring.

    Args:
        features: the backbone, a :class:`Sequential` (possibly nested) of Conv2d / pooling / element-wise
            layers with an output stride that is a power of two <= 32, e.g. a classifier's ``['features']``.
        num_classes: classes scored per pixel (background included).
        variant: ``'32s'``, ``'16s'`` or ``'8s'``.
        extra_channels: width of each added downsampling stage (``down16``, ``down32``), one entry per stage
            needed to reach stride 32; ``None``: the width doubles at every stage.
        fc_channels: width of ``fc6`` / ``fc7``.
        dropout: dropout probability after ``fc6`` and ``fc7`` (0 = no dropout layers).
        learnable_upsampling: train the 2x upsampling layers (bilinear initialised); else keep them fixed.
        encoder_stride: output stride of the encoder (8, 16 or 32, at least the variant's stride).
        fc_kernel: kernel size of ``fc6`` (padding ``fc_kernel // 2``; an even kernel is traced like any).
    """

    def __init__(self, features: Layer, num_classes: int, variant: str = "8s",
                 extra_channels: list[int] | None = None, fc_channels: int = 256, dropout: float = 0.0,
                 learnable_upsampling: bool = True, encoder_stride: int = ENCODER_STRIDE,
                 fc_kernel: int = 3) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"FCN variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"FCN num_classes must be an integer >= 2, got {num_classes!r}")
        if encoder_stride not in (8, 16, 32) or encoder_stride < VARIANTS[variant]:
            raise ConfigError(f"FCN encoder_stride must be 8, 16 or 32 and >= the variant's stride "
                              f"{VARIANTS[variant]}, got {encoder_stride!r}")
        if not isinstance(fc_kernel, int) or fc_kernel < 1:
            raise ConfigError(f"FCN fc_kernel must be an integer >= 1, got {fc_kernel!r}")
        self.variant = variant
        self.num_classes = num_classes
        self.encoder_stride = encoder_stride
        self.fc_kernel = fc_kernel
        self.fc_channels = int(fc_channels)
        self.dropout = float(dropout)
        self.learnable_upsampling = bool(learnable_upsampling)
        self.features = features
        backbone_stride = geo.trace([layer for _, layer in geo.leaf_layers(features)], 0)[-1].stride
        n_extra = round(math.log2(encoder_stride / backbone_stride)) if backbone_stride >= 1 else -1
        if n_extra < 0 or 2 ** n_extra * backbone_stride != encoder_stride:
            raise ConfigError(f"FCN backbone output stride must be a power of two <= {encoder_stride} "
                              f"(encoder_stride), got {backbone_stride:g}")
        width = _out_channels(features)
        if extra_channels is None:
            extra_channels = [width * 2 ** (i + 1) for i in range(n_extra)]
        if len(extra_channels) != n_extra:
            raise ConfigError(f"FCN extra_channels needs {n_extra} entries (one per stage from stride "
                              f"{backbone_stride:g} to {encoder_stride}), got {list(extra_channels)}")
        self.extra_channels = [int(c) for c in extra_channels]
        self.extra = self._extra_stages(width, int(backbone_stride))
        self._encoder = geo.leaf_layers(features) + geo.leaf_layers(self.extra, "extra")
        self._build_decoder()
        self._check_alignment()
        self._plans: dict[tuple[int, int], _Plan] = {}
        self.fusion = True  # encoder layers absorb their ReLU / pool (an execution detail, as in Sequential)
        self._cache: tuple | None = None

    # -- construction --------------------------------------------------------------------------------------
    def _extra_stages(self, width: int, stride: int) -> Sequential:
        layers: list[tuple[str, Layer]] = []
        for channels in self.extra_channels:
            stride *= 2
            layers += [(f"down{stride}_conv", Conv2d(width, channels, 3, padding=1)),
                       (f"down{stride}_relu", ReLU()),
                       (f"down{stride}_pool", MaxPool2d(2, 2, padding=1))]
            width = channels
        for name, kernel, c_in in (("fc6", self.fc_kernel, width), ("fc7", 1, self.fc_channels)):
            layers += [(name, Conv2d(c_in, self.fc_channels, kernel, padding=kernel // 2)),
                       (f"relu{name[-1]}", ReLU())]
            if self.dropout > 0:
                layers.append((f"drop{name[-1]}", Dropout(self.dropout)))
        return Sequential(*layers)

    def _build_decoder(self) -> None:
        """Score layers per stride (zero-initialised), 2x upsamplers between them, the final upsampler."""
        n = self.num_classes
        self.skip_strides = [s for s in (16, 8, 4) if VARIANTS[self.variant] <= s < self.encoder_stride]
        self.taps = {s: self._last_layer_at_stride(s) for s in self.skip_strides}  # fused in this order
        self.scores = {self.encoder_stride: self._score(self.fc_channels)}
        self.upsamplers: dict[int, ConvTranspose2d] = {}
        for s in self.skip_strides:
            self.scores[s] = self._score(_out_channels_at(self._encoder, self.taps[s]))
            self.upsamplers[s] = _bilinear_upsampler(n, 2, trainable=self.learnable_upsampling)
        factor = VARIANTS[self.variant]
        self.final_upsampler = _bilinear_upsampler(n, factor, trainable=False)

    def _score(self, channels: int) -> Conv2d:
        layer = Conv2d(channels, self.num_classes, 1)
        layer.params["W"][...] = 0
        return layer

    def _last_layer_at_stride(self, stride: int) -> int:
        maps = geo.trace([layer for _, layer in self._encoder], 0)
        hits = [i for i, m in enumerate(maps) if m.stride == stride]
        if not hits:
            raise ConfigError(f"FCN-{self.variant} needs a stride-{stride} map in the encoder; strides are "
                              f"{sorted({m.stride for m in maps})}")
        return hits[-1]

    def _check_alignment(self) -> None:
        """Fail at construction (not on the first batch) if a skip or the output falls between pixels."""
        for axis in (0, 1):
            self._decoder_maps(axis)

    @property
    def head_on_backbone(self) -> bool:
        """``fc6`` sits directly on the backbone's last map (``encoder_stride`` = the backbone's stride),
        where a classifier's first Linear layer sat: its head can be convolutionalised into ``fc6`` /
        ``fc7`` / the score layer (:func:`xpvision.transfer.convolutionalize_head`)."""
        return not self.extra_channels

    # -- layers --------------------------------------------------------------------------------------------
    def children(self):
        yield "features", self.features
        yield "extra", self.extra
        for s, layer in self.scores.items():
            yield f"score{s}", layer
        for s, layer in self.upsamplers.items():
            yield f"up{2 * s}", layer
        yield "upsample", self.final_upsampler

    def __getitem__(self, name: str) -> Layer:
        """A direct part by name, as for a Sequential: ``model['features']``, ``model['score8']``, ..."""
        parts = dict(self.children())
        if name not in parts:
            raise KeyError(f"FCN has no part {name!r}; parts: {list(parts)}")
        return parts[name]

    def config(self) -> dict[str, Any]:
        return {"features": self.features.spec(), "num_classes": self.num_classes, "variant": self.variant,
                "extra_channels": list(self.extra_channels), "fc_channels": self.fc_channels,
                "dropout": self.dropout, "learnable_upsampling": self.learnable_upsampling,
                "encoder_stride": self.encoder_stride, "fc_kernel": self.fc_kernel}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FCN:
        return cls(build_layer(config["features"]), **{k: v for k, v in config.items() if k != "features"})

    # -- geometry ------------------------------------------------------------------------------------------
    def _decoder_maps(self, axis: int) -> tuple[list[_Fusion], geo.AxisMap]:
        """The fusion offsets along ``axis`` and the map of the final output (stride 1, integer offset)."""
        maps = geo.trace([layer for _, layer in self._encoder], axis)
        current, fusions = maps[-1], []
        for s in self.skip_strides:
            up = current.upsampled(*_transposed_settings(self.upsamplers[s], axis))
            skip = maps[self.taps[s]]
            shift = (skip.offset - up.offset) / up.stride
            if shift != int(shift):
                raise ConfigError(f"FCN skip at stride {s} is misaligned by {shift:g} pixels of that map "
                                  f"along axis {axis}: the backbone's paddings do not keep pixel centres on "
                                  f"a grid")
            shift = int(shift)
            fusions.append(_Fusion(max(shift, 0), max(-shift, 0)))
            current = skip if shift >= 0 else up
        final = current.upsampled(*_transposed_settings(self.final_upsampler, axis))
        if final.stride != 1 or final.offset != int(final.offset):
            raise ConfigError(f"FCN output pixels do not fall on input pixels along axis {axis}: {final}")
        return fusions, final

    def plan(self, height: int, width: int) -> _Plan:
        """Padding, fusion offsets and crop for a ``height x width`` input (module docstring); cached."""
        if (height, width) not in self._plans:
            self._plans[height, width] = self._make_plan(height, width)
        return self._plans[height, width]

    def _make_plan(self, height: int, width: int) -> _Plan:
        before, after, crop, axis_fusions = [], [], [], []
        for axis, size in ((0, height), (1, width)):
            fusions, final = self._decoder_maps(axis)
            axis_fusions.append(fusions)
            pad_before = max(0, int(final.offset))
            start = pad_before - int(final.offset)
            for pad_after in range(4 * ENCODER_STRIDE + 1):
                if self._output_length(axis, size + pad_before + pad_after, fusions) >= start + size:
                    break
            else:
                raise ShapeError(f"FCN cannot cover an input of {size} pixels along axis {axis}")
            before.append(pad_before)
            after.append(pad_after)
            crop.append(start)
        return _Plan(tuple(before), tuple(after), tuple(zip(*axis_fusions, strict=True)), tuple(crop))

    def _output_length(self, axis: int, length: int, fusions: list[_Fusion]) -> int:
        lengths = geo.output_length([layer for _, layer in self._encoder], axis, length)
        if min(lengths) < 1:
            return 0
        current = lengths[-1]
        for s, fusion in zip(self.skip_strides, fusions, strict=True):
            up_length = _transposed_length(self.upsamplers[s], axis, current)
            current = min(up_length - fusion.up_start, lengths[self.taps[s]] - fusion.skip_start)
            if current < 1:
                return 0
        return _transposed_length(self.final_upsampler, axis, current)

    # -- computation ---------------------------------------------------------------------------------------
    def forward(self, x):
        """``x`` ``(N, C, H, W)`` float -> logits ``(N, num_classes, H, W)``."""
        check_float(type(self).__name__, x)
        if x.ndim != 4:
            raise ShapeError(f"FCN expected input (N, C, H, W), got {tuple(x.shape)}")
        n, c, h, w = x.shape
        plan = self.plan(h, w)
        xp = backend.get_array_module(x)
        (pt, pl), (pb, pr) = plan.pad_before, plan.pad_after
        padded = xp.zeros((n, h + pt + pb, w + pl + pr, c), dtype=x.dtype)  # (N, Hp, Wp, C)
        padded[:, pt:pt + h, pl:pl + w, :] = x.transpose(0, 2, 3, 1)
        out = F.nchw(padded)
        tap_index = {i: s for s, i in self.taps.items()}
        taps = {}
        for start, stop in self._encoder_steps():
            layer = self._encoder[start][1]
            absorbed = [layer for _, layer in self._encoder[start + 1:stop + 1]]
            out = layer.forward_fused(out, absorbed) if absorbed else layer.forward(out)
            if stop in tap_index:
                taps[tap_index[stop]] = out
        score = self.scores[self.encoder_stride].forward(out)
        fused_shapes = []
        for s, (fusion_h, fusion_w) in zip(self.skip_strides, plan.fusions, strict=True):
            up = F.nhwc(self.upsamplers[s].forward(score))  # (N, Hu, Wu, K)
            skip = F.nhwc(self.scores[s].forward(taps[s]))  # (N, Hs, Ws, K)
            lh = min(up.shape[1] - fusion_h.up_start, skip.shape[1] - fusion_h.skip_start)
            lw = min(up.shape[2] - fusion_w.up_start, skip.shape[2] - fusion_w.skip_start)
            up_h, up_w = fusion_h.up_start, fusion_w.up_start
            skip_h, skip_w = fusion_h.skip_start, fusion_w.skip_start
            score = F.nchw(up[:, up_h:up_h + lh, up_w:up_w + lw]
                           + skip[:, skip_h:skip_h + lh, skip_w:skip_w + lw])  # (N, K, lh, lw)
            fused_shapes.append((up.shape, skip.shape, (lh, lw)))
        full = F.nhwc(self.final_upsampler.forward(score))  # (N, Hf, Wf, K)
        (sh, sw) = plan.crop_start
        logits = xp.ascontiguousarray(full[:, sh:sh + h, sw:sw + w])  # (N, H, W, K)
        self._cache = (x.shape, plan, fused_shapes, full.shape)
        return F.nchw(logits)

    def _encoder_steps(self) -> list[tuple[int, int]]:
        """The encoder run as ``(start, stop)`` steps: layer ``start`` computes itself and absorbs layers
        ``start + 1 .. stop`` when it can (a convolution's ReLU and 2x2 max pool, see
        :meth:`xpvision.nn.Layer.fusable`; unless ``fusion`` is false), never past a layer whose output a skip
        connection taps."""
        layers = [layer for _, layer in self._encoder]
        tapped = set(self.taps.values())
        steps, i = [], 0
        while i < len(layers):
            count = layers[i].fusable(layers[i + 1:]) if self.fusion else 0
            inner_taps = [j for j in tapped if i <= j < i + count]
            stop = min(inner_taps) if inner_taps else i + count
            steps.append((i, stop))
            i = stop + 1
        return steps

    def backward(self, dout):
        """Gradient of the loss w.r.t. the logits ``(N, K, H, W)`` -> w.r.t. the input ``(N, C, H, W)``, or
        ``None`` when ``needs_input_grad`` is False (then encoder layers before the first trainable one are
        skipped: a frozen backbone costs no backward time)."""
        forward_done(type(self).__name__, self._cache)
        x_shape, plan, fused_shapes, full_shape = self._cache
        n, _, h, w = x_shape
        if tuple(dout.shape) != (n, self.num_classes, h, w):
            raise ShapeError(f"FCN.backward expected dout {(n, self.num_classes, h, w)}, "
                             f"got {tuple(dout.shape)}")
        xp = backend.get_array_module(dout)
        sh, sw = plan.crop_start
        dfull = xp.zeros(full_shape, dtype=dout.dtype)  # (N, Hf, Wf, K)
        dfull[:, sh:sh + h, sw:sw + w] = F.nhwc(dout)
        dscore = self.final_upsampler.backward(F.nchw(dfull))
        dtaps = {}
        for s, (fusion_h, fusion_w), (up_shape, skip_shape, (lh, lw)) in reversed(list(zip(
                self.skip_strides, plan.fusions, fused_shapes, strict=True))):
            dfused = F.nhwc(dscore)  # (N, lh, lw, K)
            dup = xp.zeros(up_shape, dtype=dout.dtype)  # (N, Hu, Wu, K)
            up_h, up_w = fusion_h.up_start, fusion_w.up_start
            skip_h, skip_w = fusion_h.skip_start, fusion_w.skip_start
            dup[:, up_h:up_h + lh, up_w:up_w + lw] = dfused
            dskip = xp.zeros(skip_shape, dtype=dout.dtype)  # (N, Hs, Ws, K)
            dskip[:, skip_h:skip_h + lh, skip_w:skip_w + lw] = dfused
            dtaps[self.taps[s]] = self.scores[s].backward(F.nchw(dskip))
            dscore = self.upsamplers[s].backward(F.nchw(dup))
        grad = self.scores[self.encoder_stride].backward(dscore)
        # without needs_input_grad, layers before the first trainable one are skipped
        first = 0 if self.needs_input_grad else first_trainable([layer for _, layer in self._encoder])
        for start, stop in reversed(self._encoder_steps()):
            if stop < first:
                break
            if stop in dtaps:
                grad = grad + dtaps[stop]
            layer = self._encoder[start][1]
            layer.needs_input_grad = start > first or self.needs_input_grad
            grad = layer.backward(grad)
        if not self.needs_input_grad:
            return None
        (pt, pl) = plan.pad_before
        dx = xp.ascontiguousarray(F.nhwc(grad)[:, pt:pt + h, pl:pl + w])  # (N, H, W, C)
        return F.nchw(dx)


def build_fcn(variant: str = "8s", backbone: str = "deep_convnet", in_channels: int = 3,
              num_classes: int = 11, backbone_args: dict[str, Any] | None = None, **fcn_args: Any) -> FCN:
    """An FCN on the ``features`` of the registered classifier ``backbone`` (built with ``in_channels``).

    ``backbone_args`` go to the classifier's builder, ``fcn_args`` to :class:`FCN`.
    """
    from xpvision.models import build_model

    classifier = build_model(backbone, in_channels=in_channels, num_classes=num_classes,
                             **(backbone_args or {}))
    return FCN(classifier["features"], num_classes=num_classes, variant=variant, **fcn_args)


def _bilinear_upsampler(channels: int, factor: int, trainable: bool) -> ConvTranspose2d:
    """Transposed conv upsampling by ``factor`` (kernel ``2 factor``, padding ``factor // 2``), bilinear."""
    layer = ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    init.bilinear_upsampling_(layer)
    if not trainable:
        layer.freeze()
    return layer


def _transposed_settings(layer: ConvTranspose2d, axis: int) -> tuple[int, int, int]:
    return layer.kernel_size[axis], layer.stride[axis], layer.padding[axis]


def _transposed_length(layer: ConvTranspose2d, axis: int, length: int) -> int:
    kernel, stride, padding = _transposed_settings(layer, axis)
    return (length - 1) * stride - 2 * padding + kernel


def _out_channels(layer: Layer) -> int:
    leaves = geo.leaf_layers(layer)
    return _out_channels_at(leaves, len(leaves) - 1)


def _out_channels_at(leaves: list[tuple[str, Layer]], index: int) -> int:
    """Channels of the map after ``leaves[index]``: the ``out_ch`` of the last convolution up to there."""
    for _, layer in reversed(leaves[:index + 1]):
        if isinstance(layer, Conv2d):
            return layer.out_ch
    raise ConfigError("FCN backbone has no Conv2d layer to take its channel count from")
