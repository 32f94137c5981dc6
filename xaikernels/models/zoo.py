"""Benchmark models: a VGG-16-like net for 64×64 images and a ResNet-18 replica.

Both are written here (no torchvision, which cannot be imported beside the CPU torch build),
initialised deterministically from a seed without touching the global RNG, and returned in
eval mode.  They are the models of ``bench/`` and of the anchor figures the project competes
against (random weights: benchmark timings do not depend on the values).

Each factory has a natural Grad-CAM layer, the last spatial feature map before pooling into
the classifier: :data:`VGG16_CAM_LAYER` and :data:`RESNET18_CAM_LAYER`, also listed in
:data:`MODELS` with each model's default input shape and batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn

#: Grad-CAM layer of :func:`vgg16_like`: the ReLU after the 13th convolution (block 5,
#: ``width*8`` channels at 1/16 of the input size; 512×4×4 for a 64×64 input).
VGG16_CAM_LAYER = "features.29"
#: Grad-CAM layer of :func:`resnet18_like`: the output of the last residual stage
#: (``width*8`` channels at 1/32 of the input size; 512×7×7 for a 224×224 input).
RESNET18_CAM_LAYER = "layer4"

# VGG-16's configuration "D": channel multiples of ``width``, "M" for 2×2 max pooling.
_VGG16_CFG: Tuple = (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M")


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    # fork_rng restores the caller's global RNG state afterwards, so building a model never
    # changes what the caller's own random calls produce.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.eval()


class VGG16Like(nn.Module):
    """VGG-16 (configuration D) sized for small images.

    13 conv3×3 + ReLU layers in 5 blocks, each block ending in 2×2 max pooling, then three
    linear layers (ReLU and dropout between them) on the flattened ``width*8 × s × s`` map,
    where ``s = image_size / 32``.
    """

    def __init__(
        self, num_classes: int = 10, *, image_size: int = 64, width: int = 64, hidden: int = 512
    ):
        super().__init__()
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (5 poolings), got {image_size}")
        layers: List[nn.Module] = []
        c_in = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                c_out = v * width
                layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.ReLU()]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        side = image_size // 32
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * side * side, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv + BatchNorm, identity (or 1×1 projection) shortcut."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        # The same ReLU module runs twice per block, as in torchvision: hook-based methods
        # must cope with reused activation modules.
        return self.relu(out)


class ResNet18Like(nn.Module):
    """ResNet-18: 7×7 stem, four stages of two :class:`BasicBlock` each, global pooling, fc.

    Module names follow torchvision's (``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``), so
    layer names carry over from code written for ``torchvision.models.resnet18``.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        width: int = 64,
        blocks: Sequence[int] = (2, 2, 2, 2),
        block: Type[BasicBlock] = BasicBlock,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        c_in = width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            stride = 1 if i == 0 else 2
            stage = [block(c_in, c_out, stride)] + [block(c_out, c_out) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            c_in = c_out
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def vgg16_like(
    num_classes: int = 10, *, image_size: int = 64, width: int = 64, seed: int = 0
) -> VGG16Like:
    """VGG-16-like classifier for ``3 × image_size × image_size`` inputs, in eval mode.

    Parameters
    ----------
    num_classes : int, default 10.
    image_size : int, default 64.  A multiple of 32; sets the first linear layer's width.
    width : int, default 64.  Channels of the first block (VGG-16: 64); later blocks use
        2×, 4×, 8×, 8×.  Small widths give tiny models for tests.
    seed : int, default 0.  Same seed, same weights; the global RNG is left untouched.

    Returns
    -------
    VGG16Like
        About 16.0 M parameters at the defaults (14.7 M in the convolutions).  Grad-CAM
        layer: :data:`VGG16_CAM_LAYER`.
    """
    return _seeded(seed, lambda: VGG16Like(num_classes, image_size=image_size, width=width))


def resnet18_like(num_classes: int = 1000, *, width: int = 64, seed: int = 0) -> ResNet18Like:
    """ResNet-18 replica (BasicBlock, BatchNorm, in-place ReLU) for 224×224 inputs, eval mode.

    He et al. 2016, "Deep Residual Learning for Image Recognition".  Any input size of at
    least 32×32 works (global average pooling before the classifier).

    Parameters
    ----------
    num_classes : int, default 1000.
    width : int, default 64.  Stem channels; stages use 1×, 2×, 4×, 8×.
    seed : int, default 0.  Same seed, same weights; the global RNG is left untouched.

    Returns
    -------
    ResNet18Like
        11,689,512 parameters at the defaults, as torchvision's ``resnet18``.  BatchNorm
        running statistics are the fresh ones (mean 0, variance 1).  Grad-CAM layer:
        :data:`RESNET18_CAM_LAYER`.
    """
    return _seeded(seed, lambda: ResNet18Like(num_classes, width=width))


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: its factory and the configuration it is benchmarked at."""

    factory: Callable[..., nn.Module]
    input_shape: Tuple[int, int, int]
    batch: int
    cam_layer: str
    description: str


#: Built-in benchmark models by short name.
MODELS: Dict[str, ModelSpec] = {
    "vgg16": ModelSpec(
        vgg16_like, (3, 64, 64), 8, VGG16_CAM_LAYER, "VGG-16-like, 13 conv + 3 linear, 10 classes"
    ),
    "resnet18": ModelSpec(
        resnet18_like,
        (3, 224, 224),
        4,
        RESNET18_CAM_LAYER,
        "ResNet-18 replica, BasicBlock + BatchNorm + in-place ReLU, 1000 classes",
    ),
}


def cam_layer(model_name: str) -> str:
    """The natural Grad-CAM layer name of a built-in model (``"vgg16"`` or ``"resnet18"``)."""
    try:
        return MODELS[model_name].cam_layer
    except KeyError:
        raise ValueError(
            f"unknown model {model_name!r}; built-in models: {sorted(MODELS)}"
        ) from None
