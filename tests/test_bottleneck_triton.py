"""The Triton information-bottleneck kernel (interpreter on CPU) against the float64 definition and
the reference backend: values and gradients, odd shapes, batch 1, every dtype, tile invariance,
and the in-kernel Philox noise."""
import math

import pytest
import torch

import xaikernels
from xaikernels import _backend
from xaikernels.ops.bottleneck import info_bottleneck
from xaikernels.reference import bottleneck as ref

from conftest import TOL
from test_bottleneck_op import oracle  # the shared float64 definition

pytestmark = pytest.mark.skipif(_backend._available("triton", "info_bottleneck", torch.device("cpu")) is not None,
                                reason="triton not installed or TRITON_INTERPRET unset")

SHAPES = [(1, 1, 1), (2, 3, 5), (3, 4, 7, 9), (1, 16, 300), (2, 5, 17, 23)]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _inputs(shape, per_element, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    n, c, *sp = shape
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    alpha = torch.rand((n, c if per_element else 1, *sp), generator=gen, dtype=torch.float64)
    alpha.view(-1)[0] = 0.0  # below the KL floor: the flat branch of the gradient
    if alpha.numel() > 1:
        alpha.view(-1)[1] = 1.0
    noise = torch.randn(shape, generator=gen, dtype=torch.float64)
    mu = torch.randn((c, *sp), generator=gen, dtype=torch.float64)
    std = torch.rand((c, *sp), generator=gen, dtype=torch.float64) + 0.5
    return tuple(t.to(dtype) for t in (x, alpha, noise, mu, std))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_element", [False, True])
def test_op_triton_vs_oracle_and_reference(shape, dtype, per_element):
    eps = 1e-3
    x, alpha, noise, mu, std = _inputs(shape, per_element, dtype, seed=hash((shape, per_element)) % 2**31)
    gen = torch.Generator().manual_seed(4)
    gz = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    gk = torch.randn((shape[0], *shape[2:]), generator=gen, dtype=torch.float64).to(dtype)

    def run(backend):
        xg, ag = x.clone().requires_grad_(True), alpha.clone().requires_grad_(True)
        z, kl = info_bottleneck(xg, ag, mu, std, noise=noise, eps=eps, backend=backend)
        assert xaikernels.last_backend("info_bottleneck") == backend
        dx, da = torch.autograd.grad((z * gz).sum() + (kl * gk).sum(), (xg, ag))
        return z, kl, dx, da

    z, kl, dx, da = run("triton")
    assert z.shape == x.shape and z.dtype == dtype
    assert kl.shape == (shape[0], *shape[2:]) and kl.dtype == dtype
    assert dx.dtype == dtype and da.shape == alpha.shape and da.dtype == dtype

    xo, ao = x.double().requires_grad_(True), alpha.double().requires_grad_(True)
    z_o, kl_o = oracle(xo, ao, noise.double(), mu.double(), std.double(), eps)
    dx_o, da_o = torch.autograd.grad((z_o * gz.double()).sum() + (kl_o * gk.double()).sum(), (xo, ao))
    rtol, atol = TOL[dtype]
    scale = max(1.0, shape[1] ** 0.5)  # kl and a broadcast alpha's gradient sum over C channels
    big = max(1.0, da_o.abs().max().item())  # -1/alpha near the floor is ~1e3
    torch.testing.assert_close(z.double(), z_o.detach(), rtol=rtol, atol=atol)
    torch.testing.assert_close(kl.double(), kl_o.detach(), rtol=rtol * scale, atol=atol * scale * 10)
    torch.testing.assert_close(dx.double(), dx_o, rtol=rtol, atol=atol * 10)
    torch.testing.assert_close(da.double(), da_o, rtol=rtol * scale, atol=atol * scale * big)

    # Same dtype, same opmath: the kernel and the reference agree to the last few ulps.
    for got, want in zip((z, kl, dx, da), run("reference")):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol * scale * max(1.0, want.abs().max().item()))


