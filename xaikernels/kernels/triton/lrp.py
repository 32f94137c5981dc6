"""Fused Triton LRP rule kernels for linear layers, and convolutions through im2col.

Forward (one pass over x and W, sign split in registers; nothing stacked in memory)::

    z = W x + b,   z⁺ = W⁺x⁺ + W⁻x⁻ + b⁺,   z⁻ = W⁻x⁺ + W⁺x⁻ + b⁻     (as the rule needs)
    saved: s(z) | s(z⁺) | s(z⁺), s(z⁻) | γ-coefficient q | s(z − W⁺l − W⁻h)

Backward (stabilised division, products with the sign-split weights and the input multiply in
one kernel)::

    R_in = x⁺ ⊙ (W⁺ᵀu + W⁻ᵀv) + x⁻ ⊙ (W⁻ᵀu + W⁺ᵀv)      (z⁺, αβ, γ: u, v from R and saved)
    R_in = x ⊙ Wᵀ(R / s(z))                              (ε; flat and w² as ε on ones with W' = 1, W²)
    R_in = x ⊙ Wᵀg − l ⊙ W⁺ᵀg − h ⊙ W⁻ᵀg,  g = R / s(·)   (z^B)

The rule is the ``RULE`` constexpr.  Loads are cast to ACC (fp32; fp64 for fp64 inputs) before
``tl.dot`` — relevance divides by sums of products, and the interpreter's bf16 ``tl.dot`` is
wrong — and ``input_precision="ieee"`` keeps TF32 out of it on GPUs.  Program ids are int64.

Convolutions (2-d) run as the linear kernel on ``unfold``-ed inputs (one GEMM per group); the
input relevance per column entry is folded back (overlapping windows sum).  Captum's modified
ε rules (``wmod``/``zero_bias``) and 1-d/3-d convolutions use the torch implementation.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from xaikernels.reference import lrp as _ref

EPS_R, ZPLUS_R, AB_R, GAMMA_R, ZBOX_R = 0, 1, 2, 3, 4
_CODE = {"epsilon": EPS_R, "zplus": ZPLUS_R, "alphabeta": AB_R, "gamma": GAMMA_R, "zbox": ZBOX_R}


@triton.jit
def _scalar(hi, lo, ACC: tl.constexpr):
    # Compiled Triton passes Python floats as fp32: a float64 rule parameter travels as the
    # fp32 pair (hi, lo) with hi + lo = value to ~2^-48 (see _split), and is rebuilt in ACC.
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


def _split(v: float):
    """(hi, lo) fp32 values with hi + lo = v to ~2^-48 relative (v itself to fp32 in an fp32 kernel)."""
    hi = float(np.float32(v))
    return hi, float(np.float32(v - hi))


@triton.jit
def _stab(z, EPS):
    return tl.where(z >= 0, z + EPS, z - EPS)


@triton.jit
def _fwd_kernel(X, W, B, LO, HI, Z, S1, S2, M, O, I, sxm, sxi, slm, sli, EPS_HI, EPS_LO, GAMMA_HI, GAMMA_LO,
                RULE: tl.constexpr, HAS_BIAS: tl.constexpr, BM: tl.constexpr, BO: tl.constexpr,
                BK: tl.constexpr, ACC: tl.constexpr):
    EPS = _scalar(EPS_HI, EPS_LO, ACC)
    GAMMA = _scalar(GAMMA_HI, GAMMA_LO, ACC)
    pm = tl.program_id(0).to(tl.int64)
    po = tl.program_id(1).to(tl.int64)
    rm = pm * BM + tl.arange(0, BM)
    ro = po * BO + tl.arange(0, BO)
    rk = tl.arange(0, BK)
    mm = rm < M
    mo = ro < O
    zacc = tl.zeros((BM, BO), dtype=ACC)
    pacc = tl.zeros((BM, BO), dtype=ACC)
    nacc = tl.zeros((BM, BO), dtype=ACC)
    for k0 in range(0, I, BK):
        kk = k0 + rk
        mk = kk < I
        x = tl.load(X + rm[:, None] * sxm + kk[None, :] * sxi, mask=mm[:, None] & mk[None, :], other=0.0).to(ACC)
        wt = tl.load(W + ro[None, :] * I + kk[:, None], mask=mo[None, :] & mk[:, None], other=0.0).to(ACC)
        if RULE == 0 or RULE == 4:
            zacc += tl.dot(x, wt, input_precision="ieee")
        if RULE == 4:
            lo = tl.load(LO + rm[:, None] * slm + kk[None, :] * sli, mask=mm[:, None] & mk[None, :],
                         other=0.0).to(ACC)
            hi = tl.load(HI + rm[:, None] * slm + kk[None, :] * sli, mask=mm[:, None] & mk[None, :],
                         other=0.0).to(ACC)
            pacc += tl.dot(lo, tl.maximum(wt, 0.0), input_precision="ieee")
            pacc += tl.dot(hi, tl.minimum(wt, 0.0), input_precision="ieee")
        if RULE == 1 or RULE == 2 or RULE == 3:
            xp = tl.maximum(x, 0.0)
            xn = tl.minimum(x, 0.0)
            wp = tl.maximum(wt, 0.0)
            wn = tl.minimum(wt, 0.0)
            pacc += tl.dot(xp, wp, input_precision="ieee") + tl.dot(xn, wn, input_precision="ieee")
            nacc += tl.dot(xp, wn, input_precision="ieee") + tl.dot(xn, wp, input_precision="ieee")
    if HAS_BIAS:
        bias = tl.load(B + ro, mask=mo, other=0.0).to(ACC)[None, :]
    else:
        bias = tl.zeros((1, BO), dtype=ACC)
    offs = rm[:, None] * O + ro[None, :]
    msk = mm[:, None] & mo[None, :]
    if RULE == 0:
        z = zacc + bias
        tl.store(S1 + offs, _stab(z, EPS), mask=msk)
    elif RULE == 4:
        z = zacc + bias
        tl.store(S1 + offs, _stab(zacc - pacc, EPS), mask=msk)
    else:
        zp = pacc + tl.maximum(bias, 0.0)
        zn = nacc + tl.minimum(bias, 0.0)
        z = zp + zn
        if RULE == 1:
            tl.store(S1 + offs, _stab(zp, EPS), mask=msk)
        elif RULE == 2:
            tl.store(S1 + offs, _stab(zp, EPS), mask=msk)
            tl.store(S2 + offs, _stab(zn, EPS), mask=msk)
        else:
            # z > 0 ⇒ z + γz⁺ > 0, z < 0 ⇒ z + γz⁻ < 0: the sign of q carries the mask.
            qp = 1.0 / _stab(z + GAMMA * zp, EPS)
            qn = 1.0 / _stab(z + GAMMA * zn, EPS)
            q = tl.where(z > 0, qp, tl.where(z < 0, qn, 0.0))
            tl.store(S1 + offs, q, mask=msk)
    tl.store(Z + offs, z.to(Z.dtype.element_ty), mask=msk)


@triton.jit
def _bwd_kernel(R, X, W, LO, HI, S1, S2, OUT, M, O, I, sxm, sxi, slm, sli, ssm, ALPHA_HI, ALPHA_LO, BETA_HI,
                BETA_LO, GAMMA_HI, GAMMA_LO,
                RULE: tl.constexpr, BM: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr, ACC: tl.constexpr):
    ALPHA = _scalar(ALPHA_HI, ALPHA_LO, ACC)
    BETA = _scalar(BETA_HI, BETA_LO, ACC)
    GAMMA = _scalar(GAMMA_HI, GAMMA_LO, ACC)
    pm = tl.program_id(0).to(tl.int64)
    pi = tl.program_id(1).to(tl.int64)
    rm = pm * BM + tl.arange(0, BM)
    ri = pi * BI + tl.arange(0, BI)
    ro0 = tl.arange(0, BO)
    mm = rm < M
    mi = ri < I
    ax = tl.zeros((BM, BI), dtype=ACC)
    ap = tl.zeros((BM, BI), dtype=ACC)
    an = tl.zeros((BM, BI), dtype=ACC)
    for o0 in range(0, O, BO):
        ro = o0 + ro0
        mo = ro < O
        m2 = mm[:, None] & mo[None, :]
        r = tl.load(R + rm[:, None] * O + ro[None, :], mask=m2, other=0.0).to(ACC)
        # other=1 keeps masked divisions finite (their r is 0)
        s1 = tl.load(S1 + rm[:, None] * ssm + ro[None, :], mask=m2, other=1.0).to(ACC)
        w = tl.load(W + ro[:, None] * I + ri[None, :], mask=mo[:, None] & mi[None, :], other=0.0).to(ACC)
        if RULE == 0:
            ax += tl.dot(r / s1, w, input_precision="ieee")
        elif RULE == 4:
            g = r / s1
            ax += tl.dot(g, w, input_precision="ieee")
            ap += tl.dot(g, tl.maximum(w, 0.0), input_precision="ieee")
            an += tl.dot(g, tl.minimum(w, 0.0), input_precision="ieee")
        elif RULE == 1:
            g = r / s1
            ap += tl.dot(g, tl.maximum(w, 0.0), input_precision="ieee")
            an += tl.dot(g, tl.minimum(w, 0.0), input_precision="ieee")
        else:
            if RULE == 2:
                s2 = tl.load(S2 + rm[:, None] * ssm + ro[None, :], mask=m2, other=1.0).to(ACC)
                u = ALPHA * (r / s1)
                v = -BETA * (r / s2)
            else:
                g = r * s1
                u = tl.where(s1 > 0, (1.0 + GAMMA) * g, g)
                v = tl.where(s1 > 0, g, (1.0 + GAMMA) * g)
            wp = tl.maximum(w, 0.0)
            wn = tl.minimum(w, 0.0)
            ap += tl.dot(u, wp, input_precision="ieee") + tl.dot(v, wn, input_precision="ieee")
            an += tl.dot(u, wn, input_precision="ieee") + tl.dot(v, wp, input_precision="ieee")
    m2i = mm[:, None] & mi[None, :]
    x = tl.load(X + rm[:, None] * sxm + ri[None, :] * sxi, mask=m2i, other=0.0).to(ACC)
    if RULE == 0:
        out = x * ax
    elif RULE == 4:
        lo = tl.load(LO + rm[:, None] * slm + ri[None, :] * sli, mask=m2i, other=0.0).to(ACC)
        hi = tl.load(HI + rm[:, None] * slm + ri[None, :] * sli, mask=m2i, other=0.0).to(ACC)
        out = x * ax - (lo * ap + hi * an)
    else:
        out = tl.maximum(x, 0.0) * ap + tl.minimum(x, 0.0) * an
    tl.store(OUT + rm[:, None] * I + ri[None, :], out.to(OUT.dtype.element_ty), mask=m2i)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _acc_torch(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _blk(n: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(max(int(n), 1))))


def _mat_forward(x2: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], code: int, eps: float, gamma: float,
                 lo: Optional[torch.Tensor] = None, hi: Optional[torch.Tensor] = None):
    """z (M, O) in x's dtype and saved (S1, S2) in ACC for x2 (M, I) — any strides — and W (O, I)."""
    m, i = x2.shape
    o = w.shape[0]
    acc_t = _acc_torch(x2.dtype)
    w = w.contiguous()
    # Results are written in ACC and rounded by torch: the interpreter truncates on its
    # fp32 → bf16 store, which would double the rounding error.
    z = torch.empty((m, o), dtype=acc_t, device=x2.device)
    s1 = torch.empty((m, o), dtype=acc_t, device=x2.device)
    s2 = torch.empty((m, o), dtype=acc_t, device=x2.device) if code == AB_R else s1
    if m == 0 or o == 0:
        return z, (s1, s2)
    lo_ = lo if lo is not None else x2
    hi_ = hi if hi is not None else x2
    bm, bo, bk = _blk(m, 32), _blk(o, 32), _blk(i, 32)
    grid = (triton.cdiv(m, bm), triton.cdiv(o, bo))
    _fwd_kernel[grid](x2, w, b if b is not None else w, lo_, hi_, z, s1, s2, m, o, i,
                      x2.stride(0), x2.stride(1), lo_.stride(0), lo_.stride(1), *_split(eps), *_split(gamma),
                      RULE=code, HAS_BIAS=b is not None, BM=bm, BO=bo, BK=bk, ACC=_acc(x2.dtype))
    return z.to(x2.dtype), (s1, s2)


