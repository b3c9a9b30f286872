"""Pascal VOC: annotation XML (read with defusedxml), palette PNG masks, and whole VOC folders.

Box convention (``pixel_origin: 1``, the default). The devkit stores 1-based *inclusive integer pixel*
coordinates: ``xmin = 1`` is the first column and the box covers columns ``xmin..xmax`` (width ``xmax - xmin +
1``). xpvision uses 0-based *continuous* ``xyxy`` float32 (pixel ``i`` spans ``[i, i + 1)``), so ``x1 = xmin -
1, y1 = ymin - 1, x2 = xmax, y2 = ymax``: the same extent, and ``x2 - x1`` equals the devkit's ``+1`` width.
:func:`write_voc_xml` applies the inverse. Tools that write VOC XML themselves (CVAT, LabelImg, labelme's
``labelme2voc``) write 0-based corner coordinates, often floats: read them with ``pixel_origin: 0`` (``x1 =
xmin``, ``x2 = xmax``).
Nothing in a file tells the two apart reliably, so it is a setting, not a guess.

Masks (``SegmentationClass/*.png``) are palette PNGs whose *indices* are the labels: 0 background, ``k + 1``
for class ``k`` of the official order, 255 = ignore (object borders and difficult regions in real VOC).
"""

from __future__ import annotations

import functools
import itertools
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from xpvision.atomic import write_bytes
from xpvision.data.images import check_boxes, inside, read_image, read_index_png, resize_sample
from xpvision.data.workers import ordered_map
from xpvision.errors import DataError

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
IGNORE = 255
READ_CHUNK = 32
"""Images per task of :func:`iter_voc`'s worker processes: with the tasks kept ahead of the consumer
(:data:`xpvision.data.workers.AHEAD`) it bounds the decoded images held at once, which matters for
full-size photographs."""


def voc_palette() -> np.ndarray:
    """The VOC colour map: ``(256, 3)`` uint8, index ``i`` -> RGB (bit-interleaved, as in the devkit)."""
    index = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.uint8)
    for shift in range(8):
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            palette[:, channel] |= (bit << (7 - shift)).astype(np.uint8)
    return palette


def parse_voc_xml(path: str | os.PathLike, classes: tuple[str, ...] = VOC_CLASSES,
                  skip_unknown: bool = False, *, pixel_origin: int = 1, box_policy: str = "refuse") -> dict:
    """Parse one VOC annotation file (devkit, LabelImg, CVAT or labelme's ``labelme2voc`` output).

    Args:
        classes: class names; an object's label is its index here.
        skip_unknown: drop objects whose class is not in ``classes`` (class subsets) instead of raising.
        pixel_origin: ``1`` (the devkit's 1-based inclusive pixels: ``x1 = xmin - 1``, ``x2 = xmax``) or
            ``0`` (0-based corner coordinates, as CVAT, LabelImg and labelme write them: ``x1 = xmin``,
            ``x2 = xmax``). Coordinates may be floats (CVAT) either way.
        box_policy: ``"refuse"`` or ``"clip"`` boxes outside the image (``<size>``), with width or height
            <= 0, or non-finite (see :func:`xpvision.data.images.check_boxes`).

    Returns:
        ``{"filename": str, "width": int, "height": int, "boxes": (R, 4) float32 xyxy 0-based continuous,
        "labels": (R,) int64, "difficult": (R,) bool, "truncated": (R,) bool}``.

    Raises:
        DataError: malformed XML, external entities / DTDs (refused by defusedxml), missing fields, bad
        numbers, bad boxes (``refuse``); the message names the file and the object (index and class).
    """
    import defusedxml
    import defusedxml.ElementTree as DET

    path = Path(path)
    if pixel_origin not in (0, 1):
        raise DataError(f"VOC pixel origin {pixel_origin!r} unknown; expected 0 or 1")
    try:
        root = DET.parse(path, forbid_dtd=True).getroot()
    except FileNotFoundError as e:
        raise DataError(f"VOC annotation {path} does not exist") from e
    except defusedxml.DefusedXmlException as e:
        raise DataError(f"VOC annotation {path}: refused unsafe XML ({type(e).__name__}: {e})") from e
    except ET.ParseError as e:
        raise DataError(f"VOC annotation {path} is not well-formed XML: {e}") from e
    size = root.find("size")
    if size is None:
        raise DataError(f"VOC annotation {path}: missing <size>")
    width, height = int(_number(size, "width", path)), int(_number(size, "height", path))
    index = {name: i for i, name in enumerate(classes)}
    boxes, labels, difficult, truncated, ids = [], [], [], [], []
    for k, obj in enumerate(root.iter("object")):
        name = _text(obj, "name", path).strip()
        if name not in index:
            if skip_unknown:
                continue
            raise DataError(f"VOC annotation {path}: object #{k} class {name!r} is not one of "
                            f"{list(classes)}")
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"VOC annotation {path}: object #{k} {name!r} has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(box, key, path) for key in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((xmin - pixel_origin, ymin - pixel_origin, xmax, ymax))
        labels.append(index[name])
        difficult.append(_flag(obj, "difficult", path))
        truncated.append(_flag(obj, "truncated", path))
        ids.append(f"#{k} {name!r}")
    checked, keep = check_boxes(np.array(boxes, dtype=np.float32).reshape(-1, 4), width, height, box_policy,
                                f"VOC annotation {path}", ids)
    return {"filename": _text(root, "filename", path).strip(), "width": width, "height": height,
            "boxes": checked,  # (R, 4)
            "labels": np.array(labels, dtype=np.int64)[keep],
            "difficult": np.array(difficult, dtype=bool)[keep],
            "truncated": np.array(truncated, dtype=bool)[keep]}


