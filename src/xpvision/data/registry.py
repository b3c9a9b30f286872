"""The files each downloadable dataset is made of: official URL and published MD5.

Checksums are the ones published with the data (MNIST: LeCun's files as listed by torchvision; Fashion-MNIST:
torchvision's list; VOC: torchvision's ``DATASET_YEAR_DICT``; COCO 2017: the MD5s listed by PaddleDetection
and the MLPerf detection scripts). An entry with ``md5=None`` has its hash recorded in the download folder's
lock file on first download and verified afterwards (see :mod:`xpvision.data.download`).

A mirror serves files under their plain names: ``<mirror>/<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from xpvision.errors import ConfigError


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its name on disk (and on mirrors), official URL, MD5 (or ``None``: record
    it)."""

    name: str
    url: str
    md5: str | None
    content_md5: str | None = None
    """MD5 of the decompressed content of a ``.gz`` file: a copy re-compressed differently, or kept plain
    under the name without ``.gz``, is accepted when its content matches (see
    :mod:`xpvision.data.download`)."""


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/"
_COCO_URL = "http://images.cocodataset.org/"

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

IDX_MD5: dict[str, dict[str, str]] = {
    "mnist": {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
              "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
              "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
              "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"},
    "fashion-mnist": {"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                      "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
                      "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
                      "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"},
}
"""MD5 of the *uncompressed* IDX files (as torchvision lists them). A copy kept plain, or re-compressed by a
packager (Debian's ``dataset-fashion-mnist`` ``.gz`` files differ from the official ``.gz`` bytes, not in
content), is verified by its content against these."""


def _idx_files(dataset: str, url: str, gz_md5: tuple[str, ...]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(name, url + name, md5, IDX_MD5[dataset][name.removesuffix(".gz")])
                 for name, md5 in zip(MNIST_FILES, gz_md5, strict=True))


DATASETS: dict[str, tuple[RemoteFile, ...]] = {
    "mnist": _idx_files("mnist", _MNIST_URL, (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
    "fashion-mnist": _idx_files("fashion-mnist", _FASHION_URL, (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
    "voc2007": (
        RemoteFile("VOCtrainval_06-Nov-2007.tar", _VOC_URL + "voc2007/VOCtrainval_06-Nov-2007.tar",
                   "c52e279531787c972589f7e41ab4ae64"),
        RemoteFile("VOCtest_06-Nov-2007.tar", _VOC_URL + "voc2007/VOCtest_06-Nov-2007.tar",
                   "b6e924de25625d8de591ea690078ad9f"),
    ),
    "voc2012": (
        RemoteFile("VOCtrainval_11-May-2012.tar", _VOC_URL + "voc2012/VOCtrainval_11-May-2012.tar",
                   "6cd6e144f989b92b3379bac3b3de84fd"),
    ),
    "coco2017": (
        RemoteFile("annotations_trainval2017.zip", _COCO_URL + "annotations/annotations_trainval2017.zip",
                   "f4bbac642086de4f52a3fdda2de5fa2c"),
        RemoteFile("val2017.zip", _COCO_URL + "zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80"),
        RemoteFile("train2017.zip", _COCO_URL + "zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2"),
    ),
}


def dataset_files(name: str, only: tuple[str, ...] | None = None) -> tuple[RemoteFile, ...]:
    """The files of dataset ``name`` (all, or those whose names are in ``only``); ConfigError if unknown."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    files = DATASETS[name]
    if only is None:
        return files
    known = {f.name for f in files}
    unknown = sorted(set(only) - known)
    if unknown:
        raise ConfigError(f"dataset {name!r} has no file(s) {unknown}; its files are {sorted(known)}")
    return tuple(f for f in files if f.name in only)
