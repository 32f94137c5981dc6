"""Zennit's attributor API in ``xaikernels.zennit``: ``Gradient``, ``SmoothGrad``,
``IntegratedGradients``, ``Occlusion`` (+ ``occlude_independent``, ``identity``,
``constant``) with Zennit's semantics — one model call per iteration / window, Zennit's noise
and path, output-attribution precedence — and, where zennit is installed, Zennit's numbers
with Zennit composites (LRP on our engine inside every iteration).  Zennit's own
``tests/test_attribution.py`` passes 9314/9314 with the import swapped."""
import importlib.util
from functools import partial

import pytest
import torch
from torch import nn

import xaikernels.zennit as xz


class Logger(nn.Module):
    """Identity that records every input it sees."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.seen[-1]


def _mlp(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return m


def _convnet(c_in, c_mid, seed):
    """conv 3×3 → ReLU → linear to 3 classes on 6×6 inputs, random float64 weights; (model, x)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(c_in, c_mid, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(c_mid * 4 * 4, 3)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model, torch.randn(2, c_in, 6, 6, generator=g, dtype=torch.float64)


def test_output_attribution_forms_and_precedence():
    x = torch.randn(3, 4, dtype=torch.float64)
    for init, call, exp in [(None, None, x), (torch.ones_like, None, torch.ones_like(x)),
                            (2 * x, None, 2 * x), (torch.ones_like, torch.zeros_like, torch.zeros_like(x)),
                            (None, 3 * x, 3 * x)]:
        with xz.Gradient(Logger(), attr_output=init) as attributor:
            out, grad = attributor(x, attr_output=call)
        torch.testing.assert_close(grad, exp)
        torch.testing.assert_close(out, x)
        assert attributor.last_backend == "autograd"
    assert xz.constant(5)(1, a=2) == 5 and xz.identity(x) is x
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        xz.Gradient(Logger())([x])


def test_smooth_grad_iterations_noise_and_mean():
    torch.manual_seed(0)
    x = torch.randn(2, 50, dtype=torch.float64)
    m = Logger()
    out, grad = xz.SmoothGrad(m, noise_level=0.2, n_iter=40, attr_output=torch.ones_like)(x)
    assert len(m.seen) == 40
    torch.testing.assert_close(m.seen[-1], x)  # the last iteration is noise-free
    std = 0.2 * (x.amax(1) - x.amin(1))
    noise = torch.stack(m.seen[:-1]) - x
    ratio = noise.std(dim=(0, 2)) / std
    assert ((ratio > 0.9) & (ratio < 1.1)).all(), ratio
    torch.testing.assert_close(grad, torch.ones_like(x))
    torch.testing.assert_close(out, x)
    # one iteration: the gradient itself
    mlp = _mlp()
    g1 = xz.SmoothGrad(mlp, n_iter=1)(x[:, :6].contiguous())[1]
    torch.testing.assert_close(g1, xz.Gradient(mlp)(x[:, :6].contiguous())[1])


@pytest.mark.parametrize("baseline_fn", [None, torch.ones_like])
def test_integrated_gradients_path_and_single_step(baseline_fn):
    x = torch.randn(3, 6, dtype=torch.float64)
    m = Logger()
    _, grad = xz.IntegratedGradients(m, n_iter=10, baseline_fn=baseline_fn, attr_output=torch.ones_like)(x)
    b = torch.zeros_like(x) if baseline_fn is None else baseline_fn(x)
    assert len(m.seen) == 10
    for k, step in enumerate(m.seen, 1):
        torch.testing.assert_close(step, b + (k / 10) * (x - b))
    torch.testing.assert_close(grad, x - b)
    mlp = _mlp(1)
    out, g = xz.IntegratedGradients(mlp, n_iter=1, baseline_fn=baseline_fn)(x)
    _, g0 = xz.Gradient(mlp)(x)
    torch.testing.assert_close(g, g0 * (x - b))
    torch.testing.assert_close(out, mlp(x))


@pytest.mark.parametrize("window,stride", [(1, 1), (2, 2), ((3,), (3,)), ((2, 2), (2, 2))])
def test_occlusion_windows_partition_the_input(window, stride):
    x = torch.randn(2, 4, 6, dtype=torch.float64)  # sizes divisible by the windows (Zennit rolls the mask)
    m = Logger()
    keep = partial(xz.occlude_independent, fill_fn=torch.zeros_like, invert=False)  # keep only the window
    xz.Occlusion(m, window=window, stride=stride, occlusion_fn=keep)(x)
    torch.testing.assert_close(sum(m.seen[:-1]), x)  # disjoint windows add up to the input
    torch.testing.assert_close(m.seen[-1], x)  # the last call is the input itself


def test_occlusion_scores_and_type_checks():
    mlp = _mlp(2)
    x = torch.randn(2, 6, dtype=torch.float64)
    out, score = xz.Occlusion(mlp, window=(6,), stride=(6,))(x)  # one window: the whole row, kept
    torch.testing.assert_close(out, mlp(x))
    torch.testing.assert_close(score, mlp(x).sum(1, keepdim=True).expand_as(x))
    drop = partial(xz.occlude_independent, fill_fn=torch.ones_like, invert=True)
    _, score = xz.Occlusion(mlp, window=(3,), stride=(3,), occlusion_fn=drop)(x)
    for lo in (0, 3):
        xo = x.clone()
        xo[:, lo:lo + 3] = 1.0
        torch.testing.assert_close(score[:, lo:lo + 3], mlp(xo).sum(1, keepdim=True).expand(2, 3))
    for bad in ("monkey", [3], (1.5,), range(2)):
        with pytest.raises(TypeError):
            xz.Occlusion(mlp, window=bad)
        with pytest.raises(TypeError):
            xz.Occlusion(mlp, stride=bad)


def test_inactive_gives_the_plain_gradient():
    mlp = _mlp(3)
    x = torch.randn(2, 6, dtype=torch.float64)
    attributor = xz.Gradient(mlp, xz.EpsilonPlus())
    _, lrp = attributor(x)
    assert attributor.last_backend == "xaikernels"
    with attributor.inactive:
        _, g = attributor(x)
    assert attributor.last_backend == "autograd"
    torch.testing.assert_close(g, xz.Gradient(mlp)(x)[1])
    assert not torch.allclose(g, lrp)
    with pytest.raises(ValueError, match="create_graph"):
        xz.Gradient(mlp, xz.EpsilonPlus(), create_graph=True)(x)


# --------------------------------------------------------------------------- peer: zennit
needs_zennit = pytest.mark.skipif(importlib.util.find_spec("zennit") is None, reason="zennit not installed")


def _zennit():
    import _zennit_stub

    _zennit_stub.install()
    from zennit import attribution as za
    from zennit import composites as zc

    return za, zc


@pytest.mark.peer
@needs_zennit
@pytest.mark.parametrize("cls,kw", [("SmoothGrad", dict(noise_level=0.3, n_iter=5)),
                                    ("IntegratedGradients", dict(n_iter=6)),
                                    ("Gradient", {})])
@pytest.mark.parametrize("comp", ["EpsilonPlusFlat", "EpsilonAlpha2Beta1", "GuidedBackprop", None])
def test_attributors_equal_zennit(cls, kw, comp):
    """Same seed, same composite: the same numbers as Zennit's attributor (our LRP engine per
    iteration; GuidedBackprop through Zennit's hooks)."""
    za, zc = _zennit()
    g = torch.Generator().manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(5 * 5 * 5, 4)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.4)
    x = torch.randn(2, 3, 7, 7, generator=g, dtype=torch.float64)
    onehot = torch.eye(4, dtype=torch.float64)[[1, 3]]
    make = (lambda: None) if comp is None else getattr(zc, comp)
    torch.manual_seed(7)
    with getattr(za, cls)(model, make(), attr_output=onehot, **kw) as attributor:
        zo, zr = attributor(x.clone())
    torch.manual_seed(7)
    ours = getattr(xz, cls)(model, make(), attr_output=onehot, **kw)
    xo, xr = ours(x.clone())
    torch.testing.assert_close(xo, zo, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xr, zr, rtol=1e-9, atol=1e-12 * zr.abs().max().item())
    assert ours.last_backend == {None: "autograd", "GuidedBackprop": "zennit"}.get(comp, "xaikernels")
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


