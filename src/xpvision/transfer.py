"""Transfer learning: load a trained model's weights into a new network by name, adapt the first convolution
to a different number of input channels, replace a classifier's head, and freeze layers for the three modes.

Modes (the Coursera CNN course's three ways to reuse a network)
----------------------------------------------------------------
* ``'head'``: keep every pretrained layer frozen, train only what is new (the head).
* ``'partial'``: freeze the first ``freeze_layers`` pretrained layers that have parameters, train the rest.
* ``'full'``: the pretrained weights are only the initialisation; train everything (optionally with a smaller
  learning rate for the pretrained part, :func:`param_groups`).

Frozen layers (``trainable = False``) are left out of the optimizer, so their weights stay bit-identical;
layers that were frozen by construction (an FCN's fixed bilinear upsampling) are never unfrozen here: the
modes only touch the pretrained part.

First convolution with other input channels
-------------------------------------------
A classifier trained on 1-channel digits can start a 3-channel RGB network (and back): the kernel ``(O, I_s,
kh, kw)`` becomes ``(O, I_t, kh, kw)`` by tiling it over the channels and scaling by ``I_s / I_t`` (timm's
``adapt_input_conv``); to 1 channel the kernel is summed over its channels. When the target count is a
multiple of the source count (1 -> 3) or 1, an image with equal channels gives exactly the responses the
pretrained layer gave the single-channel image; otherwise the mean weight per channel is kept.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xpvision import backend
from xpvision.errors import ConfigError, WeightsError
from xpvision.nn.base import Layer, Sequential

MODES = ("head", "partial", "full")


@dataclass
class TransferReport:
    """What :func:`transfer_weights` did. Names are the target's state-dict keys (``'features.conv1.W'``).

    * ``loaded``: copied from the source unchanged.
    * ``adapted``: copied after adapting the input channels (``{'name', 'source_shape', 'target_shape'}``).
    * ``new``: target entries the source does not have (they keep their initialisation).
    * ``mismatched``: present in both with other shapes, left at their initialisation
      (``{'name', 'source_shape', 'target_shape'}``).
    * ``unused``: source entries (after renaming) that the target does not have.
    * ``converted``: built from other source entries (a classifier's Linear head as an FCN's convolutions,
      :func:`convolutionalize_head`): ``{'name', 'source', 'source_shape', 'target_shape'}``.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[dict[str, Any]] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    converted: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pretrained(self) -> list[str]:
        """Target entries that now hold source weights (loaded or adapted), in target order."""
        return [*self.loaded, *(entry["name"] for entry in [*self.adapted, *self.converted])]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [f"### Weights transferred from `{self.source}`", "",
                 f"{len(self.loaded)} loaded, {len(self.adapted)} adapted, {len(self.converted)} converted, "
                 f"{len(self.new)} new, "
                 f"{len(self.mismatched)} with other shapes (kept new), {len(self.unused)} unused.", "",
                 "| entry | status | source shape | target shape |", "|---|---|---|---|"]
        lines += [f"| `{name}` | loaded | | |" for name in self.loaded]
        lines += [f"| `{e['name']}` | adapted (input channels) | {tuple(e['source_shape'])} | "
                  f"{tuple(e['target_shape'])} |" for e in self.adapted]
        lines += [f"| `{e['name']}` | converted from `{e['source']}` | {tuple(e['source_shape'])} | "
                  f"{tuple(e['target_shape'])} |" for e in self.converted]
        lines += [f"| `{e['name']}` | shape differs, new | {tuple(e['source_shape'])} | "
                  f"{tuple(e['target_shape'])} |" for e in self.mismatched]
        lines += [f"| `{name}` | new | | |" for name in self.new]
        lines += [f"| `{name}` | unused | | |" for name in self.unused]
        return "\n".join(lines) + "\n"


Source = Layer | Mapping[str, np.ndarray] | str | os.PathLike
"""Where weights come from: a model, a state dict, or a saved model's folder / ``.npz``."""


def read_source(source: Source) -> tuple[dict[str, np.ndarray], str]:
    """The source weights as a state dict and a description (a saved model's ``.npz`` is read with
    ``allow_pickle=False``)."""
    if isinstance(source, Layer):
        return source.state_dict(), type(source).__name__
    if isinstance(source, Mapping):
        return {k: np.asarray(backend.to_numpy(v)) for k, v in source.items()}, "state dict"
    from xpvision.io import model_paths, read_npz

    weights_path = model_paths(source)[0]
    return read_npz(weights_path), str(weights_path)


