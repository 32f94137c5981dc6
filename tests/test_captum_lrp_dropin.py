"""``xaikernels.captum.LRP`` as a drop-in for ``captum.attr.LRP`` (Captum 0.9.0): construction and
rule checks, inputs (tuples), outputs of any shape, Captum's rules (incl. ``IdentityRule`` on a
linear layer), errors, warnings, ``verbose``, convergence delta, and the model handed back as it
came.  The first part needs no Captum; the second compares with real Captum when installed."""
import contextlib
import io
import re
import warnings

import pytest
import torch
from torch import nn

import xaikernels.captum as xc
from xaikernels.captum import LRP
from xaikernels.methods import lrp as native


def _simple():
    """Captum's SimpleLRPModel (tests/helpers/basic_models.py)."""

    class SimpleLRPModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 3, bias=False)
            self.linear.weight.data.fill_(2.0)
            self.relu = nn.ReLU()
            self.linear2 = nn.Linear(3, 1, bias=False)
            self.linear2.weight.data.fill_(3.0)
            self.dropout = nn.Dropout(p=0.01)

        def forward(self, x):
            return self.dropout(self.linear2(self.relu(self.linear(x))))

    return SimpleLRPModel().eval(), torch.tensor([[1.0, 2.0, 3.0]])


class MultiLayer(nn.Module):
    """Captum's BasicModel_MultiLayer (the part LRP uses)."""

    def __init__(self):
        super().__init__()
        self.linear0 = nn.Linear(3, 3)
        self.linear0.weight = nn.Parameter(torch.eye(3))
        self.linear0.bias = nn.Parameter(torch.zeros(3))
        self.linear1 = nn.Linear(3, 4)
        self.linear1.weight = nn.Parameter(torch.ones(4, 3))
        self.linear1.bias = nn.Parameter(torch.tensor([-10.0, 1.0, 1.0, 1.0]))
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(4, 2)
        self.linear2.weight = nn.Parameter(torch.ones(2, 4))
        self.linear2.bias = nn.Parameter(torch.tensor([-1.0, 1.0]))

    def forward(self, x, add_input=None):
        x = x if add_input is None else x + add_input
        return self.linear2(self.relu(self.linear1(self.linear0(x))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 5)
        self.r = nn.ReLU()
        self.l2 = nn.Linear(5, 3)

    def forward(self, x, y=None):
        if y is not None:
            x = x + y
        return self.l2(self.r(self.l1(x)))


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, dict(vars(m))) for n, m in model.named_modules()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()])


def _same_model(model, snap):
    state, attrs, hooks = _snapshot(model)
    assert state.keys() == snap[0].keys()
    for k in state:
        assert torch.equal(state[k], snap[0][k]), k
    for (n, a), (n0, a0) in zip(attrs, snap[1]):
        assert a.keys() == a0.keys(), (n, set(a) ^ set(a0))
        for key in a:
            if key not in ("_parameters", "_buffers", "_modules"):
                assert a[key] is a0[key] or a[key] == a0[key], (n, key)
    assert hooks == snap[2]


# ---------------------------------------------------------------------------------------------
# Without Captum
# ---------------------------------------------------------------------------------------------

def test_construction_rejects_non_rules():
    model, _ = _simple()
    model.linear.rule = 1
    with pytest.raises(TypeError, match="Please select propagation rules inherited from class PropagationRule"):
        LRP(model)
    model.linear.rule = xc.EpsilonRule()
    LRP(model)
    model.linear.rule = native.Epsilon(1e-9)  # xaikernels' own rules are accepted too
    LRP(model)
    model.linear.rule = None  # allowed at construction, as in Captum ...
    lrp = LRP(model)
    with pytest.raises(AttributeError, match="relevance_input"):  # ... but not by attribute
        _quiet(lrp.attribute, torch.ones(1, 3))
    # a non-module is refused as in Captum (it has no .modules())
    with pytest.raises(AttributeError, match="modules"):
        LRP(lambda t: t)