# ------------------------------------------------------------------ composite.context(model)
def _state(model):
    return ([p.detach().clone() for p in model.parameters()], [b.clone() for b in model.buffers()],
            [("forward" in m.__dict__, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for m in model.modules()], [m.training for m in model.modules()])


def _same_state(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
    assert a[2] == b[2] and a[3] == b[3]


@pytest.mark.parametrize("kind", ["vgg", "resnet"])
def test_composite_context_gradient_is_the_relevance(kind):
    """Zennit's usage: inside ``composite.context(model)`` the input gradient is the LRP
    relevance (same as the attributor); the model comes back as it was, also after an error."""
    from xaikernels.models.zoo import resnet18_like, vgg16_like

    if kind == "vgg":
        model = vgg16_like(width=4, num_classes=5).double().eval()
        x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
        comp = lambda: xz.EpsilonPlusFlat()  # noqa: E731
    else:
        model = resnet18_like(num_classes=5, width=4).double().eval()
        x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        comp = lambda: xz.EpsilonAlpha2Beta1Flat(canonizers=xz.ResNetCanonizer())  # noqa: E731
    onehot = torch.eye(5, dtype=torch.float64)[[1, 4]]
    before = _state(model)
    exp_out, exp = xz.Gradient(model, comp())(x, onehot)
    c = comp()
    with c.context(model) as modified:
        assert modified is model and c.handles
        xg = x.clone().requires_grad_(True)
        out = modified(xg)
        (rel,) = torch.autograd.grad(out, xg, onehot)
    assert not c.handles
    torch.testing.assert_close(out.detach(), exp_out)
    torch.testing.assert_close(rel, exp, rtol=1e-10, atol=1e-12)
    _same_state(before, _state(model))
    # the plain gradient again after the context
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg), xg, onehot)
    torch.testing.assert_close(g, xz.Gradient(model)(x, onehot)[1])
    with pytest.raises(RuntimeError, match="boom"):
        with c.context(model):
            raise RuntimeError("boom")
    _same_state(before, _state(model))
    c.register(model)
    c.remove()
    _same_state(before, _state(model))


