"""``xaikernels.lime`` mirrors lime's modules: the discretizers, the scikit-image wrapper,
``has_arg`` and the per-module names (``from lime import lime_image`` → ``from
xaikernels.lime import lime_image``)."""
import importlib
import math

import numpy as np
import pytest

from xaikernels import lime as XL
from xaikernels.lime import discretize as XD
from xaikernels.lime.utils.generic_utils import has_arg
from xaikernels.lime.wrappers.scikit_image import BaseWrapper, SegmentationAlgorithm


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris

    d = load_iris()
    return d.data, d.target, list(d.feature_names)


# ---------------------------------------------------------------------------- module layout
@pytest.mark.parametrize("mod, names", [
    ("lime_image", ["LimeImageExplainer", "ImageExplanation"]),
    ("lime_tabular", ["LimeTabularExplainer", "TableDomainMapper", "QuartileDiscretizer"]),
    ("lime_text", ["LimeTextExplainer", "IndexedString", "IndexedCharacters", "TextDomainMapper"]),
    ("explanation", ["Explanation", "DomainMapper", "LimeError"]),
    ("exceptions", ["LimeError"]),
    ("lime_base", ["LimeBase"]),
    ("submodular_pick", ["SubmodularPick"]),
    ("discretize", ["BaseDiscretizer", "StatsDiscretizer", "QuartileDiscretizer", "DecileDiscretizer",
                    "EntropyDiscretizer"]),
    ("wrappers.scikit_image", ["BaseWrapper", "SegmentationAlgorithm"]),
    ("utils.generic_utils", ["has_arg"]),
])
def test_modules_mirror_lime(mod, names):
    m = importlib.import_module(f"xaikernels.lime.{mod}")
    assert set(names) <= set(m.__all__)
    for n in names:
        # one class per name: the module's name is the package's
        if hasattr(XL, n):
            assert getattr(m, n) is getattr(XL, n)


def test_from_package_import_module():
    from xaikernels.lime import lime_image, lime_tabular

    assert lime_image.LimeImageExplainer is XL.LimeImageExplainer
    assert issubclass(lime_tabular.TableDomainMapper, XL.DomainMapper)


# ------------------------------------------------------------------------------ discretizers
def _bin_stats(col, qts):
    idx = np.searchsorted(qts, col)
    return ([col[idx == k].mean() if np.any(idx == k) else 0.0 for k in range(len(qts) + 1)],
            [(col[idx == k].std() if np.any(idx == k) else 0.0) + 1e-11 for k in range(len(qts) + 1)])


@pytest.mark.parametrize("cls, pct", [(XD.QuartileDiscretizer, [25, 50, 75]),
                                      (XD.DecileDiscretizer, list(range(10, 100, 10)))])
def test_percentile_discretizers(iris, cls, pct):
    X, y, names = iris
    disc = cls(X, [1], names, y, random_state=3)
    assert disc.to_discretize == [0, 2, 3]
    assert sorted(disc.lambdas) == [0, 2, 3] and 1 not in disc.names
    for d in disc.to_discretize:
        qts = np.unique(np.percentile(X[:, d], pct))
        assert disc.names[d][0] == "%s <= %.2f" % (names[d], qts[0])
        assert disc.names[d][-1] == "%s > %.2f" % (names[d], qts[-1])
        assert len(disc.names[d]) == len(qts) + 1
        means, stds = _bin_stats(X[:, d], qts)
        np.testing.assert_allclose(disc.means[d], means, rtol=1e-12)
        np.testing.assert_allclose(disc.stds[d], stds, rtol=1e-12)
        assert disc.mins[d] == [X[:, d].min()] + qts.tolist()
        assert disc.maxs[d] == qts.tolist() + [X[:, d].max()]
        np.testing.assert_array_equal(disc.lambdas[d](X[:, d]), np.searchsorted(qts, X[:, d]))
    Xd = disc.discretize(X)
    np.testing.assert_array_equal(Xd[:, 1], X[:, 1])
    np.testing.assert_array_equal(disc.discretize(X[7]), Xd[7])
    assert Xd[:, [0, 2, 3]].max() <= len(pct)


