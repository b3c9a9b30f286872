"""The thread pool of the CPU engine: default thread count, its overrides, and results that do not depend on
the thread count (a small network trained for two epochs with 1-4 threads, and a YOLO detector with a
batch-normalised backbone with 1-3 threads, end with the same bits), and the global blocks that sums over a
batch are formed in."""

import os
import threading

import numpy as np
import pytest
from tests.distributed.ranks import box_scene

from xpvision import optim
from xpvision.data.loader import DataLoader, ListDataset
from xpvision.errors import ConfigError
from xpvision.nn import (
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    convblock,
    parallel,
    rng,
)
from xpvision.tasks import ClassificationTask
from xpvision.train import Trainer


@pytest.fixture
def default_threads(monkeypatch):
    """Each test starts from the default thread count and leaves it so."""
    monkeypatch.delenv(parallel.ENV_THREADS, raising=False)
    parallel.set_num_threads(None)
    yield
    parallel.set_num_threads(None)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_run_blocks_covers_every_sample_once(threads, default_threads):
    seen = np.zeros(23, np.int64)
    workers = set()
    lock = threading.Lock()

    def work(start, stop, worker):
        with lock:
            seen[start:stop] += 1
            workers.add(worker)

    parallel.set_num_threads(threads)
    used = parallel.run_blocks(work, [(s, min(s + 5, 23)) for s in range(0, 23, 5)], np)
    np.testing.assert_array_equal(seen, 1)
    assert workers <= set(range(used))
    if parallel._blas_controller() is not None:
        assert used == threads


def test_the_calling_thread_is_worker_0_and_the_pool_runs_the_others(default_threads):
    """Worker 0 is the caller (no thread to wake for it); the others are the pool's threads."""
    if parallel._blas_controller() is None:
        pytest.skip("threadpoolctl is not installed: the blocks run on the caller alone")
    release = threading.Barrier(3, timeout=10)  # every worker holds its first block until all three run
    threads_of = {}

    def work(start, stop, worker):
        threads_of.setdefault(worker, threading.get_ident())
        if start < 3:
            release.wait()

    parallel.set_num_threads(3)
    parallel.run_blocks(work, [(i, i + 1) for i in range(6)], np)
    assert set(threads_of) == {0, 1, 2}
    assert threads_of[0] == threading.get_ident()
    assert len(set(threads_of.values())) == 3


def test_default_is_the_available_cores_up_to_the_ceiling(default_threads, monkeypatch):
    assert parallel.available_cores() == len(os.sched_getaffinity(0))
    assert parallel.get_num_threads() == min(parallel.available_cores(), parallel.MAX_DEFAULT_THREADS)
    monkeypatch.setattr(parallel, "available_cores", lambda: 16)
    parallel.set_num_threads(None)
    assert parallel.get_num_threads() == parallel.MAX_DEFAULT_THREADS == 4
    monkeypatch.setattr(parallel, "available_cores", lambda: 3)
    parallel.set_num_threads(None)
    assert parallel.get_num_threads() == 3


def test_environment_overrides_the_default(default_threads, monkeypatch):
    monkeypatch.setenv(parallel.ENV_THREADS, "3")
    parallel.set_num_threads(None)
    assert parallel.get_num_threads() == 3
    parallel.set_num_threads(5)  # the setting wins over the environment
    assert parallel.get_num_threads() == 5


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_bad_environment_value(default_threads, monkeypatch, value):
    monkeypatch.setenv(parallel.ENV_THREADS, value)
    parallel.set_num_threads(None)
    with pytest.raises(ConfigError, match="XPVISION_NUM_THREADS: expected a positive integer"):
        parallel.get_num_threads()


def test_bad_thread_count(default_threads):
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            parallel.set_num_threads(bad)
    assert parallel.get_num_threads() >= 1


def test_ordered_sum_adds_in_block_order():
    parts = {2: np.float32([1e8]), 0: np.float32([1.0]), 1: np.float32([-1e8])}
    # (1 + -1e8) + 1e8 = 0 in float32; another order (1e8 + -1e8) + 1 would give 1
    np.testing.assert_array_equal(parallel.ordered_sum(parts), np.float32([0.0]))
    assert parts[0][0] == 1.0  # the parts are left as they were


