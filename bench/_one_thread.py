"""Shared by the LIME benches: one thread everywhere and a median timer.

Import it before NumPy / torch / Numba (it sets their thread counts through the environment).
One thread for every provider (BLAS included): on this shared 2-core machine a multi-threaded
OpenBLAS spin-waits under load and turns a 0.2 ms Gram product into 30 ms.
"""
from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` calls, after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)
