"""Run by the distributed tests, alone or under ``mpiexec -n K``: train a small classifier, a YOLO detector
with a batch-normalised backbone or an FCN-8s (learnable and frozen transposed convolutions) on shards in
``data_dir`` through :class:`xpvision.train.Trainer` and the data-parallel hook, reading as the train stage
does (:func:`xpvision.distributed.open_shards` and :func:`~xpvision.distributed.loaders`), then (root) save
the final weights and history to ``out``.

Every process also reports a SHA-256 of its final weights; the root stores them all, so the test checks that
the replicas agree. ``--fail-rank r --fail-step s``: process ``r`` raises at its ``s``-th training step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from xpvision import distributed
from xpvision.data.shards import write_shards
from xpvision.distributed.launch import run_in_group
from xpvision.nn import rng
from xpvision.optim import build_optimizer
from xpvision.schedules import build_schedule
from xpvision.tasks import ClassificationTask
from xpvision.train import Trainer

CLASSES = ["a", "b", "c"]


def write_data(folder: Path, kind: str, count: int, seed: int) -> None:
    """Learnable synthetic shards: classification, class = which quadrant is bright (16x16 grey); detection,
    one to three coloured squares (class = colour) on noise (32x32 RGB); segmentation, those scenes with a
    mask (colour + 1 inside the squares, 0 around). Several shards, so a process reads some of them only."""
    gen = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        if kind == "classification":
            label = int(gen.integers(3))
            image = gen.integers(0, 80, (16, 16, 1))
            y, x = divmod(label, 2)
            image[y * 8:(y + 1) * 8, x * 8:(x + 1) * 8] += 150
            samples.append({"image": image.astype(np.uint8), "label": label})
            continue
        scene = box_scene(gen)
        if kind == "segmentation":
            mask = np.zeros(scene["image"].shape[:2], np.uint8)
            for (x0, y0, x1, y1), label in zip(scene["boxes"].astype(int), scene["labels"], strict=True):
                mask[y0:y1, x0:x1] = label + 1
            scene = {"image": scene["image"], "mask": mask}
        samples.append(scene)
    write_shards(folder, samples, classes=CLASSES, shard_size=16)


def box_scene(gen: np.random.Generator) -> dict:
    """A detection sample: one to three coloured squares (class = colour) on 32x32 RGB noise."""
    image = gen.integers(0, 60, (32, 32, 3))
    boxes, labels = [], []
    for _ in range(int(gen.integers(1, 4))):
        size = int(gen.integers(6, 14))
        x0, y0 = (int(v) for v in gen.integers(0, 32 - size, 2))
        label = int(gen.integers(3))
        image[y0:y0 + size, x0:x0 + size, label] = 230
        boxes.append([x0, y0, x0 + size, y0 + size])
        labels.append(label)
    return {"image": image.astype(np.uint8), "boxes": np.array(boxes, np.float32),
            "labels": np.array(labels, np.int64), "difficult": np.zeros(len(labels), bool)}


class Recording:
    """A dataset that remembers which samples were asked for."""

    def __init__(self, dataset) -> None:
        self.dataset, self.asked = dataset, set()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        self.asked.add(int(i))
        return self.dataset[i]


def fail_at_step(task, step: int) -> None:
    """Make ``task`` raise at its ``step``-th training step in this process (fault injection)."""
    forward_loss, calls = task.forward_loss, []

    def failing(model, batch):
        calls.append(1)
        if len(calls) == step:
            raise RuntimeError(f"injected failure at step {step}")
        return forward_loss(model, batch)

    task.forward_loss = failing


def build(kind: str, train_set):
    rng.manual_seed(0)
    if kind == "classification":
        from xpvision.models import build_model

        model = build_model("deep_convnet", in_channels=1, num_classes=3, input_size=(16, 16))
        return model, ClassificationTask(3)
    if kind == "segmentation":
        from xpvision.segmentation.fcn import build_fcn
        from xpvision.tasks import SegmentationTask

        return build_fcn("8s", in_channels=3, num_classes=4, fc_channels=16), SegmentationTask(4)
    from xpvision.detection.yolo import build_detector
    from xpvision.tasks import DetectionTask

    model, extra = build_detector("yolo", in_channels=3, classes=CLASSES, input_size=(32, 32),
                                  train_set=train_set, head_channels=16,
                                  backbone_args={"batch_norm": True, "conv4_padding": 1})
    return model, DetectionTask(model, {"classes": CLASSES, **extra})


def main(args) -> None:
    comm = distributed.world("cpu")
    Path(args.out).parent.joinpath(f"pid-{comm.rank}").write_text(str(os.getpid()))
    shards, val_set = distributed.open_shards([Path(args.data) / "train", Path(args.data) / "val"], comm)
    train_set = Recording(shards)
    model, task = build(args.kind, shards)
    if args.fail_rank == comm.rank:
        fail_at_step(task, args.fail_step)
    optimizer = build_optimizer("adam", model, lr=args.lr, weight_decay=0.0)
    schedule = build_schedule("cosine", optimizer, epochs=args.epochs, warmup_epochs=min(1, args.epochs - 1))
    loaders = distributed.loaders(train_set, val_set, args.batch, comm, seed=3)
    parallel = distributed.DataParallel(comm, model, args.reduction) if comm.size > 1 else None
    checkpoint = args.checkpoint or Path(args.out).with_suffix(".ckpt.npz")
    trainer = Trainer(model, task, optimizer, epochs=args.epochs, scheduler=schedule, seed=5, progress=False,
                      checkpoint_path=checkpoint, parallel=parallel)
    history = trainer.fit(*loaders)
    state = model.state_dict()
    digest = hashlib.sha256(b"".join(state[k].tobytes() for k in sorted(state))).hexdigest()
    parts = comm.allgather_arrays({"digest": np.frombuffer(digest.encode(), np.uint8),
                                   "asked": np.array(sorted(train_set.asked), dtype=np.int64)})
    if comm.is_root:
        np.savez(args.out, **{f"w.{k}": v for k, v in state.items()},
                 history=np.array(json.dumps(history)),
                 digests=np.array([bytes(p["digest"]).decode() for p in parts]),
                 asked=np.concatenate([p["asked"] for p in parts]),
                 asked_counts=np.array([len(p["asked"]) for p in parts]),
                 memory_mapped=np.array(all(isinstance(a, np.memmap) for shard in shards._cache.values()
                                            for a in shard.values())))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["classification", "detection", "segmentation"])
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--reduction", default="ordered")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--fail-step", type=int, default=0)
    parsed = parser.parse_args()
    run_in_group(lambda: main(parsed), "cpu")
