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

import ctypes

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
    # unsigned indices: no negative-index wraparound selects, so both loops vectorise (each
    # reads only words it has not yet rewritten, or rewrote in an earlier loop)
    for i in range(np.uint64(_N - _M)):
        key[i] = _mix(key[i], key[i + np.uint64(1)], key[i + np.uint64(_M)])
    for i in range(np.uint64(_N - _M), np.uint64(_N - 1)):
        key[i] = _mix(key[i], key[i + np.uint64(1)], key[i - np.uint64(_N - _M)])
    key[_N - 1] = _mix(key[_N - 1], key[0], key[_M - 1])


@njit(cache=True, inline="always")
def _temper(y):
    """MT19937's output of the state word ``y``."""
    y ^= y >> np.uint32(11)
    y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
    y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
    y ^= y >> np.uint32(18)
    return y


@njit(cache=True, inline="always")
def _temper_into(key, p, tw):
    """``tw[p:]`` = the outputs of ``key[p:]`` (a loop without calls or branches: it
    vectorises)."""
    for j in range(p, _N):
        tw[j] = _temper(key[j])


@njit(cache=True, inline="always")
def _outputs(key, p):
    """The outputs of the state's current run from position ``p`` (the rest of the array is
    filled at the next twist)."""
    tw = np.empty(_N, dtype=np.uint32)
    _temper_into(key, min(p, _N), tw)
    return tw


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
def _bounded(key, tw, p, rng, mask):
    """(a uniform integer in 0..rng by masked rejection, as NumPy's legacy ``randint`` and
    ``random_interval`` for rng < 2^32 - 1; the new position).  ``tw``: the outputs of the
    current run (:func:`_outputs`), refilled here after each twist, so that a draw reads a
    word instead of tempering one."""
    while True:
        if p >= _N:
            _twist(key)
            _temper_into(key, 0, tw)
            p = 0
        v = tw[p] & mask
        p += 1
        if v <= rng:
            break
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
    tw = _outputs(key, p)
    for i in range(n):
        v, p = _bounded(key, tw, p, rng, mask)
        out[i] = low + np.int64(v)
    pos[0] = p
    return out


@njit(cache=True)
def coin_flips(key, pos, n):
    """``RandomState.randint(0, 2, n)`` as uint8.  The range's mask is 1, so masked rejection
    never rejects: output i is bit 0 of the i-th tempered word.  Whole runs of the state
    between twists, in loops without calls or branches (they vectorise), instead of
    :func:`randint`'s draw-by-draw rejection loop."""
    out = np.empty(n, dtype=np.uint8)
    p = pos[0]
    i = 0
    while i < n:
        if p >= _N:
            _twist(key)
            p = 0
        m = min(_N - p, n - i)
        src = key[p:p + m]  # slices: indices from range() need no wraparound checks
        dst = out[i:i + m]
        for j in range(m):
            dst[j] = np.uint8(_temper(src[j]) & _ONE)
        i += m
        p += m
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
    tw = _outputs(key, p)
    for r in range(1, n_samples):
        for j in range(n_words):
            perm[j] = j
        # Fisher-Yates from the top (NumPy's legacy shuffle); only the first `size` entries
        # are used, but every swap consumes the stream, so all are made
        for i in range(n_words - 1, 0, -1):
            # _bounded written out: called (inlined by Numba or not) this loop took 5.4-7.4
            # ms instead of 3.1 for 5000 × 94 words
            rng = np.uint32(i)
            mask = _mask_of(i)
            while True:
                if p >= _N:
                    _twist(key)
                    _temper_into(key, 0, tw)
                    p = 0
                v = tw[p] & mask
                p += 1
                if v <= rng:
                    break
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


def _raw_views(bg):
    # NumPy's mt19937_state: uint32 key[624], then int pos
    buf = (ctypes.c_uint32 * (_N + 1)).from_address(bg.ctypes.state_address)
    words = np.frombuffer(buf, dtype=np.uint32)
    return words[:_N], words[_N:].view(np.int32)


_LAYOUT = []  # [True / False]: the raw state's layout checked against get_state once


def _layout_ok():
    if not _LAYOUT:
        try:
            rs = np.random.RandomState(20240917)
            rs.randint(0, 1000, 700)  # a position other than 624 and a twisted key
            key, pos = _raw_views(rs._bit_generator)
            st = rs.get_state(legacy=True)
            ok = bool(np.array_equal(key, st[1]) and int(pos[0]) == st[2] and _N > st[2] > 0)
        except Exception:  # pragma: no cover - a NumPy without the ctypes interface
            ok = False
        _LAYOUT.append(ok)
    return _LAYOUT[0]


def _with_state(random_state, fn, *args):
    """``fn(key, pos, *args)`` on ``random_state``'s MT19937 state, which it advances.  In
    place, through the bit generator's ``ctypes.state_address`` under its lock, when the
    state's memory layout is the one checked once against ``get_state`` (a ``get_state`` /
    ``set_state`` round trip costs ~70 µs: more than drawing lime's 73 000 image coalition
    bits); by that round trip otherwise."""
    bg = getattr(random_state, "_bit_generator", None)
    if type(bg) is not np.random.MT19937:
        raise ValueError(f"the Numba replay of NumPy's legacy stream needs a RandomState over MT19937, got "
                         f"{type(bg).__name__}: use backend='reference'")
    if _layout_ok():
        with bg.lock:
            key, pos = _raw_views(bg)
            return fn(key, pos, *args)
    key, pos, st = _state(random_state)
    out = fn(key, pos, *args)
    _restore(random_state, key, pos, st)
    return out


def lime_text_draws(random_state, n_samples, n_words):
    """See :func:`xaikernels.reference.perturb.lime_text_draws` (an MT19937 ``RandomState``)."""
    return _with_state(random_state, lime_text_masks, int(n_samples), int(n_words))


def lime_coin_flips(random_state, n):
    """See :func:`xaikernels.reference.perturb.lime_coin_flips` (an MT19937 ``RandomState``)."""
    return _with_state(random_state, coin_flips, int(n))