def test_leaf_without_rule_rejected_before_target_even_unused():
    model, x = _simple()
    model.add_module("sigmoid", nn.Sigmoid())  # never called by forward
    lrp = LRP(model)  # construction is fine
    with pytest.raises(TypeError, match="has no rule defined and no"):
        lrp.attribute(x, target=123)  # the target is not looked at first
    model.sigmoid.rule = xc.EpsilonRule()
    assert _quiet(lrp.attribute, x).shape == x.shape


def test_identity_rule_on_linear():
    model, x = _simple()
    with torch.no_grad():
        model.linear.weight.data[0][0] = -2
    model.linear.rule = xc.IdentityRule()
    model.linear2.rule = xc.EpsilonRule()
    rel = _quiet(LRP(model).attribute, x)
    torch.testing.assert_close(rel, torch.tensor([[24.0, 36.0, 36.0]]))
    model = Net()
    model.l1.rule = xc.IdentityRule()  # 4 -> 5 features: relevance cannot pass unchanged
    with pytest.raises(RuntimeError, match="keep the shape"):
        _quiet(LRP(model).attribute, torch.randn(2, 4), target=0)


def test_native_pass_on_linear_still_an_error():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with pytest.raises(TypeError, match=r"rule Pass\(\) cannot be applied to layer '0'"):
        native.lrp(model, torch.randn(2, 3), 0, composite={nn.Linear: "pass"}, canonizers=None)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_maxpool_outputs_of_any_shape(dim):
    if dim == 1:
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = nn.Linear(2, 2, bias=False)
                self.linear.weight.data.fill_(2.0)
                self.maxpool = nn.MaxPool1d(2)

            def forward(self, x):
                return self.maxpool(self.linear(x))

        x, target, exp = torch.tensor([[[1.0, 2.0], [5.0, 6.0]]]), 1, torch.tensor([[[0.0, 0.0], [10, 12]]])
    else:
        pool = nn.MaxPool2d(2) if dim == 2 else nn.MaxPool3d(2)
        M = lambda: nn.Sequential(pool)  # noqa: E731
        if dim == 2:
            x, exp = torch.tensor([[[[1.0, 2.0], [5.0, 6.0]]]]), torch.tensor([[[[0.0, 0.0], [0.0, 6.0]]]])
        else:
            x = torch.tensor([[[[[1.0, 2.0], [5.0, 6.0]], [[3.0, 4.0], [7.0, 8.0]]]]])
            exp = torch.tensor([[[[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 8.0]]]]])
        target = None
    rel, delta = _quiet(LRP(M()).attribute, x, target=target, return_convergence_delta=True)
    torch.testing.assert_close(rel, exp)
    assert delta.shape == (1,)


def test_multi_inputs_tuple_in_tuple_out():
    model = MultiLayer()
    x = torch.tensor([[1.0, 2.0, 3.0]])
    (a, b), delta = _quiet(LRP(model).attribute, (x, 3 * x), target=0, return_convergence_delta=True)
    torch.testing.assert_close(a, torch.tensor([[16.0, 32.0, 48.0]]))
    torch.testing.assert_close(b, torch.tensor([[16.0, 32.0, 48.0]]))
    torch.testing.assert_close(delta, torch.tensor([-104.0]))
    one = _quiet(LRP(model).attribute, (x,), target=0)
    assert isinstance(one, tuple) and len(one) == 1
    torch.testing.assert_close(one[0], _quiet(LRP(model).attribute, x, target=0))
    extra = _quiet(LRP(model).attribute, x, target=0, additional_forward_args=(0,))
    torch.testing.assert_close(extra, one[0])


def test_native_engine_takes_a_tuple_of_inputs():
    model = MultiLayer()
    x = torch.tensor([[1.0, 2.0, 3.0]])

    def grad_out(out):
        return torch.zeros_like(out).index_fill_(1, torch.tensor([0]), 1.0)

    res = native.run_lrp(model, (x, 3 * x), grad_out, composite={nn.Linear: native.Epsilon(1e-9)},
                         canonizers=None, check_mode=False)
    assert isinstance(res.relevance, tuple) and len(res.relevance) == 2
    single = native.run_lrp(model, 4 * x, grad_out, composite={nn.Linear: native.Epsilon(1e-9)},
                            canonizers=None, check_mode=False)
    torch.testing.assert_close(res.relevance[0], single.relevance)
    with pytest.raises(TypeError, match=r"x\[1\] must be a floating-point tensor"):
        native.run_lrp(model, (x, x.long()), grad_out, canonizers=None)
    # the public single-input APIs keep refusing a tuple
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got tuple"):
        native.lrp(model.eval(), (x,), 0)
    import xaikernels.zennit as xz

    with pytest.raises(TypeError, match="input must be a torch.Tensor, got tuple"):
        xz.Gradient(model)((x,))