def _mat_backward(r2: torch.Tensor, x2: torch.Tensor, w: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, code: int,
                  alpha: float, beta: float, gamma: float, lo=None, hi=None, out_dtype=None) -> torch.Tensor:
    m, i = x2.shape
    o = w.shape[0]
    w = w.contiguous()
    r2 = r2.contiguous()
    final = out_dtype or x2.dtype
    out = torch.empty((m, i), dtype=_acc_torch(x2.dtype), device=x2.device)
    if m == 0 or i == 0:
        return out.to(final)
    lo_ = lo if lo is not None else x2
    hi_ = hi if hi is not None else x2
    bm, bo, bi = _blk(m, 32), _blk(o, 32), _blk(i, 32)
    grid = (triton.cdiv(m, bm), triton.cdiv(i, bi))
    _bwd_kernel[grid](r2, x2, w, lo_, hi_, s1, s2, out, m, o, i, x2.stride(0), x2.stride(1), lo_.stride(0),
                      lo_.stride(1), s1.stride(0), *_split(alpha), *_split(beta), *_split(gamma),
                      RULE=code, BM=bm, BO=bo, BI=bi, ACC=_acc(x2.dtype))
    return out.to(final)


def _uses_torch(rule) -> bool:
    return bool(rule.wmod) or bool(rule.zero_bias)


