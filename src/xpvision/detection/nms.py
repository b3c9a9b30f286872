"""Non-maximum suppression: greedy ``nms``, per-class ``batched_nms``, and ``soft_nms``.

Suppression rule (torchvision's): a box is suppressed when its IoU with a kept, higher-scoring box is
*strictly greater* than ``iou_threshold`` (ChainerCV uses ``>=``). Boxes are visited in descending score;
equal scores are visited in index order (a stable sort), so the result is deterministic.
``iou_threshold = 1`` keeps every box; ``0`` suppresses every box that overlaps a kept one with positive area.

IoU is computed in the boxes' float dtype (float32 or float64; other dtypes are compared in float32) as
``inter / (area_i + area_j - inter)`` by :func:`xpvision.detection.boxes.elementwise_box_iou`; the blocked CPU
rounds and the CUDA kernel (compiled for float and for double) use specialised forms of the same arithmetic
(tested equal to it), so both devices return the same indices. Boxes and scores on different devices are
computed on the GPU.

:func:`nms_reference_sorted` is the textbook greedy loop (keep the best box, drop its overlaps, repeat); it
serves small inputs (up to ``_REFERENCE_BOXES`` boxes) and is the reference the tuned paths are tested equal
to. Which path runs depends on the input only (its size and the density of its overlaps), never on timing.

CPU algorithm. Greedy NMS is the lexicographically-first maximal independent set of the *suppression graph*
(an edge joins two boxes whose IoU exceeds the threshold), ordered by score. Two strategies, chosen per input:

* Sparse graph, when a sort-and-sweep finds few candidate pairs per box (spread-out boxes). Only
  overlapping boxes can be joined, so the graph is built without the ``O(N²)`` IoU matrix:

  1. An IoU above ``t`` needs the overlap in x to exceed ``t·max(w_i, w_j)`` and the centres to be closer
     than ``(1 - t)·max(h_i, h_j)`` in y. Boxes are bucketed into horizontal bands of height
     ``(1 - t)·h_max`` by centre and sorted by ``(band, x1)``; a box's candidates are then two contiguous
     runs of that order (later boxes of its own band, and boxes of the next band) inside an x window,
     found with ``searchsorted``. The number of candidate pairs is the statistic that picks the strategy.
  2. IoU is computed for the candidate pairs only (vectorised, in chunks to bound memory); pairs above the
     threshold are the edges.
  3. The greedy pass walks boxes in score order over the sparse edges (``O(N + E)``).

* Blocked greedy rounds, when the graph may be dense (large or clustered boxes). Each round takes the next
  128 undecided boxes in score order, resolves them on their own suppression bitmask (the only serial
  part, a walk over Python integers), and removes every later box that a kept one suppresses: IoU ``> t``
  needs ``t·a_max < a_min`` for the two areas, so later boxes are kept sorted by area and each group of 16
  kept boxes is compared, as one contiguous block of IoUs, with the boxes in its area window only. Rounds
  stop when no box is left undecided; when, by the work counted so far per decided box, building the
  sparse graph of the undecided boxes is cheaper, that finishes the job (greedy NMS of the undecided boxes
  is the greedy result of the rest).

On the GPU a CuPy ``RawKernel`` computes the 64-bit suppression bitmask of every pair of 64-box blocks, and a
second single-block kernel walks it in score order (the algorithm of torchvision's and ChainerCV's CUDA NMS).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from xpvision import backend
from xpvision.detection.boxes import box_area, check_boxes, elementwise_box_iou
from xpvision.errors import ConfigError, ShapeError

# Candidate pairs are processed in chunks of about this many, bounding temporary memory to a few tens of MB.
_PAIR_CHUNK = 1 << 20
# Search windows are widened by this fraction of the largest box side, so float rounding never loses a pair.
_WINDOW_SLACK = 1e-3
# Above this many candidate pairs per box the graph may be dense and blocked greedy rounds start. Their work
# so far (IoU entries computed per decided box), against the work of building the sparse graph of the boxes
# still undecided, decides when to switch. Work is counted in IoU entries of a dense block: a candidate pair
# of the sparse graph (gather, IoU, edge list, greedy walk) costs about _PAIR_COST of them, and a round has a
# fixed cost of about _ROUND_COST (its head's bitmask walk and NumPy call overheads). Both are ratios of NumPy
# operation costs, so the choice depends on the input alone, never on timing.
_DENSE_PAIRS_PER_BOX = 32
_PAIR_COST = 8.0
_ROUND_COST = 40_000.0
# Blocked greedy: boxes decided per round (the serial part, on a bitmask) and kept boxes compared together
# against one window of candidate columns.
_HEAD_BOXES = 128
_ROW_GROUP = 16
# Area-ratio windows are widened by this relative amount, far above float32 rounding of the IoU.
_RATIO_SLACK = 1e-5
# Up to this many boxes the plain greedy loop is as fast as any tuned path (a few vectorised passes).
_REFERENCE_BOXES = 64
# Greedy over sparse edges: a kept box with more targets than this removes them with one NumPy assignment.
_LONG_RUN = 16


def nms(boxes, scores, iou_threshold: float):
    """Greedy non-maximum suppression.

    Args:
        boxes: ``(N, 4)`` float ``xyxy`` boxes (NumPy or CuPy).
        scores: ``(N,)`` float scores.
        iou_threshold: in ``[0, 1]``; boxes with IoU ``>`` this against a kept, higher-scoring box are
            dropped.

    Returns:
        ``(K,)`` int64 indices into ``boxes`` of the kept boxes, in descending score order (ties by index).
    """
    return _nms(boxes, scores, None, iou_threshold)


def batched_nms(boxes, scores, idxs, iou_threshold: float):
    """Non-maximum suppression done independently per category ``idxs`` (``(N,)`` labels of any dtype; equal
    labels make a category): boxes of different categories never suppress each other. Returns ``(K,)`` int64
    indices in descending score order.

    Categories are kept apart by grouping, not by torchvision's coordinate-offset trick, whose large float32
    offsets would round the IoU differently from plain :func:`nms`."""
    return _nms(boxes, scores, idxs, iou_threshold)


def _nms(boxes, scores, groups, iou_threshold: float):
    boxes, scores = _check_inputs(boxes, scores)
    threshold = _check_threshold(iou_threshold, "iou_threshold")
    xp = backend.get_array_module(boxes, scores)
    if groups is not None:
        groups = xp.asarray(groups)
        if groups.shape != scores.shape:
            raise ShapeError(f"idxs: expected shape {tuple(scores.shape)}, got {tuple(groups.shape)}")
        # dense int64 labels 0..G-1: any label dtype or range (float, huge ids) keeps its equalities
        groups = xp.unique(groups, return_inverse=True)[1].reshape(-1).astype(xp.int64)
    order = _descending(xp, scores)
    if len(order) == 0 or threshold >= 1.0:
        return order
    if xp is not np:
        return order[_nms_sorted_gpu(xp, boxes[order], None if groups is None else groups[order], threshold)]
    if len(order) <= _REFERENCE_BOXES and groups is None:
        return order[nms_reference_sorted(boxes[order], threshold)]
    sorted_boxes = np.ascontiguousarray(boxes[order])
    sorted_groups = None if groups is None else groups[order]
    return order[_nms_sorted_cpu(sorted_boxes, sorted_groups, threshold)]


def _nms_sorted_cpu(boxes, groups, threshold: float):
    """Kept positions (int64) of score-sorted ``boxes`` ``(N, 4)`` with optional ``groups`` ``(N,)``.

    A sparse suppression graph (few candidate pairs per box) is solved directly. Otherwise blocked greedy
    rounds run first, and the graph of the boxes still undecided is built as soon as the cost model says it
    is cheaper: greedy NMS of the undecided boxes, in score order, is the greedy result of the rest, so the
    two methods chain.
    """
    plan = _sweep_plan(boxes, groups, threshold)
    if plan.num_pairs <= _DENSE_PAIRS_PER_BOX * len(boxes):
        return _sparse_keep(boxes, groups, threshold, plan)
    rounds = _BlockedGreedy(boxes, groups, threshold)
    kept = []
    planned_boxes, planned_pairs = len(boxes), plan.num_pairs
    while True:
        kept.append(rounds.step())
        undecided = rounds.undecided()
        if not len(undecided):
            return np.concatenate(kept)
        # candidate pairs scale about quadratically with the density of boxes left
        scaled_pairs = planned_pairs * (len(undecided) / planned_boxes) ** 2
        if _PAIR_COST * scaled_pairs < rounds.work_left():
            sub_boxes = boxes[undecided]
            sub_groups = None if groups is None else groups[undecided]
            plan = _sweep_plan(sub_boxes, sub_groups, threshold)
            planned_boxes, planned_pairs = len(undecided), plan.num_pairs
            if _PAIR_COST * plan.num_pairs < rounds.work_left():
                kept.append(undecided[_sparse_keep(sub_boxes, sub_groups, threshold, plan)])
                return np.concatenate(kept)


def nms_reference_sorted(boxes, threshold: float):
    """Kept positions (int64) of score-sorted NumPy ``boxes`` ``(N, 4)``: the textbook greedy loop, in the
    boxes' dtype (the arithmetic of every other path)."""
    dtype = boxes.dtype.type
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, k]) for k in range(4))
    area = (x2 - x1) * (y2 - y1)
    rest = np.arange(len(boxes))
    keep = []
    while rest.size:
        i, rest = rest[0], rest[1:]
        keep.append(i)
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), dtype(0))
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), dtype(0))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            rest = rest[~(inter / (area[i] + area[rest] - inter) > dtype(threshold))]
    return np.array(keep, dtype=np.int64)


