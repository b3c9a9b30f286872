"""NMS against a straightforward greedy reference written here (torchvision's rule: suppress IoU > t)."""

import importlib
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xpvision import backend
from xpvision.detection.nms import batched_nms, nms, soft_nms
from xpvision.errors import ConfigError, ShapeError

# the module itself: the package attribute xpvision.detection.nms is the nms function (flat API)
nms_module = importlib.import_module("xpvision.detection.nms")


def pair_iou(a, b):
    """IoU of two boxes in their float dtype, as defined: inter / (area_a + area_b - inter)."""
    f = a.dtype.type
    w = max(min(a[2], b[2]) - max(a[0], b[0]), f(0))
    h = max(min(a[3], b[3]) - max(a[1], b[1]), f(0))
    inter = f(w * h)
    with np.errstate(invalid="ignore", divide="ignore"):
        return f(inter / f(f((a[2] - a[0]) * (a[3] - a[1])) + f((b[2] - b[0]) * (b[3] - b[1])) - inter))


def pair_ious(kept, box):
    """IoU of ``box`` against each row of ``kept``, same arithmetic as :func:`pair_iou`, vectorised."""
    f = box.dtype.type
    w = np.maximum(np.minimum(kept[:, 2], box[2]) - np.maximum(kept[:, 0], box[0]), f(0))
    h = np.maximum(np.minimum(kept[:, 3], box[3]) - np.maximum(kept[:, 1], box[1]), f(0))
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
        area_kept = (kept[:, 2] - kept[:, 0]) * (kept[:, 3] - kept[:, 1])
        return inter / (area_kept + (box[2] - box[0]) * (box[3] - box[1]) - inter)


def reference_nms(boxes, scores, threshold, groups=None):
    """Visit boxes by descending score (ties by index); keep a box unless a kept one of its group overlaps."""
    groups = np.zeros(len(scores), np.int64) if groups is None else groups
    keep = []
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        kept = np.array(keep, dtype=np.int64)
        same_group = groups[kept] == groups[i]
        if not np.any((pair_ious(boxes[kept], boxes[i]) > np.float32(threshold)) & same_group):
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def boxes_strategy(max_n=40, ordered=True):
    """Boxes on a coarse grid (exact IoU ties, duplicates and empty boxes occur) with coarse scores (ties in
    score). ``ordered=False`` leaves corners as drawn, so inverted boxes (``x2 < x1``) occur too."""
    coord = st.integers(0, 12).map(lambda v: v * 2.5)
    data = st.integers(0, max_n).flatmap(lambda n: st.tuples(
        hnp.arrays(np.float32, (n, 4), elements=coord),
        hnp.arrays(np.float32, (n,), elements=st.integers(0, 5).map(lambda v: v / 5)),
        hnp.arrays(np.int64, (n,), elements=st.integers(0, 2)),
    ))
    if not ordered:
        return data
    return data.map(lambda t: (np.concatenate([np.minimum(t[0][:, :2], t[0][:, 2:]),
                                               np.maximum(t[0][:, :2], t[0][:, 2:])], axis=1), t[1], t[2]))


@settings(max_examples=300, deadline=None)
@given(boxes_strategy(), st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
def test_nms_matches_reference(data, threshold):
    boxes, scores, groups = data
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, reference_nms(boxes, scores, threshold))
    np.testing.assert_array_equal(batched_nms(boxes, scores, groups, threshold),
                                  reference_nms(boxes, scores, threshold, groups))


def cpu_strategy_keep(strategy, boxes, scores, groups, threshold):
    """Indices kept by one CPU strategy alone: ``sparse`` (suppression graph) or ``dense`` (blocked greedy
    rounds only), on the score-sorted boxes, mapped back to input indices."""
    if len(boxes) == 0:  # nms returns before choosing a strategy
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    sorted_boxes, sorted_groups = boxes[order], None if groups is None else groups[order]
    if strategy == "sparse":
        plan = nms_module._sweep_plan(sorted_boxes, sorted_groups, threshold)
        return order[nms_module._sparse_keep(sorted_boxes, sorted_groups, threshold, plan)]
    rounds = nms_module._BlockedGreedy(sorted_boxes, sorted_groups, threshold)
    kept = [rounds.step() for _ in iter(lambda: len(rounds.undecided()) > 0, False)]
    return order[np.concatenate(kept)] if kept else np.zeros(0, np.int64)


