"""Which samples each process reads: parts of global batches, evaluation blocks, shard verification."""

import itertools

import numpy as np
import pytest

from xpvision.data.loader import DataLoader, ListDataset
from xpvision.data.shards import ShardDataset, write_shards
from xpvision.distributed import Block, ShardedLoader, check_batches, part_bounds, verify_shards
from xpvision.distributed.data import batch_part
from xpvision.errors import ConfigError, DataError


@pytest.mark.parametrize(("total", "size"), [(10, 3), (10, 2), (4, 3), (3, 3), (7, 1)])
def test_parts_are_contiguous_balanced_and_cover_the_batch(total, size):
    bounds = [part_bounds(total, size, rank) for rank in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == total
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_part_bounds_by_hand():
    assert [part_bounds(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]


def test_batch_parts_are_runs_of_whole_global_blocks():
    # 100 samples: 16 blocks, 4 of 7 then 12 of 6; 3 processes hold 6, 5 and 5 of them
    assert [batch_part(100, 3, r) for r in range(3)] == [(0, 40), (40, 70), (70, 100)]
    assert [batch_part(100, 2, r) for r in range(2)] == [(0, 52), (52, 100)]
    assert [batch_part(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]  # blocks of one sample


def test_a_batch_smaller_than_the_process_count_is_refused():
    check_batches(64, 10, 4, "training batches")  # last batch 4
    with pytest.raises(ConfigError, match=r"processes 5 is larger than allowed.*holds only 4"):
        check_batches(64, 10, 5, "training batches")
    with pytest.raises(ConfigError, match="holds only 2"):
        check_batches(2, 10, 3, "training batches")


def dataset(n=23):
    return ListDataset([{"image": np.full((2, 2, 1), i, np.uint8), "label": i % 3} for i in range(n)], "abc")


@pytest.mark.parametrize("size", [2, 3])
def test_sharded_loaders_together_yield_the_single_loaders_batches(size):
    single = DataLoader(dataset(), 10, shuffle=True, seed=4)
    single.set_epoch(2)
    parts = []
    for rank in range(size):
        loader = ShardedLoader(dataset(), 10, rank=rank, size=size, shuffle=True, seed=4)
        loader.set_epoch(2)
        assert len(loader) == len(single)
        parts.append(list(loader))
    for b, whole in enumerate(single):
        pieces = [parts[rank][b] for rank in range(size)]
        np.testing.assert_array_equal(np.concatenate([p["indices"] for p in pieces]), whole["indices"])
        np.testing.assert_array_equal(np.concatenate([p["images"] for p in pieces]), whole["images"])
        starts = [p["global_batch"] for p in pieces]
        assert starts == [(len(whole["indices"]), part_bounds(len(whole["indices"]), size, r)[0])
                          for r in range(size)]


def test_blocks_split_an_evaluation_set_in_whole_batches_in_order():
    blocks = [Block(dataset(), rank, 3) for rank in range(3)]  # batches of one sample
    assert [len(b) for b in blocks] == [8, 8, 7]
    assert [s["label"] for b in blocks for s in (b[i] for i in range(len(b)))] == [i % 3 for i in range(23)]
    with pytest.raises(IndexError):
        blocks[2][7]
    runs = [Block(dataset(), rank, 3, batch_size=5) for rank in range(3)]  # 5 batches: 2, 2, 1
    assert [(b.start, b.stop) for b in runs] == [(0, 10), (10, 20), (20, 23)]
    assert [len(Block(dataset(), rank, 3, batch_size=10)) for rank in range(3)] == [10, 10, 3]
    assert [len(Block(dataset(), rank, 3, batch_size=20)) for rank in range(3)] == [20, 3, 0]  # 2 batches


def test_processes_verify_a_share_of_the_shards_each(tmp_path):
    write_shards(tmp_path / "s", (dict(s) for s in dataset().samples), classes="abc", shard_size=5)
    shards = ShardDataset(tmp_path / "s", mmap=True, verify=False)
    for rank in range(2):
        verify_shards(shards, rank, 2)
    broken = tmp_path / "s" / "shard-00003.npz"
    data = bytearray(broken.read_bytes())
    data[len(data) // 2] ^= 0xFF
    broken.write_bytes(bytes(data))
    verify_shards(shards, 0, 2)  # shards 0, 2, 4: not the broken one
    with pytest.raises(DataError, match=r"shard-00003\.npz: SHA-256"):
        verify_shards(shards, 1, 2)