def test_activation_runs_follow_captum_hook_order():
    """Captum: in a run of ReLU/Dropout/Tanh layers fed one into the next, every second one
    propagates the gradient (checked against Captum in the parity cases below)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), nn.Tanh(), nn.Linear(4, 2)).eval()
    x = torch.randn(3, 4)
    got = _quiet(LRP(model).attribute, x, target=1)
    model[2].rule = native.Gradient()
    exp = _quiet(LRP(model).attribute, x, target=1)
    del model[2].rule
    torch.testing.assert_close(got, exp)
    model[1].rule = native.Gradient()  # not a Captum run any more: the Tanh passes relevance
    assert not torch.allclose(_quiet(LRP(model).attribute, x, target=1), got)


def test_targets_errors_and_delta():
    model, x = Net(), torch.randn(3, 4)
    lrp = LRP(model)
    with pytest.raises(AssertionError, match="Target not provided when necessary"):
        _quiet(lrp.attribute, x)
    with pytest.raises(AssertionError, match="Target list length does not match output"):
        _quiet(lrp.attribute, x, target=[0, 1])
    with pytest.raises(AssertionError, match="must be a torch.Tensor or a tuple"):
        lrp.attribute([x], target=0)
    rel, delta = _quiet(lrp.attribute, x, target=torch.tensor([0, 1, 2]), return_convergence_delta=True)
    score = model(x).gather(1, torch.tensor([[0], [1], [2]])).squeeze(1)
    torch.testing.assert_close(delta, score.detach() - rel.sum(1))
    torch.testing.assert_close(lrp.compute_convergence_delta(rel, score.detach()), delta)
    torch.testing.assert_close(lrp.compute_convergence_delta((rel, rel), score.detach()),
                               score.detach() - 2 * rel.sum(1))


def test_flags_and_attribute_future():
    lrp = LRP(Net())
    assert lrp.multiplies_by_inputs is True
    assert lrp.has_convergence_delta() is True
    with pytest.raises(NotImplementedError, match="attribute_future is not implemented for LRP"):
        lrp.attribute_future()
    assert hasattr(LRP.attribute, "__wrapped__")
    assert issubclass(xc.IdentityRule, xc.EpsilonRule)
    for cls in (xc.EpsilonRule, xc.GammaRule, xc.Alpha1_Beta0_Rule):
        assert issubclass(cls, xc.PropagationRule)
    with pytest.raises(TypeError):
        xc.PropagationRule()
    assert xc.GammaRule().gamma == 0.25 and xc.EpsilonRule(0.5).STABILITY_FACTOR == 0.5


def test_warning_verbose_and_inputs_untouched():
    model, x = Net(), torch.randn(2, 4)
    buf = io.StringIO()
    with pytest.warns(UserWarning, match="Input Tensor 0 did not already require gradients"):
        with contextlib.redirect_stdout(buf):
            LRP(model).attribute(x, target=0, verbose=True)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and all(line.startswith("Applied <") for line in lines)
    assert "EpsilonRule object" in lines[0] and lines[0].endswith("on layer Linear(in_features=4, out_features=5, "
                                                                  "bias=True)")
    assert not x.requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LRP(model).attribute(x.requires_grad_(), target=0)  # no warning when the input requires grad
    assert x.grad is None


def test_layer_used_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(4, 4)
            self.r = nn.ReLU()
            self.o = nn.Linear(4, 2)

        def forward(self, x):
            return self.o(self.r(self.l(self.r(self.l(x)))))  # ReLU twice is fine, Linear is not

    model = Twice()
    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match="is being used more than once in the network"):
        _quiet(LRP(model).attribute, torch.randn(2, 4), target=0)
    _same_model(model, snap)


def test_model_handed_back_as_it_came():
    model, x = _simple()
    model.linear.rule = xc.GammaRule()
    model.linear2.rule = xc.Alpha1_Beta0_Rule()
    user_hook = model.relu.register_forward_hook(lambda m, i, o: None)
    snap = _snapshot(model)
    out = model(x)
    lrp = LRP(model)
    _quiet(lrp.attribute, x)
    _same_model(model, snap)  # rules kept, no hook or attribute left
    torch.testing.assert_close(model(x), out)
    assert [type(m).__name__ for m in lrp.layers] == ["Linear", "ReLU", "Linear", "Dropout"]
    with pytest.raises(AssertionError):
        _quiet(lrp.attribute, x, target=(0, 1))  # error inside the forward
    _same_model(model, snap)
    user_hook.remove()


def test_layers_beyond_captum_and_leaf_root():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    x = torch.randn(2, 1, 4, 4)
    rel = _quiet(LRP(model).attribute, x, target=1)
    assert rel.shape == x.shape
    lin = nn.Linear(3, 2)  # the model itself is a leaf: Captum applies no rule, the gradient
    x = torch.randn(4, 3)
    rel = _quiet(LRP(lin).attribute, x, target=1)
    torch.testing.assert_close(rel, lin.weight[1].detach().expand(4, 3) * lin(x)[:, 1:].detach())


# ---------------------------------------------------------------------------------------------
# Against real Captum
# ---------------------------------------------------------------------------------------------

def _both(build, call):
    """Run ``call(LRP, *build(rules))`` with Captum and with the drop-in; results or exceptions."""
    captum_attr = pytest.importorskip("captum.attr")
    from captum.attr._utils import lrp_rules

    out = []
    for L, R in ((captum_attr.LRP, lrp_rules), (LRP, xc)):
        torch.manual_seed(0)
        model, args, kwargs = build(R)
        buf = io.StringIO()
        with warnings.catch_warnings(record=True) as w, contextlib.redirect_stdout(buf):
            warnings.simplefilter("always")
            try:
                res = call(L, model, args, kwargs)
            except Exception as e:  # noqa: BLE001 - compared below
                res = e
        text = re.sub(r"0x[0-9a-f]+", "0x", buf.getvalue())
        text = text.replace("captum.attr._utils.lrp_rules", "R").replace("xaikernels.captum._lrp", "R")
        out.append((res, [str(m.message) for m in w], text))
    return out


def _attr(L, model, args, kwargs):
    return L(model).attribute(*args, **kwargs)


def _close(a, b):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for u, v in zip(a, b):
            _close(u, v)
        return
    assert isinstance(b, torch.Tensor) and a.shape == b.shape
    torch.testing.assert_close(b, a.detach(), rtol=1e-4, atol=1e-6)


def _bn_model(rule):
    def build(R):
        feat = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        bn = feat[1]
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.normal_()
        bn.bias.data.normal_()
        if rule is not None:
            bn.rule = rule(R)

        class W(nn.Module):
            def __init__(self):
                super().__init__()
                self.feat = feat
                self.fc = nn.Linear(3, 2)

            def forward(self, x):
                return self.fc(self.feat(x).view(-1, 3))

        return W().eval(), (torch.randn(2, 2, 6, 6),), dict(target=1)
    return build


def _net(**kw):
    return lambda R: (Net(), (torch.randn(3, 4),), kw)


def _with_rules(**rules):
    def build(R):
        model = Net()
        for name, make in rules.items():
            getattr(model, name).rule = make(R)
        return model, (torch.randn(3, 4),), dict(target=2)
    return build


def _seq(*mods, **kw):
    return lambda R: (nn.Sequential(*[m() for m in mods]).eval(), (torch.randn(3, 4),), dict(target=1, **kw))


def _pooled_3d_output(target):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(4, 6)
            self.p = nn.MaxPool1d(2)

        def forward(self, x):
            return self.p(self.l(x).view(-1, 2, 3).transpose(1, 2))

    return lambda R: (M(), (torch.randn(3, 4),), dict(target=target, return_convergence_delta=True))


def _addition(identity):
    def build(R):
        from captum.attr._utils.custom_modules import Addition_Module

        class S(nn.Module):
            def __init__(self):
                super().__init__()
                self.l = nn.Linear(4, 4)
                self.r = nn.ReLU()
                self.add = Addition_Module()
                self.o = nn.Linear(4, 2)

            def forward(self, x):
                return self.o(self.add(self.r(self.l(x)), x))

        model = S()
        if identity:
            model.add.rule = R.IdentityRule()
        return model, (torch.randn(3, 4),), dict(target=1)
    return build


def _sigmoid_net():
    return nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2))


def _rule_on(name, rule, make):
    def build(R):
        model = make()
        getattr(model, name).rule = rule(R)
        return model, (torch.randn(3, 4),), dict(target=1, verbose=True)
    return build


def _subclass(R):
    class MyEps(R.EpsilonRule):
        pass

    model = Net()
    model.l1.rule = MyEps(0.3)
    return model, (torch.randn(3, 4),), dict(target=0)


PARITY = {
    "basic": _net(target=1),
    "delta_list_target": _net(target=[0, 1, 2], return_convergence_delta=True),
    "tensor_target": _net(target=torch.tensor([0, 1, 2])),
    "verbose": _net(target=0, verbose=True),
    "additional_forward_args": lambda R: (Net(), (torch.randn(3, 4),),
                                          dict(target=0, additional_forward_args=torch.randn(3, 4))),
    "tuple_of_one": lambda R: (Net(), ((torch.randn(3, 4),),), dict(target=0)),
    "tuple_of_two": lambda R: (Net(), ((torch.randn(3, 4), torch.randn(3, 4)),),
                               dict(target=0, return_convergence_delta=True)),
    "same_tensor_twice": lambda R: (Net(), ((lambda t: (t, t))(torch.randn(3, 4)),), dict(target=1)),
    "gamma_alpha_beta": _with_rules(l1=lambda R: R.GammaRule(gamma=0.5),
                                    l2=lambda R: R.Alpha1_Beta0_Rule(set_bias_to_zero=True)),
    "epsilon": _with_rules(l1=lambda R: R.EpsilonRule(0.3), l2=lambda R: R.EpsilonRule(1.0)),
    "rule_on_relu": _rule_on("r", lambda R: R.EpsilonRule(), Net),
    "subclass_rule": _subclass,
    "epsilon_on_sigmoid": _rule_on("1", lambda R: R.EpsilonRule(), _sigmoid_net),
    "gamma_on_sigmoid": _rule_on("1", lambda R: R.GammaRule(), _sigmoid_net),
    "bn_default": _bn_model(None),
    "bn_epsilon": _bn_model(lambda R: R.EpsilonRule(0.1)),
    "bn_gamma": _bn_model(lambda R: R.GammaRule()),
    "bn_alpha1beta0": _bn_model(lambda R: R.Alpha1_Beta0_Rule()),
    "bn_alpha1beta0_nobias": _bn_model(lambda R: R.Alpha1_Beta0_Rule(set_bias_to_zero=True)),
    "bn_identity": _bn_model(lambda R: R.IdentityRule()),
    "output_3d_tuple_target": _pooled_3d_output((1, 0)),
    "output_3d_list_of_tuples": _pooled_3d_output([(0, 0), (1, 0), (2, 0)]),
    "dropout_tanh_chain": _seq(lambda: nn.Linear(4, 4), lambda: nn.Dropout(0.3), lambda: nn.Tanh(),
                               lambda: nn.Tanh(), lambda: nn.Linear(4, 2)),
    "tanh_relu_dropout_tanh": _seq(lambda: nn.Linear(4, 4), lambda: nn.Tanh(), lambda: nn.ReLU(),
                                   lambda: nn.Dropout(0.1), lambda: nn.Tanh(), lambda: nn.Linear(4, 2)),
    "addition_module": _addition(False),
    "requires_grad_input": lambda R: (Net(), (torch.randn(3, 4).requires_grad_(),), dict(target=1)),
}


@pytest.mark.peer
@pytest.mark.parametrize("case", sorted(PARITY))
def test_parity_with_captum(case):
    (exp, w_exp, out_exp), (got, w_got, out_got) = _both(PARITY[case], _attr)
    assert not isinstance(exp, Exception), exp
    assert not isinstance(got, Exception), got
    _close(exp, got)
    assert w_got == w_exp
    assert out_got == out_exp


def _twice(R):
    class T(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(4, 4)
            self.o = nn.Linear(4, 2)

        def forward(self, x):
            return self.o(self.l(self.l(x)))

    return T(), (torch.randn(3, 4),), dict(target=1)


def _unused_sigmoid(R):
    model = Net()
    model.add_module("s", nn.Sigmoid())
    return model, (torch.randn(3, 4),), dict(target=99)


ERRORS = {
    "no_target": (_net(), _attr),
    "bad_tuple_target": (_net(target=(0, 1)), _attr),
    "target_list_length": (_net(target=[0, 1]), _attr),
    "list_input": (lambda R: (Net(), ([torch.randn(3, 4)],), dict(target=0)), _attr),
    "used_twice": (_twice, _attr),
    "rule_none": (_rule_on("l1", lambda R: None, Net), _attr),
    "unused_sigmoid": (_unused_sigmoid, _attr),
    "conv1d_without_rule": (lambda R: (nn.Sequential(nn.Conv1d(1, 2, 2), nn.ReLU()), (torch.randn(2, 1, 4),),
                                       dict(target=0)), _attr),
    "unused_input": (lambda R: (nn.Sequential(nn.Linear(4, 2)), ((torch.randn(3, 4), torch.randn(3, 4)),),
                                dict(target=1)), _attr),
    "construct_bad_rule": (_rule_on("l1", lambda R: 1, Net), lambda L, m, a, k: L(m)),
    "construct_non_module": (lambda R: (lambda t: t, (), {}), lambda L, m, a, k: L(m)),
    "attribute_future": (_net(), lambda L, m, a, k: L(m).attribute_future()),
}
ERRORS["used_twice_verbose"] = (lambda R: (lambda r: (r[0], r[1], dict(r[2], verbose=True)))(_twice(R)), _attr)


@pytest.mark.peer
@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_like_captum(case):
    build, call = ERRORS[case]
    (exp, w_exp, out_exp), (got, w_got, out_got) = _both(build, call)
    assert isinstance(exp, Exception) and isinstance(got, Exception), (exp, got)
    assert type(got) is type(exp)
    assert str(got) == str(exp)
    assert w_got == w_exp
    assert out_got == out_exp


@pytest.mark.peer
def test_captum_rules_after_the_call():
    """Captum deletes every leaf's ``rule`` after a call; the drop-in keeps them (documented)."""
    captum_attr = pytest.importorskip("captum.attr")
    from captum.attr._utils.lrp_rules import GammaRule

    model, x = _simple()
    model.linear.rule = rule = GammaRule()
    _quiet(captum_attr.LRP(model).attribute, x)
    assert not hasattr(model.linear, "rule")
    model.linear.rule = rule
    snap = _snapshot(model)
    _quiet(LRP(model).attribute, x)
    _same_model(model, snap)
    assert model.linear.rule is rule


@pytest.mark.peer
def test_swapped_captum_suite_semantics():
    """Captum's own tests/attr/test_lrp.py cases that the drop-in used to fail, against Captum."""
    captum_attr = pytest.importorskip("captum.attr")
    from captum.attr._utils.lrp_rules import EpsilonRule, IdentityRule

    model, x = _simple()
    with torch.no_grad():
        model.linear.weight.data[0][0] = -2
    for L in (captum_attr.LRP, LRP):
        model.linear.rule = IdentityRule()
        model.linear2.rule = EpsilonRule()
        torch.testing.assert_close(_quiet(L(model).attribute, x).detach(), torch.tensor([[24.0, 36.0, 36.0]]))
    model = MultiLayer()
    x = torch.tensor([[1.0, 2.0, 3.0]])
    exp = _quiet(captum_attr.LRP(model).attribute, (x, 3 * x), target=0, return_convergence_delta=True)
    got = _quiet(LRP(model).attribute, (x, 3 * x), target=0, return_convergence_delta=True)
    _close(exp, got)
