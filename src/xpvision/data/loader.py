"""Batches for training and evaluation: :class:`DataLoader`, :class:`Normalization`, :class:`ListDataset`.

A dataset is any sequence of sample dicts (see docs/architecture.md): ``image`` ``(H, W, C)`` uint8 plus
``label`` | ``boxes``/``labels``/``difficult`` | ``mask``. :class:`xpvision.data.shards.ShardDataset` is the
one the pipeline uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xpvision import backend
from xpvision.errors import ConfigError, DataError

NORMALIZATION_MODES = ("rescale", "dataset", "sample")


@dataclass(frozen=True)
class Normalization:
    """How uint8 images become network input. Every mode first scales to [0, 1] (pixel rescaling).

    * ``rescale``: nothing more.
    * ``dataset``: per channel ``(x - mean) / std`` with the training set's statistics (``mean``/``std``
      given, from the shard manifest's ``meta``, computed by :func:`xpvision.data.shards.channel_stats`).
    * ``sample``: each image to mean 0 and std 1 over all its pixels and channels (std floored at
      ``1 / sqrt(H * W * C)`` so flat images do not blow up).
    """

    mode: str = "rescale"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in NORMALIZATION_MODES:
            raise ConfigError(f"normalization mode {self.mode!r} unknown; expected one of "
                              f"{NORMALIZATION_MODES}")
        if self.mode == "dataset":
            if self.mean is None or self.std is None or len(self.mean) != len(self.std):
                raise ConfigError("normalization 'dataset' needs mean and std of the same length, got "
                                  f"mean={self.mean}, std={self.std}")
            if min(self.std) <= 0:
                raise ConfigError(f"normalization 'dataset': std must be > 0, got {self.std}")

    @classmethod
    def from_meta(cls, meta: dict, mode: str | None = None) -> Normalization:
        """Build from a shard manifest's ``meta``.

        ``mode`` ``None`` takes the mode the augment stage recorded (``meta["normalization"]["mode"]``, else
        ``rescale``); mode ``dataset`` takes the per-channel ``meta["mean"]``/``meta["std"]``.
        """
        if mode is None:
            mode = (meta.get("normalization") or {}).get("mode", "rescale")
        if mode != "dataset":
            return cls(mode)
        if "mean" not in meta or "std" not in meta:
            raise ConfigError("normalization 'dataset' needs the training set's mean/std, which the shard "
                              "manifest's meta does not hold")
        return cls(mode, tuple(meta["mean"]), tuple(meta["std"]))

    def apply(self, images):
        """``(N, H, W, C)`` uint8 (NumPy or CuPy) -> ``(N, H, W, C)`` float32 normalised, C-contiguous."""
        xp = backend.get_array_module(images)
        x = images.astype(xp.float32) * xp.float32(1.0 / 255.0)
        if self.mode == "dataset":
            if len(self.mean) != x.shape[-1]:
                raise DataError(f"normalization has {len(self.mean)} channel statistics, images have "
                                f"{x.shape[-1]} channels")
            x -= xp.asarray(self.mean, dtype=xp.float32)
            x *= xp.asarray([1.0 / s for s in self.std], dtype=xp.float32)
        elif self.mode == "sample":
            axes = (1, 2, 3)
            floor = 1.0 / np.sqrt(np.prod(x.shape[1:]))
            x -= x.mean(axis=axes, keepdims=True)
            x /= xp.maximum(x.std(axis=axes, keepdims=True), xp.float32(floor))
        return x

    def to_dict(self) -> dict:
        """JSON-able form for model metadata (``predict`` must normalise the same way)."""
        return {"mode": self.mode, "mean": list(self.mean or []), "std": list(self.std or [])}


class ListDataset:
    """An in-memory list of sample dicts with class names (what the VOC / COCO parsers return)."""

    def __init__(self, samples: Sequence[dict], classes: Sequence[str]):
        self.samples = list(samples)
        self.classes = tuple(classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


class DataLoader:
    """Iterate a dataset in batches.

    Yields dicts: ``images`` ``(N, C, H, W)`` float32 (an NCHW-shaped view of a C-contiguous NHWC buffer, the
    layout :mod:`xpvision.nn` keeps inside; normalised by ``normalization``), ``indices`` ``(N,)`` int64
    (dataset positions), and the targets present: ``labels`` ``(N,)`` int64; or ``boxes`` (list of ``(R_i,
    4)`` float32), ``labels`` (list of ``(R_i,)`` int64), ``difficult`` (list of ``(R_i,)`` bool); and/or
    ``masks`` ``(N, H, W)`` int64 (255 = ignore). With both boxes and masks, ``labels`` is the per-image list.

    The shuffle order of epoch ``e`` is a permutation drawn from ``default_rng([seed, e])``: call
    :meth:`set_epoch` before iterating so a resumed run sees the same batches. ``device='gpu'`` moves each
    batch's arrays to CuPy (images as uint8, converted there; ``masks`` and classification ``labels``), except
    the per-image lists of a detection batch (``boxes``, ``labels``, ``difficult``): detection targets are
    assigned on the host, so they stay there (moving them would cost a copy back every step), and so does
    ``indices``.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, *, normalization: Normalization | None = None, device: str = "cpu"):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise DataError("DataLoader: the dataset is empty")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.normalization = normalization or Normalization()
        self.device = backend.check_device(device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> np.ndarray:
        """The sample order of the current epoch, ``(len(dataset),)`` int64."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n).astype(np.int64)

    def __iter__(self):
        order = self.order()
        for b in range(len(self)):
            indices = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self._batch(indices)

    def _batch(self, indices: np.ndarray) -> dict:
        samples = [self.dataset[int(i)] for i in indices]
        batch = collate(samples)
        host = {k: batch.pop(k) for k in ("boxes", "labels", "difficult") if isinstance(batch.get(k), list)}
        batch = backend.to_device(batch, self.device)
        batch.update(host, indices=indices)
        images = self.normalization.apply(batch.pop("image_array"))  # (N, H, W, C)
        batch["images"] = images.transpose(0, 3, 1, 2)  # (N, C, H, W) view
        return batch


def collate(samples: list[dict]) -> dict:
    """Stack samples: ``image_array`` ``(N, H, W, C)`` uint8 and the targets (see :class:`DataLoader`)."""
    first = samples[0]
    try:
        batch = {"image_array": np.stack([s["image"] for s in samples])}  # (N, H, W, C)
    except ValueError as e:
        raise DataError(f"cannot batch images of different shapes ({e}); resize the dataset to one "
                        "size") from e
    if "label" in first:
        batch["labels"] = np.array([int(s["label"]) for s in samples], dtype=np.int64)
    if "boxes" in first:
        batch["boxes"] = [np.asarray(s["boxes"], dtype=np.float32).reshape(-1, 4) for s in samples]
        batch["labels"] = [np.asarray(s["labels"], dtype=np.int64) for s in samples]
        batch["difficult"] = [np.asarray(s.get("difficult", np.zeros(len(s["labels"]), bool)), dtype=bool)
                              for s in samples]
    if "mask" in first:
        batch["masks"] = np.stack([s["mask"] for s in samples]).astype(np.int64)  # (N, H, W)
    return batch
