"""LRP rule ops on every backend against the dense closed-form oracle (float64, term by term).

Each case runs ``lrp_layer`` forward (the layer output) and backward (the rule) and compares
with :func:`xaikernels.reference.lrp.dense_layer_rule`, which writes the layer out as an explicit
matrix per example and evaluates the rule formula contribution by contribution.  Lower
precisions: the error against the float64 oracle is at most 2× that of the oracle itself run
in that precision (plain torch).
"""
import pytest
import torch
import torch.nn.functional as F

import xaikernels
from xaikernels import _backend
from xaikernels.ops import lrp as ops
from xaikernels.ops.lrp import lrp_layer
from xaikernels.reference import lrp as ref
from xaikernels.reference.lrp import ConvGeom, RuleParams

from conftest import TOL

RULES = {
    "epsilon": RuleParams("epsilon", eps=1e-2),
    "zplus": RuleParams("zplus", eps=1e-6),
    "alpha2beta1": RuleParams("alphabeta", eps=1e-6, alpha=2.0, beta=1.0),
    "alpha3beta2": RuleParams("alphabeta", eps=1e-6, alpha=3.0, beta=2.0),
    "gamma": RuleParams("gamma", eps=1e-6, gamma=0.25),
    "zbox": RuleParams("zbox", eps=1e-6, low=-2.5, high=2.5),
    "flat": RuleParams("flat", eps=1e-6),
    "wsquare": RuleParams("wsquare", eps=1e-6),
    "captum_gamma": RuleParams("epsilon", eps=1e-9, gamma=0.3, wmod="gamma"),
    "captum_plus_nobias": RuleParams("epsilon", eps=1e-9, wmod="positive", zero_bias=True),
}

# (name, in_shape (N, ...), weight shape, geom or None)
LAYERS = {
    "linear_5x7": ((3, 7), (5, 7), None),
    "linear_b1_leading": ((1, 2, 9), (4, 9), None),
    "conv2d_stride_pad_dil": ((2, 3, 7, 6), (4, 3, 3, 3), ConvGeom((2, 1), (1, 2), (2, 1), 1)),
    "conv2d_groups": ((1, 4, 5, 5), (6, 2, 3, 2), ConvGeom((1, 1), (1, 0), (1, 1), 2)),
    "conv2d_depthwise": ((2, 3, 6, 5), (3, 1, 3, 3), ConvGeom((2, 2), (1, 1), (1, 1), 3)),
    # TensorFlow "SAME" padding as in EfficientNet ports: explicit asymmetric zero padding
    "conv2d_depthwise_prepad": ((2, 3, 7, 6), (3, 1, 3, 3), ConvGeom((2, 2), (0, 0), (1, 1), 3, (0, 1, 1, 2))),
    "conv1d": ((2, 3, 11), (5, 3, 4), ConvGeom((3,), (2,), (1,), 1)),
    "conv3d": ((1, 2, 3, 4, 4), (3, 2, 2, 2, 3), ConvGeom((1, 1, 2), (0, 1, 1), (1, 1, 1), 1)),
    # outputs large next to the weights: the torch backend's stacked [W; W⁺] path for αβ/γ
    "conv2d_wide_stride_dil": ((2, 3, 13, 12), (4, 3, 2, 3), ConvGeom((1, 2), (1, 1), (2, 1), 1)),
    "conv2d_wide_groups_b1": ((1, 4, 11, 9), (6, 2, 3, 2), ConvGeom((1, 1), (1, 0), (1, 1), 2)),
    "conv1d_wide_dil_prepad": ((2, 3, 40), (4, 3, 3), ConvGeom((1,), (1,), (2,), 1, (1, 2))),
}


def _backends(geom):
    op = "lrp_linear" if geom is None else "lrp_conv"
    out = ["reference"]
    if _backend._available("triton", op, torch.device("cpu")) is None:
        out.append("triton")
    return out


def _data(layer, signed, seed):
    in_shape, w_shape, geom = LAYERS[layer]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(in_shape, generator=g, dtype=torch.float64)
    if not signed:
        x = x.clamp(min=0)  # as after a ReLU: exact zeros included
    w = torch.randn(w_shape, generator=g, dtype=torch.float64)
    b = torch.randn(w_shape[0], generator=g, dtype=torch.float64) * 0.3
    return x, w, b, geom, g


def _run(x, w, b, geom, rule, r, backend):
    xg = x.detach().requires_grad_(True)
    z = lrp_layer(xg, lambda: (w, b), rule, geom, backend)
    (rel,) = torch.autograd.grad(z, xg, r)
    return z.detach(), rel


