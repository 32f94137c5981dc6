"""``xaikernels.captum`` LimeBase / Lime / KernelShap against Captum 0.9.0 itself.

The drop-ins draw their samples from torch's global generator with Captum's calls in
Captum's order (and consume the same draws in the surrogate fit), so after the same
``torch.manual_seed`` both give the same numbers: the comparisons below are exact up to the
float32 rounding of the fits.  The multi-input and per-example-mask cases once crashed the
process (an out-of-bounds read in the perturbed-batch builder); they run here in-process and,
under ``NUMBA_BOUNDSCHECK=1``, in a subprocess.
"""
import inspect
import io
import warnings
from contextlib import redirect_stderr

import pytest
import torch
from _boundscheck import assert_in_bounds

import xaikernels.captum as XCP
from xaikernels.captum import _lime as XL

captum_attr = pytest.importorskip("captum.attr")
from captum._utils.models.linear_model import SkLearnLasso as CaptumLasso  # noqa: E402
from captum._utils.models.linear_model import SkLearnRidge  # noqa: E402
from captum.attr._core import lime as CL  # noqa: E402

pytestmark = pytest.mark.peer


def _pair(fn, seed=0):
    torch.manual_seed(seed)
    a = fn(captum_attr)
    after_a = torch.rand(3)
    torch.manual_seed(seed)
    b = fn(XCP)
    after_b = torch.rand(3)
    return a, b, torch.equal(after_a, after_b)


def _close(b, a, tol=2e-4):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(b, a):
            _close(x, y, tol)
        return
    assert b.shape == a.shape and b.dtype == a.dtype
    torch.testing.assert_close(b, a, rtol=tol, atol=tol)


