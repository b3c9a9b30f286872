"""The validation split leaks no augmented copy of a validation image; Subset is a view."""

from pathlib import Path

import numpy as np
import pytest

from xpvision.data.subset import Subset, split_indices
from xpvision.errors import DataError


class FakeAugmented:
    """``variants`` consecutive samples per original, as augment_dataset writes them."""

    def __init__(self, originals: int, copies: int, keep_original: bool) -> None:
        self.meta = {"augment": {"copies": copies, "keep_original": keep_original}}
        self.folder = Path("augmented")
        self.length = originals * (copies + keep_original)

    def __len__(self) -> int:
        return self.length


@pytest.mark.parametrize(("copies", "keep"), [(1, True), (2, False), (0, True)])
def test_validation_images_are_left_out_of_training_in_every_form(copies, keep):
    originals = list(range(50))
    train, val = split_indices(originals, FakeAugmented(50, copies, keep), 0.2, seed=3)
    variants = copies + keep
    assert len(val) == 10 and len(set(val)) == 10
    assert set(train // variants).isdisjoint(val)  # no variant of a validation image is trained on
    assert set(train // variants) | set(val) == set(originals)
    again_train, again_val = split_indices(originals, FakeAugmented(50, copies, keep), 0.2, seed=3)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)


def test_split_refuses_an_augmented_set_of_the_wrong_size():
    with pytest.raises(DataError, match="run the augment stage again"):
        split_indices(list(range(10)), FakeAugmented(9, 1, True), 0.2, seed=0)


def test_subset_is_a_view_in_index_order():
    data = [{"i": i} for i in range(10)]
    subset = Subset(data, np.array([7, 2, 2]))
    assert len(subset) == 3 and [subset[k]["i"] for k in range(3)] == [7, 2, 2]
    assert subset[0] is data[7]
