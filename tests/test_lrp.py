"""Model-level LRP: composition of the per-layer oracles, canonizers, composites, errors, and the
user's model handed back unchanged."""
import pytest
import torch
from torch import nn

import xaikernels
from xaikernels import _backend
from xaikernels.methods import lrp as L
from xaikernels.methods.lrp import lrp
from xaikernels.reference import lrp as ref
from xaikernels.reference.lrp import ConvGeom
from conftest import BN_EPS0

from test_model_guard import assert_same, snapshot

D = torch.float64


class Net(nn.Module):
    """conv(bias)-BN-ReLU(in-place)-maxpool-conv(groups)-ReLU-avgpool-flatten-linear-ReLU-dropout-linear."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.ReLU(), nn.AvgPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 2 * 2, 7), nn.ReLU(), nn.Dropout(0.5), nn.Linear(7, 5))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            bn = self.features[1]
            bn.running_mean.copy_(torch.randn(4, generator=g) * 0.2)
            bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
        self.eval()

    def forward(self, x):
        return self.head(self.features(x))


def oracle(net, x, t, rules):
    """Layer-by-layer float64 oracle: BN merged into the first conv, activations pass, max pooling
    routes relevance to the winner, average pooling is the norm rule."""
    f, h = net.features, net.head
    conv1, bn = f[0], f[1]
    scale = bn.weight / (bn.running_var + bn.eps) ** 0.5
    w1 = conv1.weight * scale.view(-1, 1, 1, 1)
    b1 = (conv1.bias - bn.running_mean) * scale + bn.bias
    g1 = ConvGeom((1, 1), (1, 1), (1, 1), 1)
    g2 = ConvGeom((1, 1), (1, 1), (1, 1), 2)
    with torch.no_grad():
        z1 = ref._fwd(x, w1, b1, g1)
        a1 = z1.clamp(min=0)
        p1, idx = nn.functional.max_pool2d(a1, 2, return_indices=True)
        z2 = ref._fwd(p1, f[4].weight, f[4].bias, g2)
        a2 = z2.clamp(min=0)
        p2 = nn.functional.avg_pool2d(a2, 2)
        v = p2.flatten(1)
        z3 = nn.functional.linear(v, h[1].weight, h[1].bias)
        a3 = z3.clamp(min=0)
        out = nn.functional.linear(a3, h[4].weight, h[4].bias)
        r = torch.zeros_like(out)
        r[torch.arange(len(t)), t] = out[torch.arange(len(t)), t]
        r = ref.dense_layer_rule(a3, h[4].weight, h[4].bias, r, None, rules["head.4"])
        r = ref.dense_layer_rule(v, h[1].weight, h[1].bias, r, None, rules["head.1"])
        r = r.view_as(p2)
        r = ref.dense_norm(a2, r, lambda e: nn.functional.avg_pool2d(e, 2), 1e-6)
        r = ref.dense_layer_rule(p1, f[4].weight, f[4].bias, r, g2, rules["features.4"])
        r = torch.zeros_like(a1).flatten(2).scatter_add_(2, idx.flatten(2), r.flatten(2)).view_as(a1)
        r = ref.dense_layer_rule(x, w1, b1, r, g1, rules["features.0"])
    return out, r


RULESETS = {
    "plus": {"features.0": L.ZPlus(), "features.4": L.ZPlus(), "head.1": L.Epsilon(0.01), "head.4": L.Epsilon()},
    "ab_gamma": {"features.0": L.AlphaBeta(2, 1), "features.4": L.Gamma(0.3), "head.1": L.AlphaBeta(3, 2),
                 "head.4": L.Epsilon(0.1)},
    "box_flat": {"features.0": L.ZBox(-2.0, 2.0), "features.4": L.Flat(), "head.1": L.WSquare(), "head.4": L.ZPlus()},
}


@pytest.mark.parametrize("rules", sorted(RULESETS))
@pytest.mark.parametrize("batch", [1, 3])
def test_model_matches_layerwise_oracle(rules, batch):
    net = Net().to(D)
    x = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch), dtype=D)
    t = torch.arange(batch) % 5
    rs = RULESETS[rules]
    rel = lrp(net, x, t, composite=dict(rs))
    out, exp = oracle(net, x, t, {k: v.params() for k, v in rs.items()})
    torch.testing.assert_close(rel, exp, rtol=1e-9, atol=1e-12 * (exp.abs().max().item() + 1))


def test_named_preset_assignment_and_conservation():
    """epsilon_plus on a bias-free ReLU net: z⁺ and ε conserve, Σ R = f_t(x)."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(5, 4, 3, bias=False),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3, bias=False)).to(D).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=D))
    x = torch.rand(2, 3, 12, 11, generator=g, dtype=D)
    rel, lay = lrp(net, x, [0, 2], composite="epsilon_plus", layers=["3", "7"])
    score = net(x)[[0, 1], [0, 2]]
    torch.testing.assert_close(rel.sum((1, 2, 3)), score, rtol=1e-6, atol=1e-9)
    # relevance readable at intermediate layers, conserved there too
    torch.testing.assert_close(lay["3"].sum((1, 2, 3)), score, rtol=1e-6, atol=1e-9)
    assert lay["7"].shape == (2, 3)
    # one_hot init is the score init divided by the score
    rel1 = lrp(net, x, [0, 2], composite="epsilon_plus", init="one_hot")
    torch.testing.assert_close(rel1 * score.view(-1, 1, 1, 1), rel)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        from xaikernels.models.zoo import BasicBlock

        g = torch.Generator().manual_seed(1)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(4, 4), BasicBlock(4, 6, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3, bias=False)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):  # an identity BatchNorm: the merge adds no bias
                m.eps = 0.0
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=g))
        self.eval()

    def forward(self, x):
        return self.fc(self.pool(self.layer1(self.relu(self.conv1(x)))).flatten(1))


