"""xaikernels.captum IntegratedGradients, NoiseTunnel and GradientShap, tested without Captum.

Oracles are written here, independently of the implementation: Integrated Gradients as a
plain float64 loop over quadrature nodes with autograd; NoiseTunnel and GradientShap by
drawing Captum's documented random numbers in the plainest way (``torch.normal`` with a
full-size stdev tensor for the noise, ``numpy.random.choice`` / ``uniform`` for baseline
indices and path points, all on the global generators, in Captum's order) and averaging
plain-autograd attributions of every sample.  Captum's conventions the oracle follows:
Riemann nodes are a float32 ``linspace``; step sizes are applied as fp32 numbers.
"""
import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from xaikernels.captum import (
    Attribution,
    GradientAttribution,
    GradientShap,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients"),
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU"),
]

METHODS = ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
HOOK_WARNING = "Setting backward hooks on ReLU activations"


# --------------------------------------------------------------------------- models
def _init(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.6)
    return module.eval()


class ConvNet(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(5, 6)
        _init(self, seed)

    def forward(self, x):
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).mean((2, 3)))


class TwoIn(nn.Module):
    """Inputs (N, 5) and (N, 2, 3); extra args: a float scale and a per-example shift."""

    def __init__(self, seed=1):
        super().__init__()
        self.la = nn.Linear(5, 4)
        self.lb = nn.Linear(6, 4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)
        _init(self, seed)

    def forward(self, a, b, scale=1.0, shift=None):
        h = self.relu(self.la(a) + self.lb(b.flatten(1))) * scale
        if shift is not None:
            h = h + shift
        return self.fc(torch.tanh(h))


class Quad(nn.Module):
    """F(x) = Σ (W x)²: one value per example; along a straight path ∇F·(x − b) is linear
    in α, so Gauss–Legendre and the midpoint rule integrate it exactly."""

    def __init__(self, seed=2):
        super().__init__()
        self.lin = nn.Linear(7, 3, bias=False)
        _init(self, seed)

    def forward(self, x):
        return (self.lin(x) ** 2).sum(1)


class Linear(nn.Module):
    def __init__(self, seed=3):
        super().__init__()
        self.lin = nn.Linear(6, 2)
        _init(self, seed)

    def forward(self, x):
        return self.lin(x)


# --------------------------------------------------------------------------- oracles
def _nodes(method, n):
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        a, w = 0.5 * (x + 1), 0.5 * w
    else:
        lo, hi = {"riemann_left": (0, 1 - 1 / n), "riemann_right": (1 / n, 1),
                  "riemann_middle": (1 / (2 * n), 1 - 1 / (2 * n)), "riemann_trapezoid": (0, 1)}[method]
        a = torch.linspace(lo, hi, n).double().numpy()
        w = np.full(n, 1.0 / n)
        if method == "riemann_trapezoid":
            w[0] /= 2
            w[-1] /= 2
    return a, w.astype(np.float32).astype(np.float64)


def _select(out, target):
    if target is None:
        return out
    if isinstance(target, int):
        return out[:, target]
    return out.gather(1, torch.as_tensor(target).view(-1, 1)).squeeze(1)


def _grads(model, rows, target, args=()):
    leaves = tuple(r.detach().clone().requires_grad_() for r in rows)
    return torch.autograd.grad(_select(model(*leaves, *args), target).sum(), leaves)


def _as64(v):
    return v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v


def ig_oracle(model, inputs, baselines, target, method, n, args=(), multiply=True):
    """float64 loop over nodes: (x − b) ⊙ Σ_j w_j ∇F(b + α_j (x − b))."""
    m64 = copy.deepcopy(model).double()
    xs = tuple(x.double() for x in inputs)
    bs = tuple(torch.broadcast_to(torch.as_tensor(b, dtype=torch.float64), x.shape) for b, x in zip(baselines, xs))
    args = tuple(_as64(a) for a in args)
    tot = [torch.zeros_like(x) for x in xs]
    for a, w in zip(*_nodes(method, n)):
        g = _grads(m64, tuple(b + a * (x - b) for x, b in zip(xs, bs)), target, args)
        tot = [t + w * gi for t, gi in zip(tot, g)]
    return tuple(t * (x - b) for t, x, b in zip(tot, xs, bs)) if multiply else tuple(tot)