@pytest.mark.peer
@needs_zennit
@pytest.mark.parametrize("name", ["EpsilonPlusFlat", "EpsilonAlpha2Beta1", "EpsilonGammaBox"])
def test_composite_context_equals_zennit(name):
    za, zc = _zennit()
    g = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(5 * 2 * 2, 3)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    onehot = torch.eye(3, dtype=torch.float64)[[0, 2]]
    kw = dict(low=-3.0, high=3.0) if name == "EpsilonGammaBox" else {}
    rels = []
    for comp in (getattr(zc, name)(**kw), getattr(xz, name)(**kw)):
        with comp.context(model) as modified:
            xg = x.clone().requires_grad_(True)
            (r,) = torch.autograd.grad(modified(xg), xg, onehot)
        rels.append(r)
    torch.testing.assert_close(rels[1], rels[0], rtol=1e-9, atol=1e-12 * rels[0].abs().max().item())


@pytest.mark.peer
@needs_zennit
@pytest.mark.parametrize("name", ["EpsilonPlus", "EpsilonPlusFlat", "EpsilonAlpha2Beta1", "EpsilonAlpha2Beta1Flat",
                                  "EpsilonGammaBox"])
def test_preset_signatures_equal_zennit(name):
    """Zennit's parameter names, order and defaults (``None`` maps), so positional calls bind alike."""
    import inspect

    za, zc = _zennit()
    theirs = list(inspect.signature(getattr(zc, name).__init__).parameters.values())[1:]
    ours = list(inspect.signature(getattr(xz, name)).parameters.values())
    assert [p.name for p in ours] == [p.name for p in theirs]
    assert [p.default for p in ours] == [p.default for p in theirs]


