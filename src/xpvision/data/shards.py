"""Processed datasets on disk: a few large ``.npz`` shards plus a JSON manifest (DVC is slow on many small
files).

A shard ``shard-00000.npz`` holds up to ``shard_size`` samples, stacked:

* ``images`` ``(n, H, W, C)`` uint8 (every sample of a dataset has the same size)
* classification: ``label`` ``(n,)`` int64
* detection: ``boxes`` ``(R, 4)`` float32, ``labels`` ``(R,)`` int64, ``difficult`` ``(R,)`` bool for all the
  shard's objects, and ``box_offsets`` ``(n + 1,)`` int64: sample ``i`` owns rows ``box_offsets[i]:[i + 1]``
* segmentation: ``masks`` ``(n, H, W)`` uint8 (255 = ignore)

``manifest.json``: ``{"format", "count", "image_shape", "classes", "targets", "shards": [{"file", "count",
"sha256"}], "meta": {...}}``. Shards are written as zip files with fixed timestamps (``np.savez`` stamps the
current time), so the same samples give the same bytes, and they are loaded with ``allow_pickle=False``.
A folder whose shards are already what :func:`write_shards` would write can be copied file by file instead
(:func:`copy_shards`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from xpvision.atomic import write_json
from xpvision.data.folders import atomic_dir
from xpvision.errors import DataError

FORMAT = "xpvision-shards/1"
MANIFEST = "manifest.json"
TARGETS = ("label", "boxes", "mask")
# The arrays _flush writes: "images", then those of each target in TARGETS order, with these dtypes.
TARGET_ARRAYS = {"label": ("label",), "boxes": ("boxes", "labels", "difficult", "box_offsets"),
                 "mask": ("masks",)}
ARRAY_DTYPES = {"images": np.uint8, "label": np.int64, "boxes": np.float32, "labels": np.int64,
                "difficult": np.bool_, "box_offsets": np.int64, "masks": np.uint8}


def write_shards(out_dir: str | os.PathLike, samples: Iterable[dict], *, classes: Sequence[str],
                 shard_size: int = 4096, meta: dict | None = None, with_stats: bool = False,
                 finalize_meta: Callable[[dict], None] | None = None) -> dict:
    """Write ``samples`` (dicts as in docs/architecture.md) as shards + manifest into ``out_dir`` atomically.

    ``samples`` may be a generator: only one shard is held in memory. With ``with_stats`` the manifest's
    ``meta`` also gets the per-channel ``mean``/``std`` of the written images in [0, 1] (see
    :class:`ChannelStats`). ``finalize_meta(meta)``, if given, may complete ``meta`` in place once every
    sample is written (e.g. from those statistics), before the manifest is written.

    The targets stored are those of the first sample (``label``, ``boxes``/``labels``/``difficult``,
    ``mask``); every sample must have the same targets and image shape. Returns the manifest.
    """
    if shard_size < 1:
        raise DataError(f"shard_size must be >= 1, got {shard_size}")
    manifest = {"format": FORMAT, "count": 0, "image_shape": None, "classes": list(classes), "targets": None,
                "shards": [], "meta": dict(meta or {})}
    stats = ChannelStats() if with_stats else None
    with atomic_dir(out_dir) as tmp:
        pending: list[dict] = []
        for sample in samples:
            if manifest["targets"] is None:
                manifest["targets"] = [t for t in TARGETS if t in sample]
                manifest["image_shape"] = list(sample["image"].shape)
            _check_sample(sample, manifest, manifest["count"] + len(pending))
            pending.append(sample)
            if len(pending) == shard_size:
                _flush(tmp, pending, manifest, stats)
        if pending:
            _flush(tmp, pending, manifest, stats)
        if manifest["count"] == 0:
            raise DataError(f"no samples to write into {out_dir} (empty split, or a class filter that "
                            "matches no image?)")
        _write_manifest(tmp, manifest, stats, finalize_meta)
    return manifest


def _write_manifest(folder: Path, manifest: dict, stats: ChannelStats | None,
                    finalize_meta: Callable[[dict], None] | None) -> None:
    if stats is not None:
        manifest["meta"]["mean"], manifest["meta"]["std"] = stats.result()
    if finalize_meta is not None:
        finalize_meta(manifest["meta"])
    write_json(folder / MANIFEST, manifest)


def copy_shards(source: ShardDataset, out_dir: str | os.PathLike, *, meta: dict | None = None,
                with_stats: bool = False, finalize_meta: Callable[[dict], None] | None = None) -> dict:
    """Write ``source``'s samples into ``out_dir`` atomically by copying its shard files.

    For a ``source`` whose files are what :func:`write_shards` writes for its samples (see
    :func:`written_as_shards`): the files, the manifest and the statistics are then those of
    ``write_shards(out_dir, source's samples, classes=source.classes, meta=meta, ...)`` (``with_stats`` and
    ``finalize_meta`` as there). Each file's SHA-256 is checked against ``source``'s manifest in the read that
    copies it: a mismatch is a :class:`DataError` naming the source file, and leaves ``out_dir`` as it was.
    Returns the manifest.
    """
    manifest = {"format": FORMAT, "count": 0, "image_shape": list(source.manifest["image_shape"]),
                "classes": list(source.classes), "targets": list(source.targets), "shards": [],
                "meta": dict(meta or {})}
    stats = ChannelStats() if with_stats else None
    with atomic_dir(out_dir) as tmp:
        for k, entry in enumerate(source.manifest["shards"]):
            name = f"shard-{k:05d}.npz"  # the name write_shards gives the k-th shard
            verify_shard(source.folder / entry["file"], entry["sha256"], copy_to=tmp / name)
            if stats is not None:
                stats.add(map_npz(tmp / name)["images"])  # (n, H, W, C) uint8, memory-mapped
            manifest["shards"].append({"file": name, "count": entry["count"], "sha256": entry["sha256"]})
            manifest["count"] += entry["count"]
        _write_manifest(tmp, manifest, stats, finalize_meta)
    return manifest


def written_as_shards(source: ShardDataset, shard_size: int) -> bool:
    """Whether ``source``'s shard files hold exactly the arrays ``write_shards(shard_size=shard_size)`` writes
    for its samples, so :func:`copy_shards` may copy them.

    True when every shard but the last holds ``shard_size`` samples and the last at most that, and each
    shard's members are the arrays ``_flush`` writes for the manifest's targets, in its order, with its dtypes
    (native byte order, C order) and shapes, box offsets from 0 to the number of boxes. Only the ``.npy``
    headers and the box offsets are read. The files' bytes are then those ``_flush`` writes, given that they
    were encoded by :func:`npz_bytes` (the only writer of this format).
    """
    manifest = source.manifest
    counts = [entry["count"] for entry in manifest["shards"]]
    targets = list(manifest["targets"])
    if (shard_size < 1 or not counts or any(c != shard_size for c in counts[:-1])
            or not 1 <= counts[-1] <= shard_size or targets != [t for t in TARGETS if t in targets]):
        return False
    names = ["images", *(name for t in targets for name in TARGET_ARRAYS[t])]
    for entry in manifest["shards"]:
        try:
            arrays = map_npz(source.folder / entry["file"])
        except DataError:
            return False  # missing, corrupt or not as npz_bytes writes: write_shards' path reports or copes
        if list(arrays) != names or not _as_flush_writes(arrays, entry["count"], manifest["image_shape"]):
            return False
    return True


def _as_flush_writes(arrays: dict[str, np.ndarray], n: int, image_shape: list[int]) -> bool:
    """Whether the arrays of one shard have the dtypes, order and shapes ``_flush`` gives ``n`` samples."""
    for key, array in arrays.items():
        if array.dtype.str != np.dtype(ARRAY_DTYPES[key]).str or not array.flags.c_contiguous:
            return False
    shapes = {"images": (n, *image_shape), "label": (n,), "masks": (n, *image_shape[:2])}
    if any(key in arrays and arrays[key].shape != shape for key, shape in shapes.items()):
        return False
    if "boxes" not in arrays:
        return True
    offsets = arrays["box_offsets"]  # (n + 1,): sample i owns rows offsets[i]:offsets[i + 1]
    if offsets.shape != (n + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        return False
    rows = int(offsets[-1])
    return (arrays["boxes"].shape == (rows, 4) and arrays["labels"].shape == (rows,)
            and arrays["difficult"].shape == (rows,))


def _check_sample(sample: dict, manifest: dict, index: int) -> None:
    targets = [t for t in TARGETS if t in sample]
    if targets != manifest["targets"] or list(sample["image"].shape) != manifest["image_shape"]:
        raise DataError(f"sample {index} ({sample.get('id', '?')}): targets {targets} and image shape "
                        f"{list(sample['image'].shape)}; expected {manifest['targets']} and "
                        f"{manifest['image_shape']} like the first sample (resize images to one size)")
    if sample["image"].dtype != np.uint8:
        raise DataError(f"sample {index}: image dtype {sample['image'].dtype}; expected uint8")


def _flush(folder: Path, pending: list[dict], manifest: dict, stats: ChannelStats | None) -> None:
    arrays = {"images": np.stack([s["image"] for s in pending])}  # (n, H, W, C)
    if stats is not None:
        stats.add(arrays["images"])  # per shard: the histograms do not depend on how images are grouped
    dtype = ARRAY_DTYPES
    if "label" in manifest["targets"]:
        arrays["label"] = np.array([int(s["label"]) for s in pending], dtype=dtype["label"])
    if "boxes" in manifest["targets"]:
        counts = [len(s["labels"]) for s in pending]
        arrays["boxes"] = np.concatenate([np.asarray(s["boxes"], dtype["boxes"]).reshape(-1, 4)
                                          for s in pending])
        arrays["labels"] = np.concatenate([np.asarray(s["labels"], dtype["labels"]).reshape(-1)
                                           for s in pending])
        arrays["difficult"] = np.concatenate([np.asarray(s.get("difficult", np.zeros(n)), dtype["difficult"])
                                              .reshape(-1) for s, n in zip(pending, counts, strict=True)])
        arrays["box_offsets"] = np.cumsum([0, *counts]).astype(dtype["box_offsets"])
    if "mask" in manifest["targets"]:
        arrays["masks"] = np.stack([s["mask"] for s in pending]).astype(dtype["masks"])  # (n, H, W)
    name = f"shard-{len(manifest['shards']):05d}.npz"
    data = npz_bytes(arrays)
    (folder / name).write_bytes(data)
    manifest["shards"].append({"file": name, "count": len(pending),
                               "sha256": hashlib.sha256(data).hexdigest()})
    manifest["count"] += len(pending)
    pending.clear()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` (zip of ``.npy``) with fixed timestamps: identical arrays give identical
    bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, array in arrays.items():
            if array.dtype == object:
                raise DataError(f"array {key!r} has dtype object; shards never hold pickled objects")
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buf.getvalue()


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of a shard folder, checked for the format tag and required keys."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"shard manifest {path} does not exist (run the download stage first?)") from e
    except json.JSONDecodeError as e:
        raise DataError(f"shard manifest {path} is not valid JSON: {e}") from e
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    if found != FORMAT:
        raise DataError(f"shard manifest {path}: format {found!r}; expected {FORMAT!r}")
    for key in ("count", "image_shape", "classes", "targets", "shards"):
        if key not in manifest:
            raise DataError(f"shard manifest {path}: missing key {key!r}")
    return manifest


class ShardDataset:
    """A shard folder as a sequence of samples (dicts as in docs/architecture.md).

    Shards are loaded whole on first use and kept in an LRU cache of ``max_cached_shards`` (``None``: all; a
    shuffled epoch touches every shard, so keep all of them when they fit in memory). ``verify`` checks each
    shard's SHA-256 against the manifest when it is loaded. ``mmap``: memory-map the shards' arrays instead
    (:func:`map_npz`), so only the pages of the samples asked for are read (data-parallel processes each read
    their own samples); ``verify`` then streams the file through the hash once, holding none of it.
    """

    def __init__(self, folder: str | os.PathLike, *, verify: bool = True,
                 max_cached_shards: int | None = None, mmap: bool = False):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.classes = tuple(self.manifest["classes"])
        self.targets = tuple(self.manifest["targets"])
        self.meta = self.manifest.get("meta", {})
        self.verify, self.mmap = verify, mmap
        self.max_cached_shards = max_cached_shards
        counts = [s["count"] for s in self.manifest["shards"]]
        self._starts = np.cumsum([0, *counts])
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _shard(self, k: int) -> dict[str, np.ndarray]:
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        entry = self.manifest["shards"][k]
        path = self.folder / entry["file"]
        if self.mmap:
            if self.verify:
                verify_shard(path, entry["sha256"])
            arrays = map_npz(path)
        else:
            arrays = self._read(path, entry["sha256"])
        self._cache[k] = arrays
        if self.max_cached_shards is not None and len(self._cache) > self.max_cached_shards:
            self._cache.popitem(last=False)
        return arrays

    def _read(self, path: Path, sha256: str) -> dict[str, np.ndarray]:
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise DataError(f"shard {path} listed in the manifest does not exist") from e
        if self.verify and hashlib.sha256(data).hexdigest() != sha256:
            raise DataError(f"shard {path}: SHA-256 {hashlib.sha256(data).hexdigest()} differs from the "
                            f"manifest's {sha256}")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise DataError(f"shard {path} is corrupt: {e}") from e

    def _locate(self, index: int) -> tuple[int, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples in {self.folder}")
        index %= len(self)
        k = int(np.searchsorted(self._starts, index, side="right") - 1)
        return k, index - int(self._starts[k])

    def __getitem__(self, index: int) -> dict:
        k, i = self._locate(int(index))
        shard = self._shard(k)
        sample = {"image": shard["images"][i]}
        if "label" in shard:
            sample["label"] = int(shard["label"][i])
        if "boxes" in shard:
            lo, hi = shard["box_offsets"][i], shard["box_offsets"][i + 1]
            sample.update(boxes=shard["boxes"][lo:hi], labels=shard["labels"][lo:hi],
                          difficult=shard["difficult"][lo:hi])
        if "masks" in shard:
            sample["mask"] = shard["masks"][i]
        return sample

    def images(self) -> Iterable[np.ndarray]:
        """Each shard's ``(n, H, W, C)`` uint8 image block, in order (for statistics)."""
        for k in range(len(self.manifest["shards"])):
            yield self._shard(k)["images"]


