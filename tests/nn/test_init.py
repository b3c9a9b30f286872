import numpy as np
import pytest

from xpvision.nn import ConvTranspose2d, init, rng


@pytest.mark.parametrize("name, args, expected_std", [
    ("he_normal", (200,), np.sqrt(2 / 200)),
    ("he_uniform", (200,), np.sqrt(6 / 200) / np.sqrt(3)),
    ("xavier_normal", (200, 100), np.sqrt(2 / 300)),
    ("xavier_uniform", (200, 100), np.sqrt(6 / 300) / np.sqrt(3)),
])
def test_initialiser_statistics(name, args, expected_std, xp):
    rng.manual_seed(0)
    w = getattr(init, name)((100, 400), *args, xp=xp)
    assert w.shape == (100, 400) and w.dtype == np.float32
    assert abs(float(w.std()) - expected_std) < 0.02 * expected_std
    assert abs(float(w.mean())) < 0.02 * expected_std
    if "uniform" in name:
        assert float(abs(w).max()) <= expected_std * np.sqrt(3)


def test_initialisers_are_deterministic_per_seed():
    rng.manual_seed(3)
    a = init.he_normal((5, 5), 5)
    rng.manual_seed(3)
    np.testing.assert_array_equal(init.he_normal((5, 5), 5), a)
    assert init.he_normal((5, 5), 5, dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="positive integers"):
        init.he_normal((2, 2), 0)


def test_bilinear_kernel_formula():
    np.testing.assert_allclose(init.bilinear_kernel(4)[0], np.array([0.25, 0.75, 0.75, 0.25]) * 0.25)
    k3 = init.bilinear_kernel(3)
    np.testing.assert_allclose(k3, np.outer([0.5, 1, 0.5], [0.5, 1, 0.5]))
    k = 5
    f = (k + 1) // 2
    c = f - 1
    y, x = np.ogrid[:k, :k]
    np.testing.assert_allclose(init.bilinear_kernel(k), (1 - np.abs(x - c) / f) * (1 - np.abs(y - c) / f))
    assert init.bilinear_kernel(4).dtype == np.float32


def test_bilinear_upsampling_places_kernel_on_channel_diagonal():
    layer = init.bilinear_upsampling_(ConvTranspose2d(3, 3, 4, stride=2, padding=1))
    w = layer.params["W"]
    for i in range(3):
        for j in range(3):
            expected = init.bilinear_kernel(4) if i == j else np.zeros((4, 4))
            np.testing.assert_array_equal(w[i, j], expected)
    assert not layer.params["b"].any()
    with pytest.raises(ValueError, match="in == out"):
        init.bilinear_upsampling_(ConvTranspose2d(3, 2, 4, stride=2))


@pytest.mark.parametrize("stride", [2, 4])
def test_bilinear_upsampling_reproduces_bilinear_interpolation(stride, torch):
    """ConvTranspose2d(k=2s, stride s, padding s//2) initialised bilinear == interpolate(bilinear,
    align_corners=False) away from the borders."""
    layer = init.bilinear_upsampling_(ConvTranspose2d(2, 2, 2 * stride, stride=stride, padding=stride // 2))
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 7)).astype(np.float32)
    y = layer.forward(x)
    ref = torch.nn.functional.interpolate(torch.tensor(x), scale_factor=stride, mode="bilinear",
                                          align_corners=False).numpy()
    assert y.shape == ref.shape == (1, 2, 6 * stride, 7 * stride)
    s = stride
    np.testing.assert_allclose(y[:, :, s:-s, s:-s], ref[:, :, s:-s, s:-s], atol=1e-5)
