"""params.yaml validation: the project's own file loads, and every kind of bad value names its key."""

import copy
from pathlib import Path

import pytest
import yaml

from xpvision.config import TASKS, load_params, parse_params
from xpvision.errors import ConfigError

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(PARAMS_FILE.read_text())


def with_value(raw, dotted, value):
    data = copy.deepcopy(raw)
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()


def test_project_params_load_into_frozen_blocks():
    params = load_params(PARAMS_FILE)
    assert set(params.train) == set(TASKS)
    train = params.train["classification"]
    assert train.lr > 0 and isinstance(train.epochs, int)
    with pytest.raises(AttributeError):
        train.lr = 1.0  # frozen
    with pytest.raises(TypeError):
        train.model_args["extra"] = 1  # read-only mapping
    assert isinstance(params.augment["detection"].transforms, tuple)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("train.classification.lr", -1,
     "params.yaml: train.classification.lr: expected a positive number, got -1"),
    ("train.classification.epochs", "ten", "train.classification.epochs: expected an integer, got 'ten'"),
    ("train.classification.epochs", 2.5, "train.classification.epochs: expected an integer, got 2.5"),
    ("train.classification.epochs", True, "train.classification.epochs: expected an integer, got True"),
    ("train.detection.optimizer", "adamax", "train.detection.optimizer: expected one of sgd, momentum"),
    ("train.segmentation.val_fraction", 1.0, "train.segmentation.val_fraction: expected a number in (0, 1)"),
    ("download.classification.dataset", "cifar10",
     "download.classification.dataset: expected one of digits, mnist, fashion-mnist, got 'cifar10'"),
    ("download.segmentation.dataset", "voc2007",
     "download.segmentation.dataset: expected one of digit-scenes, voc2012, coco2017, got 'voc2007'"),
    ("download.detection.max_images", 0, "download.detection.max_images: expected a positive number or null"),
    ("download.detection.mirrors", "http://x", "download.detection.mirrors: expected a list, got 'http://x'"),
    ("download.detection.mirrors", [3], "download.detection.mirrors[0]: expected a string, got 3"),
    ("export.detection.atol", 1e-3, "export.detection.atol: expected a tolerance in (0, 1e-4], got 0.001"),
    ("tracking.on_unreachable", "retry", "tracking.on_unreachable: expected one of fail, local, got 'retry'"),
    ("tracking.log_models", "yes", "tracking.log_models: expected true or false, got 'yes'"),
    ("train.detection_ft.init_from", "imagenet", "train.detection_ft.init_from: expected null or one of"),
    ("train.detection.transfer_mode", "head",
     "train.detection.transfer_mode: expected full when init_from is null, got 'head'"),
    ("evaluate.detection.nms_iou", 1.5, "evaluate.detection.nms_iou: expected a number in [0, 1], got 1.5"),
    ("transfer.modes", ["head", "all"], "transfer.modes[1]: expected one of head, partial, full, got 'all'"),
    ("train.classification.model_args", [1], "train.classification.model_args: expected a mapping"),
    ("download.segmentation.digit_size", [20], "download.segmentation.digit_size: expected [min, max]"),
    ("download.segmentation.digit_size", [30, 20], "download.segmentation.digit_size: expected [min, max] "
                                                   "with 4 <= min <= max, got [30, 20]"),
    ("download.detection.digit_size", [2, 20], "download.detection.digit_size: expected [min, max]"),
    ("download.detection.digit_size", [14, 20.5], "download.detection.digit_size[1]: expected an integer"),
    ("train.segmentation.class_weights", [1, -1],
     "train.segmentation.class_weights: expected a list of numbers >= 0, not all 0 or null, got [1, -1]"),
    ("train.segmentation.class_weights", [0, 0], "train.segmentation.class_weights: expected a list"),
    ("train.segmentation.class_weights", "auto",
     "train.segmentation.class_weights: expected a list, got 'auto'"),
    ("download.segmentation.digit_size", [14, 1000],
     "download.segmentation.digit_size: expected a max <= image_size"),
    ("download.segmentation.max_occlusion", 1.0,
     "download.segmentation.max_occlusion: expected a number in [0, 1), got 1.0"),
    ("train.detection.processes", "two", "train.detection.processes: expected a positive integer or auto, "
                                         "got 'two'"),
    ("train.detection.processes", 0, "train.detection.processes: expected a positive integer or auto, got 0"),
    ("train.detection.processes", True, "train.detection.processes: expected a positive integer or auto, "
                                        "got True"),
])
def test_bad_value_names_key_expected_and_actual(raw, key, value, message):
    with pytest.raises(ConfigError) as info:
        parse_params(with_value(raw, key, value))
    assert message in str(info.value)


@pytest.mark.parametrize(("key", "message"), [
    ("train.classification.lrr", "params.yaml: train.classification.lrr: unknown key; expected one of"),
    ("evaluate.classification.nms_iou", "evaluate.classification.nms_iou: unknown key"),
    ("train.regression", "train.regression: unknown key; expected one of classification, detection"),
    ("trian", "params.yaml: trian: unknown key"),
])
def test_unknown_key_is_refused(raw, key, message):
    with pytest.raises(ConfigError, match="unknown key") as info:
        parse_params(with_value(raw, key, {"a": 1} if key.count(".") < 2 else 1))
    assert message in str(info.value)


