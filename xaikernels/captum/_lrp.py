"""Captum-API ``LRP`` on xaikernels' one-pass LRP (re-exported as ``xaikernels.captum.LRP``).

Same call and numbers as ``captum.attr.LRP`` on the models Captum supports: per-layer rules
from a ``module.rule`` attribute (Captum's ``EpsilonRule``, ``GammaRule``, ``Alpha1_Beta0_Rule``,
``IdentityRule``, or an :mod:`xaikernels.methods.lrp` rule), else Captum's defaults — the ε rule
(ε = 1e-9) on ``Conv2d``, ``Linear``, ``BatchNorm2d``, average/adaptive-average pooling, max pooling
and ``Addition_Module``; pass-through on ``ReLU``, ``Dropout``, ``Tanh``.  Captum's γ and α1β0 are
ε-rules with modified weights (``W + γW⁺`` and ``W⁺``, bias kept unless ``set_bias_to_zero``),
unlike Zennit's generalised forms; they are reproduced as such.  The attribution is the
relevance of the target score (Σ relevance ≈ score; Captum's convention).

Beyond Captum: residual networks work (``canonizers="auto"`` routes ResNet-block additions
through the norm rule; Captum silently gives wrong results there), ``Flatten`` and the other
routing layers pass relevance as the gradient, and user rules are left on the modules.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch
from torch import nn

from xaikernels import _validate
from xaikernels.captum._base import GradientAttribution
from xaikernels.methods import lrp as _lrp
from xaikernels.methods.lrp import Epsilon, Norm, Pass, Rule, _ModifiedEpsilon

_EPS_DEFAULT = 1e-9
_NORM_TYPES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_EPS_TYPES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
_PASS_TYPES = (nn.ReLU, nn.Dropout, nn.Tanh)


def _convert(rule, module: nn.Module, name: str) -> Rule:
    if isinstance(rule, Rule):
        return rule
    cls = type(rule).__name__
    eps = float(getattr(rule, "STABILITY_FACTOR", _EPS_DEFAULT))
    if cls == "IdentityRule":
        return Pass()
    if cls == "EpsilonRule":
        if isinstance(module, _NORM_TYPES) or type(module).__name__ == "Addition_Module":
            return Norm(eps)
        return Epsilon(eps)
    if cls == "GammaRule":
        return _ModifiedEpsilon(eps, "gamma", float(rule.gamma), bool(getattr(rule, "set_bias_to_zero", False)))
    if cls == "Alpha1_Beta0_Rule":
        return _ModifiedEpsilon(eps, "positive", 0.0, bool(getattr(rule, "set_bias_to_zero", False)))
    raise TypeError(f"layer {name!r}: rule {rule!r} has no xaikernels equivalent (Captum's EpsilonRule, "
                    "GammaRule, Alpha1_Beta0_Rule, IdentityRule or an xaikernels rule are supported)")


class _CaptumComposite:
    """Rules read from ``module.rule`` at call time, else Captum's defaults by exact type."""

    canonizers = None

    def rule_for(self, ctx: dict, name: str, module: nn.Module) -> Optional[Rule]:
        if list(module.children()):
            return None
        rule = getattr(module, "rule", None)
        if rule is not None:
            return _convert(rule, module, name)
        t = type(module)
        if t in _PASS_TYPES:
            return Pass()
        if t in _NORM_TYPES or t.__name__ == "Addition_Module":
            return Norm(_EPS_DEFAULT)
        if t in _EPS_TYPES:
            return Epsilon(_EPS_DEFAULT)
        if isinstance(module, _lrp.ResidualSum):
            return Norm(_EPS_DEFAULT)
        return None

    def __repr__(self):
        return "captum LRP defaults"


class LRP(GradientAttribution):
    """Captum's ``LRP`` interface: ``LRP(model).attribute(inputs, target, ...)``.

    ``R = f_t(x) · LRP(one-hot(t))`` with each layer's rule as in Captum (module docstring).
    Bach et al. 2015, "On Pixel-Wise Explanations ... by Layer-Wise Relevance Propagation".

    Parameters
    ----------
    model : nn.Module.
    canonizers : None (default, Captum's behaviour), ``"auto"`` (BatchNorm merging and residual
        blocks), or a list (see :func:`xaikernels.lrp`).
    backend : see :func:`xaikernels.lrp`.
    """

    def __init__(self, model: nn.Module, canonizers: Any = ("residual",), backend: str = "auto"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        GradientAttribution.__init__(self, model)
        self.model = model
        self.canonizers = list(canonizers) if isinstance(canonizers, tuple) else canonizers
        self.backend = backend

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return True

    def attribute(self, inputs: Union[torch.Tensor, Tuple[torch.Tensor]], target: Any = None,
                  additional_forward_args: Any = None, return_convergence_delta: bool = False,
                  verbose: bool = False):
        """Relevance of ``inputs`` (shaped like them); with ``return_convergence_delta``, also
        ``score − Σ relevance`` per example."""
        is_tuple = isinstance(inputs, tuple)
        if is_tuple:
            if len(inputs) != 1:
                raise NotImplementedError("xaikernels' LRP takes a single input tensor")
            x = inputs[0]
        else:
            x = inputs
        fargs = () if additional_forward_args is None else (
            additional_forward_args if isinstance(additional_forward_args, tuple) else (additional_forward_args,))
        scores = {}

        def grad_out(out):
            out2 = _validate.check_output(out)
            if out2.shape[1] == 1 and target is None:
                t = torch.zeros(out2.shape[0], dtype=torch.long, device=out2.device)
            else:
                if target is None:
                    raise ValueError("target is required for a model with several outputs (Captum's convention)")
                t = _validate.resolve_target(target, out2)
            sel = out2.detach().gather(1, t.unsqueeze(1))
            scores["s"] = sel.squeeze(1)
            return (torch.zeros_like(out2).scatter_(1, t.unsqueeze(1), 1.0) * sel).reshape(out.shape)

        comp = _CaptumComposite()
        if verbose:
            for name, m in self.model.named_modules():
                r = comp.rule_for({}, name, m)
                if r is not None:
                    print(f"Applied {r} on layer {name or '<root>'} ({type(m).__name__})")
        res = _lrp.run_lrp(self.model, x, grad_out, composite=comp, canonizers=self.canonizers or None,
                           backend=self.backend, unsupported="error", forward_args=fargs, check_mode=False)
        rel = (res.relevance,) if is_tuple else res.relevance
        if return_convergence_delta:
            delta = scores["s"] - res.relevance.reshape(res.relevance.shape[0], -1).sum(1)
            return rel, delta
        return rel
