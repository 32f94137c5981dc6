"""Perturbation ops for LIME and KernelSHAP, dispatched per call (``numba`` | ``reference``).

    masks[s, f] ~ counter-based RNG(seed, stream, row s, f)         (sample_masks)
    out[s] = where(masks[s, seg], x, fill)                          (build_perturbed)
    out[s, q] = table[row of the coalition position q sees in s]    (stem_rows, stem_gather)
    d_s = dist(x, out[s]);  w_s = sqrt(exp(-d_s²/width²))            (distances, kernels)
    min Σ_s w_s (y_s - c - z_s·β)² + α|β|²  for every target at once (fit_surrogate)

The ops work on NumPy arrays on the CPU (the Numba kernels' native currency) and accept CPU
torch tensors for the perturbed batch, which they fill in place without a copy.  All
floating-point reductions run in float64.  ``backend="auto"`` picks Numba when it is
installed and falls back to the NumPy reference twin otherwise.
"""
from __future__ import annotations

import codecs
import importlib
import math
from typing import Optional, Tuple, Union

import numpy as np
import torch

from xaikernels import _backend
from xaikernels.reference import perturb as _ref

_ORDER = {"cpu": ("numba", "reference"), "cuda": ("numba", "reference")}
_CPU = torch.device("cpu")

SELECTIONS = ("auto", "none", "highest_weights", "forward_selection", "lasso_path")


def _numba_attr(name, module="perturb"):
    fn = []  # the kernel module's function, looked up on first call (Numba imported lazily)

    def launcher(*args, **kwargs):
        if not fn:
            fn.append(getattr(importlib.import_module(f"xaikernels.kernels.numba.{module}"), name))
        return fn[0](*args, **kwargs)

    launcher.__name__ = f"numba_{name}"
    return launcher


def _define(name: str, ref_fn, module="perturb"):
    op = _backend.define_op(f"perturb_{name}", auto_order=_ORDER)
    op.register("numba", _numba_attr(name, module))
    op.register("reference", ref_fn)
    return op


OP_MASKS = _define("sample_masks", _ref.sample_masks)
OP_BUILD = _define("build_perturbed", _ref.build_perturbed)
OP_STATS = _define("feature_stats", _ref.feature_stats)
OP_MASK_DIST = _define("mask_distances", _ref.mask_distances)
OP_ROW_DIST = _define("row_distances", _ref.row_distances)
OP_EXP = _define("exp_kernel", _ref.exp_kernel)
OP_SHAPLEY = _define("shapley_kernel", _ref.shapley_kernel)
OP_FIT = _define("fit_surrogate", _ref.fit_surrogate)
OP_LASSO = _define("lasso_fit", _ref.lasso_fit)
OP_STEM = _define("stem_gather", _ref.stem_gather)
OP_STEM_ROWS = _define("stem_rows", _ref.stem_rows)
OP_STEM_PATCHES = _define("stem_patches", _ref.stem_patches)
OP_STEM_WINDOWS = _define("stem_windows", _ref.stem_windows)
OP_STEM_SEGMENT_PATCHES = _define("stem_segment_patches", _ref.stem_segment_patches)
OP_STEM_COMBINE = _define("stem_combine", _ref.stem_combine)
OP_STEM_REPS = _define("stem_representatives", _ref.stem_representatives)
OP_STEM_LEVEL_IDS = _define("stem_level_ids", _ref.stem_level_ids)
OP_STEM_LEVEL_MAX = _define("stem_level_max", _ref.stem_level_max)


OP_LIME_TEXT_DRAWS = _define("lime_text_draws", _ref.lime_text_draws, "mt19937")
OP_LIME_COIN_FLIPS = _define("lime_coin_flips", _ref.lime_coin_flips, "mt19937")


def _legacy_backend(random_state, backend):
    """The Numba replays follow NumPy's MT19937 stream: another bit generator takes the
    reference (NumPy's own calls) in auto mode."""
    if backend == "auto" and type(getattr(random_state, "_bit_generator", None)) is not np.random.MT19937:
        return "reference"
    return backend


def _impl(op, backend):
    return op.launcher(_CPU, backend)[1]


def lime_text_draws(random_state: np.random.RandomState, n_samples: int, n_words: int,
                    backend: str = "auto") -> np.ndarray:
    """lime's text coalitions drawn from ``random_state`` exactly as lime draws them, the
    generator advanced as lime advances it: (n_samples, n_words) uint8, row 0 all ones.  The
    Numba kernel replays NumPy's legacy MT19937 stream (:mod:`xaikernels.kernels.numba.mt19937`);
    a ``RandomState`` over another bit generator takes the reference (lime's own calls)."""
    if n_samples < 1 or n_words < 1:
        raise ValueError(f"need n_samples >= 1 and n_words >= 1, got {n_samples}, {n_words}")
    if not isinstance(random_state, np.random.RandomState):
        raise TypeError(f"random_state must be a numpy RandomState, got {type(random_state).__name__}")
    backend = _legacy_backend(random_state, backend)
    return _impl(OP_LIME_TEXT_DRAWS, backend)(random_state, int(n_samples), int(n_words))


