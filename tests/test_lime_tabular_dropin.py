"""``xaikernels.lime.LimeTabularExplainer`` against lime's own behaviour beyond the numbers:
constructor attributes, lime discretizer objects, ``training_data_stats`` and scipy-sparse data
(lime's own ``test_lime_tabular.py`` passes 10/10 with the import swapped; these tests pin the
pieces it exercises, with lime as the oracle where it is installed)."""
import collections

import numpy as np
import pytest

from xaikernels import lime as XL

from test_lime_ops import needs_numba

sps = pytest.importorskip("scipy.sparse")


def _clf(D, K=3, seed=0):
    Wt = np.random.RandomState(seed).randn(D, K)

    def pf(X):
        X = X.toarray() if sps.issparse(X) else X
        z = X @ Wt * 0.5
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return pf


def _data(n=300, D=6, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, D) * (1 + np.arange(D)) + np.arange(D)
    X[:, 2] = rng.randint(0, 4, n)
    y = (X[:, 0] + X[:, 3] > 3).astype(int)
    return X, y


# ------------------------------------------------------------------------- attributes
@pytest.mark.peer
@pytest.mark.parametrize("kw", [dict(), dict(categorical_features=np.array([2])),
                                dict(categorical_features=[2], discretize_continuous=False),
                                dict(categorical_features=np.array([2, 4]), discretize_continuous=False),
                                dict(discretizer="decile"), dict(discretizer="entropy")])
def test_constructor_attributes_equal_lime(kw):
    lt_mod = pytest.importorskip("lime.lime_tabular")
    X, y = _data()
    names = np.array([f"f{i}" for i in range(X.shape[1])])
    lt = lt_mod.LimeTabularExplainer(X, feature_names=names, training_labels=y, random_state=3, **kw)
    xt = XL.LimeTabularExplainer(X, feature_names=names, training_labels=y, random_state=3, **kw)
    assert xt.feature_names == lt.feature_names and isinstance(xt.feature_names, list)
    assert xt.categorical_features == lt.categorical_features
    assert sorted(xt.feature_values) == sorted(lt.feature_values)
    for f in lt.feature_values:
        assert xt.feature_values[f] == list(lt.feature_values[f])
        np.testing.assert_allclose(xt.feature_frequencies[f], lt.feature_frequencies[f], rtol=1e-15)
    assert (xt.discretizer is None) == (lt.discretizer is None)
    if lt.discretizer is not None:
        assert xt.discretizer.names == lt.discretizer.names
        for f in lt.discretizer.means:
            for k in ("means", "stds", "mins", "maxs"):
                np.testing.assert_allclose(getattr(xt.discretizer, k)[f], getattr(lt.discretizer, k)[f], rtol=1e-12)
        np.testing.assert_array_equal(xt.discretizer.discretize(X), lt.discretizer.discretize(X))
        np.testing.assert_array_equal(xt.discretizer.discretize(X[4]), lt.discretizer.discretize(X[4]))


def test_categorical_features_array_and_feature_tables():
    """lime's testFeatureNamesAndCategoricalFeats / testFeatureValues, without lime."""
    ex = XL.LimeTabularExplainer(np.array([[0.0, 1.0], [1.0, 0.0]]), categorical_features=np.array([0]),
                                 discretize_continuous=False)
    assert ex.categorical_features == [0]
    X = np.array([[0, 0, 2], [1, 1, 0], [0, 2, 2], [1, 3, 0]])
    ex = XL.LimeTabularExplainer(X, categorical_features=[0, 1, 2])
    assert ex.feature_values == {0: [0, 1], 1: [0, 1, 2, 3], 2: [0, 2]}
    np.testing.assert_array_equal(ex.feature_frequencies[1], [0.25] * 4)


