"""The CuPy stand-in itself (``tests/fakecupy``, used by ``pytest --fake-gpu``): it refuses what CuPy
refuses, and the project's device checks fire against it. These tests import the stand-in directly, so they
run in every test session; the ones marked ``gpu`` use the project's GPU path (``--fake-gpu`` or CUDA)."""

import json
from pathlib import Path

import numpy as np
import pytest

import fakecupy as cp
from xpvision import backend
from xpvision.models import deep_convnet
from xpvision.nn import Conv2d
from xpvision.nn.base import InputDeviceError

SNAPSHOT = json.loads((Path(__file__).parent / "fakecupy" / "cupy_names.json").read_text())


@pytest.mark.gpu
def test_numpy_input_to_a_layer_with_device_weights_raises_the_device_error(gpu):
    model = deep_convnet().to("gpu")
    with pytest.raises(InputDeviceError) as info:
        model.forward(np.zeros((2, 1, 28, 28), np.float32))
    assert isinstance(info.value, backend.DeviceError)
    message = str(info.value)
    assert "'features.conv1' (Conv2d)" in message and "on the gpu" in message and "on the cpu" in message
    assert (info.value.expected, info.value.actual) == ("gpu", "cpu")


@pytest.mark.gpu
def test_device_input_to_a_cpu_layer_raises_the_device_error(gpu):
    layer = Conv2d(1, 2, 3)
    with pytest.raises(InputDeviceError, match=r"parameters on the cpu but got an input on the gpu"):
        layer.forward(gpu.asarray(np.zeros((1, 1, 5, 5), np.float32)))


def test_implicit_conversions_raise_type_error():
    x = cp.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    host = np.zeros((2, 3), np.float32)
    for convert in (lambda: np.asarray(x), lambda: np.array(x), lambda: np.testing.assert_allclose(x, host),
                    lambda: host.__setitem__(Ellipsis, x), lambda: x.__setitem__(Ellipsis, host),
                    lambda: x + host, lambda: host + x, lambda: cp.maximum(x, host),
                    lambda: cp.concatenate([x, host]), lambda: cp.ascontiguousarray(host),
                    lambda: range(cp.asarray(3))):
        with pytest.raises(TypeError):
            convert()


def test_explicit_copies_are_counted_as_synchronisations():
    x = cp.asarray(np.arange(6, dtype=np.float32))
    with cp.count_syncs() as c:
        y = (x * 2).sum()  # stays on the device
        assert c.count == 0
        float(y), int(x[1]), bool(x[2] > 1), x[0].item(), x.tolist(), x.get(), cp.asnumpy(x)
        cp.nonzero(x > 2), x[x > 2], cp.unique(x)  # data-dependent sizes copy a count to the host
    assert c.count == 10 and all("test_fakecupy.py" in site for site in c.sites)


def test_only_cupy_names_exist():
    assert SNAPSHOT["namespaces"]["cupy"]["argsort"]["signature"] == "(a, axis=-1, kind=None)"
    with pytest.raises(AttributeError, match="has no attribute 'frombuffer_like'"):
        cp.frombuffer_like  # noqa: B018
    with pytest.raises(AttributeError, match="tofile_like"):
        cp.asarray(np.zeros(2)).tofile_like  # noqa: B018
    with pytest.raises(TypeError, match="cupy argsort"):
        cp.argsort(cp.zeros(3), order="x")  # a NumPy keyword CuPy lacks
    assert "cupy" not in np.__name__ and cp.float32 is np.float32


def test_elementwise_results_are_c_ordered_and_sorts_stable():
    nhwc = cp.asarray(np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4))
    channels_last = nhwc.transpose(0, 3, 1, 2)  # (N, C, H, W) view
    assert not (channels_last * 2).transpose(0, 2, 3, 1).flags.c_contiguous  # CuPy: C-ordered NCHW
    assert cp.exp(channels_last).flags.c_contiguous
    assert np.asarray(np.exp(np.arange(24.0).reshape(1, 2, 3, 4)).transpose(0, 3, 1, 2) * 2).transpose(
        0, 2, 3, 1).flags.c_contiguous  # NumPy keeps the layout
    keys = cp.asarray(np.array([1, 0, 1, 0, 1]))
    assert cp.argsort(keys).get().tolist() == [1, 3, 0, 2, 4]
    with pytest.raises(NotImplementedError):
        cp.sort(keys, kind="quicksort")


KERNEL = r'''
extern "C" __global__ void nms_gather(const int row_start, const int row_end, const int col_blocks,
                                      const unsigned long long* mask, unsigned long long* removed,
                                      bool* keep) {}
'''


def test_raw_kernel_launches_are_checked():
    kernel = cp.RawModule(code=KERNEL).get_function("nms_gather")
    mask, removed = cp.zeros((2, 1), dtype=np.uint64), cp.zeros(1, dtype=np.uint64)
    keep = cp.zeros(2, dtype=np.bool_)
    good = (np.int32(0), np.int32(2), np.int32(1), mask, removed, keep)
    kernel((1,), (64,), good)
    assert keep.get().tolist() == [True, True]
    bad_launches = {
        "python int for int": ((1,), (64,), (0, np.int32(2), np.int32(1), mask, removed, keep)),
        "wrong pointer dtype": ((1,), (64,), (*good[:3], mask.astype(np.int64), removed, keep)),
        "not contiguous": ((1,), (64,), (*good[:3], cp.zeros((2, 2), dtype=np.uint64)[:, :1], removed, keep)),
        "host array": ((1,), (64,), (*good[:3], np.zeros((2, 1), np.uint64), removed, keep)),
        "too many threads": ((1,), (2048,), good),
        "empty grid": ((0,), (64,), good),
        "missing argument": ((1,), (64,), good[:-1]),
    }
    for name, (grid, block, args) in bad_launches.items():
        with pytest.raises((TypeError, ValueError)):
            kernel(grid, block, args)
            pytest.fail(name)
    with pytest.raises(NotImplementedError, match="no NumPy transcription"):
        cp.RawKernel('extern "C" __global__ void unknown(int n) {}', "unknown")


@pytest.mark.gpu
def test_backend_uses_the_stand_in_under_fake_gpu(gpu):
    x = backend.to_device(np.ones(3, np.float32), "gpu")
    assert backend.is_gpu_array(x) and backend.get_array_module(x) is gpu
    assert backend.device_of(x) == "gpu" and backend.to_numpy(x).tolist() == [1.0, 1.0, 1.0]
