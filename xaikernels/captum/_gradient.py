"""Captum drop-ins for the gradient family: Saliency, InputXGradient, GuidedBackprop,
Deconvolution.  Each is one forward and one backward pass."""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import Module

from xaikernels._model_guard import ModelGuard
from xaikernels.captum import _common as C
from xaikernels.captum._base import GradientAttribution

_HOOK_WARNING = ("Setting backward hooks on ReLU activations.The hooks will be removed after the "
                 "attribution is finished")


class ReluGradientRule:
    """Captum's guided-backprop / deconvnet rule on every ``nn.ReLU`` module of a model.

    Captum overrides the gradient at each ReLU's *input* tensor: with the total gradient
    ``g_in`` arriving there (after the ReLU's own mask, plus any other consumer of that
    tensor) and the gradient ``g_out`` at the ReLU's output,

        guided backprop:  g_in ← relu(g_in)          deconvnet:  g_in ← relu(g_out)

    and leaves ``g_in`` alone when the ReLU's output received no gradient.  This differs from
    a rule on the output side (``xaikernels.methods._engine.ActivationRule``) only when the
    ReLU's input also feeds another op, and there the drop-ins must give Captum's numbers.
    The cost is one elementwise op per ReLU call in the backward pass; nothing is re-run.

    In-place ReLUs are switched to out-of-place for the call (restored by the guard): Captum
    feeds each ReLU a clone, so the pre-activation tensor is never overwritten, and the
    input-side hook needs it intact.  ``enabled = False`` turns the rule into plain
    gradients, so one forward pass can serve a plain and a rule backward pass.
    """

    def __init__(self, guard: ModelGuard, model: Module, use_grad_output: bool):
        self.use_grad_output = use_grad_output
        self.enabled = True
        self.count = 0
        for m in model.modules():
            if isinstance(m, nn.ReLU):
                self.count += 1
                if m.inplace:
                    guard.set_attr(m, "inplace", False)
                m.register_forward_hook(self._module_hook())

    def _module_hook(self):
        # One gradient store per module, keyed by device (DataParallel replicas share hooks);
        # a module called twice uses its latest output gradient, as Captum's hooks do.
        grad_out: Dict[torch.device, Tensor] = {}

        def store(g: Tensor) -> None:
            if self.enabled:
                grad_out[g.device] = g

        def override(g: Tensor):
            if not self.enabled or not grad_out:
                return None
            return F.relu(grad_out[g.device] if self.use_grad_output else g)

        def hook(module, inputs, output):
            inp = inputs[0] if isinstance(inputs, tuple) and len(inputs) == 1 else None
            if (isinstance(inp, Tensor) and inp.requires_grad and isinstance(output, Tensor)
                    and output.requires_grad):
                output.register_hook(store)
                inp.register_hook(override)
            return None

        return hook


class Saliency(GradientAttribution):
    """Saliency (Simonyan et al. 2014): the gradient of the target output w.r.t. the inputs.

    Drop-in for ``captum.attr.Saliency``: same constructor, ``attribute`` signature, defaults
    and return types.  ``attributions = |∂F_target/∂x|`` (or the signed gradient).

    Parameters
    ----------
    forward_func : callable
        The model or any function returning (N,) or (N, ...) outputs.
    """

    def __init__(self, forward_func: Callable[..., Tensor]) -> None:
        GradientAttribution.__init__(self, forward_func)

    @C.entry
    def attribute(self, inputs, target: C.TargetType = None, abs: bool = True,
                  additional_forward_args: Any = None):
        """Gradients of the target output w.r.t. each input.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensors, each (N, ...).
        target : None | int | tuple | Tensor | list of ints | list of tuples
            Output index per example (Captum's forms).  None is valid only when the model
            returns one value per example; otherwise ``AssertionError``.
        abs : bool, default True
            Return the absolute value of the gradients.
        additional_forward_args : any, optional
            Extra arguments appended after the inputs (a non-tuple is passed as one argument).

        Returns
        -------
        Tensor (for a tensor input) or tuple of Tensors shaped like the inputs.
        """
        is_tuple = C._is_tuple(inputs)
        leaves, messages = C._grad_leaves(C._format_tensor_into_tuples(inputs))
        C._emit(messages)
        grads = self.gradient_func(self.forward_func, leaves, target, additional_forward_args)
        if abs:
            grads = tuple(torch.abs(g) for g in grads)
        return C._format_output(is_tuple, tuple(grads))

    def attribute_future(self) -> None:
        """Not implemented for Saliency (as in Captum)."""
        raise NotImplementedError("attribute_future is not implemented for Saliency")


