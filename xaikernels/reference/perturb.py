"""Reference twins of the perturbation kernels (NumPy), the oracle for ``kernels/numba/perturb.py``.

Every function here has the same signature as the Numba launcher it mirrors and computes the
same thing in the plainest vectorised form:

* counter-based random numbers: ``u(seed, stream, row, j)`` is a pure function of its
  arguments (SplitMix64 finaliser over a key derived from ``seed``, ``stream``, ``row``), so
  the masks do not depend on thread count, chunking, or the order rows are produced in;
* mask sampling (Bernoulli per feature, or "coalition size from a distribution, then a
  uniform subset of that size", optionally paired with complements);
* construction of the perturbed batch from an input, a fill value and a feature map;
* distances (cosine, euclidean) and kernel weights (exponential, Shapley);
* weighted least squares / ridge for many targets at once, with lime's feature-selection
  paths.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

# SplitMix64 constants (Steele, Lea & Flood 2014).
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
TWO_M53 = 1.0 / 9007199254740992.0  # 2**-53

SELECT_CODES = {"none": 0, "highest_weights": 1, "forward_selection": 2, "lasso_path": 3}


def _mix(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.uint64)
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


def row_keys(seed: int, stream: int, rows: np.ndarray) -> np.ndarray:
    """Key of each row: ``mix(mix(mix(seed) + stream·γ) + row·γ)`` (γ the golden-ratio constant)."""
    with np.errstate(over="ignore"):
        base = _mix(np.array([np.uint64(seed % 2**64)]))
        base = _mix(base + np.uint64(stream % 2**64) * GOLDEN)
        return _mix(base + rows.astype(np.uint64) * GOLDEN)


def uniforms(keys: np.ndarray, js: np.ndarray) -> np.ndarray:
    """``u[r, j] = (mix(key_r + (j+1)·γ) >> 11) · 2^-53`` in [0, 1)."""
    with np.errstate(over="ignore"):
        z = _mix(keys[:, None] + (js.astype(np.uint64)[None, :] + np.uint64(1)) * GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * TWO_M53


def sample_masks(n_rows: int, n_features: int, seed: int, stream: int = 0, row_offset: int = 0,
                 p_on: float = 0.5, size_cdf: Optional[np.ndarray] = None, paired: bool = False,
                 first_row_ones: bool = False) -> np.ndarray:
    """Binary masks ``(n_rows, n_features)`` (uint8, 1 = feature kept) for global rows
    ``row_offset .. row_offset + n_rows - 1`` of stream ``stream``.

    Without ``size_cdf``: ``m[r, f] = [u(r, f) < p_on]``.  With ``size_cdf`` (length F+1,
    ``size_cdf[k] = P(size <= k)``): the number of kept features is the smallest ``k`` with
    ``u(r, F) < size_cdf[k]`` and the kept set is the first ``k`` entries of a partial
    Fisher-Yates shuffle of ``0..F-1`` driven by ``u(r, F+1+i)``.  ``paired``: row ``2i+1`` is
    the complement of row ``2i`` (both drawn from key ``i``).  ``first_row_ones``: global row
    0 keeps every feature (lime's convention: the first sample is the instance itself).
    """
    F = int(n_features)
    rows = np.arange(row_offset, row_offset + n_rows, dtype=np.int64)
    draw_rows = rows // 2 if paired else rows
    keys = row_keys(seed, stream, draw_rows)
    if size_cdf is None:
        m = (uniforms(keys, np.arange(F)) < p_on).astype(np.uint8)
    else:
        cdf = np.asarray(size_cdf, dtype=np.float64)
        u = uniforms(keys, np.arange(F, 2 * F + 1))
        m = np.zeros((n_rows, F), dtype=np.uint8)
        for r in range(n_rows):
            k = int(np.searchsorted(cdf, u[r, 0], side="right"))
            k = min(k, F)
            perm = np.arange(F)
            for i in range(k):
                j = i + int(math.floor(u[r, 1 + i] * (F - i)))
                perm[i], perm[j] = perm[j], perm[i]
            m[r, perm[:k]] = 1
    if paired:
        odd = (rows % 2) == 1
        m[odd] = 1 - m[odd]
    if first_row_ones:
        m[rows == 0] = 1
    return m


def build_perturbed(x: np.ndarray, fill: np.ndarray, seg: np.ndarray, masks: np.ndarray,
                    out: np.ndarray) -> np.ndarray:
    """``out[s, a, p, b] = x[a, p, b] if masks[s, seg[p]] else fill[a, p, b]``.

    ``x``, ``fill``: (A, P, B) (e.g. CHW image as (C, H·W, 1), HWC as (1, H·W, C), a feature
    vector as (1, D, 1)); ``seg``: (P,) feature index of each position; ``masks``: (S, F)
    uint8; ``out``: (S, A, P, B), same dtype as ``x``.
    """
    keep = masks[:, seg].astype(bool)  # (S, P)
    np.copyto(out, np.where(keep[:, None, :, None], x[None], fill[None]))
    return out


class Builder:
    """:func:`build_perturbed` bound to one (x, fill, seg): ``Builder(x, fill, seg)(masks, out)``."""

    def __init__(self, x, fill, seg):
        self.x, self.fill, self.seg = x, fill, seg

    def __call__(self, masks, out):
        return build_perturbed(self.x, self.fill, self.seg, masks, out)

    def batches(self, masks):
        """``fn(s0, s1, out)``: rows ``s0..s1-1`` of ``masks`` into ``out`` ((s1 - s0, ...)
        C-contiguous, ``x``'s dtype)."""
        def fn(s0, s1, out):
            self(masks[s0:s1], out.reshape((s1 - s0,) + self.x.shape))
            return out

        return fn


def feature_stats(x: np.ndarray, fill: np.ndarray, seg: np.ndarray, n_features: int) -> np.ndarray:
    """Per-feature sums ``[Σx², Σx·fill, Σfill², Σ(x-fill)²]`` over the positions of each feature:
    (F, 4) float64, enough for input-space distances of any mask (see :func:`mask_distances`)."""
    xa = x.astype(np.float64)
    fa = fill.astype(np.float64)
    idx = np.broadcast_to(seg[None, :, None], xa.shape).ravel()
    out = np.zeros((n_features, 4))
    for c, v in enumerate((xa * xa, xa * fa, fa * fa, (xa - fa) ** 2)):
        out[:, c] = np.bincount(idx, weights=v.ravel(), minlength=n_features)[:n_features]
    return out


def mask_distances(masks: np.ndarray, stats: np.ndarray, metric: str) -> np.ndarray:
    """Distance between the instance and each perturbed input, from the masks alone.

    cosine: ``1 - <x, x_s> / (|x| |x_s|)`` (a zero norm counts as similarity 0);
    euclidean: ``|x - x_s|``.  Exact rewrite of the input-space distance: kept features
    contribute ``Σx²`` (resp. 0), hidden ones ``Σx·fill`` / ``Σfill²`` (resp. ``Σ(x-fill)²``).
    """
    m = masks.astype(np.float64)
    if metric == "euclidean":
        return np.sqrt(np.maximum((1.0 - m) @ stats[:, 3], 0.0))
    if metric != "cosine":
        raise ValueError(f"unknown metric {metric!r}")
    dot = m @ stats[:, 0] + (1.0 - m) @ stats[:, 1]
    nn = m @ stats[:, 0] + (1.0 - m) @ stats[:, 2]
    nx = stats[:, 0].sum()
    den = np.sqrt(nx) * np.sqrt(np.maximum(nn, 0.0))
    sim = np.where(den > 0, dot / np.where(den > 0, den, 1.0), 0.0)
    return 1.0 - sim


def row_distances(z: np.ndarray, z0: np.ndarray, metric: str) -> np.ndarray:
    """Distance of each row of ``z`` (S, F) to ``z0`` (F,): cosine (zero norm → similarity 0,
    as scikit-learn) or euclidean."""
    z = z.astype(np.float64)
    z0 = z0.astype(np.float64)
    if metric == "euclidean":
        return np.sqrt(((z - z0) ** 2).sum(1))
    if metric != "cosine":
        raise ValueError(f"unknown metric {metric!r}")
    nz = np.sqrt((z * z).sum(1))
    n0 = math.sqrt(float((z0 * z0).sum()))
    den = nz * n0
    sim = np.where(den > 0, (z @ z0) / np.where(den > 0, den, 1.0), 0.0)
    return np.clip(1.0 - sim, 0.0, 2.0)


def exp_kernel(d: np.ndarray, width: float) -> np.ndarray:
    """lime's kernel ``sqrt(exp(-d²/width²))`` (= Captum's ``exp(-d²/(2·width²))``)."""
    return np.sqrt(np.exp(-(d * d) / (width * width)))


def shapley_kernel(masks: np.ndarray, inf_weight: float) -> np.ndarray:
    """Shapley kernel ``(F-1) / (C(F,k) k (F-k))`` of each mask's size ``k``; ``inf_weight``
    for the empty and the full coalition (where the kernel is infinite)."""
    F = masks.shape[1]
    k = masks.sum(1).astype(np.int64)
    w = np.empty(len(k))
    for i, kk in enumerate(k):
        w[i] = inf_weight if kk in (0, F) else (F - 1) / (math.comb(F, int(kk)) * kk * (F - kk))
    return w


# ----------------------------------------------------------------------------------------- fit


def _pinv_solve(A: np.ndarray, b: np.ndarray, n_rows: int) -> np.ndarray:
    """Minimum-norm solution of the normal equations (what lstsq returns for rank-deficient
    designs); eigenvalues at most ``eps · max(S, F) · λ_max`` count as zero.  That is the
    rounding noise of a Gram matrix's eigenvalues (a direction the design does not have
    shows up as ±eps·λ_max, not 0), so fewer samples than features give lstsq's
    minimum-norm answer instead of inverted noise."""
    lam, V = np.linalg.eigh(A)
    cut = np.finfo(np.float64).eps * max(n_rows, A.shape[0]) * max(lam.max(initial=0.0), 0.0)
    inv = np.where(lam > cut, 1.0 / np.where(lam > cut, lam, 1.0), 0.0)
    if b.ndim == 1:
        return V @ (inv * (V.T @ b))
    return V @ (inv[:, None] * (V.T @ b))


def _solve(A: np.ndarray, b: np.ndarray, n_rows: int) -> np.ndarray:
    """Cholesky solve of SPD ``A β = b``; falls back to the minimum-norm solution."""
    if A.shape[0] == 0:
        return np.zeros((0,) + b.shape[1:])
    try:
        L = np.linalg.cholesky(A)
        d = np.diag(L)
        if d.min() <= 1e-7 * d.max():  # numerically singular: the minimum-norm answer is stable
            raise np.linalg.LinAlgError
        z = np.linalg.solve(L, b)
        return np.linalg.solve(L.T, z)
    except np.linalg.LinAlgError:
        return _pinv_solve(A, b, n_rows)


def _gram(X, Y, w, fit_intercept):
    sw = w.sum()
    if fit_intercept:
        xbar = (w @ X) / sw
        ybar = (w @ Y) / sw
    else:
        xbar = np.zeros(X.shape[1])
        ybar = np.zeros(Y.shape[1])
    sq = np.sqrt(w)[:, None]
    Xw = (X - xbar) * sq
    Yw = (Y - ybar) * sq
    ymean = (w @ Y) / sw
    Yt = (Y - ymean) * sq
    tss = (Yt * Yt).sum(0)
    ymax = np.abs(Y).max(0) if Y.shape[0] else np.zeros(Y.shape[1])
    tss = np.where(tss <= tss_noise(sw, ymax, Y.shape[0]), 0.0, tss)
    return xbar, ybar, Xw.T @ Xw, Xw.T @ Yw, (Yw * Yw).sum(0), tss


def tss_noise(sw, ymax, n_rows):
    """The weighted total sum of squares a constant target can show from rounding alone: its
    weighted mean carries up to ~``n_rows`` ulps, so Σ w (y - ȳ)² of a constant is up to
    ``sw·(n_rows·eps·max|y|)²`` instead of 0.  A TSS at or below it is taken as 0 (a constant
    target, fitted exactly by the intercept: R² = 1), where 1 - RSS/TSS would divide rounding
    noise by rounding noise (scores of 17 for a saturated classifier)."""
    return sw * (n_rows * 2.220446049250313e-16 * ymax) ** 2


def _rss(G, b, yy, beta):
    return yy - 2.0 * beta @ b + beta @ G @ beta


def _r2(rss, tss):
    # a constant target (tss == 0, rounding noise floored by tss_noise) is fitted exactly by
    # the intercept; the Gram-form rss is then rounding noise of either sign, so report 1
    # rather than a coin flip
    if tss > 0:
        return 1.0 - rss / tss
    return 1.0


def _stable_top(v: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-np.abs(v), kind="stable")
    return order[:k]


LARS_ALPHA_EPS = float(np.finfo(np.float32).eps)  # scikit-learn's lars_path stopping tolerance


LARS_DEGENERATE = 1e-7  # scikit-learn's smallest Cholesky pivot before a regressor is dropped
_TINY32 = float(np.finfo(np.float32).tiny)
_EPS = float(np.finfo(np.float64).eps)


def _chol_of(G: np.ndarray, A: list) -> np.ndarray:
    """Lower Cholesky factor of ``G[A, A]`` built column by column as scikit-learn's LARS
    appends regressors (pivots floored at float64 eps)."""
    n = len(A)
    L = np.zeros((n, n))
    for k in range(n):
        w = _forward(L[:k, :k], G[A[k], A[:k]]) if k else np.zeros(0)
        L[k, :k] = w
        L[k, k] = max(math.sqrt(abs(G[A[k], A[k]] - _dot(w, w))), _EPS)
    return L


def _dot(a, b) -> float:
    # sequential sums (the Numba twin's order: the path's ties and 1e-7 pivots are decided
    # on the last bits, so both routes must round alike)
    t = 0.0
    for u, v in zip(a, b):
        t += u * v
    return t


def _forward(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = np.array(b, dtype=np.float64, copy=True)
    for i in range(x.shape[0]):
        t = x[i]
        for k in range(i):
            t -= L[i, k] * x[k]
        x[i] = t / L[i, i]
    return x


def _cho_solve(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    y = _forward(L, b)
    for i in range(y.shape[0] - 1, -1, -1):
        t = y[i]
        for k in range(i + 1, y.shape[0]):
            t -= L[k, i] * y[k]
        y[i] = t / L[i, i]
    return y


def _min_pos(v: np.ndarray) -> float:
    pos = v[v > 0]
    return float(pos.min()) if pos.size else np.inf


def _lars_lasso_gram(G: np.ndarray, c0: np.ndarray, n_rows: int, max_steps: int = 500) -> np.ndarray:
    """Coefficient path of the lasso by LARS (Efron et al. 2004) from the Gram matrix ``G``
    and correlations ``c0 = Xᵀy`` of ``n_rows`` rows: columns are the coefficients at each
    breakpoint, starting at 0.  Mirrors scikit-learn's ``lars_path(method='lasso')`` on
    centred, weighted data (lime's call) step for step, its safeguards and bookkeeping
    included:

    * features are kept in scikit-learn's working order (``indices``, permuted by the swaps
      that move an entering feature to the front), which decides ties in correlation;
    * the path ends once the largest correlation of an inactive feature, over ``n_rows``, is
      at most float32's eps (a target that barely varies: one column, lime keeps every
      feature), or once that correlation grows from one step to the next (rounding has
      overtaken what is left to explain);
    * a feature whose Cholesky pivot against the active set falls below 1e-7 (a duplicate or
      a combination of active columns: more features than rows, repeated tokens) does not
      enter: scikit-learn zeroes the correlation at its working position and swaps the
      correlations back but not the features, so the two that traded places also trade
      their correlations, and the path goes on;
    * an ill-conditioned active set's equiangular direction is regularised as scikit-learn
      does, and the direction's correlations are rounded to 15 decimals;
    * a coefficient crossing zero leaves the active set (its breakpoint value as computed)
      and its correlation is recomputed from the residual."""
    F = G.shape[0]
    order = list(range(F))  # scikit-learn's indices: active first, then the working order
    cov = np.array(c0, dtype=np.float64, copy=True)  # correlations of order[n_act:]
    coef = np.zeros(F)
    path = [coef.copy()]
    sign: list = []
    L = np.zeros((0, 0))
    n_act = 0
    drop = False
    prev_C = None
    n_iter = 0
    while True:
        if cov.size:
            c_idx = int(np.argmax(np.abs(cov)))
            C_ = cov[c_idx]
            C = abs(C_)
        else:
            C = 0.0
        if C / n_rows <= LARS_ALPHA_EPS or n_iter >= max_steps or n_act >= F:
            break
        if not drop:
            m, n = n_act, c_idx + n_act
            cov[c_idx], cov[0] = cov[0], cov[c_idx]
            order[n], order[m] = order[m], order[n]
            j = order[m]
            A = order[:m]
            w = _forward(L, G[j, A]) if m else np.zeros(0)
            diag = max(math.sqrt(abs(G[j, j] - _dot(w, w))), _EPS)
            if diag < LARS_DEGENERATE:
                cov[0] = 0.0
                cov[c_idx], cov[0] = cov[0], cov[c_idx]
                continue
            L2 = np.zeros((m + 1, m + 1))
            L2[:m, :m] = L
            L2[m, :m] = w
            L2[m, m] = diag
            L = L2
            cov = cov[1:]
            sign.append(float(np.sign(C_)))
            n_act += 1
        if n_iter > 0 and prev_C < C:
            break  # alpha increasing: scikit-learn's early stop
        A = np.array(order[:n_act], dtype=np.int64)
        s = np.array(sign)
        ls = _cho_solve(L, s)
        if ls.size == 1 and ls[0] == 0:
            ls[0], AA = 1.0, 1.0
        else:
            tot = _dot(ls, s)
            AA = 1.0 / math.sqrt(tot) if tot > 0 else np.inf
            i = 0
            while not np.isfinite(AA):
                L_ = L.copy()
                L_[np.diag_indices_from(L_)] += (2.0 ** i) * _EPS
                ls = _cho_solve(L_, s)
                AA = 1.0 / math.sqrt(max(_dot(ls, s), _EPS))
                i += 1
            ls = ls * AA
        inact = np.array(order[n_act:], dtype=np.int64)
        a = np.around(np.array([_dot(G[f, A], ls) for f in inact]), 15)
        gamma = min(_min_pos((C - cov) / (AA - a + _TINY32)), _min_pos((C + cov) / (AA + a + _TINY32)), C / AA)
        drop = False
        z = -coef[A] / (ls + _TINY32)
        z_pos = _min_pos(z)
        if z_pos < gamma:
            gamma = z_pos
            drop = True
            out = [int(i) for i in np.nonzero(z == z_pos)[0][::-1]]
        n_iter += 1
        prev = coef
        coef = np.zeros(F)
        coef[A] = prev[A] + gamma * ls
        cov = cov - gamma * a
        path.append(coef.copy())
        if drop:
            for ii in out:
                for i in range(ii, n_act - 1):
                    order[i], order[i + 1] = order[i + 1], order[i]
                del sign[ii]
                n_act -= 1
            A = order[:n_act]
            L = _chol_of(G, A)
            j = order[n_act]
            # the dropped feature's correlation from the residual (the remaining active set)
            cj = c0[j]
            for i in A:
                cj -= G[j, i] * coef[i]
            cov = np.r_[cj, cov]
        prev_C = C
    return np.array(path).T


def _select(code: int, G, b_t, yy_t, tss_t, x0, num_features: int, n_rows: int) -> np.ndarray:
    F = G.shape[0]
    if code == 0 or F == 0:
        return np.arange(F)
    if code == 1:  # highest_weights: ridge(α=0.01) on all features, top |coef·x0|
        beta = _solve(G + 0.01 * np.eye(F), b_t, n_rows)
        return _stable_top(beta * x0, num_features)
    if code == 2:  # forward_selection: greedy on the weighted R² of an unregularised fit
        used: list = []
        for _ in range(min(num_features, F)):
            best, best_score = 0, -1e8
            for f in range(F):
                if f in used:
                    continue
                idx = np.array(used + [f])
                beta = _solve(G[np.ix_(idx, idx)], b_t[idx], n_rows)
                sc = _r2(_rss(G[np.ix_(idx, idx)], b_t[idx], yy_t, beta) + (tss_t - yy_t), tss_t)
                if sc > best_score:
                    best, best_score = f, sc
            used.append(best)
        return np.array(used, dtype=np.int64)
    if code == 3:  # lasso_path: the last breakpoint of the LARS path with <= k nonzeros
        path = _lars_lasso_gram(G, b_t, n_rows)
        nonzero = np.arange(F)
        for i in range(path.shape[1] - 1, 0, -1):
            nonzero = np.nonzero(path[:, i])[0]
            if len(nonzero) <= num_features:
                break
        return nonzero
    raise ValueError(f"unknown selection code {code}")


def fit_surrogate(X: np.ndarray, Y: np.ndarray, w: np.ndarray, x0: np.ndarray, alpha: float,
                  fit_intercept: bool = True, select: int = 0, num_features: int = 0
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted ridge for every instance and target at once, after lime's feature selection.

    Minimises ``Σ_s w_s (y_st - c_t - x_s·β_t)² + α|β_t|²`` over the selected features (the
    intercept ``c_t`` unpenalised, as scikit-learn's ``Ridge(alpha)``; ``α = 0`` is ordinary
    weighted least squares with the minimum-norm answer for rank-deficient designs).

    Parameters
    ----------
    X : (B, S, F) float64 interpretable samples; Y : (B, S, T) float64 targets;
    w : (B, S) float64 sample weights (> 0 sum); x0 : (B, F) the row whose prediction is
    reported (lime: the first sample); alpha : ridge penalty; fit_intercept : centre first;
    select : 0 none, 1 highest_weights, 2 forward_selection, 3 lasso_path;
    num_features : k for the selection paths.

    Returns
    -------
    coef (B, T, F) (zero outside the selection), intercept (B, T), score (B, T) weighted R²,
    pred0 (B, T) surrogate prediction at ``x0``, used (B, T, F) uint8 selection order + 1
    (0 = not selected), so ``argsort`` recovers lime's ``used_features`` order.
    """
    B, S, F = X.shape
    T = Y.shape[2]
    coef = np.zeros((B, T, F))
    icpt = np.zeros((B, T))
    score = np.zeros((B, T))
    pred0 = np.zeros((B, T))
    used = np.zeros((B, T, F), dtype=np.int32)
    for bi in range(B):
        xbar, ybar, G, XY, YY, TSS = _gram(X[bi], Y[bi], w[bi], fit_intercept)
        for t in range(T):
            sel = _select(select, G, XY[:, t], YY[t], TSS[t], x0[bi], num_features, S)
            sel = np.asarray(sel, dtype=np.int64)
            beta = _solve(G[np.ix_(sel, sel)] + alpha * np.eye(len(sel)), XY[sel, t], S)
            rss = _rss(G[np.ix_(sel, sel)], XY[sel, t], YY[t], beta) + (TSS[t] - YY[t])
            coef[bi, t, sel] = beta
            c = ybar[t] - xbar[sel] @ beta
            icpt[bi, t] = c
            score[bi, t] = _r2(rss, TSS[t])
            pred0[bi, t] = c + x0[bi, sel] @ beta
            used[bi, t, sel] = np.arange(1, len(sel) + 1)
    return coef, icpt, score, pred0, used


def output_check(Y: np.ndarray) -> Tuple[bool, bool]:
    """(every value finite, every row a probability vector: entries in [0, 1] summing to 1
    within ``1e-8 + 1e-5``) for model outputs ``Y`` (S, K) float64."""
    finite = bool(np.all(np.isfinite(Y)))
    proba = bool(finite and np.all(np.abs(Y.sum(axis=1) - 1.0) <= 1e-8 + 1e-5)
                 and (Y.size == 0 or (Y.min() >= 0 and Y.max() <= 1)))
    return finite, proba


FIT_OK, FIT_NONFINITE, FIT_BAD_WEIGHTS = 0, 1, 2


def fit_lime(X: np.ndarray, Y: np.ndarray, labels: np.ndarray, wd: np.ndarray, width: float, metric: int,
             alpha: float, select: int, num_features: int):
    """One instance's LIME surrogates for the explained labels, weights included (lime's
    ``explain_instance_with_data`` for every label at once).

    ``X`` (S, F) interpretable samples (uint8 coalitions or float64), ``Y`` (S, K) all model
    outputs, ``labels`` (T,) the explained columns of ``Y``.  Sample weights: ``metric`` 0 —
    ``wd`` are the weights; 1 — ``wd`` are distances and ``w = sqrt(exp(-d²/width²))``;
    2 / 3 — cosine / euclidean distance of each row of ``X`` to the all-ones row, then the
    same kernel (``wd`` unused).  Then :func:`fit_surrogate` (intercept, ``x0`` = row 0).

    Returns (coef (T, F), intercept (T,), score (T,), pred0 (T,), used (T, F) int32,
    status): status ``FIT_NONFINITE`` for non-finite ``X``/``Y``, ``FIT_BAD_WEIGHTS`` for
    negative / non-finite / all-zero weights (outputs then unspecified), else ``FIT_OK``.
    """
    Xf = X.astype(np.float64)
    S, F = Xf.shape
    T = labels.shape[0]
    if metric == 0:
        w = np.asarray(wd, dtype=np.float64)
    else:
        d = wd if metric == 1 else row_distances(Xf, np.ones(F), "cosine" if metric == 2 else "euclidean")
        w = exp_kernel(np.asarray(d, dtype=np.float64), width)
    empty = (np.zeros((T, F)), np.zeros(T), np.zeros(T), np.zeros(T), np.zeros((T, F), dtype=np.int32))
    Yl = Y[:, labels].astype(np.float64)
    if not (np.all(np.isfinite(Xf)) and np.all(np.isfinite(Yl))):
        return empty + (FIT_NONFINITE,)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        return empty + (FIT_BAD_WEIGHTS,)
    out = fit_surrogate(Xf[None], Yl[None], w[None], Xf[:1], alpha, True, select, num_features)
    return tuple(v[0] for v in out) + (FIT_OK,)


def _gap(Xc, yc, R, beta, l1):
    XtA = Xc.T @ R
    dual_norm = float(np.abs(XtA).max(initial=0.0))
    R_norm2 = float(R @ R)
    Ry = float(R @ yc)
    primal = 0.5 * R_norm2 + l1 * float(np.abs(beta).sum())
    scale = l1 / dual_norm if dual_norm > l1 else 1.0
    dual = -0.5 * scale * scale * R_norm2 + scale * Ry
    return primal - dual, dual_norm, XtA


def _screen(Xc, R, beta, norm2, XtA, dual_norm, gap, l1, excluded):
    active = []
    for j in range(Xc.shape[1]):
        if excluded[j]:
            continue
        d_j = (1.0 - abs(XtA[j] / max(l1, dual_norm))) / math.sqrt(norm2[j])
        if d_j <= math.sqrt(2.0 * gap) / l1:
            active.append(j)
        else:
            if beta[j] != 0.0:
                R += beta[j] * Xc[:, j]
                beta[j] = 0.0
            excluded[j] = True
    return active


def lasso_cd(X: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float, max_iter: int = 1000,
             tol: float = 1e-4, info: Optional[np.ndarray] = None) -> Tuple[np.ndarray, float]:
    """Weighted lasso by cyclic coordinate descent: scikit-learn's ``Lasso(alpha)`` fitted with
    ``sample_weight``, i.e. minimise ``1/(2 Σw) Σ_s w_s (y_s - c - x_s·β)² + α|β|₁``.

    Same algorithm as scikit-learn's solver (cyclic updates from zero, the relative-update
    test, then the duality gap ``<= tol·|y_c|²``, gap-safe screening), so the answer matches
    it to rounding rather than only to ``tol``.  Returns (β, intercept); ``info`` (3,), when
    given, receives (final duality gap, scaled tolerance ``tol·|y_c|²``, 1.0 if the gap met it
    else 0.0: scikit-learn's ``ConvergenceWarning`` case).
    """
    S, F = X.shape
    sw = w * (S / w.sum())
    xbar = (sw @ X) / sw.sum()
    ybar = float(sw @ y) / sw.sum()
    sq = np.sqrt(sw)
    Xc = (X - xbar) * sq[:, None]
    yc = (y - ybar) * sq
    l1 = alpha * S
    beta = np.zeros(F)
    if l1 <= 0:
        raise ValueError("lasso_cd needs alpha > 0")
    norm2 = (Xc * Xc).sum(0)
    R = yc.copy()
    tol_s = tol * float(yc @ yc)
    gap, dual_norm, XtA = _gap(Xc, yc, R, beta, l1)
    converged = gap <= tol_s
    if converged:
        _lasso_info(info, gap, tol_s, converged)
        return beta, ybar - float(xbar @ beta)
    excluded = norm2 == 0.0
    active = _screen(Xc, R, beta, norm2, XtA, dual_norm, gap, l1, excluded)
    for it in range(max_iter):
        w_max = 0.0
        d_w_max = 0.0
        for j in active:
            old = beta[j]
            tmp = float(Xc[:, j] @ R) + old * norm2[j]
            new = math.copysign(max(abs(tmp) - l1, 0.0), tmp) / norm2[j] if tmp != 0 else 0.0
            beta[j] = new
            if new != old:
                R += (old - new) * Xc[:, j]
            d_w_max = max(d_w_max, abs(new - old))
            w_max = max(w_max, abs(new))
        if w_max == 0.0 or d_w_max / w_max <= tol or it == max_iter - 1:
            gap, dual_norm, XtA = _gap(Xc, yc, R, beta, l1)
            if gap <= tol_s:
                converged = True
                break
            active = _screen(Xc, R, beta, norm2, XtA, dual_norm, gap, l1, excluded)
    _lasso_info(info, gap, tol_s, converged)
    return beta, ybar - float(xbar @ beta)


def _lasso_info(info: Optional[np.ndarray], gap: float, tol_s: float, converged: bool) -> None:
    if info is not None:
        info[:] = (gap, tol_s, 1.0 if converged else 0.0)


def lasso_fit(X: np.ndarray, Y: np.ndarray, w: np.ndarray, alpha: float, max_iter: int = 1000,
              tol: float = 1e-4) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`lasso_cd` for every instance and target: (B, S, F), (B, S, T), (B, S) → coef
    (B, T, F), intercept (B, T), info (B, T, 3) (see :func:`lasso_cd`)."""
    B, S, F = X.shape
    T = Y.shape[2]
    if Y.shape[:2] != (B, S) or w.shape != (B, S):
        raise ValueError(f"shapes disagree: X {X.shape}, Y {Y.shape}, w {w.shape}")
    coef = np.zeros((B, T, F))
    icpt = np.zeros((B, T))
    info = np.zeros((B, T, 3))
    for b in range(B):
        for t in range(T):
            coef[b, t], icpt[b, t] = lasso_cd(X[b], Y[b, :, t], w[b], alpha, max_iter, tol, info[b, t])
    return coef, icpt, info


def _kkt_pinv(A: np.ndarray, C: np.ndarray, delta: np.ndarray, n_rows: int) -> np.ndarray:
    """Minimum-norm solution of the KKT system ``[A 1; 1ᵀ 0] [φ; λ] = [C; Δ]`` (symmetric,
    indefinite; pseudo-inverse through its eigen-decomposition)."""
    F = A.shape[0]
    K = np.zeros((F + 1, F + 1))
    K[:F, :F] = A
    K[:F, F] = 1.0
    K[F, :F] = 1.0
    rhs = np.vstack([C, delta[None, :]])
    lam, V = np.linalg.eigh(K)
    cut = np.finfo(np.float64).eps * max(n_rows, F + 1) * np.abs(lam).max(initial=0.0)
    inv = np.where(np.abs(lam) > cut, 1.0 / np.where(np.abs(lam) > cut, lam, 1.0), 0.0)
    return (V @ (inv[:, None] * (V.T @ rhs)))[:F]


def constrained_wls(Z: np.ndarray, Y: np.ndarray, w: np.ndarray, delta: np.ndarray, alpha: float
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """KernelSHAP's fit: ``min_φ Σ_s w_s (y_st - z_s·φ_t)² + α|φ_t|²`` subject to
    ``Σ_f φ_tf = Δ_t`` (efficiency), for every instance and target.

    With ``A = ZᵀWZ + αI``, ``U = A⁻¹ZᵀWY``, ``v = A⁻¹1``:
    ``φ_t = U_t - v (1ᵀU_t - Δ_t) / 1ᵀv``.  A singular ``A`` falls back to the minimum-norm
    solution of the KKT system (flag 1 in the second output).

    Z (B, S, F), Y (B, S, T) (outputs minus the baseline's), w (B, S), delta (B, T) →
    phi (B, T, F), fallback (B,) int32.
    """
    B, S, F = Z.shape
    T = Y.shape[2]
    phi = np.zeros((B, T, F))
    flag = np.zeros(B, dtype=np.int32)
    for b in range(B):
        sq = np.sqrt(w[b])[:, None]
        Zw = Z[b] * sq
        A = Zw.T @ Zw + alpha * np.eye(F)
        C = Zw.T @ (Y[b] * sq)
        rhs = np.hstack([C, np.ones((F, 1))])
        try:
            L = np.linalg.cholesky(A)
            d = np.diag(L)
            if d.min() <= 1e-7 * d.max():
                raise np.linalg.LinAlgError
            sol = np.linalg.solve(L.T, np.linalg.solve(L, rhs))
            U, v = sol[:, :T], sol[:, T]
            phi[b] = (U - v[:, None] * ((U.sum(0) - delta[b]) / v.sum())[None, :]).T
        except np.linalg.LinAlgError:
            flag[b] = 1
            phi[b] = _kkt_pinv(A, C, delta[b], S).T
    return phi, flag


# ----------------------------------------------------------------------------------- tabular
_ACK_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
          1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
_ACK_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
          6.680131188771972e+01, -1.328068155288572e+01)
_ACK_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
          -2.549671010135326e+00, 4.374664141464968e+00, 2.938163982698783e+00)
_ACK_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
          3.754408661907416e+00)
TWO_M32 = 1.0 / 4294967296.0


def ndtri(p: np.ndarray) -> np.ndarray:
    """Inverse standard normal CDF by Acklam's rational approximation (relative error
    < 1.2e-9: ample for sampling, and cheap — no refinement step)."""
    p = np.asarray(p, dtype=np.float64)
    a, b, c, d = _ACK_A, _ACK_B, _ACK_C, _ACK_D
    out = np.empty_like(p)
    lo = p < 0.02425
    hi = p > 1 - 0.02425
    mid = ~(lo | hi)
    q = p[mid] - 0.5
    r = q * q
    out[mid] = ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
                (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1))
    for m, sgn, pp in ((lo, 1.0, p[lo]), (hi, -1.0, 1 - p[hi])):
        q = np.sqrt(-2 * np.log(pp))
        out[m] = sgn * ((((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
                        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1))
    return out


def tabular_sample(n_rows: int, seed: int, stream: int, row_offset: int, kind: np.ndarray,
                   cdf: np.ndarray, values: np.ndarray, inst: np.ndarray, center: np.ndarray,
                   scale: np.ndarray, lo_p: np.ndarray, hi_p: np.ndarray, bin_mean: np.ndarray,
                   bin_std: np.ndarray, bin_lo: np.ndarray, row0: np.ndarray
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """lime's tabular neighbourhood from a counter-based generator.

    One 64-bit draw per (row, feature): its high 32 bits ``u1`` pick a value, its low 32 bits
    ``u2`` place it.  ``kind[d]``: 0 continuous, ``x = center + scale · Φ⁻¹(u1)``;
    1 categorical, ``v = values[d, k]`` with ``k`` the first index where ``u1 < cdf[d, k]``,
    surrogate feature ``[v == inst[d]]``; 2 discretised, a bin ``k`` drawn as for 1 and a
    value from the normal ``N(bin_mean, bin_std)`` truncated to the bin by inverse CDF:
    ``Φ⁻¹(lo_p + u2 (hi_p - lo_p))`` with ``lo_p, hi_p`` the CDF at the bin edges (a zero
    -width bin gives its edge, ``bin_lo``).  Global row 0 is the instance (``row0``; surrogate
    features 1).  Returns (data (n, D) surrogate features, inverse (n, D) model inputs).
    """
    D = kind.shape[0]
    rows = np.arange(row_offset, row_offset + n_rows, dtype=np.int64)
    keys = row_keys(seed, stream, rows)
    with np.errstate(over="ignore"):
        h = _mix(keys[:, None] + (np.arange(D, dtype=np.uint64)[None, :] + np.uint64(1)) * GOLDEN)
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) * TWO_M32
    u2 = ((h & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) * TWO_M32
    data = np.empty((n_rows, D))
    inv = np.empty((n_rows, D))
    for d in range(D):
        if kind[d] == 0:
            x = center[d] + scale[d] * ndtri(u1[:, d])
            data[:, d] = x
            inv[:, d] = x
            continue
        k = (u1[:, d][:, None] >= cdf[d][None, :]).sum(1)
        k = np.minimum(k, cdf.shape[1] - 1)
        v = values[d, k]
        data[:, d] = (v == inst[d]).astype(np.float64)
        if kind[d] == 1:
            inv[:, d] = v
        else:
            pl, ph = lo_p[d, k], hi_p[d, k]
            z = ndtri(pl + u2[:, d] * (ph - pl))
            x = bin_mean[d, k] + bin_std[d, k] * z
            inv[:, d] = np.where(ph > pl, x, bin_lo[d, k])
    first = rows == 0
    if first.any():
        data[first] = np.where(kind == 0, row0, 1.0)
        inv[first] = row0
    return data, inv


# ------------------------------------------------------- tabular: fused neighbourhood
# The neighbourhood samples truncated normals by inverse CDF (:func:`ndtri_as241`).

# Wichura's AS241 (PPND16) coefficients: central |q| <= 0.425 (a, b), tail r <= 5 (c, d), far
# tail (e, f); numerators then denominators, highest degree first (Horner order)
_AS_A = (2509.0809287301226727, 33430.575583588128105, 67265.770927008700853, 45921.953931549871457,
         13731.693765509461125, 1971.5909503065514427, 133.14166789178437745, 3.387132872796366608)
_AS_B = (5226.495278852545925, 28729.085735721942674, 39307.89580009271061, 21213.794301586595867,
         5394.1960214247511077, 687.1870074920579083, 42.313330701600911252, 1.0)
_AS_C = (7.7454501427834140764e-4, 0.0227238449892691845833, 0.24178072517745061177, 1.27045825245236838258,
         3.64784832476320460504, 5.7694972214606914055, 4.6303378461565452959, 1.42343711074968357734)
_AS_D = (1.05075007164441684324e-9, 5.475938084995344946e-4, 0.0151986665636164571966, 0.14810397642748007459,
         0.68976733498510000455, 1.6763848301838038494, 2.05319162663775882187, 1.0)
_AS_E = (2.01033439929228813265e-7, 2.71155556874348757815e-5, 0.0012426609473880784386, 0.026532189526576123093,
         0.29656057182850489123, 1.7848265399172913358, 5.4637849111641143699, 6.6579046435011037772)
_AS_F = (2.04426310338993978564e-15, 1.4215117583164458887e-7, 1.8463183175100546818e-5, 7.868691311456132591e-4,
         0.0148753612908506148525, 0.13692988092273580531, 0.59983220655588793769, 1.0)
P_MIN = 1e-300  # p is clamped to [P_MIN, P_MAX] before Φ⁻¹
P_MAX = 1.0 - 2.0 ** -53


def _horner(c, x):
    acc = np.full_like(x, c[0])
    for ci in c[1:]:
        acc = acc * x + ci
    return acc


def _log_fdlibm(x: np.ndarray) -> np.ndarray:
    """Natural log of positive normal floats by fdlibm's method on the float's bits (mantissa
    in [sqrt(2)/2, sqrt(2)), polynomial in s = f/(2+f)): the kernel's log, bit for bit."""
    bits = np.asarray(x, dtype=np.float64).view(np.uint64)
    mant = bits & np.uint64(0x000FFFFFFFFFFFFF)
    big = mant > np.uint64(0x0006A09E667F3BCD)
    m = (mant | np.where(big, np.uint64(0x3FE0000000000000), np.uint64(0x3FF0000000000000))).view(np.float64)
    e = np.uint64(0x4330000000000000) | ((bits >> np.uint64(52)) + np.uint64(2048 - 1023) + big.astype(np.uint64))
    dk = e.view(np.float64) - 4503599627372544.0
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01))
    t2 = z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01 + w * (1.818357216161805012e-01
                                                                             + w * 1.479819860511658591e-01)))
    hfsq = 0.5 * f * f
    return dk * 6.93147180369123816490e-01 - ((hfsq - (s * (hfsq + t2 + t1) + dk * 1.90821492927058770002e-10)) - f)


