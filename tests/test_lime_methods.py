"""LIME methods and drop-ins: backends agree, reproducibility, bad input, and parity with the
``lime`` package and Captum given the same coalitions (peer tests)."""
import warnings

import numpy as np
import pytest
import torch

from _models import MLP, SmallCNN
from xaikernels import lime as XL
from xaikernels.methods.lime import TextIndex, lime_image, lime_tabular

from test_lime_ops import BACKENDS, needs_numba


def _img_clf(H, W, K=4, seed=0):
    Wt = np.random.RandomState(seed).randn(H * W * 3, K)

    def clf(b):
        z = b.reshape(len(b), -1) @ Wt * 0.05
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return clf


def assert_same_explanations(got, exp, rtol, atol):
    """Same top labels; per label the same features in the same order, and weights and
    intercept within the tolerance."""
    assert got.top_labels == exp.top_labels
    for lab in exp.top_labels:
        assert [f for f, _ in got.local_exp[lab]] == [f for f, _ in exp.local_exp[lab]]
        np.testing.assert_allclose([w for _, w in got.local_exp[lab]], [w for _, w in exp.local_exp[lab]],
                                   rtol=rtol, atol=atol)
        np.testing.assert_allclose(got.intercept[lab], exp.intercept[lab], rtol=rtol, atol=atol)


