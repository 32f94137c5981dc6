"""Captum drop-ins running on xaikernels' engine.

Swap ``from captum.attr import Saliency`` for ``from xaikernels.captum import Saliency``:
constructors, ``attribute`` signatures and defaults, return types (a tensor for a tensor
input, a tuple for a tuple input), target forms, warnings and errors follow Captum 0.9.0.
Captum itself is not needed at run time.

Classes: :class:`Saliency`, :class:`InputXGradient`, :class:`GuidedBackprop`,
:class:`Deconvolution`, :class:`LayerGradCam`, :class:`GuidedGradCam`,
:class:`LRP`, :class:`Lime`, :class:`KernelShap`,
:class:`IntegratedGradients`, :class:`NoiseTunnel`, :class:`GradientShap` (streamed: path and
noise rows are generated chunk by chunk and folded into fp32 running sums; the same seeds
give Captum's numbers), and the base classes
:class:`Attribution`, :class:`GradientAttribution`, :class:`PerturbationAttribution`,
:class:`InternalAttribution`, :class:`LayerAttribution`, :class:`NeuronAttribution`.

Shared plumbing for new methods lives in :mod:`xaikernels.captum._common` (input, target,
forward and layer-capture rules) and :mod:`xaikernels.captum._base` (the class hierarchy).
"""
from xaikernels.captum._base import (
    Attribution,
    GradientAttribution,
    InternalAttribution,
    LayerAttribution,
    NeuronAttribution,
    PerturbationAttribution,
)
from xaikernels.captum._grad_cam import GuidedGradCam, LayerGradCam
from xaikernels.captum._gradient_shap import GradientShap
from xaikernels.captum._gradient import (
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    ModifiedReluGradientAttribution,
    Saliency,
)
from xaikernels.captum._integrated import IntegratedGradients
from xaikernels.captum._noise_tunnel import NoiseTunnel
from xaikernels.captum._lime import KernelShap, Lime, LimeBase
from xaikernels.captum._lrp import (
    LRP,
    Alpha1_Beta0_Rule,
    EpsilonRule,
    GammaRule,
    IdentityRule,
    PropagationRule,
)

__all__ = [
    "Attribution",
    "Deconvolution",
    "GradientAttribution",
    "GradientShap",
    "GuidedBackprop",
    "GuidedGradCam",
    "InputXGradient",
    "IntegratedGradients",
    "KernelShap",
    "LRP",
    "Alpha1_Beta0_Rule",
    "EpsilonRule",
    "GammaRule",
    "IdentityRule",
    "PropagationRule",
    "Lime",
    "LimeBase",
    "InternalAttribution",
    "LayerAttribution",
    "LayerGradCam",
    "ModifiedReluGradientAttribution",
    "NeuronAttribution",
    "NoiseTunnel",
    "PerturbationAttribution",
    "Saliency",
]
