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
