"""The shard datasets the data-parallel tests train on (written once per module)."""

import pytest
from tests.distributed.ranks import write_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for kind in ("classification", "detection", "segmentation"):
        write_data(root / kind / "train", kind, 64, 0)
        write_data(root / kind / "val", kind, 20, 1)
    return root
