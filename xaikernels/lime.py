"""Drop-in replacements for the ``lime`` package's explainers (lime 0.2.0.1 API).

``LimeImageExplainer``, ``LimeTabularExplainer`` and ``LimeTextExplainer`` take lime's
constructor and ``explain_instance`` arguments and return explanation objects with lime's
fields (``local_exp``, ``intercept``, ``score``, ``local_pred``, ``top_labels``, ``as_list``,
``as_map``, ``get_image_and_mask``, ...).  Sampling, perturbed-batch construction, distances,
kernel weights, feature selection and the ridge fits run in the Numba kernels of
:mod:`xaikernels.ops.perturb`; only ``classifier_fn`` is called from Python, once per batch.

Given the same coalitions (``masks=``), the numbers equal lime's (Ridge α=1, same kernel
width) to rounding.  Random draws come from a counter-based generator seeded from
``random_state``, so with the same seed the explanations are reproducible, but they are not
lime's draws.  Differences from lime, on purpose:

* lime keeps ``score`` and ``local_pred`` of the last explained label only; so do we, and
  ``score_per_label`` / ``local_pred_per_label`` add every label's values.
* a classifier whose output has the wrong shape raises ``ValueError`` (lime fails later or
  silently); rows that do not sum to 1 in classification warn, as lime's tabular explainer.
* all-zero kernel weights raise ``ValueError`` instead of fitting NaNs.
* tabular: a discretised bin of zero width yields its edge value (lime returns a z-score).
"""
from __future__ import annotations

import copy
import warnings
from functools import partial
from typing import Dict

import numpy as np

from xaikernels.methods import lime as M
from xaikernels.ops import perturb as P

__all__ = ["LimeImageExplainer", "LimeTabularExplainer", "LimeTextExplainer", "ImageExplanation",
           "Explanation"]


def _check_random_state(seed):
    if seed is None or seed is np.random:
        return np.random.mtrand._rand
    if isinstance(seed, (int, np.integer)):
        return np.random.RandomState(seed)
    if isinstance(seed, np.random.RandomState):
        return seed
    raise ValueError(f"random_state must be None, an int or a numpy RandomState, got {seed!r}")


def _default_kernel(d, kernel_width):
    return np.sqrt(np.exp(-(d ** 2) / kernel_width ** 2))


def _weights(distances, kernel_fn, kernel_width, backend):
    if kernel_fn is None:
        return P.exp_kernel(distances, kernel_width, backend=backend)
    w = np.asarray(kernel_fn(distances), dtype=np.float64)
    if w.shape != distances.shape:
        raise ValueError(f"kernel must return one weight per sample ({distances.shape}), got {w.shape}")
    return w


def _check_outputs(yss, n, mode="classification", need_2d=True, warn_proba=False, backend="auto"):
    yss = np.asarray(yss)
    if yss.dtype == object or not np.issubdtype(yss.dtype, np.number):
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


