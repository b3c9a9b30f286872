"""The small ResNet: layout, backbone shapes, PyTorch parity in eval mode, training-mode gradients."""

import numpy as np
import pytest

from xpvision.errors import ConfigError
from xpvision.models import feature_shapes, resnet_small
from xpvision.nn.base import build_layer

torch = pytest.importorskip("torch")


def test_layout_and_feature_shapes():
    model = resnet_small(widths=(8, 16, 32), blocks_per_stage=1)
    assert list(model["features"].layers) == ["stem", "stage1", "stage2", "stage3"]
    assert list(model["head"].layers) == ["pool", "fc"]
    assert feature_shapes(model, (1, 28, 28)) == {
        "stem": (8, 28, 28), "stage1": (8, 28, 28), "stage2": (16, 14, 14), "stage3": (32, 7, 7)}
    assert [block.stride for block in model["features"]["stage2"].layers.values()] == [2]
    with pytest.raises(ConfigError, match="smaller than the network's stride 4"):
        resnet_small(input_size=3)
    with pytest.raises(ConfigError, match="widths"):
        resnet_small(widths=())


def torch_block(block):
    nn = torch.nn

    def conv(layer):
        c = layer.config()
        t = nn.Conv2d(c["in_ch"], c["out_ch"], c["kernel_size"], stride=c["stride"], padding=c["padding"],
                      bias=False)
        t.weight.data = torch.tensor(layer.params["W"])
        return t

    def bn(layer):
        t = nn.BatchNorm2d(layer.num_features)
        t.weight.data, t.bias.data = torch.tensor(layer.params["gamma"]), torch.tensor(layer.params["beta"])
        t.running_mean.data = torch.tensor(layer.buffers["running_mean"])
        t.running_var.data = torch.tensor(layer.buffers["running_var"])
        return t

    return conv, bn


def test_eval_logits_match_pytorch():
    nn = torch.nn
    model = resnet_small(widths=(4, 8), blocks_per_stage=1)
    rs = np.random.default_rng(0)
    for _, layer in model.named_layers():  # non-trivial batch-norm statistics
        if "running_mean" in layer.buffers:
            layer.params["gamma"][...] = rs.uniform(0.5, 1.5, layer.num_features)
            layer.params["beta"][...] = rs.normal(0, 0.1, layer.num_features)
            layer.buffers["running_mean"][...] = rs.normal(0, 0.1, layer.num_features)
            layer.buffers["running_var"][...] = rs.uniform(0.5, 2, layer.num_features)
    conv, bn = torch_block(None)

    class Block(nn.Module):
        def __init__(self, b):
            super().__init__()
            self.main = nn.Sequential(conv(b.conv1), bn(b.bn1), nn.ReLU(), conv(b.conv2), bn(b.bn2))
            self.short = (nn.Sequential(conv(b.shortcut["conv"]), bn(b.shortcut["bn"]))
                          if "conv" in getattr(b.shortcut, "layers", {}) else nn.Identity())

        def forward(self, x):
            return torch.relu(self.main(x) + self.short(x))

    stem = model["features"]["stem"]
    blocks = [b for name in ("stage1", "stage2") for b in model["features"][name].layers.values()]
    fc = model["head"]["fc"]
    linear = nn.Linear(*fc.params["W"].shape)
    linear.weight.data, linear.bias.data = torch.tensor(fc.params["W"].T.copy()), torch.tensor(fc.params["b"])
    reference = nn.Sequential(conv(stem["conv"]), bn(stem["bn"]), nn.ReLU(), *[Block(b) for b in blocks],
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear).eval()
    x = rs.standard_normal((2, 1, 12, 12)).astype(np.float32)
    expected = reference(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(model.eval().forward(x), expected, rtol=1e-4, atol=1e-5)


def test_trains_and_rebuilds_from_spec():
    model = resnet_small(widths=(4, 8, 8), blocks_per_stage=1, num_classes=3)
    x = np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32)
    out = model.train().forward(x)
    assert out.shape == (4, 3)
    assert model.backward(np.ones_like(out)).shape == x.shape
    assert np.abs(model["features"]["stem"]["conv"].grads["W"]).sum() > 0
    clone = build_layer(model.spec())
    clone.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(clone.eval().forward(x), model.eval().forward(x))