def _grid(H, W, r, c):
    return (np.arange(H)[:, None] * r // H) * c + (np.arange(W)[None, :] * c // W)


# ------------------------------------------------------------------------------ lime_image
@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lime_image_backends_agree_and_reproduce(dtype):
    model = SmallCNN().eval().to(dtype)
    x = torch.rand(2, 3, 13, 10, dtype=dtype)
    # logits: the random CNN saturates its softmax, leaving targets constant up to rounding
    kw = dict(segments="grid", segment_kwargs=dict(rows=3, cols=2), n_samples=90, top_labels=2, seed=4,
              output="logits")
    a = lime_image(model, x, batch_size=16, backend="numba", **kw)
    b = lime_image(model, x, batch_size=16, backend="reference", **kw)
    for ca, cb in zip(a.coef, b.coef):
        np.testing.assert_allclose(ca, cb, rtol=1e-9, atol=1e-12)
    if dtype == torch.float64:  # float32 convolutions round differently per batch size
        c7 = lime_image(model, x, batch_size=7, backend="numba", **kw)
        for ca, cb in zip(a.coef, c7.coef):
            np.testing.assert_allclose(ca, cb, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.score, b.score, rtol=1e-9, atol=1e-12)
    assert a.attribution().shape == (2, 2, 13, 10)
    c = lime_image(model, x, batch_size=16, backend="numba", **{**kw, "seed": 5})
    assert not np.allclose(a.coef[0], c.coef[0])


def test_lime_image_batch_equals_single_instances():
    model = SmallCNN().eval()
    x = torch.rand(3, 3, 9, 9)
    seg = torch.from_numpy(_grid(9, 9, 3, 3))
    full = lime_image(model, x, target=[0, 1, 2], segments=seg, n_samples=60, batch_size=25, seed=1)
    one = lime_image(model, x[1:2], target=1, segments=seg, n_samples=60, batch_size=60, seed=1)
    # instance 1 of the batch uses stream 1; the single call uses stream 0: compare stream 0
    zero = lime_image(model, x[:1], target=0, segments=seg, n_samples=60, batch_size=11, seed=1)
    np.testing.assert_allclose(full.coef[0], zero.coef[0], rtol=1e-5, atol=1e-7)
    assert one.coef[0].shape == (1, 9)


def test_lime_image_fills_and_bad_input():
    model = SmallCNN().eval()
    x = torch.rand(1, 3, 8, 8)
    for fill in ("mean", 0.0, ("blur", 1.0), torch.zeros(3, 8, 8)):
        r = lime_image(model, x, segments="grid", segment_kwargs=dict(rows=2, cols=2), n_samples=20, fill=fill)
        assert np.isfinite(r.coef[0]).all()
    with pytest.raises(ValueError, match="cover"):
        lime_image(model, x, segments=np.zeros((7, 8), np.int64), n_samples=20)
    with pytest.raises(ValueError, match="without gaps"):
        lime_image(model, x, segments=np.where(np.arange(64).reshape(8, 8) < 32, 0, 2), n_samples=20)
    with pytest.raises(ValueError, match=r"\(batch, outputs\)"):
        lime_image(lambda t: t.sum((1, 2, 3)) if t.shape[0] > 1 else t.mean((2, 3)), x, segments="grid",
                   n_samples=20, check_mode=False, output="logits")


def test_lime_tabular_method_reproducible():
    rng = np.random.RandomState(0)
    Xtr = rng.randn(200, 6)
    model = MLP(d=6, classes=3).eval()
    x = torch.from_numpy(Xtr[:2]).float()
    a = lime_tabular(model, x, Xtr, target=[0, 1], n_samples=500, seed=3)
    b = lime_tabular(model, x, Xtr, target=[0, 1], n_samples=500, seed=3, batch_size=77)
    np.testing.assert_allclose(a.coef[0], b.coef[0], rtol=1e-6, atol=1e-9)
    assert a.coef[1].shape == (1, 6) and np.all((a.score > -1) & (a.score <= 1))


# --------------------------------------------------------------------------------- drop-ins
def test_image_dropin_get_image_and_mask_and_errors():
    img = np.random.RandomState(0).rand(12, 12, 3)
    seg = _grid(12, 12, 2, 3)
    ex = XL.LimeImageExplainer(random_state=0)
    e = ex.explain_instance(img, _img_clf(12, 12), top_labels=2, num_samples=80, segmentation_fn=lambda i: seg)
    lab = e.top_labels[0]
    assert len(e.local_exp[lab]) == 6 and isinstance(e.score, float) and e.local_pred.shape == (1,)
    temp, mask = e.get_image_and_mask(lab, positive_only=False, num_features=6, hide_rest=True)
    signs = {f: np.sign(w) for f, w in e.local_exp[lab]}
    for f, s in signs.items():
        assert np.all(mask[seg == f] == (s if s != 0 else 0))
    with pytest.raises(KeyError):
        e.get_image_and_mask(99)
    with pytest.raises(ValueError, match="rows"):
        ex.explain_instance(img, lambda b: np.ones((1, 3)) / 3, num_samples=20, segmentation_fn=lambda i: seg)
    with pytest.raises(ValueError, match="one id per pixel"):
        ex.explain_instance(img, _img_clf(12, 12), num_samples=20, segmentation_fn=lambda i: seg[:5])


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_dropin_batches_survive_what_the_classifier_does(backend):
    """The drop-in reuses one batch buffer unless the classifier keeps a reference to it: a
    classifier that stores its batches (or views of them), one that returns a view of its
    input, and one that scribbles over its input all see exactly the batches lime would
    build, and give the explanation of a plain classifier."""
    img = np.random.RandomState(1).rand(9, 11, 3)
    seg = _grid(9, 11, 3, 2)
    clf = _img_clf(9, 11)
    masks = (np.random.RandomState(2).rand(57, 6) < 0.5).astype(np.uint8)
    masks[0] = 1
    fill = np.zeros_like(img)
    for f in range(6):
        fill[seg == f] = img[seg == f].mean(0)
    expect = np.where((masks[:, seg] == 0)[..., None], fill, img)

    def explain(c):
        return XL.LimeImageExplainer(random_state=0, backend=backend).explain_instance(
            img, c, top_labels=2, num_samples=57, batch_size=5, segmentation_fn=lambda i: seg, masks=masks)

    plain = explain(clf)
    kept, views = [], []

    def keeper(b):
        kept.append(b)
        return clf(b)

    def view_keeper(b):
        views.append(b[:, 1:])
        return clf(b)

    def scribbler(b):
        p = clf(b)
        b[...] = -1.0
        return p

    probs = []

    def view_returner(b):
        # class probabilities written into the input batch, returned as a view of it
        b[:, 0, 0, :] = 0
        b[:, 0, 0, :2] = clf(b.copy())[:, :2]
        b[:, 0, 0, 2] = 1 - b[:, 0, 0, :2].sum(1)
        probs.append(b[:, 0, 0, :].copy())
        return b[:, 0, 0, :]

    for c in (keeper, view_keeper, scribbler):
        assert_same_explanations(explain(c), plain, rtol=0, atol=0)
    np.testing.assert_array_equal(np.concatenate(kept), expect)
    np.testing.assert_array_equal(np.concatenate(views), expect[:, 1:])
    assert len({id(b) for b in kept}) == len(kept)
    e = explain(view_returner)
    np.testing.assert_array_equal(e.local_pred_per_label[e.top_labels[0]].shape, (1,))
    # the predictions the fit saw are the ones returned, not what the next batch overwrote
    ref = XL.LimeImageExplainer(random_state=0, backend=backend).explain_instance(
        img, lambda b, it=iter(probs): next(it), top_labels=2, num_samples=57, batch_size=5,
        segmentation_fn=lambda i: seg, masks=masks)
    assert_same_explanations(e, ref, rtol=0, atol=0)


def test_tabular_dropin_bad_input():
    Xtr = np.random.RandomState(0).randn(50, 4)
    ex = XL.LimeTabularExplainer(Xtr, random_state=0)
    with pytest.raises(ValueError, match="classification"):
        ex.explain_instance(Xtr[0], lambda X: X[:, 0], num_samples=30)
    with pytest.warns(UserWarning, match="sum to 1"):
        ex.explain_instance(Xtr[0], lambda X: np.c_[X[:, 0], X[:, 1]], labels=(0,), num_samples=30)
    reg = XL.LimeTabularExplainer(Xtr, mode="regression", random_state=0)
    e = reg.explain_instance(Xtr[0], lambda X: X @ np.arange(4.0), num_samples=300)
    assert e.local_exp[1] == [(i, -w) for i, w in e.local_exp[0]]


def test_text_index_semantics():
    idx = TextIndex("a cat, a dog", r"\W+", bow=True)
    assert idx.words == ["a", "cat", "dog"]
    assert idx.render(np.array([0, 1, 1])) == " cat,  dog"
    idx2 = TextIndex("a cat, a dog", r"\W+", bow=False)
    assert idx2.n_features == 4 and idx2.render(np.array([1, 0, 1, 1])) == "a UNKWORDZ, a dog"
    idx3 = TextIndex("a cat", lambda s: s.split(" "), bow=True)
    assert idx3.words == ["a", "cat"] and idx3.render(np.array([1, 0])) == "a "


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text", ["a cat, a dog", "naïve café — déjà vu, café", "x\x00y \ud800z 🙂", ""])
@pytest.mark.parametrize("bow,mask_string,char_level", [(True, None, False), (False, None, False),
                                                        (False, "▒▒", False), (True, None, True),
                                                        (False, None, True)])
def test_text_index_render_batch_equals_render(backend, text, bow, mask_string, char_level):
    idx = TextIndex(text, r"\W+", bow=bow, mask_string=mask_string, char_level=char_level)
    masks = (np.random.RandomState(len(text)).rand(19, idx.n_features) < 0.5).astype(np.uint8)
    assert idx.render_batch(masks, backend=backend) == [idx.render(m) for m in masks]


# ------------------------------------------------------------------------------ peer: lime
@pytest.mark.peer
@pytest.mark.parametrize("selection", ["auto", "none", "highest_weights", "forward_selection", "lasso_path"])
@pytest.mark.parametrize("num_features", [3, 100000])
def test_image_equals_lime_given_same_masks(selection, num_features):
    lime_image_mod = pytest.importorskip("lime.lime_image")
    rng = np.random.RandomState(0)
    H, W = 15, 17
    img = rng.rand(H, W, 3)
    seg = _grid(H, W, 4, 5)
    clf = _img_clf(H, W)
    ex = lime_image_mod.LimeImageExplainer(random_state=3, feature_selection=selection)
    e1 = ex.explain_instance(img, clf, top_labels=3, num_samples=200, segmentation_fn=lambda im: seg,
                             random_seed=5, batch_size=9, num_features=num_features)
    F = int(seg.max()) + 1
    masks = np.random.RandomState(3).randint(0, 2, 200 * F).reshape(200, F)  # lime's draw, replayed
    masks[0] = 1
    e2 = XL.LimeImageExplainer(random_state=3, feature_selection=selection).explain_instance(
        img, clf, top_labels=3, num_samples=200, segmentation_fn=lambda im: seg, masks=masks,
        num_features=num_features)
    assert_same_explanations(e2, e1, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(e2.score, e1.score, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(e2.local_pred, e1.local_pred, rtol=1e-6, atol=1e-9)


def test_image_dropin_segment_ids_follow_limes_convention():
    """Feature j hides the pixels of segment id j (lime's ``mask[segments == z]``): with ids
    1..F a warning says so, the pixels of id F are never hidden, feature 0 covers nothing."""
    H, W = 8, 9
    img = np.random.RandomState(1).rand(H, W, 3)
    seg = _grid(H, W, 2, 3) + 1  # ids 1..6, F = 6
    F = 6
    seen = []

    def clf(b):
        seen.append(b.copy())
        return np.tile([[0.25, 0.75]], (len(b), 1))

    masks = np.zeros((5, F), np.uint8)
    masks[0] = 1
    with pytest.warns(UserWarning, match="segment ids are not 0..5"):
        exp = XL.LimeImageExplainer(random_state=0).explain_instance(
            img, clf, top_labels=1, num_samples=5, segmentation_fn=lambda im: seg, masks=masks, hide_color=0)
    batch = np.concatenate(seen)
    np.testing.assert_array_equal(batch[0], img)
    never = seg == 6
    np.testing.assert_array_equal(batch[1][never], img[never])
    assert np.all(batch[1][~never] == 0)
    assert exp.segments is seg
    # 0-based consecutive ids: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        XL.LimeImageExplainer(random_state=0).explain_instance(img, clf, top_labels=1, num_samples=5,
                                                               segmentation_fn=lambda im: seg - 1)


def test_image_dropin_draws_are_limes_replayed():
    """draws='lime': the coalitions are RandomState(seed).randint(0, 2, n·F) after lime's
    random_seed draw, row 0 all ones; data_labels gives the same; draws='counter' differs."""
    H, W = 10, 12
    img = np.random.RandomState(2).rand(H, W, 3)
    seg = _grid(H, W, 3, 4)
    F = 12
    got = []

    def clf(b):
        got.append(b.copy())
        return np.tile([[0.4, 0.6]], (len(b), 1))

    XL.LimeImageExplainer(random_state=9).explain_instance(img, clf, num_samples=30, segmentation_fn=lambda i: seg,
                                                           batch_size=7, hide_color=0)
    rs = np.random.RandomState(9)
    rs.randint(0, high=1000)  # lime's random_seed draw
    want = rs.randint(0, 2, 30 * F).reshape(30, F)
    want[0] = 1
    batch = np.concatenate(got)
    hidden = want[:, seg] == 0  # (30, H, W)
    np.testing.assert_array_equal(batch == 0, np.repeat(hidden[..., None], 3, -1) & (img[None] != 0))
    ex = XL.LimeImageExplainer(random_state=9)
    data, labels = ex.data_labels(img, np.zeros_like(img), seg, clf, 30, batch_size=4)
    np.testing.assert_array_equal(data, np.vstack([np.ones((1, F), int),
                                                   np.random.RandomState(9).randint(0, 2, 30 * F).reshape(30, F)[1:]]))
    assert labels.shape == (30, 2)
    a = XL.LimeImageExplainer(random_state=9, draws="counter").explain_instance(
        img, clf, num_samples=30, segmentation_fn=lambda i: seg)
    b = XL.LimeImageExplainer(random_state=9, draws="counter").explain_instance(
        img, clf, num_samples=30, segmentation_fn=lambda i: seg)
    assert a.local_exp == b.local_exp
    with pytest.raises(ValueError, match="draws"):
        XL.LimeImageExplainer(draws="numpy")


@pytest.mark.peer
@pytest.mark.parametrize("seed", [0, 11])
@pytest.mark.parametrize("kw", [dict(), dict(hide_color=0, top_labels=2, num_features=4),
                                dict(segmentation_fn="slic", feature_selection="lasso_path", num_features=3),
                                dict(distance_metric="euclidean", batch_size=17, random_seed=4)])
def test_image_dropin_is_lime_for_the_same_random_state(seed, kw):
    """No masks given: lime's own draws and segmentation, so the same explanation."""
    lime_image_mod = pytest.importorskip("lime.lime_image")
    from skimage import data as skdata
    from skimage.transform import resize

    img = resize(skdata.astronaut(), (40, 44), anti_aliasing=True)
    clf = _img_clf(40, 44, K=6)
    kw = dict(kw)
    sel = kw.pop("feature_selection", "auto")
    if kw.get("segmentation_fn") == "slic":
        from xaikernels.lime.wrappers.scikit_image import SegmentationAlgorithm

        kw["segmentation_fn"] = SegmentationAlgorithm("slic", n_segments=12, compactness=10, start_label=0)
    e1 = lime_image_mod.LimeImageExplainer(random_state=seed, feature_selection=sel).explain_instance(
        img, clf, num_samples=150, **kw)
    e2 = XL.LimeImageExplainer(random_state=seed, feature_selection=sel).explain_instance(img, clf, num_samples=150,
                                                                                          **kw)
    np.testing.assert_array_equal(e2.segments, e1.segments)
    assert_same_explanations(e2, e1, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(e2.score, e1.score, rtol=1e-6, atol=1e-9)


@pytest.mark.peer
def test_image_data_labels_is_limes():
    lime_image_mod = pytest.importorskip("lime.lime_image")
    H, W = 12, 13
    img = np.random.RandomState(0).rand(H, W, 3)
    seg = _grid(H, W, 3, 3)
    fudged = np.random.RandomState(1).rand(H, W, 3)
    clf = _img_clf(H, W)
    d1, l1 = lime_image_mod.LimeImageExplainer(random_state=5).data_labels(img, fudged, seg, clf, 40, batch_size=6)
    d2, l2 = XL.LimeImageExplainer(random_state=5).data_labels(img, fudged, seg, clf, 40, batch_size=6)
    np.testing.assert_array_equal(d2, d1)
    np.testing.assert_allclose(l2, l1, rtol=1e-12)


@pytest.mark.peer
@pytest.mark.parametrize("case", ["one_based", "gaps", "uint8", "float32", "gray", "uint8_hide"])
def test_image_equals_lime_on_unusual_inputs(case):
    lime_image_mod = pytest.importorskip("lime.lime_image")
    rng = np.random.RandomState(0)
    H, W = 15, 17
    img = rng.rand(H, W, 3)
    seg = _grid(H, W, 4, 5)
    hide = None
    if case == "one_based":
        seg = seg + 1
    elif case == "gaps":
        seg = seg * 2 + 3
    elif case == "uint8":
        img = (img * 255).astype(np.uint8)
    elif case == "uint8_hide":
        img, hide = (img * 255).astype(np.uint8), 0.5
    elif case == "float32":
        img = img.astype(np.float32)
    elif case == "gray":
        img = img[..., 0]
    base = _img_clf(H, W)

    def clf(b):  # uint8 batches scaled to [0, 1]: the softmax would saturate on 0..255
        return base(b / 255.0 if b.dtype == np.uint8 else b)

    kw = dict(top_labels=3, num_samples=150, segmentation_fn=lambda im: seg, hide_color=hide, batch_size=7)
    e1 = lime_image_mod.LimeImageExplainer(random_state=3).explain_instance(img, clf, random_seed=5, **kw)
    F = len(np.unique(seg))
    masks = np.random.RandomState(3).randint(0, 2, 150 * F).reshape(150, F)  # lime's draw, replayed
    masks[0] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e2 = XL.LimeImageExplainer(random_state=3).explain_instance(img, clf, masks=masks, **kw)
    assert_same_explanations(e2, e1, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(e2.segments, e1.segments)
    for label in e1.top_labels[:2]:
        for pos in (True, False):
            a = e1.get_image_and_mask(label, positive_only=pos, num_features=4, hide_rest=True)
            b = e2.get_image_and_mask(label, positive_only=pos, num_features=4, hide_rest=True)
            np.testing.assert_array_equal(b[0], a[0])
            np.testing.assert_array_equal(b[1], a[1])


@pytest.mark.peer
@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("kw", [dict(), dict(bow=False), dict(char_level=True), dict(mask_string="___", bow=False)])
def test_text_dropin_is_lime_for_the_same_random_state(seed, kw):
    """No masks given: lime's own draws, so the same explanation (and the same stream after)."""
    lime_text = pytest.importorskip("lime.lime_text")
    text = "the cat sat on the mat, and the dog ate the cat's food; a bird watched"
    rng = np.random.RandomState(1)
    wv = {w: rng.randn(3) for w in set(text.replace(",", " ").replace(";", " ").replace("'", " ").split())}

    def clf(docs):
        z = np.array([sum((wv.get(w, np.zeros(3)) for w in d.replace(",", " ").replace(";", " ").replace("'", " ")
                           .split()), np.zeros(3)) for d in docs])
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    a = lime_text.LimeTextExplainer(random_state=seed, **kw)
    b = XL.LimeTextExplainer(random_state=seed, **kw)
    e1 = a.explain_instance(text, clf, top_labels=2, num_samples=400)
    e2 = b.explain_instance(text, clf, top_labels=2, num_samples=400)
    assert_same_explanations(e2, e1, rtol=1e-6, atol=1e-9)
    assert a.random_state.randint(0, 10**9) == b.random_state.randint(0, 10**9)


@pytest.mark.peer
@pytest.mark.parametrize("bow", [True, False])
def test_text_equals_lime_given_same_masks(bow):
    lime_text = pytest.importorskip("lime.lime_text")
    text = "the cat sat on the mat, and the dog ate the cat's food"
    vocab = sorted(set(text.replace(",", " ").replace("'", " ").split()))
    wv = np.random.RandomState(0).randn(len(vocab), 3)

    def clf(docs):
        out = []
        for d in docs:
            z = np.zeros(3)
            for w in d.replace(",", " ").replace("'", " ").split():
                if w in vocab:
                    z += wv[vocab.index(w)]
            e = np.exp(z - z.max())
            out.append(e / e.sum())
        return np.array(out)

    e1 = lime_text.LimeTextExplainer(random_state=2, bow=bow).explain_instance(text, clf, top_labels=2,
                                                                                num_samples=300)
    F = len(e1.domain_mapper.indexed_string.inverse_vocab)
    rs = np.random.RandomState(2)
    sizes = rs.randint(1, F + 1, 299)
    masks = np.ones((300, F), np.uint8)
    for i, s in enumerate(sizes, 1):
        masks[i, rs.choice(range(F), s, replace=False)] = 0
    e2 = XL.LimeTextExplainer(random_state=2, bow=bow).explain_instance(text, clf, top_labels=2, num_samples=300,
                                                                        masks=masks)
    assert e1.top_labels == e2.top_labels
    for lab in e1.top_labels:
        a, b = e1.as_list(lab), e2.as_list(lab)
        assert [n for n, _ in a] == [n for n, _ in b]
        np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(e2.intercept[lab], e1.intercept[lab], rtol=1e-6, atol=1e-9)


@pytest.mark.peer
@pytest.mark.parametrize("discretize", [True, False])
def test_tabular_equals_lime_given_same_neighbourhood(discretize):
    lime_tabular_mod = pytest.importorskip("lime.lime_tabular")
    from sklearn.metrics import pairwise_distances

    rng = np.random.RandomState(0)
    Xtr = rng.randn(300, 6)
    Xtr[:, 2] = rng.randint(0, 3, 300)
    Wt = rng.randn(6, 3)

    def pf(X):
        z = X @ Wt * 0.5
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    lt = lime_tabular_mod.LimeTabularExplainer(Xtr, categorical_features=[2], discretize_continuous=discretize,
                                               random_state=1)
    xt = XL.LimeTabularExplainer(Xtr, categorical_features=[2], discretize_continuous=discretize, random_state=1)
    # same training statistics: scaler, bins and value frequencies
    np.testing.assert_allclose(xt.sampler.surrogate_scale, lt.scaler.scale_, rtol=1e-12)
    np.testing.assert_allclose(xt.sampler.surrogate_mean, lt.scaler.mean_, rtol=1e-12, atol=1e-15)
    for f, vals in lt.feature_values.items():
        np.testing.assert_allclose(xt.sampler.value_table[f][0], vals)
        np.testing.assert_allclose(xt.sampler.value_table[f][1], lt.feature_frequencies[f], rtol=1e-12)
    data, inverse = lt._LimeTabularExplainer__data_inverse(Xtr[5], 400)
    scaled = (data - lt.scaler.mean_) / lt.scaler.scale_
    ys = pf(inverse)
    dist = pairwise_distances(scaled, scaled[:1], metric="euclidean").ravel()
    for lab in range(3):
        i1, le, sc, lp = lt.base.explain_instance_with_data(scaled, ys, dist, lab, 4, feature_selection="auto")
        e = XL.Explanation(None)
        xt.base.fit(e, scaled, ys, dist, [lab], 4, None)
        assert [f for f, _ in le] == [f for f, _ in e.local_exp[lab]]
        np.testing.assert_allclose([w for _, w in e.local_exp[lab]], [w for _, w in le], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose([e.intercept[lab], e.score, e.local_pred[0]], [i1, sc, lp[0]], rtol=1e-6,
                                   atol=1e-9)


@pytest.mark.peer
def test_tabular_sampling_statistics_match_lime():
    """Our sampler draws the same distribution as lime's: compare means of the model inputs
    and of the binary surrogate features over large neighbourhoods (within k·σ)."""
    lime_tabular_mod = pytest.importorskip("lime.lime_tabular")
    rng = np.random.RandomState(1)
    Xtr = rng.randn(400, 4) * [1, 2, 0.5, 3] + [0, 1, -1, 2]
    lt = lime_tabular_mod.LimeTabularExplainer(Xtr, random_state=0)
    xt = XL.LimeTabularExplainer(Xtr, random_state=0)
    n = 6000
    d1, inv1 = lt._LimeTabularExplainer__data_inverse(Xtr[7], n)
    d2, inv2, _ = xt.sampler.sample(Xtr[7], n, seed=3)
    for a, b in ((inv1[1:], inv2[1:]), (d1[1:], d2[1:])):
        se = np.sqrt(a.var(0) / n + b.var(0) / n) + 1e-12
        assert np.all(np.abs(a.mean(0) - b.mean(0)) < 4.5 * se), (a.mean(0), b.mean(0))


# ---------------------------------------------------------------------------- peer: captum
@pytest.mark.peer
@pytest.mark.parametrize("model_name", ["SkLearnLasso", "SkLearnRidge", "SkLearnLinearRegression"])
def test_captum_lime_equals_captum_given_same_masks(model_name):
    captum_attr = pytest.importorskip("captum.attr")
    from captum._utils.models import linear_model as LM

    import xaikernels.captum  # noqa: F401  (package first: importing captum_lime first is a circular import)

    from xaikernels.captum import _lime as XC

    model = SmallCNN().eval()
    x = torch.rand(1, 3, 10, 12)
    fm = torch.from_numpy(_grid(10, 12, 3, 4))[None, None]
    F = int(fm.max()) + 1
    rng = np.random.RandomState(0)
    masks = [torch.from_numpy((rng.rand(1, F) < 0.5).astype(np.int64)) for _ in range(40)]

    def gen(inp, **kw):
        yield from masks

    kw = dict(alpha=0.01) if model_name == "SkLearnLasso" else dict(alpha=1.0) if model_name == "SkLearnRidge" else {}
    a = captum_attr.Lime(model, interpretable_model=getattr(LM, model_name)(**kw), perturb_func=gen).attribute(
        x, target=1, feature_mask=fm, n_samples=40, perturbations_per_eval=8)
    lm = getattr(LM, model_name)(**kw)
    b = XC.Lime(model, interpretable_model=lm, perturb_func=gen).attribute(
        x, target=1, feature_mask=fm, n_samples=40, perturbations_per_eval=8)
    # Captum fits float32 data in float32; the residual difference is that rounding
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-6)
    assert lm.representation().shape == (1, F)


@pytest.mark.peer
def test_captum_kernel_shap_equals_captum_given_same_masks():
    captum_attr = pytest.importorskip("captum.attr")
    import xaikernels.captum  # noqa: F401  (package first: importing captum_lime first is a circular import)
    from xaikernels.captum import _lime as XC

    class Recording(captum_attr.KernelShap):
        def kernel_shap_perturb_generator(self, original_inp, **kwargs):
            gen = super().kernel_shap_perturb_generator(original_inp, **kwargs)
            while True:
                v = next(gen)
                self.rec.append(v.clone())
                yield v

    model = SmallCNN().eval()
    x = torch.rand(1, 3, 10, 12)
    fm = torch.from_numpy(_grid(10, 12, 3, 4))[None, None]
    torch.manual_seed(1)
    ks = Recording(model)
    ks.rec = []
    a = ks.attribute(x, target=2, feature_mask=fm, n_samples=60, perturbations_per_eval=16)
    masks = torch.cat(ks.rec[:60]).numpy().astype(np.uint8)
    ours = XC.KernelShap(model)
    ours._draw_masks = lambda n, F, seed: masks
    b = ours.attribute(x, target=2, feature_mask=fm, n_samples=60, perturbations_per_eval=16)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-6)


@pytest.mark.peer
def test_captum_lime_default_batched_runs_and_reproduces():
    pytest.importorskip("captum")
    import xaikernels.captum  # noqa: F401  (package first: importing captum_lime first is a circular import)
    from xaikernels.captum import _lime as XC

    model = SmallCNN().eval()
    x = torch.rand(2, 3, 8, 8)
    fm = torch.from_numpy(_grid(8, 8, 2, 2))[None, None]
    torch.manual_seed(0)
    a = XC.Lime(model).attribute(x, target=[0, 1], feature_mask=fm, n_samples=30, perturbations_per_eval=10)
    torch.manual_seed(0)
    b = XC.Lime(model).attribute(x, target=[0, 1], feature_mask=fm, n_samples=30, perturbations_per_eval=10)
    assert a.shape == x.shape and torch.equal(a, b)
    c = XC.Lime(model).attribute(x, target=[0, 1], feature_mask=fm, n_samples=30, return_input_shape=False)
    assert c.shape == (2, 4)


class _Scores(torch.nn.Module):
    """``net``'s class 0 as one score per sample (N,), or its outputs in a tuple."""

    def __init__(self, net, tuple_out=False):
        super().__init__()
        self.net, self.tuple_out = net, tuple_out

    def forward(self, x):
        out = self.net(x)
        return (out,) if self.tuple_out else out[:, 0]


@pytest.mark.parametrize("method", ["lime_image", "kernel_shap", "lime_tabular"])
def test_model_outputs_one_score_per_sample_or_the_wrong_kind(method):
    """A model returning one score per sample (N,) is explained as (N, 1): the same
    coefficients as the (N, K) model's class 0 with output='logits' (it raised torch's
    IndexError from the softmax before); softmax over that single output, constant 1, is an
    error rather than all-zero coefficients; a tuple output is a TypeError that says what to
    do."""
    from xaikernels.methods.kernel_shap import kernel_shap

    torch.manual_seed(0)
    if method == "lime_tabular":
        net = torch.nn.Linear(5, 3)
        X = torch.randn(100, 5)
        x = X[:2]

        def run(model, **kw):
            return lime_tabular(model, x, training_data=X, n_samples=200, **kw)
    else:
        net = SmallCNN(classes=3).eval().double()  # float64: no channels-last probe for either model
        x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
        seg = np.zeros((16, 16), dtype=np.int64)
        seg[:, 8:] = 1
        seg[8:, :4] = 2
        if method == "lime_image":
            def run(model, **kw):
                return lime_image(model, x, segments=seg, n_samples=40, **kw)
        else:
            def run(model, **kw):
                return kernel_shap(model, x, feature_mask=torch.as_tensor(seg), n_samples=40, **kw)

    one = run(_Scores(net), output="logits")
    full = run(net, output="logits", target=0)
    got = one.coef if method != "kernel_shap" else one.phi
    want = full.coef if method != "kernel_shap" else full.phi
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="softmax"):
        run(_Scores(net), output="softmax")
    with pytest.raises(TypeError, match="single tensor"):
        run(_Scores(net, tuple_out=True))


def test_effective_samples_reported_and_collapsed_weights_warn():
    """extras['effective_samples'] is the kernel weights' Kish size; when the kernel puts all
    its weight on the instance (euclidean distances with lime image's width 0.25: one hidden
    segment already weighs exp(-8)), the fit warns instead of returning zero coefficients
    and a score of 1 silently; a sensible width neither warns nor reports a collapse."""
    from xaikernels.methods.lime import effective_samples, lime_text

    assert effective_samples(np.ones(7)) == pytest.approx(7.0)
    assert effective_samples(np.r_[1.0, np.zeros(9)]) == pytest.approx(1.0)
    assert effective_samples(np.zeros(3)) == 0.0
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()
    x = torch.rand(1, 3, 8, 8)
    seg = np.arange(64).reshape(8, 8) // 4
    with pytest.warns(RuntimeWarning, match="effective samples"):
        r = lime_image(net, x, segments=seg, n_samples=50, distance="euclidean")
    assert r.extras["effective_samples"][0] < 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        r = lime_image(net, x, segments=seg, n_samples=50)  # cosine, lime's default
        assert r.extras["effective_samples"][0] > 10
        t = lime_tabular(torch.nn.Linear(5, 3), torch.randn(2, 5), training_data=torch.randn(100, 5),
                         n_samples=300)
        assert np.all(t.extras["effective_samples"] > 100)
    with pytest.raises(ValueError, match="4 features per row, the training data 5"):
        lime_tabular(torch.nn.Linear(5, 3), torch.randn(2, 4), training_data=torch.randn(100, 5), n_samples=50)
    with pytest.warns(RuntimeWarning, match="lime_tabular"):
        lime_tabular(torch.nn.Linear(5, 3), torch.randn(1, 5), training_data=torch.randn(100, 5), n_samples=300,
                     kernel_width=1e-3)
    with pytest.warns(RuntimeWarning, match="lime_text"):
        _, fit, _ = lime_text(lambda d: np.ones((len(d), 2)) / 2, "a b c d e f", n_samples=50, kernel_width=1e-3)
    assert fit["effective_samples"] < 2
