"""Reference networks that torchvision does not ship.

* :func:`resnet20`: the CIFAR ResNet-20 of He, Zhang, Ren and Sun, "Deep Residual Learning for
  Image Recognition" (CVPR 2016, sec. 4.2): a 3x3 convolution with 16 channels, three stages of
  three basic blocks (16, 32, 64 channels; the first block of a stage halves the resolution),
  global average pooling and a linear classifier; batch norm after every convolution and
  residual adds.  Shortcuts that change shape are 1x1 convolutions with batch norm (option B).
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, a residual add, and ReLU after each."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """The CIFAR ResNet-20 (see the module docstring)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, blocks: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stages, cin = [], 16
        for i, width in enumerate((16, 32, 64)):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(cin, width, 2 if i > 0 and b == 0 else 1))
                cin = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> ResNet20:
    """The CIFAR ResNet-20 (He et al. 2016): 0.27M parameters, 3x32x32 inputs."""
    return ResNet20(num_classes, in_channels)