# --------------------------------------------------------------------------------------------
# Linear layers: x (N, ..., I)
# --------------------------------------------------------------------------------------------

def linear_forward(x, w, b, geom, rule):
    if _uses_torch(rule):
        return _ref.layer_forward(x, w, b, geom, rule)
    lead, i = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, i)
    if rule.kind in ("flat", "wsquare"):
        z = F.linear(x, w, b)
        wd, bd = (torch.ones_like(w), None) if rule.kind == "flat" else (w * w, None if b is None else b * b)
        _, (den, _) = _mat_forward(x2.new_ones(1, i), wd, bd, EPS_R, rule.eps, 0.0)
        return z, (den,)
    code = _CODE[rule.kind]
    if code == ZBOX_R:
        lo = _ref.expand_bound(rule.low, x, "low").reshape(-1, i)
        hi = _ref.expand_bound(rule.high, x, "high").reshape(-1, i)
        z, (s1, _) = _mat_forward(x2, w, b, code, rule.eps, rule.gamma, lo, hi)
        return z.reshape(*lead, -1), (s1,)
    z, (s1, s2) = _mat_forward(x2, w, b, code, rule.eps, rule.gamma)
    return z.reshape(*lead, -1), ((s1, s2) if code == AB_R else (s1,))


def linear_backward(r, x, w, b, saved, geom, rule, ws=None):
    if _uses_torch(rule):
        return _ref.layer_backward(r, x, w, b, saved, geom, rule, ws)
    i = x.shape[-1]
    x2 = x.reshape(-1, i)
    r2 = r.reshape(-1, w.shape[0])
    if rule.kind in ("flat", "wsquare"):
        wd = torch.ones_like(w) if rule.kind == "flat" else w * w
        den = saved[0]
        ones = x2.new_ones(1, i).expand(x2.shape[0], i)
        return _mat_backward(r2, ones, wd, den.expand(r2.shape[0], -1), den, EPS_R, 1.0, 0.0, 0.0,
                             out_dtype=x.dtype).reshape(x.shape)
    code = _CODE[rule.kind]
    s1 = saved[0]
    s2 = saved[1] if code == AB_R else s1
    lo = hi = None
    if code == ZBOX_R:
        lo = _ref.expand_bound(rule.low, x, "low").reshape(-1, i)
        hi = _ref.expand_bound(rule.high, x, "high").reshape(-1, i)
    return _mat_backward(r2, x2, w, s1, s2, code, rule.alpha, rule.beta, rule.gamma, lo, hi).reshape(x.shape)


