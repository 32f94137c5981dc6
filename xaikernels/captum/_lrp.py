"""Captum-API ``LRP`` on xaikernels' one-pass LRP (re-exported as ``xaikernels.captum.LRP``).

Same call, numbers, errors and warnings as ``captum.attr.LRP`` (Captum 0.9.0):

* Rules come from a ``module.rule`` attribute on the model's leaf modules — Captum's
  ``EpsilonRule``, ``GammaRule``, ``Alpha1_Beta0_Rule``, ``IdentityRule`` (from Captum or the
  look-alikes exported here), subclasses of them that do not change how relevance propagates, or
  an :mod:`xaikernels.methods.lrp` rule — else Captum's defaults by exact type: the ε rule
  (ε = 1e-9) on ``Conv2d``, ``Linear``, ``BatchNorm2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``,
  ``MaxPool1d/2d/3d`` and ``Addition_Module``; pass-through on ``ReLU``, ``Dropout``, ``Tanh``.
  Captum's γ and α1β0 are ε-rules with modified weights (``W + γW⁺`` and ``W⁺``, bias kept unless
  ``set_bias_to_zero``), unlike Zennit's generalised forms; they are reproduced as such.  The ε
  rule on a layer without weights is ``x ⊙ Jᵀ(R / s(z))``; ``IdentityRule`` hands the output
  relevance to the input unchanged.
* ``LRP(model)`` raises ``TypeError`` for a ``rule`` attribute that is not a propagation rule;
  ``attribute`` raises ``TypeError`` for a leaf module without a rule and without a default —
  whether or not it runs — before it looks at the inputs or the target.
* Inputs: a tensor or a tuple of tensors (tuple in, tuple out; relevance crosses operations
  written in ``forward`` as the gradient, so each input gets the relevance that reaches it).
  Output: any shape; ``target`` selects as in Captum (``_select_targets``), and the selected
  output must be one value per example.  The attribution is the relevance of the selected score
  (``Σ relevance ≈ score``; Captum's convention), ``return_convergence_delta`` gives
  ``score − Σ relevance`` per example, ``verbose`` prints the rule of each layer.
* A layer with a rule that runs twice in one forward raises ``RuntimeError``, as in Captum.
  Captum's hook-order effect in runs of ``ReLU``/``Dropout``/``Tanh`` layers (every second one
  propagates the gradient) is reproduced.

The model is handed back exactly as it came — also after an error: parameters, hooks, flags and
the ``rule`` attributes are as before (Captum deletes every leaf's ``rule`` after a call and
leaves an ``activations`` dict on each layer; here the rules stay and nothing is added).  The
caller's input tensors are never modified (Captum flips ``requires_grad`` and, after an error,
leaves it set); the relevance is returned detached (Captum's carries a ``grad_fn``).

Known differences: a tensor that feeds a rule layer *and* something else (an addition written
inline, ``x + self.block(x)``): Captum multiplies the relevance arriving from the other consumer
by the tensor too (its input hook sees the summed gradient); here each consumer's relevance is
added as it comes.  A Captum rule subclass that overrides how it propagates
(``_manipulate_weights``, its hooks) has no equivalent here (``TypeError``).

Beyond Captum: ``Flatten``, ``Unflatten``, ``Identity`` and :class:`~xaikernels.methods.lrp.ResidualSum`
leaves work without a rule (relevance crosses the first three as the gradient, the norm rule
splits the sum), and residual networks work: the default canonizer routes torchvision ResNet-block
additions through the norm rule (``canonizers=None``: the addition copies the relevance into
both branches, as a plain gradient).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from xaikernels.captum import _common as C
from xaikernels.captum._base import GradientAttribution
from xaikernels.methods import lrp as _lrp
from xaikernels.methods.lrp import Epsilon, Gradient, Norm, Rule, _CaptumActivation, _ModifiedEpsilon, _PassLayer

_EPS_DEFAULT = 1e-9

# Captum 0.9.0's SUPPORTED_LAYERS_WITH_RULES (all EpsilonRule; plus its Addition_Module, by name)
# and SUPPORTED_NON_LINEAR_LAYERS, matched by exact type as Captum does.
_RULE_TYPES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Conv2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
               nn.Linear, nn.BatchNorm2d)
_NON_LINEAR_TYPES = (nn.ReLU, nn.Dropout, nn.Tanh)
# Beyond Captum: pure reshaping leaves, relevance crosses them as the gradient.
_ROUTING_TYPES = (nn.Flatten, nn.Unflatten, nn.Identity)
_WEIGHTED = _lrp.LINEAR_TYPES + _lrp.BATCHNORM_TYPES


def _is_addition(module: nn.Module) -> bool:
    return type(module).__name__ == "Addition_Module"


# ---------------------------------------------------------------------------------------------
# Rule classes (Captum's captum.attr._utils.lrp_rules, for use without Captum installed)
# ---------------------------------------------------------------------------------------------

class PropagationRule(ABC):
    """Base class of the propagation rules (Captum's ``PropagationRule``).

    ``STABILITY_FACTOR`` is the ε of the stabiliser ``z + ε·sign(z)``.  Set an instance as
    ``module.rule`` on a leaf module before calling :meth:`LRP.attribute`.
    """

    relevance_input: Dict[torch.device, Any] = {}
    relevance_output: Dict[torch.device, Tensor] = {}

    STABILITY_FACTOR = 1e-9

    @abstractmethod
    def _manipulate_weights(self, module, inputs, outputs):
        raise NotImplementedError


class EpsilonRule(PropagationRule):
    """ε rule: ``R_i = Σ_j x_i w_ji / (z_j + ε·sign(z_j)) R_j``.  For middle layers.

    Args:
        epsilon (float): the stabiliser ε.  Default 1e-9.
    """

    def __init__(self, epsilon: float = 1e-9) -> None:
        self.STABILITY_FACTOR = epsilon

    def _manipulate_weights(self, module, inputs, outputs) -> None:
        pass


class GammaRule(PropagationRule):
    """γ rule, Captum's form: the ε rule (ε = 1e-9) propagated with weights ``W + γW⁺``.
    For lower layers.

    Args:
        gamma (float): how much the positive weights are boosted.  Default 0.25.
        set_bias_to_zero (bool): propagate without the bias.  Default False.
    """

    def __init__(self, gamma: float = 0.25, set_bias_to_zero: bool = False) -> None:
        self.gamma = gamma
        self.set_bias_to_zero = set_bias_to_zero

    def _manipulate_weights(self, module, inputs, outputs) -> None:
        if hasattr(module, "weight"):
            module.weight.data = module.weight.data + self.gamma * module.weight.data.clamp(min=0)
        if self.set_bias_to_zero and hasattr(module, "bias"):
            if module.bias is not None:
                module.bias.data = torch.zeros_like(module.bias.data)


class Alpha1_Beta0_Rule(PropagationRule):
    """α1β0 rule, Captum's form: the ε rule (ε = 1e-9) propagated with weights ``W⁺``.

    Args:
        set_bias_to_zero (bool): propagate without the bias.  Default False.
    """

    def __init__(self, set_bias_to_zero: bool = False) -> None:
        self.set_bias_to_zero = set_bias_to_zero

    def _manipulate_weights(self, module, inputs, outputs) -> None:
        if hasattr(module, "weight"):
            module.weight.data = module.weight.data.clamp(min=0)
        if self.set_bias_to_zero and hasattr(module, "bias"):
            if module.bias is not None:
                module.bias.data = torch.zeros_like(module.bias.data)


class IdentityRule(EpsilonRule):
    """Identity rule: the layer's output relevance is handed to its input unchanged (input and
    output must have the same shape).  Can be used for BatchNorm2d."""


_RULE_MODULES = ("captum.attr._utils.lrp_rules", __name__)
_RULE_NAMES = ("EpsilonRule", "GammaRule", "Alpha1_Beta0_Rule", "IdentityRule")
# methods whose override changes how a Captum rule propagates (then it has no equivalent here)
_PROPAGATION_METHODS = ("_manipulate_weights", "_create_backward_hook_input", "_create_backward_hook_output",
                        "forward_hook", "forward_hook_weights", "forward_pre_hook_activations",
                        "backward_hook_activation")


def _is_propagation_rule(rule: Any) -> bool:
    return any(c.__name__ == "PropagationRule" and c.__module__ in _RULE_MODULES for c in type(rule).__mro__)


def _rule_kind(rule: Any) -> Optional[str]:
    """The Captum rule ``rule`` is (or subclasses without changing the propagation), else None."""
    for c in type(rule).__mro__:
        if c.__name__ in _RULE_NAMES and c.__module__ in _RULE_MODULES:
            return c.__name__
        if any(meth in c.__dict__ for meth in _PROPAGATION_METHODS):
            return None
    return None


def _convert(rule: Any, module: nn.Module) -> Rule:
    """The engine rule for a Captum rule on ``module`` (a leaf that has ``rule`` set)."""
    if isinstance(rule, Rule):
        return rule
    kind = _rule_kind(rule)
    if kind is None:
        raise TypeError(f"rule {rule!r} on {type(module).__name__} has no xaikernels equivalent: Captum's "
                        "EpsilonRule, GammaRule, Alpha1_Beta0_Rule, IdentityRule (or subclasses that do not "
                        "change how relevance propagates) and xaikernels rules are supported")
    if type(module) in _NON_LINEAR_TYPES:  # Captum passes relevance through these whatever the rule
        return _CaptumActivation()
    if kind == "IdentityRule":
        return _PassLayer()
    eps = float(getattr(rule, "STABILITY_FACTOR", _EPS_DEFAULT))
    if isinstance(module, _WEIGHTED):
        if kind == "EpsilonRule":
            return Epsilon(eps)
        zero_bias = bool(getattr(rule, "set_bias_to_zero", False))
        if kind == "GammaRule":
            return _ModifiedEpsilon(eps, "gamma", float(rule.gamma), zero_bias)
        return _ModifiedEpsilon(eps, "positive", 0.0, zero_bias)
    if kind != "EpsilonRule" and getattr(module, "weight", None) is not None:
        raise TypeError(f"{kind} on {type(module).__name__}: modified weights are supported on linear, "
                        "convolution and BatchNorm layers only")
    # A layer without a linear map: the ε rule through its own forward, R_in = x ⊙ Jᵀ(R / s(z))
    # (max pooling: the winner; average pooling: the norm rule; Addition_Module: split by summand).
    return Norm(eps)


def _no_rule_error(layer: nn.Module) -> TypeError:
    return TypeError(
        f"Module of type {type(layer)} has no rule defined and no"
        "default rule exists for this module type. Please, set a rule"
        "explicitly for this module and assure that it is appropriate"
        "for this type of layer."
    )


class _LeafComposite:
    """The rules planned for one call, by module identity; everything else is the gradient."""

    canonizers = None

    def __init__(self, rules: Dict[int, Rule]):
        self.rules = rules

    def rule_for(self, ctx: dict, name: str, module: nn.Module) -> Optional[Rule]:
        rule = self.rules.get(id(module))
        if rule is not None:
            return rule
        if isinstance(module, _lrp.ResidualSum):  # a canonizer's virtual sum
            return Norm(_EPS_DEFAULT)
        return Gradient()

    def __repr__(self):
        return "captum LRP rules"


def _once_hook(seen: Dict[int, set]):
    """Captum's check: a layer with a rule may run once per forward (per device)."""

    def hook(module, inputs, outputs):
        device = inputs[0].device if isinstance(inputs, tuple) else inputs.device
        devices = seen.setdefault(id(module), set())
        if device in devices:
            raise RuntimeError(
                "Module {} is being used more than once in the network, which "
                "is not supported by LRP. "
                "Please ensure that module is being used only once in the "
                "network.".format(module)
            )
        devices.add(device)
    return hook


