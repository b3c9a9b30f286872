import json

import numpy as np
import pytest

from xpvision.errors import ConfigError, ShapeError
from xpvision.nn import Conv2d, ConvTranspose2d, build_layer, init

TOL = 1e-4  # float32 parity with PyTorch

CONV_CASES = [  # (in, out, kernel, stride, padding, dilation, input shape)
    (2, 3, 3, 1, 0, 1, (2, 2, 6, 7)),
    (2, 3, 3, 2, 1, 1, (2, 2, 7, 6)),  # stride 2, odd size: last row/col unreached
    (3, 2, 3, 1, 2, 2, (1, 3, 7, 8)),  # dilation, batch 1
    (2, 4, (2, 3), (2, 1), (1, 0), 1, (2, 2, 5, 6)),  # non-square kernel/stride/padding
    (1, 2, 5, 3, 2, 1, (3, 1, 9, 9)),  # kernel 5 stride 3, one input channel (tap-major im2col)
    (1, 3, (3, 2), 1, (2, 1), (2, 1), (2, 1, 7, 8)),  # one input channel, dilation pair
    (3, 2, 1, 1, 0, 1, (2, 3, 4, 3)),  # 1x1
    (2, 2, 3, 1, 3, 1, (1, 2, 3, 3)),  # padding larger than needed: output larger than input
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradients(case, check_layer_grads, rng):
    c_in, c_out, k, s, p, d, shape = case
    layer = Conv2d(c_in, c_out, k, stride=s, padding=p, dilation=d)
    layer.params["b"][...] = rng.standard_normal(c_out)
    errors = check_layer_grads(layer, rng.standard_normal(shape))
    assert set(errors) == {"input", "W", "b"}


def test_conv2d_without_bias_has_no_b(check_layer_grads, rng):
    layer = Conv2d(2, 3, 3, padding=1, bias=False)
    assert "b" not in layer.params
    assert set(check_layer_grads(layer, rng.standard_normal((2, 2, 4, 5)))) == {"input", "W"}


TRANSPOSED_CASES = [  # (in, out, kernel, stride, padding, input shape)
    (2, 3, 3, 1, 0, (2, 2, 4, 5)),
    (2, 3, 4, 2, 1, (1, 2, 3, 4)),
    (3, 2, 3, 3, 1, (2, 3, 3, 3)),
    (2, 2, (2, 3), (2, 1), (0, 1), (2, 2, 3, 4)),
    (2, 2, 2, 2, 0, (2, 2, 2, 3)),
]


@pytest.mark.parametrize("case", TRANSPOSED_CASES)
def test_conv_transpose2d_gradients(case, check_layer_grads, rng):
    c_in, c_out, k, s, p, shape = case
    layer = ConvTranspose2d(c_in, c_out, k, stride=s, padding=p)
    layer.params["b"][...] = rng.standard_normal(c_out)
    assert set(check_layer_grads(layer, rng.standard_normal(shape))) == {"input", "W", "b"}


def _torch_pair(torch, layer, x, fn, **kwargs):
    """Run ``fn`` (torch.nn.functional) and the layer on ``x``, backpropagate the same random ``dout``; return
    (ours, theirs) tuples of (y, dx, dW, db)."""
    rng = np.random.default_rng(1)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.params["W"], requires_grad=True)
    bt = torch.tensor(layer.params["b"], requires_grad=True)
    yt = fn(xt, wt, bt, **kwargs)
    dout = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dout))
    y = layer.forward(x)
    dx = layer.backward(dout)
    ours = (y, dx, layer.grads["W"], layer.grads["b"])
    theirs = (yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy())
    return ours, theirs


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch(case, torch, rng):
    c_in, c_out, k, s, p, d, shape = case
    layer = Conv2d(c_in, c_out, k, stride=s, padding=p, dilation=d)
    layer.params["b"][...] = rng.standard_normal(c_out)
    x = rng.standard_normal(shape).astype(np.float32)
    ours, theirs = _torch_pair(torch, layer, x, torch.nn.functional.conv2d, stride=s, padding=p, dilation=d)
    for name, a, b in zip(("y", "dx", "dW", "db"), ours, theirs, strict=True):
        assert a.shape == b.shape, name
        assert a.dtype == np.float32, name
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0, err_msg=name)


