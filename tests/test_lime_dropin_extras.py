"""``xaikernels.lime`` against the rest of lime's API: scikit-learn distance metrics, lime's
exception types, ``RecurrentTabularExplainer(draws=)``, ``lime.exceptions``, the tabular
explainer's ``scaler`` and static methods, ``training_data_stats`` with categorical
statistics, and the HTML views of an explanation (lime as the oracle where installed)."""
import sys
import types
import warnings
from html.parser import HTMLParser

import numpy as np
import pytest

from xaikernels import lime as XL

from test_lime_ops import needs_numba

pytest.importorskip("sklearn")
sps = pytest.importorskip("scipy.sparse")


def _pf(D, K=2, seed=0):
    Wt = np.random.RandomState(seed).randn(D, K)

    def pf(X):
        X = X.toarray() if sps.issparse(X) else np.asarray(X)
        z = np.tanh(X) @ Wt
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return pf


def _words_clf(docs):
    s = np.array([0.3 * d.count("good") - 0.2 * d.count("bad") + 0.05 * len(d.split()) for d in docs])
    p = 1 / (1 + np.exp(-(s - 0.3)))
    return np.c_[1 - p, p]


_TEXT = "The movie was good, but the ending was bad. Good acting; bad script!"


def _image():
    rng = np.random.RandomState(0)
    img = rng.rand(16, 16, 3)
    Wc = rng.randn(16 * 16 * 3, 3) * 0.1

    def clf(b):
        z = np.asarray(b).reshape(len(b), -1) @ Wc
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def seg(im):
        return np.arange(16)[:, None] // 4 * 4 + np.arange(16)[None] // 4

    return img, clf, seg


def _weights(exp, label):
    return [i for i, _ in exp.local_exp[label]], np.array([w for _, w in exp.local_exp[label]])


def _assert_same(ours, theirs, labels):
    for lab in labels:
        ids_o, w_o = _weights(ours, lab)
        ids_t, w_t = _weights(theirs, lab)
        assert ids_o == [int(i) for i in ids_t]
        np.testing.assert_allclose(w_o, w_t, rtol=1e-6, atol=1e-10)
        assert ours.intercept[lab] == pytest.approx(theirs.intercept[lab], rel=1e-6, abs=1e-10)
    assert ours.score == pytest.approx(theirs.score, rel=1e-6, abs=1e-10)


# ----------------------------------------------------------------------- distance metrics
@needs_numba
@pytest.mark.peer
@pytest.mark.parametrize("metric", ["manhattan", "l2", "chebyshev", "minkowski"])
@pytest.mark.parametrize("dc", [True, False])
def test_tabular_sklearn_metrics_equal_lime(metric, dc):
    lt_mod = pytest.importorskip("lime.lime_tabular")
    X = np.random.RandomState(0).randn(200, 4)
    pf = _pf(4)
    kw = dict(random_state=1, discretize_continuous=dc)
    ours = XL.LimeTabularExplainer(X, draws="lime", **kw).explain_instance(X[0], pf, num_samples=300,
                                                                          distance_metric=metric)
    theirs = lt_mod.LimeTabularExplainer(X, **kw).explain_instance(X[0], pf, num_samples=300,
                                                                   distance_metric=metric)
    _assert_same(ours, theirs, [1])


@needs_numba
@pytest.mark.parametrize("sparse", [False, True])
def test_tabular_counter_draws_take_sklearn_metrics(sparse):
    """``draws="counter"`` (dense and sparse): the kernel weighs scikit-learn's distances of
    lime's standardised neighbourhood (dense ``(x - mean_) / scale_``, sparse ``x ⊙ scale_``,
    as lime) to the instance."""
    from sklearn.metrics import pairwise_distances

    rng = np.random.RandomState(0)
    X = rng.randn(150, 5)
    if sparse:
        X = sps.csr_matrix(np.where(np.abs(X) > 0.7, X, 0.0))
    pf = _pf(5)
    seen = {}

    def predict(Z):
        seen["inputs"] = Z
        return pf(Z)

    def kernel(d, kernel_width):
        seen["d"] = np.array(d)
        return np.sqrt(np.exp(-(d ** 2) / kernel_width ** 2))

    ex = XL.LimeTabularExplainer(X, random_state=4, discretize_continuous=False, kernel=kernel)
    exp = ex.explain_instance(X[3], predict, num_samples=400, distance_metric="manhattan")
    Z, sc = seen["inputs"], ex.scaler
    scaled = Z.multiply(sc.scale_).tocsr() if sparse else (Z - sc.mean_) / sc.scale_
    np.testing.assert_allclose(seen["d"], pairwise_distances(scaled, scaled[0].reshape(1, -1), metric="manhattan")
                               .ravel(), rtol=1e-12, atol=1e-12)
    assert len(exp.local_exp[1]) == 5