def transfer_weights(target: Layer, source: Source, *,
                     rename: Mapping[str, str] | None = None, include: Sequence[str] | None = None,
                     adapt_input_channels: bool = True) -> TransferReport:
    """Copy the source's weights into ``target`` wherever names and shapes match; report everything else.

    Args:
        target: the new network (its parameters and buffers are written in place).
        source: a model, a state dict or a saved model's folder / ``.npz``.
        rename: source name prefix -> target name prefix (e.g. ``{'features.': 'backbone.'}``), applied first.
        include: only source entries starting with one of these prefixes (after renaming) are candidates
            (``('features.',)``: a classifier's backbone only); ``None`` takes every entry.
        adapt_input_channels: adapt the target's first convolution when only its input channels differ
            (module docstring); otherwise such a kernel counts as mismatched.
    """
    state, description = read_source(source)
    state = _renamed(state, rename or {})
    report = TransferReport(description)
    first_conv = _first_conv_weight(target)
    targets = _target_entries(target)
    for name, (store, key) in targets.items():
        if name not in state or (include is not None and not name.startswith(tuple(include))):
            report.new.append(name)
            continue
        value, current = state[name], store[key]
        if value.shape == tuple(current.shape):
            store[key][...] = _like(value, current)
            report.loaded.append(name)
        elif adapt_input_channels and name == first_conv and _only_input_channels_differ(value, current):
            store[key][...] = _like(adapt_conv_input_channels(value, current.shape[1]), current)
            report.adapted.append(_shapes(name, value, current))
        else:
            report.mismatched.append(_shapes(name, value, current))
    report.unused = sorted(n for n in state if n not in targets
                           and (include is None or n.startswith(tuple(include))))
    return report


def convolutionalize_head(fcn: Layer, source: Source, report: TransferReport | None = None) -> TransferReport:
    """Turn a classifier's Linear head into an FCN's convolutions (the FCN paper's "convolutionalisation").

    The source head ``head.fc1`` (Linear ``W (C*k*k, F)``, on the flattened ``(C, k, k)`` backbone output,
    NCHW order) becomes the FCN's ``fc6`` (Conv2d ``W (F, C, k, k)``, needs ``fc_kernel = k``,
    ``fc_channels = F`` and ``encoder_stride`` equal to the backbone's stride, so that ``fc6`` sees the map
    ``fc1`` saw); ``fc7`` (1x1, ``F -> F``) becomes the identity (with ReLU after ``fc6`` and ``fc7``,
    ``relu(relu(z)) = relu(z)``); the last Linear ``head.fc2`` (``W (F, K_s)``) becomes the top score layer's
    rows ``1..K_s`` when the FCN has ``K_s + 1`` classes (class 0 = background, left at zero) or all rows
    when it has ``K_s``. So at a ``k x k``-pooled location the FCN scores the classifier's logits.

    Entries are recorded as ``converted`` in ``report`` (a new one if ``None``); fc6 / fc7 / score entries
    leave ``report.new``. Raises :class:`WeightsError` when the shapes do not fit (message names both).
    """
    state, description = read_source(source)
    report = report if report is not None else TransferReport(description)
    needed = ("head.fc1.W", "head.fc1.b", "head.fc2.W", "head.fc2.b")
    missing = [name for name in needed if name not in state]
    if missing:
        raise WeightsError(f"{description}: no classifier head to convolutionalise, missing {missing}")
    fc6, fc7 = fcn["extra"]["fc6"], fcn["extra"]["fc7"]
    score_name = f"score{fcn.encoder_stride}"
    score = fcn[score_name]
    w1, w2 = state["head.fc1.W"], state["head.fc2.W"]
    out_ch, in_ch, kh, kw = fc6.params["W"].shape
    if w1.shape != (in_ch * kh * kw, out_ch):
        raise WeightsError(f"{description}: head.fc1.W {tuple(w1.shape)} does not fit extra.fc6.W "
                           f"{tuple(fc6.params['W'].shape)}: expected ({in_ch * kh * kw}, {out_ch})")
    classes = score.params["W"].shape[0]
    offset = classes - w2.shape[1]
    if w2.shape[0] != out_ch or offset not in (0, 1):
        raise WeightsError(f"{description}: head.fc2.W {tuple(w2.shape)} does not fit {score_name}.W "
                           f"{tuple(score.params['W'].shape)}: expected ({out_ch}, {classes} or "
                           f"{classes - 1})")
    converted = {
        "extra.fc6.W": (fc6.params, "W", "head.fc1.W", w1.T.reshape(out_ch, in_ch, kh, kw)),  # (F, C, k, k)
        "extra.fc6.b": (fc6.params, "b", "head.fc1.b", state["head.fc1.b"]),
        "extra.fc7.W": (fc7.params, "W", "identity", np.eye(out_ch).reshape(out_ch, out_ch, 1, 1)),
        "extra.fc7.b": (fc7.params, "b", "identity", np.zeros(out_ch)),
    }
    for target_name, (store, key, source_name, value) in converted.items():
        store[key][...] = _like(np.asarray(value), store[key])
        report.converted.append({"name": target_name, "source": source_name,
                                 "source_shape": list(np.shape(state.get(source_name, value))),
                                 "target_shape": list(store[key].shape)})
    score_w = np.zeros(score.params["W"].shape, dtype=np.float32)  # (K, F, 1, 1)
    score_w[offset:, :, 0, 0] = w2.T
    score_b = np.zeros(classes, dtype=np.float32)
    score_b[offset:] = state["head.fc2.b"]
    for key, source_name, value in (("W", "head.fc2.W", score_w), ("b", "head.fc2.b", score_b)):
        score.params[key][...] = _like(value, score.params[key])
        report.converted.append({"name": f"{score_name}.{key}", "source": source_name,
                                 "source_shape": list(state[source_name].shape),
                                 "target_shape": list(score.params[key].shape)})
    done = {entry["name"] for entry in report.converted}
    report.new = [name for name in report.new if name not in done]
    return report


