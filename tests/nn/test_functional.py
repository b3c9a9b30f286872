import numpy as np
import pytest

from xpvision.backend import to_numpy
from xpvision.nn import functional as F


def test_conv_output_size_formula():
    assert F.conv_output_size(28, 3, 1, 1) == 28
    assert F.conv_output_size(14, 3, 1, 2) == 16
    assert F.conv_output_size(7, 3, 2, 1) == 4
    assert F.conv_output_size(10, 3, 1, 0, dilation=2) == 6  # (10 - 2*2 - 1) + 1


def test_layout_helpers_round_trip(rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    x4 = F.nhwc(x)
    assert x4.shape == (2, 4, 5, 3) and x4.flags.c_contiguous
    back = F.nchw(x4)
    np.testing.assert_array_equal(back, x)
    assert F.nhwc(back).base is x4 or np.shares_memory(F.nhwc(back), x4)  # no copy for channels-last input


def test_im2col_matches_a_direct_loop(xp, rng):
    x = xp.asarray(rng.standard_normal((2, 6, 7, 3)).astype(np.float32))  # (N, H, W, C)
    kernel, stride, dilation = (2, 3), (2, 1), (1, 2)
    oh = F.conv_output_size(6, 2, 2, 0, 1)
    ow = F.conv_output_size(7, 3, 1, 0, 2)
    cols = F.im2col(x, kernel, stride, dilation, (oh, ow))
    assert cols.shape == (2 * oh * ow, 2 * 3 * 3)
    cols = cols.reshape(2, oh, ow, 2, 3, 3)
    for n, i, j, a, b in [(0, 0, 0, 0, 0), (1, oh - 1, ow - 1, 1, 2), (1, 1, 2, 1, 1)]:
        np.testing.assert_array_equal(to_numpy(cols[n, i, j, a, b]), to_numpy(x[n, i * 2 + a, j + 2 * b]))


def test_pad_reuses_buffer_and_keeps_border(rng):
    x = rng.standard_normal((1, 3, 3, 2)).astype(np.float32)
    first = F.pad_nhwc(x, (1, 2))
    assert first.shape == (1, 5, 7, 2) and first[:, 0].sum() == 0 and first[:, :, :2].sum() == 0
    second = F.pad_nhwc(x * 2, (1, 2), out=first)
    assert second is first
    np.testing.assert_array_equal(second[:, 1:4, 2:5], x * 2)
    assert F.pad_nhwc(x, (0, 0)) is x


def test_weight_matrix_round_trip(rng):
    w = rng.standard_normal((4, 3, 2, 5)).astype(np.float32)
    w_mat = F.conv_weight_matrix(w)
    assert w_mat.shape == (2 * 5 * 3, 4)
    np.testing.assert_array_equal(F.conv_weight_from_matrix(w_mat, (2, 5)), w)


def test_weights_kept_in_storage_layout_give_their_matrix_without_a_copy(rng):
    w = rng.standard_normal((4, 3, 2, 5)).astype(np.float32)
    kept = F.conv_weight_storage(w)
    np.testing.assert_array_equal(kept, w)
    w_mat = F.conv_weight_matrix(kept)
    assert np.shares_memory(w_mat, kept) and not np.shares_memory(F.conv_weight_matrix(w), w)
    np.testing.assert_array_equal(w_mat, F.conv_weight_matrix(w))


@pytest.mark.parametrize(("shape", "order", "dtype"), [
    ((F.MANY_ROWS, 11), "C", np.float32),  # by columns
    ((F.MANY_ROWS + 5, F.FEW_COLUMNS), "C", np.float64),  # by columns
    ((F.MANY_ROWS, F.FEW_COLUMNS + 1), "C", np.float32),  # too many columns: by rows
    ((F.MANY_ROWS - 1, 11), "C", np.float32),  # too few rows: by rows
    ((F.MANY_ROWS, 11), "F", np.float32),  # not C-contiguous: by rows
])
def test_amax_equals_numpy_max_on_both_paths(shape, order, dtype, rng):
    x = np.asarray(rng.standard_normal(shape), dtype=dtype, order=order)
    x[3, 5] = np.nan  # a NaN row stays NaN
    x[7] = -np.inf
    for axis in (1, -1, 0):
        expected = x.max(axis=axis, keepdims=True)
        got = F.amax(x, axis)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    assert np.isnan(F.amax(x, 1)[3, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_asum_adds_short_rows_column_by_column_with_numpys_bits(dtype, rng):
    for columns in range(2, F.FEW_COLUMNS + 1):  # fewer than 8, 8 and more, several blocks of 8
        x = (rng.standard_normal((F.MANY_ROWS, columns)) * 10.0 ** rng.integers(-4, 5, (F.MANY_ROWS, columns))
             ).astype(dtype)  # magnitudes far apart: another order of additions rounds differently
        for axis in (1, -1, 0):
            np.testing.assert_array_equal(F.asum(x, axis), x.sum(axis=axis, keepdims=True))
    x = rng.standard_normal((F.MANY_ROWS - 1, 11)).astype(dtype)  # by rows
    np.testing.assert_array_equal(F.asum(x, 1), x.sum(axis=1, keepdims=True))


@pytest.mark.parametrize("size", [5, F.ZERO_ROW, 3 * F.ZERO_ROW + 7])  # remainder only, rows only, both
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_in_place_has_the_bits_of_maximum_with_zero(size, dtype, rng):
    x = rng.standard_normal(size).astype(dtype)
    x[:4] = [np.nan, -0.0, np.inf, -np.inf]
    x = x.reshape(-1, 1)  # any contiguous shape
    expected = np.maximum(x, 0)
    got = F.relu_(x)
    assert got is x
    assert got.tobytes() == expected.tobytes()  # NaN and the sign of zero included


def test_relu_in_place_of_a_strided_view_writes_the_view_alone(rng):
    base = rng.standard_normal((6, 8)).astype(np.float32)
    expected = base.copy()
    expected[:, ::2] = np.maximum(expected[:, ::2], 0)
    F.relu_(base[:, ::2])
    np.testing.assert_array_equal(base, expected)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_and_log_softmax(axis, xp, rng):
    x = xp.asarray(rng.standard_normal((3, 4)) * 50)
    p = F.softmax(x, axis)
    np.testing.assert_allclose(to_numpy(p.sum(axis=axis)), 1.0, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(F.log_softmax(x, axis)), to_numpy(xp.log(p)), atol=1e-9)
    big = F.log_softmax(xp.asarray([[1000.0, 0.0]]), axis=1)
    np.testing.assert_allclose(to_numpy(big), [[0.0, -1000.0]])


GPU = object()  # any array module other than NumPy takes the GPU sizing


@pytest.mark.parametrize("n, rows, k", [(1000, 784, 146), (1000, 196, 289), (256, 49, 577), (3, 784, 10)])
def test_gpu_chunks_bound_the_im2col_matrix(n, rows, k):
    """DeepConvNet's second convolution at batch 1000 would need a 455 MB im2col matrix in one piece."""
    block, chunk = F.block_and_chunk(n, rows, GPU, k)
    assert block == n  # one block: the GPU runs it on the caller's thread
    assert chunk * rows * k <= max(F.GPU_CHUNK_ELEMENTS, rows * k)  # at most one sample over the bound
    pieces = -(-n // chunk)
    assert chunk == -(-n // pieces)  # equal chunks
    if n * rows * k > F.GPU_CHUNK_ELEMENTS:
        assert pieces > 1


@pytest.mark.parametrize("n, rows, k", [(100, 784, 146), (256, 49, 577), (1000, 196, 289), (7, 49, 577)])
def test_cpu_blocks_depend_on_shapes_alone(n, rows, k):
    from xpvision.nn import parallel

    sizes = set()
    try:
        for threads in (1, 2, 3, 16):
            parallel.set_num_threads(threads)
            sizes.add(F.block_and_chunk(n, rows, np, k))
    finally:
        parallel.set_num_threads(None)
    ((block, chunk),) = sizes
    assert 1 <= chunk <= block <= n
    assert block * rows <= max(F.BLOCK_ROWS, chunk * rows)  # about BLOCK_ROWS rows, at least one chunk