@needs_numba
@pytest.mark.peer
@pytest.mark.parametrize("metric", ["manhattan", "l2", "jaccard"])
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.DataConversionWarning")  # jaccard on 0/1 ints, as lime
def test_image_sklearn_metrics_equal_lime(metric):
    li_mod = pytest.importorskip("lime.lime_image")
    img, clf, seg = _image()
    kw = dict(segmentation_fn=seg, num_samples=100, distance_metric=metric, top_labels=2, hide_color=0)
    # a kernel width for distances up to 16 (lime's 0.25 leaves a few rows of weight > 0)
    ours = XL.LimeImageExplainer(kernel_width=4, random_state=0).explain_instance(img, clf, **kw)
    theirs = li_mod.LimeImageExplainer(kernel_width=4, random_state=0).explain_instance(img, clf, **kw)
    assert ours.top_labels == theirs.top_labels
    _assert_same(ours, theirs, theirs.top_labels)


@needs_numba
@pytest.mark.peer
@pytest.mark.parametrize("metric", ["manhattan", "l2"])
def test_text_sklearn_metrics_equal_lime(metric):
    ltx = pytest.importorskip("lime.lime_text")
    kw = dict(num_samples=300, distance_metric=metric)
    ours = XL.LimeTextExplainer(random_state=3).explain_instance(_TEXT, _words_clf, **kw)
    theirs = ltx.LimeTextExplainer(random_state=3).explain_instance(_TEXT, _words_clf, **kw)
    _assert_same(ours, theirs, [1])


@needs_numba
def test_unknown_metric_fails_before_the_classifier():
    """scikit-learn's own error (a ValueError) for a name it does not know, before any
    classifier call, in all three explainers; a metric scikit-learn rejects for sparse input
    (text: lime's sparse coalitions) raises scikit-learn's TypeError, as lime."""
    calls = []

    def counted(fn):
        def wrapped(x):
            calls.append(1)
            return fn(x)
        return wrapped

    X = np.random.RandomState(0).randn(100, 3)
    img, clf, seg = _image()
    runs = [lambda m: XL.LimeTabularExplainer(X, random_state=0, draws=d).explain_instance(
                X[0], counted(_pf(3)), num_samples=50, distance_metric=m) for d in ("lime", "counter")]
    runs.append(lambda m: XL.LimeImageExplainer(random_state=0).explain_instance(
        img, counted(clf), segmentation_fn=seg, num_samples=20, distance_metric=m))
    runs.append(lambda m: XL.LimeTextExplainer(random_state=0).explain_instance(
        _TEXT, counted(_words_clf), num_samples=20, distance_metric=m))
    for run in runs:
        with pytest.raises(ValueError, match="metric") as info:
            run("no-such-metric")
        assert "sparse" not in str(info.value)
    assert calls == []
    with pytest.raises(TypeError, match="sparse"):
        runs[-1]("chebyshev")


# -------------------------------------------------------------------------- exception types
@needs_numba
@pytest.mark.parametrize("draws", ["lime", "counter"])
def test_tabular_one_dimensional_classifier_output_is_not_implemented(draws):
    """lime's NotImplementedError for a classifier without probabilities (1-D output)."""
    X = np.random.RandomState(0).randn(100, 3)
    ex = XL.LimeTabularExplainer(X, random_state=0, draws=draws)
    with pytest.raises(NotImplementedError, match="mode='regression'") as info:
        ex.explain_instance(X[0], lambda Z: Z[:, 0], num_samples=50)
    assert isinstance(info.value, ValueError)  # as the other wrong output shapes


@pytest.mark.peer
def test_one_dimensional_classifier_output_raises_as_lime():
    lt_mod = pytest.importorskip("lime.lime_tabular")
    X = np.random.RandomState(0).randn(100, 3)
    raised = []
    for mod in (lt_mod, XL):
        with pytest.raises(Exception) as info:
            mod.LimeTabularExplainer(X, random_state=0).explain_instance(X[0], lambda Z: Z[:, 0], num_samples=50)
        raised.append(info.value)
    assert type(raised[0]) is NotImplementedError and isinstance(raised[1], NotImplementedError)