def _local_exp(coef_t, used_t):
    """lime's ``sorted(zip(used_features, coef), key=abs, reverse=True)``: a stable argsort of
    ``-|coef|`` keeps ties in selection order, as Python's reverse sort does."""
    order = np.nonzero(used_t)[0]
    order = order[np.argsort(used_t[order], kind="stable")]
    vals = coef_t[order]
    by = np.argsort(-np.abs(vals), kind="stable")
    return list(zip(order[by].tolist(), vals[by].tolist()))


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
            return ids, F
    uniq, inv = np.unique(segments, return_inverse=True)
    return inv.reshape(-1).astype(np.int64), len(uniq)


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
            return self._store(exp, fit, labels, yss)
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
            return self._store(exp, fit, labels, yss)
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

    def _store(self, exp, fit, labels, yss):
        exp.score_per_label = {}
        exp.local_pred_per_label = {}
        for j, lab in enumerate(labels):
            exp.intercept[lab] = float(fit["intercept"][j])
            exp.local_exp[lab] = _local_exp(fit["coef"][j], fit["used"][j])
            exp.score = float(fit["score"][j])
            exp.local_pred = np.array([fit["local_pred"][j]])
            exp.score_per_label[lab] = exp.score
            exp.local_pred_per_label[lab] = exp.local_pred
            if self.verbose:
                print("Intercept", exp.intercept[lab])
                print("Prediction_local", exp.local_pred)
                print("Right:", yss[0, lab])
        return exp


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
    ``verbose``, ``feature_selection='auto'``, ``random_state``; plus ``backend``.
    """

    def __init__(self, kernel_width=0.25, kernel=None, verbose=False, feature_selection="auto",
                 random_state=None, backend: str = "auto"):
        self.random_state = _check_random_state(random_state)
        self.feature_selection = feature_selection
        self.backend = backend
        self.base = _fitter(kernel, kernel_width, feature_selection, verbose, backend)

    def explain_instance(self, image, classifier_fn, labels=(1,), hide_color=None, top_labels=5,
                         num_features=100000, num_samples=1000, batch_size=10, segmentation_fn=None,
                         distance_metric="cosine", model_regressor=None, random_seed=None, masks=None,
                         progress_bar=False):
        """Explain ``classifier_fn``'s prediction on ``image`` (H, W, 3) (or (H, W) gray).

        ``classifier_fn`` receives float batches (b, H, W, 3) of the image's dtype and returns
        (b, K) probabilities.  ``masks`` (num_samples, F) uint8 replaces the random
        coalitions (row 0 should be all ones: the instance).  Other arguments as lime.
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
        mask_seed = int(self.random_state.randint(0, 2**31 - 1))
        if segmentation_fn is None:
            segments = M.segment_image(image, "quickshift", rng=int(random_seed))
        else:
            segments = np.asarray(segmentation_fn(image))
        H, W, C = image.shape
        if segments.shape != (H, W):
            raise ValueError(f"the segmentation must give one id per pixel, shape {(H, W)}; got {segments.shape}")
        # lime numbers features by their rank among the unique ids
        seg_ids, F = _rank_ids(segments)
        x_apb = P.as_apb(np.ascontiguousarray(image), "hwc")
        if hide_color is None:
            fill = M.segment_fill(x_apb, seg_ids, F, "mean")
        else:
            fill = np.ascontiguousarray(np.broadcast_to(np.asarray(hide_color, dtype=image.dtype), image.shape)
                                        ).reshape(x_apb.shape)
        if masks is None:
            data = P.sample_masks(num_samples, F, mask_seed, first_row_ones=True, backend=self.backend)
        else:
            data = np.ascontiguousarray(masks, dtype=np.uint8)
            if data.shape != (num_samples, F):
                raise ValueError(f"masks must be ({num_samples}, {F}), got {data.shape}")
        preds = []
        bs = max(1, int(batch_size))
        bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_samples)
        fill_rows = P.PerturbedBuilder(x_apb, fill, seg_ids, backend=self.backend).batches(data)
        dt = image.dtype
        for s0 in range(0, num_samples, bs):
            s1 = min(num_samples, s0 + bs)
            # a fresh buffer per call: classifier_fn may keep or modify what it is given.
            # Unless it kept the last one, np.empty gets that (cache-warm) block back.
            preds.append(classifier_fn(fill_rows(s0, s1, np.empty((s1 - s0, H, W, C), dtype=dt))))
            if bar is not None:
                bar.update(s1 - s0)
        for i, out in enumerate(preds):
            n_i = min(bs, num_samples - i * bs)
            if np.ndim(out) != 2 or np.shape(out)[0] != n_i:
                raise ValueError(f"classifier_fn must return one row of class probabilities per image (rows = "
                                 f"images): ({n_i}, K) expected, got shape {np.shape(out)}")
        if bar is not None:
            bar.close()
        yss = _check_outputs(np.concatenate(preds), num_samples, backend=self.backend)
        if distance_metric not in ("cosine", "euclidean"):
            raise ValueError(f"distance metric must be 'cosine' or 'euclidean', got {distance_metric!r}")
        # consecutive ids (identical to the input for skimage segmentations), so that feature f
        # is exactly the pixels where segments == f
        exp = ImageExplanation(image, seg_ids.reshape(H, W).astype(segments.dtype if segments.dtype.kind in "iu"
                                                                   else np.int64))
        top = labels
        if top_labels:
            top = np.argsort(yss[0])[-top_labels:]
            exp.top_labels = list(top)
            exp.top_labels.reverse()
        return self.base.fit(exp, data, yss, None, top, num_features, model_regressor, metric=distance_metric)