def test_entropy_discretizer_needs_labels_and_splits_on_them(iris):
    X, y, names = iris
    with pytest.raises(ValueError, match="Labels must be not None"):
        XD.EntropyDiscretizer(X, [], names)
    disc = XD.EntropyDiscretizer(X, [], names, y, random_state=0)
    # petal length separates setosa perfectly at 2.45 (the tree's first split)
    assert "petal length (cm) <= 2.45" == disc.names[2][0]
    assert all(len(v) <= 8 for v in disc.names.values())


def test_undiscretize_draws_inside_the_bins_reproducibly(iris):
    X, y, names = iris
    for cls in (XD.QuartileDiscretizer, XD.DecileDiscretizer, XD.EntropyDiscretizer):
        a = cls(X, [], names, y, random_state=10)
        Xd = a.discretize(X)
        x1 = a.undiscretize(Xd)
        x2 = cls(X, [], names, y, random_state=10).undiscretize(Xd)
        x3 = cls(X, [], names, y, random_state=20).undiscretize(Xd)
        np.testing.assert_array_equal(x1, x2)
        assert not np.array_equal(x1, x3)
        # the generator is consumed: a second call draws anew
        assert not np.array_equal(a.undiscretize(Xd), x1)
        for d in a.to_discretize:
            k = Xd[:, d].astype(int)
            lo = np.asarray(a.mins[d])[k]
            hi = np.asarray(a.maxs[d])[k]
            assert np.all((x1[:, d] >= lo) & (x1[:, d] <= hi))
        # one row (1-D) as lime: the same per-feature draws
        r = a.undiscretize(Xd[3])
        assert r.shape == (4,) and np.all(np.isfinite(r))


def _truncnorm_mean(mu, sd, lo, hi):
    a, b = (lo - mu) / sd, (hi - mu) / sd
    pdf = lambda t: math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda t: 0.5 * math.erfc(-t / math.sqrt(2))  # noqa: E731
    return mu + sd * (pdf(a) - pdf(b)) / (cdf(b) - cdf(a))


@pytest.mark.parametrize("mu, sd, lo, hi", [(0.0, 1.0, -0.5, 2.0), (5.0, 0.3, 5.4, 6.0), (1.0, 2.0, -9.0, -1.0),
                                            (0.0, 1.0, 3.0, 4.0)])
def test_undiscretize_statistics_are_the_truncated_normals(mu, sd, lo, hi):
    disc = XD.BaseDiscretizer.__new__(XD.QuartileDiscretizer)
    disc.random_state = np.random.RandomState(0)
    disc.means, disc.stds, disc.mins, disc.maxs = {0: [mu]}, {0: [sd]}, {0: [lo]}, {0: [hi]}
    n = 40000
    x = disc.get_undiscretize_values(0, np.zeros(n, dtype=int))
    assert np.all((x >= lo) & (x <= hi))
    m = _truncnorm_mean(mu, sd, lo, hi)
    assert abs(x.mean() - m) < 5 * x.std() / math.sqrt(n) + 1e-12
    # the median of the draws maps back to the middle of the bin's probability mass
    cdf = lambda t: 0.5 * math.erfc(-t / math.sqrt(2))  # noqa: E731
    pa, pb = cdf((lo - mu) / sd), cdf((hi - mu) / sd)
    frac = np.mean([(cdf((v - mu) / sd) - pa) / (pb - pa) for v in x[:4000]])
    assert abs(frac - 0.5) < 0.02


def test_zero_width_bin_gives_limes_z_score():
    """A bin of zero width: lime's ``get_undiscretize_values`` returns the z-score of its edge,
    ``(min - mean) / std`` (unscaled), and the drop-in does too; a wide bin's draw and the
    generator's state after it equal lime's."""
    def stats(d):
        d.means, d.stds, d.mins, d.maxs = {0: [2.0, 3.0]}, {0: [1e-11, 1.0]}, {0: [2.0, 2.0]}, {0: [2.0, 4.0]}
        d.means[0][0] = 1.5  # an edge off the mean: z-score (2 - 1.5) / 1e-11
        return d

    disc = stats(XD.BaseDiscretizer.__new__(XD.BaseDiscretizer))
    disc.random_state = np.random.RandomState(0)
    x = disc.get_undiscretize_values(0, np.array([0, 0, 1]))
    assert x[0] == x[1] == (2.0 - 1.5) / 1e-11 and 2.0 <= x[2] <= 4.0
    LD = pytest.importorskip("lime.discretize")
    theirs = stats(LD.BaseDiscretizer.__new__(LD.BaseDiscretizer))
    theirs.random_state = np.random.RandomState(0)
    y = theirs.get_undiscretize_values(0, np.array([0, 0, 1]))
    np.testing.assert_allclose(x, y, rtol=1e-12)
    assert disc.random_state.randint(10**6) == theirs.random_state.randint(10**6)


