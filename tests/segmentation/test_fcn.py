"""FCN-32s/16s/8s/4s: shapes for odd and even inputs, pixel alignment of the skips, bilinear upsampling,
gradients, frozen upsampling, spec/weights round trip."""

import numpy as np
import pytest

from xpvision import backend, io
from xpvision.errors import ConfigError
from xpvision.models import deep_convnet
from xpvision.nn import AvgPool2d, Conv2d, MaxPool2d, ReLU, Sequential, build_layer, rng
from xpvision.nn.gradcheck import layer_gradient_errors
from xpvision.segmentation.fcn import FCN, build_fcn

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("variant, encoder", [("32s", {}), ("16s", {}), ("8s", {}), ("4s", {}),
                                               ("8s", {"encoder_stride": 8, "fc_kernel": 4}),
                                               ("8s", {"encoder_stride": 16, "extra_channels": [8]}),
                                               ("4s", {"encoder_stride": 16, "extra_channels": [8]})])
@pytest.mark.parametrize("size", [(64, 64), (65, 63), (29, 31), (28, 28), (33, 16)])
def test_output_has_the_input_size(variant, encoder, size):
    rng.manual_seed(0)
    model = build_fcn(variant, in_channels=3, num_classes=11, **encoder)
    x = np.random.default_rng(0).random((2, 3, *size), dtype=np.float32)
    y = model.forward(x)
    assert y.shape == (2, 11, *size) and y.dtype == np.float32
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape


class _AvgFCN(FCN):
    """FCN whose added stages average-pool: with positive weights the network is linear and symmetric."""

    registered = False

    def _extra_stages(self, width, stride):
        stages = super()._extra_stages(width, stride)
        for name in [n for n in stages.layers if n.endswith("pool")]:
            stages[name] = AvgPool2d(2, 2, padding=1)
        return stages


@pytest.mark.parametrize("variant, encoder", [("32s", {}), ("16s", {}), ("8s", {}), ("4s", {}),
                                               ("8s", {"encoder_stride": 8, "fc_kernel": 4}),
                                               ("16s", {"encoder_stride": 16, "fc_kernel": 2}),
                                               ("4s", {"encoder_stride": 16, "fc_kernel": 2})])
