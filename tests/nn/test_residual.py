import numpy as np
import pytest

from xpvision.nn import Identity, ResidualBlock, Sequential, build_layer


@pytest.mark.parametrize("in_ch, out_ch, stride", [(2, 2, 1), (2, 3, 2)])
def test_residual_block_gradients(in_ch, out_ch, stride, check_layer_grads, rng):
    block = ResidualBlock(in_ch, out_ch, stride)
    errors = check_layer_grads(block, rng.standard_normal((2, in_ch, 5, 4)), max_entries=15)
    assert "conv1.W" in errors and "bn2.gamma" in errors
    assert ("shortcut.conv.W" in errors) == (stride != 1 or in_ch != out_ch)


def test_residual_block_structure_and_output_shape(rng):
    assert isinstance(ResidualBlock(4, 4).shortcut, Identity)
    block = ResidualBlock(3, 8, stride=2)
    assert isinstance(block.shortcut, Sequential)
    y = block.forward(rng.standard_normal((2, 3, 7, 6)).astype(np.float32))
    assert y.shape == (2, 8, 4, 3)
    assert (y >= 0).all()


def test_residual_block_matches_torch(torch, rng):
    block = ResidualBlock(3, 4, stride=2)
    for _, layer in block.named_layers():
        if "gamma" in layer.params:
            layer.params["gamma"][...] = rng.uniform(0.5, 1.5, layer.num_features)
            layer.params["beta"][...] = rng.standard_normal(layer.num_features)
    nn = torch.nn

    def conv(layer):
        c = nn.Conv2d(layer.in_ch, layer.out_ch, layer.kernel_size, layer.stride, layer.padding, bias=False)
        c.weight.data = torch.tensor(layer.params["W"])
        return c

    def bn(layer):
        b = nn.BatchNorm2d(layer.num_features)
        b.weight.data = torch.tensor(layer.params["gamma"])
        b.bias.data = torch.tensor(layer.params["beta"])
        return b

    main = nn.Sequential(conv(block.conv1), bn(block.bn1), nn.ReLU(), conv(block.conv2), bn(block.bn2))
    short = nn.Sequential(conv(block.shortcut["conv"]), bn(block.shortcut["bn"]))
    x = rng.standard_normal((3, 3, 6, 6)).astype(np.float32)
    dout = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.relu(main(xt) + short(xt))
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(block.forward(x), yt.detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(block.backward(dout), xt.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(block.conv1.grads["W"], main[0].weight.grad.numpy(), atol=1e-4)


def test_residual_block_spec_and_state_round_trip(rng):
    block = ResidualBlock(2, 3, 2)
    clone = build_layer(block.spec())
    clone.load_state_dict(block.state_dict())
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(clone.eval().forward(x), block.eval().forward(x))
    assert "shortcut.bn.running_var" in block.state_dict()