def test_stats_discretizer_and_custom_bins(iris):
    X, y, names = iris
    stats = dict(bins={0: [5.0, 6.0], 3: [1.0]}, means={0: [4.5, 5.5, 6.5], 3: [0.5, 2.0]},
                 stds={0: [0.2, 0.3, 0.4], 3: [0.1, 0.2]}, mins={0: [4.0, 5.0, 6.0], 3: [0.0, 1.0]},
                 maxs={0: [5.0, 6.0, 8.0], 3: [1.0, 3.0]})
    disc = XD.StatsDiscretizer(X, [1, 2], names, data_stats=stats, random_state=0)
    assert disc.to_discretize == [0, 3] and disc.means is stats["means"]
    assert disc.names[0] == ["%s <= 5.00" % names[0], "5.00 < %s <= 6.00" % names[0], "%s > 6.00" % names[0]]
    assert list(disc.discretize(np.array([5.5, 9.0, 9.0, 2.0]))) == [1.0, 9.0, 9.0, 1.0]

    class Halves(XD.BaseDiscretizer):
        def bins(self, data, labels):
            return [np.median(data[:, d])[None] for d in self.to_discretize]

    h = Halves(X, [], names, random_state=0)
    assert all(len(v) == 2 for v in h.names.values())
    with pytest.raises(NotImplementedError):
        XD.BaseDiscretizer(X, [], names)


@pytest.mark.parametrize("kind, cls", [("quartile", XD.QuartileDiscretizer), ("decile", XD.DecileDiscretizer),
                                       ("entropy", XD.EntropyDiscretizer)])
def test_explainer_discretizer_is_the_class(iris, kind, cls):
    X, y, names = iris
    ex = XL.LimeTabularExplainer(X, feature_names=names, training_labels=y, discretizer=kind, random_state=1)
    assert type(ex.discretizer) is cls and isinstance(ex.discretizer, XD.BaseDiscretizer)
    assert ex.discretizer.random_state is ex.random_state
    # the class computed directly gives the explainer's bins and names
    if kind != "entropy":
        direct = cls(X, [], names, y)
        assert direct.names == ex.discretizer.names
        for d in direct.means:
            np.testing.assert_allclose(direct.means[d], ex.discretizer.means[d], rtol=1e-12)
    # an instance of the class passed in is used as given
    own = cls(X, [], names, y, random_state=4)
    ex2 = XL.LimeTabularExplainer(X, feature_names=names, discretizer=own, random_state=1)
    assert ex2.discretizer is own


def test_explainer_stats_discretizer(iris):
    X, y, names = iris
    D = X.shape[1]
    qd = XD.QuartileDiscretizer(X, [], names)
    stats = dict(means=qd.means, stds=qd.stds, mins=qd.mins, maxs=qd.maxs,
                 bins={d: np.percentile(X[:, d], [25, 50, 75]) for d in range(D)},
                 feature_values={d: [0, 1, 2, 3] for d in range(D)},
                 feature_frequencies={d: [0.25] * 4 for d in range(D)})
    ex = XL.LimeTabularExplainer(X, feature_names=names, training_data_stats=stats, random_state=0)
    assert type(ex.discretizer) is XD.StatsDiscretizer and ex.discretizer.names == qd.names


@pytest.mark.peer
def test_discretizers_equal_limes(iris):
    ld = pytest.importorskip("lime.discretize")
    X, y, names = iris
    for ours, theirs in ((XD.QuartileDiscretizer, ld.QuartileDiscretizer), (XD.DecileDiscretizer, ld.DecileDiscretizer),
                         (XD.EntropyDiscretizer, ld.EntropyDiscretizer)):
        a = ours(X, [1], names, y, random_state=10)
        b = theirs(X, [1], names, y, random_state=10)
        assert a.to_discretize == b.to_discretize and a.names == b.names
        for k in ("means", "stds", "mins", "maxs"):
            for d in b.means:
                np.testing.assert_allclose(getattr(a, k)[d], getattr(b, k)[d], rtol=1e-12)
        np.testing.assert_array_equal(a.discretize(X), b.discretize(X))
        np.testing.assert_array_equal(a.discretize(X[5]), b.discretize(X[5]))
        # the draws are lime's (scipy's truncnorm.rvs = inverse CDF of the generator's
        # uniforms), to rounding, and the generators stay in step
        Xd = b.discretize(X)
        np.testing.assert_allclose(a.undiscretize(Xd), b.undiscretize(Xd), rtol=1e-12, atol=1e-12)
        assert a.random_state.randint(0, 10**9) == b.random_state.randint(0, 10**9)