def _sparse_keep(boxes, groups, threshold: float, plan: _SweepPlan):
    """Kept positions (int64) of score-sorted ``boxes`` ``(N, 4)`` from their suppression graph."""
    src, dst = _suppression_edges(boxes, groups, threshold, plan)
    return _greedy_keep(len(boxes), src, dst)


def _check_inputs(boxes, scores):
    """Boxes ``(N, 4)`` float32 or float64 (other dtypes become float32) and scores ``(N,)``, both on the GPU
    when either is there (a host array is copied to the device)."""
    xp = backend.get_array_module(boxes, scores)
    boxes = check_boxes(xp.asarray(boxes))
    if boxes.dtype not in (xp.float32, xp.float64):
        boxes = boxes.astype(xp.float32)
    scores = xp.asarray(scores)
    if scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
        raise ShapeError(f"scores: expected shape ({boxes.shape[0]},) to match boxes, "
                         f"got {tuple(scores.shape)}")
    return boxes, scores


def _check_threshold(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}: expected a value in [0, 1], got {value}")
    return value


def _descending(xp, scores):
    """int64 indices sorting ``scores`` descending; equal scores keep index order (stable sort)."""
    if xp is np:
        return np.argsort(-scores, kind="stable").astype(np.int64)
    # CuPy's argsort is a stable (thrust) sort; it has no ``kind`` argument.
    return xp.argsort(-scores).astype(xp.int64)