def test_missing_key_is_refused(raw):
    with pytest.raises(ConfigError, match=r"train\.detection\.lr: missing key"):
        parse_params(with_value(raw, "train.detection.lr", DELETE))


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{bad.name}: not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"\(top level\): expected a mapping"):
        load_params(bad)


def test_digit_size_and_occlusion_reach_the_scene_generator(raw):
    from xpvision.stages.download import prepare_config

    changed = with_value(raw, "download.segmentation.digit_size", [21, 48])
    changed["download"]["segmentation"]["image_size"] = 96
    changed["download"]["segmentation"]["max_occlusion"] = 0.25
    params = parse_params(changed)
    scenes = prepare_config("segmentation", params.download["segmentation"]).scenes
    assert (scenes.image_size, scenes.min_digit_size, scenes.max_digit_size) == (96, 21, 48)
    assert scenes.max_occlusion == 0.25
    detection = prepare_config("detection", params.download["detection"]).scenes
    expected = (*raw["download"]["detection"]["digit_size"], raw["download"]["detection"]["max_occlusion"])
    assert (detection.min_digit_size, detection.max_digit_size, detection.max_occlusion) == expected


def test_numbers_written_without_a_dot_are_numbers(tmp_path):
    text = PARAMS_FILE.read_text().replace("    lr: 0.002\n", "    lr: 1e-3\n", 1)
    assert yaml.safe_load(text)["train"]["classification"]["lr"] == "1e-3"  # what PyYAML gives
    path = _written(tmp_path, text)
    assert load_params(path).train["classification"].lr == 0.001
    for bad in ("fast", "nan", "inf"):
        with pytest.raises(ConfigError, match=rf"{path.name}: train\.classification\.lr: expected a"):
            load_params(_written(tmp_path, text.replace("    lr: 1e-3\n", f"    lr: {bad}\n", 1)))


def _written(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_local_root_splits_and_box_settings_reach_prepare(raw):
    from xpvision.stages.download import prepare_config

    changed = with_value(raw, "download.detection.dataset", "coco2017")
    block = changed["download"]["detection"]
    block.update(root="/data/coco", splits=["val2017"], box_policy="clip", voc_pixel_origin=0)
    changed["download"]["classification"]["root"] = "/usr/share/datasets/fashion-mnist"
    params = parse_params(changed)
    config = prepare_config("detection", params.download["detection"])
    assert (config.root, config.splits) == ("/data/coco", {"train": "val2017", "test": "val2017"})
    assert (config.box_policy, config.voc_pixel_origin) == ("clip", 0)
    assert prepare_config("classification", params.download["classification"]).root.endswith("fashion-mnist")
    for key, value, message in (("splits", ["a", "b", "c"], "null, \\[split\\]"),
                                ("box_policy", "ignore", "one of refuse, clip"),
                                ("voc_pixel_origin", 2, "one of 0, 1")):
        with pytest.raises(ConfigError, match=rf"download\.detection\.{key}: expected {message}"):
            parse_params(with_value(changed, f"download.detection.{key}", value))


def test_voc_classes_name_the_classes_of_a_voc_layout_dataset(raw):
    from xpvision.stages.download import prepare_config

    changed = with_value(raw, "download.segmentation.dataset", "voc2012")
    block = changed["download"]["segmentation"]
    block.update(root="/data/fashion-voc", voc_classes=["tshirt", "bag", "ankleboot"], classes=["bag"])
    config = prepare_config("segmentation", parse_params(changed).download["segmentation"])
    assert (config.voc_classes, config.classes) == (("tshirt", "bag", "ankleboot"), ("bag",))
    assert prepare_config("detection", parse_params(raw).download["detection"]).voc_classes is None
    key = "download.segmentation"
    for dotted, value, message in (
            (f"{key}.voc_classes", ["bag", "bag"], "voc_classes: expected a list of 1 to 254 distinct names"),
            (f"{key}.voc_classes", [], "voc_classes: expected a list of 1 to 254"),
            (f"{key}.voc_classes", [f"c{i}" for i in range(255)], "voc_classes: expected a list of 1 to 254"),
            (f"{key}.voc_classes", ["bag", " coat"], "voc_classes: expected .* without surrounding spaces"),
            (f"{key}.voc_classes", ["bag", 3], r"voc_classes\[1\]: expected a string"),
            (f"{key}.classes", ["coat"], "classes: expected names from voc_classes; unknown: coat"),
            (f"{key}.voc_classes", None, "classes: expected names from the 20 VOC classes .*unknown: bag")):
        with pytest.raises(ConfigError, match=rf"params.yaml: {dotted.rsplit('.', 1)[0]}\.{message}"):
            parse_params(with_value(changed, dotted, value))
    with pytest.raises(ConfigError, match=r"download\.detection\.voc_classes: expected null for dataset "
                                          r"digit-scenes \(voc2007 and voc2012 only\), got \['a'\]"):
        parse_params(with_value(raw, "download.detection.voc_classes", ["a"]))
    with_official = with_value(with_value(changed, f"{key}.voc_classes", None), f"{key}.classes", ["cat"])
    assert parse_params(with_official).download["segmentation"].classes == ("cat",)
