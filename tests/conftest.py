"""Shared fixtures. ``xp`` runs an array test on NumPy and on the GPU: CuPy where CUDA is available, or the
strict CPU stand-in for CuPy (``tests/fakecupy``) under ``pytest --fake-gpu``; otherwise the GPU case skips.
``device`` does the same with device names (``'cpu'``, ``'gpu'``)."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from xpvision import backend

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).parent))  # the stand-in package ``fakecupy``


def pytest_addoption(parser):
    parser.addoption("--fake-gpu", action="store_true", default=False,
                     help="run the gpu tests on the CPU against the strict CuPy stand-in tests/fakecupy")


def pytest_configure(config):
    if config.getoption("--fake-gpu"):
        import fakecupy

        backend._cupy = lambda: fakecupy
        backend.gpu_available.cache_clear()


def _gpu_module():
    if not backend.gpu_available():
        pytest.skip("CuPy with a CUDA device is not available (pytest --fake-gpu runs the CPU stand-in)")
    return backend.xp_for("gpu")


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test: ``numpy``, or ``cupy`` / the stand-in (skips without either)."""
    return np if request.param == "numpy" else _gpu_module()


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request):
    """A device name under test: ``'cpu'``, or ``'gpu'`` (skips without CuPy + CUDA or --fake-gpu)."""
    if request.param == "gpu":
        _gpu_module()
    return request.param


@pytest.fixture
def gpu():
    """The GPU array module alone, for tests marked ``gpu`` that have no CPU twin."""
    return _gpu_module()


@pytest.fixture
def syncs(gpu):
    """``with syncs() as c: ...``: ``c.count`` device→host copies made inside (stand-in only: skips on a
    real GPU, where nothing counts them)."""
    if not hasattr(gpu, "count_syncs"):
        pytest.skip("synchronisation counts need the stand-in (pytest --fake-gpu)")
    return gpu.count_syncs


@pytest.fixture
def rng():
    return np.random.default_rng(0)
