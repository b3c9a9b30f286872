"""PR-curve PNG writer."""

import numpy as np
from PIL import Image

from xpvision.detection.metrics.voc import eval_detection_voc
from xpvision.detection.plots import plot_pr_curves


def test_writes_a_png_with_curves(tmp_path):
    gt = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)]
    preds = [np.array([[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 30, 30]], np.float32)]
    result = eval_detection_voc(preds, [np.array([0, 0, 1])], [np.array([0.9, 0.8, 0.7])], gt,
                                [np.array([0, 1])], num_classes=3)
    path = tmp_path / "reports" / "pr.png"
    plot_pr_curves(path, result["precision"], result["recall"], ["zero", "one", "two"], result["ap"])
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (500, 600, 3)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # something was drawn beyond the background
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