def lime_coin_flips(random_state: np.random.RandomState, n: int, backend: str = "auto") -> np.ndarray:
    """lime image's coalitions, ``random_state.randint(0, 2, n)``, as uint8 with the generator
    advanced as lime advances it.  The Numba kernel replays NumPy's legacy MT19937 stream in
    place (:mod:`xaikernels.kernels.numba.mt19937`); a ``RandomState`` over another bit
    generator takes the reference (NumPy's own call)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not isinstance(random_state, np.random.RandomState):
        raise TypeError(f"random_state must be a numpy RandomState, got {type(random_state).__name__}")
    backend = _legacy_backend(random_state, backend)
    return _impl(OP_LIME_COIN_FLIPS, backend)(random_state, int(n))


# ----------------------------------------------------------------------------------- sampling
def shapley_size_cdf(n_features: int) -> np.ndarray:
    """CDF over coalition sizes ``k = 0..M`` with ``P(k) ∝ (M-1) / (k (M-k))`` for
    ``0 < k < M``: the Shapley kernel summed over all coalitions of size ``k``."""
    M = int(n_features)
    p = np.zeros(M + 1)
    for k in range(1, M):
        p[k] = (M - 1) / (k * (M - k))
    if p.sum() == 0:
        raise ValueError("the Shapley size distribution needs at least 2 features")
    c = np.cumsum(p / p.sum())
    c[-1] = 1.0
    return c


def lime_text_size_cdf(n_features: int) -> np.ndarray:
    """CDF over kept-feature counts for lime's text sampler: between 1 and M features are
    removed, uniformly, so ``k = M - removed`` is uniform on ``0..M-1``."""
    M = int(n_features)
    p = np.zeros(M + 1)
    p[:M] = 1.0 / M
    c = np.cumsum(p)
    c[-1] = 1.0
    return c


def sample_masks(n_rows: int, n_features: int, seed: int, *, stream: int = 0, row_offset: int = 0,
                 p_on: float = 0.5, size_cdf: Optional[np.ndarray] = None, paired: bool = False,
                 first_row_ones: bool = False, backend: str = "auto") -> np.ndarray:
    """Binary coalition masks from a counter-based generator.

    Row ``g`` (global index ``row_offset + i``) of stream ``stream`` depends only on
    ``(seed, stream, g)``: the same masks come back for any thread count and any chunking.

    Parameters
    ----------
    n_rows, n_features : int
        Shape of the returned masks.
    seed : int
        Any integer (taken modulo 2**64).
    stream : int
        Independent stream, e.g. the instance index in a batch.
    row_offset : int
        Global index of the first returned row (for chunked generation).
    p_on : float
        Bernoulli probability that a feature is kept (used when ``size_cdf`` is None).
    size_cdf : array (F+1,), optional
        CDF of the number of kept features; the kept set is then uniform among sets of that
        size (:func:`shapley_size_cdf`, :func:`lime_text_size_cdf`).
    paired : bool
        Row ``2i+1`` is the complement of row ``2i`` (antithetic coalitions, KernelSHAP).
    first_row_ones : bool
        Global row 0 keeps every feature (lime's first sample is the instance itself).

    Returns
    -------
    uint8 array (n_rows, n_features), 1 = feature kept.
    """
    if n_rows < 0 or n_features < 1:
        raise ValueError(f"need n_rows >= 0 and n_features >= 1, got {n_rows}, {n_features}")
    if not 0.0 <= p_on <= 1.0:
        raise ValueError(f"p_on must be in [0, 1], got {p_on}")
    if size_cdf is not None:
        size_cdf = np.ascontiguousarray(size_cdf, dtype=np.float64)
        if size_cdf.shape != (n_features + 1,):
            raise ValueError(f"size_cdf must have n_features + 1 = {n_features + 1} entries, "
                             f"got shape {size_cdf.shape}")
    return _impl(OP_MASKS, backend)(int(n_rows), int(n_features), int(seed), int(stream), int(row_offset),
                                    float(p_on), size_cdf, bool(paired), bool(first_row_ones))


# ------------------------------------------------------------------------------- construction
ArrayLike = Union[np.ndarray, torch.Tensor]


def _np_view(a: ArrayLike) -> np.ndarray:
    """A NumPy view of a CPU tensor (bfloat16 through its int16 bits: construction only
    copies values, so the bits are all it needs)."""
    if isinstance(a, torch.Tensor):
        if a.device.type != "cpu":
            raise ValueError("build_perturbed works on CPU tensors; move the result to the device")
        if a.dtype == torch.bfloat16:
            return a.view(torch.int16).numpy()
        return a.numpy()
    return a


def as_apb(x: ArrayLike, layout: str) -> ArrayLike:
    """Reshape an input to the kernels' (A, P, B) layout: ``"chw"`` → (C, H·W, 1),
    ``"hwc"`` → (1, H·W, C), ``"flat"`` → (1, numel, 1)."""
    if layout == "chw":
        return x.reshape(x.shape[0], -1, 1)
    if layout == "hwc":
        return x.reshape(1, -1, x.shape[-1])
    if layout == "flat":
        return x.reshape(1, -1, 1)
    raise ValueError(f"unknown layout {layout!r}")


def build_perturbed(x: ArrayLike, fill: ArrayLike, seg: np.ndarray, masks: np.ndarray,
                    out: ArrayLike, backend: str = "auto") -> ArrayLike:
    """Write ``out[s] = where(masks[s, seg], x, fill)`` for every sample, in place.

    Parameters
    ----------
    x, fill : (A, P, B) arrays or CPU tensors of one dtype (see :func:`as_apb`).
    seg : (P,) integer feature index of every position, in ``[0, F)``.
    masks : (S, F) uint8.
    out : (S, A, P, B) array or CPU tensor, same dtype as ``x``; returned.
    """
    xv, fv, ov = _np_view(x), _np_view(fill), _np_view(out)
    if xv.shape != fv.shape or xv.dtype != fv.dtype or xv.ndim != 3:
        raise ValueError(f"x and fill must be (A, P, B) of one dtype, got {xv.shape}/{xv.dtype} and "
                         f"{fv.shape}/{fv.dtype}")
    S, F = masks.shape
    if ov.shape != (S,) + xv.shape or ov.dtype != xv.dtype:
        raise ValueError(f"out must be {(S,) + xv.shape} of dtype {xv.dtype}, got {ov.shape}/{ov.dtype}")
    if seg.shape != (xv.shape[1],):
        raise ValueError(f"seg must have one entry per position ({xv.shape[1]}), got {seg.shape}")
    if masks.dtype != np.uint8:
        masks = masks.astype(np.uint8)
    _impl(OP_BUILD, backend)(np.ascontiguousarray(xv), np.ascontiguousarray(fv), seg,
                             np.ascontiguousarray(masks), ov)
    return out


OP_BUILDER = _define("Builder", _ref.Builder)


class PerturbedBuilder:
    """:func:`build_perturbed` prepared once for one input: validation, dtype views and the
    kernel's set-up (a run-length encoding of the feature map) happen here, so that each
    batch costs one kernel call.  ``PerturbedBuilder(x, fill, seg)(masks, out)``."""

    def __init__(self, x: ArrayLike, fill: ArrayLike, seg: np.ndarray, backend: str = "auto"):
        xv, fv = _np_view(x), _np_view(fill)
        if xv.shape != fv.shape or xv.dtype != fv.dtype or xv.ndim != 3:
            raise ValueError(f"x and fill must be (A, P, B) of one dtype, got {xv.shape}/{xv.dtype} and "
                             f"{fv.shape}/{fv.dtype}")
        if np.shape(seg) != (xv.shape[1],):
            raise ValueError(f"seg must have one entry per position ({xv.shape[1]}), got {np.shape(seg)}")
        seg = np.ascontiguousarray(seg, dtype=np.int64)
        if seg.size and seg.min() < 0:
            raise ValueError(f"seg ids must be >= 0, got {seg.min()}")
        self.shape = xv.shape
        self.dtype = xv.dtype
        # features the map uses: masks need at least this many columns (more are fine: the
        # extra features belong to other inputs / examples and hide nothing here)
        self.n_features = int(seg.max()) + 1 if seg.size else 0
        self._impl = _impl(OP_BUILDER, backend)(np.ascontiguousarray(xv), np.ascontiguousarray(fv), seg)

    def _check_masks(self, masks: np.ndarray) -> None:
        if np.ndim(masks) != 2:
            raise ValueError(f"masks must be (S, F), got shape {np.shape(masks)}")
        if masks.shape[0] and masks.shape[1] < self.n_features:
            raise ValueError(f"masks have {masks.shape[1]} features, the feature map uses {self.n_features}")

    def __call__(self, masks: np.ndarray, out: ArrayLike) -> ArrayLike:
        self._check_masks(masks)
        ov = _np_view(out)
        if ov.shape[1:] != self.shape or ov.dtype != self.dtype or ov.shape[0] != masks.shape[0]:
            raise ValueError(f"out must be {(masks.shape[0],) + self.shape} of dtype {self.dtype}, got "
                             f"{ov.shape}/{ov.dtype}")
        self._impl(masks, ov)
        return out

    def new_out(self, shape, dtype=None) -> np.ndarray:
        """An uninitialised C-contiguous NumPy buffer for batches of ``shape`` (default dtype:
        the builder's), placed in memory where the backend blends fastest (the Numba
        kernel's page offset, against 4K aliasing between its input and output streams)."""
        dtype = self.dtype if dtype is None else dtype
        place = getattr(self._impl, "new_out", None)
        return place(shape, dtype) if place is not None else np.empty(shape, dtype=dtype)

    def batches(self, masks: np.ndarray):
        """``fn(s0, s1, out)`` writing rows ``s0..s1-1`` of ``masks`` into ``out`` — a
        C-contiguous NumPy array of ``s1 - s0`` inputs of this builder's dtype and size, any
        shape (e.g. (n, H, W, C)) — and returning it.  Checked once here, not per call: for a
        loop over model batches."""
        masks = np.ascontiguousarray(masks, dtype=np.uint8)
        self._check_masks(masks)
        return self._impl.batches(masks)


def check_feature_map(seg: np.ndarray, n_positions: int, name: str = "segments") -> Tuple[np.ndarray, int]:
    """Validate a feature map and return it as contiguous int64 with the feature count.

    Every position must carry a feature id in ``[0, F)`` and every id in that range must be
    used (an unused id would be a feature that changes nothing: lime would still fit a
    coefficient to pure noise)."""
    seg = np.asarray(seg)
    if seg.size != n_positions:
        raise ValueError(f"{name} must cover the input: {n_positions} positions expected, got {seg.size} "
                         f"(shape {seg.shape})")
    if not np.issubdtype(seg.dtype, np.integer):
        if np.issubdtype(seg.dtype, np.floating) and np.all(np.isfinite(seg)) and np.all(seg == np.round(seg)):
            seg = seg.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integer feature ids, got dtype {seg.dtype}")
    seg = np.ascontiguousarray(seg.reshape(-1), dtype=np.int64)
    if seg.size == 0:
        raise ValueError(f"{name} is empty")
    if seg.min() < 0:
        raise ValueError(f"{name} has negative ids (min {seg.min()}); every position needs a feature id >= 0 "
                         "(a position outside every segment is not allowed)")
    F = int(seg.max()) + 1
    present = np.bincount(seg, minlength=F) > 0
    if not present.all():
        missing = np.nonzero(~present)[0]
        raise ValueError(f"{name} ids must be 0..F-1 without gaps; ids {missing[:8].tolist()} are unused. "
                         "Relabel with np.unique(seg, return_inverse=True)[1]")
    return seg, F


# ---------------------------------------------------------------------------------- distances
def feature_stats(x: ArrayLike, fill: ArrayLike, seg: np.ndarray, n_features: int,
                  backend: str = "auto") -> np.ndarray:
    """Per-feature ``[Σx², Σx·fill, Σfill², Σ(x-fill)²]`` (F, 4) float64: with them the
    input-space distance of any mask costs O(F) (:func:`mask_distances`)."""
    xv = np.ascontiguousarray(_np_view(x) if not isinstance(x, torch.Tensor) or x.dtype != torch.bfloat16
                              else x.float().numpy())
    fv = np.ascontiguousarray(_np_view(fill) if not isinstance(fill, torch.Tensor) or fill.dtype != torch.bfloat16
                              else fill.float().numpy())
    if xv.dtype == np.float16:
        xv, fv = xv.astype(np.float32), fv.astype(np.float32)
    return _impl(OP_STATS, backend)(xv, fv, seg, int(n_features))


def mask_distances(masks: np.ndarray, stats: np.ndarray, metric: str = "cosine",
                   backend: str = "auto") -> np.ndarray:
    """Input-space distance between the instance and each masked copy, (S,) float64."""
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"distance metric must be 'cosine' or 'euclidean', got {metric!r}")
    return _impl(OP_MASK_DIST, backend)(np.ascontiguousarray(masks, dtype=np.uint8), stats, metric)


def row_distances(z: np.ndarray, z0: np.ndarray, metric: str = "cosine", backend: str = "auto") -> np.ndarray:
    """Distance of each row of ``z`` (S, F) to ``z0`` (F,), (S,) float64 (cosine as
    scikit-learn's ``pairwise_distances``: a zero vector has similarity 0)."""
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"distance metric must be 'cosine' or 'euclidean', got {metric!r}")
    z = np.ascontiguousarray(z)
    if z.dtype not in (np.float64, np.uint8):
        z = z.astype(np.float64)
    return _impl(OP_ROW_DIST, backend)(z, np.ascontiguousarray(z0, dtype=np.float64), metric)