@pytest.mark.parametrize("size", [232, 233])
def test_every_output_pixel_is_centred_on_its_input_pixel(variant, encoder, size):
    """With constant positive kernels, average pooling and bilinear upsampling, the input gradient of output
    pixel (i, j) is a mass centred exactly on (i, j), unless a skip or the final crop is off by one pixel.
    The backbone keeps DeepConvNet's pad-2 conv4, which shifts its deeper maps by 2 pixels."""
    features = Sequential(("conv1", Conv2d(1, 1, 3, padding=1)), ("relu1", ReLU()), ("pool1", AvgPool2d(2)),
                          ("conv4", Conv2d(1, 1, 3, padding=2)), ("pool2", AvgPool2d(2)),
                          ("conv6", Conv2d(1, 1, 3, padding=1)), ("pool3", AvgPool2d(2)))
    n_extra = {8: 0, 16: 1}.get(encoder.get("encoder_stride"), 2)
    model = _AvgFCN(features, 2, variant, extra_channels=[1] * n_extra, fc_channels=1,
                    **encoder).astype(np.float64)
    for name, layer, key in model.named_parameters():
        if not name.startswith("up"):
            layer.params[key][...] = 1.0 if key == "W" else 0.0
    y = model.forward(np.ones((1, 1, size, size)))
    rows, cols = np.indices((size, size))
    for i, j in [(size // 2, size // 2 + 1), (size // 2 - 2, size // 2 + 3)]:
        dout = np.zeros_like(y)
        dout[0, 1, i, j] = 1.0
        grad = model.backward(dout)[0, 0]
        assert grad.min() >= 0 and grad[0].sum() == grad[-1].sum() == grad[:, 0].sum() == 0  # interior field
        assert (grad * rows).sum() / grad.sum() == pytest.approx(i, abs=1e-9)
        assert (grad * cols).sum() / grad.sum() == pytest.approx(j, abs=1e-9)


@pytest.mark.parametrize("variant", ["16s", "8s", "4s"])
def test_upsampling_layers_are_bilinear_interpolation(variant):
    """Inside the FCN, each transposed convolution reproduces PyTorch's bilinear interpolation
    (align_corners=False) on interior pixels, channel by channel."""
    model = build_fcn(variant, num_classes=3)
    image = np.random.default_rng(1).random((1, 3, 6, 7))
    layers = [model.upsamplers[16], model.final_upsampler]
    for layer, factor in zip(layers, [2, int(variant[:-1])], strict=True):
        ours = layer.astype(np.float64).forward(image)
        ref = torch.nn.functional.interpolate(torch.from_numpy(image), scale_factor=factor, mode="bilinear",
                                              align_corners=False).numpy()
        assert ours.shape == ref.shape
        interior = slice(factor // 2, -(factor // 2))  # outside: interpolation clamps, the layer sees zeros
        np.testing.assert_allclose(ours[..., interior, interior], ref[..., interior, interior], atol=1e-12)
        assert not np.allclose(ours[..., 0, 0], ref[..., 0, 0])  # border really differs: the slice matters


@pytest.mark.parametrize("variant", ["8s", "4s"])
def test_gradients_match_finite_differences_float64(variant):
    """The skip fusion (crop + sum), the upsamplers and the padding/cropping backward, checked numerically."""
    rng.manual_seed(3)
    features = Sequential(("conv1", Conv2d(2, 3, 3, padding=1)), ("relu1", ReLU()), ("pool1", MaxPool2d(2)),
                          ("conv2", Conv2d(3, 3, 3, padding=2)), ("relu2", ReLU()), ("pool2", MaxPool2d(2)),
                          ("conv3", Conv2d(3, 4, 3, padding=1)), ("pool3", MaxPool2d(2)))
    model = FCN(features, 3, variant, extra_channels=[3, 3], fc_channels=4).astype(np.float64)
    model.unfreeze()  # so that the fixed final upsampling fills its gradient too
    generator = np.random.default_rng(3)
    for _, layer, key in model.named_parameters():  # score layers start at zero, biases too: perturb all
        layer.params[key][...] += 0.3 * generator.standard_normal(layer.params[key].shape)
    x = generator.standard_normal((2, 2, 13, 11))
    errors = layer_gradient_errors(model, x, max_entries=25)
    checked = {"input", "score8.W", "score16.W", "up32.W", "up16.W", "upsample.W", "features.conv1.W"}
    checked |= {"score4.W", "up8.W"} if variant == "4s" else set()
    assert checked <= set(errors)
    assert max(errors.values()) < 1e-6, errors


def test_upsampling_trainability_and_zero_scores():
    learn = build_fcn("8s", num_classes=4)
    fixed = build_fcn("8s", num_classes=4, learnable_upsampling=False)
    assert learn.upsamplers[16].trainable and learn.upsamplers[8].trainable
    assert not fixed.upsamplers[16].trainable and not fixed.upsamplers[8].trainable
    assert not learn.final_upsampler.trainable and not fixed.final_upsampler.trainable
    trainable = {name for name, _, _ in learn.named_parameters(trainable_only=True)}
    assert "up32.W" in trainable and "upsample.W" not in trainable
    assert {name for name, _, _ in fixed.named_parameters(trainable_only=True)}.isdisjoint(
        {"up32.W", "up16.W", "upsample.W"})
    assert all(not learn.scores[s].params["W"].any() for s in (32, 16, 8))
    assert "b" not in learn.final_upsampler.params


def test_names_match_the_classifier_backbone():
    classifier = deep_convnet(in_channels=3)
    model = build_fcn("8s", in_channels=3)
    backbone = {k for k in classifier.state_dict() if k.startswith("features.")}
    assert backbone <= set(model.state_dict())


def test_spec_and_weights_round_trip_through_io(tmp_path):
    rng.manual_seed(0)
    model = build_fcn("16s", num_classes=5, dropout=0.5, learnable_upsampling=False)
    for _, layer, key in model.named_parameters():
        layer.params[key][...] += 0.01  # scores are zero at construction: make every weight distinct
    io.save_model(tmp_path / "fcn", model, {"task": "segmentation"})
    loaded, meta = io.load_model(tmp_path / "fcn")
    assert meta == {"task": "segmentation"} and isinstance(loaded, FCN)
    assert loaded.spec() == model.spec() and build_layer(model.spec()).spec() == model.spec()
    assert not loaded.upsamplers[16].trainable
    x = np.random.default_rng(0).random((1, 3, 37, 41), dtype=np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.eval().forward(x))


def test_bad_configurations_raise():
    with pytest.raises(ConfigError, match="variant"):
        build_fcn("2s")
    with pytest.raises(ConfigError, match="extra_channels needs 2 entries"):
        build_fcn("8s", extra_channels=[8])
    with pytest.raises(ConfigError, match=
            "encoder_stride must be 8, 16 or 32 and >= the variant's stride 16"):
        build_fcn("16s", encoder_stride=8)
    with pytest.raises(ConfigError, match="fc_kernel"):
        build_fcn("8s", fc_kernel=0)
    odd_stride = Sequential(("conv", Conv2d(1, 2, 3, stride=3)))
    with pytest.raises(ConfigError, match="power of two"):
        FCN(odd_stride, 3)
    with pytest.raises(ConfigError, match="cannot place the pixels"):
        FCN(Sequential(("conv", Conv2d(1, 2, 3)), ("flat", build_layer({"type": "Flatten"}))), 3)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="CuPy with a CUDA device is not available")
def test_gpu_forward_and_backward_match_cpu():
    xp = backend.xp_for("gpu")
    rng.manual_seed(0)
    model = build_fcn("8s", num_classes=5)
    x = np.random.default_rng(0).random((2, 3, 33, 30), dtype=np.float32)
    dout = np.random.default_rng(1).random((2, 5, 33, 30), dtype=np.float32)
    cpu_y, cpu_dx = model.forward(x), model.backward(dout)
    model.to("gpu")
    gpu_y, gpu_dx = model.forward(xp.asarray(x)), model.backward(xp.asarray(dout))
    np.testing.assert_allclose(xp.asnumpy(gpu_y), cpu_y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(xp.asnumpy(gpu_dx), cpu_dx, rtol=1e-4, atol=1e-5)


def test_without_input_grad_a_frozen_backbone_is_skipped():
    rng.manual_seed(0)
    model = build_fcn("8s", num_classes=3)
    model["features"].freeze()
    x = np.random.default_rng(0).random((1, 3, 24, 24), dtype=np.float32)
    y = model.forward(x)
    reference = model.backward(np.ones_like(y))
    grads = {name: layer.grads[key].copy()
             for name, layer, key in model.named_parameters(trainable_only=True)}
    model.needs_input_grad = False
    model.forward(x)
    assert model.backward(np.ones_like(y)) is None and reference.shape == x.shape
    for name, layer, key in model.named_parameters(trainable_only=True):
        np.testing.assert_array_equal(layer.grads[key], grads[name])


def test_head_on_the_backbone_scores_at_stride_8():
    """``encoder_stride=8``: no added stages, fc6 on pool3, one score layer, 8x final upsampling; gradients
    through it match finite differences."""
    rng.manual_seed(0)
    model = build_fcn("8s", num_classes=4, encoder_stride=8, fc_kernel=4, fc_channels=6)
    assert model.head_on_backbone and not build_fcn("8s", num_classes=4).head_on_backbone
    assert [name for name, _ in model.children()] == ["features", "extra", "score8", "upsample"]
    assert model["extra"]["fc6"].params["W"].shape == (6, 64, 4, 4) and model.skip_strides == []
    assert model.final_upsampler.stride == (8, 8)
    features = Sequential(("conv1", Conv2d(2, 3, 3, padding=1)), ("relu1", ReLU()), ("pool1", MaxPool2d(2)),
                          ("conv2", Conv2d(3, 3, 3, padding=2)), ("pool2", MaxPool2d(2)))
    small = FCN(features, 3, "8s", fc_channels=4, encoder_stride=8, extra_channels=[3],
                fc_kernel=2).astype(np.float64)
    small.unfreeze()
    generator = np.random.default_rng(3)
    for _, layer, key in small.named_parameters():
        layer.params[key][...] += 0.3 * generator.standard_normal(layer.params[key].shape)
    errors = layer_gradient_errors(small, generator.standard_normal((2, 2, 13, 11)), max_entries=25)
    assert {"input", "score8.W", "extra.fc6.W", "upsample.W"} <= set(errors)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("encoder", [{}, {"encoder_stride": 16, "extra_channels": [8]}])
def test_fused_encoder_equals_layer_by_layer(frozen, encoder):
    """Encoder convolutions absorb their ReLU and pool (never past a skip tap): the same outputs and
    gradients as running every layer alone, with the backbone trained or frozen."""
    rng.manual_seed(0)
    model = build_fcn("8s", num_classes=3, **encoder)
    if frozen:
        model["features"].freeze()
        model.needs_input_grad = False
    steps = model._encoder_steps()
    assert any(stop > start for start, stop in steps)  # something was fused
    assert {model.taps[s] for s in model.skip_strides} <= {stop for _, stop in steps}
    x = np.random.default_rng(0).random((2, 3, 40, 36), dtype=np.float32)
    dout = np.random.default_rng(1).standard_normal((2, 3, 40, 36)).astype(np.float32)
    results = []
    for fusion in (True, False):
        model.fusion = fusion
        y = np.array(model.forward(x))
        dx = model.backward(dout)
        grads = {name: layer.grads[key].copy() for name, layer, key in model.named_parameters(True)}
        results.append((y, None if dx is None else np.array(dx), grads))
    (y1, dx1, g1), (y2, dx2, g2) = results
    np.testing.assert_allclose(y1, y2, rtol=0, atol=1e-5)
    assert (dx1 is None) == (dx2 is None) == frozen
    if dx1 is not None:
        np.testing.assert_allclose(dx1, dx2, rtol=0, atol=1e-5)
    for name in g2:  # float32 sums over the batch's pixels, added in other chunks: within 1e-6 of the largest
        scale = float(np.abs(g2[name]).max())
        np.testing.assert_allclose(g1[name], g2[name], rtol=1e-4, atol=1e-5 + 1e-6 * scale, err_msg=name)
