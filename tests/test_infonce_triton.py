"""The Triton InfoNCE logsumexp kernels (interpreter on CPU) against a float64 oracle and the
reference backend: values and gradients, odd shapes, batch 1, every dtype, both self-pair modes,
tile invariance, and error at most ~2x plain torch's in fp32."""
import math

import pytest
import torch

import xaikernels
from xaikernels import _backend
from xaikernels.ops.infonce import infonce, infonce_lse, n_candidates

from conftest import TOL
from test_infonce_op import _inputs, oracle  # the shared float64 definition

pytestmark = pytest.mark.skipif(_backend._available("triton", "infonce_lse", torch.device("cpu")) is not None,
                                reason="triton not installed or TRITON_INTERPRET unset")

SHAPES = [(1, 1, 1), (2, 3, 5), (3, 17, 6), (5, 7, 33), (1, 49, 8), (4, 1, 3)]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
CASES = [(s, ex) for s in SHAPES for ex in (False, True) if not (ex and s[0] < 2)]  # exclude_self needs N >= 2


def _run(x, y, tau, exclude_self, gt, gl, backend, **blocks):
    xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    terms, lse = infonce_lse(xg, yg, tau, exclude_self, backend=backend, **blocks)
    assert xaikernels.last_backend("infonce_lse") == backend
    dx, dy = torch.autograd.grad((terms * gt.to(terms.dtype)).sum() + (lse * gl.to(lse.dtype)).sum(), (xg, yg))
    return terms, lse, dx, dy