def exp_kernel(d: np.ndarray, width: float, backend: str = "auto") -> np.ndarray:
    """``sqrt(exp(-d²/width²))``: lime's kernel (and Captum's ``exp(-d²/(2 width²))``)."""
    if not (width > 0 and math.isfinite(width)):
        raise ValueError(f"kernel_width must be a positive finite number, got {width}")
    return _impl(OP_EXP, backend)(np.ascontiguousarray(d, dtype=np.float64), float(width))


def shapley_kernel(masks: np.ndarray, inf_weight: float = 1e6, backend: str = "auto") -> np.ndarray:
    """Shapley kernel weight ``(M-1)/(C(M,k) k (M-k))`` of each coalition (``inf_weight`` for
    the empty and the full one)."""
    return _impl(OP_SHAPLEY, backend)(np.ascontiguousarray(masks, dtype=np.uint8), float(inf_weight))


# ---------------------------------------------------------------------------------------- fit
def resolve_selection(feature_selection: str, num_features: int) -> int:
    """lime's ``auto``: forward selection up to 6 features, highest weights beyond."""
    if feature_selection not in SELECTIONS:
        raise ValueError(f"feature_selection must be one of {SELECTIONS}, got {feature_selection!r}")
    if feature_selection == "auto":
        feature_selection = "forward_selection" if num_features <= 6 else "highest_weights"
    return _ref.SELECT_CODES[feature_selection]


def _check_weights(w: np.ndarray) -> None:
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("kernel weights must be finite and non-negative")
    sums = w.reshape(w.shape[0], -1).sum(1) if w.ndim > 1 else np.array([w.sum()])
    if np.any(sums <= 0):
        raise ValueError(
            "all kernel weights are zero (every perturbed sample is too far from the instance for the "
            "kernel width): increase kernel_width or use a different distance")