def _scenes(n: int) -> ListDataset:
    """32x32 RGB images whose class is the brightest quadrant: conv layers with many GEMM chunks per batch."""
    rs = np.random.default_rng(0)
    samples = []
    for i in range(n):
        image = rs.integers(0, 100, (32, 32, 3)).astype(np.uint8)
        label = i % 4
        r, c = divmod(label, 2)
        image[16 * r:16 * r + 16, 16 * c:16 * c + 16] += 80
        samples.append({"image": image, "label": label})
    return ListDataset(samples, classes=["0", "1", "2", "3"])


def _network() -> Sequential:
    """Every kind of threaded conv path: plain, fused ReLU + pool, stride 2 (col2im input gradient), batch
    norm, a trainable transposed convolution."""
    return Sequential(
        ("conv1", Conv2d(3, 16, 3, padding=1)), ("relu1", ReLU()),
        ("conv2", Conv2d(16, 16, 3, padding=1)), ("relu2", ReLU()), ("pool2", MaxPool2d(2)),
        ("conv3", Conv2d(16, 24, 3, stride=2, padding=1)), ("bn3", BatchNorm2d(24)), ("relu3", ReLU()),
        ("up", ConvTranspose2d(24, 8, 2, stride=2)),
        ("conv4", Conv2d(8, 8, 3, stride=2, padding=1)), ("relu4", ReLU()),
        ("flatten", Flatten()), ("fc", Linear(8 * 8 * 8, 4)))


def _train(threads: int, tmp_path) -> dict[str, np.ndarray]:
    parallel.set_num_threads(threads)
    rng.manual_seed(0)
    model = _network()
    opt = optim.Adam(model, lr=0.003)
    trainer = Trainer(model, ClassificationTask(4), opt, epochs=2, seed=1, grad_clip=5.0, progress=False,
                      checkpoint_path=tmp_path / f"{threads}.npz")
    trainer.fit(DataLoader(_scenes(48), 24, shuffle=True, seed=2))
    return {k: np.array(v) for k, v in model.state_dict().items()}


def test_training_gives_the_same_bits_with_1_to_4_threads(tmp_path, default_threads, monkeypatch):
    workers_used = []
    real_run_blocks = convblock.run_blocks

    def counting_run_blocks(*args):
        workers_used.append(real_run_blocks(*args))
        return workers_used[-1]

    monkeypatch.setattr(convblock, "run_blocks", counting_run_blocks)
    weights = {threads: _train(threads, tmp_path) for threads in (1, 2, 3, 4)}
    if parallel._blas_controller() is not None:
        assert max(workers_used) == 4  # the layers really were split over the threads
    initial = _train_initial()
    for threads in (2, 3, 4):
        assert weights[threads].keys() == weights[1].keys()
        for name, value in weights[1].items():
            np.testing.assert_array_equal(weights[threads][name], value, err_msg=f"{name}, {threads} threads")
    assert any(not np.array_equal(weights[1][k], initial[k]) for k in initial)  # it did train


def _train_initial() -> dict[str, np.ndarray]:
    rng.manual_seed(0)
    return {k: np.array(v) for k, v in _network().state_dict().items()}


def _box_scenes(n: int) -> ListDataset:
    """32x32 RGB noise with one to three coloured squares (class = colour) and their boxes."""
    rs = np.random.default_rng(0)
    samples = [box_scene(rs) for _ in range(n)]
    return ListDataset(samples, classes=["r", "g", "b"])


def _train_detector(threads: int, data: ListDataset, tmp_path) -> dict[str, np.ndarray]:
    from xpvision.detection.yolo import build_detector
    from xpvision.tasks import DetectionTask

    parallel.set_num_threads(threads)
    rng.manual_seed(0)
    model, extra = build_detector("yolo", in_channels=3, classes=data.classes, input_size=(32, 32),
                                  train_set=data, head_channels=16,
                                  backbone_args={"batch_norm": True, "conv4_padding": 1})
    task = DetectionTask(model, {"classes": data.classes, **extra})
    trainer = Trainer(model, task, optim.Adam(model, lr=0.01), epochs=2, seed=1, progress=False,
                      checkpoint_path=tmp_path / f"det-{threads}.npz")
    trainer.fit(DataLoader(data, 40, shuffle=True, seed=2))
    return {k: np.array(v) for k, v in model.state_dict().items()}