class LRP(GradientAttribution):
    r"""Captum's ``LRP`` interface: ``LRP(model).attribute(inputs, target, ...)``.

    ``R = f_t(x) · LRP(∂f_t/∂output)`` with each layer's rule as in Captum (module docstring).
    Bach et al. 2015, "On Pixel-Wise Explanations ... by Layer-Wise Relevance Propagation".

    Args:
        model (nn.Module): the model.  Custom rules for a leaf layer are set as ``layer.rule``
            (a ``PropagationRule`` or an :mod:`xaikernels.methods.lrp` rule); ``TypeError``
            here for anything else.
        canonizers: ``("residual",)`` (default: torchvision ResNet blocks' additions by the norm
            rule), None (no canonizer: every addition written inline propagates the gradient),
            ``"auto"`` or a list (see :func:`xaikernels.lrp`).
        backend: see :func:`xaikernels.lrp`.
    """

    verbose: bool = False
    layers: List[nn.Module] = []

    def __init__(self, model: nn.Module, *, canonizers: Any = ("residual",), backend: str = "auto") -> None:
        GradientAttribution.__init__(self, model)
        self.model = model
        self.canonizers = list(canonizers) if isinstance(canonizers, tuple) else canonizers
        self.backend = backend
        self._check_rules()

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return True

    def attribute_future(self) -> None:
        r"""This method is not implemented for LRP."""
        raise NotImplementedError("attribute_future is not implemented for LRP")

    @C.entry
    def attribute(self, inputs: Union[Tensor, Tuple[Tensor, ...]], target: C.TargetType = None,
                  additional_forward_args: Any = None, return_convergence_delta: bool = False,
                  verbose: bool = False):
        r"""Relevance of each input feature for the selected output.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): input(s) of the model, dimension 0 the examples.
            target (int, tuple, Tensor, or list, optional): output indices (Captum's forms).
                Default: None (the output itself, which must then be one value per example).
            additional_forward_args (optional): further arguments of the model, after the inputs.
            return_convergence_delta (bool, optional): also return ``score − Σ relevance``
                per example.  Default: False.
            verbose (bool, optional): print the rule applied to each layer.  Default: False.

        Returns:
            Relevance shaped like ``inputs`` (a tensor, or a tuple for a tuple), summing to about
            the selected score; with ``return_convergence_delta``, ``(relevance, delta)`` with
            ``delta`` of shape (N,).
        """
        self.verbose = verbose
        self.layers = []
        self._get_layers(self.model)
        rules, shown, once = self._check_and_attach_rules()

        is_inputs_tuple = C._is_tuple(inputs)
        input_tuple = C._format_tensor_into_tuples(inputs)
        _, messages = C._grad_leaves(input_tuple)
        C._emit(messages)
        fargs = C._format_additional_forward_args(additional_forward_args) or ()
        state: Dict[str, Tensor] = {}

        def grad_out(out: Tensor) -> Tensor:
            # Captum: the selected output, then (second pass) its gradient, one value per example.
            od = out.detach().requires_grad_(True)
            with torch.enable_grad():
                sel = C._select_targets(od, target)
            state["output"] = sel.detach()
            if verbose:
                for layer, rule in shown:
                    print(f"Applied {rule} on layer {layer}")
            C._check_scalar_per_example(sel)
            (g,) = torch.autograd.grad(sel, od, torch.ones_like(sel))  # = Captum's unbind: one root
            return g

        handles = []
        try:
            hook = _once_hook({})
            for layer in once:
                handles.append(layer.register_forward_hook(hook))
            res = _lrp.run_lrp(self.model, input_tuple, grad_out, composite=_LeafComposite(rules),
                               canonizers=self.canonizers or None, backend=self.backend, unsupported="gradient",
                               forward_args=fargs, check_mode=False, check_input=False)
        finally:
            for h in handles:
                h.remove()
        output = state["output"]
        relevances = tuple(r * output.reshape((-1,) + (1,) * (r.dim() - 1)) for r in res.relevance)
        if return_convergence_delta:
            return C._format_output(is_inputs_tuple, relevances), self.compute_convergence_delta(relevances, output)
        return C._format_output(is_inputs_tuple, relevances)

    def compute_convergence_delta(self, attributions: Union[Tensor, Tuple[Tensor, ...]], output: Tensor) -> Tensor:
        """Relevance conservation gap: ``output − Σ attributions`` per example (Captum's LRP form).

        Args:
            attributions (Tensor or tuple[Tensor, ...]): attributions, dimension 0 the examples.
            output (Tensor): the selected output score per example.

        Returns:
            Tensor of ``output.numel()`` elements.
        """
        if isinstance(attributions, tuple):
            summed_attr = sum(C._sum_rows(attr) for attr in attributions)
        else:
            summed_attr = C._sum_rows(attributions)
        return output.flatten() - summed_attr.flatten()

    # -- Captum's layer bookkeeping ------------------------------------------------------------

    def _get_layers(self, model: nn.Module) -> None:
        for layer in model.children():
            if len(list(layer.children())) == 0:
                self.layers.append(layer)
            else:
                self._get_layers(layer)

    def _check_rules(self) -> None:
        for module in self.model.modules():
            if hasattr(module, "rule"):
                rule = module.rule
                if not (rule is None or isinstance(rule, Rule) or _is_propagation_rule(rule)):
                    raise TypeError(
                        f"Please select propagation rules inherited from class "
                        f"PropagationRule for module: {module}"
                    )

    def _check_and_attach_rules(self) -> Tuple[Dict[int, Rule], List[Tuple[nn.Module, Any]], List[nn.Module]]:
        """Each leaf's engine rule (by id), the ``(layer, rule)`` pairs Captum reports with
        ``verbose``, and the layers Captum allows to run once only (those it gives a rule);
        Captum's errors for leaves it cannot handle.  Nothing is set on the model."""
        rules: Dict[int, Rule] = {}
        shown: List[Tuple[nn.Module, Any]] = []
        once: List[nn.Module] = []
        for layer in self.layers:
            t = type(layer)
            if hasattr(layer, "rule"):
                rule = layer.rule
                if rule is None:  # Captum sets attributes on the rule here
                    raise AttributeError("'NoneType' object has no attribute 'relevance_input'")
                rules[id(layer)] = _convert(rule, layer)
                once.append(layer)
            elif t in _RULE_TYPES or _is_addition(layer):
                rule = EpsilonRule()
                rules[id(layer)] = _convert(rule, layer)
                once.append(layer)
            elif t in _NON_LINEAR_TYPES:
                rules[id(layer)] = _CaptumActivation()
                continue
            elif t in _ROUTING_TYPES:
                rule = Gradient()
                rules[id(layer)] = rule
            elif isinstance(layer, _lrp.ResidualSum):
                rule = Norm(_EPS_DEFAULT)
                rules[id(layer)] = rule
            else:
                raise _no_rule_error(layer)
            if t not in _NON_LINEAR_TYPES:
                shown.append((layer, rule))
        return rules, shown, once
