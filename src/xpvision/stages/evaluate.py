"""Stage ``evaluate``: test-set metrics of a trained model and the figures drawn from them.

The model's task (looked up by its ``meta['kind']`` in :mod:`xpvision.tasks`) computes the metrics and draws
the figures. Outputs: ``reports/<task>/metrics.json`` (DVC metrics), ``reports/<task>/figures/`` (confusion
matrix and sample predictions; PR curves and drawn detections; segmentation overlays) and
``reports/<task>/per_class.csv`` (``class, metric, score``: recall, AP@0.5 or IoU per class; a DVC plot).
"""

from __future__ import annotations

from pathlib import Path

from xpvision import atomic, tasks, tracking
from xpvision.config import Params, block_dict
from xpvision.stages import TaskPaths


def run(params: Params, task: str) -> None:
    from xpvision.data.loader import DataLoader
    from xpvision.data.shards import ShardDataset
    from xpvision.export.inference import load_trained_model, normalization_of

    cfg, paths = params.evaluate[task], TaskPaths(task)
    with tracking.stage_run("evaluate", paths.pipeline_run, params.tracking,
                            data_paths=(str(paths.processed),)) as stage:
        stage.log_params(block_dict(cfg))
        model, meta = load_trained_model(paths.model_dir)
        model.to(params.train[task].device)  # evaluated where it was trained
        test_set = ShardDataset(paths.processed / "test")
        loader = DataLoader(test_set, cfg.batch_size, normalization=normalization_of(meta))
        paths.figures.mkdir(parents=True, exist_ok=True)
        options = {k: v for k, v in block_dict(cfg).items() if k != "batch_size"}
        metrics, per_class = tasks.build_task(meta["kind"], model, meta).test_report(
            model, loader, test_set, paths.figures, **options)
        write_per_class(paths.reports / "per_class.csv", *per_class)
        atomic.write_json(paths.reports / "metrics.json", metrics)
        stage.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        stage.log_artifact(paths.reports / "metrics.json")
        stage.log_artifact(paths.figures, "figures")
        print(f"{task}: " + ", ".join(f"test {k}={v:.4g}" for k, v in metrics.items()
                                      if isinstance(v, float)))


def write_per_class(path: Path, classes: list[str], metric: str, scores: list[float]) -> None:
    """``class,metric,score`` rows (classes without test examples are left out)."""
    import pandas as pd

    table = pd.DataFrame({"class": classes, "metric": metric, "score": scores}).dropna()
    atomic.write_text(path, table.to_csv(index=False, float_format="%.6g"))
