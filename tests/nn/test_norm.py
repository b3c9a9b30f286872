import numpy as np
import pytest

from xpvision.errors import ConfigError, ShapeError
from xpvision.nn import BatchNorm1d, BatchNorm2d, build_layer

TOL = 1e-4


def _randomised(layer, rng):
    layer.params["gamma"][...] = rng.uniform(0.5, 1.5, layer.num_features)
    layer.params["beta"][...] = rng.standard_normal(layer.num_features)
    return layer


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_gradients(training, check_layer_grads, rng):
    layer = _randomised(BatchNorm2d(3), rng)
    layer.buffers["running_mean"][...] = rng.standard_normal(3)
    layer.buffers["running_var"][...] = rng.uniform(0.5, 2, 3)
    layer.train(training)
    assert set(check_layer_grads(layer, rng.standard_normal((2, 3, 3, 4)))) == {"input", "gamma", "beta"}


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm1d_gradients(training, check_layer_grads, rng):
    layer = _randomised(BatchNorm1d(4), rng).train(training)
    check_layer_grads(layer, rng.standard_normal((5, 4)))


@pytest.mark.parametrize("cls, shape", [(BatchNorm2d, (4, 3, 5, 6)), (BatchNorm1d, (8, 3))])
def test_batchnorm_matches_torch_train_then_eval(cls, shape, torch, rng):
    """Three training steps (outputs, input and parameter gradients, running stats), then eval mode."""
    ours = _randomised(cls(3, momentum=0.2, eps=1e-3), rng)
    theirs = getattr(torch.nn, cls.__name__)(3, momentum=0.2, eps=1e-3)
    theirs.weight.data = torch.tensor(ours.params["gamma"])
    theirs.bias.data = torch.tensor(ours.params["beta"])
    for step in range(3):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(np.float32)
        dout = rng.standard_normal(shape).astype(np.float32)
        xt = torch.tensor(x, requires_grad=True)
        theirs.zero_grad()
        yt = theirs(xt)
        yt.backward(torch.tensor(dout))
        np.testing.assert_allclose(ours.forward(x), yt.detach().numpy(), atol=TOL)
        np.testing.assert_allclose(ours.backward(dout), xt.grad.numpy(), atol=TOL)
        np.testing.assert_allclose(ours.grads["gamma"], theirs.weight.grad.numpy(), atol=TOL)
        np.testing.assert_allclose(ours.grads["beta"], theirs.bias.grad.numpy(), atol=TOL)
        np.testing.assert_allclose(ours.buffers["running_mean"], theirs.running_mean.numpy(), atol=TOL)
        np.testing.assert_allclose(ours.buffers["running_var"], theirs.running_var.numpy(), atol=TOL)
    ours.eval()
    theirs.eval()
    x = rng.standard_normal(shape).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(ours.forward(x), yt.detach().numpy(), atol=TOL)
    np.testing.assert_allclose(ours.backward(dout), xt.grad.numpy(), atol=TOL)


def test_batchnorm_eval_leaves_running_stats_alone(rng):
    layer = BatchNorm2d(2).eval()
    layer.forward(rng.standard_normal((2, 2, 3, 3)).astype(np.float32))
    np.testing.assert_array_equal(layer.buffers["running_mean"], 0)
    np.testing.assert_array_equal(layer.buffers["running_var"], 1)


def test_batchnorm_bad_input_and_config():
    with pytest.raises(ShapeError, match=r"BatchNorm2d expected input \(N, 3, H, W\), got \(2, 4, 5, 5\)"):
        BatchNorm2d(3).forward(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ShapeError, match=r"BatchNorm1d expected input \(N, 3\), got \(2, 3, 1\)"):
        BatchNorm1d(3).forward(np.zeros((2, 3, 1), np.float32))
    with pytest.raises(ShapeError, match="more than 1 value per channel"):
        BatchNorm1d(3).forward(np.zeros((1, 3), np.float32))
    with pytest.raises(ConfigError):
        BatchNorm2d(3, momentum=1.5)


def test_batchnorm_state_and_spec_round_trip(rng):
    layer = BatchNorm2d(3, momentum=0.05, eps=1e-4)
    layer.forward(rng.standard_normal((2, 3, 4, 4)).astype(np.float32))
    assert set(layer.state_dict()) == {"gamma", "beta", "running_mean", "running_var"}
    clone = build_layer(layer.spec())
    clone.load_state_dict(layer.state_dict())
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(clone.eval().forward(x), layer.eval().forward(x))
    assert clone.momentum == 0.05 and clone.eps == 1e-4


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_fused_relu_equals_separate_layers(training, rng):
    from xpvision.nn import ReLU, Sequential

    fused = Sequential(_randomised(BatchNorm2d(3), rng), ReLU())
    plain = Sequential(BatchNorm2d(3), ReLU())
    plain.load_state_dict(fused.state_dict())
    plain.fusion = False
    fused.train(training)
    plain.train(training)
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    y1, y2 = fused.forward(x), plain.forward(x)
    assert fused._steps == [fused[0]]  # the ReLU was absorbed
    np.testing.assert_allclose(y1, y2, atol=1e-6)
    np.testing.assert_allclose(fused.backward(dout), plain.backward(dout), atol=1e-5)
    for key in ("gamma", "beta"):
        np.testing.assert_allclose(fused[0].grads[key], plain[0].grads[key], atol=1e-5)
    np.testing.assert_array_equal(fused[0].buffers["running_mean"], plain[0].buffers["running_mean"])


def test_batchnorm2d_fused_relu_gradients(check_layer_grads, rng):
    from xpvision.nn import ReLU, Sequential

    model = Sequential(_randomised(BatchNorm2d(3), rng), ReLU())
    assert {"0.gamma", "0.beta"} <= set(check_layer_grads(model, rng.standard_normal((2, 3, 3, 4))))