def captum_noise(x, stdev, k):
    """Captum's draw for k samples of every example: normal(0, full stdev tensor)."""
    size = (x.shape[0] * k,) + tuple(x.shape[1:])
    return x.repeat_interleave(k, dim=0) + torch.normal(0, torch.tensor(stdev).repeat(size))


def nt_oracle(attr_fn, inputs, nt_type, nt_samples, batch, stdevs):
    """Per-sample attributions of Captum's noisy partitions, reduced in float64."""
    per = [[] for _ in inputs]
    sizes = [batch] * (nt_samples // batch) + ([nt_samples % batch] if nt_samples % batch else [])
    for k in sizes:
        noisy = tuple(captum_noise(x, sd, k) for x, sd in zip(inputs, stdevs))
        attrs = attr_fn(noisy, k)
        for lst, a in zip(per, attrs):
            lst.append(a.double().reshape(inputs[0].shape[0], k, *a.shape[1:]))
    out = []
    for lst in per:
        a = torch.cat(lst, dim=1)
        if nt_type == "smoothgrad":
            out.append(a.mean(1))
        elif nt_type == "smoothgrad_sq":
            out.append((a * a).mean(1))
        else:
            out.append(a.var(1, unbiased=False))
    return tuple(out)


def model_state(model):
    return (
        [(n, p.detach().clone(), p.requires_grad, p.grad) for n, p in model.named_parameters()],
        [(m.training, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
          getattr(m, "inplace", None)) for m in model.modules()],
    )


def assert_same_state(before, after):
    for (n, p, rg, g), (n2, p2, rg2, g2) in zip(before[0], after[0]):
        assert n == n2 and torch.equal(p, p2) and rg == rg2 and g is None and g2 is None
    assert before[1] == after[1]


@pytest.fixture(params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def dtype(request):
    return request.param


def close(got, ref, tol, dt, scale=1.0):
    rtol, atol = tol[dt]
    torch.testing.assert_close(got.double(), ref.double(), rtol=rtol, atol=atol * scale)


# --------------------------------------------------------------------------- classes
def test_class_relations_and_flags():
    m = ConvNet()
    ig, gs = IntegratedGradients(m), GradientShap(m, multiply_by_inputs=False)
    assert isinstance(ig, GradientAttribution) and isinstance(gs, GradientAttribution)
    assert ig.multiplies_by_inputs and not IntegratedGradients(m, False).multiplies_by_inputs
    assert ig.has_convergence_delta() and gs.has_convergence_delta() and not gs.multiplies_by_inputs
    nt = NoiseTunnel(ig)
    assert isinstance(nt, Attribution) and not isinstance(nt, GradientAttribution)
    assert nt.has_convergence_delta() and nt.multiplies_by_inputs and nt.forward_func is m
    nts = NoiseTunnel(Saliency(m))
    assert not nts.has_convergence_delta() and not nts.multiplies_by_inputs and nts.is_gradient_method
    for obj in (ig, nt, gs):
        with pytest.raises(NotImplementedError):
            obj.attribute_future()
    assert IntegratedGradients.get_name() == "Integrated Gradients"


# --------------------------------------------------------------------------- IG
@pytest.mark.parametrize("method", METHODS)
def test_ig_matches_float64_oracle(method, dtype, tol):
    model = ConvNet().to(dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 7, 9, generator=g, dtype=dtype)
    b = 0.1 * torch.randn(1, 3, 7, 9, generator=g, dtype=dtype)  # one row, broadcast
    target = [1, 4, 0]
    attr, delta = IntegratedGradients(model).attribute(x, b, target=target, n_steps=7, method=method,
                                                       return_convergence_delta=True)
    (ref,) = ig_oracle(model, (x,), (b,), target, method, 7)
    assert attr.dtype == dtype and attr.shape == x.shape
    close(attr, ref, tol, dtype)
    with torch.no_grad():
        f = model(x.double() if dtype == torch.float64 else x)
        fb = model(b.expand_as(x))
    expect = attr.reshape(3, -1).sum(1) - (_select(f, target) - _select(fb, target))
    close(delta, expect, tol, dtype)


def test_ig_tuple_inputs_baseline_forms_and_extra_args(dtype, tol):
    model = TwoIn().to(dtype)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 5, generator=g, dtype=dtype)
    b = torch.randn(4, 2, 3, generator=g, dtype=dtype)
    shift = torch.randn(4, 4, generator=g, dtype=dtype)
    tgt = torch.tensor([2, 0, 1, 2])
    for baselines in [None, (0.25, torch.randn(4, 2, 3, generator=g, dtype=dtype)),
                      (torch.zeros(1, 5, dtype=dtype), -1)]:
        out = IntegratedGradients(model).attribute((a, b), baselines, target=tgt,
                                                   additional_forward_args=(1.5, shift), n_steps=9)
        assert isinstance(out, tuple) and len(out) == 2
        bl = (0, 0) if baselines is None else baselines
        ref = ig_oracle(model, (a, b), bl, tgt, "gausslegendre", 9, args=(1.5, shift))
        for o, r in zip(out, ref):
            assert o.shape == r.shape and o.dtype == dtype
            close(o, r, tol, dtype)


def test_ig_batch1_scalar_output_is_exact_for_quadratic_model(tol):
    model = Quad()
    x = torch.randn(1, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for method, n in [("gausslegendre", 1), ("gausslegendre", 4), ("riemann_middle", 3)]:
        attr, delta = IntegratedGradients(model.double()).attribute(
            x, 0.5, n_steps=n, method=method, return_convergence_delta=True)
        # exact up to Captum's fp32 step sizes (and float32 Riemann nodes): ~1e-7 relative
        gap = (model(x) - model(torch.full_like(x, 0.5))).abs().item()
        assert delta.shape == (1,) and abs(delta.item()) < 1e-6 * gap
        (ref,) = ig_oracle(model, (x,), (0.5,), None, method, n)
        close(attr, ref, tol, torch.float64)


def test_ig_without_multiplying_by_inputs(tol):
    model = ConvNet()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    out = IntegratedGradients(model, multiply_by_inputs=False).attribute(x, target=2, n_steps=5)
    (ref,) = ig_oracle(model, (x,), (0,), 2, "gausslegendre", 5, multiply=False)
    close(out, ref, tol, torch.float32)


def test_ig_chunking_does_not_change_the_result():
    model = ConvNet()
    x = torch.randn(5, 3, 6, 7, generator=torch.Generator().manual_seed(4))
    ig = IntegratedGradients(model)
    ref = ig.attribute(x, target=3, n_steps=11, method="riemann_trapezoid")
    for ibs in [1, 7, 10, 10**6]:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            out = ig.attribute(x, target=3, n_steps=11, method="riemann_trapezoid", internal_batch_size=ibs)
        msgs = [str(w.message) for w in rec]
        assert msgs == (["Internal batch size cannot be less than the number of input examples. "
                         "Defaulting to internal batch size of 5 equal to the number of examples."]
                        if ibs < 5 else [])
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-7)
    ig.memory_budget = 1  # one path row per model call
    torch.testing.assert_close(ig.attribute(x, target=3, n_steps=11, method="riemann_trapezoid"),
                               ref, rtol=1e-5, atol=1e-7)


def test_ig_streams_rows_instead_of_the_full_expansion():
    """The model never sees more rows than the budgeted chunk (Captum: n_steps × N)."""
    seen = []

    class Spy(ConvNet):
        def forward(self, x):
            seen.append(x.shape[0])
            return super().forward(x)

    x = torch.randn(4, 3, 6, 6)
    ig = IntegratedGradients(Spy())
    # 100 kB caps this model at 25 rows per call from the counted saved bytes (deterministic),
    # so the timing-tuned chunk cannot reach 50 however the machine's load moves the timings.
    ig.memory_budget = 100_000
    ig.attribute(x, target=1, n_steps=50)
    assert sum(seen) == 200 and max(seen) < 50
    seen.clear()
    ig.attribute(x, target=1, n_steps=50, internal_batch_size=9)  # Captum's meaning: 2 steps
    assert seen == [8] * 25


def test_ig_out_of_memory_chunks_are_retried_smaller():
    class Tight(ConvNet):
        def forward(self, x):
            if x.shape[0] > 5:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().forward(x)

    model = Tight()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(12))
    ref = IntegratedGradients(ConvNet()).attribute(x, target=2, n_steps=20, internal_batch_size=2)
    for ibs in [None, 12]:  # budgeted chunks, and Captum-sized chunks of 12 rows
        ig = IntegratedGradients(model)
        ig.memory_budget = 10**12
        torch.testing.assert_close(ig.attribute(x, target=2, n_steps=20, internal_batch_size=ibs), ref,
                                   rtol=1e-5, atol=1e-7)


