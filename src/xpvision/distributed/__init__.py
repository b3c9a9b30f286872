"""Data-parallel training over processes and hosts (ChainerMN's design on mpi4py and CuPy's NCCL).

``train.<task>.processes: K`` makes ``xpvision train`` start itself under ``mpiexec -n K``
(:mod:`~xpvision.distributed.launch`); the K processes train one model together
(:mod:`~xpvision.distributed.data_parallel`), each reading its part of every batch
(:mod:`~xpvision.distributed.data`), and evaluate together (:mod:`~xpvision.distributed.evaluate`) over a
communicator (:mod:`~xpvision.distributed.comm`). Importing this package needs NumPy alone; mpi4py is
imported when several processes run.
"""

from xpvision.distributed.comm import (
    MPICommunicator,
    NCCLCommunicator,
    SingleCommunicator,
    launched_size,
    world,
)
from xpvision.distributed.data import (
    Block,
    ShardedLoader,
    check_batches,
    loaders,
    open_shards,
    part_bounds,
    verify_shards,
)
from xpvision.distributed.data_parallel import DataParallel, SingleProcess

__all__ = ["Block", "DataParallel", "MPICommunicator", "NCCLCommunicator", "ShardedLoader",
           "SingleCommunicator", "SingleProcess", "check_batches", "launched_size", "loaders", "open_shards",
           "part_bounds", "verify_shards", "world"]
