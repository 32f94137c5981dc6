"""Gradient family: saliency, gradient × input, guided backprop, deconvnet.

All four are one forward and one backward pass of the model (no per-layer re-runs); guided
backprop and deconvnet only change how the gradient crosses activation modules.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Type

import torch
from torch import nn

from xaikernels import _validate
from xaikernels._model_guard import ModelGuard
from xaikernels.methods._engine import ActivationRule, run_forward, target_score


def _gradient(model: nn.Module, x: torch.Tensor, target: _validate.TargetLike, rule: Optional[str],
              activation_types: Tuple[Type[nn.Module], ...], forward_args: Sequence = (),
              check_mode: bool = True) -> torch.Tensor:
    _validate.check_input(x)
    if check_mode:
        _validate.check_mode(model)
    with ModelGuard(model) as guard:
        act = ActivationRule(guard, model, rule, activation_types)
        if rule is not None and act.count == 0:
            import warnings

            warnings.warn(f"no {[t.__name__ for t in activation_types]} modules in the model: the "
                          f"{rule} rule changes nothing (functional activations cannot be hooked)",
                          UserWarning, stacklevel=3)
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = _validate.check_output(run_forward(model, xg, forward_args))
            t = _validate.resolve_target(target, out)
            (grad,) = torch.autograd.grad(target_score(out, t), xg)
    return grad


def saliency(model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *,
             abs: bool = True, forward_args: Sequence = ()) -> torch.Tensor:
    """Saliency map: the gradient of the target score w.r.t. the input.

    ``S = |∂f_t(x)/∂x|`` (or the signed gradient with ``abs=False``).  Simonyan et al. 2014,
    "Deep Inside Convolutional Networks".

    Parameters
    ----------
    model : nn.Module returning class scores (N, K); eval mode expected.
    x : Tensor (N, ...) floating point.
    target : int | sequence of N ints | tensor (N,) | None
        Class per example; None explains the predicted class.
    abs : bool, default True (Captum's default).
    forward_args : extra positional arguments passed to ``model(x, *forward_args)``.

    Returns
    -------
    Tensor shaped like ``x``.
    """
    g = _gradient(model, x, target, None, (nn.ReLU,), forward_args)
    return g.abs() if abs else g


def input_x_gradient(model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *,
                     forward_args: Sequence = ()) -> torch.Tensor:
    """Gradient × input: ``x ⊙ ∂f_t(x)/∂x`` (Shrikumar et al. 2016).  Shaped like ``x``."""
    g = _gradient(model, x, target, None, (nn.ReLU,), forward_args)
    return g * x


def guided_backprop(model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *,
                    activation_types: Tuple[Type[nn.Module], ...] = (nn.ReLU,),
                    forward_args: Sequence = ()) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015).

    At each activation module the backward signal is ``[z > 0] · max(g, 0)``: the forward mask
    and only positive gradients.  Functional activations (``F.relu`` inside ``forward``) cannot
    be hooked and keep their plain gradient, as in Captum.

    Parameters
    ----------
    activation_types : module classes the rule applies to; default ``(nn.ReLU,)`` as Captum.
        Add ``nn.ReLU6`` etc. for models built on them.

    Returns
    -------
    Tensor shaped like ``x``.
    """
    return _gradient(model, x, target, "guided", tuple(activation_types), forward_args)


def deconvnet(model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *,
              activation_types: Tuple[Type[nn.Module], ...] = (nn.ReLU,),
              forward_args: Sequence = ()) -> torch.Tensor:
    """Deconvnet (Zeiler & Fergus 2014): at each activation the backward signal is ``max(g, 0)``,
    ignoring the forward mask.  Shaped like ``x``."""
    return _gradient(model, x, target, "deconv", tuple(activation_types), forward_args)