# -- CPU: sparse suppression graph ----------------------------------------------------------------------
class _SweepPlan(NamedTuple):
    """Candidate partners of every box: two runs ``[first, last)`` of the sweep order (same, next band)."""

    sweep: np.ndarray  # (N,) box positions in (band, x1) order
    runs: tuple[tuple[np.ndarray, np.ndarray], ...]  # ((first, last), (first, last)), each (N,) int64
    num_pairs: int


def _sweep_plan(boxes, groups, threshold: float) -> _SweepPlan:
    """Find the candidate pairs of ``boxes`` ``(N, 4)`` (a superset of the pairs with IoU > ``threshold``)."""
    n = len(boxes)
    x1, y1, x2, y2 = (boxes[:, k].astype(np.float64) for k in range(4))
    width = x2 - x1  # (N,)
    w_max = max(float(width.max()), 0.0)
    h_max = max(float((y2 - y1).max()), 0.0)
    slack = _WINDOW_SLACK * max(w_max, h_max, 1e-6)
    # IoU > t needs |cy_i - cy_j| < (1 - t)·max(h_i, h_j): partners lie in the same or the next band.
    centre_y = (y1 + y2) * 0.5  # (N,)
    band = np.floor((centre_y - centre_y.min()) / ((1.0 - threshold) * h_max + slack)).astype(np.int64)
    if groups is not None:  # two empty bands between groups keep them apart
        band = (groups - groups.min()) * (int(band.max()) + 3) + band
    x_start = x1 - float(x1.min())  # (N,) in [0, x range]
    span = float(x_start.max()) + 2.0 * w_max + 1.0  # key distance between neighbouring bands
    key = band * span + x_start
    sweep = np.argsort(key, kind="stable")
    key = key[sweep]
    # IoU > t needs x1_i - (1 - t)·w_max < x1_j < x1_i + (1 - t)·w_i
    right = key + (1.0 - threshold) * width[sweep] + slack
    left = key - (1.0 - threshold) * w_max - slack
    first_same = np.arange(1, n + 1)
    last_same = np.maximum(np.searchsorted(key, right, side="left"), first_same)
    first_next = np.searchsorted(key, left + span, side="left")
    last_next = np.maximum(np.searchsorted(key, right + span, side="left"), first_next)
    num_pairs = int((last_same - first_same).sum() + (last_next - first_next).sum())
    return _SweepPlan(sweep, ((first_same, last_same), (first_next, last_next)), num_pairs)


