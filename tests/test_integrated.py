"""Integrated Gradients, SmoothGrad family and expected gradients vs explicit oracles."""
import pytest
import torch
from torch import nn

import xaikernels as xk
from xaikernels.methods.integrated import (expected_gradients, integrated_gradients, quadrature,
                                           smoothgrad)

from _models import MLP, SmallCNN
from conftest import TRITON_CPU


class Recorder(nn.Module):
    """Wraps a model and records the batch size of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.sizes = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.inner(x)


def _grad(model, x, t):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)[0]


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                                    "riemann_trapezoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ig_vs_explicit_sum(method, dtype):
    model = SmallCNN().to(dtype).eval()
    x = torch.randn(3, 3, 7, 9, dtype=dtype)
    base = torch.randn(1, 3, 7, 9, dtype=dtype) * 0.1
    t = torch.tensor([0, 3, 1])
    alphas, w = quadrature(method, 13)
    exp = sum(float(wj) * _grad(model, base + float(aj) * (x - base), t) for aj, wj in zip(alphas, w)) * (x - base)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for bs in (None, 1, 5, 39, 100):
        got = integrated_gradients(model, x, t, baseline=base, n_steps=13, method=method, batch_size=bs)
        torch.testing.assert_close(got, exp, **tol)


def test_quadrature_weights_integrate_polynomials():
    for method in ["gausslegendre", "riemann_trapezoid", "riemann_middle"]:
        a, w = quadrature(method, 40)
        # Captum's trapezoid keeps weights 1/n (halved ends) on n nodes spaced 1/(n-1): its
        # weights sum to (n-1)/n.  We reproduce Captum, quirk included.
        total = 39 / 40 if method == "riemann_trapezoid" else 1.0
        assert abs(w.sum().item() - total) < 1e-12
        if method != "riemann_trapezoid":
            # ∫_0^1 3α² = 1; Gauss–Legendre is exact, the midpoint rule O(1/n²)
            err = abs((w * 3 * a**2).sum().item() - 1)
            assert err < (1e-12 if method == "gausslegendre" else 1e-3)
    with pytest.raises(ValueError):
        quadrature("simpson", 10)
    with pytest.raises(ValueError):
        quadrature("riemann_left", 1)


def test_ig_completeness_converges_and_delta_matches_definition():
    model = MLP().double().eval()
    x = torch.randn(4, 13, dtype=torch.float64)
    attr, delta = integrated_gradients(model, x, 1, n_steps=400, return_delta=True)
    out = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(delta, attr.sum(1) - out)
    assert delta.abs().max() < 1e-3 * out.abs().max()


def test_ig_baselines():
    model = SmallCNN().eval()
    x = torch.rand(2, 3, 16, 16)
    a0 = integrated_gradients(model, x, 0, n_steps=8)
    torch.testing.assert_close(a0, integrated_gradients(model, x, 0, n_steps=8, baseline=0.0))
    torch.testing.assert_close(integrated_gradients(model, x, 0, n_steps=8, baseline=0.5),
                               integrated_gradients(model, x, 0, n_steps=8, baseline=torch.full((3, 1, 1), 0.5)))
    blur = integrated_gradients(model, x, 0, n_steps=8, baseline="blur", return_delta=True)
    assert blur[0].shape == x.shape and torch.isfinite(blur[0]).all()
    # Attributions vanish where input equals the baseline.
    assert torch.equal(integrated_gradients(model, x, 0, n_steps=4, baseline=x), torch.zeros_like(x))


def test_chunks_respect_batch_size_and_budget():
    rec = Recorder(SmallCNN()).eval()
    x = torch.randn(3, 3, 8, 8)
    integrated_gradients(rec, x, 0, n_steps=10, batch_size=7)
    assert max(rec.sizes) <= 7 and sum(s for s in rec.sizes if s != 1) >= 30
    rec.sizes.clear()
    integrated_gradients(rec, x, 0, n_steps=50, memory_budget=200_000)  # tiny budget → small chunks
    assert max(rec.sizes[1:]) < 50


class FlakyOOM(nn.Module):
    """Raises the CPU allocator's OOM error for batches larger than ``limit``."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return self.inner(x)