# ------------------------------------------------------------------------------- explanation
class _DomainMapper:
    def map_exp_ids(self, exp, **kwargs):
        return exp

    def visualize_instance_html(self, *args, **kwargs):
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
            raise ValueError(f'Invalid explanation mode "{mode}". Should be either "classification" or "regression".')

    def available_labels(self):
        if self.mode != "classification":
            raise NotImplementedError("Not supported for regression explanations.")
        return list(self.top_labels if self.top_labels else self.local_exp.keys())

    def as_list(self, label=1, **kwargs):
        lab = label if self.mode == "classification" else self.dummy_label
        return [(a, float(b)) for a, b in self.domain_mapper.map_exp_ids(self.local_exp[lab], **kwargs)]

    def as_map(self):
        return self.local_exp

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
class TableDomainMapper(_DomainMapper):
    def __init__(self, feature_names, feature_values, scaled_row, categorical_features,
                 discretized_feature_names=None):
        self.exp_feature_names = feature_names
        self.discretized_feature_names = discretized_feature_names
        self.feature_names = feature_names
        self.feature_values = feature_values
        self.scaled_row = scaled_row
        self.categorical_features = categorical_features
        self.all_categorical = len(categorical_features) == len(scaled_row)

    def map_exp_ids(self, exp, **kwargs):
        names = self.discretized_feature_names if self.discretized_feature_names is not None else self.exp_feature_names
        return [(names[i], w) for i, w in exp]


class LimeTabularExplainer:
    """lime's ``LimeTabularExplainer`` on Numba kernels (dense data).

    Constructor arguments as lime: ``training_data, mode, training_labels, feature_names,
    categorical_features, categorical_names, kernel_width, kernel, verbose, class_names,
    feature_selection, discretize_continuous, discretizer ('quartile' | 'decile' |
    'entropy'), sample_around_instance, random_state``; plus ``backend``.
    ``training_data_stats`` and custom discretizer objects are not supported (ValueError).
    """

    def __init__(self, training_data, mode="classification", training_labels=None, feature_names=None,
                 categorical_features=None, categorical_names=None, kernel_width=None, kernel=None,
                 verbose=False, class_names=None, feature_selection="auto", discretize_continuous=True,
                 discretizer="quartile", sample_around_instance=False, random_state=None,
                 training_data_stats=None, backend: str = "auto"):
        if training_data_stats is not None:
            raise ValueError("training_data_stats is not supported by xaikernels.lime; pass training_data")
        if not isinstance(discretizer, str):
            raise ValueError("xaikernels.lime supports discretizer='quartile', 'decile' or 'entropy'")
        if mode not in ("classification", "regression"):
            raise ValueError(f"mode must be 'classification' or 'regression', got {mode!r}")
        try:
            import scipy.sparse as sps

            if sps.issparse(training_data):
                raise ValueError("sparse training data is not supported by xaikernels.lime")
        except ImportError:  # pragma: no cover
            pass
        training_data = np.asarray(training_data, dtype=np.float64)
        self.random_state = _check_random_state(random_state)
        self.mode = mode
        self.backend = backend
        self.categorical_names = categorical_names or {}
        self.sample_around_instance = sample_around_instance
        D = training_data.shape[1]
        self.feature_names = list(feature_names) if feature_names is not None else [str(i) for i in range(D)]
        self.class_names = class_names
        self.sampler = M.TabularSampler(training_data, categorical_features or [], discretize_continuous,
                                        discretizer, training_labels, sample_around_instance,
                                        random_state=self.random_state.randint(0, 2**31 - 1)
                                        if discretizer == "entropy" else 0)
        self.discretizer = self.sampler if discretize_continuous else None
        self.categorical_features = list(range(D)) if discretize_continuous else list(categorical_features or [])
        if kernel_width is None:
            kernel_width = np.sqrt(D) * 0.75
        self.feature_selection = feature_selection
        self.base = _fitter(kernel, kernel_width, feature_selection, verbose, backend)
        self._names = self._bin_names()

    def _bin_names(self):
        names = {}
        for d, qts in self.sampler.bins.items():
            nm = self.feature_names[d]
            lst = ["%s <= %.2f" % (nm, qts[0])]
            for i in range(len(qts) - 1):
                lst.append("%.2f < %s <= %.2f" % (qts[i], nm, qts[i + 1]))
            lst.append("%s > %.2f" % (nm, qts[-1]))
            names[d] = lst
        return names

    def explain_instance(self, data_row, predict_fn, labels=(1,), top_labels=None, num_features=10,
                         num_samples=5000, distance_metric="euclidean", model_regressor=None):
        """Explain ``predict_fn``'s output on ``data_row`` (1-D).  Arguments as lime."""
        data_row = np.asarray(data_row, dtype=np.float64).reshape(-1)
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        seed = int(self.random_state.randint(0, 2**31 - 1))
        # sampling, standardisation, distances and (lime's default kernel) the weights in one
        # kernel pass
        plan = self.sampler.plan(data_row)
        default_kernel = self.base.kernel_fn is None
        # lime's default kernel and regressor: the sampler also sums the weighted Gram of the
        # surrogate rows, and the fit only adds the label products
        fused = default_kernel and model_regressor is None
        nb = P.tabular_neighbourhood(num_samples, seed, plan, metric=distance_metric,
                                     kernel_width=self.base.kernel_width if default_kernel else None,
                                     gram=fused, binary_uint8=fused, backend=self.backend)
        scaled, inverse, distances = nb[:3]
        weights = nb[3] if default_kernel else None
        gram = nb[4] if fused else None
        yss = np.asarray(predict_fn(inverse))
        if self.mode == "classification":
            if yss.ndim == 1:
                raise ValueError("mode='classification' needs predict_fn to return (n_samples, n_classes) "
                                 "probabilities (e.g. predict_proba); got a 1-D array. Use mode='regression' "
                                 "for a regressor")
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
        values = ["%.2f" % v for v in data_row]
        for i in self.categorical_features:
            if i in self.sampler.bins:
                continue
            name = int(data_row[i])
            if i in self.categorical_names:
                name = self.categorical_names[i][name]
            feature_names[i] = "%s=%s" % (feature_names[i], name)
            values[i] = "True"
        disc_names = None
        if self.discretizer is not None:
            disc = plan["inst"]  # the row's bins (sampler.discretize)
            disc_names = list(feature_names)
            for f, lst in self._names.items():
                disc_names[f] = lst[int(disc[f])]
        mapper = TableDomainMapper(feature_names, values, scaled[0].astype(np.float64), self.categorical_features, disc_names)
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


