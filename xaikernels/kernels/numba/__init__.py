"""Numba kernels.  Import only through xaikernels.ops (Numba is optional)."""
