"""Test configuration.

Environment first: without a GPU, Triton's interpreter must be switched on before any module
that defines Triton kernels is imported (with one, the kernels compile and tests/test_gpu.py
runs them); Numba's OpenMP layer is ~100x slower on small kernels here; torch threads are
pinned for stable numbers.
"""
import os

import pytest
import torch

# Without a GPU the Triton kernels run in the interpreter on CPU tensors; with one they compile
# (tests/test_gpu.py).  Set before any module that defines Triton kernels is imported.
os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

torch.set_num_threads(1)

# One tolerance table for every dtype test: (rtol, atol) against an oracle computed in the
# listed dtype's opmath.
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def _bn_eps0_ok() -> bool:
    try:
        torch.nn.functional.batch_norm(torch.ones(1, 1), torch.zeros(1), torch.ones(1), eps=0.0)
        return True
    except (ValueError, RuntimeError):
        return False


# Some torch releases (2.11) reject BatchNorm eps = 0, which tests use for exact merges.
BN_EPS0_OK = _bn_eps0_ok()
BN_EPS0 = pytest.mark.skipif(not BN_EPS0_OK, reason="this torch rejects BatchNorm eps = 0")
# On a GPU machine Triton's interpreter is off and Triton serves CUDA tensors only
# (tests/test_gpu.py); CPU tests that ask Triton for CPU tensors need the interpreter.
TRITON_CPU = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@pytest.fixture
def tol():
    return TOL


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "peer" in item.keywords:
            item.add_marker(pytest.mark.peer)