def _suppression_edges(boxes, groups, threshold: float, plan: _SweepPlan):
    """Edges ``(src, dst)`` (int64, ``src < dst``) between boxes of ``boxes`` ``(N, 4)`` — sorted by
    descending score — whose IoU is above ``threshold`` (and, with ``groups`` ``(N,)``, share a group)."""
    dtype = boxes.dtype.type
    columns = np.ascontiguousarray(boxes.T)  # (4, N): gathers below read contiguous coordinates
    src_parts, dst_parts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for first, last in plan.runs:
        for rows, cols in _pair_chunks(first, last):
            i, j = plan.sweep[rows], plan.sweep[cols]  # score ranks
            keep = elementwise_box_iou(_gather(columns, i), _gather(columns, j)) > dtype(threshold)
            if groups is not None:
                keep &= groups[i] == groups[j]
            i, j = i[keep], j[keep]
            src_parts.append(np.minimum(i, j))
            dst_parts.append(np.maximum(i, j))
    return np.concatenate(src_parts), np.concatenate(dst_parts)


def _gather(columns, index):
    """Boxes ``(K, 4)`` at ``index`` from coordinate rows ``(4, N)``, as a view of a ``(4, K)`` array (column
    by column: several times faster than gathering rows and reading them with a stride)."""
    out = np.empty((4, len(index)), columns.dtype)
    for k in range(4):
        np.take(columns[k], index, out=out[k])
    return out.T


def _pair_chunks(first, last):
    """Yield ``(rows, cols)`` int arrays enumerating, for every row ``r``, the columns
    ``first[r] .. last[r]-1``, in chunks of about ``_PAIR_CHUNK`` pairs."""
    counts = last - first  # (N,)
    ends = np.cumsum(counts)
    row = 0
    n = len(counts)
    while row < n:
        stop = int(np.searchsorted(ends, (ends[row - 1] if row else 0) + _PAIR_CHUNK, side="right"))
        stop = min(max(stop, row + 1), n)
        c = counts[row:stop]
        rows = np.repeat(np.arange(row, stop), c)
        offsets = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        yield rows, first[rows] + offsets
        row = stop


