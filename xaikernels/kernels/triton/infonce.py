"""Triton InfoNCE logsumexp: tiled, online, never materialising the N x N*K score matrix.

    s[i, j] = <Y[i], X[j]> / tau           (j runs over the N*K flattened locals, owner(j) = j // K)
    lse[i]  = logsumexp_{j allowed} s[i, j]                         (allowed: all, or owner(j) != i)
    terms[i, k] = min(s[i, iK+k] - lse[i], 0)   |   -softplus(lse[i] - s[i, iK+k])   (exclude_self)
    backward:  c[i,k] = gt[i,k] (or gt * sigmoid(lse - pos)),  g[i] = gl[i] - sum_k c[i,k]
               ds[i,j] = g[i] exp(s[i,j] - lse[i]) [allowed] + [owner(j) = i] c[j]
               dX = ds^T Y / tau,   dY = ds X / tau

Three kernels: ``_lse_kernel`` (a block of rows of Y walks all locals with an online logsumexp),
``_pos_kernel`` (per sample: the positive scores, then the terms or c and g, BACKWARD switch) and
``_grad_kernel`` (recomputes score tiles from the saved lse; GRAD_X switch: a block of locals walks
the rows for dX, or a block of rows walks the locals for dY).  The feature dimension D is one
tile (BLOCK_D = next_pow2(D)), so each score tile is one ``tl.dot``.  Operands are upcast to ACC
(fp32, fp64 for fp64 inputs) before ``tl.dot`` with ``input_precision="ieee"``: TF32 would cost
~3 digits against the fp32 reference, and the interpreter's bf16 dot is wrong.
"""
from __future__ import annotations

import os
from typing import Tuple

import torch
import triton
import triton.language as tl

# Finite start for the running max: with exclude_self a first tile can be fully masked, and
# exp(-inf - -inf) would be NaN.  Below any finite fp32 score in practice.
_M0 = -3.0e38


@triton.jit
def _load_rows(P, ids, valid, offs_d, D, ACC: tl.constexpr):
    return tl.load(P + ids[:, None] * D + offs_d[None, :], mask=valid[:, None] & (offs_d < D)[None, :],
                   other=0.0).to(ACC)


@triton.jit
def _scores(y, x, tau, ACC: tl.constexpr):
    # [R, D] x [J, D]^T -> [R, J]; "ieee": no TF32 rounding of fp32 operands.
    return tl.dot(y, tl.trans(x), out_dtype=ACC, input_precision="ieee") / tau


