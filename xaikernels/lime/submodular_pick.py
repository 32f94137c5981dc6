"""lime's ``lime.submodular_pick``: SP-LIME (Ribeiro et al. 2016, §4), a few explanations
that together cover the features that matter across a dataset.

``SubmodularPick(explainer, data, predict_fn, method='sample', sample_size=1000,
num_exps_desired=5, num_features=10, **kwargs)`` explains the sampled rows with
``explainer.explain_instance`` (any of this package's explainers, or lime's), builds the
explanation matrix W (rows: explanations; columns: every feature name that appears; entries:
the weights, summed over the labels), the global importance ``I_j = sqrt(Σ_i |W_ij|)``, and
greedily picks explanations maximising the importance of the features they cover.  As lime:
``method='sample'`` draws the rows with NumPy's global generator (``np.random.seed`` makes it
reproducible), ties in the greedy step go to the candidate visited last, and the results are
``explanations``, ``sp_explanations`` and ``V`` (the picked indices).
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["SubmodularPick"]


class SubmodularPick:
    """SP-LIME over the explanations of ``data``'s rows (see the module docstring)."""

    def __init__(self, explainer, data, predict_fn, method="sample", sample_size=1000, num_exps_desired=5,
                 num_features=10, **kwargs):
        top_labels = kwargs.pop("top_labels", 1)
        n = len(data)
        if method == "sample":
            if sample_size > n:
                warnings.warn("Requested sample size larger than size of input data. Using all data")
                sample_size = n
            order = np.arange(n)
            np.random.shuffle(order)
            rows = order[:sample_size]
        elif method == "full":
            rows = np.arange(n)
        else:
            raise ValueError("Method must be 'sample' or 'full'")
        try:
            k = int(num_exps_desired)
        except TypeError:
            raise TypeError("Requested number of explanations should be an integer") from None

        self.explanations = [explainer.explain_instance(data[i], predict_fn, num_features=num_features,
                                                        top_labels=top_labels, **kwargs) for i in rows]
        if k > len(self.explanations):
            warnings.warn("Requested number of explanations larger than total number of explanations, returning "
                          "all explanations instead.")
        k = min(k, len(self.explanations))

        # the explanation matrix: one column per feature name, in order of first appearance
        column = {}
        entries = []
        for i, exp in enumerate(self.explanations):
            for label in (exp.available_labels() if exp.mode == "classification" else [1]):
                for name, value in exp.as_list(label=label):
                    entries.append((i, column.setdefault(name, len(column)), value))
        W = np.zeros((len(self.explanations), len(column)))
        for i, j, v in entries:
            W[i, j] += v
        nz = np.abs(W) > 0
        importance = np.sum(np.abs(W), axis=0) ** 0.5

        # greedy coverage: each step adds the explanation whose features, together with those
        # already covered, carry the most importance (candidates visited in lime's set order)
        remaining = set(range(len(self.explanations)))
        picked = []
        covered = np.zeros(len(column), dtype=bool)
        for _ in range(k):
            best, best_i = 0, None
            for i in remaining:
                gain = np.dot(covered | nz[i], importance)
                if gain >= best:
                    best, best_i = gain, i
            picked.append(best_i)
            remaining.discard(best_i)
            covered |= nz[best_i]
        self.sp_explanations = [self.explanations[i] for i in picked]
        self.V = picked
