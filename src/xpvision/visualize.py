"""Figures of training and evaluation, as PNGs written atomically: training curves, the confusion matrix, a
grid of sample predictions, the transfer-learning comparison. matplotlib is imported only when drawing.

Detection draws its own PR curves and boxes (:mod:`xpvision.detection.plots`,
:mod:`xpvision.detection.predict`), segmentation its overlays (:mod:`xpvision.segmentation.visualize`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xpvision import atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)
    _pyplot().close(figure)


def plot_history(table: Any, path: Path) -> None:
    """Loss (left) and validation metrics (right) per epoch from a history table (a pandas DataFrame with
    ``epoch``, ``train_loss`` and ``val_<metric>`` columns), as a PNG."""
    figure, (left, right) = _pyplot().subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    left.plot(table["epoch"], table["train_loss"], marker="o", label="train loss")
    if "val_loss" in table:
        left.plot(table["epoch"], table["val_loss"], marker="o", label="validation loss")
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    left.legend()
    for column in table.columns:
        if column.startswith("val_") and column != "val_loss":
            right.plot(table["epoch"], table[column], marker="o", label=column.removeprefix("val_"))
    right.set(xlabel="epoch", title="validation metrics")
    if right.lines:
        right.legend()
    _save(figure, path)


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], path: Path) -> None:
    """Confusion matrix (rows: actual class) of ``(N,)`` int labels, drawn by scikit-learn, as a PNG."""
    from sklearn.metrics import ConfusionMatrixDisplay

    size = 2 + 0.45 * len(classes)
    figure, axes = _pyplot().subplots(figsize=(size, size), constrained_layout=True)
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=range(len(classes)),
                                            display_labels=classes, ax=axes, colorbar=False)
    axes.set_title("test confusion matrix")
    _save(figure, path)


def plot_samples(images: list[np.ndarray], titles: list[str], correct: list[bool], path: Path) -> None:
    """A grid of ``(H, W, C)`` uint8 images titled ``predicted (actual)``, mistakes in red (nothing written
    for no images)."""
    if not images:
        return
    columns = min(8, len(images))
    rows = -(-len(images) // columns)
    figure, axes = _pyplot().subplots(rows, columns, figsize=(1.4 * columns, 1.6 * rows), squeeze=False,
                                      constrained_layout=True)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title, ok in zip(axes.flat, images, titles, correct, strict=False):
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        ax.set_title(title, fontsize=8, color="black" if ok else "red")
    _save(figure, path)


def plot_comparison(rows: list[dict], path: Path) -> None:
    """Grouped bars of :func:`xpvision.transfer.compare_transfer` rows (``task``, ``mode``, ``pretrained``,
    ``metric``, ``value``): the primary metric per task and mode, fine-tuned vs from scratch."""
    groups = list(dict.fromkeys((r["task"], r["mode"]) for r in rows))
    value = {(r["task"], r["mode"], r["pretrained"]): r["value"] for r in rows}
    positions = np.arange(len(groups))
    figure, axes = _pyplot().subplots(figsize=(1.6 + 1.3 * len(groups), 3.6), constrained_layout=True)
    for offset, pretrained, label in ((-0.2, True, "from the digits classifier"),
                                      (0.2, False, "from scratch")):
        axes.bar(positions + offset, [value[(*g, pretrained)] for g in groups], width=0.4, label=label)
    axes.set_xticks(positions, [f"{task}\n{mode}" for task, mode in groups])
    axes.set_ylabel(rows[0]["metric"] if rows else "")
    axes.set_title("transfer learning: fine-tuned vs from scratch")
    axes.legend()
    _save(figure, path)
