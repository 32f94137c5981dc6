"""Parity of xaikernels.captum IntegratedGradients, NoiseTunnel and GradientShap with Captum 0.9.0.

Each case runs Captum and the drop-in on fresh copies of the same model and inputs, from the
same ``torch.manual_seed`` / ``numpy.random.seed``, and compares the return structure
(tensor or tuple, attributions then deltas), shapes, dtypes, values, the generators' state
afterwards (the same random draws were consumed), the warnings emitted and, for bad
arguments, the exception type and message.

Tolerances are the shared table (fp32: rtol 1e-5, atol 1e-6), with two sums whose order
legitimately differs: Captum adds all path points / samples with one ``torch.sum`` while the
drop-ins fold them chunk by chunk (errors ≲ n · eps · max|term|, inside the table for the
models here), and ``vargrad``, where Captum's ``E[a²] − E[a]²`` in fp32 loses up to a few
``eps · E[a²]`` to cancellation (the drop-in uses Welford's update in fp64) — that case's
atol is ``8 · eps32 · max E[a²]``.
"""
import inspect
import warnings

import numpy as np
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.peer
ca = pytest.importorskip("captum.attr")

import xaikernels.captum as xc  # noqa: E402

METHODS = ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
EPS32 = float(torch.finfo(torch.float32).eps)


# --------------------------------------------------------------------------- models
from test_captum_parity import _init  # noqa: E402  (seeded N(0, 0.25) weights, eval mode)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(5, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.fc = nn.Linear(6, 7)

    def forward(self, x):
        return self.fc(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x))))).mean((2, 3)))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(10, 8)
        self.relu = nn.ReLU()
        self.l2 = nn.Linear(8, 4)

    def forward(self, x):
        return self.l2(self.relu(self.l1(x)))


class TwoIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.ca = nn.Conv2d(2, 3, 3)
        self.cb = nn.Conv2d(2, 3, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3, 4)

    def forward(self, a, b, scale=1.0, shift=None):
        h = self.relu(self.ca(a) + self.cb(b)) * scale
        if shift is not None:
            h = h + shift
        return self.fc(h.mean((2, 3)))


MODELS = {"cnn": CNN, "mlp": MLP, "two": TwoIn}


def _inputs(name, dtype):
    g = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return {"img3": lambda: r(3, 3, 9, 11), "img1": lambda: r(1, 3, 7, 8), "vec": lambda: r(4, 10),
            "ab": lambda: (r(3, 2, 5, 7), r(3, 2, 5, 7))}[name]()


# --------------------------------------------------------------------------- runner
def _run(lib, model_name, inputs_name, dtype, call, seed=0):
    """Fresh model and inputs; ``call(lib, model, inputs)`` under fixed seeds."""
    model = _init(MODELS[model_name](), seed=11).to(dtype)
    inputs = _inputs(inputs_name, dtype)
    torch.manual_seed(seed)
    np.random.seed(seed)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            out, exc = call(lib, model, inputs), None
        except Exception as e:  # compared below
            out, exc = None, e
    rng = (torch.rand(4), np.random.rand(4))
    return out, exc, [(w.category, str(w.message)) for w in rec], rng


def _flat(out):
    """attributions (tensor or tuple) [+ delta] -> list of (path, tensor), with structure."""
    if isinstance(out, torch.Tensor):
        return [("", out)]
    return [(f"{i}{p}", t) for i, o in enumerate(out) for p, t in _flat(o)]


def _compare(model_name, inputs_name, dtype, tol, call, var_scale=None, seed=0):
    ref, ref_exc, ref_warn, ref_rng = _run(ca, model_name, inputs_name, dtype, call, seed)
    got, exc, warn, rng = _run(xc, model_name, inputs_name, dtype, call, seed)
    assert ref_exc is None and exc is None, (ref_exc, exc)
    assert warn == ref_warn
    assert torch.equal(rng[0], ref_rng[0]) and np.array_equal(rng[1], ref_rng[1])
    fr, fg = _flat(ref), _flat(got)
    assert [p for p, _ in fg] == [p for p, _ in fr]
    assert type(got) is type(ref)
    rtol, atol = tol[dtype]
    if var_scale is not None:
        atol = max(atol, var_scale)
    for (_, r), (_, g) in zip(fr, fg):
        assert g.shape == r.shape and g.dtype == r.dtype
        torch.testing.assert_close(g.detach(), r.detach(), rtol=rtol, atol=atol)
    return ref


# --------------------------------------------------------------------------- IG
@pytest.mark.parametrize("ibs", [None, 1, 7])
@pytest.mark.parametrize("method", METHODS)
def test_ig_methods_and_internal_batch_size(method, ibs, tol):
    def call(lib, model, x):
        b = 0.1 * torch.ones(1, *x.shape[1:])
        return lib.IntegratedGradients(model).attribute(x, b, target=[2, 0, 6], n_steps=13, method=method,
                                                        internal_batch_size=ibs, return_convergence_delta=True)

    _compare("cnn", "img3", torch.float32, tol, call)