# -------------------------------------------------------------------------------------- text
class TextDomainMapper(_DomainMapper):
    def __init__(self, indexed_string):
        self.indexed_string = indexed_string

    def map_exp_ids(self, exp, positions=False, **kwargs):
        idx = self.indexed_string
        if positions:
            return [("%s_%s" % (idx.word(i), "-".join(map(str, idx.string_position(i)))), w) for i, w in exp]
        return [(idx.word(i), w) for i, w in exp]


class LimeTextExplainer:
    """lime's ``LimeTextExplainer`` on Numba kernels.  Constructor arguments as lime
    (``kernel_width=25, kernel, verbose, class_names, feature_selection, split_expression,
    bow, mask_string, random_state, char_level``); plus ``backend``."""

    def __init__(self, kernel_width=25, kernel=None, verbose=False, class_names=None, feature_selection="auto",
                 split_expression=r"\W+", bow=True, mask_string=None, random_state=None, char_level=False,
                 backend: str = "auto"):
        self.random_state = _check_random_state(random_state)
        self.base = _fitter(kernel, kernel_width, feature_selection, verbose, backend)
        self.class_names = class_names
        self.feature_selection = feature_selection
        self.bow = bow
        self.mask_string = mask_string
        self.split_expression = split_expression
        self.char_level = char_level
        self.backend = backend

    def explain_instance(self, text_instance, classifier_fn, labels=(1,), top_labels=None, num_features=10,
                         num_samples=5000, distance_metric="cosine", model_regressor=None, masks=None):
        """Explain ``classifier_fn`` (list of strings → (n, K) probabilities) on one text.
        ``masks`` (num_samples, F) uint8 replaces the random removals (row 0: all ones)."""
        idx = M.TextIndex(text_instance, self.split_expression, self.bow, self.mask_string, self.char_level)
        F = idx.n_features
        if F == 0:
            raise ValueError("the text has no tokens to explain (check split_expression)")
        if masks is None:
            seed = int(self.random_state.randint(0, 2**31 - 1))
            data = P.sample_masks(num_samples, F, seed, size_cdf=P.lime_text_size_cdf(F), first_row_ones=True,
                                  backend=self.backend)
        else:
            data = np.ascontiguousarray(masks, dtype=np.uint8)
            if data.shape != (num_samples, F):
                raise ValueError(f"masks must be ({num_samples}, {F}), got {data.shape}")
        docs = [text_instance] + [idx.render(r) for r in data[1:]]
        yss = _check_outputs(classifier_fn(docs), num_samples, backend=self.backend)
        distances = P.row_distances(data, np.ones(F), distance_metric, backend=self.backend) * 100
        if self.class_names is None:
            self.class_names = [str(x) for x in range(yss.shape[1])]
        exp = Explanation(TextDomainMapper(idx), class_names=self.class_names, random_state=self.random_state)
        exp.predict_proba = yss[0]
        if top_labels:
            labels = np.argsort(yss[0])[-top_labels:]
            exp.top_labels = list(labels)
            exp.top_labels.reverse()
        return self.base.fit(exp, data.astype(np.float64), yss, distances, labels, num_features, model_regressor)