def _oracle(x, w, b, geom, rule, r):
    """Oracle in float64 on the given (possibly rounded) values."""
    b64 = None if b is None else b.double()
    return (ref._fwd(x.double(), w.double(), b64, geom),
            ref.dense_layer_rule(x.double(), w.double(), b64, r.double(), geom, rule))


CASES = [(layer, rule) for layer in LAYERS for rule in RULES]


@pytest.mark.parametrize("layer,rule_name", CASES)
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_rule_float64_vs_oracle(layer, rule_name, signed, bias):
    x, w, b, geom, g = _data(layer, signed, seed=hash((layer, rule_name, signed)) % 2**31)
    b = b if bias else None
    rule = RULES[rule_name]
    z_o = ref._fwd(x, w, b, geom)
    r = torch.randn(z_o.shape, generator=g, dtype=torch.float64)
    z_exp, rel_exp = _oracle(x, w, b, geom, rule, r)
    rtol, atol = TOL[torch.float64]
    for backend in _backends(geom):
        z, rel = _run(x, w, b, geom, rule, r, backend)
        assert xaikernels.last_backend("lrp_linear" if geom is None else "lrp_conv") == backend
        assert z.shape == z_exp.shape and rel.shape == x.shape and rel.dtype == x.dtype
        torch.testing.assert_close(z, z_exp, rtol=rtol, atol=atol)
        # Relevance divides by z: allow for the conditioning of the smallest denominators.
        scale = rel_exp.abs().max().item() + 1.0
        torch.testing.assert_close(rel, rel_exp, rtol=1e-9, atol=1e-11 * scale, msg=lambda m: f"{backend}: {m}")


