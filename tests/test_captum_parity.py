"""Parity of xaikernels.captum with Captum 0.9.0 itself.

Each case builds the same model and inputs twice (fresh copies, identical weights), calls the
Captum class and its drop-in with the same arguments, and compares: the return structure
(tensor or tuple), shapes, dtypes and values (the shared tolerance table), the exception type
(and message for Captum's own assertions), and the warnings emitted, in order.
"""
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.peer
ca = pytest.importorskip("captum.attr")

import xaikernels.captum as xc  # noqa: E402


# --------------------------------------------------------------------------- models
def _init(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module.eval()


class CNN(nn.Module):
    """In-place and out-of-place ReLUs, a pooling stage, odd spatial sizes welcome."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(5, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.conv3 = nn.Conv2d(6, 4, 1)
        self.relu3 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 7)

    def forward(self, x, x2=None):
        if x2 is not None:  # a second input that broadcasts (Captum's improper-dims case)
            x = x + x2
        h = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.fc(self.relu3(self.conv3(h)).mean((2, 3)))


class FanOut(nn.Module):
    """A ReLU whose input also feeds a skip path (Captum rewrites the whole gradient there)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.relu = nn.ReLU()
        self.relu_ip = nn.ReLU(inplace=True)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        h = self.conv(x)
        g = self.relu_ip(self.relu(h) - 0.6 * h)
        return self.fc(g.mean((2, 3)))


class TwoInput(nn.Module):
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


class Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.lin(x)).sum(1)


class Grid(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.lin(x)).reshape(-1, 2, 3)


class Pair(nn.Module):
    def forward(self, a, b):
        return torch.relu(a), torch.relu(b)


class TupleLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.la = nn.Linear(3, 4)
        self.lb = nn.Linear(3, 4)
        self.pair = Pair()
        self.unused = nn.ReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        a, b = self.pair(self.la(x), self.lb(x))
        self.unused(a)
        return self.fc(a + 2 * b)


class Seq1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean(2))


MODELS = {"cnn": CNN, "fanout": FanOut, "two": TwoInput, "scalar": Scalar, "grid": Grid,
          "tuple": TupleLayer, "seq1d": Seq1d}


def _randn(*shape):
    return lambda g, dt: torch.randn(*shape, generator=g, dtype=dt)


INPUTS = {
    "img3": _randn(3, 3, 9, 11),
    "img1": _randn(1, 3, 7, 8),
    "fan": _randn(2, 2, 6, 7),
    "ab": lambda g, dt: (torch.randn(3, 2, 5, 7, generator=g, dtype=dt),
                         torch.randn(3, 2, 5, 7, generator=g, dtype=dt)),
    "a_only": _randn(3, 2, 5, 7),
    "vec5": _randn(4, 5),
    "vec4": _randn(3, 4),
    "vec3": _randn(3, 3),
    "seq": _randn(3, 2, 13),
    "img_and_vec": lambda g, dt: (torch.randn(1, 3, 7, 8, generator=g, dtype=dt),
                                  torch.ones(1, dtype=dt)),
    "int": lambda g, dt: torch.ones(2, 3, dtype=torch.long),
}


@dataclass
class Case:
    cls: str
    model: str
    inputs: str
    layer: Optional[str] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)
    # extra args built per dtype: name -> callable(dtype)
    extra: Optional[Callable] = None


GRADIENT = ["Saliency", "InputXGradient", "GuidedBackprop", "Deconvolution"]
T3 = [2, 0, 6]

CASES = {}
for _c in GRADIENT:
    CASES.update({
        f"{_c}-cnn-list": Case(_c, "cnn", "img3", kwargs={"target": T3}),
        f"{_c}-cnn-batch1-int": Case(_c, "cnn", "img1", kwargs={"target": 4}),
        f"{_c}-cnn-tensor": Case(_c, "cnn", "img3", kwargs={"target": torch.tensor(T3)}),
        f"{_c}-cnn-0d": Case(_c, "cnn", "img3", kwargs={"target": torch.tensor(5)}),
        f"{_c}-fanout": Case(_c, "fanout", "fan", kwargs={"target": 1}),
        f"{_c}-two-extra": Case(_c, "two", "ab", kwargs={"target": [0, 3, 1]},
                                extra=lambda dt: 2.0),
        f"{_c}-two-extra-tuple": Case(_c, "two", "ab", kwargs={"target": 2},
                                      extra=lambda dt: (0.5, torch.full((1,), 0.25, dtype=dt))),
        f"{_c}-two-b-as-extra": Case(_c, "two", "a_only", kwargs={"target": 2},
                                     extra=lambda dt: (torch.ones(3, 2, 5, 7, dtype=dt), 3.0)),
        f"{_c}-scalar": Case(_c, "scalar", "vec5"),
        f"{_c}-grid-tuples": Case(_c, "grid", "vec4", kwargs={"target": [(0, 1), (1, 2), (1, 0)]}),
        f"{_c}-grid-tuple": Case(_c, "grid", "vec4", kwargs={"target": (1, 2)}),
    })
