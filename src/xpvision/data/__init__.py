"""Datasets: downloads, safe archive extraction, MNIST / VOC / COCO parsers, the offline default data (digits,
digit-scenes), sharded storage, augmentation and the batch loader.

Sub-modules import their heavy dependencies (pooch, defusedxml, albumentations, scikit-learn) inside, so
``import xpvision.data`` needs NumPy alone. Import what you use from the sub-modules:

* :mod:`xpvision.data.registry`  - the files of every dataset: official URLs and published checksums
* :mod:`xpvision.data.download`  - fetch with pooch through a list of mirrors, verify, lock file
* :mod:`xpvision.data.archives`  - safe zip / tar extraction
* :mod:`xpvision.data.folders`   - whole folders written atomically
* :mod:`xpvision.data.workers`   - work cut by index into tasks for worker processes, results in order
* :mod:`xpvision.data.images`    - image decoding with clear errors, resizing samples with boxes / masks
* :mod:`xpvision.data.mnist`     - IDX read / write, MNIST-layout folders
* :mod:`xpvision.data.voc`       - VOC XML, palette PNG masks, VOC folders
* :mod:`xpvision.data.coco`      - COCO instances JSON, RLE and polygon masks
* :mod:`xpvision.data.digits`    - the 1,797 scikit-learn digits as MNIST IDX files
* :mod:`xpvision.data.scenes`    - digit-scenes in VOC and COCO layouts
* :mod:`xpvision.data.shards`    - .npz shards + JSON manifest, :class:`ShardDataset`
* :mod:`xpvision.data.prepare`   - one call per source: raw files -> processed train / test shards
* :mod:`xpvision.data.augment`   - albumentations pipelines from params, the augmented training set
* :mod:`xpvision.data.preview`   - preview grids of samples with boxes and masks
* :mod:`xpvision.data.loader`    - :class:`DataLoader`, :class:`Normalization`
"""
