"""Stage ``train``: train a task's network on its augmented training set, resuming from a checkpoint.

Validation holds out original images with all their augmented variants (:mod:`xpvision.data.subset`). The
checkpoint (``checkpoints/<task>/``, DVC ``persist``) is named by a fingerprint of the configuration
(:mod:`xpvision.stages.checkpoints`), so none of another configuration is resumed. Writes
``models/<task>/model.{npz,json}`` and ``reports/<task>/train.json``, ``history.csv``,
``training_curves.png``.

With ``processes: K > 1`` the stage runs in K processes (:mod:`xpvision.distributed`): each reads its part of
every batch, and the root (rank 0) alone writes the checkpoint, the model, the reports and the MLflow run
(``processes`` logged), so K processes make one run; a run killed with K processes resumes with any number.
"""

from __future__ import annotations

import contextlib
from typing import Any

from xpvision import atomic, distributed, tasks, tracking
from xpvision.config import Params, TrainConfig, block_dict, data_task
from xpvision.nn import rng
from xpvision.stages import TaskPaths
from xpvision.stages.checkpoints import checkpoint_path, fingerprint


def build_seeded_network(kind: str, cfg: TrainConfig, input_shape: tuple[int, int, int], classes: list[str],
                         train_set: Any) -> tuple[Any, dict[str, Any]]:
    """The task's network, its initial weights drawn from ``cfg.seed`` (the same in every process)."""
    rng.manual_seed(cfg.seed)
    return tasks.task_class(kind).build_network(cfg.model, dict(cfg.model_args), input_shape, classes,
                                                train_set)


def build_optimizer(cfg: TrainConfig, model: Any, report: Any | None):
    """The optimizer (pretrained layers at ``pretrained_lr_scale`` times the lr) and its schedule."""
    from xpvision import optim, schedules, transfer

    groups = (model if report is None
              else transfer.param_groups(model, cfg.lr, cfg.pretrained_lr_scale, report))
    optimizer = optim.build_optimizer(cfg.optimizer, groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, schedules.build_schedule(cfg.schedule, optimizer, epochs=cfg.epochs,
                                               warmup_epochs=cfg.warmup_epochs)


def run(params: Params, task: str) -> None:
    from xpvision import transfer
    from xpvision.data.loader import Normalization
    from xpvision.data.subset import Subset, split_indices
    from xpvision.io import save_model
    from xpvision.train import Trainer

    cfg, paths, kind = params.train[task], TaskPaths(task), data_task(task)
    comm = distributed.world(cfg.device)
    tracked = tracking.stage_run("train", paths.pipeline_run, params.tracking,
                                 data_paths=(str(paths.processed), str(paths.augmented)))
    with tracked if comm.is_root else contextlib.nullcontext(tracking.Untracked()) as stage:
        stage.log_params({**block_dict(cfg), "processes": comm.size})
        augmented, originals = distributed.open_shards([paths.augmented, paths.processed / "train"], comm)
        train_idx, val_idx = split_indices(originals, augmented, cfg.val_fraction, cfg.seed)
        normalization = Normalization.from_meta(augmented.meta)
        height, width, channels = augmented.manifest["image_shape"]
        classes = tasks.output_classes(kind, augmented.classes)
        model, extra_meta = build_seeded_network(kind, cfg, (channels, height, width), classes, augmented)
        meta = {"kind": kind, "task": task, "classes": classes, "input_shape": [channels, height, width],
                "normalization": normalization.to_dict(), "dataset": augmented.meta.get("source"),
                **extra_meta}
        init_files, report = [], None
        if cfg.init_from is not None:
            source = TaskPaths(cfg.init_from).model_dir
            report = transfer.initialise_from(model, source, cfg.transfer_mode, cfg.freeze_layers)
            init_files, meta["init_from"] = [source / "model.npz", source / "model.json"], cfg.init_from
            if comm.is_root:
                atomic.write_text(paths.reports / "transfer_init.md", report.to_markdown())
                stage.log_artifact(paths.reports / "transfer_init.md")
        model.to(cfg.device)  # before the optimizer, which keeps views of the parameters
        optimizer, schedule = build_optimizer(cfg, model, report)
        key = fingerprint(cfg, [paths.augmented / "manifest.json",
                                paths.processed / "train" / "manifest.json", *init_files])
        stage.set_tags({"xpvision.checkpoint": key})
        trainer = Trainer(model, tasks.build_task(kind, model, meta, cfg.class_weights), optimizer,
                          epochs=cfg.epochs, checkpoint_path=checkpoint_path(paths, key, comm),
                          scheduler=schedule, seed=cfg.seed, grad_clip=cfg.grad_clip, callbacks=[stage],
                          parallel=distributed.DataParallel(comm, model) if comm.size > 1 else None)
        with stage.system_metrics():  # CPU, memory (and GPU) use while training, in the MLflow run
            history = trainer.fit(*distributed.loaders(
                Subset(augmented, train_idx), Subset(originals, val_idx), cfg.batch_size, comm,
                seed=cfg.seed, normalization=normalization, device=cfg.device))
        if not comm.is_root:
            return
        save_model(paths.model_dir, model.to("cpu"), meta)
        summary = write_reports(paths, history, trainer.task.primary_metric)
        for path in (paths.model_dir / "model.json", paths.model_dir / "model.npz",
                     paths.reports / "history.csv", paths.reports / "training_curves.png"):
            stage.log_artifact(path, "model" if path.suffix in (".json", ".npz") else "training")
        print(f"{task}: {len(history)} epochs, " + ", ".join(
            f"{k}={v:.4g}" for k, v in summary.items() if k.startswith(("train_loss", "val_"))))


def write_reports(paths: TaskPaths, history: list[dict], primary_metric: str) -> dict[str, Any]:
    """``history.csv`` (a row per epoch), ``train.json`` (last epoch, best validation; returned), curves."""
    import pandas as pd

    from xpvision.visualize import plot_history

    rows = [{k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            for record in history]
    table = pd.DataFrame(rows)
    atomic.write_text(paths.reports / "history.csv", table.to_csv(index=False, float_format="%.6g"))
    primary, summary = f"val_{primary_metric}", dict(rows[-1])
    if primary in table:
        summary[f"best_{primary}"] = float(table[primary].max())
        summary["best_epoch"] = int(table.loc[table[primary].idxmax(), "epoch"])
    summary["train_time_s"] = float(table["time_s"].sum())
    atomic.write_json(paths.reports / "train.json", summary)
    plot_history(table, paths.reports / "training_curves.png")
    return summary
