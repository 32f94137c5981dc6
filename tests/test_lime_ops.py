"""Perturbation ops (LIME / KernelSHAP): Numba kernels against the NumPy reference twins,
counter-based RNG invariances and sampling statistics, surrogate fits against closed forms."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from _boundscheck import assert_in_bounds

from xaikernels import _backend
from xaikernels.ops import perturb as P
from xaikernels.reference import perturb as R

BACKENDS = [b for b in ("reference", "numba") if _backend._available(b, "perturb_sample_masks", torch.device("cpu")) is None]
HAS_NUMBA = "numba" in BACKENDS
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")


# ------------------------------------------------------------------------------------- masks
MASK_CASES = [
    dict(n_rows=1, n_features=1),
    dict(n_rows=37, n_features=11, stream=3, row_offset=5),
    dict(n_rows=64, n_features=5, p_on=0.3, paired=True),
    dict(n_rows=29, n_features=13, first_row_ones=True),
    dict(n_rows=41, n_features=9, sized="shapley", paired=True, row_offset=3),
    dict(n_rows=33, n_features=7, sized="text", first_row_ones=True),
]


def _kw(case):
    c = dict(case)
    sized = c.pop("sized", None)
    if sized == "shapley":
        c["size_cdf"] = P.shapley_size_cdf(c["n_features"])
    elif sized == "text":
        c["size_cdf"] = P.lime_text_size_cdf(c["n_features"])
    return c


@needs_numba
@pytest.mark.parametrize("case", MASK_CASES)
def test_masks_numba_equals_reference(case):
    kw = _kw(case)
    a = P.sample_masks(seed=123, backend="numba", **kw)
    b = P.sample_masks(seed=123, backend="reference", **kw)
    assert a.dtype == np.uint8 and a.shape == (kw["n_rows"], kw["n_features"])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sized", [None, "shapley"])
def test_masks_chunking_invariance(backend, sized):
    F = 10
    cdf = P.shapley_size_cdf(F) if sized else None
    whole = P.sample_masks(200, F, 7, size_cdf=cdf, paired=True, backend=backend)
    parts = [P.sample_masks(n, F, 7, row_offset=o, size_cdf=cdf, paired=True, backend=backend)
             for o, n in ((0, 33), (33, 100), (133, 67))]
    np.testing.assert_array_equal(whole, np.vstack(parts))
    # a different seed or stream changes the draw
    assert not np.array_equal(whole, P.sample_masks(200, F, 8, size_cdf=cdf, paired=True, backend=backend))
    assert not np.array_equal(whole, P.sample_masks(200, F, 7, stream=1, size_cdf=cdf, paired=True, backend=backend))


@needs_numba
def test_masks_thread_count_invariance():
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has a single thread here (one usable CPU)")
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = P.sample_masks(500, 20, 3, size_cdf=P.shapley_size_cdf(20), backend="numba")
        numba.set_num_threads(2)
        two = P.sample_masks(500, 20, 3, size_cdf=P.shapley_size_cdf(20), backend="numba")
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("p_on", [0.5, 0.2])
def test_bernoulli_fraction_within_4_sigma(p_on):
    S, F = 4000, 25
    m = P.sample_masks(S, F, 11, p_on=p_on)
    n = S * F
    assert abs(m.mean() - p_on) < 4 * math.sqrt(p_on * (1 - p_on) / n)
    # features are independent: the per-feature fractions scatter like binomials
    per = m.mean(0)
    assert np.all(np.abs(per - p_on) < 5 * math.sqrt(p_on * (1 - p_on) / S))


def test_shapley_sizes_follow_kernel():
    M, S = 8, 20000
    m = P.sample_masks(S, M, 5, size_cdf=P.shapley_size_cdf(M))
    k = m.sum(1)
    p = np.array([0] + [(M - 1) / (j * (M - j)) for j in range(1, M)] + [0.0])
    p /= p.sum()
    counts = np.bincount(k, minlength=M + 1)
    assert counts[0] == 0 and counts[M] == 0
    sd = np.sqrt(S * p * (1 - p))
    assert np.all(np.abs(counts - S * p) <= 4.5 * sd + 1e-9), (counts, S * p)
    # given the size, every member is equally likely
    for kk in (2, 5):
        rows = m[k == kk]
        frac = rows.mean(0)
        q = kk / M
        assert np.all(np.abs(frac - q) < 5 * math.sqrt(q * (1 - q) / len(rows)))


def test_paired_masks_are_complements():
    m = P.sample_masks(50, 9, 1, size_cdf=P.shapley_size_cdf(9), paired=True)
    np.testing.assert_array_equal(m[0::2], 1 - m[1::2])
    assert P.sample_masks(3, 4, 0, first_row_ones=True)[0].tolist() == [1, 1, 1, 1]


def test_text_sizes_uniform():
    M, S = 6, 12000
    m = P.sample_masks(S, M, 2, size_cdf=P.lime_text_size_cdf(M))
    removed = M - m.sum(1)
    counts = np.bincount(removed, minlength=M + 1)
    assert counts[0] == 0
    p = 1 / M
    assert np.all(np.abs(counts[1:] - S * p) < 4.5 * math.sqrt(S * p * (1 - p)))


# ------------------------------------------------------------------------------ construction
BUILD_SHAPES = [((1, 1, 1), 1, 1), ((3, 35, 1), 7, 5), ((1, 23, 3), 4, 1), ((2, 17, 2), 17, 9)]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,F,S", BUILD_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_build_matches_where(backend, shape, F, S, dtype):
    g = torch.Generator().manual_seed(S * 7 + F)
    x = torch.randn(shape, generator=g).to(dtype)
    fill = torch.randn(shape, generator=g).to(dtype)
    seg = np.arange(shape[1]) % F
    np.random.RandomState(F).shuffle(seg)
    masks = P.sample_masks(S, F, 9)
    out = torch.empty((S,) + shape, dtype=dtype)
    P.build_perturbed(x, fill, seg, masks, out, backend=backend)
    keep = torch.from_numpy(masks[:, seg].astype(bool))[:, None, :, None]
    expect = torch.where(keep, x[None], fill[None])
    assert torch.equal(out, expect)  # a pure selection: bit-exact in every dtype


# planes longer than one 64-element bitmap word (full words + a tail, exact multiples), runs
# of coherent segments and scattered ids, one feature per element, 1/2/4/8-byte dtypes
WIDE_CASES = [((3, 150, 1), 11, "runs"), ((1, 100, 3), 5, "scatter"), ((1, 128, 1), 128, "each"),
              ((2, 64, 2), 3, "runs"), ((1, 4096, 3), 73, "runs")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,F,kind", WIDE_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.uint8])
def test_builder_wide_planes_match_reference(backend, shape, F, kind, dtype):
    rng = np.random.RandomState(F)
    x = (rng.rand(*shape) * 200).astype(dtype)
    fill = (rng.rand(*shape) * 200).astype(dtype)
    Pn = shape[1]
    if kind == "runs":
        seg = np.sort(rng.randint(0, F, Pn))
        seg[:F] = np.arange(F)
        seg = np.sort(seg)
    elif kind == "scatter":
        seg = rng.randint(0, F, Pn)
    else:
        seg = rng.permutation(Pn) % F
    masks = P.sample_masks(13, F, 4, first_row_ones=True)
    masks[1] = 0
    build = P.PerturbedBuilder(x, fill, seg, backend=backend)
    out = np.empty((13,) + shape, dtype)
    for s0 in (0, 5, 6):  # reused across uneven batches
        s1 = {0: 5, 5: 6, 6: 13}[s0]
        build(masks[s0:s1], out[s0:s1])
    expect = np.empty_like(out)
    R.build_perturbed(x, fill, seg, masks, expect)
    np.testing.assert_array_equal(out.view(np.uint8), expect.view(np.uint8))


@needs_numba
def test_serial_twins_equal_parallel_kernels():
    from xaikernels.kernels.numba import perturb as K

    a = np.empty((57, 9), np.uint8)
    b = np.empty((57, 9), np.uint8)
    base = np.uint64(K._stream_base(np.uint64(3), np.uint64(1)))
    K._masks_bernoulli(a, base, np.int64(4), 0.4, True, True)
    K._masks_bernoulli_serial(b, base, np.int64(4), 0.4, True, True)
    np.testing.assert_array_equal(a, b)
    cdf = P.shapley_size_cdf(9)
    K._masks_sized(a, base, np.int64(0), cdf, False, False)
    K._masks_sized_serial(b, base, np.int64(0), cdf, False, False)
    np.testing.assert_array_equal(a, b)
    z = np.random.RandomState(0).randn(40, 7)
    for cos in (True, False):
        d1, d2 = np.empty(40), np.empty(40)
        K._row_distances(z, z[0].copy(), cos, d1)
        K._row_distances_serial(z, z[0].copy(), cos, d2)
        np.testing.assert_array_equal(d1, d2)


def test_build_bad_input():
    x = np.zeros((1, 4, 1), np.float32)
    with pytest.raises(ValueError, match="out must be"):
        P.build_perturbed(x, x, np.zeros(4, np.int64), np.ones((2, 1), np.uint8), np.zeros((3, 1, 4, 1), np.float32))
    with pytest.raises(ValueError, match="seg must"):
        P.build_perturbed(x, x, np.zeros(3, np.int64), np.ones((2, 1), np.uint8), np.zeros((2, 1, 4, 1), np.float32))


def _wide_case(L=3000, F_map=2, F_masks=700, S=40, seed=0):
    """A feature map that stops short of the masks' highest feature (one input of several,
    or one example of a batch with per-example masks): the case that once read past the
    builder's per-feature index and wrote garbage memory."""
    rng = np.random.RandomState(seed)
    x = rng.randn(1, L, 1).astype(np.float32)
    fill = rng.randn(1, L, 1).astype(np.float32)
    seg = rng.randint(0, F_map, L).astype(np.int64)
    masks = (rng.rand(S, F_masks) < 0.5).astype(np.uint8)
    expect = np.empty((S, 1, L, 1), np.float32)
    R.build_perturbed(x, fill, seg, masks, expect)
    return x, fill, seg, masks, expect