def verify_shard(path: Path, sha256: str, copy_to: Path | None = None) -> None:
    """Raise :class:`DataError` unless the file's SHA-256 is ``sha256`` (read in 1 MiB pieces).

    With ``copy_to``, each piece read is also written to that file: a copy checked in the same single read
    (on an error the caller deletes the partial copy).
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f, (open(copy_to, "wb") if copy_to else contextlib.nullcontext()) as out:
            for piece in iter(lambda: f.read(1 << 20), b""):
                digest.update(piece)
                if out is not None:
                    out.write(piece)
    except FileNotFoundError as e:
        raise DataError(f"shard {path} listed in the manifest does not exist") from e
    if digest.hexdigest() != sha256:
        raise DataError(f"shard {path}: SHA-256 {digest.hexdigest()} differs from the manifest's {sha256}")


def map_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed ``.npz`` (as :func:`npz_bytes` writes) as read-only memory maps."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
            for info in zf.infolist():
                if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                    raise DataError(f"shard {path}: member {info.filename} is not an uncompressed .npy")
                f.seek(info.header_offset)
                local = f.read(30)  # the zip local file header; the name and extra field follow it
                f.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little")
                       + int.from_bytes(local[28:30], "little"))
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f)
                if dtype.hasobject:
                    raise DataError(f"shard {path}: {info.filename} holds objects; shards never do")
                key = info.filename[:-4]
                arrays[key] = (np.memmap(f, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                                         order="F" if fortran else "C")
                               if np.prod(shape) > 0 else np.zeros(shape, dtype=dtype))
    except FileNotFoundError as e:
        raise DataError(f"shard {path} listed in the manifest does not exist") from e
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"shard {path} is corrupt: {e}") from e
    return arrays


class ChannelStats:
    """Running per-channel mean and std of uint8 images scaled to [0, 1], from exact integer histograms.

    ``counts[c, v]`` (``(C, 256)`` int64) counts the pixels of channel ``c`` with value ``v``. The counts are
    exact (int64 holds up to 2**63 - 1 pixels per channel), so they, and the statistics computed from them
    with Python integers in :meth:`result`, do not depend on how the images are grouped or ordered: adding
    them one by one or in blocks gives the same floats.
    """

    PIECE_PIXELS = 1 << 20  # np.bincount copies its input as intp: large blocks go in pieces of this many

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None  # (C, 256) int64

    def add(self, images: np.ndarray) -> None:
        """Add a block of ``(n, H, W, C)`` uint8 images (any other dtype or rank is a :class:`DataError`)."""
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(f"channel statistics need (n, H, W, C) uint8 images, got shape {images.shape} "
                            f"dtype {images.dtype}")
        pixels = images.reshape(-1, images.shape[-1])  # (n*H*W, C)
        if self.counts is None:
            self.counts = np.zeros((pixels.shape[1], 256), np.int64)
        if pixels.shape[1] != len(self.counts):
            raise DataError(f"channel statistics: images with {pixels.shape[1]} channels added to "
                            f"statistics of {len(self.counts)} channels")
        for start in range(0, len(pixels), self.PIECE_PIXELS):
            piece = pixels[start:start + self.PIECE_PIXELS]
            for c in range(pixels.shape[1]):  # one channel at a time: faster than offset indices
                self.counts[c] += np.bincount(piece[:, c], minlength=256)

    def result(self) -> tuple[list[float], list[float]]:
        """Per-channel ``(mean, std)``, two lists of C floats, of the pixel values / 255 added so far.

        With N pixels, S1 = sum(v) and S2 = sum(v**2) of a channel's values v (exact Python integers):
        mean = S1 / (255 N), the float nearest the exact mean; std = sqrt(var) of the float nearest the exact
        variance var = (N S2 - S1**2) / (255 N)**2, so within one unit in the last place of the exact std.
        """
        if self.counts is None or not self.counts.any():
            raise DataError("channel statistics of no images")
        means, stds = [], []
        for row in self.counts.tolist():  # Python ints: the sums cannot overflow
            n = sum(row)
            s1 = sum(v * k for v, k in enumerate(row))
            s2 = sum(v * v * k for v, k in enumerate(row))
            means.append(s1 / (255 * n))  # int / int: correctly rounded
            stds.append(math.sqrt((n * s2 - s1 * s1) / (255 * n) ** 2))  # N S2 - S1**2 >= 0 (Cauchy-Schwarz)
        return means, stds


def channel_stats(image_blocks: Iterable[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel ``(mean, std)`` (lists of C floats) of images scaled to [0, 1], over blocks of
    ``(n, H, W, C)`` uint8 images (see :class:`ChannelStats`: the same however the images are blocked)."""
    stats = ChannelStats()
    for block in image_blocks:
        stats.add(block)
    return stats.result()
