import numpy as np
import pytest

from xpvision import backend
from xpvision.errors import ConfigError, ShapeError
from xpvision.nn import AvgPool2d, GlobalAvgPool2d, MaxPool2d, build_layer, engine, pooling
from xpvision.nn import functional as F

TOL = 1e-4

POOL_CASES = [  # (kernel, stride, padding, input shape)
    (2, None, 0, (2, 3, 6, 8)),  # the usual 2x2
    (2, None, 0, (1, 2, 7, 5)),  # odd sizes: last row/col dropped
    (3, 2, 1, (2, 2, 7, 6)),  # overlapping, padded
    (3, 1, 1, (1, 2, 5, 5)),  # heavily overlapping
    ((2, 3), (1, 2), (1, 1), (2, 2, 5, 7)),  # non-square
]


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
@pytest.mark.parametrize("case", POOL_CASES)
def test_pool_gradients(cls, case, check_layer_grads, rng):
    k, s, p, shape = case
    check_layer_grads(cls(k, s, p), rng.standard_normal(shape))


@pytest.mark.parametrize("cls, fn", [(MaxPool2d, "max_pool2d"), (AvgPool2d, "avg_pool2d")])
@pytest.mark.parametrize("case", POOL_CASES)
def test_pool_matches_torch(cls, fn, case, torch, rng):
    k, s, p, shape = case
    x = rng.standard_normal(shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch.nn.functional, fn)(xt, k, s, p)
    dout = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dout))
    layer = cls(k, s, p)
    y = layer.forward(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), atol=TOL, rtol=0)


def test_max_pool_ties_route_to_first_maximum_like_torch(torch):
    x = np.zeros((1, 1, 4, 4), np.float32)  # every window is a 4-way tie
    x[0, 0, 3, 3] = 1.0
    dout = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(xt, 2).backward(torch.tensor(dout))
    layer = MaxPool2d(2)
    layer.forward(x)
    dx = layer.backward(dout)
    np.testing.assert_array_equal(dx, xt.grad.numpy())
    assert dx[0, 0, 0, 0] == 1 and dx[0, 0, 0, 1] == 0  # first of the tie, not all of them


def test_global_avg_pool(check_layer_grads, rng):
    x = rng.standard_normal((3, 4, 5, 2)).astype(np.float32)
    layer = GlobalAvgPool2d()
    y = layer.forward(x)
    assert y.shape == (3, 4)
    np.testing.assert_allclose(y, x.mean(axis=(2, 3)), atol=1e-6)
    check_layer_grads(GlobalAvgPool2d(), rng.standard_normal((2, 3, 3, 4)))


def test_pool_bad_input_and_config():
    with pytest.raises(ShapeError, match=r"MaxPool2d expected input \(N, C, H, W\), got \(3, 4, 4\)"):
        MaxPool2d(2).forward(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ShapeError, match="smaller than its kernel"):
        AvgPool2d(3).forward(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ConfigError, match="at most half the kernel"):
        MaxPool2d(2, padding=2)
    with pytest.raises(ShapeError, match=r"GlobalAvgPool2d.backward expected dout \(1, 2\)"):
        layer = GlobalAvgPool2d()
        layer.forward(np.zeros((1, 2, 3, 3), np.float32))
        layer.backward(np.zeros((1, 3), np.float32))


def test_pool_spec_round_trip():
    for layer in (MaxPool2d(3, 2, 1), AvgPool2d((2, 3), 1), GlobalAvgPool2d()):
        clone = build_layer(layer.spec())
        assert type(clone) is type(layer) and clone.spec() == layer.spec()
    assert MaxPool2d(2).config() == {"kernel_size": 2, "stride": 2, "padding": 0}


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool_evaluation_then_backward_equals_training(case, rng):
    """In evaluation the 2x2 pool keeps no index (the backward recomputes it): same output and gradient, ties
    included."""
    k, s, p, shape = case
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, :, :2, :4] = 0  # ties
    dout = rng.standard_normal(MaxPool2d(k, s, p).forward(x).shape).astype(np.float32)
    results = []
    for training in (True, False):
        layer = MaxPool2d(k, s, p).train(training)
        results.append((layer.forward(x).copy(), layer.backward(dout)))
        index_kept = layer._cache[1] is not None
        assert index_kept == (training or engine.get_engine() == "reference")  # the tuned pools keep none
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


TAP_CASES = [  # (kernel, stride, padding, (N, H, W, C))
    ((3, 3), (2, 2), (1, 1), (3, 9, 8, 5)),  # a ResNet stem's pool
    ((3, 3), (1, 1), (1, 1), (2, 6, 7, 3)),  # every input in nine windows
    ((2, 3), (1, 2), (1, 1), (2, 5, 7, 2)),  # non-square
    ((2, 2), (1, 1), (0, 0), (2, 5, 5, 4)),  # 2x2, overlapping: not the fused 2x2 stride-2 kernel
    ((4, 4), (4, 4), (2, 2), (2, 10, 9, 3)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", TAP_CASES, ids=[str(c[:3]) for c in TAP_CASES])
def test_tuned_max_pool_equals_the_reference_bit_for_bit(xp, case, dtype, monkeypatch):
    """Ties (small integers), NaN and -inf inputs, in several chunks of samples: the same maxima, the same
    index (first maximum; the first NaN) and the same gradient bits as the textbook kernels."""
    kernel, stride, padding, shape = case
    out_hw = tuple(F.conv_output_size(s, k, st, p) for s, k, st, p in
                   zip(shape[1:3], kernel, stride, padding, strict=True))
    monkeypatch.setattr(pooling, "POOL_CHUNK_ELEMENTS", 2 * out_hw[0] * out_hw[1] * shape[3])  # 2 samples
    data = np.random.default_rng(sum(shape))
    x = data.integers(-3, 3, shape).astype(dtype)  # many ties
    x[0, 1, 1, 0] = x[1, 2, 3, 1] = np.nan
    x[1, 0, 0, :] = x[0, -1, -1, 0] = -np.inf
    xpad = xp.asarray(F.pad_nhwc(x, padding, value=float("-inf")))
    y_ref, index_ref = engine.kernel("max_pool2d", "reference")(xpad, kernel, stride, out_hw)
    y, index = engine.kernel("max_pool2d", "tuned")(xpad, kernel, stride, out_hw, need_index=True)
    y_eval, none = engine.kernel("max_pool2d", "tuned")(xpad, kernel, stride, out_hw, need_index=False)
    assert none is None and index.dtype == index_ref.dtype == np.uint8
    for found in (y, y_eval):
        np.testing.assert_array_equal(backend.to_numpy(found), backend.to_numpy(y_ref))  # NaN where NaN
    np.testing.assert_array_equal(backend.to_numpy(index), backend.to_numpy(index_ref))
    dy = xp.asarray(data.standard_normal(y.shape).astype(dtype))
    dy[0, 0, 0, 0] = np.nan
    args = (xpad.shape[1:3], kernel, stride)
    dx_ref = engine.kernel("max_pool2d_backward", "reference")(dy, index_ref, *args)
    dx = engine.kernel("max_pool2d_backward", "tuned")(dy, index, *args)
    bits = f"u{np.dtype(dtype).itemsize}"
    np.testing.assert_array_equal(backend.to_numpy(dx).view(bits), backend.to_numpy(dx_ref).view(bits))