@settings(max_examples=200, deadline=None)
@given(boxes_strategy(ordered=False), st.sampled_from([0.0, 0.3, 0.5, 0.7]),
       st.sampled_from(["sparse", "dense"]), st.booleans())
def test_each_cpu_strategy_matches_reference(data, threshold, strategy, grouped):
    """Both strategies whatever the automatic choice, on inverted and empty boxes too; heads of 5 boxes and
    row groups of 2 so the blocked rounds compare kept boxes with later columns in several windows."""
    boxes, scores, groups = data
    groups = groups if grouped else None
    with mock.patch.object(nms_module, "_HEAD_BOXES", 5), mock.patch.object(nms_module, "_ROW_GROUP", 2):
        keep = cpu_strategy_keep(strategy, boxes, scores, groups, threshold)
    np.testing.assert_array_equal(keep, reference_nms(boxes, scores, threshold, groups))


def test_blocked_rounds_chain_into_the_sparse_graph(rng):
    """With the graph estimated free, the CPU path runs one blocked round, then solves the undecided boxes
    as a sparse graph; the chained result equals the reference."""
    xy = rng.uniform(0, 200, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 120, (300, 2))], axis=1).astype(np.float32)
    scores = rng.random(300).astype(np.float32)
    groups = rng.integers(0, 2, 300)
    with mock.patch.object(nms_module, "_DENSE_PAIRS_PER_BOX", 0), \
            mock.patch.object(nms_module, "_PAIR_COST", 0.0), \
            mock.patch.object(nms_module, "_HEAD_BOXES", 64), \
            mock.patch.object(nms_module, "_sparse_keep", wraps=nms_module._sparse_keep) as sparse:
        keep = batched_nms(boxes, scores, groups, 0.5)
    assert sparse.call_count == 1 and len(sparse.call_args.args[0]) < 300 - 64
    np.testing.assert_array_equal(keep, reference_nms(boxes, scores, 0.5, groups))


@pytest.mark.parametrize("layout", ["sparse", "clustered", "large"])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.7])
def test_nms_matches_reference_on_many_random_boxes(rng, layout, threshold):
    """Large enough for the automatic choice to take each CPU strategy (sparse graph, blocked rounds)."""
    n = 600
    if layout == "clustered":
        centres = rng.uniform(0, 300, (12, 2))[rng.integers(0, 12, n)]
        xy = centres + rng.normal(0, 4, (n, 2))
        wh = 30 + rng.normal(0, 3, (n, 2))
    else:
        xy = rng.uniform(0, 500, (n, 2))
        wh = rng.uniform(5, 40 if layout == "sparse" else 250, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.random(n).astype(np.float32)
    groups = rng.integers(0, 3, n)
    np.testing.assert_array_equal(nms(boxes, scores, threshold), reference_nms(boxes, scores, threshold))
    np.testing.assert_array_equal(batched_nms(boxes, scores, groups, threshold),
                                  reference_nms(boxes, scores, threshold, groups))


def test_batched_nms_keeps_labels_apart_whatever_their_values():
    """Float labels that truncate to the same integer, and ids near the int64 limit, are distinct groups."""
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    for labels in ([0.25, 0.75, 0.25, 0.75], [2**63 - 1, -(2**63), 2**63 - 1, 5]):
        idxs = np.array(labels)
        dense_labels = np.unique(idxs, return_inverse=True)[1]
        np.testing.assert_array_equal(batched_nms(boxes, scores, idxs, 0.5),
                                      reference_nms(boxes, scores, 0.5, dense_labels))
    np.testing.assert_array_equal(batched_nms(boxes, scores, np.array([0.25, 0.75, 0.25, 0.75]), 0.5), [0, 1])


def test_nms_known_case_and_tie_rule():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.9, 0.9, 0.95, 0.1], np.float32)
    # box 2 (IoU 0.5 with boxes 0 and 1) is kept first; 0.5 is not > 0.5 so box 0 survives; 1 duplicates 0
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [2, 0, 3])
    np.testing.assert_array_equal(nms(boxes, scores, 0.49), [2, 3])


def test_nms_empty_and_errors(xp):
    keep = nms(xp.zeros((0, 4), xp.float32), xp.zeros(0, xp.float32), 0.5)
    assert keep.shape == (0,) and keep.dtype == xp.int64
    with pytest.raises(ShapeError, match="scores"):
        nms(xp.zeros((3, 4), xp.float32), xp.zeros(2, xp.float32), 0.5)
    with pytest.raises(ConfigError, match="iou_threshold"):
        nms(xp.zeros((1, 4), xp.float32), xp.zeros(1, xp.float32), 1.5)