def fit_surrogate(X: np.ndarray, Y: np.ndarray, w: np.ndarray, x0: Optional[np.ndarray] = None, *,
                  alpha: float = 1.0, fit_intercept: bool = True, feature_selection: str = "none",
                  num_features: Optional[int] = None, backend: str = "auto"):
    """Weighted ridge surrogate for every instance and every target at once.

    ``min_{c,β} Σ_s w_s (y_st - c_t - x_s·β_t)² + α |β_t|²`` on the features chosen by
    ``feature_selection`` (lime's paths: ``highest_weights`` = top ``|β·x0|`` of a ridge with
    α=0.01; ``forward_selection`` = greedy weighted R² of unregularised fits;
    ``lasso_path`` = the last LARS-lasso breakpoint with ≤ k nonzeros; ``auto`` as lime).
    The normal equations are solved by Cholesky; a numerically singular system falls back to
    the minimum-norm least-squares answer (what ``lstsq`` gives).

    Parameters
    ----------
    X : (B, S, F) or (S, F) interpretable samples.
    Y : (B, S, T) or (S, T) model outputs to explain.
    w : (B, S) or (S,) sample weights; not all zero.
    x0 : (B, F) or (F,), optional
        Row at which ``local_pred`` is evaluated; default: the first sample (lime).
    alpha : ridge penalty (lime: 1; 0 = weighted least squares).
    fit_intercept : bool
    feature_selection : str; num_features : int (default: all features).

    Returns
    -------
    dict with ``coef`` (B, T, F), ``intercept`` (B, T), ``score`` (B, T) weighted R²,
    ``local_pred`` (B, T), ``used`` (B, T, F) selection order + 1 (0 = not selected);
    without the leading B when the inputs had none.
    """
    squeeze = np.ndim(X) == 2
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if squeeze:
        X, Y, w = X[None], Y[None], w[None]
        if x0 is not None:
            x0 = np.asarray(x0)[None]
    if Y.ndim == 2:
        Y = Y[..., None]
    if X.ndim != 3 or Y.shape[:2] != X.shape[:2] or w.shape != X.shape[:2]:
        raise ValueError(f"shapes disagree: X {X.shape}, Y {Y.shape}, w {w.shape}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(Y))):
        raise ValueError("non-finite values in the surrogate data or model outputs")
    _check_weights(w)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    B, S, F = X.shape
    k = F if num_features is None else int(num_features)
    if k < 1:
        raise ValueError(f"num_features must be >= 1, got {k}")
    code = resolve_selection(feature_selection, k)
    x0 = X[:, 0] if x0 is None else np.asarray(x0, dtype=np.float64).reshape(B, F)
    coef, icpt, score, pred0, used = _impl(OP_FIT, backend)(
        np.ascontiguousarray(X), np.ascontiguousarray(Y), np.ascontiguousarray(w),
        np.ascontiguousarray(x0), float(alpha), bool(fit_intercept), code, k)
    out = dict(coef=coef, intercept=icpt, score=score, local_pred=pred0, used=used)
    if squeeze:
        out = {kk: v[0] for kk, v in out.items()}
    return out


OP_OUTPUT_CHECK = _define("output_check", _ref.output_check)


def output_check(Y: np.ndarray, backend: str = "auto") -> Tuple[bool, bool]:
    """One pass over model outputs (S, K): (all finite, every row a probability vector —
    entries in [0, 1] summing to 1 within ``1e-8 + 1e-5``, lime's ``np.allclose`` check)."""
    return _impl(OP_OUTPUT_CHECK, backend)(np.ascontiguousarray(Y, dtype=np.float64))


OP_FIT_LIME = _define("fit_lime", _ref.fit_lime)
_METRICS = {"weights": 0, "distances": 1, "cosine": 2, "euclidean": 3}


def fit_lime(X: np.ndarray, Y: np.ndarray, labels, wd: Optional[np.ndarray] = None, *, weights: str = "weights",
             kernel_width: float = 0.0, alpha: float = 1.0, feature_selection: str = "none",
             num_features: Optional[int] = None, backend: str = "auto"):
    """One instance's LIME fit for several labels in one kernel call: sample weights, the
    weighted Gram products and :func:`fit_surrogate`'s selection and ridge solves.

    ``X`` (S, F) uint8 coalitions or float64 features; ``Y`` (S, K) every model output (the
    kernel picks the ``labels`` columns itself).  ``weights``: ``"weights"`` — ``wd`` are the
    sample weights; ``"distances"`` — ``wd`` are distances, weighted by lime's kernel
    ``sqrt(exp(-d²/kernel_width²))``; ``"cosine"`` / ``"euclidean"`` — distances of the rows
    of ``X`` to the all-ones row (lime image / text), then the same kernel.  The intercept is
    fitted and ``local_pred`` is evaluated at row 0 (lime).

    Returns dict ``coef`` (T, F), ``intercept``, ``score``, ``local_pred`` (T,), ``used``
    (T, F) as :func:`fit_surrogate`.
    """
    if X.ndim != 2 or Y.ndim != 2 or Y.shape[0] != X.shape[0]:
        raise ValueError(f"shapes disagree: X {X.shape}, Y {Y.shape}")
    if X.dtype != np.uint8:
        X = np.ascontiguousarray(X, dtype=np.float64)
    Y = np.ascontiguousarray(Y, dtype=np.float64)
    labels = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= Y.shape[1]):
        raise IndexError(f"labels {labels.tolist()} out of range for {Y.shape[1]} model outputs")
    metric = _METRICS[weights]
    if metric:
        if not (kernel_width > 0 and math.isfinite(kernel_width)):
            raise ValueError(f"kernel_width must be a positive finite number, got {kernel_width}")
    wd = np.zeros(0) if wd is None else np.ascontiguousarray(wd, dtype=np.float64)
    if metric < 2 and wd.shape != (X.shape[0],):
        raise ValueError(f"need one weight / distance per sample ({X.shape[0]}), got {wd.shape}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    F = X.shape[1]
    k = F if num_features is None else int(num_features)
    if k < 1:
        raise ValueError(f"num_features must be >= 1, got {k}")
    coef, icpt, score, pred0, used, status = _impl(OP_FIT_LIME, backend)(
        X, Y, labels, wd, float(kernel_width), metric, float(alpha), resolve_selection(feature_selection, k), k)
    if status == _ref.FIT_NONFINITE:
        raise ValueError("non-finite values in the surrogate data or model outputs")
    if status == _ref.FIT_BAD_WEIGHTS:
        _check_weights(wd if metric == 0 else np.zeros(1))
        raise ValueError("kernel weights must be finite and non-negative")
    return dict(coef=coef, intercept=icpt, score=score, local_pred=pred0, used=used)


def lasso_fit(X: np.ndarray, Y: np.ndarray, w: np.ndarray, alpha: float, *, max_iter: int = 1000,
              tol: float = 1e-4, return_info: bool = False, backend: str = "auto"):
    """Weighted lasso ``1/(2Σw) Σ w_s (y_s - c - x_s·β)² + α|β|₁`` for every instance and
    target (scikit-learn's ``Lasso(alpha).fit(X, y, sample_weight=w)``, same algorithm and
    stopping rule).  X (B, S, F), Y (B, S, T) (or (B, S)), w (B, S) → coef (B, T, F),
    intercept (B, T); with ``return_info`` also info (B, T, 3): the final duality gap, the
    tolerance it was held to (``tol·|y_c|²``) and 1.0 where it met it, 0.0 where ``max_iter``
    ran out first (where scikit-learn warns ``ConvergenceWarning``).

    Shapes and finiteness are checked here (ValueError), before any kernel indexes the data."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if Y.ndim == 2:
        Y = Y[..., None]
    if X.ndim != 3 or Y.ndim != 3 or w.ndim != 2 or Y.shape[:2] != X.shape[:2] or w.shape != X.shape[:2]:
        raise ValueError(f"shapes disagree: X {X.shape}, Y {Y.shape}, w {w.shape} (need (B, S, F), (B, S, T), (B, S))")
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        raise ValueError("non-finite values in the surrogate data or model outputs")
    _check_weights(w)
    if not alpha > 0:
        raise ValueError(f"lasso needs alpha > 0, got {alpha}")
    coef, icpt, info = _impl(OP_LASSO, backend)(np.ascontiguousarray(X), np.ascontiguousarray(Y),
                                                np.ascontiguousarray(w), float(alpha), int(max_iter), float(tol))
    return (coef, icpt, info) if return_info else (coef, icpt)


OP_CWLS = _define("constrained_wls", _ref.constrained_wls)


def constrained_wls(Z: np.ndarray, Y: np.ndarray, w: np.ndarray, delta: np.ndarray, alpha: float = 0.0,
                    backend: str = "auto") -> Tuple[np.ndarray, np.ndarray]:
    """Weighted least squares under the efficiency constraint ``Σ_f φ_f = Δ`` (KernelSHAP):
    ``min Σ_s w_s (y_s - z_s·φ)² + α|φ|²  s.t.  1ᵀφ = Δ``, every instance and target at once.

    Z (B, S, F), Y (B, S, T) (outputs minus the baseline output), w (B, S), delta (B, T)
    (``f(x) - f(baseline)``) → phi (B, T, F), fallback (B,) int32 (1 where the system was
    singular and the minimum-norm KKT solution was used).
    """
    Z = np.asarray(Z, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    delta = np.asarray(delta, dtype=np.float64)
    _check_weights(w)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if Z.ndim != 3 or Y.shape[:2] != Z.shape[:2] or w.shape != Z.shape[:2] or delta.shape != (Z.shape[0], Y.shape[2]):
        raise ValueError(f"shapes disagree: Z {Z.shape}, Y {Y.shape}, w {w.shape}, delta {delta.shape}")
    return _impl(OP_CWLS, backend)(np.ascontiguousarray(Z), np.ascontiguousarray(Y), np.ascontiguousarray(w),
                                   np.ascontiguousarray(delta), float(alpha))


OP_TABULAR = _define("tabular_sample", _ref.tabular_sample)


def tabular_sample(n_rows: int, seed: int, plan: dict, *, stream: int = 0, row_offset: int = 0,
                   backend: str = "auto") -> Tuple[np.ndarray, np.ndarray]:
    """lime's tabular neighbourhood (surrogate features, model inputs), both (n_rows, D)
    float64, from a sampling plan built by :func:`xaikernels.methods.lime.TabularSampler`
    (arrays ``kind, cdf, values, inst, center, scale, lo_p, hi_p, bin_mean, bin_std,
    bin_fallback, row0``).  Row ``g`` depends only on ``(seed, stream, g)``."""
    p = plan
    return _impl(OP_TABULAR, backend)(int(n_rows), int(seed), int(stream), int(row_offset), p["kind"], p["cdf"],
                                      p["values"], p["inst"], p["center"], p["scale"], p["lo_p"], p["hi_p"],
                                      p["bin_mean"], p["bin_std"], p["bin_fallback"], p["row0"])


OP_NEIGHBOURHOOD = _define("tabular_neighbourhood", _ref.tabular_neighbourhood)


def tabular_neighbourhood(n_rows: int, seed: int, plan: dict, *, metric: str = "euclidean", stream: int = 0,
                          row_offset: int = 0, kernel_width: Optional[float] = None, gram: bool = False,
                          binary_uint8: bool = False, backend: str = "auto"):
    """lime's tabular neighbourhood fused with its standardisation and distances: returns
    (surrogate features (n, D), model inputs (n, D), distances to the instance (n,)).

    Discretised features draw a bin by its training frequency, then a value from the bin's
    truncated normal by inverse CDF (one uniform per element, no rejection; Φ⁻¹ by AS241) —
    lime's distribution, not lime's draws.  ``plan``:
    :meth:`xaikernels.methods.lime.TabularSampler.plan` (arrays ``kind, cdf, values, inst,
    center, scale, smean, sscale, ia, ib, bin_mean, bin_std, bin_min, bin_max, row0``).  Row
    ``g`` depends only on ``(seed, stream, g)``.  With ``kernel_width``, lime's kernel weights
    ``sqrt(exp(-d²/kernel_width²))`` come back as a fourth array, and with ``gram`` also a
    fifth, the augmented weighted Gram (D+1, D+1) of the surrogate rows for
    :func:`fit_lime_gram`.  ``binary_uint8``: when every surrogate feature is binary
    (categorical / discretised), the surrogate rows come back as uint8 0/1.

    The draws changed with issue 5 (the inverse-CDF sampler replaced the table / rejection
    sampler): a given seed now gives other, equally distributed, samples."""
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"distance metric must be 'cosine' or 'euclidean', got {metric!r}")
    width = 0.0
    if kernel_width is not None:
        width = float(kernel_width)
        if not (width > 0 and math.isfinite(width)):
            raise ValueError(f"kernel_width must be a positive finite number, got {kernel_width}")
    p = plan
    out = _impl(OP_NEIGHBOURHOOD, backend)(
        int(n_rows), int(seed), int(stream), int(row_offset), p["kind"], p["cdf"], p["values"], p["inst"], p["center"],
        p["scale"], p["smean"], p["sscale"], p["ia"], p["ib"], p["bin_mean"], p["bin_std"], p["bin_min"],
        p["bin_max"], p["row0"], metric, width, bool(gram), bool(binary_uint8))
    return out if kernel_width is not None else out[:3]


OP_FIT_LIME_GRAM = _define("fit_lime_gram", _ref.fit_lime_gram)


def fit_lime_gram(Z: np.ndarray, Y: np.ndarray, labels, w: np.ndarray, g: np.ndarray, *, alpha: float = 1.0,
                  feature_selection: str = "none", num_features: Optional[int] = None, backend: str = "auto"):
    """:func:`fit_lime` with sample weights ``w`` for a tabular neighbourhood whose sampler
    returned its augmented weighted Gram ``g`` (:func:`tabular_neighbourhood` with
    ``gram=True``): the fit centres ``g`` and passes over ``Z`` once for the label products.
    ``Z`` (S, F) float64 surrogate rows (row 0: the instance), ``Y`` (S, K) all model outputs.
    Returns the dict of :func:`fit_lime`."""
    Z = np.ascontiguousarray(Z, dtype=np.uint8 if Z.dtype == np.uint8 else np.float64)
    Y = np.ascontiguousarray(Y, dtype=np.float64)
    S, F = Z.shape
    if Y.ndim != 2 or Y.shape[0] != S or w.shape != (S,) or g.shape != (F + 1, F + 1):
        raise ValueError(f"shapes disagree: Z {Z.shape}, Y {Y.shape}, w {w.shape}, g {g.shape}")
    labels = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
    lab = labels.tolist()  # a few labels: Python's min / max, not two NumPy reductions
    if lab and (min(lab) < 0 or max(lab) >= Y.shape[1]):
        raise IndexError(f"labels {lab} out of range for {Y.shape[1]} model outputs")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    k = F if num_features is None else int(num_features)
    if k < 1:
        raise ValueError(f"num_features must be >= 1, got {k}")
    coef, icpt, score, pred0, used, status = _impl(OP_FIT_LIME_GRAM, backend)(
        Z, Y, labels, np.ascontiguousarray(w, dtype=np.float64), np.ascontiguousarray(g, dtype=np.float64),
        float(alpha), resolve_selection(feature_selection, k), k)
    if status == _ref.FIT_NONFINITE:
        raise ValueError("non-finite values in the surrogate data or model outputs")
    if status == _ref.FIT_BAD_WEIGHTS:
        raise ValueError("kernel weights must be finite and non-negative")
    return dict(coef=coef, intercept=icpt, score=score, local_pred=pred0, used=used)


OP_RENDER = _define("render_pieces", _ref.render_pieces)


def render_texts(pieces, piece_feature: np.ndarray, removed: str, masks: np.ndarray, *,
                 block_chars: int = 1 << 25, backend: str = "auto") -> list:
    """lime text's perturbed documents: ``pieces`` (list of str, words and separators that
    concatenate to the text), ``piece_feature`` (P,) int64 (-1 for a separator, always kept),
    ``masks`` (S, F): row ``s`` keeps the pieces of feature ``f`` where ``masks[s, f] != 0``
    and writes ``removed`` for the others (``""``: lime's bag of words).  Returns S strings.

    Rows go in blocks of about ``block_chars`` characters of text; each block's texts are
    written as UTF-8 bytes into one buffer by one kernel call and decoded once when all of it
    is ASCII (else row by row); lone surrogates survive (``surrogatepass``)."""
    enc = [p.encode("utf-8", "surrogatepass") for p in pieces]
    po = np.zeros(len(enc) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in enc], out=po[1:])
    pb = np.frombuffer(b"".join(enc), dtype=np.uint8)
    rb = np.frombuffer(removed.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    pf = np.ascontiguousarray(piece_feature, dtype=np.int64)
    masks = np.ascontiguousarray(masks)
    if masks.ndim != 2 or pf.shape != (len(enc),):
        raise ValueError(f"masks must be (S, F) and piece_feature one id per piece; got {masks.shape}, {pf.shape}")
    if pf.size and pf.max() >= masks.shape[1]:
        raise ValueError(f"piece features reach {int(pf.max())}; masks have {masks.shape[1]} columns")
    ascii_only = int(pb.max(initial=0)) < 128 and int(rb.max(initial=0)) < 128
    render = _impl(OP_RENDER, backend)
    step = max(1, int(block_chars) // (sum(len(p) for p in pieces) + 1))
    out: list = []
    for a in range(0, masks.shape[0], step):
        flat, off = render(pb, po, pf, rb, masks[a:a + step])
        bounds = zip(off[:-1].tolist(), off[1:].tolist())
        if ascii_only:
            # decoded straight from the kernel's buffer (no bytes copy of it first)
            big = codecs.ascii_decode(flat)[0]
            out.extend(big[i:j] for i, j in bounds)
        else:
            data = flat.tobytes()
            out.extend(data[i:j].decode("utf-8", "surrogatepass") for i, j in bounds)
    return out


MAX_KEY_BITS = 20  # segments per window: the row numbering keeps a stamp array over 2^M keys (8 MB)


def stem_rows(segs: np.ndarray, masks: np.ndarray, backend: str = "auto"):
    """Number the distinct coalitions every output position of a stem sees.

    Parameters
    ----------
    segs : (Q, M) int — the segments that position ``q``'s input window meets, then -1
        (M ≤ 20).
    masks : (S, F) uint8 — the samples' coalitions.

    Returns
    -------
    index : (S, Q) int32 — table row of sample ``s`` at position ``q``.
    row_pos : (T,) int32, row_key : (T,) int64 — each row's position and key
        ``Σ_j [masks[s, segs[q, j]] ≠ 0] · 2^j``; rows run position by position, and within
        one in the order the keys first occur among the samples.
    """
    segs = np.ascontiguousarray(segs, dtype=np.int32)
    masks = np.ascontiguousarray(masks, dtype=np.uint8)
    if segs.ndim != 2 or masks.ndim != 2:
        raise ValueError(f"segs (Q, M) and masks (S, F) expected, got {segs.shape} and {masks.shape}")
    if segs.shape[1] > MAX_KEY_BITS:
        raise ValueError(f"at most {MAX_KEY_BITS} segments per window, got {segs.shape[1]}")
    if np.any(np.diff((segs >= 0).astype(np.int8), axis=1) > 0):
        raise ValueError("each row of segs must list its segments first, then -1")
    if segs.size and segs.max() >= masks.shape[1]:
        raise ValueError(f"segs name feature {segs.max()}, the masks have {masks.shape[1]}")
    if masks.shape[0] * segs.shape[0] >= 2 ** 31:
        raise ValueError("more than 2^31 (sample, position) pairs")
    return _impl(OP_STEM_ROWS, backend)(segs, masks)


def stem_gatherer(table: ArrayLike, index: np.ndarray, backend: str = "auto"):
    """:func:`stem_gather` prepared for one table and index: checked once here, then
    ``fn(s0, s1, out)`` gathers samples ``s0..s1-1`` with a check of ``out`` only (for a loop
    over model batches)."""
    tv = _np_view(table)
    if tv.ndim != 2 or tv.dtype not in (np.float32, np.float64) or not tv.flags.c_contiguous:
        raise ValueError(f"table must be C-contiguous (T, C) float32/float64, got {tv.shape}/{tv.dtype}")
    if index.dtype != np.int32 or index.ndim != 2:
        raise ValueError(f"index must be (S, Q) int32, got {index.shape}/{index.dtype}")
    if index.size and (index.min() < 0 or index.max() >= tv.shape[0]):
        raise ValueError(f"index must lie in [0, {tv.shape[0]})")
    index = np.ascontiguousarray(index)
    kernel, C = _impl(OP_STEM, backend), tv.shape[1]

    def fn(s0: int, s1: int, out: ArrayLike) -> ArrayLike:
        ov, rows = _np_view(out), index[s0:s1]
        if ov.shape != rows.shape + (C,) or ov.dtype != tv.dtype or not ov.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous {rows.shape + (C,)} of dtype {tv.dtype}, got "
                             f"{ov.shape}/{ov.dtype}")
        kernel(tv, rows, ov)
        return out

    return fn


def stem_gather(table: ArrayLike, index: np.ndarray, out: ArrayLike, backend: str = "auto") -> ArrayLike:
    """``out[s, q] = table[index[s, q]]`` in place: every sample's stem output from the table
    of :func:`stem_rows`' rows (see :mod:`xaikernels.methods._stem`).

    Parameters
    ----------
    table : (T, C) float32/float64 array or CPU tensor.
    index : (S, Q) int32 rows in ``[0, T)``.
    out : (S, Q, C) C-contiguous array or CPU tensor of ``table``'s dtype; returned.
    """
    return stem_gatherer(table, index, backend)(0, index.shape[0], out)


def _check_windows(x_pad, fill_pad, pix_rank, n_cols, step, window):
    """(x_pad, fill_pad, pix_rank) contiguous, checked: one (Hp, Wp, C) dtype, (Q, RH·RW)
    ranks, windows inside the padded image."""
    x_pad, fill_pad = np.ascontiguousarray(x_pad), np.ascontiguousarray(fill_pad)
    if x_pad.shape != fill_pad.shape or x_pad.dtype != fill_pad.dtype or x_pad.ndim != 3:
        raise ValueError(f"x_pad and fill_pad must be (Hp, Wp, C) of one dtype, got {x_pad.shape}/{x_pad.dtype} "
                         f"and {fill_pad.shape}/{fill_pad.dtype}")
    RH, RW = window
    pix_rank = np.ascontiguousarray(pix_rank, dtype=np.int64)
    Q = pix_rank.shape[0]
    if pix_rank.shape != (Q, RH * RW):
        raise ValueError(f"pix_rank (Q, {RH * RW}) expected, got {pix_rank.shape}")
    n_rows = (Q + n_cols - 1) // n_cols
    if (n_rows - 1) * step[0] + RH > x_pad.shape[0] or (n_cols - 1) * step[1] + RW > x_pad.shape[1]:
        raise ValueError(f"the windows run past the padded image {x_pad.shape[:2]}")
    return x_pad, fill_pad, pix_rank


def stem_patches(x_pad: np.ndarray, fill_pad: np.ndarray, pix_rank: np.ndarray, row_pos: np.ndarray,
                 row_key: np.ndarray, n_cols: int, step: Tuple[int, int], window: Tuple[int, int],
                 backend: str = "auto") -> np.ndarray:
    """The input window of every table row of :func:`stem_rows`, channels first (small
    patches convolve faster so than channels last).

    Parameters
    ----------
    x_pad, fill_pad : (Hp, Wp, C) float32/float64 — the image and what hides a segment,
        zero-padded as the stem's windows need.
    pix_rank : (Q, RH·RW) int — bit of each window pixel's segment in its position's key,
        -1 for padding.
    row_pos, row_key : (T,) — each row's position (window origin ``(q // n_cols · step[0],
        q % n_cols · step[1])``) and key.
    window : (RH, RW).

    Returns
    -------
    (T, C, RH, RW) array: the image where the key keeps the pixel's segment, else the fill.
    """
    x_pad, fill_pad, pix_rank = _check_windows(x_pad, fill_pad, pix_rank, n_cols, step, window)
    RH, RW = window
    Q = pix_rank.shape[0]
    row_pos = np.ascontiguousarray(row_pos, dtype=np.int64)
    row_key = np.ascontiguousarray(row_key, dtype=np.int64)
    if row_pos.shape != row_key.shape or row_pos.ndim != 1:
        raise ValueError(f"row_pos / row_key (T,) expected, got {row_pos.shape}, {row_key.shape}")
    if row_pos.size and (row_pos.min() < 0 or row_pos.max() >= Q):
        raise ValueError(f"row_pos must lie in [0, {Q})")
    out = np.empty((len(row_pos), x_pad.shape[2], RH, RW), dtype=x_pad.dtype)
    return _impl(OP_STEM_PATCHES, backend)(x_pad, fill_pad, pix_rank, row_pos, row_key, int(n_cols), int(step[0]),
                                           int(step[1]), out)


def stem_segment_patches(x_pad: np.ndarray, fill_pad: np.ndarray, pix_rank: np.ndarray, offsets: np.ndarray,
                         n_cols: int, step: Tuple[int, int], window: Tuple[int, int],
                         backend: str = "auto") -> np.ndarray:
    """A stem's first convolution is linear in its window, so a table row's convolution is
    that of the fill's window plus those of ``x - fill`` on each segment the row's key keeps.
    This returns those windows: per position ``q``, ``out[offsets[q]]`` its window of the
    fill and ``out[offsets[q] + 1 + j]`` ``x - fill`` on the pixels of its segment ``j`` (0
    elsewhere) — Σ_q (1 + segments of q) windows instead of one per table row.

    Parameters
    ----------
    x_pad, fill_pad, pix_rank, n_cols, step, window : as for :func:`stem_patches`.
    offsets : (Q + 1,) int — non-decreasing from 0; position ``q`` has
        ``offsets[q + 1] - offsets[q] - 1`` segments, more than its largest ``pix_rank``.

    Returns
    -------
    (offsets[-1], C, RH, RW) array of the images' dtype.
    """
    x_pad, fill_pad, pix_rank = _check_windows(x_pad, fill_pad, pix_rank, n_cols, step, window)
    RH, RW = window
    Q = pix_rank.shape[0]
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if offsets.shape != (Q + 1,):
        raise ValueError(f"offsets (Q + 1,) = ({Q + 1},) expected, got {offsets.shape}")
    if offsets[0] != 0 or (Q and (np.diff(offsets) < 1 + pix_rank.max(1, initial=-1)).any()):
        raise ValueError("offsets must start at 0 and leave 1 + (segments) windows per position")
    out = np.empty((int(offsets[-1]), x_pad.shape[2], RH, RW), dtype=x_pad.dtype)
    return _impl(OP_STEM_SEGMENT_PATCHES, backend)(x_pad, fill_pad, pix_rank, offsets, int(n_cols), int(step[0]),
                                                   int(step[1]), out)


def stem_combine(z: np.ndarray, offsets: np.ndarray, row_pos: np.ndarray, row_key: np.ndarray,
                 backend: str = "auto") -> np.ndarray:
    """Table rows from per-segment terms: ``out[t] = z[b] + Σ_{j: bit j of row_key[t]} z[b + 1
    + j]`` with ``b = offsets[row_pos[t]]`` — ``z`` (P, K) being a linear map (a convolution
    without bias) of :func:`stem_segment_patches`' windows, the first term plus the bias.
    Returns (T, K) of ``z``'s dtype."""
    z = np.ascontiguousarray(z)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    row_pos = np.ascontiguousarray(row_pos, dtype=np.int64)
    row_key = np.ascontiguousarray(row_key, dtype=np.int64)
    if z.ndim != 2 or z.dtype not in (np.float32, np.float64) or offsets.ndim != 1 or row_pos.shape != row_key.shape:
        raise ValueError(f"z (P, K) float32/float64, offsets (Q + 1,), row_pos / row_key (T,) expected, got "
                         f"{z.shape}/{z.dtype}, {offsets.shape}, {row_pos.shape}, {row_key.shape}")
    Q = offsets.shape[0] - 1
    if offsets[-1] > z.shape[0] or (np.diff(offsets) < 1).any():
        raise ValueError(f"offsets must be increasing and end within z's {z.shape[0]} rows")
    if row_pos.size and (row_pos.min() < 0 or row_pos.max() >= Q or row_key.min() < 0
                         or (row_key >> (np.diff(offsets) - 1)[row_pos]).any()):
        raise ValueError("row_pos must lie in [0, Q) and each key name only its position's segments")
    out = np.empty((len(row_pos), z.shape[1]), dtype=z.dtype)
    return _impl(OP_STEM_COMBINE, backend)(z, offsets, row_pos, row_key, out)