IG_CASES = {
    "mlp-scalar-baseline": ("mlp", "vec", dict(baselines=0.5, target=torch.tensor([0, 3, 1, 2]), n_steps=20)),
    "mlp-row-baselines": ("mlp", "vec", dict(baselines=torch.ones(4, 10), target=1, n_steps=8,
                                             method="riemann_trapezoid", internal_batch_size=9)),
    "cnn-batch1-default-steps": ("cnn", "img1", dict(target=4)),
    "cnn-no-multiply": ("cnn", "img3", dict(target=3, n_steps=9, multiply=False)),
    "two-input-args": ("two", "ab", dict(baselines=(0.2, "rows"), target=[3, 1, 0], n_steps=10,
                                         additional_forward_args=(1.5, "shift"), internal_batch_size=5)),
    "two-input-defaults": ("two", "ab", dict(target=2, n_steps=6, method="riemann_middle",
                                             additional_forward_args=2.0)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", list(IG_CASES))
def test_ig_inputs_baselines_targets_args(name, dtype, tol):
    model_name, inputs_name, kw = IG_CASES[name]

    def call(lib, model, x):
        kwargs = dict(kw)
        multiply = kwargs.pop("multiply", True)
        if isinstance(kwargs.get("baselines"), torch.Tensor):
            kwargs["baselines"] = kwargs["baselines"].to(dtype)
        if isinstance(kwargs.get("baselines"), tuple) and kwargs["baselines"][1] == "rows":
            kwargs["baselines"] = (0.2, 0.3 * torch.ones_like(x[1]))
        extra = kwargs.get("additional_forward_args")
        if isinstance(extra, tuple) and extra[1] == "shift":
            kwargs["additional_forward_args"] = (1.5, torch.linspace(-1, 1, 9, dtype=dtype).reshape(3, 3, 1, 1))
        return lib.IntegratedGradients(model, multiply_by_inputs=multiply).attribute(
            x, return_convergence_delta=True, **kwargs)

    _compare(model_name, inputs_name, dtype, tol, call)


# --------------------------------------------------------------------------- NoiseTunnel
BASES = ["Saliency", "InputXGradient", "GuidedBackprop", "IntegratedGradients"]


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("base", BASES)
def test_noise_tunnel_same_seed_same_numbers(base, nt_type, batch, tol):
    extra = {"n_steps": 4, "baselines": 0.1} if base == "IntegratedGradients" else {}

    def call(lib, model, x, nt=nt_type):
        return lib.NoiseTunnel(getattr(lib, base)(model)).attribute(
            x, nt_type=nt, nt_samples=5, nt_samples_batch_size=batch, stdevs=0.3, target=[1, 5, 2], **extra)

    var_scale = None
    if nt_type == "vargrad":  # Captum's E[a²] − E[a]² cancels: atol from E[a²]
        sq, *_ = _run(ca, "cnn", "img3", torch.float32, lambda lib, m, x: call(lib, m, x, "smoothgrad_sq"))
        var_scale = 8 * EPS32 * sq.abs().max().item()
    _compare("cnn", "img3", torch.float32, tol, call, var_scale=var_scale)


NT_CASES = {
    # wrapped method from the other library, both ways
    "ours-wrapping-captum-saliency": lambda lib, m, x: xc.NoiseTunnel(ca.Saliency(m)).attribute(
        x, nt_samples=4, stdevs=0.2, target=[0, 1, 2]) if lib is xc else ca.NoiseTunnel(ca.Saliency(m)).attribute(
        x, nt_samples=4, stdevs=0.2, target=[0, 1, 2]),
    "captum-wrapping-our-ig": lambda lib, m, x: ca.NoiseTunnel(
        (xc if lib is xc else ca).IntegratedGradients(m)).attribute(x, nt_samples=3, stdevs=0.2, target=1, n_steps=5),
    "ig-delta-distrib-baselines": lambda lib, m, x: lib.NoiseTunnel(lib.IntegratedGradients(m)).attribute(
        x, nt_samples=4, stdevs=0.1, target=[3, 1, 0], n_steps=5, baselines=torch.zeros(5, *x.shape[1:]) + 0.1,
        draw_baseline_from_distrib=True, return_convergence_delta=True),
    "ig-delta-remainder-partition": lambda lib, m, x: lib.NoiseTunnel(lib.IntegratedGradients(m)).attribute(
        x, nt_type="smoothgrad_sq", nt_samples=5, nt_samples_batch_size=3, stdevs=0.05, target=2, n_steps=4,
        internal_batch_size=4, return_convergence_delta=True),
    "tuple-inputs-stdev-tuple": lambda lib, m, x: lib.NoiseTunnel(lib.InputXGradient(m)).attribute(
        x, nt_samples=6, stdevs=(0.2, 0.0), target=[0, 1, 3], additional_forward_args=(2.0,)),
    "gradient-shap-wrapped": lambda lib, m, x: lib.NoiseTunnel(lib.GradientShap(m)).attribute(
        x, nt_samples=3, stdevs=0.1, target=[0, 1, 3], baselines=(torch.zeros(2, *x[0].shape[1:]), 0.0),
        draw_baseline_from_distrib=True, n_samples=2),
}


@pytest.mark.parametrize("name", list(NT_CASES))
def test_noise_tunnel_wrapping_and_options(name, tol):
    model, inputs = ("two", "ab") if name.startswith(("tuple", "gradient")) else ("cnn", "img3")
    _compare(model, inputs, torch.float32, tol, NT_CASES[name])


# --------------------------------------------------------------------------- GradientShap
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("stdevs", [0.0, 0.1])
@pytest.mark.parametrize("multiply", [True, False])
def test_gradient_shap_same_seeds_same_numbers(multiply, stdevs, dtype, tol):
    def call(lib, model, x):
        bl = torch.linspace(-1, 1, 6 * x[0].numel(), dtype=dtype).reshape(6, *x.shape[1:])
        return lib.GradientShap(model, multiply).attribute(x, bl, n_samples=7, stdevs=stdevs, target=[2, 0, 5],
                                                           return_convergence_delta=True)

    _compare("cnn", "img3", dtype, tol, call)


def test_gradient_shap_tuple_inputs_callable_baselines_and_args(tol):
    def call(lib, model, x):
        shift = torch.linspace(0, 1, 9).reshape(3, 3, 1, 1)
        return lib.GradientShap(model).attribute(
            x, lambda inp: (inp[0][:2] * 0.5, 0.1), n_samples=4, stdevs=(0.1, 0.2), target=[0, 1, 3],
            additional_forward_args=(1.5, shift), return_convergence_delta=True)

    _compare("two", "ab", torch.float32, tol, call)


# --------------------------------------------------------------------------- errors
ERRORS = {
    "ig-negative-steps": lambda lib, m, x: lib.IntegratedGradients(m).attribute(x, target=0, n_steps=-1),
    "ig-zero-steps": lambda lib, m, x: lib.IntegratedGradients(m).attribute(x, target=0, n_steps=0),
    "ig-one-riemann-step": lambda lib, m, x: lib.IntegratedGradients(m).attribute(
        x, target=0, n_steps=1, method="riemann_right", internal_batch_size=3),
    "ig-bad-method": lambda lib, m, x: lib.IntegratedGradients(m).attribute(x, target=0, method="simpson"),
    "ig-bad-baseline": lambda lib, m, x: lib.IntegratedGradients(m).attribute(
        x, torch.zeros(2, *x.shape[1:]), target=0, n_steps=3),
    "ig-target-length": lambda lib, m, x: lib.IntegratedGradients(m).attribute(x, target=[0, 1], n_steps=3),
    "nt-bad-type": lambda lib, m, x: lib.NoiseTunnel(lib.Saliency(m)).attribute(x, nt_type="x", target=0),
    "nt-int-stdev": lambda lib, m, x: lib.NoiseTunnel(lib.Saliency(m)).attribute(x, stdevs=1, target=0),
    "nt-negative-stdev": lambda lib, m, x: lib.NoiseTunnel(lib.Saliency(m)).attribute(x, stdevs=-1.0, target=0),
    "nt-zero-samples": lambda lib, m, x: lib.NoiseTunnel(lib.Saliency(m)).attribute(x, nt_samples=0, target=0),
    "gs-array-baseline": lambda lib, m, x: lib.GradientShap(m).attribute(x, lambda: np.zeros((2, 3)), target=0),
    "gs-bad-shape": lambda lib, m, x: lib.GradientShap(m).attribute(x, torch.zeros(2, 3, 4, 4), target=0),
    "gs-zero-samples": lambda lib, m, x: lib.GradientShap(m).attribute(x, torch.zeros(2, *x.shape[1:]),
                                                                       n_samples=0, target=0),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors_match_captum(name, tol):
    ref, ref_exc, _, _ = _run(ca, "cnn", "img3", torch.float32, ERRORS[name])
    got, exc, _, _ = _run(xc, "cnn", "img3", torch.float32, ERRORS[name])
    assert ref_exc is not None and type(exc) is type(ref_exc), (ref_exc, exc)
    if isinstance(ref_exc, AssertionError):
        # whitespace-normalised: Captum's baseline-type message carries a source-line
        # continuation's indentation, the shared plumbing (_common) prints it without
        assert " ".join(str(exc).split()) == " ".join(str(ref_exc).split())


# --------------------------------------------------------------------------- API
def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", ["IntegratedGradients", "NoiseTunnel", "GradientShap"])
def test_signatures_and_hierarchy_match_captum(name):
    ours, theirs = getattr(xc, name), getattr(ca, name)
    assert _params(ours.__init__) == _params(theirs.__init__)
    for meth in ("attribute", "compute_convergence_delta", "has_convergence_delta", "attribute_future"):
        if callable(getattr(theirs, meth, None)):
            assert _params(getattr(ours, meth)) == _params(getattr(theirs, meth)), meth
    skip = {"object", "Generic"}
    assert [c.__name__ for c in ours.__mro__ if c.__name__ not in skip] == \
        [c.__name__ for c in theirs.__mro__ if c.__name__ not in skip]