def make_layout(rng, layout: str, n: int, dtype=np.float32):
    if layout == "clustered":
        xy = rng.uniform(0, 300, (12, 2))[rng.integers(0, 12, n)] + rng.normal(0, 4, (n, 2))
        wh = 30 + rng.normal(0, 3, (n, 2))
    else:
        xy = rng.uniform(0, 1000 if layout == "sparse" else 500, (n, 2))
        wh = rng.uniform(10, 120 if layout == "sparse" else 400, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", ["sparse", "clustered", "large"])
@pytest.mark.parametrize("grouped", [False, True])
def test_gpu_nms_equals_cpu(gpu, rng, dtype, layout, grouped):
    """The same indices on both devices, whatever the float dtype (float64 is compared in float64 by both)."""
    boxes = make_layout(rng, layout, 700, dtype)
    scores = rng.random(700).astype(np.float32)
    groups = rng.integers(0, 4, 700)
    for threshold in (0.0, 0.5, 0.7):
        if grouped:
            on_gpu = batched_nms(gpu.asarray(boxes), gpu.asarray(scores), gpu.asarray(groups), threshold)
            on_cpu = batched_nms(boxes, scores, groups, threshold)
        else:
            on_gpu = nms(gpu.asarray(boxes), gpu.asarray(scores), threshold)
            on_cpu = nms(boxes, scores, threshold)
        assert backend.is_gpu_array(on_gpu) and on_gpu.dtype == np.int64
        np.testing.assert_array_equal(backend.to_numpy(on_gpu), on_cpu)


@pytest.mark.gpu
def test_float64_nms_is_decided_in_float64_on_both_devices(gpu):
    boxes = np.array([[0.0, 0.0, 3.0, 1.0], [1.0 - 1e-9, 0.0, 4.0, 1.0]])  # IoU 0.5 + 2.5e-10 in float64
    scores = np.array([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0]  # float64: suppressed
    assert nms(boxes.astype(np.float32), scores, 0.5).tolist() == [0, 1]  # float32 rounds the IoU to 0.5
    assert backend.to_numpy(nms(gpu.asarray(boxes), gpu.asarray(scores), 0.5)).tolist() == [0]


@pytest.mark.gpu
@pytest.mark.parametrize("host", ["boxes", "scores"])
def test_nms_with_one_input_on_the_host_runs_on_the_gpu(gpu, rng, host):
    boxes = make_layout(rng, "sparse", 300)
    scores = rng.random(300).astype(np.float32)
    args = (boxes, gpu.asarray(scores)) if host == "boxes" else (gpu.asarray(boxes), scores)
    keep = nms(*args, 0.5)
    assert backend.is_gpu_array(keep)
    np.testing.assert_array_equal(backend.to_numpy(keep), nms(boxes, scores, 0.5))
    keep, new_scores = soft_nms(*args, 0.3)
    ref_keep, ref_scores = soft_nms(boxes, scores, 0.3)
    np.testing.assert_array_equal(backend.to_numpy(keep), ref_keep)
    np.testing.assert_array_equal(backend.to_numpy(new_scores), ref_scores)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [65, 200, 1000])
def test_gpu_nms_mask_in_row_chunks_gives_the_same_boxes(gpu, rng, n):
    """With the mask budget at one 64-row block, every chunk of rows is masked and walked on its own."""
    boxes = make_layout(rng, "large", n)
    scores = rng.random(n).astype(np.float32)
    col_blocks = (n + 63) // 64
    with mock.patch.object(nms_module, "_MASK_BYTES", 8 * col_blocks * 64):
        keep = nms(gpu.asarray(boxes), gpu.asarray(scores), 0.5)
    np.testing.assert_array_equal(backend.to_numpy(keep), reference_nms(boxes, scores, 0.5))


def test_nms_mask_memory_is_bounded():
    """100,000 boxes: a chunk of the mask stays under the budget (the whole mask would be 1.25 GB)."""
    n = 100_000
    col_blocks = (n + 63) // 64
    chunk = max(64, nms_module._MASK_BYTES // (8 * col_blocks) // 64 * 64)
    assert chunk * col_blocks * 8 <= nms_module._MASK_BYTES < n * col_blocks * 8


@settings(max_examples=200, deadline=None)
@given(boxes_strategy(max_n=30), st.sampled_from([0.0, 0.3, 0.5, 0.7]))
def test_plain_greedy_reference_matches_the_definition(data, threshold):
    boxes, scores, _ = data
    order = np.argsort(-scores, kind="stable")
    keep = order[nms_module.nms_reference_sorted(boxes[order], threshold)] if len(order) else order
    np.testing.assert_array_equal(keep, reference_nms(boxes, scores, threshold))


@pytest.mark.parametrize("layout", ["sparse", "clustered", "large"])
def test_tuned_path_equals_the_plain_reference(rng, layout):
    boxes = make_layout(rng, layout, 2000)
    scores = rng.random(2000).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    for threshold in (0.3, 0.5, 0.7):
        np.testing.assert_array_equal(nms(boxes, scores, threshold),
                                      order[nms_module.nms_reference_sorted(boxes[order], threshold)])


def test_path_choice_depends_on_the_input_only(rng):
    """Two runs take the same path: the choice reads no clock."""
    import time as time_module

    boxes = make_layout(rng, "large", 3000)
    scores = rng.random(3000).astype(np.float32)
    with mock.patch.object(time_module, "perf_counter", side_effect=AssertionError("timing used")), \
            mock.patch.object(nms_module, "_sparse_keep", wraps=nms_module._sparse_keep) as sparse:
        first = nms(boxes, scores, 0.7)
        calls = [len(c.args[0]) for c in sparse.call_args_list]
        second = nms(boxes, scores, 0.7)
    assert [len(c.args[0]) for c in sparse.call_args_list[len(calls):]] == calls
    np.testing.assert_array_equal(first, second)


def reference_soft_nms(boxes, scores, threshold, sigma, method, score_threshold):
    scores = scores.astype(np.float64).copy()
    remaining = [i for i in range(len(scores)) if scores[i] >= score_threshold]
    keep, kept = [], []
    while remaining:
        best = max(remaining, key=lambda i: (scores[i], -i))
        keep.append(best)
        kept.append(scores[best])
        remaining.remove(best)
        for j in remaining:
            iou = float(pair_iou(boxes[best].astype(np.float64), boxes[j].astype(np.float64)))
            if method == "linear":
                scores[j] *= 1 - iou if iou > threshold else 1
            else:
                scores[j] *= np.exp(-iou * iou / sigma)
        remaining = [j for j in remaining if scores[j] >= score_threshold]
    return np.array(keep, dtype=np.int64), np.array(kept)


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_matches_reference(xp, rng, method):
    xy = rng.uniform(0, 60, (50, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 30, (50, 2))], axis=1)
    scores = rng.random(50)
    keep, new_scores = soft_nms(xp.asarray(boxes), xp.asarray(scores), 0.3, 0.5, method, 0.05)
    ref_keep, ref_scores = reference_soft_nms(boxes, scores, 0.3, 0.5, method, 0.05)
    np.testing.assert_array_equal(backend.to_numpy(keep), ref_keep)
    np.testing.assert_allclose(backend.to_numpy(new_scores), ref_scores, rtol=1e-10)
    assert np.all(np.diff(backend.to_numpy(new_scores)) <= 0)
    assert len(ref_keep) > 5 and not np.allclose(ref_scores, np.sort(scores)[::-1][: len(ref_keep)])


def test_soft_nms_rejects_unknown_method():
    with pytest.raises(ConfigError, match="method"):
        soft_nms(np.zeros((1, 4)), np.ones(1), method="hard")


def test_blocked_iou_specialisation_equals_box_iou(rng):
    """The blocked rounds' in-place block IoU is box_iou, bit for bit, on boxes with positive sides."""
    from xpvision.detection.boxes import box_area, box_iou

    xy = rng.uniform(0, 50, (2, 40, 2)).astype(np.float32)
    wh = rng.uniform(0.5, 30, (2, 40, 2)).astype(np.float32)
    a, b = (np.concatenate([xy[k], xy[k] + wh[k]], axis=1) for k in range(2))
    rows, columns = (np.concatenate([boxes.T, box_area(boxes)[None]]) for boxes in (a, b))  # (5, 40) each
    blocked = nms_module._iou(rows, columns)
    # only the width is clamped there: disjoint heights give a negative IoU where box_iou gives 0
    np.testing.assert_array_equal(np.maximum(blocked, 0), box_iou(a, b))
    assert np.any(blocked > 0) and np.any(blocked < 0)