@triton.jit
def _lse_kernel(X, Y, TAU, LSE, N, K, D, EXCLUDE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr,
                BLOCK_D: tl.constexpr, ACC: tl.constexpr, M0: tl.constexpr):
    # int64 ids: N*K*D overflows int32 at N = 256, K = 3136, D = 4096.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mr = rows < N
    offs_d = tl.arange(0, BLOCK_D)
    tau = tl.load(TAU)
    y = _load_rows(Y, rows, mr, offs_d, D, ACC)
    nk = N * K
    m_i = tl.full([BLOCK_R], M0, dtype=ACC)
    l_i = tl.zeros([BLOCK_R], dtype=ACC)
    for j0 in range(0, nk, BLOCK_J):
        cols = (j0 + tl.arange(0, BLOCK_J)).to(tl.int64)
        mc = cols < nk
        s = _scores(y, _load_rows(X, cols, mc, offs_d, D, ACC), tau, ACC)
        keep = mr[:, None] & mc[None, :]
        if EXCLUDE:
            keep = keep & ((cols // K)[None, :] != rows[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
        m_i = m_new
    # Padding rows have l = 0; log(1) keeps them finite (they are not stored).
    tl.store(LSE + rows, m_i + tl.log(tl.where(mr, l_i, 1.0)), mask=mr)


@triton.jit
def _pos_kernel(X, Y, TAU, LSE, GT, GL, TERMS, C, G, K, D, EXCLUDE: tl.constexpr, BACKWARD: tl.constexpr,
                BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    md = offs_d < D
    tau = tl.load(TAU)
    y = tl.load(Y + i * D + offs_d, mask=md, other=0.0).to(ACC)
    lse = tl.load(LSE + i).to(ACC)
    csum = tl.zeros([BLOCK_K], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        mk = ks < K
        flat = i * K + ks
        pos = tl.sum(_load_rows(X, flat, mk, offs_d, D, ACC) * y[None, :], axis=1) / tau
        if BACKWARD:
            c = tl.load(GT + flat, mask=mk, other=0.0).to(ACC)
            if EXCLUDE:
                # sigmoid(t) from exp(-|t|): never overflows for a positive far above lse.
                t = lse - pos
                u = tl.exp(-tl.abs(t))
                c = c * tl.where(t >= 0, 1 / (1 + u), u / (1 + u))
            tl.store(C + flat, c, mask=mk)
            csum += tl.where(mk, c, 0.0)
        else:
            if EXCLUDE:
                # pos - logaddexp(pos, lse) = -softplus(t), t = lse - pos, with an accurate log1p
                # (u / ((1+u) - 1) corrects the rounding of 1+u): for pos >> lse the term is ~ -e^t.
                t = lse - pos
                u = tl.exp(-tl.abs(t))
                w = 1 + u
                log1p_u = tl.where(w == 1, u, tl.log(w) * (u / tl.where(w == 1, 1.0, w - 1)))
                term = -(tl.maximum(t, 0.0) + log1p_u)
            else:
                # <= 0 mathematically; the clamp removes rounding (the reference's contract).
                term = tl.minimum(pos - lse, 0.0)
            tl.store(TERMS + flat, term.to(TERMS.dtype.element_ty), mask=mk)
    if BACKWARD:
        tl.store(G + i, tl.load(GL + i).to(ACC) - tl.sum(csum, axis=0))


@triton.jit
def _ds_tile(y, x, rows, cols, mr, mc, lse, g, c, tau, K, EXCLUDE: tl.constexpr, ACC: tl.constexpr):
    s = _scores(y, x, tau, ACC)
    own = (cols // K)[None, :] == rows[:, None]
    e = s - lse[:, None]
    if EXCLUDE:
        # Masked before exp: an excluded own score may lie far above lse and overflow exp.
        e = tl.where(own, float("-inf"), e)
    ds = tl.exp(e) * g[:, None] + tl.where(own, c[None, :], 0.0)
    return tl.where(mr[:, None] & mc[None, :], ds, 0.0)


@triton.jit
def _grad_kernel(X, Y, TAU, LSE, G, C, DX, DY, N, K, D, EXCLUDE: tl.constexpr, GRAD_X: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    md = offs_d < D
    tau = tl.load(TAU)
    nk = N * K
    if GRAD_X:
        cols = pid * BLOCK_J + tl.arange(0, BLOCK_J)
        mc = cols < nk
        x = _load_rows(X, cols, mc, offs_d, D, ACC)
        c = tl.load(C + cols, mask=mc, other=0.0)
        acc = tl.zeros([BLOCK_J, BLOCK_D], dtype=ACC)
        for r0 in range(0, N, BLOCK_R):
            rows = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
            mr = rows < N
            y = _load_rows(Y, rows, mr, offs_d, D, ACC)
            lse = tl.load(LSE + rows, mask=mr, other=0.0)
            g = tl.load(G + rows, mask=mr, other=0.0)
            ds = _ds_tile(y, x, rows, cols, mr, mc, lse, g, c, tau, K, EXCLUDE, ACC)
            acc += tl.dot(tl.trans(ds), y, out_dtype=ACC, input_precision="ieee")
        tl.store(DX + cols[:, None] * D + offs_d[None, :], (acc / tau).to(DX.dtype.element_ty),
                 mask=mc[:, None] & md[None, :])
    else:
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        mr = rows < N
        y = _load_rows(Y, rows, mr, offs_d, D, ACC)
        lse = tl.load(LSE + rows, mask=mr, other=0.0)
        g = tl.load(G + rows, mask=mr, other=0.0)
        acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=ACC)
        for j0 in range(0, nk, BLOCK_J):
            cols = (j0 + tl.arange(0, BLOCK_J)).to(tl.int64)
            mc = cols < nk
            x = _load_rows(X, cols, mc, offs_d, D, ACC)
            c = tl.load(C + cols, mask=mc, other=0.0)
            ds = _ds_tile(y, x, rows, cols, mr, mc, lse, g, c, tau, K, EXCLUDE, ACC)
            acc += tl.dot(ds, x, out_dtype=ACC, input_precision="ieee")
        tl.store(DY + rows[:, None] * D + offs_d[None, :], (acc / tau).to(DY.dtype.element_ty),
                 mask=mr[:, None] & md[None, :])


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _acc_torch(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


# Compiled tiles by opmath and BLOCK_D: (BLOCK_R, BLOCK_J, num_warps), from the sm_90 resource
# usage of the three tile kernels (`bench/triton_resources.py` → bench/results/triton_resources.md).
# fp32 opmath (fp32, fp16 and bf16 inputs) multiplies on the CUDA cores ("ieee"), and the dX
# kernel holds [BLOCK_J, BLOCK_D] operand and accumulator tiles in registers: the tiles the H100
# runs of bench/results/gpu.md used (32 x 64 on 4 warps; 32 x 32 at BLOCK_D = 256 in the second)
# spill 5.1 KB per thread at BLOCK_D = 128 and 7.5-9.1 KB at 256; the table's tiles spill nothing
# up to 128, 304 bytes at 256 and 3 KB at 512.  fp64 goes to the tensor cores (DMMA) and spills nothing.  Every entry asks for at
# most 99 KiB of shared memory per block (the smallest opt-in limit of sm_80-sm_90 GPUs; an H100
# allows 227 KiB): fp64 BLOCK_D = 256 with 32 x 32 tiles would need 201 KiB.
GPU_TILES = {
    False: {16: (32, 32, 4), 32: (32, 32, 8), 64: (16, 32, 8), 128: (16, 16, 8), 256: (16, 16, 8), 512: (16, 16, 8)},
    True: {16: (32, 32, 4), 32: (32, 32, 4), 64: (32, 32, 4), 128: (16, 32, 4), 256: (16, 16, 4)},
}


def _blocks(n: int, nk: int, d: int, block_rows: int, block_cols: int,
            fp64: bool = False) -> Tuple[int, int, int, int]:
    """(BLOCK_R, BLOCK_J, BLOCK_D, num_warps).  tl.dot needs every dimension >= 16 and a power of
    two; a requested tile is rounded up to one.  The interpreter pays per program and per loop
    trip, so it gets the largest tiles the shapes allow; compiled kernels take GPU_TILES (a D past
    its widest BLOCK_D is refused by :func:`xaikernels.ops.infonce.triton_fits` before this)."""
    bd = _pow2(d, 16, 1 << 20)
    if _interpreting():
        br_cap, bj_cap, warps = 64, 256, 4
    else:
        table = GPU_TILES[bool(fp64)]
        br_cap, bj_cap, warps = table[min(bd, max(table))]
    br = _pow2(block_rows, 16, 1 << 20) if block_rows > 0 else _pow2(n, 16, br_cap)
    bj = _pow2(block_cols, 16, 1 << 20) if block_cols > 0 else _pow2(nk, 16, bj_cap)
    return br, bj, bd, warps


def _out(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """Under the interpreter bf16 results go through fp32 and are rounded by torch: the interpreter
    truncates on fp32 -> bf16 (a GPU rounds to nearest even), which would double the error."""
    dt = torch.float32 if dtype == torch.bfloat16 and _interpreting() else dtype
    return torch.empty(shape, dtype=dt, device=device)


def _tau(temperature: float, x: torch.Tensor) -> torch.Tensor:
    # In memory at ACC precision: a Python float argument is passed as fp32.
    return torch.full((1,), float(temperature), dtype=_acc_torch(x.dtype), device=x.device)


def infonce_lse(x: torch.Tensor, y: torch.Tensor, temperature: float, exclude_self: bool,
                block_rows: int = 0, block_cols: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(terms (N, K) in x's dtype, lse (N,) in ACC)`` for x (N, K, D), y (N, D); same contract as the reference."""
    x, y = x.contiguous(), y.contiguous()
    n, k, d = x.shape
    acc_t = _acc_torch(x.dtype)
    lse = torch.empty((n,), dtype=acc_t, device=x.device)
    terms = _out((n, k), x.dtype, x.device)
    if n * k == 0:
        return terms.to(x.dtype), lse.fill_(float("-inf"))
    br, bj, bd, warps = _blocks(n, n * k, d, block_rows, block_cols, x.dtype == torch.float64)
    tau, acc = _tau(temperature, x), _acc(x.dtype)
    _lse_kernel[(triton.cdiv(n, br),)](x, y, tau, lse, n, k, d, EXCLUDE=bool(exclude_self), BLOCK_R=br,
                                       BLOCK_J=bj, BLOCK_D=bd, ACC=acc, M0=_M0, num_warps=warps)
    _pos_kernel[(n,)](x, y, tau, lse, lse, lse, terms, lse, lse, k, d, EXCLUDE=bool(exclude_self),
                      BACKWARD=False, BLOCK_K=_pow2(k, 16, 4096 // bd if not _interpreting() else 1024),
                      BLOCK_D=bd, ACC=acc)
    return terms.to(x.dtype), lse


def infonce_lse_backward(grad_terms: torch.Tensor, grad_lse: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                         lse: torch.Tensor, temperature: float, exclude_self: bool, block_rows: int = 0,
                         block_cols: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(dx, dy)`` from the saved lse; the scores are recomputed tile by tile."""
    x, y = x.contiguous(), y.contiguous()
    n, k, d = x.shape
    acc_t = _acc_torch(x.dtype)
    dx, dy = _out(x.shape, x.dtype, x.device), _out(y.shape, y.dtype, y.device)
    if n * k == 0:
        return dx.zero_().to(x.dtype), dy.zero_().to(y.dtype)
    grad_terms = grad_terms.to(x.dtype).contiguous()
    grad_lse = grad_lse.to(acc_t).contiguous()
    lse = lse.to(acc_t).contiguous()
    # O(N*K) workspace: the positive pairs' gradient c and the row weights g.
    c = torch.empty((n, k), dtype=acc_t, device=x.device)
    g = torch.empty((n,), dtype=acc_t, device=x.device)
    br, bj, bd, warps = _blocks(n, n * k, d, block_rows, block_cols, x.dtype == torch.float64)
    tau, acc, ex = _tau(temperature, x), _acc(x.dtype), bool(exclude_self)
    _pos_kernel[(n,)](x, y, tau, lse, grad_terms, grad_lse, c, c, g, k, d, EXCLUDE=ex, BACKWARD=True,
                      BLOCK_K=_pow2(k, 16, 4096 // bd if not _interpreting() else 1024), BLOCK_D=bd, ACC=acc)
    _grad_kernel[(triton.cdiv(n * k, bj),)](x, y, tau, lse, g, c, dx, dy, n, k, d, EXCLUDE=ex, GRAD_X=True,
                                            BLOCK_R=br, BLOCK_J=bj, BLOCK_D=bd, ACC=acc, num_warps=warps)
    _grad_kernel[(triton.cdiv(n, br),)](x, y, tau, lse, g, c, dx, dy, n, k, d, EXCLUDE=ex, GRAD_X=False,
                                        BLOCK_R=br, BLOCK_J=bj, BLOCK_D=bd, ACC=acc, num_warps=warps)
    return dx.to(x.dtype), dy.to(y.dtype)
