"""Parity with Zennit (every preset, VGG-like and ResNet-like with canonizers, float64 and float32)
and with Captum's LRP (ε, γ, α1β0).  Skipped when the peer is missing."""
import pytest
import torch
from torch import nn

import xaikernels.zennit as xz
from xaikernels.captum import LRP
from xaikernels.methods.lrp import lrp
from xaikernels.models.zoo import resnet18_like, vgg16_like
from conftest import BN_EPS0_OK

pytestmark = pytest.mark.peer

import importlib.util  # noqa: E402

if importlib.util.find_spec("zennit") is None:
    pytest.skip("zennit not installed: pip install zennit --no-deps click Pillow", allow_module_level=True)

import _zennit_stub  # noqa: E402

_zennit_stub.install()  # zennit imports torchvision: register the stand-in first
from zennit import composites as zc  # noqa: E402
from zennit.attribution import Gradient as ZGradient  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.torchvision import ResNetCanonizer  # noqa: E402

BOUNDS = dict(low=-2.5, high=2.5)
PRESETS = {
    "epsilon_plus": lambda c: zc.EpsilonPlus(canonizers=c),
    "epsilon_plus_flat": lambda c: zc.EpsilonPlusFlat(canonizers=c),
    "epsilon_alpha2_beta1": lambda c: zc.EpsilonAlpha2Beta1(canonizers=c),
    "epsilon_alpha2_beta1_flat": lambda c: zc.EpsilonAlpha2Beta1Flat(canonizers=c),
    "epsilon_gamma_box": lambda c: zc.EpsilonGammaBox(canonizers=c, **BOUNDS),
}


def _random_bn(model, seed=0, eps=None):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                if eps is not None:
                    m.eps = eps
    return model


def _model(kind, dtype, bn_eps=None):
    if kind == "vgg":
        return vgg16_like(width=4).to(dtype), (2, 3, 64, 64), lambda: [SequentialMergeBatchNorm()]
    m = _random_bn(resnet18_like(num_classes=10, width=4), eps=bn_eps).to(dtype)
    return m, (2, 3, 48, 48), lambda: [ResNetCanonizer()]


def _zennit(model, comp, x, onehot):
    with ZGradient(model, comp) as attributor:
        return attributor(x.clone(), onehot)[1]


def _case(kind, dtype, bn_eps=None):
    model, shape, canon = _model(kind, dtype, bn_eps)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    out = model(x)
    onehot = torch.eye(out.shape[1], dtype=dtype)[out.argmax(1)]
    return model, x, canon, onehot


@pytest.mark.parametrize("kind", ["vgg", "resnet"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_zennit_composite_float64(kind, preset):
    """A Zennit composite object given to the drop-in gives Zennit's relevance."""
    model, x, canon, onehot = _case(kind, torch.float64)
    exp = _zennit(model, PRESETS[preset](canon()), x, onehot)
    _, got = xz.Gradient(model, PRESETS[preset](canon()))(x, onehot)
    torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-12 * exp.abs().max().item())


@pytest.mark.parametrize("kind", ["vgg", "resnet"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_named_preset_matches_zennit(kind, preset):
    """Our preset by name, with our canonizers.  BatchNorm eps = 0 here: Zennit's merge leaves
    each BatchNorm computing x/√(1+eps) where ours is exact (that difference is covered by the
    zennit_compat canonizer in the test above)."""
    if kind == "resnet" and not BN_EPS0_OK:
        pytest.skip("this torch rejects BatchNorm eps = 0")
    model, x, canon, onehot = _case(kind, torch.float64, bn_eps=0.0)
    exp = _zennit(model, PRESETS[preset](canon()), x, onehot)
    got = lrp(model, x, onehot.argmax(1), composite=preset, init="one_hot",
              composite_kwargs=BOUNDS if preset == "epsilon_gamma_box" else None)
    torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-12 * exp.abs().max().item())


@pytest.mark.parametrize("kind", ["vgg", "resnet"])
@pytest.mark.parametrize("preset", ["epsilon_plus_flat", "epsilon_alpha2_beta1", "epsilon_gamma_box"])
def test_zennit_float32_error_within_2x(kind, preset):
    """float32: our error against Zennit-float64 is at most ~2× Zennit-float32's own (L2 norms:
    the max over a few rounding-level differences is too noisy a statistic)."""
    model64, x64, canon, onehot64 = _case(kind, torch.float64)
    exact = _zennit(model64, PRESETS[preset](canon()), x64, onehot64)
    model32, x32, onehot32 = model64.float(), x64.float(), onehot64.float()
    theirs = _zennit(model32, PRESETS[preset](canon()), x32, onehot32).double()
    _, ours = xz.Gradient(model32, PRESETS[preset](canon()))(x32, onehot32)
    e_theirs = (theirs - exact).norm().item()
    e_ours = (ours.double() - exact).norm().item()
    assert e_ours <= 2 * e_theirs + 1e-7 * exact.norm().item(), (e_ours, e_theirs)


def test_bottleneck_resnet_matches_zennit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        _zennit_stub.Bottleneck(8, 2), _zennit_stub.Bottleneck(8, 4, stride=2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
    net = _random_bn(net).double().eval()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    onehot = torch.eye(3, dtype=torch.float64)[[0, 2]]
    exp = _zennit(net, zc.EpsilonAlpha2Beta1(canonizers=[ResNetCanonizer()]), x, onehot)
    _, got = xz.Gradient(net, zc.EpsilonAlpha2Beta1(canonizers=[ResNetCanonizer()]))(x, onehot)
    torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-12 * exp.abs().max().item())


def test_unsupported_zennit_rule_falls_back_to_zennit_or_raises():
    """A Zennit rule without a kernel: Zennit's own hooks compute it with backend "auto"
    (Zennit's numbers, reported in last_backend); an explicit backend raises, naming the rule.
    The model comes back without hooks either way."""
    from zennit.rules import ReLUGuidedBackprop

    model, x, _, onehot = _case("vgg", torch.float64)
    comp = zc.LayerMapComposite([(nn.ReLU, ReLUGuidedBackprop()), (nn.Conv2d, zc.ZPlus())])
    exp = _zennit(model, comp, x, onehot)
    with pytest.raises(NotImplementedError, match="ReLUGuidedBackprop"):
        xz.Gradient(model, comp, backend="reference")(x, onehot)
    attributor = xz.Gradient(model, comp)
    out, got = attributor(x, onehot)
    assert attributor.last_backend == "zennit"
    torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out, model(x))
    assert not comp.handles
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in model.modules())
    # a supported composite runs on the engine
    attributor = xz.Gradient(model, zc.EpsilonPlus())
    attributor(x, onehot)
    assert attributor.last_backend == "xaikernels"


