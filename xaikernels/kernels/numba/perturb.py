"""Numba kernels for perturbation explanations (LIME, KernelSHAP).

Twins of :mod:`xaikernels.reference.perturb` (same signatures, same numbers): counter-based
mask sampling, fused perturbed-batch construction, distances and kernel weights, and the
weighted ridge / lasso surrogate fits with lime's feature-selection paths.

Importing this module imports numba; the op layer imports it lazily.
"""
from __future__ import annotations

import math
import sys
import types

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import prange
from numba.core import cgutils
from numba.core import types as nbtypes
from numba.extending import intrinsic

from xaikernels._memory import _PAGE, placed_copy, placed_empty


def njit(*args, **options):
    """``numba.njit`` with ``fastmath=False`` unless a kernel asks for it.  Numba compiles a
    callee that sets no fastmath with the flags of the caller that compiles it first, and
    keeps that overload (also in its on-disk cache): the exact helpers' rounding (LARS's
    solves, ``_xy_rows``'s row-order sums) would depend on which kernel ran first — the
    LARS path once took other decisions than its reference after the tabular fit
    (``fastmath={"reassoc"}``) had compiled it."""
    options.setdefault("fastmath", False)
    return numba.njit(*args, **options)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_ONE = np.uint64(1)
_U64_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_TWO_M53 = 1.0 / 9007199254740992.0


# ----------------------------------------------------------------------- serial twins
_PAR_MIN_WORK = 1 << 18  # elements of work below which a thread-pool launch is not worth it


def _serial_twin(kernel, **flags):
    """The same kernel compiled without ``parallel=True`` (``prange`` runs as ``range``).

    A parallel launch hands the loop to Numba's thread pool even with one thread; on a loaded
    machine waking the worker costs up to a scheduler slice (measured: a 0.1 ms distance
    kernel took 2.4 ms), so small or single-threaded calls take the serial twin.  The twin
    gets its own name so that its on-disk cache entry does not collide with the parallel one.
    """
    py = kernel.py_func
    name = py.__name__ + "_serial"
    code = py.__code__.replace(co_name=name, co_qualname=py.__qualname__ + "_serial")
    twin = types.FunctionType(code, py.__globals__, name, py.__defaults__, py.__closure__)
    twin.__qualname__ = py.__qualname__ + "_serial"
    twin.__module__ = py.__module__
    twin.__doc__ = py.__doc__
    return njit(cache=True, **flags)(twin)


def _pick(parallel_kernel, serial_kernel, work):
    if work >= _PAR_MIN_WORK and numba.get_num_threads() > 1:
        return parallel_kernel
    return serial_kernel


# ------------------------------------------------------------------------------------ RNG
@njit(cache=True, inline="always")
def _mix(z):
    # SplitMix64 finaliser; uint64 arithmetic wraps, which is the point.
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(cache=True, inline="always")
def _row_key(base, row):
    return _mix(base + np.uint64(row) * _GOLDEN)


@njit(cache=True, inline="always")
def _u01(key, j):
    z = _mix(key + (np.uint64(j) + _ONE) * _GOLDEN)
    return np.float64(z >> _S11) * _TWO_M53


@njit(cache=True)
def _stream_base(seed, stream):
    return _mix(_mix(np.uint64(seed)) + np.uint64(stream) * _GOLDEN)


