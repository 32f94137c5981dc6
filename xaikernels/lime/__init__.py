"""Drop-in replacements for the ``lime`` package's explainers (lime 0.2.0.1 API).

The package mirrors lime's modules, so that changing ``lime`` to ``xaikernels.lime`` in an
import is the whole switch: ``lime_image``, ``lime_tabular``, ``lime_text``, ``explanation``,
``discretize`` (lime's discretizer classes), ``lime_base`` (``LimeBase``, the surrogate fit
custom explainers build on), ``wrappers.scikit_image`` (``SegmentationAlgorithm``) and
``utils.generic_utils`` (``has_arg``), ``exceptions`` (``LimeError``) and ``submodular_pick``
(SP-LIME's ``SubmodularPick``); the explainers and explanation classes are also here at the
top.  Everything lime 0.2.0.1 exports is here.

``LimeImageExplainer``, ``LimeTabularExplainer`` and ``LimeTextExplainer`` take lime's
constructor and ``explain_instance`` arguments and return explanation objects with lime's
fields (``local_exp``, ``intercept``, ``score``, ``local_pred``, ``top_labels``, ``as_list``,
``as_map``, ``get_image_and_mask``, ...).  Sampling, perturbed-batch construction, distances,
kernel weights, feature selection and the ridge fits run in the Numba kernels of
:mod:`xaikernels.ops.perturb`; only ``classifier_fn`` is called from Python, once per batch.

Given the same coalitions (``masks=``), the numbers equal lime's (Ridge α=1, same kernel
width) to rounding.  The image and text explainers draw lime's own coalitions from
``random_state`` (``draws="lime"``, the default), so for the same ``random_state`` their
explanations are lime's.  The tabular explainer draws from one fused kernel on a
counter-based generator seeded from ``random_state`` by default (reproducible, lime's
sampling law, not lime's draws); with ``draws="lime"`` it makes lime's own draws and gives
lime's explanation to rounding, at about 10× the library time.  Differences from lime, on
purpose:

* lime keeps ``score`` and ``local_pred`` of the last explained label only; so do we, and
  ``score_per_label`` / ``local_pred_per_label`` add every label's values.
* a classifier whose output has the wrong shape raises ``ValueError`` (lime fails later or
  silently; a 1-D output of a tabular classifier raises lime's ``NotImplementedError``, also a
  ``ValueError``); rows
  that do not sum to 1 in classification warn, as lime's tabular explainer.
* an unknown ``distance_metric`` raises scikit-learn's error before the classifier runs
  (lime's image and text explainers raise it after).
* all-zero kernel weights raise ``ValueError`` instead of fitting NaNs.
* tabular: a discretised bin of zero width yields its edge value (lime returns a z-score).
* the score of a label whose outputs do not vary at all is 1 (scikit-learn's ridge usually
  fits such a target exactly too; where its rounding leaves noise, lime's score is that
  noise's ratio).  Fits whose kernel weight has underflowed onto the instance score as
  lime's (0: the surrogate explains none of the weighted variation).

``distance_metric`` is any metric of scikit-learn's ``pairwise_distances`` (as lime):
'euclidean' / 'l2' and 'cosine' are computed in the kernels (fused with the sampling for
tabular data), other metrics by scikit-learn on the rows lime uses (the standardised
neighbourhood, the coalitions), then weighted and fitted as usual.  ``Explanation.as_html``
(``save_to_file``, ``show_in_notebook``) gives a self-contained HTML page without lime's
JavaScript bundle.

Tabular data may be scipy-sparse (sampled as lime does: no discretisation, normals at the
row's non-zero columns, ``scaled = data ⊙ scale``), ``discretizer`` may be a lime discretizer
object (any ``BaseDiscretizer``; its bins and per-bin statistics are used, and its own
``random_state`` enters the draws as in lime), and ``training_data_stats`` replaces the
training data's statistics as lime's ``StatsDiscretizer`` does.  lime's own
``test_lime_tabular.py`` passes 10/10 with the import swapped.

Text: ``IndexedString`` / ``IndexedCharacters`` with lime's attributes and methods (the
explanation's ``domain_mapper.indexed_string`` is one).  lime's own ``test_lime_text.py``
with the import swapped gives the same results as lime itself (its 20-newsgroups tests need
a download; two ``positions`` checks fail for lime too, on NumPy 2's ``array_equal``).
"""
from __future__ import annotations

import copy
import itertools
import json
import re
import sys
import warnings
from functools import partial
from typing import Dict

import numpy as np

from xaikernels.methods import lime as M
from xaikernels.ops import perturb as P

from ._rng import _check_random_state, _legacy_random_state  # noqa: F401  (re-exported)
from .discretize import (BaseDiscretizer, DecileDiscretizer, EntropyDiscretizer,  # noqa: F401
                         QuartileDiscretizer, StatsDiscretizer)
from .exceptions import LimeError

__all__ = ["LimeImageExplainer", "LimeTabularExplainer", "LimeTextExplainer", "ImageExplanation",
           "Explanation", "DomainMapper", "TableDomainMapper", "RecurrentTabularExplainer", "IndexedString", "IndexedCharacters",
           "TextDomainMapper", "BaseDiscretizer", "StatsDiscretizer", "QuartileDiscretizer", "DecileDiscretizer",
           "EntropyDiscretizer", "LimeError"]


def _check_draws(draws):
    if draws not in ("lime", "counter"):
        raise ValueError(f"draws must be 'lime' or 'counter', got {draws!r}")


def _default_kernel(d, kernel_width):
    return np.sqrt(np.exp(-(d ** 2) / kernel_width ** 2))


def _weights(distances, kernel_fn, kernel_width, backend):
    if kernel_fn is None:
        return P.exp_kernel(distances, kernel_width, backend=backend)
    w = np.asarray(kernel_fn(distances), dtype=np.float64)
    if w.shape != distances.shape:
        raise ValueError(f"kernel must return one weight per sample ({distances.shape}), got {w.shape}")
    return w


# distance metrics the kernels compute themselves (lime's scikit-learn values to rounding);
# 'l2' is scikit-learn's other name for euclidean_distances
_KERNEL_METRICS = {"euclidean": "euclidean", "l2": "euclidean", "cosine": "cosine"}


def _kernel_metric(metric):
    """'euclidean' / 'cosine' when the kernels compute ``metric``'s distances, else None
    (scikit-learn's ``pairwise_distances`` does, as in lime)."""
    return _KERNEL_METRICS.get(metric) if isinstance(metric, str) else None


def _check_metric(metric):
    """Reject a ``distance_metric`` that scikit-learn's ``pairwise_distances`` would reject,
    with scikit-learn's own error, before the classifier runs (lime finds out after it ran,
    for images and texts).  Metric names, callables and 'precomputed' pass."""
    if _kernel_metric(metric) is not None or callable(metric):
        return
    from sklearn.metrics import pairwise

    valid = getattr(pairwise, "_VALID_METRICS", None)  # private: skip the early check without it
    if valid is None or (isinstance(metric, str) and (metric in valid or metric == "precomputed")):
        return
    pairwise.pairwise_distances(np.zeros((1, 1)), metric=metric)  # raises scikit-learn's error
    raise ValueError(f"unknown distance_metric {metric!r}")  # pragma: no cover  (scikit-learn accepted it)


def _sklearn_distances(rows, metric):
    """lime's ``pairwise_distances(rows, rows[0], metric=metric).ravel()`` (dense or sparse
    ``rows``)."""
    from sklearn.metrics import pairwise_distances

    return np.asarray(pairwise_distances(rows, rows[0].reshape(1, -1), metric=metric), dtype=np.float64).ravel()


class _NeedsProbabilities(NotImplementedError, ValueError):
    """A classifier's 1-D output in classification mode: lime's ``NotImplementedError``, and a
    ``ValueError`` as every other wrong output shape here."""


def _check_outputs(yss, n, mode="classification", need_2d=True, warn_proba=False, backend="auto"):
    yss = np.asarray(yss)
    if yss.dtype.kind not in "iufc":  # np.issubdtype(dtype, np.number), without its calls
        raise ValueError(f"classifier_fn must return a numeric array, got dtype {yss.dtype}")
    if yss.shape[:1] != (n,):
        raise ValueError(f"classifier_fn returned {yss.shape[0] if yss.ndim else 'a scalar'} rows for {n} inputs; "
                         "it must return one row of class probabilities per input")
    if need_2d and yss.ndim != 2:
        raise ValueError(f"classifier_fn must return (n_samples, n_classes) probabilities, got shape {yss.shape}")
    yss = np.ascontiguousarray(yss, dtype=np.float64)
    # finiteness and lime's np.allclose(row sums, 1) in one kernel pass
    finite, proba = P.output_check(yss.reshape(n, -1), backend=backend)
    if not finite:
        raise ValueError("classifier_fn returned non-finite values")
    if warn_proba and not proba:
        warnings.warn("Prediction probabilities do not sum to 1 (or lie outside [0, 1]): the classifier "
                      "should return probabilities, not logits or class predictions.", UserWarning, stacklevel=3)
    return yss


def _local_exps(coef, used):
    """lime's ``sorted(zip(used_features, coef), key=abs, reverse=True)`` for every label (row)
    at once: ``used[j, f]`` > 0 is feature f's selection rank for label j.  Ties in |coef|
    keep selection order, as Python's stable reverse sort does."""
    if coef.size <= 1024:
        out = _local_exps_small(coef, used)
        if out is not None:
            return out
    return _local_exps_lexsort(coef, used)


def _local_exps_small(coef, used):
    """:func:`_local_exps` by a Python sort of lists, for few labels and features (tabular's
    defaults): a fifth of the lexsort's time when other work has flushed the caches (every
    NumPy call there is a string of misses).  None when a coefficient is NaN."""
    out = []
    for crow, urow in zip(coef.tolist(), used.tolist()):
        items = [(-abs(c), u, f, c) for f, (c, u) in enumerate(zip(crow, urow)) if u > 0]
        if any(t[0] != t[0] for t in items):
            return None
        items.sort()  # ranks u are distinct within a row: f and c never compared
        out.append([(f, c) for _, _, f, c in items])
    return out