def adapt_conv_input_channels(weight: np.ndarray, in_channels: int) -> np.ndarray:
    """A conv kernel ``(O, I, kh, kw)`` for ``in_channels`` inputs: summed over ``I`` for 1 channel, else
    tiled over the channels and scaled by ``I / in_channels`` (module docstring)."""
    weight = np.asarray(weight)
    if weight.ndim != 4:
        raise WeightsError(f"expected a conv kernel (O, I, kh, kw), got shape {weight.shape}")
    if in_channels < 1:
        raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
    source_channels = weight.shape[1]
    if in_channels == 1:
        return weight.sum(axis=1, keepdims=True)  # (O, 1, kh, kw)
    repeats = math.ceil(in_channels / source_channels)
    tiled = np.tile(weight, (1, repeats, 1, 1))[:, :in_channels]  # (O, in_channels, kh, kw)
    return (tiled * (source_channels / in_channels)).astype(weight.dtype)


def replace_head(classifier: Sequential, num_classes: int) -> Layer:
    """Give a ``Sequential(('features', ...), ('head', ...))`` classifier a new last layer with
    ``num_classes`` outputs (freshly initialised, same type and input size), in place; returns the new layer.

    The last layer of the head with parameters is replaced (a ``Linear`` or a ``Conv2d``); trailing layers
    without parameters (dropout) stay.
    """
    if not (isinstance(classifier, Sequential) and "head" in classifier.layers):
        raise ConfigError("replace_head expects a Sequential with a 'head' part (build_model's layout)")
    head = classifier["head"]
    named = [(name, layer) for name, layer in head.children() if layer.params]
    if not named or not isinstance(head, Sequential):
        raise ConfigError("the classifier's head has no layer with parameters to replace")
    name, old = named[-1]
    config = dict(old.config())
    size_key = {"Linear": "out_features", "Conv2d": "out_ch"}.get(type(old).__name__)
    if size_key is None:
        raise ConfigError(f"cannot replace a head ending in {type(old).__name__}; expected Linear or Conv2d")
    config[size_key] = int(num_classes)
    new = type(old)(**config)
    head[name] = new.to(old.device)
    return new


