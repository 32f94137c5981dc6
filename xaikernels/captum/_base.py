"""The attribution class hierarchy of Captum 0.9.0, mirrored without importing Captum.

``Attribution`` → ``GradientAttribution`` / ``PerturbationAttribution`` /
``InternalAttribution`` → ``LayerAttribution`` / ``NeuronAttribution``.  Concrete methods
derive from these exactly as their Captum namesakes do, so ``isinstance`` checks written
against the Captum names keep their meaning after swapping the import.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module

from xaikernels.captum import _common as C


class Attribution:
    """Base of every attribution method.

    Parameters
    ----------
    forward_func : callable
        The model's forward function (an ``nn.Module`` or any callable returning a tensor).

    Attributes
    ----------
    forward_func : callable
        As given.
    multiplies_by_inputs : bool
        Whether the method multiplies by the inputs (or ``inputs - baselines``); False here.
    """

    attribute: Callable
    attribute_future: Callable
    compute_convergence_delta: Callable

    def __init__(self, forward_func: Callable) -> None:
        self.forward_func = forward_func

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def has_convergence_delta(self) -> bool:
        """Whether ``attribute`` can return a convergence delta (False for this method)."""
        return False

    @classmethod
    def get_name(cls) -> str:
        """The class name split into words: ``LayerGradCam`` → ``"Layer Grad Cam"``."""
        return "".join(ch if ch.islower() or i == 0 else " " + ch for i, ch in enumerate(cls.__name__))


class GradientAttribution(Attribution):
    """Base of gradient-based methods.

    Attributes
    ----------
    gradient_func : callable
        ``(forward_func, inputs, target, additional_forward_args) -> tuple of gradients``;
        one forward and one backward pass.  Replaceable, as in Captum (neuron variants swap
        it for a gradient of a hidden unit).
    """

    def __init__(self, forward_func: Callable) -> None:
        Attribution.__init__(self, forward_func)
        self.gradient_func = C.compute_gradients

    @C.entry
    def compute_convergence_delta(self, attributions: Union[Tensor, Tuple[Tensor, ...]],
                                  start_point: Any, end_point: Union[Tensor, Tuple[Tensor, ...]],
                                  target: C.TargetType = None,
                                  additional_forward_args: Any = None) -> Tensor:
        """Completeness gap per example: ``Σ attributions − (f(end_point) − f(start_point))``.

        Parameters
        ----------
        attributions : Tensor or tuple of Tensors, each (N, ...).
        start_point : baseline(s): None (zeros), a number, a tensor (N or 1 rows), or a tuple.
        end_point : the inputs, Tensor or tuple of Tensors (N, ...).
        target, additional_forward_args : as for ``attribute``.

        Returns
        -------
        Tensor (N,).
        """
        end_point, start_point = C._format_input_baseline(end_point, start_point)
        additional_forward_args = C._format_additional_forward_args(additional_forward_args)
        start_point = C._tensorize_baseline(end_point, start_point)
        attributions = C._format_tensor_into_tuples(attributions)
        for attribution, end in zip(attributions, end_point):
            assert end.shape[0] == attribution.shape[0], (
                "Attributions tensor and the end_point must match on the first dimension but "
                f"found attribution: {attribution.shape[0]} and end_point: {end.shape[0]}")
        num_samples = end_point[0].shape[0]
        C._validate_input(end_point, start_point)
        C._validate_target(num_samples, target)
        with torch.no_grad():
            start_sum = C._sum_rows(C._run_forward(self.forward_func, start_point, target,
                                                   additional_forward_args))
            end_sum = C._sum_rows(C._run_forward(self.forward_func, end_point, target,
                                                 additional_forward_args))
            row_sums = [C._sum_rows(a) for a in attributions]
            attr_sum = torch.stack([sum(rows) for rows in zip(*row_sums)])
            return attr_sum - (end_sum - start_sum)


class PerturbationAttribution(Attribution):
    """Base of perturbation-based methods (``multiplies_by_inputs`` is True)."""

    def __init__(self, forward_func: Callable) -> None:
        Attribution.__init__(self, forward_func)

    @property
    def multiplies_by_inputs(self) -> bool:
        return True


class InternalAttribution(Attribution):
    """Base of methods attributing to or through an internal layer.

    Parameters
    ----------
    forward_func : callable
    layer : nn.Module (or a list of modules where the method supports it)
    device_ids : list of int, optional
        Device order of a DataParallel ``forward_func`` that is not itself a DataParallel
        module (needed only then).
    """

    layer: Any

    def __init__(self, forward_func: Callable, layer: Any,
                 device_ids: Optional[List[int]] = None) -> None:
        Attribution.__init__(self, forward_func)
        self.layer = layer
        self.device_ids = device_ids


class LayerAttribution(InternalAttribution):
    """Base of methods attributing to a layer's output (or input)."""

    def __init__(self, forward_func: Callable, layer: Any,
                 device_ids: Optional[List[int]] = None) -> None:
        InternalAttribution.__init__(self, forward_func, layer, device_ids)

    @staticmethod
    def interpolate(layer_attribution: Tensor, interpolate_dims: Union[int, Tuple[int, ...]],
                    interpolate_mode: str = "nearest") -> Tensor:
        """Resize a layer attribution (N, C, *s) to ``interpolate_dims`` with ``F.interpolate``.

        Parameters
        ----------
        layer_attribution : Tensor (N, C, *s), s of 1 to 3 dims.
        interpolate_dims : int or tuple, the target spatial size.
        interpolate_mode : "nearest" (default), "area", "linear", "bilinear", "bicubic",
            "trilinear", as accepted by ``torch.nn.functional.interpolate`` for the rank.

        Returns
        -------
        Tensor (N, C, *interpolate_dims).
        """
        return F.interpolate(layer_attribution, interpolate_dims, mode=interpolate_mode)


class NeuronAttribution(InternalAttribution):
    """Base of methods attributing a single hidden neuron to the inputs."""

    attribute: Callable

    def __init__(self, forward_func: Callable, layer: Module,
                 device_ids: Optional[List[int]] = None) -> None:
        InternalAttribution.__init__(self, forward_func, layer, device_ids)