def _local_exps_lexsort(coef, used):
    """:func:`_local_exps` by one lexsort for all rows instead of two argsorts per row (5
    labels of 73 features: ~0.1 ms of lime_image's time)."""
    L = coef.shape[0]
    rows, feats = np.nonzero(used)
    vals = coef[rows, feats]
    order = np.lexsort((used[rows, feats], -np.abs(vals), rows))
    feats, vals = feats[order].tolist(), vals[order].tolist()
    ends = np.cumsum(np.bincount(rows, minlength=L)).tolist()
    out, start = [], 0
    for end in ends:
        out.append(list(zip(feats[start:end], vals[start:end])))
        start = end
    return out


def _rank_ids(segments):
    """(rank of each pixel's id among the unique ids, flat int64; number of unique ids).

    Segmentations (scikit-image's included) usually number their segments 0..F-1 already, and
    then the ranks are the ids themselves: a bincount proves it in a few microseconds, where
    np.unique's sort of every pixel costs ~0.25 ms on a 64×64 image (4% of lime_image's own
    time).  Anything else goes through np.unique."""
    flat = segments.reshape(-1)
    if flat.dtype.kind in "iu" and flat.size and flat.min() == 0:
        ids = flat.astype(np.int64)
        F = int(ids.max()) + 1
        if F <= flat.size and np.count_nonzero(np.bincount(ids, minlength=F)) == F:
            return ids, F, True
    uniq, inv = np.unique(segments, return_inverse=True)
    return inv.reshape(-1).astype(np.int64), len(uniq), False


def _narrow_float_mean_fill(x_apb, seg_ids, F):
    """Segment-mean fill of a float32 / float16 image as lime computes it: NumPy's mean of
    each segment's pixels per channel, in the image's precision (pairwise summation, pixels
    in row-major order), where :func:`segment_fill`'s float64 sums would round differently
    in the last bit.  One ``np.mean`` per segment and channel on a stably sorted copy."""
    order = np.argsort(seg_ids, kind="stable")
    px = x_apb[0][order]  # (P, C) grouped by segment, row-major within each
    ends = np.cumsum(np.bincount(seg_ids, minlength=F))
    means = np.empty((F, px.shape[1]), dtype=x_apb.dtype)
    start = 0
    for f in range(F):
        grp = px[start:ends[f]]
        for c in range(px.shape[1]):
            means[f, c] = np.mean(grp[:, c])
        start = ends[f]
    return means[seg_ids][None]


def _lime_feature_map(segments, F):
    """lime's feature ↔ pixel map for segment ids that are not 0..F-1: feature j is the
    pixels whose id equals j, and pixels of any other id belong to no feature (index F, never
    hidden).  This is what lime does (``mask[segments == z]`` for the zero entries z of a
    coalition of F = the number of distinct ids), so the explanations stay lime's."""
    flat = segments.reshape(-1)
    ok = (flat >= 0) & (flat < F) & (flat == np.floor(flat)) if flat.dtype.kind == "f" else (flat >= 0) & (flat < F)
    ids = np.where(ok, flat, F).astype(np.int64)
    dead = F - np.unique(ids[ids < F]).size
    stray = int(np.count_nonzero(~ok))
    warnings.warn(
        f"the segment ids are not 0..{F - 1}: as lime, feature j is the segment whose id is j, so {dead} "
        f"feature(s) cover no pixel and {stray} pixel(s) (ids outside 0..{F - 1}) are never hidden; number the "
        "segments from 0 (e.g. slic(..., start_label=0)) to explain every segment", UserWarning, stacklevel=4)
    return ids


class _SurrogateFitter:
    """lime's ``LimeBase.explain_instance_with_data`` for all labels at once."""

    def __init__(self, kernel_fn, kernel_width, feature_selection, verbose, backend):
        self.kernel_fn = kernel_fn
        self.kernel_width = kernel_width
        self.feature_selection = feature_selection
        self.verbose = verbose
        self.backend = backend

    def fit(self, exp, data, yss, distances, labels, num_features, model_regressor, metric=None, weights=None,
            gram=None):
        """``distances`` (S,), or None with ``metric`` ('cosine' | 'euclidean'): the distances
        of the rows of ``data`` to the all-ones row (image / text coalitions).  ``weights``:
        lime's default-kernel weights of ``distances`` when already computed; ``gram``: their
        augmented weighted Gram of ``data`` from the tabular sampler."""
        labels = [int(l) for l in labels]
        if any(l < 0 or l >= yss.shape[1] for l in labels):
            raise IndexError(f"labels {labels} out of range for {yss.shape[1]} classifier outputs")
        k = int(min(num_features, data.shape[1])) if num_features is not None else data.shape[1]
        k = max(k, 1)
        if model_regressor is None and self.kernel_fn is None and gram is not None and weights is not None:
            fit = P.fit_lime_gram(data, yss, labels, weights, gram, alpha=1.0, feature_selection=self.feature_selection,
                                  num_features=k, backend=self.backend)
            return self._store(exp, fit, labels, yss, data, lambda: weights)
        if model_regressor is None and self.kernel_fn is None:
            # lime's default kernel: weights, Gram products, selection and every label's
            # solve in one kernel call
            if weights is not None:
                wd, mode = weights, "weights"
            else:
                wd, mode = distances, "distances" if distances is not None else metric
            fit = P.fit_lime(data, yss, labels, wd, weights=mode,
                             kernel_width=self.kernel_width, alpha=1.0, feature_selection=self.feature_selection,
                             num_features=k, backend=self.backend)

            def lime_weights():
                if weights is not None:
                    return weights
                d = distances if distances is not None else P.row_distances(data, np.ones(data.shape[1]), metric,
                                                                            backend=self.backend)
                return _weights(d, None, self.kernel_width, self.backend)
            return self._store(exp, fit, labels, yss, data, lime_weights)
        if distances is None:
            distances = P.row_distances(data, np.ones(data.shape[1]), metric, backend=self.backend)
        weights = _weights(distances, self.kernel_fn, self.kernel_width, self.backend)
        Y = np.ascontiguousarray(yss[:, labels], dtype=np.float64)
        data = np.asarray(data, dtype=np.float64)
        if model_regressor is None:
            fit = P.fit_surrogate(data, Y, weights, alpha=1.0, feature_selection=self.feature_selection,
                                  num_features=k, backend=self.backend)
        else:
            # selection by our kernels, then the user's regressor on the selected columns
            sel = P.fit_surrogate(data, Y, weights, alpha=1.0, feature_selection=self.feature_selection,
                                  num_features=k, backend=self.backend)
            fit = {kk: np.array(v, copy=True) for kk, v in sel.items()}
            for j in range(len(labels)):
                used = np.nonzero(sel["used"][j])[0]
                used = used[np.argsort(sel["used"][j][used], kind="stable")]
                reg = copy.deepcopy(model_regressor)
                reg.fit(data[:, used], Y[:, j], sample_weight=weights)
                fit["coef"][j] = 0.0
                fit["coef"][j, used] = reg.coef_
                fit["intercept"][j] = reg.intercept_
                fit["score"][j] = reg.score(data[:, used], Y[:, j], sample_weight=weights)
                fit["local_pred"][j] = reg.predict(data[0, used].reshape(1, -1))[0]
            return self._store(exp, fit, labels, yss)
        return self._store(exp, fit, labels, yss, data, lambda: weights)

    def _store(self, exp, fit, labels, yss, data=None, weights_of=None):
        exp.score_per_label = {}
        exp.local_pred_per_label = {}
        lists = _local_exps(fit["coef"], fit["used"])
        if weights_of is not None and (fit["score"] == 1.0).any():
            _exact_scores(fit, data, yss, labels, weights_of())
        for j, lab in enumerate(labels):
            exp.intercept[lab] = float(fit["intercept"][j])
            exp.local_exp[lab] = lists[j]
            exp.score = float(fit["score"][j])
            exp.local_pred = np.array([fit["local_pred"][j]])
            exp.score_per_label[lab] = exp.score
            exp.local_pred_per_label[lab] = exp.local_pred
            if self.verbose:
                print("Intercept", exp.intercept[lab])
                print("Prediction_local", exp.local_pred)
                print("Right:", yss[0, lab])
        return exp


def _exact_scores(fit, data, yss, labels, w):
    """lime's score (scikit-learn's weighted ``r2_score`` of the fitted ridge) recomputed
    directly for the labels whose Gram-form fit reported exactly 1: a target constant up to
    the rounding of its weighted sums.  The kernels call such a target constant and its fit
    perfect; scikit-learn computes Σ w (y - ŷ)² and Σ w (y - ȳ)² as they are and reports
    1 - ratio (0 for the fits whose weight has underflowed onto the instance, where both
    sums are tiny and equal).  A target without any variation stays at 1 (scikit-learn's
    ridge fits it exactly; ours leaves rounding noise in both sums, whose ratio is
    meaningless).  Where the second sum is exactly 0 for a varying target (its weight all
    on rows of one value), scikit-learn reports 1 when the first is 0 too, else 0; the
    first is then our intercept's rounding (not scikit-learn's, bit for bit), taken as 0 up
    to the kernels' rounding floor ``sw·(n·eps·max|y|)²``.  Rare, and O(samples × selected)
    each."""
    w = np.asarray(w, dtype=np.float64)
    for j in np.flatnonzero(fit["score"] == 1.0):
        used = np.flatnonzero(fit["used"][j])
        y = np.asarray(yss[:, labels[j]], dtype=np.float64)
        if y.size == 0 or y.max() == y.min():
            continue
        pred = np.asarray(data[:, used], dtype=np.float64) @ fit["coef"][j, used] + fit["intercept"][j]
        num = float((w * (y - pred) ** 2).sum())
        den = float((w * (y - np.average(y, weights=w)) ** 2).sum())
        if den != 0:
            fit["score"][j] = 1.0 - num / den if num != 0 else 1.0
        else:
            floor = float(w.sum()) * (len(y) * np.finfo(np.float64).eps * float(np.abs(y).max(initial=0.0))) ** 2
            fit["score"][j] = 1.0 if num <= floor else 0.0