def _greedy_keep(n: int, src, dst):
    """Positions (int64) kept by greedy suppression of ``n`` score-ordered boxes over edges ``src -> dst``."""
    if len(src) == 0:
        return np.arange(n, dtype=np.int64)
    # a stable sort of 16-bit keys is a radix sort
    order = np.argsort(src.astype(np.uint16) if n <= 1 << 16 else src, kind="stable")
    targets = dst[order]  # (E,) grouped by source, sources ascending
    counts = np.bincount(src, minlength=n)  # (n,)
    sources = np.flatnonzero(counts)
    ends = np.cumsum(counts)[sources]
    starts = ends - counts[sources]
    removed = bytearray(n)
    removed_view = np.frombuffer(removed, dtype=np.uint8)  # the same memory, for fancy assignment
    target_list = targets.tolist()
    for s, a, b in zip(sources.tolist(), starts.tolist(), ends.tolist(), strict=True):
        if not removed[s]:
            if b - a > _LONG_RUN:
                removed_view[targets[a:b]] = 1
            else:
                for t in target_list[a:b]:
                    removed[t] = 1
    return np.flatnonzero(removed_view == 0).astype(np.int64)


# -- CPU: blocked greedy --------------------------------------------------------------------------------
class _BlockedGreedy:
    """Greedy NMS of score-sorted boxes, ``_HEAD_BOXES`` undecided boxes (the *head*) at a time.

    A round resolves the head on its own ``(R, R)`` suppression bitmask (a serial walk over Python integers),
    then removes every undecided box that a kept head box suppresses. IoU ``> t`` needs the smaller area to
    exceed ``t`` times the larger, so the undecided boxes (the *columns*) are kept sorted by ``(group,
    area)`` and each group of kept rows is compared, as one contiguous ``(rows, columns)`` block, only with
    the columns inside its area window. A box without positive width and height overlaps nothing: it is
    never a row or a column, and is kept when its head comes.
    """

    def __init__(self, boxes, groups, threshold: float):
        n = len(boxes)
        self.threshold = boxes.dtype.type(threshold)
        x1, y1, x2, y2 = boxes.T
        self.coords = np.stack([x1, y1, x2, y2, box_area(boxes)])  # (5, N): coordinates, area
        self.proper = (x2 > x1) & (y2 > y1)  # (N,)
        self.area = self.coords[4].astype(np.float64)  # (N,) window key
        self.groups = np.zeros(n, np.int64) if groups is None else groups
        low = float(self.threshold) * (1.0 - _RATIO_SLACK)
        self.ratio = (low, 1.0 / low if low > 0 else np.inf)
        by_key = np.flatnonzero(self.proper)
        by_key = by_key[np.lexsort((self.area[by_key], self.groups[by_key]))]  # (M,) in (group, area) order
        self.columns = _Columns(self.coords[:, by_key], self.groups[by_key], self.area[by_key], by_key)
        self.is_undecided = np.ones(n, bool)
        self.decided = 0
        self.work = 0.0

    def undecided(self):
        """Positions (int64, ascending) of the boxes not yet kept or suppressed."""
        return np.flatnonzero(self.is_undecided)

    def work_left(self) -> float:
        """Estimated work to finish (IoU entries), at the work per decided box so far."""
        return np.count_nonzero(self.is_undecided) * self.work / max(self.decided, 1)

    def step(self):
        """Run one round; return the kept positions (int64, ascending) of its head."""
        head = np.flatnonzero(self.is_undecided)[:_HEAD_BOXES]  # (R,)
        rows = self.coords[:, head]  # (5, R)
        hits = _iou(rows, rows) > self.threshold  # (R, R)
        hits &= self.groups[head][:, None] == self.groups[head]
        hits &= self.proper[head][:, None] & self.proper[head]
        kept = head[_resolve_head(hits)]
        self.is_undecided[head] = False
        self.columns = self.columns.select(self.columns.position > head[-1])
        suppressed = self._suppressed_by(kept[self.proper[kept]])
        self.is_undecided[self.columns.position[suppressed]] = False
        self.columns = self.columns.select(~suppressed)
        self.decided += len(head) + int(np.count_nonzero(suppressed))
        self.work += _ROUND_COST + len(head) ** 2
        return kept

    def _suppressed_by(self, kept):
        """Boolean ``(M,)`` over the columns: IoU above the threshold with a kept box of the same group."""
        columns = self.columns
        suppressed = np.zeros(len(columns.position), bool)
        if not len(kept):
            return suppressed
        kept = kept[np.lexsort((self.area[kept], self.groups[kept]))]
        group_starts = np.flatnonzero(np.diff(self.groups[kept], prepend=-1) != 0)
        starts = np.union1d(group_starts, np.arange(0, len(kept), _ROW_GROUP))  # (C,) row chunks
        stops = np.append(starts[1:], len(kept))
        # each chunk is one group with ascending areas: its column window is [begins, ends)
        chunk_group = self.groups[kept[starts]]  # (C,) ascending
        low, high = self.ratio
        lows, highs = low * self.area[kept[starts]], high * self.area[kept[stops - 1]]
        begins, ends = np.zeros(len(starts), np.int64), np.zeros(len(starts), np.int64)
        for group in np.unique(chunk_group).tolist():
            chunks = slice(*np.searchsorted(chunk_group, [group, group + 1]))  # groups are 0..G-1
            column_begin, column_end = np.searchsorted(columns.group, [group, group + 1])
            areas = columns.area[column_begin:column_end]  # ascending
            begins[chunks] = column_begin + np.searchsorted(areas, lows[chunks], side="left")
            ends[chunks] = column_begin + np.searchsorted(areas, highs[chunks], side="right")
        for first, stop, begin, end in zip(starts.tolist(), stops.tolist(), begins.tolist(), ends.tolist(),
                                           strict=True):
            if end > begin:
                rows = self.coords[:, kept[first:stop]]
                best = _iou(rows, columns.coords[:, begin:end]).max(axis=0)  # (end - begin,)
                self.work += (stop - first) * (end - begin)
                suppressed[begin:end] |= best > self.threshold
        return suppressed


