import numpy as np
import pytest

from xpvision.errors import ConfigError, ShapeError
from xpvision.nn import Conv2d, Dropout, Flatten, Linear, build_layer, rng


def test_linear_gradients(check_layer_grads, rng):
    layer = Linear(5, 3)
    layer.params["b"][...] = rng.standard_normal(3)
    assert set(check_layer_grads(layer, rng.standard_normal((4, 5)))) == {"input", "W", "b"}
    assert set(check_layer_grads(Linear(3, 2), rng.standard_normal((1, 3)))) == {"input", "W", "b"}


def test_linear_matches_torch_with_transposed_weight(torch, rng):
    layer = Linear(6, 4)
    layer.params["b"][...] = rng.standard_normal(4)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    dout = rng.standard_normal((5, 4)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.params["W"].T.copy(), requires_grad=True)  # PyTorch's weight is (out, in)
    bt = torch.tensor(layer.params["b"], requires_grad=True)
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(layer.forward(x), yt.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(layer.grads["W"], wt.grad.numpy().T, atol=1e-5)
    np.testing.assert_allclose(layer.grads["b"], bt.grad.numpy(), atol=1e-5)


def test_linear_bad_input():
    with pytest.raises(ShapeError, match=r"Linear expected input \(N, 5\), got \(4, 6\)"):
        Linear(5, 3).forward(np.zeros((4, 6), np.float32))
    with pytest.raises(ShapeError, match=r"got \(2, 5, 1\)"):
        Linear(5, 3).forward(np.zeros((2, 5, 1), np.float32))
    with pytest.raises(ConfigError):
        Linear(0, 3)


def test_flatten_uses_nchw_order_for_channels_last_input(check_layer_grads, rng):
    conv_out = Conv2d(2, 3, 1).forward(rng.standard_normal((2, 2, 4, 5)).astype(np.float32))  # channels-last
    flat = Flatten().forward(conv_out)
    np.testing.assert_array_equal(flat, np.ascontiguousarray(conv_out).reshape(2, -1))
    check_layer_grads(Flatten(), rng.standard_normal((2, 3, 2, 4)))


def test_flatten_matches_torch_flatten(torch, rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    layer = Flatten()
    np.testing.assert_array_equal(layer.forward(x), torch.flatten(torch.tensor(x), 1).numpy())
    assert layer.backward(np.ones((2, 60), np.float32)).shape == (2, 3, 4, 5)


def test_dropout_training_statistics_and_gradient():
    rng.manual_seed(0)
    layer = Dropout(0.3)
    x = np.ones((200, 500), np.float32)
    y = layer.forward(x)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    assert y.dtype == np.float32
    dx = layer.backward(np.full_like(x, 2.0))
    np.testing.assert_array_equal(dx != 0, kept)  # gradient flows exactly where the input did
    np.testing.assert_allclose(dx[kept], 2 / 0.7, rtol=1e-6)


def test_dropout_eval_is_identity_and_seeded_masks_repeat():
    x = np.ones((10, 10), np.float32)
    layer = Dropout(0.5)
    layer.eval()
    assert layer.forward(x) is x and layer.backward(x) is x
    layer.train()
    rng.manual_seed(7)
    first = layer.forward(x)
    rng.manual_seed(7)
    np.testing.assert_array_equal(layer.forward(x), first)
    assert not np.array_equal(layer.forward(x), first)


def test_dropout_extremes_and_config():
    x = np.ones((4, 4), np.float32)
    assert (Dropout(1.0).forward(x) == 0).all()
    assert Dropout(0.0).forward(x) is x
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        Dropout(1.5)
    assert build_layer(Dropout(0.25).spec()).p == 0.25
