"""Triton information bottleneck: noise injection and the per-location KL in one pass.

    z[n,c,s]  = alpha * (mu + std * noise) + (1 - alpha) * x
    kl[n,s]   = sum_c 0.5 * (a^2 + m^2 - 1) - log a,   r = (x - mu)/std,  m = (1 - a) r,  a = max(alpha, eps)
    backward: dx = gz (1 - alpha) + gk (1 - a) m / std;   dalpha = gz (mu + std noise - x) + gk [alpha >= eps] (a - m r - 1/a)
              (dalpha summed over channels when alpha is broadcast over them, shape (N, 1, S))

One kernel, forward and backward chosen by the BACKWARD constexpr.  A program owns one sample
and a block of locations and walks the channels in tiles, so the channel sums (kl, a broadcast
alpha's gradient) stay in registers and no (N, C, S) temporary is written.  The noise is either
given (tests compare exactly with the reference) or drawn in-kernel with Philox,
``randn(seed, (n*C + c)*S + s)``: keyed by the element's flat index, so any tiling gives the same
sample and the backward regenerates it instead of storing it.
Loads are cast to ACC (fp32, fp64 for fp64 inputs); stores go back to the input dtype.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl


@triton.jit
def _bottleneck_kernel(X, AL, NZ, MU, SD, EPS, GZ, GK, Z, KL, DX, DA, C, S, seed,
                       ALPHA_PER_CH: tl.constexpr, HAS_NOISE: tl.constexpr, BACKWARD: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, ACC: tl.constexpr):
    # int64 ids: N*C*S overflows int32 for early-layer maps of a large batch.
    n = tl.program_id(0).to(tl.int64)
    sb = tl.program_id(1).to(tl.int64)
    offs_s = sb * BLOCK_S + tl.arange(0, BLOCK_S)
    ms = offs_s < S
    # eps comes as an ACC-typed scalar in memory: a Python float argument would be rounded to fp32,
    # which moves log(eps) by ~1e-8 relative in fp64.
    eps = tl.load(EPS)
    if not ALPHA_PER_CH:
        al_row = tl.load(AL + n * S + offs_s, mask=ms, other=1.0).to(ACC)[None, :]
    if BACKWARD:
        gk = tl.load(GK + n * S + offs_s, mask=ms, other=0.0).to(ACC)[None, :]
    red = tl.zeros([BLOCK_S], dtype=ACC)  # kl (forward) or a broadcast alpha's gradient (backward)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        m2 = (offs_c < C)[:, None] & ms[None, :]
        stat = offs_c[:, None].to(tl.int64) * S + offs_s[None, :]
        idx = n * C * S + stat
        x = tl.load(X + idx, mask=m2, other=0.0).to(ACC)
        mu = tl.load(MU + stat, mask=m2, other=0.0).to(ACC)
        sd = tl.load(SD + stat, mask=m2, other=1.0).to(ACC)
        if HAS_NOISE:
            nz = tl.load(NZ + idx, mask=m2, other=0.0).to(ACC)
        else:
            nz = tl.randn(seed, idx).to(ACC)
        if ALPHA_PER_CH:
            al = tl.load(AL + idx, mask=m2, other=1.0).to(ACC)
        else:
            al = al_row
        a = tl.maximum(al, eps)
        r = (x - mu) / sd
        m = (1 - a) * r
        if BACKWARD:
            gz = tl.load(GZ + idx, mask=m2, other=0.0).to(ACC)
            dx = gz * (1 - al) + gk * (1 - a) * m / sd
            tl.store(DX + idx, dx.to(DX.dtype.element_ty), mask=m2)
            # The floor max(alpha, eps) is flat below eps: no KL gradient there (as in the reference).
            dkl_da = tl.where(al >= eps, a - m * r - 1 / a, 0.0)
            dal = gz * (mu + sd * nz - x) + gk * dkl_da
            if ALPHA_PER_CH:
                tl.store(DA + idx, dal.to(DA.dtype.element_ty), mask=m2)
            else:
                red += tl.sum(tl.where(m2, dal, 0.0), axis=0)
        else:
            z = al * (mu + sd * nz) + (1 - al) * x
            tl.store(Z + idx, z.to(Z.dtype.element_ty), mask=m2)
            term = 0.5 * (a * a + m * m - 1) - tl.log(a)
            red += tl.sum(tl.where(m2, term, 0.0), axis=0)
    if BACKWARD:
        if not ALPHA_PER_CH:
            tl.store(DA + n * S + offs_s, red.to(DA.dtype.element_ty), mask=ms)
    else:
        tl.store(KL + n * S + offs_s, red.to(KL.dtype.element_ty), mask=ms)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(c: int, s: int) -> Tuple[int, int]:
    # GPU: ~4K-element tiles keep the ~10 live fp32 values per element in registers.  The
    # interpreter pays per program and per loop trip in Python, so it gets far bigger tiles.
    cap_s, tile = (8192, 1 << 16) if _interpreting() else (256, 4096)
    block_s = max(16, min(cap_s, triton.next_power_of_2(max(s, 1))))
    block_c = max(1, min(triton.next_power_of_2(max(c, 1)), tile // block_s))
    return block_c, block_s


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _out(shape, like: torch.Tensor) -> torch.Tensor:
    """Output buffer in ``like``'s dtype.  Under the interpreter a bf16 result goes through an fp32
    buffer rounded by torch: the interpreter truncates on fp32 -> bf16 (a GPU rounds to nearest
    even), which would double the rounding error."""
    dt = torch.float32 if like.dtype == torch.bfloat16 and _interpreting() else like.dtype
    return torch.empty(shape, dtype=dt, device=like.device)


def _check(x, alpha, noise, mu, std) -> Tuple[int, int, int, bool]:
    if x.dim() != 3:
        raise ValueError(f"x must be (N, C, S), got {tuple(x.shape)}")
    n, c, s = x.shape
    if alpha.dim() != 3 or alpha.shape[0] != n or alpha.shape[2] != s or alpha.shape[1] not in (1, c):
        raise ValueError(f"alpha must be (N, 1, S) or (N, C, S) for x {tuple(x.shape)}, got {tuple(alpha.shape)}")
    if noise is not None and noise.shape != x.shape:
        raise ValueError(f"noise must have the shape of x {tuple(x.shape)}, got {tuple(noise.shape)}")
    if mu.shape != (c, s) or std.shape != (c, s):
        raise ValueError(f"mu and std must be (C, S) = ({c}, {s}), got {tuple(mu.shape)} and {tuple(std.shape)}")
    return n, c, s, alpha.shape[1] == c


def _eps_tensor(eps: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((1,), float(eps), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                      device=x.device)


def info_bottleneck(x: torch.Tensor, alpha: torch.Tensor, noise: Optional[torch.Tensor], mu: torch.Tensor,
                    std: torch.Tensor, eps: float = 1e-6,
                    seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher: ``(z, kl)`` for x (N, C, S), alpha (N, 1|C, S), mu/std (C, S).

    ``noise=None`` draws ``randn(seed, flat index)`` in the kernel (Philox); pass the same seed to
    the backward.  Same signature as the reference otherwise.
    """
    n, c, s, per_ch = _check(x, alpha, noise, mu, std)
    x, alpha, mu, std = (t.contiguous() for t in (x, alpha, mu, std))
    noise = noise.contiguous() if noise is not None else None
    z, kl = _out(x.shape, x), _out((n, s), x)
    if n * s == 0:
        return z.to(x.dtype), kl.zero_().to(x.dtype)
    bc, bs = _blocks(c, s)
    _bottleneck_kernel[(n, triton.cdiv(s, bs))](
        x, alpha, noise if noise is not None else x, mu, std, _eps_tensor(eps, x), x, x, z, kl, z, z,
        c, s, int(seed), ALPHA_PER_CH=per_ch, HAS_NOISE=noise is not None, BACKWARD=False,
        BLOCK_C=bc, BLOCK_S=bs, ACC=_acc(x.dtype))
    return z.to(x.dtype), kl.to(x.dtype)