class _Columns(NamedTuple):
    """The undecided boxes of :class:`_BlockedGreedy` with positive width and height, by ``(group, area)``."""

    coords: np.ndarray  # (5, M) x1, y1, x2, y2, area in the boxes' dtype
    group: np.ndarray  # (M,) int64
    area: np.ndarray  # (M,) float64
    position: np.ndarray  # (M,) int64 score rank

    def select(self, mask):
        return _Columns(self.coords[:, mask], self.group[mask], self.area[mask], self.position[mask])


def _iou(rows, columns):
    """IoU ``(K, M)`` of each of ``rows`` ``(5, K)`` with each of ``columns`` ``(5, M)`` (x1, y1, x2, y2, area
    in the boxes' dtype): a specialised, in-place form of :func:`~xpvision.detection.boxes.box_iou` on
    precomputed areas, equal to it (tested) where both boxes have positive width and height.

    Only the width is clamped at 0: for such boxes a negative height then gives a negative intersection and
    IoU, which, like the true IoU 0, is never above a threshold in ``[0, 1]``.
    """
    x1, y1, x2, y2, area = (r[:, None] for r in rows)  # each (K, 1)
    width = np.minimum(x2, columns[2])  # (K, M)
    width -= np.maximum(x1, columns[0])
    np.maximum(width, 0, out=width)
    height = np.minimum(y2, columns[3])
    height -= np.maximum(y1, columns[1])
    width *= height  # intersection
    union = np.add(area, columns[4], out=height)
    union -= width
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 between two empty boxes
        width /= union
    return width


def _resolve_head(hits):
    """Positions (int64) kept by greedy suppression within a head, from its ``(R, R)`` boolean IoU matrix.

    Row ``r`` is ORed into the removed set only after ``r`` is decided, so its bits at and before ``r``
    (the matrix is symmetric) change nothing."""
    packed = np.packbits(hits, axis=1, bitorder="little")  # (R, ceil(R / 8)) uint8
    width = packed.shape[1]
    raw = packed.tobytes()
    removed = 0
    kept = []
    for r in range(len(hits)):
        if not removed >> r & 1:
            kept.append(r)
            removed |= int.from_bytes(raw[r * width:(r + 1) * width], "little")
    return np.array(kept, dtype=np.int64)