def _fitter(kernel, kernel_width, feature_selection, verbose, backend):
    kernel_width = float(kernel_width)
    kernel_fn = None if kernel is None else partial(kernel, kernel_width=kernel_width)
    P.resolve_selection(feature_selection, 10)  # validate the name early
    return _SurrogateFitter(kernel_fn, kernel_width, feature_selection, verbose, backend)


# ------------------------------------------------------------------------------------- image
class ImageExplanation:
    """lime's ``ImageExplanation``: ``image``, ``segments``, ``intercept``, ``local_exp``,
    ``local_pred``, ``score``, ``top_labels``."""

    def __init__(self, image, segments):
        self.image = image
        self.segments = segments
        self.intercept: Dict[int, float] = {}
        self.local_exp: Dict[int, list] = {}
        self.local_pred = None
        self.score = None

    def get_image_and_mask(self, label, positive_only=True, negative_only=False, hide_rest=False,
                           num_features=5, min_weight=0.0):
        """(image, mask) highlighting the ``num_features`` strongest superpixels for ``label``
        (positive ones, negative ones, or both with mask ±1), as lime."""
        if label not in self.local_exp:
            raise KeyError("Label not in explanation")
        if positive_only and negative_only:
            raise ValueError("Positive_only and negative_only cannot be true at the same time.")
        seg = self.segments
        img = self.image
        exp = self.local_exp[label]
        mask = np.zeros(seg.shape, seg.dtype)
        temp = np.zeros(img.shape) if hide_rest else img.copy()
        if positive_only or negative_only:
            if positive_only:
                fs = [f for f, w in exp if w > 0 and w > min_weight][:num_features]
            else:
                fs = [f for f, w in exp if w < 0 and abs(w) > min_weight][:num_features]
            sel = np.isin(seg, fs)
            temp[sel] = img[sel]
            mask[sel] = 1
            return temp, mask
        for f, w in exp[:num_features]:
            if abs(w) < min_weight:
                continue
            sel = seg == f
            mask[sel] = -1 if w < 0 else 1
            temp[sel] = img[sel]
            temp[sel, 0 if w < 0 else 1] = np.max(img)
        return temp, mask


class LimeImageExplainer:
    """lime's ``LimeImageExplainer`` on Numba kernels.

    Parameters (as lime): ``kernel_width=0.25``, ``kernel`` (``f(d, kernel_width)``),
    ``verbose``, ``feature_selection='auto'``, ``random_state``; plus ``backend`` and
    ``draws``:

    * ``draws="lime"`` (default): the coalitions are lime's own draws from ``random_state``
      (``randint(0, 2, num_samples × F)``) and the default segmentation is lime's (quickshift
      through ``SegmentationAlgorithm`` with the same ``random_seed``), so for the same
      ``random_state`` the explanations are lime's, to float rounding;
    * ``draws="counter"``: the package's counter-based generator seeded from ``random_state``
      (reproducible, independent of thread count, ~0.2 ms less per 1000 × 73 coalitions;
      not lime's draws).
    """

    def __init__(self, kernel_width=0.25, kernel=None, verbose=False, feature_selection="auto",
                 random_state=None, *, backend: str = "auto", draws: str = "lime"):
        _check_draws(draws)
        self.random_state = _check_random_state(random_state)
        self.feature_selection = feature_selection
        self.backend = backend
        self.draws = draws
        self.base = _fitter(kernel, kernel_width, feature_selection, verbose, backend)

    def explain_instance(self, image, classifier_fn, labels=(1,), hide_color=None, top_labels=5,
                         num_features=100000, num_samples=1000, batch_size=10, segmentation_fn=None,
                         distance_metric="cosine", model_regressor=None, random_seed=None, *, masks=None,
                         progress_bar=False):
        """Explain ``classifier_fn``'s prediction on ``image`` (H, W, 3) (or (H, W) gray).

        ``classifier_fn`` receives float batches (b, H, W, 3) of the image's dtype and returns
        (b, K) probabilities.  ``masks`` (num_samples, F) uint8 replaces the random
        coalitions (row 0 should be all ones: the instance).  Other arguments as lime.  With
        ``draws="lime"`` and the same ``random_state``, the explanation is lime's.
        """
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3:
            raise ValueError(f"image must be (H, W, C) or (H, W), got shape {image.shape}")
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if random_seed is None:
            random_seed = self.random_state.randint(0, high=1000)
        lime_draws = self.draws == "lime"
        mask_seed = None if lime_draws else int(self.random_state.randint(0, 2**31 - 1))
        if segmentation_fn is None:
            if lime_draws:  # lime's segmentation, whatever the installed scikit-image takes
                from .wrappers.scikit_image import SegmentationAlgorithm

                segmentation_fn = SegmentationAlgorithm("quickshift", kernel_size=4, max_dist=200, ratio=0.2,
                                                        random_seed=random_seed)
                segments = np.asarray(segmentation_fn(image))
            else:
                segments = M.segment_image(image, "quickshift", rng=int(random_seed))
        else:
            segments = np.asarray(segmentation_fn(image))
        H, W, C = image.shape
        if segments.shape != (H, W):
            raise ValueError(f"the segmentation must give one id per pixel, shape {(H, W)}; got {segments.shape}")
        # F = the number of distinct ids; the fill's means are per distinct id (lime's
        # fudged image); the feature map is lime's: feature j = the pixels of id j
        seg_ids, F, consecutive = _rank_ids(segments)
        x_apb = P.as_apb(np.ascontiguousarray(image), "hwc")
        if hide_color is None:
            fill = (M.segment_fill(x_apb, seg_ids, F, "mean") if image.dtype.kind != "f" or image.dtype.itemsize >= 8
                    else _narrow_float_mean_fill(x_apb, seg_ids, F))
        else:
            fill = np.ascontiguousarray(np.broadcast_to(np.asarray(hide_color, dtype=image.dtype), image.shape)
                                        ).reshape(x_apb.shape)
        if masks is not None:
            data = np.ascontiguousarray(masks, dtype=np.uint8)
            if data.shape != (num_samples, F):
                raise ValueError(f"masks must be ({num_samples}, {F}), got {data.shape}")
        elif lime_draws:
            data = P.lime_coin_flips(self.random_state, num_samples * F, backend=self.backend).reshape(
                (num_samples, F))
            data[0] = 1
        else:
            data = P.sample_masks(num_samples, F, mask_seed, first_row_ones=True, backend=self.backend)
        _check_metric(distance_metric)  # after lime's draws, before the classifier
        metric = _kernel_metric(distance_metric)
        yss = self._predict(image, x_apb, fill, segments, seg_ids, F, consecutive, data, classifier_fn,
                            batch_size, progress_bar)
        # other metrics: scikit-learn's distances of lime's (int64) coalitions to row 0
        distances = None if metric else _sklearn_distances(data.astype(np.int64), distance_metric)
        # the segmentation as given (lime's): feature f is the pixels where segments == f
        exp = ImageExplanation(image, segments)
        top = labels
        if top_labels:
            top = np.argsort(yss[0])[-top_labels:]
            exp.top_labels = list(top)
            exp.top_labels.reverse()
        return self.base.fit(exp, data, yss, distances, top, num_features, model_regressor, metric=metric)


    def data_labels(self, image, fudged_image, segments, classifier_fn, num_samples, batch_size=10):
        """lime's ``data_labels``: ``num_samples`` coalitions of the segments drawn from
        ``random_state`` (lime's draws; row 0 all ones) and ``classifier_fn``'s outputs on the
        images with the hidden segments taken from ``fudged_image``; (data, labels)."""
        image = np.asarray(image)
        H, W, C = image.shape
        segments = np.asarray(segments)
        if segments.shape != (H, W) or np.shape(fudged_image) != image.shape:
            raise ValueError(f"segments must be {(H, W)} and fudged_image {image.shape}, got {segments.shape} and "
                             f"{np.shape(fudged_image)}")
        seg_ids, F, consecutive = _rank_ids(segments)
        data = self.random_state.randint(0, 2, num_samples * F).reshape((num_samples, F))
        data[0, :] = 1
        x_apb = P.as_apb(np.ascontiguousarray(image), "hwc")
        fill = np.ascontiguousarray(np.asarray(fudged_image, dtype=image.dtype)).reshape(x_apb.shape)
        labels = self._predict(image, x_apb, fill, segments, seg_ids, F, consecutive, data.astype(np.uint8),
                               classifier_fn, batch_size, False, check=False)
        return data, labels

    def _predict(self, image, x_apb, fill, segments, seg_ids, F, consecutive, data, classifier_fn, batch_size,
                 progress_bar, check=True):
        """``classifier_fn`` on every coalition's image, in batches: (num_samples, K)."""
        H, W, C = image.shape
        num_samples = data.shape[0]
        preds = []
        bs = max(1, int(batch_size))
        bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_samples)
        if consecutive:
            builder = P.PerturbedBuilder(x_apb, fill, seg_ids, backend=self.backend)
            fill_rows = builder.batches(data)
        else:
            feat = _lime_feature_map(segments, F)
            # pixels of no feature take a last mask column that is always 1 (never hidden)
            cols = np.hstack([data, np.ones((num_samples, 1), np.uint8)]) if feat.max() == F else data
            builder = P.PerturbedBuilder(x_apb, fill, feat, backend=self.backend)
            fill_rows = builder.batches(cols)
        dt = image.dtype
        # One buffer for every batch (the builder rewrites all of it each time, so a classifier
        # that scribbles on its input changes nothing), unless classifier_fn kept a reference to
        # it (stored the batch or a view of it, or returned one): then the next batch gets a
        # fresh buffer, so what the classifier kept is never overwritten.  The buffer may be a
        # view (placed in memory for the blend): NumPy points views of it at its owner, so
        # the owner's references count too.
        buf = owner = None
        held = 2
        for s0 in range(0, num_samples, bs):
            s1 = min(num_samples, s0 + bs)
            if buf is None or len(buf) != s1 - s0:
                buf = builder.new_out((s1 - s0, H, W, C), dt)
                owner = buf if buf.base is None else buf.base
                held = 2 if owner is buf else 3  # owner: our name, the argument (and buf.base)
            out = classifier_fn(fill_rows(s0, s1, buf))
            if type(out) is not np.ndarray:
                out = np.asarray(out)
            if out.ndim != 2 or out.shape[0] != s1 - s0:
                raise ValueError(f"classifier_fn must return one row of class probabilities per image (rows = "
                                 f"images): ({s1 - s0}, K) expected, got shape {out.shape}")
            preds.append(out)
            out = None
            if sys.getrefcount(buf) > 2 or sys.getrefcount(owner) > held:
                buf = owner = None
            if bar is not None:
                bar.update(s1 - s0)
        if bar is not None:
            bar.close()
        yss = np.concatenate(preds)
        return _check_outputs(yss, num_samples, backend=self.backend) if check else yss


