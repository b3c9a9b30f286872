"""The seam: every kernel of the tuned engine against the textbook reference on random inputs, and the layers
giving the same results under either engine setting.

Tolerances: the two engines add the same products in different orders (chunked GEMMs, the bias folded into
the GEMM, per-block weight-gradient sums, GEMV channel sums), so results agree to rounding: relative 1e-10 in
float64, 2e-5 of the largest magnitude in float32. Pooling and ReLU choose the same elements (bit-identical
masks), which the float64 comparisons would show as O(1) errors otherwise.
"""

import numpy as np
import pytest

from xpvision.errors import ConfigError
from xpvision.nn import BatchNorm2d, Conv2d, ConvTranspose2d, MaxPool2d, ReLU, Sequential, engine, rng
from xpvision.nn.convblock import ConvGeometry, Scratch
from xpvision.nn.functional import conv_output_size

from .kernels import backward_grads

TOL = {np.float64: 1e-10, np.float32: 2e-5}


@pytest.fixture
def default_engine(monkeypatch):
    monkeypatch.delenv(engine.ENV_ENGINE, raising=False)
    engine.set_engine(None)
    yield
    engine.set_engine(None)


def assert_close(actual, expected, dtype, what):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOL[dtype] * scale, err_msg=what)


def _geometry(x, kernel, stride, padding, dilation):
    out_hw = tuple(conv_output_size(s, k, st, p, d) for s, k, st, p, d in
                   zip(x.shape[1:3], kernel, stride, padding, dilation, strict=True))
    return ConvGeometry(kernel, stride, dilation, padding, x.shape[1:3], out_hw)


CONV_CASES = [  # (N, H, W, I), O, kernel, stride, padding, dilation
    ((3, 9, 8, 4), 5, (3, 3), (1, 1), (1, 1), (1, 1)),
    ((2, 7, 9, 3), 6, (3, 3), (1, 1), (1, 1), (1, 1)),  # odd output: a row and a column outside the pool
    ((2, 10, 11, 2), 4, (3, 3), (2, 2), (1, 1), (1, 1)),  # stride 2: col2im input gradient
    ((2, 12, 12, 3), 4, (3, 3), (1, 1), (2, 2), (2, 2)),  # dilation
    ((2, 8, 9, 1), 3, (5, 3), (1, 1), (2, 1), (1, 1)),  # one channel (tap-major im2col), rectangular kernel
    ((2, 6, 6, 3), 4, (3, 3), (1, 1), (3, 3), (1, 1)),  # padding > kernel - 1
    ((40, 28, 28, 16), 16, (3, 3), (1, 1), (1, 1), (1, 1)),  # many chunks and blocks, several threads
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("tail", ["", "relu", "pool", "relu+pool"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c[0]) for c in CONV_CASES])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_conv2d_kernels_match(case, tail, dtype, bias, training):
    shape, o, kernel, stride, padding, dilation = case
    rs = np.random.default_rng(sum(shape) + o)
    x = rs.standard_normal(shape).astype(dtype)
    x[0, :3, :3] = 0  # ties in the pool windows and dead ReLUs
    w = rs.standard_normal((o, shape[3], *kernel)).astype(dtype)
    b = rs.standard_normal(o).astype(dtype) if bias else None
    geom = _geometry(x, kernel, stride, padding, dilation)
    relu, pool = "relu" in tail, "pool" in tail
    results = {}
    for name in engine.ENGINES:
        y, saved = engine.kernel("conv2d", name)(x, w, b, geom, relu=relu, pool=pool, training=training,
                                                 scratch=Scratch())
        dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
        grads = backward_grads(engine.kernel("conv2d_backward", name), dy, saved, w.shape,
                               b.shape if bias else None, need_input=True, scratch=Scratch())
        results[name] = (np.array(y), *(None if g is None else np.array(g) for g in grads))
    for what, ref, tuned in zip(("y", "dx", "dw", "db"), results["reference"], results["tuned"],
                                strict=True):
        assert (ref is None) == (tuned is None) == (what == "db" and not bias)
        if ref is not None:
            assert ref.shape == tuned.shape and ref.dtype == tuned.dtype == dtype, what
            assert_close(tuned, ref, dtype, what)