def ndtri_as241(p: np.ndarray) -> np.ndarray:
    """Inverse standard normal CDF by Wichura's AS241 (relative error ~1e-16), ``p`` clamped
    to ``[P_MIN, P_MAX]``; the kernel's Φ⁻¹, operation for operation."""
    p = np.clip(np.asarray(p, dtype=np.float64), P_MIN, P_MAX)
    q = p - 0.5
    r = 0.180625 - q * q
    z = q * _horner(_AS_A, r) / _horner(_AS_B, r)
    tail = np.abs(q) > 0.425
    if tail.any():
        pt = p[tail]
        rt = np.sqrt(-_log_fdlibm(np.minimum(pt, 1.0 - pt)))
        r1, r2 = rt - 1.6, rt - 5.0
        zt = np.where(rt <= 5.0, _horner(_AS_C, r1) / _horner(_AS_D, r1), _horner(_AS_E, r2) / _horner(_AS_F, r2))
        z[tail] = np.where(pt < 0.5, -zt, zt)
    return z


def tabular_neighbourhood(n_rows: int, seed: int, stream: int, row_offset: int, kind: np.ndarray,
                          cdf: np.ndarray, values: np.ndarray, inst: np.ndarray, center: np.ndarray,
                          scale: np.ndarray, smean: np.ndarray, sscale: np.ndarray, ia: np.ndarray,
                          ib: np.ndarray, bin_mean: np.ndarray, bin_std: np.ndarray, bin_min: np.ndarray,
                          bin_max: np.ndarray, row0: np.ndarray, metric: str,
                          width: float = 0.0, gram: bool = False, binary_uint8: bool = False) -> tuple:
    """lime's tabular neighbourhood in one pass: surrogate features, model inputs, distances.

    Element ``(r, d)`` draws one uniform ``u`` in (0, 1): the top 52 bits of
    ``mix(key_r + (d+1)·γ)`` (as the mantissa of a double in [1, 2), minus 1, plus 2⁻⁵³).
    ``kind`` 0 (continuous): ``x = center + scale·Φ⁻¹(u)``.  Kinds 1, 2: the bin / value
    ``k`` = the number of ``cdf[d, :V-1]`` steps at or below ``u`` (training frequencies).  A
    discretised value (kind 2) is drawn from the bin's normal ``N(bin_mean, bin_std)``
    truncated to ``[bin_min, bin_max]`` by inverse CDF: the position of ``u`` inside the bin's
    share ``[cdf[k-1], cdf[k])`` is uniform and maps linearly onto ``[Φ(a), Φ(b)]`` (``a, b``
    the edges in the bin's z-units), ``p = ia[d, k] + ib[d, k]·u`` (built by the sampler's
    plan), ``x = bin_mean + bin_std·Φ⁻¹(p)`` clipped to the bin (rounding; a zero-width bin
    gives its edge).  Φ⁻¹ is :func:`ndtri_as241`, ``p`` clamped to ``[P_MIN, P_MAX]``.

    Surrogate features: ``(x - smean)/sscale`` for kind 0, ``[v == inst[d]]`` otherwise.
    Global row 0 is the instance ``row0`` (surrogate 1 for kinds 1, 2).  Distances
    (``"euclidean"`` | ``"cosine"``, as :func:`row_distances`) are to the surrogate row of the
    instance; with ``width > 0`` also lime's kernel weights ``sqrt(exp(-d²/width²))``.
    Returns (scaled (n, D), inverse (n, D), distances (n,), weights (n,) or (0,)); with
    ``gram`` (and ``width > 0``) also the augmented weighted Gram ``Σ_r w_r z'_r z'_rᵀ``
    (D+1, D+1) of the surrogate rows ``z' = (scaled_r, 1)`` for :func:`fit_lime_gram`.
    """
    D = kind.shape[0]
    V = cdf.shape[1]
    rows = np.arange(row_offset, row_offset + n_rows, dtype=np.int64)
    keys = row_keys(seed, stream, rows)
    with np.errstate(over="ignore"):
        h = _mix(keys[:, None] + (np.arange(D, dtype=np.uint64)[None, :] + np.uint64(1)) * GOLDEN)
    u = ((h >> np.uint64(12)) | np.uint64(0x3FF0000000000000)).view(np.float64) - 1.0 + 2.0 ** -53
    scaled = np.empty((n_rows, D))
    inv = np.empty((n_rows, D))
    for d in range(D):
        ud = u[:, d]
        if kind[d] == 0:
            x = center[d] + scale[d] * ndtri_as241(ud)
            inv[:, d] = x
            scaled[:, d] = (x - smean[d]) / sscale[d]
            continue
        k = (ud[:, None] >= cdf[d, :V - 1][None, :]).sum(1)
        v = values[d, k]
        scaled[:, d] = (v == inst[d]).astype(np.float64)
        if kind[d] == 1:
            inv[:, d] = v
            continue
        z = ndtri_as241(ia[d, k] + ib[d, k] * ud)
        inv[:, d] = np.minimum(np.maximum(bin_mean[d, k] + bin_std[d, k] * z, bin_min[d, k]), bin_max[d, k])
    first = rows == 0
    s0 = np.where(kind == 0, (row0 - smean) / sscale, 1.0)
    if first.any():
        scaled[first] = s0
        inv[first] = row0
    dist = row_distances(scaled, s0, metric)
    w = exp_kernel(dist, width) if width > 0 else np.empty(0)
    out_s = scaled.astype(np.uint8) if binary_uint8 and np.all(kind != 0) else scaled
    if not (gram and width > 0):
        return out_s, inv, dist, w
    za = np.concatenate([scaled, np.ones((n_rows, 1))], 1)
    return out_s, inv, dist, w, (za * w[:, None]).T @ za


