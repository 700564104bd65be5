"""torchvision's ResNet-18 adapted to small images (28x28 Fashion-MNIST, 32x32 CIFAR), as
CIFAR-style ResNets are: a 3x3 stride-1 stem and no max-pool, so the last stage sees 4x4."""

from __future__ import annotations

import torchvision
from torch import nn


def resnet18_small(in_channels: int = 1, num_classes: int = 10, stem_stride: int = 1) -> nn.Module:
    """``stem_stride`` > 1 shrinks every feature map (and the MACs by its square): the tests'
    quick version."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stem_stride, 1, bias=False)
    model.maxpool = nn.Identity()
    return model
