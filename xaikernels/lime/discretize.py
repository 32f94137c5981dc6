"""lime's discretizers (``lime.discretize``): bin edges per continuous feature, lime's bin
names, per-bin statistics, and ``undiscretize`` drawing values from each bin's truncated normal.

``QuartileDiscretizer``, ``DecileDiscretizer``, ``EntropyDiscretizer`` (a depth-3 entropy tree
per feature; needs scikit-learn, as lime) and ``StatsDiscretizer`` (edges and statistics from
``data_stats``) subclass ``BaseDiscretizer``, whose ``bins(data, labels)`` a custom
discretizer overrides.  Attributes as lime: ``to_discretize``, ``names``, ``lambdas``,
``means``, ``stds``, ``mins``, ``maxs``, ``random_state``, ``data_stats``.

``undiscretize`` draws by inverse CDF, one ``random_state.uniform`` per value of a bin of
non-zero width mapped onto the bin's ``[Φ(a), Φ(b)]`` — what scipy's ``truncnorm.rvs`` does
for lime, so the generator advances as lime's and the values equal lime's to rounding
(without scipy).  A bin of zero width gives what lime's gives: the z-score of its edge,
``(min - mean) / std`` (lime returns ``minz`` unscaled, so a training column constant at 1.5
comes back as 0.0, and the model sees 0.0).  Kept for the drop-in's sake: with
``draws="lime"`` the explainer's neighbourhood is lime's.  The explainer's own counter-based
sampler (the default draws) gives such a bin its edge value instead.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from xaikernels.methods.lime import bin_stats, entropy_edges

from ._rng import _check_random_state

__all__ = ["BaseDiscretizer", "StatsDiscretizer", "QuartileDiscretizer", "DecileDiscretizer",
           "EntropyDiscretizer"]


def _bin_names(name, qts):
    """lime's bin labels for one feature with edges ``qts``."""
    lst = ["%s <= %.2f" % (name, qts[0])]
    for i in range(len(qts) - 1):
        lst.append("%.2f < %s <= %.2f" % (qts[i], name, qts[i + 1]))
    lst.append("%s > %.2f" % (name, qts[-1]))
    return lst


def _edge_probs(mean, std, lo, hi):
    """(flip, Φ(a), Φ(b)) of bins ``[lo, hi]`` of normals ``(mean, std)`` (a, b the edges in
    z-units); a bin above the mean is taken mirrored (``[-b, -a]``, flip) so that its
    probabilities stay away from 1."""
    import torch

    a = (lo - mean) / std
    b = (hi - mean) / std
    flip = a > 0
    pa = torch.special.ndtr(torch.from_numpy(np.where(flip, -b, a))).numpy()
    pb = torch.special.ndtr(torch.from_numpy(np.where(flip, -a, b))).numpy()
    return flip, pa, pb


def _truncnorm_inverse(u, mean, std, lo, hi, flip, pa, pb):
    """``mean + std·Φ⁻¹(Φ(a) + u·(Φ(b) − Φ(a)))`` (negated where mirrored), clipped to
    ``[lo, hi]`` against rounding: the truncated normal's draw for uniform ``u``."""
    import torch

    z = torch.special.ndtri(torch.from_numpy(pa + u * (pb - pa))).numpy()
    return np.minimum(np.maximum(mean + std * np.where(flip, -z, z), lo), hi)