def set_transfer_mode(model: Layer, mode: str, pretrained: Sequence[str] | TransferReport,
                      freeze_layers: int = 0) -> list[str]:
    """Freeze or unfreeze the pretrained layers of ``model`` for ``mode`` (module docstring); return the
    names of the layers now frozen by this call.

    ``pretrained``: the pretrained entries (``TransferReport`` or state-dict names like
    ``'features.conv1.W'``); their layers form the pretrained part. Layers outside it are not touched.
    ``freeze_layers``: for ``'partial'``, how many pretrained layers with parameters (in model order) to
    freeze; at least 1 and fewer than the number of pretrained layers, so both parts are non-empty.
    """
    if mode not in MODES:
        raise ConfigError(f"transfer mode must be one of {MODES}, got {mode!r}")
    names = pretrained.pretrained if isinstance(pretrained, TransferReport) else list(pretrained)
    layer_names = {n.rsplit(".", 1)[0] for n in names}
    layers = [(name, layer) for name, layer in model.named_layers() if name in layer_names and layer.params]
    if not layers:
        raise ConfigError("set_transfer_mode: no layer of the model holds pretrained weights")
    if mode == "head":
        count = len(layers)
    elif mode == "partial":
        if not 1 <= freeze_layers < len(layers):
            raise ConfigError(f"freeze_layers must be in [1, {len(layers) - 1}] for mode 'partial' with "
                              f"{len(layers)} pretrained layers ({', '.join(n for n, _ in layers)}), "
                              f"got {freeze_layers}")
        count = freeze_layers
    else:
        count = 0
    for i, (_, layer) in enumerate(layers):
        layer.trainable = i >= count
    return [name for name, _ in layers[:count]]


def param_groups(model: Layer, lr: float, pretrained_lr_scale: float,
                 pretrained: Sequence[str] | TransferReport) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the trainable pretrained parameters at ``lr * pretrained_lr_scale``, the
    other trainable ones at ``lr`` (empty groups left out). Pass to ``xpvision.optim`` optimizers."""
    names = set(pretrained.pretrained if isinstance(pretrained, TransferReport) else pretrained)
    old, new = [], []
    for name, layer, key in model.named_parameters(trainable_only=True):
        (old if name in names else new).append((layer, key))
    groups = [{"params": old, "lr": lr * pretrained_lr_scale}, {"params": new, "lr": lr}]
    return [g for g in groups if g["params"]]


def initialise_from(model: Layer, source: Source, mode: str = "full",
                    freeze_layers: int = 0) -> TransferReport:
    """Start ``model`` from the model saved in ``source``: its ``features.*`` weights by name, and, for an FCN
    whose ``fc6`` sits on the backbone (``head_on_backbone``), its classifier head as convolutions; then
    apply the transfer ``mode`` (:func:`set_transfer_mode`). Returns the report of what was loaded."""
    report = transfer_weights(model, source, include=("features.",))
    if getattr(model, "head_on_backbone", False):
        convolutionalize_head(model, source, report)
    set_transfer_mode(model, mode, report, freeze_layers)
    return report


def _renamed(state: dict[str, np.ndarray], rename: Mapping[str, str]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in state.items():
        for old, new in rename.items():
            if name.startswith(old):
                name = new + name[len(old):]
                break
        out[name] = value
    return out


def _target_entries(model: Layer) -> dict[str, tuple[dict, str]]:
    """``{state-dict name: (store, key)}`` for the parameters and buffers of ``model``."""
    entries = {}
    for lname, layer in model.named_layers():
        for store in (layer.params, layer.buffers):
            for key in store:
                entries[f"{lname}.{key}" if lname else key] = (store, key)
    return entries


def _first_conv_weight(model: Layer) -> str | None:
    for lname, layer in model.named_layers():
        if type(layer).__name__ == "Conv2d":
            return f"{lname}.W" if lname else "W"
    return None


def _only_input_channels_differ(value: np.ndarray, current) -> bool:
    return value.ndim == 4 and len(current.shape) == 4 and value.shape[0] == current.shape[0] \
        and value.shape[2:] == tuple(current.shape[2:])


def _like(value: np.ndarray, current):
    """``value`` with the dtype and on the device of ``current``."""
    return backend.get_array_module(current).asarray(value.astype(current.dtype, copy=False))


def _shapes(name: str, value: np.ndarray, current) -> dict[str, Any]:
    return {"name": name, "source_shape": list(value.shape), "target_shape": list(current.shape)}


def compare_transfer(build_network: Callable[[], Layer], source: Source,
                     task: Any, train_loader: Any, eval_loader: Any, *, epochs: int, seed: int = 0,
                     modes: Sequence[str] = MODES, freeze_layers: int | None = None, optimizer: str = "adam",
                     lr: float = 1e-3, pretrained_lr_scale: float = 1.0, include: Sequence[str] | None = None,
                     rename: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Fine-tuned from ``source`` vs trained from scratch, for each mode, with the same data, epochs and seed:
    :func:`comparison_run` for every mode and for pretrained in (True, False), in this process.

    Returns one row per run, in that order (:func:`comparison_run` describes a row). The runs are
    independent: a caller may run them in several processes instead (the ``transfer_report`` stage does).
    """
    return [comparison_run(build_network, source, task, train_loader, eval_loader, mode=mode,
                           pretrained=pretrained, epochs=epochs, seed=seed, freeze_layers=freeze_layers,
                           optimizer=optimizer, lr=lr, pretrained_lr_scale=pretrained_lr_scale,
                           include=include, rename=rename)
            for mode in modes for pretrained in (True, False)]


