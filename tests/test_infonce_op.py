"""The fused InfoNCE logsumexp op against an independent float64 oracle (values and gradients)."""
import math

import pytest
import torch
import torch.nn.functional as F

import xaikernels
from xaikernels import _backend
from xaikernels.ops.infonce import infonce, infonce_lse, n_candidates
from xaikernels.reference import infonce as ref

from conftest import TOL

BACKENDS = [b for b in ("reference", "cpp") if _backend._available(b, "infonce_lse", torch.device("cpu")) is None]
SHAPES = [(1, 1, 1), (2, 3, 5), (3, 17, 6), (5, 7, 33), (1, 49, 8), (4, 1, 3)]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
HAS_CPP = "cpp" in BACKENDS
# Triton (interpreter on CPU) joins the tests that take a backend argument and are cheap enough.
WITH_TRITON = BACKENDS + [b for b in ("triton",) if _backend._available(b, "infonce_lse", torch.device("cpu")) is None]


def oracle(x, y, tau, exclude_self):
    """InfoNCE terms and lse straight from the definition (log_softmax over explicit candidates)."""
    n, k, d = x.shape
    s = (y @ x.reshape(n * k, d).t()) / tau  # (N, N*K)
    s3 = s.view(n, n, k)
    idx = torch.arange(n)
    pos = s3[idx, idx]
    if not exclude_self:
        return F.log_softmax(s, dim=1).view(n, n, k)[idx, idx], torch.logsumexp(s, dim=1)
    rows, lses = [], []
    for i in range(n):
        neg = torch.cat([s3[i, m] for m in range(n) if m != i])
        cand = torch.cat([pos[i].unsqueeze(1), neg.unsqueeze(0).expand(k, -1)], dim=1)  # (K, 1 + (N-1)K)
        rows.append(F.log_softmax(cand, dim=1)[:, 0])
        lses.append(torch.logsumexp(neg, dim=0))
    return torch.stack(rows), torch.stack(lses)


def _inputs(shape, dtype, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    n, k, d = shape
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    y = (torch.randn(n, d, generator=gen, dtype=torch.float64) * scale).to(dtype)
    return x, y


def test_backends_present():
    assert "cpp" in BACKENDS and "reference" in BACKENDS


CASES = [(s, ex) for s in SHAPES for ex in (False, True) if not (ex and s[0] < 2)]  # exclude_self needs N >= 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,exclude_self", CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_backward_vs_oracle(backend, shape, dtype, exclude_self):
    tau = 0.7
    x, y = _inputs(shape, dtype, seed=hash((shape, exclude_self)) % 2**31)
    x.requires_grad_(True)
    y.requires_grad_(True)
    terms, lse = infonce_lse(x, y, tau, exclude_self, backend=backend)
    assert xaikernels.last_backend("infonce_lse") == backend
    assert terms.shape == shape[:2] and terms.dtype == dtype
    assert lse.shape == shape[:1] and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)

    xo = x.detach().double().requires_grad_(True)
    yo = y.detach().double().requires_grad_(True)
    t_o, l_o = oracle(xo, yo, tau, exclude_self)
    rtol, atol = TOL[dtype]
    scale = max(1.0, shape[2] ** 0.5)  # a D-term dot product's rounding grows ~sqrt(D)
    torch.testing.assert_close(terms.double(), t_o.detach(), rtol=rtol * scale, atol=atol * scale)
    # lse is kept in opmath: compare at fp32 accuracy for the reduced-precision dtypes.
    lrtol, latol = TOL[torch.float64 if dtype == torch.float64 else torch.float32]
    torch.testing.assert_close(lse.double(), l_o.detach(), rtol=lrtol * scale, atol=latol * scale)

    gen = torch.Generator().manual_seed(1)
    gt = torch.randn(terms.shape, generator=gen, dtype=torch.float64)
    gl = torch.randn(lse.shape, generator=gen, dtype=torch.float64)
    dx, dy = torch.autograd.grad((terms * gt.to(dtype)).sum() + (lse * gl.to(lse.dtype)).sum(), (x, y))
    dx_o, dy_o = torch.autograd.grad((t_o * gt.to(dtype).double()).sum() + (l_o * gl.to(lse.dtype).double()).sum(),
                                     (xo, yo))
    gscale = scale * max(1.0, (shape[0] * shape[1]) ** 0.5)  # gradients sum over N*K scores
    torch.testing.assert_close(dx.double(), dx_o, rtol=rtol * gscale, atol=atol * gscale)
    torch.testing.assert_close(dy.double(), dy_o, rtol=rtol * gscale, atol=atol * gscale)


