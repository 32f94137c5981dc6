"""Reference InfoNCE logsumexp (pure torch, materialised), the oracle for the fused kernels.

For locals X (N, K, D) and globals Y (N, D), with scores over the flattened locals
``s[i, (m, k)] = <X[m, k], Y[i]> / tau`` (an N x N*K matrix, built in full here):

- ``self_pair="include"`` (the formula of the issue): ``lse[i] = logsumexp_{m,k} s[i, (m, k)]``
  and ``terms[i, k] = s[i, (i, k)] - lse[i]``.
- ``exclude_self=True`` (Deep InfoMax's NCE): each positive is contrasted with the locals of
  the *other* samples only, ``lse[i] = logsumexp_{m != i, k} s[i, (m, k)]`` and
  ``terms[i, k] = s[i, (i, k)] - logaddexp(s[i, (i, k)], lse[i])``.

Computed in opmath (float32 for half/bfloat16/float32, float64 for float64); ``terms`` is
returned in the input dtype, ``lse`` in opmath (the backward recomputes probabilities from it,
so it is kept at full accumulator precision).
"""
from __future__ import annotations

from typing import Tuple

import torch


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def scores(x: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """The full (N, N*K) score matrix in opmath."""
    acc = _opmath(x.dtype)
    n, k, d = x.shape
    return (y.to(acc) @ x.to(acc).reshape(n * k, d).t()) / temperature


def infonce_lse(
    x: torch.Tensor, y: torch.Tensor, temperature: float, exclude_self: bool,
    block_rows: int = 0, block_cols: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Materialised forward; ``block_rows``/``block_cols`` are accepted for signature parity only."""
    n, k, _ = x.shape
    s = scores(x, y, temperature)
    s3 = s.view(n, n, k)
    idx = torch.arange(n, device=x.device)
    pos = s3[idx, idx]  # (N, K)
    if exclude_self:
        own = torch.eye(n, dtype=torch.bool, device=x.device).unsqueeze(2).expand(n, n, k)
        lse = torch.logsumexp(s3.masked_fill(own, float("-inf")).reshape(n, n * k), dim=1)
        terms = pos - torch.logaddexp(pos, lse.unsqueeze(1))
    else:
        lse = torch.logsumexp(s, dim=1)
        # <= 0 mathematically; the clamp removes rounding (same contract as the fused kernel).
        terms = (pos - lse.unsqueeze(1)).clamp_max(0)
    return terms.to(x.dtype), lse


def infonce_lse_backward(
    grad_terms: torch.Tensor, grad_lse: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
    lse: torch.Tensor, temperature: float, exclude_self: bool,
    block_rows: int = 0, block_cols: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Closed-form materialised backward.

    With ``c[i, k]`` the gradient reaching the positive score (``grad_terms`` itself, or
    ``grad_terms * sigmoid(lse - s_pos)`` without self pairs) and ``g[i] = grad_lse[i] -
    sum_k c[i, k]``, the gradient of the scores is
    ``ds[i, j] = g[i] * exp(s[i, j] - lse[i]) * allowed[i, j] + [j in block i] * c[i, j - iK]``;
    then ``dX = ds^T Y / tau`` and ``dY = ds X / tau``.
    """
    acc = _opmath(x.dtype)
    n, k, d = x.shape
    s = scores(x, y, temperature)
    s3 = s.view(n, n, k)
    idx = torch.arange(n, device=x.device)
    pos = s3[idx, idx]
    gt = grad_terms.to(acc)
    lse = lse.to(acc)
    if exclude_self:
        c = gt * torch.sigmoid(lse.unsqueeze(1) - pos)
    else:
        c = gt
    g = grad_lse.to(acc) - c.sum(dim=1)
    p3 = torch.exp(s3 - lse.view(n, 1, 1)) * g.view(n, 1, 1)
    if exclude_self:
        p3 = p3 * (1 - torch.eye(n, dtype=acc, device=x.device)).unsqueeze(2)
    p3 = p3.clone()
    p3[idx, idx] += c
    ds = p3.reshape(n, n * k)
    xf = x.to(acc).reshape(n * k, d)
    dx = (ds.t() @ y.to(acc)) / temperature
    dy = (ds @ xf) / temperature
    return dx.reshape(n, k, d).to(x.dtype), dy.to(y.dtype)
