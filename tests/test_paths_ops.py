"""Path/noise generation and streaming accumulation ops on every backend vs the reference."""
import pytest
import torch

from xaikernels import _backend, last_backend
from xaikernels.ops import paths as P
from xaikernels.reference import paths as R

from conftest import TOL, TRITON_CPU

CPU = torch.device("cpu")
BACKENDS = [b for b in ("reference", "numba", "triton") if _backend._available(b, "make_path", CPU) is None]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1), (1, 37), (3, 123), (5, 7)]


def test_backends_present():
    assert {"reference", "numba"} | ({"triton"} if TRITON_CPU else set()) <= set(BACKENDS)


def check_philox_stream(device: torch.device, block: int) -> None:
    """Triton's tl.randn is the contract: the reference against the Triton kernel itself on
    ``device`` (interpreted on CPU, compiled on CUDA), including offsets beyond 2**32."""
    from xaikernels.kernels.triton import paths as T  # noqa: F401 (import under TRITON_INTERPRET)
    import triton
    import triton.language as tl

    @triton.jit
    def k(out, seed, base, BLOCK: tl.constexpr):
        offs = base + tl.arange(0, BLOCK).to(tl.int64)
        tl.store(out + tl.arange(0, BLOCK), tl.randn(seed, offs))

    for seed, base in [(0, 0), (12345, 7), (2**40 + 3, 5_000_000_000)]:
        out = torch.empty(block, device=device)
        k[(1,)](out, seed, base, BLOCK=block)
        ref = R.randn_philox(seed, torch.arange(block) + base)
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=2e-6)


@pytest.mark.skipif(not TRITON_CPU, reason="interpreter off (GPU machine): tests/test_gpu.py runs it compiled")
def test_philox_matches_known_triton_stream():
    check_philox_stream(CPU, 256)


def test_numba_vectorised_normals_match_the_philox_stream_over_a_million_draws():
    # The Numba kernel evaluates log/cos with its own float32 polynomials (vectorised); over
    # 2**20 draws (with offsets beyond 2**32, a block size that does not divide the row, and
    # the tails near u1 = 1e-7) every value must stay within the Triton-contract tolerance.
    pytest.importorskip("numba")
    m = 2**20 + 37
    for seed, p0 in [(0, 0), (2**40 + 3, 4097)]:  # p0 · m > 2**32 for the second
        got = P.make_noisy(torch.zeros(1, m), torch.ones(1), seed, p0, p0 + 1, backend="numba")[0]
        ref = R.randn_philox(seed, torch.arange(m, dtype=torch.int64) + p0 * m)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=2e-6)
        assert (got - ref).abs().max().item() <= 4 * torch.finfo(torch.float32).eps * ref.abs().max().item()


def check_noise_statistics(backend: str, device: torch.device) -> None:
    x = torch.zeros(4, 5000, device=device)
    sigma = torch.tensor([1.0, 2.0, 0.5, 0.0], device=device)
    rows = P.make_noisy(x, sigma, 7, 0, 40, backend=backend).cpu()  # 10 samples per example
    eps = rows.view(10, 4, 5000)
    n = 10 * 5000
    for e, s in enumerate(sigma.tolist()):
        v = eps[:, e].reshape(-1)
        if s == 0:
            assert torch.equal(v, torch.zeros_like(v))
            continue
        # mean within 5 sigma of its standard error, std within 5 standard errors (~1/sqrt(2n)).
        assert abs(v.mean().item()) < 5 * s / n**0.5
        assert abs(v.std().item() / s - 1) < 5 / (2 * n) ** 0.5
    # distinct seeds give independent-looking streams
    other = P.make_noisy(x, sigma, 8, 0, 40, backend=backend).cpu().view(10, 4, 5000)
    corr = torch.corrcoef(torch.stack([eps[:, 0].reshape(-1), other[:, 0].reshape(-1)]))[0, 1]
    assert abs(corr.item()) < 5 / n**0.5


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_statistics(backend):
    check_noise_statistics(backend, CPU)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_make_path_and_noisy_vs_reference(backend, shape, dtype):
    # numba computes in fp32 and casts for fp16/bf16, which is what the tolerances check
    check_path_and_noisy(backend, shape, dtype, CPU)