# -- GPU: bitmask kernels --------------------------------------------------------------------------------
# ``REAL`` is float or double (``FMAX``/``FMIN`` its fmaxf/fminf or fmax/fmin): the kernels are compiled once
# per box dtype, so float64 boxes are compared in float64 as on the CPU. Rows are processed in chunks starting
# at ``row_start`` so that the mask of one chunk, ``rows × ceil(n / 64)`` 64-bit words, stays under
# ``_MASK_BYTES``.
_NMS_KERNELS = r"""
typedef unsigned long long u64;
extern "C" __global__ void nms_mask(const int n, const int row_start, const REAL threshold, const REAL* boxes,
                                    const REAL* areas, const long long* groups, u64* mask,
                                    const int col_blocks) {
    const int row_block = row_start / 64 + blockIdx.y, col_block = blockIdx.x;
    if (row_block > col_block) return;
    const int rows = min(n - row_block * 64, 64), cols = min(n - col_block * 64, 64);
    __shared__ REAL cb[64 * 4];
    __shared__ REAL ca[64];
    __shared__ long long cg[64];
    const int t = threadIdx.x;
    if (t < cols) {
        const int j = col_block * 64 + t;
        for (int k = 0; k < 4; k++) cb[t * 4 + k] = boxes[j * 4 + k];
        ca[t] = areas[j];
        cg[t] = groups[j];
    }
    __syncthreads();
    if (t >= rows) return;
    const int i = row_block * 64 + t;
    const REAL* b = boxes + i * 4;
    u64 bits = 0;
    for (int k = (row_block == col_block) ? t + 1 : 0; k < cols; k++) {
        if (groups[i] != cg[k]) continue;
        const REAL w = FMAX(FMIN(b[2], cb[k * 4 + 2]) - FMAX(b[0], cb[k * 4 + 0]), (REAL)0);
        const REAL h = FMAX(FMIN(b[3], cb[k * 4 + 3]) - FMAX(b[1], cb[k * 4 + 1]), (REAL)0);
        const REAL inter = w * h;
        if (inter / (areas[i] + ca[k] - inter) > threshold) bits |= 1ULL << k;
    }
    mask[(long long)(i - row_start) * col_blocks + col_block] = bits;
}

extern "C" __global__ void nms_gather(const int row_start, const int row_end, const int col_blocks,
                                      const u64* mask, u64* removed, bool* keep) {
    for (int i = row_start; i < row_end; i++) {
        const int block = i / 64;
        const bool kept = !(removed[block] & (1ULL << (i % 64)));
        __syncthreads();
        if (kept) {
            if (threadIdx.x == 0) keep[i] = true;
            const u64* row = mask + (long long)(i - row_start) * col_blocks;
            for (int j = block + threadIdx.x; j < col_blocks; j += blockDim.x) removed[j] |= row[j];
        }
        __syncthreads();
    }
}
"""
# The suppression bitmask of one chunk of rows is at most this large (64 MiB: 5,000 boxes need 3.2 MB in one
# chunk; 100,000 boxes take 20 chunks of 5,376 rows).
_MASK_BYTES = 64 << 20


@functools.cache
def _gpu_kernels(cp, real: str):
    # --fmad=false: no fused multiply-adds, so the IoU is rounded exactly as NumPy rounds it.
    suffix = "f" if real == "float" else ""
    code = (_NMS_KERNELS.replace("REAL", real).replace("FMAX", "fmax" + suffix)
            .replace("FMIN", "fmin" + suffix))
    module = cp.RawModule(code=code, options=("--fmad=false",))
    return module.get_function("nms_mask"), module.get_function("nms_gather")