@pytest.mark.parametrize("shape,exclude_self", CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_vs_oracle_and_reference(shape, dtype, exclude_self):
    tau = 0.7
    x, y = _inputs(shape, dtype, seed=hash((shape, exclude_self)) % 2**31)
    gen = torch.Generator().manual_seed(1)
    gt = torch.randn(shape[:2], generator=gen, dtype=torch.float64)
    gl = torch.randn(shape[:1], generator=gen, dtype=torch.float64)
    terms, lse, dx, dy = _run(x, y, tau, exclude_self, gt, gl, "triton")
    assert terms.shape == shape[:2] and terms.dtype == dtype
    assert lse.shape == shape[:1] and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert dx.dtype == dtype and dy.dtype == dtype

    xo, yo = x.double().requires_grad_(True), y.double().requires_grad_(True)
    t_o, l_o = oracle(xo, yo, tau, exclude_self)
    dx_o, dy_o = torch.autograd.grad((t_o * gt.to(dtype).double()).sum() + (l_o * gl.to(lse.dtype).double()).sum(),
                                     (xo, yo))
    rtol, atol = TOL[dtype]
    scale = max(1.0, shape[2] ** 0.5)  # a D-term dot product's rounding grows ~sqrt(D)
    torch.testing.assert_close(terms.double(), t_o.detach(), rtol=rtol * scale, atol=atol * scale)
    lrtol, latol = TOL[torch.float64 if dtype == torch.float64 else torch.float32]  # lse is kept in opmath
    torch.testing.assert_close(lse.double(), l_o.detach(), rtol=lrtol * scale, atol=latol * scale)
    gscale = scale * max(1.0, (shape[0] * shape[1]) ** 0.5)  # gradients sum over N*K scores
    torch.testing.assert_close(dx.double(), dx_o, rtol=rtol * gscale, atol=atol * gscale)
    torch.testing.assert_close(dy.double(), dy_o, rtol=rtol * gscale, atol=atol * gscale)

    # Same dtype and opmath as the reference backend: agreement to the same tolerances.
    for ours, want in zip((terms, lse, dx, dy), _run(x, y, tau, exclude_self, gt, gl, "reference")):
        r, a = TOL[want.dtype]
        torch.testing.assert_close(ours, want, rtol=r * gscale, atol=a * gscale)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_tile_sizes_do_not_change_results(exclude_self):
    """Several row blocks and column tiles, tiles straddling samples, a ragged last tile."""
    x, y = _inputs((37, 5, 20), torch.float64, seed=9)
    gen = torch.Generator().manual_seed(2)
    gt, gl = torch.randn(37, 5, generator=gen, dtype=torch.float64), torch.randn(37, generator=gen, dtype=torch.float64)
    outs = [_run(x, y, 0.5, exclude_self, gt, gl, "triton", block_rows=br, block_cols=bc)
            for br, bc in ((0, 0), (16, 16), (16, 48), (32, 128))]
    want = _run(x, y, 0.5, exclude_self, gt, gl, "reference")
    for got in outs:
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_estimate_bounded_and_extreme_scores_finite(exclude_self):
    """Aligned features make each positive dominate (terms ~ -e^t, the accurate-log1p branch) and
    large scores stress the online max; the estimate stays <= log(C) and everything finite."""
    n, k, d = 6, 10, 16
    x, y = _inputs((n, k, d), torch.float32, seed=5)
    log_c = torch.tensor(math.log(n_candidates(n, k, exclude_self)), dtype=torch.float32).item()
    for xx in (x, y.unsqueeze(1).expand(n, k, d) * 3 + 0.01 * x):
        for tau in (0.05, 0.5, 5.0):
            xg, yg = xx.clone().requires_grad_(True), y.clone().requires_grad_(True)
            est = infonce(xg, yg, tau, exclude_self, backend="triton")
            assert est.item() <= log_c
            ref = infonce(xx, y, tau, exclude_self, backend="reference")
            torch.testing.assert_close(est, ref, rtol=1e-5, atol=1e-5)
            est.backward()
            assert torch.isfinite(xg.grad).all() and torch.isfinite(yg.grad).all()


def test_auto_order_prefers_triton_on_cuda_only():
    from xaikernels.ops.infonce import OP

    assert OP.auto_order["cuda"][0] == "triton"
    assert "triton" not in OP.auto_order["cpu"]


def test_compiled_tiles_come_from_the_gpu_table(monkeypatch):
    """Compiled (not interpreted) automatic tiles are GPU_TILES' entry for the opmath and BLOCK_D,
    clamped to the shapes; an explicit tile is the caller's (rounded up to a power of two)."""
    from xaikernels.kernels.triton import infonce as k
    from xaikernels.ops.infonce import TRITON_MAX_BLOCK_D, triton_fits

    monkeypatch.setattr(k, "_interpreting", lambda: False)
    for fp64, dtype in ((False, torch.float32), (False, torch.bfloat16), (True, torch.float64)):
        assert max(k.GPU_TILES[fp64]) == TRITON_MAX_BLOCK_D[fp64]
        for d in (1, 16, 17, 33, 64, 100, 128, 129, 256, 257, 512, 513):
            if not triton_fits(d, dtype):
                continue
            br, bj, bd, warps = k._blocks(1024, 8192, d, 0, 0, fp64)
            assert (br, bj, warps) == k.GPU_TILES[fp64][bd] and bd >= d and bd == max(16, 1 << (d - 1).bit_length())
            br, bj, _, _ = k._blocks(3, 5, d, 0, 0, fp64)
            assert (br, bj) == (16, 16)
    assert k._blocks(1024, 8192, 128, 48, 100, False)[:2] == (64, 128)


def test_triton_kernels_compile_for_sm90_within_99_kib_of_shared_memory():
    """Compile-only (no GPU): the widest automatic InfoNCE tiles of each dtype and every other
    Triton kernel, built for sm_90 by Triton's own ptxas, compile (the interpreter accepts code
    the compiler rejects, and the reverse) and ask for at most 99 KiB of shared memory per block
    (bench/triton_resources.py; fp64 D = 129 with the former InfoNCE tiles asked for 321 KiB and
    failed to launch on an H100)."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    spec = importlib.util.find_spec("triton.backends.nvidia")
    if spec is None or not (Path(spec.origin).parent / "bin" / "cuobjdump").exists():
        pytest.skip("Triton without its NVIDIA backend tools")
    try:  # the ahead-of-time API the script uses (Triton 3.x)
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"this Triton has no ahead-of-time compile API: {exc}")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "bench" / "triton_resources.py"), "--check", "--widest"],
                       capture_output=True, text=True, timeout=600, cwd=root)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # InfoNCE's 3 tile kernels x 3 dtypes, and every other kernel's variants (all compile)
    assert "compiled 33 kernels for sm_90" in r.stdout, r.stdout[-2000:]
