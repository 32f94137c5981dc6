"""Fused LIME kernels (one call per explanation): the weighted fit for several labels with its
weights (``fit_lime``), the model-output check, the tabular neighbourhood with kernel
weights, batch construction through ``PerturbedBuilder.batches`` and the vectorised
discretisation: Numba against the reference twins, and the drop-in's fused path against its
step-by-step path."""
import numpy as np
import pytest

from xaikernels.ops import perturb as P
from xaikernels.reference import perturb as R

from test_lime_methods import assert_same_explanations
from test_lime_ops import BACKENDS, _mixed_sampler, needs_numba

SELECTIONS = ["none", "auto", "highest_weights", "forward_selection", "lasso_path"]


def _case(S, F, K, binary, seed):
    rng = np.random.RandomState(seed)
    if binary:
        X = (rng.rand(S, F) < 0.6).astype(np.uint8)
        X[0] = 1
    else:
        X = rng.randn(S, F)
    Y = rng.rand(S, K)
    Y /= Y.sum(1, keepdims=True)
    return X, Y, rng


# ------------------------------------------------------------------------------- fit_lime
@needs_numba
@pytest.mark.parametrize("S,F,K,labels", [(37, 5, 3, [2, 0]), (200, 13, 4, [1]), (301, 73, 10, [9, 3, 4, 0, 7])])
@pytest.mark.parametrize("weights", ["weights", "distances", "cosine", "euclidean"])
@pytest.mark.parametrize("selection", SELECTIONS)
def test_fit_lime_numba_equals_reference(S, F, K, labels, weights, selection):
    binary = weights in ("cosine", "euclidean") or F == 13
    X, Y, rng = _case(S, F, K, binary, S + F)
    wd = None
    if weights == "weights":
        wd = rng.rand(S) + 0.05
    elif weights == "distances":
        wd = rng.rand(S) * 0.5
    kw = dict(weights=weights, kernel_width=0.75 if weights != "weights" else 0.0, alpha=1.0,
              feature_selection=selection, num_features=min(F, 6 if selection != "none" else F))
    a = P.fit_lime(X, Y, labels, wd, backend="numba", **kw)
    b = P.fit_lime(X, Y, labels, wd, backend="reference", **kw)
    np.testing.assert_array_equal(a["used"], b["used"])
    for k in ("coef", "intercept", "score", "local_pred"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-11, err_msg=k)


