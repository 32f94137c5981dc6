"""xaikernels.captum drop-ins, tested without Captum.

The ideas of Captum's own tests for Saliency, InputXGradient, GuidedBackprop, Deconvolution,
LayerGradCam and GuidedGradCam, rewritten against small models of our own, with oracles
computed here independently: plain autograd, a model copy whose ReLUs carry the rule as an
autograd Function, and the Grad-CAM formula on activations taken by splitting the model.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xaikernels
from xaikernels.captum import (
    Attribution,
    Deconvolution,
    GradientAttribution,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    InternalAttribution,
    LayerAttribution,
    LayerGradCam,
    ModifiedReluGradientAttribution,
    NeuronAttribution,
    PerturbationAttribution,
    Saliency,
)

from _models import DeconvReluFn, GuidedReluFn, rule_copy

HOOK_WARNING = ("Setting backward hooks on ReLU activations.The hooks will be removed after the "
                "attribution is finished")
GRAD_WARNING = ("Input Tensor {} did not already require gradients, required_grads has been set "
                "automatically.")
INTERP_WARNING = "Couldn't appropriately interpolate GradCAM attributions"

# Captum's per-call notices; tests that check warnings record them explicitly.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients"),
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU"),
]


# --------------------------------------------------------------------------- models
def _init(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.6)
    return module


class ConvNet(nn.Module):
    """conv → ReLU(in-place) → conv → ReLU → GAP → linear; ``head``/``tail`` split at conv2."""

    def __init__(self, inplace=True, classes=5, seed=0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(6, classes)
        _init(self, seed)

    def head(self, x):
        return self.conv2(self.relu1(self.conv1(x)))

    def tail(self, a):
        return self.fc(self.relu2(a).mean((2, 3)))

    def forward(self, x, x2=None):
        if x2 is not None:
            x = x + x2
        return self.tail(self.head(x))


class TwoInput(nn.Module):
    """Two image inputs and extra positional args (scale, optional shift)."""

    def __init__(self, seed=1):
        super().__init__()
        self.ca = nn.Conv2d(2, 3, 3)
        self.cb = nn.Conv2d(2, 3, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3, 4)
        _init(self, seed)

    def forward(self, a, b, scale=1.0, shift=None):
        h = self.relu(self.ca(a) + self.cb(b)) * scale
        if shift is not None:
            h = h + shift
        return self.fc(h.mean((2, 3)))


class Scalar(nn.Module):
    """One output per example: (N,)."""

    def __init__(self, seed=2):
        super().__init__()
        self.lin = nn.Linear(5, 3)
        self.relu = nn.ReLU()
        _init(self, seed)

    def forward(self, x):
        return self.relu(self.lin(x)).sum(1)


class Grid(nn.Module):
    """Output (N, 2, 3): targets are index tuples."""

    def __init__(self, seed=3):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.relu = nn.ReLU()
        _init(self, seed)

    def forward(self, x):
        return self.relu(self.lin(x)).reshape(-1, 2, 3)


class Pair(nn.Module):
    def forward(self, a, b):
        return torch.relu(a), torch.relu(b)


class TupleLayerNet(nn.Module):
    """A layer (``pair``) whose output is a tuple, and an unused ReLU call."""

    def __init__(self, seed=4):
        super().__init__()
        self.la = nn.Linear(3, 4)
        self.lb = nn.Linear(3, 4)
        self.pair = Pair()
        self.unused = nn.ReLU()
        self.fc = nn.Linear(4, 2)
        _init(self, seed)

    def forward(self, x):
        a, b = self.pair(self.la(x), self.lb(x))
        self.unused(a)
        return self.fc(a + 2 * b)


# --------------------------------------------------------------------------- oracles
def input_grad(model, inputs, target, *args):
    xs = tuple(x.detach().requires_grad_() for x in inputs)
    out = model(*xs, *args)
    return torch.autograd.grad(out[:, target].sum(), xs)


def grad_cam_oracle(model, x, target, relu=False):
    a = model.head(x).detach().requires_grad_()
    (g,) = torch.autograd.grad(model.tail(a)[:, target].sum(), a)
    m = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).detach()
    return m.clamp(min=0) if relu else m


def hook_state(model):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
             m.training, getattr(m, "inplace", None)) for m in model.modules()] + \
        [p.requires_grad for p in model.parameters()]


@pytest.fixture(params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def dtype(request):
    return request.param


def close(a, b, tol, dtype):
    rtol, atol = tol[dtype]
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- gradient family
@pytest.mark.parametrize("inplace", [True, False])
def test_gradient_family_matches_oracles(dtype, tol, inplace):
    model = ConvNet(inplace=inplace).to(dtype).eval()
    x = torch.randn(3, 3, 7, 9, dtype=dtype)
    t = [1, 4, 0]
    plain = ConvNet(inplace=False).to(dtype).eval()
    plain.load_state_dict(model.state_dict())
    g = torch.stack([input_grad(plain, (x[i:i + 1],), t[i])[0][0] for i in range(3)])
    gb = torch.stack([input_grad(rule_copy(plain, GuidedReluFn), (x[i:i + 1],), t[i])[0][0] for i in range(3)])
    dc = torch.stack([input_grad(rule_copy(plain, DeconvReluFn), (x[i:i + 1],), t[i])[0][0] for i in range(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        close(Saliency(model).attribute(x, target=t), g.abs(), tol, dtype)
        close(Saliency(model).attribute(x, target=t, abs=False), g, tol, dtype)
        close(InputXGradient(model).attribute(x, target=t), g * x, tol, dtype)
        close(GuidedBackprop(model).attribute(x, target=t), gb, tol, dtype)
        close(Deconvolution(model).attribute(x, target=t), dc, tol, dtype)
    assert not torch.equal(gb, g) and not torch.equal(dc, g)  # the rules changed something


def test_tensor_in_tensor_out_tuple_in_tuple_out():
    model = ConvNet().eval()
    x, x2 = torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6)
    for cls in (Saliency, InputXGradient, GuidedBackprop, Deconvolution):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            single = cls(model).attribute(x, target=1)
            one_tuple = cls(model).attribute((x,), target=1)
            pair = cls(model).attribute((x, x2), target=1)
        assert isinstance(single, torch.Tensor) and single.shape == x.shape
        assert isinstance(one_tuple, tuple) and len(one_tuple) == 1
        torch.testing.assert_close(one_tuple[0], single)
        assert isinstance(pair, tuple) and len(pair) == 2
        # x + x2 enters the model: both inputs get the same gradient-based map (up to ×input)
        if cls is not InputXGradient:
            torch.testing.assert_close(pair[0], pair[1])


def test_multi_input_and_additional_forward_args(tol):
    model = TwoInput().eval()
    a, b = torch.randn(2, 2, 5, 7), torch.randn(2, 2, 5, 7)
    ga, gb_ = input_grad(model, (a, b), 2, 3.0)
    got = Saliency(model).attribute((a, b), target=2, abs=False, additional_forward_args=3.0)
    close(got[0], ga, tol, torch.float32)
    close(got[1], gb_, tol, torch.float32)
    # a tuple of extra args; a tensor extra arg; a single tensor input with b as an extra arg
    got2 = Saliency(model).attribute((a, b), target=2, abs=False, additional_forward_args=(3.0, torch.zeros(1)))
    close(got2[0], ga, tol, torch.float32)
    got3 = Saliency(model).attribute(a, target=2, abs=False, additional_forward_args=(b, 3.0))
    close(got3, ga, tol, torch.float32)


def test_target_forms_agree():
    model = ConvNet().eval()
    x = torch.randn(3, 3, 6, 6)
    sal = Saliency(model)
    ref = torch.cat([sal.attribute(x[i:i + 1], target=t) for i, t in enumerate([2, 0, 3])])
    for t in ([2, 0, 3], torch.tensor([2, 0, 3]), [(2,), (0,), (3,)]):
        torch.testing.assert_close(sal.attribute(x, target=t), ref)
    same = sal.attribute(x, target=1)
    for t in ((1,), torch.tensor(1), torch.tensor([1]), [1, 1, 1]):
        torch.testing.assert_close(sal.attribute(x, target=t), same)


def test_tuple_targets_on_multi_dim_output(tol):
    model = Grid().eval()
    x = torch.randn(3, 4)
    got = Saliency(model).attribute(x, target=[(0, 1), (1, 2), (1, 0)], abs=False)
    for i, (r, c) in enumerate([(0, 1), (1, 2), (1, 0)]):
        xi = x[i:i + 1].clone().requires_grad_()
        (g,) = torch.autograd.grad(model(xi)[0, r, c], xi)
        close(got[i:i + 1], g, tol, torch.float32)
    single = Saliency(model).attribute(x, target=(1, 2), abs=False)
    xg = x.clone().requires_grad_()
    close(single, torch.autograd.grad(model(xg)[:, 1, 2].sum(), xg)[0], tol, torch.float32)
    with pytest.raises(AssertionError):  # a row of a 3-D output is not one scalar per example
        Saliency(model).attribute(x, target=1)


def test_scalar_output_needs_no_target(tol):
    model = Scalar().eval()
    x = torch.randn(4, 5)
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(model(xg).sum(), xg)
    close(Saliency(model).attribute(x, abs=False), g, tol, torch.float32)
    close(InputXGradient(model.forward).attribute(x), g * x, tol, torch.float32)
    # 1-D inputs: a batch of scalars
    f = lambda v: 1 - torch.relu(1 - v)  # noqa: E731
    v = torch.tensor([1.0, 2.0, 3.0, 0.0, -1.0, 7.0])
    torch.testing.assert_close(Saliency(f).attribute(v), (v < 1).float())


@pytest.mark.parametrize("bad, err", [
    (None, AssertionError),               # several outputs per example and no target
    ([0, 1], AssertionError),             # list length != batch
    ((0, 1), AssertionError),             # index tuple longer than the output allows
    (torch.tensor([[0], [1], [2]]), AssertionError),  # 2-D target tensor
    ("0", AssertionError),                # not a target type
    ([0.5, 1.0, 2.0], AssertionError),    # list of floats
    (9, IndexError),                      # column out of range
])
def test_bad_targets_raise_captum_errors(bad, err):
    model = ConvNet().eval()
    x = torch.randn(3, 3, 6, 6)
    before = hook_state(model)
    for cls in (Saliency, GuidedBackprop, Deconvolution):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(err):
                cls(model).attribute(x, target=bad)
        assert hook_state(model) == before
    with pytest.raises(err):
        LayerGradCam(model, model.conv2).attribute(x, target=bad)
    assert hook_state(model) == before


def test_warnings_match_captum():
    model = ConvNet().eval()
    x = torch.randn(1, 3, 6, 6)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        GuidedBackprop(model).attribute(x, target=0)
    msgs = [str(w.message) for w in rec]
    assert msgs == [GRAD_WARNING.format(0), HOOK_WARNING]
    assert all(w.category is UserWarning and w.filename == __file__ for w in rec)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        Saliency(model).attribute(x.clone().requires_grad_(), target=0)
        LayerGradCam(model, model.conv2).attribute(x, target=0)
    assert rec == []
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError):  # integer inputs cannot carry gradients
            Saliency(lambda v: v.float().sum(1)).attribute(torch.ones(2, 3, dtype=torch.long))
    assert "has a dtype of torch.int64" in str(rec[0].message)


def test_caller_tensors_untouched():
    model = ConvNet().eval()
    x = torch.randn(2, 3, 6, 6)
    xr = torch.randn(2, 3, 6, 6, requires_grad=True)
    xr.grad = torch.ones_like(xr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cls in (Saliency, InputXGradient, GuidedBackprop, Deconvolution):
            cls(model).attribute((x, xr), target=2)
        GuidedGradCam(model, model.conv2).attribute((x, xr), target=2)
    assert not x.requires_grad and x.grad is None
    assert xr.requires_grad and torch.equal(xr.grad, torch.ones_like(xr))
    assert all(p.grad is None for p in model.parameters())


def test_same_tensor_twice_gets_full_gradient():
    model = ConvNet().eval()
    x = torch.randn(2, 3, 6, 6)
    a, b = Saliency(model).attribute((x, x), target=1, abs=False)
    g, _ = input_grad(model, (x, x.clone()), 1)  # x + x enters the model
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, 2 * g)


def test_model_handed_back_after_errors():
    model = ConvNet(inplace=True).train()
    for p in model.fc.parameters():
        p.requires_grad_(False)
    user = model.register_forward_hook(lambda *a: None)
    before = hook_state(model)

    def boom(module, inputs, output):
        raise ValueError("boom")

    x = torch.randn(2, 3, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for attr in (GuidedBackprop(model), Deconvolution(model), GuidedGradCam(model, model.conv2),
                     LayerGradCam(model, model.conv2)):
            h = model.fc.register_forward_hook(boom)
            with pytest.raises(ValueError):
                attr.attribute(x, target=0)
            h.remove()
            assert hook_state(model) == before
            attr.attribute(x, target=0)
            assert hook_state(model) == before
    assert model.relu1.inplace and model.training
    user.remove()


def test_functional_relu_keeps_plain_gradient():
    f = nn.Sequential(nn.Linear(4, 3))
    model = lambda v: F.relu(f(v))  # noqa: E731
    with pytest.raises(AssertionError):  # Captum's requirement: hooks need a Module
        GuidedBackprop(model)

    class Fn(nn.Module):
        def forward(self, v):
            return F.relu(f(v))

    x = torch.randn(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(GuidedBackprop(Fn()).attribute(x, target=1),
                                   Saliency(Fn()).attribute(x, target=1, abs=False))


def test_rule_acts_on_relu_input_like_captum():
    # y = a·x feeds both the ReLU and a skip path: out = relu(y) - c·y.  Captum's rule
    # rewrites the whole gradient at y: guided gives relu(1[y>0] - c)·a, deconv gives a.
    a, c = 1.7, 0.4
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(a)

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.relu = lin, nn.ReLU()

        def forward(self, x):
            y = self.lin(x)
            return self.relu(y) - c * y

    x = torch.tensor([[1.5], [-2.0], [0.3], [-0.1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gbp = GuidedBackprop(Skip()).attribute(x, target=0)
        dec = Deconvolution(Skip()).attribute(x, target=0)
    pos = (x > 0).to(x.dtype)
    torch.testing.assert_close(gbp, torch.clamp(pos - c, min=0) * a)
    torch.testing.assert_close(dec, torch.full_like(x, a))


def test_reused_relu_module():
    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.relu, self.fc = nn.Linear(4, 5), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3)
            _init(self, 7)

        def forward(self, x):
            return self.fc(self.relu(self.b(self.relu(self.a(x)))))

    model = Reuse()
    x = torch.randn(6, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = GuidedBackprop(model).attribute(x, target=2)
        dec = Deconvolution(model).attribute(x, target=2)
    torch.testing.assert_close(got, input_grad(rule_copy(model, GuidedReluFn), (x,), 2)[0])
    torch.testing.assert_close(dec, input_grad(rule_copy(model, DeconvReluFn), (x,), 2)[0])


# --------------------------------------------------------------------------- Grad-CAM
def test_layer_grad_cam_matches_formula(dtype, tol):
    model = ConvNet().to(dtype).eval()
    x = torch.randn(2, 3, 8, 7, dtype=dtype)
    gc = LayerGradCam(model, model.conv2)
    for relu in (False, True):
        got = gc.attribute(x, target=3, relu_attributions=relu)
        assert got.shape == (2, 1, 6, 5) and got.dtype == dtype
        close(got, grad_cam_oracle(model, x, 3, relu), tol, dtype)
    assert xaikernels.last_backend("grad_cam") is not None  # reduced by the fused op
    # per-channel maps
    a = model.head(x).detach().requires_grad_()
    (g,) = torch.autograd.grad(model.tail(a)[:, 3].sum(), a)
    split = gc.attribute(x, target=3, attr_dim_summation=False)
    close(split, (g.mean((2, 3), keepdim=True) * a).detach(), tol, dtype)
    assert split.shape == a.shape


def test_layer_grad_cam_layer_input_and_in_place_successor(tol):
    model = ConvNet(inplace=True).eval()
    x = torch.randn(2, 3, 7, 7)
    # relu1 runs in place on conv1's output: the map must use the pre-ReLU activations
    a = model.conv1(x).detach().requires_grad_()
    out = model.tail(model.conv2(torch.relu(a)))
    (g,) = torch.autograd.grad(out[:, 1].sum(), a)
    ref = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).detach()
    close(LayerGradCam(model, model.conv1).attribute(x, target=1), ref, tol, torch.float32)
    close(LayerGradCam(model, model.relu1).attribute(x, target=1, attribute_to_layer_input=True),
          ref, tol, torch.float32)


def test_layer_grad_cam_stops_at_layer():
    calls = []

    class Spy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v):
            return v.clone()

        @staticmethod
        def backward(ctx, g):
            calls.append(1)
            return g

    model = ConvNet().eval()

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m(Spy.apply(x))

    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    LayerGradCam(Wrapped(), model.conv2).attribute(x, target=0)
    assert calls == []


def test_layer_grad_cam_2d_and_tuple_layers(tol):
    model = TupleLayerNet().eval()
    x = torch.randn(3, 3)
    maps = LayerGradCam(model, model.pair).attribute(x, target=1)
    assert isinstance(maps, tuple) and len(maps) == 2
    a = model.la(x).detach().requires_grad_()
    b = model.lb(x).detach().requires_grad_()
    ra, rb = torch.relu(a), torch.relu(b)
    ga, gb = torch.autograd.grad(model.fc(ra + 2 * rb)[:, 1].sum(), (ra, rb))
    close(maps[0], (ga * ra).sum(1, keepdim=True).detach(), tol, torch.float32)
    close(maps[1], (gb * rb).sum(1, keepdim=True).detach(), tol, torch.float32)
    lin = LayerGradCam(model, model.fc).attribute(x, target=1, attribute_to_layer_input=True)
    assert lin.shape == (3, 1)
    # a layer whose output is unused: autograd's error, or zeros with materialize_grads
    with pytest.raises(RuntimeError):
        LayerGradCam(model, model.unused).attribute(x, target=0)
    z = LayerGradCam(model, model.unused).attribute(x, target=0, grad_kwargs={"materialize_grads": True})
    assert torch.equal(z, torch.zeros(3, 1))


def test_layer_grad_cam_frozen_model_and_no_input_grad(tol):
    model = ConvNet().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 3, 6, 6)
    got = LayerGradCam(model, model.conv2).attribute(x, target=2)
    close(got, grad_cam_oracle(model, x, 2), tol, torch.float32)
    assert all(not p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("layer, to_input", [("conv2", False), ("conv1", False), ("relu1", True)])
def test_guided_grad_cam_matches_oracle(dtype, tol, layer, to_input):
    model = ConvNet(inplace=True).to(dtype).eval()
    x = torch.randn(2, 3, 9, 8, dtype=dtype)
    plain = ConvNet(inplace=False).to(dtype).eval()
    plain.load_state_dict(model.state_dict())
    gbp = input_grad(rule_copy(plain, GuidedReluFn), (x,), 1)[0]
    if layer == "conv2":
        cam = grad_cam_oracle(plain, x, 1, relu=True)
    else:  # conv1 output == relu1 input
        a = plain.conv1(x).detach().requires_grad_()
        (g,) = torch.autograd.grad(plain.tail(plain.conv2(torch.relu(a)))[:, 1].sum(), a)
        cam = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp(min=0).detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ggc = GuidedGradCam(model, getattr(model, layer))
        got = ggc.attribute(x, target=1, attribute_to_layer_input=to_input)
        got_bl = ggc.attribute(x, target=1, attribute_to_layer_input=to_input, interpolate_mode="bilinear")
    close(got, gbp * F.interpolate(cam, x.shape[2:], mode="nearest"), tol, dtype)
    close(got_bl, gbp * F.interpolate(cam, x.shape[2:], mode="bilinear"), tol, dtype)


def test_guided_grad_cam_runs_the_model_once():
    model = ConvNet().eval()
    calls = []
    h = model.register_forward_hook(lambda *a: calls.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GuidedGradCam(model, model.conv2).attribute(torch.randn(2, 3, 6, 6), target=0)
    h.remove()
    assert calls == [1]


def test_guided_grad_cam_mismatched_inputs_warn_and_return_empty():
    model = ConvNet().eval()
    x = torch.randn(1, 3, 6, 6)
    other = torch.ones(1)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        good, bad = GuidedGradCam(model, model.conv2).attribute((x, other), target=0)
    assert good.shape == x.shape and bad.numel() == 0
    assert any(INTERP_WARNING in str(w.message) for w in rec)
    msgs = [str(w.message) for w in rec]
    assert HOOK_WARNING in msgs and GRAD_WARNING.format(1) in msgs
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = GuidedGradCam(model, model.conv2).attribute((x, x + 1), target=0, interpolate_mode="nope")
    assert all(r.numel() == 0 for r in res)
    assert sum(INTERP_WARNING in str(w.message) for w in rec) == 2


def test_guided_grad_cam_rejects_multi_tensor_layer():
    model = TupleLayerNet().eval()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with pytest.raises(AssertionError, match="multiple inputs / outputs"):
            GuidedGradCam(model, model.pair).attribute(torch.randn(2, 3), target=0)
    assert rec == []  # Captum fails before its guided-backprop pass, so it warns nothing


def test_no_target_for_multi_output_model_asserts():
    model = ConvNet().eval()
    x = torch.randn(2, 3, 6, 6)
    for attr in (Saliency(model), InputXGradient(model), LayerGradCam(model, model.conv2),
                 GuidedGradCam(model, model.conv2)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(AssertionError, match="Target not provided"):
                attr.attribute(x)


# --------------------------------------------------------------------------- API surface
def test_class_hierarchy_and_attributes():
    model = ConvNet()
    assert issubclass(GradientAttribution, Attribution)
    assert issubclass(PerturbationAttribution, Attribution)
    assert issubclass(LayerAttribution, InternalAttribution)
    assert issubclass(NeuronAttribution, InternalAttribution)
    assert issubclass(LayerGradCam, LayerAttribution) and issubclass(LayerGradCam, GradientAttribution)
    assert issubclass(GuidedBackprop, ModifiedReluGradientAttribution)
    assert issubclass(Deconvolution, ModifiedReluGradientAttribution)
    assert issubclass(GuidedGradCam, GradientAttribution) and not issubclass(GuidedGradCam, LayerAttribution)
    s, ixg, gb, dc = Saliency(model), InputXGradient(model), GuidedBackprop(model), Deconvolution(model)
    gc, ggc = LayerGradCam(model, model.conv2, device_ids=[0]), GuidedGradCam(model, model.conv2)
    assert [a.multiplies_by_inputs for a in (s, ixg, gb, dc, gc, ggc)] == [False, True, False, False, False, False]
    assert not any(a.has_convergence_delta() for a in (s, ixg, gb, dc, gc, ggc))
    assert s.forward_func is model and gb.model is model and gc.layer is model.conv2 and gc.device_ids == [0]
    assert gb.use_relu_grad_output is False and dc.use_relu_grad_output is True
    assert isinstance(ggc.grad_cam, LayerGradCam) and isinstance(ggc.guided_backprop, GuidedBackprop)
    assert ggc.grad_cam.layer is model.conv2
    assert LayerGradCam.get_name() == "Layer Grad Cam" and Saliency.get_name() == "Saliency"
    assert PerturbationAttribution(model).multiplies_by_inputs
    for a in (s, ixg, gb):
        with pytest.raises(NotImplementedError):
            a.attribute_future()
    # Captum's composite methods call attribute.__wrapped__(self, ...)
    for a in (s, ixg, gb, dc, gc, ggc):
        assert callable(a.attribute.__wrapped__)
    m = torch.arange(4.0).reshape(1, 1, 2, 2)
    torch.testing.assert_close(LayerAttribution.interpolate(m, (4, 4)),
                               m.repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_convergence_delta_of_input_x_gradient_on_linear_model(tol):
    lin = _init(nn.Linear(6, 3), 5).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    ixg = InputXGradient(lin)
    attr = ixg.attribute(x, target=2)
    delta = ixg.compute_convergence_delta(attr, None, x, target=2)
    assert delta.shape == (4,)
    close(delta, torch.zeros(4, dtype=torch.float64), tol, torch.float64)
    shifted = ixg.compute_convergence_delta(attr + 1.0, 0.0, x, target=2)
    close(shifted, torch.full((4,), 6.0, dtype=torch.float64), tol, torch.float64)
