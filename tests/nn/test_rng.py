import numpy as np
import pytest

from xpvision.nn import Dropout, Linear, rng


def test_manual_seed_makes_initialisation_and_dropout_repeat(xp):
    def run():
        rng.manual_seed(42)
        w = Linear(4, 3).params["W"].copy()
        mask = Dropout(0.5).forward(xp.ones((8, 8), dtype=xp.float32))
        return w, mask

    w1, m1 = run()
    w2, m2 = run()
    np.testing.assert_array_equal(w1, w2)
    assert bool((m1 == m2).all())
    rng.manual_seed(43)
    assert not np.array_equal(Linear(4, 3).params["W"], w1)


def test_uniform_dtype_and_range():
    rng.manual_seed(0)
    u = rng.uniform((1000,), np, np.float32)
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() < 1


@pytest.mark.parametrize("seed", [-1, 1.5, "7"])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="non-negative integer"):
        rng.manual_seed(seed)


def test_batch_part_draws_this_process_rows_of_the_whole_batch():
    rng.manual_seed(7)
    whole = rng.uniform((10, 3))
    parts = []
    for start, stop in ((0, 4), (4, 7), (7, 10)):
        rng.manual_seed(7)
        with rng.batch_part(10, start):
            parts.append(rng.uniform((stop - start, 3)))
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    with pytest.raises(ValueError, match="exceeds the batch"), rng.batch_part(10, 8):
        rng.uniform((3, 3))
    assert rng.uniform((2, 3)).shape == (2, 3)  # outside the block: plain draws again


@pytest.mark.gpu
def test_dropout_masks_are_the_same_on_either_device(gpu):
    """A seed gives the GPU the CPU's dropout masks (so a model trains alike on both, up to rounding)."""
    masks = []
    for xp in (np, gpu):
        rng.manual_seed(5)
        layer = Dropout(0.5)
        masks.append([layer.forward(xp.ones((6, 7), dtype=xp.float32)) for _ in range(2)])
    for cpu_mask, gpu_mask in zip(*masks, strict=True):
        np.testing.assert_array_equal(gpu.asnumpy(gpu_mask), cpu_mask)
    assert not np.array_equal(masks[0][0], masks[0][1])  # the stream moves on between draws