CASES.update({
    "Saliency-signed": Case("Saliency", "cnn", "img3", kwargs={"target": T3, "abs": False}),
    "Saliency-err-no-target": Case("Saliency", "cnn", "img3"),
    "GuidedBackprop-err-list-length": Case("GuidedBackprop", "cnn", "img3", kwargs={"target": [1, 2]}),
    "Deconvolution-err-long-tuple": Case("Deconvolution", "cnn", "img3", kwargs={"target": (1, 0, 0)}),
    "Saliency-err-2d-target": Case("Saliency", "cnn", "img3", kwargs={"target": torch.tensor([[1], [2], [0]])}),
    "Saliency-err-row-of-grid": Case("Saliency", "grid", "vec4", kwargs={"target": 1}),
    "InputXGradient-err-int-input": Case("InputXGradient", "scalar", "int"),
    # Grad-CAM at a layer
    "LayerGradCam-conv2": Case("LayerGradCam", "cnn", "img3", "conv2", {"target": T3}),
    "LayerGradCam-batch1": Case("LayerGradCam", "cnn", "img1", "conv3", {"target": 3}),
    "LayerGradCam-inplace-relu": Case("LayerGradCam", "cnn", "img3", "relu1", {"target": 1}),
    "LayerGradCam-layer-input": Case("LayerGradCam", "cnn", "img3", "relu1",
                                     {"target": 1, "attribute_to_layer_input": True}),
    "LayerGradCam-relu": Case("LayerGradCam", "cnn", "img3", "conv1",
                              {"target": torch.tensor(T3), "relu_attributions": True}),
    "LayerGradCam-per-channel": Case("LayerGradCam", "cnn", "img3", "conv2",
                                     {"target": 2, "attr_dim_summation": False, "relu_attributions": True}),
    "LayerGradCam-grad-kwargs": Case("LayerGradCam", "cnn", "img3", "conv2",
                                     {"target": 2, "grad_kwargs": {"retain_graph": True}}),
    "LayerGradCam-fanout": Case("LayerGradCam", "fanout", "fan", "relu_ip", {"target": [0, 3]}),
    "LayerGradCam-two-input": Case("LayerGradCam", "two", "ab", "relu", {"target": [0, 1, 2]},
                                   extra=lambda dt: (2.0,)),
    "LayerGradCam-2d-layer": Case("LayerGradCam", "two", "ab", "fc",
                                  {"target": 1, "attribute_to_layer_input": True}),
    "LayerGradCam-scalar-model": Case("LayerGradCam", "scalar", "vec5", "lin"),
    "LayerGradCam-tuple-layer": Case("LayerGradCam", "tuple", "vec3", "pair", {"target": 1}),
    "LayerGradCam-tuple-targets": Case("LayerGradCam", "grid", "vec4", "lin",
                                       {"target": [(0, 1), (1, 2), (1, 0)]}),
    "LayerGradCam-unused-materialize": Case("LayerGradCam", "tuple", "vec3", "unused",
                                            {"target": 0, "grad_kwargs": {"materialize_grads": True}}),
    "LayerGradCam-err-unused": Case("LayerGradCam", "tuple", "vec3", "unused", {"target": 0}),
    "LayerGradCam-err-no-target": Case("LayerGradCam", "cnn", "img3", "conv2"),
    "LayerGradCam-err-long-tuple": Case("LayerGradCam", "cnn", "img3", "conv2", {"target": (9999,) * 20}),
    "LayerGradCam-conv1d": Case("LayerGradCam", "seq1d", "seq", "conv", {"target": [0, 2, 1]}),
    # Guided Grad-CAM
    "GuidedGradCam-conv2": Case("GuidedGradCam", "cnn", "img3", "conv2", {"target": T3}),
    "GuidedGradCam-batch1": Case("GuidedGradCam", "cnn", "img1", "conv3", {"target": 6}),
    "GuidedGradCam-bilinear": Case("GuidedGradCam", "cnn", "img3", "conv2",
                                   {"target": 1, "interpolate_mode": "bilinear"}),
    "GuidedGradCam-bicubic": Case("GuidedGradCam", "cnn", "img3", "conv3",
                                  {"target": 1, "interpolate_mode": "bicubic"}),
    "GuidedGradCam-area": Case("GuidedGradCam", "cnn", "img3", "conv2",
                               {"target": 1, "interpolate_mode": "area"}),
    "GuidedGradCam-layer-input-inplace": Case("GuidedGradCam", "cnn", "img3", "relu1",
                                              {"target": 0, "attribute_to_layer_input": True}),
    "GuidedGradCam-relu-layer": Case("GuidedGradCam", "cnn", "img3", "relu2", {"target": 0}),
    "GuidedGradCam-fanout": Case("GuidedGradCam", "fanout", "fan", "conv", {"target": 2}),
    "GuidedGradCam-two-input": Case("GuidedGradCam", "two", "ab", "ca", {"target": [3, 1, 0]},
                                    extra=lambda dt: 1.5),
    "GuidedGradCam-improper-dims": Case("GuidedGradCam", "cnn", "img_and_vec", "conv2", {"target": 0}),
    "GuidedGradCam-bad-mode": Case("GuidedGradCam", "cnn", "img3", "conv2",
                                   {"target": 0, "interpolate_mode": "made_up"}),
    "GuidedGradCam-conv1d": Case("GuidedGradCam", "seq1d", "seq", "conv",
                                 {"target": 1, "interpolate_mode": "linear"}),
    "GuidedGradCam-err-tuple-layer": Case("GuidedGradCam", "tuple", "vec3", "pair", {"target": 0}),
    "GuidedGradCam-err-no-target": Case("GuidedGradCam", "cnn", "img3", "conv2"),
})