def stem_representatives(index: np.ndarray, backend: str = "auto") -> np.ndarray:
    """For each table row of :func:`stem_rows`' ``index`` (S, Q) int32, the first sample that
    has it: (T,) int64 — any sample with a row's coalition shows that row's window."""
    index = np.ascontiguousarray(index)
    if index.dtype != np.int32 or index.ndim != 2:
        raise ValueError(f"index must be (S, Q) int32, got {index.shape}/{index.dtype}")
    if index.size and index.min() < 0:
        raise ValueError("index rows must be >= 0")
    out = np.empty(int(index.max()) + 1 if index.size else 0, dtype=np.int64)
    return _impl(OP_STEM_REPS, backend)(index, out)


def stem_level_ids(index1: np.ndarray, rep: np.ndarray, row_pos: np.ndarray, n_cols: int, *,
                   map_hw: Tuple[int, int], window: Tuple[int, int], step: Tuple[int, int],
                   origin: Tuple[int, int], stride: Tuple[int, int], pad: Tuple[int, int],
                   dilation: Tuple[int, int], kernel: Tuple[int, int], n_rows1: int,
                   backend: str = "auto") -> np.ndarray:
    """The bags for a table level built on the previous one (``methods._stem.level_plan``).

    The next stage's convolution over the previous level's rows is, per kernel offset ``k``,
    a sum of rows of ``U`` (n_rows1·K + 1, C_out) — row ``r·K + k`` is ``W_k · T₁[r]``, the
    last row zero — summed by :func:`torch.nn.functional.embedding_bag`.  For every row ``t``
    of the new level (position ``row_pos[t]`` of a map ``n_cols`` wide, its coalition that
    of sample ``rep[t]``) and every convolution output ``(i, j) < window`` of it — at
    ``(qy·step + origin + i, qx·step + origin + j)`` in the convolution's map —, this
    returns the ``K = kh·kw`` ids ``index1[rep[t], input position]·K + k``, or the zero row
    where the input position falls outside the previous level's ``map_hw`` (the
    convolution's zero padding).  Returns (T·window_h·window_w, K) int32.
    """
    index1, rep, row_pos, geometry = _level_ids_args(index1, rep, row_pos, n_cols, map_hw, window, step, origin,
                                                     stride, pad, dilation, kernel, n_rows1)
    out = np.empty((len(row_pos) * window[0] * window[1], kernel[0] * kernel[1]), dtype=np.int32)
    return _impl(OP_STEM_LEVEL_IDS, backend)(index1, rep, row_pos, int(n_cols), geometry, int(n_rows1), out)


