"""MNIST IDX files: read (gzipped or plain, detected by content) and write (gzip, byte-for-byte reproducible).

IDX layout: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then each dimension as a
big-endian int32, then the data in C order. MNIST images are ``idx3`` ``(N, 28, 28)``, labels ``idx1``
``(N,)``.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xpvision.atomic import write_bytes
from xpvision.errors import DataError

_UBYTE = 0x08
SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DIGIT_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or plain) into a uint8 array of the shape its header declares.

    Raises:
        DataError: unreadable gzip, bad magic, unsupported type code, or a size that disagrees with the
        header.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"IDX file {path}: gzip data is corrupt or truncated ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"IDX file {path}: bad magic number {raw[:4].hex()}; expected 0000 08 0N")
    if raw[2] != _UBYTE:
        raise DataError(f"IDX file {path}: type code 0x{raw[2]:02x} is not supported; expected 0x08 (uint8)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"IDX file {path}: header declares {ndim} dimensions but the file has {len(raw)} "
                        "bytes")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    if any(d < 0 for d in shape):
        raise DataError(f"IDX file {path}: header declares impossible dimensions {shape}")
    expected = header + math.prod(shape)  # Python ints: no overflow for huge declared shapes
    if len(raw) != expected:
        raise DataError(f"IDX file {path}: header shape {shape} needs {expected} bytes, the file has "
                        f"{len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array as IDX bytes (header + C-order data)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise DataError(f"IDX writer: expected a uint8 array, got {array.dtype}")
    header = bytes([0, 0, _UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + array.tobytes()


def write_idx_gz(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as a gzipped IDX file atomically; ``mtime=0`` and no name in the header: same bytes
    always."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(idx_bytes(array))
    write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class ClassificationArrays:
    """Images ``(N, H, W, C)`` uint8 and labels ``(N,)`` int64, with class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]


def load_mnist_split(folder: str | os.PathLike, split: str, classes: tuple[str, ...] = DIGIT_CLASSES
                     ) -> ClassificationArrays:
    """Read the ``train`` or ``test`` split of an MNIST-layout folder (``.gz`` or plain files).

    Returns images ``(N, 28, 28, 1)`` uint8 and labels ``(N,)`` int64.
    """
    if split not in SPLIT_FILES:
        raise DataError(f"MNIST split {split!r} unknown; expected one of {sorted(SPLIT_FILES)}")
    folder = Path(folder)
    image_name, label_name = SPLIT_FILES[split]
    return load_mnist_files(_find(folder, image_name), _find(folder, label_name), classes)


def load_mnist_files(image_path: str | os.PathLike, label_path: str | os.PathLike,
                     classes: tuple[str, ...] = DIGIT_CLASSES) -> ClassificationArrays:
    """Read one split from its image and label IDX files (``.gz`` or plain, wherever they are).

    Returns images ``(N, H, W, 1)`` uint8 and labels ``(N,)`` int64.
    """
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"MNIST {image_path}: expected idx3 images and idx1 labels ({label_path}), got "
                        f"{images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"MNIST {image_path}: {len(images)} images but {len(labels)} labels in {label_path}")
    if labels.size and int(labels.max()) >= len(classes):
        raise DataError(f"MNIST {label_path}: label {int(labels.max())} >= {len(classes)} classes")
    return ClassificationArrays(images[..., None], labels.astype(np.int64), tuple(classes))  # (N, H, W, 1)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"MNIST folder {folder}: missing {stem}.gz (or {stem})")