# ---------------------------------------------------------------------------------------------
# Captum
# ---------------------------------------------------------------------------------------------

class CaptumNet(nn.Module):
    """Layers Captum's LRP supports (functional flatten)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 5, 3, padding=1)
        self.r1 = nn.ReLU()
        self.p1 = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(5, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.r2 = nn.ReLU()
        self.p2 = nn.AdaptiveAvgPool2d(2)
        self.f1 = nn.Linear(24, 7)
        self.r3 = nn.ReLU()
        self.f2 = nn.Linear(7, 4)

    def forward(self, x):
        x = self.p2(self.r2(self.bn(self.c2(self.p1(self.r1(self.c1(x)))))))
        return self.f2(self.r3(self.f1(torch.flatten(x, 1))))


@pytest.mark.parametrize("setup", ["default", "gamma", "alpha1beta0"])
def test_captum_lrp_parity(setup):
    captum = pytest.importorskip("captum")
    from captum.attr import LRP as CaptumLRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule

    torch.manual_seed(0)
    net = _random_bn(CaptumNet()).double().eval()
    x = torch.randn(3, 3, 10, 10, dtype=torch.float64)

    def rules():
        for m in net.modules():
            if hasattr(m, "rule"):
                del m.rule
        if setup == "gamma":
            net.c2.rule = GammaRule(gamma=0.3)
            net.f1.rule = EpsilonRule(epsilon=0.05)
        elif setup == "alpha1beta0":
            net.c1.rule = Alpha1_Beta0_Rule()
            net.f1.rule = GammaRule(set_bias_to_zero=True)

    rules()
    with pytest.warns(UserWarning):  # captum: input did not require grad
        exp, d_exp = CaptumLRP(net).attribute(x, target=[0, 2, 3], return_convergence_delta=True)
    rules()
    with pytest.warns(UserWarning, match="did not already require gradients"):  # as Captum
        got, d_got = LRP(net).attribute(x, target=[0, 2, 3], return_convergence_delta=True)
    torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-12 * exp.abs().max().item())
    torch.testing.assert_close(d_got, d_exp, rtol=1e-7, atol=1e-10)
    assert captum is not None


def _unseen(kind):
    """Architectures none of the other tests use: (model, input shape)."""
    if kind == "avgpool_leaky_bn1d":
        return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.LeakyReLU(0.1), nn.AvgPool2d(2),
                             nn.Conv2d(6, 8, 3, groups=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Dropout(0.3), nn.Linear(7, 4)), (3, 3, 12, 12)
    if kind == "conv1d_depthwise_tanh":
        return nn.Sequential(nn.Conv1d(4, 4, 3, groups=4, padding=1), nn.ReLU(), nn.Conv1d(4, 6, 5, stride=2),
                             nn.Tanh(), nn.Flatten(), nn.Linear(6 * 8, 3)), (2, 4, 20)
    return nn.Sequential(nn.Sequential(nn.Conv2d(2, 5, 3, dilation=2, padding=2), nn.ReLU()),
                         nn.MaxPool2d(3, stride=2, padding=1), nn.Sequential(nn.Conv2d(5, 5, 1), nn.ReLU6()),
                         nn.Flatten(), nn.Linear(5 * 5 * 5, 6)), (2, 2, 10, 10)


@pytest.mark.parametrize("kind", ["avgpool_leaky_bn1d", "conv1d_depthwise_tanh", "nested_dilated_maxpool_relu6"])
@pytest.mark.parametrize("preset", ["EpsilonPlusFlat", "EpsilonAlpha2Beta1Flat", "EpsilonGammaBox", "EpsilonPlus"])
def test_unseen_architectures_equal_zennit_on_the_engine(kind, preset):
    """Zennit composites (with BatchNorm merging) on layer mixes the other tests do not build:
    average pooling, LeakyReLU, BatchNorm1d after a linear layer, Dropout in eval, grouped and
    depthwise 1-d convolutions, Tanh, nested Sequentials, dilation, padded max pooling, ReLU6 —
    Zennit's relevance, computed by our engine (not the hooks fallback)."""
    model, shape = _unseen(kind)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.normal_(generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    model = model.double().eval()
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    out = model(x)
    onehot = torch.zeros_like(out)
    onehot[:, 1] = 1.0
    kw = dict(low=-4.0, high=4.0) if preset == "EpsilonGammaBox" else {}

    def comp():
        return getattr(zc, preset)(canonizers=[SequentialMergeBatchNorm()], **kw)

    exp = _zennit(model, comp(), x, onehot)
    attributor = xz.Gradient(model, comp())
    _, got = attributor(x.clone(), onehot)
    assert attributor.last_backend == "xaikernels"
    torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-14 * exp.abs().max().item())
