"""xaikernels: compiled-kernel acceleration for explaining PyTorch models.

Importing this package needs only torch: the compiled extension, Triton and Numba are
loaded lazily by the ops that use them, and :func:`backend_status` says which are live.
"""
from xaikernels._backend import (
    BackendUnavailableError,
    backend_status,
    last_backend,
    load_extension,
)
from xaikernels.methods.cam import cam, grad_cam, guided_grad_cam
from xaikernels.methods.gradient import deconvnet, guided_backprop, input_x_gradient, saliency
from xaikernels.methods.integrated import expected_gradients, integrated_gradients, smoothgrad
from xaikernels.methods.kernel_shap import kernel_shap
from xaikernels.methods.lime import lime_image, lime_tabular, lime_text
from xaikernels.methods.lrp import lrp
from xaikernels.methods.fewshot import PrototypicalNet, digits_encoder, sample_episode
from xaikernels.methods.iba import iba
from xaikernels.methods.infomax import infomax
from xaikernels.ops import grad_cam_reduce, info_bottleneck, infonce_loss, infonce_lse

__version__ = "0.1.0"

__all__ = [
    "PrototypicalNet",    "BackendUnavailableError",
    "backend_status",
    "cam",
    "deconvnet",
    "digits_encoder",
    "expected_gradients",
    "grad_cam",
    "grad_cam_reduce",
    "iba",
    "info_bottleneck",
    "infomax",
    "infonce_loss",
    "infonce_lse",
    "guided_backprop",
    "guided_grad_cam",
    "input_x_gradient",
    "integrated_gradients",
    "kernel_shap",
    "last_backend",
    "lime_image",
    "lime_tabular",
    "lime_text",
    "load_extension",
    "lrp",
    "saliency",
    "sample_episode",
    "smoothgrad",
]
