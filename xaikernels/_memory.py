"""Placed NumPy buffers: uninitialised arrays whose data starts at a chosen offset into a
4 KiB page (no Numba, no torch; the Numba kernels and the stem tables use them)."""
from __future__ import annotations

import numpy as np

_PAGE = 4096


def placed_empty(shape, dtype, offset):
    """``np.empty(shape, dtype)`` whose data starts ``offset`` bytes (mod 4 KiB, rounded to the
    dtype's alignment) into a page: a view into a slightly larger buffer."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + _PAGE + dtype.itemsize, dtype=np.uint8)
    start = (offset - raw.ctypes.data) % _PAGE
    start += (-(raw.ctypes.data + start)) % dtype.itemsize
    return raw[start:start + n].view(dtype).reshape(shape)


def placed_copy(a, offset):
    """A C-contiguous copy of ``a`` at page offset ``offset`` (:func:`placed_empty`)."""
    out = placed_empty(a.shape, a.dtype, offset)
    out[...] = a
    return out
