"""Class activation maps: CAM, Grad-CAM, Guided Grad-CAM.

Grad-CAM backpropagates only down to the chosen layer (not to the input), and Guided
Grad-CAM shares one forward pass between its two backward passes.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from xaikernels import _validate
from xaikernels._model_guard import ModelGuard
from xaikernels.methods._engine import ActivationRule, LayerCapture, run_forward, target_score
from xaikernels.ops.grad_cam import grad_cam_reduce

LayerLike = Union[str, nn.Module]

_MODES = {1: ("linear",), 2: ("bilinear", "nearest", "bicubic", "area"), 3: ("trilinear", "nearest", "area")}


def upsample(cam: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a (N, 1, *s) map to ``size`` (align_corners=False)."""
    if tuple(cam.shape[2:]) == tuple(size):
        return cam
    if mode in ("nearest", "area"):
        return F.interpolate(cam, size=tuple(size), mode=mode)
    if cam.dim() - 2 == 1 and mode == "bilinear":
        mode = "linear"
    return F.interpolate(cam, size=tuple(size), mode=mode, align_corners=False)


def _check_cam_input(x: torch.Tensor) -> None:
    _validate.check_input(x, min_dim=3, max_dim=5)


def _layer_maps(model, x, target, layer, relu, backend, forward_args, guided_types=None, check_mode=True):
    """Grad-CAM layer map (N, 1, *s) and, when ``guided_types`` is given, the guided-backprop
    input gradient from the same forward pass."""
    _check_cam_input(x)
    if check_mode:
        _validate.check_mode(model)
    mod = _validate.find_layer(model, layer)
    name = layer if isinstance(layer, str) else type(layer).__name__
    with ModelGuard(model) as guard:
        cap = LayerCapture(mod, name=name)
        act = ActivationRule(guard, model, "guided" if guided_types else None, guided_types or (nn.ReLU,))
        xg = x.detach().requires_grad_(guided_types is not None)
        with torch.enable_grad():
            out = _validate.check_output(run_forward(model, xg, forward_args))
            t = _validate.resolve_target(target, out)
            acts = cap.get()
            if not acts.requires_grad:
                raise ValueError(f"layer {name!r} output does not depend on differentiable inputs")
            score = target_score(out, t)
            act.enabled = False  # Grad-CAM uses the plain gradient at the layer
            (grads,) = torch.autograd.grad(score, acts, retain_graph=guided_types is not None)
            gbp = None
            if guided_types is not None:
                act.enabled = True
                (gbp,) = torch.autograd.grad(score, xg)
    if acts.dim() < 3:
        raise ValueError(f"layer {name!r} output has shape {tuple(acts.shape)}; CAM needs a (N, C, *spatial) map")
    cam = grad_cam_reduce(acts.detach(), grads, relu=relu, backend=backend).unsqueeze(1)
    return cam, gbp


def grad_cam(model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *,
             layer: LayerLike, relu: bool = True, upsample_mode: str = "bilinear",
             return_raw: bool = False, backend: str = "auto", forward_args: Sequence = ()):
    """Grad-CAM (Selvaraju et al. 2017).

    ``L[n] = ReLU( Σ_c mean_s(∂f_t/∂A[n,c,s]) · A[n,c] )`` at the chosen conv layer, computed by
    the fused ``grad_cam`` op, then resized to the input.

    Parameters
    ----------
    layer : nn.Module or dotted name (``"features.28"``) of a layer with (N, C, *spatial) output.
    relu : bool, default True.
    upsample_mode : "bilinear" (default), "nearest", "bicubic", "area".
    return_raw : also return the layer-resolution map.
    backend : {"auto", "cpp", "triton", "reference"} for the reduction.

    Returns
    -------
    Tensor (N, 1, *x.shape[2:]), or ``(upsampled, raw)`` with raw (N, 1, *layer_spatial).
    """
    cam, _ = _layer_maps(model, x, target, layer, relu, backend, forward_args)
    up = upsample(cam, x.shape[2:], upsample_mode)
    return (up, cam) if return_raw else up


def guided_grad_cam(model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *,
                    layer: LayerLike, upsample_mode: str = "nearest",
                    activation_types: Tuple[Type[nn.Module], ...] = (nn.ReLU,),
                    backend: str = "auto", forward_args: Sequence = ()) -> torch.Tensor:
    """Guided Grad-CAM: guided backprop ⊙ upsampled ReLU(Grad-CAM).  Shaped like ``x``.

    One forward pass feeds both backward passes (Grad-CAM's to the layer, guided backprop's
    to the input).  ``upsample_mode`` defaults to "nearest" as Captum's GuidedGradCam.
    """
    cam, gbp = _layer_maps(model, x, target, layer, True, backend, forward_args,
                           guided_types=tuple(activation_types))
    return gbp * upsample(cam, x.shape[2:], upsample_mode)


def _find_fc(model: nn.Module, channels: int) -> nn.Linear:
    cands = [m for m in model.modules() if isinstance(m, nn.Linear) and m.in_features == channels]
    if not cands:
        raise ValueError(f"no nn.Linear with in_features={channels} found; pass fc= explicitly")
    return cands[-1]


def cam(model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *,
        layer: LayerLike, fc: Optional[LayerLike] = None, relu: bool = False,
        upsample_mode: str = "bilinear", return_raw: bool = False, forward_args: Sequence = ()):
    """Class activation mapping (Zhou et al. 2016), for nets ending in global pooling + linear.

    ``M[n] = Σ_c W_fc[t_n, c] · A[n, c]`` at ``layer`` (the last conv block); forward only.

    Parameters
    ----------
    layer : the layer feeding global average pooling.
    fc : the final linear layer; default: the last ``nn.Linear`` whose in_features equals the
        layer's channel count.
    relu : clamp negative evidence (False by default: CAM is signed).

    Returns
    -------
    Tensor (N, 1, *x.shape[2:]), or ``(upsampled, raw)``.
    """
    _check_cam_input(x)
    _validate.check_mode(model)
    mod = _validate.find_layer(model, layer)
    name = layer if isinstance(layer, str) else type(layer).__name__
    with ModelGuard(model):
        cap = LayerCapture(mod, name=name)
        with torch.no_grad():
            out = _validate.check_output(run_forward(model, x, forward_args))
        t = _validate.resolve_target(target, out)
        acts = cap.get()
    if acts.dim() < 3:
        raise ValueError(f"layer {name!r} output has shape {tuple(acts.shape)}; CAM needs (N, C, *spatial)")
    lin = _find_fc(model, acts.shape[1]) if fc is None else _validate.find_layer(model, fc)
    if not isinstance(lin, nn.Linear) or lin.in_features != acts.shape[1]:
        raise ValueError(f"fc must be an nn.Linear with in_features={acts.shape[1]}")
    w = lin.weight.detach()[t].to(acts.dtype)  # (N, C)
    m = torch.einsum("nc,nc...->n...", w, acts).unsqueeze(1)
    if relu:
        m = m.clamp_min(0)
    up = upsample(m, x.shape[2:], upsample_mode)
    return (up, m) if return_raw else up
