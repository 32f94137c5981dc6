"""Triton kernels.  Import only through xaikernels.ops (Triton is optional)."""