class BaseDiscretizer:
    """lime's ``BaseDiscretizer(data, categorical_features, feature_names, labels=None,
    random_state=None, data_stats=None)``: subclasses define ``bins(data, labels)``, the
    inner edges of every feature in ``to_discretize`` (the columns not in
    ``categorical_features``).  ``data_stats`` (``means``, ``stds``, ``mins``, ``maxs``, by
    feature) replaces the per-bin statistics of ``data``."""

    def __init__(self, data, categorical_features, feature_names, labels=None, random_state=None,
                 data_stats=None):
        data = np.asarray(data)
        if data.ndim != 2:
            raise ValueError(f"data must be (n_rows, n_features), got shape {data.shape}")
        categorical = set(int(c) for c in categorical_features)
        self.to_discretize = [d for d in range(data.shape[1]) if d not in categorical]
        self.data_stats = data_stats
        self.random_state = _check_random_state(random_state)
        # edges pair with the features to discretise in order (lime's zip: a bins() that
        # returns fewer lists leaves the last features undiscretised)
        edges = dict(zip(self.to_discretize, (np.unique(np.asarray(q, dtype=np.float64))
                                              for q in self.bins(data, labels))))
        for d, qts in edges.items():
            if qts.size == 0:
                raise ValueError(f"feature {d}: bins() gave no edges")
        self._fill(edges, None if data_stats else {d: bin_stats(data[:, d], q) for d, q in edges.items()},
                   feature_names)
        if data_stats:  # lime keeps the given dicts themselves
            self.means, self.stds = data_stats.get("means"), data_stats.get("stds")
            self.mins, self.maxs = data_stats.get("mins"), data_stats.get("maxs")

    @classmethod
    def _adopt(cls, edges, stats, feature_names, random_state=None, data_stats=None):
        """An instance over edges and per-bin statistics computed elsewhere (the explainer's
        sampler), without ``bins()``: ``edges`` {feature: edges}, ``stats`` {feature: (means,
        stds, mins, maxs)}."""
        self = cls.__new__(cls)
        self.to_discretize = sorted(int(d) for d in edges)
        self.data_stats = data_stats
        self.random_state = _check_random_state(random_state)
        self._fill(edges, stats, feature_names)
        return self

    def _fill(self, edges, stats, feature_names):
        """lime's ``names`` and ``lambdas`` of the edges and (``stats`` given) the per-bin
        ``means``, ``stds``, ``mins``, ``maxs`` as lists."""
        self.names = {d: _bin_names(feature_names[d], q) for d, q in edges.items()}
        self.lambdas = {d: partial(np.searchsorted, np.asarray(q, dtype=np.float64)) for d, q in edges.items()}
        stats = stats or {}
        self.means = {d: list(st[0]) for d, st in stats.items()}
        self.stds = {d: list(st[1]) for d, st in stats.items()}
        self.mins = {d: list(st[2]) for d, st in stats.items()}
        self.maxs = {d: list(st[3]) for d, st in stats.items()}

    def bins(self, data, labels):
        """The inner bin edges of every feature in ``to_discretize``, in order (to override)."""
        raise NotImplementedError("Must override bins() method")

    def discretize(self, data):
        """``data`` (1-D row or 2-D rows) with every discretised feature replaced by its bin
        index (as the data's dtype)."""
        ret = np.array(data, copy=True)
        for d, f in self.lambdas.items():
            if ret.ndim == 1:
                ret[d] = int(f(ret[d]))
            else:
                ret[:, d] = f(ret[:, d]).astype(int)
        return ret

    def get_undiscretize_values(self, feature, values):
        """Draws for bin indices ``values`` of ``feature``: each from its bin's normal
        truncated to the bin, by inverse CDF of ``random_state.uniform`` — one uniform per
        value of a bin of non-zero width, in order, as lime's ``truncnorm.rvs`` consumes them,
        so the generator advances as lime's and the draws equal lime's to rounding."""
        values = np.asarray(values).astype(np.int64)
        mean = np.asarray(self.means[feature], dtype=np.float64)[values]
        std = np.asarray(self.stds[feature], dtype=np.float64)[values]
        lo = np.asarray(self.mins[feature], dtype=np.float64)[values]
        hi = np.asarray(self.maxs[feature], dtype=np.float64)[values]
        minz = (lo - mean) / std
        ret = minz.copy()  # zero-width bins: lime's z-score of the edge (module docstring)
        wide = minz != (hi - mean) / std
        u = self.random_state.uniform(size=int(np.count_nonzero(wide)))
        m, sd, a, b = mean[wide], std[wide], lo[wide], hi[wide]
        ret[wide] = _truncnorm_inverse(u, m, sd, a, b, *_edge_probs(m, sd, a, b))
        return ret

    def undiscretize(self, data):
        """Bin indices back to values: every discretised feature's bins drawn from."""
        ret = np.array(data, dtype=np.float64 if np.asarray(data).dtype.kind in "iub" else None, copy=True)
        if ret.ndim == 2 and type(self).get_undiscretize_values is BaseDiscretizer.get_undiscretize_values:
            return self._undiscretize_rows(ret)
        for d in self.means:
            if ret.ndim == 1:
                ret[d] = self.get_undiscretize_values(d, np.asarray(ret[d]).reshape(-1, 1)).reshape(-1)[0]
            else:
                ret[:, d] = self.get_undiscretize_values(d, ret[:, d])
        return ret

    def _undiscretize_rows(self, ret):
        """:meth:`get_undiscretize_values` for every feature at once: Φ of the edges per bin
        (not per value), the uniforms of all features drawn by one ``uniform`` call (the same
        stream as one call per feature, in feature order)."""
        feats = list(self.means)
        if not feats:
            return ret
        cols = []
        for d in feats:
            mean, std, lo, hi = (np.asarray(getattr(self, k)[d], dtype=np.float64)
                                 for k in ("means", "stds", "mins", "maxs"))
            cols.append((ret[:, d].astype(np.int64), mean, std, lo, hi, (lo - mean) / std != (hi - mean) / std,
                         _edge_probs(mean, std, lo, hi)))
        wide = np.stack([c[5][c[0]] for c in cols])  # (features, rows), feature-major as drawn
        u = self.random_state.uniform(size=int(np.count_nonzero(wide)))
        k = 0
        for j, (v, mean, std, lo, hi, _, (flip, pa, pb)) in enumerate(cols):
            vw = v[wide[j]]
            col = ((lo - mean) / std)[v]  # zero-width bins: lime's z-score of the edge
            col[wide[j]] = _truncnorm_inverse(u[k:k + vw.size], mean[vw], std[vw], lo[vw], hi[vw], flip[vw], pa[vw],
                                              pb[vw])
            k += vw.size
            ret[:, feats[j]] = col
        return ret