def test_ig_target_forms_and_rows_of_extra_args():
    model = TwoIn()
    g = torch.Generator().manual_seed(5)
    a, b, shift = torch.randn(3, 5, generator=g), torch.randn(3, 2, 3, generator=g), torch.randn(3, 4, generator=g)
    ig = IntegratedGradients(model)
    ref = ig.attribute((a, b), target=[1, 1, 1], additional_forward_args=(2.0, shift), n_steps=6)
    for t in (1, torch.tensor(1), torch.tensor([1, 1, 1])):
        out = ig.attribute((a, b), target=t, additional_forward_args=(2.0, shift), n_steps=6,
                           internal_batch_size=4)
        for o, r in zip(out, ref):
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-7)


def test_ig_result_keeps_graph_to_inputs_like_captum():
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = IntegratedGradients(ConvNet()).attribute(x, target=0, n_steps=3)
    assert out.requires_grad and x.grad is None
    assert not IntegratedGradients(ConvNet()).attribute(x.detach(), target=0, n_steps=3).requires_grad


@pytest.mark.parametrize("kwargs, message", [
    ({"n_steps": -1}, "The number of steps must be a positive integer. Given: -1"),
    ({"n_steps": 0}, "The number of steps has to be larger than zero"),
    ({"n_steps": 1, "method": "riemann_left"}, "The number of steps has to be larger than one"),
    ({"method": "simpson"}, "Approximation method must be one for the following"),
    ({"baselines": torch.zeros(2, 3, 5, 4)}, "Baseline can be provided as a tensor for just one input"),
    ({"baselines": (0, 0)}, "Input and baseline must have the same dimensions"),
    ({"target": [0, 1, 2]}, "Target list length does not match output!"),
])
def test_ig_errors_are_captums(kwargs, message):
    model = ConvNet()
    before = model_state(model)
    kw = dict({"target": 1, "n_steps": 4}, **kwargs)
    with pytest.raises(AssertionError, match=message.replace("(", r"\(").replace(".", r"\.")):
        IntegratedGradients(model).attribute(torch.randn(2, 3, 5, 5), **kw)
    assert_same_state(before, model_state(model))


