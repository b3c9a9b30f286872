"""Stage ``export``: ONNX model and MLflow pyfunc model of a trained task, both checked before they are kept.

* ``models/<task>/model.onnx``: built with the ``onnx`` package (:mod:`xpvision.export.onnx_graph`); it takes
  pixels in [0, 1] and applies the model's normalisation itself. onnxruntime must reproduce xpvision's output
  on ``check_samples`` test images within ``atol`` (max abs error), else the stage fails and writes nothing.
* ``models/<task>/mlflow/``: the pyfunc model (``mlflow models predict -m models/<task>/mlflow ...``); its
  predictions on the same images must equal those of :func:`xpvision.export.inference.predict`.
* ``reports/<task>/export.json``: the measured error (DVC metrics).

With ``tracking.log_models``, the pyfunc model is logged and registered as a new version of the MLflow
registered model ``<prefix>-<task>`` carrying the test metrics of ``reports/<task>/metrics.json`` (the
evaluate stage's, a dependency of this stage) as tags, with the alias ``candidate`` moved onto it. This is
the task's last stage: it marks the pipeline's parent MLflow run FINISHED.
"""

from __future__ import annotations

import json

import numpy as np

from xpvision import atomic, tasks, tracking
from xpvision.config import Params, block_dict
from xpvision.export.onnx_graph import ExportError
from xpvision.stages import TaskPaths


def run(params: Params, task: str) -> None:
    from xpvision.data.shards import ShardDataset
    from xpvision.export.inference import load_trained_model, network_input
    from xpvision.export.onnx_graph import onnx_parity, to_onnx

    cfg = params.export[task]
    paths = TaskPaths(task)
    with tracking.stage_run("export", paths.pipeline_run, params.tracking, final=True,
                            data_paths=(str(paths.processed),)) as stage:
        stage.log_params(block_dict(cfg))
        model, meta = load_trained_model(paths.model_dir)
        test_set = ShardDataset(paths.processed / "test")
        count = min(cfg.check_samples, len(test_set))
        images = np.stack([test_set[i]["image"] for i in range(count)])  # (N, H, W, C) uint8
        pixels = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255  # (N, C, H, W)
        onnx_model = to_onnx(model, meta["input_shape"], opset=cfg.opset, name=f"xpvision-{task}",
                             probabilities=tasks.task_class(meta["kind"]).onnx_probabilities,
                             normalization=meta["normalization"])
        error = onnx_parity(model, onnx_model, pixels, network_input=network_input(meta, pixels))
        if not error <= cfg.atol:
            raise ExportError(f"{task}: onnxruntime differs from xpvision by {error:.3g} (max abs) on "
                              f"{count} test images, more than export.{task}.atol = {cfg.atol:g}; "
                              "model.onnx not written")
        atomic.write_bytes(paths.model_dir / "model.onnx", onnx_model.SerializeToString())
        pyfunc_dir = tracking.save_pyfunc_model(paths.model_dir, paths.model_dir / "mlflow", pixels[:2])
        check_pyfunc(pyfunc_dir, model, meta, pixels)
        report = {"onnx_max_abs_error": error, "onnx_opset": cfg.opset, "checked_images": count}
        atomic.write_json(paths.reports / "export.json", report)
        stage.log_metrics(report)
        stage.log_artifact(paths.model_dir / "model.onnx", "model")
        registered = ""
        if params.tracking.log_models:
            stage.log_artifact(pyfunc_dir, "mlflow_model")
            metrics = json.loads((paths.reports / "metrics.json").read_text(encoding="utf-8"))
            name = f"{params.tracking.experiment_prefix}-{task}"
            version = stage.register_model(name, "mlflow_model", {f"test_{k}": v for k, v in metrics.items()})
            registered = f", registered as {name} version {version} (@{tracking.CANDIDATE_ALIAS})"
        print(f"{task}: ONNX opset {cfg.opset} max abs error {error:.2e} on {count} test images; "
              f"MLflow model {pyfunc_dir}{registered}")


def check_pyfunc(pyfunc_dir, model, meta: dict, pixels: np.ndarray) -> None:
    """The pyfunc model, loaded the way MLflow loads it, predicts what xpvision predicts."""
    from xpvision.export.inference import predict
    from xpvision.export.pyfunc import XPVisionPyfunc

    served = XPVisionPyfunc(str(pyfunc_dir / "data" / "model")).predict(pixels)
    if not tasks.task_class(meta["kind"]).pyfunc_agrees(served, predict(model, meta, pixels)):
        raise ExportError(f"the MLflow model in {pyfunc_dir} predicts differently from xpvision")
