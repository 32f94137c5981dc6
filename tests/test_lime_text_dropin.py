"""``xaikernels.lime``'s text API against lime's: ``IndexedString`` / ``IndexedCharacters``
(lime's own test_indexed_* checks, then every attribute and ``inverse_removing`` against lime
where it is installed), ``TextDomainMapper``, the explainer's signatures and the texts it hands
to the classifier, and an end-to-end run on a synthetic two-class corpus (lime's 20newsgroups
tests, offline)."""
import inspect
import re

import numpy as np
import pytest

from xaikernels import lime as XL

from test_lime_methods import assert_same_explanations
from test_lime_ops import BACKENDS, needs_numba


def _pairs(s):
    """The tokenizer of lime's test_indexed_string_callable: consecutive character pairs."""
    return [s[i] + s[i + 1] for i in range(0, len(s) - 1, 2)]


def _split_keep_empty(s):
    """The tokenizer of lime's test_indexed_string_inverse_removing_tokenizer: it returns
    empty tokens too."""
    return re.split(r"(?:\W+)|$", s)


def _words_and_first_comma(s):
    """A tokenizer that returns the words and the first comma: a later comma standing alone
    between two tokens then counts as a word too (lime tests pieces against the token set)."""
    toks = re.findall(r"\w+|,", s)
    first = toks.index(",") if "," in toks else -1
    return [t for i, t in enumerate(toks) if t != "," or i == first]


# -------------------------------------------------------------- lime's own checks, ours
def test_indexed_characters_bow():
    s = "Please, take your time"
    ic = XL.IndexedCharacters(s)
    assert np.array_equal(ic.as_np, np.array(list(s)))
    assert np.array_equal(ic.string_start, np.arange(len(s)))
    assert ic.inverse_vocab == ["P", "l", "e", "a", "s", ",", " ", "t", "k", "y", "o", "u", "r", "i", "m"]
    assert ic.positions == [[0], [1], [2, 5, 11, 21], [3, 9], [4], [6], [7, 12, 17], [8, 18], [10], [13], [14],
                            [15], [16], [19], [20]]
    assert ic.mask_string == chr(0) and ic.bow is True and ic.raw_string() == s and ic.num_words() == 15
    assert ic.inverse_removing([2, 6]) == "Plas,takyourtim"
    np.testing.assert_array_equal(ic.string_position(6), [7, 12, 17])


def test_indexed_characters_not_bow():
    s = "Please, take your time"
    ic = XL.IndexedCharacters(s, bow=False)
    assert np.array_equal(ic.as_np, np.array(list(s)))
    assert np.array_equal(ic.string_start, np.arange(len(s)))
    assert ic.inverse_vocab == list(s)
    assert isinstance(ic.positions, np.ndarray) and np.array_equal(ic.positions, np.arange(len(s)))
    assert ic.inverse_removing([0, 6]) == "\x00lease\x00 take your time"
    assert XL.IndexedCharacters(s, bow=False, mask_string="_").inverse_removing([1, 2]) == "P__ase, take your time"
    np.testing.assert_array_equal(ic.string_position(7), [7])


def test_indexed_string_regex():
    s = "Please, take your time. Please"
    idx = XL.IndexedString(s)
    assert np.array_equal(idx.as_np, np.array(["Please", ", ", "take", " ", "your", " ", "time", ". ", "Please"]))
    assert np.array_equal(idx.string_start, [0, 6, 8, 12, 13, 17, 18, 22, 24])
    assert idx.inverse_vocab == ["Please", "take", "your", "time"]
    # lime's test compares the ragged positions with np.array_equal, which is False for
    # ragged lists on NumPy >= 1.24 (lime 0.2.0.1 fails its own test there); the values:
    assert idx.positions == [[0, 8], [2], [4], [6]]
    assert idx.mask_string == "UNKWORDZ" and idx.num_words() == 4 and idx.word(3) == "time"
    np.testing.assert_array_equal(idx.string_position(0), [0, 24])
    assert idx.inverse_removing([0]) == ", take your time. "
    assert XL.IndexedString(s, bow=False).inverse_removing([0, 2]) == "UNKWORDZ, take UNKWORDZ time. Please"


def test_indexed_string_callable():
    s = "aabbccddaa"
    idx = XL.IndexedString(s, _pairs)
    assert np.array_equal(idx.as_np, np.array(["aa", "bb", "cc", "dd", "aa"]))
    assert np.array_equal(idx.string_start, [0, 2, 4, 6, 8])
    assert idx.inverse_vocab == ["aa", "bb", "cc", "dd"]
    assert idx.positions == [[0, 4], [1], [2], [3]]
    assert idx.inverse_removing([0, 2]) == "bbdd"