# --------------------------------------------------------------------------- NoiseTunnel
@pytest.mark.parametrize("base", ["saliency", "input_x_gradient", "integrated_gradients"])
@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("batch", [None, 2])
def test_noise_tunnel_matches_oracle_with_the_same_seed(base, nt_type, batch, tol):
    model = ConvNet()
    m64 = copy.deepcopy(model).double()
    x = torch.randn(3, 3, 6, 7, generator=torch.Generator().manual_seed(6))
    target = [1, 3, 0]

    def attr_fn(rows, k):
        t = sum(([v] * k for v in target), [])
        if base == "integrated_gradients":
            return ig_oracle(m64, rows, (0,), t, "gausslegendre", 4)
        (g,) = _grads(m64, tuple(r.double() for r in rows), t)
        return (g.abs(),) if base == "saliency" else (rows[0].double() * g,)

    method = {"saliency": Saliency, "input_x_gradient": InputXGradient,
              "integrated_gradients": IntegratedGradients}[base](model)
    kw = {"n_steps": 4} if base == "integrated_gradients" else {}
    torch.manual_seed(10)
    got = NoiseTunnel(method).attribute(x, nt_type=nt_type, nt_samples=5, nt_samples_batch_size=batch,
                                        stdevs=0.3, target=target, **kw)
    after = torch.rand(3)
    torch.manual_seed(10)
    (ref,) = nt_oracle(attr_fn, (x,), nt_type, 5, batch or 5, (0.3,))
    assert torch.equal(after, torch.rand(3))  # the same draws were consumed
    assert got.shape == x.shape and got.dtype == x.dtype
    close(got, ref, tol, torch.float32, scale=ref.abs().max().item())
    if nt_type == "vargrad":
        assert (got >= 0).all()


