"""Stage ``transfer_report``: transfer learning from the digits classifier vs training from scratch.

For each task in ``transfer.tasks`` and each mode in ``transfer.modes`` (head / partial / full), the task's
fine-tuning network (``train.<task>_ft``: model, optimizer, lr, lr scale) is trained for ``transfer.epochs``
epochs on the first ``transfer.subset_size`` training images, once initialised from
``models/classification`` and once from scratch with the same layers frozen, same seed and data
(:func:`xpvision.transfer.compare_transfer`), then evaluated on the same number of test images.

Outputs in ``reports/transfer/``: ``transfer_comparison.md`` / ``.json`` (the table), ``metrics.json``
(``<task>.<mode>.<pretrained|scratch>``: the primary metric, DVC metrics) and ``comparison.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xpvision import atomic, tasks, tracking
from xpvision.config import Params, block_dict
from xpvision.stages import TaskPaths

REPORTS = Path("reports") / "transfer"


def run(params: Params) -> None:
    from xpvision.transfer import compare_transfer, write_comparison
    from xpvision.visualize import plot_comparison

    cfg = params.transfer
    source = TaskPaths("classification").model_dir
    data_paths = tuple(str(TaskPaths(task).processed) for task in cfg.tasks)
    with tracking.standalone_run("transfer_report", "transfer", params.tracking,
                                 data_paths=data_paths) as stage:
        stage.log_params(block_dict(cfg))
        rows = []
        for task in cfg.tasks:
            train_cfg = params.train[f"{task}_ft"]
            network, task_object, train_loader, test_loader = _setup(task, train_cfg, cfg.subset_size,
                                                                     cfg.seed)
            compared = compare_transfer(
                network, source, task_object, train_loader, test_loader, epochs=cfg.epochs, seed=cfg.seed,
                modes=cfg.modes, freeze_layers=train_cfg.freeze_layers or None, optimizer=train_cfg.optimizer,
                lr=train_cfg.lr, pretrained_lr_scale=train_cfg.pretrained_lr_scale, include=("features.",))
            rows += [{"task": task, **row} for row in compared]
        REPORTS.mkdir(parents=True, exist_ok=True)
        markdown, table = write_comparison(rows, REPORTS)
        metrics = {f"{r['task']}.{r['mode']}.{'pretrained' if r['pretrained'] else 'scratch'}": r["value"]
                   for r in rows}
        atomic.write_json(REPORTS / "metrics.json", metrics)
        plot_comparison(rows, REPORTS / "comparison.png")
        stage.log_metrics(metrics)
        for path in (markdown, table, REPORTS / "comparison.png"):
            stage.log_artifact(path)
        print(Path(markdown).read_text(encoding="utf-8"))


def _setup(task: str, train_cfg: Any, subset_size: int, seed: int):
    """The network builder, task object and loaders (first ``subset_size`` train / test images)."""
    from xpvision.data.loader import DataLoader, Normalization
    from xpvision.data.shards import ShardDataset
    from xpvision.data.subset import Subset

    paths = TaskPaths(task)
    train_set, test_set = ShardDataset(paths.processed / "train"), ShardDataset(paths.processed / "test")
    train_subset = Subset(train_set, np.arange(min(subset_size, len(train_set))))
    test_subset = Subset(test_set, np.arange(min(subset_size, len(test_set))))
    height, width, channels = train_set.manifest["image_shape"]
    classes = tasks.output_classes(task, train_set.classes)

    def network():
        return tasks.task_class(task).build_network(train_cfg.model, dict(train_cfg.model_args),
                                                    (channels, height, width), classes, train_subset)

    _, extra_meta = network()
    meta = {"kind": task, "task": f"{task}_ft", "classes": classes, **extra_meta}
    normalization = Normalization.from_meta(train_set.meta, "dataset")
    train_loader = DataLoader(train_subset, train_cfg.batch_size, shuffle=True, seed=seed,
                              normalization=normalization)
    test_loader = DataLoader(test_subset, train_cfg.batch_size, normalization=normalization)
    task_object = tasks.build_task(task, None, meta, train_cfg.class_weights)
    return (lambda: network()[0]), task_object, train_loader, test_loader