class MultiInp(torch.nn.Module):
    """Three inputs of different widths, two outputs per example."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(123)
        self.a = torch.nn.Linear(3, 2)
        self.b = torch.nn.Linear(4, 2)
        self.c = torch.nn.Linear(2, 2)

    def forward(self, x1, x2, x3, scale=1.0):
        return (self.a(x1) + torch.tanh(self.b(x2)) * self.c(x3)) * scale


X1 = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]])
X2 = torch.tensor([[0.5, 1.5, -0.5, 2.0], [1.0, -1.0, 0.0, 0.25]])
X3 = torch.tensor([[2.0, -1.0], [0.1, 0.7]])
# per-example masks, and inputs whose masks stop short of the highest feature id
M1 = torch.tensor([[0, 0, 1], [0, 1, 2]])
M2 = torch.tensor([[1, 1, 2, 2], [3, 3, 3, 4]])
M3 = torch.tensor([[0, 0], [1, 1]])


# ------------------------------------------------------------------------------- interface
def test_exports_and_class_relations():
    for name in ("LimeBase", "Lime", "KernelShap", "get_exp_kernel_similarity_function", "default_perturb_func",
                 "default_from_interp_rep_transform", "construct_feature_mask"):
        assert hasattr(XL, name) and hasattr(CL, name) or name == "KernelShap"
    assert issubclass(XCP.Lime, XCP.LimeBase) and issubclass(XCP.KernelShap, XCP.Lime)
    assert XCP.LimeBase is XL.LimeBase and XCP.Lime is XL.Lime and XCP.KernelShap is XL.KernelShap


@pytest.mark.parametrize("cls,meth", [("LimeBase", "__init__"), ("LimeBase", "attribute"), ("Lime", "__init__"),
                                      ("Lime", "attribute"), ("KernelShap", "__init__"),
                                      ("KernelShap", "attribute")])
def test_signatures_match_captum(cls, meth):
    def sig(f):
        return [(p.name, p.default, p.kind) for p in inspect.signature(f).parameters.values()]

    assert sig(getattr(getattr(XCP, cls), meth)) == sig(getattr(getattr(captum_attr, cls), meth))


def test_helpers_match_captum():
    torch.manual_seed(3)
    a = CL.default_perturb_func(X1[:1], num_interp_features=9)
    torch.manual_seed(3)
    b = XL.default_perturb_func(X1[:1], num_interp_features=9)
    assert torch.equal(a, b) and b.dtype == torch.long and b.shape == (1, 9)
    z = torch.tensor([[1, 0, 1, 0, 1]])
    kw = dict(feature_mask=(M1[:1], M2[:1] - 1), baselines=(0.5, torch.ones(1, 4)))
    _close(XL.default_from_interp_rep_transform(z, (X1[:1], X2[:1]), **kw),
           CL.default_from_interp_rep_transform(z, (X1[:1], X2[:1]), **kw))
    for mode in ("cosine", "euclidean"):
        fa = CL.get_exp_kernel_similarity_function(mode, 2.0)
        fb = XL.get_exp_kernel_similarity_function(mode, 2.0)
        assert fb(X2, X2 * 0.5 + 1, None) == pytest.approx(fa(X2, X2 * 0.5 + 1, None), rel=1e-6)
    bad = XL.get_exp_kernel_similarity_function("manhattan")  # like Captum: raises when called
    with pytest.raises(ValueError, match="cosine or euclidean"):
        bad(X1, X1, None)
    for fm in (None, (M1 + 2, M2 + 2)):
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            ma, na = CL.construct_feature_mask(fm, (X1, X2))
            mb, nb = XL.construct_feature_mask(fm, (X1, X2))
        assert na == nb and all(torch.equal(p, q) for p, q in zip(ma, mb))


# ------------------------------------------------------------------ Lime / KernelShap vs Captum
@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
@pytest.mark.parametrize("masks", ["none", "shared", "per_example"])
@pytest.mark.parametrize("ppe", [1, 3])
def test_multi_input_batch_equals_captum(method, masks, ppe):
    model = MultiInp().eval()
    fm = None if masks == "none" else (M1[:1], M2[:1] - 1, M3[:1]) if masks == "shared" else (M1, M2, M3)

    def run(mod):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return getattr(mod, method)(model).attribute((X1, X2, X3), target=[0, 1], feature_mask=fm,
                                                         additional_forward_args=(2.0,), n_samples=40,
                                                         perturbations_per_eval=ppe)

    a, b, same_rng = _pair(run)
    _close(b, a)
    assert same_rng


@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
def test_single_example_multi_input_and_coefs_equal_captum(method):
    model = MultiInp().eval()
    fm = (M1[1:], M2[1:], M3[1:])
    for ris in (True, False):
        a, b, same_rng = _pair(lambda mod: getattr(mod, method)(model).attribute(
            (X1[1:], X2[1:], X3[1:]), baselines=(0.0, X2[:1], 1.0), target=1, feature_mask=fm, n_samples=30,
            return_input_shape=ris))
        _close(b, a)
        assert same_rng


@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
def test_per_example_masks_single_tensor_equals_captum(method):
    def model(x):
        return (x * torch.tensor([20.0, 50.0, 30.0])).sum(1)

    x = torch.tensor([[20.0, 50.0, 30.0], [10.0, 14.0, 4.0]])
    fm = torch.tensor([[0, 0, 1], [0, 1, 2]])
    a, b, same_rng = _pair(lambda mod: getattr(mod, method)(model).attribute(x, feature_mask=fm, n_samples=60))
    _close(b, a)
    assert same_rng


@pytest.mark.parametrize("F,n", [(6, 2), (50, 25), (30, 12)])
def test_kernel_shap_fewer_samples_than_features_equals_captum(F, n):
    """KernelShap's default n_samples=25 on a wide input without a mask: fewer coalitions
    than features, the least squares underdetermined; Captum (scikit-learn's lstsq) gives
    the minimum-norm answer, and so must the drop-in (it inverted rounding noise before).
    (Where the 1e6 weights make Captum's float32 lstsq lose digits — e.g. 54 features and 40
    samples, 0.06 off a float64 lstsq of Captum's own samples — the drop-in stays within 1e-8
    of that float64 answer; the op tests check the minimum norm against lstsq.)"""
    torch.manual_seed(7)
    model = torch.nn.Linear(F, 3)
    x = torch.randn(2, F)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b, same_rng = _pair(lambda mod: mod.KernelShap(model).attribute(x, target=1, n_samples=n))
    _close(b, a, tol=1e-4)
    assert same_rng


@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
def test_empty_input_equals_captum(method):
    def model(a, e, b):
        return a.sum(1) * 2 + b.sum(1)

    inp = (torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 0), torch.tensor([[4.0, 5.0]]))
    for fm in (None, (torch.tensor([[0, 1, 1]]), torch.zeros(1, 0, dtype=torch.long), torch.tensor([[2, 2]]))):
        a, b, _ = _pair(lambda mod: getattr(mod, method)(model).attribute(inp, feature_mask=fm, n_samples=20))
        _close(b, a)
        assert b[1].shape == (1, 0)


def test_boolean_inputs_and_scalar_batch_forward_equal_captum():
    def bool_model(x):
        return (x.float() * torch.tensor([20.0, 50.0, 30.0])).sum(1, keepdim=True)

    inp = torch.tensor([[True, False, True]])
    a, b, same = _pair(lambda mod: mod.Lime(bool_model).attribute(inp, target=0, feature_mask=torch.tensor([[0, 0, 1]]),
                                                                 n_samples=50, baselines=True))
    _close(b, a)
    assert same

    def batch_scalar(x):
        return float((x * 2).sum())

    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    a, b, same = _pair(lambda mod: mod.KernelShap(batch_scalar).attribute(x, n_samples=30))
    _close(b, a)
    assert same
    with pytest.raises(AssertionError, match="Perturbations per eval must be 1"):
        XCP.Lime(batch_scalar).attribute(x, perturbations_per_eval=2)

    def wrong(x):
        return torch.zeros(3)

    with pytest.raises(AssertionError, match="Invalid number of outputs"):
        XCP.Lime(wrong).attribute(x)


# --------------------------------------------------------------------------------- LimeBase
def _interp_space(mod, model):
    def perturb(inp, **kw):
        return torch.bernoulli(torch.full((1, kw["num_interp_features"]), 0.6)).long()

    def from_interp(z, inp, **kw):
        return inp * z[0][kw["feature_mask"]] + (1 - z[0][kw["feature_mask"]]) * kw["baselines"]

    lasso = XL.SkLearnLasso(alpha=0.01) if mod is XCP else CaptumLasso(alpha=0.01)
    lb = mod.LimeBase(model, lasso, mod_sim(mod), perturb, True, from_interp, None)
    return lb.attribute(X1[1:], target=1, n_samples=35, perturbations_per_eval=4,
                        feature_mask=torch.tensor([[0, 1, 1]]), baselines=0.25, num_interp_features=2)


def mod_sim(mod):
    lib = XL if mod is XCP else CL
    return lib.get_exp_kernel_similarity_function("euclidean", 3.0)


def _input_space(mod, model):
    def perturb(inp, **kw):
        yield inp
        while True:
            yield inp + torch.randn_like(inp) * 0.3

    def to_interp(x, inp, **kw):
        return x

    lb = mod.LimeBase(model, SkLearnRidge(alpha=0.5), mod_sim(mod), perturb, False, None, to_interp)
    return lb.attribute(X1[1:], target=0, n_samples=25, perturbations_per_eval=7)


@pytest.mark.parametrize("space", [_interp_space, _input_space])
def test_limebase_both_spaces_equal_captum(space):
    model = MultiInp().a
    a, b, same = _pair(lambda mod: space(mod, model))
    _close(b, a)
    assert same


def test_limebase_errors_and_generator_exhaustion():
    model = MultiInp().a
    with pytest.raises(AssertionError, match="from interpretable space"):
        XCP.LimeBase(model, XL.SkLearnLasso(), XL.get_exp_kernel_similarity_function(), XL.default_perturb_func,
                     True, None, None)
    with pytest.raises(AssertionError, match="to interpretable space"):
        XCP.LimeBase(model, XL.SkLearnLasso(), XL.get_exp_kernel_similarity_function(), XL.default_perturb_func,
                     False, None, None)

    def short(inp, **kw):
        for _ in range(6):
            yield torch.bernoulli(torch.full((1, 3), 0.5)).long()

    lime = XCP.Lime(model, perturb_func=short)
    with pytest.warns(UserWarning, match="Generator completed prior"):
        lime.attribute(X1[:1], target=0, n_samples=10)
    with pytest.raises(NotImplementedError):
        XCP.Lime(model).attribute_future()
    with pytest.raises(NotImplementedError):
        XCP.KernelShap(model).attribute_future()


# --------------------------------------------------------------------------------- progress
@pytest.mark.parametrize("method,label", [("Lime", "Lime attribution"), ("KernelShap", "Kernel Shap attribution")])
def test_progress_label(method, label):
    err = io.StringIO()
    with redirect_stderr(err):
        getattr(XCP, method)(MultiInp().a).attribute(X1[:1], target=0, n_samples=10, perturbations_per_eval=3,
                                                     show_progress=True)
    out = err.getvalue()
    assert f"{label}: 100%" in out and "4/4" in out


# ------------------------------------------------------------------------ bounds-checked run
def test_multi_input_under_numba_boundscheck(tmp_path):
    """The crashing cases (several inputs, per-example masks, an empty input) with
    NUMBA_BOUNDSCHECK=1 and a fresh cache: an out-of-bounds index raises instead of
    corrupting memory, and the process must exit cleanly."""
    code = (
        "import torch, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from xaikernels.captum import Lime, KernelShap\n"
        "import xaikernels.kernels.numba.perturb as K\n"
        "K._PARALLEL_MIN = 0  # the parallel construction kernel too, not only the serial one\n"
        "f = lambda a, b: a.sum(1) * 3 + (b ** 2).sum(1)\n"
        "a = torch.tensor([[1., 2., 3.], [4., 5., 6.]]); b = torch.tensor([[1., -1.], [2., 0.5]])\n"
        "ma = torch.tensor([[0, 0, 1], [0, 1, 2]]); mb = torch.tensor([[2, 2], [3, 4]])\n"
        "for cls in (Lime, KernelShap):\n"
        "    cls(f).attribute((a, b), feature_mask=(ma, mb), n_samples=20, perturbations_per_eval=4)\n"
        "    cls(f).attribute((a, b), n_samples=20)\n"
        "    cls(lambda x: (x * 2).sum(1)).attribute(torch.tensor([[20., 50., 30.], [1., 2., 3.]]),\n"
        "        feature_mask=ma, n_samples=20)\n"
        "    cls(lambda p, e: p.sum(1)).attribute((a[:1], torch.zeros(1, 0)), n_samples=10)\n"
        "print('OK')\n")
    assert_in_bounds(code, tmp_path, NUMBA_NUM_THREADS="2")


@pytest.mark.parametrize("kw", [dict(alpha=0.01), dict(alpha=0.01, fit_intercept=False), dict(alpha=0.05, tol=1e-6)])
def test_own_lasso_wrapper_equals_captums(kw):
    """xaikernels' SkLearnLasso stand-in (Numba for the plain settings, scikit-learn for the
    rest) against Captum's wrapper, same samples."""
    model = MultiInp().a

    def run(mod):
        lasso = XL.SkLearnLasso(**kw) if mod is XCP else CaptumLasso(**kw)
        return mod.Lime(model, interpretable_model=lasso).attribute(X1[:1], target=1, n_samples=40,
                                                                    return_input_shape=False)

    a, b, same = _pair(run)
    _close(b, a)
    assert same


