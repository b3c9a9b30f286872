"""Winograd F(2x2, 3x3) (xpvision.nn.winograd): its transforms against the matrix formulas, its kernels
against the reference engine's im2col on random shapes, the same bits for any thread count, and where it is
chosen.

Tolerance: Winograd adds inputs before multiplying, so it rounds differently from im2col. Against the
reference: 1e-11 of the largest magnitude in float64, 1e-5 in float32 (measured here: both methods within
2e-6 of a float64 computation for 16-64 channels, Winograd no worse than im2col). The ReLU / pool cases run
on random normal data, where no output lies within rounding of zero or of its pool neighbours.
"""

import numpy as np
import pytest

from xpvision.errors import ConfigError
from xpvision.nn import Conv2d, MaxPool2d, ReLU, Sequential, convblock, engine, parallel, winograd
from xpvision.nn.convblock import ConvGeometry, Scratch
from xpvision.nn.functional import conv_output_size

from .kernels import backward_grads

TOL = {np.float64: 1e-11, np.float32: 1e-5}


@pytest.fixture
def mode(monkeypatch):
    """``mode(value)`` sets the Winograd mode for one test (the environment variable cleared)."""
    monkeypatch.delenv(winograd.ENV_MODE, raising=False)
    winograd.set_mode(None)  # forget a mode read from the environment earlier
    yield winograd.set_mode
    winograd.set_mode(None)


def assert_close(actual, expected, dtype, what):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOL[dtype] * scale, err_msg=what)


def geometry(hw, padding) -> ConvGeometry:
    out_hw = tuple(conv_output_size(s, 3, 1, p, 1) for s, p in zip(hw, padding, strict=True))
    return ConvGeometry((3, 3), (1, 1), (1, 1), padding, hw, out_hw)


# -- the transforms are the matrix formulas -----------------------------------------------------------------
def test_one_tile_is_the_3x3_correlation():
    rs = np.random.default_rng(0)
    d, g = rs.standard_normal((4, 4)), rs.standard_normal((3, 3))
    b_t, g_mat, a_t = winograd.B_T, winograd.G, winograd.A_T
    y = a_t @ ((g_mat @ g @ g_mat.T) * (b_t @ d @ b_t.T)) @ a_t.T
    direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(y, direct, rtol=1e-12, atol=1e-12)


def _tiles_of(xpad, th, tw):
    """``(m, TH, TW, 4, 4, C)``: the 4x4 input tile under each 2x2 output tile, by plain indexing."""
    return np.stack([np.stack([xpad[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4] for j in range(tw)], axis=1)
                     for i in range(th)], axis=1)


def test_input_transform_is_bt_d_b():
    rs = np.random.default_rng(1)
    m, th, tw, c = 2, 3, 4, 5
    xpad = rs.standard_normal((m, 2 * th + 2, 2 * tw + 2, c))
    xpar = np.empty((m, 2, 2, th + 1, tw + 1, c))
    winograd.to_parity(xpad, xpar, (0, 0))
    np.testing.assert_array_equal(xpar[:, 1, 0, 2, 3], xpad[:, 5, 6])  # xpar[p, q, i, j] = xpad[2i+p, 2j+q]
    v = np.empty((16, m, th, tw, c))
    winograd.input_transform(xpar, v, np.empty((4, m, 2, th + 1, tw, c)))
    tiles = _tiles_of(xpad, th, tw)  # (m, TH, TW, 4, 4, C)
    expected = np.einsum("ak,ntsklc,bl->abntsc", winograd.B_T, tiles, winograd.B_T)  # B^T d B per tile
    np.testing.assert_allclose(v, expected.reshape(v.shape), rtol=0, atol=1e-12)


def test_output_transforms_are_at_m_a_and_a_dy_at():
    rs = np.random.default_rng(2)
    n, th, tw, o = 2, 3, 2, 4
    m = rs.standard_normal((16, n, th, tw, o))
    taps = np.empty((4, n, th, tw, o))
    winograd.output_transform(m, taps, np.empty((2, 4, n, th, tw, o)))
    expected = np.einsum("ia,abntso,jb->ijntso", winograd.A_T, m.reshape(4, 4, n, th, tw, o), winograd.A_T)
    np.testing.assert_allclose(taps, expected.reshape(taps.shape), rtol=0, atol=1e-12)
    dy = rs.standard_normal((4, n, th, tw, o))
    dm = np.empty((16, n, th, tw, o))
    winograd.output_grad_transform(list(dy), dm, np.empty((4, 2, n, th, tw, o)))
    expected = np.einsum("ai,ijntso,bj->abntso", winograd.A, dy.reshape(2, 2, n, th, tw, o), winograd.A)
    np.testing.assert_allclose(dm, expected.reshape(dm.shape), rtol=0, atol=1e-12)


