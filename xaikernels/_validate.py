"""Input validation shared by every method: clear errors before any work is done."""
from __future__ import annotations

import difflib
import warnings
from typing import Optional, Sequence, Union

import torch
from torch import nn

TargetLike = Union[None, int, Sequence[int], torch.Tensor]


def check_input(x: torch.Tensor, name: str = "x", min_dim: int = 2, max_dim: Optional[int] = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (got dtype {x.dtype}); gradients are not defined "
            f"for integer or bool inputs — convert with {name}.float()"
        )
    if x.dim() < min_dim or (max_dim is not None and x.dim() > max_dim):
        want = f"{min_dim}" if max_dim == min_dim else f">= {min_dim}" if max_dim is None else f"{min_dim}..{max_dim}"
        raise ValueError(
            f"{name} must be batched with rank {want} (N, ...), got shape {tuple(x.shape)}; "
            f"add a batch dimension with {name}.unsqueeze(0)"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch dimension")
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")


def check_output(out) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"the model must return a single tensor of class scores (N, classes); got {type(out).__name__}. "
            "Wrap the model to select the output to explain."
        )
    if out.dim() == 1:
        out = out.unsqueeze(1)
    if out.dim() != 2:
        raise ValueError(f"the model output must be (N, classes), got shape {tuple(out.shape)}")
    return out


def resolve_target(target: TargetLike, out: torch.Tensor) -> torch.Tensor:
    """Per-example class indices (N,) on ``out.device``; None means the predicted class."""
    n, k = out.shape
    if target is None:
        return out.detach().argmax(dim=1)
    if isinstance(target, bool):
        raise TypeError("target must be an int, a sequence of ints or an integer tensor, not bool")
    if isinstance(target, int):
        t = torch.full((n,), target, dtype=torch.long, device=out.device)
    elif isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
            raise TypeError(f"target tensor must have an integer dtype, got {target.dtype}")
        t = target.to(device=out.device, dtype=torch.long).reshape(-1)
        if t.numel() == 1:
            t = t.expand(n)
    else:
        try:
            vals = list(target)
        except TypeError:
            raise TypeError(f"target must be an int, a sequence of ints or a tensor, got {type(target).__name__}") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            raise TypeError("target sequence must contain ints only")
        t = torch.tensor(vals, dtype=torch.long, device=out.device)
    if t.numel() != n:
        raise ValueError(f"target has {t.numel()} entries but the batch has {n} examples")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
        raise IndexError(f"target out of range: model has {k} outputs, got targets {t.tolist()[:8]}")
    return t


_TRAIN_SENSITIVE = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def check_mode(model: nn.Module) -> None:
    """Error when train mode would change results; warn otherwise."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(m.training for m in model.modules()):
        return
    sensitive = [name or "<root>" for name, m in model.named_modules()
                 if m.training and isinstance(m, _TRAIN_SENSITIVE)]
    if sensitive:
        raise ValueError(
            f"the model is (partly) in train mode and has {len(sensitive)} BatchNorm/Dropout module(s) "
            f"(e.g. {sensitive[0]!r}) whose train-mode behaviour makes attributions batch-dependent or "
            "random (and would update BatchNorm running statistics); call model.eval() first"
        )
    warnings.warn("the model (or a submodule) is in train mode; attributions are computed as-is (call model.eval() "
                  "if it has train-dependent layers)", UserWarning, stacklevel=3)


def find_layer(model: nn.Module, layer: Union[str, nn.Module]) -> nn.Module:
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")
        return layer
    if not isinstance(layer, str):
        raise TypeError(f"layer must be an nn.Module or a dotted module name, got {type(layer).__name__}")
    named = dict(model.named_modules())
    if layer in named:
        return named[layer]
    close = difflib.get_close_matches(layer, [n for n in named if n], n=5)
    hint = f"; did you mean {close}?" if close else ""
    raise ValueError(f"the model has no layer named {layer!r}{hint}")