# ---------------------------------------------------------------------------- has_arg
def test_has_arg():
    def f(a, b=1, *args, c, **kw):
        return a

    class C:
        def __call__(self, message):
            return message

    assert has_arg(f, "a") and has_arg(f, "b") and has_arg(f, "c")
    assert not has_arg(f, "args") and not has_arg(f, "kw") and not has_arg(f, "d")
    assert has_arg(C(), "message") and not has_arg(C(), "self")
    assert not has_arg(len, "x")


@pytest.mark.peer
def test_has_arg_equals_limes():
    lg = pytest.importorskip("lime.utils.generic_utils")

    def f(a, /, b, *args, c=2, **kw):
        return a

    for name in ("a", "b", "args", "c", "kw", "zz"):
        assert has_arg(f, name) == lg.has_arg(f, name)


# ------------------------------------------------------------------- scikit-image wrapper
def test_base_wrapper_checks():
    def bar(a):
        return str(a)

    w = BaseWrapper(bar, a=10, b="m")
    assert w.target_params == {"a": 10, "b": "m"} and w.target_fn(1) == "1"
    w._check_params(["a"])
    with pytest.raises(ValueError, match="c is not a valid parameter"):
        w._check_params(["c"])
    with pytest.raises(TypeError):
        w._check_params("a")
    with pytest.raises(TypeError):
        w._check_params(None)
    with pytest.raises(AttributeError):
        BaseWrapper([1, 2])._check_params(["x"])
    with pytest.raises(TypeError, match="not callable"):
        BaseWrapper()._check_params(["x"])
    assert w.filter_params(bar) == {"a": 10}
    assert w.filter_params(bar, override={"z": 1}) == {"a": 10, "z": 1}
    w.set_params(a=3)
    assert w.target_params == {"a": 3}
    with pytest.raises(ValueError):
        w.set_params(q=3)


@pytest.mark.parametrize("algo, params", [
    ("quickshift", dict(kernel_size=3, max_dist=6, ratio=0.5, not_a_param=1)),
    ("slic", dict(n_segments=30, compactness=10.0, start_label=0, random_seed=3)),
    ("felzenszwalb", dict(scale=50, sigma=0.5, min_size=20)),
])
def test_segmentation_algorithm_is_scikit_images(algo, params):
    from skimage import data, segmentation
    from skimage.util import img_as_float

    img = img_as_float(data.astronaut()[::8, ::8])
    fn = SegmentationAlgorithm(algo, **params)
    assert fn.algo_type == algo
    fn_sk = getattr(segmentation, algo)
    kept = {k: v for k, v in params.items() if has_arg(fn_sk, k)}
    assert fn.target_params == kept and "not_a_param" not in fn.target_params
    np.testing.assert_array_equal(fn(img), fn_sk(img, **kept))
    # and it is a segmentation_fn for the explainer
    seg = fn(img)
    exp = XL.LimeImageExplainer(random_state=0).explain_instance(
        img, lambda b: np.tile([[0.3, 0.7]], (len(b), 1)) + 0 * b[:, :1, 0, 0], num_samples=20,
        segmentation_fn=fn, top_labels=1)
    np.testing.assert_array_equal(np.unique(exp.segments), np.unique(seg) - seg.min())


# ------------------------------------------------------------------------------- LimeBase
def _neighbourhood(seed=0, S=400, F=9, K=3):
    rng = np.random.RandomState(seed)
    Z = (rng.rand(S, F) < 0.5).astype(np.float64)
    Z[0] = 1
    Y = Z @ rng.randn(F, K) * 0.2 + 0.05 * rng.randn(S, K)
    d = np.sqrt(((Z - Z[0]) ** 2).sum(1))
    return Z, Y, d


def _kernel(d):
    return np.sqrt(np.exp(-(d ** 2) / 2.0 ** 2))