# --------------------------------------------------------------------------- stem tables
@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
@pytest.mark.parametrize("baseline", [0.0, "tensor"])
def test_stem_tables_equal_captum(method, baseline):
    """A CNN on one 32×32 image: the drop-in evaluates the conv stem from coalition tables
    (same draws, model outputs equal up to float rounding) and matches Captum; with
    ``stem = "off"`` it builds the images as before; a custom similarity keeps them off."""
    from _models import SmallCNN

    model = SmallCNN().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 32, 32, generator=g)
    base = torch.rand(1, 3, 32, 32, generator=g) if baseline == "tensor" else baseline
    fm = (torch.arange(32)[:, None] // 8 * 4 + torch.arange(32)[None, :] // 8)[None, None]
    kw = dict(target=2, baselines=base, feature_mask=fm, n_samples=400, perturbations_per_eval=64)
    a, b, same_rng = _pair(lambda m: getattr(m, method)(model).attribute(x, **kw))
    assert same_rng
    _close(b, a)
    ex = getattr(XCP, method)(model)
    torch.manual_seed(0)
    ex.attribute(x, **kw)
    assert ex.stem_info.startswith("tables: features.0")
    ex.stem = "off"
    torch.manual_seed(0)
    off = ex.attribute(x, **kw)
    assert ex.stem_info == "off"
    _close(off, a)
    if method == "Lime":
        custom = XCP.Lime(model, similarity_func=lambda o, p, z, **k: torch.tensor(1.0))
        torch.manual_seed(0)
        custom.attribute(x, **kw)
        assert custom.stem_info == "off"


# ------------------------------------------------------------------- fuzzing pass: errors
def _outcome(fn):
    """(exception type and message, or None; the warnings' categories and messages)."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            fn()
            exc = None
        except Exception as e:  # noqa: BLE001 - compared against Captum's
            exc = (type(e), str(e))
    return exc, sorted((w.category.__name__, str(w.message)) for w in rec)


def _same_outcome(fn):
    torch.manual_seed(0)
    a = _outcome(lambda: fn(captum_attr))
    torch.manual_seed(0)
    b = _outcome(lambda: fn(XCP))
    assert b == a
    return b


_LIN = torch.nn.Linear(6, 3).eval()
_X6 = torch.tensor([[0.3, -1.2, 0.8, 2.0, -0.4, 1.1]])


@pytest.mark.parametrize("method", ["Lime", "KernelShap", "LimeLinReg"])
@pytest.mark.parametrize("case", ["nan_out", "inf_out", "nan_baseline", "nan_input", "inf_input"])
def test_non_finite_data_raise_sklearns_error(method, case):
    """Non-finite model outputs reach the surrogate as scikit-learn sees them: Captum raises
    scikit-learn's ``ValueError('Input y contains NaN.')`` (or infinity); the default Lasso
    drop-in returned zeros, KernelShap raised with other wording."""
    f = {"nan_out": lambda x: _LIN(x) * float("nan"), "inf_out": lambda x: _LIN(x) + float("inf")}.get(case, _LIN)
    x = {"nan_input": _X6.clone().index_fill_(1, torch.tensor([0]), float("nan")),
         "inf_input": _X6.clone().index_fill_(1, torch.tensor([0]), float("inf"))}.get(case, _X6)
    kw = dict(baselines=float("nan")) if case == "nan_baseline" else {}

    def run(mod):
        if method == "LimeLinReg":
            e = mod.Lime(f, interpretable_model=(XL if mod is XCP else _captum_models()).SkLearnLinearRegression())
        else:
            e = getattr(mod, method)(f)
        return e.attribute(x, target=0, n_samples=20, **kw)

    exc, _ = _same_outcome(run)
    assert exc is not None and exc[0] is ValueError and exc[1].startswith("Input y contains")


def _captum_models():
    from captum._utils.models import linear_model

    return linear_model


@pytest.mark.parametrize("sim", [float("nan"), 0.0, -1.0])
@pytest.mark.parametrize("model", ["lasso", "linear"])
def test_bad_similarities_as_captum(sim, model):
    """NaN, all-zero and negative sample weights: scikit-learn's errors (or, for the Lasso's
    negative weights, its answer) as Captum gives them."""
    def run(mod):
        lib = XL if mod is XCP else _captum_models()
        im = lib.SkLearnLasso(alpha=0.01) if model == "lasso" else lib.SkLearnLinearRegression()
        out = mod.Lime(_LIN, interpretable_model=im, similarity_func=lambda o, p, z, **k: sim).attribute(
            _X6, target=0, n_samples=20)
        return out

    torch.manual_seed(0)
    a = _outcome(lambda: run(captum_attr))
    torch.manual_seed(0)
    b = _outcome(lambda: run(XCP))
    assert b[0] == a[0]
    if a[0] is None:
        torch.manual_seed(0)
        want = run(captum_attr)
        torch.manual_seed(0)
        _close(run(XCP), want)


@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
def test_one_float_per_batch_of_samples_is_a_size_mismatch(method):
    """A forward returning one Python float for a batch of several perturbations gives fewer
    outputs than samples: Captum's TensorDataset raises; the drop-in read past the outputs."""
    W = torch.randn(6, 3)

    def f(x):
        return float((x @ W).sum())

    exc, _ = _same_outcome(lambda mod: getattr(mod, method)(f).attribute(_X6, n_samples=30, perturbations_per_eval=3))
    assert exc == (AssertionError, "Size mismatch between tensors")