def test_explanation_mode_raises_lime_error():
    from xaikernels.lime.exceptions import LimeError

    assert issubclass(LimeError, Exception) and XL.LimeError is LimeError
    with pytest.raises(LimeError, match="Invalid explanation mode"):
        XL.Explanation(XL.DomainMapper(), mode="bogus")


@pytest.mark.peer
def test_lime_error_is_raised_where_lime_raises_it():
    le_mod = pytest.importorskip("lime.explanation")
    for mod, err in ((le_mod, pytest.importorskip("lime.exceptions").LimeError), (XL, XL.LimeError)):
        with pytest.raises(err):
            mod.Explanation(mod.DomainMapper(), mode="bogus")


# ------------------------------------------------------------------------ recurrent draws
@needs_numba
@pytest.mark.peer
@pytest.mark.parametrize("dc", [True, False])
def test_recurrent_draws_lime_equals_lime(dc):
    lt_mod = pytest.importorskip("lime.lime_tabular")
    rng = np.random.RandomState(0)
    X = rng.randn(120, 3, 2)
    Wt = rng.randn(6, 2)

    def clf(Z):
        z = np.tanh(np.asarray(Z).reshape(len(Z), -1)) @ Wt
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    kw = dict(feature_names=["a", "b"], random_state=5, discretize_continuous=dc)
    ours = XL.RecurrentTabularExplainer(X, draws="lime", **kw).explain_instance(X[7], clf, num_samples=300)
    theirs = lt_mod.RecurrentTabularExplainer(X, **kw).explain_instance(X[7], clf, num_samples=300)
    _assert_same(ours, theirs, [1])
    assert [n for n, _ in ours.as_list(1)] == [n for n, _ in theirs.as_list(1)]
    with pytest.raises(ValueError, match="draws"):
        XL.RecurrentTabularExplainer(X, draws="bogus")


# ------------------------------------------------------------------- scaler, static methods
@pytest.mark.peer
@pytest.mark.parametrize("kw", [dict(), dict(discretize_continuous=False),
                                dict(discretize_continuous=False, categorical_features=[1]), dict(sparse=True),
                                dict(float32=True, discretize_continuous=False)])