# ------------------------------------------------------------------------------- explanation
class DomainMapper:
    """lime's ``DomainMapper``: feature ids -> names (``map_exp_ids``) and the instance's
    view in lime's JavaScript page (``visualize_instance_html``), both to override; plus
    ``instance_html``, the instance's view in :meth:`Explanation.as_html`'s page."""

    def __init__(self):
        pass

    def map_exp_ids(self, exp, **kwargs):
        """``exp`` as given: (id, weight) pairs."""
        return exp

    def visualize_instance_html(self, exp, label, div_name, exp_object_name, **kwargs):
        """JavaScript drawing the instance with lime's bundled script: ``''`` here."""
        return ""

    def instance_html(self, exp, label, **kwargs):
        """HTML (no JavaScript) of the instance for :meth:`Explanation.as_html`: ``''`` here.

        Parameters
        ----------
        exp : list of (int, float)
            (feature id, weight) pairs of ``label``.
        label : int
        **kwargs
            ``as_html``'s keyword arguments (the mapper's options).
        """
        return ""


class Explanation:
    """lime's ``Explanation``: ``local_exp``, ``intercept``, ``score``, ``local_pred``,
    ``predict_proba``, ``top_labels``, ``as_list``, ``as_map``, ``available_labels``,
    ``as_pyplot_figure``."""

    def __init__(self, domain_mapper, mode="classification", class_names=None, random_state=None):
        self.random_state = random_state
        self.mode = mode
        self.domain_mapper = domain_mapper
        self.local_exp: Dict[int, list] = {}
        self.intercept: Dict[int, float] = {}
        self.score = None
        self.local_pred = None
        if mode == "classification":
            self.class_names = class_names
            self.top_labels = None
            self.predict_proba = None
        elif mode == "regression":
            self.class_names = ["negative", "positive"]
            self.predicted_value = None
            self.min_value = 0.0
            self.max_value = 1.0
            self.dummy_label = 1
        else:
            raise LimeError(f'Invalid explanation mode "{mode}". Should be either "classification" or "regression".')

    def available_labels(self):
        if self.mode != "classification":
            raise NotImplementedError("Not supported for regression explanations.")
        return list(self.top_labels if self.top_labels else self.local_exp.keys())

    def as_list(self, label=1, **kwargs):
        lab = label if self.mode == "classification" else self.dummy_label
        return [(a, float(b)) for a, b in self.domain_mapper.map_exp_ids(self.local_exp[lab], **kwargs)]

    def as_map(self):
        return self.local_exp

    def as_html(self, labels=None, predict_proba=True, show_predicted_value=True, **kwargs):
        """The explanation as a self-contained HTML page (inline HTML and CSS, no JavaScript).

        Parameters
        ----------
        labels : iterable of int, optional
            Labels whose weights to chart (classification); every available label when None.
        predict_proba : bool, default True
            Show the prediction probabilities of the top classes (classification).
        show_predicted_value : bool, default True
            Show the predicted value within the neighbourhood's range (regression).
        **kwargs
            Passed to the domain mapper's ``instance_html``: ``show_table``, ``show_all``
            (tabular), ``text``, ``opacity`` (text), as lime's ``visualize_instance_html``.

        Returns
        -------
        str
            The page: the prediction, one bar chart of feature weights per label, and the
            instance (the first label's weights tint it).  lime's page shows the same parts
            drawn by its bundled d3 script; as lime's, making it draws the 15-character id of
            the page's div from ``random_state``.
        """
        from ._html import explanation_html

        return explanation_html(self, labels=labels, predict_proba=predict_proba,
                                show_predicted_value=show_predicted_value, **kwargs)

    def save_to_file(self, file_path, labels=None, predict_proba=True, show_predicted_value=True, **kwargs):
        """Write :meth:`as_html`'s page (UTF-8) to ``file_path``; other arguments as :meth:`as_html`."""
        with open(file_path, "w", encoding="utf8") as fh:
            fh.write(self.as_html(labels=labels, predict_proba=predict_proba,
                                  show_predicted_value=show_predicted_value, **kwargs))

    def show_in_notebook(self, labels=None, predict_proba=True, show_predicted_value=True, **kwargs):
        """Display :meth:`as_html`'s page in a Jupyter notebook (needs IPython); arguments as
        :meth:`as_html`."""
        try:
            from IPython.display import HTML, display
        except ImportError as e:
            raise ImportError("show_in_notebook needs IPython (pip install ipython); as_html() and save_to_file() "
                              "give the page without it") from e
        display(HTML(self.as_html(labels=labels, predict_proba=predict_proba,
                                  show_predicted_value=show_predicted_value, **kwargs)))

    def as_pyplot_figure(self, label=1, **kwargs):
        import matplotlib.pyplot as plt

        exp = self.as_list(label=label, **kwargs)
        fig = plt.figure()
        vals = [v for _, v in exp][::-1]
        names = [n for n, _ in exp][::-1]
        pos = np.arange(len(exp)) + 0.5
        plt.barh(pos, vals, align="center", color=["green" if v > 0 else "red" for v in vals])
        plt.yticks(pos, names)
        plt.title(f"Local explanation for class {self.class_names[label]}" if self.mode == "classification"
                  else "Local explanation")
        return fig


# ----------------------------------------------------------------------------------- tabular
class TableDomainMapper(DomainMapper):
    def __init__(self, feature_names, feature_values, scaled_row, categorical_features,
                 discretized_feature_names=None, feature_indexes=None):
        self.exp_feature_names = feature_names
        self.discretized_feature_names = discretized_feature_names
        self.feature_names = feature_names
        self.feature_values = feature_values
        self.feature_indexes = feature_indexes
        self.scaled_row = scaled_row
        self.categorical_features = categorical_features
        self.all_categorical = False if _is_sparse(scaled_row) else len(categorical_features) == len(scaled_row)

    def map_exp_ids(self, exp, **kwargs):
        names = self.discretized_feature_names if self.discretized_feature_names is not None else self.exp_feature_names
        return [(names[i], w) for i, w in exp]

    def visualize_instance_html(self, exp, label, div_name, exp_object_name, show_table=True, show_all=False):
        """lime's JavaScript call that shows the instance's feature table.

        Parameters
        ----------
        exp : list of (int, float)
            (feature id, weight) pairs.
        label : int
        div_name, exp_object_name : str
            JavaScript names of the div to draw in and of lime's explanation object.
        show_table : bool, default True
            If False, return ``''``.
        show_all : bool, default False
            List every feature (sparse rows: every non-zero one), not only those of ``exp``.

        Returns
        -------
        str
            ``'<exp_object_name>.show_raw_tabular([[name, value, weight], ...], label, div_name);'``
            with lime's whitespace.
        """
        if not show_table:
            return ""
        from ._html import table_rows

        return "\n            %s.show_raw_tabular(%s, %d, %s);\n        " % (
            exp_object_name, json.dumps(table_rows(self, exp, show_all), ensure_ascii=False), label, div_name)

    def instance_html(self, exp, label, show_table=True, show_all=False):
        """The instance's table of feature values, tinted by weight, for :meth:`Explanation.as_html`
        (``show_table``, ``show_all`` as :meth:`visualize_instance_html`)."""
        from ._html import table_instance_html

        return table_instance_html(self, exp, label, show_table=show_table, show_all=show_all)


def _is_sparse(a) -> bool:
    try:
        import scipy.sparse as sps
    except ImportError:  # pragma: no cover
        return False
    return sps.issparse(a)


_STAT_KEYS = ("means", "mins", "maxs", "stds", "feature_values", "feature_frequencies")


def _stats_discretizer(stats, to_discretize, feature_names, random_state):
    """lime's ``StatsDiscretizer``: bin edges and per-bin statistics from
    ``training_data_stats`` (edges paired with the features to discretise in order, as lime's
    ``zip``)."""
    by_feature = stats.get("bins") or {}
    bins = [np.unique(np.asarray(by_feature[d], dtype=np.float64)) for d in to_discretize
            if by_feature.get(d) is not None]
    edges, st = {}, {}
    for d, qts in zip(to_discretize, bins):
        if qts.size == 0:
            raise ValueError(f"training_data_stats: feature {d} has no bin edges")
        edges[d] = qts
        st[d] = tuple(np.asarray(stats[k][d], dtype=np.float64) for k in ("means", "stds", "mins", "maxs"))
    disc = StatsDiscretizer._adopt(edges, st, feature_names, random_state=random_state, data_stats=stats)
    # lime keeps the given dicts themselves, and its undiscretize loops over every feature of
    # ``means``: a categorical feature with statistics is "undiscretised" too (its values read
    # as bin indices), which the draws="lime" neighbourhood reproduces
    disc.means, disc.stds, disc.mins, disc.maxs = (stats.get(k) for k in ("means", "stds", "mins", "maxs"))
    return disc


_DISCRETIZERS = {"quartile": QuartileDiscretizer, "decile": DecileDiscretizer, "entropy": EntropyDiscretizer}


def _binning_of(disc) -> "M.Binning":
    """A lime discretizer (any ``BaseDiscretizer``, duck-typed: ``lambdas``, ``means``,
    ``stds``, ``mins``, ``maxs``, ``discretize``) as the sampler's bins."""
    feats = [int(d) for d in disc.lambdas]
    stats = {d: (disc.means[d], disc.stds[d], disc.mins[d], disc.maxs[d]) for d in feats}
    return M.Binning(discretize=disc.discretize, stats=stats)


