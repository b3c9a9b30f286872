"""IDX files: round trip (gzipped and plain), header checks, MNIST folders."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from xpvision.data.mnist import idx_bytes, load_mnist_split, read_idx, write_idx_gz
from xpvision.errors import DataError

from .builders import write_mnist_files


def test_idx_round_trip_gz_and_plain(tmp_path, rng):
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    write_idx_gz(tmp_path / "a.gz", images)
    (tmp_path / "a").write_bytes(idx_bytes(images))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), images)
    raw = (tmp_path / "a").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:8] == (7).to_bytes(4, "big")


def test_gz_writer_is_byte_reproducible(tmp_path, rng):
    labels = rng.integers(0, 10, 50, dtype=np.uint8)
    write_idx_gz(tmp_path / "a.gz", labels)
    write_idx_gz(tmp_path / "b.gz", labels)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


@pytest.mark.parametrize("mutate, message", [
    (lambda raw: b"\x01\x00" + raw[2:], "bad magic"),
    (lambda raw: raw[:2] + b"\x0d" + raw[3:], "type code"),
    (lambda raw: raw[:-1], "needs"),
    (lambda raw: raw + b"\x00", "needs"),
    (lambda raw: raw[:6], "dimensions"),
])
def test_bad_headers_are_clear_errors(tmp_path, rng, mutate, message):
    raw = idx_bytes(rng.integers(0, 256, (2, 3, 4), dtype=np.uint8))
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(mutate(raw))
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_is_a_clear_error(tmp_path, rng):
    data = gzip.compress(idx_bytes(rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)))
    path = tmp_path / "t.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="gzip"):
        read_idx(path)


def test_load_mnist_split_reads_the_official_layout(tmp_path):
    arrays = write_mnist_files(tmp_path)
    train = load_mnist_split(tmp_path, "train")
    assert train.images.shape == (12, 28, 28, 1) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64
    np.testing.assert_array_equal(train.images[..., 0], arrays["train"][0])
    np.testing.assert_array_equal(train.labels, arrays["train"][1])
    test = load_mnist_split(tmp_path, "test")
    np.testing.assert_array_equal(test.images[..., 0], arrays["t10k"][0])


def test_mismatched_counts_and_missing_files(tmp_path, rng):
    write_mnist_files(tmp_path)
    write_idx_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 3, dtype=np.uint8))
    with pytest.raises(DataError, match="5 images but 3 labels"):
        load_mnist_split(tmp_path, "test")
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte"):
        load_mnist_split(tmp_path, "train")
