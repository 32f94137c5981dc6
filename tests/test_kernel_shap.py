"""KernelSHAP: exact Shapley values when all coalitions are enumerated (brute force oracle),
efficiency, reproducibility, sampling convergence and bad input."""
import itertools
import math

import numpy as np
import pytest
import torch

from _models import MLP, SmallCNN
from xaikernels.methods.kernel_shap import all_coalitions, kernel_shap

from test_lime_ops import BACKENDS


def brute_shapley(f, x, b, groups, M):
    """φ_i = Σ_S |S|!(M-|S|-1)!/M! (v(S∪i) - v(S)), v(S) = f(x on the features in S, b elsewhere)."""
    def v(S):
        z = b.clone()
        for j in S:
            z[groups == j] = x[groups == j]
        return f(z)

    phi = np.zeros(M)
    for i in range(M):
        rest = [j for j in range(M) if j != i]
        for k in range(M):
            for S in itertools.combinations(rest, k):
                wgt = math.factorial(k) * math.factorial(M - k - 1) / math.factorial(M)
                phi[i] += wgt * (v(S + (i,)) - v(S))
    return phi


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M", [2, 5, 9])
def test_enumerated_equals_exact_shapley(backend, M):
    torch.manual_seed(M)
    model = MLP(d=11, classes=3).eval().double()
    x = torch.randn(2, 11, dtype=torch.float64)
    b = torch.randn(11, dtype=torch.float64) * 0.3
    groups = torch.arange(11) % M
    r = kernel_shap(model, x, target=[0, 2], baselines=b, feature_mask=groups, n_samples=2 ** M, backend=backend)
    assert r.exact.all()
    for n, t in ((0, 0), (1, 2)):
        exact = brute_shapley(lambda z: model(z[None])[0, t].item(), x[n], b, groups, M)
        np.testing.assert_allclose(r.phi[n][0], exact, rtol=1e-9, atol=1e-11)
    assert np.all(np.isfinite(r.score)) and np.all(r.score <= 1 + 1e-12)
    assert r.attribution().shape == (2, 1, 11)


@pytest.mark.parametrize("paired", [True, False])
def test_sampled_efficiency_and_convergence(paired):
    model = MLP(d=8, classes=2, seed=3).eval().double()
    x = torch.randn(1, 8, dtype=torch.float64)
    exact = kernel_shap(model, x, target=1, n_samples=300).phi[0][0]
    errs = []
    for ns in (40, 2000):
        r = kernel_shap(model, x, target=1, n_samples=ns, enumerate_all=False, paired=paired, seed=1)
        assert not r.exact.any()
        np.testing.assert_allclose(r.phi[0].sum(1), r.full_value[0] - r.base_value[0], rtol=1e-10, atol=1e-12)
        errs.append(np.abs(r.phi[0][0] - exact).max())
    assert errs[1] < errs[0] and errs[1] < 0.05 * np.abs(exact).max() + 1e-3, errs


def test_reproducible_and_chunking_invariant():
    model = SmallCNN().eval()
    x = torch.rand(2, 3, 8, 8)
    fm = torch.arange(64).reshape(8, 8) // 16
    fm = (fm + 4 * ((torch.arange(8)[None, :] >= 4).long())).reshape(1, 8, 8)
    a = kernel_shap(model, x, target=None, feature_mask=fm, n_samples=100, enumerate_all=False, batch_size=64, seed=2)
    b = kernel_shap(model, x, target=None, feature_mask=fm, n_samples=100, enumerate_all=False, batch_size=64, seed=2)
    np.testing.assert_array_equal(a.phi[1], b.phi[1])
    c = kernel_shap(model, x, target=None, feature_mask=fm, n_samples=100, enumerate_all=False, batch_size=64, seed=3)
    assert not np.allclose(a.phi[0], c.phi[0])