def test_noise_tunnel_tuple_inputs_stdev_tuple_remainder_partition(tol):
    model = TwoIn()
    m64 = copy.deepcopy(model).double()
    g = torch.Generator().manual_seed(7)
    a, b, shift = torch.randn(2, 5, generator=g), torch.randn(2, 2, 3, generator=g), torch.randn(2, 4, generator=g)

    def attr_fn(rows, k):
        sh = shift.double().repeat_interleave(k, 0)
        gs = _grads(m64, tuple(r.double() for r in rows), [2] * (2 * k), (0.5, sh))
        return tuple(r.double() * gi for r, gi in zip(rows, gs))

    for batch in [None, 3]:
        torch.manual_seed(11)
        got = NoiseTunnel(InputXGradient(model)).attribute(
            (a, b), nt_type="smoothgrad", nt_samples=7, nt_samples_batch_size=batch, stdevs=(0.2, 0.05),
            target=2, additional_forward_args=(0.5, shift))
        torch.manual_seed(11)
        ref = nt_oracle(attr_fn, (a, b), "smoothgrad", 7, batch or 7, (0.2, 0.05))
        assert isinstance(got, tuple) and len(got) == 2
        for o, r in zip(got, ref):
            close(o, r, tol, torch.float32)


def test_vargrad_is_numerically_stable():
    """Large mean, small spread: Welford keeps the variance, E[a²] − E[a]² in fp32 does not."""
    model = Linear()
    x = torch.full((2, 6), 1000.0)
    torch.manual_seed(0)
    got = NoiseTunnel(InputXGradient(model)).attribute(x, nt_type="vargrad", nt_samples=16, stdevs=0.01,
                                                       target=1)
    torch.manual_seed(0)
    a = (captum_noise(x, 0.01, 16) * model.lin.weight[1].detach()).reshape(2, 16, 6)  # fp32, as computed
    ref = a.double().var(1, unbiased=False)
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=0)
    naive = (a * a).mean(1) - a.mean(1) ** 2  # fp32 cancellation: errors ~ eps · E[a²] ≫ var
    assert (naive.double() - ref).abs().max() > 100 * (got.double() - ref).abs().max()


