"""Numba kernels.  Import only through xaikernels.ops (Numba is optional).

Numba's default (OpenMP) threading layer made small ``prange`` kernels ~100x slower on the
reference machines (milliseconds of pool start-up per call).  Unless the user chose a layer
(``NUMBA_THREADING_LAYER``), select ``workqueue`` before the first parallel launch.  This
changes scheduling only, never results.
"""
import os

if "NUMBA_THREADING_LAYER" not in os.environ:
    import numba

    if numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"
