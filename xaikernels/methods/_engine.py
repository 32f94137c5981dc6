"""One forward, one backward: the gradient engine every gradient-family method runs on.

Activation rules (guided backprop, deconvnet) are attached for the duration of one call and
removed by :class:`~xaikernels._model_guard.ModelGuard`.  Guided backprop needs no extra
forward work: a tensor hook on each activation's output clamps the incoming gradient at zero
and the activation's own backward then applies its usual mask.  Deconvnet must skip that mask,
so its activations are re-routed through :class:`_PositiveGrad`.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from xaikernels._model_guard import ModelGuard


class _PositiveGrad(torch.autograd.Function):
    """Deconvnet rule: forward = the activation's output, backward = relu(grad) to its input."""

    @staticmethod
    def forward(ctx, inp, out):
        return out.detach().clone() if out.data_ptr() == inp.data_ptr() else out.detach()

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0), None


class ActivationRule:
    """Switchable gradient rule on activation modules: ``None`` (plain), "guided", "deconv"."""

    def __init__(self, guard: ModelGuard, model: nn.Module, kind: Optional[str],
                 types: Tuple[Type[nn.Module], ...] = (nn.ReLU,)):
        self.kind = kind
        self.enabled = True
        self.count = 0
        if kind is None:
            return
        if kind not in ("guided", "deconv"):
            raise ValueError(f"unknown activation rule {kind!r}")
        for m in model.modules():
            if isinstance(m, types):
                self.count += 1
                if kind == "deconv" and getattr(m, "inplace", False):
                    # Deconvnet needs the pre-activation untouched; in-place would overwrite it
                    # and chain the activation's masked backward in front of ours.
                    guard.set_attr(m, "inplace", False)
                m.register_forward_hook(self._guided_hook if kind == "guided" else self._deconv_hook)

    def _clamp(self, grad):
        return grad.clamp(min=0) if self.enabled else grad

    def _guided_hook(self, module, inputs, output):
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(self._clamp)
        return None

    def _deconv_hook(self, module, inputs, output):
        inp = inputs[0] if inputs else None
        if not (isinstance(output, torch.Tensor) and isinstance(inp, torch.Tensor) and inp.requires_grad):
            return None
        return _PositiveGrad.apply(inp, output)


def run_forward(model: nn.Module, x: torch.Tensor, forward_args: Sequence = ()) -> torch.Tensor:
    return model(x, *forward_args)


class LayerCapture:
    """Record a layer's output (or input) during the forward pass.

    The recorded tensor is handed to the rest of the model as a copy, so an in-place op after
    the layer (``ReLU(inplace=True)`` right after a conv) cannot overwrite the activations or
    reroute their gradient.  (For ``to_input`` the layer itself may still modify its input in
    place; the input is recorded before the layer runs.)"""

    def __init__(self, layer: nn.Module, to_input: bool = False, name: str = "layer"):
        self.value: Optional[torch.Tensor] = None
        self.calls = 0
        self.name = name
        self.to_input = to_input
        layer.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls += 1
        val = inputs[0] if self.to_input else output
        if not isinstance(val, torch.Tensor):
            raise TypeError(f"layer {self.name!r} {'input' if self.to_input else 'output'} is a "
                            f"{type(val).__name__}, a tensor is required")
        self.value = val
        if not self.to_input:
            return output.clone()
        return None

    def get(self) -> torch.Tensor:
        if self.calls == 0 or self.value is None:
            raise RuntimeError(f"layer {self.name!r} was not called during the forward pass")
        if self.calls > 1:
            raise ValueError(f"layer {self.name!r} ran {self.calls} times in one forward pass; its map is "
                             "ambiguous — choose a layer that runs once")
        return self.value


def target_score(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each example's target logit (examples are independent in eval)."""
    return out.gather(1, target.unsqueeze(1)).sum()


GradFn = Callable[[torch.Tensor], torch.Tensor]
