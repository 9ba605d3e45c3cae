"""Architectures: the references' shapes and parameter names, normalization first."""

import pytest
import torch

from certify.errors import UserError
from certify.nets import NormalizeLayer, available_architectures, build_model

CIFAR = dict(num_classes=10, input_shape=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465),
             std=(0.2023, 0.1994, 0.2010))
MNIST = dict(num_classes=10, input_shape=(1, 28, 28), mean=(0.0,), std=(1.0,))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_lenet_matches_the_smoothmix_layout():
    model = build_model("lenet", **MNIST)
    # conv 1→20 5×5, conv 20→50 5×5, fc 800→500→10
    assert n_params(model) == (20 * 25 + 20) + (50 * 20 * 25 + 50) + (800 * 500 + 500) + (500 * 10 + 10)
    assert {k.split(".")[1] for k in model.state_dict()} == {"conv1", "conv2", "fc1", "fc2"}
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("arch, depth", [("cifar_resnet20", 20), ("cifar_resnet110", 110)])
def test_cifar_resnet_depth_and_names(arch, depth):
    model = build_model(arch, **CIFAR)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 6n block convs and the stem conv, plus the fc layer
    keys = model.state_dict().keys()
    assert "1.layer1.0.conv1.weight" in keys and "1.layer2.0.downsample.0.weight" in keys
    assert "1.fc.weight" in keys and "0.mean" not in keys  # normalization buffers are not saved
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_resnet110_size_matches_the_published_1_7m():
    assert n_params(build_model("cifar_resnet110", **CIFAR)) == pytest.approx(1.73e6, rel=0.01)


def test_normalization_is_the_first_layer():
    model = build_model("small_cnn", num_classes=10, input_shape=(3, 32, 32), mean=(0.5, 0.25, 0.0),
                        std=(0.5, 0.25, 2.0))
    assert isinstance(model[0], NormalizeLayer)
    x = torch.rand(4, 3, 32, 32)
    expected = (x - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    assert torch.allclose(model[0](x), expected)


def test_registry_errors_are_user_errors():
    assert {"lenet", "small_cnn", "cifar_resnet20", "cifar_resnet110"} <= set(available_architectures())
    with pytest.raises(UserError, match="unknown architecture 'resnet9'.*lenet"):
        build_model("resnet9", **MNIST)
    with pytest.raises(UserError, match="lenet.*28×28.*3×32×32"):
        build_model("lenet", **CIFAR)
    with pytest.raises(UserError, match="bad options"):
        build_model("small_cnn", **MNIST, depth=3)
