"""Reference Grad-CAM reduction (pure torch), the oracle for the C++/CUDA/Triton kernels.

    w[n,c] = mean_s G[n,c,s];   out[n,s] = act(sum_c w[n,c] A[n,c,s])

Computed in opmath (float32 for half/bfloat16/float32, float64 for float64), stored in the
input dtype.
"""
from __future__ import annotations

from typing import Tuple

import torch


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def grad_cam(acts: torch.Tensor, grads: torch.Tensor, relu: bool) -> torch.Tensor:
    acc = _opmath(acts.dtype)
    w = grads.to(acc).mean(dim=2, keepdim=True)
    out = (w * acts.to(acc)).sum(dim=1)
    if relu:
        out = out.clamp_min(0)
    return out.to(acts.dtype)


def grad_cam_backward(
    grad_out: torch.Tensor, acts: torch.Tensor, grads: torch.Tensor, out: torch.Tensor, relu: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    acc = _opmath(acts.dtype)
    g = grad_out.to(acc)
    if relu:
        g = g * (out.to(acc) > 0)
    g = g.unsqueeze(1)  # (N, 1, S)
    w = grads.to(acc).mean(dim=2, keepdim=True)
    d_acts = w * g
    d_grads = (g * acts.to(acc)).mean(dim=2, keepdim=True).expand_as(grads)
    return d_acts.to(acts.dtype), d_grads.to(grads.dtype).contiguous()
