"""The model registry: names, argument checks, and the features/head layout every classifier shares."""

import pytest

from xpvision.errors import ConfigError
from xpvision.models import MODELS, build_model
from xpvision.models.registry import is_classifier


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_has_features_and_head(name):
    model = build_model(name, in_channels=3, num_classes=7, input_size=32)
    assert is_classifier(model)
    fc = list(model["head"].layers.values())[-1]
    fc = fc if "W" in fc.params else list(model["head"].layers.values())[-2]
    assert fc.params["W"].shape[1] == 7


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'vgg'.*deep_convnet.*resnet_small.*simple_convnet"):
        build_model("vgg")


def test_unknown_argument_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model 'deep_convnet'.*unexpected keyword.*batchnorm.*accepted"):
        build_model("deep_convnet", batchnorm=True)
