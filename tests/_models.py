"""Small test models and textbook activation-rule oracles shared by the method tests."""
import copy

import torch
from torch import nn


class GuidedReluFn(torch.autograd.Function):
    """Guided backprop at a ReLU, written out: forward mask times positive gradient."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return (x > 0).to(g.dtype) * g.clamp(min=0)


class DeconvReluFn(torch.autograd.Function):
    """Deconvnet at a ReLU: positive gradient, no forward mask."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        return g.clamp(min=0)


class _RuleReLU(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn.apply(x)


def rule_copy(model, fn):
    """A copy of ``model`` whose nn.ReLU modules apply ``fn`` (the textbook rule)."""
    m = copy.deepcopy(model)
    for mod in list(m.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(mod, child_name, _RuleReLU(fn))
    return m


class SmallCNN(nn.Module):
    """conv-relu(in-place)-conv-relu-pool-conv-relu → GAP → linear (CAM-compatible)."""

    def __init__(self, in_ch=3, classes=5, inplace=True, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, 6, 3, padding=1), nn.ReLU(inplace=inplace),
            nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 7, 3, padding=1), nn.ReLU(inplace=inplace),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(7, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class MLP(nn.Module):
    def __init__(self, d=13, classes=4, seed=1):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(d, 11), nn.ReLU(), nn.Linear(11, 9), nn.ReLU(), nn.Linear(9, classes))

    def forward(self, x):
        return self.net(x)
