"""The tabular neighbourhood's inverse-CDF sampler (issue 5): Φ⁻¹ accuracy, the sampled
distributions (bin frequencies, within-bin truncated normals, continuous normals),
reproducibility across thread counts / chunkings / odd sizes, and the fused Gram fit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xaikernels.ops import perturb as P
from xaikernels.reference import perturb as R

try:
    import numba  # noqa: F401

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
BACKENDS = ["reference"] + (["numba"] if HAVE_NUMBA else [])


def _nd(v):
    return torch.special.ndtr(torch.as_tensor(v, dtype=torch.float64)).numpy()


def _probe():
    rng = np.random.RandomState(0)
    return np.concatenate([np.logspace(-300, -1, 3000), np.linspace(1e-6, 1 - 1e-6, 20001),
                           1 - np.logspace(-16, -1, 500), rng.rand(20000), [0.5, 0.075, 0.925, 1e-300]])


def test_ndtri_as241_reference_accuracy():
    p = _probe()
    ref = torch.special.ndtri(torch.from_numpy(p)).numpy()
    z = R.ndtri_as241(p)
    rel = np.abs(z - ref) / np.maximum(np.abs(ref), 1e-300)
    assert rel.max() < 5e-15
    # the bit-level log equals the C library's to an ulp
    x = np.logspace(-300, 0, 5000)[:-1] * 0.5
    np.testing.assert_allclose(R._log_fdlibm(x), np.log(x), rtol=4e-16, atol=0)


@needs_numba
def test_ndtri_numba_equals_reference_bitwise():
    from xaikernels.kernels.numba import perturb as K

    p = _probe()
    np.testing.assert_array_equal(K.ndtri(p), R.ndtri_as241(p))


def _sampler(X, **kw):
    from xaikernels.methods.lime import TabularSampler

    return TabularSampler(X, **kw)


def _skewed(n=3000, seed=3):
    rng = np.random.RandomState(seed)
    # a skewed feature puts the outer bins' edges several bin-stds from their means (Φ⁻¹'s tails)
    return np.c_[rng.randn(n), rng.exponential(1.0, n) ** 2, rng.randn(n) * 1e-3 + 7, rng.standard_t(2, n)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("discretizer", ["quartile", "decile"])
def test_bin_frequencies_and_within_bin_truncated_normals(backend, discretizer):
    X = _skewed()
    s = _sampler(X, discretizer=discretizer)
    n = 100001 if backend == "numba" else 30001
    _, inv, _ = s.neighbourhood(X[5], n, seed=17, backend=backend)
    inv = inv[1:]
    m_all = n - 1
    for d, (means, stds, mins, maxs) in s.bin_stats.items():
        vals, freq = s.value_table[d]
        idx = np.searchsorted(s.bins[d], inv[:, d])
        for j, k in enumerate(vals.astype(int)):
            sel = np.sort(inv[idx == k, d])
            m = sel.size
            p = freq[j]
            assert abs(m / m_all - p) < 4.5 * math.sqrt(p * (1 - p) / m_all), (d, k, m / m_all, p)
            assert sel.size == 0 or (sel[0] >= mins[k] and sel[-1] <= maxs[k])
            if maxs[k] <= mins[k] or m < 100:
                continue
            a, b = _nd((mins[k] - means[k]) / stds[k]), _nd((maxs[k] - means[k]) / stds[k])
            F = np.clip((_nd((sel - means[k]) / stds[k]) - a) / (b - a), 0.0, 1.0)
            ks = max(np.max(np.arange(1, m + 1) / m - F), np.max(F - np.arange(m) / m))
            assert ks < 1.95 / math.sqrt(m), (d, k, ks)  # KS, 0.1% critical value


@pytest.mark.parametrize("backend", BACKENDS)
def test_continuous_features_are_normal(backend):
    X = _skewed()
    s = _sampler(X, discretize_continuous=False)
    n = 50001
    _, inv, _ = s.neighbourhood(X[1], n, seed=5, backend=backend)
    for d in range(X.shape[1]):
        x = np.sort((inv[1:, d] - s.means[d]) / s.scale[d])
        F = _nd(x)
        m = x.size
        ks = max(np.max(np.arange(1, m + 1) / m - F), np.max(F - np.arange(m) / m))
        assert ks < 1.95 / math.sqrt(m), (d, ks)


def _mixed():
    rng = np.random.RandomState(1)
    X = rng.randn(400, 7) * [1.0, 1.0, 3.0, 0.2, 1.0, 1.0, 2.0]
    X[:, 1] = rng.randint(0, 5, 400)
    X[:, 4] = np.round(X[:, 4])  # ties on the edges, flat bins
    X[:, 5] = np.where(X[:, 5] > 0.5, 2.0, X[:, 5])
    return X


@needs_numba
@pytest.mark.parametrize("disc", [True, False])
def test_reproducible_across_threads_chunks_and_odd_sizes(disc):
    import numba

    X = _mixed()
    s = _sampler(X, categorical_features=[1], discretize_continuous=disc)
    plan = s.plan(X[2])
    n = 70001  # > the parallel threshold, not a multiple of the 256-row block
    whole = P.tabular_neighbourhood(n, 8, plan, stream=3, kernel_width=1.7, backend="numba")
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = P.tabular_neighbourhood(n, 8, plan, stream=3, kernel_width=1.7, backend="numba")
    finally:
        numba.set_num_threads(old)
    cuts = [0, 1, 2, 255, 257, 1000, 33333, n]
    parts = [P.tabular_neighbourhood(b - a, 8, plan, stream=3, row_offset=a, kernel_width=1.7, backend="numba")
             for a, b in zip(cuts[:-1], cuts[1:])]
    for i in range(4):
        np.testing.assert_array_equal(whole[i], one[i])
        np.testing.assert_array_equal(np.concatenate([p[i] for p in parts]), whole[i])
    # batch 1: the instance itself; a later single row equals its row in the whole
    first = P.tabular_neighbourhood(1, 8, plan, stream=3, backend="numba")
    np.testing.assert_array_equal(first[1][0], X[2])
    single = P.tabular_neighbourhood(1, 8, plan, stream=3, row_offset=4242, backend="numba")
    np.testing.assert_array_equal(single[1][0], whole[1][4242])
    # and the reference draws the same numbers (odd size, offset)
    ref = P.tabular_neighbourhood(301, 8, plan, stream=3, row_offset=77, kernel_width=1.7, backend="reference")
    np.testing.assert_array_equal(ref[0], whole[0][77:378])
    np.testing.assert_allclose(ref[1], whole[1][77:378], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ref[3], whole[3][77:378], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_and_stream_change_draws(backend):
    X = _mixed()
    s = _sampler(X, categorical_features=[1])
    plan = s.plan(X[0])
    a = P.tabular_neighbourhood(50, 1, plan, backend=backend)[1]
    b = P.tabular_neighbourhood(50, 2, plan, backend=backend)[1]
    c = P.tabular_neighbourhood(50, 1, plan, stream=1, backend=backend)[1]
    np.testing.assert_array_equal(a, P.tabular_neighbourhood(50, 1, plan, backend=backend)[1])
    assert not np.array_equal(a[1:], b[1:]) and not np.array_equal(a[1:], c[1:])
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("disc", [True, False])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_gram_and_fused_fit_equal_the_plain_fit(backend, disc, metric):
    X = _mixed()
    s = _sampler(X, categorical_features=[1], discretize_continuous=disc)
    plan = s.plan(X[4])
    sc, inv, d, w, g = P.tabular_neighbourhood(2999, 6, plan, metric=metric, kernel_width=2.3, gram=True,
                                               backend=backend)
    plain = P.tabular_neighbourhood(2999, 6, plan, metric=metric, kernel_width=2.3, backend=backend)
    for i in range(4):
        np.testing.assert_array_equal(plain[i], (sc, inv, d, w)[i])
    za = np.c_[sc, np.ones(len(sc))]
    np.testing.assert_allclose(g, (za * w[:, None]).T @ za, rtol=1e-12, atol=1e-9)
    rng = np.random.RandomState(0)
    z = inv @ rng.randn(inv.shape[1], 4)
    Y = np.exp(z - z.max(1, keepdims=True))
    Y /= Y.sum(1, keepdims=True)
    for fs in ("auto", "none", "highest_weights", "forward_selection", "lasso_path"):
        a = P.fit_lime_gram(sc, Y, [0, 3], w, g, feature_selection=fs, num_features=3, backend=backend)
        b = P.fit_lime(sc, Y, [0, 3], w, weights="weights", feature_selection=fs, num_features=3, backend=backend)
        np.testing.assert_array_equal(a["used"], b["used"])
        for k in ("coef", "intercept", "score", "local_pred"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-10)


def test_fit_lime_gram_checks_shapes():
    Z = np.zeros((5, 2))
    with pytest.raises(ValueError, match="shapes"):
        P.fit_lime_gram(Z, np.zeros((5, 2)), [0], np.ones(5), np.zeros((2, 2)))
    with pytest.raises(IndexError):
        P.fit_lime_gram(Z, np.zeros((5, 2)), [2], np.ones(5), np.zeros((3, 3)))


def test_explainer_fused_fit_equals_unfused():
    """LimeTabularExplainer's default path (Gram from the sampler) gives the explanation that
    the plain fit of the same neighbourhood gives."""
    from xaikernels import lime as XL

    X = _mixed()
    Wt = np.random.RandomState(2).randn(7, 3)

    def pf(A):
        z = A @ Wt
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    ex = XL.LimeTabularExplainer(X, categorical_features=[1], random_state=4)
    e1 = ex.explain_instance(X[3], pf, num_samples=1500, top_labels=2)
    seed = np.random.RandomState(4).randint(0, 2**31 - 1)  # the explainer's first draw
    sc, inv, d, w = P.tabular_neighbourhood(1500, seed, ex.sampler.plan(X[3]), kernel_width=ex.base.kernel_width)
    Y = pf(inv)
    labels = e1.top_labels
    fit = P.fit_lime(sc, Y, labels, w, weights="weights", feature_selection="auto", num_features=10)
    lists = XL._local_exps(fit["coef"], fit["used"])
    for j, lab in enumerate(labels):
        assert [f for f, _ in e1.local_exp[lab]] == [f for f, _ in lists[j]]
        np.testing.assert_allclose([v for _, v in e1.local_exp[lab]], [v for _, v in lists[j]], rtol=1e-9)
        assert abs(e1.intercept[lab] - fit["intercept"][j]) < 1e-9


@pytest.mark.parametrize("backend", BACKENDS)
def test_lime_tabular_fused_fit_equals_fit_surrogate(backend):
    from xaikernels.methods.lime import TabularSampler, lime_tabular

    X = _mixed()
    lin = torch.nn.Linear(7, 3).double()

    def model(t):
        return lin(t.double())

    s = TabularSampler(X, [1])
    res = lime_tabular(model, X[:2], None, target=[0, 2], n_samples=800, seed=9, sampler=s, alpha=0.5,
                       feature_selection="highest_weights", num_features=4, backend=backend)
    for n in range(2):
        sc, inv, d = P.tabular_neighbourhood(800, 9, s.plan(X[n]), stream=n, backend=backend)
        with torch.no_grad():
            # lime_tabular hands a plain function float32 rows
            Y = torch.softmax(model(torch.as_tensor(inv, dtype=torch.float32)), 1).numpy()
        w = P.exp_kernel(d, float(np.sqrt(7) * 0.75), backend=backend)
        fit = P.fit_surrogate(sc, np.ascontiguousarray(Y[:, res.targets[n]]), w, alpha=0.5,
                              feature_selection="highest_weights", num_features=4, backend=backend)
        np.testing.assert_array_equal(res.used[n], fit["used"])
        np.testing.assert_allclose(res.coef[n], fit["coef"], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(res.intercept[n], fit["intercept"], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(res.score[n], fit["score"], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_uint8_surrogate_rows(backend):
    X = _mixed()
    for disc, expect in ((True, np.uint8), (False, np.float64)):
        plan = _sampler(X, categorical_features=[1], discretize_continuous=disc).plan(X[0])
        a = P.tabular_neighbourhood(600, 2, plan, kernel_width=1.5, gram=True, binary_uint8=True, backend=backend)
        b = P.tabular_neighbourhood(600, 2, plan, kernel_width=1.5, gram=True, backend=backend)
        assert a[0].dtype == expect
        np.testing.assert_array_equal(a[0].astype(np.float64), b[0])
        for i in range(1, 5):
            np.testing.assert_array_equal(a[i], b[i])


@pytest.mark.parametrize("route", ["_local_exps", "_local_exps_small", "_local_exps_lexsort"])
def test_local_exps_sort_as_lime(route):
    """All labels' lists at once equal lime's ``sorted(zip(used_features, coef), key=abs,
    reverse=True)`` per label, used_features in selection order: ties in |coef| (signs
    differing) keep selection order, labels may select different features and counts; the
    Python sort (small sizes) and the lexsort route alike."""
    from xaikernels import lime as XL

    rng = np.random.RandomState(3)
    L, F = 4, 9
    coef = np.round(rng.randn(L, F), 1)
    coef[0, :4] = [0.5, -0.5, 0.5, 0.0]
    used = np.zeros((L, F), dtype=np.int64)
    for j, k in enumerate([F, 5, 1, 3]):
        sel = rng.permutation(F)[:k]
        used[j, sel] = np.arange(1, k + 1)
    used[0, :4] = [3, 1, 2, 4]
    lists = getattr(XL, route)(coef, used)
    for j in range(L):
        feats = [int(f) for f in np.argsort(np.where(used[j] > 0, used[j], F + 1))[:np.count_nonzero(used[j])]]
        expect = sorted(zip(feats, coef[j, feats].tolist()), key=lambda x: np.abs(x[1]), reverse=True)
        assert lists[j] == expect
        assert all(type(f) is int and type(v) is float for f, v in lists[j])


def test_local_exps_nan_takes_the_lexsort():
    """A NaN coefficient: the Python sort's order would be undefined, so the small route
    declines and the lists are the lexsort's (NaN last, as NumPy sorts it)."""
    from xaikernels import lime as XL

    coef = np.array([[0.2, np.nan, -0.7, 0.1]])
    used = np.array([[1, 2, 3, 4]])
    assert XL._local_exps_small(coef, used) is None
    lists = XL._local_exps(coef, used)
    assert [f for f, _ in lists[0]] == [f for f, _ in XL._local_exps_lexsort(coef, used)[0]] == [2, 0, 3, 1]
    assert [v for _, v in lists[0][:3]] == [-0.7, 0.2, 0.1] and np.isnan(lists[0][3][1])