def comparison_run(build_network: Callable[[], Layer], source: Source, task: Any, train_loader: Any,
                   eval_loader: Any, *, mode: str, pretrained: bool, epochs: int, seed: int = 0,
                   freeze_layers: int | None = None, optimizer: str = "adam", lr: float = 1e-3,
                   pretrained_lr_scale: float = 1.0, include: Sequence[str] | None = None,
                   rename: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One run of :func:`compare_transfer`: ``mode``, fine-tuned from ``source`` or (``pretrained=False``)
    from scratch.

    Seeds :mod:`xpvision.nn.rng` with ``seed``, builds the network with ``build_network()`` (so the
    pretrained and scratch runs start from the same random weights), loads ``source`` (pretrained runs only),
    applies the mode to the layers that hold source weights (from scratch, the same layers are frozen at
    their random initialisation: the baseline for "how much do the pretrained features help"), trains
    ``epochs`` epochs with a cosine schedule, evaluates on ``eval_loader``. The result depends on the
    arguments alone, not on runs before it in the process.

    ``freeze_layers`` for ``'partial'`` defaults to half of the pretrained layers. Returns the row
    ``{'mode', 'pretrained', 'metric', 'value', 'train_time_s', 'trainable_parameters', 'epochs', 'seed'}``
    plus every metric of ``task.evaluate`` under ``metrics``; :class:`WeightsError` when no weight of
    ``source`` fits the network.
    """
    import tempfile
    import time

    from xpvision.nn import rng
    from xpvision.optim import build_optimizer
    from xpvision.schedules import build_schedule
    from xpvision.train import Trainer

    rng.manual_seed(seed)
    model = build_network()
    report = transfer_weights(model, source, rename=rename, include=include)
    if not report.pretrained:
        raise WeightsError(f"no weights of {report.source} fit the network: nothing to compare")
    if not pretrained:
        rng.manual_seed(seed)
        model = build_network()
    layers = len({n.rsplit(".", 1)[0] for n in report.pretrained})
    set_transfer_mode(model, mode, report, freeze_layers or max(1, layers // 2))
    params = param_groups(model, lr, pretrained_lr_scale, report) if pretrained else model
    opt = build_optimizer(optimizer, params, lr=lr)
    with tempfile.TemporaryDirectory() as tmp:
        schedule = build_schedule("cosine", opt, epochs=epochs)
        trainer = Trainer(model, task, opt, epochs=epochs, checkpoint_path=Path(tmp) / "c.npz",
                          scheduler=schedule, seed=seed, progress=False, resume=False)
        start = time.perf_counter()
        trainer.fit(train_loader)
        train_time = time.perf_counter() - start
    metrics = task.evaluate(model, eval_loader)
    return {"mode": mode, "pretrained": pretrained, "metric": task.primary_metric,
            "value": float(metrics[task.primary_metric]), "train_time_s": round(train_time, 2),
            "trainable_parameters": sum(int(layer.params[key].size) for _, layer, key
                                        in model.named_parameters(trainable_only=True)),
            "epochs": epochs, "seed": seed, "metrics": metrics}


def write_comparison(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike) -> tuple[str, str]:
    """Write ``transfer_comparison.md`` (a table) and ``transfer_comparison.json`` (the rows) into
    ``out_dir``, atomically; return both paths."""
    from xpvision import atomic

    out_dir = Path(out_dir)
    lines = ["| mode | pretrained | metric | value | train time (s) | trainable parameters |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {'yes' if r['pretrained'] else 'no (scratch)'} | {r['metric']} | "
              f"{r['value']:.4f} | {r['train_time_s']:.1f} | {r['trainable_parameters']:,} |" for r in rows]
    markdown, json_path = out_dir / "transfer_comparison.md", out_dir / "transfer_comparison.json"
    atomic.write_text(markdown, "\n".join(lines) + "\n")
    atomic.write_json(json_path, list(rows))
    return str(markdown), str(json_path)
