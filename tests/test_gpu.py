"""The CUDA backends on a GPU: compiled Triton kernels and the C++/CUDA extension.

Every op's CUDA backends are checked against the float64 oracles of the CPU op tests (values
and gradients, odd shapes, batch 1, every dtype), with the same tolerance table, and the
methods on a CUDA model against the same methods on CPU.  The whole module is skipped without a
CUDA device: CI has none.  On a GPU machine run ``pytest tests/test_gpu.py`` (the conftest leaves
Triton's interpreter off when a CUDA device is present).
"""
import math

import numpy as np
import pytest
import torch

import xaikernels
from xaikernels import _backend
from xaikernels.ops import paths as P
from xaikernels.ops.grad_cam import grad_cam_reduce
from xaikernels.ops.infonce import infonce_lse
from xaikernels.ops.lrp import lrp_layer
from xaikernels.reference import lrp as lrp_ref

from conftest import TOL

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CUDA = torch.device("cuda")
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _cu(*ts):
    return tuple(None if t is None else t.to(CUDA) for t in ts)


def test_cuda_backends_live():
    """On a GPU machine Triton compiles (no interpreter) and the extension carries CUDA kernels."""
    assert not _backend.triton_interpreting()
    assert _backend.backend_status()["triton"] == "live (cuda)"
    for op in ("grad_cam", "infonce_lse"):
        assert _backend._available("cpp", op, CUDA) is None, op
        assert _backend._available("triton", op, CUDA) is None, op
    for op in ("info_bottleneck", "lrp_linear", "lrp_conv", "make_path", "make_noisy", "accumulate"):
        assert _backend._available("triton", op, CUDA) is None, op


# ---------------------------------------------------------------------------------- grad_cam
from test_grad_cam_op import oracle as cam_oracle  # noqa: E402

CAM_SHAPES = [(1, 1, 1), (2, 3, 5), (3, 17, 123), (1, 64, 49), (5, 7, 1), (2, 515, 197)]