class _SparseSampler:
    """lime's neighbourhood for scipy-sparse data (no discretisation, as lime): continuous
    features drawn from ``N(mean, std)`` (``N(x, std)`` around the instance) at the row's
    non-zero columns only (all columns for a dense row), categorical features from their
    training frequencies; ``scaled = data ⊙ scale`` as lime computes it."""

    def __init__(self, mean, scale, categorical, feature_values, feature_frequencies, sample_around_instance):
        self.mean, self.scale = mean, scale
        self.categorical = list(categorical)
        self.values, self.freqs = feature_values, feature_frequencies
        self.sample_around_instance = sample_around_instance

    def sample(self, row, n, seed, stream):
        import scipy.sparse as sps

        rng = np.random.default_rng([seed, stream])
        sparse = sps.issparse(row)
        D = row.shape[1] if sparse else row.shape[0]
        if sparse:
            row = row.tocsr()
            nz = np.sort(row.nonzero()[1])
            inst = row[:, nz].toarray().reshape(-1)
        else:
            nz = np.arange(D)
            inst = row
        z = rng.standard_normal((n, nz.size))
        vals = z * self.scale[nz] + (inst if self.sample_around_instance else self.mean[nz])
        if sparse:
            data = sps.csr_matrix((vals.reshape(-1), np.tile(nz, n), np.arange(n + 1) * nz.size), shape=(n, D))
            data = data.tolil()
            data[0] = row
            data = data.tocsr() if not self.categorical else data
        else:
            data = vals
            data[0] = row
        inverse = data.copy()
        first = row.toarray().reshape(-1) if sparse else row
        for c in self.categorical:
            col = rng.choice(self.values[c], size=n, replace=True, p=self.freqs[c])
            binary = (col == first[c]).astype(int)
            binary[0] = 1
            col[0] = first[c]
            data[:, c] = binary[:, None] if sparse else binary
            inverse[:, c] = col[:, None] if sparse else col
        if sparse:
            data, inverse = data.tocsr(), inverse.tocsr()
            scaled = data.multiply(self.scale).tocsr()
        else:
            scaled = data * self.scale
        return data, inverse, scaled


def _row_distances(scaled, metric):
    """lime's ``pairwise_distances(scaled, scaled[0])`` (euclidean by the dot-product form,
    cosine with zero rows at distance 1), for dense or sparse ``scaled``."""
    if _is_sparse(scaled):
        scaled = scaled.tocsr()
        n = scaled.shape[0]
        # row sums of squares accumulated in storage order, as sklearn's row_norms
        rows = np.repeat(np.arange(n), np.diff(scaled.indptr))
        sq = np.bincount(rows, weights=scaled.data * scaled.data, minlength=n)
        dot = np.asarray((scaled @ scaled[0].T).toarray()).reshape(-1)
    else:
        sq = np.einsum("ij,ij->i", scaled, scaled)
        dot = scaled @ scaled[0]
    if metric == "euclidean":
        d = -2.0 * dot  # sklearn's order of operations (rounding included)
        d += sq
        d += sq[0]
        return np.sqrt(np.maximum(d, 0.0))
    if metric == "cosine":
        nrm = np.sqrt(sq)
        den = nrm * nrm[0]
        sim = np.divide(dot, den, out=np.zeros_like(dot), where=den > 0)
        return np.clip(1.0 - sim, 0.0, 2.0)
    raise ValueError(f"the kernels compute 'euclidean' or 'cosine' distances, got {metric!r}")


class _Scaler:
    """``StandardScaler(with_mean=False)``'s fitted attributes and ``transform`` without
    scikit-learn (dense data)."""

    with_mean, with_std, copy = False, True, True

    def __init__(self, X):
        X = np.asarray(X, dtype=np.float64)
        self.n_samples_seen_ = X.shape[0]
        self.n_features_in_ = X.shape[1]
        self.mean_ = X.mean(0)
        self.var_ = X.var(0)
        scale = np.sqrt(self.var_)
        self.scale_ = np.where(scale < 10 * np.finfo(np.float64).eps, 1.0, scale)

    def transform(self, X, copy=None):
        return np.asarray(X, dtype=np.float64) / self.scale_


def _fit_scaler(X, categorical):
    """lime's ``scaler``: ``StandardScaler(with_mean=False).fit(X)``, then ``mean_`` 0 and
    ``scale_`` 1 at the ``categorical`` features."""
    try:
        from sklearn.preprocessing import StandardScaler
    except ImportError:  # pragma: no cover  (lime itself needs scikit-learn)
        scaler = _Scaler(X)
    else:
        scaler = StandardScaler(with_mean=False).fit(X)
    for f in categorical:
        if scaler.mean_ is not None:  # None for sparse data
            scaler.mean_[f] = 0
        scaler.scale_[f] = 1
    return scaler


