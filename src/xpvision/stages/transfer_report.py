"""Stage ``transfer_report``: transfer learning from the digits classifier vs training from scratch.

For each task in ``transfer.tasks`` and each mode in ``transfer.modes`` (head / partial / full), the task's
fine-tuning network (``train.<task>_ft``: model, optimizer, lr, lr scale) is trained for ``transfer.epochs``
epochs on the first ``transfer.subset_size`` training images, once initialised from
``models/classification`` and once from scratch with the same layers frozen, same seed and data
(:func:`xpvision.transfer.comparison_run`), then evaluated on the same number of test images.

The runs are independent: worker processes run them (one per core or ``XPVISION_NUM_THREADS``; 1 runs them
in this process). Each seeds its network and reads its data itself, and the engine gives the same bits for
any thread count: the table is the same for any worker count. Only this process talks to MLflow.

Outputs in ``reports/transfer/``: ``transfer_comparison.md`` / ``.json`` (the table), ``metrics.json``
(``<task>.<mode>.<pretrained|scratch>``: the primary metric, DVC metrics) and ``comparison.png``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xpvision import atomic, tasks, tracking
from xpvision.config import Params, TrainConfig, TransferConfig, block_dict, build_block
from xpvision.stages import TaskPaths

REPORTS = Path("reports") / "transfer"
SOURCE = TaskPaths("classification").model_dir  # the trained model every pretrained run starts from


def run(params: Params) -> None:
    from xpvision.transfer import write_comparison
    from xpvision.visualize import plot_comparison

    cfg = params.transfer
    data_paths = tuple(str(TaskPaths(task).processed) for task in cfg.tasks)
    with tracking.standalone_run("transfer_report", "transfer", params.tracking,
                                 data_paths=data_paths) as stage:
        stage.log_params(block_dict(cfg))
        rows = comparison_rows(params)
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


@dataclass(frozen=True)
class ComparisonRun:
    """One run of the comparison in values that pickle, for a worker process: the ``train.<task>_ft`` block
    as a dict (its mappings are read-only proxies, which do not pickle)."""

    task: str
    mode: str
    pretrained: bool
    train: dict[str, Any]
    transfer: TransferConfig


def comparison_rows(params: Params, workers: int | None = None) -> list[dict[str, Any]]:
    """Every run's row (tasks, modes, pretrained before scratch), by ``workers`` processes (``None``: one per
    core or ``XPVISION_NUM_THREADS``), each at one engine thread when several share the cores."""
    from xpvision.data.workers import ordered_map, resolve_workers

    cfg = params.transfer
    runs = [ComparisonRun(task, mode, pretrained, block_dict(params.train[f"{task}_ft"]), cfg)
            for task in cfg.tasks for mode in cfg.modes for pretrained in (True, False)]
    workers = min(resolve_workers(workers), len(runs))
    one_run = functools.partial(run_one, threads=1 if workers > 1 else None)
    return list(ordered_map(one_run, runs, workers, "transfer_report"))


def run_one(spec: ComparisonRun, threads: int | None = None) -> dict[str, Any]:
    """Set up ``spec``'s data, task and network from the files and train it (:func:`comparison_run`) at
    ``threads`` engine threads (``None``: the default); its row, with ``task``."""
    from xpvision.nn.parallel import set_num_threads
    from xpvision.transfer import comparison_run

    if threads is not None:
        set_num_threads(threads)
    train_cfg, network, task_object, train, test = _setup(spec)
    row = comparison_run(network, SOURCE, task_object, train, test, mode=spec.mode,
                         pretrained=spec.pretrained, epochs=spec.transfer.epochs, seed=spec.transfer.seed,
                         freeze_layers=train_cfg.freeze_layers or None, optimizer=train_cfg.optimizer,
                         lr=train_cfg.lr, pretrained_lr_scale=train_cfg.pretrained_lr_scale,
                         include=("features.",))
    return {"task": spec.task, **row}


def _setup(spec: ComparisonRun):
    """``spec``'s train block, network builder, task object and loaders (the first ``subset_size`` images)."""
    from xpvision.data.loader import DataLoader, Normalization
    from xpvision.data.shards import ShardDataset
    from xpvision.data.subset import Subset

    task, size = spec.task, spec.transfer.subset_size
    train_cfg = build_block(TrainConfig, spec.train, "params.yaml", f"train.{task}_ft")
    train_set, test_set = (ShardDataset(TaskPaths(task).processed / split) for split in ("train", "test"))
    train_subset, test_subset = (Subset(d, np.arange(min(size, len(d)))) for d in (train_set, test_set))
    height, width, channels = train_set.manifest["image_shape"]
    classes = tasks.output_classes(task, train_set.classes)
    network = functools.partial(tasks.task_class(task).build_network, train_cfg.model,
                                dict(train_cfg.model_args), (channels, height, width), classes, train_subset)
    _, extra_meta = network()
    meta = {"kind": task, "task": f"{task}_ft", "classes": classes, **extra_meta}
    normalization = Normalization.from_meta(train_set.meta, "dataset")
    train_loader = DataLoader(train_subset, train_cfg.batch_size, shuffle=True, seed=spec.transfer.seed,
                              normalization=normalization)
    test_loader = DataLoader(test_subset, train_cfg.batch_size, normalization=normalization)
    task_object = tasks.build_task(task, None, meta, train_cfg.class_weights)
    return train_cfg, (lambda: network()[0]), task_object, train_loader, test_loader