@pytest.mark.parametrize("backend", WITH_TRITON)
@pytest.mark.parametrize("exclude_self", [False, True])
def test_float32_larger_error_within_2x_of_torch(backend, exclude_self):
    """At a size with many tiles, the kernel's fp32 error is at most ~2x plain torch's."""
    x, y = _inputs((12, 196, 48), torch.float32, seed=3, scale=0.6)
    xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    terms, lse = infonce_lse(xg, yg, 0.5, exclude_self, backend=backend, block_cols=100)
    (terms.sum() + lse.sum()).backward()
    xo, yo = x.double().requires_grad_(True), y.double().requires_grad_(True)
    t_o, l_o = oracle(xo, yo, 0.5, exclude_self)
    (t_o.sum() + l_o.sum()).backward()
    xp, yp = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    t_p, l_p = oracle(xp, yp, 0.5, exclude_self)  # plain torch in fp32
    (t_p.sum() + l_p.sum()).backward()
    for ours, plain, exact in ((terms, t_p, t_o), (lse, l_p, l_o), (xg.grad, xp.grad, xo.grad),
                               (yg.grad, yp.grad, yo.grad)):
        err_ours = (ours.double() - exact.detach()).abs().max().item()
        err_plain = (plain.double() - exact.detach()).abs().max().item()
        assert err_ours <= 2 * err_plain + 1e-6, (err_ours, err_plain)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_estimate_bounded_by_log_candidates(exclude_self):
    # Random features, and features aligned so that each positive dominates (estimate near its
    # ceiling): never above log(C), for any temperature.
    n, k, d = 6, 10, 16
    x, y = _inputs((n, k, d), torch.float32, seed=5)
    aligned_x = y.unsqueeze(1).expand(n, k, d) * 3 + 0.01 * x
    # log(C) as the float32 result can represent it (the estimate is log(C) + terms, terms <= 0).
    log_c = torch.tensor(math.log(n_candidates(n, k, exclude_self)), dtype=torch.float32).item()
    seen_near = False
    for xx in (x, aligned_x):
        for tau in (0.05, 0.5, 5.0):
            est = infonce(xx, y, tau, exclude_self).item()
            assert est <= log_c
            pointwise = infonce(xx, y, tau, exclude_self, reduction="none")
            assert pointwise.shape == (n, k) and bool((pointwise <= log_c).all())
            seen_near |= est > log_c - 2.5
    assert seen_near  # the aligned case really approaches the ceiling (the check above is not vacuous)
    # With K positives sharing a row the include-mode bound is in fact log(N).
    if not exclude_self:
        assert infonce(aligned_x, y, 0.05).item() <= math.log(n) + 1e-6


