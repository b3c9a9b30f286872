"""The MLflow pyfunc flavour of an xpvision model, as a *loader module* (no ``mlflow`` import here).

:func:`xpvision.tracking.save_pyfunc_model` writes an MLflow model whose ``loader_module`` is this module and
whose data is the model folder (``model.npz`` + ``model.json``); the xpvision package is bundled as its code,
so ``mlflow models predict -m <model> -i input.json --env-manager local`` runs it.

Input: ``(N, C, H, W)`` float32 pixels in [0, 1] (JSON ``{"inputs": [...]}``). Output: a DataFrame with one
row per image (classification: ``label``, ``class_id``, ``score``), one row per detection (detection:
``image``, ``label``, ``score``, ``x1``, ``y1``, ``x2``, ``y2``), or the ``(N, H, W)`` int64 class map
(segmentation).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class XPVisionPyfunc:
    """What ``mlflow.pyfunc.load_model`` returns: a loaded model with ``predict``."""

    def __init__(self, model_dir: str) -> None:
        from xpvision.export.inference import load_trained_model

        self.model, self.meta = load_trained_model(model_dir)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        from xpvision.export.inference import predict
        from xpvision.tasks import task_class

        pixels = np.asarray(model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input,
                            dtype=np.float32)
        threshold = float((params or {}).get("score_threshold", 0.3))
        results = predict(self.model, self.meta, pixels, score_threshold=threshold)
        return task_class(self.meta["kind"]).pyfunc_output(results)


def _load_pyfunc(data_path: str) -> XPVisionPyfunc:
    """MLflow's entry point for ``loader_module`` models: ``data_path`` is the saved model folder."""
    return XPVisionPyfunc(data_path)