@BN_EPS0
def test_residual_canonizer_conserves():
    net = TinyResNet().to(D)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=D)
    # ε → 0 without biases conserves exactly through every layer, the residual sums included
    comp = {nn.Conv2d: L.Epsilon(1e-12), nn.Linear: L.Epsilon(1e-12)}
    rel = lrp(net, x, 1, composite=comp)
    torch.testing.assert_close(rel.sum((1, 2, 3)), net(x)[:, 1], rtol=1e-6, atol=1e-9)
    # Without the residual canonizer the addition duplicates relevance: conservation breaks.
    rel_nc = lrp(net, x, 1, composite=comp, canonizers=["merge_batchnorm"])
    assert not torch.allclose(rel_nc.sum((1, 2, 3)), net(x)[:, 1], rtol=1e-3)


def test_explicit_residual_sum_module():
    class AddNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)
            self.add = L.ResidualSum()
            self.out = nn.Linear(4, 2, bias=False)

        def forward(self, x):
            return self.out(self.add(self.a(x), self.b(x)))

    net = AddNet().to(D).eval()
    x = torch.randn(3, 4, dtype=D)
    rel = lrp(net, x, 0, composite={nn.Linear: L.Epsilon(1e-12), L.ResidualSum: L.Norm(1e-12)})
    # each branch gets x * its share; total conserved (ε → 0, no bias)
    torch.testing.assert_close(rel.sum(1), net(x)[:, 0], rtol=1e-6, atol=1e-9)


def snapshot_plus(model):
    s = snapshot(model)
    s["dicts"] = [sorted(k for k in m.__dict__ if k == "forward") for m in model.modules()]
    return s


def test_model_unchanged_after_success_and_error():
    net = Net()
    net.features[0].register_forward_hook(lambda *a: None)
    net.head[1].weight.requires_grad_(False)
    before = snapshot_plus(net)
    ptrs = {k: v.data_ptr() for k, v in net.state_dict().items()}
    lrp(net, torch.randn(2, 3, 8, 8), 1, composite="epsilon_gamma_box", composite_kwargs={"low": -3, "high": 3})
    assert_same(before, snapshot_plus(net))
    assert before["dicts"] == snapshot_plus(net)["dicts"]
    with pytest.raises(IndexError):
        lrp(net, torch.randn(2, 3, 8, 8), 9)  # fails after the forward pass, rules installed
    after = snapshot_plus(net)
    assert_same(before, after)
    assert before["dicts"] == after["dicts"] and all(not d for d in after["dicts"])
    assert ptrs == {k: v.data_ptr() for k, v in net.state_dict().items()}  # BatchNorm never rewritten