def test_oom_chunk_is_retried_smaller_not_lost():
    inner = SmallCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    exp = integrated_gradients(inner, x, 1, n_steps=20, batch_size=40)
    got = integrated_gradients(FlakyOOM(inner, 6).eval(), x, 1, n_steps=20, batch_size=40)
    torch.testing.assert_close(got, exp)
    exp_sg = smoothgrad(inner, x, 1, n_samples=9, seed=4, batch_size=18)
    torch.testing.assert_close(smoothgrad(FlakyOOM(inner, 5).eval(), x, 1, n_samples=9, seed=4, batch_size=18), exp_sg)
    with pytest.raises(RuntimeError, match="Boom"):
        class Broken(nn.Module):
            def forward(self, x):
                raise RuntimeError("Boom")
        integrated_gradients(Broken().eval(), x, 1, n_steps=3)


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("base", ["saliency", "input_x_gradient", "guided_backprop", "deconvnet"])
def test_smoothgrad_kinds_vs_loop(kind, base):
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 6, 6)
    noise = torch.randn(6, *x.shape)
    fn = {"saliency": lambda m, v: xk.saliency(m, v, 2, abs=False),
          "input_x_gradient": lambda m, v: xk.input_x_gradient(m, v, 2),
          "guided_backprop": lambda m, v: xk.guided_backprop(m, v, 2),
          "deconvnet": lambda m, v: xk.deconvnet(m, v, 2)}[base]
    atts = torch.stack([fn(model, x + 0.3 * noise[j]) for j in range(6)])
    exp = {"smoothgrad": atts.mean(0), "smoothgrad_sq": (atts**2).mean(0),
           "vargrad": atts.var(0, unbiased=False)}[kind]
    got = smoothgrad(model, x, 2, n_samples=6, stdev=0.3, noise_scale="absolute", kind=kind, base=base,
                     noise=noise, batch_size=5)
    torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-6)


def test_smoothgrad_ig_base_and_relative_scale():
    model = MLP().eval()
    x = torch.randn(3, 13)
    noise = torch.randn(4, *x.shape)
    rng = (x.amax(1) - x.amin(1)).unsqueeze(1)
    exp = torch.stack([integrated_gradients(model, x + 0.1 * rng * noise[j], 0, n_steps=8) for j in range(4)]).mean(0)
    got = smoothgrad(model, x, 0, n_samples=4, stdev=0.1, base="integrated_gradients",
                     base_kwargs={"n_steps": 8}, noise=noise)
    torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-6)


def test_smoothgrad_reproducible_across_chunks_and_backends():
    model = SmallCNN().eval()
    x = torch.randn(3, 3, 8, 8)
    ref = smoothgrad(model, x, 1, n_samples=7, seed=11, kind="vargrad", batch_size=21, backend="reference")
    cases = [(1, "numba"), (4, "numba"), (8, "auto")] + ([(21, "triton")] if TRITON_CPU else [])
    for bs, be in cases:
        torch.testing.assert_close(smoothgrad(model, x, 1, n_samples=7, seed=11, kind="vargrad", batch_size=bs,
                                              backend=be), ref, rtol=2e-5, atol=1e-6)
    assert not torch.allclose(ref, smoothgrad(model, x, 1, n_samples=7, seed=12, kind="vargrad"))
    torch.manual_seed(0)
    a = smoothgrad(model, x, 1, n_samples=3)
    torch.manual_seed(0)
    torch.testing.assert_close(a, smoothgrad(model, x, 1, n_samples=3))


def test_smoothgrad_converges_to_mean_gradient_statistically():
    """On a linear model the gradient is constant: smoothgrad = w, vargrad = 0; for a quadratic
    f = ½ Σ x², smoothgrad → x and vargrad → σ² (checked within k·σ of the estimator)."""
    class Quad(nn.Module):
        def forward(self, x):
            return 0.5 * (x**2).sum(1, keepdim=True)

    x = torch.randn(2, 500)
    n, s = 200, 0.5
    mean = smoothgrad(Quad().eval(), x, 0, n_samples=n, stdev=s, noise_scale="absolute", seed=1)
    # mean of n N(x, s²) draws: error per element ~ s/sqrt(n); check the RMS over elements.
    rms = ((mean - x) ** 2).mean().sqrt().item()
    assert abs(rms - s / n**0.5) < 0.2 * s / n**0.5
    var = smoothgrad(Quad().eval(), x, 0, n_samples=n, stdev=s, noise_scale="absolute", seed=1, kind="vargrad")
    assert abs(var.mean().item() - s**2 * (n - 1) / n) < 5 * s**2 * (2 / (n * 1000)) ** 0.5


def test_expected_gradients_matches_loop_and_completeness_in_expectation():
    model = MLP().double().eval()
    x = torch.randn(2, 13, dtype=torch.float64)
    bg = torch.randn(6, 13, dtype=torch.float64)
    idx = torch.randint(0, 6, (5, 2))
    al = torch.rand(5, 2, dtype=torch.float64)
    got = expected_gradients(model, x, 3, background=bg, n_samples=5, baseline_index=idx, alphas=al)
    exp = torch.zeros_like(x)
    for j in range(5):
        b = bg[idx[j]]
        exp += _grad(model, b + al[j].unsqueeze(1) * (x - b), torch.tensor([3, 3])) * (x - b) / 5
    torch.testing.assert_close(got, exp)
    # reproducible with a seed, any chunking
    a = expected_gradients(model, x, 3, background=bg, n_samples=9, seed=2, batch_size=4)
    torch.testing.assert_close(a, expected_gradients(model, x, 3, background=bg, n_samples=9, seed=2))


