"""The public API: every name of every ``__all__`` imports, the flat imports users write work, and
``import xpvision`` stays light."""

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import xpvision

PACKAGE_DIR = Path(xpvision.__file__).parent


def modules_with_all() -> list[str]:
    """Every xpvision module whose source defines ``__all__`` (found without importing the others)."""
    names = []
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="xpvision."):
        relative = info.name.removeprefix("xpvision.").replace(".", "/")
        path = PACKAGE_DIR / (f"{relative}/__init__.py" if info.ispkg else f"{relative}.py")
        if "__all__" in path.read_text(encoding="utf-8"):
            names.append(info.name)
    return ["xpvision", *names]


@pytest.mark.parametrize("module_name", modules_with_all())
def test_every_name_of_all_imports(module_name):
    module = importlib.import_module(module_name)
    assert module.__all__, module_name
    assert len(set(module.__all__)) == len(module.__all__), f"{module_name}.__all__ repeats a name"
    for name in module.__all__:
        assert getattr(module, name, None) is not None, f"{module_name}.{name}"


def test_flat_imports_of_the_issue():
    from xpvision.detection import (  # noqa: F401
        batched_nms,
        box_area,
        box_convert,
        box_iou,
        build_detector,
        clip_boxes_to_image,
        eval_detection_coco,
        eval_detection_voc,
        nms,
        soft_nms,
    )
    from xpvision.segmentation import build_fcn, eval_semantic_segmentation  # noqa: F401


def test_the_packages_with_a_flat_api_define_all():
    for name in ("xpvision", "xpvision.detection", "xpvision.segmentation", "xpvision.models", "xpvision.nn",
                 "xpvision.tasks"):
        assert name in modules_with_all()


def test_import_xpvision_needs_numpy_alone():
    heavy = ["PIL", "albumentations", "cupy", "dvc", "matplotlib", "mlflow", "onnx", "pandas", "pooch",
             "scipy", "sklearn", "torch", "tqdm", "yaml"]
    code = f"import sys, xpvision; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