@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
def test_zero_parameter_forward_as_captum(method):
    """Captum calls a forward without parameters with no arguments (a closure)."""
    def run(mod):
        return getattr(mod, method)(lambda: torch.tensor([1.0])).attribute(_X6, n_samples=10)

    a, b, same = _pair(run)
    _close(b, a)
    assert same


@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
def test_argument_forms_as_captum(method):
    """perturbations_per_eval as a float; additional_forward_args as a list (its items become
    separate arguments) or a bare float (TypeError), as Captum's handling."""
    W = torch.randn(6, 3)
    a, b, same = _pair(lambda mod: getattr(mod, method)(_LIN).attribute(_X6, target=1, n_samples=20,
                                                                       perturbations_per_eval=4.0))
    _close(b, a)
    assert same

    def two(x, s, c):
        return (x @ W) * s + c

    a, b, same = _pair(lambda mod: getattr(mod, method)(two).attribute(
        _X6, target=1, additional_forward_args=[2.0, 1.0], n_samples=20, perturbations_per_eval=3))
    _close(b, a)
    assert same
    exc, _ = _same_outcome(lambda mod: getattr(mod, method)(lambda x, s: (x @ W) * s).attribute(
        _X6, target=1, additional_forward_args=2.0, n_samples=20))
    assert exc is not None and exc[0] is TypeError


