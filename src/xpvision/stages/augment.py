"""Stage ``augment``: the augmented training set (``data/<task>/augmented``) and a preview grid PNG.

The shard manifest records the input normalisation chosen by the transform list; training, evaluation,
export and ``xpvision predict`` all read it from there (through the model's metadata).
"""

from __future__ import annotations

from xpvision import tracking
from xpvision.config import Params, block_dict
from xpvision.stages import TaskPaths


def run(params: Params, task: str) -> None:
    from xpvision.data.augment import augment_dataset

    cfg = params.augment[task]
    paths = TaskPaths(task)
    with tracking.stage_run("augment", paths.pipeline_run, params.tracking,
                            data_paths=(str(paths.processed),)) as stage:
        stage.log_params(block_dict(cfg))
        preview = paths.reports / "augment_preview.png"
        summary = augment_dataset(
            paths.processed / "train", paths.augmented, [dict(t) for t in cfg.transforms], copies=cfg.copies,
            keep_original=cfg.keep_original, seed=cfg.seed, min_visibility=cfg.min_visibility,
            shard_size=params.download[task].shard_size, preview_path=preview,
            preview_count=cfg.preview_images)
        stage.log_metrics({"augmented_images": summary["count"]})
        if preview.exists():
            stage.log_artifact(preview, "figures")
        print(f"{task}: {summary['count']} augmented training images -> {paths.augmented} "
              f"(normalisation: {summary['normalization']['mode']})")