def fit_lime_gram(Z: np.ndarray, Y: np.ndarray, labels: np.ndarray, w: np.ndarray, g: np.ndarray, alpha: float,
                  select: int, num_features: int):
    """:func:`fit_lime` (given weights) for the tabular neighbourhood, whose sampler also
    returned ``g``, the augmented weighted Gram of ``Z`` (:func:`tabular_neighbourhood` with
    ``gram``).  The kernel centres ``g`` instead of passing over ``Z`` again; this twin fits
    from ``Z`` and ``w`` directly (``g`` unused) — the same numbers up to rounding."""
    return fit_lime(Z, Y, labels, w, 0.0, 0, alpha, select, num_features)


# ------------------------------------------------------------------------------------ text
def render_pieces(piece_bytes: np.ndarray, piece_offsets: np.ndarray, piece_feature: np.ndarray,
                  removed: np.ndarray, masks: np.ndarray):
    """Perturbed texts as bytes (lime text's ``inverse_removing`` for every row at once).

    A text is a sequence of pieces: piece ``p`` is ``piece_bytes[piece_offsets[p]:
    piece_offsets[p + 1]]`` (uint8, the UTF-8 of the piece) and belongs to feature
    ``piece_feature[p]`` (-1: a separator, always kept).  Row ``s`` of ``masks`` (S, F) keeps
    feature ``f`` where ``masks[s, f] != 0``; a removed piece is written as ``removed`` (uint8:
    empty for lime's bag of words, the mask string otherwise).

    Returns ``(flat, offsets)``: the rows' bytes back to back (uint8) and (S + 1,) int64 row
    offsets into ``flat``.
    """
    pb = piece_bytes.tobytes()
    rb = removed.tobytes()
    pieces = [pb[piece_offsets[p]:piece_offsets[p + 1]] for p in range(len(piece_offsets) - 1)]
    rows = []
    for s in range(masks.shape[0]):
        rows.append(b"".join(pc if f < 0 or masks[s, f] != 0 else rb for pc, f in zip(pieces, piece_feature)))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    return np.frombuffer(b"".join(rows), dtype=np.uint8).copy(), offsets