def _nms_sorted_gpu(cp, boxes, groups, threshold: float):
    """Kept positions (int64) of score-sorted CuPy ``boxes`` ``(N, 4)`` float32 or float64 (optional
    ``groups`` ``(N,)``), compared in the boxes' dtype."""
    real = "double" if boxes.dtype == cp.float64 else "float"
    mask_kernel, gather_kernel = _gpu_kernels(cp, real)
    n = int(boxes.shape[0])
    boxes = cp.ascontiguousarray(boxes)
    areas = box_area(boxes)
    groups = cp.zeros(n, dtype=cp.int64) if groups is None else cp.ascontiguousarray(groups, dtype=cp.int64)
    col_blocks = (n + 63) // 64
    chunk = max(64, _MASK_BYTES // (8 * col_blocks) // 64 * 64)  # rows per chunk, a multiple of 64
    mask = cp.zeros((min(chunk, n), col_blocks), dtype=cp.uint64)
    removed = cp.zeros(col_blocks, dtype=cp.uint64)
    keep = cp.zeros(n, dtype=cp.bool_)
    scalar = np.float64 if real == "double" else np.float32
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        mask_kernel((col_blocks, (stop - start + 63) // 64), (64,),
                    (np.int32(n), np.int32(start), scalar(threshold), boxes, areas, groups, mask,
                     np.int32(col_blocks)))
        gather_kernel((1,), (256,),
                      (np.int32(start), np.int32(stop), np.int32(col_blocks), mask, removed, keep))
    return cp.nonzero(keep)[0].astype(cp.int64)


# -- soft-NMS ------------------------------------------------------------------------------------------
def soft_nms(boxes, scores, iou_threshold: float = 0.3, sigma: float = 0.5, method: str = "linear",
             score_threshold: float = 0.001):
    """Soft-NMS (Bodla et al., 2017): instead of dropping overlapping boxes, decay their scores.

    Repeatedly takes the box with the highest current score (ties: lowest index) and multiplies the scores of
    the remaining boxes by ``1 - IoU`` where ``IoU > iou_threshold`` (``method='linear'``) or by
    ``exp(-IoU² / sigma)`` (``method='gaussian'``, ``iou_threshold`` unused); boxes whose score falls below
    ``score_threshold`` are discarded.

    Args:
        boxes: ``(N, 4)`` float ``xyxy`` boxes; scores: ``(N,)`` float.

    GPU inputs are copied to the host and the results back (the loop is serial by nature).

    Returns:
        ``(keep, new_scores)``: ``(K,)`` int64 indices in selection order (non-increasing decayed score) and
        ``(K,)`` their decayed scores, in the scores' float dtype.
    """
    if method not in ("linear", "gaussian"):
        raise ConfigError(f"method: expected 'linear' or 'gaussian', got {method!r}")
    if sigma <= 0:
        raise ConfigError(f"sigma: expected a positive value, got {sigma}")
    boxes, scores = _check_inputs(boxes, scores)
    threshold = _check_threshold(iou_threshold, "iou_threshold")
    xp = backend.get_array_module(boxes, scores)
    if xp is not np:  # a serial loop: on the host, one copy each way instead of a synchronisation per box
        keep, kept = soft_nms(backend.to_numpy(boxes), backend.to_numpy(scores), threshold, sigma, method,
                              score_threshold)
        return xp.asarray(keep), xp.asarray(kept)
    dtype = scores.dtype if scores.dtype.kind == "f" else xp.float32
    current = scores.astype(dtype, copy=True)
    remaining = xp.nonzero(current >= score_threshold)[0]
    keep, kept_scores = [], []
    while remaining.size:
        best = int(xp.argmax(current[remaining]))
        i = remaining[best]
        keep.append(i)
        kept_scores.append(current[i])
        remaining = xp.concatenate([remaining[:best], remaining[best + 1:]])
        if remaining.size == 0:
            break
        iou = elementwise_box_iou(boxes[i], boxes[remaining])  # (R,)
        linear = method == "linear"
        decay = xp.where(iou > threshold, 1 - iou, 1) if linear else xp.exp(-(iou * iou) / sigma)
        current[remaining] = current[remaining] * decay.astype(dtype)
        remaining = remaining[current[remaining] >= score_threshold]
    if not keep:
        return xp.zeros(0, dtype=xp.int64), xp.zeros(0, dtype=dtype)
    return xp.stack(keep).astype(xp.int64), xp.stack(kept_scores).astype(dtype)
