"""The CIFAR ResNet (depth 6n+2, widths 16/32/64) of the smoothing references and of the long-tailed
CIFAR references.

Parameter names follow the smoothing code (conv1, bn1, layer1.0.conv1, ..., downsample.0/1, fc), so
the public ``cifar_resnet110`` checkpoints load into it unchanged. With ``shortcut="A"`` and
``init="fan_in"`` it is the ``resnet32`` of kaidic/LDAM-DRW's ``models/resnet_cifar.py`` (also in
VS-Loss, Prior-LT and ABSGD): parameter-free shortcuts (He et al. 2016's option A), 0.46 M
parameters at depth 32; the head is named ``fc`` here, ``linear`` there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """Option A: every other pixel, the new channels zero (``planes // 4`` on each side), no
    parameters; LDAM-DRW's ``LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0,
    planes//4, planes//4)))``, which assumes stride 2 and doubled channels, as in a CIFAR ResNet."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3×3 convs with batch norm; where the shape changes, a 1×1 conv shortcut (option B) or
    the parameter-free :class:`PadShortcut` (option A)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = PadShortcut(planes) if shortcut == "A" else nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet for 32×32 inputs: 3 stages of n BasicBlocks each, global average pool, linear head.

    ``shortcut``: "B" (1×1 conv + BN, the smoothing references' bearpaw code) or "A" (zero-padding,
    the LDAM-DRW code). ``init``: "fan_out" (bearpaw: convs N(0, 2/fan_out), BN 1/0, the linear
    layer torch's default) or "fan_in" (LDAM-DRW's ``_weights_init``: ``kaiming_normal_`` on every
    conv and linear weight, the rest torch's defaults).
    """

    def __init__(self, depth: int = 110, num_classes: int = 10, in_channels: int = 3,
                 shortcut: str = "B", init: str = "fan_out"):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        if shortcut not in ("A", "B") or init not in ("fan_out", "fan_in"):
            raise ValueError(f"shortcut must be A or B and init fan_out or fan_in, got "
                             f"{shortcut!r} and {init!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1, shortcut)
        self.layer2 = self._stage(16, 32, n, 2, shortcut)
        self.layer3 = self._stage(32, 64, n, 2, shortcut)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if init == "fan_in":  # LDAM-DRW: kaiming_normal_(weight), mode fan_in, gain √2
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(inplanes: int, planes: int, blocks: int, stride: int, shortcut: str) -> nn.Sequential:
        layers = [BasicBlock(inplanes, planes, stride, shortcut)]
        layers += [BasicBlock(planes, planes, 1, shortcut) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)