class StatsDiscretizer(BaseDiscretizer):
    """Edges from ``data_stats["bins"]`` ({feature: edges}) and per-bin statistics from
    ``data_stats`` (lime's, for ``training_data_stats``)."""

    def __init__(self, data, categorical_features, feature_names, labels=None, random_state=None,
                 data_stats=None):
        super().__init__(data, categorical_features, feature_names, labels=labels, random_state=random_state,
                         data_stats=data_stats)

    def bins(self, data, labels):
        by_feature = (self.data_stats or {}).get("bins")
        if by_feature is None:
            return []
        return [np.array(by_feature[d]) for d in self.to_discretize if by_feature.get(d) is not None]


class QuartileDiscretizer(BaseDiscretizer):
    """Edges at the training data's 25th, 50th and 75th percentiles."""

    def __init__(self, data, categorical_features, feature_names, labels=None, random_state=None):
        super().__init__(data, categorical_features, feature_names, labels=labels, random_state=random_state)

    def bins(self, data, labels):
        return [np.percentile(data[:, d], [25, 50, 75]) for d in self.to_discretize]


class DecileDiscretizer(BaseDiscretizer):
    """Edges at the training data's deciles."""

    def __init__(self, data, categorical_features, feature_names, labels=None, random_state=None):
        super().__init__(data, categorical_features, feature_names, labels=labels, random_state=random_state)

    def bins(self, data, labels):
        return [np.percentile(data[:, d], [10, 20, 30, 40, 50, 60, 70, 80, 90]) for d in self.to_discretize]


class EntropyDiscretizer(BaseDiscretizer):
    """Edges from a depth-3 entropy tree per feature, fitted on ``labels`` (required)."""

    def __init__(self, data, categorical_features, feature_names, labels=None, random_state=None):
        if labels is None:
            raise ValueError("Labels must be not None when using EntropyDiscretizer")
        super().__init__(data, categorical_features, feature_names, labels=labels, random_state=random_state)

    def bins(self, data, labels):
        return [entropy_edges(data[:, d], labels, self.random_state) for d in self.to_discretize]