def _text(node, key: str, path: Path) -> str:
    child = node.find(key)
    if child is None or child.text is None:
        raise DataError(f"VOC annotation {path}: missing <{key}>")
    return child.text


def _number(node, key: str, path: Path) -> float:
    text = _text(node, key, path)
    try:
        return float(text)
    except ValueError as e:
        raise DataError(f"VOC annotation {path}: <{key}> is {text!r}; expected a number") from e


def _flag(node, key: str, path: Path) -> bool:
    child = node.find(key)
    if child is None or child.text is None or not child.text.strip():
        return False
    word = child.text.strip().lower()
    if word in ("true", "yes", "false", "no"):  # some tools write booleans as words
        return word in ("true", "yes")
    return bool(_number(node, key, path))


def write_voc_xml(path: str | os.PathLike, filename: str, image_shape: tuple[int, int, int],
                  boxes: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
                  folder: str = "VOC") -> None:
    """Write the :func:`voc_xml` annotation atomically."""
    write_bytes(path, voc_xml(filename, image_shape, boxes, labels, classes, folder))


def voc_xml(filename: str, image_shape: tuple[int, int, int], boxes: np.ndarray, labels: np.ndarray,
            classes: tuple[str, ...], folder: str = "VOC") -> bytes:
    """A VOC annotation (UTF-8 XML) of the ``image_shape`` ``(H, W, C)`` image ``filename``: ``boxes`` ``(R,
    4)`` 0-based continuous xyxy with integer corners (written 1-based, as the devkit's), ``labels`` ``(R,)``
    indices into ``classes``."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    height, width, depth = image_shape
    for key, value in (("width", width), ("height", height), ("depth", depth)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for (x1, y1, x2, y2), label in zip(np.rint(boxes).astype(int), labels, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[int(label)]
        for key in ("pose", "truncated", "difficult"):
            ET.SubElement(obj, key).text = "Unspecified" if key == "pose" else "0"
        box = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (x1 + 1, y1 + 1, x2, y2), strict=True):
            ET.SubElement(box, key).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def read_voc_mask(path: str | os.PathLike) -> np.ndarray:
    """A ``SegmentationClass`` PNG as ``(H, W)`` uint8 class indices (0 background, 255 ignore)."""
    return read_index_png(path)


def read_image_list(path: str | os.PathLike) -> list[str]:
    """The image ids of an ``ImageSets/*/<split>.txt`` file (first column; Main/<class>_<split> files too)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"VOC image list {path} does not exist")
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_voc(root: str | os.PathLike, split: str, task: str = "detection", **kwargs) -> list[dict]:
    """:func:`iter_voc` as a list."""
    return list(iter_voc(root, split, task, **kwargs))


def iter_voc(root: str | os.PathLike, split: str, task: str = "detection", *,
             all_classes: tuple[str, ...] = VOC_CLASSES, classes: tuple[str, ...] | None = None,
             max_images: int | None = None, image_size: tuple[int, int] | None = None,
             pixel_origin: int = 1, box_policy: str = "refuse", keep_id: Callable[[str], bool] | None = None,
             workers: int | None = None) -> Iterator[dict]:
    """Read the ``split`` of a VOC folder (the one holding ``JPEGImages``, ``Annotations``, ``ImageSets``).

    Args:
        task: ``"detection"`` reads ``ImageSets/Main/<split>.txt``; ``"segmentation"`` reads
            ``ImageSets/Segmentation/<split>.txt`` and adds each image's ``mask``.
        all_classes: the dataset's full class order (mask index ``k + 1`` is ``all_classes[k]``).
        classes: a subset to keep (labels re-indexed in this order; masks remapped, dropped classes become
            background); images left without objects are dropped. ``None``: all classes.
        max_images: keep the first N images of the list (after the class filter).
        image_size: ``(height, width)`` to resize to (boxes scaled, masks nearest); ``None`` keeps sizes.
        pixel_origin, box_policy: see :func:`parse_voc_xml`.
        keep_id: reads only the images whose id it accepts (``None``: all).
        workers: processes decoding chunks of :data:`READ_CHUNK` images ahead of the consumer
            (:func:`xpvision.data.workers.ordered_map`; ``None``: every core by default). The samples, and
            the first bad file's error, are those one process gives.

    Yields:
        Samples ``{"id", "image" (H, W, 3) uint8, "boxes" (R, 4) float32, "labels" (R,) int64,
        "difficult" (R,) bool, "truncated" (R,) bool[, "mask" (H, W) uint8]}``.
    """
    root = Path(root)
    if task not in ("detection", "segmentation"):
        raise DataError(f"VOC task {task!r} unknown; expected 'detection' or 'segmentation'")
    keep = tuple(all_classes) if classes is None else tuple(classes)
    unknown = sorted(set(keep) - set(all_classes))
    if unknown:
        raise DataError(f"VOC {root}: classes {unknown} are not in the dataset's classes {list(all_classes)}")
    list_dir = "Main" if task == "detection" else "Segmentation"
    ids = [i for i in read_image_list(root / "ImageSets" / list_dir / f"{split}.txt")
           if keep_id is None or keep_id(i)]
    subset = keep != tuple(all_classes)
    if max_images is not None and not subset:
        ids = ids[:max_images]  # every id read gives a sample (or an error): read no more
    read = functools.partial(_read_images, root, task=task, keep=keep, subset=subset,
                             mask_lut=_mask_lut(all_classes, keep), image_size=image_size,
                             pixel_origin=pixel_origin, box_policy=box_policy)
    chunks = [ids[i:i + READ_CHUNK] for i in range(0, len(ids), READ_CHUNK)]
    results = ordered_map(read, chunks, workers, f"VOC {root}")
    # the chunks read ahead are stopped at the end, at max_images and on a bad file; not in a `finally`: a
    # consumer that drops this generator unfinished has it closed by the garbage collector, where waiting for
    # the workers could hang (see OrderedResults)
    try:
        yield from itertools.islice(_in_order(results), max_images)
    except Exception:
        results.close()
        raise
    results.close()


def _in_order(chunk_results: Iterator[list[dict | DataError | None]]) -> Iterator[dict]:
    """The samples of :func:`_read_images`' results, in order; an error is raised when it is reached."""
    for results in chunk_results:
        for result in results:
            if isinstance(result, DataError):
                raise result
            if result is not None:
                yield result


def _read_images(root: Path, ids: list[str], *, task: str, keep: tuple[str, ...], subset: bool,
                 mask_lut: np.ndarray, image_size: tuple[int, int] | None, pixel_origin: int, box_policy: str
                 ) -> list[dict | DataError | None]:
    """:func:`_read_image` of each of ``ids``; a bad file's error is returned in its place, for the consumer
    to raise only if it reads that far (``max_images`` may stop it before)."""
    results: list[dict | DataError | None] = []
    for image_id in ids:
        try:
            results.append(_read_image(root, image_id, task, keep, subset, mask_lut, image_size,
                                       pixel_origin, box_policy))
        except DataError as e:
            results.append(e)
    return results


def _read_image(root: Path, image_id: str, task: str, keep: tuple[str, ...], subset: bool,
                mask_lut: np.ndarray, image_size: tuple[int, int] | None, pixel_origin: int, box_policy: str
                ) -> dict | None:
    """One sample of :func:`iter_voc`, or ``None`` when a class subset leaves the image without objects."""
    xml = root / "Annotations" / f"{image_id}.xml"
    ann = parse_voc_xml(xml, keep, skip_unknown=subset, pixel_origin=pixel_origin, box_policy=box_policy)
    if subset and len(ann["labels"]) == 0:
        return None
    image = read_image(inside(root / "JPEGImages", ann["filename"], f"VOC annotation {xml}: <filename>"))
    if image.shape[:2] != (ann["height"], ann["width"]):
        raise DataError(f"VOC {root}: image {ann['filename']} is {image.shape[1]}x{image.shape[0]} but "
                        f"Annotations/{image_id}.xml says {ann['width']}x{ann['height']}")
    sample = {"id": image_id, "image": image, "boxes": ann["boxes"], "labels": ann["labels"],
              "difficult": ann["difficult"], "truncated": ann["truncated"]}
    if task == "segmentation":
        mask = read_voc_mask(root / "SegmentationClass" / f"{image_id}.png")
        if mask.shape != image.shape[:2]:
            raise DataError(f"VOC {root}: mask {image_id}.png is {mask.shape} but the image is "
                            f"{image.shape[:2]}")
        sample["mask"] = mask_lut[mask]
    return resize_sample(sample, image_size) if image_size else sample


def _mask_lut(all_classes: tuple[str, ...], keep: tuple[str, ...]) -> np.ndarray:
    """``(256,)`` uint8 lookup from file mask indices to kept-class indices (unknown indices -> ignore)."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[0] = 0
    new_index = {name: i for i, name in enumerate(keep)}
    for k, name in enumerate(all_classes):
        lut[k + 1] = new_index[name] + 1 if name in new_index else 0
    return lut
