"""Captum drop-ins for Grad-CAM: LayerGradCam and GuidedGradCam.

LayerGradCam backpropagates only down to the layer and reduces with the fused
``grad_cam_reduce`` op; GuidedGradCam runs one forward pass for both of its backward passes
(Captum runs the model twice).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module

from xaikernels._model_guard import ModelGuard
from xaikernels.captum import _common as C
from xaikernels.captum._base import GradientAttribution, LayerAttribution
from xaikernels.captum._gradient import _HOOK_WARNING, GuidedBackprop, ReluGradientRule
from xaikernels.ops.grad_cam import grad_cam_reduce

_INTERP_WARNING = ("Couldn't appropriately interpolate GradCAM attributions for some input "
                   "tensors, returning empty tensor for corresponding attributions.")


def _cam_map(acts: Tensor, grads: Tensor, relu: bool, channel_sum: bool) -> Tensor:
    """Captum's Grad-CAM map of one layer tensor.

    ``w = mean over dims ≥ 2 of grads`` (no mean for a 2-D layer); the map is
    ``Σ_c w·acts`` with the channel dim kept as size 1 (``channel_sum``) or ``w·acts``; then
    optionally ReLU.  The summed form runs on the fused ``grad_cam_reduce`` op.
    """
    if (channel_sum and acts.dim() >= 2 and acts.shape == grads.shape and acts.is_floating_point()
            and acts.dtype == grads.dtype):
        return grad_cam_reduce(acts, grads, relu=relu).unsqueeze(1)
    w = grads.mean(dim=tuple(range(2, grads.dim())), keepdim=True) if grads.dim() > 2 else grads
    out = torch.sum(w * acts, dim=1, keepdim=True) if channel_sum else w * acts
    return F.relu(out) if relu else out


class LayerGradCam(LayerAttribution, GradientAttribution):
    """Grad-CAM (Selvaraju et al. 2017) at a layer.

    Drop-in for ``captum.attr.LayerGradCam``.  For a layer tensor ``A`` (N, C, *s) and the
    gradient ``G = ∂F_target/∂A``: ``map = Σ_c mean_s(G[:, c]) · A[:, c]`` (N, 1, *s), not
    upsampled (use :meth:`LayerAttribution.interpolate`).

    Parameters
    ----------
    forward_func : callable
    layer : nn.Module whose output (or input) is attributed.
    device_ids : list of int, optional (DataParallel ordering, as in Captum).
    """

    def __init__(self, forward_func: Callable[..., Tensor], layer: Module,
                 device_ids: Optional[List[int]] = None) -> None:
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)

    @C.entry
    def attribute(self, inputs, target: C.TargetType = None, additional_forward_args: Any = None,
                  attribute_to_layer_input: bool = False, relu_attributions: bool = False,
                  attr_dim_summation: bool = True, grad_kwargs: Optional[Dict[str, Any]] = None):
        """Grad-CAM map of the layer for the target output.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensors, each (N, ...).
        target : Captum's target forms (see :meth:`Saliency.attribute`).
        additional_forward_args : any, optional.
        attribute_to_layer_input : bool, default False
            Attribute to the layer's positional inputs instead of its output.
        relu_attributions : bool, default False
            Apply ReLU to the map.
        attr_dim_summation : bool, default True
            Sum over the channel dim (False keeps ``mean_s(G) · A`` per channel).
        grad_kwargs : dict, optional
            Passed to ``torch.autograd.grad`` (e.g. ``{"materialize_grads": True}``).

        Returns
        -------
        Tensor (N, 1, *s) for a layer with one output tensor (N, C, *s) — (N, 1) for a 2-D
        layer — or a tuple with one map per tensor when the layer has several.
        """
        inputs = C._format_tensor_into_tuples(inputs)
        extra = C._format_additional_forward_args(additional_forward_args)
        with torch.autograd.set_grad_enabled(True):
            # The tap is the only change to the model: removing its handle restores it, at a
            # fraction of a full ModelGuard snapshot's cost on small inputs.
            tap = C.LayerTap(self.layer, attribute_to_layer_input)
            try:
                output = C._run_forward(self.forward_func, inputs, target, extra)
            finally:
                tap.handle.remove()
            per_device = tap.ordered(self.forward_func, self.device_ids)
            C._check_scalar_per_example(output)
            grads, acts = C.layer_gradients_and_eval(output, per_device, grad_kwargs)
            maps = tuple(_cam_map(a, g, relu_attributions, attr_dim_summation)
                         for a, g in zip(acts, grads))
        return C._format_output(len(maps) > 1, maps)


class GuidedGradCam(GradientAttribution):
    """Guided Grad-CAM: guided backprop ⊙ Grad-CAM upsampled to each input.

    Drop-in for ``captum.attr.GuidedGradCam``: ``attr_i = GBP_i · interpolate(relu(GradCAM),
    x_i.shape[2:])``.  One forward pass feeds both backward passes.  For an input whose
    dimensions do not fit the layer map, Captum's warning is emitted and an empty tensor is
    returned in its place.

    Parameters
    ----------
    model : nn.Module
    layer : nn.Module with a single output (or input) tensor.
    device_ids : list of int, optional.

    Attributes
    ----------
    grad_cam : LayerGradCam
    guided_backprop : GuidedBackprop
    """

    def __init__(self, model: Module, layer: Module, device_ids: Optional[List[int]] = None) -> None:
        GradientAttribution.__init__(self, model)
        self.grad_cam = LayerGradCam(model, layer, device_ids)
        self.guided_backprop = GuidedBackprop(model)

    @C.entry
    def attribute(self, inputs, target: C.TargetType = None, additional_forward_args: Any = None,
                  interpolate_mode: str = "nearest", attribute_to_layer_input: bool = False):
        """Guided Grad-CAM attributions.

        Parameters
        ----------
        inputs, target, additional_forward_args : as for :meth:`Saliency.attribute`.
        interpolate_mode : str, default "nearest"
            Mode of ``F.interpolate`` for resizing the layer map to each input.
        attribute_to_layer_input : bool, default False

        Returns
        -------
        Tensor or tuple of Tensors shaped like the inputs (``torch.empty(0)`` for inputs the
        map could not be resized to).
        """
        is_tuple = C._is_tuple(inputs)
        inputs_t = C._format_tensor_into_tuples(inputs)
        extra = C._format_additional_forward_args(additional_forward_args)
        model = self.guided_backprop.model
        layer = self.grad_cam.layer
        leaves, messages = C._grad_leaves(inputs_t)
        with torch.autograd.set_grad_enabled(True):
            # The layer gets its own guard: it need not be a submodule of the model.
            with ModelGuard(model) as guard, ModelGuard(layer):
                rule = ReluGradientRule(guard, model, use_grad_output=False)
                rule.enabled = False  # Grad-CAM takes the plain gradient at the layer
                tap = C.LayerTap(layer, attribute_to_layer_input)
                output = C._run_forward(self.grad_cam.forward_func, leaves, target, extra)
            per_device = tap.ordered(self.grad_cam.forward_func, self.grad_cam.device_ids)
            C._check_scalar_per_example(output)
            grads, acts = C.layer_gradients_and_eval(output, per_device, retain_graph=True)
            maps = tuple(_cam_map(a, g, True, True) for a, g in zip(acts, grads))
            if len(maps) > 1:
                raise AssertionError("GuidedGradCAM attributions for layer with multiple inputs / "
                                     "outputs is not supported.")
            cam = maps[0]
            # Captum's guided-backprop pass starts here: its warnings come only now.
            C._emit(messages)
            C.warn(_HOOK_WARNING)
            rule.enabled = True
            gbp = C._backward(output, leaves)
        out: List[Tensor] = []
        for x, g in zip(inputs_t, gbp):
            try:
                out.append(g * LayerAttribution.interpolate(cam, tuple(x.shape[2:]),
                                                            interpolate_mode=interpolate_mode))
            except Exception:
                C.warn(_INTERP_WARNING)
                out.append(torch.empty(0))
        return C._format_output(is_tuple, tuple(out))


__all__: Tuple[str, ...] = ("LayerGradCam", "GuidedGradCam")