def test_weight_transforms_are_g_g_gt_and_its_transpose():
    rs = np.random.default_rng(3)
    w = rs.standard_normal((3, 2, 3, 3))  # (O, I, 3, 3)
    u = winograd.weight_transform(w)
    assert u.shape == (16, 2, 3)
    np.testing.assert_allclose(u[:, 1, 2].reshape(4, 4), winograd.G @ w[2, 1] @ winograd.G.T, atol=1e-12)
    du = rs.standard_normal((16, 2, 3))
    dw = winograd.weight_grad_transform(du)
    np.testing.assert_allclose(dw[2, 1], winograd.G.T @ du[:, 1, 2].reshape(4, 4) @ winograd.G, atol=1e-12)
    # the adjoint: <U(w), du> == <w, dW(du)>
    np.testing.assert_allclose(np.sum(u * du), np.sum(w * dw), rtol=1e-12)


# -- the kernels equal im2col's ------------------------------------------------------------------------------
def _random_cases(count: int, seed: int):
    """Random shapes: odd and even sizes down to the kernel's, 1-9 channels, padding 0-2 per axis."""
    rs = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        padding = tuple(int(p) for p in rs.integers(0, 3, 2))
        hw = tuple(int(s) for s in rs.integers(3, 14, 2))
        if min(conv_output_size(s, 3, 1, p, 1) for s, p in zip(hw, padding, strict=True)) >= 2:
            n, c, o = (int(v) for v in (rs.integers(1, 5), rs.integers(1, 10), rs.integers(1, 10)))
            cases.append((n, hw, c, o, padding))
    return cases


CASES = [  # (N, (H, W), I, O, padding)
    (3, (9, 8), 4, 5, (1, 1)), (2, (7, 9), 3, 6, (1, 1)), (2, (6, 6), 3, 4, (2, 2)),
    (2, (7, 5), 2, 3, (0, 0)), (2, (5, 8), 1, 4, (0, 2)), *_random_cases(10, seed=14)]


