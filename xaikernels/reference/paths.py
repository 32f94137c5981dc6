"""Reference twins of the path/noise generation and streaming accumulation ops (pure torch).

Rows of a path/noise batch are indexed by a flat counter ``p = j * N + n`` (sample or step ``j``,
example ``n``), so any chunking of ``p`` gives the same numbers.

Noise is counter-based: element ``m`` of row ``p`` is ``randn(seed, p * M + m)`` with Triton's
Philox4x32-10 (``tl.randn``: key = seed split in lo/hi words, counter = (offset lo, offset hi, 0,
0), Box–Muller on the first two words), so the Triton, Numba and reference backends draw the
same noise for the same seed.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

_M32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57


def _mulhilo(a: int, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    # b < 2**32 and a < 2**32: split a into 16-bit halves so every partial product fits int64.
    a_hi, a_lo = a >> 16, a & 0xFFFF
    lo_part = b * a_lo
    hi_part = b * a_hi
    full_lo = (lo_part + ((hi_part & 0xFFFF) << 16))
    carry = full_lo >> 32
    lo = full_lo & _M32
    hi = ((hi_part >> 16) + carry) & _M32
    return hi, lo


def philox4x32(seed: int, offsets: torch.Tensor, rounds: int = 10):
    """Philox4x32-``rounds`` of counter (offset_lo, offset_hi, 0, 0), key (seed_lo, seed_hi)."""
    off = offsets.to(torch.int64)
    c0 = off & _M32
    c1 = (off >> 32) & _M32
    c2 = torch.zeros_like(off)
    c3 = torch.zeros_like(off)
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def _uniform(x: torch.Tensor) -> torch.Tensor:
    # Triton: bitcast to int32, fold negatives with ~x, scale into [0, 1) in float32.
    x = torch.where(x >= 2**31, x - 2**32, x)
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def randn_philox(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """Standard normal float32 numbers, one per offset, equal to Triton's ``tl.randn``."""
    i1, i2, _, _ = philox4x32(seed, offsets)
    u1 = torch.clamp(_uniform(i1), min=1.0e-7)
    u2 = _uniform(i2)
    th = u2 * 6.283185307179586
    r = torch.sqrt(-2.0 * torch.log(u1))
    return r * torch.cos(th)


def make_path(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor, p0: int, p1: int) -> torch.Tensor:
    """Rows ``p0..p1`` of the straight-line path: ``b[n] + alpha[p // N] * (x[n] - b[n])``.

    x, baseline : (N, M);  alphas : (S,) float64.  Returns (p1 - p0, M) in x's dtype, computed in
    fp32 (fp64 for fp64 inputs).
    """
    n = x.shape[0]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    p = torch.arange(p0, p1, device=x.device)
    a = alphas.to(x.device, acc)[p // n].unsqueeze(1)
    xb, bb = x.to(acc)[p % n], baseline.to(acc)[p % n]
    return (bb + a * (xb - bb)).to(x.dtype)


def make_noisy(x: torch.Tensor, sigma: torch.Tensor, seed: int, p0: int, p1: int,
               noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rows ``p0..p1`` of the noisy batch: ``x[n] + sigma[n] * eps[p]``, ``n = p % N``.

    ``eps[p, m] = randn_philox(seed, p * M + m)`` unless explicit ``noise`` (P, M) is given (rows
    ``p0..p1`` of it are used).
    """
    n, m = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    p = torch.arange(p0, p1, device=x.device)
    if noise is None:
        offs = p.unsqueeze(1) * m + torch.arange(m, device=x.device).unsqueeze(0)
        eps = randn_philox(seed, offs).to(acc)
    else:
        eps = noise[p0:p1].to(x.device, acc)
    return (x.to(acc)[p % n] + sigma.to(acc)[p % n].unsqueeze(1) * eps).to(x.dtype)


# accumulate modes
WSUM, SQSUM, WELFORD = 0, 1, 2


def accumulate(a: torch.Tensor, b: Optional[torch.Tensor], g: torch.Tensor, p0: int, n: int,
               weights: Optional[torch.Tensor], mode: int) -> None:
    """Fold rows ``p0..p0+len(g)`` of per-sample gradients into running state, in place.

    mode WSUM:    a[n] += w[p // N] * g[p]          (IG quadrature; w = 1/S for a plain mean)
    mode SQSUM:   a[n] += g[p]^2                    (SmoothGrad²)
    mode WELFORD: Welford update of (a = mean, b = M2) with count c = p // N + 1 (VarGrad)
    ``a``/``b`` are (N, M) in the accumulation dtype (fp32, or fp64).
    """
    for r in range(g.shape[0]):
        p = p0 + r
        j, e = divmod(p, n)
        row = g[r].to(a.dtype)
        if mode == WSUM:
            a[e] += float(weights[j]) * row
        elif mode == SQSUM:
            a[e] += row * row
        elif mode == WELFORD:
            delta = row - a[e]
            a[e] += delta / (j + 1)
            b[e] += delta * (row - a[e])
        else:
            raise ValueError(f"unknown accumulate mode {mode}")
