"""Zennit-style drop-in: ``Gradient(model, composite)`` as Zennit's attributor, on xaikernels' LRP.

::

    from xaikernels.zennit import Gradient, EpsilonPlusFlat, ResNetCanonizer
    with Gradient(model, EpsilonPlusFlat(canonizers=[ResNetCanonizer()])) as attributor:
        output, relevance = attributor(x, torch.eye(1000)[target])

The composite may also be a real Zennit ``Composite`` (``zennit.composites.EpsilonPlusFlat(...)``)
when zennit is importable: its rules are read off its hook objects and mapped to
:mod:`xaikernels.methods.lrp` rules (ε, z⁺, αβ, γ, z^B, flat, w², norm, pass with float
stabilisers), its canonizers to ours (BatchNorm merging reproduces Zennit's exactly), and the
relevance is the same as Zennit's.  Nothing is registered on the model: each call installs the
rules for one forward/backward pass and removes them.

Zennit: Anders et al. 2021, "Software for Dataset-wide XAI: From Local Explanations to Global
Insights with Zennit, CoRelAy, and ViRelAy".
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch import nn

from xaikernels.methods import lrp as _lrp
from xaikernels.methods.lrp import (AlphaBeta, Composite, Epsilon, Flat, Gamma, MergeBatchNorm, Norm, Pass,
                                    ResidualBlocks, ResidualSum, Rule, WSquare, ZBox, ZPlus)

__all__ = ["Gradient", "EpsilonPlus", "EpsilonPlusFlat", "EpsilonAlpha2Beta1", "EpsilonAlpha2Beta1Flat",
           "EpsilonGammaBox", "SequentialMergeBatchNorm", "ResNetCanonizer", "ZennitComposite",
           "convert_canonizer", "convert_rule"]


# ---------------------------------------------------------------------------------------------
# Zennit-named presets and canonizers (our objects)
# ---------------------------------------------------------------------------------------------

def EpsilonPlus(epsilon=1e-6, stabilizer=1e-6, layer_map=(), canonizers=None) -> Composite:
    """Zennit's ``EpsilonPlus``: z⁺ on convolutions, ε on linear layers."""
    return _lrp.epsilon_plus(epsilon, stabilizer, layer_map, canonizers=list(canonizers or []))


def EpsilonPlusFlat(epsilon=1e-6, stabilizer=1e-6, layer_map=(), first_map=(), canonizers=None) -> Composite:
    """Zennit's ``EpsilonPlusFlat``: flat on the first linear-like layer, then as ``EpsilonPlus``."""
    return _lrp.epsilon_plus_flat(epsilon, stabilizer, layer_map, first_map, canonizers=list(canonizers or []))


def EpsilonAlpha2Beta1(epsilon=1e-6, stabilizer=1e-6, layer_map=(), canonizers=None) -> Composite:
    """Zennit's ``EpsilonAlpha2Beta1``: α2β1 on convolutions, ε on linear layers."""
    return _lrp.epsilon_alpha2_beta1(epsilon, stabilizer, layer_map, canonizers=list(canonizers or []))


def EpsilonAlpha2Beta1Flat(epsilon=1e-6, stabilizer=1e-6, layer_map=(), first_map=(), canonizers=None) -> Composite:
    """Zennit's ``EpsilonAlpha2Beta1Flat``."""
    return _lrp.epsilon_alpha2_beta1_flat(epsilon, stabilizer, layer_map, first_map,
                                          canonizers=list(canonizers or []))


def EpsilonGammaBox(low, high, epsilon=1e-6, gamma=0.25, stabilizer=1e-6, layer_map=(), first_map=(),
                    canonizers=None) -> Composite:
    """Zennit's ``EpsilonGammaBox``: z^B on the first convolution, γ on the others, ε on linear layers."""
    return _lrp.epsilon_gamma_box(low, high, epsilon, gamma, stabilizer, layer_map, first_map,
                                  canonizers=list(canonizers or []))


def SequentialMergeBatchNorm() -> MergeBatchNorm:
    """Zennit's ``SequentialMergeBatchNorm`` (exact merge: the BatchNorm becomes the identity)."""
    return MergeBatchNorm()