@pytest.mark.parametrize("backend", BACKENDS)
def test_builder_masks_wider_than_feature_map(backend):
    x, fill, seg, masks, expect = _wide_case()
    b = P.PerturbedBuilder(x, fill, seg, backend=backend)
    out = np.empty_like(expect)
    b(masks, out)
    np.testing.assert_array_equal(out, expect)
    fn = b.batches(masks)
    out2 = np.empty_like(expect)
    for s0 in range(0, masks.shape[0], 7):
        s1 = min(masks.shape[0], s0 + 7)
        fn(s0, s1, out2[s0:s1])
    np.testing.assert_array_equal(out2, expect)
    # an empty feature map (an input with no elements) against any masks
    e = np.zeros((1, 0, 1), np.float32)
    out3 = np.empty((masks.shape[0], 1, 0, 1), np.float32)
    P.PerturbedBuilder(e, e, np.zeros(0, np.int64), backend=backend)(masks, out3)


@needs_numba
def test_builder_both_kernels_masks_wider_than_feature_map():
    # the parallel kernel is only picked for large batches on several threads: call both
    # kernels directly on the prepared builder
    from xaikernels.kernels.numba import perturb as K

    x, fill, seg, masks, expect = _wide_case()
    b = K.Builder(x, fill, seg)
    for kern in (K._build_serial, K._build_parallel):
        out = np.empty_like(expect)
        kern(b.xv, b.fv, b.ptr, b.word, b.bits, masks, out.reshape(masks.shape[0], 1, -1).view(b.raw))
        np.testing.assert_array_equal(out, expect)