@pytest.mark.parametrize("backend", ["triton", "cpp"])
@pytest.mark.parametrize("shape", CAM_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("relu", [False, True])
def test_grad_cam_cuda_vs_oracle(backend, shape, dtype, relu):
    gen = torch.Generator().manual_seed(hash((shape, relu)) % 2**31)
    a = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    ac, gc = (t.to(CUDA).requires_grad_(True) for t in (a, g))
    out = grad_cam_reduce(ac, gc, relu=relu, backend=backend)
    assert xaikernels.last_backend("grad_cam") == backend
    assert out.device.type == "cuda" and out.dtype == dtype and out.shape == (shape[0], shape[2])

    a_o, g_o = a.double().requires_grad_(True), g.double().requires_grad_(True)
    exp = cam_oracle(a_o, g_o, relu)
    rtol, atol = TOL[dtype]
    scale = max(1.0, shape[1] ** 0.5)
    torch.testing.assert_close(out.double().cpu(), exp.detach(), rtol=rtol * scale, atol=atol * scale)

    up = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    da, dg = torch.autograd.grad(out, (ac, gc), up.to(dtype).to(CUDA))
    da_o, dg_o = torch.autograd.grad(exp, (a_o, g_o), up)
    da = da.double().cpu()
    if relu:  # the kink: exclude ties at zero, as the CPU test does
        keep = (exp.detach().abs() > 1e-2).unsqueeze(1)
        da, da_o = da * keep, da_o * keep
    torch.testing.assert_close(da, da_o, rtol=rtol * scale, atol=atol * scale)
    if not relu:
        torch.testing.assert_close(dg.double().cpu(), dg_o, rtol=rtol * scale, atol=atol * scale)


# ------------------------------------------------------------------------------ infonce_lse
from test_infonce_op import _inputs as nce_inputs  # noqa: E402
from test_infonce_op import oracle as nce_oracle  # noqa: E402

NCE_SHAPES = [(1, 1, 1), (2, 3, 5), (3, 17, 6), (5, 7, 33), (1, 49, 8), (4, 1, 3), (67, 5, 129)]
NCE_CASES = [(s, ex) for s in NCE_SHAPES for ex in (False, True) if not (ex and s[0] < 2)]


@pytest.mark.parametrize("backend", ["triton", "cpp"])
@pytest.mark.parametrize("shape,exclude_self", NCE_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_infonce_cuda_vs_oracle(backend, shape, dtype, exclude_self):
    tau = 0.7
    x, y = nce_inputs(shape, dtype, seed=hash((shape, exclude_self)) % 2**31)
    gen = torch.Generator().manual_seed(1)
    gt = torch.randn(shape[:2], generator=gen, dtype=torch.float64)
    gl = torch.randn(shape[:1], generator=gen, dtype=torch.float64)
    xc, yc = (t.to(CUDA).requires_grad_(True) for t in (x, y))
    terms, lse = infonce_lse(xc, yc, tau, exclude_self, backend=backend)
    assert xaikernels.last_backend("infonce_lse") == backend
    assert terms.device.type == "cuda" and terms.shape == shape[:2] and terms.dtype == dtype
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    dx, dy = torch.autograd.grad((terms * gt.to(terms.dtype).to(CUDA)).sum()
                                 + (lse * gl.to(lse.dtype).to(CUDA)).sum(), (xc, yc))

    xo, yo = x.double().requires_grad_(True), y.double().requires_grad_(True)
    t_o, l_o = nce_oracle(xo, yo, tau, exclude_self)
    dx_o, dy_o = torch.autograd.grad((t_o * gt.to(dtype).double()).sum() + (l_o * gl.to(lse.dtype).double()).sum(),
                                     (xo, yo))
    rtol, atol = TOL[dtype]
    scale = max(1.0, shape[2] ** 0.5)
    torch.testing.assert_close(terms.double().cpu(), t_o.detach(), rtol=rtol * scale, atol=atol * scale)
    lrtol, latol = TOL[torch.float64 if dtype == torch.float64 else torch.float32]
    torch.testing.assert_close(lse.double().cpu(), l_o.detach(), rtol=lrtol * scale, atol=latol * scale)
    gscale = scale * max(1.0, (shape[0] * shape[1]) ** 0.5)
    torch.testing.assert_close(dx.double().cpu(), dx_o, rtol=rtol * gscale, atol=atol * gscale)
    torch.testing.assert_close(dy.double().cpu(), dy_o, rtol=rtol * gscale, atol=atol * gscale)


@pytest.mark.parametrize("d,dtype", [(300, torch.float64), (600, torch.float32)], ids=str)
def test_infonce_wide_features_go_to_cpp_in_auto_mode_and_raise_for_triton(d, dtype):
    """D past the Triton kernels' one-tile limit: auto serves it from the CUDA extension, an explicit
    Triton request is a clear error (not a shared-memory failure inside Triton)."""
    from xaikernels.ops.infonce import triton_fits

    assert not triton_fits(d, dtype)
    x, y = nce_inputs((9, 3, d), dtype, seed=3)
    xc, yc = x.to(CUDA), y.to(CUDA)
    terms, lse = infonce_lse(xc, yc, 0.5, True)
    assert xaikernels.last_backend("infonce_lse") == "cpp"
    t_o, l_o = nce_oracle(x.double(), y.double(), 0.5, True)
    torch.testing.assert_close(terms.double().cpu(), t_o, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lse.double().cpu(), l_o, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="one tile"):
        infonce_lse(xc, yc, 0.5, True, backend="triton")


# -------------------------------------------------------------------------- info_bottleneck
from test_bottleneck_op import _inputs as ib_inputs  # noqa: E402
from test_bottleneck_op import check_vs_oracle as check_ib_vs_oracle  # noqa: E402

IB_SHAPES = [(1, 1, 1), (2, 3, 5), (3, 4, 7, 9), (1, 16, 300), (2, 5, 17, 23), (2, 64, 28, 28)]


@pytest.mark.parametrize("shape", IB_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_element", [False, True])
def test_bottleneck_cuda_vs_oracle(shape, dtype, per_element):
    check_ib_vs_oracle("triton", shape, dtype, per_element, CUDA)


def test_bottleneck_in_kernel_noise_is_standard_normal_and_replayed_in_backward():
    """noise=None: the kernel draws Philox noise in the forward and regenerates it in the backward."""
    from xaikernels.kernels.triton import bottleneck as k

    shape, seed = (4, 8, 4096), 123
    n, c, s = shape
    zeros, ones = torch.zeros(c, s, device=CUDA), torch.ones(c, s, device=CUDA)
    a, _ = k.info_bottleneck(torch.zeros(shape, device=CUDA), torch.ones(n, 1, s, device=CUDA), None,
                             zeros, ones, 1e-6, seed=seed)
    b, _ = k.info_bottleneck(torch.zeros(shape, device=CUDA), torch.ones(n, 1, s, device=CUDA), None,
                             zeros, ones, 1e-6, seed=seed)
    assert torch.equal(a, b)
    m = a.numel()
    assert abs(a.mean().item()) < 5 / math.sqrt(m)
    assert abs(a.var().item() - 1) < 5 * math.sqrt(2 / m)

    x, alpha, _, mu, std = ib_inputs((2, 5, 37), False, torch.float32, seed=5)
    xc, ac, mc, sc = _cu(x, alpha, mu, std)
    noise, _ = k.info_bottleneck(torch.zeros_like(xc), torch.ones_like(ac), None, torch.zeros_like(mc),
                                 torch.ones_like(sc), 1e-3, seed=7)
    gz, gk = torch.randn_like(xc), torch.randn(2, 37, device=CUDA)
    got = k.info_bottleneck(xc, ac, None, mc, sc, 1e-3, seed=7) + \
        k.info_bottleneck_backward(gz, gk, xc, ac, None, mc, sc, 1e-3, seed=7)
    from xaikernels.reference import bottleneck as ib_ref
    want = ib_ref.info_bottleneck(xc, ac, noise, mc, sc, 1e-3) + \
        ib_ref.info_bottleneck_backward(gz, gk, xc, ac, noise, mc, sc, 1e-3)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- LRP
from test_lrp_ops import LAYERS, RULES  # noqa: E402
from test_lrp_ops import _data as lrp_data  # noqa: E402
from test_lrp_ops import _oracle as lrp_oracle  # noqa: E402


def _lrp_run(x, w, b, geom, rule, r):
    xg = x.to(CUDA).requires_grad_(True)
    wc, bc = _cu(w, b)
    z = lrp_layer(xg, lambda: (wc, bc), rule, geom, "triton")
    (rel,) = torch.autograd.grad(z, xg, r.to(CUDA))
    return z.detach().cpu(), rel.cpu()


@pytest.mark.parametrize("layer,rule_name", [(la, ru) for la in LAYERS for ru in RULES])
@pytest.mark.parametrize("signed", [False, True])
def test_lrp_triton_cuda_float64_vs_oracle(layer, rule_name, signed):
    x, w, b, geom, g = lrp_data(layer, signed, seed=hash((layer, rule_name, signed)) % 2**31)
    rule = RULES[rule_name]
    r = torch.randn(lrp_ref._fwd(x, w, b, geom).shape, generator=g, dtype=torch.float64)
    z_exp, rel_exp = lrp_oracle(x, w, b, geom, rule, r)
    z, rel = _lrp_run(x, w, b, geom, rule, r)
    assert xaikernels.last_backend("lrp_linear" if geom is None else "lrp_conv") == "triton"
    assert rel.shape == x.shape and rel.dtype == x.dtype
    rtol, atol = TOL[torch.float64]
    torch.testing.assert_close(z, z_exp, rtol=rtol, atol=atol)
    scale = rel_exp.abs().max().item() + 1.0
    torch.testing.assert_close(rel, rel_exp, rtol=1e-9, atol=1e-11 * scale)


@pytest.mark.parametrize("layer", ["linear_5x7", "conv2d_groups", "conv2d_stride_pad_dil", "conv2d_depthwise_prepad"])
@pytest.mark.parametrize("rule_name", ["epsilon", "zplus", "alpha2beta1", "gamma", "zbox"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_lrp_triton_cuda_low_precision_within_2x_of_plain_torch(layer, rule_name, dtype):
    x, w, b, geom, g = lrp_data(layer, True, seed=7)
    rule = RULES[rule_name]
    r = torch.randn(lrp_ref._fwd(x, w, b, geom).shape, generator=g, dtype=torch.float64)
    xl, wl, bl, rl = x.to(dtype), w.to(dtype), b.to(dtype), r.to(dtype)
    _, exact = lrp_oracle(xl, wl, bl, geom, rule, rl)
    plain = lrp_ref.dense_layer_rule(xl.float(), wl.float(), bl.float(), rl.float(), geom, rule)
    if dtype != torch.float32:
        plain = plain.to(dtype)
    err_plain = (plain.double() - exact).abs().max().item()
    _, rel = _lrp_run(xl, wl, bl, geom, rule, rl)
    assert rel.dtype == dtype
    err = (rel.double() - exact).abs().max().item()
    assert err <= 2 * err_plain + 1e-6 * exact.abs().max().item(), (err, err_plain)


# ------------------------------------------------------------------------- paths / noise
from test_paths_ops import _oracle_state, check_noise_statistics, check_path_and_noisy, check_philox_stream  # noqa: E402,E501


def test_philox_stream_on_gpu_matches_reference():
    """The compiled tl.randn (GPU transcendental maths) against the reference Philox transform."""
    check_philox_stream(CUDA, 4096)


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (3, 123), (5, 7), (2, 150_001)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_make_path_and_noisy_cuda_vs_reference(shape, dtype):
    check_path_and_noisy("triton", shape, dtype, CUDA)


def test_noise_statistics_cuda():
    check_noise_statistics("triton", CUDA)


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("acc", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("gdtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_accumulate_cuda_vs_closed_form_any_chunking(mode, acc, gdtype):
    gen = torch.Generator().manual_seed(mode)
    n, m, samples = 3, 41, 7
    g = (torch.randn(samples * n, m, generator=gen) + 3.0).to(gdtype)
    w = torch.rand(samples, generator=gen, dtype=torch.float64)
    exp_a, exp_b = _oracle_state(g, n, w, mode)
    gc, wc = g.to(CUDA), w.to(acc).to(CUDA)
    for cuts in ([0, samples * n], [0, 1, 5, 6, 20, samples * n], [0, 4, 11, samples * n]):
        a = torch.zeros(n, m, dtype=acc, device=CUDA)
        b = torch.zeros(n, m, dtype=acc, device=CUDA)
        for p0, p1 in zip(cuts[:-1], cuts[1:]):
            P.accumulate(a, b, gc[p0:p1], p0, n, wc, mode, backend="triton")
        assert xaikernels.last_backend("accumulate") == "triton"
        tol = dict(rtol=1e-5, atol=1e-5) if acc == torch.float32 else dict(rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a.double().cpu(), exp_a, **tol)
        if mode == 2:
            torch.testing.assert_close(b.double().cpu(), exp_b, **tol)


# ------------------------------------------------------------------------- methods on CUDA
from _models import SmallCNN  # noqa: E402


def _model_and_input(dtype=torch.float64):
    model = SmallCNN(classes=5).to(dtype).eval()
    x = torch.randn(2, 3, 12, 11, generator=torch.Generator().manual_seed(3), dtype=dtype)
    return model, x


def _both(fn, dtype=torch.float64, **kw):
    """Run ``fn`` on the CPU model and on a CUDA copy; the CUDA model must come back untouched."""
    model, x = _model_and_input(dtype)
    cpu = fn(model, x, **kw)
    mc = SmallCNN(classes=5).to(dtype).eval().to(CUDA)
    before = {k: v.clone() for k, v in mc.state_dict().items()}
    gpu = fn(mc, x.to(CUDA), **kw)
    assert all(torch.equal(before[k], v) for k, v in mc.state_dict().items())
    assert not mc.training and all(p.requires_grad for p in mc.parameters())
    return cpu, gpu


def _close(cpu, gpu, rtol=1e-7, atol=1e-9):
    assert gpu.device.type == "cuda"
    scale = cpu.abs().max().item() + 1e-30
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("name", ["saliency", "input_x_gradient", "guided_backprop", "deconvnet"])
def test_gradient_methods_cuda_equal_cpu(name):
    cpu, gpu = _both(lambda m, x: getattr(xaikernels, name)(m, x, target=1))
    _close(cpu, gpu)


def test_grad_cam_cuda_equals_cpu():
    for backend, served in [("auto", "cpp"), ("triton", "triton")]:
        cpu, gpu = _both(lambda m, x: xaikernels.grad_cam(m, x, target=[0, 3], layer="features.5",
                                                          backend=backend if x.is_cuda else "auto"))
        _close(cpu, gpu)
        assert xaikernels.last_backend("grad_cam") == served


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_cuda_equals_cpu(method):
    cpu, gpu = _both(lambda m, x: xaikernels.integrated_gradients(m, x, target=2, n_steps=24, method=method,
                                                                  batch_size=10))
    _close(cpu, gpu)
    # default chunks on CUDA: a quarter of the free device memory (one chunk for this model)
    cpu, gpu = _both(lambda m, x: xaikernels.integrated_gradients(m, x, target=2, n_steps=24, method=method))
    _close(cpu, gpu)
    assert xaikernels.last_backend("make_path") == "triton"
    assert xaikernels.last_backend("accumulate") == "triton"


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_smoothgrad_cuda_equals_cpu_with_the_same_seed(kind):
    """Counter-based Philox noise: the same seed gives the same noise on CPU (Numba) and GPU (Triton)."""
    cpu, gpu = _both(lambda m, x: xaikernels.smoothgrad(m, x, target=1, n_samples=12, seed=5, kind=kind,
                                                        batch_size=7), dtype=torch.float32)
    assert xaikernels.last_backend("make_noisy") == "triton"
    _close(cpu, gpu, rtol=2e-4, atol=2e-4)


def test_expected_gradients_cuda_equals_cpu():
    bg = torch.randn(5, 3, 12, 11, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    cpu, gpu = _both(lambda m, x: xaikernels.expected_gradients(m, x, target=0, background=bg.to(x.device),
                                                                n_samples=9, seed=2, batch_size=6))
    _close(cpu, gpu)


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_alpha2_beta1", "epsilon_gamma_box"])
@pytest.mark.parametrize("backend,served", [("auto", "reference"), ("triton", "triton")])
def test_lrp_cuda_equals_cpu(composite, backend, served):
    kw = dict(composite_kwargs=dict(low=-3.0, high=3.0)) if composite == "epsilon_gamma_box" else {}
    cpu, gpu = _both(lambda m, x: xaikernels.lrp(m, x, target=4, composite=composite,
                                                 backend=backend if x.is_cuda else "auto", **kw))
    assert xaikernels.last_backend("lrp_conv") == served
    _close(cpu, gpu, rtol=1e-7, atol=1e-8)


def test_kernel_shap_and_lime_image_cuda_equal_cpu():
    """The perturbation methods with a CUDA model: same masks (CPU sampler), same coefficients."""
    seg = np.repeat(np.repeat(np.arange(12).reshape(3, 4), 4, 0), 3, 1)[:12, :11]

    def shap(m, x):
        res = xaikernels.kernel_shap(m, x[:1], target=0, feature_mask=torch.as_tensor(seg), n_samples=200, seed=1)
        return torch.as_tensor(res.phi[0])

    def lime(m, x, stem="off"):
        res = xaikernels.lime_image(m, x[:1], target=0, segments=seg, n_samples=150, seed=1, stem=stem)
        return torch.as_tensor(res.coef[0])

    cpu, gpu = _both(shap, dtype=torch.float32)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4 * (cpu.abs().max().item() + 1e-6))
    cpu, gpu = _both(lime, dtype=torch.float32)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4 * (cpu.abs().max().item() + 1e-6))
    # coalition tables with a CUDA model: the same coefficients as the plain CPU evaluation
    _, gpu = _both(lambda m, x: lime(m, x, stem="auto"), dtype=torch.float32)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4 * (cpu.abs().max().item() + 1e-6))


def test_cam_and_guided_grad_cam_cuda_equal_cpu():
    cpu, gpu = _both(lambda m, x: xaikernels.cam(m, x, target=[1, 2], layer="features.6"))
    _close(cpu, gpu)
    cpu, gpu = _both(lambda m, x: xaikernels.guided_grad_cam(m, x, target=3, layer="features.5"))
    _close(cpu, gpu)


def test_captum_dropins_cuda_equal_cpu():
    """The drop-ins with a CUDA model and CUDA inputs give the CPU numbers (KernelShap / Lime
    draw their coalitions from torch's global generator, seeded alike for both runs)."""
    from xaikernels import captum as xc

    def ig(m, x):
        return xc.IntegratedGradients(m).attribute(x, target=1, n_steps=16)

    def nt(m, x):  # stdevs = 0: the tunnel's plumbing on CUDA (its noise is the device generator's)
        return xc.NoiseTunnel(xc.Saliency(m)).attribute(x, target=1, nt_type="smoothgrad", nt_samples=5,
                                                        stdevs=0.0)

    def lrp(m, x):
        return xc.LRP(m).attribute(x, target=2)

    def kshap(m, x):
        torch.manual_seed(4)
        mask = torch.arange(12 * 11).reshape(1, 1, 12, 11).div(11, rounding_mode="floor").to(x.device)
        return xc.KernelShap(m).attribute(x[:1], target=0, feature_mask=mask, n_samples=60)

    for fn in (ig, nt, lrp):
        cpu, gpu = _both(fn)
        _close(cpu, gpu)
    cpu, gpu = _both(kshap, dtype=torch.float32)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4 * (cpu.abs().max().item() + 1e-6))


def test_iba_on_cuda_runs_and_hands_the_model_back():
    """The bottleneck's noise comes from the device's generator, so CPU and GPU maps differ; the
    CUDA run gives a finite map of the input's size and leaves the model as it was."""
    model, x = _model_and_input(torch.float32)
    mc = model.to(CUDA)
    before = {k: v.clone() for k, v in mc.state_dict().items()}
    heat = xaikernels.iba(mc, x.to(CUDA), target=1, layer="features.4", steps=3, batch_size=4,
                          stats_data=torch.randn(16, 3, 12, 11, device=CUDA))
    assert heat.device.type == "cuda" and heat.shape == (2, 12, 11) and torch.isfinite(heat).all()
    assert xaikernels.last_backend("info_bottleneck") == "triton"
    assert all(torch.equal(before[k], v) for k, v in mc.state_dict().items())
