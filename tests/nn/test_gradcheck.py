"""The gradient checker must catch a wrong gradient, or every gradient test would pass vacuously."""

import numpy as np

from xpvision.nn import Linear, ReLU, SmoothL1Loss
from xpvision.nn.gradcheck import layer_gradient_errors, loss_gradient_error, numerical_gradient


class _WrongLinear(Linear):
    registered = False

    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["W"][0, 0] += 0.1  # one wrong entry
        return dx


class _WrongReLU(ReLU):
    registered = False

    def backward(self, dout):
        return super().backward(dout) * 1.01


def test_numerical_gradient_of_a_known_function():
    x = np.array([1.0, -2.0, 3.0])
    grad = numerical_gradient(lambda: float((x ** 3).sum()), x, [(0,), (1,), (2,)])
    np.testing.assert_allclose(grad, 3 * np.array([1.0, 4.0, 9.0]), rtol=1e-8)
    np.testing.assert_array_equal(x, [1.0, -2.0, 3.0])  # restored


def test_checker_flags_wrong_parameter_and_input_gradients(rng):
    errors = layer_gradient_errors(_WrongLinear(3, 2).astype(np.float64), rng.standard_normal((4, 3)),
                                   max_entries=100)
    assert errors["W"] > 1e-3 and errors["input"] < 1e-6
    errors = layer_gradient_errors(_WrongReLU(), rng.standard_normal((4, 3)))
    assert errors["input"] > 1e-3


def test_checker_flags_wrong_loss_gradient(rng):
    class Doubled(SmoothL1Loss):
        def backward(self):
            return 2 * super().backward()

    pred, target = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    assert loss_gradient_error(SmoothL1Loss(), pred, target) < 1e-6
    assert loss_gradient_error(Doubled(), pred, target) > 1e-3
