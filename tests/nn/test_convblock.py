"""The fused Conv2d(+ReLU)(+2x2 MaxPool2d) path that Sequential takes, the threaded chunk loop, and the
skipped input gradient: all must give what the plain layers give."""

import numpy as np
import pytest

from xpvision.nn import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential, parallel
from xpvision.nn import rng as nn_rng
from xpvision.nn.convblock import DEAD, max_pool2x2, max_unpool2x2


def _pair(layers_fn):
    """Two identical Sequentials (same weights), one fused and one not."""
    nn_rng.manual_seed(0)
    fused = Sequential(*layers_fn())
    plain = Sequential(*layers_fn())
    plain.load_state_dict(fused.state_dict())
    plain.fusion = False
    return fused, plain


def _run(model, x, dout):
    y = model.forward(x)
    dx = model.backward(dout)
    return y, dx, {name: layer.grads[key].copy() for name, layer, key in model.named_parameters()}


@pytest.mark.parametrize("shape, padding, stride", [
    ((3, 2, 8, 8), 1, 1),
    ((2, 2, 7, 9), 1, 1),  # odd conv output: the last row/column is left out of the pool
    ((2, 2, 9, 6), 2, 1),
    ((2, 2, 5, 6), 3, 1),  # padding > kernel - 1: input gradient by col2im
    ((2, 2, 11, 10), 1, 2),  # stride 2: input gradient by col2im
    ((2, 1, 9, 8), 1, 1),  # one input channel: tap-major im2col
])
@pytest.mark.parametrize("tail", ["relu+pool", "relu", "pool"])
def test_fused_equals_unfused(shape, padding, stride, tail, rng):
    def layers():
        out = [Conv2d(shape[1], 5, 3, stride=stride, padding=padding)]
        out += [ReLU()] if "relu" in tail else []
        out += [MaxPool2d(2)] if "pool" in tail else []
        return out

    fused, plain = _pair(layers)
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, :, :3, :3] = 0  # ties and dead ReLUs
    y_plain = plain.forward(x)
    dout = rng.standard_normal(y_plain.shape).astype(np.float32)
    y1, dx1, g1 = _run(fused, x, dout)
    y2, dx2, g2 = _run(plain, x, dout)
    assert fused._steps == [fused[0]] and len(plain._steps) == len(plain)  # the fused run was fused
    np.testing.assert_allclose(y1, y2, atol=1e-6)
    np.testing.assert_allclose(dx1, dx2, atol=1e-5)
    for name in g1:
        np.testing.assert_allclose(g1[name], g2[name], atol=1e-4, err_msg=name)


def test_fused_block_gradients(check_layer_grads, rng):
    model = Sequential(Conv2d(2, 3, 3, padding=1), ReLU(), MaxPool2d(2), Conv2d(3, 2, 3, padding=2), ReLU())
    errors = check_layer_grads(model, rng.standard_normal((2, 2, 6, 7)))
    assert {"0.W", "0.b", "3.W", "3.b"} <= set(errors)