TRANSPOSED_CASES = [  # (N, H, W, I), O, kernel, stride, padding
    ((2, 5, 4, 3), 4, (4, 4), (2, 2), (1, 1)),
    ((2, 6, 7, 2), 3, (3, 3), (1, 1), (1, 1)),
    ((1, 4, 5, 3), 2, (3, 5), (3, 2), (0, 2)),
    ((2, 4, 4, 2), 2, (2, 2), (2, 2), (2, 1)),  # padding > kernel - 1: the spread input is cropped
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", TRANSPOSED_CASES, ids=[str(c[0]) for c in TRANSPOSED_CASES])
@pytest.mark.parametrize("frozen", [False, True])
def test_conv_transpose2d_kernels_match(case, dtype, frozen):
    shape, o, kernel, stride, padding = case
    rs = np.random.default_rng(sum(shape))
    x = rs.standard_normal(shape).astype(dtype)
    w = rs.standard_normal((shape[3], o, *kernel)).astype(dtype)
    b = rs.standard_normal(o).astype(dtype)
    _compare_transposed(x, w, b, stride, padding, frozen, dtype)


@pytest.mark.parametrize("factor", [2, 8])
def test_frozen_bilinear_upsampling_kernels_match(factor):
    """The tuned engine's separable per-channel path against the reference's dense transposed convolution."""
    from xpvision.nn import init

    w = init.bilinear_upsampling_(ConvTranspose2d(3, 3, 2 * factor, stride=factor,
                                                  padding=factor // 2)).params["W"].astype(np.float64)
    x = np.random.default_rng(0).standard_normal((2, 5, 4, 3))
    _, saved = _compare_transposed(x, w, np.zeros(3), (factor, factor), (factor // 2, factor // 2), True,
                                   np.float64)
    assert isinstance(saved[2], list)  # the tuned kernel took the separable path


def _upsampling(w, x, stride, padding, frozen):
    """What ConvTranspose2d hands its kernel: the 1-D matrices of a frozen separable ``w``, else ``None``."""
    if not frozen:
        return None
    layer = ConvTranspose2d(w.shape[0], w.shape[1], w.shape[2:], stride=stride, padding=padding)
    layer.params["W"] = w
    return layer._frozen_matrices(x.shape[1:3], x.dtype)


def _compare_transposed(x, w, b, stride, padding, frozen, dtype):
    results, tuned_saved = {}, None
    for name in engine.ENGINES:
        upsampling = _upsampling(w, x, stride, padding, frozen)
        y, saved = engine.kernel("conv_transpose2d", name)(x, w, b, stride, padding, upsampling=upsampling,
                                                           scratch=Scratch())
        dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
        grads = backward_grads(engine.kernel("conv_transpose2d_backward", name), dy, saved, w.shape,
                               (w.shape[1],), scratch=Scratch())
        results[name] = [np.array(a) for a in (y, *grads)]
        tuned_saved = saved if name == "tuned" else tuned_saved
    expected_shape = tuple((n - 1) * s - 2 * p + k for n, k, s, p in zip(
        x.shape[1:3], w.shape[2:], stride, padding, strict=True))
    assert results["reference"][0].shape == (x.shape[0], *expected_shape, w.shape[1])
    for what, ref, tuned in zip(("y", "dx", "dw", "db"), results["reference"], results["tuned"],
                                strict=True):
        assert ref.shape == tuned.shape and ref.dtype == tuned.dtype == dtype, what
        assert_close(tuned, ref, dtype, what)
    return results, tuned_saved


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_kernels_match(dtype, training):
    rs = np.random.default_rng(3)
    x2 = (rs.standard_normal((4 * 9 * 9, 12)) * 3 + 1).astype(dtype)
    gamma, beta = rs.standard_normal(12).astype(dtype), rs.standard_normal(12).astype(dtype)
    dy2 = rs.standard_normal(x2.shape).astype(dtype)
    results = {}
    for name in engine.ENGINES:
        running = [rs.standard_normal(12).astype(dtype) * 0 + 0.5, np.full(12, 2.0, dtype)]
        y2, saved = engine.kernel("batch_norm", name)(x2, gamma, beta, *running, momentum=0.1, eps=1e-5,
                                                      training=training)
        grads = engine.kernel("batch_norm_backward", name)(dy2, saved, gamma)
        results[name] = [np.array(a) for a in (y2, *grads, *running)]
    for what, ref, tuned in zip(("y", "dx", "dgamma", "dbeta", "running_mean", "running_var"),
                                results["reference"], results["tuned"], strict=True):
        assert ref.dtype == tuned.dtype == dtype, what
        assert_close(tuned, ref, dtype, what)
    if training:  # the running statistics moved
        assert not np.allclose(results["tuned"][4], 0.5)


def _model():
    return Sequential(Conv2d(3, 8, 3, padding=1), BatchNorm2d(8), ReLU(), Conv2d(8, 8, 3, padding=1), ReLU(),
                      MaxPool2d(2), Conv2d(8, 4, 3, stride=2), ConvTranspose2d(4, 3, 4, stride=2, padding=1))


@pytest.mark.parametrize("training", [True, False])
def test_layers_give_the_same_results_under_either_engine(default_engine, training):
    x = np.random.default_rng(0).standard_normal((6, 3, 14, 14))
    results = {}
    for name in engine.ENGINES:
        engine.set_engine(name)
        rng.manual_seed(0)
        model = _model().astype(np.float64)
        model.train(training)
        y = model.forward(x)
        dx = model.backward(np.ones_like(y))
        grads = {n: layer.grads[k].copy() for n, layer, k in model.named_parameters()}
        results[name] = (np.array(y), np.array(dx), grads)
    (y_r, dx_r, g_r), (y_t, dx_t, g_t) = results["reference"], results["tuned"]
    assert_close(y_t, y_r, np.float64, "y")
    assert_close(dx_t, dx_r, np.float64, "dx")
    for name in g_r:
        assert_close(g_t[name], g_r[name], np.float64, name)


def test_engine_setting(default_engine, monkeypatch):
    assert engine.get_engine() == "tuned"
    monkeypatch.setenv(engine.ENV_ENGINE, "reference")
    engine.set_engine(None)
    assert engine.get_engine() == "reference"
    engine.set_engine("tuned")  # the setting wins over the environment
    assert engine.get_engine() == "tuned"
    with pytest.raises(ConfigError, match="engine: expected one of reference, tuned"):
        engine.set_engine("fast")
    monkeypatch.setenv(engine.ENV_ENGINE, "fast")
    engine.set_engine(None)
    with pytest.raises(ConfigError, match="XPVISION_ENGINE: expected one of reference, tuned, got 'fast'"):
        engine.get_engine()


def test_every_kernel_has_both_implementations():
    for name in engine.KERNELS:
        assert engine.kernel(name, "reference") is not engine.kernel(name, "tuned")
