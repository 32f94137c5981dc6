"""The user's model comes back exactly as it came — on success and after an exception."""

import pytest
import torch
from torch import nn

import xaikernels as xk

from _models import SmallCNN

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "ptrs": [p.data_ptr() for p in model.parameters()],
        "params": [id(p) for p in model.parameters()],
        "modules": [(n, id(m), type(m)) for n, m in model.named_modules()],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [{d: list(getattr(m, d).items()) for d in HOOK_DICTS} for m in model.modules()],
        "attrs": [(getattr(m, "inplace", None)) for m in model.modules()],
    }


def assert_same(a, b):
    assert a["ptrs"] == b["ptrs"] and a["params"] == b["params"] and a["modules"] == b["modules"]
    assert a["training"] == b["training"]
    assert a["requires_grad"] == b["requires_grad"]
    assert a["hooks"] == b["hooks"]
    assert a["attrs"] == b["attrs"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    for ga, gb in zip(a["grad"], b["grad"]):
        assert (ga is None) == (gb is None) and (ga is None or torch.equal(ga, gb))


def prepared_model():
    m = SmallCNN().eval()
    # The user's own state that must survive: hooks, a frozen layer, an existing .grad,
    # a submodule deliberately left in train mode (no BN/Dropout, so allowed).
    calls = []
    m.features[0].register_forward_hook(lambda mod, i, o: calls.append("fwd"))
    m.fc.register_forward_pre_hook(lambda mod, i: None)
    m.features[2].weight.requires_grad_(False)
    m.fc.bias.grad = torch.ones_like(m.fc.bias)
    m.pool.train()
    return m, calls


METHODS = {
    "saliency": lambda m, x, t: xk.saliency(m, x, t),
    "input_x_gradient": lambda m, x, t: xk.input_x_gradient(m, x, t),
    "guided_backprop": lambda m, x, t: xk.guided_backprop(m, x, t),
    "deconvnet": lambda m, x, t: xk.deconvnet(m, x, t),
    "grad_cam": lambda m, x, t: xk.grad_cam(m, x, t, layer="features.5"),
    "guided_grad_cam": lambda m, x, t: xk.guided_grad_cam(m, x, t, layer="features.5"),
    "cam": lambda m, x, t: xk.cam(m, x, t, layer="features.6"),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_model_unchanged_after_success(name):
    m, calls = prepared_model()
    before = snapshot(m)
    with pytest.warns(UserWarning, match="train mode"):  # the root is eval, pool is train
        METHODS[name](m, torch.randn(2, 3, 8, 8), [0, 1])
    assert_same(before, snapshot(m))
    assert calls, "the user's own hook must still run during attribution"
    # and the model still computes the same thing afterwards
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(m(x), SmallCNN().eval()(x))


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("where", ["forward", "backward", "target"])
def test_model_unchanged_after_exception(name, where):
    m, _ = prepared_model()
    before = snapshot(m)
    target = [0, 1]
    if where == "forward":
        # Raise inside the forward pass, after our hooks on earlier layers have fired.
        def bomb(mod, inp):
            raise Boom("forward failure")
        h = m.fc.register_forward_pre_hook(bomb)
    elif where == "backward":
        def bomb_b(mod, gin, gout):
            raise Boom("backward failure")
        if name == "cam":  # forward only: nothing to fail in backward
            pytest.skip("cam runs no backward pass")
        h = m.fc.register_full_backward_hook(bomb_b)
    else:
        h = None
        target = [0, 99]  # out of range: discovered after the forward pass
    if h is not None:
        before = snapshot(m)
    with pytest.warns(UserWarning, match="train mode"):
        with pytest.raises((Boom, IndexError)):
            METHODS[name](m, torch.randn(2, 3, 8, 8), target)
    assert_same(before, snapshot(m))


def test_deconvnet_restores_inplace_flag():
    m = SmallCNN(inplace=True).eval()
    flags = [mod.inplace for mod in m.modules() if isinstance(mod, nn.ReLU)]
    assert any(flags)
    xk.deconvnet(m, torch.randn(1, 3, 8, 8), 0)
    assert [mod.inplace for mod in m.modules() if isinstance(mod, nn.ReLU)] == flags
