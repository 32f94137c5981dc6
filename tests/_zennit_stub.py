"""A stand-in ``torchvision.models.resnet`` so that ``import zennit`` works beside the CPU torch.

Zennit imports torchvision at import time only to ``isinstance``-check ResNet blocks in its
ResNet canonizer; torchvision itself cannot be imported here (its compiled ops need CUDA
libraries).  :func:`install` registers a tiny module tree whose ``BasicBlock`` is the zoo's
block (same structure and forward as torchvision's) and whose ``Bottleneck`` is defined below,
then imports zennit.  Tests call it through ``pytest.importorskip``-style guards.
"""
from __future__ import annotations

import sys
import types

import torch
from torch import nn

from xaikernels.models.zoo import BasicBlock


class Bottleneck(nn.Module):
    """torchvision-style bottleneck: 1×1 → 3×3 → 1×1 (×4 channels), identity or projection shortcut."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


def install():
    """Register the stand-in (unless a torchvision.models.resnet is already registered); return ``zennit``."""
    if "torchvision.models.resnet" not in sys.modules:
        tv = types.ModuleType("torchvision")
        models = types.ModuleType("torchvision.models")
        resnet = types.ModuleType("torchvision.models.resnet")
        resnet.BasicBlock, resnet.Bottleneck = BasicBlock, Bottleneck
        tv.models, models.resnet = models, resnet
        tv.__path__ = []  # a package, so submodule imports resolve through sys.modules
        models.__path__ = []
        sys.modules.update({"torchvision": tv, "torchvision.models": models,
                            "torchvision.models.resnet": resnet})
    import zennit  # noqa: F401
    import zennit.torchvision  # noqa: F401

    return zennit