def test_fused_convnet_matches_torch(torch, rng):
    def layers():
        return [Conv2d(1, 4, 3, padding=1), ReLU(), Conv2d(4, 6, 3, padding=2), ReLU(), MaxPool2d(2),
                Flatten(), Linear(6 * 5 * 5, 3)]

    model, _ = _pair(layers)
    nn = torch.nn
    twin = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=2), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(150, 3))
    for ours, theirs in ((model[0], twin[0]), (model[2], twin[2])):
        theirs.weight.data, theirs.bias.data = torch.tensor(ours.params["W"]), torch.tensor(ours.params["b"])
    twin[6].weight.data = torch.tensor(model[6].params["W"].T.copy())
    twin[6].bias.data = torch.tensor(model[6].params["b"])
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    dout = rng.standard_normal((4, 3)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = twin(xt)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(model.forward(x), yt.detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(model.backward(dout), xt.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(model[2].grads["W"], twin[2].weight.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(model[0].grads["W"], twin[0].weight.grad.numpy(), atol=1e-4)


def test_threads_give_the_same_results(rng):
    """Batch 12 of 28x28 images makes several cache-sized chunks, so two threads split them: the same bits."""
    def layers():
        return [Conv2d(3, 8, 3, padding=1), ReLU(), MaxPool2d(2), Conv2d(8, 4, 3, stride=2)]

    x = rng.standard_normal((12, 3, 28, 28)).astype(np.float32)
    dout = rng.standard_normal((12, 4, 6, 6)).astype(np.float32)
    results = []
    try:
        for threads in (1, 2):
            parallel.set_num_threads(threads)
            model, _ = _pair(layers)
            results.append(_run(model, x, dout))
    finally:
        parallel.set_num_threads(None)
    (y1, dx1, g1), (y2, dx2, g2) = results
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(dx1, dx2)
    for name in g1:
        np.testing.assert_array_equal(g1[name], g2[name])


def test_skipping_the_input_gradient(rng):
    model = Sequential(Sequential(Conv2d(1, 2, 3), ReLU()), Flatten(), Linear(2 * 4 * 4, 2))
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    dout = rng.standard_normal((2, 2)).astype(np.float32)
    model.forward(x)
    dx = model.backward(dout)
    w_grad = model[0][0].grads["W"].copy()
    model.needs_input_grad = False
    model.forward(x)
    assert model.backward(dout) is None
    np.testing.assert_array_equal(model[0][0].grads["W"], w_grad)
    model.needs_input_grad = True
    model.forward(x)
    np.testing.assert_array_equal(model.backward(dout), dx)


def test_max_pool2x2_index_rules():
    y = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)[None, :, :, None]  # a 4-way tie
    y2 = np.array([[-1.0, -2.0], [-3.0, -1.0]], np.float32)[None, :, :, None]  # negative: dead after ReLU
    for data, relu, expected_index, expected_out in [(y, False, 0, 1.0), (y2, False, 0, -1.0),
                                                     (y2, True, DEAD, 0.0)]:
        out = np.empty((1, 1, 1, 1), np.float32)
        index = np.empty((1, 1, 1, 1), np.uint8)
        max_pool2x2(data, out, index, relu)
        assert out.item() == expected_out and index.item() == expected_index
        dconv = np.full((1, 3, 3, 1), np.nan, np.float32)  # odd: the last row/col must be zeroed
        max_unpool2x2(np.ones_like(out), index, dconv)
        assert dconv.sum() == (0 if relu else 1) and dconv[0, 0, 0, 0] == (0 if relu else 1)


def test_max_pool2x2_index_is_the_first_maximum_of_each_window(rng):
    y = rng.integers(-2, 3, (3, 8, 10, 5)).astype(np.float32)  # small integers: ties everywhere
    out = np.empty((3, 4, 5, 5), np.float32)
    index = np.empty(out.shape, np.uint8)
    max_pool2x2(y, out, index, relu=False)
    # (N, PH, PW, C, 4): the window's taps in the order 2a + b
    windows = y.reshape(3, 4, 2, 5, 2, 5).transpose(0, 1, 3, 5, 2, 4).reshape(3, 4, 5, 5, 4)
    np.testing.assert_array_equal(index, windows.argmax(axis=-1))  # argmax: the first maximum
    np.testing.assert_array_equal(out, windows.max(axis=-1))
    assert set(np.unique(index)) == {0, 1, 2, 3}


def test_fused_pool_too_small_raises():
    from xpvision.errors import ShapeError
    model = Sequential(Conv2d(1, 1, 3), ReLU(), MaxPool2d(2))
    with pytest.raises(ShapeError, match="MaxPool2d input"):
        model.forward(np.zeros((1, 1, 3, 3), np.float32))


def test_alternating_batch_sizes_reuse_buffers_correctly(rng):
    """Reused scratch buffers (one set per shape) must never leak values between calls."""
    def layers():
        return [Conv2d(3, 4, 3, padding=1), ReLU(), MaxPool2d(2), Conv2d(4, 2, 3, padding=2)]

    model, reference = _pair(layers)
    for n in (5, 2, 5, 3, 2):
        x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
        dout = rng.standard_normal((n, 2, 6, 6)).astype(np.float32)
        y1, dx1, g1 = _run(model, x, dout)
        y2, dx2, g2 = _run(reference, x, dout)
        np.testing.assert_allclose(y1, y2, atol=1e-5)
        np.testing.assert_allclose(dx1, dx2, atol=1e-5)
        for name in g1:
            np.testing.assert_allclose(g1[name], g2[name], atol=1e-4, err_msg=name)


def test_frozen_backbone_is_skipped_in_backward(rng):
    def layers():
        return [Sequential(Conv2d(1, 2, 3), ReLU()), Flatten(), Linear(2 * 4 * 4, 2)]

    model, reference = _pair(layers)
    model[0].freeze()
    reference[0].freeze()
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    dout = rng.standard_normal((2, 2)).astype(np.float32)
    reference.forward(x)
    reference.backward(dout)
    model.needs_input_grad = False
    model.forward(x)
    calls = []
    conv = model[0][0]
    conv.backward = lambda d: calls.append(d)  # must not be reached
    assert model.backward(dout) is None
    assert calls == []
    np.testing.assert_allclose(model[2].grads["W"], reference[2].grads["W"], atol=1e-6)
    model.needs_input_grad = True  # the backbone runs again when the input gradient is wanted
    del conv.backward
    model.forward(x)
    np.testing.assert_allclose(model.backward(dout), reference.backward(dout), atol=1e-5)


@pytest.mark.parametrize("shape, tail", [((2, 2, 8, 8), "relu+pool"), ((2, 3, 7, 9), "pool"),
                                         ((1, 1, 5, 6), "relu+pool")])
def test_evaluation_pool_without_index_then_backward(shape, tail, rng):
    """In evaluation the fused pool skips its index; a backward after it recomputes the index and must give
    exactly what training mode gives."""
    def layers():
        return [Conv2d(shape[1], 4, 3, padding=1)] + ([ReLU()] if "relu" in tail else []) + [MaxPool2d(2)]

    model, _ = _pair(layers)
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, :, :3, :3] = 0  # ties and dead ReLUs
    dout = rng.standard_normal(model.forward(x).shape).astype(np.float32)
    y_train, dx_train, g_train = _run(model, x, dout)
    model.eval()
    y_eval, dx_eval, g_eval = _run(model, x, dout)
    assert model[0]._cache[1][1][7] is None  # (method, saved): no pool index kept, the backward recomputed it
    np.testing.assert_array_equal(y_eval, y_train)
    np.testing.assert_array_equal(dx_eval, dx_train)
    for name in g_train:
        np.testing.assert_array_equal(g_eval[name], g_train[name], err_msg=name)


def test_output_buffer_reused_only_when_no_one_holds_it(rng):
    layer = Conv2d(2, 3, 3, padding=1)
    x1, x2 = (rng.standard_normal((2, 2, 6, 6)).astype(np.float32) for _ in range(2))
    held = layer.forward(x1)
    kept = held.copy()
    second = layer.forward(x2)
    np.testing.assert_array_equal(held, kept)  # a held output is never overwritten
    assert not np.shares_memory(held, second)
    address = second.__array_interface__["data"][0]
    del second, held
    third = layer.forward(x1)  # nobody holds the last output any more: its buffer comes back
    assert third.__array_interface__["data"][0] == address
    np.testing.assert_array_equal(third, kept)


def test_gemm_in_small_pieces_equals_one_gemm(rng):
    from xpvision.nn.convblock import SMALL_GEMM, Scratch, _gemm, _gemm_tn

    a = rng.standard_normal((1000, 145)).astype(np.float32)  # pieces of 431 rows: 431, 431, 138
    b = rng.standard_normal((145, 16)).astype(np.float32)
    assert 64 <= SMALL_GEMM // (145 * 16) < 1000
    out = np.full((1000, 16), np.nan, np.float32)
    _gemm(a, b, out)
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-4)
    d = rng.standard_normal((1000, 16)).astype(np.float32)
    acc = np.ones((145, 16), np.float32)
    assert _gemm_tn(a, d, Scratch(), 0, acc) is acc
    np.testing.assert_allclose(acc, 1 + a.T @ d, rtol=1e-5, atol=1e-3)
    # a new array: the bits an accumulation into zeros gives
    np.testing.assert_array_equal(_gemm_tn(a, d, Scratch(), 0),
                                  _gemm_tn(a, d, Scratch(), 0, np.zeros((145, 16), np.float32)))


@pytest.mark.gpu
@pytest.mark.parametrize("channels, kernel, stride, dilation, out_hw, pooled", [
    (3, (3, 3), (1, 1), (1, 1), (6, 5), False),
    (3, (3, 3), (1, 1), (1, 1), (7, 5), True),  # odd output: the pool-major rows leave the last row out
    (1, (3, 3), (1, 1), (1, 1), (6, 6), True),  # one channel: tap-major on the CPU
    (2, (2, 3), (2, 1), (1, 2), (4, 3), False),  # stride and dilation
    (4, (1, 1), (1, 1), (1, 1), (5, 5), False),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_im2col_kernel_equals_the_cpu_views(gpu, rng, channels, kernel, stride, dilation, out_hw,
                                                 pooled, dtype):
    """The one-kernel im2col of the GPU gives the CPU's matrix bit for bit: any chunk, with and without the
    ones column, in both row orders."""
    from xpvision.nn.convblock import ConvGeometry, Scratch, _im2col, _patch_sources

    span = [(o - 1) * s + d * (k - 1) + 1
            for o, s, d, k in zip(out_hw, stride, dilation, kernel, strict=True)]  # input rows, columns
    xpad = rng.standard_normal((5, span[0] + 1, span[1], channels)).astype(dtype)  # a spare row: unread
    geom = ConvGeometry(kernel, stride, dilation, (0, 0), (span[0] + 1, span[1]), out_hw)
    cpu_patches = _patch_sources(xpad, geom, pooled)
    gpu_patches = _patch_sources(gpu.asarray(xpad), geom, pooled)
    assert gpu_patches[0] == "kernel" and cpu_patches[0] in ("taps", "fields")
    for start, stop, ones in [(0, 5, False), (1, 4, True), (4, 5, True)]:
        want = _im2col(Scratch(), 0, "cols", cpu_patches, start, stop, 5, ones)
        got = _im2col(Scratch(), 0, "cols", gpu_patches, start, stop, 5, ones)
        assert got.flags.c_contiguous and got.shape == want.shape
        np.testing.assert_array_equal(gpu.asnumpy(got), want)
