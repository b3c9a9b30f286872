import numpy as np
import pytest

from xpvision.errors import ConfigError, DataError, ShapeError
from xpvision.nn import BCEWithLogits, SmoothL1Loss, SoftmaxCrossEntropy

TOL = 1e-4
WEIGHTS = np.array([0.5, 2.0, 1.0, 3.0], np.float32)


def _targets(rng, shape, ignore_every=3):
    t = rng.integers(0, 4, shape)
    t.reshape(-1)[::ignore_every] = 255
    return t


@pytest.mark.parametrize("weights", [None, WEIGHTS])
@pytest.mark.parametrize("shape", [(6, 4), (2, 4, 3, 5)])
def test_cross_entropy_gradient(shape, weights, check_loss_grad, rng):
    target = _targets(rng, (shape[0], *shape[2:]))
    check_loss_grad(SoftmaxCrossEntropy(ignore_index=255, class_weights=weights), rng.standard_normal(shape),
                    target)


@pytest.mark.parametrize("weights", [None, WEIGHTS])
@pytest.mark.parametrize("shape", [(7, 4), (2, 4, 3, 5)])
def test_cross_entropy_matches_torch(shape, weights, torch, rng):
    logits = (rng.standard_normal(shape) * 3).astype(np.float32)
    target = _targets(rng, (shape[0], *shape[2:]))
    loss = SoftmaxCrossEntropy(ignore_index=255, class_weights=weights)
    value = loss.forward(logits, target)
    grad = loss.backward()
    lt = torch.tensor(logits, requires_grad=True)
    wt = None if weights is None else torch.tensor(weights)
    ref = torch.nn.functional.cross_entropy(lt, torch.tensor(target), weight=wt, ignore_index=255)
    ref.backward()
    assert isinstance(value, float)
    assert abs(value - ref.item()) <= TOL
    assert grad.shape == logits.shape and grad.dtype == np.float32
    np.testing.assert_allclose(grad, lt.grad.numpy(), atol=TOL)


def test_cross_entropy_all_ignored_is_zero_not_nan(rng):
    loss = SoftmaxCrossEntropy(ignore_index=-1)
    value = loss.forward(rng.standard_normal((2, 3, 2, 2)).astype(np.float32), np.full((2, 2, 2), -1))
    assert value == 0.0
    grad = loss.backward()
    assert grad.shape == (2, 3, 2, 2) and not grad.any()


def test_cross_entropy_extreme_logits_stay_finite():
    logits = np.array([[1000.0, -1000.0], [-1000.0, 1000.0]], np.float32)
    loss = SoftmaxCrossEntropy()
    assert loss.forward(logits, np.array([1, 1])) == pytest.approx(1000.0)
    assert np.isfinite(loss.backward()).all()


def test_cross_entropy_bad_input():
    loss = SoftmaxCrossEntropy(class_weights=[1.0, 2.0])
    with pytest.raises(ShapeError, match=r"got logits \(4, 2\) and targets \(3,\)"):
        loss.forward(np.zeros((4, 2), np.float32), np.zeros(3, np.int64))
    with pytest.raises(ShapeError, match="integer targets"):
        loss.forward(np.zeros((4, 2), np.float32), np.zeros(4, np.float32))
    with pytest.raises(DataError, match=r"targets must be in \[0, 2\).*got 5"):
        loss.forward(np.zeros((2, 2), np.float32), np.array([0, 5]))
    with pytest.raises(ShapeError, match=r"class_weights has shape \(2,\), expected \(3,\)"):
        loss.forward(np.zeros((2, 3), np.float32), np.array([0, 1]))
    with pytest.raises(ConfigError):
        SoftmaxCrossEntropy(class_weights=[1.0, -1.0])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("pos_weight", [None, np.array([1.0, 3.0, 0.5])])
def test_bce_with_logits(reduction, pos_weight, check_loss_grad, torch, rng):
    logits = (rng.standard_normal((5, 3)) * 4).astype(np.float32)
    target = rng.uniform(0, 1, (5, 3)).astype(np.float32)
    loss = BCEWithLogits(pos_weight=pos_weight, reduction=reduction)
    check_loss_grad(loss, logits.astype(np.float64), target)
    value = loss.forward(logits, target)
    grad = loss.backward()
    lt = torch.tensor(logits, requires_grad=True)
    pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(lt, torch.tensor(target), pos_weight=pw,
                                                               reduction=reduction)
    ref.backward()
    assert abs(value - ref.item()) <= TOL * max(1.0, abs(ref.item()))
    np.testing.assert_allclose(grad, lt.grad.numpy(), atol=TOL)


def test_bce_is_stable_for_huge_logits():
    loss = BCEWithLogits()
    with np.errstate(over="raise", invalid="raise"):
        value = loss.forward(np.array([1e4, -1e4], np.float32), np.array([0.0, 1.0]))
    assert value == pytest.approx(1e4)
    np.testing.assert_allclose(loss.backward(), [0.5, -0.5])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("beta", [1.0, 0.3, 0.0])
def test_smooth_l1(reduction, beta, check_loss_grad, torch, rng):
    pred = rng.standard_normal((4, 6)).astype(np.float32)
    target = rng.standard_normal((4, 6)).astype(np.float32)
    loss = SmoothL1Loss(beta=beta, reduction=reduction)
    if beta > 0:  # the L1 loss has a kink wherever pred == target; everywhere else it is smooth
        check_loss_grad(loss, pred.astype(np.float64), target)
    value = loss.forward(pred, target)
    grad = loss.backward()
    pt = torch.tensor(pred, requires_grad=True)
    ref = torch.nn.functional.smooth_l1_loss(pt, torch.tensor(target), beta=beta, reduction=reduction)
    ref.backward()
    assert abs(value - ref.item()) <= TOL * max(1.0, abs(ref.item()))
    np.testing.assert_allclose(grad, pt.grad.numpy(), atol=TOL)


def test_regression_losses_bad_input():
    with pytest.raises(ShapeError, match=r"shape \(2, 3\), got \(3, 2\)"):
        SmoothL1Loss().forward(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(ShapeError, match=r"shape \(2, 3\), got \(2,\)"):
        BCEWithLogits().forward(np.zeros((2, 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ConfigError, match="reduction"):
        SmoothL1Loss(reduction="none")