# --------------------------------------------------------------------------- runner
def _run(lib, case, dtype):
    model = _init(MODELS[case.model](), seed=11).to(dtype)
    ctor = (model,) if case.layer is None else (model, getattr(model, case.layer))
    inputs = INPUTS[case.inputs](torch.Generator().manual_seed(5), dtype)
    kwargs = dict(case.kwargs)
    if case.extra is not None:
        kwargs["additional_forward_args"] = case.extra(dtype)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            out, exc = getattr(lib, case.cls)(*ctor).attribute(inputs, **kwargs), None
        except Exception as e:  # compared below
            out, exc = None, e
    return out, exc, [(w.category, str(w.message)) for w in rec]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", list(CASES))
def test_parity_with_captum(name, dtype, tol):
    case = CASES[name]
    ref, ref_exc, ref_warn = _run(ca, case, dtype)
    got, exc, warn = _run(xc, case, dtype)
    assert warn == ref_warn
    if ref_exc is not None or exc is not None:
        assert type(exc) is type(ref_exc), (ref_exc, exc)
        if isinstance(ref_exc, AssertionError):
            assert str(exc) == str(ref_exc)
        assert "-err-" in name
        return
    assert "-err-" not in name
    assert type(got) is type(ref)
    refs = ref if isinstance(ref, tuple) else (ref,)
    gots = got if isinstance(got, tuple) else (got,)
    assert len(gots) == len(refs)
    rtol, atol = tol[dtype]
    for r, g in zip(refs, gots):
        assert g.shape == r.shape and g.dtype == r.dtype
        torch.testing.assert_close(g.detach(), r.detach(), rtol=rtol, atol=atol)


CLASSES = ["Saliency", "InputXGradient", "GuidedBackprop", "Deconvolution", "LayerGradCam",
           "GuidedGradCam", "Attribution", "GradientAttribution", "PerturbationAttribution",
           "LayerAttribution", "NeuronAttribution"]


def _params(fn):
    import inspect

    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", CLASSES)
def test_signatures_and_hierarchy_match_captum(name):
    ours, theirs = getattr(xc, name), getattr(ca, name)
    assert _params(ours.__init__) == _params(theirs.__init__)
    for meth in ("attribute", "compute_convergence_delta", "interpolate", "has_convergence_delta"):
        if hasattr(theirs, meth) and callable(getattr(theirs, meth, None)):
            assert _params(getattr(ours, meth)) == _params(getattr(theirs, meth)), meth
    # same base-class names in the same order (captum's Generic/object plumbing aside)
    skip = {"object", "Generic"}
    assert [c.__name__ for c in ours.__mro__ if c.__name__ not in skip] == \
        [c.__name__ for c in theirs.__mro__ if c.__name__ not in skip]
    assert hasattr(ours, "attribute_future") == hasattr(theirs, "attribute_future")