def test_the_batch_norm_detector_trains_to_the_same_bits_with_1_to_3_threads(tmp_path, default_threads):
    data = _box_scenes(80)
    weights = {threads: _train_detector(threads, data, tmp_path) for threads in (1, 2, 3)}
    for threads in (2, 3):
        for name, value in weights[1].items():
            np.testing.assert_array_equal(weights[threads][name], value, err_msg=f"{name}, {threads} threads")
    assert weights[1]["features.bn1.running_mean"].any()  # it did train (the statistics moved from 0)


def test_global_blocks_depend_on_the_batch_size_alone():
    assert parallel.global_blocks(10) == [(i, i + 1) for i in range(10)]
    blocks = parallel.global_blocks(100)
    assert len(blocks) == parallel.REDUCTION_BLOCKS == 16
    assert [b - a for a, b in blocks] == [7] * 4 + [6] * 12 and blocks[-1][1] == 100
    for processes in (2, 3, 8, 16):
        assert parallel.global_blocks(100, processes) == blocks
    assert len(parallel.global_blocks(100, 20)) == 20  # more processes than blocks: one block each


def test_a_layout_holds_whole_blocks():
    layout = parallel.BatchLayout(10, 4, 3, processes=3)
    assert layout.blocks == [(0, 1), (1, 2), (2, 3)] and layout.block_rows(12) == [(0, 4), (4, 8), (8, 12)]
    assert parallel.BatchLayout(100, 0, 28, processes=4).blocks[-1] == (21, 28)
    with pytest.raises(ValueError, match="not whole blocks"):
        parallel.BatchLayout(100, 0, 30, processes=4)  # 30 ends inside the fifth block (28:34)
    with pytest.raises(ValueError, match="outside a batch"):
        parallel.BatchLayout(10, 8, 3)


def test_equal_runs_group_consecutive_blocks_of_one_size():
    assert parallel.BatchLayout(100).equal_runs == [(0, 7, 4), (28, 6, 12)]
    assert parallel.BatchLayout(96).equal_runs == [(0, 6, 16)]
    assert parallel.BatchLayout(100, 21, 13, processes=4).equal_runs == [(0, 7, 1), (7, 6, 1)]  # a part


def test_linear_gives_the_bits_of_one_gemm_per_block(rng):
    """Linear's stacked calls (one per run of equal blocks) against one matmul per block."""
    from xpvision.nn import Linear

    layer = Linear(40, 9)
    x = rng.standard_normal((100, 40), dtype=np.float32)
    dout = rng.standard_normal((100, 9), dtype=np.float32)
    y, dx = layer.forward(x), layer.backward(dout)
    blocks = parallel.global_blocks(100)
    w = layer.params["W"]
    np.testing.assert_array_equal(y, np.concatenate([x[a:b] @ w for a, b in blocks]) + layer.params["b"])
    np.testing.assert_array_equal(dx, np.concatenate([dout[a:b] @ w.T for a, b in blocks]))
    w_parts, b_parts = [x[a:b].T @ dout[a:b] for a, b in blocks], [dout[a:b].sum(axis=0) for a, b in blocks]
    np.testing.assert_array_equal(layer.grads["W"], parallel.local_fold(w_parts))
    np.testing.assert_array_equal(layer.grads["b"], parallel.local_fold(b_parts))


def test_the_current_layout_is_the_whole_batch_outside_a_batch_layout():
    assert parallel.current_layout(5).blocks == [(i, i + 1) for i in range(5)]
    part = parallel.BatchLayout(10, 4, 3, processes=3)
    with parallel.batch_layout(part):
        assert parallel.current_layout(3) is part
        with pytest.raises(ValueError, match="inside the layout"):
            parallel.current_layout(4)
    assert parallel.current_layout(3).total == 3


def test_local_fold_adds_in_list_order():
    parts = [np.float32([1.0]), np.float32([1e8]), np.float32([-1e8])]
    # (1 + 1e8) + -1e8 = 0 in float32; 1 + (1e8 + -1e8) would give 1
    np.testing.assert_array_equal(parallel.local_fold(parts), np.float32([0.0]))


