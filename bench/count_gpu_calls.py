"""CuPy calls a DeepConvNet training step and an inference pass make, counted on the CPU with the strict
CuPy stand-in of the tests (``tests/fakecupy``): a GPU step that is bound by kernel launches costs in
proportion to these calls. Attribute reads (``shape``, ``dtype``, ...) are left out unless
``--attributes``; the busiest call sites of the package are listed.

    python bench/count_gpu_calls.py                 # training at batch 256, inference at 1000
    python bench/count_gpu_calls.py --batch 100 --attributes
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

from xpvision import backend
from xpvision.models import deep_convnet
from xpvision.nn import SoftmaxCrossEntropy, rng
from xpvision.optim import Adam

TESTS = Path(__file__).resolve().parents[1] / "tests"


def count(work, fake: str, attributes: bool) -> collections.Counter:
    """Calls into the stand-in (files under ``fake``) from outside it while ``work()`` runs, by calling site
    (file:function); its attribute reads (``<lambda>`` properties) only with ``attributes``."""
    sites: collections.Counter = collections.Counter()

    def profile(frame, event, arg):
        back, code = frame.f_back, frame.f_code
        counted = attributes or code.co_name != "<lambda>"
        if (event == "call" and counted and code.co_filename.startswith(fake)
                and back is not None and not back.f_code.co_filename.startswith(fake)):
            sites[f"{Path(back.f_code.co_filename).name}:{back.f_code.co_name}"] += 1

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return sites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--infer-batch", type=int, default=1000)
    parser.add_argument("--sites", type=int, default=8, help="call sites listed per case")
    parser.add_argument("--attributes", action="store_true", help="count attribute reads too")
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    import fakecupy

    backend._cupy = lambda: fakecupy  # as pytest --fake-gpu does
    cp = fakecupy
    rng.manual_seed(0)
    model = deep_convnet().to("gpu")
    model.needs_input_grad = False
    optimizer, loss = Adam(model, lr=1e-3), SoftmaxCrossEntropy()
    data = np.random.default_rng(0)
    x = cp.asarray(data.random((args.batch, 1, 28, 28), dtype=np.float32))
    y = cp.asarray(data.integers(0, 10, args.batch))
    x_infer = cp.asarray(data.random((args.infer_batch, 1, 28, 28), dtype=np.float32))

    def train_step() -> None:
        model.train()
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        optimizer.step()

    def infer() -> None:
        model.eval()
        model.forward(x_infer)

    for name, work in ((f"training step, batch {args.batch}", train_step),
                       (f"inference, batch {args.infer_batch}", infer)):
        work()  # warm: scratch buffers, cached kernels
        sites = count(work, str(TESTS / "fakecupy"), args.attributes)
        print(f"{name}: {sum(sites.values())} CuPy calls")
        for site, calls in sites.most_common(args.sites):
            print(f"  {site:40s} {calls}")


if __name__ == "__main__":
    main()