@needs_numba
def test_builder_kernel_contract_is_checked():
    from xaikernels.kernels.numba import perturb as K

    x, fill, seg, masks, expect = _wide_case(F_map=5, F_masks=5, S=6)
    b = K.Builder(x, fill, seg)
    ok = np.empty((6, 1, x.shape[1]), np.uint32)
    for kern in (K._build_serial, K._build_parallel):
        args = [b.xv, b.fv, b.ptr, b.word, b.bits]
        with pytest.raises(ValueError, match="fewer columns"):
            kern(*args, masks[:, :3], ok)
        with pytest.raises(ValueError, match="same number of rows"):
            kern(*args, masks[:4], ok)
        with pytest.raises(ValueError, match="out must be"):
            kern(*args, masks, np.empty((6, 1, x.shape[1] // 2), np.uint32))
        with pytest.raises(ValueError, match="fill"):
            kern(b.xv, b.fv[:, :10], b.ptr, b.word, b.bits, masks, ok)
        bad_word = b.word.copy()
        bad_word[-1] = 10 ** 9
        with pytest.raises(ValueError, match="word id"):
            kern(b.xv, b.fv, b.ptr, bad_word, b.bits, masks, ok)
        bad_ptr = b.ptr.copy()
        bad_ptr[-1] += 1000
        with pytest.raises(ValueError, match="ptr"):
            kern(b.xv, b.fv, bad_ptr, b.word, b.bits, masks, ok)
    with pytest.raises(ValueError, match=">= 0"):
        K.Builder(x, fill, np.full(seg.shape, -1))
    with pytest.raises(ValueError, match="one entry per position"):
        K.Builder(x, fill, seg[:-1])
    with pytest.raises(ValueError, match="n_features"):
        K._word_masks(seg, np.int64(1), np.int64(2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_perturbed_builder_rejects_bad_masks(backend):
    x, fill, seg, masks, expect = _wide_case(F_map=5, F_masks=5, S=6)
    b = P.PerturbedBuilder(x, fill, seg, backend=backend)
    with pytest.raises(ValueError, match="features"):
        b(masks[:, :4], np.empty_like(expect))
    with pytest.raises(ValueError, match=r"\(S, F\)"):
        b(masks[0], np.empty_like(expect[:1]))
    with pytest.raises(ValueError, match="out must be"):
        b(masks, np.empty_like(expect[:5]))
    with pytest.raises(ValueError, match=">= 0"):
        P.PerturbedBuilder(x, fill, -seg - 1, backend=backend)
    with pytest.raises(ValueError, match="features"):
        b.batches(masks[:, :4])
    if backend == "numba":
        fn = b.batches(masks)
        with pytest.raises(ValueError):  # rows past the end of the masks
            fn(4, 8, np.empty_like(expect[:4]))
        with pytest.raises(ValueError):  # an output of another item size
            fn(0, 2, np.empty((2, 1, x.shape[1], 1), np.float16))


@needs_numba
def test_builder_in_bounds_under_numba_boundscheck(tmp_path):
    """The wide-mask case with NUMBA_BOUNDSCHECK=1 (fresh cache): any out-of-bounds index
    in the construction kernels raises IndexError there instead of corrupting memory."""
    code = (
        "import numpy as np\n"
        "from xaikernels.kernels.numba import perturb as K\n"
        "from xaikernels.reference import perturb as R\n"
        "rng = np.random.RandomState(0)\n"
        "for L, Fm, Fk in ((3, 2, 3), (3000, 2, 700), (500, 40, 41)):\n"
        "    x = rng.randn(1, L, 1).astype(np.float32); f = rng.randn(1, L, 1).astype(np.float32)\n"
        "    seg = rng.randint(0, Fm, L).astype(np.int64); m = (rng.rand(33, Fk) < .5).astype(np.uint8)\n"
        "    e = np.empty((33, 1, L, 1), np.float32); R.build_perturbed(x, f, seg, m, e)\n"
        "    b = K.Builder(x, f, seg)\n"
        "    for kern in (K._build_serial, K._build_parallel):\n"
        "        o = np.empty_like(e)\n"
        "        kern(b.xv, b.fv, b.ptr, b.word, b.bits, m, o.reshape(33, 1, L).view(b.raw))\n"
        "        assert (o == e).all()\n"
        "print('OK')\n")
    assert_in_bounds(code, tmp_path)


def test_feature_map_checks():
    with pytest.raises(ValueError, match="cover"):
        P.check_feature_map(np.zeros((3, 4)), 16)
    with pytest.raises(ValueError, match="negative"):
        P.check_feature_map(np.array([0, 1, -1, 1]), 4)
    with pytest.raises(ValueError, match="without gaps"):
        P.check_feature_map(np.array([0, 2, 2, 0]), 4)
    with pytest.raises(TypeError):
        P.check_feature_map(np.array([0.5, 1.0]), 2)
    seg, F = P.check_feature_map(np.array([[1, 0], [2, 1]]), 4)
    assert F == 3 and seg.dtype == np.int64


# -------------------------------------------------------------------------------- distances
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_mask_distances_equal_input_space(backend, metric):
    rng = np.random.RandomState(0)
    x = rng.randn(2, 30, 1)
    fill = rng.randn(2, 30, 1) * 0.3
    fill[:, :5] = 0.0
    seg = rng.randint(0, 6, 30)
    seg[:6] = np.arange(6)
    masks = P.sample_masks(40, 6, 2)
    masks[3] = 0
    st = P.feature_stats(x, fill, seg, 6, backend=backend)
    d = P.mask_distances(masks, st, metric, backend=backend)
    out = np.empty((40,) + x.shape)
    R.build_perturbed(x, fill, seg, masks, out)
    a = x.ravel()
    b = out.reshape(40, -1)
    if metric == "cosine":
        exp = 1 - (b @ a) / (np.linalg.norm(a) * np.linalg.norm(b, axis=1))
    else:
        exp = np.linalg.norm(b - a, axis=1)
    np.testing.assert_allclose(d, exp, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_row_distances_and_kernels(backend, metric):
    from sklearn.metrics import pairwise_distances

    rng = np.random.RandomState(1)
    z = rng.randn(23, 5)
    z[4] = 0.0  # zero vector: cosine similarity 0, as scikit-learn
    d = P.row_distances(z, z[0], metric, backend=backend)
    np.testing.assert_allclose(d, pairwise_distances(z, z[:1], metric=metric).ravel(), rtol=1e-12, atol=1e-12)
    w = P.exp_kernel(d, 0.7, backend=backend)
    np.testing.assert_allclose(w, np.exp(-d ** 2 / (2 * 0.7 ** 2)), rtol=1e-14)
    masks = P.sample_masks(30, 7, 3)
    masks[0] = 1
    masks[1] = 0
    sk = P.shapley_kernel(masks, 1e6, backend=backend)
    k = masks.sum(1)
    exp = [1e6 if kk in (0, 7) else 6 / (math.comb(7, int(kk)) * kk * (7 - kk)) for kk in k]
    np.testing.assert_allclose(sk, exp, rtol=1e-14)
    with pytest.raises(ValueError, match="kernel_width"):
        P.exp_kernel(d, 0.0)


# -------------------------------------------------------------------------------------- fits
def _ridge_oracle(X, y, w, alpha):
    """Closed form with an explicit intercept column (unpenalised)."""
    S, F = X.shape
    A = np.hstack([np.ones((S, 1)), X])
    pen = np.diag([0.0] + [alpha] * F)
    sol = np.linalg.solve(A.T @ (w[:, None] * A) + pen, A.T @ (w * y))
    pred = A @ sol
    mu = (w @ y) / w.sum()
    r2 = 1 - (w @ (y - pred) ** 2) / (w @ (y - mu) ** 2)
    return sol[1:], sol[0], r2, pred[0]


FIT_SHAPES = [(1, 12, 1, 1), (2, 57, 5, 3), (3, 200, 13, 2), (1, 31, 30, 4)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,S,F,T", FIT_SHAPES)
@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_fit_matches_closed_form(backend, B, S, F, T, alpha):
    rng = np.random.RandomState(B * 100 + F)
    X = (rng.rand(B, S, F) < 0.5).astype(np.float64)
    X[:, 0] = 1
    Y = rng.randn(B, S, T) + X @ rng.randn(F, T)
    w = rng.rand(B, S) + 0.05
    if alpha == 0 and S <= F + 1:
        pytest.skip("underdetermined without a penalty")
    out = P.fit_surrogate(X, Y, w, alpha=alpha, backend=backend)
    for b in range(B):
        for t in range(T):
            c, i, r2, p0 = _ridge_oracle(X[b], Y[b, :, t], w[b], alpha)
            np.testing.assert_allclose(out["coef"][b, t], c, rtol=1e-8, atol=1e-9)
            np.testing.assert_allclose(out["intercept"][b, t], i, rtol=1e-8, atol=1e-9)
            np.testing.assert_allclose(out["score"][b, t], r2, rtol=1e-8, atol=1e-9)
            np.testing.assert_allclose(out["local_pred"][b, t], p0, rtol=1e-8, atol=1e-9)


@needs_numba
@pytest.mark.parametrize("selection", ["none", "highest_weights", "forward_selection", "lasso_path", "auto"])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_selection_numba_equals_reference(selection, k):
    rng = np.random.RandomState(k)
    X = rng.randn(2, 150, 11)
    Y = X @ rng.randn(11, 3) + 0.3 * rng.randn(2, 150, 3)
    w = rng.rand(2, 150)
    a = P.fit_surrogate(X, Y, w, feature_selection=selection, num_features=k, backend="numba")
    b = P.fit_surrogate(X, Y, w, feature_selection=selection, num_features=k, backend="reference")
    np.testing.assert_array_equal(a["used"], b["used"])
    for key in ("coef", "intercept", "score", "local_pred"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-9, atol=1e-11)
    if selection != "lasso_path":
        assert ((a["used"] > 0).sum(-1) == (11 if selection == "none" else k)).all()


def test_singular_design_falls_back_to_min_norm():
    rng = np.random.RandomState(0)
    x = rng.randn(40, 1)
    X = np.hstack([x, x, rng.randn(40, 1)])  # two identical columns
    y = 2 * x[:, 0] + rng.randn(40) * 0.1
    w = np.ones(40)
    for backend in BACKENDS:
        out = P.fit_surrogate(X, y[:, None], w, alpha=0.0, backend=backend)
        c = out["coef"][0]
        # minimum norm splits the weight between the duplicates
        assert abs(c[0] - c[1]) < 1e-8 and abs(c[0] + c[1] - 2) < 0.2
        from sklearn.linear_model import LinearRegression

        ref = LinearRegression().fit(X, y, sample_weight=w)
        np.testing.assert_allclose(c, ref.coef_, rtol=1e-6, atol=1e-8)


def test_all_zero_weights_error():
    with pytest.raises(ValueError, match="all kernel weights are zero"):
        P.fit_surrogate(np.ones((5, 2)), np.ones((5, 1)), np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        P.fit_surrogate(np.ones((5, 2)), np.ones((5, 1)), np.array([1, np.nan, 1, 1, 1.0]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_lasso_matches_sklearn(backend):
    from sklearn.linear_model import Lasso

    rng = np.random.RandomState(3)
    X = (rng.rand(300, 12) < 0.5).astype(np.float64)
    y = X @ (rng.randn(12) * 0.1) + rng.randn(300) * 0.05
    w = rng.rand(300)
    for a in (0.001, 0.01):
        coef, icpt = P.lasso_fit(X[None], y[None, :, None], w[None], a, backend=backend)
        ref = Lasso(alpha=a).fit(X, y, sample_weight=w)
        np.testing.assert_allclose(coef[0, 0], ref.coef_, atol=1e-10)
        np.testing.assert_allclose(icpt[0, 0], ref.intercept_, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_constrained_wls(backend):
    rng = np.random.RandomState(4)
    Z = (rng.rand(2, 60, 6) < 0.5).astype(np.float64)
    Y = Z @ rng.randn(6, 2) + 0.1 * rng.randn(2, 60, 2)
    w = rng.rand(2, 60)
    delta = rng.randn(2, 2)
    phi, flag = P.constrained_wls(Z, Y, w, delta, 0.0, backend=backend)
    assert not flag.any()
    np.testing.assert_allclose(phi.sum(-1), delta, atol=1e-10)
    # KKT: the gradient of the weighted loss is parallel to 1 (a common multiplier)
    for b in range(2):
        for t in range(2):
            g = Z[b].T @ (w[b] * (Y[b, :, t] - Z[b] @ phi[b, t]))
            np.testing.assert_allclose(g, g.mean(), atol=1e-9)
    ref, _ = P.constrained_wls(Z, Y, w, delta, 0.0, backend="reference")
    np.testing.assert_allclose(phi, ref, rtol=1e-9, atol=1e-11)
    # a rank-deficient design (fewer coalitions than features) takes the KKT fallback
    phi2, flag2 = P.constrained_wls(Z[:, :3], Y[:, :3], w[:, :3], delta, 0.0, backend=backend)
    assert flag2.all() and np.allclose(phi2.sum(-1), delta, atol=1e-8)


@needs_numba
def test_tabular_sampler_numba_equals_reference():
    from xaikernels.methods.lime import TabularSampler

    rng = np.random.RandomState(0)
    Xtr = rng.randn(200, 5)
    Xtr[:, 1] = rng.randint(0, 4, 200)
    for disc in (True, False):
        s = TabularSampler(Xtr, [1], discretize_continuous=disc)
        plan = s.plan(Xtr[3])
        a = P.tabular_sample(301, 9, plan, row_offset=0, backend="numba")
        b = P.tabular_sample(301, 9, plan, row_offset=0, backend="reference")
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1], rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(a[1][0], Xtr[3])


# ------------------------------------------------------------ tabular: fused neighbourhood
def _mixed_sampler(disc=True, n=300, seed=0):
    from xaikernels.methods.lime import TabularSampler

    rng = np.random.RandomState(seed)
    Xtr = rng.randn(n, 6) * [1.0, 1.0, 3.0, 0.2, 1.0, 1.0] + [0.0, 0.0, 5.0, -1.0, 0.0, 0.0]
    Xtr[:, 1] = rng.randint(0, 4, n)
    Xtr[:, 4] = np.round(Xtr[:, 4])  # ties on the quartile edges, and flat bins
    Xtr[:, 5] = np.where(Xtr[:, 5] > 0.5, 2.0, Xtr[:, 5])  # a bin whose values all sit on one edge
    return TabularSampler(Xtr, [1], discretize_continuous=disc), Xtr


@needs_numba
@pytest.mark.parametrize("disc", [True, False])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_tabular_neighbourhood_numba_equals_reference(disc, metric):
    s, Xtr = _mixed_sampler(disc)
    plan = s.plan(Xtr[3])
    a = P.tabular_neighbourhood(517, 9, plan, metric=metric, stream=2, backend="numba")
    b = P.tabular_neighbourhood(517, 9, plan, metric=metric, stream=2, backend="reference")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a[2], b[2], rtol=1e-12, atol=1e-12)
    # row 0 is the instance; distances are those of the surrogate rows to it
    np.testing.assert_array_equal(a[1][0], Xtr[3])
    np.testing.assert_allclose(a[2], P.row_distances(a[0], a[0][0], metric, backend="reference"), atol=1e-12)
    # every drawn value lies in its bin, and the binary column says whether that is the instance's
    if disc:
        inst = s.discretize(Xtr[3])
        bins = s.discretize(a[1])
        for d in s.bins:
            np.testing.assert_array_equal(a[0][1:, d], (bins[1:, d] == inst[d]).astype(float))


@needs_numba
def test_tabular_neighbourhood_chunking_and_threads():
    import numba

    s, Xtr = _mixed_sampler()
    plan = s.plan(Xtr[0])
    whole = P.tabular_neighbourhood(700, 4, plan, backend="numba")
    parts = [P.tabular_neighbourhood(n, 4, plan, row_offset=o, backend="numba") for o, n in ((0, 1), (1, 350), (351, 349))]
    for i in range(3):
        np.testing.assert_array_equal(np.concatenate([p[i] for p in parts]), whole[i])
    # a large call takes the parallel kernel when threads are available: same numbers
    big = P.tabular_neighbourhood(30000, 4, plan, backend="numba")
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = P.tabular_neighbourhood(30000, 4, plan, backend="numba")
    finally:
        numba.set_num_threads(old)
    for i in range(3):
        np.testing.assert_array_equal(big[i], one[i])
        np.testing.assert_array_equal(big[i][:700], whole[i])




# --------------------------------------------------------------- lime's text draws, replayed
def _lime_loop(rs, n, F):
    """lime's own calls (lime_text.__data_labels_distances), written out."""
    data = np.ones((n, F))
    for i, size in enumerate(rs.randint(1, F + 1, n - 1), start=1):
        data[i, rs.choice(range(F), size, replace=False)] = 0
    return data


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n, F, seed", [(1, 5, 0), (2, 1, 1), (40, 7, 2), (300, 94, 3), (9, 1500, 4), (700, 2, 5),
                                        (64, 33, 2**32 - 1)])
def test_lime_text_draws_replay_numpys_stream(backend, n, F, seed):
    a = np.random.RandomState(seed)
    b = np.random.RandomState(seed)
    a.randint(0, 7, 1000)  # a state part-way through its 624-word block
    b.randint(0, 7, 1000)
    m = P.lime_text_draws(a, n, F, backend=backend)
    assert m.dtype == np.uint8 and m.shape == (n, F)
    np.testing.assert_array_equal(m, _lime_loop(b, n, F))
    sa, sb = a.get_state(), b.get_state()
    np.testing.assert_array_equal(sa[1], sb[1])
    assert sa[2:] == sb[2:]
    assert a.randint(0, 2**31 - 1) == b.randint(0, 2**31 - 1)  # the stream continues as lime's


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n, skip, seed", [(0, 0, 0), (1, 0, 1), (623, 1, 2), (624, 0, 3), (625, 624, 4),
                                           (73000, 1000, 5), (1249, 3, 2**32 - 1)])
def test_lime_coin_flips_replay_numpys_stream(backend, n, skip, seed):
    """lime image's ``randint(0, 2, n)``: the same bits, and the generator left where lime's
    call leaves it (its key, position and gauss cache), from any position in the 624-word
    block."""
    a = np.random.RandomState(seed)
    b = np.random.RandomState(seed)
    a.randint(0, 7, skip)
    b.randint(0, 7, skip)
    b.standard_normal()  # a cached Gaussian, which the draws must leave alone
    a.standard_normal()
    m = P.lime_coin_flips(a, n, backend=backend)
    assert m.dtype == np.uint8 and m.shape == (n,)
    np.testing.assert_array_equal(m, b.randint(0, 2, n))
    sa, sb = a.get_state(), b.get_state()
    np.testing.assert_array_equal(sa[1], sb[1])
    assert sa[2:] == sb[2:]
    assert a.randint(0, 2**31 - 1) == b.randint(0, 2**31 - 1)


@needs_numba
def test_lime_coin_flips_state_routes_and_other_generators(monkeypatch):
    """The in-place route (the bit generator's raw state) and the get_state / set_state round
    trip it falls back to when the layout check fails give the same bits and states; another
    bit generator takes NumPy's own call in auto mode, and an explicit Numba request for it
    raises instead of drawing another stream."""
    from xaikernels.kernels.numba import mt19937 as MT

    assert MT._layout_ok()
    a, b, c = (np.random.RandomState(11) for _ in range(3))
    x = P.lime_coin_flips(a, 5000, backend="numba")
    monkeypatch.setattr(MT, "_LAYOUT", [False])
    y = P.lime_coin_flips(b, 5000, backend="numba")
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(x, c.randint(0, 2, 5000))
    assert a.randint(0, 10**6) == b.randint(0, 10**6) == c.randint(0, 10**6)
    pcg, pcg2 = np.random.RandomState(np.random.PCG64(3)), np.random.RandomState(np.random.PCG64(3))
    np.testing.assert_array_equal(P.lime_coin_flips(pcg, 100), pcg2.randint(0, 2, 100))
    with pytest.raises(ValueError, match="MT19937"):
        P.lime_coin_flips(pcg, 10, backend="numba")
    with pytest.raises(TypeError):
        P.lime_coin_flips(np.random.default_rng(0), 5)
    with pytest.raises(ValueError):
        P.lime_coin_flips(a, -1)
    # bits statistics: a fair coin
    z = P.lime_coin_flips(np.random.RandomState(0), 200000)
    assert abs(z.mean() - 0.5) < 0.005


@needs_numba
def test_lime_text_draws_statistics_and_other_generators():
    rs = np.random.RandomState(0)
    F = 20
    m = P.lime_text_draws(rs, 20001, F)
    removed = (m[1:] == 0).sum(1)
    # sizes uniform on 1..F, the removed words a uniform subset of that size
    counts = np.bincount(removed, minlength=F + 1)[1:]
    assert counts.min() > 0.8 * 20000 / F and counts.max() < 1.2 * 20000 / F
    per_word = (m[1:] == 0).mean(0)
    np.testing.assert_allclose(per_word, (F + 1) / (2 * F), atol=0.02)
    # a RandomState over another bit generator: lime's calls themselves (the reference)
    pcg = np.random.RandomState(np.random.PCG64(3))
    pcg2 = np.random.RandomState(np.random.PCG64(3))
    np.testing.assert_array_equal(P.lime_text_draws(pcg, 30, 9), _lime_loop(pcg2, 30, 9))
    with pytest.raises(TypeError):
        P.lime_text_draws(np.random.default_rng(0), 5, 5)
    with pytest.raises(ValueError):
        P.lime_text_draws(rs, 0, 5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("S,F", [(2, 6), (7, 30), (25, 50)])
def test_underdetermined_fit_is_lstsq_minimum_norm(backend, S, F):
    """Fewer samples than features without a penalty (KernelSHAP's default n_samples=25 on a
    wide input): the minimum-norm weighted least squares that lstsq (scikit-learn's
    LinearRegression) returns, not inverted rounding noise of the Gram's null space —
    including KernelSHAP-like weights spanning six orders of magnitude."""
    rng = np.random.RandomState(S * F)
    X = (rng.rand(S, F) < 0.5).astype(np.float64)
    X[0] = 1.0
    y = X @ rng.randn(F) + 0.1 * rng.randn(S)
    w = rng.rand(S) + 0.05
    w[0] = 1e6
    out = P.fit_surrogate(X, y[:, None], w, alpha=0.0, backend=backend)
    xm = (w @ X) / w.sum()
    ym = (w @ y) / w.sum()
    q = np.sqrt(w)
    # rcond above rounding: weighted centring leaves S - 1 directions, and lstsq's default
    # cut (eps·σ_max) would invert the noise of the S-th
    coef = np.linalg.lstsq((X - xm) * q[:, None], (y - ym) * q, rcond=1e-10)[0]
    np.testing.assert_allclose(out["coef"][0], coef, rtol=1e-6, atol=1e-7 * np.abs(coef).max())
    np.testing.assert_allclose(out["intercept"][0], ym - xm @ coef, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("const", [0.3, 1.0, -7.1e5])
def test_constant_target_scores_one(backend, const):
    """A constant model output (a saturated classifier) is fitted exactly by the intercept:
    R² = 1 in every fit (dense, tabular Gram, batched), never rounding noise over rounding
    noise (it read 1.9 to 18 before)."""
    rng = np.random.RandomState(2)
    S, F = 500, 6
    X = (rng.rand(S, F) < 0.5).astype(np.uint8)
    X[0] = 1
    Y = np.column_stack([np.full(S, const), rng.randn(S)])
    w = rng.rand(S) + 0.01
    for sel in ("none", "auto", "forward_selection", "lasso_path"):
        fit = P.fit_lime(X, Y, [0, 1], w, weights="weights", feature_selection=sel, num_features=3,
                         backend=backend)
        assert fit["score"][0] == 1.0
        assert 0.0 <= fit["score"][1] < 1.0
        np.testing.assert_allclose(fit["local_pred"][0], const, rtol=1e-9)
    Xf = X.astype(np.float64)
    g = np.zeros((F + 1, F + 1))
    Za = np.hstack([Xf, np.ones((S, 1))])
    g[:] = (Za * w[:, None]).T @ Za
    fit = P.fit_lime_gram(X, Y, [0, 1], w, g, backend=backend)
    assert fit["score"][0] == 1.0
    out = P.fit_surrogate(Xf, Y, w, alpha=1.0, backend=backend)
    assert out["score"][0] == 1.0 and out["score"][1] < 1.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e-6, 1e-8])
def test_lasso_path_stops_as_sklearn_lars_path(backend, scale):
    """lasso_path selection follows scikit-learn's lars_path (as lime), its stopping rule
    included: once the largest inactive correlation over the number of rows is at most
    float32's eps the path ends, and when that happens at once (a target that barely
    varies) lime keeps every feature."""
    from sklearn.linear_model import lars_path

    rng = np.random.RandomState(4)
    S, F, k = 300, 8, 2
    X = rng.randn(S, F)
    y = scale * np.tanh(X @ rng.randn(F))
    w = rng.rand(S) + 0.1
    xm, ym = (w @ X) / w.sum(), (w @ y) / w.sum()
    q = np.sqrt(w)
    _, _, coefs = lars_path((X - xm) * q[:, None], (y - ym) * q, method="lasso", verbose=False)
    nonzero = np.arange(F)
    for i in range(coefs.shape[1] - 1, 0, -1):
        nonzero = coefs[:, i].nonzero()[0]
        if len(nonzero) <= k:
            break
    out = P.fit_surrogate(X, y[:, None], w, feature_selection="lasso_path", num_features=k, backend=backend)
    assert sorted(np.nonzero(out["used"][0])[0].tolist()) == sorted(nonzero.tolist())
    if scale == 1e-8:
        assert len(nonzero) == F  # the path stopped at its start


def _wide_or_twin_problem(t):
    """Lasso problems where LARS meets singular active sets: more features than rows, twin
    columns, 0/1 columns (centred, weighted as lime's fit hands them to lars_path)."""
    rng = np.random.RandomState(t)
    n, F = int(rng.randint(3, 30)), int(rng.randint(2, 25))
    X = rng.randn(n, F)
    if t % 2:
        X[:, rng.randint(F)] = X[:, 0]
    if t % 3 == 0:
        X = (rng.rand(n, F) > 0.5).astype(float)
    y, w = rng.randn(n), rng.rand(n)
    Xc = (X - np.average(X, 0, w)) * np.sqrt(w)[:, None]
    yc = (y - np.average(y, weights=w)) * np.sqrt(w)
    return Xc, yc, n


@needs_numba
def test_lars_path_on_singular_active_sets_runs_and_twins_agree():
    """Features that would make the active set singular are skipped as scikit-learn skips
    them (their Cholesky pivot under 1e-7): the Numba path raised LinAlgError there (lime
    text with lasso_path on 10 samples of a long document), the reference stopped early.
    Both routes now give the same path, bit for bit in the decisions."""
    from xaikernels.kernels.numba import perturb as K

    for t in range(80):
        Xc, yc, n = _wide_or_twin_problem(t)
        G, c0 = Xc.T @ Xc, Xc.T @ yc
        a = R._lars_lasso_gram(G, c0, n)
        b = K._lars_lasso_gram(G, c0, n, 500)
        assert a.shape == b.shape, t
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
        assert np.all(np.isfinite(a))


@needs_numba
def test_lars_path_does_not_depend_on_which_caller_compiled_it(tmp_path):
    """Numba compiles a callee with the fastmath flags of the caller that compiles it first,
    and keeps that overload (on disk too): the LARS path, first compiled inside the tabular
    fit (fastmath reassociation), once gave other decisions than the reference on twin
    columns.  In a fresh process and cache, the fit compiles it first here; the path must
    still equal the reference's."""
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import numpy as np\n"
        "from xaikernels.ops import perturb as P\n"
        "from xaikernels.kernels.numba import perturb as K\n"
        "from xaikernels.reference import perturb as R\n"
        "from test_lime_ops import _wide_or_twin_problem\n"
        "rng = np.random.RandomState(0)\n"
        "Z = (rng.rand(40, 6) < .5).astype(np.uint8); Y = rng.rand(40, 2); w = rng.rand(40)\n"
        "Zf = np.c_[Z, np.ones(40)]; g = (Zf * w[:, None]).T @ Zf\n"
        "P.fit_lime_gram(Z, Y, [0], w, g, feature_selection='lasso_path', num_features=3, backend='numba')\n"
        "for t in range(80):\n"
        "    Xc, yc, n = _wide_or_twin_problem(t)\n"
        "    G, c0 = Xc.T @ Xc, Xc.T @ yc\n"
        "    a, b = R._lars_lasso_gram(G, c0, n), K._lars_lasso_gram(G, c0, n, 500)\n"
        "    assert a.shape == b.shape and np.allclose(b, a, rtol=1e-10, atol=1e-12), t\n"
        "print('OK')\n") % os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "OK" in r.stdout, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("seed", [3, 6, 7, 8, 12, 19, 20, 34])
def test_lars_path_with_a_twin_column_follows_sklearn(seed):
    """A column repeated: scikit-learn's lars_path warns that regressors are degenerate,
    drops the twin for good and goes on; the path is scikit-learn's (these seeds; where the
    twins' correlations tie only up to rounding the order can differ: 26 of 40 seeds equal,
    4 of 40 before the emulation)."""
    sk = pytest.importorskip("sklearn.linear_model")
    import warnings

    rng = np.random.RandomState(seed)
    n, F = 20, 5
    X = rng.randn(n, F)
    X[:, 3] = X[:, 1]
    y = X @ rng.randn(F) + 0.1 * rng.randn(n)
    Xc, yc = X - X.mean(0), y - y.mean()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, coefs = sk.lars_path(Xc, yc, method="lasso")
    assert any("degenerate" in str(w.message) for w in caught)
    paths = [R._lars_lasso_gram(Xc.T @ Xc, Xc.T @ yc, n)]
    if HAS_NUMBA:
        from xaikernels.kernels.numba import perturb as K

        paths.append(K._lars_lasso_gram(Xc.T @ Xc, Xc.T @ yc, n, 500))
    for p in paths:
        assert p.shape == coefs.shape
        np.testing.assert_allclose(p, coefs, atol=1e-9)