def stem_level_id_chunks(index1: np.ndarray, rep: np.ndarray, row_pos: np.ndarray, n_cols: int, *,
                         map_hw: Tuple[int, int], window: Tuple[int, int], step: Tuple[int, int],
                         origin: Tuple[int, int], stride: Tuple[int, int], pad: Tuple[int, int],
                         dilation: Tuple[int, int], kernel: Tuple[int, int], n_rows1: int, chunk_rows: int,
                         backend: str = "auto"):
    """:func:`stem_level_ids` for rows ``t0..t1-1`` at a time, ``chunk_rows`` of them: yields
    ``(t0, t1, ids)``, ids the rows' bags ((t1 - t0)·window_h·window_w, K) int32, checked
    once.  ``ids`` is one buffer, overwritten by the next chunk: for a consumer that uses
    each chunk before asking for the next (``level_plan``'s ``embedding_bag``), it stays in
    cache, and the whole level's bags (12 MB on the bench's quickshift level) are never
    materialised."""
    index1, rep, row_pos, geometry = _level_ids_args(index1, rep, row_pos, n_cols, map_hw, window, step, origin,
                                                     stride, pad, dilation, kernel, n_rows1)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    fn = _impl(OP_STEM_LEVEL_IDS, backend)
    T, per, K = len(row_pos), window[0] * window[1], kernel[0] * kernel[1]
    buf = np.empty((min(T, chunk_rows) * per, K), dtype=np.int32)
    for t0 in range(0, T, chunk_rows):
        t1 = min(T, t0 + chunk_rows)
        yield t0, t1, fn(index1, rep[t0:t1], row_pos[t0:t1], int(n_cols), geometry, int(n_rows1),
                         buf[:(t1 - t0) * per])