@pytest.mark.parametrize("blocks", [(1, 16), (2, 16), (4, 64)], ids=str)
@pytest.mark.parametrize("per_element", [False, True])
def test_tile_invariance(monkeypatch, blocks, per_element):
    """Channel tiles with a remainder and several location blocks give the same numbers."""
    from xaikernels.kernels.triton import bottleneck as k

    x, alpha, noise, mu, std = _inputs((2, 5, 37), per_element, torch.float64, seed=11)
    gz, gk = torch.randn_like(x), torch.randn(2, 37, dtype=torch.float64)
    args = (x, alpha, noise, mu, std, 1e-3)
    want = ref.info_bottleneck(*args) + ref.info_bottleneck_backward(gz, gk, *args)
    monkeypatch.setattr(k, "_blocks", lambda c, s: blocks)
    got = k.info_bottleneck(*args) + k.info_bottleneck_backward(gz, gk, *args)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_kl_is_zero_at_full_noise_and_z_passes_x_at_none():
    x, _, noise, mu, std = _inputs((1, 3, 11), False, torch.float32, seed=2)
    z, kl = info_bottleneck(x, torch.ones(1, 1, 11), mu, std, noise=noise, backend="triton")
    torch.testing.assert_close(z, mu + std * noise)
    torch.testing.assert_close(kl, torch.zeros(1, 11), atol=1e-6, rtol=0)
    z, _ = info_bottleneck(x, torch.zeros(1, 1, 11), mu, std, noise=noise, backend="triton")
    torch.testing.assert_close(z, x, rtol=0, atol=0)


def _philox_noise(shape, seed, dtype=torch.float32):
    """The kernel's in-kernel sample: alpha = 1, mu = 0, std = 1 makes z the noise itself."""
    from xaikernels.kernels.triton import bottleneck as k

    n, c, s = shape
    z, _ = k.info_bottleneck(torch.zeros(shape, dtype=dtype), torch.ones(n, 1, s, dtype=dtype), None,
                             torch.zeros(c, s, dtype=dtype), torch.ones(c, s, dtype=dtype), 1e-6, seed=seed)
    return z


def test_philox_noise_reproducible_and_standard_normal():
    a, b = _philox_noise((4, 8, 4096), seed=123), _philox_noise((4, 8, 4096), seed=123)
    assert torch.equal(a, b)
    assert not torch.equal(a, _philox_noise((4, 8, 4096), seed=124))
    n = a.numel()
    assert abs(a.mean().item()) < 5 / math.sqrt(n)
    assert abs(a.var().item() - 1) < 5 * math.sqrt(2 / n)
    # Keyed by the flat element index: a sample of the first rows is a prefix of the bigger one.
    torch.testing.assert_close(_philox_noise((2, 8, 4096), seed=123), a[:2], rtol=0, atol=0)


@pytest.mark.parametrize("per_element", [False, True])
def test_seeded_forward_backward_match_reference_with_that_noise(per_element):
    """noise=None draws Philox noise in the forward and regenerates the same sample in the backward."""
    from xaikernels.kernels.triton import bottleneck as k

    shape, seed = (2, 5, 37), 7
    x, alpha, _, mu, std = _inputs(shape, per_element, torch.float32, seed=5)
    noise = _philox_noise(shape, seed)
    gz, gk = torch.randn_like(x), torch.randn(2, 37)
    got = k.info_bottleneck(x, alpha, None, mu, std, 1e-3, seed=seed) + \
        k.info_bottleneck_backward(gz, gk, x, alpha, None, mu, std, 1e-3, seed=seed)
    want = ref.info_bottleneck(x, alpha, noise, mu, std, 1e-3) + \
        ref.info_bottleneck_backward(gz, gk, x, alpha, noise, mu, std, 1e-3)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_auto_order_prefers_triton_on_cuda_only():
    from xaikernels.ops.bottleneck import OP

    assert OP.auto_order["cuda"][0] == "triton"
    assert "triton" not in OP.auto_order["cpu"]
