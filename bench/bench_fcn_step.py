"""Training-step time of the segmentation_ft network (FCN-8s on DeepConvNet, 96 px, batch 4, Adam), three
ways in one process, interleaved round by round: the tuned engine with the encoder fused (the default), the
tuned engine layer by layer (``fcn.fusion = False``), and the reference engine; with ``--torch``, also its
PyTorch twin (the same layers, weights, padding, skip offsets and crop, checked against the xpvision forward
before timing; PyTorch at the same thread count).

    python bench/bench_fcn_step.py                 # 10 rounds, the default thread count
    python bench/bench_fcn_step.py --rounds 20 --batch 8
    python bench/bench_fcn_step.py --torch --no-reference   # xpvision against PyTorch
    XPVISION_NUM_THREADS=1 python bench/bench_fcn_step.py

Each round times every variant once (an untimed step, then the best of ``--steps`` steps); the table shows
medians over rounds and each variant's median per-round ratio to the default. Benchmarks are not tests: the
numbers depend on the machine and on what else runs on it (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from bench_convnet import blas_description, torch_twin
from xpvision import backend, optim
from xpvision.nn import ConvTranspose2d, Sequential, engine, parallel, rng
from xpvision.segmentation.fcn import FCN, build_fcn
from xpvision.tasks import SegmentationTask

NUM_CLASSES = 11
VARIANTS = (("tuned, fused encoder", "tuned", True), ("tuned, layer by layer", "tuned", False),
            ("reference", "reference", True))


def torch_fcn(model: FCN, torch):
    """A PyTorch module computing ``model``'s forward with its current weights: the encoder layer by layer
    (skips tapped where ``model.taps`` says), the score layers, the upsamplers, fused at ``model.plan``'s
    offsets, the output cropped as :meth:`FCN.forward` crops it; frozen upsamplers do not train."""
    nn = torch.nn

    def transposed(layer: ConvTranspose2d):
        twin = nn.ConvTranspose2d(layer.in_ch, layer.out_ch, layer.kernel_size, layer.stride, layer.padding,
                                  bias=False)
        twin.weight.data = torch.tensor(backend.to_numpy(layer.params["W"]))  # (I, O, kh, kw), as PyTorch's
        twin.weight.requires_grad_(layer.trainable)
        return twin

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(*torch_twin(model.features, torch), *torch_twin(model.extra, torch))
            if len(self.encoder) != len(model._encoder):
                raise RuntimeError("the PyTorch encoder does not match the FCN's layer for layer")
            self.scores = nn.ModuleDict({str(s): torch_twin(Sequential(layer), torch)[0]
                                         for s, layer in model.scores.items()})
            self.upsamplers = nn.ModuleDict({str(s): transposed(layer)
                                             for s, layer in model.upsamplers.items()})
            self.final = transposed(model.final_upsampler)

        def forward(self, x):
            h, w = x.shape[2:]
            plan = model.plan(h, w)
            (pt, pl), (pb, pr) = plan.pad_before, plan.pad_after
            out = nn.functional.pad(x, (pl, pr, pt, pb))
            taps = {}
            for i, layer in enumerate(self.encoder):
                out = layer(out)
                taps[i] = out
            score = self.scores[str(model.encoder_stride)](out)
            for s, (fh, fw) in zip(model.skip_strides, plan.fusions, strict=True):
                up = self.upsamplers[str(s)](score)
                skip = self.scores[str(s)](taps[model.taps[s]])
                lh = min(up.shape[2] - fh.up_start, skip.shape[2] - fh.skip_start)
                lw = min(up.shape[3] - fw.up_start, skip.shape[3] - fw.skip_start)
                score = (up[:, :, fh.up_start:fh.up_start + lh, fw.up_start:fw.up_start + lw]
                         + skip[:, :, fh.skip_start:fh.skip_start + lh, fw.skip_start:fw.skip_start + lw])
            (sh, sw) = plan.crop_start
            return self.final(score)[:, :, sh:sh + h, sw:sw + w]

    return Twin()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2, help="steps per variant and round (best is kept)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--torch", action="store_true", help="also time the PyTorch twin")
    parser.add_argument("--no-reference", action="store_true", help="leave out the (slow) reference engine")
    args = parser.parse_args()
    rs = np.random.default_rng(0)
    batch = {"images": rs.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32),
             "masks": rs.integers(0, NUM_CLASSES, (args.batch, args.size, args.size))}
    task = SegmentationTask(NUM_CLASSES)
    steps = {}
    for name, kernels, fusion in VARIANTS:
        if kernels == "reference" and args.no_reference:
            continue
        engine.set_engine(kernels)
        rng.manual_seed(0)
        model = build_fcn("8s", in_channels=3, num_classes=NUM_CLASSES, backbone="deep_convnet",
                          encoder_stride=16, extra_channels=[128])
        for layer in model.scores.values():  # zero-initialised: random here, so the twin check sees them
            layer.params["W"][...] = rs.normal(0.0, 0.05, layer.params["W"].shape)
        model.train()
        model.needs_input_grad = False
        model.fusion = fusion
        steps[name] = _xpvision_step(task, batch, kernels, model, optim.Adam(model, lr=1e-4))
        if args.torch and name == VARIANTS[0][0]:
            import torch

            torch.set_num_threads(parallel.get_num_threads())
            twin = torch_fcn(model, torch)
            _check_twin(model, twin, batch["images"], torch)
            steps[f"PyTorch ({torch.get_num_threads()} threads)"] = _torch_step(twin, batch, torch)
    load_before = os.getloadavg()[0]
    for step in steps.values():  # warm-up: buffers, plans
        step()
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            step()  # untimed: lets the previous variant's BLAS threads go idle, refills the caches
            times[name].append(min(step() for _ in range(args.steps)))
    print(f"segmentation_ft training step, batch {args.batch}, {args.size} px, {parallel.get_num_threads()} "
          f"threads, median of {args.rounds} interleaved rounds; load average {load_before:.1f} -> "
          f"{os.getloadavg()[0]:.1f} on {parallel.available_cores()} available cores")
    print(blas_description())
    print(f"{'variant':28s} {'ms':>8s} {'ratio to default':>18s}")
    default = times[VARIANTS[0][0]]
    for name, variant in times.items():
        ratio = statistics.median(t / d for t, d in zip(variant, default, strict=True))
        print(f"{name:28s} {1000 * statistics.median(variant):8.1f} {ratio:18.2f}")


def _xpvision_step(task, batch, kernels, model, opt):
    def step() -> float:
        engine.set_engine(kernels)
        start = time.perf_counter()
        opt.zero_grad()
        _, dout = task.forward_loss(model, batch)
        model.backward(dout)
        opt.step()
        return time.perf_counter() - start
    return step


def _torch_step(twin, batch, torch):
    images, masks = torch.tensor(batch["images"]), torch.tensor(batch["masks"])
    opt = torch.optim.Adam([p for p in twin.parameters() if p.requires_grad], lr=1e-4)

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(twin(images), masks).backward()
        opt.step()
        return time.perf_counter() - start
    return step


def _check_twin(model, twin, images, torch) -> None:
    """Refuse to time a twin whose logits differ from the model's (beyond float32 rounding)."""
    ours = backend.to_numpy(model.forward(images))
    with torch.no_grad():
        theirs = twin(torch.tensor(images)).numpy()
    scale = float(np.abs(ours).max())
    if ours.shape != theirs.shape:
        raise RuntimeError(f"the PyTorch twin's logits are {theirs.shape}, the model's {ours.shape}")
    if not np.allclose(ours, theirs, rtol=0, atol=1e-4 * scale):
        raise RuntimeError(f"the PyTorch twin computes other logits: largest difference "
                           f"{np.abs(ours - theirs).max():.3g} of {scale:.3g}")


if __name__ == "__main__":
    main()
