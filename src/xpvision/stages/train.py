"""Stage ``train``: train a task's network on its augmented training set, resuming from a checkpoint.

Validation: a seeded ``val_fraction`` of the *original* training images is held out, and every augmented
variant of those images is left out of training, so no validation image is seen in any form.

Checkpoints live in ``checkpoints/<task>/`` (a DVC ``persist: true`` output: ``dvc repro`` does not delete it,
so a killed run resumes where it stopped). The file is named by a fingerprint of everything that determines
the result (the train block, the training data manifests, the initial weights, the source code), so a
checkpoint of another configuration is never resumed; stale ones are deleted.

Outputs: ``models/<task>/model.{npz,json}``, ``reports/<task>/train.json`` (metrics), ``reports/<task>/
history.csv`` (training curves, DVC plots) and ``reports/<task>/training_curves.png``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from xpvision import atomic, tracking
from xpvision.config import Params, TrainConfig, block_dict
from xpvision.errors import DataError
from xpvision.nn import rng
from xpvision.stages import TaskPaths, tasks


class Subset:
    """The samples of ``dataset`` at ``indices`` (a view, nothing copied)."""

    def __init__(self, dataset: Any, indices: np.ndarray) -> None:
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[int(self.indices[i])]


def split_indices(originals: Any, augmented: Any, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """``(train indices into augmented, val indices into originals)``.

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


def fingerprint(cfg: TrainConfig, files: list[Path]) -> str:
    """SHA-256 (16 hex digits) of the train block, the given files and the xpvision source code."""
    digest = hashlib.sha256(json.dumps(block_dict(cfg), sort_keys=True).encode())
    package = Path(__file__).resolve().parents[1]
    for path in [*files, *sorted(package.rglob("*.py"))]:
        digest.update(str(path.relative_to(package) if path.is_relative_to(package) else path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def checkpoint_path(paths: TaskPaths, key: str) -> Path:
    """``checkpoints/<task>/<key>.npz``, after deleting checkpoints of other configurations."""
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    for stale in paths.checkpoints.glob("*.npz"):
        if stale.stem != key:
            stale.unlink()
    return paths.checkpoints / f"{key}.npz"


def initialise(model: Any, cfg: TrainConfig, source_dir: Path):
    """Load the ``features.*`` weights of the model in ``source_dir`` into ``model`` (and its head, as
    convolutions, into an FCN whose ``fc6`` sits on the backbone) and apply the transfer mode; return the
    :class:`~xpvision.transfer.TransferReport`."""
    from xpvision import transfer

    report = transfer.transfer_weights(model, source_dir, include=("features.",))
    if getattr(model, "head_on_backbone", False):
        transfer.convolutionalize_head(model, source_dir, report)
    transfer.set_transfer_mode(model, cfg.transfer_mode, report, cfg.freeze_layers)
    return report


def build_optimizer(cfg: TrainConfig, model: Any, report: Any | None):
    """The optimizer (``pretrained_lr_scale`` times the lr for pretrained layers) and its schedule."""
    from xpvision import optim, transfer

    groups = model if report is None else transfer.param_groups(model, cfg.lr, cfg.pretrained_lr_scale,
                                                                report)
    optimizer = optim.build_optimizer(cfg.optimizer, groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = optim.build_schedule(cfg.schedule, optimizer, epochs=cfg.epochs,
                                    warmup_epochs=cfg.warmup_epochs)
    return optimizer, schedule


def build_seeded_network(kind: str, cfg: TrainConfig, input_shape: tuple[int, int, int], classes: list[str],
                         train_set: Any) -> tuple[Any, dict[str, Any]]:
    """:func:`tasks.build_network` with the initial weights drawn from ``cfg.seed``: the same train block
    gives the same initial network in every process (unseeded, :mod:`xpvision.nn.rng` starts from OS
    entropy)."""
    rng.manual_seed(cfg.seed)
    return tasks.build_network(kind, cfg, input_shape, classes, train_set)


def run(params: Params, task: str) -> None:
    from xpvision.data.loader import DataLoader, Normalization
    from xpvision.data.shards import ShardDataset
    from xpvision.io import save_model
    from xpvision.train import Trainer

    cfg = params.train[task]
    paths, kind = TaskPaths(task), tasks.kind_of(task)
    with tracking.stage_run("train", paths.pipeline_run, params.tracking,
                            data_paths=(str(paths.processed), str(paths.augmented))) as stage:
        stage.log_params(block_dict(cfg))
        augmented = ShardDataset(paths.augmented)
        originals = ShardDataset(paths.processed / "train")
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
            report = initialise(model, cfg, source)
            init_files = [source / "model.npz", source / "model.json"]
            meta["init_from"] = cfg.init_from
            atomic.write_text(paths.reports / "transfer_init.md", report.to_markdown())
            stage.log_artifact(paths.reports / "transfer_init.md")
        model.to(cfg.device)
        optimizer, schedule = build_optimizer(cfg, model, report)
        key = fingerprint(cfg, [paths.augmented / "manifest.json",
                                paths.processed / "train" / "manifest.json", *init_files])
        stage.set_tags({"xpvision.checkpoint": key})
        trainer = Trainer(model, tasks.build_task(kind, model, meta, cfg.class_weights),
                          optimizer, epochs=cfg.epochs,
                          checkpoint_path=checkpoint_path(paths, key), scheduler=schedule, seed=cfg.seed,
                          grad_clip=cfg.grad_clip, callbacks=[stage])
        history = trainer.fit(
            DataLoader(Subset(augmented, train_idx), cfg.batch_size, shuffle=True, seed=cfg.seed,
                       normalization=normalization, device=cfg.device),
            DataLoader(Subset(originals, val_idx), cfg.batch_size, normalization=normalization,
                       device=cfg.device))
        model.to("cpu")
        save_model(paths.model_dir, model, meta)
        write_reports(paths, history, trainer.task.primary_metric)
        for path in (paths.model_dir / "model.json", paths.model_dir / "model.npz",
                     paths.reports / "history.csv", paths.reports / "training_curves.png"):
            stage.log_artifact(path, "model" if path.suffix in (".json", ".npz") else "training")
        final = history[-1]
        print(f"{task}: {len(history)} epochs, " + ", ".join(
            f"{k}={v:.4g}" for k, v in final.items() if k.startswith(("train_", "val_")) and _scalar(v)))


def write_reports(paths: TaskPaths, history: list[dict], primary_metric: str) -> None:
    """``history.csv`` (a row per epoch), ``train.json`` (last epoch + best validation), the curves PNG."""
    import pandas as pd

    table = pd.DataFrame([{k: v for k, v in record.items() if _scalar(v)} for record in history])
    atomic.write_text(paths.reports / "history.csv", table.to_csv(index=False, float_format="%.6g"))
    primary = f"val_{primary_metric}"
    summary = {k: v for k, v in history[-1].items() if _scalar(v)}
    if primary in table:
        summary[f"best_{primary}"] = float(table[primary].max())
        summary["best_epoch"] = int(table.loc[table[primary].idxmax(), "epoch"])
    summary["train_time_s"] = float(table["time_s"].sum())
    atomic.write_json(paths.reports / "train.json", summary)
    plot_history(table, paths.reports / "training_curves.png")


def plot_history(table: Any, path: Path) -> None:
    """Loss (left) and validation metrics (right) per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
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
    with atomic.atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