def test_noise_tunnel_streamed_equals_captum_partitions():
    """With nt_samples_batch_size None, rows are re-chunked; the numbers are those of
    Captum's single partition (nt_samples_batch_size = nt_samples), deltas in its order."""
    model = ConvNet()
    x = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(8))
    nt = NoiseTunnel(IntegratedGradients(model))
    nt.memory_budget = 1
    outs = []
    for batch in [None, 6]:
        torch.manual_seed(3)
        np.random.seed(3)
        outs.append(nt.attribute(x, nt_type="smoothgrad_sq", nt_samples=6, nt_samples_batch_size=batch,
                                 stdevs=0.1, target=[0, 5, 2], n_steps=3, baselines=torch.randn(4, 3, 6, 6),
                                 draw_baseline_from_distrib=True, return_convergence_delta=True))
    (a1, d1), (a2, d2) = outs
    assert d1.shape == (18,)
    torch.testing.assert_close(a1, a2, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(d1, d2, rtol=1e-5, atol=1e-6)


def test_noise_tunnel_warns_like_captum_and_hands_model_back():
    model = ConvNet()
    before = model_state(model)
    x = torch.randn(2, 3, 6, 6)
    for batch, count in [(None, 1), (2, 3)]:  # one call, or one call per partition (2 + 2 + 1)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            NoiseTunnel(GuidedBackprop(model)).attribute(x, nt_samples=5, nt_samples_batch_size=batch,
                                                         target=1)
        assert sum(HOOK_WARNING in str(w.message) for w in rec) == count
        assert_same_state(before, model_state(model))
    with pytest.raises(IndexError):
        NoiseTunnel(GuidedBackprop(model)).attribute(x, nt_samples=3, target=99)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("kwargs, err", [
    ({"nt_type": "median"}, AssertionError),
    ({"stdevs": 1}, AssertionError),
    ({"stdevs": (0.1, 0.2)}, AssertionError),
    ({"stdevs": -0.5}, RuntimeError),
    ({"nt_samples": 0}, ZeroDivisionError),
])
def test_noise_tunnel_errors_are_captums(kwargs, err):
    with pytest.raises(err):
        NoiseTunnel(Saliency(ConvNet())).attribute(torch.randn(2, 3, 5, 5), target=0, **kwargs)


# --------------------------------------------------------------------------- GradientShap
def gshap_oracle(model, inputs, baselines, k, stdevs, target, args=(), multiply=True):
    """Captum's draws, in order: baseline indices (numpy, per baseline tensor), noise
    (torch, per input), path points (numpy, first input's dtype); then float64 autograd."""
    m64 = copy.deepcopy(model).double()
    n = inputs[0].shape[0]
    bases = tuple(b[np.random.choice(b.shape[0], k * n).tolist()] if isinstance(b, torch.Tensor) else b
                  for b in baselines)
    noisy = tuple(captum_noise(x, sd, k) for x, sd in zip(inputs, stdevs))
    alpha = torch.tensor(np.random.uniform(0.0, 1.0, n * k), dtype=inputs[0].dtype)
    scaled = tuple(alpha.view(-1, *([1] * (x.dim() - 1))) * x + (1.0 - alpha.view(-1, *([1] * (x.dim() - 1)))) * bb
                   for x, bb in zip(noisy, bases))
    t = target if not isinstance(target, list) else sum(([v] * k for v in target), [])
    args = tuple(a.repeat_interleave(k, 0) if isinstance(a, torch.Tensor) else a for a in args)
    g = _grads(m64, tuple(s.double() for s in scaled), t, tuple(_as64(a) for a in args))
    phi = tuple(((x.double() - _as64(bb)) * gi) if multiply else gi for x, bb, gi in zip(noisy, bases, g))
    with torch.no_grad():
        fx = _select(m64(*(x.double() for x in noisy), *(_as64(a) for a in args)), t)
        fb = _select(m64(*(torch.broadcast_to(torch.as_tensor(_as64(bb), dtype=torch.float64), x.shape)
                           for bb, x in zip(bases, noisy)), *(_as64(a) for a in args)), t)
    delta = sum(p.reshape(n * k, -1).sum(1) for p in phi) - (fx - fb)
    return tuple(p.reshape(n, k, *p.shape[1:]).mean(1) for p in phi), delta


