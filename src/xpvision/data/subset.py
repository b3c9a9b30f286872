"""Views of a dataset: :class:`Subset` and the validation split that keeps augmented variants out."""

from __future__ import annotations

from typing import Any

import numpy as np

from xpvision.errors import DataError


class Subset:
    """The samples of ``dataset`` at ``indices`` (a view, nothing copied)."""

    def __init__(self, dataset: Any, indices: np.ndarray) -> None:
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[int(self.indices[i])]


def split_indices(originals: Any, augmented: Any, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """``(train indices into augmented, val indices into originals)``: a seeded ``val_fraction`` of the
    original images is held out, and every augmented variant of those images is left out of training.

    The augmented set holds ``variants`` consecutive samples per original image (the original if kept, then
    its copies), as :func:`xpvision.data.augment.augment_dataset` writes them.
    """
    n = len(originals)
    recipe = augmented.meta.get("augment", {})
    variants = int(recipe.get("copies", 0)) + int(bool(recipe.get("keep_original", True)))
    if len(augmented) != n * variants:
        raise DataError(f"{augmented.folder}: {len(augmented)} samples, expected {n} images x {variants} "
                        f"variants; run the augment stage again")
    n_val = max(1, round(n * val_fraction))
    val = np.sort(np.random.default_rng(seed).permutation(n)[:n_val])
    held_out = np.zeros(n, dtype=bool)
    held_out[val] = True
    train = np.flatnonzero(~np.repeat(held_out, variants))
    return train, val
