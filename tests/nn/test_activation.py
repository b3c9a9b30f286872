import numpy as np
import pytest

from xpvision.errors import ShapeError
from xpvision.nn import Identity, LeakyReLU, ReLU, Sigmoid, build_layer
from xpvision.nn.activation import sigmoid


def _away_from_kinks(rng, shape):
    """Standard normal values at least 0.01 away from 0 (ReLU's kink), so central differences are exact."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.01, 0.5, x)


@pytest.mark.parametrize("layer", [ReLU(), LeakyReLU(0.1), Sigmoid(), Identity()])
def test_activation_gradients(layer, check_layer_grads, rng):
    check_layer_grads(layer, _away_from_kinks(rng, (2, 3, 4, 5)))


@pytest.mark.parametrize("layer, fn", [
    (ReLU(), lambda t, x: t.relu(x)),
    (LeakyReLU(0.2), lambda t, x: t.nn.functional.leaky_relu(x, 0.2)),
    (Sigmoid(), lambda t, x: t.sigmoid(x)),
])
def test_activation_matches_torch(layer, fn, torch, rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32) * 5
    x[0, 0, :2] = 0.0  # gradient at exactly 0 follows PyTorch (0 for ReLU)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = fn(torch, xt)
    yt.backward(torch.tensor(dout))
    y = layer.forward(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), atol=1e-6)


def test_activation_keeps_channels_last_layout(rng):
    x = np.ascontiguousarray(rng.standard_normal((2, 5, 4, 3), dtype=np.float32)).transpose(0, 3, 1, 2)
    for layer in (ReLU(), LeakyReLU(), Sigmoid()):
        y = layer.forward(x)
        assert y.transpose(0, 2, 3, 1).flags.c_contiguous, type(layer).__name__


def test_sigmoid_is_stable_for_large_inputs():
    with np.errstate(over="raise"):
        y = sigmoid(np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0], np.float32))
    np.testing.assert_allclose(y, [0.0, 1.9287499e-22, 0.5, 1.0, 1.0], rtol=1e-6)


def test_bad_input():
    with pytest.raises(ShapeError, match="float32 or float64"):
        ReLU().forward(np.zeros(3, np.int64))
    layer = ReLU()
    layer.forward(np.zeros((2, 3), np.float32))
    with pytest.raises(ShapeError, match=r"expected dout \(2, 3\), got \(3, 2\)"):
        layer.backward(np.zeros((3, 2), np.float32))


def test_leaky_relu_spec():
    clone = build_layer(LeakyReLU(0.3).spec())
    assert isinstance(clone, LeakyReLU) and clone.negative_slope == 0.3