@pytest.mark.parametrize("method, k", [("none", 4), ("forward_selection", 3), ("highest_weights", 4),
                                       ("lasso_path", 4), ("auto", 3), ("auto", 8)])
def test_lime_base_is_the_weighted_ridge(method, k):
    from xaikernels.lime.lime_base import LimeBase

    Z, Y, d = _neighbourhood()
    base = LimeBase(_kernel, random_state=0)
    icpt, exp, score, local_pred = base.explain_instance_with_data(Z, Y, d, 1, k, feature_selection=method)
    feats = [f for f, _ in exp]
    assert len(feats) == (Z.shape[1] if method == "none" else k)
    assert sorted(feats) == sorted(base.feature_selection(Z, Y[:, 1], _kernel(d), k, method))
    w = np.abs([v for _, v in exp])
    assert np.all(np.diff(w) <= 0)  # sorted by |weight|
    # the closed-form weighted ridge (α = 1, intercept unpenalised) on those features
    X = Z[:, feats]
    sw = _kernel(d)
    xm = np.average(X, axis=0, weights=sw)
    ym = np.average(Y[:, 1], weights=sw)
    Xc = (X - xm) * np.sqrt(sw)[:, None]
    yc = (Y[:, 1] - ym) * np.sqrt(sw)
    beta = np.linalg.solve(Xc.T @ Xc + np.eye(len(feats)), Xc.T @ yc)
    np.testing.assert_allclose([v for _, v in exp], beta, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(icpt, ym - xm @ beta, rtol=1e-9, atol=1e-12)
    pred = ym + (X - xm) @ beta
    r2 = 1 - np.sum(sw * (Y[:, 1] - pred) ** 2) / np.sum(sw * (Y[:, 1] - ym) ** 2)
    np.testing.assert_allclose(score, r2, rtol=1e-9)
    np.testing.assert_allclose(local_pred, [pred[0]], rtol=1e-9)
    assert isinstance(local_pred, np.ndarray) and local_pred.shape == (1,)


def test_lime_base_with_a_regressor_and_bad_method():
    from sklearn.linear_model import LinearRegression

    from xaikernels.lime.lime_base import LimeBase

    Z, Y, d = _neighbourhood(1)
    reg = LinearRegression()
    icpt, exp, score, local_pred = LimeBase(_kernel).explain_instance_with_data(Z, Y, d, 0, 4, "forward_selection",
                                                                                model_regressor=reg)
    assert reg.coef_.shape == (4,) and icpt == reg.intercept_  # fitted in place, as lime
    assert dict(exp) == dict(zip(LimeBase(_kernel).forward_selection(Z, Y[:, 0], _kernel(d), 4), reg.coef_))
    with pytest.raises(ValueError, match="feature_selection"):
        LimeBase(_kernel).explain_instance_with_data(Z, Y, d, 0, 4, "greedy")


@pytest.mark.peer
@pytest.mark.parametrize("method, k", [("none", 4), ("forward_selection", 3), ("highest_weights", 4),
                                       ("lasso_path", 4), ("auto", 3), ("auto", 8)])
def test_lime_base_equals_limes(method, k):
    lb = pytest.importorskip("lime.lime_base")
    from xaikernels.lime.lime_base import LimeBase

    Z, Y, d = _neighbourhood(2)
    a = LimeBase(_kernel, random_state=0).explain_instance_with_data(Z, Y, d, 2, k, feature_selection=method)
    b = lb.LimeBase(_kernel, random_state=0).explain_instance_with_data(Z, Y, d, 2, k, feature_selection=method)
    assert [f for f, _ in a[1]] == [f for f, _ in b[1]]
    np.testing.assert_allclose([v for _, v in a[1]], [v for _, v in b[1]], rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(a[2], b[2], rtol=1e-6)
    np.testing.assert_allclose(a[3], b[3], rtol=1e-6)
    w = _kernel(d)
    if method != "none":
        np.testing.assert_array_equal(sorted(LimeBase(_kernel).feature_selection(Z, Y[:, 2], w, k, method)),
                                      sorted(lb.LimeBase(_kernel).feature_selection(Z, Y[:, 2], w, k, method)))
    al, cf = LimeBase.generate_lars_path(Z * 0.5, Y[:, 0])
    al2, cf2 = lb.LimeBase.generate_lars_path(Z * 0.5, Y[:, 0])
    np.testing.assert_allclose(al, al2)
    np.testing.assert_allclose(cf, cf2)


# ------------------------------------------------------------------------- submodular pick
class _FixedExplainer:
    """explain_instance returns a canned explanation per row (row = its index)."""

    def __init__(self, table, mode="classification"):
        self.table, self.mode, self.calls = table, mode, []

    def explain_instance(self, row, predict_fn, num_features=10, top_labels=1, **kw):
        self.calls.append((int(row[0]), num_features, top_labels, kw))
        e = XL.Explanation(XL.DomainMapper(), mode=self.mode)
        e.local_exp = {lab: [(f, w) for f, w in feats] for lab, feats in self.table[int(row[0])].items()}
        if self.mode == "classification":
            e.top_labels = list(e.local_exp)
        else:
            e.local_exp = {1: e.local_exp[next(iter(e.local_exp))]}
        return e


def test_submodular_pick_greedy_coverage():
    from xaikernels.lime.submodular_pick import SubmodularPick

    # features: 0 weighs most overall; row 2 covers {0, 1}; row 0 covers {2}; row 1 {0}; row 3 nothing new
    table = {0: {0: [(2, 0.5)]}, 1: {0: [(0, 2.0)]}, 2: {0: [(0, -3.0), (1, 0.2)]}, 3: {0: [(1, 0.1)]}}
    data = np.arange(4)[:, None].astype(float)
    ex = _FixedExplainer(table)
    sp = SubmodularPick(ex, data, None, method="full", num_exps_desired=2, num_features=3, foo=1)
    # importance: f0 = sqrt(5), f1 = sqrt(0.3), f2 = sqrt(0.5); row 2 covers f0 + f1 best, then
    # row 0 adds f2
    assert sp.V == [2, 0]
    assert sp.sp_explanations[0] is sp.explanations[2]
    assert ex.calls[0] == (0, 3, 1, {"foo": 1})
    with pytest.warns(UserWarning, match="larger than total"):
        sp = SubmodularPick(_FixedExplainer(table), data, None, method="full", num_exps_desired=9)
    assert sorted(sp.V) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="'sample' or 'full'"):
        SubmodularPick(ex, data, None, method="all")
    np.random.seed(0)
    with pytest.warns(UserWarning, match="sample size larger"):
        sp = SubmodularPick(_FixedExplainer(table, "regression"), data, None, sample_size=10, num_exps_desired=1)
    # regression explanations count as label 1; the best single pick covers features 0 and 1
    assert len(sp.explanations) == 4 and sp.sp_explanations[0].local_exp[1] == [(0, -3.0), (1, 0.2)]


@pytest.mark.peer
@pytest.mark.parametrize("method", ["full", "sample"])
def test_submodular_pick_equals_limes(method, iris):
    lsp = pytest.importorskip("lime.submodular_pick")
    from xaikernels.lime.submodular_pick import SubmodularPick

    X, y, names = iris
    Wm = np.random.RandomState(0).randn(4, 3)

    def pf(Z):
        z = Z @ Wm
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    picks = []
    for cls in (SubmodularPick, lsp.SubmodularPick):
        ex = XL.LimeTabularExplainer(X, feature_names=names, random_state=5)
        np.random.seed(3)
        sp = cls(ex, X[::5], pf, method=method, sample_size=12, num_exps_desired=4, num_features=3, num_samples=500,
                 top_labels=2)
        picks.append((sp.V, [e.as_list(label=e.available_labels()[0]) for e in sp.sp_explanations]))
    assert picks[0] == picks[1]


# -------------------------------------------------------------- recurrent tabular explainer
def _sequences(seed=0, n=200, T=4, D=3):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, T, D)
    Wm = rng.randn(T, D, 2)

    def clf(B):
        assert B.ndim == 3 and B.shape[1:] == (T, D)
        z = np.einsum("ntd,tdk->nk", B, Wm)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return X, clf


