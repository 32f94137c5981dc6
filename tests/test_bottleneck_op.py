"""The fused information-bottleneck op against a float64 oracle (values and gradients)."""
import pytest
import torch

import xaikernels
from xaikernels import _backend
from xaikernels.ops.bottleneck import info_bottleneck

from conftest import TOL

BACKENDS = [b for b in ("reference", "cpp") if _backend._available(b, "info_bottleneck", torch.device("cpu")) is None]
SHAPES = [(1, 1, 1), (2, 3, 5), (3, 4, 7, 9), (1, 16, 300), (2, 5, 17, 23)]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def oracle(x, alpha, noise, mu, std, eps):
    """Definition in float64 via autograd-able torch ops (mu/std broadcast over N)."""
    z = alpha * (mu + std * noise) + (1 - alpha) * x
    a = alpha.clamp_min(eps)
    m = (1 - a) * (x - mu) / std
    kl = (0.5 * (a * a + m * m - 1) - torch.log(a)).expand_as(x).sum(dim=1)
    return z, kl


def _inputs(shape, per_element, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    n, c, *sp = shape
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    a_shape = (n, c if per_element else 1, *sp)
    alpha = torch.rand(a_shape, generator=gen, dtype=torch.float64)
    alpha.view(-1)[0] = 0.0  # the KL floor is exercised
    if alpha.numel() > 1:
        alpha.view(-1)[1] = 1.0
    noise = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    mu = torch.randn((c, *sp), generator=gen, dtype=torch.float64).to(dtype)
    std = (torch.rand((c, *sp), generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    return x, alpha.to(dtype), noise, mu, std


def test_backends_present():
    assert "cpp" in BACKENDS and "reference" in BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_element", [False, True])
def test_forward_backward_vs_oracle(backend, shape, dtype, per_element):
    check_vs_oracle(backend, shape, dtype, per_element, torch.device("cpu"))


def check_vs_oracle(backend: str, shape, dtype, per_element: bool, device: torch.device) -> None:
    """The op by ``backend`` on ``device`` against the float64 oracle on CPU: values and gradients."""
    eps = 1e-3
    x, alpha, noise, mu, std = _inputs(shape, per_element, dtype, seed=hash((shape, per_element)) % 2**31)
    xd, ad = (t.to(device, copy=True).requires_grad_(True) for t in (x, alpha))
    z, kl = info_bottleneck(xd, ad, mu.to(device), std.to(device), noise=noise.to(device), eps=eps, backend=backend)
    assert xaikernels.last_backend("info_bottleneck") == backend
    assert z.shape == x.shape and z.dtype == dtype and z.device == xd.device
    assert kl.shape == (shape[0], *shape[2:]) and kl.dtype == dtype

    xo, ao = x.double().requires_grad_(True), alpha.double().requires_grad_(True)
    z_o, kl_o = oracle(xo, ao, noise.double(), mu.double(), std.double(), eps)
    rtol, atol = TOL[dtype]
    scale = max(1.0, shape[1] ** 0.5)  # kl and a broadcast alpha's gradient sum over C channels
    torch.testing.assert_close(z.double().cpu(), z_o.detach(), rtol=rtol, atol=atol)
    # log(eps) makes kl's magnitude ~C*7: compare relative to that size.
    torch.testing.assert_close(kl.double().cpu(), kl_o.detach(), rtol=rtol * scale, atol=atol * scale * 10)

    gen = torch.Generator().manual_seed(4)
    gz = torch.randn(z.shape, generator=gen, dtype=torch.float64).to(dtype)
    gk = torch.randn(kl.shape, generator=gen, dtype=torch.float64).to(dtype)
    dx, da = torch.autograd.grad((z * gz.to(device)).sum() + (kl * gk.to(device)).sum(), (xd, ad))
    dx_o, da_o = torch.autograd.grad((z_o * gz.double()).sum() + (kl_o * gk.double()).sum(), (xo, ao))
    torch.testing.assert_close(dx.double().cpu(), dx_o, rtol=rtol, atol=atol * 10)
    # d kl / d alpha = -1/alpha near the floor is ~1e3: relative tolerance on the whole tensor.
    big = max(1.0, da_o.abs().max().item())
    torch.testing.assert_close(da.double().cpu(), da_o, rtol=rtol * scale, atol=atol * scale * big)


def test_zero_alpha_is_identity_and_one_is_noise():
    x = torch.randn(2, 3, 4, 4)
    mu, std = torch.randn(3), torch.rand(3) + 0.5
    noise = torch.randn_like(x)
    z0, kl0 = info_bottleneck(x, torch.zeros(2, 1, 4, 4), mu, std, noise=noise)
    assert torch.equal(z0, x)
    z1, kl1 = info_bottleneck(x, torch.ones(2, 1, 4, 4), mu, std, noise=noise)
    torch.testing.assert_close(z1, mu.view(1, 3, 1, 1) + std.view(1, 3, 1, 1) * noise)
    # Pure noise carries no information (kl = 0); no noise is capped only by the eps floor.
    torch.testing.assert_close(kl1, torch.zeros_like(kl1), atol=1e-6, rtol=0)
    assert bool((kl0 > 3 * 10).all())  # 3 channels * -log(1e-6) ~ 41 nats
    # More noise, less information.
    kl_half = info_bottleneck(x, torch.full((2, 1, 4, 4), 0.5), mu, std, noise=noise)[1]
    assert bool((kl_half < kl0).all() and (kl_half > kl1).all())


def test_generator_reproducible():
    x, a = torch.randn(2, 3, 5), torch.rand(2, 1, 5)
    z1, _ = info_bottleneck(x, a, 0.0, 1.0, generator=torch.Generator().manual_seed(3))
    z2, _ = info_bottleneck(x, a, 0.0, 1.0, generator=torch.Generator().manual_seed(3))
    z3, _ = info_bottleneck(x, a, 0.0, 1.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)


def test_bad_input():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        info_bottleneck(x, torch.full((2, 1, 4), 1.5), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        info_bottleneck(x, torch.full((2, 1, 4), -0.1), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        info_bottleneck(x, torch.full((2, 1, 4), float("nan")), 0.0, 1.0)
    with pytest.raises(ValueError, match="alpha must be"):
        info_bottleneck(x, torch.rand(2, 2, 4), 0.0, 1.0)
    with pytest.raises(ValueError, match="std"):
        info_bottleneck(x, torch.rand(2, 1, 4), 0.0, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="mu must be"):
        info_bottleneck(x, torch.rand(2, 1, 4), torch.zeros(5), 1.0)
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        info_bottleneck(bad, torch.rand(2, 1, 4), 0.0, 1.0)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="extension not built")
class TestCompiledOp:
    def _args(self):
        x, alpha, noise, mu, std = _inputs((2, 3, 6), False, torch.float64, seed=1)
        alpha = alpha * 0.8 + 0.1  # away from the KL floor's kink for finite differences
        return x.requires_grad_(True), alpha.requires_grad_(True), noise, mu, std

    def test_gradcheck(self):
        x, alpha, noise, mu, std = self._args()
        fn = lambda x, a: torch.ops.xaikernels.info_bottleneck(x, a, noise, mu, std, 1e-6)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, alpha))

    def test_opcheck(self):
        x, alpha, noise, mu, std = self._args()
        torch.library.opcheck(torch.ops.xaikernels.info_bottleneck.default, (x, alpha, noise, mu, std, 1e-6))

    def test_torch_compile(self):
        x, alpha, noise, mu, std = self._args()
        fn = torch.compile(lambda x, a: torch.ops.xaikernels.info_bottleneck(x, a, noise, mu, std, 1e-6)[1].sum(),
                           backend="aot_eager", fullgraph=True)
        out = fn(x, alpha)
        _, kl = oracle(x, alpha, noise, mu, std, 1e-6)
        torch.testing.assert_close(out, kl.sum())

    def test_cpp_rejects_alpha_out_of_range(self):
        x, alpha, noise, mu, std = self._args()
        with pytest.raises(RuntimeError, match=r"\[0, 1\]"):
            torch.ops.xaikernels.info_bottleneck(x.detach(), alpha.detach() + 1, noise, mu, std, 1e-6)

    def test_thread_count_invariance(self):
        x, alpha, noise, mu, std = _inputs((3, 8, 700), False, torch.float32, seed=2)
        old = torch.get_num_threads()
        try:
            outs = []
            for t in (1, 2):
                torch.set_num_threads(t)
                outs.append(torch.ops.xaikernels.info_bottleneck(x, alpha, noise, mu.reshape(8, 700),
                                                                 std.reshape(8, 700), 1e-6))
        finally:
            torch.set_num_threads(old)
        assert all(torch.equal(a, b) for a, b in zip(*outs))
