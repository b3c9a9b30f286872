"""The mIoU ceiling of FCN-8s (or -4s) on digit-scenes: the best its stride-8 (stride-4) scores can do
through the fixed bilinear final upsampling, with the scores fitted directly to the test masks (Adam on the
score map itself, softmax cross-entropy), then scored like a prediction. It tells which scene geometry the
architecture can resolve: the image size of ``download.segmentation`` is only a fair lever while this
ceiling stays high.

    python bench/fcn_ceiling.py                                # the default: 96 px scenes, 32-64 px digits
    python bench/fcn_ceiling.py --image-size 64 --digit-size 21 43
    python bench/fcn_ceiling.py --image-size 64 --digit-size 14 32 --steps 400
    python bench/fcn_ceiling.py --variant 4s

The scenes are the test split that ``download`` generates for these settings (same seed and renderer).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from xpvision.data.digits import write_digits
from xpvision.data.mnist import load_mnist_split
from xpvision.data.scenes import SceneConfig, render_scene
from xpvision.nn import SoftmaxCrossEntropy, rng
from xpvision.nn import functional as F
from xpvision.segmentation.fcn import build_fcn
from xpvision.segmentation.metrics import eval_semantic_segmentation

NUM_CLASSES = 11  # background + 10 digits


def test_masks(image_size: int, digit_size: tuple[int, int], occlusion: float, count: int, seed: int):
    """``(count, S, S)`` int64 semantic masks of the test scenes (0 background, digit + 1)."""
    config = SceneConfig(n_train=1, n_test=count, image_size=image_size, min_digit_size=digit_size[0],
                         max_digit_size=digit_size[1], max_occlusion=occlusion, seed=seed)
    with tempfile.TemporaryDirectory() as folder:
        write_digits(folder, seed=seed)  # download uses the block seed for the digits split too
        digits = load_mnist_split(folder, "test")
    masks = []
    for index in range(count):
        generator = np.random.default_rng([seed, 1, index])  # split 1 = test, as write_digit_scenes
        _, owner, labels = render_scene(generator, digits.images[..., 0], digits.labels, config)
        masks.append(np.where(owner >= 0, np.array([0, *labels])[owner + 1] + 1, 0))
    return np.stack(masks).astype(np.int64)


def fit_ceiling(masks, steps: int, lr: float, variant: str = "8s") -> tuple[float, float]:
    """Fit the last scores of FCN-``variant`` to ``masks`` through its final upsampling; returns ``(miou,
    pixel_acc)``."""
    n, h, w = masks.shape
    rng.manual_seed(0)
    model = build_fcn(variant, in_channels=3, num_classes=NUM_CLASSES, encoder_stride=16,
                      extra_channels=[128])
    model.eval()
    model.forward(np.zeros((1, 3, h, w), np.float32))  # the plan: score-map size and crop
    _, plan, fused_shapes, _ = model._cache
    lh, lw = fused_shapes[-1][2]
    sh, sw = plan.crop_start
    upsample = model.final_upsampler
    scores = np.zeros((n, NUM_CLASSES, lh, lw), np.float32)
    moment, second = np.zeros_like(scores), np.zeros_like(scores)
    loss = SoftmaxCrossEntropy()
    for t in range(1, steps + 1):
        full = F.nhwc(upsample.forward(scores))  # (N, Hf, Wf, K)
        logits = F.nchw(np.ascontiguousarray(full[:, sh:sh + h, sw:sw + w]))
        loss.forward(logits, masks)
        dfull = np.zeros(full.shape, np.float32)
        dfull[:, sh:sh + h, sw:sw + w] = F.nhwc(loss.backward())
        grad = np.array(upsample.backward(F.nchw(dfull))) * n  # per-image mean loss: rescale
        moment = 0.9 * moment + 0.1 * grad
        second = 0.999 * second + 0.001 * grad * grad
        scores -= lr * (moment / (1 - 0.9 ** t)) / (np.sqrt(second / (1 - 0.999 ** t)) + 1e-8)
    full = F.nhwc(upsample.forward(scores))
    pred = full[:, sh:sh + h, sw:sw + w].argmax(axis=-1)
    result = eval_semantic_segmentation(list(pred), list(masks), NUM_CLASSES)
    return float(result["miou"]), float(result["pixel_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--digit-size", type=int, nargs=2, default=(32, 64))
    parser.add_argument("--occlusion", type=float, default=0.1)
    parser.add_argument("--num-test", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--variant", default="8s", choices=["8s", "4s"])
    args = parser.parse_args()
    start = time.perf_counter()
    masks = test_masks(args.image_size, tuple(args.digit_size), args.occlusion, args.num_test, args.seed)
    miou, accuracy = fit_ceiling(masks, args.steps, args.lr, args.variant)
    print(f"{args.image_size} px scenes, {args.digit_size[0]}-{args.digit_size[1]} px digits, occlusion "
          f"{args.occlusion}, {args.num_test} test scenes: FCN-{args.variant} ceiling mIoU {miou:.3f} (pixel "
          f"accuracy {accuracy:.3f}; {args.steps} Adam steps, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