def test_conv2d_matches_torch_at_deepconvnet_scale(torch, rng):
    """A realistic layer (16 -> 32 channels, 28x28, batch 8): exercises the cache-blocked chunk loop."""
    layer = Conv2d(16, 32, 3, padding=1)
    x = rng.standard_normal((8, 16, 28, 28)).astype(np.float32)
    ours, theirs = _torch_pair(torch, layer, x, torch.nn.functional.conv2d, padding=1)
    for name, a, b in zip(("y", "dx", "dW", "db"), ours, theirs, strict=True):
        scale = max(1.0, float(np.abs(b).max()))
        assert np.abs(a - b).max() / scale <= TOL, name


@pytest.mark.parametrize("case", TRANSPOSED_CASES)
def test_conv_transpose2d_matches_torch(case, torch, rng):
    c_in, c_out, k, s, p, shape = case
    layer = ConvTranspose2d(c_in, c_out, k, stride=s, padding=p)
    layer.params["b"][...] = rng.standard_normal(c_out)
    x = rng.standard_normal(shape).astype(np.float32)
    ours, theirs = _torch_pair(torch, layer, x, torch.nn.functional.conv_transpose2d, stride=s, padding=p)
    for name, a, b in zip(("y", "dx", "dW", "db"), ours, theirs, strict=True):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("factor, shape", [(8, (2, 5, 6, 7)), (2, (1, 3, 5, 4)), (3, (2, 2, 4, 4))])
def test_frozen_bilinear_upsampling_runs_per_channel_and_matches_torch(factor, shape, torch, rng):
    """A frozen layer with one separable kernel per channel takes the U_h @ x @ U_w^T path; output and input
    gradient equal PyTorch's dense transposed convolution, with a bias and an odd factor (kernel 6, padding 1)
    too."""
    channels = shape[1]
    layer = init.bilinear_upsampling_(ConvTranspose2d(channels, channels, 2 * factor, stride=factor,
                                                      padding=factor // 2))
    layer.params["b"][...] = rng.standard_normal(channels)
    layer.freeze()
    x = rng.standard_normal(shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.conv_transpose2d(xt, torch.tensor(layer.params["W"]), torch.tensor(
        layer.params["b"]), stride=factor, padding=factor // 2)
    dout = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dout))
    y = layer.forward(x)
    assert _separable_path_ran(layer)
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), atol=TOL, rtol=0)


