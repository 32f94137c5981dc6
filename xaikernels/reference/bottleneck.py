"""Reference information-bottleneck layer (pure torch), the oracle for the fused kernel.

For features x (N, C, S), noise fractions alpha (N, 1, S) or (N, C, S) in [0, 1], standard
normal noise n (N, C, S) and the layer's statistics mu, std (C, S):

    eps = mu + std * n                          (noise with the layer's statistics)
    z   = alpha * eps + (1 - alpha) * x         (the bottleneck's output x')
    kl[n, s] = sum_c KL( N((1-a) r + a mu, (a std)^2) || N(mu, std^2) )
             = sum_c 0.5 * (a^2 + ((1 - a) r)^2 - 1) - log a,     r = (x - mu) / std,  a = max(alpha, eps_kl)

``kl`` is the per-location upper bound on the information that passes the bottleneck (nats,
summed over channels).  ``a`` is floored at ``eps_kl`` in the KL only: no noise carries infinite
information.  Gradients flow to x and alpha; mu, std and the noise are constants.
Computed in opmath (float32 for half/bfloat16/float32, float64 for float64).
"""
from __future__ import annotations

from typing import Tuple

import torch


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def info_bottleneck(
    x: torch.Tensor, alpha: torch.Tensor, noise: torch.Tensor, mu: torch.Tensor, std: torch.Tensor,
    eps: float = 1e-6,
) -> Tuple[torch.Tensor, torch.Tensor]:
    acc = _opmath(x.dtype)
    xa, al, nz, m0, s0 = (t.to(acc) for t in (x, alpha, noise, mu, std))
    z = al * (m0 + s0 * nz) + (1 - al) * xa
    a = al.clamp_min(eps)
    m = (1 - a) * (xa - m0) / s0
    kl = (0.5 * (a * a + m * m - 1) - torch.log(a)).expand_as(xa).sum(dim=1)
    return z.to(x.dtype), kl.to(x.dtype)


def info_bottleneck_backward(
    grad_z: torch.Tensor, grad_kl: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, noise: torch.Tensor,
    mu: torch.Tensor, std: torch.Tensor, eps: float = 1e-6,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Closed form: dz/dx = 1 - alpha, dz/dalpha = eps - x, dKL/dx = (1-a) m / std,
    dKL/da = a - m r - 1/a (zero where alpha < eps_kl); summed over channels for a broadcast alpha."""
    acc = _opmath(x.dtype)
    xa, al, nz, m0, s0 = (t.to(acc) for t in (x, alpha, noise, mu, std))
    gz, gk = grad_z.to(acc), grad_kl.to(acc).unsqueeze(1)
    a = al.clamp_min(eps)
    r = (xa - m0) / s0
    m = (1 - a) * r
    dx = gz * (1 - al) + gk * (1 - a) * m / s0
    dkl_da = torch.where(al >= eps, a - m * r - 1 / a, torch.zeros_like(a))
    dal = gz * (m0 + s0 * nz - xa) + gk * dkl_da
    if alpha.shape[1] == 1 and x.shape[1] != 1:
        dal = dal.sum(dim=1, keepdim=True)
    return dx.to(x.dtype), dal.to(alpha.dtype)
