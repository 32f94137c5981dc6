"""The grad_cam op on every backend against the float64 closed form (values and gradients)."""
import pytest
import torch

import xaikernels
from xaikernels import _backend
from xaikernels.ops.grad_cam import grad_cam_reduce
from xaikernels.reference import grad_cam as ref

from conftest import TOL

BACKENDS = [b for b in ("reference", "cpp", "triton")
            if _backend._available(b, "grad_cam", torch.device("cpu")) is None]
SHAPES = [(1, 1, 1), (2, 3, 5), (3, 17, 123), (1, 64, 49), (5, 7, 1)]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def oracle(a, g, relu):
    """Closed form in float64 through autograd-able torch ops."""
    w = g.mean(dim=2, keepdim=True)
    out = (w * a).sum(dim=1)
    return out.clamp_min(0) if relu else out


def test_backends_present():
    # On this machine kind the extension is built and Triton runs under the interpreter.
    assert "cpp" in BACKENDS and "reference" in BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
def test_forward_backward_vs_oracle(backend, shape, dtype, relu):
    gen = torch.Generator().manual_seed(hash((shape, relu)) % 2**31)
    a64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    g64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    a = a64.to(dtype).requires_grad_(True)
    g = g64.to(dtype).requires_grad_(True)
    out = grad_cam_reduce(a, g, relu=relu, backend=backend)
    assert xaikernels.last_backend("grad_cam") == backend
    assert out.dtype == dtype and out.shape == (shape[0], shape[2])

    # Oracle on the same (rounded) inputs, in float64.
    a_o = a.detach().double().requires_grad_(True)
    g_o = g.detach().double().requires_grad_(True)
    exp = oracle(a_o, g_o, relu)
    rtol, atol = TOL[dtype]
    scale = max(1.0, shape[1] ** 0.5)  # error of a C-term fp sum grows ~sqrt(C)
    torch.testing.assert_close(out.double(), exp.detach(), rtol=rtol * scale, atol=atol * scale)

    up = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    da, dg = torch.autograd.grad(out, (a, g), up.to(dtype))
    da_o, dg_o = torch.autograd.grad(exp, (a_o, g_o), up)
    if relu:
        # The relu kink: the kernel masks by its own rounded output; exclude exact-zero ties.
        keep = (exp.detach().abs() > 1e-2).unsqueeze(1)
        da, da_o = da.double() * keep, da_o * keep
    torch.testing.assert_close(da.double(), da_o, rtol=rtol * scale, atol=atol * scale)
    if not relu:
        torch.testing.assert_close(dg.double(), dg_o, rtol=rtol * scale, atol=atol * scale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_error_within_2x_of_torch(backend):
    """Kernel error at fp16/bf16 is at most ~2x that of plain torch at the same precision."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 256, 49, generator=gen)
    g = torch.randn(2, 256, 49, generator=gen)
    exact = oracle(a.double(), g.double(), False)
    for dt in (torch.float16, torch.bfloat16):
        plain = ((g.to(dt).mean(2, keepdim=True) * a.to(dt)).sum(1)).double()
        ours = grad_cam_reduce(a.to(dt), g.to(dt), backend=backend).double()
        err_plain = (plain - exact).abs().max().item()
        err_ours = (ours - exact).abs().max().item()
        assert err_ours <= 2 * err_plain + 1e-6, (dt, err_ours, err_plain)


def test_spatial_nd_and_2d_shapes():
    a = torch.randn(2, 4, 3, 5)
    g = torch.randn(2, 4, 3, 5)
    out = grad_cam_reduce(a, g, relu=True)
    torch.testing.assert_close(out.reshape(2, 15), ref.grad_cam(a.reshape(2, 4, 15), g.reshape(2, 4, 15), True))
    a2, g2 = torch.randn(3, 6), torch.randn(3, 6)
    assert grad_cam_reduce(a2, g2).shape == (3,)
    # A non-contiguous view gives the same numbers.
    at = torch.randn(2, 5, 4, 4).transpose(2, 3)
    gt = torch.randn(2, 5, 4, 4).transpose(2, 3)
    torch.testing.assert_close(grad_cam_reduce(at, gt), grad_cam_reduce(at.contiguous(), gt.contiguous()))


def test_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        grad_cam_reduce(torch.randn(2, 3, 4), torch.randn(2, 3, 5))
    with pytest.raises(TypeError, match="floating"):
        grad_cam_reduce(torch.ones(2, 3, 4, dtype=torch.long), torch.ones(2, 3, 4, dtype=torch.long))
    with pytest.raises(TypeError):
        grad_cam_reduce(torch.randn(2, 3, 4), torch.randn(2, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError):
        grad_cam_reduce(torch.randn(3), torch.randn(3))


@pytest.mark.skipif("cpp" not in BACKENDS, reason="extension not built")
class TestCompiledOp:
    def test_opcheck(self):
        a = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
        g = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
        for relu in (False, True):
            torch.library.opcheck(torch.ops.xaikernels.grad_cam.default, (a, g, relu))

    def test_gradcheck(self):
        a = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
        g = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, g: torch.ops.xaikernels.grad_cam(a, g, False), (a, g))

    def test_torch_compile(self):
        fn = torch.compile(lambda a, g: torch.ops.xaikernels.grad_cam(a, g, True) * 2, backend="aot_eager",
                           fullgraph=True)
        a, g = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
        torch.testing.assert_close(fn(a, g), 2 * ref.grad_cam(a, g, True))

    def test_errors_from_cpp(self):
        with pytest.raises(RuntimeError, match=r"\(N, C, S\)"):
            torch.ops.xaikernels.grad_cam(torch.randn(2, 3), torch.randn(2, 3), False)
        with pytest.raises(RuntimeError, match="shape"):
            torch.ops.xaikernels.grad_cam(torch.randn(2, 3, 4), torch.randn(2, 3, 5), False)

    def test_thread_count_invariance(self):
        a, g = torch.randn(3, 37, 1100), torch.randn(3, 37, 1100)
        old = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = torch.ops.xaikernels.grad_cam(a, g, False)
            torch.set_num_threads(2)
            two = torch.ops.xaikernels.grad_cam(a, g, False)
        finally:
            torch.set_num_threads(old)
        assert torch.equal(one, two)
