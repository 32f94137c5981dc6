"""Micro-benchmarks of the fused Grad-CAM reduction op across its backends.

    w[n,c] = mean_s G[n,c,s];   cam[n,s] = ReLU(sum_c w[n,c] A[n,c,s])

Shapes are the Grad-CAM layers of the benchmark models (VGG-16-like block 5 at 64×64,
ResNet-18 ``layer4`` at 224×224) and an early, wide-spatial layer.  Backends: ``cpp`` and
``reference`` on CPU; ``triton`` only with a GPU (Triton's CPU interpreter measures Python, not
the kernel).  Each benchmark first checks its result against the reference.

Run::

    .venv/bin/python -m pytest bench/test_micro_grad_cam.py --benchmark-only

One torch thread by default (``XAIKERNELS_BENCH_THREADS`` to change).  pytest-benchmark groups
the rows by shape, so the backends of one shape are compared side by side.
"""

import pytest
import torch

from xaikernels import BackendUnavailableError, grad_cam_reduce, last_backend
from xaikernels.ops.grad_cam import OP

SHAPES = [(8, 512, 4, 4), (4, 512, 7, 7), (1, 256, 56, 56)]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = ["cpp", "reference"] + (["triton"] if DEVICE.type == "cuda" else [])


def _inputs(shape):
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(shape, generator=g).relu_().to(DEVICE)
    grads = torch.randn(shape, generator=g).to(DEVICE)
    return acts, grads


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_grad_cam_reduce_forward(benchmark, shape, backend):
    try:
        OP.resolve(DEVICE, backend)
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    acts, grads = _inputs(shape)
    expected = grad_cam_reduce(acts, grads, relu=True, backend="reference")
    got = grad_cam_reduce(acts, grads, relu=True, backend=backend)
    assert last_backend("grad_cam") == backend
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    benchmark.group = f"grad_cam_reduce {'x'.join(map(str, shape))}"

    def call():
        out = grad_cam_reduce(acts, grads, relu=True, backend=backend)
        _sync()
        return out

    with torch.no_grad():
        benchmark(call)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES[:2], ids=lambda s: "x".join(map(str, s)))
def test_grad_cam_reduce_backward(benchmark, shape, backend):
    """Forward + backward through the op (the path a differentiable Grad-CAM takes)."""
    try:
        OP.resolve(DEVICE, backend)
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    acts, grads = _inputs(shape)
    acts.requires_grad_(True)
    grads.requires_grad_(True)
    benchmark.group = f"grad_cam_reduce fwd+bwd {'x'.join(map(str, shape))}"

    def call():
        out = grad_cam_reduce(acts, grads, relu=True, backend=backend)
        d = torch.autograd.grad(out.sum(), (acts, grads))
        _sync()
        return d

    benchmark(call)
