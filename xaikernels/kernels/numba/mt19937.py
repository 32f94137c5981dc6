"""NumPy's legacy ``RandomState`` stream (MT19937) in Numba, for drop-ins that must reproduce
lime's random draws exactly but faster than lime's Python loop of ``RandomState`` calls.

The generator is the standard MT19937 (Matsumoto & Nishimura 1998) on the 624-word state that
``RandomState.get_state()`` exposes; the bounded draws follow NumPy's legacy algorithms:
``randint`` (masked rejection on 32-bit outputs) and ``permutation`` / ``choice(...,
replace=False)`` (a Fisher-Yates shuffle from the top, each index by masked rejection).  The
callers hand the state back with ``set_state``, so the ``RandomState`` continues exactly as if
lime had made the calls (tested against NumPy itself).
"""
from __future__ import annotations

import numpy as np
from numba import njit

_N = 624
_M = 397
_MATRIX_A = np.uint32(0x9908B0DF)
_UPPER = np.uint32(0x80000000)
_LOWER = np.uint32(0x7FFFFFFF)
_ONE = np.uint32(1)
_ZERO = np.uint32(0)


@njit(cache=True, inline="always")
def _mix(a, b, c):
    # one twist step: the upper bit of a, the lower bits of b, xor into c
    y = (a & _UPPER) | (b & _LOWER)
    return c ^ (y >> _ONE) ^ (_ZERO - (y & _ONE)) & _MATRIX_A


@njit(cache=True)
def _twist(key):
    for i in range(_N - _M):
        key[i] = _mix(key[i], key[i + 1], key[i + _M])
    for i in range(_N - _M, _N - 1):
        key[i] = _mix(key[i], key[i + 1], key[i + _M - _N])
    key[_N - 1] = _mix(key[_N - 1], key[0], key[_M - 1])


@njit(cache=True, inline="always")
def _next32(key, p):
    """(the next 32-bit output, the new position) from position ``p`` of the state."""
    if p >= _N:
        _twist(key)
        p = 0
    y = key[p]
    y ^= y >> np.uint32(11)
    y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
    y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
    y ^= y >> np.uint32(18)
    return y, p + 1


@njit(cache=True, inline="always")
def _mask_of(v):
    m = np.uint32(v)
    m |= m >> np.uint32(1)
    m |= m >> np.uint32(2)
    m |= m >> np.uint32(4)
    m |= m >> np.uint32(8)
    m |= m >> np.uint32(16)
    return m


@njit(cache=True, inline="always")
def _bounded(key, p, rng, mask):
    """(a uniform integer in 0..rng by masked rejection, as NumPy's legacy ``randint`` and
    ``random_interval`` for rng < 2^32 - 1; the new position)."""
    v, p = _next32(key, p)
    v &= mask
    while v > rng:
        v, p = _next32(key, p)
        v &= mask
    return v, p


@njit(cache=True)
def randint(key, pos, low, high, n):
    """``RandomState.randint(low, high, n)`` (int64 values, ``high - low - 1 < 2^32 - 1``);
    ``pos`` is a 1-element int64 array holding the state's position."""
    out = np.empty(n, dtype=np.int64)
    rng = np.uint32(high - low - 1)
    if rng == 0:
        out[:] = low
        return out
    mask = _mask_of(rng)
    p = pos[0]
    for i in range(n):
        v, p = _bounded(key, p, rng, mask)
        out[i] = low + np.int64(v)
    pos[0] = p
    return out


@njit(cache=True)
def lime_text_masks(key, pos, n_samples, n_words):
    """lime's text coalitions: row 0 all ones; row i ≥ 1 removes ``size_i`` words, ``size_i =
    randint(1, n_words + 1)`` for all rows first, then per row ``choice(range(n_words),
    size_i, replace=False)`` = the first ``size_i`` entries of a shuffled ``arange``."""
    masks = np.ones((n_samples, n_words), dtype=np.uint8)
    if n_samples <= 1:
        return masks
    sizes = randint(key, pos, 1, n_words + 1, n_samples - 1)
    p = pos[0]
    perm = np.empty(n_words, dtype=np.int64)
    for r in range(1, n_samples):
        for j in range(n_words):
            perm[j] = j
        # Fisher-Yates from the top (NumPy's legacy shuffle); only the first `size` entries
        # are used, but every swap consumes the stream, so all are made
        for i in range(n_words - 1, 0, -1):
            v, p = _bounded(key, p, np.uint32(i), _mask_of(i))
            j = np.int64(v)
            t = perm[i]
            perm[i] = perm[j]
            perm[j] = t
        row = masks[r]
        for k in range(sizes[r - 1]):
            row[perm[k]] = 0
    pos[0] = p
    return masks


def _state(random_state):
    """(key copy, [pos], the rest of the legacy state) of an MT19937 ``RandomState``."""
    st = random_state.get_state(legacy=True)
    return np.array(st[1], dtype=np.uint32), np.array([st[2]], dtype=np.int64), st


def _restore(random_state, key, pos, st):
    random_state.set_state((st[0], key, int(pos[0]), st[3], st[4]))


def lime_text_draws(random_state, n_samples, n_words):
    """See :func:`xaikernels.reference.perturb.lime_text_draws` (an MT19937 ``RandomState``)."""
    key, pos, st = _state(random_state)
    masks = lime_text_masks(key, pos, int(n_samples), int(n_words))
    _restore(random_state, key, pos, st)
    return masks