# ------------------------------------------------------------------ surrogate model, warnings
def test_default_surrogates_are_linear_models_like_captums():
    """Lime's / KernelShap's default interpretable models are nn.Modules with Captum's
    LinearModel surface: callable, ``norm``, ``representation``, ``bias``, ``classes``,
    ``fit`` returning ``train_time``."""
    from captum._utils.models.linear_model import SkLearnLinearRegression as CaptumLinReg

    for cls, captum_im in (("Lime", CaptumLasso(alpha=0.01)), ("KernelShap", CaptumLinReg())):
        ours = getattr(XCP, cls)(_LIN).interpretable_model
        theirs = getattr(captum_attr, cls)(_LIN).interpretable_model
        assert type(ours).__name__ == type(theirs).__name__ and isinstance(ours, torch.nn.Module)
        assert ours.construct_kwargs == theirs.construct_kwargs and ours.sklearn_module == theirs.sklearn_module
        assert repr(ours) == repr(theirs)
        with pytest.raises(AssertionError):
            ours.representation()
        assert ours.bias() is None and ours.classes() is None and ours.norm is None
    for cls in ("Lime", "KernelShap"):
        torch.manual_seed(0)
        ce = getattr(captum_attr, cls)(_LIN)
        ce.attribute(_X6, target=2, n_samples=40)
        torch.manual_seed(0)
        xe = getattr(XCP, cls)(_LIN)
        xe.attribute(_X6, target=2, n_samples=40)
        c, x = ce.interpretable_model, xe.interpretable_model
        assert repr(x) == repr(c) and x.norm is None
        _close(x.representation(), c.representation())
        _close(x.bias(), c.bias())
        z = torch.rand(5, 6)
        _close(x(z), c(z))
        for m in (x, c):
            with pytest.raises(AttributeError):
                m.classes()
    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        (torch.rand(30, 4) < 0.5).float(), torch.randn(30), torch.rand(30)), batch_size=30)
    for ours, theirs in ((XL.SkLearnRidge(alpha=0.5), SkLearnRidge(alpha=0.5)),
                         (XL.SkLearnLasso(alpha=0.01), CaptumLasso(alpha=0.01))):
        stats = ours.fit(data)
        theirs.fit(data)
        assert set(stats) == {"train_time"}
        _close(ours.representation(), theirs.representation())


