"""Numba kernels for path/noise batches and streaming accumulation (CPU fast path).

Same contracts as ``xaikernels/reference/paths.py``: row ``p = j * N + n``; noise element
``randn(seed, p * M + m)`` with Triton's Philox4x32-10 + Box–Muller, so every backend draws the
same numbers.  ``parallel=True`` splits the M (feature) axis; results do not depend on the thread
count because every element's arithmetic is independent of the split.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

_M32 = uint64(0xFFFFFFFF)


@njit(cache=True, inline="always")
def _philox_first2(seed, offset):
    c0 = uint64(offset) & _M32
    c1 = (uint64(offset) >> uint64(32)) & _M32
    c2 = uint64(0)
    c3 = uint64(0)
    k0 = uint64(seed) & _M32
    k1 = (uint64(seed) >> uint64(32)) & _M32
    for _ in range(10):
        pb = uint64(0xCD9E8D57) * c2  # < 2**64: exact in uint64
        pa = uint64(0xD2511F53) * c0
        n0 = (pb >> uint64(32)) ^ c1 ^ k0
        n2 = (pa >> uint64(32)) ^ c3 ^ k1
        c1 = pb & _M32
        c3 = pa & _M32
        c0 = n0
        c2 = n2
        k0 = (k0 + uint64(0x9E3779B9)) & _M32
        k1 = (k1 + uint64(0xBB67AE85)) & _M32
    return c0, c1


@njit(cache=True, inline="always")
def _uniform(x):
    v = np.int64(x)
    if v >= 2147483648:
        v -= 4294967296
    if v < 0:
        v = -v - 1
    return np.float32(v) * np.float32(4.6566127342e-10)


# ---- vectorisable normals --------------------------------------------------------------------
# Per-element libm float64 log and cos (the obvious Box–Muller) do not vectorise and took 90 % of
# the time of a noise batch.  ``_normals`` draws a block of consecutive offsets in passes that do
# vectorise: Philox + uniforms, then the exponent/mantissa split of u₁ through an int32 view, then
# float32 polynomials for log (frexp + minimax on [√½, √2)) and cos (octant reduction in three
# Cody–Waite parts + the sin/cos minimax pair), the classic single-precision constants of the
# Cephes library.  Error ≤ 2 ulp next to Triton's ``tl.randn`` (tested against the Triton kernel).
_F = np.float32
_TWO_PI = _F(6.283185307179586)
_TINY = _F(1.0e-7)
_ONE = _F(1.0)
_HALF = _F(0.5)
_SQRTH = _F(0.70710678118654752)
_LN2_HI = _F(0.693359375)
_LN2_LO = _F(-2.12194440e-4)
_LG = (_F(7.0376836292e-2), _F(-1.1514610310e-1), _F(1.1676998740e-1), _F(-1.2420140846e-1),
       _F(1.4249322787e-1), _F(-1.6668057665e-1), _F(2.0000714765e-1), _F(-2.4999993993e-1),
       _F(3.3333331174e-1))
_FOPI = _F(1.27323954473516)
_DP1, _DP2, _DP3 = _F(0.78515625), _F(2.4187564849853515625e-4), _F(3.77489497744594108e-8)
_S1, _S2, _S3 = _F(-1.9515295891e-4), _F(8.3321608736e-3), _F(-1.6666654611e-1)
_C1, _C2, _C3 = _F(2.443315711809948e-5), _F(-1.388731625493765e-3), _F(4.166664568298827e-2)
_MINUS2 = _F(-2.0)
BLOCK = 1024


@njit(cache=True, inline="always")
def _normals(seed, off0, count, u, ex, th):
    """u[i] = randn(seed, off0 + i) for i < count (float32 scratch u, ex, th of ≥ count)."""
    bits = u.view(np.int32)
    for i in range(count):
        i1, i2 = _philox_first2(seed, off0 + i)
        u[i] = max(_TINY, _uniform(i1))
        th[i] = _TWO_PI * _uniform(i2)
    for i in range(count):  # frexp: u = m · 2**e, m in [0.5, 1)
        b = bits[i]
        ex[i] = _F((b >> 23) - 126)
        bits[i] = (b & 0x007FFFFF) | 0x3F000000
    for i in range(count):
        m = u[i]
        e = ex[i]
        lo = m < _SQRTH
        e = e - _ONE if lo else e
        x = (m + m - _ONE) if lo else (m - _ONE)
        z = x * x
        y = _LG[0]
        y = y * x + _LG[1]
        y = y * x + _LG[2]
        y = y * x + _LG[3]
        y = y * x + _LG[4]
        y = y * x + _LG[5]
        y = y * x + _LG[6]
        y = y * x + _LG[7]
        y = y * x + _LG[8]
        y = y * x * z + _LN2_LO * e - _HALF * z
        lg = x + y + _LN2_HI * e
        r = np.sqrt(_MINUS2 * lg)
        t = th[i]
        j = np.int32(t * _FOPI)
        j += j & 1
        q = _F(j)
        j &= 7
        neg = j > 3
        j = j - 4 if neg else j
        neg = neg != (j > 1)
        w = ((t - q * _DP1) - q * _DP2) - q * _DP3
        ww = w * w
        sn = w + w * (ww * ((_S1 * ww + _S2) * ww + _S3))
        cs = _ONE - _HALF * ww + ww * ww * ((_C1 * ww + _C2) * ww + _C3)
        v = sn if (j == 1 or j == 2) else cs
        u[i] = -(r * v) if neg else r * v


@njit(cache=True, parallel=True)
def make_noisy(x, sigma, seed, p0, p1, out):
    """out[r, m] = x[n, m] + sigma[n] * randn(seed, p * M + m), p = p0 + r, n = p % N.

    Blocks of ``BLOCK`` features of one row are the parallel unit; each element's value does
    not depend on the split, so results are thread-count invariant."""
    n_ex, m = x.shape
    rows = p1 - p0
    nb = (m + BLOCK - 1) // BLOCK
    for t in prange(rows * nb):
        r = t // nb
        k0 = (t - r * nb) * BLOCK
        cnt = min(BLOCK, m - k0)
        p = p0 + r
        e = p % n_ex
        u = np.empty(BLOCK, np.float32)
        ex = np.empty(BLOCK, np.float32)
        th = np.empty(BLOCK, np.float32)
        _normals(seed, np.int64(p) * m + k0, cnt, u, ex, th)
        s = sigma[e]
        for i in range(cnt):
            out[r, k0 + i] = x[e, k0 + i] + s * u[i]


@njit(cache=True, parallel=True)
def make_path(x, baseline, alphas, p0, p1, out):
    """out[r] = b[n] + alpha[p // N] * (x[n] - b[n]), p = p0 + r, n = p % N."""
    n_ex, m = x.shape
    rows = p1 - p0
    for idx in prange(rows * m):
        r = idx // m
        k = idx - r * m
        p = p0 + r
        e = p % n_ex
        a = alphas[p // n_ex]
        out[r, k] = baseline[e, k] + a * (x[e, k] - baseline[e, k])


@njit(cache=True, parallel=True)
def accumulate(a, b, g, p0, n_ex, weights, mode):
    """Streaming fold of rows of g into (a, b); modes 0 = weighted sum, 1 = sum of squares,
    2 = Welford (a = mean, b = M2, count = p // N + 1).  Parallel over blocks of features;
    within a block the rows are folded in order (the inner loop runs along contiguous features
    and vectorises), so every element sees its rows in order: Welford stays exact and the
    result does not depend on the thread count."""
    rows, m = g.shape
    nb = (m + BLOCK - 1) // BLOCK
    for t in prange(nb):
        k0 = t * BLOCK
        k1 = min(m, k0 + BLOCK)
        for r in range(rows):
            p = p0 + r
            j = p // n_ex
            e = p - j * n_ex
            if mode == 0:
                w = weights[j]
                for k in range(k0, k1):
                    a[e, k] += w * g[r, k]
            elif mode == 1:
                for k in range(k0, k1):
                    a[e, k] += g[r, k] * g[r, k]
            else:
                c = j + 1
                for k in range(k0, k1):
                    v = g[r, k]
                    delta = v - a[e, k]
                    a[e, k] += delta / c
                    b[e, k] += delta * (v - a[e, k])