@njit(cache=True, parallel=True)
def _masks_bernoulli(out, base, row_offset, p_on, paired, first_row_ones):
    n, F = out.shape
    for r in prange(n):
        g = row_offset + r
        key = _row_key(base, g // 2 if paired else g)
        flip = paired and (g % 2 == 1)
        for f in range(F):
            on = _u01(key, f) < p_on
            out[r, f] = np.uint8(on != flip)
        if first_row_ones and g == 0:
            out[r, :] = 1


@njit(cache=True, parallel=True)
def _masks_sized(out, base, row_offset, cdf, paired, first_row_ones):
    n, F = out.shape
    for r in prange(n):
        g = row_offset + r
        key = _row_key(base, g // 2 if paired else g)
        flip = paired and (g % 2 == 1)
        u = _u01(key, F)
        k = 0
        while k < F and not (u < cdf[k]):
            k += 1
        perm = np.arange(F)
        for i in range(k):
            j = i + int(math.floor(_u01(key, F + 1 + i) * (F - i)))
            t = perm[i]
            perm[i] = perm[j]
            perm[j] = t
        on = np.uint8(1) if not flip else np.uint8(0)
        for f in range(F):
            out[r, f] = np.uint8(1) - on
        for i in range(k):
            out[r, perm[i]] = on
        if first_row_ones and g == 0:
            out[r, :] = 1


_masks_bernoulli_serial = _serial_twin(_masks_bernoulli)


_masks_sized_serial = _serial_twin(_masks_sized)


def sample_masks(n_rows, n_features, seed, stream=0, row_offset=0, p_on=0.5, size_cdf=None,
                 paired=False, first_row_ones=False):
    """See :func:`xaikernels.reference.perturb.sample_masks`."""
    out = np.empty((int(n_rows), int(n_features)), dtype=np.uint8)
    base = np.uint64(_stream_base(np.uint64(seed % 2**64), np.uint64(stream % 2**64)))
    if size_cdf is None:
        _pick(_masks_bernoulli, _masks_bernoulli_serial, out.size)(out, base, np.int64(row_offset), float(p_on), bool(paired), bool(first_row_ones))
    else:
        cdf = np.ascontiguousarray(size_cdf, dtype=np.float64)
        _pick(_masks_sized, _masks_sized_serial, out.size)(out, base, np.int64(row_offset), cdf, bool(paired), bool(first_row_ones))
    return out


# ------------------------------------------------------------------------------ construction
_U64_0 = np.uint64(0)


@njit(cache=True)
def _word_masks(seg, Bn, n_features):
    """Per feature, the 64-element words of one (P·Bn) plane it touches and which elements
    of each: CSR ``ptr`` (F+1,), ``word`` and ``bits`` (one entry per (feature, word) pair,
    at most min(F·W, P·Bn) entries).  Element ``i`` of a plane is bit ``i & 63`` of word
    ``i >> 6``; elements are visited in order, so each feature's words come out sorted."""
    # One step per (position, word it touches): a position's Bn elements are contiguous, so
    # a word's elements of one position form one run of bits (usually Bn ≤ 64: one word)
    Pn = seg.shape[0]
    for p in range(Pn):
        if seg[p] < 0 or seg[p] >= n_features:
            raise ValueError("feature map ids must lie in [0, n_features)")
    cnt = np.zeros(n_features + 1, dtype=np.int64)
    last = np.full(n_features, -1, dtype=np.int64)
    for p in range(Pn):
        f = seg[p]
        i1 = (p + 1) * Bn
        for w in range((p * Bn) >> 6, ((i1 - 1) >> 6) + 1 if Bn > 0 else 0):
            if last[f] != w:
                last[f] = w
                cnt[f + 1] += 1
    ptr = np.cumsum(cnt)
    word = np.empty(ptr[n_features], dtype=np.int64)
    bits = np.zeros(ptr[n_features], dtype=np.uint64)
    cur = ptr[:n_features].copy()
    last[:] = -1
    for p in range(Pn):
        f = seg[p]
        i0 = p * Bn
        i1 = i0 + Bn
        for w in range(i0 >> 6, ((i1 - 1) >> 6) + 1 if Bn > 0 else 0):
            if last[f] != w:
                last[f] = w
                word[cur[f]] = w
                cur[f] += 1
            a = max(i0, w << 6) - (w << 6)
            b = min(i1, (w + 1) << 6) - (w << 6)
            bits[cur[f] - 1] |= (_U64_ALL >> np.uint64(64 - (b - a))) << np.uint64(a)
    return ptr, word, bits


@njit(cache=True)
def _build_row(x, fill, ptr, word, bits, m, o, hb):
    # hb = bitmap of hidden elements, the OR of the hidden features' words (sparse: a
    # superpixel touches few words); then a branch-free blend o = (fill & k) | (x & ~k) with
    # k all-ones where hidden.  A per-run copy branches on every (short, random) run and
    # mispredicts; this loop has fixed trip counts that LLVM vectorises.
    # Only the features this builder's map uses (ptr has F+1 entries): the masks may carry
    # more columns (features of other inputs / examples), which hide nothing here.  Looping
    # over m.shape[0] read ptr past its end whenever the map stopped short of the highest id.
    hb[:] = _U64_0
    for j in range(ptr.shape[0] - 1):
        if not m[j]:
            for q in range(ptr[j], ptr[j + 1]):
                hb[word[q]] |= bits[q]
    A, L = x.shape
    full = L >> 6
    for a in range(A):
        xa = x[a]
        fa = fill[a]
        oa = o[a]
        for w in range(full):
            _blend_word(oa, xa, fa, w << 6, hb[w])
        if full << 6 < L:
            _blend_tail(oa, xa, fa, full << 6, hb[full])


@njit(cache=True, inline="always")
def _blend_word(oa, xa, fa, b0, hw):
    """Elements ``b0 .. b0 + 63`` of an output plane: fill's where bit ``i`` of ``hw`` is
    set, else x's (branch-free: a full-width mask per element)."""
    one = np.uint64(1)
    for i in range(64):
        k = _U64_0 - ((hw >> np.uint64(i)) & one)
        oa[b0 + i] = (fa[b0 + i] & k) | (xa[b0 + i] & ~k)


@njit(cache=True, inline="always")
def _blend_tail(oa, xa, fa, i0, hw):
    """Elements ``i0 ..`` of an output plane, all in its last, partial word ``hw``."""
    one = np.uint64(1)
    for i in range(i0, oa.shape[0]):
        oa[i] = fa[i] if (hw >> np.uint64(i & 63)) & one else xa[i]


_GROUP = 16  # rows blended together, word by word


@njit(cache=True)
def _check_plan(x, fill, ptr, word, bits, masks):
    """The part of the build kernels' contract that does not depend on the rows built
    (O(F + entries)): x, fill (A, L); masks (S, >= F) when it has rows; ptr (F+1,)
    non-decreasing from 0 into word/bits, every word id inside the plane's (L + 63) // 64
    words."""
    A, L = x.shape
    if fill.shape[0] != A or fill.shape[1] != L:
        raise ValueError("build: fill must have x's shape")
    F = ptr.shape[0] - 1
    if F < 0 or ptr[0] != 0:
        raise ValueError("build: ptr must be (F + 1,) starting at 0")
    if masks.shape[0] > 0 and masks.shape[1] < F:
        raise ValueError("build: masks have fewer columns than the feature map has features")
    for j in range(F):
        if ptr[j + 1] < ptr[j]:
            raise ValueError("build: ptr must be non-decreasing")
    if ptr[F] > word.shape[0] or ptr[F] > bits.shape[0]:
        raise ValueError("build: ptr points past word / bits")
    W = (L + 63) >> 6
    for q in range(ptr[F]):
        if word[q] < 0 or word[q] >= W:
            raise ValueError("build: word id outside the plane")


@njit(cache=True)
def _check_build(x, fill, ptr, word, bits, masks, out):
    """The build kernels' contract, checked on entry so that no argument can make them index
    out of bounds: :func:`_check_plan`, out (S, A, L), masks (S, >= F)."""
    _check_out(x, out)
    if masks.shape[0] != out.shape[0]:
        raise ValueError("build: masks and out must have the same number of rows")
    _check_plan(x, fill, ptr, word, bits, masks)


@njit(cache=True)
def _check_out(x, out):
    if out.shape[1] != x.shape[0] or out.shape[2] != x.shape[1]:
        raise ValueError("build: out must be (S, A, L) with x's (A, L)")


@njit(cache=True)
def _build_serial(x, fill, ptr, word, bits, masks, out):
    _check_build(x, fill, ptr, word, bits, masks, out)
    _blend_rows(x, fill, ptr, word, bits, masks, 0, out)


@njit(cache=True)
def _word_entries(ptr, word, W):
    """The (feature, word) entries of :func:`_word_masks` regrouped by word: CSR ``wp``
    (W+1,), and per entry its feature ``wf`` and its index ``wq`` into ``bits``."""
    F = ptr.shape[0] - 1
    wp = np.zeros(W + 1, dtype=np.int64)
    for q in range(ptr[F]):
        wp[word[q] + 1] += 1
    for w in range(W):
        wp[w + 1] += wp[w]
    wf = np.empty(ptr[F], dtype=np.int64)
    wq = np.empty(ptr[F], dtype=np.int64)
    cur = wp[:W].copy()
    for j in range(F):
        for q in range(ptr[j], ptr[j + 1]):
            e = cur[word[q]]
            wf[e] = j
            wq[e] = q
            cur[word[q]] += 1
    return wp, wf, wq


_BITMAP_BLOCK = 64  # rows whose bitmaps are built together, word by word


@njit(cache=True, inline="always")
def _block_bitmaps(wp, wf, wq, bits, n_features, masks, r0, m, hid, scratch):
    """``scratch[w, r]`` (r < m): the hidden elements of word ``w`` in masks row ``r0 + r`` —
    the OR, over the word's (feature, bits) entries, of the bits of the features the row
    hides; word-major, so the inner loop over the block's rows vectorises.  ``hid``
    (n_features, ≥ m) is scratch."""
    for j in range(n_features):
        for r in range(m):
            hid[j, r] = _U64_0 - np.uint64(masks[r0 + r, j] == 0)
    for w in range(wp.shape[0] - 1):
        sw = scratch[w]
        for r in range(m):
            sw[r] = _U64_0
        for e in range(wp[w], wp[w + 1]):
            hj = hid[wf[e]]
            bq = bits[wq[e]]
            for r in range(m):
                sw[r] |= bq & hj[r]


@njit(cache=True)
def _hidden_bitmaps(wp, wf, wq, bits, n_features, masks, r0, hb):
    """``hb[k, w, c]``: the hidden elements of word ``w`` in masks row ``r0 + k·B + c``
    (B = _BITMAP_BLOCK): :func:`_block_bitmaps` for blocks of rows, each written word-major
    in place (no transpose); for a plan checked by :func:`_check_plan`."""
    nblk, W, B = hb.shape
    n = min(nblk * B, masks.shape[0] - r0)
    if wp.shape[0] != W + 1 or B != _BITMAP_BLOCK or r0 < 0 or n < 0 or masks.shape[1] < n_features:
        raise ValueError("build: bitmap rows outside the masks, or a plan of another width")
    hid = np.empty((n_features, B), dtype=np.uint64)
    for k in range(min(nblk, (n + B - 1) // B)):
        _block_bitmaps(wp, wf, wq, bits, n_features, masks, r0 + k * B, min(B, n - k * B), hid, hb[k])


@njit(cache=True)
def _blend_bitmaps(x, fill, hb, h0, out):
    """Output row ``r`` = x with the elements hidden by bitmap row ``h0 + r`` of ``hb``
    (:func:`_hidden_bitmaps`' blocks) taken from fill."""
    _check_out(x, out)
    S = out.shape[0]
    A, L = x.shape
    nblk, W, B = hb.shape
    if h0 < 0 or h0 + S > nblk * B or W != (L + 63) >> 6 or B != _BITMAP_BLOCK:
        raise ValueError("build: bitmap rows outside hb, or hb of another width")
    full = L >> 6
    for a in range(A):
        xa = x[a]
        fa = fill[a]
        for w in range(full):
            for r in range(S):
                h = h0 + r
                _blend_word(out[r, a], xa, fa, w << 6, hb[h // _BITMAP_BLOCK, w, h % _BITMAP_BLOCK])
        if full << 6 < L:
            for r in range(S):
                h = h0 + r
                _blend_tail(out[r, a], xa, fa, full << 6, hb[h // _BITMAP_BLOCK, full, h % _BITMAP_BLOCK])


@njit(cache=True)
def _blend_rows(x, fill, ptr, word, bits, masks, m0, out):
    # Word-major over groups of rows: each 64-element word of x and fill is loaded once and
    # blended into every row of the group while it sits in L1, instead of streaming all of x
    # and fill from L2 again for every row (measured ~15% faster in lime's loop, where the
    # model's reads evict between batches).  The group's bitmaps come from _block_bitmaps,
    # hb[w, r] for output row r = masks row m0 + r.
    S = out.shape[0]
    A, L = x.shape
    W = (L + 63) >> 6
    full = L >> 6
    F = ptr.shape[0] - 1
    wp, wf, wq = _word_entries(ptr, word, W)
    hb = np.empty((W, _GROUP), dtype=np.uint64)
    hid = np.empty((F, _GROUP), dtype=np.uint64)
    for g0 in range(0, S, _GROUP):
        n = min(_GROUP, S - g0)
        _block_bitmaps(wp, wf, wq, bits, F, masks, m0 + g0, n, hid, hb)
        for a in range(A):
            xa = x[a]
            fa = fill[a]
            for w in range(full):
                for r in range(n):
                    _blend_word(out[g0 + r, a], xa, fa, w << 6, hb[w, r])
            if full << 6 < L:
                for r in range(n):
                    _blend_tail(out[g0 + r, a], xa, fa, full << 6, hb[full, r])


@njit(cache=True, parallel=True)
def _build_parallel(x, fill, ptr, word, bits, masks, out):
    _check_build(x, fill, ptr, word, bits, masks, out)
    W = (x.shape[1] + 63) >> 6
    for s in prange(out.shape[0]):
        _build_row(x, fill, ptr, word, bits, masks[s], out[s], np.empty(W, dtype=np.uint64))


_RAW = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_PARALLEL_MIN = 1 << 21  # elements; below this a parallel launch costs more than it saves


_X_SHIFT, _FILL_SHIFT = 2048, 3072  # page offsets of x and fill past the output's
_PLACE_SLACK = 256  # output offsets this close to the placed-for one keep x and fill where they are


class Builder:
    """``build_perturbed`` for one (x, fill, seg), prepared once (raw views, per-feature word
    bitmaps of the feature map) and then called per batch with no per-call set-up."""

    def __init__(self, x, fill, seg):
        self.raw = _RAW[x.dtype.itemsize]
        self.A, Pn, self.Bn = x.shape
        self.L = Pn * self.Bn
        seg = np.ascontiguousarray(seg, dtype=np.int64)
        if seg.shape != (Pn,):
            raise ValueError(f"seg must have one entry per position ({Pn}), got shape {seg.shape}")
        if seg.size and seg.min() < 0:
            raise ValueError(f"seg ids must be >= 0, got {seg.min()}")
        F = int(seg.max()) + 1 if seg.size else 0
        self.F = F
        self.ptr, self.word, self.bits = _word_masks(seg, np.int64(self.Bn), np.int64(F))
        self.xv = np.ascontiguousarray(x).view(self.raw).reshape(self.A, self.L)
        self.fv = np.ascontiguousarray(fill).view(self.raw).reshape(self.A, self.L)
        self._out_off = None  # the output page offset x and fill are placed for (None: not yet)
        self._out_id = None  # id of the last output buffer checked (not a reference: it would count)

    OUT_OFFSET = 2048  # page offset of new_out's buffers before any batch was built

    def new_out(self, shape, dtype):
        """An uninitialised C-contiguous output buffer at the page offset x and fill are (or
        will be) placed for."""
        return placed_empty(shape, dtype, self.OUT_OFFSET if self._out_off is None else self._out_off)

    def _place_for(self, ov):
        """For the loop over model batches (:meth:`batches`): x and fill copied to page offsets
        set against the output's.  The blend reads x and fill while it writes the output, and
        streams whose addresses agree in their low 12 bits stall each other (4K aliasing) —
        1.76 ms against 2.33 ms for lime's 1000 64×64×3 images by the offsets alone
        (bench/results/lime_image_profile.md), which otherwise fall where the allocators put
        them.  Output rows of a plane whose size is a multiple of 4 KiB all share one offset:
        x goes 2 KiB and fill 3 KiB past it, moved again (one copy each) only when a batch's
        output sits elsewhere.  (A whole build by ``__call__`` blends 16 rows at a time and
        showed no such effect: its x and fill stay the caller's.)"""
        if id(ov.base) == self._out_id:  # the same (reused) output buffer as the last batch
            return
        self._out_id = id(ov.base)
        off = ov.ctypes.data % _PAGE if ov.size else 0
        if self._out_off is not None:
            d = (off - self._out_off) % _PAGE
            if min(d, _PAGE - d) <= _PLACE_SLACK:
                return
        self.xv = placed_copy(self.xv, (off + _X_SHIFT) % _PAGE)
        self.fv = placed_copy(self.fv, (off + _FILL_SHIFT) % _PAGE)
        self._out_off = off

    def __call__(self, masks, out):
        S = out.shape[0]
        if S:
            if masks.shape[1] < self.F:
                raise ValueError(f"masks have {masks.shape[1]} features, the feature map uses {self.F}")
            ov = out.view(self.raw).reshape(S, self.A, self.L)
            fn = _build_parallel if out.size >= _PARALLEL_MIN and numba.get_num_threads() > 1 else _build_serial
            fn(self.xv, self.fv, self.ptr, self.word, self.bits, masks, ov)
        return out


    def batches(self, masks):
        """``fn(s0, s1, out)``: rows ``s0..s1-1`` of ``masks`` into ``out`` (a C-contiguous
        array of ``s1 - s0`` perturbed inputs, of this builder's item size), with only O(1)
        checks per call: the caller's loop over model batches then costs one kernel call per
        batch.  The rows' hidden-element bitmaps are built ahead, for up to
        ``_BITMAP_BYTES`` of rows at a time, word-major (:func:`_hidden_bitmaps`), instead of
        per batch, whose few rows leave most of the bitmap kernel's vector lanes idle (lime's
        batches of 10 rows of a 64×64×3 float64 image, 1000 rows: the whole builder 2.64 ms in
        bench/results/lime_image_profile.md, 3.10 ms with bitmaps per batch in its previous
        run)."""
        if masks.shape[1] < self.F:
            raise ValueError(f"masks have {masks.shape[1]} features, the feature map uses {self.F}")
        masks = np.ascontiguousarray(masks, dtype=np.uint8)
        raw, A, L = self.raw, self.A, self.L
        ptr, word, bits, F = self.ptr, self.word, self.bits, self.F
        _check_plan(self.xv, self.fv, ptr, word, bits, masks)
        par_min = _PARALLEL_MIN if numba.get_num_threads() > 1 else np.inf
        W = (L + 63) >> 6
        wp, wf, wq = _word_entries(ptr, word, W)
        chunk = max(1, _BITMAP_BYTES // (8 * W))
        held = [0, 0, np.empty((0, W, _BITMAP_BLOCK), dtype=np.uint64)]  # rows r0..r1-1 of masks, their bitmaps

        def fn(s0, s1, out):
            n = s1 - s0
            if n > 0:
                if s0 < 0 or s1 > masks.shape[0]:
                    raise ValueError(f"build: rows {s0}..{s1 - 1} past the end of the {masks.shape[0]} masks")
                ov = out.reshape(n, A, L).view(raw)
                self._place_for(ov)
                if n * A * L >= par_min:
                    _build_parallel(self.xv, self.fv, ptr, word, bits, masks[s0:s1], ov)
                    return out
                if not (held[0] <= s0 and s1 <= held[1]):
                    r1 = min(masks.shape[0], s0 + max(n, chunk))
                    nblk = (r1 - s0 + _BITMAP_BLOCK - 1) // _BITMAP_BLOCK
                    hb = held[2] if held[2].shape[0] == nblk else np.empty((nblk, W, _BITMAP_BLOCK), dtype=np.uint64)
                    _hidden_bitmaps(wp, wf, wq, bits, F, masks, s0, hb)
                    held[:] = [s0, r1, hb]
                _blend_bitmaps(self.xv, self.fv, held[2], s0 - held[0], ov)
            return out

        return fn


_BITMAP_BYTES = 4 << 20  # bitmaps built ahead by Builder.batches


def build_perturbed(x, fill, seg, masks, out):
    """See :func:`xaikernels.reference.perturb.build_perturbed`.  A pure selection, so it runs
    on the raw bits (any 1/2/4/8-byte dtype, bfloat16 included via a uint16 view)."""
    return Builder(x, fill, seg)(masks, out)


# ------------------------------------------------------------------------------ distances
@njit(cache=True)
def feature_stats(x, fill, seg, n_features):
    """See :func:`xaikernels.reference.perturb.feature_stats`."""
    out = np.zeros((n_features, 4))
    A, P, Bn = x.shape
    for a in range(A):
        for p in range(P):
            f = seg[p]
            for b in range(Bn):
                xv = np.float64(x[a, p, b])
                fv = np.float64(fill[a, p, b])
                out[f, 0] += xv * xv
                out[f, 1] += xv * fv
                out[f, 2] += fv * fv
                out[f, 3] += (xv - fv) * (xv - fv)
    return out


@njit(cache=True, parallel=True)
def _mask_distances(masks, stats, cosine, out):
    S, F = masks.shape
    nx = 0.0
    for f in range(F):
        nx += stats[f, 0]
    for s in prange(S):
        if cosine:
            dot = 0.0
            nn = 0.0
            for f in range(F):
                if masks[s, f]:
                    dot += stats[f, 0]
                    nn += stats[f, 0]
                else:
                    dot += stats[f, 1]
                    nn += stats[f, 2]
            den = math.sqrt(nx) * math.sqrt(max(nn, 0.0))
            out[s] = 1.0 - (dot / den if den > 0 else 0.0)
        else:
            d2 = 0.0
            for f in range(F):
                if not masks[s, f]:
                    d2 += stats[f, 3]
            out[s] = math.sqrt(max(d2, 0.0))


_mask_distances_serial = _serial_twin(_mask_distances)


def mask_distances(masks, stats, metric):
    """See :func:`xaikernels.reference.perturb.mask_distances`."""
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"unknown metric {metric!r}")
    out = np.empty(masks.shape[0])
    _pick(_mask_distances, _mask_distances_serial, masks.size)(masks, np.ascontiguousarray(stats, dtype=np.float64), metric == "cosine", out)
    return out


@njit(cache=True, parallel=True)
def _row_distances(z, z0, cosine, out):
    S, F = z.shape
    n0 = 0.0
    for f in range(F):
        n0 += z0[f] * z0[f]
    n0 = math.sqrt(n0)
    for s in prange(S):
        if cosine:
            dot = 0.0
            nz = 0.0
            for f in range(F):
                v = np.float64(z[s, f])
                dot += v * z0[f]
                nz += v * v
            den = math.sqrt(nz) * n0
            d = 1.0 - (dot / den if den > 0 else 0.0)
            out[s] = min(max(d, 0.0), 2.0)
        else:
            d2 = 0.0
            for f in range(F):
                v = np.float64(z[s, f]) - z0[f]
                d2 += v * v
            out[s] = math.sqrt(d2)


_row_distances_serial = _serial_twin(_row_distances)


def row_distances(z, z0, metric):
    """See :func:`xaikernels.reference.perturb.row_distances`."""
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"unknown metric {metric!r}")
    out = np.empty(z.shape[0])
    _pick(_row_distances, _row_distances_serial, z.size)(z, np.ascontiguousarray(z0, dtype=np.float64), metric == "cosine", out)
    return out


@njit(cache=True)
def exp_kernel(d, width):
    """See :func:`xaikernels.reference.perturb.exp_kernel`."""
    out = np.empty(d.shape[0])
    w2 = width * width
    for i in range(d.shape[0]):
        out[i] = _lime_weight(d[i], w2)
    return out


@njit(cache=True)
def _log_comb(n, k):
    return math.lgamma(n + 1.0) - math.lgamma(k + 1.0) - math.lgamma(n - k + 1.0)


@njit(cache=True)
def shapley_kernel(masks, inf_weight):
    """See :func:`xaikernels.reference.perturb.shapley_kernel`."""
    S, F = masks.shape
    table = np.empty(F + 1)
    for k in range(F + 1):
        if k == 0 or k == F:
            table[k] = inf_weight
        else:
            # exact binomial for small F (matches math.comb), log-gamma beyond
            if F <= 60:
                c = 1.0
                for i in range(k):
                    c = c * (F - i) / (i + 1)
                c = np.round(c)
            else:
                c = math.exp(_log_comb(F, k))
            table[k] = (F - 1) / (c * k * (F - k))
    out = np.empty(S)
    for s in range(S):
        k = 0
        for f in range(F):
            k += masks[s, f]
        out[s] = table[k]
    return out


# ------------------------------------------------------------------------------------ fits
@njit(cache=True, fastmath={"reassoc", "contract"})
def _chol_solve(A, b):
    """Solve SPD ``A x = b`` (b: (n,) or (n, m)); returns (x, ok).  ``ok`` is False when a
    pivot is not clearly positive (relative 1e-14 of the largest diagonal entry).

    Reassociation only (no NaN/inf assumptions): the inner products are vectorised instead
    of one dependent add per element — the O(n³) step of lime's wide image fits (F ~ 100)."""
    n = A.shape[0]
    L = np.zeros((n, n))
    dmax = 0.0
    for i in range(n):
        dmax = max(dmax, A[i, i])
    for j in range(n):
        s = A[j, j]
        for k in range(j):
            s -= L[j, k] * L[j, k]
        if not (s > 1e-14 * dmax) or dmax <= 0.0:
            return b.copy(), False
        L[j, j] = math.sqrt(s)
        for i in range(j + 1, n):
            s2 = A[i, j]
            for k in range(j):
                s2 -= L[i, k] * L[j, k]
            L[i, j] = s2 / L[j, j]
    # a tiny pivot relative to the largest one means a numerically singular design:
    # prefer the minimum-norm answer, as the reference does
    lmin = np.inf
    lmax = 0.0
    for j in range(n):
        lmin = min(lmin, L[j, j])
        lmax = max(lmax, L[j, j])
    if n > 0 and lmin <= 1e-7 * lmax:
        return b.copy(), False
    # scalar loops over a 2-D view: with a matrix right-hand side, row expressions such as
    # ``x[i] - L[i, k] * x[k]`` would allocate a temporary array per term
    x = b.copy()
    x2 = x.reshape((n, -1))
    m = x2.shape[1]
    for c in range(m):
        for i in range(n):
            s = x2[i, c]
            for k in range(i):
                s -= L[i, k] * x2[k, c]
            x2[i, c] = s / L[i, i]
        for i in range(n - 1, -1, -1):
            s = x2[i, c]
            for k in range(i + 1, n):
                s -= L[k, i] * x2[k, c]
            x2[i, c] = s / L[i, i]
    return x, True


@njit(cache=True)
def _pinv_solve(A, b, n_rows):
    lam, V = np.linalg.eigh(A)
    lmax = 0.0
    for i in range(lam.shape[0]):
        lmax = max(lmax, lam[i])
    eps = 2.220446049250313e-16
    cut = eps * max(n_rows, A.shape[0]) * lmax  # the Gram's eigenvalue noise (see the reference)
    vb = V.T @ b
    for i in range(lam.shape[0]):
        vb[i] = vb[i] / lam[i] if lam[i] > cut else 0.0
    return V @ vb


@njit(cache=True)
def _solve(A, b, n_rows):
    if A.shape[0] == 0:
        return np.zeros(0)
    x, ok = _chol_solve(A, b)
    if ok:
        return x
    return _pinv_solve(A, b, n_rows)


@njit(cache=True)
def _sub(G, idx):
    n = idx.shape[0]
    out = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = G[idx[i], idx[j]]
    return out


@njit(cache=True)
def _subv(v, idx):
    out = np.empty(idx.shape[0])
    for i in range(idx.shape[0]):
        out[i] = v[idx[i]]
    return out


@njit(cache=True)
def _rss(G, b, yy, beta):
    n = beta.shape[0]
    r = yy
    for i in range(n):
        r -= 2.0 * beta[i] * b[i]
        gi = 0.0
        for j in range(n):
            gi += G[i, j] * beta[j]
        r += beta[i] * gi
    return r


@njit(cache=True)
def _r2(rss, tss):
    if tss > 0:
        return 1.0 - rss / tss
    return 1.0  # constant target: see the reference


@njit(cache=True, inline="always")
def _tss_floored(tss, sw, ymax, n_rows):
    # 0 for a TSS within a constant target's rounding noise (reference.tss_noise)
    e = n_rows * 2.220446049250313e-16 * ymax
    return 0.0 if tss <= sw * e * e else tss


@njit(cache=True)
def _stable_top(v, k):
    # k passes of "first index with the largest |v|" = a stable descending sort's prefix
    F = v.shape[0]
    k = min(k, F)
    taken = np.zeros(F, dtype=np.bool_)
    out = np.empty(k, dtype=np.int64)
    for i in range(k):
        best = -1
        bv = -1.0
        for f in range(F):
            if not taken[f] and (best < 0 or abs(v[f]) > bv):
                best = f
                bv = abs(v[f])
        taken[best] = True
        out[i] = best
    return out


_LARS_ALPHA_EPS = float(np.finfo(np.float32).eps)  # scikit-learn's lars_path stopping tolerance


_LARS_DEGENERATE = 1e-7
_TINY32 = 1.1754943508222875e-38
_EPS64 = 2.220446049250313e-16


@njit(cache=True)
def _lower_solve(L, n, b):
    # L[:n, :n] x = b (lower triangular)
    x = b.copy()
    for i in range(n):
        t = x[i]
        for k in range(i):
            t -= L[i, k] * x[k]
        x[i] = t / L[i, i]
    return x


@njit(cache=True)
def _cho_solve_n(L, n, b):
    y = _lower_solve(L, n, b)
    for i in range(n - 1, -1, -1):
        t = y[i]
        for k in range(i + 1, n):
            t -= L[k, i] * y[k]
        y[i] = t / L[i, i]
    return y


@njit(cache=True)
def _chol_rows(G, order, n, L):
    # L[:n, :n] = the Cholesky factor of G[order[:n], order[:n]], column by column as the
    # path appends features (pivots floored at eps)
    for k in range(n):
        gk = np.empty(k)
        for i in range(k):
            gk[i] = G[order[k], order[i]]
        w = _lower_solve(L, k, gk)
        v = 0.0
        for i in range(k):
            L[k, i] = w[i]
            v += w[i] * w[i]
        L[k, k] = max(math.sqrt(abs(G[order[k], order[k]] - v)), _EPS64)


@njit(cache=True)
def _round15(x):
    # np.around(x, 15): scale, round half to even, unscale
    return np.round(x * 1e15) / 1e15


@njit(cache=True)
def _lars_lasso_gram(G, c0, n_rows, max_steps):
    """LARS-lasso path from the Gram matrix, scikit-learn's ``lars_path(method='lasso')``
    step for step (see the reference: working order, stopping rules, degenerate features,
    regularised directions, drops); columns = breakpoints."""
    F = G.shape[0]
    order = np.arange(F)
    cov = c0.copy()  # correlations of order[n_act:], at positions 0 .. F - n_act - 1
    n_cov = F
    coef = np.zeros(F)
    path = np.zeros((F, max_steps + 1))
    n_path = 1
    sign = np.zeros(F)
    L = np.zeros((F, F))
    n_act = 0
    drop = False
    prev_C = 0.0
    n_iter = 0
    while True:
        c_idx = 0
        C_ = 0.0
        C = 0.0
        for i in range(n_cov):
            if abs(cov[i]) > C:
                C = abs(cov[i])
                C_ = cov[i]
                c_idx = i
        if C / n_rows <= _LARS_ALPHA_EPS or n_iter >= max_steps or n_act >= F:
            break
        if not drop:
            m = n_act
            nn = c_idx + n_act
            t = cov[c_idx]
            cov[c_idx] = cov[0]
            cov[0] = t
            o = order[nn]
            order[nn] = order[m]
            order[m] = o
            j = order[m]
            gj = np.empty(m)
            for i in range(m):
                gj[i] = G[j, order[i]]
            w = _lower_solve(L, m, gj)
            v = 0.0
            for i in range(m):
                v += w[i] * w[i]
            diag = max(math.sqrt(abs(G[j, j] - v)), _EPS64)
            if diag < _LARS_DEGENERATE:
                # not added: scikit-learn zeroes the correlation at its working position
                # and swaps the correlations back, not the features
                cov[0] = 0.0
                t = cov[c_idx]
                cov[c_idx] = cov[0]
                cov[0] = t
                continue
            for i in range(m):
                L[m, i] = w[i]
            L[m, m] = diag
            for i in range(n_cov - 1):
                cov[i] = cov[i + 1]
            n_cov -= 1
            sign[m] = 1.0 if C_ > 0 else (-1.0 if C_ < 0 else 0.0)
            n_act += 1
        if n_iter > 0 and prev_C < C:
            break  # alpha increasing: scikit-learn's early stop
        s = sign[:n_act].copy()
        ls = _cho_solve_n(L, n_act, s)
        if n_act == 1 and ls[0] == 0:
            ls[0] = 1.0
            AA = 1.0
        else:
            tot = 0.0
            for i in range(n_act):
                tot += ls[i] * s[i]
            AA = 1.0 / math.sqrt(tot) if tot > 0 else np.inf
            k = 0
            while not math.isfinite(AA):
                L_ = L[:n_act, :n_act].copy()
                for i in range(n_act):
                    L_[i, i] += (2.0 ** k) * _EPS64
                ls = _cho_solve_n(L_, n_act, s)
                tot = 0.0
                for i in range(n_act):
                    tot += ls[i] * s[i]
                AA = 1.0 / math.sqrt(max(tot, _EPS64))
                k += 1
            for i in range(n_act):
                ls[i] *= AA
        a = np.empty(n_cov)
        for q in range(n_cov):
            f = order[n_act + q]
            acc = 0.0
            for i in range(n_act):
                acc += G[f, order[i]] * ls[i]
            a[q] = _round15(acc)
        gamma = C / AA
        for q in range(n_cov):
            g1 = (C - cov[q]) / (AA - a[q] + _TINY32)
            if g1 > 0 and g1 < gamma:
                gamma = g1
            g2 = (C + cov[q]) / (AA + a[q] + _TINY32)
            if g2 > 0 and g2 < gamma:
                gamma = g2
        drop = False
        z = np.empty(n_act)
        z_pos = np.inf
        for i in range(n_act):
            z[i] = -coef[order[i]] / (ls[i] + _TINY32)
            if z[i] > 0 and z[i] < z_pos:
                z_pos = z[i]
        if z_pos < gamma:
            gamma = z_pos
            drop = True
        n_iter += 1
        new = np.zeros(F)
        for i in range(n_act):
            new[order[i]] = coef[order[i]] + gamma * ls[i]
        outs = np.empty(n_act, dtype=np.int64)
        n_out = 0
        if drop:
            for i in range(n_act - 1, -1, -1):
                if z[i] == z_pos:
                    outs[n_out] = i
                    n_out += 1
        coef = new
        for q in range(n_cov):
            cov[q] -= gamma * a[q]
        if n_path < path.shape[1]:
            path[:, n_path] = coef
            n_path += 1
        if drop:
            for r in range(n_out):
                ii = outs[r]
                for i in range(ii, n_act - 1):
                    o = order[i]
                    order[i] = order[i + 1]
                    order[i + 1] = o
                for i in range(ii, n_act - 1):
                    sign[i] = sign[i + 1]
                n_act -= 1
            _chol_rows(G, order, n_act, L)
            j = order[n_act]
            cj = c0[j]
            for i in range(n_act):
                cj -= G[j, order[i]] * coef[order[i]]
            for q in range(n_cov, 0, -1):
                cov[q] = cov[q - 1]
            cov[0] = cj
            n_cov += 1
        prev_C = C
    return path[:, :n_path]


@njit(cache=True)
def _select(code, G, b_t, yy_t, tss_t, x0, num_features, n_rows):
    F = G.shape[0]
    if code == 0 or F == 0:
        return np.arange(F)
    if code == 1:
        A = G.copy()
        for i in range(F):
            A[i, i] += 0.01
        beta = _solve(A, b_t, n_rows)
        return _stable_top(beta * x0, num_features)
    if code == 2:
        kmax = min(num_features, F)
        used = np.empty(kmax, dtype=np.int64)
        taken = np.zeros(F, dtype=np.bool_)
        idx = np.empty(kmax, dtype=np.int64)
        for step in range(kmax):
            best = 0
            best_score = -1e8
            for f in range(F):
                if taken[f]:
                    continue
                for i in range(step):
                    idx[i] = used[i]
                idx[step] = f
                cur = idx[: step + 1]
                Gs = _sub(G, cur)
                bs = _subv(b_t, cur)
                beta = _solve(Gs, bs, n_rows)
                sc = _r2(_rss(Gs, bs, yy_t, beta) + (tss_t - yy_t), tss_t)
                if sc > best_score:
                    best = f
                    best_score = sc
            used[step] = best
            taken[best] = True
        return used
    # code == 3: lasso_path
    path = _lars_lasso_gram(G, b_t, n_rows, 500)
    nonzero = np.arange(F)
    for i in range(path.shape[1] - 1, 0, -1):
        cnt = 0
        for f in range(F):
            if path[f, i] != 0.0:
                cnt += 1
        nonzero = np.empty(cnt, dtype=np.int64)
        c = 0
        for f in range(F):
            if path[f, i] != 0.0:
                nonzero[c] = f
                c += 1
        if cnt <= num_features:
            break
    return nonzero


@njit(cache=True)
def _solve_all(G, ridge, XY, n_rows):
    """``(G + ridge·I)⁻¹ XY`` for every column with one factorisation (the matrix does not
    depend on the target); a singular system falls back to the per-column minimum norm."""
    F = G.shape[0]
    A = G.copy()
    for i in range(F):
        A[i, i] += ridge
    X, ok = _chol_solve(A, XY)
    if not ok:
        for t in range(XY.shape[1]):
            X[:, t] = _pinv_solve(A, XY[:, t].copy(), n_rows)
    return X


@njit(cache=True)
def _fit_gram_one(G, XY, YY, TSS, xbar, ybar, x0, alpha, select, num_features, coef, icpt, score, pred0, used,
                  n_rows):
    T = XY.shape[1]
    F = G.shape[0]
    # 'none' and 'highest_weights' solve with matrices shared by all targets: factorise once.
    # highest_weights ranks features by a ridge(0.01) fit; when it keeps every feature, the
    # final ridge(alpha) is the full system too, only reported in the selection order.
    shared_sel = select == 1 and F > 0
    full = F > 0 and (select == 0 or (select == 1 and num_features >= F))
    B01 = _solve_all(G, 0.01, XY, n_rows) if shared_sel else np.empty((0, 0))
    Bfull = _solve_all(G, alpha, XY, n_rows) if full else np.empty((0, 0))
    for t in range(T):
        bt = XY[:, t].copy()
        if shared_sel:
            sel = _stable_top(B01[:, t] * x0, num_features)
        else:
            sel = _select(select, G, bt, YY[t], TSS[t], x0, num_features, n_rows)
        n = sel.shape[0]
        bs = _subv(bt, sel)
        if full:
            beta = _subv(Bfull[:, t].copy(), sel)
        else:
            A = _sub(G, sel)
            for i in range(n):
                A[i, i] += alpha
            beta = _solve(A, bs, n_rows)
        Gs = _sub(G, sel)
        rss = _rss(Gs, bs, YY[t], beta) + (TSS[t] - YY[t])
        c = ybar[t]
        p = 0.0
        for i in range(n):
            f = sel[i]
            coef[t, f] = beta[i]
            c -= xbar[f] * beta[i]
            p += x0[f] * beta[i]
            used[t, f] = i + 1
        icpt[t] = c
        score[t] = _r2(rss, TSS[t])
        pred0[t] = c + p


@njit(cache=True)
def _fit_gram_all(G, XY, YY, TSS, xbar, ybar, x0, alpha, select, num_features, coef, icpt, score, pred0, used,
                  n_rows):
    # small per-target problems; serial keeps results independent of the thread count
    for b in range(G.shape[0]):
        _fit_gram_one(G[b], XY[b], YY[b], TSS[b], xbar[b], ybar[b], x0[b], alpha, select, num_features,
                      coef[b], icpt[b], score[b], pred0[b], used[b], n_rows)


def fit_surrogate(X, Y, w, x0, alpha, fit_intercept=True, select=0, num_features=0):
    """See :func:`xaikernels.reference.perturb.fit_surrogate`.  The one O(S·F²) step, the
    weighted Gram matrix, goes to NumPy's BLAS (faster here than Numba's matmul); centring,
    feature selection and the Cholesky solves for every target run in Numba."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    Y = np.ascontiguousarray(Y, dtype=np.float64)
    w = np.ascontiguousarray(w, dtype=np.float64)
    x0 = np.ascontiguousarray(x0, dtype=np.float64)
    B, S, F = X.shape
    T = Y.shape[2]
    G = np.empty((B, F, F))
    XY = np.empty((B, F, T))
    YY = np.empty((B, T))
    TSS = np.empty((B, T))
    xbar = np.zeros((B, F))
    ybar = np.zeros((B, T))
    for b in range(B):
        # 2-D BLAS products per instance (batched einsum/matmul on (1, S, F) costs more in
        # NumPy's dispatch than the arithmetic at lime's sizes)
        wb = w[b]
        sw = wb.sum()
        xm = (wb @ X[b]) / sw
        ym = (wb @ Y[b]) / sw
        if fit_intercept:
            xbar[b] = xm
            ybar[b] = ym
        q = np.sqrt(wb)[:, None]
        Xw = (X[b] - xbar[b]) * q
        Yw = (Y[b] - ybar[b]) * q
        G[b] = Xw.T @ Xw
        XY[b] = Xw.T @ Yw
        YY[b] = np.einsum("st,st->t", Yw, Yw)
        if fit_intercept:
            TSS[b] = YY[b]
        else:
            Yt = (Y[b] - ym) * q
            TSS[b] = np.einsum("st,st->t", Yt, Yt)
        ymax = np.abs(Y[b]).max(0) if S else np.zeros(T)
        for t in range(T):
            TSS[b, t] = _tss_floored(TSS[b, t], sw, ymax[t], S)
    coef = np.zeros((B, T, F))
    icpt = np.zeros((B, T))
    score = np.zeros((B, T))
    pred0 = np.zeros((B, T))
    used = np.zeros((B, T, F), dtype=np.int32)
    _fit_gram_all(G, XY, YY, TSS, xbar, ybar, x0, float(alpha),
                  int(select), int(num_features), coef, icpt, score, pred0, used, S)
    return coef, icpt, score, pred0, used


@njit(cache=True)
def _output_check(Y):
    finite = True
    proba = True
    for s in range(Y.shape[0]):
        t = 0.0
        for k in range(Y.shape[1]):
            v = Y[s, k]
            finite &= math.isfinite(v)
            proba &= (v >= 0.0) & (v <= 1.0)
            t += v
        proba &= abs(t - 1.0) <= 1e-8 + 1e-5
    return finite, proba and finite


def output_check(Y):
    """See :func:`xaikernels.reference.perturb.output_check`."""
    finite, proba = _output_check(Y)
    return bool(finite), bool(proba)


@njit(cache=True, inline="always")
def _ones_distance(dot, nz, d2, sqF, cosine):
    """Distance of a row to the all-ones row (as _row_distances) from its Σx, Σx², Σ(x-1)²
    and sqrt(F): cosine (zero rows at 1, clipped to [0, 2]) or euclidean."""
    if cosine:
        den = math.sqrt(nz) * sqF
        return min(max(1.0 - (dot / den if den > 0 else 0.0), 0.0), 2.0)
    return math.sqrt(d2)


@njit(cache=True, inline="always")
def _lime_weight(d, w2):
    """lime's exponential kernel ``sqrt(exp(-d²/width²))`` (w2 = width²)."""
    return math.sqrt(math.exp(-(d * d) / w2))


@njit(cache=True)
def _fit_lime(X, Y, labels, wd, width, metric, alpha, select, num_features, coef, icpt, score, pred0, used):
    # weights, weighted centring and the Gram products in one pass over the samples, then
    # the per-label selection and solves: one kernel call per explanation
    S, F = X.shape
    T = labels.shape[0]
    w = np.empty(S)
    w2 = width * width
    sqF = math.sqrt(np.float64(F))
    for s in range(S):
        if metric == 0:
            w[s] = wd[s]
        else:
            if metric == 1:
                d = wd[s]
            else:
                dot = 0.0
                nz = 0.0
                d2 = 0.0
                for f in range(F):
                    v = np.float64(X[s, f])
                    dot += v
                    nz += v * v
                    d2 += (v - 1.0) * (v - 1.0)
                d = _ones_distance(dot, nz, d2, sqF, metric == 2)
            w[s] = _lime_weight(d, w2)
    sw = 0.0
    for s in range(S):
        ws = w[s]
        if not (ws >= 0.0 and ws < np.inf):
            return 2
        sw += ws
    if not sw > 0:
        return 2
    xbar = np.zeros(F)
    ybar = np.zeros(T)
    for s in range(S):
        ws = w[s]
        for f in range(F):
            xbar[f] += ws * X[s, f]
        for t in range(T):
            ybar[t] += ws * Y[s, labels[t]]
    for f in range(F):
        xbar[f] /= sw
        if not math.isfinite(xbar[f]):
            return 1
    for t in range(T):
        ybar[t] /= sw
        if not math.isfinite(ybar[t]):
            return 1
    Xc = np.empty((S, F))
    Yc = np.empty((S, T))
    for s in range(S):
        q = math.sqrt(w[s])
        for f in range(F):
            Xc[s, f] = (X[s, f] - xbar[f]) * q
        for t in range(T):
            Yc[s, t] = (Y[s, labels[t]] - ybar[t]) * q
    # the one O(S·F²) step: BLAS (through Numba's matmul) beats hand-written dot products
    # here, even at lime's small column counts
    G = Xc.T @ Xc
    XY = Xc.T @ Yc
    YY = np.zeros(T)
    for s in range(S):
        for t in range(T):
            YY[t] += Yc[s, t] * Yc[s, t]
    TSS = np.empty(T)
    for t in range(T):
        if not math.isfinite(YY[t]):
            return 1
        ymax = 0.0
        for s in range(S):
            ymax = max(ymax, abs(Y[s, labels[t]]))
        TSS[t] = _tss_floored(YY[t], sw, ymax, S)
    x0 = np.empty(F)
    for f in range(F):
        x0[f] = X[0, f]
    _fit_gram_one(G, XY, YY, TSS, xbar, ybar, x0, alpha, select, num_features, coef, icpt, score, pred0, used, S)
    return 0


@intrinsic
def _popcount(typingctx, x):
    """Set bits of a uint64 (LLVM's ctpop: one instruction where the CPU has it)."""
    if not (isinstance(x, nbtypes.Integer) and x.bitwidth == 64 and not x.signed):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return nbtypes.uint64(nbtypes.uint64), codegen


@njit(cache=True)
def _row_counts(X):
    """(count of non-zero entries per row, whether every entry is 0 or 1)."""
    S, F = X.shape
    cnt = np.empty(S, dtype=np.int64)
    bad = False
    for r in range(S):
        c = 0
        for f in range(F):
            v = X[r, f]
            c += np.int64(v != 0)
            bad |= (v != 0) & (v != 1)
        cnt[r] = c
    return cnt, not bad


@njit(cache=True)
def _class_gram(X, wk, g):
    """``g`` (F+1, F+1) ← the augmented weighted Gram Σ_r w_r x'_r x'_rᵀ, x' = (x, 1), of 0/1
    rows ``X`` (S, F) (uint8 or float) whose weight depends only on the row's count of ones:
    ``w_r = wk[Σ x_r]`` (:func:`_gram_by_counts`).  Returns False, g untouched, when some
    entry of X is not 0 or 1."""
    cnt, binary = _row_counts(X)
    if not binary:
        return False
    _gram_by_counts(X, cnt, wk, g)
    return True


@njit(cache=True)
def _gram_by_counts(X, cnt, wk, g):
    """:func:`_class_gram` for 0/1 rows with their counts ``cnt``.  Rows are grouped by count,
    each column becomes a bitset over the grouped rows, and each (class, 64-row word) piece
    adds ``wk · popcount(bᵢ & bⱼ & piece)`` to g[i, j]: integer counts instead of S·F²
    multiply-adds (lime's coalitions: ~60× fewer operations)."""
    S, F = X.shape
    E = F + 1
    start = np.zeros(F + 2, dtype=np.int64)
    for r in range(S):
        start[cnt[r] + 1] += 1
    for k in range(F + 1):
        start[k + 1] += start[k]
    pos = start.copy()
    NW = (S + 63) >> 6
    bits = np.zeros((NW, E), dtype=np.uint64)
    for r in range(S):
        p = pos[cnt[r]]
        pos[cnt[r]] += 1
        q = p >> 6
        sh = np.uint64(p & 63)
        row = bits[q]
        for f in range(F):
            row[f] |= np.uint64(X[r, f] != 0) << sh
        row[F] |= _ONE << sh
    _gram_of_pieces(bits, start, wk, F, g)


@njit(cache=True)
def _gram_of_pieces(bits, start, wk, F, g):
    """``g = Σ_k wk[k] Σ_{rows of class k} z' z'ᵀ`` from the rows' column bitmaps ``bits``
    (64-row words; column F all ones) with the rows sorted by class (``start``: class
    boundaries): popcounts of 64-row pieces, added in piece order, then mirrored."""
    E = F + 1
    g[:, :] = 0.0
    for k in range(F + 1):
        a = np.int64(start[k])
        e = np.int64(start[k + 1])
        if a == e:
            continue
        w = wk[k]
        for q in range(a >> 6, ((e - 1) >> 6) + 1):
            lo = max(a, q << 6) - (q << 6)
            hi = min(e, (q + 1) << 6) - (q << 6)
            piece = (_U64_ALL >> np.uint64(64 - (hi - lo))) << np.uint64(lo)
            row = bits[q]
            for i in range(E):
                bi = row[i] & piece
                if bi == 0:
                    continue
                gi = g[i]
                for j in range(i + 1):
                    gi[j] += w * np.float64(_popcount(bi & row[j]))
    for i in range(E):
        for j in range(i):
            g[j, i] = g[i, j]


@njit(cache=True)
def _fit_lime_binary(X, Y, labels, width, metric, alpha, select, num_features, coef, icpt, score, pred0, used):
    # lime's coalition weights (cosine / euclidean distance to the all-ones row) depend only
    # on a 0/1 row's count of ones: the weighted Gram by class popcounts (_class_gram), then
    # _fit_lime_gram's centring, label products and solves.  Status 3: X is not 0/1.
    S, F = X.shape
    cnt, binary = _row_counts(X)
    if not binary:
        return 3
    w2 = width * width
    sqF = math.sqrt(np.float64(F))
    wk = np.empty(F + 1)
    for k in range(F + 1):
        # _fit_lime's per-row sums for a row of k ones (exact in floating point)
        v = np.float64(k)
        wk[k] = _lime_weight(_ones_distance(v, v, np.float64(F - k), sqF, metric == 2), w2)
        if not (wk[k] >= 0.0 and wk[k] < np.inf):
            return 2
    g = np.empty((F + 1, F + 1))
    _gram_by_counts(X, cnt, wk, g)
    w = np.empty(S)
    for r in range(S):
        w[r] = wk[cnt[r]]
    return _fit_lime_gram(X, Y, labels, w, g, alpha, select, num_features, coef, icpt, score, pred0, used)


@njit(cache=True)
def _fit_lime_given_weights(X, Y, labels, wd, width, metric, alpha, select, num_features, coef, icpt, score, pred0,
                            used):
    # given weights (metric 0) or distances (metric 1, lime's kernel as in _fit_lime): when X
    # is 0/1 and the weights are a function of a row's count of ones (lime text's distances,
    # the tabular sampler's), the class-popcount Gram and _fit_lime_gram.  Status 3: not so
    # (or weights the dense kernel must report on).
    S = X.shape[0]
    w = np.empty(S)
    w2 = width * width
    for s in range(S):
        if metric == 0:
            w[s] = wd[s]
        else:
            w[s] = _lime_weight(wd[s], w2)
        if not (w[s] >= 0.0 and w[s] < np.inf):
            return 3
    g = np.empty((X.shape[1] + 1, X.shape[1] + 1))
    if not _class_gram_rows(X, w, g):
        return 3
    return _fit_lime_gram(X, Y, labels, w, g, alpha, select, num_features, coef, icpt, score, pred0, used)


def fit_lime(X, Y, labels, wd, width, metric, alpha, select, num_features):
    """See :func:`xaikernels.reference.perturb.fit_lime`.  0/1 rows whose weights depend only
    on the row's count of ones (coalitions with distance-to-ones weights, lime text's
    distances, the tabular sampler's binary rows) take the class-popcount Gram
    (:func:`_class_gram`); anything else the dense kernel."""
    out = _fit_outputs(labels.shape[0], X.shape[1])
    if X.shape[0] and X.shape[1] and (metric in (0, 1) or X.dtype == np.uint8):
        if metric in (2, 3):
            status = _fit_lime_binary(X, Y, labels, float(width), int(metric), float(alpha), int(select),
                                      int(num_features), *out)
        else:
            status = _fit_lime_given_weights(X, Y, labels, wd, float(width), int(metric), float(alpha), int(select),
                                             int(num_features), *out)
        if status != 3:
            return (*out, status)
        out = _fit_outputs(labels.shape[0], X.shape[1])
    status = _fit_lime(X, Y, labels, wd, float(width), int(metric), float(alpha), int(select), int(num_features),
                       *out)
    return (*out, status)


def _fit_outputs(T, F):
    """coef (T, F), intercept, score, prediction at the instance (T,), used (T, F) int32."""
    return np.zeros((T, F)), np.zeros(T), np.zeros(T), np.zeros(T), np.zeros((T, F), dtype=np.int32)


# ----------------------------------------------------------------------------------- lasso
@njit(cache=True)
def _gap(Xc, yc, R, beta, l1, XtA):
    S, F = Xc.shape
    dual_norm = 0.0
    for j in range(F):
        s = 0.0
        for i in range(S):
            s += Xc[i, j] * R[i]
        XtA[j] = s
        dual_norm = max(dual_norm, abs(s))
    R_norm2 = 0.0
    Ry = 0.0
    for i in range(S):
        R_norm2 += R[i] * R[i]
        Ry += R[i] * yc[i]
    l1n = 0.0
    for j in range(F):
        l1n += abs(beta[j])
    primal = 0.5 * R_norm2 + l1 * l1n
    scale = l1 / dual_norm if dual_norm > l1 else 1.0
    dual = -0.5 * scale * scale * R_norm2 + scale * Ry
    return primal - dual, dual_norm


@njit(cache=True)
def _screen(Xc, R, beta, norm2, XtA, dual_norm, gap, l1, excluded, active):
    S, F = Xc.shape
    n = 0
    for j in range(F):
        if excluded[j]:
            continue
        d_j = (1.0 - abs(XtA[j] / max(l1, dual_norm))) / math.sqrt(norm2[j])
        if d_j <= math.sqrt(2.0 * gap) / l1:
            active[n] = j
            n += 1
        else:
            if beta[j] != 0.0:
                for i in range(S):
                    R[i] += beta[j] * Xc[i, j]
                beta[j] = 0.0
            excluded[j] = True
    return n


@njit(cache=True)
def _lasso_one(X, y, w, alpha, max_iter, tol, beta_out, info_out):
    S, F = X.shape
    tw = 0.0
    for s in range(S):
        tw += w[s]
    sw = np.empty(S)
    for s in range(S):
        sw[s] = w[s] * (S / tw)
    tot = 0.0
    for s in range(S):
        tot += sw[s]
    xbar = np.zeros(F)
    ybar = 0.0
    for s in range(S):
        for f in range(F):
            xbar[f] += sw[s] * X[s, f]
        ybar += sw[s] * y[s]
    for f in range(F):
        xbar[f] /= tot
    ybar /= tot
    Xc = np.empty((S, F))
    yc = np.empty(S)
    for s in range(S):
        q = math.sqrt(sw[s])
        for f in range(F):
            Xc[s, f] = (X[s, f] - xbar[f]) * q
        yc[s] = (y[s] - ybar) * q
    l1 = alpha * S
    beta = np.zeros(F)
    norm2 = np.zeros(F)
    for f in range(F):
        for s in range(S):
            norm2[f] += Xc[s, f] * Xc[s, f]
    R = yc.copy()
    yy = 0.0
    for s in range(S):
        yy += yc[s] * yc[s]
    tol_s = tol * yy
    XtA = np.empty(F)
    gap, dual_norm = _gap(Xc, yc, R, beta, l1, XtA)
    converged = gap <= tol_s
    if not converged:
        excluded = np.zeros(F, dtype=np.bool_)
        for f in range(F):
            excluded[f] = norm2[f] == 0.0
        active = np.empty(F, dtype=np.int64)
        n_act = _screen(Xc, R, beta, norm2, XtA, dual_norm, gap, l1, excluded, active)
        for it in range(max_iter):
            w_max = 0.0
            d_w_max = 0.0
            for a in range(n_act):
                j = active[a]
                old = beta[j]
                tmp = 0.0
                for s in range(S):
                    tmp += Xc[s, j] * R[s]
                tmp += old * norm2[j]
                new = 0.0
                if tmp != 0.0:
                    new = math.copysign(max(abs(tmp) - l1, 0.0), tmp) / norm2[j]
                beta[j] = new
                if new != old:
                    dlt = old - new
                    for s in range(S):
                        R[s] += dlt * Xc[s, j]
                d_w_max = max(d_w_max, abs(new - old))
                w_max = max(w_max, abs(new))
            if w_max == 0.0 or d_w_max / w_max <= tol or it == max_iter - 1:
                gap, dual_norm = _gap(Xc, yc, R, beta, l1, XtA)
                if gap <= tol_s:
                    converged = True
                    break
                n_act = _screen(Xc, R, beta, norm2, XtA, dual_norm, gap, l1, excluded, active)
    info_out[0] = gap
    info_out[1] = tol_s
    info_out[2] = 1.0 if converged else 0.0
    c = ybar
    for f in range(F):
        beta_out[f] = beta[f]
        c -= xbar[f] * beta[f]
    return c


@njit(cache=True, parallel=True)
def _lasso_all(X, Y, w, alpha, max_iter, tol, coef, icpt, info):
    B = X.shape[0]
    T = Y.shape[2]
    for k in prange(B * T):
        b = k // T
        t = k % T
        icpt[b, t] = _lasso_one(X[b], Y[b, :, t].copy(), w[b], alpha, max_iter, tol, coef[b, t], info[b, t])


def lasso_fit(X, Y, w, alpha, max_iter=1000, tol=1e-4):
    """Weighted lasso for every instance and target: (B, S, F), (B, S, T), (B, S) → coef
    (B, T, F), intercept (B, T), info (B, T, 3) = (final duality gap, scaled tolerance,
    1.0 if converged else 0.0).  See :func:`xaikernels.reference.perturb.lasso_cd`."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    Y = np.ascontiguousarray(Y, dtype=np.float64)
    w = np.ascontiguousarray(w, dtype=np.float64)
    B, S, F = X.shape
    T = Y.shape[2]
    # the jitted loops index Y and w by X's extents: refuse any other shapes here too
    if Y.shape[:2] != (B, S) or w.shape != (B, S):
        raise ValueError(f"shapes disagree: X {X.shape}, Y {Y.shape}, w {w.shape}")
    coef = np.zeros((B, T, F))
    icpt = np.zeros((B, T))
    info = np.zeros((B, T, 3))
    _lasso_all(X, Y, w, float(alpha), int(max_iter), float(tol), coef, icpt, info)
    return coef, icpt, info


# ------------------------------------------------------------------------ constrained (SHAP)
@njit(cache=True)
def _kkt_pinv(A, C, delta, n_rows):
    F = A.shape[0]
    T = C.shape[1]
    K = np.zeros((F + 1, F + 1))
    for i in range(F):
        for j in range(F):
            K[i, j] = A[i, j]
        K[i, F] = 1.0
        K[F, i] = 1.0
    rhs = np.empty((F + 1, T))
    for i in range(F):
        for t in range(T):
            rhs[i, t] = C[i, t]
    for t in range(T):
        rhs[F, t] = delta[t]
    lam, V = np.linalg.eigh(K)
    amax = 0.0
    for i in range(F + 1):
        amax = max(amax, abs(lam[i]))
    cut = 2.220446049250313e-16 * max(n_rows, F + 1) * amax
    vr = V.T @ rhs
    for i in range(F + 1):
        for t in range(T):
            vr[i, t] = vr[i, t] / lam[i] if abs(lam[i]) > cut else 0.0
    return (V @ vr)[:F]


@njit(cache=True)
def _constrained_one(Z, Y, w, delta, alpha, phi):
    S, F = Z.shape
    T = Y.shape[1]
    Zw = np.empty((S, F))
    Yw = np.empty((S, T))
    for s in range(S):
        q = math.sqrt(w[s])
        for f in range(F):
            Zw[s, f] = Z[s, f] * q
        for t in range(T):
            Yw[s, t] = Y[s, t] * q
    A = Zw.T @ Zw
    for i in range(F):
        A[i, i] += alpha
    C = Zw.T @ Yw
    rhs = np.empty((F, T + 1))
    for i in range(F):
        for t in range(T):
            rhs[i, t] = C[i, t]
        rhs[i, T] = 1.0
    sol, ok = _chol_solve(A, rhs)
    if not ok:
        P = _kkt_pinv(A, C, delta, S)
        for t in range(T):
            for f in range(F):
                phi[t, f] = P[f, t]
        return 1
    sv = 0.0
    for f in range(F):
        sv += sol[f, T]
    for t in range(T):
        su = 0.0
        for f in range(F):
            su += sol[f, t]
        lam = (su - delta[t]) / sv
        for f in range(F):
            phi[t, f] = sol[f, t] - sol[f, T] * lam
    return 0


@njit(cache=True, parallel=True)
def _constrained_all(Z, Y, w, delta, alpha, phi, flag):
    for b in prange(Z.shape[0]):
        flag[b] = _constrained_one(Z[b], Y[b], w[b], delta[b], alpha, phi[b])


def constrained_wls(Z, Y, w, delta, alpha):
    """See :func:`xaikernels.reference.perturb.constrained_wls`."""
    Z = np.ascontiguousarray(Z, dtype=np.float64)
    Y = np.ascontiguousarray(Y, dtype=np.float64)
    w = np.ascontiguousarray(w, dtype=np.float64)
    delta = np.ascontiguousarray(delta, dtype=np.float64)
    B, S, F = Z.shape
    T = Y.shape[2]
    phi = np.zeros((B, T, F))
    flag = np.zeros(B, dtype=np.int32)
    _constrained_all(Z, Y, w, delta, float(alpha), phi, flag)
    return phi, flag


# ----------------------------------------------------------------------------------- tabular
_TWO_M32 = 1.0 / 4294967296.0
_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, inline="always")
def _ndtri(p):
    # Acklam's approximation, as the reference
    if p < 0.02425:
        q = math.sqrt(-2.0 * math.log(p))
        return ((((((-7.784894002430293e-03 * q - 3.223964580411365e-01) * q - 2.400758277161838e+00) * q
                   - 2.549671010135326e+00) * q + 4.374664141464968e+00) * q + 2.938163982698783e+00)
                / ((((7.784695709041462e-03 * q + 3.224671290700398e-01) * q + 2.445134137142996e+00) * q
                    + 3.754408661907416e+00) * q + 1.0))
    if p > 1.0 - 0.02425:
        q = math.sqrt(-2.0 * math.log(1.0 - p))
        return -((((((-7.784894002430293e-03 * q - 3.223964580411365e-01) * q - 2.400758277161838e+00) * q
                    - 2.549671010135326e+00) * q + 4.374664141464968e+00) * q + 2.938163982698783e+00)
                 / ((((7.784695709041462e-03 * q + 3.224671290700398e-01) * q + 2.445134137142996e+00) * q
                     + 3.754408661907416e+00) * q + 1.0))
    q = p - 0.5
    r = q * q
    return ((((((-3.969683028665376e+01 * r + 2.209460984245205e+02) * r - 2.759285104469687e+02) * r
               + 1.383577518672690e+02) * r - 3.066479806614716e+01) * r + 2.506628277459239e+00) * q
            / (((((-5.447609879822406e+01 * r + 1.615858368580409e+02) * r - 1.556989798598866e+02) * r
                 + 6.680131188771972e+01) * r - 1.328068155288572e+01) * r + 1.0))


@njit(cache=True, parallel=True)
def _tabular(data, inv, base, row_offset, kind, cdf, values, inst, center, scale, lo_p, hi_p,
             bin_mean, bin_std, bin_lo, row0):
    n, D = data.shape
    V = cdf.shape[1]
    for r in prange(n):
        g = row_offset + r
        key = _row_key(base, g)
        if g == 0:
            for d in range(D):
                data[r, d] = row0[d] if kind[d] == 0 else 1.0
                inv[r, d] = row0[d]
            continue
        for d in range(D):
            h = _mix(key + (np.uint64(d) + _ONE) * _GOLDEN)
            u1 = (np.float64(np.int64(h >> _S32)) + 0.5) * _TWO_M32
            if kind[d] == 0:
                x = center[d] + scale[d] * _ndtri(u1)
                data[r, d] = x
                inv[r, d] = x
                continue
            k = 0
            while k < V - 1 and u1 >= cdf[d, k]:
                k += 1
            v = values[d, k]
            data[r, d] = 1.0 if v == inst[d] else 0.0
            if kind[d] == 1:
                inv[r, d] = v
            else:
                pl = lo_p[d, k]
                ph = hi_p[d, k]
                if ph > pl:
                    u2 = (np.float64(np.int64(h & _LOW32)) + 0.5) * _TWO_M32
                    inv[r, d] = bin_mean[d, k] + bin_std[d, k] * _ndtri(pl + u2 * (ph - pl))
                else:
                    inv[r, d] = bin_lo[d, k]


_tabular_serial = _serial_twin(_tabular)


def tabular_sample(n_rows, seed, stream, row_offset, kind, cdf, values, inst, center, scale, lo_p, hi_p,
                   bin_mean, bin_std, bin_lo, row0):
    """See :func:`xaikernels.reference.perturb.tabular_sample`."""
    D = kind.shape[0]
    data = np.empty((int(n_rows), D))
    inv = np.empty((int(n_rows), D))
    base = np.uint64(_stream_base(np.uint64(seed % 2**64), np.uint64(stream % 2**64)))
    _pick(_tabular, _tabular_serial, data.size)(data, inv, base, np.int64(row_offset), kind, cdf, values, inst, center, scale, lo_p, hi_p,
             bin_mean, bin_std, bin_lo, row0)
    return data, inv


# ------------------------------------------------ tabular: fused neighbourhood (inverse CDF)
# Branch-free pieces (selects, no calls, no integer→float conversions: AVX2 has none for
# 64-bit integers) so that LLVM vectorises the loops; the kernels use error_model="numpy"
# (a division by zero is IEEE, not a Python exception check that blocks vectorisation).
_S12 = np.uint64(12)
_S52 = np.uint64(52)
_EXP_ONE = np.uint64(0x3FF0000000000000)  # bits of 1.0
_EXP_HALF = np.uint64(0x3FE0000000000000)  # bits of 0.5
_MANT = np.uint64(0x000FFFFFFFFFFFFF)
_MANT_SQRT2 = np.uint64(0x0006A09E667F3BCD)  # mantissa bits of sqrt(2)
_MAGIC52 = np.uint64(0x4330000000000000)  # bits of 2^52
_EXP_BIAS = np.uint64(2048 - 1023)
_HALF_M52 = 0.5 / 4503599627370496.0
_P_MIN = 1e-300
_P_MAX = 1.0 - 1.1102230246251565e-16
_SELECT_MAX_V = 6  # up to this many bins per feature, selects on the uniform instead of gathers


@njit(cache=True, inline="always")
def _as241_central(q):
    # Wichura's AS241 (PPND16), |q| = |p - 1/2| <= 0.425; relative error ~1e-16
    r = 0.180625 - q * q
    return (q * (((((((2509.0809287301226727 * r + 33430.575583588128105) * r + 67265.770927008700853) * r
                     + 45921.953931549871457) * r + 13731.693765509461125) * r + 1971.5909503065514427) * r
                  + 133.14166789178437745) * r + 3.387132872796366608)
            / (((((((5226.495278852545925 * r + 28729.085735721942674) * r + 39307.89580009271061) * r
                   + 21213.794301586595867) * r + 5394.1960214247511077) * r + 687.1870074920579083) * r
                + 42.313330701600911252) * r + 1.0))


@njit(cache=True, inline="always")
def _as241_z1(r):
    # AS241 outside the central range, r = sqrt(-log(min(p, 1-p))) <= 5
    r1 = r - 1.6
    return ((((((((7.7454501427834140764e-4 * r1 + 0.0227238449892691845833) * r1 + 0.24178072517745061177) * r1
                 + 1.27045825245236838258) * r1 + 3.64784832476320460504) * r1 + 5.7694972214606914055) * r1
              + 4.6303378461565452959) * r1 + 1.42343711074968357734)
            / (((((((1.05075007164441684324e-9 * r1 + 5.475938084995344946e-4) * r1 + 0.0151986665636164571966) * r1
                   + 0.14810397642748007459) * r1 + 0.68976733498510000455) * r1 + 1.6763848301838038494) * r1
                + 2.05319162663775882187) * r1 + 1.0))


@njit(cache=True, inline="always")
def _as241_z2(r):
    # ... and r > 5 (min(p, 1-p) below about 1.4e-11)
    r2 = r - 5.0
    return ((((((((2.01033439929228813265e-7 * r2 + 2.71155556874348757815e-5) * r2 + 0.0012426609473880784386) * r2
                 + 0.026532189526576123093) * r2 + 0.29656057182850489123) * r2 + 1.7848265399172913358) * r2
              + 5.4637849111641143699) * r2 + 6.6579046435011037772)
            / (((((((2.04426310338993978564e-15 * r2 + 1.4215117583164458887e-7) * r2 + 1.8463183175100546818e-5) * r2
                   + 7.868691311456132591e-4) * r2 + 0.0148753612908506148525) * r2 + 0.13692988092273580531) * r2
                + 0.59983220655588793769) * r2 + 1.0))


@njit(cache=True, inline="always")
def _log1p_parts(f, dk):
    # fdlibm's log((1 + f)·2^dk) for f in [sqrt(2)/2 - 1, sqrt(2) - 1]
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01))
    t2 = z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01 + w * (1.818357216161805012e-01
                                                                             + w * 1.479819860511658591e-01)))
    hfsq = 0.5 * f * f
    return dk * 6.93147180369123816490e-01 - ((hfsq - (s * (hfsq + t2 + t1) + dk * 1.90821492927058770002e-10)) - f)


@njit(cache=True, inline="always")
def _tails(tp, tb, mb, mf, eb, ef, n):
    """``tp[:n]`` (p outside AS241's central range, in [_P_MIN, _P_MAX]) becomes |Φ⁻¹(p)|.
    ``tb`` is ``tp`` viewed as uint64, ``mf``/``ef`` views of the scratch ``mb``/``eb``: the
    logarithm works on the float's bits (mantissa in [sqrt(2)/2, sqrt(2)), exponent + 2048
    turned into a float by the 2^52 magic number), so every loop vectorises.  The rational
    for r > 5 (p below about 1.4e-11) is evaluated afterwards for the elements that need it."""
    for i in range(n):
        p = tp[i]
        tp[i] = min(p, 1.0 - p)
    for i in range(n):
        bits = tb[i]
        mant = bits & _MANT
        big = mant > _MANT_SQRT2
        mb[i] = mant | (_EXP_HALF if big else _EXP_ONE)
        eb[i] = _MAGIC52 | ((bits >> _S52) + _EXP_BIAS + (_ONE if big else _U64_0))
    far = 0
    for i in range(n):
        dk = ef[i] - 4503599627372544.0  # 2^52 + 2048
        r = math.sqrt(-_log1p_parts(mf[i] - 1.0, dk))
        tp[i] = _as241_z1(r)
        mf[i] = r
        far += np.int64(not (r <= 5.0))
    if far:
        for i in range(n):
            r = mf[i]
            if not (r <= 5.0):
                tp[i] = _as241_z2(r)


@njit(cache=True, error_model="numpy")
def ndtri(p):
    """Φ⁻¹ of a 1-D float64 array by the kernel's AS241 (values outside (0, 1) clamped to
    [1e-300, 1 - 2^-53])."""
    n = p.shape[0]
    out = np.empty(n)
    tp = np.empty(n)
    tb = tp.view(np.uint64)
    mb = np.empty(n, dtype=np.uint64)
    eb = np.empty(n, dtype=np.uint64)
    for i in range(n):
        tp[i] = min(max(p[i], _P_MIN), _P_MAX)
    _tails(tp, tb, mb, mb.view(np.float64), eb, eb.view(np.float64), n)
    for i in range(n):
        q = min(max(p[i], _P_MIN), _P_MAX) - 0.5
        out[i] = _as241_central(q) if abs(q) <= 0.425 else (-tp[i] if q < 0 else tp[i])
    return out


@njit(cache=True, fastmath={"reassoc"}, error_model="numpy")
def _wgram_block(zb, w, m, g):
    """``g += Σ_r w_r z'_r z'_rᵀ`` (lower triangle) over one block, ``z' = (z, 1)``: the
    weighted Gram, column sums (row D) and weight sum (g[D, D]) of the surrogate rows, for
    the surrogate fit.  ``zb`` (D, ≥m) feature-major.  Reassociation lets the dot products
    vectorise; the result depends on the block, not on the thread count."""
    D = zb.shape[0]
    wz = np.empty(m)
    for i in range(D + 1):
        if i < D:
            zi = zb[i]
            for r in range(m):
                wz[r] = w[r] * zi[r]
        else:
            for r in range(m):
                wz[r] = w[r]
        nj = min(i + 1, D)
        j = 0
        # four columns per pass: one load of wz serves four products
        while j + 4 <= nj:
            z0 = zb[j]
            z1 = zb[j + 1]
            z2 = zb[j + 2]
            z3 = zb[j + 3]
            s0 = 0.0
            s1 = 0.0
            s2 = 0.0
            s3 = 0.0
            for r in range(m):
                a = wz[r]
                s0 += a * z0[r]
                s1 += a * z1[r]
                s2 += a * z2[r]
                s3 += a * z3[r]
            g[i, j] += s0
            g[i, j + 1] += s1
            g[i, j + 2] += s2
            g[i, j + 3] += s3
            j += 4
        while j < nj:
            zj = zb[j]
            s = 0.0
            for r in range(m):
                s += wz[r] * zj[r]
            g[i, j] += s
            j += 1
        if i == D:
            s = 0.0
            for r in range(m):
                s += wz[r]
            g[D, D] += s


@intrinsic
def _bits_f64(typingctx, x):
    """The float64 whose bits are the uint64 ``x``."""
    if not (isinstance(x, nbtypes.Integer) and x.bitwidth == 64 and not x.signed):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.DoubleType())

    return nbtypes.float64(x), codegen


@intrinsic
def _ctz(typingctx, x):
    """Trailing zero bits of a non-zero uint64 (LLVM's cttz)."""
    if not (isinstance(x, nbtypes.Integer) and x.bitwidth == 64 and not x.signed):
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], llvm_ir.Constant(llvm_ir.IntType(1), 1))

    return nbtypes.uint64(x), codegen


def _c2d(a, dtype):
    return isinstance(a, nbtypes.Array) and a.ndim == 2 and a.layout == "C" and a.dtype == dtype


@intrinsic
def _t4x4(typingctx, src, sr, sc, dst, dr, dc):
    """``dst[dr + j, dc + i] = src[sr + i, sc + j]`` for i, j < 4: a 4×4 transpose of float64
    by four loads, eight shuffles and four stores (C-contiguous 2-D arrays; the indices are in
    range, not checked).  Generic LLVM vectors: any target lowers them."""
    if not (_c2d(src, nbtypes.float64) and _c2d(dst, nbtypes.float64)
            and all(isinstance(t, nbtypes.Integer) for t in (sr, sc, dr, dc))):
        return None

    def codegen(context, builder, signature, args):
        ts = signature.args
        sa = context.make_array(ts[0])(context, builder, args[0])
        da = context.make_array(ts[3])(context, builder, args[3])
        i64 = llvm_ir.IntType(64)
        vp = llvm_ir.VectorType(llvm_ir.DoubleType(), 4).as_pointer()
        sr_, sc_, dr_, dc_ = (context.cast(builder, args[k], ts[k], nbtypes.int64) for k in (1, 2, 4, 5))
        a = [builder.load(builder.bitcast(cgutils.get_item_pointer(context, builder, ts[0], sa,
                                                                   [builder.add(sr_, i64(i)), sc_]), vp), align=8)
             for i in range(4)]

        def sh(x, y, idx):
            return builder.shuffle_vector(x, y, llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(32), 4), idx))

        t0, t1 = sh(a[0], a[1], [0, 4, 2, 6]), sh(a[0], a[1], [1, 5, 3, 7])
        t2, t3 = sh(a[2], a[3], [0, 4, 2, 6]), sh(a[2], a[3], [1, 5, 3, 7])
        out = (sh(t0, t2, [0, 1, 4, 5]), sh(t1, t3, [0, 1, 4, 5]), sh(t0, t2, [2, 3, 6, 7]), sh(t1, t3, [2, 3, 6, 7]))
        for j in range(4):
            p = cgutils.get_item_pointer(context, builder, ts[3], da, [builder.add(dr_, i64(j)), dc_])
            builder.store(out[j], builder.bitcast(p, vp), align=8)
        return context.get_dummy_value()

    return nbtypes.void(src, sr, sc, dst, dr, dc), codegen


@intrinsic
def _store8(typingctx, dst, r, c, v):
    """The 8 bytes of the uint64 ``v`` (in memory order) to ``dst[r, c:c + 8]``: one unaligned
    store into a C-contiguous uint8 2-D array (in range, not checked)."""
    if not (_c2d(dst, nbtypes.uint8) and isinstance(r, nbtypes.Integer) and isinstance(c, nbtypes.Integer)
            and isinstance(v, nbtypes.Integer) and v.bitwidth == 64):
        return None

    def codegen(context, builder, signature, args):
        ts = signature.args
        da = context.make_array(ts[0])(context, builder, args[0])
        r_, c_ = (context.cast(builder, args[k], ts[k], nbtypes.int64) for k in (1, 2))
        p = cgutils.get_item_pointer(context, builder, ts[0], da, [r_, c_])
        builder.store(args[3], builder.bitcast(p, llvm_ir.IntType(64).as_pointer()), align=1)
        return context.get_dummy_value()

    return nbtypes.void(dst, r, c, v), codegen


@intrinsic
def _copy16(typingctx, dst, di, src, si):
    """``dst[di:di + 16] = src[si:si + 16]``: one unaligned 16-byte load and store between
    C-contiguous uint8 1-D arrays (in range, not checked).  Generic LLVM vectors."""
    if not all(isinstance(a, nbtypes.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == nbtypes.uint8
               for a in (dst, src)) or not (isinstance(di, nbtypes.Integer) and isinstance(si, nbtypes.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ts = signature.args
        vp = llvm_ir.VectorType(llvm_ir.IntType(8), 16).as_pointer()
        da = context.make_array(ts[0])(context, builder, args[0])
        sa = context.make_array(ts[2])(context, builder, args[2])
        d_, s_ = (context.cast(builder, args[k], ts[k], nbtypes.int64) for k in (1, 3))
        ps = cgutils.get_item_pointer(context, builder, ts[2], sa, [s_])
        pd = cgutils.get_item_pointer(context, builder, ts[0], da, [d_])
        builder.store(builder.load(builder.bitcast(ps, vp), align=1), builder.bitcast(pd, vp), align=1)
        return context.get_dummy_value()

    return nbtypes.void(dst, di, src, si), codegen


@intrinsic
def _prefetch_row(typingctx, arr, r):
    """A hint to fetch row ``r`` of the C-contiguous 2-D ``arr`` into the caches (LLVM's
    prefetch: read, high locality, data cache); no effect on any value, and no check of
    ``r`` (a prefetch of any address is harmless)."""
    if not (isinstance(arr, nbtypes.Array) and arr.ndim == 2 and arr.layout == "C" and isinstance(r, nbtypes.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ts = signature.args
        a = context.make_array(ts[0])(context, builder, args[0])
        r_ = context.cast(builder, args[1], ts[1], nbtypes.int64)
        p = cgutils.get_item_pointer(context, builder, ts[0], a, [r_, llvm_ir.Constant(llvm_ir.IntType(64), 0)])
        i8p, i32 = llvm_ir.IntType(8).as_pointer(), llvm_ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, llvm_ir.FunctionType(llvm_ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch")
        builder.call(fn, [builder.bitcast(p, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return nbtypes.void(arr, r), codegen


# table rows the stem gather requests ahead (bench/profile_lime_parts.py's gather rows: 0, 8,
# 16 and 32 ahead on the bench's quickshift table)
_GATHER_AHEAD = 16


@intrinsic
def _far64(typingctx, src, off):
    """Bit i = ``abs(src[off + i] - 0.5) > 0.425`` for i < 64 (``src`` a C-contiguous float64
    1-D array with 64 elements from ``off``, not checked): the elements outside AS241's
    central range, by one vector compare and its mask.  Generic LLVM vectors."""
    if not (isinstance(src, nbtypes.Array) and src.ndim == 1 and src.layout == "C" and src.dtype == nbtypes.float64
            and isinstance(off, nbtypes.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ts = signature.args
        sa = context.make_array(ts[0])(context, builder, args[0])
        vt = llvm_ir.VectorType(llvm_ir.DoubleType(), 64)
        p = cgutils.get_item_pointer(context, builder, ts[0], sa, [context.cast(builder, args[1], ts[1], nbtypes.int64)])
        x = builder.load(builder.bitcast(p, vt.as_pointer()), align=8)
        q = builder.fsub(x, llvm_ir.Constant(vt, [0.5] * 64))
        fabs = cgutils.get_or_insert_function(builder.module, llvm_ir.FunctionType(vt, [vt]), "llvm.fabs.v64f64")
        m = builder.fcmp_ordered(">", builder.call(fabs, [q]), llvm_ir.Constant(vt, [0.425] * 64))
        return builder.bitcast(m, llvm_ir.IntType(64))

    return nbtypes.uint64(src, off), codegen


_LITTLE = sys.byteorder == "little"
_REP8 = np.uint64(0x0101010101010101)
_DIAG8 = np.uint64(0x8040201008040201)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_HIGH8 = np.uint64(0x8080808080808080)
_S7 = np.uint64(7)
_BYTE = np.uint64(0xFF)
_BLK = 1024  # rows per block of the tabular kernel
_GRAM_BLK = 256  # rows per partial Gram (the sums' grouping, so fixed)


@njit(cache=True, inline="always")
def _spread8(b):
    # the low 8 bits of b as 8 bytes 0/1, bit j → byte j (little-endian): the byte repeated,
    # bit j kept in byte j, then each byte's non-zero test carried into its top bit
    x = ((b & _BYTE) * _REP8) & _DIAG8
    return ((x + _LOW7) & _HIGH8) >> _S7


@njit(cache=True, inline="always")
def _u_of(key, step):
    # element's uniform in (0, 1): the top 52 bits of its hash as the mantissa of a double in
    # [1, 2), minus 1, plus 2^-53
    return (_bits_f64((_mix(key + step) >> _S12) | _EXP_ONE) - 1.0) + _HALF_M52


# per-feature constants of the selects (_bin_table): the CDF steps padded with +inf (never
# reached) to 5, then ia, ib, bin mean, std, min, max and the values, each padded to 6 bins
_CT_A, _CT_B, _CT_M, _CT_S, _CT_L, _CT_H, _CT_V, _CT_W = 5, 11, 17, 23, 29, 35, 41, 47


@njit(cache=True, inline="always")
def _chain(NV, u, c0, c1, c2, c3, c4, t0, t1, t2, t3, t4, t5):
    """t_k for bin k = the number of CDF steps c_j at or below u, NV (a constant, 4 or 6) bins,
    the steps nondecreasing (so the steps at or below u are the first k): a running select.
    The t_j are scalars loaded before the loop; selects between loads would become a gather."""
    v = t0
    v = t1 if u >= c0 else v
    v = t2 if u >= c1 else v
    v = t3 if u >= c2 else v
    if NV > 4:
        v = t4 if u >= c3 else v
        v = t5 if u >= c4 else v
    return v


@njit(cache=True, inline="always")
def _few_s(BM, m, keys, step, u, lo_c, hi_c, ss, bm, bit):
    # the uniforms, and whether each drew the instance's bin (u in [lo_c, hi_c)): a bit of the
    # row's mask (BM) or a 0/1 column
    bv = _ONE << bit
    for r in range(m):
        uu = _u_of(keys[r], step)
        u[r] = uu
        s = (uu >= lo_c) & (uu < hi_c)
        if BM:
            bm[r] |= bv if s else _U64_0
        else:
            ss[r] = 1.0 if s else 0.0


@njit(cache=True, inline="always")
def _few_p(NV, m, u, pp, cd):
    # discretised feature: p = ia + ib·u of the drawn bin.  Hash, p and Φ⁻¹ each in a pass of
    # their own: their dependency chains overlap better across iterations alone
    c0, c1, c2, c3, c4 = cd[0], cd[1], cd[2], cd[3], cd[4]
    a0, a1, a2, a3, a4, a5 = cd[_CT_A], cd[_CT_A + 1], cd[_CT_A + 2], cd[_CT_A + 3], cd[_CT_A + 4], cd[_CT_A + 5]
    b0, b1, b2, b3, b4, b5 = cd[_CT_B], cd[_CT_B + 1], cd[_CT_B + 2], cd[_CT_B + 3], cd[_CT_B + 4], cd[_CT_B + 5]
    for r in range(m):
        uu = u[r]
        a = _chain(NV, uu, c0, c1, c2, c3, c4, a0, a1, a2, a3, a4, a5)
        b = _chain(NV, uu, c0, c1, c2, c3, c4, b0, b1, b2, b3, b4, b5)
        pp[r] = min(max(a + b * uu, _P_MIN), _P_MAX)


@njit(cache=True, inline="always")
def _central(m, pp, zz):
    # Φ⁻¹(p)'s central part for every element (the tail branch redoes the few outside)
    for r in range(m):
        zz[r] = _as241_central(pp[r] - 0.5)


@njit(cache=True, inline="always")
def _few_x(NV, m, u, zz, xs, cd):
    # discretised feature: x = the drawn bin's mean + std·z, clipped to the bin
    c0, c1, c2, c3, c4 = cd[0], cd[1], cd[2], cd[3], cd[4]
    m0, m1, m2, m3, m4, m5 = cd[_CT_M], cd[_CT_M + 1], cd[_CT_M + 2], cd[_CT_M + 3], cd[_CT_M + 4], cd[_CT_M + 5]
    s0, s1, s2, s3, s4, s5 = cd[_CT_S], cd[_CT_S + 1], cd[_CT_S + 2], cd[_CT_S + 3], cd[_CT_S + 4], cd[_CT_S + 5]
    l0, l1, l2, l3, l4, l5 = cd[_CT_L], cd[_CT_L + 1], cd[_CT_L + 2], cd[_CT_L + 3], cd[_CT_L + 4], cd[_CT_L + 5]
    h0, h1, h2, h3, h4, h5 = cd[_CT_H], cd[_CT_H + 1], cd[_CT_H + 2], cd[_CT_H + 3], cd[_CT_H + 4], cd[_CT_H + 5]
    for r in range(m):
        uu = u[r]
        mu = _chain(NV, uu, c0, c1, c2, c3, c4, m0, m1, m2, m3, m4, m5)
        sg = _chain(NV, uu, c0, c1, c2, c3, c4, s0, s1, s2, s3, s4, s5)
        lo = _chain(NV, uu, c0, c1, c2, c3, c4, l0, l1, l2, l3, l4, l5)
        hi = _chain(NV, uu, c0, c1, c2, c3, c4, h0, h1, h2, h3, h4, h5)
        xs[r] = min(max(mu + sg * zz[r], lo), hi)


@njit(cache=True, inline="always")
def _few_v(NV, m, u, xs, cd):
    # categorical feature: the drawn value
    c0, c1, c2, c3, c4 = cd[0], cd[1], cd[2], cd[3], cd[4]
    v0, v1, v2, v3, v4, v5 = cd[_CT_V], cd[_CT_V + 1], cd[_CT_V + 2], cd[_CT_V + 3], cd[_CT_V + 4], cd[_CT_V + 5]
    for r in range(m):
        xs[r] = _chain(NV, u[r], c0, c1, c2, c3, c4, v0, v1, v2, v3, v4, v5)


@njit(cache=True, inline="always")
def _columns_out(blk, r0, m, D, out):
    # out[r0 + r, d] = blk[d, r]: 4×4 tiles by shuffles, the rest element by element
    m4 = m & ~3
    D4 = D & ~3
    for r in range(0, m4, 4):
        for d in range(0, D4, 4):
            _t4x4(blk, d, r, out, r0 + r, d)
    for r in range(m4):
        for d in range(D4, D):
            out[r0 + r, d] = blk[d, r]
    for r in range(m4, m):
        for d in range(D):
            out[r0 + r, d] = blk[d, r]


@njit(cache=True)
def _bin_table(kind, cdf, values, inst, ia, ib, bin_mean, bin_std, bin_min, bin_max):
    """Per feature: the padded constants of the selects (cst, columns _CT_*); whether they
    apply (few: 2..6 bins, CDF steps nondecreasing and not NaN, so that the steps at or below
    u are the first k); the instance's value index (the first match: padding repeats the last
    value but is never drawn; V when the value is not a training value) and the u range
    [lo_c, hi_c) of its bin."""
    D, V = cdf.shape
    cst = np.zeros((D, _CT_W))
    few = np.zeros(D, dtype=np.bool_)
    jst = np.empty(D, dtype=np.int64)
    loc = np.empty(D)
    hic = np.empty(D)
    for d in range(D):
        js = V
        for j in range(V - 1, -1, -1):
            if values[d, j] == inst[d]:
                js = j
        jst[d] = js
        ok = 2 <= V <= _SELECT_MAX_V
        for j in range(V - 1):
            ok &= not math.isnan(cdf[d, j])
            if j + 1 < V - 1:
                ok &= cdf[d, j] <= cdf[d, j + 1]
        few[d] = ok
        loc[d] = np.inf if js >= V else (-np.inf if js == 0 else cdf[d, js - 1])
        hic[d] = cdf[d, js] if js < V - 1 else np.inf
        if not ok:
            continue
        for j in range(5):
            cst[d, j] = cdf[d, j] if j < V - 1 else np.inf
        for j in range(V):
            cst[d, _CT_A + j] = ia[d, j]
            cst[d, _CT_B + j] = ib[d, j]
            cst[d, _CT_M + j] = bin_mean[d, j]
            cst[d, _CT_S + j] = bin_std[d, j]
            cst[d, _CT_L + j] = bin_min[d, j]
            cst[d, _CT_H + j] = bin_max[d, j]
            cst[d, _CT_V + j] = values[d, j]
    return cst, few, jst, loc, hic


@njit(cache=True, error_model="numpy")
def _nb_chunk(c, nch, scaled, scaled8, inv, bm, dist, wts, width, base, row_offset, kind, cdf, values, center, scale,
              smean, sscale, ia, ib, bin_mean, bin_std, bin_min, bin_max, row0, cosine, gpart, s0, n0, tab, dtab,
              wtab, cst, few, jst, loc, hic):
    """Blocks ``c·nb/nch .. (c+1)·nb/nch - 1`` of :func:`_neighbourhood_v` with one scratch
    set (one compiled body for the serial and the parallel kernel)."""
    n, D = inv.shape
    V = cdf.shape[1]
    usebm = bm.shape[0] > 0
    w2 = width * width
    allb = _U64_ALL >> np.uint64(64 - D) if usebm and D > 0 else _U64_0
    blk = _BLK
    nb = (n + blk - 1) // blk
    # scratch rows carved from one buffer with starts spread over 4 KiB (rows streamed side
    # by side whose addresses agree in the low 12 bits stall the loads)
    S = blk + 64
    scr = np.empty(11 * S)
    keys = scr[0:blk].view(np.uint64)
    hb = scr[S:S + blk].view(np.uint64)
    uf = scr[S:S + blk]
    u = scr[2 * S:2 * S + blk]
    kb = scr[3 * S:3 * S + blk].view(np.uint64)
    pp = scr[4 * S:4 * S + blk]
    zz = scr[5 * S:5 * S + blk]
    tl = scr[6 * S:6 * S + blk].view(np.int64)
    tp = scr[7 * S:7 * S + blk]
    tb = tp.view(np.uint64)
    mf = scr[8 * S:8 * S + blk]
    mb = mf.view(np.uint64)
    ef = scr[9 * S:9 * S + blk]
    eb = ef.view(np.uint64)
    bmb = scr[10 * S:10 * S + blk].view(np.uint64)
    acc1 = np.empty(blk)
    acc2 = np.empty(blk)
    iad = np.empty(V)
    ibd = np.empty(V)
    # the block's columns (feature-major), written out row by row at the end; rows padded
    # off a multiple of 4 KiB (the columns of one row would share cache sets)
    xblk = np.empty((D, blk + 8))
    sblk = np.empty((D, blk + 8))
    gz = np.empty((D, _GRAM_BLK + 8) if gpart.shape[0] else (0, 0))
    for b in range(c * nb // nch, (c + 1) * nb // nch):
        r0 = b * blk
        r1 = min(n, r0 + blk)
        m = r1 - r0
        for r in range(m):
            keys[r] = _row_key(base, row_offset + r0 + r)
            acc1[r] = 0.0
            acc2[r] = 0.0
            bmb[r] = _U64_0
        for d in range(D):
            kd = kind[d]
            xs = xblk[d]
            ss = sblk[d]
            sd = s0[d]
            step = (np.uint64(d) + _ONE) * _GOLDEN
            bit = np.uint64(d & 63)
            tails = kd != 1
            if kd == 0:
                for r in range(m):
                    pp[r] = _u_of(keys[r], step)
            elif few[d]:
                # the literal flags / bin counts specialise the passes at compile time
                if usebm:
                    _few_s(True, m, keys, step, u, loc[d], hic[d], ss, bmb, bit)
                else:
                    _few_s(False, m, keys, step, u, loc[d], hic[d], ss, bmb, bit)
                if kd == 2:  # discretised: the bin's probability interval
                    if V <= 4:
                        _few_p(4, m, u, pp, cst[d])
                    else:
                        _few_p(6, m, u, pp, cst[d])
                elif V <= 4:  # categorical: the value itself
                    _few_v(4, m, u, xs, cst[d])
                else:
                    _few_v(6, m, u, xs, cst[d])
            else:
                # any number of bins, any CDF: the bin index by counting, then gathers
                for r in range(m):
                    hb[r] = (_mix(keys[r] + step) >> _S12) | _EXP_ONE
                for r in range(m):
                    u[r] = (uf[r] - 1.0) + _HALF_M52
                for r in range(m):
                    kb[r] = _U64_0
                for j in range(V - 1):
                    cj = cdf[d, j]
                    for r in range(m):
                        kb[r] += np.uint64(u[r] >= cj)
                jstar = np.uint64(jst[d])
                if usebm:
                    bv = _ONE << bit
                    for r in range(m):
                        bmb[r] |= bv if kb[r] == jstar else _U64_0
                else:
                    for r in range(m):
                        ss[r] = 1.0 if kb[r] == jstar else 0.0
                if kd == 1:
                    vd = values[d]
                    for r in range(m):
                        xs[r] = vd[kb[r]]
                else:
                    for j in range(V):
                        iad[j] = ia[d, j]
                        ibd[j] = ib[d, j]
                    for r in range(m):
                        k = kb[r]
                        pp[r] = min(max(iad[k] + ibd[k] * u[r], _P_MIN), _P_MAX)
            if tails:
                _central(m, pp, zz)
                # Φ⁻¹'s tail branch for the elements outside the central range: their
                # indices from 64-element masks, lowest bit first
                nt = 0
                for w0 in range(0, m, 64):
                    word = _far64(pp, w0)
                    if m - w0 < 64:
                        word &= ~(_U64_ALL << np.uint64(m - w0))
                    while word != _U64_0:
                        tl[nt] = w0 + np.int64(_ctz(word))
                        nt += 1
                        word &= word - _ONE
                for i in range(nt):
                    tp[i] = pp[tl[i]]
                _tails(tp, tb, mb, mf, eb, ef, nt)
                for i in range(nt):
                    r = tl[i]
                    zz[r] = -tp[i] if pp[r] < 0.5 else tp[i]
                if kd == 0:
                    cc = center[d]
                    sc = scale[d]
                    sm = smean[d]
                    ssc = sscale[d]
                    for r in range(m):
                        x = cc + sc * zz[r]
                        xs[r] = x
                        ss[r] = (x - sm) / ssc
                elif few[d]:
                    if V <= 4:
                        _few_x(4, m, u, zz, xs, cst[d])
                    else:
                        _few_x(6, m, u, zz, xs, cst[d])
                else:
                    mu = bin_mean[d]
                    sg = bin_std[d]
                    lo = bin_min[d]
                    hi = bin_max[d]
                    for r in range(m):
                        k = kb[r]
                        xs[r] = min(max(mu[k] + sg[k] * zz[r], lo[k]), hi[k])
            if not usebm:
                if cosine:
                    for r in range(m):
                        acc1[r] += ss[r] * sd
                        acc2[r] += ss[r] * ss[r]
                else:
                    for r in range(m):
                        acc1[r] += (ss[r] - sd) * (ss[r] - sd)
        if row_offset + r0 == 0:
            # global row 0 is the instance: its columns, and its sums again in feature order
            a1 = 0.0
            a2 = 0.0
            for d in range(D):
                sd = s0[d]
                xblk[d, 0] = row0[d]
                sblk[d, 0] = sd
                if cosine:
                    a1 += sd * sd
                    a2 += sd * sd
                else:
                    a1 += (sd - sd) * (sd - sd)
            acc1[0] = a1
            acc2[0] = a2
            bmb[0] = allb
        _columns_out(xblk, r0, m, D, inv)
        if usebm:
            for r in range(m):
                v = bmb[r]
                bm[r0 + r] = v
                c = np.int64(_popcount(v))
                dist[r0 + r] = dtab[c]
            if width > 0:
                for r in range(m):
                    wts[r0 + r] = wtab[np.int64(_popcount(bmb[r]))]
            if scaled8.shape[0] and D >= 8 and _LITTLE:
                # eight features per store: the row's bits spread to bytes
                for r in range(m):
                    v = bmb[r]
                    for d in range(0, D - 8, 8):
                        _store8(scaled8, r0 + r, d, _spread8(v >> np.uint64(d)))
                    _store8(scaled8, r0 + r, D - 8, _spread8(v >> np.uint64(D - 8)))
            elif scaled8.shape[0]:
                for r in range(m):
                    v = bmb[r]
                    for d in range(D):
                        scaled8[r0 + r, d] = np.uint8((v >> np.uint64(d)) & _ONE)
            else:
                for r in range(m):
                    v = bmb[r]
                    for d in range(D):
                        scaled[r0 + r, d] = np.float64((v >> np.uint64(d)) & _ONE)
            continue
        if scaled8.shape[0]:
            for r in range(m):
                for d in range(D):
                    scaled8[r0 + r, d] = np.uint8(sblk[d, r])
        else:
            _columns_out(sblk, r0, m, D, scaled)
        for r in range(m):
            if cosine:
                den = math.sqrt(acc2[r]) * n0
                dd = 1.0 - (acc1[r] / den if den > 0 else 0.0)
                dd = min(max(dd, 0.0), 2.0)
            else:
                dd = math.sqrt(acc1[r])
            dist[r0 + r] = dd
            if width > 0:
                if tab.shape[0]:
                    j = np.int64(acc1[r]) * (D + 1) + np.int64(acc2[r])
                    if tab[j] < 0:
                        tab[j] = _lime_weight(dd, w2)
                    wts[r0 + r] = tab[j]
                else:
                    wts[r0 + r] = _lime_weight(dd, w2)
        if gpart.shape[0]:
            # the weighted Gram in 256-row groups (a group's sums are reassociated: the
            # grouping is part of the result), each group's columns copied contiguous
            for h in range(0, m, _GRAM_BLK):
                mh = min(_GRAM_BLK, m - h)
                for d in range(D):
                    for r in range(mh):
                        gz[d, r] = sblk[d, h + r]
                _wgram_block(gz, wts[r0 + h:r0 + h + mh], mh, gpart[(r0 + h) // _GRAM_BLK])


# lime's tabular neighbourhood, structured for SIMD.  Element (r, d) draws one uniform u in
# (0, 1) (52 bits of its hash).  A categorical / discretised feature picks bin k = the number
# of CDF steps at or below u; the position of u inside the bin's share of the CDF is itself
# uniform, and maps linearly onto [Φ(a), Φ(b)] of the bin's normal (a, b the bin's edges in
# its z-units): p = ia[d, k] + ib[d, k]·u, x = mean + std·Φ⁻¹(p), clipped to the bin (rounding;
# a zero-width bin gives its edge).  That is the truncated normal by inverse CDF, without
# rejection.  A continuous feature takes p = u.  Per block of rows and feature, flat passes
# with no data-dependent control flow; Φ⁻¹ is AS241's central rational for every element and
# its tail branch (a log) for the compacted few outside the central range.  The block's
# columns are then written out, and its distances and (width > 0) lime's kernel weights
# computed.
#
# With up to _SELECT_MAX_V bins and nondecreasing CDF steps (lime's quartile and categorical
# tables), a feature's bin constants come by selects on u against the steps (_few_*; passes
# specialised for 4 and 6 padded bins); otherwise by the bin index and gathers.  All surrogate
# features binary and D <= 64 (bm non-empty): each row's surrogate features are the bits of
# one word (bm), its distance and weight those of its count of ones, and uint8 rows (scaled8
# non-empty) are written from the bits.  Results do not depend on the blocking, nor on nch
# (the number of chunks of blocks, one scratch set each).
@njit(cache=True, parallel=True, error_model="numpy")
def _neighbourhood_v(scaled, scaled8, inv, bm, dist, wts, width, seed, stream, row_offset, nch, kind, cdf, values,
                     inst, center, scale, smean, sscale, ia, ib, bin_mean, bin_std, bin_min, bin_max, row0, cosine, gpart,
                     g):
    n, D = inv.shape
    base = _stream_base(seed, stream)
    usebm = bm.shape[0] > 0
    # the instance's surrogate row (standardised for kind 0, 1 otherwise) and its norm
    s0 = np.empty(D)
    n0 = 0.0
    binary = True
    for d in range(D):
        s0[d] = (row0[d] - smean[d]) / sscale[d] if kind[d] == 0 else 1.0
        n0 += s0[d] * s0[d]
        binary &= kind[d] != 0
    n0 = math.sqrt(n0)
    w2 = width * width
    # all surrogate features binary: the distance accumulators are small integers, and the
    # kernel weight of each (acc1, acc2) pair is computed once
    tab = np.full((D + 1) * (D + 1), -1.0) if binary and width > 0 and not usebm else np.empty(0)
    # rows as bits: a row with c ones has acc1 = D - c (euclidean), acc1 = acc2 = c (cosine),
    # exact, so its distance and weight are those of c, computed once as for any row
    dtab = np.empty(D + 1 if usebm else 0)
    wtab = np.empty(D + 1 if usebm and width > 0 else 0)
    for c in range(dtab.shape[0]):
        if cosine:
            den = math.sqrt(np.float64(c)) * n0
            dd = 1.0 - (np.float64(c) / den if den > 0 else 0.0)
            dd = min(max(dd, 0.0), 2.0)
        else:
            dd = math.sqrt(np.float64(D - c))
        dtab[c] = dd
        if width > 0:
            wtab[c] = _lime_weight(dd, w2)
    cst, few, jst, loc, hic = _bin_table(kind, cdf, values, inst, ia, ib, bin_mean, bin_std, bin_min, bin_max)
    nch = max(1, min((n + _BLK - 1) // _BLK, nch))
    for c in prange(nch):
        # int64 chunk index: the serial twin's type, so both share one compiled _nb_chunk
        _nb_chunk(np.int64(c), nch, scaled, scaled8, inv, bm, dist, wts, width, base, row_offset, kind, cdf, values, center,
                  scale, smean, sscale, ia, ib, bin_mean, bin_std, bin_min, bin_max, row0, cosine, gpart, s0, n0, tab,
                  dtab, wtab, cst, few, jst, loc, hic)
    if g.shape[0] and usebm and n > 0:
        # the Gram of rows as bits by class popcounts, in the same call (one dispatch less)
        _class_gram_masks(bm, wts, D, g)


_neighbourhood_v_serial = _serial_twin(_neighbourhood_v, error_model="numpy")


def tabular_neighbourhood(n_rows, seed, stream, row_offset, kind, cdf, values, inst, center, scale, smean, sscale,
                          ia, ib, bin_mean, bin_std, bin_min, bin_max, row0, metric, width=0.0, gram=False,
                          binary_uint8=False):
    """See :func:`xaikernels.reference.perturb.tabular_neighbourhood`."""
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"unknown metric {metric!r}")
    D = kind.shape[0]
    n = int(n_rows)
    binary = bool(kind.all())
    # all surrogate features binary: uint8 rows on request (an eighth of the memory traffic)
    small = binary_uint8 and binary
    scaled = np.empty((n, D), dtype=np.uint8 if small else np.float64)
    inv = np.empty((n, D))
    dist = np.empty(n)
    wts = np.empty(n if width > 0 else 0)
    gram = bool(gram and width > 0)
    # all surrogate features binary, at most 64: each row's features as the bits of a word
    bm = np.empty(n if binary and D <= 64 else 0, dtype=np.uint64)
    # binary rows: the Gram afterwards by class popcounts, a row's weight depending only on
    # its count of ones
    by_class = gram and n > 0 and binary
    gpart = np.zeros(((n + _GRAM_BLK - 1) // _GRAM_BLK if gram and not by_class else 0, D + 1, D + 1))
    # as _pick, the thread count asked only for work worth a launch (the query alone costs
    # ~20 µs when other work has flushed the caches)
    nch = numba.get_num_threads() if inv.size >= _PAR_MIN_WORK else 1
    kernel = _neighbourhood_v if nch > 1 else _neighbourhood_v_serial
    # bits rows: the kernel also sums the Gram (by class popcounts) into g
    g = np.empty((D + 1, D + 1) if by_class else (0, 0))
    kernel(scaled if not small else np.empty((0, D)), scaled if small else np.empty((0, D), dtype=np.uint8), inv, bm,
           dist, wts, float(width), np.uint64(seed % 2**64), np.uint64(stream % 2**64), np.int64(row_offset),
           np.int64(nch), kind, cdf, values, inst, center, scale, smean, sscale, ia, ib, bin_mean, bin_std, bin_min,
           bin_max, row0, metric == "cosine", gpart, g if bm.shape[0] else g[:0])
    if not gram:
        return scaled, inv, dist, wts
    if by_class:
        if not bm.shape[0] and not _class_gram_rows(scaled, wts, g):  # weights: a table of the count
            raise RuntimeError("tabular_neighbourhood: binary rows whose weights are not a function of their count")
        return scaled, inv, dist, wts, g
    return scaled, inv, dist, wts, _fold_gram(gpart)


@njit(cache=True)
def _class_gram_rows(X, w, g):
    """:func:`_class_gram` with per-row weights ``w`` that are a function of the row's count
    of ones; False (g untouched) when they are not, or when X is not 0/1."""
    S, F = X.shape
    cnt, binary = _row_counts(X)
    if not binary:
        return False
    wk = np.zeros(F + 1)  # a count no row has keeps weight 0
    seen = np.zeros(F + 1, dtype=np.bool_)
    for r in range(S):
        c = cnt[r]
        if not seen[c]:
            seen[c] = True
            wk[c] = w[r]
        elif not (wk[c] == w[r]):  # NaN weights never match
            return False
    _gram_by_counts(X, cnt, wk, g)
    return True


@intrinsic
def _ballot64(typingctx, src, off, f):
    """Bit i = bit f of ``src[off + i]`` for i < 64 (``src`` a C-contiguous uint64 1-D array,
    in range, not checked): one vector test of 64 words and its mask as a uint64.  Generic
    LLVM vectors: any target lowers them."""
    if not (isinstance(src, nbtypes.Array) and src.ndim == 1 and src.layout == "C" and src.dtype == nbtypes.uint64
            and isinstance(off, nbtypes.Integer) and isinstance(f, nbtypes.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ts = signature.args
        sa = context.make_array(ts[0])(context, builder, args[0])
        i64 = llvm_ir.IntType(64)
        vt = llvm_ir.VectorType(i64, 64)
        p = cgutils.get_item_pointer(context, builder, ts[0], sa, [context.cast(builder, args[1], ts[1], nbtypes.int64)])
        x = builder.load(builder.bitcast(p, vt.as_pointer()), align=8)
        one = builder.shl(i64(1), context.cast(builder, args[2], ts[2], nbtypes.uint64))
        sp = builder.insert_element(llvm_ir.Constant(vt, llvm_ir.Undefined), one, llvm_ir.IntType(32)(0))
        sp = builder.shuffle_vector(sp, llvm_ir.Constant(vt, llvm_ir.Undefined),
                                    llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(32), 64), [0] * 64))
        m = builder.icmp_unsigned("!=", builder.and_(x, sp), llvm_ir.Constant(vt, None))
        return builder.bitcast(m, i64)

    return nbtypes.uint64(src, off, f), codegen


@njit(cache=True)
def _class_gram_masks(bm, w, F, g):
    """:func:`_class_gram_rows` for rows given as bit masks ``bm`` (S,) of F <= 64 features
    whose weights ``w`` are a function of their count of ones (the sampler's): the same
    pieces, sums and order as :func:`_gram_by_counts`, so the same g.  The masks are grouped
    by count (stable; unsigned indices, no wraparound checks), and each 64-row word's
    columns taken by :func:`_ballot64`."""
    S = bm.shape[0]
    E = F + 1
    NW = (S + 63) >> 6
    cnt = np.empty(S, dtype=np.uint64)
    for r in range(S):
        cnt[r] = _popcount(bm[r])
    wk = np.zeros(F + 1)
    st = np.zeros(F + 2, dtype=np.uint64)
    for r in range(S):
        c = cnt[r]
        st[c + _ONE] += _ONE
        wk[c] = w[r]
    for k in range(F + 1):
        st[k + 1] += st[k]
    pos = st.copy()
    sm = np.zeros(NW << 6, dtype=np.uint64)
    for r in range(S):
        c = cnt[r]
        p = pos[c]
        sm[p] = bm[r]
        pos[c] = p + _ONE
    bits = np.empty((NW, E), dtype=np.uint64)
    for q in range(NW):
        row = bits[q]
        for f in range(F):
            row[f] = _ballot64(sm, q << 6, f)
        row[F] = _U64_ALL >> np.uint64(64 - min(64, S - (q << 6)))
    _gram_of_pieces(bits, st, wk, F, g)


@njit(cache=True)
def _fold_gram(gpart):
    # the blocks' lower triangles summed in block order, then mirrored
    B, E, _ = gpart.shape
    g = np.zeros((E, E))
    for b in range(B):
        for i in range(E):
            for j in range(i + 1):
                g[i, j] += gpart[b, i, j]
    for i in range(E):
        for j in range(i):
            g[j, i] = g[i, j]
    return g


@njit(cache=True, error_model="numpy")
def _xy_rows(Z, wy, xy):
    # xy[f] += Z[r, f]·wy[r] row after row, in row order (no fastmath: never reassociated),
    # four rows per pass over xy
    S, F = Z.shape
    S4 = S & ~3
    for r in range(0, S4, 4):
        a0 = wy[r]
        a1 = wy[r + 1]
        a2 = wy[r + 2]
        a3 = wy[r + 3]
        for f in range(F):
            xy[f] = (((xy[f] + Z[r, f] * a0) + Z[r + 1, f] * a1) + Z[r + 2, f] * a2) + Z[r + 3, f] * a3
    for r in range(S4, S):
        a = wy[r]
        for f in range(F):
            xy[f] += Z[r, f] * a


@njit(cache=True, fastmath={"reassoc"}, error_model="numpy")
def _fit_lime_gram(Z, Y, labels, w, g, alpha, select, num_features, coef, icpt, score, pred0, used):
    # lime's weighted ridge from the sampler's Gram sums (g: augmented Σ w z' z'ᵀ, z' = (z, 1)):
    # centring by x̄ = Σwz/Σw, then one pass over the samples for the label products
    S, F = Z.shape
    T = labels.shape[0]
    sw = g[F, F]
    if not (sw > 0 and math.isfinite(sw)):
        return 2
    xbar = np.empty(F)
    for f in range(F):
        xbar[f] = g[F, f] / sw
    G = np.empty((F, F))
    for i in range(F):
        for j in range(F):
            G[i, j] = g[i, j] - sw * xbar[i] * xbar[j]
    ybar = np.zeros(T)
    for t in range(T):
        lt = labels[t]
        s = 0.0
        for r in range(S):
            s += w[r] * Y[r, lt]
        ybar[t] = s / sw
        if not math.isfinite(ybar[t]):
            return 1
    # XY = Σ w (z - x̄)(y - ȳ) = Σ z·w(y - ȳ), YY = Σ w (y - ȳ)²
    XY = np.zeros((F, T))
    YY = np.zeros(T)
    TSS = np.empty(T)
    wy = np.empty(S)
    for t in range(T):
        lt = labels[t]
        yy = 0.0
        ymax = 0.0
        for r in range(S):
            v = Y[r, lt] - ybar[t]
            wy[r] = w[r] * v
            yy += wy[r] * v
            ymax = max(ymax, abs(Y[r, lt]))
        YY[t] = yy
        TSS[t] = _tss_floored(yy, sw, ymax, S)
        if not math.isfinite(yy):
            return 1
        xy = np.zeros(F)
        _xy_rows(Z, wy, xy)
        for f in range(F):
            XY[f, t] = xy[f]
    x0 = np.empty(F)
    for f in range(F):
        x0[f] = Z[0, f]
    _fit_gram_one(G, XY, YY, TSS, xbar, ybar, x0, alpha, select, num_features, coef, icpt, score, pred0, used, S)
    return 0


def fit_lime_gram(Z, Y, labels, w, g, alpha, select, num_features):
    """See :func:`xaikernels.reference.perturb.fit_lime_gram`."""
    out = _fit_outputs(labels.shape[0], Z.shape[1])
    status = _fit_lime_gram(Z, Y, labels, w, g, float(alpha), int(select), int(num_features), *out)
    return (*out, status)


# ------------------------------------------------------------------------------------ text
@njit(cache=True)
def _render_pieces(pb, po, pf, rb, masks):
    S, F = masks.shape
    P = po.shape[0] - 1
    R = rb.shape[0]
    if P < 0 or pf.shape[0] != P or po[0] != 0 or po[P] > pb.shape[0]:
        raise ValueError("render: piece offsets and features disagree with the piece bytes")
    for p in range(P):
        if po[p + 1] < po[p]:
            raise ValueError("render: piece offsets must be non-decreasing")
        if pf[p] >= F:
            raise ValueError("render: a piece's feature is outside the masks' columns")
    # the removed bytes after the pieces' bytes: every piece of a row is then a copy from one
    # buffer, source and length picked without a branch (keep is a coin flip per piece);
    # 16 bytes of slack after it and after the output for the 16-byte copies
    B = po[P]
    src = np.zeros(B + R + 16, dtype=np.uint8)
    src[:B] = pb[:B]
    src[B:B + R] = rb
    off = np.empty(S + 1, dtype=np.int64)
    off[0] = 0
    for s in range(S):
        n = 0
        for p in range(P):
            f = pf[p]
            keep = (f < 0) | (masks[s, max(f, 0)] != 0)
            n += po[p + 1] - po[p] if keep else R
        off[s + 1] = off[s] + n
    buf = np.empty(off[S] + 16, dtype=np.uint8)
    for s in range(S):
        k = off[s]
        for p in range(P):
            f = pf[p]
            keep = (f < 0) | (masks[s, max(f, 0)] != 0)
            a = po[p] if keep else B
            n = po[p + 1] - po[p] if keep else R
            # pieces are a few bytes: one 16-byte copy each (more for longer ones), whose bytes
            # past the piece the next piece's copy overwrites (the last row's: the slack)
            _copy16(buf, k, src, a)
            for i in range(16, n, 16):
                _copy16(buf, k + i, src, a + i)
            k += n
    return buf[:off[S]], off


def render_pieces(piece_bytes, piece_offsets, piece_feature, removed, masks):
    """See :func:`xaikernels.reference.perturb.render_pieces`."""
    if masks.shape[1] == 0:
        # no features (every piece a separator): one column the kernel may read, never drop
        masks = np.ones((masks.shape[0], 1), dtype=np.uint8)
    return _render_pieces(piece_bytes, piece_offsets, piece_feature, removed, masks)



# ------------------------------------------------------------------------- stem tables
_ROWS_BLOCK = 16  # positions whose keys are built and numbered together


@njit(cache=True)
def stem_rows(segs, masks):
    """Every (sample, position)'s table row: keys numbered per position in first-occurrence
    order (a stamp array over the 2^M keys instead of a sort).  Positions go in blocks of
    ``_ROWS_BLOCK``: a block's keys are built a segment at a time over the samples (int32
    keys: M ≤ MAX_KEY_BITS = 20), numbered in place, then written into the (S, Q) index a
    sample at a time — no transposed copy of the whole index (bench/results/lime_parts.md
    times it; runs of the same call have read 2.0 to 4.9 ms in different processes)."""
    S, Q, M = masks.shape[0], segs.shape[0], segs.shape[1]
    mt = np.empty((masks.shape[1], S), dtype=np.int32)
    for s in range(S):
        for f in range(masks.shape[1]):
            mt[f, s] = masks[s, f] != 0
    stamp = np.full(np.int64(1) << M, -1, dtype=np.int32)
    slot = np.empty(np.int64(1) << M, dtype=np.int32)
    index = np.empty((S, Q), dtype=np.int32)
    row_pos = np.empty(S * Q, dtype=np.int32)
    row_key = np.empty(S * Q, dtype=np.int64)
    key = np.empty((_ROWS_BLOCK, S), dtype=np.int32)
    T = 0
    for q0 in range(0, Q, _ROWS_BLOCK):
        nb = min(_ROWS_BLOCK, Q - q0)
        for b in range(nb):
            kb = key[b]
            kb[:] = 0
            for j in range(M):
                f = segs[q0 + b, j]
                if f < 0:
                    break
                col = mt[f]
                for s in range(S):
                    kb[s] |= col[s] << j
        for b in range(nb):
            q = q0 + b
            kb = key[b]
            for s in range(S):
                k = kb[s]
                if stamp[k] != q:
                    stamp[k] = q
                    slot[k] = T
                    row_pos[T] = q
                    row_key[T] = k
                    T += 1
                kb[s] = slot[k]
        for s in range(S):
            for b in range(nb):
                index[s, q0 + b] = key[b, s]
    return index, row_pos[:T].copy(), row_key[:T].copy()



@njit(cache=True, parallel=True)
def _stem_gather(table, index, out, ahead):
    S, Q, C = out.shape
    for s in prange(S):
        o = out[s]
        for q in range(Q):
            # the table row `ahead` entries ahead requested now (0: none): the rows are
            # scattered over a table the model's tail evicts between batches, so each read
            # would wait on memory
            if ahead > 0:
                qa = q + ahead
                if qa < Q:
                    _prefetch_row(table, index[s, qa])
                elif s + 1 < S and qa - Q < Q:
                    _prefetch_row(table, index[s + 1, qa - Q])
            t = table[index[s, q]]
            for c in range(C):
                o[q, c] = t[c]
    return out


_stem_gather_serial = _serial_twin(_stem_gather)


def stem_gather(table, index, out, ahead=_GATHER_AHEAD):
    """``out[s, q] = table[index[s, q]]``; ``ahead``: table rows requested that many entries
    ahead (a cache hint, no effect on the values; 0 for none)."""
    k = _pick(_stem_gather, _stem_gather_serial, out.size)
    return k(table, index, out, np.int64(ahead))


@njit(cache=True)
def stem_patches(x_pad, fill_pad, pix_rank, row_pos, row_key, n_cols, step_h, step_w, out):
    """Every table row's window, channels first: the image where the row's key keeps the
    pixel's segment, else the fill (padding: the fill's zeros)."""
    T, C, RH, RW = out.shape
    for t in range(T):
        q = row_pos[t]
        key = row_key[t]
        top = (q // n_cols) * step_h
        left = (q % n_cols) * step_w
        pr = pix_rank[q]
        for a in range(RH):
            for b in range(RW):
                rk = pr[a * RW + b]
                src = x_pad if rk >= 0 and (key >> rk) & 1 else fill_pad
                v = src[top + a, left + b]
                for c in range(C):
                    out[t, c, a, b] = v[c]
    return out


@njit(cache=True)
def stem_segment_patches(x_pad, fill_pad, pix_rank, offsets, n_cols, step_h, step_w, out):
    """Per position, its fill window, then per segment it meets ``x - fill`` on that
    segment's pixels (0 elsewhere); see the reference twin."""
    P_, C, RH, RW = out.shape
    Q = pix_rank.shape[0]
    for q in range(Q):
        b = offsets[q]
        top = (q // n_cols) * step_h
        left = (q % n_cols) * step_w
        for k in range(b + 1, offsets[q + 1]):
            for c in range(C):
                for a in range(RH):
                    for e in range(RW):
                        out[k, c, a, e] = 0
        for c in range(C):
            for a in range(RH):
                for e in range(RW):
                    f = fill_pad[top + a, left + e, c]
                    out[b, c, a, e] = f
                    r = pix_rank[q, a * RW + e]
                    if r >= 0:
                        out[b + 1 + r, c, a, e] = x_pad[top + a, left + e, c] - f
    return out


@njit(cache=True)
def stem_combine(z, offsets, row_pos, row_key, out):
    """``out[t] = z[b] + Σ_{j: bit j of the key} z[b + 1 + j]`` (see the reference twin)."""
    T, K = out.shape
    for t in range(T):
        b = offsets[row_pos[t]]
        o = out[t]
        z0 = z[b]
        for k in range(K):
            o[k] = z0[k]
        key = row_key[t]
        j = 0
        while key:
            if key & 1:
                zj = z[b + 1 + j]
                for k in range(K):
                    o[k] += zj[k]
            key >>= 1
            j += 1
    return out


@njit(cache=True)
def stem_representatives(index, out):
    """The first sample with each row (see the reference twin)."""
    out[:] = -1
    S, Q = index.shape
    for s in range(S):
        for q in range(Q):
            t = index[s, q]
            if out[t] < 0:
                out[t] = s
    return out


@njit(cache=True)
def _level_entries(geometry):
    """A level's bag entries relative to a row's window corner: entry e = (i·cw + j)·K +
    a·kw + b (convolution output (i, j) of the window, kernel offset (a, b)) reads input
    (dy[e], dx[e]) from the corner (rel[e] flat in a map Wi wide) with offset kk[e];
    (ylo, yhi, xlo, xhi) their extent."""
    Wi, ch, cw = geometry[1], geometry[2], geometry[3]
    csh, csw = geometry[8], geometry[9]
    dh, dw, kh, kw = geometry[12], geometry[13], geometry[14], geometry[15]
    K = kh * kw
    E = ch * cw * K
    dy = np.empty(E, dtype=np.int64)
    dx = np.empty(E, dtype=np.int64)
    kk = np.empty(E, dtype=np.int64)
    rel = np.empty(E, dtype=np.int64)
    for i in range(ch):
        for j in range(cw):
            for a in range(kh):
                for b in range(kw):
                    e = (i * cw + j) * K + a * kw + b
                    dy[e] = i * csh + a * dh
                    dx[e] = j * csw + b * dw
                    kk[e] = a * kw + b
                    rel[e] = dy[e] * Wi + dx[e]
    return dy, dx, kk, rel, (dy.min(), dy.max(), dx.min(), dx.max())  # E >= 1: window and kernel >= 1


@njit(cache=True)
def stem_level_ids(index1, rep, row_pos, n_cols, geometry, n_rows1, out):
    """Bags of the previous level's rows per (row, convolution output); see the reference
    twin.  A row whose inputs all lie inside the map (most) takes a branch-free loop over a
    table of input offsets relative to its window's corner."""
    Hi, Wi, ch, cw = geometry[0], geometry[1], geometry[2], geometry[3]
    sth, stw, oh, ow = geometry[4], geometry[5], geometry[6], geometry[7]
    csh, csw, ph, pw = geometry[8], geometry[9], geometry[10], geometry[11]
    kh, kw = geometry[14], geometry[15]
    K = kh * kw
    E = ch * cw * K
    zero = np.int32(n_rows1 * K)
    dy, dx, kk, rel, (ylo, yhi, xlo, xhi) = _level_entries(geometry)
    flat = out.reshape(-1)
    for t in range(row_pos.shape[0]):
        qy = row_pos[t] // n_cols
        qx = row_pos[t] % n_cols
        y0 = (qy * sth + oh) * csh - ph  # input row of entry e: y0 + dy[e]
        x0 = (qx * stw + ow) * csw - pw
        idx = index1[rep[t]]
        o = t * E
        if y0 + ylo >= 0 and y0 + yhi < Hi and x0 + xlo >= 0 and x0 + xhi < Wi:
            base = y0 * Wi + x0
            for e in range(E):
                flat[o + e] = np.int32(idx[base + rel[e]] * K + kk[e])
        else:
            for e in range(E):
                iy = y0 + dy[e]
                ix = x0 + dx[e]
                if 0 <= iy < Hi and 0 <= ix < Wi:
                    flat[o + e] = np.int32(idx[iy * Wi + ix] * K + kk[e])
                else:
                    flat[o + e] = zero
    return out


@intrinsic
def _bag_max(typingctx, dst, drow, src, rr, okw, per, K, c0):
    """``dst[drow, c0:c0 + L] = max over w < per with okw[w] of Σ_{k<K} src[rr[w·K + k],
    c0:c0 + L]`` (-inf with none; NaN wins, as torch.maximum), L = 64 bytes of the dtype
    (16 float32 / 8 float64 lanes), the sums in k order from zero.  C-contiguous 2-D float
    ``dst``/``src`` of one dtype, ``rr`` int64 and ``okw`` uint8 1-D; indices in range, not
    checked.  One vector register per accumulator: generic LLVM vectors, any target."""
    ok_types = (isinstance(dst, nbtypes.Array) and dst.ndim == 2 and dst.layout == "C" and dst.dtype in
                (nbtypes.float32, nbtypes.float64) and isinstance(src, nbtypes.Array) and src.ndim == 2
                and src.layout == "C" and src.dtype == dst.dtype and isinstance(rr, nbtypes.Array) and rr.ndim == 1
                and rr.dtype == nbtypes.int64 and isinstance(okw, nbtypes.Array) and okw.ndim == 1
                and okw.dtype == nbtypes.uint8
                and all(isinstance(t, nbtypes.Integer) for t in (drow, per, K, c0)))
    if not ok_types:
        return None

    def codegen(context, builder, signature, args):
        ts = signature.args
        da = context.make_array(ts[0])(context, builder, args[0])
        sa = context.make_array(ts[2])(context, builder, args[2])
        ra = context.make_array(ts[3])(context, builder, args[3])
        oa = context.make_array(ts[4])(context, builder, args[4])
        drow_, per_, K_, c0_ = (context.cast(builder, args[k], ts[k], nbtypes.int64) for k in (1, 5, 6, 7))
        ft = llvm_ir.FloatType() if ts[0].dtype == nbtypes.float32 else llvm_ir.DoubleType()
        L = 16 if ts[0].dtype == nbtypes.float32 else 8
        vt = llvm_ir.VectorType(ft, L)
        vp = vt.as_pointer()
        m_p = cgutils.alloca_once(builder, vt)
        acc_p = cgutils.alloca_once(builder, vt)
        builder.store(llvm_ir.Constant(vt, [float("-inf")] * L), m_p)
        with cgutils.for_range(builder, per_) as wl:
            w = wl.index
            okv = builder.load(cgutils.get_item_pointer(context, builder, ts[4], oa, [w]))
            with builder.if_then(builder.icmp_unsigned("!=", okv, llvm_ir.Constant(okv.type, 0))):
                builder.store(llvm_ir.Constant(vt, None), acc_p)
                e0 = builder.mul(w, K_)
                with cgutils.for_range(builder, K_) as kl:
                    r = builder.load(cgutils.get_item_pointer(context, builder, ts[3], ra, [builder.add(e0, kl.index)]))
                    v = builder.load(builder.bitcast(cgutils.get_item_pointer(context, builder, ts[2], sa, [r, c0_]), vp),
                                     align=4)
                    builder.store(builder.fadd(builder.load(acc_p), v), acc_p)
                acc, m = builder.load(acc_p), builder.load(m_p)
                take = builder.or_(builder.fcmp_ordered(">", acc, m), builder.fcmp_unordered("uno", acc, acc))
                builder.store(builder.select(take, acc, m), m_p)
        pd = cgutils.get_item_pointer(context, builder, ts[0], da, [drow_, c0_])
        builder.store(builder.load(m_p), builder.bitcast(pd, vp), align=4)
        return context.get_dummy_value()

    return nbtypes.void(dst, drow, src, rr, okw, per, K, c0), codegen


# rows of the level whose u rows stem_level_max requests ahead of the row it sums
_LEVEL_AHEAD = 2


@njit(cache=True, error_model="numpy")
def stem_level_max(index1, rep, row_pos, n_cols, geometry, n_rows1, u, ok, out):
    """The max over each row's window of the level's convolution sums (see the reference
    twin): the bags of :func:`stem_level_ids` summed over ``u``'s rows and reduced by max as
    they are made, 64 bytes of channels per vector register, the ``u`` rows of the row
    ``_LEVEL_AHEAD`` ahead requested while this one sums.  The entries' input positions are
    worked out once per run of rows at one position (rows come position by position);
    any order of rows gives the same result."""
    Hi, Wi, ch, cw = geometry[0], geometry[1], geometry[2], geometry[3]
    sth, stw, oh, ow = geometry[4], geometry[5], geometry[6], geometry[7]
    csh, csw, ph, pw = geometry[8], geometry[9], geometry[10], geometry[11]
    kh, kw = geometry[14], geometry[15]
    K = kh * kw
    per = ch * cw
    E = per * K
    Co = u.shape[1]
    L = 64 // u.itemsize
    Cv = Co - Co % L  # channels in whole vectors; the rest one by one
    zero = n_rows1 * K
    dy, dx, kk, rel, (ylo, yhi, xlo, xhi) = _level_entries(geometry)
    T = row_pos.shape[0]
    nb = _LEVEL_AHEAD + 1
    rr = np.empty((nb, E), dtype=np.int64)  # a ring of the rows' bags, filled _LEVEL_AHEAD ahead
    okw = np.ones((nb, per), dtype=np.uint8)
    all_ok = ok.shape[0] == 0
    acc = np.zeros(1, dtype=u.dtype)  # the remainder channels' sum and max, in u's dtype
    mc = np.zeros(1, dtype=u.dtype)
    # the entries' input positions in the previous map (-1: its zero padding), recomputed
    # only when the position changes (rows run position by position)
    pabs = np.empty(E, dtype=np.int64)
    last = np.int64(-1)
    for t in range(T + _LEVEL_AHEAD):
        if t < T:
            cur = rr[t % nb]
            q = np.int64(row_pos[t])
            if q != last:
                last = q
                qy = q // n_cols
                qx = q % n_cols
                y0 = (qy * sth + oh) * csh - ph
                x0 = (qx * stw + ow) * csw - pw
                if y0 + ylo >= 0 and y0 + yhi < Hi and x0 + xlo >= 0 and x0 + xhi < Wi:
                    base = y0 * Wi + x0
                    for e in range(E):
                        pabs[e] = base + rel[e]
                else:
                    for e in range(E):
                        iy = y0 + dy[e]
                        ix = x0 + dx[e]
                        pabs[e] = iy * Wi + ix if 0 <= iy < Hi and 0 <= ix < Wi else -1
            idx = index1[rep[t]]
            for e in range(E):
                pe = pabs[e]
                v = np.int64(idx[max(pe, 0)]) * K + kk[e]
                v = v if pe >= 0 else zero
                cur[e] = v
                _prefetch_row(u, v)
            if not all_ok:
                ow_ = okw[t % nb]
                for w in range(per):
                    ow_[w] = ok[t, w]
        s = t - _LEVEL_AHEAD
        if s >= 0:
            bag = rr[s % nb]
            okr = okw[s % nb]
            for c0 in range(0, Cv, L):
                _bag_max(out, s, u, bag, okr, per, K, c0)
            for c in range(Cv, Co):
                mc[0] = -np.inf
                for w in range(per):
                    if okr[w]:
                        acc[0] = 0
                        for k in range(K):
                            acc[0] += u[bag[w * K + k], c]
                        if acc[0] > mc[0] or acc[0] != acc[0]:
                            mc[0] = acc[0]
                out[s, c] = mc[0]
    return out


@njit(cache=True)
def stem_windows(seg_pad, n_rows, n_cols, window, step):
    """Each window's segments in scan order (a stamp array per segment id, no sort)."""
    RH, RW = window
    Q = n_rows * n_cols
    n_ids = 1
    for v in seg_pad.ravel():
        n_ids = max(n_ids, v + 1)
    stamp = np.full(n_ids, -1, dtype=np.int64)
    slot = np.empty(n_ids, dtype=np.int64)
    width = min(RH * RW, n_ids)
    segs = np.full((Q, width), -1, dtype=np.int32)
    ranks = np.empty((Q, RH * RW), dtype=np.int64)
    most = 1
    for q in range(Q):
        top = (q // n_cols) * step[0]
        left = (q % n_cols) * step[1]
        m = 0
        for a in range(RH):
            for b in range(RW):
                v = seg_pad[top + a, left + b]
                if v < 0:
                    ranks[q, a * RW + b] = -1
                    continue
                if stamp[v] != q:
                    stamp[v] = q
                    slot[v] = m
                    segs[q, m] = v
                    m += 1
                ranks[q, a * RW + b] = slot[v]
        most = max(most, m)
    return segs[:, :most].copy(), ranks