def test_lasso_convergence_warning_as_captum():
    """scikit-learn's ConvergenceWarning when the lasso runs out of iterations (Captum's
    wrapper, ours, or Captum's in the drop-in), with its message."""
    from sklearn.exceptions import ConvergenceWarning

    torch.manual_seed(9)
    m = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 2)).eval()
    x = torch.randn(1, 30) * 5
    for lib in (XL, _captum_models()):
        def run(mod, lib=lib):
            im = (lib if mod is XCP else _captum_models()).SkLearnLasso(alpha=1e-5, max_iter=3)
            return mod.Lime(m, interpretable_model=im).attribute(x, target=1, n_samples=100)

        torch.manual_seed(0)
        with pytest.warns(ConvergenceWarning) as rec_c:
            want = run(captum_attr)
        torch.manual_seed(0)
        with pytest.warns(ConvergenceWarning) as rec_x:
            got = run(XCP)
        _close(got, want, tol=1e-3)
        msg = [str(r.message) for r in rec_x if r.category is ConvergenceWarning]
        assert len(msg) == 1 and msg[0].startswith("Objective did not converge. You might want to increase")
        assert len([r for r in rec_c if r.category is ConvergenceWarning]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        XCP.Lime(m).attribute(x, target=1, n_samples=100)


# ----------------------------------------------------------------- forward calls and RNG
def test_hooked_conv_net_sees_captums_forward_calls():
    """A conv net with a forward hook is called exactly as Captum calls it (no layout-probe
    call, contiguous inputs)."""
    from _models import SmallCNN

    model = SmallCNN().eval()
    x = torch.rand(1, 3, 16, 16)
    seen = {}

    def hook(mod, inp, out):
        seen.setdefault("calls", []).append((inp[0].shape[0], inp[0].is_contiguous()))

    h = model.register_forward_hook(hook)
    try:
        counts = []
        for mod in (captum_attr, XCP):
            seen.clear()
            torch.manual_seed(0)
            mod.Lime(model).attribute(x, target=1, n_samples=20, perturbations_per_eval=5)
            counts.append(seen["calls"])
    finally:
        h.remove()
    assert counts[1] == counts[0] == [(5, True)] * 4


@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
@pytest.mark.parametrize("ppe", [1, 4])
def test_forward_drawing_from_the_generator_equals_captum(method, ppe):
    """Dropout in training mode draws from the global generator during the forward: the
    samples are drawn batch by batch, interleaved with the forward calls, as Captum's."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3)).train()
    a, b, same = _pair(lambda mod: getattr(mod, method)(model).attribute(_X6, target=1, n_samples=30,
                                                                         perturbations_per_eval=ppe))
    _close(b, a)
    assert same


class _TwoInputs(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, a, b):
        return self.net(a) + self.net(b)


def _result_of(fn):
    try:
        return "ok", fn()
    except Exception as e:  # the exception's type and message are the outcome compared
        return type(e).__name__, str(e)


@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
@pytest.mark.parametrize("case", ["float_mask", "bool_mask", "uint8_mask", "int16_mask", "int32_mask", "mask_1x1x6",
                                  "tuple_in_tensor_mask", "tuple_in_tensor_baseline"])
def test_mask_and_baseline_forms_fail_or_work_as_captum(method, case):
    """Feature masks Captum's transform cannot index with (float, bool, uint8, int8 / int16),
    masks of another shape, and a tensor where a tuple is due with tuple inputs: the same
    exception type and message as Captum, or (int32) the same attributions."""
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 3)
    x = torch.randn(1, 6)
    ids = [[0, 0, 1, 1, 2, 2]]
    kw, model, inp = {}, net, x
    if case.endswith("_mask") and case[:-5] in ("float", "bool", "uint8", "int16", "int32"):
        dt = {"float": torch.float32, "bool": torch.bool, "uint8": torch.uint8, "int16": torch.int16,
              "int32": torch.int32}[case[:-5]]
        kw["feature_mask"] = torch.tensor([[1, 0, 1, 0, 1, 0]] if dt == torch.bool else ids, dtype=dt)
    elif case == "mask_1x1x6":
        kw["feature_mask"] = torch.tensor([ids])
    else:
        model, inp = _TwoInputs(net), (torch.randn(1, 6), torch.randn(1, 6))
        kw["feature_mask" if case.endswith("mask") else "baselines"] = (torch.tensor(ids) if case.endswith("mask")
                                                                      else torch.zeros(1, 6))

    def run(lib):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _result_of(lambda: getattr(lib, method)(model).attribute(inp, target=0, n_samples=20, **kw))

    (ka, va), (kb, vb), same_state = _pair(run)
    assert ka == kb, (va, vb)
    if ka == "ok":
        torch.testing.assert_close(vb, va, atol=1e-4, rtol=1e-4)
        assert same_state
    else:
        assert va == vb


@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
@pytest.mark.parametrize("dtype, base", [(torch.uint8, 300), (torch.uint8, -1), (torch.int8, 200), (torch.int16, 7)])
def test_integer_baseline_outside_the_dtype_wraps_as_captum(method, dtype, base):
    """A number baseline outside an integer input's range: Captum's transform multiplies the
    hidden mask (in the input's dtype) by it, so it wraps (300 on uint8 is 44); the drop-in
    hands the forward the same batches and returns the same attributions (it raised)."""
    torch.manual_seed(3)
    net = torch.nn.Linear(6, 3)
    x = (torch.rand(1, 6) * 100).to(dtype)
    seen = {}

    def run(lib):
        batches = seen.setdefault(lib.__name__, [])

        def fwd(t):
            batches.append(t.clone())
            return net(t.float())
        return getattr(lib, method)(fwd).attribute(x, baselines=base, target=0, n_samples=30,
                                                   perturbations_per_eval=4)

    a, b, same_state = _pair(run, seed=5)
    ours, theirs = torch.cat(seen["xaikernels.captum"]), torch.cat(seen["captum.attr"])
    assert ours.dtype == dtype and torch.equal(ours, theirs)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert same_state


_IMG = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(4))
_IMG_MASK = (torch.arange(12)[:, None] // 4 * 3 + torch.arange(10)[None, :] // 4)[None, None]


def _keeping_forward(keep, kept):
    """A forward on (k, 3, 12, 10) batches that keeps something of each batch (``keep``)."""
    w = torch.linspace(-1, 1, 3 * 12 * 10).reshape(3 * 12 * 10, 1)

    def fwd(t):
        if keep == "tensor":
            kept.append(t)
        elif keep == "view":
            kept.append(t[:, 1])
        elif keep == "numpy":
            kept.append(t.numpy())
        elif keep == "storage":
            kept.append((t.untyped_storage(), t.storage_offset(), t.shape, t.stride()))
        elif keep == "inplace":
            y = t.flatten(1) @ w
            t.mul_(-3.0)  # scribbles on its input after using it
            return y
        elif keep == "alias":
            return t.flatten(1)[:, :1]  # the output is a view of the input
        return t.flatten(1) @ w
    return fwd


def _kept_values(keep, kept):
    if keep == "storage":
        return [torch.empty(0).set_(st, off, shape, stride).clone() for st, off, shape, stride in kept]
    return [torch.as_tensor(k).clone() for k in kept]


@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
@pytest.mark.parametrize("keep", ["tensor", "view", "numpy", "storage", "inplace", "alias"])
def test_forward_keeping_its_batches_sees_captums(method, keep):
    """The drop-in reuses one batch tensor while the forward keeps nothing of it; a forward
    that keeps the batch, a view, a NumPy array or the storage of it, or returns an output
    aliasing it, finds what it kept as Captum's fresh batches left it, and one that scribbles
    on its input changes nothing."""
    seen = {}

    def run(lib):
        kept = seen.setdefault(lib.__name__, [])
        return getattr(lib, method)(_keeping_forward(keep, kept)).attribute(
            _IMG, target=0, feature_mask=_IMG_MASK, n_samples=23, perturbations_per_eval=5)

    a, b, same = _pair(run, seed=2)
    _close(b, a)
    assert same
    ours, theirs = _kept_values(keep, seen["xaikernels.captum"]), _kept_values(keep, seen["captum.attr"])
    assert len(ours) == len(theirs)
    for o, t in zip(ours, theirs):
        assert torch.equal(o, t)


@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
def test_batches_reuse_one_tensor_when_the_forward_keeps_none(method):
    """A forward that keeps nothing of its batches gets every full batch in one tensor (no
    allocation per batch), with Captum's attributions."""
    ptrs = []
    w = torch.linspace(-1, 1, 3 * 12 * 10).reshape(-1, 1)

    def fwd(t):
        ptrs.append((t.shape[0], t.data_ptr()))
        return t.flatten(1) @ w

    torch.manual_seed(1)
    a = getattr(captum_attr, method)(lambda t: t.flatten(1) @ w).attribute(
        _IMG, target=0, feature_mask=_IMG_MASK, n_samples=23, perturbations_per_eval=5)
    torch.manual_seed(1)
    b = getattr(XCP, method)(fwd).attribute(_IMG, target=0, feature_mask=_IMG_MASK, n_samples=23,
                                          perturbations_per_eval=5)
    _close(b, a)
    assert [k for k, _ in ptrs] == [5, 5, 5, 5, 3]
    assert len({p for k, p in ptrs if k == 5}) == 1