class LimeTabularExplainer:
    """lime's ``LimeTabularExplainer`` on Numba kernels.

    Constructor arguments as lime: ``training_data`` (dense, or scipy-sparse: then sampled
    as lime does, without discretisation), ``mode, training_labels, feature_names,
    categorical_features, categorical_names, kernel_width, kernel, verbose, class_names,
    feature_selection, discretize_continuous, discretizer`` ('quartile' | 'decile' |
    'entropy' | a lime discretizer object), ``sample_around_instance, random_state,
    training_data_stats``; plus ``backend`` and ``draws``.  Attributes as lime:
    ``feature_names``, ``categorical_features``, ``feature_values``, ``feature_frequencies``,
    ``discretizer``, ``class_names``, ``random_state``, ``scaler`` (fitted on first access);
    static methods ``convert_and_round`` and ``validate_training_data_stats`` (which raises
    ``ValueError`` where lime raises a plain ``Exception``).

    ``draws="counter"`` (default): the neighbourhood comes from one fused Numba kernel on the
    package's counter-based generator (lime's sampling law; reproducible, not lime's draws).
    ``draws="lime"``: lime's own draws from ``random_state`` (the normals, the training-value
    choices, then each bin's truncated normal through the discretizer's generator), so for
    the same ``random_state`` a row's explanation is lime's to rounding (the truncated
    normals by inverse CDF instead of scipy's).  As in lime, the entropy discretizer's trees
    draw their seeds from the explainer's generator, one per feature, and a training column
    constant at a non-zero value reaches the model as lime's z-score 0.0 (its zero-width-bin
    quirk, see :mod:`xaikernels.lime.discretize`; the counter draws give such a column its
    value).  Dense training data only: with scipy-sparse data, where lime's own sampling
    fails for many rows, ``draws="lime"`` raises ``ValueError``.  6.8 ms of library time
    against 0.48 ms for ``"counter"`` in the same run at 5000 × 20 (one thread,
    ``bench/results/lime_parts.md``), lime's 23 ms in ``lime.md``;
    ``bench/fuzz_dropins.py`` compares the explanations with lime's on random
    configurations.

    ``training_data_stats`` whose ``means`` (``stds``, ``mins``, ``maxs``) also hold a
    categorical feature: lime's discretizer "undiscretises" every feature of ``means``, so the
    model sees truncated-normal draws at that categorical column (its values read as bin
    indices).  ``draws="lime"`` reproduces this (and lime's stream); ``draws="counter"``, on
    purpose, hands the model the categorical values themselves.
    """

    def __init__(self, training_data, mode="classification", training_labels=None, feature_names=None,
                 categorical_features=None, categorical_names=None, kernel_width=None, kernel=None,
                 verbose=False, class_names=None, feature_selection="auto", discretize_continuous=True,
                 discretizer="quartile", sample_around_instance=False, random_state=None,
                 training_data_stats=None, *, backend: str = "auto", draws: str = "counter"):
        if mode not in ("classification", "regression"):
            raise ValueError(f"mode must be 'classification' or 'regression', got {mode!r}")
        _check_draws(draws)
        self.draws = draws
        self.random_state = _check_random_state(random_state)
        self.mode = mode
        self.backend = backend
        self.categorical_names = categorical_names or {}
        self.sample_around_instance = sample_around_instance
        self.training_data_stats = training_data_stats
        if training_data_stats:
            self.validate_training_data_stats(training_data_stats)
        sparse = _is_sparse(training_data)
        given = training_data  # lime's scaler is fitted on the data as given (float32 stays float32)
        if sparse and draws == "lime":
            raise ValueError("draws='lime' replays lime's sampling of dense training data only (lime's sampler "
                             "fails on many sparse rows); use draws='counter' with scipy-sparse training data")
        if not sparse:
            training_data = np.asarray(training_data, dtype=np.float64)
            if training_data.ndim != 2:
                raise ValueError(f"training_data must be (n_rows, n_features), got shape {training_data.shape}")
        D = training_data.shape[1]
        self.categorical_features = [] if categorical_features is None else [int(c) for c in categorical_features]
        user_cat = list(self.categorical_features)
        self.feature_names = list(feature_names) if feature_names is not None else [str(i) for i in range(D)]
        self.class_names = class_names
        self.discretizer = None
        self._sparse = None
        disc_obj = None
        binning = value_table = None
        if discretize_continuous and not sparse:
            to_disc = [d for d in range(D) if d not in self.categorical_features]
            if training_data_stats:
                disc_obj = _stats_discretizer(training_data_stats, to_disc, self.feature_names,
                                              self.random_state)
            elif not isinstance(discretizer, str):
                if not all(hasattr(discretizer, a) for a in ("lambdas", "names", "means", "stds", "mins", "maxs",
                                                            "discretize")):
                    raise ValueError("Discretizer must be 'quartile', 'decile', 'entropy' or a BaseDiscretizer "
                                     "instance")
                disc_obj = discretizer
            elif discretizer not in ("quartile", "decile", "entropy"):
                raise ValueError("Discretizer must be 'quartile', 'decile', 'entropy' or a BaseDiscretizer instance")
            if disc_obj is not None:
                binning = _binning_of(disc_obj)
            self.categorical_features = list(range(D))
        if training_data_stats and self.categorical_features:
            fv, ff = training_data_stats["feature_values"], training_data_stats["feature_frequencies"]
            value_table = {d: (fv[d], ff[d]) for d in self.categorical_features}
        if sparse:
            self._init_sparse(training_data)
        else:
            self.sampler = M.TabularSampler(
                training_data, user_cat, discretize_continuous,
                discretizer if isinstance(discretizer, str) else "quartile", training_labels, sample_around_instance,
                # the entropy trees take the explainer's generator itself, as in lime: each
                # tree's fit draws its seed from it, so the draws after them are lime's
                random_state=self.random_state
                if discretize_continuous and disc_obj is None and discretizer == "entropy" else 0,
                binning=binning, value_table=value_table)
            self.feature_values, self.feature_frequencies = {}, {}
            for d in self.categorical_features:
                vals, freq = self.sampler.value_table[d]
                self.feature_values[d] = [v.item() for v in (vals.astype(np.int64) if d in self.sampler.binned
                                                            else vals)]
                self.feature_frequencies[d] = np.asarray(freq, dtype=np.float64)
            if discretize_continuous:
                self.discretizer = disc_obj if disc_obj is not None else _DISCRETIZERS[discretizer]._adopt(
                    self.sampler.bins, self.sampler.bin_stats, self.feature_names, random_state=self.random_state)
        self._disc_seeded = disc_obj is not None and disc_obj is discretizer and isinstance(
            getattr(disc_obj, "random_state", None), np.random.RandomState)
        if kernel_width is None:
            kernel_width = np.sqrt(D) * 0.75
        self.feature_selection = feature_selection
        self.base = _fitter(kernel, kernel_width, feature_selection, verbose, backend)
        self._names = dict(self.discretizer.names) if self.discretizer is not None else {}
        # lime's fitted StandardScaler, built on first use (scikit-learn's import is slow)
        self._scaler, self._scaler_data = None, given

    @property
    def scaler(self):
        """lime's ``scaler``: ``StandardScaler(with_mean=False)`` fitted on the training data,
        with ``mean_`` 0 and ``scale_`` 1 at the categorical features (all of them once
        discretised); scikit-learn's when importable, else an object with the same fitted
        attributes and ``transform``.  Fitted on first access (the sampler keeps its own
        statistics and never reads it)."""
        if self._scaler is None:
            self._scaler = _fit_scaler(self._scaler_data, self.categorical_features)
            self._scaler_data = None
        return self._scaler

    @scaler.setter
    def scaler(self, value):
        self._scaler, self._scaler_data = value, None

    @staticmethod
    def convert_and_round(values):
        """``values`` as strings with two decimals (lime's display of a row)."""
        return ["%.2f" % v for v in values]

    @staticmethod
    def validate_training_data_stats(training_data_stats):
        """Raise ``ValueError`` (an ``Exception``, as lime's) if ``training_data_stats`` lacks
        any of the keys ``means, mins, maxs, stds, feature_values, feature_frequencies``."""
        missing = sorted(set(_STAT_KEYS) - set(training_data_stats.keys()))
        if missing:
            raise ValueError(f"Missing keys in training_data_stats. Details: {missing}")

    def _init_sparse(self, X):
        """lime's statistics of sparse training data: ``StandardScaler(with_mean=False)``'s
        column means and standard deviations (0 → 1), categorical tables from the columns."""
        X = X.tocsc()
        n = X.shape[0]
        mean = np.asarray(X.mean(0)).reshape(-1)
        var = np.asarray(X.multiply(X).mean(0)).reshape(-1) - mean ** 2
        scale = np.sqrt(np.maximum(var, 0.0))
        scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
        self.feature_values, self.feature_frequencies = {}, {}
        for d in self.categorical_features:
            vals, counts = np.unique(X[:, d].toarray().reshape(-1), return_counts=True)
            self.feature_values[d] = vals.tolist()
            self.feature_frequencies[d] = counts / float(n)
            mean[d], scale[d] = 0.0, 1.0
        self._sparse = _SparseSampler(mean, scale, self.categorical_features, self.feature_values,
                                      self.feature_frequencies, self.sample_around_instance)

    def explain_instance(self, data_row, predict_fn, labels=(1,), top_labels=None, num_features=10,
                         num_samples=5000, distance_metric="euclidean", model_regressor=None):
        """Explain ``predict_fn``'s output on ``data_row`` (1-D, or a sparse row).  Arguments as lime."""
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        row_sparse = _is_sparse(data_row)
        metric = _kernel_metric(distance_metric)
        lime_draws = self.draws == "lime" and self._sparse is None and not row_sparse
        if not lime_draws:
            seed = int(self.random_state.randint(0, 2**31 - 1))
            # a discretizer object of the user's draws with its own generator in lime: its
            # state selects the stream, so both seeds matter
            stream = int(self.discretizer.random_state.randint(0, 2**31 - 1)) + 1 if self._disc_seeded else 0
        feature_indexes = None
        default_kernel = self.base.kernel_fn is None
        weights = gram = None
        if self._sparse is not None or row_sparse:
            if self._sparse is None:
                raise ValueError("a sparse data_row needs an explainer built on sparse training data (lime samples "
                                 "sparse rows without discretisation)")
            if not row_sparse:
                data_row = np.asarray(data_row, dtype=np.float64).reshape(-1)
            _, inverse, scaled_sp = self._sparse.sample(data_row, num_samples, seed, stream)
            _check_metric(distance_metric)
            distances = (_row_distances(scaled_sp, metric) if metric
                         else _sklearn_distances(scaled_sp.tocsr() if row_sparse else scaled_sp, distance_metric))
            scaled = scaled_sp.toarray() if row_sparse else scaled_sp
            scaled_row = scaled_sp[0]
            if row_sparse:
                row = data_row.tocsr()
                values = ["%.2f" % v for v in row.data]
                feature_indexes = row.indices
                dense_row = row.toarray().reshape(-1)
            else:
                values = ["%.2f" % v for v in data_row]
                dense_row = data_row
        elif lime_draws:
            data_row = np.asarray(data_row, dtype=np.float64).reshape(-1)
            plan = self.sampler.plan(data_row)
            scaled, inverse = self._lime_neighbourhood(data_row, num_samples)
            _check_metric(distance_metric)
            distances = _row_distances(scaled, metric) if metric else _sklearn_distances(scaled, distance_metric)
            scaled_row = scaled[0]
            values = ["%.2f" % v for v in data_row]
            dense_row = data_row
        else:
            data_row = np.asarray(data_row, dtype=np.float64).reshape(-1)
            # sampling, standardisation, distances and (lime's default kernel) the weights in
            # one kernel pass
            plan = self.sampler.plan(data_row)
            # lime's default kernel and regressor: the sampler also sums the weighted Gram of
            # the surrogate rows, and the fit only adds the label products
            # (metrics other than euclidean / cosine: scikit-learn's distances after the kernel)
            kernel_weights = default_kernel and metric is not None
            fused = kernel_weights and model_regressor is None
            nb = P.tabular_neighbourhood(num_samples, seed, plan, metric=metric or "euclidean", stream=stream,
                                         kernel_width=self.base.kernel_width if kernel_weights else None,
                                         gram=fused, binary_uint8=fused, backend=self.backend)
            scaled, inverse, distances = nb[:3]
            weights = nb[3] if kernel_weights else None
            gram = nb[4] if fused else None
            if metric is None:
                _check_metric(distance_metric)
                scaled = np.asarray(scaled, dtype=np.float64)
                distances = _sklearn_distances(scaled, distance_metric)
            scaled_row = scaled[0].astype(np.float64)
            values = ["%.2f" % v for v in data_row]
            dense_row = data_row
        yss = np.asarray(predict_fn(inverse))
        if self.mode == "classification":
            if yss.ndim == 1:
                raise _NeedsProbabilities(
                    "mode='classification' needs predict_fn to return (n_samples, n_classes) probabilities (e.g. "
                    "predict_proba), got a 1-D array: pass a probability function, or use mode='regression' for "
                    "a regressor")
            yss = _check_outputs(yss, num_samples, warn_proba=True, backend=self.backend)
            if self.class_names is None:
                self.class_names = [str(x) for x in range(yss.shape[1])]
            else:
                self.class_names = list(self.class_names)
        else:
            if yss.ndim == 2 and yss.shape[1] == 1:
                yss = yss[:, 0]
            if yss.ndim != 1:
                raise ValueError(f"mode='regression' needs predict_fn to return one value per row, got {yss.shape}")
            yss = _check_outputs(yss, num_samples, need_2d=False, backend=self.backend)
            predicted_value, min_y, max_y = yss[0], yss.min(), yss.max()
            yss = yss[:, None]
        feature_names = list(self.feature_names)
        for i in self.categorical_features:
            if i in self._names:
                continue
            name = int(dense_row[i])
            if i in self.categorical_names:
                name = self.categorical_names[i][name]
            feature_names[i] = "%s=%s" % (feature_names[i], name)
            values[i] = "True"
        disc_names = None
        cat = self.categorical_features
        if self.discretizer is not None:
            disc = plan["inst"]  # the row's bins (sampler.discretize)
            disc_names = list(feature_names)
            for f, lst in self._names.items():
                disc_names[f] = lst[int(disc[f])]
            cat = range(len(feature_names))
        mapper = TableDomainMapper(feature_names, values, scaled_row, cat, disc_names, feature_indexes)
        exp = Explanation(mapper, mode=self.mode, class_names=self.class_names)
        if self.mode == "classification":
            exp.predict_proba = yss[0]
            if top_labels:
                labels = np.argsort(yss[0])[-top_labels:]
                exp.top_labels = list(labels)
                exp.top_labels.reverse()
        else:
            exp.predicted_value, exp.min_value, exp.max_value = predicted_value, min_y, max_y
            labels = [0]
        self.base.fit(exp, scaled, yss, distances, labels, num_features, model_regressor, weights=weights,
                      gram=gram)
        if self.mode == "regression":
            exp.intercept[1] = exp.intercept[0]
            exp.local_exp[1] = list(exp.local_exp[0])
            exp.local_exp[0] = [(i, -1 * j) for i, j in exp.local_exp[1]]
        return exp


    def _lime_neighbourhood(self, row, n):
        """lime's ``__data_inverse`` for a dense row, drawing from ``random_state`` exactly as
        lime does: (standardised surrogate rows, the rows handed to the model)."""
        rs, smp = self.random_state, self.sampler
        D = row.shape[0]
        if self.discretizer is None:
            data = rs.normal(0, 1, n * D).reshape(n, D)
            data = data * smp.scale + (row if self.sample_around_instance else smp.means)
            cats, first = self.categorical_features, row
        else:
            data = np.zeros((n, D))
            cats, first = range(D), self.discretizer.discretize(row)
        data[0] = row
        inverse = data.copy()
        for c in cats:
            col = rs.choice(self.feature_values[c], size=n, replace=True, p=self.feature_frequencies[c])
            binary = (col == first[c]).astype(int)
            binary[0] = 1
            col[0] = data[0, c]
            data[:, c] = binary
            inverse[:, c] = col
        if self.discretizer is not None:
            inverse[1:] = self.discretizer.undiscretize(inverse[1:])
        inverse[0] = row
        return (data - smp.surrogate_mean) / smp.surrogate_scale, inverse


