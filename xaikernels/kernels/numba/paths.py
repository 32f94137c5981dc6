"""Numba kernels for path/noise batches and streaming accumulation (CPU fast path).

Same contracts as ``xaikernels/reference/paths.py``: row ``p = j * N + n``; noise element
``randn(seed, p * M + m)`` with Triton's Philox4x32-10 + Box–Muller, so every backend draws the
same numbers.  ``parallel=True`` splits the M (feature) axis; results do not depend on the thread
count because every element's arithmetic is independent of the split.
"""
from __future__ import annotations

import math

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


@njit(cache=True, inline="always")
def randn_at(seed, offset):
    i1, i2 = _philox_first2(seed, offset)
    u1 = max(np.float32(1.0e-7), _uniform(i1))
    u2 = _uniform(i2)
    th = np.float32(6.283185307179586) * u2
    r = math.sqrt(-2.0 * math.log(u1))
    return np.float32(r * math.cos(th))


@njit(cache=True, parallel=True)
def randn_philox(seed, offsets, out):
    for i in prange(offsets.shape[0]):
        out[i] = randn_at(seed, offsets[i])


@njit(cache=True, parallel=True)
def make_noisy(x, sigma, seed, p0, p1, out):
    """out[r, m] = x[n, m] + sigma[n] * randn(seed, p * M + m), p = p0 + r, n = p % N."""
    n_ex, m = x.shape
    rows = p1 - p0
    for idx in prange(rows * m):
        r = idx // m
        k = idx - r * m
        p = p0 + r
        e = p % n_ex
        eps = randn_at(seed, np.int64(p) * m + k)
        out[r, k] = x[e, k] + sigma[e] * eps


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
    2 = Welford (a = mean, b = M2, count = p // N + 1).  Parallel over features; each element
    sees its rows in order, so Welford stays exact and thread-count invariant."""
    rows, m = g.shape
    for k in prange(m):
        for r in range(rows):
            p = p0 + r
            j = p // n_ex
            e = p - j * n_ex
            v = g[r, k]  # the op wrapper passes g in the accumulation dtype
            if mode == 0:
                a[e, k] += weights[j] * v
            elif mode == 1:
                a[e, k] += v * v
            else:
                delta = v - a[e, k]
                a[e, k] += delta / (j + 1)
                b[e, k] += delta * (v - a[e, k])