@needs_numba
@pytest.mark.parametrize("S,F", [(1, 1), (1, 5), (63, 3), (64, 7), (65, 9), (1000, 73), (333, 130)])
def test_class_gram_equals_dense_weighted_gram(S, F):
    """The class-popcount Gram (0/1 rows, weight a function of the row's count of ones)
    against Σ_r w_r x'_r x'_rᵀ, x' = (x, 1), summed densely."""
    from xaikernels.kernels.numba import perturb as K

    rng = np.random.RandomState(S * 7 + F)
    X = (rng.rand(S, F) < rng.uniform(0.1, 0.9)).astype(np.uint8)
    wk = rng.rand(F + 1) + 0.01
    g = np.full((F + 1, F + 1), np.nan)
    assert K._class_gram(X, wk, g)
    Xa = np.hstack([X.astype(np.float64), np.ones((S, 1))])
    w = wk[X.sum(1)]
    np.testing.assert_allclose(g, (Xa * w[:, None]).T @ Xa, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(g, g.T)
    # the same 0/1 rows as floats; per-row weights that depend on the count only
    g3 = np.empty_like(g)
    assert K._class_gram(X.astype(np.float64), wk, g3)
    np.testing.assert_array_equal(g3, g)
    assert K._class_gram_rows(X, w, g3)
    np.testing.assert_array_equal(g3, g)
    if S > 1 and len(set(X.sum(1))) < S:
        # two rows with the same count but different weights: refused
        c = X.sum(1)
        r = next(i for i in range(1, S) if (c[:i] == c[i]).any())
        w2 = w.copy()
        w2[r] *= 1.5
        assert not K._class_gram_rows(X, w2, np.empty_like(g))
    # entries that are not 0/1: refused, g untouched
    for bad in (2, 0.5):
        Xb = X.astype(np.float64) if isinstance(bad, float) else X.copy()
        Xb[S // 2, F - 1] = bad
        g2 = np.full((F + 1, F + 1), 7.0)
        assert not K._class_gram(Xb, wk, g2)
        assert not K._class_gram_rows(Xb, w, g2)
        assert np.all(g2 == 7.0)


@needs_numba
@pytest.mark.parametrize("weights", ["cosine", "euclidean"])
def test_fit_lime_uint8_not_binary_takes_the_dense_path(weights):
    """uint8 rows with values other than 0/1 are fitted (by the dense kernel) exactly as the
    reference fits them, not by the 0/1 class Gram."""
    X, Y, rng = _case(211, 11, 4, True, 5)
    X[rng.rand(*X.shape) < 0.1] = 3
    kw = dict(weights=weights, kernel_width=0.75, alpha=1.0, feature_selection="auto", num_features=5)
    a = P.fit_lime(X, Y, [2, 0], None, backend="numba", **kw)
    b = P.fit_lime(X, Y, [2, 0], None, backend="reference", **kw)
    np.testing.assert_array_equal(a["used"], b["used"])
    for k in ("coef", "intercept", "score", "local_pred"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-11, err_msg=k)


@needs_numba
@pytest.mark.parametrize("weights", ["weights", "distances"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
@pytest.mark.parametrize("selection", ["auto", "none", "highest_weights", "forward_selection"])
def test_fit_lime_count_weights_equal_reference(weights, dtype, selection):
    """0/1 rows with weights (or distances) that depend only on a row's count of ones — lime
    text's distances, the tabular sampler's binary rows — take the class-popcount Gram: equal
    to the reference's dense fit."""
    from xaikernels.kernels.numba import perturb as K

    X, Y, rng = _case(777, 17, 5, True, 11)
    X = X.astype(dtype)
    k = X.sum(1).astype(np.int64)
    per_count = rng.rand(18) * (0.9 if weights == "weights" else 1.5) + 0.05
    wd = per_count[k]
    assert K._class_gram_rows(X, wd, np.empty((18, 18)))  # the case under test
    kw = dict(weights=weights, kernel_width=0.8 if weights == "distances" else 0.0, alpha=1.0,
              feature_selection=selection, num_features=6)
    a = P.fit_lime(X, Y, [4, 1, 2], wd, backend="numba", **kw)
    b = P.fit_lime(X, Y, [4, 1, 2], wd, backend="reference", **kw)
    np.testing.assert_array_equal(a["used"], b["used"])
    for key in ("coef", "intercept", "score", "local_pred"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-9, atol=1e-11, err_msg=key)
    # negative weights are still refused (by the dense kernel's checks)
    if weights == "weights":
        bad = wd.copy()
        bad[k == k[3]] = -1.0
        with pytest.raises(ValueError, match="non-negative"):
            P.fit_lime(X, Y, [1], bad, backend="numba", **dict(kw, weights="weights"))


@needs_numba
@pytest.mark.parametrize("binary", [True, False])
def test_fit_lime_equals_step_by_step(binary):
    """distances → lime's kernel → fit_surrogate on the label columns, as the unfused ops."""
    X, Y, rng = _case(150, 9, 4, binary, 3)
    labels = [3, 1]
    if binary:
        d = P.row_distances(X, np.ones(9), "cosine")
        fused = P.fit_lime(X, Y, labels, None, weights="cosine", kernel_width=0.25, feature_selection="auto",
                           num_features=4)
    else:
        d = rng.rand(150)
        fused = P.fit_lime(X, Y, labels, d, weights="distances", kernel_width=0.25, feature_selection="auto",
                           num_features=4)
    w = P.exp_kernel(d, 0.25)
    ref = P.fit_surrogate(X.astype(np.float64), Y[:, labels], w, alpha=1.0, feature_selection="auto", num_features=4)
    np.testing.assert_array_equal(fused["used"], ref["used"])
    for k in ("coef", "intercept", "score", "local_pred"):
        np.testing.assert_allclose(fused[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_lime_errors(backend):
    X, Y, _ = _case(20, 4, 3, True, 0)
    with pytest.raises(IndexError):
        P.fit_lime(X, Y, [3], None, weights="cosine", kernel_width=0.25, backend=backend)
    bad = Y.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        P.fit_lime(X, bad, [1], None, weights="cosine", kernel_width=0.25, backend=backend)
    with pytest.raises(ValueError, match="zero"):
        P.fit_lime(X, Y, [1], np.zeros(20), weights="weights", backend=backend)
    with pytest.raises(ValueError, match="non-negative"):
        P.fit_lime(X, Y, [1], -np.ones(20), weights="weights", backend=backend)
    with pytest.raises(ValueError, match="kernel_width"):
        P.fit_lime(X, Y, [1], None, weights="cosine", kernel_width=0.0, backend=backend)


# --------------------------------------------------------------------------- output_check
@needs_numba
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (1000, 10)])
def test_output_check_numba_equals_reference(shape):
    rng = np.random.RandomState(shape[0])
    p = rng.rand(*shape)
    p /= p.sum(1, keepdims=True)
    logits = rng.randn(*shape) * 3
    nan = p.copy()
    nan[-1, -1] = np.nan
    inf = p.copy()
    inf[0, 0] = np.inf
    off = p.copy()
    off[0] *= 1.01
    for Y in (p, logits, nan, inf, off):
        assert P.output_check(Y, backend="numba") == P.output_check(Y, backend="reference")
    assert P.output_check(p, backend="numba") == (True, True)
    assert P.output_check(nan, backend="numba") == (False, False)


# ---------------------------------------------------------------- neighbourhood + weights
@needs_numba
@pytest.mark.parametrize("disc", [True, False])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_tabular_neighbourhood_weights(disc, metric):
    s, Xtr = _mixed_sampler(disc)
    plan = s.plan(Xtr[2])
    a = P.tabular_neighbourhood(613, 5, plan, metric=metric, stream=1, kernel_width=1.3, backend="numba")
    b = P.tabular_neighbourhood(613, 5, plan, metric=metric, stream=1, kernel_width=1.3, backend="reference")
    plain = P.tabular_neighbourhood(613, 5, plan, metric=metric, stream=1, backend="numba")
    assert len(a) == 4 and len(plain) == 3
    for i in range(3):
        np.testing.assert_array_equal(a[i], plain[i])
    # the weights are lime's kernel of the returned distances, bit for bit
    np.testing.assert_array_equal(a[3], P.exp_kernel(a[2], 1.3, backend="numba"))
    np.testing.assert_allclose(a[3], b[3], rtol=1e-12, atol=1e-12)


@needs_numba
def test_tabular_neighbourhood_weights_threads_and_chunks():
    import numba

    s, Xtr = _mixed_sampler()
    plan = s.plan(Xtr[0])
    big = P.tabular_neighbourhood(30001, 4, plan, kernel_width=2.0, backend="numba")
    parts = [P.tabular_neighbourhood(n, 4, plan, row_offset=o, kernel_width=2.0, backend="numba")
             for o, n in ((0, 257), (257, 29744))]
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = P.tabular_neighbourhood(30001, 4, plan, kernel_width=2.0, backend="numba")
    finally:
        numba.set_num_threads(old)
    for i in range(4):
        np.testing.assert_array_equal(big[i], one[i])
        np.testing.assert_array_equal(np.concatenate([p[i] for p in parts]), big[i])


def test_tabular_neighbourhood_rejects_bad_width():
    s, Xtr = _mixed_sampler()
    with pytest.raises(ValueError, match="kernel_width"):
        P.tabular_neighbourhood(10, 0, s.plan(Xtr[0]), kernel_width=-1.0)


# -------------------------------------------------------------------- builder batches
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("layout,shape", [("hwc", (13, 7, 3)), ("chw", (2, 9, 11)), ("flat", (1, 1, 5))])
def test_builder_batches_equal_build_perturbed(backend, dtype, layout, shape):
    rng = np.random.RandomState(1)
    x = rng.randn(*shape).astype(dtype)
    fill = rng.randn(*shape).astype(dtype)
    xa, fa = P.as_apb(x, layout), P.as_apb(fill, layout)
    Pn = xa.shape[1]
    seg = rng.randint(0, 6, Pn)
    seg[:6] = np.arange(6) if Pn >= 6 else seg[:6]
    seg = np.unique(seg, return_inverse=True)[1].astype(np.int64)
    F = int(seg.max()) + 1
    masks = P.sample_masks(23, F, 7, first_row_ones=True)
    ref = np.empty((23,) + xa.shape, dtype=dtype)
    R.build_perturbed(xa, fa, seg, masks, ref)
    fn = P.PerturbedBuilder(xa, fa, seg, backend=backend).batches(masks)
    for s0, s1 in ((0, 5), (5, 6), (6, 23), (23, 23)):
        out = fn(s0, s1, np.empty((s1 - s0,) + shape, dtype=dtype))
        np.testing.assert_array_equal(out.reshape(ref[s0:s1].shape), ref[s0:s1])


@needs_numba
@pytest.mark.parametrize("L", [1, 63, 64, 200, 1000])
def test_builder_batches_bitmaps_ahead_in_chunks(monkeypatch, L):
    """The numba builder's bitmaps, built ahead in chunks of rows: batches in any order,
    overlapping, repeated and backwards give build_perturbed's rows."""
    from xaikernels.kernels.numba import perturb as K

    monkeypatch.setattr(K, "_BITMAP_BYTES", 8 * ((L + 63) // 64) * 5)  # 5 rows per chunk
    rng = np.random.RandomState(L)
    x, fill = rng.randn(1, L, 1), rng.randn(1, L, 1)
    seg = rng.randint(0, 9, L).astype(np.int64)
    masks = (rng.rand(37, 9) < 0.5).astype(np.uint8)
    ref = np.empty((37, 1, L, 1))
    R.build_perturbed(x, fill, seg, masks, ref)
    fn = P.PerturbedBuilder(x, fill, seg, backend="numba").batches(masks)
    for s0, s1 in ((0, 3), (3, 11), (2, 4), (30, 37), (0, 37), (12, 13), (36, 37), (5, 5), (20, 29), (1, 2)):
        out = fn(s0, s1, np.full((s1 - s0, 1, L, 1), np.nan))
        np.testing.assert_array_equal(out, ref[s0:s1])
    with pytest.raises(ValueError, match="past the end"):
        fn(30, 38, np.empty((8, 1, L, 1)))


@needs_numba
@pytest.mark.parametrize("rows_per_chunk", [None, 70, 128])
def test_builder_batches_full_bitmap_blocks(monkeypatch, rows_per_chunk):
    """Chunks of bitmaps holding whole blocks of rows (the bitmap kernel's fixed-size loop)
    and a partial one, rows of several words with a partial last word: build_perturbed's
    rows, batch by batch."""
    from xaikernels.kernels.numba import perturb as K

    L = 3 * 67
    if rows_per_chunk is not None:
        monkeypatch.setattr(K, "_BITMAP_BYTES", 8 * ((L + 63) // 64) * rows_per_chunk)
    rng = np.random.RandomState(5)
    x, fill = rng.randn(1, L // 3, 3), rng.randn(1, L // 3, 3)
    seg = rng.randint(0, 11, L // 3).astype(np.int64)
    masks = (rng.rand(301, 11) < 0.5).astype(np.uint8)
    ref = np.empty((301, 1, L // 3, 3))
    R.build_perturbed(x, fill, seg, masks, ref)
    fn = P.PerturbedBuilder(x, fill, seg, backend="numba").batches(masks)
    for s0 in range(0, 301, 10):
        s1 = min(301, s0 + 10)
        out = fn(s0, s1, np.full((s1 - s0, 1, L // 3, 3), np.nan))
        np.testing.assert_array_equal(out, ref[s0:s1])


# --------------------------------------------------------------------- discretisation
def test_vectorised_discretize_equals_searchsorted():
    from xaikernels.methods.lime import TabularSampler

    rng = np.random.RandomState(0)
    X = rng.randn(300, 6)
    X[:, 2] = np.round(X[:, 2])
    for disc in ("quartile", "decile"):
        s = TabularSampler(X, [4], True, disc)
        rows = list(X[:40]) + [np.array([np.inf, -np.inf, 0.0, 1, 2, 3]), X[0] * 1e9,
                               np.array([np.nan, 0.0, 0.0, 0.0, 0.0, 0.0])]
        for r in rows:
            expect = np.array(r, dtype=float, copy=True)
            for d, q in s.bins.items():
                expect[d] = np.searchsorted(q, expect[d])
            np.testing.assert_array_equal(s.discretize(r), expect)


# ------------------------------------------------------------- drop-in: fused vs steps
def _lime_kernel(d, kernel_width):
    return np.sqrt(np.exp(-(d ** 2) / kernel_width ** 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropin_fused_fit_equals_custom_kernel_path(backend):
    """Passing lime's own kernel function takes the unfused path (distances, kernel_fn,
    fit_surrogate); the default takes the fused kernels: same explanation."""
    from xaikernels import lime as XL

    rng = np.random.RandomState(0)
    Xtr = rng.randn(400, 7)
    Wt = rng.randn(7, 3)

    def pf(X):
        z = X @ Wt
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    for fs in ("auto", "forward_selection", "none"):
        a = XL.LimeTabularExplainer(Xtr, random_state=3, feature_selection=fs, backend=backend)
        b = XL.LimeTabularExplainer(Xtr, random_state=3, feature_selection=fs, kernel=_lime_kernel, backend=backend)
        ea = a.explain_instance(Xtr[1], pf, num_samples=700, top_labels=2)
        eb = b.explain_instance(Xtr[1], pf, num_samples=700, top_labels=2)
        assert_same_explanations(ea, eb, rtol=1e-9, atol=1e-12)

    img = rng.rand(12, 10, 3)
    seg = (np.arange(12)[:, None] // 3) * 4 + np.arange(10)[None, :] // 3
    Wc = rng.randn(12 * 10 * 3, 4)

    def clf(b):
        z = b.reshape(len(b), -1) @ Wc
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    for metric in ("cosine", "euclidean"):
        a = XL.LimeImageExplainer(random_state=0, backend=backend).explain_instance(
            img, clf, top_labels=3, num_samples=333, batch_size=7, segmentation_fn=lambda i: seg, distance_metric=metric)
        b = XL.LimeImageExplainer(random_state=0, kernel=_lime_kernel, backend=backend).explain_instance(
            img, clf, top_labels=3, num_samples=333, batch_size=7, segmentation_fn=lambda i: seg, distance_metric=metric)
        for lab in a.top_labels:
            np.testing.assert_allclose([w for _, w in a.local_exp[lab]], [w for _, w in b.local_exp[lab]],
                                       rtol=1e-9, atol=1e-12)
            # R² in [0, 1]: near 0 (this random classifier) only an absolute bound is meaningful
            np.testing.assert_allclose(a.score_per_label[lab], b.score_per_label[lab], rtol=1e-9, atol=1e-12)


@needs_numba
def test_builder_batches_follow_the_output_buffers_page_offset():
    """batches() places its copies of x and fill 2 and 3 KiB past the page offset of the
    buffer each batch is written to (4K aliasing), moving them when the buffer moves; the
    rows stay build_perturbed's whatever the buffers' offsets."""
    from xaikernels.kernels.numba import perturb as K

    rng = np.random.RandomState(3)
    x, fill = rng.randn(1, 512, 3), rng.randn(1, 512, 3)  # planes of 12 KiB: rows share an offset
    seg = rng.randint(0, 7, 512).astype(np.int64)
    masks = (rng.rand(40, 7) < 0.5).astype(np.uint8)
    ref = np.empty((40, 1, 512, 3))
    R.build_perturbed(x, fill, seg, masks, ref)
    b = P.PerturbedBuilder(x, fill, seg, backend="numba")
    fn = b.batches(masks)
    assert b.new_out((4, 1, 512, 3)).ctypes.data % 4096 == K.Builder.OUT_OFFSET
    for i, off in enumerate([0, 2048, 136, 136, 3000, 0, 2048, 512, 1024, 4000]):
        out = K.placed_empty((4, 1, 512, 3), np.float64, off)
        fn(4 * i, 4 * i + 4, out)
        np.testing.assert_array_equal(out, ref[4 * i:4 * i + 4])
        assert (b._impl.xv.ctypes.data - off - 2048) % 4096 <= 256 or (off - b._impl.xv.ctypes.data + 2048) % 4096 <= 256
        assert (b._impl.fv.ctypes.data - b._impl.xv.ctypes.data) % 4096 == 1024