def test_deferred_sums_are_written_at_the_flush_in_one_fold_with_the_bits_of_their_own_folds():
    rs = np.random.default_rng(3)
    sums = [[rs.standard_normal(shape).astype(np.float32) * 10.0 ** rs.integers(-4, 5) for _ in range(3)]
            for shape in ((4, 3), (5,), (2, 3, 2))]
    sums[0] = [part.T for part in sums[0]]  # a transposed view, as a convolution's weight gradient is
    folds = []

    def counting_fold(parts):
        folds.append(len(parts))
        return parallel.local_fold(parts)

    eager = parallel.BatchLayout(3)
    expected = [np.zeros(parts[0].shape, np.float32) for parts in sums]
    for parts, out in zip(sums, expected, strict=True):
        eager.fold_into(parts, out)
    deferred = parallel.BatchLayout(3, fold=counting_fold, defer=True)
    outs = [np.full(parts[0].shape, np.nan, np.float32) for parts in sums]
    for parts, out in zip(sums, outs, strict=True):
        deferred.fold_into(parts, out)
    assert deferred.pending == 3 and folds == [] and all(np.isnan(out).all() for out in outs)
    deferred.flush()
    assert deferred.pending == 0 and folds == [3]  # one fold of the three blocks' sums laid end to end
    for out, want in zip(outs, expected, strict=True):
        np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match="2 partial sums for the 3 blocks"):
        deferred.fold_into(sums[1][:2], outs[1])


@pytest.mark.parametrize("defer", [False, True])
def test_fold_into_a_view_adds_the_parts_in_their_own_layout(defer):
    rs = np.random.default_rng(4)
    parts = [(rs.standard_normal((6, 4)) * 10.0 ** rs.integers(-4, 5)).astype(np.float32) for _ in range(3)]
    layout = parallel.BatchLayout(3, defer=defer)
    out = np.full((4, 2, 3), np.nan, np.float32)  # the sum's (6, 4) matrix seen as (4, 2, 3) weights
    layout.fold_into(parts, out, view=lambda total: total.reshape(2, 3, 4).transpose(2, 0, 1))
    layout.flush()
    np.testing.assert_array_equal(out, parallel.local_fold(parts).reshape(2, 3, 4).transpose(2, 0, 1))


def test_data_parallel_refuses_a_forward_before_the_last_backward_was_reduced():
    from xpvision.distributed import DataParallel
    from xpvision.distributed.comm import SingleCommunicator

    rng.manual_seed(0)
    conv, linear = Conv2d(1, 2, 3, padding=1), Linear(2 * 4 * 4, 3)
    model = Sequential(conv, ReLU(), Flatten(), linear)
    task, hook = ClassificationTask(3), DataParallel(SingleCommunicator(), model)
    batch = {"images": np.random.default_rng(0).standard_normal((4, 1, 4, 4)).astype(np.float32),
             "labels": np.array([0, 1, 2, 0]), "global_batch": (4, 0)}
    _, dout, _ = hook.forward_loss(task, model, batch)
    model.backward(dout)
    assert not conv.grads["W"].any()  # deferred: nothing written before reduce_gradients
    hook.reduce_gradients(None)
    assert conv.grads["W"].any() and linear.grads["b"].any()
    _, dout, _ = hook.forward_loss(task, model, batch)
    model.backward(dout)
    with pytest.raises(RuntimeError, match="call reduce_gradients after each backward"):
        hook.forward_loss(task, model, batch)


def test_threaded_blocks_run_with_a_short_switch_interval_and_restore_it():
    import sys

    previous_threads, previous_interval = parallel.get_num_threads(), sys.getswitchinterval()
    seen = []
    try:
        parallel.set_num_threads(2)
        for interval in (5e-3, parallel.GIL_SWITCH_INTERVAL / 2):  # Python's default; one already shorter
            sys.setswitchinterval(interval)
            seen.clear()
            parallel.run_blocks(lambda a, b, w: seen.append(sys.getswitchinterval()), [(0, 1), (1, 2)], np)
            assert seen == [pytest.approx(min(interval, parallel.GIL_SWITCH_INTERVAL), rel=0.05)] * 2
            assert sys.getswitchinterval() == pytest.approx(interval, rel=0.05)
    finally:
        parallel.set_num_threads(previous_threads)
        sys.setswitchinterval(previous_interval)