def test_scaler_equals_lime(kw):
    lt_mod = pytest.importorskip("lime.lime_tabular")
    kw = dict(kw)
    rng = np.random.RandomState(0)
    X = rng.randn(150, 4)
    X[:, 1] = rng.randint(0, 3, 150)
    if kw.pop("sparse", False):
        X = sps.csr_matrix(np.where(np.abs(X) > 0.7, X, 0.0))
    if kw.pop("float32", False):
        X = X.astype(np.float32)
    theirs = lt_mod.LimeTabularExplainer(X, **kw).scaler
    ours = XL.LimeTabularExplainer(X, **kw).scaler
    assert type(ours) is type(theirs)
    for name in ("mean_", "scale_", "var_", "n_samples_seen_"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_array_equal(a, b)
            assert np.asarray(a).dtype == np.asarray(b).dtype, name
    dense = X.toarray() if sps.issparse(X) else X
    np.testing.assert_array_equal(ours.transform(dense[:5]), theirs.transform(dense[:5]))


def test_scaler_statics_and_stats_validation():
    X = np.random.RandomState(0).randn(50, 3)
    ex = XL.LimeTabularExplainer(X, discretize_continuous=False, categorical_features=[2])
    sc = ex.scaler
    assert ex.scaler is sc  # fitted once
    np.testing.assert_allclose(sc.scale_[:2], X[:, :2].std(0))
    assert sc.mean_[2] == 0 and sc.scale_[2] == 1
    np.testing.assert_allclose(sc.transform(X), X / sc.scale_)
    ex.scaler = "mine"
    assert ex.scaler == "mine"
    assert XL.LimeTabularExplainer.convert_and_round(np.array([1.234, -2.0, 3.456])) == ["1.23", "-2.00", "3.46"]
    XL.LimeTabularExplainer.validate_training_data_stats(dict.fromkeys(
        ["means", "mins", "maxs", "stds", "feature_values", "feature_frequencies"]))
    with pytest.raises(Exception, match=r"Missing keys in training_data_stats. Details: \['maxs', 'mins'\]"):
        XL.LimeTabularExplainer.validate_training_data_stats(dict.fromkeys(
            ["means", "stds", "feature_values", "feature_frequencies"]))


# ------------------------------------------------------- training_data_stats, categorical
def _stats_with_categorical():
    ld = pytest.importorskip("lime.discretize")
    rng = np.random.RandomState(0)
    X = rng.randn(200, 5)
    X[:, 2] = rng.randint(0, 3, 200)
    y = (X[:, 0] > 0).astype(int)
    disc = ld.QuartileDiscretizer(X, [], [str(i) for i in range(5)], labels=y, random_state=1)
    dx = disc.discretize(X)
    b = disc.bins(X, y)
    stats = dict(means=disc.means, stds=disc.stds, mins=disc.mins, maxs=disc.maxs, bins={i: b[i] for i in range(5)},
                 feature_values={i: np.unique(dx[:, i]).tolist() for i in range(5)},
                 feature_frequencies={i: (np.unique(dx[:, i], return_counts=True)[1] / len(dx)).tolist()
                                      for i in range(5)})
    return X, stats


@needs_numba
@pytest.mark.peer
def test_training_data_stats_of_a_categorical_feature_draw_as_lime():
    """Statistics that also cover categorical feature 2: lime "undiscretises" its values too
    (its stream shifts); draws="lime" follows."""
    lt_mod = pytest.importorskip("lime.lime_tabular")
    X, stats = _stats_with_categorical()
    pf = _pf(5)
    kw = dict(random_state=2, training_data_stats=stats, categorical_features=[2])
    ours = XL.LimeTabularExplainer(X, draws="lime", **kw)
    theirs = lt_mod.LimeTabularExplainer(X, **kw)
    for row in (X[3], X[4]):
        _assert_same(ours.explain_instance(row, pf, num_samples=300), theirs.explain_instance(row, pf, num_samples=300),
                     [1])
    assert list(ours.discretizer.means) == list(theirs.discretizer.means)


# ------------------------------------------------------------------------------------ HTML
class _Checker(HTMLParser):
    """Tags balanced (void elements aside), text collected."""

    VOID = {"meta", "br", "hr", "img", "input", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.text, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def _parse(html):
    p = _Checker()
    p.feed(html)
    p.close()
    assert not p.errors and not p.stack
    assert "<script" not in html
    return "".join(p.text)


@needs_numba
def test_tabular_html_page():
    X = np.random.RandomState(0).randn(100, 4)
    names = ["age", "income <k>", "c", "d"]
    ex = XL.LimeTabularExplainer(X, feature_names=names, class_names=["no", "yes"], random_state=0)
    exp = ex.explain_instance(X[0], _pf(4), num_samples=200, top_labels=2, num_features=4)
    html = exp.as_html()
    text = _parse(html)
    assert "income &lt;k&gt;" in html  # escaped
    for lab in (0, 1):
        assert "Explanation for class %s" % ["no", "yes"][lab] in text
        for name, w in exp.as_list(lab):
            assert name in text and "%.4g" % w in text
    assert "Prediction probabilities" in text and "%.2f" % exp.predict_proba[1] in text
    assert "Feature values" in text and "%.2f" % X[0, 0] in text
    only = _parse(exp.as_html(labels=[1], predict_proba=False, show_table=False))
    assert "Explanation for class yes" in only and "Explanation for class no" not in only
    assert "Prediction probabilities" not in only and "Feature values" not in only
    every = _parse(exp.as_html(show_all=True))
    assert all(n in every for n in ("%.2f" % v for v in X[0]))


@needs_numba
def test_regression_html_page_and_save_to_file(tmp_path):
    X = np.random.RandomState(0).randn(100, 3)
    ex = XL.LimeTabularExplainer(X, mode="regression", random_state=0, discretize_continuous=False)
    exp = ex.explain_instance(X[1], lambda Z: np.tanh(Z) @ np.array([1.0, -2.0, 0.5]), num_samples=200)
    text = _parse(exp.as_html())
    assert "Predicted value" in text and "%.4g" % exp.predicted_value in text
    assert "positive" in text and "negative" in text
    for name, w in exp.as_list():
        assert name in text and "%.4g" % w in text
    assert "Predicted value" not in _parse(exp.as_html(show_predicted_value=False))
    path = tmp_path / "exp.html"
    exp.save_to_file(str(path), show_table=False)
    saved = path.read_text(encoding="utf8")
    assert saved.startswith("<!DOCTYPE html>") and "Feature values" not in saved and "Predicted value" in saved


@needs_numba
def test_text_html_highlights_the_words():
    exp = XL.LimeTextExplainer(random_state=3, class_names=["neg", "pos"]).explain_instance(
        _TEXT + " <b>&", _words_clf, num_samples=200, num_features=4)
    html = exp.as_html()
    text = _parse(html)
    assert _TEXT + " <b>&" in text  # the whole text, escaped in the page
    for word, w in exp.as_list(1):
        assert '<span title="%.4g"' % w in html and word in text
    assert "Text with highlighted words" not in _parse(exp.as_html(text=False))


@needs_numba
def test_show_in_notebook(monkeypatch):
    X = np.random.RandomState(0).randn(60, 3)
    exp = XL.LimeTabularExplainer(X, random_state=0).explain_instance(X[0], _pf(3), num_samples=100)
    shown = []
    ipy, disp = types.ModuleType("IPython"), types.ModuleType("IPython.display")
    disp.HTML = lambda data: ("HTML", data)
    disp.display = shown.append
    ipy.display = disp
    monkeypatch.setitem(sys.modules, "IPython", ipy)
    monkeypatch.setitem(sys.modules, "IPython.display", disp)
    exp.show_in_notebook(show_table=False)
    assert shown and shown[0][0] == "HTML" and "Explanation for class 1" in shown[0][1]
    monkeypatch.setitem(sys.modules, "IPython", None)
    monkeypatch.setitem(sys.modules, "IPython.display", None)
    with pytest.raises(ImportError, match="IPython"):
        exp.show_in_notebook()


@pytest.mark.peer
def test_html_signatures_and_table_js_equal_lime():
    import inspect

    le_mod = pytest.importorskip("lime.explanation")
    lt_mod = pytest.importorskip("lime.lime_tabular")
    for m in ("as_html", "save_to_file", "show_in_notebook"):
        assert (list(inspect.signature(getattr(XL.Explanation, m)).parameters.items())
                == list(inspect.signature(getattr(le_mod.Explanation, m)).parameters.items()))
    args = (["a", "b", "c"], ["1.00", "True", "3.00"], np.array([0.1, 1.0, 0.3]), [1])
    exp = [(2, -0.25), (0, 0.5)]
    for fi in (None, np.array([0, 2])):
        ours, theirs = XL.TableDomainMapper(*args, feature_indexes=fi), lt_mod.TableDomainMapper(*args, feature_indexes=fi)
        vals = args[1][:2] if fi is not None else args[1]
        ours.feature_values = theirs.feature_values = vals
        for kw in (dict(), dict(show_all=True), dict(show_table=False)):
            assert (ours.visualize_instance_html(exp, 1, "div", "obj", **kw)
                    == theirs.visualize_instance_html(exp, 1, "div", "obj", **kw))
    assert XL.DomainMapper().visualize_instance_html(exp, 1, "d", "o") == ""


@needs_numba
@pytest.mark.peer
def test_html_page_draws_its_div_id_as_lime():
    """lime's page names its div with 15 characters drawn from the explanation's random
    state (the text explainer's own generator): the same id, the same state after."""
    import re

    ltx = pytest.importorskip("lime.lime_text")
    ours_ex, theirs_ex = XL.LimeTextExplainer(random_state=3), ltx.LimeTextExplainer(random_state=3)
    ours = ours_ex.explain_instance(_TEXT, _words_clf, num_samples=100)
    theirs = theirs_ex.explain_instance(_TEXT, _words_clf, num_samples=100)
    ids = [re.search(r'id="top_div([A-Z0-9]{15})"', e.as_html()).group(1) for e in (ours, theirs)]
    assert ids[0] == ids[1]
    assert ours_ex.random_state.randint(1 << 30) == theirs_ex.random_state.randint(1 << 30)


def test_id_generator_as_limes():
    """``lime.explanation.id_generator``: the same id from the same RandomState, the generator
    left where lime leaves it, and None failing as in lime."""
    LE = pytest.importorskip("lime.explanation")
    from xaikernels.lime import explanation as XE

    for size in (15, 1, 40):
        a, b = np.random.RandomState(7), np.random.RandomState(7)
        assert XE.id_generator(size, a) == LE.id_generator(size, b)
        assert a.randint(10**6) == b.randint(10**6)
    assert len(XE.id_generator(random_state=np.random.RandomState(0))) == 15
    with pytest.raises(AttributeError):
        LE.id_generator(5)
    with pytest.raises(AttributeError):
        XE.id_generator(5)


def _underflow_case():
    rs = np.random.RandomState(0)
    img = rs.rand(16, 16, 3)
    seg = (np.arange(16)[:, None] // 4) * 4 + np.arange(16)[None, :] // 4
    Wm = rs.randn(4, 3)

    def clf(b):
        b = np.asarray(b, dtype=np.float64)
        f = np.stack([b[:, :8, :8].mean((1, 2, 3)), b[:, 8:, :8].mean((1, 2, 3)), b[:, :8, 8:].mean((1, 2, 3)),
                      b[:, 8:, 8:].mean((1, 2, 3))], 1)
        z = f @ Wm * 5.0
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    return img, seg, clf


@pytest.mark.peer
@needs_numba
@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
def test_weights_underflowed_onto_the_instance_score_as_lime(metric):
    """Euclidean distances of 16-segment coalitions at kernel width 0.25: every weight but
    the instance's is below 1e-30, and the surrogate explains none of the weighted variation.
    lime's score (scikit-learn's r2_score) is then 0; with manhattan distances (scikit-learn's,
    then the kernels' fit) the Gram-form fit called the target constant and reported 1
    before."""
    li_mod = pytest.importorskip("lime.lime_image")
    img, seg, clf = _underflow_case()
    exps = []
    for cls in (li_mod.LimeImageExplainer, XL.LimeImageExplainer):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exps.append(cls(kernel_width=0.25, random_state=3).explain_instance(
                img, clf, top_labels=3, num_samples=40, segmentation_fn=lambda im: seg, distance_metric=metric,
                hide_color=0, batch_size=10))
    theirs, ours = exps
    assert theirs.score < 0.5  # (the case is the degenerate one)
    assert ours.score == pytest.approx(theirs.score, abs=1e-6)
    for lab in theirs.local_exp:
        assert ours.intercept[lab] == pytest.approx(theirs.intercept[lab], abs=1e-9)


@needs_numba
def test_exact_score_conventions():
    """The direct score follows scikit-learn's r2_score for a varying target (1 - ratio; 0
    for a residual where the weighted variation is exactly 0, 1 where the residual is 0 up
    to rounding too) and stays 1 for a target without variation."""
    from sklearn.metrics import r2_score

    rs = np.random.RandomState(1)
    data = (rs.rand(30, 5) < 0.5).astype(np.uint8)
    w = np.exp(-rs.rand(30) * 3)
    coef = np.array([[0.1, -0.2, 0, 0, 0], [0, 0, 0.3, 0, 0]])
    used = np.array([[1, 2, 0, 0, 0], [0, 0, 1, 0, 0]])

    def scores(yss, w, coef, icpt):
        fit = {"score": np.array([1.0, 1.0]), "used": used, "coef": coef, "intercept": np.asarray(icpt, float)}
        XL._exact_scores(fit, data, yss, [0, 1], w)
        return fit["score"]

    y_var = rs.rand(30, 2)
    got = scores(y_var, w, coef, [0.5, 0.4])
    for j in range(2):
        pred = data.astype(float) @ coef[j] + [0.5, 0.4][j]
        assert got[j] == pytest.approx(r2_score(y_var[:, j], pred, sample_weight=w), abs=1e-12)
    assert list(scores(np.full((30, 2), 0.5), w, coef, [0.5, 0.4])) == [1.0, 1.0]
    # the weight all on rows of one value: no weighted variation; a residual there scores 0,
    # none (our intercept's rounding aside) scores 1
    y_one = y_var.copy()
    y_one[:3] = 0.25
    w_one = np.zeros(30)
    w_one[:3] = 1.0
    assert list(scores(y_one, w_one, coef, [0.5, 0.4])) == [0.0, 0.0]
    assert list(scores(y_one, w_one, np.zeros((2, 5)), [np.nextafter(0.25, 1.0), 0.25])) == [1.0, 1.0]
