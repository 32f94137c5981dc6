"""Triton kernels: fused path/noise batch generation and streaming accumulation.

    path  (NOISE=False): out[r, m] = b[n, m] + alpha[p // N] * (x[n, m] - b[n, m])
    noise (NOISE=True):  out[r, m] = x[n, m] + sigma[n] * randn(seed, p * M + m)   (or explicit eps)
    accumulate: MODE 0  a[n] += w[p // N] * g[r];  MODE 1  a[n] += g[r]^2;
                MODE 2  Welford (a = mean, b = M2) with count p // N + 1
with p = p0 + r, n = p % N.  Values are loaded and combined in the accumulator dtype ACC (fp32,
or fp64 for fp64 inputs) and stored in the output dtype; ``tl.randn`` is Philox4x32-10, matched
bit-for-bit (up to transcendental rounding) by the Numba and reference backends.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _batch_kernel(X, B, ALPHA, SIGMA, EPS, OUT, seed, p0, N, M, NOISE: tl.constexpr,
                  HAS_EPS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # int64 ids: rows * M exceeds int32 for big path batches.
    r = tl.program_id(0).to(tl.int64)
    mb = tl.program_id(1).to(tl.int64)
    p = p0 + r
    e = p % N
    offs = mb * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    x = tl.load(X + e * M + offs, mask=mask, other=0.0).to(ACC)
    if NOISE:
        s = tl.load(SIGMA + e).to(ACC)
        if HAS_EPS:
            eps = tl.load(EPS + p * M + offs, mask=mask, other=0.0).to(ACC)
        else:
            eps = tl.randn(seed, p * M + offs).to(ACC)
        val = x + s * eps
    else:
        b = tl.load(B + e * M + offs, mask=mask, other=0.0).to(ACC)
        a = tl.load(ALPHA + p // N).to(ACC)
        val = b + a * (x - b)
    tl.store(OUT + r * M + offs, val.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _accumulate_kernel(A, Bm, G, W, p0, rows, N, M, MODE: tl.constexpr, ACC: tl.constexpr,
                       BLOCK: tl.constexpr):
    # One program per (example, feature block): it owns those state elements, so no atomics,
    # and it walks its rows in order (Welford is order dependent).
    e = tl.program_id(0).to(tl.int64)
    mb = tl.program_id(1).to(tl.int64)
    offs = mb * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    a = tl.load(A + e * M + offs, mask=mask, other=0.0)
    if MODE == 2:
        b = tl.load(Bm + e * M + offs, mask=mask, other=0.0)
    # First row of this chunk belonging to example e.
    first = (e - p0 % N + N) % N
    for r in range(first, rows, N):
        p = p0 + r
        j = p // N
        g = tl.load(G + r * M + offs, mask=mask, other=0.0).to(ACC)
        if MODE == 0:
            a += tl.load(W + j).to(ACC) * g
        elif MODE == 1:
            a += g * g
        else:
            delta = g - a
            a += delta / (j + 1).to(ACC)
            b += delta * (g - a)
    tl.store(A + e * M + offs, a, mask=mask)
    if MODE == 2:
        tl.store(Bm + e * M + offs, b, mask=mask)


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block(m: int) -> int:
    # Large blocks: the interpreter's cost follows the number of programs.
    return max(16, min(4096, triton.next_power_of_2(m)))


def make_path(x, baseline, alphas, p0, p1):
    n, m = x.shape
    out = torch.empty((p1 - p0, m), dtype=x.dtype, device=x.device)
    if p1 > p0:
        blk = _block(m)
        _batch_kernel[(p1 - p0, triton.cdiv(m, blk))](
            x.contiguous(), baseline.contiguous(), alphas.contiguous(), x, x, out, 0, p0, n, m,
            NOISE=False, HAS_EPS=False, ACC=_acc(x.dtype), BLOCK=blk)
    return out


def make_noisy(x, sigma, seed, p0, p1, noise=None):
    n, m = x.shape
    out = torch.empty((p1 - p0, m), dtype=x.dtype, device=x.device)
    if p1 > p0:
        blk = _block(m)
        eps = noise.contiguous() if noise is not None else x
        _batch_kernel[(p1 - p0, triton.cdiv(m, blk))](
            x.contiguous(), x, x, sigma.contiguous(), eps, out, int(seed), p0, n, m,
            NOISE=True, HAS_EPS=noise is not None, ACC=_acc(x.dtype), BLOCK=blk)
    return out


def accumulate(a, b, g, p0, n, weights, mode):
    rows, m = g.shape
    if rows == 0:
        return
    blk = _block(m)
    w = weights if weights is not None else a
    bb = b if b is not None else a
    _accumulate_kernel[(n, triton.cdiv(m, blk))](a, bb, g.contiguous(), w, p0, rows, n, m, MODE=mode,
                                                 ACC=_acc(a.dtype), BLOCK=blk)
