"""Stage ``download``: fetch (or generate) a task's dataset and write its ``train``/``test`` shards.

Output: ``data/<task>/processed/{train,test}/`` (a few ``.npz`` shards + manifest each: what DVC caches and
``dvc push`` shares). Downloaded archives are kept in a per-user cache outside the repository
(``$XPVISION_DOWNLOAD_CACHE``, default ``~/.cache/xpvision/downloads``) so that changing ``max_images`` or the
image size never downloads again; generated sources (``digits``, ``digit-scenes``) are rebuilt in a temporary
folder on every run, since they are deterministic and quick, and would otherwise go stale. A ``root`` (a local
extracted copy) is read in place; only its lock / file record is kept in that cache (``local/``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from xpvision import atomic, tracking
from xpvision.config import DownloadConfig, Params, SceneDownloadConfig, block_dict
from xpvision.stages import TaskPaths

GENERATED = ("digits", "digit-scenes")


def download_cache() -> Path:
    """Folder keeping downloaded archives between runs and clones."""
    default = Path.home() / ".cache" / "xpvision" / "downloads"
    return Path(os.environ.get("XPVISION_DOWNLOAD_CACHE") or default)


def prepare_config(task: str, cfg: DownloadConfig | SceneDownloadConfig):
    """The data library's :class:`~xpvision.data.prepare.PrepareConfig` for a ``download`` block."""
    from xpvision.data.prepare import PrepareConfig
    from xpvision.data.scenes import SceneConfig

    common = {"source": cfg.dataset, "task": task, "mirrors": cfg.mirrors, "use_official": cfg.use_official,
              "root": cfg.root,
              "max_images": cfg.max_images, "shard_size": cfg.shard_size, "progress": False}
    if isinstance(cfg, DownloadConfig):
        return PrepareConfig(**common, digits_seed=cfg.seed)
    # [train, test], or one split named twice: prepare then divides it
    splits = None if cfg.splits is None else {"train": cfg.splits[0], "test": cfg.splits[-1]}
    return PrepareConfig(
        **common, classes=cfg.classes, voc_classes=cfg.voc_classes, splits=splits, box_policy=cfg.box_policy,
        voc_pixel_origin=cfg.voc_pixel_origin,
        image_size=None if cfg.dataset == "digit-scenes" else (cfg.image_size, cfg.image_size),
        scenes=SceneConfig(n_train=cfg.num_train, n_test=cfg.num_test, image_size=cfg.image_size,
                           min_digit_size=cfg.digit_size[0], max_digit_size=cfg.digit_size[1],
                           max_occlusion=cfg.max_occlusion, seed=cfg.seed))


def run(params: Params, task: str) -> None:
    from xpvision.data.prepare import prepare

    cfg = params.download[task]
    paths = TaskPaths(task)
    with tracking.stage_run("download", paths.pipeline_run, params.tracking) as stage:
        stage.log_params(block_dict(cfg))
        with tempfile.TemporaryDirectory(prefix="xpvision-generated-") as scratch:
            raw = Path(scratch) if cfg.dataset in GENERATED else download_cache()
            summary = prepare(prepare_config(task, cfg), raw, paths.processed)
        counts = {"train_images": summary["train"], "test_images": summary["test"],
                  "classes": len(summary["classes"])}
        atomic.write_json(paths.reports / "data.json", {**counts, "class_names": summary["classes"]})
        stage.log_metrics(counts)
        print(f"{task}: {cfg.dataset}: {counts['train_images']} train / {counts['test_images']} test images, "
              f"{counts['classes']} classes -> {paths.processed}")
