"""Short real training of each task on the GPU and on the CPU, from the same initial weights and data.

Part of `make gpu-check` (tools/gpu_check.py). Each task uses its ``params.yaml`` blocks with a few hundred
images and one epoch; the table gives the test metric, the final training loss and the mean training step
time on each device. The check fails when the GPU's metric falls more than ``--tolerance`` below the CPU's
or its training loss differs from the CPU's by more than ``--loss-tolerance`` (relative): both start from the
same weights and see the same batches, so only rounding (and dropout's random stream) separates them.

    python3 tools/gpu_train_check.py --work /tmp/gpu-train
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from xpvision import backend, tasks
from xpvision.config import load_params
from xpvision.data.loader import DataLoader, Normalization
from xpvision.data.prepare import prepare
from xpvision.data.shards import ShardDataset
from xpvision.stages import download as download_stage
from xpvision.stages import train as train_stage
from xpvision.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"classification": {"max_images": 1500}, "detection": {"num_train": 800, "num_test": 200},
         "segmentation": {"num_train": 400, "num_test": 100}}


class StepTimer:
    """Wraps a task's ``forward_loss`` to time whole steps (forward, backward and update, synchronised)."""

    def __init__(self, task, device: str):
        self.task, self.device, self.marks = task, device, []
        self.primary_metric = task.primary_metric

    def forward_loss(self, model, batch):
        self._sync()
        self.marks.append(time.perf_counter())
        return self.task.forward_loss(model, batch)

    def evaluate(self, model, loader):
        return self.task.evaluate(model, loader)

    def mean_step_ms(self) -> float:
        gaps = [b - a for a, b in zip(self.marks[1:-1], self.marks[2:], strict=False)]  # first step warms up
        return 1e3 * sum(gaps) / max(len(gaps), 1)

    def _sync(self):
        if self.device == "gpu":
            backend.xp_for("gpu").cuda.runtime.deviceSynchronize()


def make_data(task: str, params, work: Path) -> Path:
    cfg = dataclasses.replace(params.download[task], **SIZES[task])
    out = work / task
    prepare(download_stage.prepare_config(task, cfg), work / f"raw-{task}", out)
    return out


def train_once(task: str, params, data: Path, device: str, work: Path) -> dict:
    cfg = dataclasses.replace(params.train[task], epochs=1, warmup_epochs=0, device=device)
    train_set, test_set = ShardDataset(data / "train"), ShardDataset(data / "test")
    normalization = Normalization.from_meta(train_set.meta)
    height, width, channels = train_set.manifest["image_shape"]
    classes = tasks.output_classes(task, train_set.classes)
    model, extra = train_stage.build_seeded_network(task, cfg, (channels, height, width), classes, train_set)
    meta = {"kind": task, "task": task, "classes": classes, "input_shape": [channels, height, width], **extra}
    model.to(device)
    optimizer, schedule = train_stage.build_optimizer(cfg, model, None)
    timer = StepTimer(tasks.build_task(task, model, meta, cfg.class_weights), device)
    trainer = Trainer(model, timer, optimizer, epochs=1, checkpoint_path=work / f"{task}-{device}.npz",
                      scheduler=schedule, seed=cfg.seed, grad_clip=cfg.grad_clip, progress=False,
                      resume=False)
    start = time.perf_counter()
    history = trainer.fit(DataLoader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed,
                                     normalization=normalization, device=device))
    seconds = time.perf_counter() - start
    metrics = timer.evaluate(model, DataLoader(test_set, cfg.batch_size, normalization=normalization,
                                               device=device))
    return {"metric": timer.primary_metric, "value": float(metrics[timer.primary_metric]),
            "loss": history[-1]["train_loss"], "step_ms": timer.mean_step_ms(), "epoch_s": seconds,
            "steps": len(timer.marks), "images": len(train_set)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--loss-tolerance", type=float, default=0.1)
    parser.add_argument("--tasks", nargs="*", default=list(SIZES))
    args = parser.parse_args(argv)
    params = load_params(ROOT / "params.yaml")
    backend.check_device("gpu")
    print(f"{'task':<16}{'metric':<10}{'images':>7}{'steps':>6}{'cpu':>8}{'gpu':>8}{'cpu ms/step':>13}"
          f"{'gpu ms/step':>13}{'speed-up':>10}  verdict", flush=True)
    failed = []
    for task in args.tasks:
        data = make_data(task, params, args.work)
        cpu = train_once(task, params, data, "cpu", args.work)
        gpu = train_once(task, params, data, "gpu", args.work)
        ok = (gpu["value"] >= cpu["value"] - args.tolerance
              and abs(gpu["loss"] - cpu["loss"]) <= args.loss_tolerance * abs(cpu["loss"]))
        failed += [] if ok else [task]
        print(f"{task:<16}{cpu['metric']:<10}{cpu['images']:>7}{cpu['steps']:>6}{cpu['value']:>8.4f}"
              f"{gpu['value']:>8.4f}{cpu['step_ms']:>13.1f}{gpu['step_ms']:>13.1f}"
              f"{cpu['step_ms'] / gpu['step_ms']:>10.1f}  {'ok' if ok else 'GPU BELOW CPU'}"
              f"  (loss cpu {cpu['loss']:.4f} gpu {gpu['loss']:.4f})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