def stem_level_max(index1: np.ndarray, rep: np.ndarray, row_pos: np.ndarray, n_cols: int, u: np.ndarray, *,
                   map_hw: Tuple[int, int], window: Tuple[int, int], step: Tuple[int, int],
                   origin: Tuple[int, int], stride: Tuple[int, int], pad: Tuple[int, int],
                   dilation: Tuple[int, int], kernel: Tuple[int, int], n_rows1: int,
                   ok: Optional[np.ndarray] = None, backend: str = "auto") -> np.ndarray:
    """A level's rows for a stage whose pool is a max (``methods._stem.level_plan``): for
    every row ``t``, the max over its window's convolution outputs ``w`` (those with
    ``ok[t, w]``; all without ``ok``) of the sums ``Σ_k u[ids[t·per + w, k]]`` over the
    bags of :func:`stem_level_ids` (same arguments), i.e. ``embedding_bag(ids, u,
    mode="sum")`` reduced by max per row, without the bags or the sums in memory.  -inf
    where no output is ok; NaN propagates (as torch.maximum).

    ``u`` (n_rows1·K + 1, C) C-contiguous float32 / float64 (its last row the zero row);
    ``ok`` (T, window_h·window_w) bool.  Returns (T, C) of ``u``'s dtype."""
    index1, rep, row_pos, geometry = _level_ids_args(index1, rep, row_pos, n_cols, map_hw, window, step, origin,
                                                     stride, pad, dilation, kernel, n_rows1)
    u = _np_view(u)
    K, per, T = kernel[0] * kernel[1], window[0] * window[1], len(row_pos)
    if u.ndim != 2 or u.shape[0] != n_rows1 * K + 1 or u.dtype not in (np.float32, np.float64):
        raise ValueError(f"u must be ({n_rows1}·{K} + 1, C) float32 or float64, got {u.shape}/{u.dtype}")
    u = np.ascontiguousarray(u)
    if ok is None:
        okv = np.empty((0, per), dtype=np.uint8)
    else:
        okv = _np_view(ok)
        if okv.shape != (T, per) or okv.dtype != np.bool_:
            raise ValueError(f"ok must be ({T}, {per}) bool, got {okv.shape}/{okv.dtype}")
        okv = np.ascontiguousarray(okv).view(np.uint8)
    out = np.empty((T, u.shape[1]), dtype=u.dtype)
    return _impl(OP_STEM_LEVEL_MAX, backend)(index1, rep, row_pos, int(n_cols), geometry, int(n_rows1), u, okv, out)