def test_layer_unfrozen_between_forward_and_backward_gets_its_weight_gradient(torch, rng):
    """Frozen at the forward (the separable path), trainable at the backward: dW and db as PyTorch's."""
    layer = init.bilinear_upsampling_(ConvTranspose2d(3, 3, 4, stride=2, padding=1))
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(layer.params["W"], requires_grad=True)
    bt = torch.tensor(layer.params["b"], requires_grad=True)
    yt = torch.nn.functional.conv_transpose2d(xt, wt, bt, stride=2, padding=1)
    dout = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dout))
    layer.freeze()
    layer.forward(x)
    assert _separable_path_ran(layer)
    layer.unfreeze()
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(layer.grads["W"], wt.grad.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(layer.grads["b"], bt.grad.numpy(), atol=TOL, rtol=0)


def test_frozen_layers_that_are_not_per_channel_separable_stay_dense(rng):
    """Cross-channel weights, a non-separable kernel or different kernels per channel: the dense path (equal
    to the unfrozen layer's output)."""
    base = init.bilinear_upsampling_(ConvTranspose2d(2, 2, 4, stride=2, padding=1)).params["W"]
    cross, uneven, lumpy = base.copy(), base.copy(), base.copy()
    cross[0, 1, 1, 1] = 0.5
    uneven[1, 1] *= 2
    lumpy[:, :, 0, 0] += np.eye(2, dtype=np.float32)
    x = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    for weight in (cross, uneven, lumpy):
        layer = ConvTranspose2d(2, 2, 4, stride=2, padding=1)
        layer.params["W"][...] = weight
        expected = layer.forward(x).copy()
        layer.freeze()
        np.testing.assert_array_equal(layer.forward(x), expected)
        assert not _separable_path_ran(layer)


def _separable_path_ran(layer) -> bool:
    """Whether the tuned kernel took the per-channel separable path (it saves the two 1-D matrices)."""
    return isinstance(layer._cache[1][2], list)


def test_conv_transpose2d_output_size():
    layer = ConvTranspose2d(4, 2, 4, stride=2, padding=1)
    y = layer.forward(np.zeros((1, 4, 5, 7), np.float32))
    assert y.shape == (1, 2, (5 - 1) * 2 - 2 + 4, (7 - 1) * 2 - 2 + 4)


def test_output_is_channels_last_view_and_float32(rng):
    y = Conv2d(3, 8, 3, padding=1).forward(rng.standard_normal((2, 3, 5, 5)).astype(np.float32))
    assert y.shape == (2, 8, 5, 5)
    assert y.dtype == np.float32
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous  # NCHW-shaped view of NHWC memory


def test_channels_last_and_plain_input_agree(rng):
    layer = Conv2d(3, 4, 3, padding=1)
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    channels_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(layer.forward(x), layer.forward(channels_last))


def test_float64_input_stays_float64(rng):
    layer = Conv2d(2, 2, 3).astype(np.float64)
    assert layer.forward(rng.standard_normal((1, 2, 4, 4))).dtype == np.float64


@pytest.mark.parametrize("shape", [(8, 1, 28, 28), (1, 28, 28), (8, 3, 28)])
def test_wrong_input_shape_names_both_shapes(shape):
    with pytest.raises(ShapeError) as err:
        Conv2d(3, 4, 3).forward(np.zeros(shape, np.float32))
    assert "Conv2d expected input (N, 3, H, W)" in str(err.value)
    assert str(shape) in str(err.value)


def test_wrong_dtype_and_too_small_input():
    with pytest.raises(ShapeError, match="float32 or float64"):
        Conv2d(1, 1, 3).forward(np.zeros((1, 1, 4, 4), np.uint8))
    with pytest.raises(ShapeError, match="smaller than its kernel"):
        Conv2d(1, 1, 5).forward(np.zeros((1, 1, 4, 4), np.float32))
    expected = r"ConvTranspose2d expected input \(N, 2, H, W\), got \(1, 3, 4, 4\)"
    with pytest.raises(ShapeError, match=expected):
        ConvTranspose2d(2, 1, 3).forward(np.zeros((1, 3, 4, 4), np.float32))


def test_backward_checks_dout_shape(rng):
    layer = Conv2d(1, 2, 3)
    layer.forward(rng.standard_normal((1, 1, 5, 5)).astype(np.float32))
    with pytest.raises(ShapeError, match=r"expected dout \(1, 2, 3, 3\), got \(1, 2, 5, 5\)"):
        layer.backward(np.zeros((1, 2, 5, 5), np.float32))


@pytest.mark.parametrize("kwargs", [{"kernel_size": 0}, {"stride": 0}, {"padding": -1},
                                    {"kernel_size": (3,)}])
def test_bad_config_raises(kwargs):
    args = {"in_ch": 1, "out_ch": 1, "kernel_size": 3, **kwargs}
    with pytest.raises(ConfigError):
        Conv2d(**args)


@pytest.mark.parametrize("layer", [
    Conv2d(3, 4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=2, bias=False),
    ConvTranspose2d(3, 2, 4, stride=2, padding=1),
])
def test_spec_round_trip_rebuilds_identical_outputs(layer, rng):
    spec = json.loads(json.dumps(layer.spec()))
    clone = build_layer(spec)
    clone.load_state_dict(layer.state_dict())
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    np.testing.assert_array_equal(clone.forward(x), layer.forward(x))
    assert clone.spec() == layer.spec()


def test_he_initialisation_scale():
    from xpvision.nn import rng as nn_rng
    nn_rng.manual_seed(0)
    w = Conv2d(64, 64, 3).params["W"]
    assert w.dtype == np.float32
    assert abs(w.std() - np.sqrt(2 / (64 * 9))) < 0.02 * np.sqrt(2 / (64 * 9))