def test_recurrent_tabular_is_tabular_on_flattened_rows():
    from xaikernels.lime.lime_tabular import RecurrentTabularExplainer

    X, clf = _sequences()
    n, T, D = X.shape
    names = ["a", "b", "c"]
    rt = RecurrentTabularExplainer(X, feature_names=names, random_state=3)
    assert rt.feature_names[:T] == ["a_t-3", "a_t-2", "a_t-1", "a_t-0"] and len(rt.feature_names) == T * D
    e1 = rt.explain_instance(X[7], clf, num_samples=800, top_labels=1)
    # the same explainer on the flattened data, the classifier reshaping itself
    flat = X.transpose(0, 2, 1).reshape(n, D * T)
    lt = XL.LimeTabularExplainer(flat, feature_names=rt.feature_names, random_state=3)
    e2 = lt.explain_instance(flat[7], lambda Z: clf(Z.reshape(len(Z), D, T).transpose(0, 2, 1)), num_samples=800,
                             top_labels=1)
    assert e1.as_list(label=e1.top_labels[0]) == e2.as_list(label=e2.top_labels[0])
    assert RecurrentTabularExplainer(X).feature_names[0] == "0_t-3"
    with pytest.raises(ValueError, match="n_timesteps, n_features"):
        rt.explain_instance(X[7].T, clf)
    with pytest.raises(ValueError, match="n_samples, n_timesteps, n_features"):
        RecurrentTabularExplainer(X[0])


