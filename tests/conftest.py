"""Test configuration.

Environment first: Triton's interpreter must be switched on before any module that defines
Triton kernels is imported, Numba's OpenMP layer is ~100x slower on small kernels here, and
torch threads are pinned for stable numbers.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# One tolerance table for every dtype test: (rtol, atol) against an oracle computed in the
# listed dtype's opmath.
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


@pytest.fixture
def tol():
    return TOL


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "peer" in item.keywords:
            item.add_marker(pytest.mark.peer)