def test_indexed_string_inverse_removing_tokenizer():
    s = "This is a good movie. This, it is a great movie."
    idx = XL.IndexedString(s, _split_keep_empty)
    assert idx.inverse_removing([]) == s
    # the tokenizer's empty tokens are words too (lime's segmentation keeps them)
    assert idx.inverse_vocab[-1] == "" and idx.positions[-1] == [21, 22]
    assert idx.inverse_removing([idx.inverse_vocab.index("movie")]) == "This is a good . This, it is a great ."


def test_indexed_string_inverse_removing_regex():
    s = "This is a good movie. This is a great movie"
    idx = XL.IndexedString(s)
    assert idx.inverse_removing([]) == s
    assert idx.inverse_removing(np.array([0, 4])) == " is a good .  is a great "
    masked = XL.IndexedString(s, bow=False, mask_string="#")
    assert masked.inverse_removing([0, 9]) == "# is a good movie. This is a great #"


def test_empty_and_wordless_texts():
    for idx in (XL.IndexedString(""), XL.IndexedString("...", bow=False), XL.IndexedCharacters("")):
        assert idx.num_words() == 0 and idx.inverse_vocab == []
        assert idx.inverse_removing([]) == idx.raw
    assert XL.IndexedString("").as_np.dtype == np.float64  # np.array([]), as lime
    with pytest.raises(TypeError, match="str"):
        XL.IndexedString(b"bytes")
    with pytest.raises(ValueError, match="tokenizer"):
        XL.IndexedString("a b", lambda s: ["a", "c"])