def stem_rows(segs: np.ndarray, masks: np.ndarray):
    """The distinct coalitions each output position sees, and every sample's table row.

    ``segs``: (Q, M) int32 the segments of position ``q``'s window, padded at the end with -1;
    ``masks``: (S, F) uint8.  Position ``q`` of sample ``s`` sees the key
    ``k = Σ_j [masks[s, segs[q, j]] ≠ 0] · 2^j``; rows are numbered position by position, and
    within a position in the order the keys first occur among the samples.  Returns
    ``index`` (S, Q) int32 — the row of (s, q) —, ``row_pos`` (T,) int32 and ``row_key`` (T,)
    int64.
    """
    S, Q = masks.shape[0], segs.shape[0]
    valid = segs >= 0
    z = (masks[:, np.where(valid, segs, 0)] != 0).astype(np.int64) * valid  # (S, Q, M)
    keys = (z << np.arange(segs.shape[1], dtype=np.int64)).sum(-1)  # (S, Q)
    index = np.empty((S, Q), dtype=np.int32)
    row_pos, row_key = [], []
    for q in range(Q):
        uniq, first, inv = np.unique(keys[:, q], return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # first-occurrence order
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        index[:, q] = len(row_key) + rank[inv.reshape(-1)]
        row_pos += [q] * len(uniq)
        row_key += list(uniq[order])
    return index, np.asarray(row_pos, dtype=np.int32), np.asarray(row_key, dtype=np.int64)


def stem_gather(table: np.ndarray, index: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[s, q] = table[index[s, q]]``: ``table`` (T, C), ``index`` (S, Q) int32, ``out``
    (S, Q, C) of ``table``'s dtype."""
    np.copyto(out, table[index])
    return out


def stem_patches(x_pad: np.ndarray, fill_pad: np.ndarray, pix_rank: np.ndarray, row_pos: np.ndarray,
                 row_key: np.ndarray, n_cols: int, step_h: int, step_w: int, out: np.ndarray) -> np.ndarray:
    """The input window of every table row, channels first.

    ``x_pad``, ``fill_pad``: (Hp, Wp, C) the image and its fill, zero-padded; ``pix_rank``:
    (Q, RH·RW) the bit of every window pixel's segment in the position's key (-1: padding);
    row ``t`` is position ``q = row_pos[t]`` (window origin ``(q // n_cols · step_h,
    q % n_cols · step_w)``) under key ``row_key[t]``:
    ``out[t, :, a, b] = x_pad[...] if key >> pix_rank[q, a·RW + b] & 1 else fill_pad[...]``.
    ``out``: (T, C, RH, RW) of the images' dtype.
    """
    T, C, RH, RW = out.shape
    win = np.lib.stride_tricks.sliding_window_view
    xw = win(x_pad, (RH, RW), axis=(0, 1))[::step_h, ::step_w]  # (Ho, Wo, C, RH, RW)
    fw = win(fill_pad, (RH, RW), axis=(0, 1))[::step_h, ::step_w]
    qh, qw = row_pos // n_cols, row_pos % n_cols
    pr = pix_rank[row_pos].reshape(T, RH, RW)
    keep = ((row_key[:, None, None] >> np.maximum(pr, 0)) & 1).astype(bool) & (pr >= 0)
    np.copyto(out, np.where(keep[:, None], xw[qh, qw], fw[qh, qw]))
    return out


def stem_segment_patches(x_pad: np.ndarray, fill_pad: np.ndarray, pix_rank: np.ndarray, offsets: np.ndarray,
                         n_cols: int, step_h: int, step_w: int, out: np.ndarray) -> np.ndarray:
    """Per stem position, its window of the fill, then one window per segment it meets:
    ``x - fill`` on that segment's pixels, 0 elsewhere — so that a row's window (the fill
    where its key hides a segment, the image where it keeps it) is the first plus the sum of
    the kept segments'.  Position ``q`` takes ``out[offsets[q]]`` (the fill) and
    ``out[offsets[q] + 1 + j]`` (segment ``j`` of its key, ``j < offsets[q + 1] - offsets[q] -
    1``); ``pix_rank``, ``n_cols``, ``step_*`` as for :func:`stem_patches`; ``out``: (P, C, RH,
    RW) of the images' dtype."""
    P_, C, RH, RW = out.shape
    win = np.lib.stride_tricks.sliding_window_view
    Q = pix_rank.shape[0]
    qh, qw = np.arange(Q) // n_cols, np.arange(Q) % n_cols
    xw = win(x_pad, (RH, RW), axis=(0, 1))[::step_h, ::step_w][qh, qw]  # (Q, C, RH, RW)
    fw = win(fill_pad, (RH, RW), axis=(0, 1))[::step_h, ::step_w][qh, qw]
    out[...] = 0
    for q in range(Q):
        b, m = offsets[q], offsets[q + 1] - offsets[q] - 1
        out[b] = fw[q]
        rank = pix_rank[q].reshape(RH, RW)
        for j in range(m):
            out[b + 1 + j] = np.where(rank == j, xw[q] - fw[q], 0)
    return out


def stem_combine(z: np.ndarray, offsets: np.ndarray, row_pos: np.ndarray, row_key: np.ndarray,
                 out: np.ndarray) -> np.ndarray:
    """Every table row from the per-segment terms of :func:`stem_segment_patches` (after a
    linear map): ``out[t] = z[b] + Σ_{j: bit j of row_key[t]} z[b + 1 + j]``, ``b =
    offsets[row_pos[t]]``; ``z`` (P, K), ``out`` (T, K)."""
    for t in range(len(row_pos)):
        b, key = offsets[row_pos[t]], int(row_key[t])
        acc = z[b].copy()
        j = 0
        while key:
            if key & 1:
                acc += z[b + 1 + j]
            key >>= 1
            j += 1
        out[t] = acc
    return out


def stem_representatives(index: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[t]`` = the first sample ``s`` (in order) with a position whose row is ``t``:
    ``index`` (S, Q) int32 rows in ``[0, T)``, ``out`` (T,) int64 (-1 for a row no sample
    has)."""
    out[:] = -1
    rows, first = np.unique(index.reshape(-1), return_index=True)
    out[rows] = first // max(index.shape[1], 1)
    return out


def stem_level_ids(index1: np.ndarray, rep: np.ndarray, row_pos: np.ndarray, n_cols: int, geometry: np.ndarray,
                   n_rows1: int, out: np.ndarray) -> np.ndarray:
    """Bags of the previous level's rows for the next stage's convolution, one bag per (row
    ``t``, convolution output ``(i, j)`` of its window): ``out[(t·ch + i)·cw + j, a·kw + b] =
    index1[rep[t], iy·Wi + ix]·kh·kw + a·kw + b`` with ``iy = (qy·step_h + org_h + i)·stride_h
    - pad_h + a·dil_h`` (likewise for x), ``(qy, qx) = divmod(row_pos[t], n_cols)``, and
    ``n_rows1·kh·kw`` (a zero row) where ``(iy, ix)`` falls outside the (Hi, Wi) map.
    ``geometry`` int64: (Hi, Wi, ch, cw, step_h, step_w, org_h, org_w, stride_h, stride_w,
    pad_h, pad_w, dil_h, dil_w, kh, kw); ``out`` (T·ch·cw, kh·kw) int32."""
    Hi, Wi, ch, cw, sth, stw, oh, ow, csh, csw, ph, pw, dh, dw, kh, kw = (int(v) for v in geometry)
    K = kh * kw
    for t in range(len(row_pos)):
        qy, qx = divmod(int(row_pos[t]), n_cols)
        idx = index1[rep[t]]
        for i in range(ch):
            for j in range(cw):
                oy, ox = qy * sth + oh + i, qx * stw + ow + j
                for a in range(kh):
                    for b in range(kw):
                        iy, ix = oy * csh - ph + a * dh, ox * csw - pw + b * dw
                        inside = 0 <= iy < Hi and 0 <= ix < Wi
                        out[(t * ch + i) * cw + j, a * kw + b] = idx[iy * Wi + ix] * K + a * kw + b if inside \
                            else n_rows1 * K
    return out


def stem_level_max(index1: np.ndarray, rep: np.ndarray, row_pos: np.ndarray, n_cols: int, geometry: np.ndarray,
                   n_rows1: int, u: np.ndarray, ok: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The next stage's convolution sums over the previous level's rows, reduced by max over
    each row's window: ``out[t] = max over w with ok[t, w] of Σ_k u[ids[t·per + w, k]]``,
    ``ids`` :func:`stem_level_ids`' bags (per = ch·cw outputs per row), the sums in ``k``
    order, -inf where no output of the window is ok, NaN where a sum is NaN (as
    torch.maximum).  ``ok`` (T, per) uint8, or (0, per): all ok; ``out`` (T, C) of ``u``'s
    dtype."""
    ch, cw, kh, kw = (int(geometry[i]) for i in (2, 3, 14, 15))
    per, K, T = ch * cw, kh * kw, len(row_pos)
    ids = stem_level_ids(index1, rep, row_pos, n_cols, geometry, n_rows1,
                         np.empty((T * per, K), dtype=np.int32)).reshape(T, per, K)
    sums = np.zeros((T, per, u.shape[1]), dtype=u.dtype)
    for k in range(K):
        sums += u[ids[:, :, k]]
    if ok.shape[0]:
        sums[~ok.astype(bool)] = -np.inf
    out[:] = sums.max(axis=1)
    return out


def stem_windows(seg_pad: np.ndarray, n_rows: int, n_cols: int, window: tuple, step: tuple):
    """The segments each stem output position's input window meets.

    ``seg_pad``: (Hp, Wp) int segment ids, -1 in the padding; position ``q = i·n_cols + j``
    has the window ``seg_pad[i·step[0] : +window[0], j·step[1] : +window[1]]``.  Returns
    ``segs`` (Q, M) int32 — each window's segments in the order a row-major scan meets them,
    then -1 (M = the most any window meets, at least 1) — and ``pix_rank`` (Q, RH·RW) int64,
    the index in that list of every window pixel's segment (-1 for padding).
    """
    RH, RW = window
    Q = n_rows * n_cols
    lists, ranks = [], np.full((Q, RH * RW), -1, dtype=np.int64)
    for q in range(Q):
        i, j = divmod(q, n_cols)
        w = seg_pad[i * step[0]: i * step[0] + RH, j * step[1]: j * step[1] + RW].reshape(-1)
        seen = {}
        for r, v in enumerate(w.tolist()):
            if v >= 0:
                ranks[q, r] = seen.setdefault(v, len(seen))
        lists.append(list(seen))
    segs = np.full((Q, max([len(v) for v in lists] + [1])), -1, dtype=np.int32)
    for q, v in enumerate(lists):
        segs[q, :len(v)] = v
    return segs, ranks


def lime_coin_flips(random_state: np.random.RandomState, n: int) -> np.ndarray:
    """lime image's coalition draws, ``random_state.randint(0, 2, n)``, as uint8 (advancing
    the generator as lime does)."""
    return random_state.randint(0, 2, int(n)).astype(np.uint8)


def lime_text_draws(random_state: np.random.RandomState, n_samples: int, n_words: int) -> np.ndarray:
    """lime's text coalitions, drawn exactly as lime draws them from ``random_state`` (and
    advancing it as lime does): (n_samples, n_words) uint8, row 0 all ones; row i ≥ 1 removes
    ``size_i`` distinct words, the sizes drawn first by ``randint(1, n_words + 1,
    n_samples - 1)``, then the words of each row by ``choice(range(n_words), size_i,
    replace=False)``."""
    masks = np.ones((int(n_samples), int(n_words)), dtype=np.uint8)
    if n_samples <= 1:
        return masks
    words = range(int(n_words))
    for i, size in enumerate(random_state.randint(1, n_words + 1, n_samples - 1), start=1):
        masks[i, random_state.choice(words, size, replace=False)] = 0
    return masks
