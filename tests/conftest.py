"""Shared fixtures. ``xp`` runs an array test on NumPy and, where CUDA is available, on CuPy."""

import os

import numpy as np
import pytest

from xpvision import backend

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test: ``numpy``, or ``cupy`` (skips cleanly without a CUDA device)."""
    if request.param == "numpy":
        return np
    if not backend.gpu_available():
        pytest.skip("CuPy with a CUDA device is not available")
    return backend.xp_for("gpu")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
