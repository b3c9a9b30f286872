"""The CPU engine keeps freed memory in the heap (glibc), so a training step does not page-fault its arrays in
again every step; ``XPVISION_HEAP=system`` leaves glibc's policy."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")
STEP_FAULTS = """
import resource
import numpy as np
from xpvision.models import deep_convnet
from xpvision.nn import SoftmaxCrossEntropy, heap, rng
from xpvision.optim import Adam

rng.manual_seed(0)
model = deep_convnet()
opt, loss = Adam(model, lr=1e-3), SoftmaxCrossEntropy()
x = np.random.default_rng(0).random((100, 1, 28, 28), dtype=np.float32)
y = np.arange(100) % 10
def step():
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    opt.step()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(heap.configure(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_per_step(mode: str) -> tuple[bool, float]:
    env = {**os.environ, "PYTHONPATH": SRC, "XPVISION_HEAP": mode, "XPVISION_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", STEP_FAULTS], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_kept_heap_makes_the_step_free_of_page_faults():
    raised, kept = faults_per_step("keep")
    system_raised, system = faults_per_step("system")
    assert raised and not system_raised
    assert kept < 50 < 500 < system  # thousands of minor faults per step (8 MB of fresh pages) otherwise


def test_a_bad_heap_mode_names_the_variable():
    env = {**os.environ, "PYTHONPATH": SRC, "XPVISION_HEAP": "huge"}
    done = subprocess.run([sys.executable, "-c", "from xpvision.nn import heap; heap.configure()"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "XPVISION_HEAP" in done.stderr and "keep, system" in done.stderr