TRICKY = ["Please, take your time", "", "   ", "naïve café — crème brûlée, déjà vu", "a\x00b\x00 c",
          "lone \ud800 surrogate, kept", "emoji 🙂 and 😀😀, twice", "one",
          # pieces longer than the renderer's 16-byte copies (one, two and three of them)
          "supercalifragilisticexpialidocious, antidisestablishmentarianism;;;;;;;;;;;;;;;;;;;;;;;; x "
          "pneumonoultramicroscopicsilicovolcanoconiosis"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("s", TRICKY)
@pytest.mark.parametrize("bow", [True, False])
@pytest.mark.parametrize("mask_string", [None, "UNKWORDZ", "█", "\x00", "<a removed word, 31 bytes long>"])
@pytest.mark.parametrize("chars", [False, True])
def test_batch_render_equals_inverse_removing(backend, s, bow, mask_string, chars):
    """The explainer's batch rendering (one kernel call per block) gives, row by row, the
    text ``inverse_removing`` (lime's semantics) gives for that row's removed features, on
    non-ASCII text, NULs, lone surrogates and multi-byte mask strings."""
    idx = (XL.IndexedCharacters(s, bow=bow, mask_string=mask_string) if chars
           else XL.IndexedString(s, bow=bow, mask_string=mask_string))
    F = idx.num_words()
    rng = np.random.RandomState(len(s) + F)
    masks = (rng.rand(23, F) < 0.5).astype(np.uint8)
    masks[0] = 1
    if len(masks) > 1:
        masks[1] = 0
    got = idx._render(masks, backend)
    expect = [idx.inverse_removing(np.flatnonzero(m == 0).tolist()) for m in masks]
    assert got == expect


def test_batch_render_blocks_and_bad_input():
    s = "the quick brown fox jumps over the lazy dog " * 3
    idx = XL.IndexedString(s)
    masks = (np.random.RandomState(0).rand(40, idx.num_words()) < 0.5).astype(np.uint8)
    whole = idx._render(masks)
    idx._RENDER_BLOCK = 100  # one or two rows per block
    assert idx._render(masks) == whole
    from xaikernels.ops import perturb as P

    with pytest.raises(ValueError, match="columns"):
        P.render_texts(idx.as_list, idx._piece_feature, "", masks[:, :3])


def test_text_domain_mapper():
    idx = XL.IndexedString("the cat & the <dog>")
    dm = XL.TextDomainMapper(idx)
    exp = [(1, 0.5), (0, -0.25)]
    assert dm.map_exp_ids(exp) == [("cat", 0.5), ("the", -0.25)]
    assert dm.map_exp_ids(exp, positions=True) == [("cat_4", 0.5), ("the_0-10", -0.25)]
    html = dm.visualize_instance_html(exp, 1, "div0", "exp0")
    call = re.fullmatch(r"\s*exp0\.show_raw_text\((.*)\);\s*", html, re.S).group(1)
    assert call == '[["cat", 4, 0.5], ["the", 0, -0.25], ["the", 10, -0.25]], 1, "the cat | the |dog|", div0, true'
    assert dm.visualize_instance_html(exp, 1, "div0", "exp0", text=False) == ""


# ------------------------------------------------------------------------------ peer: lime
_STRINGS = ["Please, take your time. Please", "aabbccddaa", "", "a", "...", "  leading, trailing  ",
            "héllo wörld — ünïcode ü héllo, 日本語 日本 naïve", "tabs\tand\nnew\n\nlines x", "a\x00b NUL\x00",
            "This is a good movie. This, it is a great movie.",
            "one,two,three, four,five"]
_SPLITS = [r"\W+", r"\s+", r"(,)|\s", _pairs, _split_keep_empty, str.split, _words_and_first_comma]


def _assert_same(ours, theirs, what):
    if isinstance(theirs, np.ndarray):
        assert isinstance(ours, np.ndarray), what
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, what
        np.testing.assert_array_equal(ours, theirs, err_msg=what)
    else:
        assert type(ours) is type(theirs) and ours == theirs, (what, ours, theirs)
        if isinstance(theirs, list):
            assert [type(x) for x in ours] == [type(x) for x in theirs], what


def _assert_indexed_equal(ours, theirs, rng):
    for name in ("raw", "as_list", "as_np", "string_start", "inverse_vocab", "positions", "bow", "mask_string"):
        _assert_same(getattr(ours, name), getattr(theirs, name), name)
    _assert_same(ours.raw_string(), theirs.raw_string(), "raw_string()")
    _assert_same(ours.num_words(), theirs.num_words(), "num_words()")
    n = theirs.num_words()
    for i in range(n):
        _assert_same(ours.word(i), theirs.word(i), f"word({i})")
        _assert_same(ours.string_position(i), theirs.string_position(i), f"string_position({i})")
    if n == 0:
        return
    for _ in range(6):
        rem = rng.choice(n, rng.randint(0, n + 1), replace=False)
        assert ours.inverse_removing(rem) == theirs.inverse_removing(rem)
        assert ours.inverse_removing(rem.tolist()) == theirs.inverse_removing(rem.tolist())


@pytest.mark.peer
@pytest.mark.parametrize("s", _STRINGS)
@pytest.mark.parametrize("bow", [True, False])
@pytest.mark.parametrize("mask_string", [None, "##"])
def test_indexed_string_equals_lime(s, bow, mask_string):
    lt = pytest.importorskip("lime.lime_text")
    rng = np.random.RandomState(len(s))
    for split in _SPLITS:
        if split is _pairs and s != "aabbccddaa":
            continue  # the pair tokenizer only fits texts made of its pairs
        ours = XL.IndexedString(s, split, bow=bow, mask_string=mask_string)
        theirs = lt.IndexedString(s, split, bow=bow, mask_string=mask_string)
        _assert_indexed_equal(ours, theirs, rng)


@pytest.mark.peer
@pytest.mark.parametrize("s", _STRINGS)
@pytest.mark.parametrize("bow", [True, False])
@pytest.mark.parametrize("mask_string", [None, "_"])
def test_indexed_characters_equals_lime(s, bow, mask_string):
    lt = pytest.importorskip("lime.lime_text")
    _assert_indexed_equal(XL.IndexedCharacters(s, bow=bow, mask_string=mask_string),
                          lt.IndexedCharacters(s, bow=bow, mask_string=mask_string), np.random.RandomState(7))


@pytest.mark.peer
def test_domain_mapper_equals_lime():
    lt = pytest.importorskip("lime.lime_text")
    for s, bow in [("a <b> & a, b c", True), ("a <b> & a, b c", False), ("x", True), ("ünï & cödé ünï", True)]:
        ours, theirs = XL.IndexedString(s, bow=bow), lt.IndexedString(s, bow=bow)
        exp = [(i, (-1) ** i / (i + 1)) for i in reversed(range(theirs.num_words()))]
        dm, tm = XL.TextDomainMapper(ours), lt.TextDomainMapper(theirs)
        for positions in (False, True):
            assert dm.map_exp_ids(exp, positions=positions) == tm.map_exp_ids(exp, positions=positions)
        for text, opacity in [(True, True), (True, False), (False, True)]:
            assert (dm.visualize_instance_html(exp, 1, "d", "o", text=text, opacity=opacity)
                    == tm.visualize_instance_html(exp, 1, "d", "o", text=text, opacity=opacity))


@pytest.mark.peer
def test_explainer_signatures_and_attributes_equal_lime():
    lt = pytest.importorskip("lime.lime_text")
    for fn in ("__init__", "explain_instance"):
        theirs = list(inspect.signature(getattr(lt.LimeTextExplainer, fn)).parameters.values())
        ours = list(inspect.signature(getattr(XL.LimeTextExplainer, fn)).parameters.values())
        assert [(p.name, p.default, p.kind) for p in ours[:len(theirs)]] == \
               [(p.name, p.default, p.kind) for p in theirs]
        extras = ours[len(theirs):]
        assert extras and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extras)
    for fn in ("map_exp_ids", "visualize_instance_html"):
        assert (inspect.signature(getattr(XL.TextDomainMapper, fn))
                == inspect.signature(getattr(lt.TextDomainMapper, fn)))
    kw = dict(class_names=["n", "p"], split_expression=r"\s+", bow=False, mask_string="?", char_level=True,
              feature_selection="none")
    ours, theirs = XL.LimeTextExplainer(random_state=1, **kw), lt.LimeTextExplainer(random_state=1, **kw)
    for name in ("class_names", "vocabulary", "feature_selection", "bow", "mask_string", "split_expression",
                 "char_level"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert isinstance(ours.random_state, np.random.RandomState)


def _recording_clf(vocab, seed=0):
    wv = np.random.RandomState(seed).randn(len(vocab), 2)
    seen = []

    def clf(docs):
        seen.append(list(docs))
        z = np.zeros((len(docs), 2))
        for i, d in enumerate(docs):
            for j, w in enumerate(vocab):
                z[i] += wv[j] * d.count(w)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return clf, seen


def _lime_masks(seed, S, F):
    """lime's removals for ``random_state=seed``, replayed as coalitions."""
    rs = np.random.RandomState(seed)
    masks = np.ones((S, F), np.uint8)
    for i, size in enumerate(rs.randint(1, F + 1, S - 1), 1):
        masks[i, rs.choice(range(F), size, replace=False)] = 0
    return masks


@needs_numba
@pytest.mark.peer
@pytest.mark.parametrize("kw", [dict(), dict(bow=False), dict(split_expression=str.split),
                                dict(split_expression=_words_and_first_comma, bow=False, mask_string="<>"),
                                dict(char_level=True), dict(char_level=True, bow=False)])
def test_explainer_texts_and_weights_equal_lime_given_same_masks(kw):
    """Given lime's removals, the classifier sees lime's texts, one for one, and the
    explanation (ids, words, weights, intercepts) is lime's; ``indexed_string`` is ours."""
    lt = pytest.importorskip("lime.lime_text")
    text = "the cat sat on the mat, and the dog ate the cat's food; ünï"
    vocab = ["cat", "dog", "mat", "food", "the", "a", "ü", ","]
    S = 120
    clf1, seen1 = _recording_clf(vocab)
    e1 = lt.LimeTextExplainer(random_state=4, **kw).explain_instance(text, clf1, top_labels=2, num_samples=S,
                                                                     num_features=5)
    F = e1.domain_mapper.indexed_string.num_words()
    clf2, seen2 = _recording_clf(vocab)
    e2 = XL.LimeTextExplainer(random_state=4, **kw).explain_instance(text, clf2, top_labels=2, num_samples=S,
                                                                     num_features=5, masks=_lime_masks(4, S, F))
    assert seen2 == seen1
    ours = e2.domain_mapper.indexed_string
    assert isinstance(ours, XL.IndexedCharacters if kw.get("char_level") else XL.IndexedString)
    _assert_indexed_equal(ours, e1.domain_mapper.indexed_string, np.random.RandomState(0))
    assert_same_explanations(e2, e1, rtol=1e-6, atol=1e-9)
    for lab in e1.top_labels:
        assert [n for n, _ in e2.as_list(lab, positions=True)] == [n for n, _ in e1.as_list(lab, positions=True)]


# -------------------------------------------------------------------------- end to end
_POS = ["alpha", "bravo", "canyon", "delta", "ember", "falcon", "glacier", "harbor", "island", "jungle",
        "kettle", "lantern", "meadow", "nectar", "orchid", "pepper", "quartz", "raven", "saddle", "timber",
        "umber", "velvet", "willow", "xenon", "yonder", "zephyr", "amber", "breeze", "cobalt", "dune"]
_NEG = ["anchor", "basalt", "cinder", "dagger", "eclipse", "fossil", "gravel", "hollow", "iron", "jasper",
        "kelp", "lichen", "marrow", "nettle", "onyx", "pylon", "quarry", "rubble", "slate", "thorn",
        "urchin", "vortex", "wraith", "yarrow", "zinc", "ashen", "brine", "crag", "dross", "ember2"]


def _corpus(n=200, seed=0):
    """Two classes, each writing mostly from its own 30-word vocabulary (a fifth of the words
    from the other one), with punctuation between sentences."""
    rng = np.random.RandomState(seed)
    docs, y = [], []
    for i in range(n):
        label = i % 2
        own, other = (_POS, _NEG) if label else (_NEG, _POS)
        words = [rng.choice(other if rng.rand() < 0.2 else own) for _ in range(rng.randint(15, 30))]
        for j in range(5, len(words), 7):
            words[j] += "."
        docs.append(" ".join(words).capitalize())
        y.append(label)
    return docs, np.array(y)


@pytest.fixture(scope="module")
def pipeline():
    sk_text = pytest.importorskip("sklearn.feature_extraction.text")
    nb_mod = pytest.importorskip("sklearn.naive_bayes")
    pipe_mod = pytest.importorskip("sklearn.pipeline")
    docs, y = _corpus()
    c = pipe_mod.make_pipeline(sk_text.TfidfVectorizer(lowercase=False), nb_mod.MultinomialNB(alpha=0.01))
    c.fit(docs[:150], y[:150])
    assert (c.predict(docs[150:]) == y[150:]).mean() > 0.9  # the classifier has learned the two vocabularies
    return c, docs[150:], y[150:]


@needs_numba
def test_synthetic_corpus_explanations(pipeline):
    """lime's test_lime_text_explainer_good_regressor and *_equal / *_not_equal_random_state on
    an offline corpus, plus the direction of the weights and removal through the mapper."""
    c, docs, y = pipeline
    i = int(np.nonzero(y == 1)[0][0])
    doc = docs[i]
    exp = XL.LimeTextExplainer(class_names=["neg", "pos"]).explain_instance(doc, c.predict_proba, num_features=6)
    items = exp.as_list()
    assert len(items) == 6 and len({w for w, _ in items}) == 6
    idx = exp.domain_mapper.indexed_string
    assert isinstance(exp.domain_mapper, XL.TextDomainMapper) and isinstance(idx, XL.IndexedString)
    assert all(w in idx.inverse_vocab and re.search(r"\b%s\b" % re.escape(w), doc) for w, _ in items)
    # words of the positive vocabulary push towards class 1, the others away from it
    for w, v in items:
        assert (v > 0) == (w.rstrip(".").lower() in _POS), (w, v)
    np.testing.assert_allclose(exp.predict_proba, c.predict_proba([doc])[0])
    # removing the positive evidence found lowers the class-1 probability
    pos_ids = [f for f, v in exp.as_map()[1] if v > 0]
    assert pos_ids
    assert c.predict_proba([idx.inverse_removing(pos_ids)])[0, 1] < exp.predict_proba[1]

    e1 = XL.LimeTextExplainer(class_names=["neg", "pos"], random_state=10).explain_instance(
        doc, c.predict_proba, num_features=6)
    e2 = XL.LimeTextExplainer(class_names=["neg", "pos"], random_state=10).explain_instance(
        doc, c.predict_proba, num_features=6)
    e3 = XL.LimeTextExplainer(class_names=["neg", "pos"], random_state=20).explain_instance(
        doc, c.predict_proba, num_features=6)
    assert e1.as_map() == e2.as_map()
    assert e1.as_map() != e3.as_map()


@needs_numba
def test_synthetic_corpus_char_level_and_positions(pipeline):
    c, docs, _ = pipeline
    doc = docs[0][:60]
    exp = XL.LimeTextExplainer(char_level=True, bow=False, random_state=0).explain_instance(
        doc, c.predict_proba, num_features=4, num_samples=500)
    idx = exp.domain_mapper.indexed_string
    assert isinstance(idx, XL.IndexedCharacters) and idx.num_words() == len(doc)
    names = exp.as_list(positions=True)
    assert len(names) == 4
    for (f, _), (name, _) in zip(exp.as_map()[1], names):
        assert name == f"{doc[f]}_{f}"
    assert idx.inverse_removing([0, 1]) == "\x00\x00" + doc[2:]