def check_path_and_noisy(backend: str, shape, dtype, device: torch.device) -> None:
    """Path and noisy rows made by ``backend`` on ``device`` against the reference on CPU."""
    gen = torch.Generator().manual_seed(1)
    n, m = shape
    x = torch.randn(shape, generator=gen).to(dtype)
    b = torch.randn(shape, generator=gen).to(dtype)
    alphas = torch.rand(6, generator=gen, dtype=torch.float64)
    sigma = torch.rand(n, generator=gen)
    xd, bd, sd = x.to(device), b.to(device), sigma.to(device)
    rtol, atol = TOL[dtype]
    for p0, p1 in [(0, 6 * n), (1, 2 * n + 1), (3, 3)]:
        got = P.make_path(xd, bd, alphas, p0, p1, backend=backend)
        assert last_backend("make_path") == backend and got.device == xd.device
        torch.testing.assert_close(got.cpu(), R.make_path(x, b, alphas, p0, p1), rtol=rtol, atol=atol)
        got = P.make_noisy(xd, sd, 99, p0, p1, backend=backend)
        # the noise itself is fp32 with transcendental-rounding differences between backends
        torch.testing.assert_close(got.cpu(), R.make_noisy(x, sigma, 99, p0, p1),
                                   rtol=max(rtol, 1e-5), atol=max(atol, 5e-6))
    noise = torch.randn(6 * n, m, generator=gen)
    torch.testing.assert_close(P.make_noisy(xd, sd, 0, 2, 5, noise.to(device), backend=backend).cpu(),
                               R.make_noisy(x, sigma, 0, 2, 5, noise), rtol=rtol, atol=atol)


def _oracle_state(g, n, weights, mode):
    """Closed forms in float64 over all rows at once."""
    rows = g.shape[0]
    j = torch.arange(rows) // n
    e = torch.arange(rows) % n
    a = torch.zeros(n, g.shape[1], dtype=torch.float64)
    b = torch.zeros_like(a)
    for k in range(n):
        gk = g[e == k].double()
        if mode == P.WSUM:
            a[k] = (weights.double()[j[e == k]].unsqueeze(1) * gk).sum(0)
        elif mode == P.SQSUM:
            a[k] = (gk**2).sum(0)
        else:
            a[k] = gk.mean(0)
            b[k] = ((gk - gk.mean(0)) ** 2).sum(0)
    return a, b


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("acc", [torch.float32, torch.float64])
@pytest.mark.parametrize("gdtype", [torch.float32, torch.float16, torch.bfloat16])
def test_accumulate_vs_closed_form_any_chunking(backend, mode, acc, gdtype):
    gen = torch.Generator().manual_seed(mode)
    n, m, samples = 3, 41, 7
    g = (torch.randn(samples * n, m, generator=gen) + 3.0).to(gdtype)  # offset: stresses Welford
    w = torch.rand(samples, generator=gen, dtype=torch.float64)
    exp_a, exp_b = _oracle_state(g, n, w, mode)
    for cuts in ([0, samples * n], [0, 1, 5, 6, 20, samples * n], [0, 4, 11, samples * n]):
        a = torch.zeros(n, m, dtype=acc)
        b = torch.zeros(n, m, dtype=acc)
        for p0, p1 in zip(cuts[:-1], cuts[1:]):
            P.accumulate(a, b, g[p0:p1], p0, n, w.to(acc), mode, backend=backend)
        tol = dict(rtol=1e-5, atol=1e-5) if acc == torch.float32 else dict(rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a.double(), exp_a, **tol)
        if mode == 2:
            torch.testing.assert_close(b.double(), exp_b, **tol)


def test_numba_thread_count_invariance():
    import numba

    x = torch.randn(2, 3001)
    sigma = torch.tensor([0.3, 1.2])
    g = torch.randn(16, 3001)
    res = []
    old = numba.get_num_threads()
    try:
        for t in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(t)
            a = torch.zeros(2, 3001)
            b = torch.zeros(2, 3001)
            P.accumulate(a, b, g, 0, 2, None, P.WELFORD, backend="numba")
            res.append((P.make_noisy(x, sigma, 5, 0, 16, backend="numba"), a, b))
    finally:
        numba.set_num_threads(old)
    for u, v in zip(res[0], res[1]):
        assert torch.equal(u, v)


def test_accumulate_rejects_bad_state():
    with pytest.raises(TypeError):
        P.accumulate(torch.zeros(2, 3, dtype=torch.float16), None, torch.zeros(1, 3), 0, 2, None, 1)
