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
    with pytest.raises(UserError, match="small_cnn' has no option depth"):
        build_model("small_cnn", **MNIST, depth=3)


# ---- cifar_resnet32: kaidic/LDAM-DRW models/resnet_cifar.py, transcribed (ResNet_s, resnet32) ----

class _RefBlock(torch.nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        nn, F = torch.nn, torch.nn.functional
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = lambda x: x
        if stride != 1 or in_planes != planes:  # option A
            self.shortcut = lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4),
                                            "constant", 0)

    def forward(self, x):
        F = torch.nn.functional
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _RefResNet32(torch.nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        nn = torch.nn
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, 5, 1)
        self.layer2 = self._make_layer(32, 5, 2)
        self.layer3 = self._make_layer(64, 5, 2)
        self.linear = nn.Linear(64, num_classes)

        def _weights_init(m):
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight)
        self.apply(_weights_init)

    def _make_layer(self, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(_RefBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return torch.nn.Sequential(*layers)

    def forward(self, x):
        F = torch.nn.functional
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
        return self.linear(out)


@pytest.mark.parametrize("classes, count", [(10, 464_154), (100, 470_004)])
def test_cifar_resnet32_has_the_ldam_resnet32_size(classes, count):
    ours = build_model("cifar_resnet32", **(CIFAR | {"num_classes": classes}))
    assert n_params(ours) == n_params(_RefResNet32(classes)) == count  # the published 0.46 M
    # the cosine head (LDAM's NormedLinear) has no bias
    cosine = build_model("cifar_resnet32", **(CIFAR | {"num_classes": classes}), cosine_head=True)
    assert type(cosine[1].fc).__name__ == "NormedLinear"
    assert n_params(cosine) == count - classes
    assert cosine.eval()(torch.rand(2, 3, 32, 32)).abs().max() <= 1 + 1e-6  # cosines


def test_cifar_resnet32_equals_the_reference_weight_for_weight():
    torch.manual_seed(3)
    reference = _RefResNet32()
    torch.manual_seed(3)
    ours = build_model("cifar_resnet32", **CIFAR)[1]
    theirs = {k.replace("linear.", "fc."): v for k, v in reference.state_dict().items()}
    assert list(ours.state_dict()) == list(theirs)  # same layers, same order, no shortcut weights
    for key, value in ours.state_dict().items():  # same init (kaiming fan-in), same draws
        assert torch.equal(value, theirs[key]), key
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(ours.train()(x), reference.train()(x), atol=1e-6)


def test_cifar_resnet32_option_a_shortcuts():
    net = build_model("cifar_resnet32", **CIFAR)[1]
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 31 and all(m.kernel_size == (3, 3) for m in convs)  # no 1×1 shortcut convs
    assert not any("downsample" in k for k in net.state_dict())
    shortcuts = [(name, block.downsample) for name, block in net.named_modules()
                 if getattr(block, "downsample", None) is not None]
    assert [name for name, _ in shortcuts] == ["layer2.0", "layer3.0"]
    x = torch.randn(2, 16, 32, 32)
    y = shortcuts[0][1](x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])  # the input, subsampled, in the middle
    assert not y[:, :8].any() and not y[:, 24:].any()  # zero channels on both sides
    z = shortcuts[1][1](torch.randn(2, 32, 16, 16))
    assert z.shape == (2, 64, 8, 8) and not z[:, :16].any() and not z[:, 48:].any()
    assert net.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_an_unknown_architecture_option_names_the_known_ones():
    from certify.errors import UserError
    from certify.nets import build_model

    with pytest.raises(UserError, match=r"^architecture 'lenet' has no option width \(--arch-opt\); "
                                        r"its options: none$"):
        build_model("lenet", num_classes=10, input_shape=(1, 28, 28), mean=(0.5,), std=(0.5,), width=8)
    with pytest.raises(UserError, match="has no option depth .*its options: width, hidden"):
        build_model("small_cnn", num_classes=10, input_shape=(1, 28, 28), mean=(0.5,), std=(0.5,), depth=3)