# --------------------------------------------------------------------------------------------
# 2-d convolutions through im2col: per group, cols (N·L, C/g·k) against W_g (O/g, C/g·k)
# --------------------------------------------------------------------------------------------

def _unfold(t, w, geom):
    # Explicit (asymmetric) zero padding first: padded zeros are no inputs, not even for flat/w².
    return F.unfold(_ref.pad_input(t, geom), w.shape[2:], dilation=geom.dilation, padding=geom.padding, stride=geom.stride)


def _out_hw(x, w, geom):
    h, wd = _ref.padded_shape(x.shape, geom)[2:]
    kh, kw = w.shape[2:]
    oh = (h + 2 * geom.padding[0] - geom.dilation[0] * (kh - 1) - 1) // geom.stride[0] + 1
    ow = (wd + 2 * geom.padding[1] - geom.dilation[1] * (kw - 1) - 1) // geom.stride[1] + 1
    return oh, ow


def _cols(t, w, geom, g):
    """(g, N·L, C/g·k) column matrices of t."""
    n = t.shape[0]
    c = _unfold(t, w, geom)  # (N, C·k, L)
    ck, l_ = c.shape[1], c.shape[2]
    return c.view(n, g, ck // g, l_).permute(1, 0, 3, 2).reshape(g, n * l_, ck // g)


def _uncols(cols, x, w, geom, g):
    n = x.shape[0]
    _, nl, ckg = cols.shape
    l_ = nl // n
    c = cols.reshape(g, n, l_, ckg).permute(1, 0, 3, 2).reshape(n, g * ckg, l_)
    return _ref.crop_input(F.fold(c, _ref.padded_shape(x.shape, geom)[2:], w.shape[2:], dilation=geom.dilation,
                                  padding=geom.padding, stride=geom.stride), geom)


def conv_forward(x, w, b, geom, rule):
    if _uses_torch(rule) or x.dim() != 4:
        return _ref.layer_forward(x, w, b, geom, rule)
    g = geom.groups
    n, o = x.shape[0], w.shape[0]
    oh, ow = _out_hw(x, w, geom)
    wg = w.reshape(g, o // g, -1)
    bg = None if b is None else b.reshape(g, o // g)
    if rule.kind in ("flat", "wsquare"):
        z = _ref._fwd(x, w, b, geom)
        ones = _cols(torch.ones_like(x[:1]), w, geom, g)
        wd = torch.ones_like(wg) if rule.kind == "flat" else wg * wg
        bd = None if (rule.kind == "flat" or b is None) else bg * bg
        dens = [_mat_forward(ones[j], wd[j], None if bd is None else bd[j], EPS_R, rule.eps, 0.0)[1][0]
                for j in range(g)]
        return z, (torch.stack(dens),)
    code = _CODE[rule.kind]
    xc = _cols(x, w, geom, g)
    lc = hc = None
    if code == ZBOX_R:
        lc = _cols(_ref.expand_bound(rule.low, x, "low").contiguous(), w, geom, g)
        hc = _cols(_ref.expand_bound(rule.high, x, "high").contiguous(), w, geom, g)
    zs, s1s, s2s = [], [], []
    for j in range(g):
        z, (s1, s2) = _mat_forward(xc[j], wg[j], None if bg is None else bg[j], code, rule.eps, rule.gamma,
                                   None if lc is None else lc[j], None if hc is None else hc[j])
        zs.append(z)
        s1s.append(s1)
        s2s.append(s2)
    # (g, N·L, O/g) → (N, O, oh, ow)
    z = torch.stack(zs).reshape(g, n, oh * ow, o // g).permute(1, 0, 3, 2).reshape(n, o, oh, ow)
    saved = (torch.stack(s1s), torch.stack(s2s)) if code == AB_R else (torch.stack(s1s),)
    return z, saved


def conv_backward(r, x, w, b, saved, geom, rule, ws=None):
    if _uses_torch(rule) or x.dim() != 4:
        return _ref.layer_backward(r, x, w, b, saved, geom, rule, ws)
    g = geom.groups
    n, o = x.shape[0], w.shape[0]
    wg = w.reshape(g, o // g, -1)
    # (N, O, oh, ow) → (g, N·L, O/g)
    rg = r.reshape(n, g, o // g, -1).permute(1, 0, 3, 2).reshape(g, -1, o // g)
    if rule.kind in ("flat", "wsquare"):
        ones = _cols(torch.ones_like(x[:1]), w, geom, g)
        wd = torch.ones_like(wg) if rule.kind == "flat" else wg * wg
        den = saved[0]
        l_ = ones.shape[1]
        cols = []
        for j in range(g):
            oj = ones[j].unsqueeze(0).expand(n, l_, -1).reshape(n * l_, -1)
            dj = den[j].unsqueeze(0).expand(n, l_, -1).reshape(n * l_, -1)
            cols.append(_mat_backward(rg[j], oj, wd[j], dj, dj, EPS_R, 1.0, 0.0, 0.0, out_dtype=den.dtype))
        return _uncols(torch.stack(cols), x, w, geom, g).to(x.dtype)
    code = _CODE[rule.kind]
    xc = _cols(x, w, geom, g)
    lc = hc = None
    if code == ZBOX_R:
        lc = _cols(_ref.expand_bound(rule.low, x, "low").contiguous(), w, geom, g)
        hc = _cols(_ref.expand_bound(rule.high, x, "high").contiguous(), w, geom, g)
    s1 = saved[0]
    s2 = saved[1] if code == AB_R else s1
    # Overlapping windows are summed by fold: keep the column relevance in ACC until then.
    cols = [_mat_backward(rg[j], xc[j], wg[j], s1[j], s2[j], code, rule.alpha, rule.beta, rule.gamma,
                          None if lc is None else lc[j], None if hc is None else hc[j], out_dtype=s1.dtype)
            for j in range(g)]
    return _uncols(torch.stack(cols), x, w, geom, g).to(x.dtype)