def test_bad_input():
    model = MLP(d=6, classes=2).eval()
    x = torch.randn(1, 6)
    with pytest.raises(ValueError, match="underdetermined"):
        kernel_shap(model, x, n_samples=3, enumerate_all=False)
    r = kernel_shap(model, x, n_samples=3, enumerate_all=False, alpha=0.1)  # a penalty makes it well posed
    np.testing.assert_allclose(r.phi[0].sum(1), r.full_value[0] - r.base_value[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="broadcast"):
        kernel_shap(model, x, feature_mask=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="without gaps"):
        kernel_shap(model, x, feature_mask=torch.tensor([0, 0, 2, 2, 3, 3]))
    assert all_coalitions(3).shape == (6, 3)


# ------------------------------------------------------------------------- stem coalition tables
def _block_map(H, W, rows, cols):
    return (np.arange(H)[:, None] * rows // H) * cols + (np.arange(W)[None, :] * cols // W)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stem_tables_equal_model_evaluation(dtype):
    model = SmallCNN().eval().to(dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 10, 10, generator=g, dtype=dtype)
    b = torch.rand(3, 10, 10, generator=g, dtype=dtype) * 0.5 - 0.1  # a non-zero baseline, one per instance
    fm = torch.from_numpy(np.stack([_block_map(10, 10, 3, 3), _block_map(10, 10, 2, 4)])).reshape(2, 1, 10, 10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tight = dtype == torch.float64
    for kw in (dict(n_samples=1024), dict(n_samples=150, enumerate_all=False, seed=4)):
        kw.update(target=[1, 3], baselines=b, feature_mask=fm, batch_size=64)
        on = kernel_shap(model, x, stem="on", **kw)
        off = kernel_shap(model, x, stem="off", **kw)
        assert on.extras["stem"].startswith("tables: features.0") and off.extras["stem"] == "off"
        assert on.exact.all() == ("enumerate_all" not in kw) and on.n_evals == off.n_evals
        assert [p.shape for p in on.phi] == [(1, 9), (1, 8)]
        for a, c in zip(on.phi, off.phi):
            np.testing.assert_allclose(a, c, rtol=1e-9 if tight else 1e-4,
                                       atol=1e-12 if tight else 1e-4 * np.abs(c).max())
        for a, c in ((on.base_value, off.base_value), (on.full_value, off.full_value)):
            np.testing.assert_allclose(a, c, rtol=1e-9 if tight else 1e-5, atol=1e-12 if tight else 1e-5)
        for n in range(2):  # efficiency, with the values the tables produced
            np.testing.assert_allclose(on.phi[n].sum(1), on.full_value[n] - on.base_value[n], rtol=1e-9,
                                       atol=1e-10 if tight else 1e-6)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model.training


def test_stem_modes():
    x = torch.rand(1, 3, 32, 32)
    fm = torch.from_numpy(_block_map(32, 32, 4, 4)).reshape(1, 1, 32, 32)
    kw = dict(feature_mask=fm, n_samples=400)
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3)).eval()
    with pytest.raises(ValueError, match="cannot be tabulated.*alone"):
        kernel_shap(flat, x, stem="on", **kw)
    assert kernel_shap(flat, x, **kw).extras["stem"].startswith("off: the input does not go into")
    mlp = MLP(d=6, classes=2).eval()
    with pytest.raises(ValueError, match="cannot be tabulated.*not an image"):
        kernel_shap(mlp, torch.randn(1, 6), stem="on", n_samples=20)
    assert kernel_shap(mlp, torch.randn(1, 6), n_samples=20).extras["stem"].startswith("off: the input is 2-D")
    cnn = SmallCNN().eval()
    per_channel = (torch.from_numpy(_block_map(32, 32, 2, 2)).expand(3, 32, 32)
                   + 4 * torch.tensor([0, 0, 1])[:, None, None])
    with pytest.raises(ValueError, match="differs between channels"):
        kernel_shap(cnn, x, feature_mask=per_channel, n_samples=400, stem="on")
    r = kernel_shap(cnn, x, feature_mask=per_channel, n_samples=400)
    assert r.extras["stem"] == "off: the feature map differs between channels" and r.phi[0].shape == (1, 8)
    assert kernel_shap(cnn, x, **kw).extras["stem"].startswith("tables:")
    assert kernel_shap(cnn, x, stem="off", **kw).extras["stem"] == "off"
    small = dict(kw, feature_mask=torch.from_numpy(_block_map(8, 8, 2, 2))[None, None], n_samples=30)  # too little work
    assert kernel_shap(cnn, x[..., :8, :8], **small).extras["stem"].startswith("off: too little work")
    with pytest.raises(ValueError, match="stem must be"):
        kernel_shap(cnn, x, stem="yes", **kw)


# ------------------------------------------------- Captum drop-in plumbing (no Captum needed)
@pytest.mark.parametrize("backend", BACKENDS)
def test_lasso_fit_checks_before_the_kernel_and_reports_convergence(backend):
    """Mismatched lengths or non-finite data raise before any kernel indexes them; the
    convergence flag (scikit-learn's ConvergenceWarning case) agrees between backends."""
    from xaikernels.ops import perturb as P

    rng = np.random.RandomState(0)
    X = (rng.rand(1, 40, 8) < 0.5).astype(np.float64)
    y = X[0] @ rng.randn(8) + 0.1 * rng.randn(40)
    w = rng.rand(1, 40)
    for Y, W in ((y[None, :30, None], w), (y[None, :, None], w[:, :30]), (y[None, :, None], w[None])):
        with pytest.raises(ValueError, match="shapes disagree"):
            P.lasso_fit(X, Y, W, 0.01, backend=backend)
    with pytest.raises(ValueError, match="non-finite"):
        P.lasso_fit(X, np.where(np.arange(40) == 3, np.nan, y)[None, :, None], w, 0.01, backend=backend)
    coef, icpt, info = P.lasso_fit(X, y[None, :, None], w, 1e-5, max_iter=3, return_info=True, backend=backend)
    assert info.shape == (1, 1, 3) and info[0, 0, 2] == 0.0 and info[0, 0, 0] > info[0, 0, 1] > 0
    _, _, info = P.lasso_fit(X, y[None, :, None], w, 0.01, return_info=True, backend=backend)
    assert info[0, 0, 2] == 1.0 and info[0, 0, 0] <= info[0, 0, 1]


def test_expected_rows_of_padding_windows_do_not_warn():
    """A window wholly in padding (no segment) has one key, without log1p(-1) warning."""
    from types import SimpleNamespace

    from xaikernels.methods._stem import _expected_rows

    wd = SimpleNamespace(segs=np.array([[-1, -1, -1], [0, 1, -1], [2, -1, -1]]))
    with np.errstate(all="raise"):
        got = _expected_rows(wd, 7)
    assert got == pytest.approx(1 + 4 * (1 - 0.75 ** 7) + 2 * (1 - 0.5 ** 7), rel=1e-12)
    assert _expected_rows(wd, 0) == 0.0


def test_captum_lime_dropin_plumbing():
    """Without Captum: a zero-parameter forward is called without arguments; one float per
    batch of several samples is a size mismatch (not an out-of-bounds read); non-finite
    outputs raise scikit-learn's error; the default surrogate is a callable nn.Module; the
    lasso warns when it runs out of iterations."""
    import warnings

    import xaikernels.captum as XCP
    from xaikernels.captum import _lime as XL

    x = torch.tensor([[0.3, -1.2, 0.8, 2.0, -0.4, 1.1]])
    for cls in (XCP.Lime, XCP.KernelShap):
        torch.manual_seed(0)
        assert cls(lambda: torch.tensor([1.0])).attribute(x, n_samples=10).shape == x.shape
        with pytest.raises(AssertionError, match="Size mismatch between tensors"):
            cls(lambda z: float(z.sum())).attribute(x, n_samples=30, perturbations_per_eval=3)
        with pytest.raises(ValueError, match=r"^Input y contains NaN\.$"):
            cls(lambda z: z.sum(1) * float("nan")).attribute(x, n_samples=20)
        with pytest.raises(ValueError, match=r"^Input y contains infinity or a value too large"):
            cls(lambda z: z.sum(1) + float("inf")).attribute(x, n_samples=20)
    e = XCP.Lime(lambda z: z.sum(1))
    assert isinstance(e.interpretable_model, (torch.nn.Module, XL.LinearModel))
    torch.manual_seed(0)
    e.attribute(x, n_samples=40)
    im = e.interpretable_model
    z = torch.rand(3, 6)
    torch.testing.assert_close(im(z), z @ im.representation().T + im.bias())
    with pytest.raises(AssertionError):
        XL.SkLearnLasso().representation()
    try:
        from sklearn.exceptions import ConvergenceWarning
    except ImportError:
        ConvergenceWarning = XL.LassoConvergenceWarning
    torch.manual_seed(9)
    m = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 2)).eval()
    with pytest.warns(ConvergenceWarning, match="Objective did not converge"):
        XCP.Lime(m, interpretable_model=XL.SkLearnLasso(alpha=1e-5, max_iter=3)).attribute(
            torch.randn(1, 30) * 5, target=1, n_samples=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        XCP.Lime(m).attribute(torch.randn(1, 30), target=1, n_samples=100)