class InputXGradient(GradientAttribution):
    """Input × gradient (Shrikumar et al. 2016): ``x ⊙ ∂F_target/∂x``.

    Drop-in for ``captum.attr.InputXGradient``; ``multiplies_by_inputs`` is True.

    Parameters
    ----------
    forward_func : callable
    """

    def __init__(self, forward_func: Callable[..., Tensor]) -> None:
        GradientAttribution.__init__(self, forward_func)

    @C.entry
    def attribute(self, inputs, target: C.TargetType = None, additional_forward_args: Any = None):
        """Input times the gradient of the target output, per input.

        Parameters
        ----------
        inputs, target, additional_forward_args : as for :meth:`Saliency.attribute`.

        Returns
        -------
        Tensor or tuple of Tensors shaped like the inputs.
        """
        is_tuple = C._is_tuple(inputs)
        inputs_t = C._format_tensor_into_tuples(inputs)
        leaves, messages = C._grad_leaves(inputs_t)
        C._emit(messages)
        grads = self.gradient_func(self.forward_func, leaves, target, additional_forward_args)
        return C._format_output(is_tuple, tuple(x * g for x, g in zip(inputs_t, grads)))

    def attribute_future(self) -> None:
        """Not implemented for InputXGradient (as in Captum)."""
        raise NotImplementedError("attribute_future is not implemented for InputXGradient")

    @property
    def multiplies_by_inputs(self) -> bool:
        return True


class ModifiedReluGradientAttribution(GradientAttribution):
    """Gradients with a modified backward rule at every ``nn.ReLU`` module.

    Base of :class:`GuidedBackprop` and :class:`Deconvolution`.  Functional ReLUs
    (``F.relu`` in ``forward``) cannot be hooked and keep their plain gradient, as in Captum.

    Parameters
    ----------
    model : nn.Module
    use_relu_grad_output : bool, default False
        False: ``relu`` of the gradient at the ReLU's input (guided backprop); True: ``relu``
        of the gradient at its output (deconvnet).
    """

    def __init__(self, model: Module, use_relu_grad_output: bool = False) -> None:
        GradientAttribution.__init__(self, model)
        self.model = model
        self.backward_hooks: list = []
        self.use_relu_grad_output = use_relu_grad_output
        assert isinstance(self.model, torch.nn.Module), (
            "Given model must be an instance of torch.nn.Module to properly hook"
            " ReLU layers.")

    @C.entry
    def attribute(self, inputs, target: C.TargetType = None, additional_forward_args: Any = None):
        """Gradients of the target output with the ReLU rule applied.

        The model is handed back unchanged (hooks, ``inplace`` flags, modes), also when the
        call raises.  Emits Captum's warning about setting backward hooks.

        Parameters
        ----------
        inputs, target, additional_forward_args : as for :meth:`Saliency.attribute`.

        Returns
        -------
        Tensor or tuple of Tensors shaped like the inputs.
        """
        is_tuple = C._is_tuple(inputs)
        leaves, messages = C._grad_leaves(C._format_tensor_into_tuples(inputs))
        C._emit(messages)
        C.warn(_HOOK_WARNING)
        with ModelGuard(self.model) as guard:
            ReluGradientRule(guard, self.model, self.use_relu_grad_output)
            grads = self.gradient_func(self.forward_func, leaves, target, additional_forward_args)
        return C._format_output(is_tuple, tuple(grads))

    def attribute_future(self) -> None:
        """Not implemented (as in Captum)."""
        raise NotImplementedError(
            "attribute_future is not implemented for ModifiedReluGradientAttribution")


class GuidedBackprop(ModifiedReluGradientAttribution):
    """Guided backpropagation (Springenberg et al. 2015).

    Drop-in for ``captum.attr.GuidedBackprop``: at every ``nn.ReLU`` only positive
    gradients pass backward, ``g_in ← relu(g_in)``.

    Parameters
    ----------
    model : nn.Module
    """

    def __init__(self, model: Module) -> None:
        ModifiedReluGradientAttribution.__init__(self, model, use_relu_grad_output=False)

    @C.entry
    def attribute(self, inputs, target: C.TargetType = None, additional_forward_args: Any = None):
        """Guided-backprop attributions; see :meth:`ModifiedReluGradientAttribution.attribute`."""
        return ModifiedReluGradientAttribution.attribute.__wrapped__(
            self, inputs, target, additional_forward_args)


class Deconvolution(ModifiedReluGradientAttribution):
    """Deconvnet (Zeiler & Fergus 2014).

    Drop-in for ``captum.attr.Deconvolution``: at every ``nn.ReLU`` the gradient passed to
    its input is ``relu`` of the gradient at its output, ignoring the forward mask.

    Parameters
    ----------
    model : nn.Module
    """

    def __init__(self, model: Module) -> None:
        ModifiedReluGradientAttribution.__init__(self, model, use_relu_grad_output=True)

    @C.entry
    def attribute(self, inputs, target: C.TargetType = None, additional_forward_args: Any = None):
        """Deconvnet attributions; see :meth:`ModifiedReluGradientAttribution.attribute`."""
        return ModifiedReluGradientAttribution.attribute.__wrapped__(
            self, inputs, target, additional_forward_args)


__all__: Tuple[str, ...] = ("Saliency", "InputXGradient", "ModifiedReluGradientAttribution",
                            "GuidedBackprop", "Deconvolution", "ReluGradientRule")