@pytest.mark.peer
def test_recurrent_tabular_matches_limes_structure():
    lt = pytest.importorskip("lime.lime_tabular")
    from xaikernels.lime.lime_tabular import RecurrentTabularExplainer

    X, clf = _sequences(1)
    names = ["a", "b", "c"]
    a = RecurrentTabularExplainer(X, feature_names=names, random_state=0)
    b = lt.RecurrentTabularExplainer(X, feature_names=names, random_state=0)
    assert a.feature_names == b.feature_names
    assert a.discretizer.names == b.discretizer.names
    ea = a.explain_instance(X[3], clf, num_samples=3000, num_features=5, labels=(0, 1))
    eb = b.explain_instance(X[3], clf, num_samples=3000, num_features=5, labels=(0, 1))
    assert ea.available_labels() == eb.available_labels()
    np.testing.assert_allclose(ea.predict_proba, eb.predict_proba)


# ------------------------------------------------------------------ tabular: lime's draws
def _tabular_case(seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(300, 6)
    X[:, 2] = rng.randint(0, 3, 300)
    X[:, 4] = rng.randint(0, 2, 300)
    Wm = rng.randn(6, 3)

    def pf(Z):
        z = Z @ Wm
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return X, pf, lambda Z: Z @ Wm[:, 0]


def test_tabular_lime_draws_reproducible_and_checked():
    X, pf, _ = _tabular_case()
    a = XL.LimeTabularExplainer(X, random_state=4, draws="lime").explain_instance(X[3], pf, num_samples=500)
    b = XL.LimeTabularExplainer(X, random_state=4, draws="lime").explain_instance(X[3], pf, num_samples=500)
    c = XL.LimeTabularExplainer(X, random_state=4).explain_instance(X[3], pf, num_samples=500)
    assert a.as_list() == b.as_list() and a.as_list() != c.as_list()
    with pytest.raises(ValueError, match="draws"):
        XL.LimeTabularExplainer(X, draws="numpy")


@pytest.mark.peer
@pytest.mark.parametrize("cfg", [dict(), dict(categorical_features=[2, 4]), dict(discretizer="decile"),
                                 dict(discretize_continuous=False, categorical_features=[2, 4]),
                                 dict(discretize_continuous=False, sample_around_instance=True),
                                 dict(mode="regression"), dict(feature_selection="lasso_path")])
def test_tabular_lime_draws_are_limes(cfg):
    lt = pytest.importorskip("lime.lime_tabular")
    X, pf, rf = _tabular_case(1)
    a = lt.LimeTabularExplainer(X, random_state=2, **cfg)
    b = XL.LimeTabularExplainer(X, random_state=2, draws="lime", **cfg)
    fn, kw = (rf, {}) if cfg.get("mode") == "regression" else (pf, dict(top_labels=2))
    for row in (X[5], X[9]):  # two in a row: the generators stay in step
        e1 = a.explain_instance(row, fn, num_features=4, num_samples=1500, **kw)
        e2 = b.explain_instance(row, fn, num_features=4, num_samples=1500, **kw)
        for lab in (e1.available_labels() if e1.mode == "classification" else [0, 1]):
            l1, l2 = e1.as_list(label=lab), e2.as_list(label=lab)
            assert [n for n, _ in l1] == [n for n, _ in l2]
            np.testing.assert_allclose([w for _, w in l2], [w for _, w in l1], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(e2.score, e1.score, rtol=1e-9, atol=1e-12)
