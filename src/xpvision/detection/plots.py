"""Precision-recall curve plots as PNG (matplotlib, Agg backend, imported only here and only when called)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from xpvision import atomic


def plot_pr_curves(path: str | os.PathLike, precisions: Sequence[np.ndarray],
                   recalls: Sequence[np.ndarray], class_names: Sequence[str], ap: np.ndarray | None = None,
                   title: str | None = None) -> None:
    """Write one PR curve per class to ``path`` (PNG, written atomically).

    Args:
        precisions, recalls: per class ``(n,)`` float arrays by descending score (``eval_detection_voc``'s
            ``'precision'``/``'recall'``); classes with empty curves show as "no detections" in the legend.
        class_names: ``C`` names; ap: optional ``(C,)`` AP per class, shown in the legend.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
    try:
        for k, name in enumerate(class_names):
            label = name if ap is None or np.isnan(ap[k]) else f"{name} (AP {ap[k]:.3f})"
            if len(recalls[k]) == 0:
                axes.plot([], [], label=f"{name}: no detections")
                continue
            # the monotone precision envelope VOC integrates, drawn as a step curve
            envelope = np.maximum.accumulate(np.asarray(precisions[k])[::-1])[::-1]
            axes.step(np.concatenate([[0.0], recalls[k]]), np.concatenate([[envelope[0]], envelope]),
                      where="pre", label=label)
        axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.01),
                 title=title or "Precision-recall per class")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small", loc="lower left", ncol=2 if len(class_names) > 10 else 1)
        figure.tight_layout()
        with atomic.atomic_path(path, suffix=".png") as tmp:
            figure.savefig(tmp, format="png")
    finally:
        plt.close(figure)