class RecurrentTabularExplainer(LimeTabularExplainer):
    """lime's ``RecurrentTabularExplainer``: tabular LIME for sequence models whose input is
    (n_samples, n_timesteps, n_features).  Training data and rows are flattened feature-major
    (``f0_t-2, f0_t-1, f0_t-0, f1_t-2, ...``, lime's names) and the perturbed rows are handed
    to the classifier reshaped back to (n, n_timesteps, n_features).  ``feature_names``
    defaults to ``"0", "1", ...`` (lime requires them).  ``backend`` and ``draws`` (keyword
    only) as :class:`LimeTabularExplainer`'s: ``draws="lime"`` gives lime's explanation for the
    same ``random_state``."""

    def __init__(self, training_data, mode="classification", training_labels=None, feature_names=None,
                 categorical_features=None, categorical_names=None, kernel_width=None, kernel=None,
                 verbose=False, class_names=None, feature_selection="auto", discretize_continuous=True,
                 discretizer="quartile", random_state=None, *, backend: str = "auto", draws: str = "counter"):
        training_data = np.asarray(training_data)
        if training_data.ndim != 3:
            raise ValueError(f"training_data must be (n_samples, n_timesteps, n_features), got shape "
                             f"{training_data.shape}")
        n, T, D = training_data.shape
        self.n_timesteps, self.n_features = T, D
        names = [str(i) for i in range(D)] if feature_names is None else list(feature_names)
        flat_names = [f"{nm}_t-{T - 1 - t}" for nm in names for t in range(T)]
        super().__init__(training_data.transpose(0, 2, 1).reshape(n, D * T), mode=mode,
                         training_labels=training_labels, feature_names=flat_names,
                         categorical_features=categorical_features, categorical_names=categorical_names,
                         kernel_width=kernel_width, kernel=kernel, verbose=verbose, class_names=class_names,
                         feature_selection=feature_selection, discretize_continuous=discretize_continuous,
                         discretizer=discretizer, random_state=random_state, backend=backend, draws=draws)

    def _make_predict_proba(self, func):
        """``func`` on flattened rows: each (n, D·T) batch reshaped to (n, T, D) first."""
        T, D = self.n_timesteps, self.n_features

        def predict_proba(X):
            return func(np.asarray(X).reshape(X.shape[0], D, T).transpose(0, 2, 1))

        return predict_proba

    def explain_instance(self, data_row, classifier_fn, labels=(1,), top_labels=None, num_features=10,
                         num_samples=5000, distance_metric="euclidean", model_regressor=None):
        """Explain ``classifier_fn`` on one sequence ``data_row`` (n_timesteps, n_features)."""
        data_row = np.asarray(data_row)
        if data_row.shape != (self.n_timesteps, self.n_features):
            raise ValueError(f"data_row must be (n_timesteps, n_features) = {(self.n_timesteps, self.n_features)}, "
                             f"got shape {data_row.shape}")
        return super().explain_instance(data_row.T.reshape(-1), self._make_predict_proba(classifier_fn),
                                        labels=labels, top_labels=top_labels, num_features=num_features,
                                        num_samples=num_samples, distance_metric=distance_metric,
                                        model_regressor=model_regressor)


# -------------------------------------------------------------------------------------- text
class _IndexedText:
    """What :class:`IndexedString` and :class:`IndexedCharacters` share: lime's word numbering,
    ``inverse_removing`` and the explainer's batch rendering.

    A subclass sets ``raw``, ``mask_string``, ``as_list`` (the raw pieces, words and
    separators, that concatenate to ``raw``), ``as_np``, ``string_start`` and ``bow``, then
    calls :meth:`_index_words`.
    """

    #: characters rendered per block of rows by :meth:`_render` (bounds its temporaries)
    _RENDER_BLOCK = 1 << 25

    def _index_words(self, values, is_separator):
        """Number the word pieces as lime does.

        Parameters
        ----------
        values : list of str
            ``as_np.tolist()``: lime reads the pieces back from ``as_np``, where NumPy's
            unicode dtype drops trailing NULs (``'a\\x00'`` indexes as ``'a'``), so words,
            separator tests and ``string_start`` see those values; ``as_list`` keeps the raw
            pieces for the rendered text.
        is_separator : callable
            ``str -> bool``, True for a piece that is not a word.

        Notes
        -----
        ``bow=True``: one id per distinct word in order of first occurrence, ``positions[id]``
        the list of its piece indices.  ``bow=False``: one id per word piece, ``positions`` the
        array of their piece indices.  ``inverse_vocab`` holds ``np.str_`` as lime's does.
        """
        separator: Dict[str, bool] = {}
        vocab: Dict[str, int] = {}
        words, positions = [], []
        piece_feature = np.full(len(values), -1, dtype=np.int64)
        for i, w in enumerate(values):
            sep = separator.get(w)
            if sep is None:
                sep = separator[w] = bool(is_separator(w))
            if sep:
                continue
            if self.bow:
                f = vocab.get(w)
                if f is None:
                    f = vocab[w] = len(words)
                    words.append(w)
                    positions.append([])
                positions[f].append(i)
            else:
                f = len(words)
                words.append(w)
                positions.append(i)
            piece_feature[i] = f
        self.inverse_vocab = [np.str_(w) for w in words]
        self.positions = positions if self.bow else np.array(positions)
        self._piece_feature = piece_feature

    def raw_string(self):
        """The original text."""
        return self.raw

    def num_words(self):
        """Number of interpretable features (distinct words with ``bow=True``, word positions otherwise)."""
        return len(self.inverse_vocab)

    def word(self, id_):
        """The word of feature ``id_``."""
        return self.inverse_vocab[id_]

    def string_position(self, id_):
        """Character offsets in the text of the occurrences of feature ``id_`` (np.ndarray)."""
        if self.bow:
            return self.string_start[self.positions[id_]]
        return self.string_start[[self.positions[id_]]]

    def inverse_removing(self, words_to_remove):
        """The text with features ``words_to_remove`` removed (``bow=True``, every occurrence)
        or replaced by ``mask_string`` (``bow=False``).

        Parameters
        ----------
        words_to_remove : sequence of int
            Feature ids.

        Returns
        -------
        str
        """
        keep = np.ones(len(self.as_list), dtype=bool)
        keep[self._pieces_of(words_to_remove)] = False
        if self.bow:
            return "".join(itertools.compress(self.as_list, keep.tolist()))
        return "".join(p if k else self.mask_string for p, k in zip(self.as_list, keep.tolist()))

    def _pieces_of(self, ids):
        if self.bow:
            return [i for f in ids for i in self.positions[f]]
        ids = np.asarray(ids)
        # lime indexes its float64 empty ``positions`` of a word-less text and fails; we do not
        return self.positions[ids] if ids.size else []

    def _render(self, masks, backend="auto"):
        """``inverse_removing`` of the zero columns of every row of ``masks``.

        Parameters
        ----------
        masks : np.ndarray
            (S, num_words()) coalitions; row ``s`` keeps feature ``f`` where ``masks[s, f] != 0``.
        backend : str
            Of :func:`xaikernels.ops.perturb.render_texts` (one kernel call per block of rows
            of about ``_RENDER_BLOCK`` characters).

        Returns
        -------
        list of str
            S texts.
        """
        return P.render_texts(self.as_list, self._piece_feature, "" if self.bow else self.mask_string, masks,
                              block_chars=self._RENDER_BLOCK, backend=backend)


class IndexedString(_IndexedText):
    """lime's ``IndexedString``: a text split into words and separators, with indexes.

    Parameters
    ----------
    raw_string : str
        The text.
    split_expression : str or callable, default ``r'\\W+'``
        A regex whose matches separate the words (the separators stay in the text), or a
        tokenizer ``str -> list of str`` returning the words in order; text between them is
        kept as separator pieces, and a piece equal to any returned token counts as a word.
    bow : bool, default True
        True: a feature is a distinct word (removing it removes every occurrence); False: a
        feature is a word position, replaced by ``mask_string`` when removed.
    mask_string : str, optional
        Replacement of removed words when ``bow=False``; ``'UNKWORDZ'`` when None.

    Attributes
    ----------
    raw : str
    as_list : list of str
        The pieces, words and separators, in order; ``''.join(as_list) == raw``.
    as_np : np.ndarray
        ``np.array(as_list)`` (a float64 empty array for an empty text, as lime).
    string_start : np.ndarray
        Character offset of each piece, computed from ``as_np`` as lime does.
    inverse_vocab : list of np.str_
        Feature id -> word.
    positions : list of list of int, or np.ndarray
        ``bow=True``: piece indices of each word's occurrences; ``bow=False``: the piece index
        of each word position.
    bow : bool
    mask_string : str

    Notes
    -----
    Same values and types as lime 0.2.0.1, with three deliberate differences: a tokenizer
    that returns an iterator is read once into a list (lime consumes it while segmenting and
    then finds no words), a token missing from the text raises ``ValueError`` (lime raises
    ``ValueError`` or ``IndexError``), and ``inverse_removing([])`` on a text without words
    returns the text with ``bow=False`` too (lime raises ``IndexError``).
    """

    def __init__(self, raw_string, split_expression=r"\W+", bow=True, mask_string=None):
        if not isinstance(raw_string, str):
            raise TypeError(f"raw_string must be a str, got {type(raw_string).__name__}")
        self.raw = raw_string
        self.mask_string = "UNKWORDZ" if mask_string is None else mask_string
        if callable(split_expression):
            tokens = list(split_expression(raw_string))
            self.as_list = M.TextIndex._around_tokens(raw_string, tokens)[0]
            token_set = set(tokens)

            def is_separator(piece):
                return piece not in token_set
        else:
            # the separators are captured so that they stay in the pieces; "|$" leaves an
            # empty match at the end, dropped with the other empty strings
            splitter = re.compile(r"(%s)|$" % split_expression)
            self.as_list = [s for s in splitter.split(raw_string) if s]

            def is_separator(piece):
                return splitter.match(piece) is not None
        self.as_np = np.array(self.as_list)
        values = self.as_np.tolist()
        self.string_start = np.hstack(([0], np.cumsum([len(v) for v in values[:-1]])))
        self.bow = bow
        self._index_words(values, is_separator)