def run_kernels(conv, conv_backward, x, w, b, geom, relu, pool, training, need_input=True):
    y, saved = conv(x, w, b, geom, relu=relu, pool=pool, training=training, scratch=Scratch())
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    grads = backward_grads(conv_backward, dy, saved, w.shape, None if b is None else b.shape,
                           need_input=need_input, scratch=Scratch())
    return np.array(y), *(None if g is None else np.array(g) for g in grads)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("tail", ["", "relu", "pool", "relu+pool"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}x{c[2]}->{c[3]}p{c[4]}" for c in CASES])
def test_winograd_equals_the_reference(case, tail, dtype):
    n, hw, c, o, padding = case
    geom = geometry(hw, padding)
    relu, pool = "relu" in tail, "pool" in tail
    rs = np.random.default_rng(sum(hw) + c + o)
    x = rs.standard_normal((n, *hw, c)).astype(dtype)
    w = rs.standard_normal((o, c, 3, 3)).astype(dtype)
    for b, training in ((rs.standard_normal(o).astype(dtype), True), (None, False)):
        ref = run_kernels(engine.kernel("conv2d", "reference"), engine.kernel("conv2d_backward", "reference"),
                          x, w, b, geom, relu, pool, training)
        wino = run_kernels(winograd.conv2d, winograd.conv2d_backward, x, w, b, geom, relu, pool, training)
        for what, expected, actual in zip(("y", "dx", "dw", "db"), ref, wino, strict=True):
            assert (expected is None) == (actual is None) == (what == "db" and b is None), what
            if expected is not None:
                assert actual.shape == expected.shape and actual.dtype == dtype, what
                assert_close(actual, expected, dtype, f"{what} (bias {b is not None})")


def test_many_blocks_and_only_the_needed_gradients():
    """A batch cut into several blocks (DeepConvNet's conv6 shape); no input gradient asked."""
    rs = np.random.default_rng(5)
    x = rs.standard_normal((24, 8, 8, 64)).astype(np.float32)
    w = rs.standard_normal((64, 64, 3, 3)).astype(np.float32) * 0.05
    b = rs.standard_normal(64).astype(np.float32)
    geom = geometry((8, 8), (1, 1))
    assert len(parallel.BatchLayout(24).blocks) > 1
    reference = engine.kernel("conv2d", "reference"), engine.kernel("conv2d_backward", "reference")
    ref = run_kernels(*reference, x, w, b, geom, True, True, True, need_input=False)
    wino = run_kernels(winograd.conv2d, winograd.conv2d_backward, x, w, b, geom, True, True, True,
                       need_input=False)
    assert ref[1] is None and wino[1] is None
    for what, i in (("y", 0), ("dw", 2), ("db", 3)):
        assert_close(wino[i], ref[i], np.float32, what)


def test_input_gradient_alone():
    """A frozen layer: no weight or bias gradient, the input gradient as with them."""
    rs = np.random.default_rng(8)
    x = rs.standard_normal((3, 7, 6, 4))
    w, b = rs.standard_normal((5, 4, 3, 3)), rs.standard_normal(5)
    geom = geometry((7, 6), (1, 2))
    y, saved = winograd.conv2d(x, w, b, geom, relu=True, pool=False, training=True, scratch=Scratch())
    dy = rs.standard_normal(y.shape)
    dx = winograd.conv2d_backward(dy, saved, grads={}, need_input=True, scratch=Scratch())
    reference = engine.kernel("conv2d", "reference")
    ref_y, ref_saved = reference(x, w, b, geom, relu=True, pool=False, training=True)
    ref_dx = engine.kernel("conv2d_backward", "reference")(dy, ref_saved, grads={}, need_input=True)
    assert_close(y, ref_y, np.float64, "y")
    assert_close(dx, ref_dx, np.float64, "dx")


def test_the_same_bits_with_1_to_3_threads():
    rs = np.random.default_rng(6)
    x = rs.standard_normal((20, 14, 14, 32)).astype(np.float32)
    w = rs.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.05
    b = rs.standard_normal(32).astype(np.float32)
    geom = geometry((14, 14), (2, 2))
    results = {}
    try:
        for threads in (1, 2, 3):
            parallel.set_num_threads(threads)
            results[threads] = run_kernels(winograd.conv2d, winograd.conv2d_backward, x, w, b, geom, True,
                                           True, True)
    finally:
        parallel.set_num_threads(None)
    for threads in (2, 3):
        for expected, actual in zip(results[1], results[threads], strict=True):
            np.testing.assert_array_equal(actual, expected)


# -- where it is used ----------------------------------------------------------------------------------------
def test_applicable_geometries():
    assert winograd.applicable(geometry((8, 8), (1, 1)))
    assert winograd.applicable(geometry((8, 8), (0, 2)))
    assert not winograd.applicable(ConvGeometry((3, 3), (2, 2), (1, 1), (1, 1), (8, 8), (4, 4)))  # stride
    assert not winograd.applicable(ConvGeometry((3, 3), (1, 1), (2, 2), (2, 2), (8, 8), (8, 8)))  # dilation
    assert not winograd.applicable(ConvGeometry((5, 5), (1, 1), (1, 1), (2, 2), (8, 8), (8, 8)))  # kernel
    assert not winograd.applicable(ConvGeometry((3, 3), (1, 1), (1, 1), (3, 3), (8, 8), (12, 12)))  # padding


def test_chosen_by_mode_channels_and_tiles(mode):
    geom = geometry((8, 8), (1, 1))  # 4 x 4 tiles per image
    wide, auto = winograd.MIN_CHANNELS, winograd.AUTO_CHANNELS
    batch = winograd.AUTO_TILES // 16  # just enough tiles
    assert winograd.get_mode() == winograd.DEFAULT_MODE == "auto"
    assert winograd.chosen(geom, batch, auto, auto, np)
    assert not winograd.chosen(geom, batch - 1, auto, auto, np)
    assert not winograd.chosen(geom, batch, auto - 1, auto, np)
    assert not winograd.chosen(geom, batch, auto, auto - 1, np)
    mode("on")
    assert winograd.chosen(geom, 1, wide, 1, np)
    assert not winograd.chosen(geom, batch, wide - 1, auto, np)
    stride2 = ConvGeometry((3, 3), (2, 2), (1, 1), (1, 1), (8, 8), (4, 4))
    for setting in ("auto", "on"):
        mode(setting)
        assert not winograd.chosen(stride2, 4 * batch, auto, auto, np)
        assert not winograd.chosen(geom, batch, auto, auto, object())  # not NumPy: the GPU keeps im2col
    mode("off")
    assert not winograd.chosen(geom, batch, auto, auto, np)
    with pytest.raises(ConfigError, match="winograd mode: expected one of off, auto, on, got 'fast'"):
        mode("fast")


def test_mode_from_the_environment(mode, monkeypatch):
    monkeypatch.setenv(winograd.ENV_MODE, "on")
    mode(None)
    assert winograd.get_mode() == "on"
    mode("off")  # the setting wins over the environment
    assert winograd.get_mode() == "off"
    monkeypatch.setenv(winograd.ENV_MODE, "always")
    mode(None)
    with pytest.raises(ConfigError, match="XPVISION_WINOGRAD: expected one of off, auto, on, got 'always'"):
        winograd.get_mode()


@pytest.mark.parametrize("setting", ["off", "auto", "on"])
def test_layers_take_the_chosen_path_with_the_same_results(setting, mode, monkeypatch):
    """Through Conv2d and the tuned engine: each layer runs the method :func:`winograd.chosen` names, and the
    network's output and gradients match the reference engine's."""
    monkeypatch.delenv(engine.ENV_ENGINE, raising=False)
    monkeypatch.setattr(winograd, "AUTO_TILES", 18)  # conv4's: 2 images of 3 x 3 tiles
    mode(setting)
    net = Sequential(("conv1", Conv2d(3, 16, 3, padding=1)), ("relu1", ReLU()),
                     ("conv2", Conv2d(16, 32, 3, padding=2)), ("relu2", ReLU()), ("pool", MaxPool2d(2)),
                     ("conv3", Conv2d(32, 64, 3, padding=1)), ("conv4", Conv2d(64, 64, 3, padding=1)),
                     ("conv5", Conv2d(64, 64, 3, stride=2)))
    net.astype(np.float64)
    x = np.random.default_rng(7).standard_normal((2, 3, 10, 10))
    results = {}
    try:
        for kernels in ("reference", "tuned"):
            engine.set_engine(kernels)
            y = np.array(net.forward(x))
            dx = np.array(net.backward(np.ones_like(y)))
            grads = {name: np.array(layer.grads[key]) for name, layer, key in net.named_parameters()}
            results[kernels] = (y, dx, grads)
            if kernels == "tuned":
                methods = {name: layer._cache[1][0] for name, layer in net.named_layers()
                           if isinstance(layer, Conv2d)}
    finally:
        engine.set_engine(None)
    # conv1: 3 input channels; conv5: stride 2
    expected = {"off": set(), "auto": {"conv4"}, "on": {"conv2", "conv3", "conv4"}}[setting]
    assert {name for name, method in methods.items() if method is winograd} == expected
    assert all(method is convblock for name, method in methods.items() if name not in expected)
    (y, dx, grads), (y_t, dx_t, grads_t) = results["reference"], results["tuned"]
    assert_close(y_t, y, np.float64, "y")
    assert_close(dx_t, dx, np.float64, "dx")
    for name, grad in grads.items():
        assert_close(grads_t[name], grad, np.float64, name)


def test_parts_of_a_global_batch_give_the_bits_of_the_whole_batch():
    """Two processes' parts of a batch (simulated in one: each part's per-block sums are collected and added
    in block order as the processes' fold does) give the whole batch's output, input gradient and weight and
    bias gradients bit for bit."""
    rs = np.random.default_rng(11)
    x = rs.standard_normal((10, 8, 8, 16)).astype(np.float32)
    w = (rs.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32)
    b = rs.standard_normal(16).astype(np.float32)
    dy = rs.standard_normal((10, 4, 4, 16)).astype(np.float32)
    geom = geometry((8, 8), (1, 1))

    def run(layout, rows):
        with parallel.batch_layout(layout):
            y, saved = winograd.conv2d(x[rows], w, b, geom, relu=True, pool=True, training=True,
                                       scratch=Scratch())
            dx, dw, db = backward_grads(winograd.conv2d_backward, dy[rows], saved, w.shape, b.shape,
                                        need_input=True, scratch=Scratch())
        return y, dx, dw, db

    whole = run(parallel.BatchLayout(10), slice(0, 10))
    collected = []

    def collect(parts):
        collected.append(parts)
        return parts[0]  # stands in for the sum, which is formed below from every process's parts

    first = run(parallel.BatchLayout(10, 0, 5, processes=2, fold=collect), slice(0, 5))
    second = run(parallel.BatchLayout(10, 5, 5, processes=2, fold=collect), slice(5, 10))
    dw_parts, db_parts = collected[0] + collected[2], collected[1] + collected[3]
    np.testing.assert_array_equal(np.concatenate([first[0], second[0]]), whole[0])
    np.testing.assert_array_equal(np.concatenate([first[1], second[1]]), whole[1])
    np.testing.assert_array_equal(parallel.local_fold(dw_parts), whole[2])
    np.testing.assert_array_equal(parallel.local_fold(db_parts), whole[3])
