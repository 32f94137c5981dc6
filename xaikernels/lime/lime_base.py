"""lime's ``lime.lime_base``: ``LimeBase``, the surrogate fit that custom explainers build on
(``LimeBase(kernel_fn).explain_instance_with_data(data, labels, distances, label, k)``), with
feature selection and the ridge fit in :func:`xaikernels.ops.perturb.fit_surrogate`'s kernel.

Same return values as lime: ``(intercept, [(feature, weight), ...] sorted by |weight|,
score, local_pred)``.  With ``model_regressor`` the features are selected by the kernel and
the given regressor is fitted on them (as lime: fitted in place, ``sample_weight`` = the
kernel weights).  scipy-sparse data is densified.
"""
from __future__ import annotations

import numpy as np

from xaikernels.ops import perturb as P

from ._rng import _check_random_state

__all__ = ["LimeBase"]

_METHODS = ("auto", "forward_selection", "highest_weights", "lasso_path", "none")


def _dense(a):
    return np.asarray(a.toarray() if hasattr(a, "toarray") else a, dtype=np.float64)


class LimeBase:
    """``LimeBase(kernel_fn, verbose=False, random_state=None)``: ``kernel_fn`` maps distances
    to sample weights."""

    def __init__(self, kernel_fn, verbose=False, random_state=None):
        self.kernel_fn = kernel_fn
        self.verbose = verbose
        self.random_state = _check_random_state(random_state)

    @staticmethod
    def generate_lars_path(weighted_data, weighted_labels):
        """(alphas, coefs) of the LARS-lasso path (scikit-learn's ``lars_path``, as lime)."""
        from sklearn.linear_model import lars_path

        alphas, _, coefs = lars_path(weighted_data, weighted_labels, method="lasso", verbose=False)
        return alphas, coefs

    def _fit(self, data, labels, weights, num_features, method):
        if method not in _METHODS:
            raise ValueError(f"feature_selection must be one of {_METHODS}, got {method!r}")
        X = _dense(data)
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if not (X.ndim == 2 and y.shape[0] == X.shape[0] == w.shape[0]):
            raise ValueError(f"shapes disagree: data {X.shape}, labels {y.shape}, weights {w.shape}")
        k = max(1, min(int(num_features), X.shape[1]))
        return X, y, w, P.fit_surrogate(X, y, w, alpha=1.0, feature_selection=method, num_features=k)

    @staticmethod
    def _order(used, method):
        """Selected features in lime's order: selection order (forward selection; highest
        weights by decreasing |β·x0|), ascending for the lasso path and ``none``."""
        sel = np.nonzero(used)[0]
        if method in ("lasso_path", "none"):
            return sel
        return sel[np.argsort(used[sel], kind="stable")]

    def forward_selection(self, data, labels, weights, num_features):
        """Greedy forward selection by weighted R² (lime's), the features in the order added."""
        _, _, _, fit = self._fit(data, labels, weights, num_features, "forward_selection")
        return self._order(fit["used"][0], "forward_selection")

    def feature_selection(self, data, labels, weights, num_features, method):
        """The features ``method`` selects (lime's ``'none'``, ``'forward_selection'``,
        ``'highest_weights'``, ``'lasso_path'``, ``'auto'``)."""
        if method == "none":
            return np.arange(_dense(data).shape[1])
        if method == "auto":
            method = "forward_selection" if num_features <= 6 else "highest_weights"
        _, _, _, fit = self._fit(data, labels, weights, num_features, method)
        return self._order(fit["used"][0], method)

    def explain_instance_with_data(self, neighborhood_data, neighborhood_labels, distances, label, num_features,
                                   feature_selection="auto", model_regressor=None):
        """``(intercept, sorted [(feature, weight)], score, local_pred)`` of the weighted
        ridge (α = 1) of ``neighborhood_labels[:, label]`` on the selected features of
        ``neighborhood_data`` (row 0 = the instance), weights ``kernel_fn(distances)``."""
        weights = np.asarray(self.kernel_fn(distances), dtype=np.float64)
        labels_column = np.asarray(neighborhood_labels)[:, label]
        if feature_selection == "auto":
            feature_selection = "forward_selection" if num_features <= 6 else "highest_weights"
        X, y, w, fit = self._fit(neighborhood_data, labels_column, weights, num_features, feature_selection)
        sel = self._order(fit["used"][0], feature_selection)
        if model_regressor is None:
            coef = fit["coef"][0]
            exp = sorted(zip(sel, coef[sel]), key=lambda t: np.abs(t[1]), reverse=True)
            intercept = np.float64(fit["intercept"][0])
            score = float(fit["score"][0])
            local_pred = np.array([fit["local_pred"][0]])
        else:
            model_regressor.fit(X[:, sel], y, sample_weight=w)
            score = model_regressor.score(X[:, sel], y, sample_weight=w)
            local_pred = model_regressor.predict(X[0, sel].reshape(1, -1))
            exp = sorted(zip(sel, model_regressor.coef_), key=lambda t: np.abs(t[1]), reverse=True)
            intercept = model_regressor.intercept_
        if self.verbose:
            print("Intercept", intercept)
            print("Prediction_local", local_pred)
            print("Right:", np.asarray(neighborhood_labels)[0, label])
        return intercept, exp, score, local_pred