class IndexedCharacters(_IndexedText):
    """lime's ``IndexedCharacters``: a text whose features are its characters.

    Parameters
    ----------
    raw_string : str
        The text.
    bow : bool, default True
        True: a feature is a distinct character (removing it removes every occurrence);
        False: a feature is a character position, replaced by ``mask_string`` when removed.
    mask_string : str, optional
        Replacement of removed characters when ``bow=False``; ``chr(0)`` when None.

    Attributes
    ----------
    As :class:`IndexedString`, with one piece per character and ``string_start =
    np.arange(len(raw_string))``.
    """

    def __init__(self, raw_string, bow=True, mask_string=None):
        if not isinstance(raw_string, str):
            raise TypeError(f"raw_string must be a str, got {type(raw_string).__name__}")
        self.raw = raw_string
        self.as_list = list(raw_string)
        self.as_np = np.array(self.as_list)
        self.mask_string = chr(0) if mask_string is None else mask_string
        self.string_start = np.arange(len(raw_string))
        self.bow = bow
        self._index_words(self.as_np.tolist(), lambda piece: False)


class TextDomainMapper(DomainMapper):
    """lime's ``TextDomainMapper``: feature ids -> words of ``indexed_string``.

    Parameters
    ----------
    indexed_string : IndexedString or IndexedCharacters
    """

    def __init__(self, indexed_string):
        self.indexed_string = indexed_string

    def map_exp_ids(self, exp, positions=False):
        """Words of the features in ``exp``.

        Parameters
        ----------
        exp : list of (int, float)
            (feature id, weight) pairs.
        positions : bool, default False
            If True, name each feature ``'word_p1-p2-...'`` with the character offsets of its
            occurrences.

        Returns
        -------
        list of (str, float)
        """
        idx = self.indexed_string
        if positions:
            return [("%s_%s" % (idx.word(i), "-".join(map(str, idx.string_position(i)))), w) for i, w in exp]
        return [(idx.word(i), w) for i, w in exp]

    def visualize_instance_html(self, exp, label, div_name, exp_object_name, text=True, opacity=True):
        """lime's JavaScript call that shows the text with the features of ``exp`` highlighted.

        Parameters
        ----------
        exp : list of (int, float)
            (feature id, weight) pairs.
        label : int
        div_name : str
            JavaScript name of the div to draw in.
        exp_object_name : str
            JavaScript name of lime's explanation object.
        text : bool, default True
            If False, return ``''``.
        opacity : bool, default True
            Fade the highlights with the weights.

        Returns
        -------
        str
            ``'<exp_object_name>.show_raw_text(occurrences, label, text, div_name, opacity);'``
            with lime's whitespace; ``<``, ``>`` and ``&`` in the text become ``|``.
        """
        if not text:
            return ""
        idx = self.indexed_string
        raw = idx.raw_string().encode("utf-8", "xmlcharrefreplace").decode("utf-8")
        raw = re.sub(r"[<>&]", "|", raw)
        occurrences = [(idx.word(f), int(p), w) for f, w in exp for p in idx.string_position(f)]
        return "\n            %s.show_raw_text(%s, %d, %s, %s, %s);\n            " % (
            exp_object_name, json.dumps(occurrences), label, json.dumps(raw), div_name, json.dumps(opacity))

    def instance_html(self, exp, label, text=True, opacity=True):
        """The text with the occurrences of the features of ``exp`` highlighted (green
        positive, red negative, stronger for larger weights with ``opacity``), for
        :meth:`Explanation.as_html`; ``''`` when ``text`` is False."""
        from ._html import text_instance_html

        return text_instance_html(self, exp, label, text=text, opacity=opacity)


class LimeTextExplainer:
    """lime's ``LimeTextExplainer`` on Numba kernels.

    Parameters
    ----------
    kernel_width : float, default 25
    kernel : callable, optional
        ``f(distances, kernel_width) -> weights``; lime's exponential kernel when None.
    verbose : bool, default False
    class_names : list of str, optional
    feature_selection : str, default 'auto'
        'auto', 'none', 'forward_selection', 'highest_weights' or 'lasso_path'.
    split_expression : str or callable, default ``r'\\W+'``
        See :class:`IndexedString`.
    bow : bool, default True
    mask_string : str, optional
        ``'UNKWORDZ'`` (words) or ``chr(0)`` (``char_level``) when None.
    random_state : int, np.random.RandomState or None
    char_level : bool, default False
        Features are characters (:class:`IndexedCharacters`).
    backend : str, default 'auto'
        Keyword only, not in lime: the kernels' backend.
    draws : str, default 'lime'
        Keyword only, not in lime.  ``'lime'``: lime's own draws from ``random_state`` (the
        removal sizes, then each text's removed words; NumPy's MT19937 stream replayed in a
        Numba kernel, :func:`xaikernels.ops.perturb.lime_text_draws`), so for the same
        ``random_state`` the explanation is lime's.  ``'counter'``: the package's
        counter-based generator (the same size law without the replay, which takes 8 ms per
        5000 × 94-word draws in ``bench/results/lime_parts.md``; not lime's draws).
    """

    def __init__(self, kernel_width=25, kernel=None, verbose=False, class_names=None, feature_selection="auto",
                 split_expression=r"\W+", bow=True, mask_string=None, random_state=None, char_level=False, *,
                 backend: str = "auto", draws: str = "lime"):
        _check_draws(draws)
        self.draws = draws
        self.random_state = _check_random_state(random_state)
        self.base = _fitter(kernel, kernel_width, feature_selection, verbose, backend)
        self.class_names = class_names
        self.vocabulary = None
        self.feature_selection = feature_selection
        self.bow = bow
        self.mask_string = mask_string
        self.split_expression = split_expression
        self.char_level = char_level
        self.backend = backend

    def explain_instance(self, text_instance, classifier_fn, labels=(1,), top_labels=None, num_features=10,
                         num_samples=5000, distance_metric="cosine", model_regressor=None, *, masks=None):
        """Explain ``classifier_fn`` on one text, as lime.

        Parameters
        ----------
        text_instance : str
        classifier_fn : callable
            list of S strings -> (S, K) class probabilities.
        labels : iterable of int, default (1,)
        top_labels : int, optional
            Explain the ``top_labels`` most probable classes instead of ``labels``.
        num_features : int, default 10
        num_samples : int, default 5000
            Perturbed texts, the original first.
        distance_metric : str, default 'cosine'
        model_regressor : sklearn regressor, optional
            Fitted on the selected features with ``sample_weight``; ridge (α=1) when None.
        masks : np.ndarray, optional
            Keyword only, not in lime: (num_samples, F) 0/1 coalitions replacing the random
            removals (row 0 all ones).

        Returns
        -------
        Explanation
            ``domain_mapper`` is a :class:`TextDomainMapper` over an :class:`IndexedString` (or
            :class:`IndexedCharacters` with ``char_level``).
        """
        if self.char_level:
            idx = IndexedCharacters(text_instance, bow=self.bow, mask_string=self.mask_string)
        else:
            idx = IndexedString(text_instance, split_expression=self.split_expression, bow=self.bow,
                                mask_string=self.mask_string)
        F = idx.num_words()
        if F == 0:
            raise ValueError("the text has no tokens to explain (check split_expression)")
        if masks is None and self.draws == "lime":
            data = P.lime_text_draws(self.random_state, num_samples, F, backend=self.backend)
        elif masks is None:
            seed = int(self.random_state.randint(0, 2**31 - 1))
            data = P.sample_masks(num_samples, F, seed, size_cdf=P.lime_text_size_cdf(F), first_row_ones=True,
                                  backend=self.backend)
        else:
            data = np.ascontiguousarray(masks, dtype=np.uint8)
            if data.shape != (num_samples, F):
                raise ValueError(f"masks must be ({num_samples}, {F}), got {data.shape}")
        _check_metric(distance_metric)  # after lime's draws, before the classifier
        metric = _kernel_metric(distance_metric)
        docs = [idx.raw_string()] + idx._render(data[1:], self.backend)
        yss = _check_outputs(classifier_fn(docs), num_samples, backend=self.backend)
        if metric:
            distances = P.row_distances(data, np.ones(F), metric, backend=self.backend) * 100
        else:  # lime's: scikit-learn's distances of the sparse float coalitions to row 0
            import scipy.sparse as sps

            distances = _sklearn_distances(sps.csr_matrix(data.astype(np.float64)), distance_metric) * 100
        if self.class_names is None:
            self.class_names = [str(x) for x in range(yss.shape[1])]
        exp = Explanation(TextDomainMapper(idx), class_names=self.class_names, random_state=self.random_state)
        exp.predict_proba = yss[0]
        if top_labels:
            labels = np.argsort(yss[0])[-top_labels:]
            exp.top_labels = list(labels)
            exp.top_labels.reverse()
        return self.base.fit(exp, data.astype(np.float64), yss, distances, labels, num_features, model_regressor)