def test_bad_input():
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="n_steps"):
        integrated_gradients(model, x, 0, n_steps=0)
    with pytest.raises(ValueError, match="does not broadcast"):
        integrated_gradients(model, x, 0, baseline=torch.zeros(5, 8, 8))
    bad = torch.zeros_like(x)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        integrated_gradients(model, x, 0, baseline=bad)
    with pytest.raises(ValueError, match="non-finite"):
        integrated_gradients(model, bad, 0)
    with pytest.raises(ValueError, match="n_samples"):
        smoothgrad(model, x, 0, n_samples=0)
    with pytest.raises(ValueError, match="stdev"):
        smoothgrad(model, x, 0, stdev=-0.1)
    with pytest.raises(ValueError, match="kind"):
        smoothgrad(model, x, 0, kind="smoothgrad3")
    with pytest.raises(ValueError, match="base"):
        smoothgrad(model, x, 0, base="lrp")
    with pytest.raises(ValueError, match="noise must have shape"):
        smoothgrad(model, x, 0, n_samples=2, noise=torch.randn(3, *x.shape))
    with pytest.raises(ValueError, match="batch_size"):
        integrated_gradients(model, x, 0, batch_size=0)
    with pytest.raises(ValueError, match="background"):
        expected_gradients(model, x, 0, background=torch.randn(4, 3, 8, 7))
    with pytest.raises(IndexError):
        integrated_gradients(model, x, 9)


def test_model_unchanged():
    from test_model_guard import assert_same, prepared_model, snapshot

    m, _ = prepared_model()
    before = snapshot(m)
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning):
        integrated_gradients(m, x, 0, n_steps=3)
    with pytest.warns(UserWarning):
        smoothgrad(m, x, 0, n_samples=2, base="guided_backprop")
    assert_same(before, snapshot(m))


def test_lobatto_rule_is_exact_on_polynomials():
    from xaikernels.methods.integrated import _lobatto

    for n in (3, 4, 5, 7):
        x, w = _lobatto(n)
        assert x[0] == -1 and x[-1] == 1
        for deg in range(2 * n - 2):  # exact up to degree 2n - 3
            exact = 0.0 if deg % 2 else 2.0 / (deg + 1)
            assert abs((w * x**deg).sum() - exact) < 1e-12, (n, deg)


def test_ig_auto_meets_its_tolerance_and_counts_evaluations():
    model = SmallCNN().eval()
    x = torch.randn(3, 3, 8, 8)
    attr, delta, grads, fwd = integrated_gradients(model, x, 1, n_steps="auto", tol=1e-3, atol=0,
                                                   return_delta=True, return_steps=True)
    with torch.no_grad():
        fd = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    # The stopping rule is on the exact completeness delta (fp32 rounding aside).
    assert ((delta.abs() <= 1e-3 * fd.abs() + 1e-5) | (grads >= 512 - 5)).all(), (delta, fd, grads)
    assert (grads >= 5).all() and (fwd == 0).all()
    # Converges to the fixed-step answer as the tolerance tightens.
    ref = integrated_gradients(model, x, 1, n_steps=400)
    tight = integrated_gradients(model, x, 1, n_steps="auto", tol=1e-5, atol=0, max_steps=2000)
    assert (tight - ref).norm() < 0.1 * ref.norm()
    # Chunking does not change the adaptive result.
    torch.testing.assert_close(integrated_gradients(model, x, 1, n_steps="auto", tol=1e-3, atol=0, batch_size=3),
                               attr)
    with pytest.raises(ValueError, match="auto_orders"):
        integrated_gradients(model, x, 1, n_steps="auto", auto_orders=(2, 4))
    with pytest.raises(ValueError, match="n_steps"):
        integrated_gradients(model, x, 1, n_steps="fast")


@pytest.mark.parametrize("fn,kw", [
    ("integrated_gradients", {}), ("integrated_gradients", {"n_steps": "auto"}),
    ("integrated_gradients", {"batch_size": 3}), ("smoothgrad", {}),
    ("smoothgrad", {"base": "integrated_gradients"}), ("expected_gradients", {"background": "bg"}),
])
def test_target_above_the_class_count_is_a_clear_error(fn, kw):
    # The upper range of an explicit target is checked on the first model output (no extra
    # forward pass only to count classes); it must still be a clear IndexError, before any
    # result is produced.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()
    x = torch.randn(2, 3, 2, 2)
    kw = {k: (torch.randn(4, 3, 2, 2) if v == "bg" else v) for k, v in kw.items()}
    with pytest.raises(IndexError, match="target out of range: model has 5 outputs"):
        getattr(xk, fn)(model, x, 7, **kw)
    with pytest.raises(IndexError, match="target out of range"):
        getattr(xk, fn)(model, x, [0, 5], **kw)
    assert getattr(xk, fn)(model, x, [0, 4], **kw).shape == x.shape