def ResNetCanonizer() -> List[Any]:
    """Zennit's ``ResNetCanonizer``: BatchNorm merging plus residual blocks (a list; pass it as
    ``canonizers=ResNetCanonizer()`` or splice it into a list)."""
    return [MergeBatchNorm(), ResidualBlocks()]


# ---------------------------------------------------------------------------------------------
# Real zennit objects → ours
# ---------------------------------------------------------------------------------------------

def _nonlocals(fn) -> Dict[str, Any]:
    try:
        return dict(inspect.getclosurevars(fn).nonlocals)
    except (TypeError, ValueError):
        return {}


def _stabilizer(hook) -> float:
    from zennit.core import Stabilizer

    fn = _nonlocals(hook.gradient_mapper).get("stabilizer_fn")
    if isinstance(fn, Stabilizer) and not fn.clip and not fn.norm_scale:
        return float(fn.epsilon)
    raise NotImplementedError(f"zennit rule {type(hook).__name__} uses a custom stabilizer ({fn!r}); only float "
                              "stabilizers (z + eps*sign(z)) are supported")


def _check_no_zero_params(hook, allowed=(None, [], ("bias",), ["bias"])):
    for i, pm in enumerate(getattr(hook, "param_modifiers", ())):
        zp = getattr(pm, "zero_params", None)
        if zp in (None, []):
            continue
        # The rules themselves zero the bias of the x⁻ terms; a user's zero_params would show on
        # the first modifier.
        if i == 0:
            raise NotImplementedError(f"zennit rule {type(hook).__name__} with zero_params={zp!r} is not supported")


def convert_rule(hook) -> Rule:
    """Our rule for a Zennit rule (hook) instance; raises for rules we do not implement."""
    from zennit import rules as zr

    t = type(hook)
    if t is zr.Pass:
        return Pass()
    if t is zr.Epsilon:
        _check_no_zero_params(hook)
        return Epsilon(_stabilizer(hook))
    if t is zr.ZPlus:
        _check_no_zero_params(hook)
        return ZPlus(_stabilizer(hook))
    if t is zr.AlphaBeta:
        _check_no_zero_params(hook)
        nl = _nonlocals(hook.reducer)
        return AlphaBeta(float(nl["alpha"]), float(nl["beta"]), _stabilizer(hook))
    if t is zr.Gamma:
        _check_no_zero_params(hook)
        gamma = _nonlocals(hook.param_modifiers[0].modifier)["gamma"]
        return Gamma(float(gamma), _stabilizer(hook))
    if t is zr.ZBox:
        _check_no_zero_params(hook)
        low = _nonlocals(hook.input_modifiers[1])["low"]
        high = _nonlocals(hook.input_modifiers[2])["high"]
        return ZBox(low, high, _stabilizer(hook))
    if t is zr.Flat:
        return Flat(_stabilizer(hook))
    if t is zr.WSquare:
        _check_no_zero_params(hook)
        return WSquare(_stabilizer(hook))
    if t is zr.Norm:
        return Norm(_stabilizer(hook))
    raise NotImplementedError(f"zennit rule {t.__module__}.{t.__name__} has no xaikernels kernel")


def convert_canonizer(canonizer) -> List[Any]:
    """Our canonizers for a Zennit canonizer (composite canonizers are flattened)."""
    from zennit import canonizers as zc

    if isinstance(canonizer, zc.CompositeCanonizer):
        out: List[Any] = []
        for c in canonizer.canonizers:
            out.extend(convert_canonizer(c))
        return out
    if isinstance(canonizer, zc.NamedMergeBatchNorm):
        return [MergeBatchNorm(zennit_compat=True, pairs=canonizer.name_map)]
    if isinstance(canonizer, zc.SequentialMergeBatchNorm):
        return [MergeBatchNorm(zennit_compat=True)]
    try:
        from zennit import torchvision as ztv
    except Exception:  # zennit.torchvision needs torchvision (or its stand-in)
        ztv = None
    if ztv is not None and isinstance(canonizer, ztv.ResNetBasicBlockCanonizer):
        return [ResidualBlocks(types=(_tv_class("BasicBlock"),))]
    if ztv is not None and isinstance(canonizer, ztv.ResNetBottleneckCanonizer):
        return [ResidualBlocks(types=(_tv_class("Bottleneck"),))]
    raise NotImplementedError(f"zennit canonizer {type(canonizer).__name__} has no xaikernels equivalent")