@pytest.mark.parametrize("layer", ["linear_5x7", "conv2d_groups", "conv2d_stride_pad_dil"])
@pytest.mark.parametrize("rule_name", ["epsilon", "zplus", "alpha2beta1", "gamma", "zbox"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_error_within_2x_of_plain_torch(layer, rule_name, dtype):
    x, w, b, geom, g = _data(layer, True, seed=7)
    rule = RULES[rule_name]
    z64 = ref._fwd(x, w, b, geom)
    r = torch.randn(z64.shape, generator=g, dtype=torch.float64)
    xl, wl, bl, rl = x.to(dtype), w.to(dtype), b.to(dtype), r.to(dtype)
    # Exact answer for the rounded inputs, and plain torch's answer at this precision.
    _, exact = _oracle(xl, wl, bl, geom, rule, rl)
    if dtype == torch.float32:
        plain = ref.dense_layer_rule(xl, wl, bl, rl, geom, rule).double()
    else:  # CPU half matmuls are patchy; plain = the oracle's own float32 run, rounded to dtype
        plain = ref.dense_layer_rule(xl.float(), wl.float(), bl.float(), rl.float(), geom, rule).to(dtype).double()
    err_plain = (plain - exact).abs().max().item()
    for backend in _backends(geom):
        _, rel = _run(xl, wl, bl, geom, rule, rl, backend)
        assert rel.dtype == dtype
        err = (rel.double() - exact).abs().max().item()
        assert err <= 2 * err_plain + 1e-6 * exact.abs().max().item(), (backend, err, err_plain)


@pytest.mark.parametrize("rule_name", ["zplus", "alpha2beta1", "alpha3beta2", "epsilon", "flat", "wsquare"])
@pytest.mark.parametrize("layer", ["linear_5x7", "conv2d_depthwise", "conv2d_depthwise_prepad"])
def test_conservation_without_bias(rule_name, layer):
    """z⁺, αβ, flat and w² conserve relevance exactly up to the stabiliser; ε → conservation as
    ε → 0.  With explicit padding this also checks that no relevance lands on padded zeros."""
    x, w, _, geom, g = _data(layer, True, seed=3)
    rule = RULES[rule_name]._replace(eps=1e-12)
    z = ref._fwd(x, w, None, geom)
    r = torch.randn(z.shape, generator=g, dtype=torch.float64)
    # Every output passes on the relevance of each of its non-zero sums in full (a 3×3 depthwise
    # window can have no positive contribution at all, and then its z⁺ share is absorbed).
    xs = ref.stack_channels(["p", "n"], geom, base=x)
    zp = ref._fwd(xs, ref.block_weight(w, [["p", "n"]], geom), None, geom)
    zn = ref._fwd(xs, ref.block_weight(w, [["n", "p"]], geom), None, geom)
    expected = r.sum()
    if rule.kind == "zplus":
        expected = r[zp != 0].sum()
    elif rule.kind == "alphabeta":
        expected = rule.alpha * r[zp != 0].sum() - rule.beta * r[zn != 0].sum()
    for backend in _backends(geom):
        _, rel = _run(x, w, None, geom, rule, r, backend)
        torch.testing.assert_close(rel.sum(), expected, rtol=1e-8, atol=1e-8)


def test_pre_pad_equals_symmetric_padding():
    """``pre_pad`` with equal sides is the same layer as the convolution's own padding."""
    x, w, b, _, g = _data("conv2d_stride_pad_dil", True, seed=5)
    sym, pre = ConvGeom((2, 1), (1, 1), (1, 1), 1), ConvGeom((2, 1), (0, 0), (1, 1), 1, (1, 1, 1, 1))
    r = torch.randn(ref._fwd(x, w, b, sym).shape, generator=g, dtype=torch.float64)
    for rule in ("zplus", "gamma", "zbox", "flat"):
        for backend in _backends(sym):
            z1, rel1 = _run(x, w, b, sym, RULES[rule], r, backend)
            z2, rel2 = _run(x, w, b, pre, RULES[rule], r, backend)
            torch.testing.assert_close(z2, z1, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(rel2, rel1, rtol=1e-9, atol=1e-11)


def test_stabilizer_sign_of_zero_is_plus():
    z = torch.tensor([-1.0, 0.0, 2.0, -0.0], dtype=torch.float64)
    torch.testing.assert_close(ref.stabilize(z, 0.5), torch.tensor([-1.5, 0.5, 2.5, 0.5], dtype=torch.float64))


def test_block_weight_layout_groups():
    """Stacked grouped weights keep each block in its group: the stacked conv equals separate convs."""
    g = torch.Generator().manual_seed(0)
    geom = ConvGeom((1, 1), (1, 1), (1, 1), 3)
    w = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    x = torch.randn(2, 6, 5, 5, generator=g, dtype=torch.float64)
    y = ref._fwd(ref.stack_channels(["p", "n"], geom, base=x), ref.block_weight(w, [["p", "n"], ["n", "w"]], geom),
                 None, geom)
    top, bot = ref.split_channels(y, 2, geom)
    def conv(a, k):
        return F.conv2d(a, k, None, 1, 1, 1, 3)

    xp, xn, wp, wn = x.clamp(min=0), x.clamp(max=0), w.clamp(min=0), w.clamp(max=0)
    torch.testing.assert_close(top, conv(xp, wp) + conv(xn, wn))
    torch.testing.assert_close(bot, conv(xp, wn) + conv(xn, w))


def test_unknown_rule_kind():
    with pytest.raises(ValueError, match="unknown LRP rule"):
        _run(torch.ones(2, 3), torch.ones(4, 3), None, None, RuleParams("nope"), torch.ones(2, 4), "reference")


def test_zbox_bound_shape_error():
    with pytest.raises(ValueError, match="does not broadcast"):
        _run(torch.ones(2, 3), torch.ones(4, 3), None, None, RuleParams("zbox", low=torch.zeros(5), high=1.0),
             torch.ones(2, 4), "reference")


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("rule_name", ["alpha2beta1", "gamma"])
@pytest.mark.parametrize("signed", [False, True])
def test_kept_output_vs_oracle(layer, rule_name, signed):
    """With a :class:`SaveBudget` the αβ/γ backward reads the kept layer output instead of
    recomputing it: same relevance, and a second backward (retained graph) gives it again."""
    x, w, b, geom, g = _data(layer, signed, seed=11)
    rule = RULES[rule_name]
    r = torch.randn(ref._fwd(x, w, b, geom).shape, generator=g, dtype=torch.float64)
    _, rel_exp = _oracle(x, w, b, geom, rule, r)
    budget = ops.SaveBudget(ratio=1e9)
    xg = x.detach().requires_grad_(True)
    z = lrp_layer(xg, lambda: (w, b), rule, geom, "reference", budget)
    assert budget.kept == z.numel() * z.element_size()
    scale = rel_exp.abs().max().item() + 1.0
    for _ in range(2):
        (rel,) = torch.autograd.grad(z, xg, r, retain_graph=True)
        torch.testing.assert_close(rel, rel_exp, rtol=1e-9, atol=1e-11 * scale)


def test_save_budget_is_greedy_within_ratio():
    budget = ops.SaveBudget(ratio=0.5)
    x, z = torch.zeros(100), torch.zeros(40)
    budget.see(x)
    assert budget.take(z)  # 160 bytes ≤ 0.5 × 400
    assert not budget.take(z)  # 320 > 200
    budget.see(x)
    assert budget.take(z) and budget.kept == 320


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_workspace_shared_by_layers_gives_identical_relevance(backend):
    """One Workspace serves a sequence of layers of growing and shrinking weights (its buffers
    grow, then hand out smaller views), as in a pass: every relevance equals that of a pass
    without one, bit for bit, and none aliases the workspace's buffers."""
    if backend == "triton" and _backend._available("triton", "lrp_conv", torch.device("cpu")) is not None:
        pytest.skip("triton unavailable")
    ws = ref.Workspace()
    order = ["conv2d_stride_pad_dil", "conv2d_wide_stride_dil", "linear_5x7", "conv2d_groups", "conv1d",
             "conv2d_wide_groups_b1", "linear_b1_leading"]
    for i, layer in enumerate(order):
        for rule_name in ["zplus", "alpha2beta1", "gamma"]:
            x, w, b, geom, g = _data(layer, signed=False, seed=100 + i)
            rule = RULES[rule_name]
            r = torch.randn(ref._fwd(x, w, b, geom).shape, generator=g, dtype=torch.float64)
            outs = []
            for space in (None, ws):
                xg = x.detach().requires_grad_(True)
                z = ops.lrp_layer(xg, lambda: (w, b), rule, geom, backend, workspace=space)
                (rel,) = torch.autograd.grad(z, xg, r)
                outs.append(rel)
            assert torch.equal(outs[0], outs[1]), (layer, rule_name)
            bufs = [t.untyped_storage().data_ptr() for t in ws._bufs.values()]
            assert outs[1].untyped_storage().data_ptr() not in bufs
    assert ws._bufs, "the sign-split rules drew their weights from the workspace"


def test_workspace_buffer_grows_and_reuses():
    ws = ref.Workspace()
    a = ws.buffer("p", torch.empty(3, 4))
    b = ws.buffer("p", torch.empty(2, 5))  # fits: a view of the same storage
    assert b.shape == (2, 5) and b.untyped_storage().data_ptr() == a.untyped_storage().data_ptr()
    c = ws.buffer("p", torch.empty(4, 4))  # larger: a new buffer
    assert c.shape == (4, 4) and c.untyped_storage().nbytes() == 64
    assert ws.buffer("n", torch.empty(3, 4)).untyped_storage().data_ptr() != c.untyped_storage().data_ptr()
    assert ws.buffer("p", torch.empty(2, dtype=torch.float64)).dtype == torch.float64
    # more than twice what is asked for: dropped for a buffer of the new size (a deep layer's
    # weight is not held through the early layers' backward)
    d = ws.buffer("p", torch.empty(7))
    assert d.untyped_storage().nbytes() == 7 * 4
    assert ws.buffer("p", torch.empty(4)).untyped_storage().data_ptr() == d.untyped_storage().data_ptr()
    e = ws.buffer("p", torch.empty(3))
    assert e.untyped_storage().nbytes() == 3 * 4


@pytest.mark.parametrize("case", [
    (F.max_pool1d, (2, 3, 17), dict(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=True)),
    (F.max_pool2d, (1, 2, 9, 8), dict(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False)),
    (F.max_pool2d, (2, 3, 8, 8), dict(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)),
    (F.max_pool2d, (2, 2, 11, 10), dict(kernel_size=(3, 2), stride=1, padding=(1, 0), dilation=(2, 1),
                                        ceil_mode=True)),
    (F.max_pool3d, (1, 2, 5, 6, 7), dict(kernel_size=2, stride=(1, 2, 2), padding=1, dilation=1, ceil_mode=False)),
])
def test_max_pool_indices_only_backward_equals_gradient(case):
    pool, shape, kw = case
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[0, 0].fill_(1.0)  # ties: the first maximal index wins, as in torch's own backward
    xa = x.clone().requires_grad_(True)
    ya = pool(xa, **kw)
    r = torch.randn(ya.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (ga,) = torch.autograd.grad(ya, xa, r)
    xb = x.clone().requires_grad_(True)
    yb = ops.max_pool(xb, lambda t: pool(t, return_indices=True, **kw))
    (gb,) = torch.autograd.grad(yb, xb, r)
    torch.testing.assert_close(yb, ya.detach(), rtol=0, atol=0)
    torch.testing.assert_close(gb, ga, rtol=1e-15, atol=1e-15)


def test_rule_parameters_reach_the_triton_kernels_at_float64_precision():
    """Compiled Triton passes Python floats as fp32: rule parameters travel as fp32 (hi, lo) pairs
    whose sum is the float64 value to ~2^-48 (an fp32 ε = 1e-2 moved fp64 relevances by ~1e-8 on
    an H100, against the 1e-9 the float64 tests allow)."""
    pytest.importorskip("triton")
    import numpy as np

    from xaikernels.kernels.triton.lrp import _split

    for v in (1e-2, 0.3, 1 / 3, 1e-9, 2.5, -0.7, 0.0, 1e-30):
        hi, lo = _split(v)
        assert float(np.float32(hi)) == hi and float(np.float32(lo)) == lo
        assert abs((hi + lo) - v) <= 2.0**-46 * abs(v)