def test_errors():
    net = Net()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown composite 'epsilon_plsu'.*epsilon_plus"):
        lrp(net, x, 0, composite="epsilon_plsu")
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        L.AlphaBeta(2.0, 2.0)
    with pytest.raises(ValueError, match="needs the input bounds"):
        lrp(net, x, 0, composite="epsilon_gamma_box")
    with pytest.raises(ValueError, match="both input bounds"):
        L.ZBox()
    with pytest.raises(ValueError, match="unknown LRP rule"):
        lrp(net, x, 0, composite={nn.Conv2d: "gamam"})

    class Tuple(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x), x

    with pytest.raises(TypeError, match="single tensor"):
        lrp(Tuple(), torch.randn(2, 3), 0)

    ln = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.LayerNorm(4)), nn.Linear(4, 2))
    with pytest.raises(TypeError, match=r"unsupported layer '1\.0' \(LayerNorm\)"):
        lrp(ln, torch.randn(2, 4), 0)
    assert all("forward" not in m.__dict__ for m in ln.modules())
    rel = lrp(ln, torch.randn(2, 4), 0, unsupported="gradient")  # explicit opt-in
    assert rel.shape == (2, 4) and torch.isfinite(rel).all()
    with pytest.raises(TypeError, match=r"layer '0' \(Linear\) has no LRP rule"):
        lrp(ln, torch.randn(2, 4), 0, composite={nn.LayerNorm: "gradient", "2": "epsilon"})
    with pytest.raises(TypeError, match="cannot be applied"):
        lrp(ln, torch.randn(2, 4), 0, composite={nn.LayerNorm: "zplus"})


def test_merge_check_catches_wrong_order():
    class Swapped(nn.Module):  # BN declared after conv but applied to the input
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.bn(x)).mean((2, 3)))

    with pytest.raises(RuntimeError, match="does not consume that layer's output"):
        lrp(Swapped().eval(), torch.randn(1, 3, 4, 4), 0, unsupported="gradient")


@pytest.mark.skipif(_backend._available("triton", "lrp_linear", torch.device("cpu")) is not None,
                    reason="Triton interpreter not enabled")
def test_triton_backend_end_to_end():
    net = Net().to(D)
    x = torch.randn(2, 3, 8, 8, dtype=D)
    for comp in ("epsilon_plus_flat", "epsilon_alpha2_beta1"):
        a = lrp(net, x, 1, composite=comp, backend="reference")
        b = lrp(net, x, 1, composite=comp, backend="triton")
        assert xaikernels.last_backend("lrp_conv") == "triton"
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


class _AutogradMaxPool1d(nn.MaxPool1d):
    def forward(self, x):  # an overridden forward: LRP leaves it to autograd's own max pooling
        return super().forward(x)


class _AutogradMaxPool3d(nn.MaxPool3d):
    def forward(self, x):
        return super().forward(x)


@pytest.mark.parametrize("dims", [1, 3])
def test_max_pool_indices_only_equals_autograd_pool(dims):
    """Stock max pooling runs with a backward that keeps only its indices: same relevance as
    autograd's own op (overlapping windows, padding, ceil mode, 1-d and 3-d, batch 1)."""
    torch.manual_seed(0)
    if dims == 1:
        def make(pool):
            return nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), pool(3, stride=2, padding=1, ceil_mode=True),
                                 nn.Flatten(), nn.Linear(3 * 9, 4))
        x = torch.randn(1, 2, 17, dtype=D)
        stock, own = nn.MaxPool1d, _AutogradMaxPool1d
    else:
        def make(pool):
            return nn.Sequential(nn.Conv3d(2, 3, 2, padding=1), nn.ReLU(), pool(2, stride=(1, 2, 2), dilation=1),
                                 nn.Flatten(), nn.Linear(3 * 4 * 3 * 3, 4))
        x = torch.randn(2, 2, 4, 5, 5, dtype=D)
        stock, own = nn.MaxPool3d, _AutogradMaxPool3d
    a = make(stock).to(D).eval()
    b = make(own).to(D).eval()
    b.load_state_dict(a.state_dict())
    ra = lrp(a, x, 1, composite="epsilon_plus")
    rb = lrp(b, x, 1, composite="epsilon_plus", unsupported="gradient")
    torch.testing.assert_close(ra, rb, rtol=1e-12, atol=1e-14)