# ------------------------------------------------------------------ discretizer objects
class _HalfDiscretizer:
    """A user's discretizer with lime's BaseDiscretizer attributes (no lime needed): two bins
    per continuous feature, split at the median."""

    def __init__(self, X, features, seed):
        self.random_state = np.random.RandomState(seed)
        self.lambdas, self.names, self.means, self.stds, self.mins, self.maxs = {}, {}, {}, {}, {}, {}
        for f in features:
            q = np.median(X[:, f])
            self.lambdas[f] = lambda x, q=q: np.searchsorted([q], x)
            self.names[f] = [f"f{f} <= {q:.2f}", f"f{f} > {q:.2f}"]
            lo, hi = X[X[:, f] <= q, f], X[X[:, f] > q, f]
            self.means[f], self.stds[f] = [lo.mean(), hi.mean()], [lo.std() + 1e-11, hi.std() + 1e-11]
            self.mins[f], self.maxs[f] = [X[:, f].min(), q], [q, X[:, f].max()]

    def discretize(self, data):
        ret = np.array(data, copy=True)
        for f, fn in self.lambdas.items():
            if ret.ndim == 1:
                ret[f] = int(fn(ret[f]))
            else:
                ret[:, f] = fn(ret[:, f])
        return ret


@needs_numba
def test_discretizer_object_bins_seeds_and_draws():
    X, _ = _data()
    pf = _clf(X.shape[1])

    def explain(disc_seed, seed):
        disc = _HalfDiscretizer(X, [0, 1, 3, 4, 5], disc_seed)
        ex = XL.LimeTabularExplainer(X, discretizer=disc, categorical_features=[2], random_state=seed)
        assert ex.discretizer is disc and ex.categorical_features == list(range(X.shape[1]))
        return ex, ex.explain_instance(X[7], pf, num_samples=800, num_features=6)

    ex, e1 = explain(1, 5)
    _, e2 = explain(1, 5)
    assert e1.as_map() == e2.as_map()
    # lime draws the bins' values with the discretizer's generator: its seed matters too
    assert explain(2, 5)[1].as_map() != e1.as_map()
    assert explain(1, 6)[1].as_map() != e1.as_map()
    # the discretizer's bins name the features, and every sampled value lies in its bin
    names = [n for n, _ in e1.as_list(label=1)]
    assert any(n.startswith("f0 ") for n in names)
    plan = ex.sampler.plan(X[7])
    from xaikernels.ops import perturb as P

    scaled, inv, _ = P.tabular_neighbourhood(3000, 11, plan, metric="euclidean")[:3]
    disc = ex.discretizer
    for f in disc.lambdas:
        b = disc.discretize(inv)[:, f].astype(int)
        assert np.all(inv[:, f] >= np.array(disc.mins[f])[b] - 1e-12)
        assert np.all(inv[:, f] <= np.array(disc.maxs[f])[b] + 1e-12)
        # surrogate column: 1 where the bin is the instance's
        np.testing.assert_array_equal(scaled[1:, f], (b[1:] == disc.discretize(X[7])[f]).astype(float))
        # bin frequencies as in the training data (binomial, 5σ)
        p = np.mean(disc.discretize(X)[:, f] == 1)
        assert abs(b[1:].mean() - p) < 5 * np.sqrt(p * (1 - p) / 2999)


def test_bad_discretizer_and_stats():
    X, _ = _data()
    with pytest.raises(ValueError, match="Discretizer must be"):
        XL.LimeTabularExplainer(X, discretizer="median")
    with pytest.raises(ValueError, match="Discretizer must be"):
        XL.LimeTabularExplainer(X, discretizer=object())
    with pytest.raises(ValueError, match="Missing keys in training_data_stats"):
        XL.LimeTabularExplainer(X, training_data_stats={"means": {}})