def _level_ids_args(index1, rep, row_pos, n_cols, map_hw, window, step, origin, stride, pad, dilation, kernel,
                    n_rows1):
    index1 = np.ascontiguousarray(index1)
    rep = np.ascontiguousarray(rep, dtype=np.int64)
    row_pos = np.ascontiguousarray(row_pos, dtype=np.int64)
    Hi, Wi = map_hw
    kh, kw = kernel
    if index1.dtype != np.int32 or index1.ndim != 2 or index1.shape[1] != Hi * Wi:
        raise ValueError(f"index1 must be (S, {Hi}·{Wi}) int32, got {index1.shape}/{index1.dtype}")
    if rep.shape != row_pos.shape or rep.ndim != 1:
        raise ValueError(f"rep and row_pos must be (T,), got {rep.shape} and {row_pos.shape}")
    if rep.size and (rep.min() < 0 or rep.max() >= index1.shape[0] or row_pos.min() < 0):
        raise ValueError(f"rep must lie in [0, {index1.shape[0]}) and row_pos be >= 0")
    if index1.size and (index1.min() < 0 or index1.max() >= n_rows1):
        raise ValueError(f"index1 rows must lie in [0, {n_rows1})")
    if (n_rows1 + 1) * kh * kw >= 2 ** 31 or min(window + stride + dilation + kernel) < 1 or n_cols < 1:
        raise ValueError("level geometry out of range")
    geometry = np.array([Hi, Wi, *window, *step, *origin, *stride, *pad, *dilation, kh, kw], dtype=np.int64)
    return index1, rep, row_pos, geometry


def stem_windows(seg_pad: np.ndarray, n_rows: int, n_cols: int, window: Tuple[int, int], step: Tuple[int, int],
                 backend: str = "auto") -> Tuple[np.ndarray, np.ndarray]:
    """The segments each stem output position's input window meets.

    Parameters
    ----------
    seg_pad : (Hp, Wp) int — segment ids, -1 in the padding.
    n_rows, n_cols : output positions per axis; position ``q = i · n_cols + j`` has the window
        ``seg_pad[i·step[0] : +window[0], j·step[1] : +window[1]]``.

    Returns
    -------
    segs : (Q, M) int32 — each window's segments in the order a row-major scan meets them,
        then -1 (M: the most any window meets, at least 1).
    pix_rank : (Q, RH·RW) int64 — the index in that list of each window pixel's segment
        (-1: padding).
    """
    seg_pad = np.ascontiguousarray(seg_pad, dtype=np.int64)
    RH, RW = int(window[0]), int(window[1])
    sh, sw = int(step[0]), int(step[1])
    if seg_pad.ndim != 2 or min(RH, RW, sh, sw, n_rows, n_cols) < 1:
        raise ValueError(f"seg_pad (Hp, Wp) and positive sizes expected, got {seg_pad.shape}, {window}, {step}")
    if (n_rows - 1) * sh + RH > seg_pad.shape[0] or (n_cols - 1) * sw + RW > seg_pad.shape[1]:
        raise ValueError(f"the windows run past the padded map {seg_pad.shape}")
    return _impl(OP_STEM_WINDOWS, backend)(seg_pad, int(n_rows), int(n_cols), (RH, RW), (sh, sw))