@pytest.mark.skipif(not HAS_CPP, reason="extension not built")
class TestCompiledOp:
    @pytest.mark.parametrize("exclude_self", [False, True])
    def test_gradcheck(self, exclude_self):
        x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
        y = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
        fn = lambda x, y: torch.ops.xaikernels.infonce_lse(x, y, 0.8, exclude_self, 2, 5)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, y))
        assert torch.autograd.gradcheck(lambda x, y: infonce_lse(x, y, 0.8, exclude_self, backend="cpp"), (x, y))

    def test_opcheck(self):
        x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
        y = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        for ex in (False, True):
            torch.library.opcheck(torch.ops.xaikernels.infonce_lse.default, (x, y, 0.5, ex, 2, 3))
        xf, yf = torch.randn(2, 7, 3), torch.randn(2, 3)
        torch.library.opcheck(torch.ops.xaikernels.infonce_lse.default, (xf, yf, 1.0, False, 0, 0))

    def test_torch_compile_forward_and_backward(self):
        def loss(x, y):
            terms, lse = torch.ops.xaikernels.infonce_lse(x, y, 0.5, False, 0, 0)
            return terms.mean() + 0.1 * lse.sum()

        compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
        x = torch.randn(4, 9, 6, dtype=torch.float64, requires_grad=True)
        y = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
        out = compiled(x, y)
        dx, dy = torch.autograd.grad(out, (x, y))
        xo, yo = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        t_o, l_o = oracle(xo, yo, 0.5, False)
        exp = t_o.mean() + 0.1 * l_o.sum()
        dx_o, dy_o = torch.autograd.grad(exp, (xo, yo))
        torch.testing.assert_close(out, exp)
        torch.testing.assert_close(dx, dx_o)
        torch.testing.assert_close(dy, dy_o)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
    def test_tile_size_invariance(self, dtype):
        x, y = _inputs((7, 41, 9), dtype, seed=11)
        gt = torch.randn(7, 41, dtype=dtype)
        gl = torch.randn(7, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        rtol, atol = TOL[dtype]

        def run(ex, br, bc):
            t, l = torch.ops.xaikernels.infonce_lse(x, y, 0.9, ex, br, bc)
            return (t, l) + tuple(torch.ops.xaikernels.infonce_lse_backward(gt, gl, x, y, l, 0.9, ex, br, bc))

        for ex in (False, True):
            base = run(ex, 0, 0)
            for br, bc in ((1, 1), (3, 7), (7, 41), (2, 287), (5, 100)):
                for a, b in zip(run(ex, br, bc), base):
                    torch.testing.assert_close(a, b, rtol=rtol * 10, atol=atol * 10)

    def test_thread_count_invariance(self):
        x, y = _inputs((9, 300, 32), torch.float32, seed=2)
        gt, gl = torch.randn(9, 300), torch.randn(9)
        old = torch.get_num_threads()
        try:
            results = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                t, l = torch.ops.xaikernels.infonce_lse(x, y, 0.5, False, 4, 64)
                dx, dy = torch.ops.xaikernels.infonce_lse_backward(gt, gl, x, y, l, 0.5, False, 4, 64)
                results.append((t, l, dx, dy))
        finally:
            torch.set_num_threads(old)
        for a, b in zip(*results):
            assert torch.equal(a, b)

    def test_errors_from_cpp(self):
        op = torch.ops.xaikernels.infonce_lse
        with pytest.raises(RuntimeError, match="N=3 samples but y has N=2"):
            op(torch.randn(3, 4, 5), torch.randn(2, 5), 1.0, False, 0, 0)
        with pytest.raises(RuntimeError, match="feature sizes differ"):
            op(torch.randn(3, 4, 5), torch.randn(3, 6), 1.0, False, 0, 0)
        with pytest.raises(RuntimeError, match="K = 0"):
            op(torch.randn(3, 0, 5), torch.randn(3, 5), 1.0, False, 0, 0)
        with pytest.raises(RuntimeError, match="temperature"):
            op(torch.randn(3, 4, 5), torch.randn(3, 5), 0.0, False, 0, 0)
        with pytest.raises(RuntimeError, match="N >= 2"):
            op(torch.randn(1, 4, 5), torch.randn(1, 5), 1.0, True, 0, 0)
        x = torch.randn(3, 4, 5)
        x[1, 2, 3] = float("nan")
        with pytest.raises(RuntimeError, match="non-finite"):
            op(x, torch.randn(3, 5), 1.0, False, 0, 0)
        with pytest.raises(RuntimeError, match="non-finite"):  # overflow of <x, y> / tau
            op(torch.full((2, 3, 4), 1e20), torch.full((2, 4), 1e20), 1.0, False, 0, 0)


def test_bad_input_from_python():
    x, y = torch.randn(3, 4, 5), torch.randn(3, 5)
    with pytest.raises(ValueError, match="N=3 samples but y has N=2"):
        infonce_lse(x, torch.randn(2, 5))
    with pytest.raises(ValueError, match="feature sizes differ"):
        infonce_lse(x, torch.randn(3, 7))
    with pytest.raises(ValueError, match="K = 0"):
        infonce_lse(torch.randn(3, 0, 5), y)
    with pytest.raises(ValueError, match=r"\(N, K, D\)"):
        infonce_lse(torch.randn(3, 5), y)
    with pytest.raises(ValueError, match="temperature"):
        infonce_lse(x, y, temperature=-1.0)
    with pytest.raises(ValueError, match="N >= 2"):
        infonce_lse(x[:1], y[:1], exclude_self=True)
    with pytest.raises(TypeError, match="share a dtype"):
        infonce_lse(x, y.double())
    with pytest.raises(TypeError, match="floating"):
        infonce_lse(x.long(), y.long())
    bad = y.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="y contains 1 non-finite"):
        infonce_lse(x, bad)
    with pytest.raises(ValueError, match="reduction"):
        infonce(x, y, reduction="sum")


def test_reference_backward_matches_its_autograd():
    """The reference's closed-form backward is what the op's reference backend runs."""
    x, y = _inputs((4, 6, 5), torch.float64, seed=9)
    for ex in (False, True):
        xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        t, l = ref.infonce_lse(xr, yr, 0.6, ex)
        gt, gl = torch.randn_like(t), torch.randn_like(l)
        dx, dy = torch.autograd.grad((t * gt).sum() + (l * gl).sum(), (xr, yr))
        dx2, dy2 = ref.infonce_lse_backward(gt, gl, x, y, l.detach(), 0.6, ex)
        torch.testing.assert_close(dx2, dx)
        torch.testing.assert_close(dy2, dy)


def test_triton_fits_rule():
    """The Triton kernels' one-tile limit: 32 rows of next_pow2(D) opmath elements within 64 KiB."""
    from xaikernels.ops.infonce import triton_fits

    assert triton_fits(1, torch.float32) and triton_fits(512, torch.float32) and triton_fits(512, torch.bfloat16)
    assert not triton_fits(513, torch.float32)
    assert triton_fits(129, torch.float64) and triton_fits(256, torch.float64)
    assert not triton_fits(257, torch.float64)