# ------------------------------------------------------------------- training_data_stats
def _stats_from(X):
    """training_data_stats as lime's test builds them (from a quartile discretizer)."""
    edges = {f: np.percentile(X[:, f], [25, 50, 75]) for f in range(X.shape[1])}
    stats = {k: {} for k in ("means", "stds", "mins", "maxs", "bins", "feature_values", "feature_frequencies")}
    for f, q in edges.items():
        b = np.searchsorted(q, X[:, f])
        stats["bins"][f] = q.tolist()
        # lime's convention for an empty bin: mean 0, std 0 (+1e-11)
        stats["means"][f] = [X[b == k, f].mean() if np.any(b == k) else 0.0 for k in range(4)]
        stats["stds"][f] = [(X[b == k, f].std() if np.any(b == k) else 0.0) + 1e-11 for k in range(4)]
        stats["mins"][f] = [X[:, f].min()] + q.tolist()
        stats["maxs"][f] = q.tolist() + [X[:, f].max()]
        cnt = collections.Counter(b.tolist())
        stats["feature_values"][f], stats["feature_frequencies"][f] = map(list, zip(*cnt.items()))
    return stats


@needs_numba
def test_training_data_stats_define_bins_and_tables():
    X, _ = _data(D=4)
    X[:, 2] += np.random.RandomState(9).randn(len(X))  # continuous everywhere
    stats = _stats_from(X)
    ex = XL.LimeTabularExplainer(np.zeros((2, 4)), training_data_stats=stats, random_state=10)
    ref = XL.LimeTabularExplainer(X, random_state=10)  # the quartile bins from the data itself
    assert ex.discretizer.names == ref.discretizer.names
    for f in range(4):
        for k in ("means", "stds", "mins", "maxs"):
            np.testing.assert_allclose(getattr(ex.discretizer, k)[f], getattr(ref.discretizer, k)[f], rtol=1e-12)
        assert ex.feature_values[f] == stats["feature_values"][f]
        fr = np.asarray(stats["feature_frequencies"][f], dtype=float)
        np.testing.assert_allclose(ex.feature_frequencies[f], fr / fr.sum())
    # the sampler draws from the stats' tables (feature_values order need not be sorted)
    plan_a, plan_b = ex.sampler.plan(X[3]), ref.sampler.plan(X[3])
    from xaikernels.ops import perturb as P

    a = P.tabular_neighbourhood(4000, 1, plan_a, metric="euclidean")
    b = P.tabular_neighbourhood(4000, 2, plan_b, metric="euclidean")
    for t in (1, 0):  # surrogate columns, then model inputs: same distribution
        se = np.sqrt(a[t][1:].var(0) / 4000 + b[t][1:].var(0) / 4000) + 1e-12
        assert np.all(np.abs(a[t][1:].mean(0) - b[t][1:].mean(0)) < 5 * se)
    e = ex.explain_instance(X[3], _clf(4), num_features=2)
    assert len(e.as_list(label=1)) == 2


@pytest.mark.peer
def test_training_data_stats_equal_lime_stats_discretizer():
    lt_mod = pytest.importorskip("lime.lime_tabular")
    X, _ = _data(D=4)
    stats = _stats_from(X)
    lt = lt_mod.LimeTabularExplainer(np.zeros((2, 4)), training_data_stats=stats, random_state=10)
    xt = XL.LimeTabularExplainer(np.zeros((2, 4)), training_data_stats=stats, random_state=10)
    assert xt.discretizer.names == lt.discretizer.names
    assert xt.categorical_features == lt.categorical_features
    for f in lt.feature_values:
        assert xt.feature_values[f] == list(lt.feature_values[f])
        np.testing.assert_allclose(xt.feature_frequencies[f], lt.feature_frequencies[f])
    np.testing.assert_array_equal(xt.discretizer.discretize(X), lt.discretizer.discretize(X))


# ------------------------------------------------------------------------------- sparse
def _sparse_data(seed=0, n=200, D=12):
    rng = np.random.RandomState(seed)
    X = rng.poisson(0.6, (n, D)).astype(float) * rng.rand(n, D)
    return sps.csr_matrix(X)


