"""The offline default classification data: scikit-learn's 1,797 real handwritten 8x8 digits as MNIST files.

Each 8x8 digit (values 0-16) is scaled to 0-255, resized to ``digit_size`` pixels with bilinear interpolation
and centred in a ``size`` canvas (MNIST puts 20x20 digits in 28x28), then split train/test with a seeded
stratified split and written as gzipped IDX files in MNIST's names, so
:func:`xpvision.data.mnist.load_mnist_split` reads them. No download; the same bytes on every run (gzip
``mtime = 0``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from xpvision.data.mnist import SPLIT_FILES, write_idx_gz
from xpvision.errors import ConfigError


def render_digits(size: int = 28, digit_size: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 scikit-learn digits as ``(N, size, size)`` uint8 images (ink = high) and ``(N,)`` uint8
    labels."""
    from sklearn.datasets import load_digits

    if not 8 <= digit_size <= size:
        raise ConfigError(f"digits: digit_size {digit_size} must be between 8 and size {size}")
    bunch = load_digits()
    images = bunch.images.astype(np.float32) * (255.0 / 16.0)  # (N, 8, 8) in 0..255
    offset = (size - digit_size) // 2
    out = np.zeros((len(images), size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        big = Image.fromarray(image, mode="F").resize((digit_size, digit_size), Image.BILINEAR)
        inner = slice(offset, offset + digit_size)
        out[i, inner, inner] = np.clip(np.rint(np.asarray(big)), 0, 255)
    return out, bunch.target.astype(np.uint8)


def write_digits(out_dir: str | os.PathLike, *, seed: int = 0, test_fraction: float = 0.2, size: int = 28,
                 digit_size: int = 20) -> dict[str, int]:
    """Write the digits as ``train-images-idx3-ubyte.gz`` etc. into ``out_dir``; return the split sizes.

    The split is stratified by class (``sklearn.model_selection.train_test_split`` with
    ``random_state=seed``).
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"digits: test_fraction must be in (0, 1), got {test_fraction}")
    images, labels = render_digits(size, digit_size)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction, random_state=seed,
                                           stratify=labels)
    out_dir = Path(out_dir)
    counts = {}
    for split, idx in (("train", np.sort(train_idx)), ("test", np.sort(test_idx))):
        image_name, label_name = SPLIT_FILES[split]
        write_idx_gz(out_dir / f"{image_name}.gz", images[idx])
        write_idx_gz(out_dir / f"{label_name}.gz", labels[idx])
        counts[split] = len(idx)
    return counts