@pytest.mark.parametrize("stdevs", [0.0, 0.2])
@pytest.mark.parametrize("multiply", [True, False])
def test_gradient_shap_matches_oracle_with_the_same_seeds(stdevs, multiply, dtype, tol):
    model = ConvNet().to(dtype)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 3, 6, 5, generator=g, dtype=dtype)
    bl = torch.randn(4, 3, 6, 5, generator=g, dtype=dtype)
    torch.manual_seed(1)
    np.random.seed(1)
    got, delta = GradientShap(model, multiply).attribute(x, bl, n_samples=6, stdevs=stdevs, target=[2, 0, 5],
                                                         return_convergence_delta=True)
    after = (torch.rand(2), np.random.rand(2))
    torch.manual_seed(1)
    np.random.seed(1)
    (ref,), ref_delta = gshap_oracle(model, (x,), (bl,), 6, (stdevs,), [2, 0, 5], multiply=multiply)
    assert torch.equal(after[0], torch.rand(2)) and np.array_equal(after[1], np.random.rand(2))
    assert got.shape == x.shape and got.dtype == dtype and delta.shape == (18,)
    close(got, ref, tol, dtype)
    if multiply:
        close(delta, ref_delta, tol, dtype, scale=10)


def test_gradient_shap_tuple_inputs_scalar_baseline_callable_and_args(tol):
    model = TwoIn()
    g = torch.Generator().manual_seed(10)
    a, b, shift = torch.randn(3, 5, generator=g), torch.randn(3, 2, 3, generator=g), torch.randn(3, 4, generator=g)
    bl_a = torch.randn(5, 5, generator=g)
    for baselines in [(bl_a, 0.5), lambda: (bl_a, 0.5), lambda inp: (bl_a + 0 * inp[0][:1], 0.5)]:
        torch.manual_seed(2)
        np.random.seed(2)
        got = GradientShap(model).attribute((a, b), baselines, n_samples=4, stdevs=(0.1, 0.0), target=[0, 2, 1],
                                            additional_forward_args=(1.5, shift))
        torch.manual_seed(2)
        np.random.seed(2)
        ref, _ = gshap_oracle(model, (a, b), (bl_a, 0.5), 4, (0.1, 0.0), [0, 2, 1], args=(1.5, shift))
        for o, r in zip(got, ref):
            close(o, r, tol, torch.float32)


def test_gradient_shap_completeness_on_linear_model_and_chunking():
    model = Linear()
    x = torch.randn(4, 6)
    bl = torch.randn(7, 6)
    gs = GradientShap(model)
    torch.manual_seed(4)
    np.random.seed(4)
    attr, delta = gs.attribute(x, bl, n_samples=9, target=1, return_convergence_delta=True)
    assert delta.abs().max() < 1e-5
    gs.memory_budget = 1
    torch.manual_seed(4)
    np.random.seed(4)
    torch.testing.assert_close(gs.attribute(x, bl, n_samples=9, target=1), attr, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("baselines, kwargs, err", [
    (lambda: np.zeros((3, 6)), {}, AssertionError),
    (torch.zeros(3, 5), {}, AssertionError),
    (torch.zeros(3, 6), {"n_samples": 0}, ZeroDivisionError),
    (torch.zeros(3, 6), {"stdevs": 1}, AssertionError),
])
def test_gradient_shap_errors_are_captums(baselines, kwargs, err):
    model = Linear()
    before = model_state(model)
    with pytest.raises(err):
        GradientShap(model).attribute(torch.randn(2, 6), baselines, target=0, **kwargs)
    assert_same_state(before, model_state(model))