def test_sparse_neighbourhood_follows_lime():
    X = _sparse_data()
    ex = XL.LimeTabularExplainer(X, random_state=0)
    assert ex.discretizer is None and ex.categorical_features == []
    Xd = X.toarray()
    mean, std = Xd.mean(0), Xd.std(0)
    np.testing.assert_allclose(ex._sparse.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(ex._sparse.scale, np.where(std == 0, 1, std), rtol=1e-10)
    row = X[5]
    nz = row.nonzero()[1]
    n = 20000
    data, inv, scaled = ex._sparse.sample(row, n, seed=1, stream=0)
    assert sps.issparse(inv) and inv.shape == (n, X.shape[1])
    np.testing.assert_array_equal(inv[0].toarray(), row.toarray())
    # lime samples only the row's non-zero columns, from N(mean, std)
    dense = inv[1:].toarray()
    off = np.setdiff1d(np.arange(X.shape[1]), nz)
    assert not dense[:, off].any()
    se = std[nz] / np.sqrt(n - 1)
    assert np.all(np.abs(dense[:, nz].mean(0) - mean[nz]) < 5 * se)
    np.testing.assert_allclose(dense[:, nz].std(0), std[nz], rtol=0.05)
    # scaled as lime computes it: data ⊙ scale
    np.testing.assert_allclose(scaled.toarray(), data.toarray() * ex._sparse.scale, rtol=1e-15)
    # reproducible
    np.testing.assert_array_equal(ex._sparse.sample(row, 50, 1, 0)[1].toarray(), inv[:50].toarray())


def test_sparse_distances_equal_sklearn():
    from sklearn.metrics import pairwise_distances

    S = _sparse_data(seed=2, n=60).multiply(1.7).tocsr()
    S = sps.vstack([S[:1], sps.csr_matrix((1, S.shape[1])), S[1:]]).tocsr()  # a zero row
    for metric in ("euclidean", "cosine"):
        ref = pairwise_distances(S, S[0].reshape(1, -1), metric=metric).ravel()
        np.testing.assert_allclose(XL._row_distances(S, metric), ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(XL._row_distances(S.toarray(), metric), ref, rtol=1e-12, atol=1e-12)


@needs_numba
@pytest.mark.parametrize("around", [False, True])
def test_sparse_explanations(around):
    X = _sparse_data(seed=3)
    pf = _clf(X.shape[1])
    e1 = XL.LimeTabularExplainer(X, random_state=4, sample_around_instance=around).explain_instance(X[8], pf)
    e2 = XL.LimeTabularExplainer(X, random_state=4, sample_around_instance=around).explain_instance(X[8], pf)
    assert e1.as_map() == e2.as_map()
    used = {f for f, _ in e1.local_exp[1]}
    assert len(used) == 10 and used <= set(range(X.shape[1]))
    np.testing.assert_array_equal(e1.domain_mapper.feature_indexes, X[8].indices)
    assert e1.domain_mapper.all_categorical is False
    # a dense row with a sparse-trained explainer: every column sampled, as lime
    e3 = XL.LimeTabularExplainer(X, random_state=4).explain_instance(X[8].toarray().ravel(), pf, num_features=3)
    assert len(e3.as_list(label=1)) == 3


@pytest.mark.peer
def test_sparse_fit_equals_lime_given_same_neighbourhood():
    lime_base = pytest.importorskip("lime.lime_base")
    X = _sparse_data(seed=5)
    ex = XL.LimeTabularExplainer(X, random_state=0)
    pf = _clf(X.shape[1])
    data, inv, scaled = ex._sparse.sample(X[3], 600, seed=2, stream=0)
    ys = pf(inv)
    dist = XL._row_distances(scaled, "euclidean")
    width = np.sqrt(X.shape[1]) * 0.75
    base = lime_base.LimeBase(lambda d: np.sqrt(np.exp(-(d ** 2) / width ** 2)), random_state=0)
    # lime's Ridge on the dense copy (its sparse solver is iterative, to 1e-4)
    i1, le, sc, lp = base.explain_instance_with_data(scaled.toarray(), ys, dist, 1, 5, feature_selection="auto")
    e = XL.Explanation(None)
    ex.base.fit(e, scaled.toarray(), ys, dist, [1], 5, None)
    assert [f for f, _ in le] == [f for f, _ in e.local_exp[1]]
    np.testing.assert_allclose([w for _, w in e.local_exp[1]], [w for _, w in le], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose([e.intercept[1], e.score], [i1, sc], rtol=1e-6, atol=1e-9)


def test_sparse_row_needs_sparse_explainer():
    X, _ = _data()
    ex = XL.LimeTabularExplainer(X, random_state=0)
    with pytest.raises(ValueError, match="sparse"):
        ex.explain_instance(sps.csr_matrix(X[:1]), _clf(X.shape[1]))


# --------------------------------------------------------------------------- signatures
@pytest.mark.peer
@pytest.mark.parametrize("mod,cls", [("lime.lime_image", "LimeImageExplainer"),
                                     ("lime.lime_tabular", "LimeTabularExplainer"),
                                     ("lime.lime_text", "LimeTextExplainer")])
@pytest.mark.parametrize("method", ["__init__", "explain_instance"])
def test_signatures_equal_lime(mod, cls, method):
    """lime's parameters, in lime's order with lime's defaults; our extras keyword-only, so a
    positional call means what it means with lime."""
    import inspect

    theirs = inspect.signature(getattr(getattr(pytest.importorskip(mod), cls), method)).parameters
    ours = inspect.signature(getattr(getattr(XL, cls), method)).parameters
    positional = [p for p in ours.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert [p.name for p in positional] == list(theirs)
    for p in positional:
        assert p.default == theirs[p.name].default, p.name


@pytest.mark.parametrize("seed", [0, 1, 7, 42, 2**31 - 1, 2**32 - 1, True, np.int64(5), np.uint32(9)])
def test_random_state_equals_numpys(seed):
    """The drop-ins' RandomState for an int seed (built without a throw-away entropy seeding)
    has numpy's RandomState(seed) state and draws, also after pickling."""
    import pickle

    a, b = np.random.RandomState(seed), XL._check_random_state(seed)
    sa, sb = a.get_state(), b.get_state()
    assert sa[0] == sb[0] and np.array_equal(sa[1], sb[1]) and sa[2:] == sb[2:]
    assert a.randint(0, 1000) == b.randint(0, 1000)
    np.testing.assert_array_equal(a.randn(7), b.randn(7))
    np.testing.assert_array_equal(a.randint(0, 2, 300), b.randint(0, 2, 300))
    c = pickle.loads(pickle.dumps(b))
    np.testing.assert_array_equal(a.rand(5), c.rand(5))
    for bad in (-1, 2**32):
        with pytest.raises(ValueError):
            XL._check_random_state(bad)


@pytest.mark.peer
@pytest.mark.parametrize("draws", ["lime", "counter"])
def test_constant_classifier_scores_as_lime(draws):
    """A saturated classifier (the same probabilities for every sample): lime's score is 1
    (scikit-learn's R² of a perfect fit); ours was rounding noise over rounding noise."""
    lt_mod = pytest.importorskip("lime.lime_tabular")
    X = np.random.RandomState(0).randn(200, 4)
    for probs in ([0.0, 1.0], [0.3, 0.7]):
        def sat(Z):
            return np.tile(probs, (len(Z), 1))

        ours = XL.LimeTabularExplainer(X, random_state=1, draws=draws).explain_instance(X[0], sat, num_samples=500)
        theirs = lt_mod.LimeTabularExplainer(X, random_state=1).explain_instance(X[0], sat, num_samples=500)
        assert ours.score == theirs.score == 1.0
        assert ours.local_pred[0] == pytest.approx(theirs.local_pred[0], abs=1e-9)


@pytest.mark.peer
@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e-9])
def test_lasso_path_on_small_outputs_equals_lime(scale):
    """feature_selection='lasso_path' where the explained output barely varies: lime's
    scikit-learn lars_path stops at float32's eps (alpha = C / n_samples) and then keeps
    every feature; ours selects the same features."""
    lt_mod = pytest.importorskip("lime.lime_tabular")
    X = np.random.RandomState(0).randn(200, 4)
    w = np.random.RandomState(1).randn(4)

    def f(Z):
        return scale * np.tanh(Z @ w)

    kw = dict(random_state=1, mode="regression", feature_selection="lasso_path", discretize_continuous=False)
    ours = XL.LimeTabularExplainer(X, draws="lime", **kw).explain_instance(X[0], f, num_features=2, num_samples=1000)
    theirs = lt_mod.LimeTabularExplainer(X, **kw).explain_instance(X[0], f, num_features=2, num_samples=1000)
    assert [i for i, _ in ours.local_exp[1]] == [i for i, _ in theirs.local_exp[1]]
    np.testing.assert_allclose([v for _, v in ours.local_exp[1]], [v for _, v in theirs.local_exp[1]], rtol=1e-6,
                               atol=1e-12)


@pytest.mark.peer
@pytest.mark.parametrize("case", ["constant_column", "entropy", "entropy_constant_categorical"])
def test_lime_draws_equal_lime_on_constant_columns_and_entropy_bins(case):
    """``draws="lime"`` reproduces lime's neighbourhood and explanation where it once did not:
    a training column constant at a non-zero value (lime's undiscretize hands the model the
    z-score 0.0 there, its zero-width-bin quirk) and entropy bins (lime's trees draw their
    seeds from the explainer's generator, one per feature, which moves every later draw)."""
    lt_mod = pytest.importorskip("lime.lime_tabular")
    pytest.importorskip("sklearn")
    X, y = _data(n=200, D=5, seed=4)
    kw = dict(training_labels=y, discretizer="entropy") if case.startswith("entropy") else {}
    if case != "entropy":
        X[:, 4] = 1.5
    cats = [2] if case == "entropy_constant_categorical" else None
    pf = _clf(X.shape[1])
    seen = {}
    out = {}
    for name, mod, extra in (("lime", lt_mod, {}), ("ours", XL, {"draws": "lime"})):
        rows = seen.setdefault(name, [])

        def fn(Z):
            rows.append(np.array(Z, copy=True))
            return pf(Z)
        ex = mod.LimeTabularExplainer(X, categorical_features=cats, random_state=7, **kw, **extra)
        e = ex.explain_instance(X[3], fn, num_samples=400, top_labels=2)
        out[name] = e
    np.testing.assert_allclose(seen["ours"][0], seen["lime"][0], rtol=1e-10, atol=1e-12)
    a, b = out["lime"], out["ours"]
    assert b.available_labels() == a.available_labels()
    for lab in a.available_labels():
        assert [f for f, _ in b.as_list(lab)] == [f for f, _ in a.as_list(lab)]
        np.testing.assert_allclose([v for _, v in b.as_list(lab)], [v for _, v in a.as_list(lab)], rtol=1e-7,
                                   atol=1e-10)
        assert b.intercept[lab] == pytest.approx(a.intercept[lab], rel=1e-7, abs=1e-10)


@needs_numba
def test_counter_draws_give_a_constant_column_its_value():
    """The counter-based sampler (the default draws) gives a zero-width bin its edge: the
    model sees the training column's constant, not lime's z-score 0.0."""
    X, _ = _data(n=200, D=5, seed=4)
    X[:, 4] = 1.5
    rows = []

    def fn(Z):
        rows.append(np.array(Z, copy=True))
        return _clf(X.shape[1])(Z)
    XL.LimeTabularExplainer(X, random_state=7).explain_instance(X[3], fn, num_samples=300)
    assert np.all(rows[0][:, 4] == 1.5)


def test_lime_draws_on_sparse_data_raise():
    """draws='lime' replays lime's dense sampling; with scipy-sparse training data it raises
    instead of quietly taking the counter draws (whose explanations are not lime's)."""
    X = sps.random(60, 6, density=0.4, random_state=0, format="csr")
    with pytest.raises(ValueError, match="draws='counter'"):
        XL.LimeTabularExplainer(X, draws="lime")
    XL.LimeTabularExplainer(X)  # the default counter draws