def _tv_class(name):
    import sys

    return getattr(sys.modules["torchvision.models.resnet"], name)


class ZennitComposite:
    """Adapter: a Zennit ``Composite`` seen through :meth:`rule_for` (Zennit's own module map)."""

    def __init__(self, composite):
        if getattr(composite, "handles", None):
            raise RuntimeError("this zennit composite is registered on a model (its hooks are live); remove it "
                               "(composite.remove()) before passing it to xaikernels")
        self.composite = composite
        self.canonizers = list(composite.canonizers or [])
        self._rules: Dict[int, Rule] = {}
        self._sum = None

    def rule_for(self, ctx: dict, name: str, module: nn.Module) -> Optional[Rule]:
        if isinstance(module, ResidualSum):
            # Zennit's ResNet canonizer adds a ``zennit.layer.Sum`` module at this position.
            if self._sum is None:
                from zennit.layer import Sum

                self._sum = Sum()
            module = self._sum
        hook = self.composite.module_map(ctx, name, module)
        if hook is None:
            return None
        if id(hook) not in self._rules:
            self._rules[id(hook)] = convert_rule(hook)
        return self._rules[id(hook)]

    def __repr__(self):
        return f"zennit {type(self.composite).__name__}"


# ---------------------------------------------------------------------------------------------
# The attributor
# ---------------------------------------------------------------------------------------------

class Gradient:
    """Zennit's ``Gradient`` attributor on xaikernels' one-pass LRP.

    ``attributor(input, attr_output) -> (output, relevance)`` where ``relevance`` is the
    (rule-modified) vector–Jacobian product of ``attr_output`` — a tensor shaped like the output,
    or a callable of the output; None uses the output itself (Zennit's default).

    Parameters
    ----------
    model : nn.Module.
    composite : None (plain gradient), a preset name, an xaikernels :class:`Composite` or map, or a
        Zennit ``Composite``.
    attr_output : default output attribution (tensor or callable).
    canonizers : ``"auto"`` takes the composite's canonizers (Zennit semantics: none unless the
        composite has them); or an explicit list.
    backend : see :func:`xaikernels.lrp`.
    unsupported : ``"gradient"`` (default, Zennit's behaviour for modules without a rule) or ``"error"``.
    """

    def __init__(self, model: nn.Module, composite: Any = None, attr_output: Union[None, torch.Tensor, Callable] = None,
                 canonizers: Any = "auto", backend: str = "auto", unsupported: str = "gradient"):
        self.model = model
        self.composite = composite
        self.attr_output = attr_output
        self.canonizers = canonizers
        self.backend = backend
        self.unsupported = unsupported

    def __enter__(self) -> "Gradient":
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def __call__(self, input: torch.Tensor, attr_output: Union[None, torch.Tensor, Callable] = None):
        if not isinstance(input, torch.Tensor):  # the engine would take a tuple as several inputs
            raise TypeError(f"x must be a torch.Tensor, got {type(input).__name__}")
        spec = self.attr_output if attr_output is None else attr_output

        def grad_out(out):
            if spec is None:
                return out.detach()
            g = spec(out.detach()) if callable(spec) else spec
            g = torch.as_tensor(g, dtype=out.dtype, device=out.device)
            if g.shape != out.shape:
                try:
                    g = g.expand(out.shape)
                except RuntimeError:
                    raise ValueError(f"attr_output of shape {tuple(g.shape)} does not match the model output "
                                     f"{tuple(out.shape)}") from None
            return g

        if self.composite is None:
            comp = Composite([], name="gradient")
            canon = [] if self.canonizers == "auto" else self.canonizers
            res = _lrp.run_lrp(self.model, input, grad_out, composite=comp, canonizers=canon, backend=self.backend,
                               unsupported="gradient", check_mode=False)
        else:
            res = _lrp.run_lrp(self.model, input, grad_out, composite=self.composite, canonizers=self.canonizers,
                               backend=self.backend,
                               unsupported=self.unsupported, check_mode=False)
        return res.output, res.relevance
