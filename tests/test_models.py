"""The named models for any input shape, the ResNet family, user factories by "package.module:function", and the
refusal of a model that does not fit the data."""

import numpy as np
import pytest

import xpnet
from xpnet.models import MODELS, ModelError, ResNet, build_model, check_fits_data


def parameter_count(model) -> int:
    return sum(p.size for p in model.parameters())


def test_resnet_default_is_resnet8_width16():
    model = build_model("resnet")
    assert parameter_count(model) == 77_754
    names = [name for name, _ in model.named_parameters()]
    assert names[:2] == ["conv1.weight", "bn1.weight"]
    assert "layer2.0.downsample.0.weight" in names and "layer1.0.downsample.0.weight" not in names
    assert names[-2:] == ["fc.weight", "fc.bias"]
    buffers = [name for name, _ in model.named_buffers()]
    assert "bn1.running_mean" in buffers and "layer3.0.bn2.num_batches_tracked" in buffers


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 17, 23)])
@pytest.mark.parametrize("name", list(MODELS))
def test_every_named_model_builds_for_the_data_shape(name, shape):
    model = build_model(name, shape, num_classes=7)
    check_fits_data(model, name, shape, 7)
    out = model(xpnet.tensor(np.random.default_rng(0).random((3, *shape)).astype(np.float32)))
    assert out.shape == (3, 7)


def test_resnet_depth_and_widths_are_parameters():
    model = ResNet((3, 32, 32), 10, widths=(8, 16, 32, 64), blocks=(2, 1, 1, 1))
    assert [name for name, _ in model.named_modules() if name.count(".") == 1 and name.startswith("layer")] == [
        "layer1.0", "layer1.1", "layer2.0", "layer3.0", "layer4.0"]
    assert model(xpnet.tensor(np.zeros((2, 3, 32, 32), dtype=np.float32))).shape == (2, 10)
    with pytest.raises(ModelError, match="widths"):
        ResNet(widths=(16, 32), blocks=(1,))
    for widths in ("a,b", "16", (16, True), (16, 0), (16, 2.5), ()):
        with pytest.raises(ModelError, match=r"lists of positive integers .*got widths"):
            ResNet(widths=widths, blocks=(1,) * max(1, len(widths)) if isinstance(widths, tuple) else (1,))
    assert ResNet(widths=[np.int64(8)], blocks=[1]).fc.in_features == 8  # NumPy integers are integers


def test_a_model_that_does_not_fit_the_data_is_refused_naming_both_shapes():
    model = build_model("report1")  # built for 1x28x28
    with pytest.raises(ModelError, match=r"'report1' does not fit the data: its images are 3x32x32.*input has 3 channels"):
        check_fits_data(model, "report1", (3, 32, 32), 10)
    with pytest.raises(ModelError, match="has 12 classes"):
        check_fits_data(model, "report1", (1, 28, 28), 12)
    assert model.training  # the check leaves the mode as it found it


def test_user_factory_by_package_module_function(user_module):
    model = build_model(f"{user_module}:build", (3, 12, 12), 5)
    assert type(model).__name__ == "TinyResNet" and model(xpnet.tensor(np.zeros((2, 3, 12, 12), dtype=np.float32))).shape == (2, 5)
    assert build_model(f"{user_module}:no_arguments")(xpnet.tensor(np.zeros((1, 1, 28, 28), dtype=np.float32))).shape == (1, 10)


@pytest.mark.parametrize("name, message", [
    ("vgg", "unknown model 'vgg'"),
    ("no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
    ("my_models:missing", "has no callable 'missing'"),
    ("my_models:not_a_model", "returned a str"),
])
def test_bad_model_names_are_explained(user_module, name, message):
    with pytest.raises(ModelError, match=message):
        build_model(name)