@pytest.mark.peer
@needs_zennit
def test_preset_takes_zennit_rules_in_layer_map_and_refuses_zero_params():
    za, zc = _zennit()
    from zennit import rules as zr

    model, x = _convnet(2, 3, seed=6)
    onehot = torch.eye(3, dtype=torch.float64)[[0, 1]]
    lm = [(nn.Linear, zr.Epsilon(epsilon=0.3))]
    with za.Gradient(model, zc.EpsilonPlus(layer_map=lm)) as a:
        _, exp = a(x.clone(), onehot)
    attributor = xz.Gradient(model, xz.EpsilonPlus(1e-6, 1e-6, lm))  # positional, as Zennit's
    _, got = attributor(x.clone(), onehot)
    assert attributor.last_backend == "xaikernels"
    torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12)
    with pytest.raises(NotImplementedError, match="zero_params"):
        xz.EpsilonPlusFlat(zero_params=["bias"])


def test_resnet_canonizer_inside_a_list_as_in_zennit():
    """Zennit writes ``canonizers=[ResNetCanonizer()]``; ours is a group of canonizers, spliced."""
    from xaikernels.models.zoo import resnet18_like

    m = resnet18_like(num_classes=5, width=4).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    onehot = torch.eye(5, dtype=torch.float64)[[1, 3]]
    _, r1 = xz.Gradient(m, xz.EpsilonPlusFlat(canonizers=[xz.ResNetCanonizer()]))(x, onehot)
    _, r2 = xz.Gradient(m, xz.EpsilonPlusFlat(canonizers=xz.ResNetCanonizer()))(x, onehot)
    _, r0 = xz.Gradient(m, xz.EpsilonPlusFlat())(x, onehot)
    torch.testing.assert_close(r1, r2, rtol=0, atol=0)
    assert not torch.allclose(r1, r0)  # the canonizers did something
    with pytest.raises(TypeError, match="unsupported canonizer"):
        xz.Gradient(m, xz.EpsilonPlusFlat(canonizers=[[object()]]))(x, onehot)


def test_with_block_installs_the_rules_as_zennit_does():
    """Inside ``with Gradient(model, composite)`` the model itself computes the relevance (a
    user's own forward/backward too), ``inactive`` gives the plain gradient for its block, and
    leaving the block hands the model back unchanged."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    onehot = torch.eye(3, dtype=torch.float64)[[0, 2]]
    before = _state(model)
    _, exp = xz.Gradient(model, xz.EpsilonPlusFlat())(x, onehot)  # per call, outside any block
    _, plain = xz.Gradient(model)(x, onehot)
    with xz.Gradient(model, xz.EpsilonPlusFlat()) as attributor:
        xg = x.clone().requires_grad_(True)
        (own,) = torch.autograd.grad(model(xg), xg, onehot)  # the user's own pass
        _, rel = attributor(x, onehot)
        assert attributor.last_backend == "xaikernels"
        with attributor.inactive:
            _, g = attributor(x, onehot)
        _, rel2 = attributor(x, onehot)
    for r in (own, rel, rel2):
        torch.testing.assert_close(r, exp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g, plain)
    _same_state(before, _state(model))
    # a preset given by name brings the functional-additions canonizer: installed per call instead
    with xz.Gradient(model, "epsilon_plus_flat") as attributor:
        assert attributor._held is None
        _, rel3 = attributor(x, onehot)
    torch.testing.assert_close(rel3, exp, rtol=1e-12, atol=1e-14)
    _same_state(before, _state(model))


@pytest.mark.peer
@needs_zennit
@pytest.mark.parametrize("name,backend", [("EpsilonAlpha2Beta1", "xaikernels"), ("GuidedBackprop", "zennit")])
def test_with_block_zennit_composite(name, backend):
    za, zc = _zennit()
    model, x = _convnet(3, 4, seed=8)
    onehot = torch.eye(3, dtype=torch.float64)[[1, 2]]
    with za.Gradient(model, getattr(zc, name)()) as attributor:
        _, exp = attributor(x.clone(), onehot)
    before = _state(model)
    comp = getattr(zc, name)()
    with xz.Gradient(model, comp) as attributor:
        xg = x.clone().requires_grad_(True)
        (own,) = torch.autograd.grad(model(xg), xg, onehot)
        _, rel = attributor(x.clone(), onehot)
        assert attributor.last_backend == backend
    torch.testing.assert_close(own, exp, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rel, exp, rtol=1e-10, atol=1e-12)
    assert not comp.handles
    _same_state(before, _state(model))