def info_bottleneck_backward(grad_z: torch.Tensor, grad_kl: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor,
                             noise: Optional[torch.Tensor], mu: torch.Tensor, std: torch.Tensor, eps: float = 1e-6,
                             seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Backward launcher: ``(dx, dalpha)``; ``dalpha`` has alpha's shape (channel-summed when broadcast)."""
    n, c, s, per_ch = _check(x, alpha, noise, mu, std)
    x, alpha, mu, std = (t.contiguous() for t in (x, alpha, mu, std))
    noise = noise.contiguous() if noise is not None else None
    grad_z = grad_z.to(x.dtype).contiguous()
    grad_kl = grad_kl.to(x.dtype).contiguous()
    dx, da = _out(x.shape, x), _out(alpha.shape, alpha)
    if n * s == 0 or c == 0:
        return dx.to(x.dtype), da.zero_().to(alpha.dtype)
    bc, bs = _blocks(c, s)
    _bottleneck_kernel[(n, triton.cdiv(s, bs))](
        x, alpha, noise if noise is not None else x, mu, std, _eps_tensor(eps, x), grad_z, grad_kl, x, x, dx, da,
        c, s, int(seed), ALPHA_PER_CH=per_ch, HAS_NOISE=noise is not None, BACKWARD=True,
        BLOCK_C=bc, BLOCK_S=bs, ACC=_acc(x.dtype))
    return dx.to(x.dtype), da.to(alpha.dtype)
