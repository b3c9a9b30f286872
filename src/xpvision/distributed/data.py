"""Which samples each process reads: its part of every global training batch, its block of the validation
set.

A global batch of ``B`` samples is cut into the blocks of :func:`xpvision.nn.parallel.global_blocks` (their
boundaries depend on ``B`` alone), and each process gets a contiguous run of whole blocks, the runs as even as
possible (:func:`batch_part`), in the order the single-process loader would batch them; the shuffle order of
an epoch depends on ``(seed, epoch)`` alone. Each process reads only its own samples from the shards:
they are memory-mapped (``ShardDataset(..., mmap=True)``), and the processes check the shards' SHA-256
together, each a share of them (:func:`verify_shards`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xpvision import backend
from xpvision.data.loader import DataLoader
from xpvision.data.shards import ShardDataset, verify_shard
from xpvision.errors import ConfigError
from xpvision.nn.parallel import REDUCTION_BLOCKS, global_blocks, reduction_blocks


def part_bounds(total: int, size: int, rank: int) -> tuple[int, int]:
    """``(start, stop)`` of process ``rank``'s part of ``total`` items split over ``size`` processes."""
    base, extra = divmod(total, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def batch_part(total: int, size: int, rank: int, block_count: int = REDUCTION_BLOCKS) -> tuple[int, int]:
    """``(start, stop)`` of process ``rank``'s samples in a global batch of ``total``: its run of whole
    :func:`~xpvision.nn.parallel.global_blocks` (``block_count``: those of the training device,
    :func:`~xpvision.nn.parallel.reduction_blocks`)."""
    blocks = global_blocks(total, size, block_count)
    first, last = part_bounds(len(blocks), size, rank)
    return blocks[first][0], blocks[last - 1][1]


def verify_shards(dataset, rank: int, size: int) -> None:
    """Check the SHA-256 of shards ``rank``, ``rank + size``, ... of a shard dataset against its manifest
    (the processes verify the dataset together, each reading a share of it once)."""
    for entry in dataset.manifest["shards"][rank::size]:
        verify_shard(dataset.folder / entry["file"], entry["sha256"])


def check_batches(samples: int, batch_size: int, size: int, what: str) -> None:
    """Raise :class:`ConfigError` when some batch of ``samples`` in batches of ``batch_size`` has fewer
    samples than there are processes (a process would hold none: batch normalisation and the gradient of
    an empty part are undefined)."""
    smallest = samples % batch_size or batch_size
    if smallest < size:
        raise ConfigError(f"{what}: processes {size} is larger than allowed: a batch of the {samples} "
                          f"samples in batches of {batch_size} holds only {smallest} (each process needs at "
                          f"least one sample of every batch); use at most {smallest} processes or change "
                          f"batch_size")


class ShardedLoader(DataLoader):
    """A :class:`~xpvision.data.loader.DataLoader` yielding, of each global batch, the part of process
    ``rank`` of ``size``. Each batch dict also holds ``global_batch``: ``(B, start)``, the global batch size
    and the position of this part in it. ``len()`` is the number of global batches."""

    def __init__(self, dataset, batch_size: int, *, rank: int, size: int, **kwargs) -> None:
        super().__init__(dataset, batch_size, **kwargs)
        check_batches(len(dataset) if not self.drop_last else len(self) * batch_size, batch_size, size,
                      "training batches")
        self.rank, self.size = rank, size
        self.block_count = reduction_blocks(backend.xp_for(self.device))

    def __iter__(self):
        order = self.order()
        for b in range(len(self)):
            indices = order[b * self.batch_size:(b + 1) * self.batch_size]
            start, stop = batch_part(len(indices), self.size, self.rank, self.block_count)
            batch = self._batch(indices[start:stop])
            batch["global_batch"] = (len(indices), start)
            yield batch


class Block:
    """Samples ``start:stop`` of ``dataset``: process ``rank``'s contiguous run of the batches of
    ``batch_size`` one process would evaluate ``dataset`` in (none when there are fewer batches than
    processes). Every batch is then one of one process's, so the predictions are the same bits."""

    def __init__(self, dataset, rank: int, size: int, batch_size: int = 1) -> None:
        self.dataset = dataset
        first, last = part_bounds(-(-len(dataset) // batch_size), size, rank)
        self.start, self.stop = (min(b * batch_size, len(dataset)) for b in (first, last))

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a block of {len(self)} samples")
        return self.dataset[self.start + int(i)]


def open_shards(folders: Sequence[Path], comm: Any) -> tuple[ShardDataset, ...]:
    """The shard datasets in ``folders``, read lazily; with several processes memory-mapped (each reads its
    own samples) and their SHA-256 checked by the processes together (:func:`verify_shards`)."""
    shared = comm.size > 1
    datasets = tuple(ShardDataset(folder, mmap=shared, verify=not shared) for folder in folders)
    if shared:
        for dataset in datasets:
            verify_shards(dataset, comm.rank, comm.size)
    return datasets


def loaders(train_set: Any, val_set: Any, batch_size: int, comm: Any, *, seed: int,
            **options: Any) -> tuple[DataLoader, DataLoader | tuple]:
    """``(train loader, val loader)``: shuffled training batches seeded ``seed`` and validation batches; with
    several processes, this process's part of every training batch and its run of the validation batches (an
    empty tuple when the validation set has fewer batches than there are processes and this one gets none).
    ``options``: the loaders' ``normalization`` and ``device``."""
    if comm.size == 1:
        return (DataLoader(train_set, batch_size, shuffle=True, seed=seed, **options),
                DataLoader(val_set, batch_size, **options))
    return (ShardedLoader(train_set, batch_size, rank=comm.rank, size=comm.size, shuffle=True, seed=seed,
                          **options),
            _loader_or_empty(Block(val_set, comm.rank, comm.size, batch_size), batch_size, **options))


def _loader_or_empty(block: Block, batch_size: int, **options: Any) -> DataLoader | tuple:
    return DataLoader(block, batch_size, **options) if len(block) else ()
