"""Triton Grad-CAM reduction.

    w[n,c] = mean_s G[n,c,s];   out[n,s] = act(sum_c w[n,c] A[n,c,s])
    backward: dA = w * g',  dG[n,c,:] = mean_s(g' * A[n,c,:]),  g' = g_out * [out > 0] if relu

Two kernels: a per-(n, c)-row kernel (channel mean in forward; both gradients in backward,
selected by the BACKWARD constexpr) and a tiled weighted channel sum.  Loads are cast to the
accumulator dtype ACC — fp32, or fp64 for fp64 inputs (accumulating half/bfloat16 in their own
precision loses ~3 digits over a few hundred channels); stores go back to the input dtype.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl


@triton.jit
def _row_kernel(G, A, GO, O, W, DA, DG, C, S, BLOCK_S: tl.constexpr, BACKWARD: tl.constexpr,
                RELU: tl.constexpr, ACC: tl.constexpr):
    # int64 row index: N*C*S overflows int32 for large activation maps.
    r = tl.program_id(0).to(tl.int64)
    n = r // C
    offs = tl.arange(0, BLOCK_S)
    wsum = tl.zeros([BLOCK_S], dtype=ACC)
    dot = tl.zeros([BLOCK_S], dtype=ACC)
    for s0 in range(0, S, BLOCK_S):
        idx = s0 + offs
        m = idx < S
        wsum += tl.load(G + r * S + idx, mask=m, other=0.0).to(ACC)
        if BACKWARD:
            go = tl.load(GO + n * S + idx, mask=m, other=0.0).to(ACC)
            if RELU:
                o = tl.load(O + n * S + idx, mask=m, other=0.0).to(ACC)
                go = tl.where(o > 0, go, 0.0)
            dot += go * tl.load(A + r * S + idx, mask=m, other=0.0).to(ACC)
    w = tl.sum(wsum, axis=0) / S
    if BACKWARD:
        dg = tl.sum(dot, axis=0) / S
        for s0 in range(0, S, BLOCK_S):
            idx = s0 + offs
            m = idx < S
            go = tl.load(GO + n * S + idx, mask=m, other=0.0).to(ACC)
            if RELU:
                o = tl.load(O + n * S + idx, mask=m, other=0.0).to(ACC)
                go = tl.where(o > 0, go, 0.0)
            tl.store(DA + r * S + idx, (w * go).to(DA.dtype.element_ty), mask=m)
            tl.store(DG + r * S + idx, (dg + tl.zeros([BLOCK_S], dtype=ACC)).to(DG.dtype.element_ty),
                     mask=m)
    else:
        tl.store(W + r, w)


@triton.jit
def _weighted_sum_kernel(A, W, OUT, C, S, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
                         RELU: tl.constexpr, ACC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    sb = tl.program_id(1).to(tl.int64)
    offs_s = sb * BLOCK_S + tl.arange(0, BLOCK_S)
    ms = offs_s < S
    acc = tl.zeros([BLOCK_S], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mc = offs_c < C
        w = tl.load(W + n * C + offs_c, mask=mc, other=0.0)
        a = tl.load(A + (n * C + offs_c[:, None]) * S + offs_s[None, :], mask=mc[:, None] & ms[None, :],
                    other=0.0).to(ACC)
        acc += tl.sum(w[:, None] * a, axis=0)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(OUT + n * S + offs_s, acc.to(OUT.dtype.element_ty), mask=ms)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block(n: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(max(n, 1))))


def grad_cam(acts: torch.Tensor, grads: torch.Tensor, relu: bool) -> torch.Tensor:
    acts, grads = acts.contiguous(), grads.contiguous()
    N, C, S = acts.shape
    out = torch.empty((N, S), dtype=acts.dtype, device=acts.device)
    if N == 0:
        return out
    acc = _acc(acts.dtype)
    w = torch.empty((N, C), dtype=torch.float64 if acc == tl.float64 else torch.float32, device=acts.device)
    if C > 0:
        _row_kernel[(N * C,)](grads, acts, grads, grads, w, w, w, C, S, BLOCK_S=_block(S, 4096),
                              BACKWARD=False, RELU=relu, ACC=acc)
    block_s = _block(S, 1024)
    _weighted_sum_kernel[(N, triton.cdiv(S, block_s))](acts, w, out, C, S, BLOCK_C=_block(C, 64),
                                                       BLOCK_S=block_s, RELU=relu, ACC=acc)
    return out


def grad_cam_backward(grad_out: torch.Tensor, acts: torch.Tensor, grads: torch.Tensor, out: torch.Tensor,
                      relu: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    acts, grads = acts.contiguous(), grads.contiguous()
    grad_out = grad_out.to(acts.dtype).contiguous()
    out = out.contiguous()
    N, C, S = acts.shape
    d_acts, d_grads = torch.empty_like(acts), torch.empty_like(grads)
    if N * C == 0:
        return d_acts, d_grads
    _row_kernel[(N * C,)](grads, acts, grad_out, out, grads, d_acts, d_grads, C, S,
                          BLOCK_S=_block(S, 4096), BACKWARD=True, RELU=relu, ACC=_acc(acts.dtype))
    return d_acts, d_grads
