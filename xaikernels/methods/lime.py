"""LIME (Ribeiro, Singh & Guestrin 2016, "Why Should I Trust You?") on the perturbation ops.

For an instance ``x`` with interpretable features ``f = 0..F-1`` (superpixels, table columns,
tokens), LIME draws binary coalitions ``z_s``, evaluates the model on the perturbed inputs
``h(z_s)``, weights each sample by ``π_s = sqrt(exp(-d(z_s)²/width²))`` and fits, for every
target ``t``, the weighted ridge surrogate

    min_{c,β} Σ_s π_s (f_t(h(z_s)) - c_t - z_s·β_t)² + α |β_t|²

(α = 1 as lime's default ``Ridge``).  The library's work — sampling, construction of the
perturbed batch, distances, kernel weights and the fits for all targets at once — runs in the
Numba kernels of :mod:`xaikernels.ops.perturb`; the model sees preallocated batches.

Public entry points: :func:`lime_image`, :func:`lime_tabular`, :func:`lime_text` and the
building blocks reused by the lime / Captum drop-ins (:class:`TabularSampler`,
:class:`TextIndex`, :func:`segment_image`, :func:`segment_fill`).
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from xaikernels import _validate
from xaikernels._model_guard import ModelGuard
from xaikernels.methods import _stem
from xaikernels.ops import perturb as P


# ------------------------------------------------------------------------------------ results
@dataclass
class LimeResult:
    """Surrogate fits for a batch of instances (lists are per instance: the number of
    interpretable features may differ between instances).

    Attributes
    ----------
    coef : list of (T, F_n) float64 arrays — surrogate coefficients (0 outside the selection).
    intercept, score, local_pred : (N, T) float64 — intercept, weighted R², surrogate at the
        first sample (the instance).
    targets : (N, T) int64 — the explained output indices.
    feature_map : list of int64 arrays — feature id of every position (segments), or None.
    used : list of (T, F_n) int32 — selection order + 1 (0 = not selected).
    n_evals : int — model evaluations (samples) per instance.
    extras : dict — ``"effective_samples"`` (N,): the kernel weights' Kish effective sample
        size ``(Σw)²/Σw²`` per instance (below 2 the fit warns: the weight sits on the
        instance alone and the surrogate explains nothing); image runs add ``"stem"``,
        ``"layout"`` and ``"spatial"``, tabular runs ``"sampler"``.
    """

    coef: List[np.ndarray]
    intercept: np.ndarray
    score: np.ndarray
    local_pred: np.ndarray
    targets: np.ndarray
    feature_map: Optional[List[np.ndarray]] = None
    used: Optional[List[np.ndarray]] = None
    n_evals: int = 0
    extras: Dict[str, object] = field(default_factory=dict)

    def attribution(self) -> torch.Tensor:
        """Coefficients painted onto the feature map: (N, T, *spatial) float32."""
        if self.feature_map is None:
            raise ValueError("no feature map recorded")
        maps = [torch.from_numpy(c[:, fm]).float() for c, fm in zip(self.coef, self.feature_map)]
        shape = self.extras.get("spatial")
        out = torch.stack(maps)
        return out.reshape(out.shape[0], out.shape[1], *shape) if shape is not None else out


# -------------------------------------------------------------------------------- model calls
def postprocess(out: torch.Tensor, output: Union[str, Callable, None]) -> torch.Tensor:
    if output is None or output == "logits" or output == "identity":
        return out
    if output == "softmax":
        if out.dim() == 2 and out.shape[1] == 1:
            raise ValueError("output='softmax' over a single model output is the constant 1 (every coefficient "
                             "would be 0): pass output='logits' to explain the score itself, or 'sigmoid'")
        return torch.softmax(out.float() if out.dtype in (torch.float16, torch.bfloat16) else out, dim=1)
    if output == "sigmoid":
        return torch.sigmoid(out)
    if callable(output):
        return output(out)
    raise ValueError(f"output must be 'softmax', 'sigmoid', 'logits' or a callable, got {output!r}")


def _resolve_targets(target, first_out: torch.Tensor, top_labels: Optional[int]) -> np.ndarray:
    """Targets (N, T) from an int / sequence / (N,) or (N, T) tensor / None (argmax)."""
    n, k = first_out.shape
    if top_labels is not None:
        if top_labels < 1 or top_labels > k:
            raise ValueError(f"top_labels must be in 1..{k}, got {top_labels}")
        order = np.argsort(first_out.detach().cpu().double().numpy(), axis=1)[:, ::-1]
        return np.ascontiguousarray(order[:, :top_labels])
    if isinstance(target, torch.Tensor) and target.dim() == 2 or (
            isinstance(target, (list, tuple)) and len(target) and isinstance(target[0], (list, tuple))):
        t = torch.as_tensor(target, dtype=torch.long).reshape(n, -1)
        if t.min() < 0 or t.max() >= k:
            raise IndexError(f"target out of range: the model has {k} outputs")
        return t.numpy()
    return _validate.resolve_target(target, first_out).cpu().numpy().reshape(n, 1)


def channels_last_candidate(model, sample_shape, dtype, device) -> bool:
    """Whether a model's batches might run faster in channels-last layout: a CPU
    ``nn.Module`` in eval mode (the probe's extra call must not move BatchNorm statistics)
    with a 2-d convolution, on (C, H, W) float32 / bfloat16 / float16 samples
    (oneDNN's convolutions and PyTorch's CPU pooling run faster on channels-last float32
    input: 1.9-2.5× per forward in ``bench/results/layout.md``; float64 has no such kernels)."""
    return (isinstance(model, nn.Module) and not model.training and len(sample_shape) == 3
            and torch.device(device).type == "cpu"
            and dtype in (torch.float32, torch.bfloat16, torch.float16)
            and any(isinstance(m, nn.Conv2d) for m in model.modules()))


class LayoutProbe:
    """Runs a model's batches channels-last when that gives the model's own outputs.

    The first batch runs channels-last, and the model is run on its first two samples in the
    ordinary contiguous layout; channels-last is kept when the outputs agree to float rounding
    (``rtol=1e-3``, ``atol=1e-4·max|output|``).  A model that raises on channels-last input
    (a ``.view`` of a permuted activation), or whose outputs differ (a custom op reading raw
    memory), runs contiguous from then on, that batch included.  ``layout`` says which ran
    and why.

    The check costs one forward call beyond the caller's batches (on two rows): comparing
    layouts needs the model's output on the same rows in both, and running the whole first
    batch twice would cost more.  That call, and the channels-last batches, are visible to
    forward hooks and to code in ``forward``; callers that must reproduce another library's
    forward calls exactly (the Captum drop-ins with hooked models) do not enable the probe."""

    def __init__(self, model, forward_args=(), enabled: bool = True):
        self.model = model
        self.forward_args = tuple(forward_args)
        self.layout = None if enabled else "contiguous"

    def __call__(self, batch: torch.Tensor, *rest) -> torch.Tensor:
        """``model(batch, *forward_args, *rest)``; ``rest`` tensors whose first dimension is
        the batch's are sliced with it for the contiguous reference run."""
        args = self.forward_args + rest
        if self.layout == "channels_last":
            return self.model(batch.contiguous(memory_format=torch.channels_last), *args)
        if self.layout is not None:
            return self.model(batch, *args)
        try:
            out = self.model(batch.contiguous(memory_format=torch.channels_last), *args)
        except RuntimeError as e:
            self.layout = f"contiguous (channels-last input raised: {str(e).splitlines()[0][:80]})"
            return self.model(batch, *args)
        B = batch.shape[0]
        k = min(2, B)
        ref = self.model(batch[:k], *(a[:k] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == B else a
                                      for a in args))
        if (isinstance(out, torch.Tensor) and isinstance(ref, torch.Tensor) and out.dim() and ref.dim()
                and out.shape[0] == B and ref.shape[0] == k and out.shape[1:] == ref.shape[1:]
                and out.dtype == ref.dtype and out.is_floating_point()):
            got = out[:k].float()
            want = ref.float()
            tol = 1e-4 * float(want.abs().max()) if want.numel() else 0.0
            if bool(torch.isfinite(want).all()) and torch.allclose(got, want, rtol=1e-3, atol=tol):
                self.layout = "channels_last"
                return out
        self.layout = "contiguous (channels-last outputs differ from the model's)"
        return self.model(batch, *args)


class _Streamer:
    """Evaluate the model on perturbed copies, ``batch_size`` rows at a time, written into
    one preallocated buffer (rows of several instances may share a batch).  A CPU conv net
    on float32 samples runs channels-last where that reproduces its outputs
    (:class:`LayoutProbe`; ``layout`` says which ran)."""

    def __init__(self, model: Callable, sample_shape, dtype, device, batch_size: int,
                 output, forward_args: Sequence = (), progress: bool = False, desc: str = "lime"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = int(batch_size)
        self.buf = torch.empty((self.batch_size,) + tuple(sample_shape), dtype=dtype)
        self.device = device
        self.output = output
        self.forward_args = tuple(forward_args)
        self.progress = progress
        self.desc = desc
        self.probe = LayoutProbe(model, self.forward_args,
                                 channels_last_candidate(model, sample_shape, dtype, device))

    @property
    def layout(self) -> str:
        return self.probe.layout or "contiguous"

    def run(self, n_rows: int, fill_rows: Callable[[torch.Tensor, int, int], None],
            n_outputs: Optional[int] = None) -> torch.Tensor:
        """``fill_rows(buf_view, start, stop)`` writes global rows start..stop-1;
        ``n_outputs``: the outputs per row every batch must return (the first call's)."""
        outs = []
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_rows, desc=self.desc, unit="sample")
        for start in range(0, n_rows, self.batch_size):
            stop = min(start + self.batch_size, n_rows)
            view = self.buf[: stop - start]
            fill_rows(view, start, stop)
            inp = view.to(self.device, non_blocking=True) if self.device.type != "cpu" else view
            with torch.no_grad():
                out = self.probe(inp)
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            if isinstance(out, torch.Tensor) and out.dim() == 1:
                out = out.unsqueeze(1)  # one score per sample, as the first call took it
            if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != stop - start or (
                    n_outputs is not None and out.shape[1] != n_outputs):
                raise ValueError(
                    f"the model must return (batch, outputs) for a batch of {stop - start}"
                    + (f" with the {n_outputs} outputs of its first call" if n_outputs is not None else "")
                    + f", got {got}")
            outs.append(postprocess(out, self.output).detach().to("cpu", torch.float64))
            if bar is not None:
                bar.update(stop - start)
        if bar is not None:
            bar.close()
        return torch.cat(outs)


# ------------------------------------------------------------------------------- segmentation
def grid_segments(height: int, width: int, rows: int = 8, cols: int = 8) -> np.ndarray:
    """A regular grid of ``rows × cols`` cells (ids row-major), clipped to the image."""
    if rows < 1 or cols < 1:
        raise ValueError("grid needs rows, cols >= 1")
    r = np.minimum((np.arange(height) * rows) // height, rows - 1)
    c = np.minimum((np.arange(width) * cols) // width, cols - 1)
    return (r[:, None] * cols + c[None, :]).astype(np.int64)


def segment_image(img_hwc: np.ndarray, method: str = "quickshift", **kwargs) -> np.ndarray:
    """Superpixels of an (H, W, C) image: ``quickshift`` (lime's default: kernel_size=4,
    max_dist=200, ratio=0.2), ``slic``, ``felzenszwalb`` (scikit-image) or ``grid``
    (``rows``, ``cols``).  Returns consecutive int64 ids."""
    h, w = img_hwc.shape[:2]
    if method == "grid":
        return grid_segments(h, w, kwargs.get("rows", 8), kwargs.get("cols", 8))
    try:
        from skimage import segmentation as skseg
    except ImportError as exc:  # pragma: no cover
        raise ImportError(f"segments={method!r} needs scikit-image (`pip install scikit-image`), "
                          "or pass segments='grid' / your own segment map") from exc
    img = np.asarray(img_hwc, dtype=np.float64)
    if method == "quickshift":
        kw = dict(kernel_size=4, max_dist=200, ratio=0.2, rng=0)
        kw.update(kwargs)
        if img.shape[2] != 3:
            img = np.repeat(img[..., :1], 3, axis=2)
        seg = skseg.quickshift(img, **kw)
    elif method == "slic":
        kw = dict(n_segments=50, compactness=10.0, start_label=0)
        kw.update(kwargs)
        seg = skseg.slic(img, channel_axis=-1, **kw)
    elif method == "felzenszwalb":
        kw = dict(scale=100, sigma=0.5, min_size=20)
        kw.update(kwargs)
        seg = skseg.felzenszwalb(img, channel_axis=-1, **kw)
    else:
        raise ValueError(f"unknown segmentation {method!r}; use 'quickshift', 'slic', 'felzenszwalb', "
                         "'grid' or pass a segment map")
    return np.unique(seg, return_inverse=True)[1].reshape(h, w).astype(np.int64)


def segment_fill(x_apb: np.ndarray, seg: np.ndarray, n_features: int, mode) -> np.ndarray:
    """Fill values for hidden features, (A, P, B) like ``x_apb``.

    ``"mean"``: each segment's mean per channel (lime's default); a number: that constant;
    ``"blur"`` / ``("blur", sigma)``: a Gaussian-blurred copy (needs the image layout, done by
    the caller); an array: used as is (broadcast to the shape)."""
    if isinstance(mode, str) and mode == "mean":
        A, Pn, B = x_apb.shape
        cnt = np.bincount(seg, minlength=n_features).astype(np.float64)
        means = np.empty((A, n_features, B))
        for a in range(A):
            for b in range(B):
                means[a, :, b] = np.bincount(seg, weights=x_apb[a, :, b], minlength=n_features) / cnt
        # one gather of whole (A, ·, B) rows instead of a strided scatter per channel
        return np.take(means, seg, axis=1).astype(x_apb.dtype, copy=False)
    if isinstance(mode, (int, float)) and not isinstance(mode, bool):
        return np.full_like(x_apb, mode)
    arr = np.asarray(mode)
    if arr.dtype.kind in "fiu":
        return np.ascontiguousarray(np.broadcast_to(arr.astype(x_apb.dtype).reshape(-1), (x_apb.size,))
                                    .reshape(x_apb.shape)) if arr.size in (1, x_apb.size) else _bad_fill(arr, x_apb)
    raise ValueError(f"fill must be 'mean', 'blur', a number or an array, got {mode!r}")


def _bad_fill(arr, x):
    raise ValueError(f"fill array has {arr.size} values; expected 1 or {x.size}")


def _blur_chw(x_chw: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = (k / k.sum()).to(torch.float32)
    c = x_chw.shape[0]
    xx = x_chw.float()[None]
    xx = torch.nn.functional.pad(xx, (radius, radius, radius, radius), mode="replicate")
    xx = torch.nn.functional.conv2d(xx, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    xx = torch.nn.functional.conv2d(xx, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return xx[0].to(x_chw.dtype)


def _as_np(t: torch.Tensor) -> np.ndarray:
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


# --------------------------------------------------------------------------------- lime_image
def lime_image(model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *,
               segments: Union[str, np.ndarray, torch.Tensor] = "quickshift", n_samples: int = 1000,
               batch_size: int = 100, fill="mean", kernel_width: float = 0.25, distance: str = "cosine",
               alpha: float = 1.0, feature_selection: str = "none", num_features: Optional[int] = None,
               top_labels: Optional[int] = None, output: Union[str, Callable, None] = "softmax",
               seed: int = 0, segment_kwargs: Optional[dict] = None, masks: Optional[Sequence[np.ndarray]] = None,
               forward_args: Sequence = (), progress: bool = False, check_mode: bool = True,
               stem: str = "auto", backend: str = "auto") -> LimeResult:
    """LIME for image classifiers, batched over instances and targets.

    Parameters
    ----------
    model : nn.Module mapping (B, C, H, W) to (B, K) scores; eval mode expected.
    x : Tensor (N, C, H, W), floating point (float16/bfloat16 kept as is in the batches).
    target : int | sequence of N ints | (N,) or (N, T) tensor | None (predicted class).
    segments : "quickshift" | "slic" | "felzenszwalb" | "grid" | int array (H, W) or (N, H, W)
        Superpixels; ``segment_kwargs`` go to the segmenter (grid: ``rows``, ``cols``).
        A user map must give every pixel an id in 0..F-1 without gaps.
    n_samples : int, default 1000 — samples per instance, the first being the instance.
    batch_size : int, default 100 — rows per model call (one preallocated buffer).
    fill : "mean" (segment mean colour, lime's default) | number | "blur" | ("blur", sigma) |
        tensor (C, H, W) or (N, C, H, W).
    kernel_width : float, default 0.25 — ``π = sqrt(exp(-d²/width²))``.
    distance : "cosine" (lime) | "euclidean" — between binary coalitions and all-ones.
    alpha : ridge penalty, default 1 (lime).
    feature_selection : "none" (default) | "auto" | "highest_weights" | "forward_selection" |
        "lasso_path"; num_features : k (default all).
    top_labels : explain the k highest-scoring outputs of each instance instead of ``target``.
    output : "softmax" (default; lime explains probabilities) | "sigmoid" | "logits" | callable.
    seed : int — counter-based RNG seed; instance n uses stream n.
    masks : optional list of (n_samples, F_n) uint8 masks per instance (bypasses sampling).
    forward_args : extra positional arguments for ``model``.
    progress : tqdm bar over model batches.
    stem : "auto" (default) | "on" | "off" — coalition tables for the model's stem
        (:mod:`xaikernels.methods._stem`): the leading convolution / activation / pooling
        stages of a CPU float32/float64 model traceable by ``torch.fx`` are evaluated once
        per distinct coalition of the segments that each output position's window meets
        (among the samples), so that a sample costs a table gather plus the rest of the
        network.  The same numbers up to float rounding,
        checked on the instance before use.  "auto" uses them where they save work and
        evaluates the model as is otherwise; "on" raises when they cannot be used; the
        result's ``extras["stem"]`` says which ran and why.  Without tables, a CPU conv net
        on float32 input runs its batches channels-last where that reproduces its outputs on
        the first batch (:class:`LayoutProbe`); ``extras["layout"]`` says which ran.
    backend : "auto" | "numba" | "reference".

    Returns
    -------
    LimeResult; ``result.attribution()`` is (N, T, H, W).
    """
    _validate.check_input(x, min_dim=4, max_dim=4)
    if check_mode and isinstance(model, nn.Module):
        _validate.check_mode(model)
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    if distance not in ("cosine", "euclidean"):
        raise ValueError(f"distance must be 'cosine' or 'euclidean', got {distance!r}")
    if stem not in ("auto", "on", "off"):
        raise ValueError(f"stem must be 'auto', 'on' or 'off', got {stem!r}")
    N, C, H, W = x.shape
    xc = x.detach().cpu().contiguous()
    seg_list = _image_segments(xc, segments, segment_kwargs or {})
    guard = ModelGuard(model) if isinstance(model, nn.Module) else None
    if guard is not None:
        guard.__enter__()
    try:
        with torch.no_grad():
            # the raw output checked first: a 1-D score per sample is (N, 1), anything else
            # but (N, K) a clear error instead of the post-processing's IndexError
            first = postprocess(_validate.check_output(model(x.detach(), *forward_args)), output)
        targets = _resolve_targets(target, first, top_labels)
        feats, fills, mask_list = [], [], []
        for n in range(N):
            seg_n, F = P.check_feature_map(seg_list[n], H * W, "segments")
            feats.append((seg_n, F))
            x_apb = P.as_apb(xc[n], "chw")
            fills.append(_image_fill(xc[n], x_apb, seg_n, F, fill, n))
            if masks is not None:
                m = np.ascontiguousarray(masks[n], dtype=np.uint8)
                if m.shape != (n_samples, F):
                    raise ValueError(f"masks[{n}] must be ({n_samples}, {F}), got {m.shape}")
            else:
                m = P.sample_masks(n_samples, F, seed, stream=n, first_row_ones=True, backend=backend)
            mask_list.append(m)

        plans, tail, stem_info = stem_or_reason(
            stem, lambda: _stem_plans(model, x, xc, fills, feats, mask_list, forward_args, backend, stem))
        if plans is not None:
            streamer, fill_rows = table_streamer(plans, tail, np.arange(N + 1) * n_samples, xc.dtype, x.device,
                                                 batch_size, output, progress, "lime_image")
        else:
            # prepared once per instance (feature-map bitmaps), then one kernel call per batch
            builders = [P.PerturbedBuilder(P.as_apb(xc[n], "chw"), fills[n], feats[n][0], backend=backend)
                        for n in range(N)]

            def fill_rows(view, start, stop):
                r = start
                while r < stop:
                    n, s = divmod(r, n_samples)
                    e = min(stop, (n + 1) * n_samples)
                    dst = view[r - start: e - start].reshape(e - r, C, H * W, 1)
                    builders[n](mask_list[n][s: s + e - r], dst)
                    r = e

            streamer = _Streamer(model, (C, H, W), xc.dtype, x.device, batch_size, output, forward_args,
                                 progress, "lime_image")
        Y = streamer.run(N * n_samples, fill_rows, first.shape[1]).numpy().reshape(N, n_samples, -1)
        layout = "channels_last (the tables' tail)" if plans is not None else streamer.layout
    finally:
        if guard is not None:
            guard.__exit__(None, None, None)
    res = _fit_instances(mask_list, Y, targets, distance, kernel_width, alpha, feature_selection,
                         num_features, backend, [f[0] for f in feats], (H, W), n_samples)
    res.extras["stem"] = stem_info
    res.extras["layout"] = layout
    return res


def stem_or_reason(stem: str, make: Callable):
    """``make()`` → (plans, tail, description) unless ``stem == "off"``; when the stem cannot
    be tabulated, "on" raises ValueError and "auto" returns (None, None, "off: <reason>")."""
    if stem == "off":
        return None, None, "off"
    try:
        return make()
    except _stem.StemUnavailable as e:
        if stem == "on":
            raise ValueError(f"stem='on', but the stem cannot be tabulated: {e}") from None
        return None, None, f"off: {e}"


def table_streamer(plans, tail, starts: np.ndarray, dtype, device, batch_size, output, progress, desc):
    """A streamer over the tail and its ``fill_rows``: global rows ``starts[n] ..
    starts[n + 1] - 1`` are instance ``n``'s samples, gathered from ``plans[n]``."""
    Cs = plans[0].out_hwc[2]

    def fill_rows(view, start, stop):
        r = start
        while r < stop:
            n = int(np.searchsorted(starts, r, side="right") - 1)
            e = min(stop, int(starts[n + 1]))
            s = r - int(starts[n])
            plans[n].gather(s, s + e - r, view[r - start: e - start].view(e - r, -1, Cs))
            r = e

    return _Streamer(lambda b: tail(b.permute(0, 3, 1, 2)), plans[0].out_hwc, dtype, device, batch_size, output,
                     (), progress, desc), fill_rows


def _stem_plans(model, x, xc, fills, feats, mask_list, forward_args, backend, mode: str = "auto"):
    """Stem tables for every instance, their tail and a description; raise
    :class:`_stem.StemUnavailable` when the model is evaluated as is.  ``mode="auto"``
    declines work too small to pay for the set-up; "on" takes the tables whenever it can."""
    if forward_args:
        raise _stem.StemUnavailable("forward_args are given")
    if x.device.type != "cpu" or xc.dtype not in (torch.float32, torch.float64):
        raise _stem.StemUnavailable(f"the input is {xc.dtype} on {x.device.type} (tables: float32/float64 on CPU)")
    if mode == "auto" and sum(len(m) for m in mask_list) * xc[0].numel() < SMALL_WORK:
        raise _stem.StemUnavailable(f"too little work for the tables' set-up (samples × input size < {SMALL_WORK:.0e})")
    st = _stem.trace_stem(model)
    N, C, H, W = xc.shape
    fill_imgs = [f.reshape(C, H, W) for f in fills]
    segs = [f[0] for f in feats]
    plans, tail = _stem.build_plans(st, list(xc), fill_imgs, segs, mask_list, backend,
                                    min_gain=_stem.MIN_GAIN if mode == "auto" else -math.inf)
    _stem.check_plans(tail, model, list(xc), fill_imgs, segs, mask_list, plans)
    lv = plans[0].levels
    return plans, tail, (f"tables: {st.describe(plans[0].depth)} ({sum(p.rows for p in plans)} rows, "
                         f"≤ {max(p.max_segments for p in plans)} segments per window"
                         f"{f'; {lv} levels' if lv > 1 else ''})")


SMALL_WORK = 1e6  # samples × input elements below which "auto" does not even trace the model


def _image_segments(xc, segments, kw) -> List[np.ndarray]:
    N, C, H, W = xc.shape
    if isinstance(segments, str):
        return [segment_image(xc[n].permute(1, 2, 0).float().numpy(), segments, **kw) for n in range(N)]
    s = segments.cpu().numpy() if isinstance(segments, torch.Tensor) else np.asarray(segments)
    if s.shape == (H, W):
        return [s] * N
    if s.shape == (N, H, W):
        return list(s)
    if s.ndim == 4 and s.shape[1] == 1 and s.shape[0] == N:
        return list(s[:, 0])
    raise ValueError(f"segments must be (H, W) = {(H, W)} or (N, H, W) covering the image, got {s.shape}")


def _image_fill(x_chw: torch.Tensor, x_apb, seg, F, fill, n):
    if isinstance(fill, str) and fill == "blur" or isinstance(fill, tuple) and fill and fill[0] == "blur":
        sigma = fill[1] if isinstance(fill, tuple) else 3.0
        return P.as_apb(_blur_chw(x_chw, float(sigma)), "chw").contiguous()
    if isinstance(fill, torch.Tensor):
        f = fill.detach().cpu().to(x_chw.dtype)
        if f.dim() == 4:
            f = f[n]
        return P.as_apb(f.expand_as(x_chw).contiguous(), "chw")
    if isinstance(fill, str) and fill == "mean":
        # segment means in float64, stored in the image dtype (bfloat16 through float32)
        xa = x_apb.float().numpy() if x_apb.dtype == torch.bfloat16 else x_apb.numpy()
        m = segment_fill(xa, seg, F, "mean")
        return torch.from_numpy(m).to(x_chw.dtype)
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return torch.full_like(x_apb, float(fill))
    raise ValueError(f"fill must be 'mean', 'blur', ('blur', sigma), a number or a tensor, got {fill!r}")


def effective_samples(w: np.ndarray) -> float:
    """Kish's effective sample size of kernel weights, ``(Σw)² / Σw²``: the number of equally
    weighted samples that carry as much information (1 when one sample has all the weight)."""
    w = np.asarray(w, dtype=np.float64)
    s2 = float(np.dot(w, w))
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


def _check_weights(n_eff: float, n_samples: int, kernel_width: float, distance: str, where: str) -> None:
    # fewer than two effective samples: lime's kernel has put (nearly) all its weight on the
    # instance itself, and the surrogate's coefficients and score describe nothing
    if n_eff < 2.0:
        warnings.warn(f"{where}: the kernel weights carry {n_eff:.2f} effective samples of {n_samples} "
                      f"(kernel_width={kernel_width:g} is small for these {distance} distances): the surrogate "
                      "fits the instance alone, its coefficients and score mean nothing; increase kernel_width "
                      "(extras['effective_samples'] reports the figure)", RuntimeWarning, stacklevel=3)


def _fit_instances(mask_list, Y, targets, distance, kernel_width, alpha, feature_selection, num_features,
                   backend, feature_maps, spatial, n_samples) -> LimeResult:
    N, T = targets.shape
    coefs, used_l = [], []
    icpt = np.zeros((N, T))
    score = np.zeros((N, T))
    pred = np.zeros((N, T))
    n_eff = np.zeros(N)
    for n in range(N):
        m = mask_list[n]
        F = m.shape[1]
        n_eff[n] = effective_samples(P.exp_kernel(P.row_distances(m, np.ones(F), distance, backend=backend),
                                                  kernel_width, backend=backend))
        _check_weights(n_eff[n], m.shape[0], kernel_width, distance, "lime")
        # distances of the coalitions to the all-ones row, lime's kernel and the fit in one
        # kernel call (0/1 coalitions: the weighted Gram by class popcounts)
        fit = P.fit_lime(m, Y[n], targets[n], None, weights=distance, kernel_width=kernel_width, alpha=alpha,
                         feature_selection=feature_selection, num_features=num_features or F, backend=backend)
        coefs.append(fit["coef"])
        used_l.append(fit["used"])
        icpt[n], score[n], pred[n] = fit["intercept"], fit["score"], fit["local_pred"]
    return LimeResult(coefs, icpt, score, pred, targets, feature_maps, used_l, n_samples,
                      extras={"spatial": spatial, "effective_samples": n_eff})


def bin_stats(col: np.ndarray, qts: np.ndarray):
    """lime's per-bin statistics of a training column with inner edges ``qts`` (bin k =
    ``searchsorted(qts, x) == k``): (means, stds + 1e-11, mins, maxs) arrays; an empty bin has
    mean 0 and std 1e-11; mins / maxs are the column's extremes and the edges."""
    idx = np.searchsorted(qts, col)
    nb = len(qts) + 1
    means = np.array([col[idx == k].mean() if np.any(idx == k) else 0.0 for k in range(nb)])
    stds = np.array([col[idx == k].std() if np.any(idx == k) else 0.0 for k in range(nb)]) + 1e-11
    return means, stds, np.r_[col.min(), qts], np.r_[qts, col.max()]


def entropy_edges(col: np.ndarray, labels, random_state) -> np.ndarray:
    """lime's entropy bins of one feature: the split thresholds of a depth-3 entropy decision
    tree (scikit-learn) fitted on the labels, sorted; the median when the tree does not split."""
    from sklearn.tree import DecisionTreeClassifier

    dt = DecisionTreeClassifier(criterion="entropy", max_depth=3, random_state=random_state)
    dt.fit(np.asarray(col).reshape(-1, 1), labels)
    qts = dt.tree_.threshold[dt.tree_.children_left > -1]
    return np.sort(qts) if qts.shape[0] else np.array([np.median(col)])


# ------------------------------------------------------------------------------------ tabular
@dataclass
class Binning:
    """Bins defined outside :class:`TabularSampler` (a lime discretizer object, or lime's
    ``training_data_stats``).

    ``discretize(rows)``: the rows (1-D or 2-D float arrays) with every discretised feature
    replaced by its bin index (other features unchanged); ``stats``: per discretised feature,
    its per-bin ``(means, stds, mins, maxs)`` (the truncated normal each bin's values are
    drawn from)."""

    discretize: Callable[[np.ndarray], np.ndarray]
    stats: Dict[int, tuple]


class TabularSampler:
    """lime's tabular sampling around training statistics, as a plan for the sampling kernel.

    Continuous features are discretised (``"quartile"``, ``"decile"``, ``"entropy"``: bin
    edges from training percentiles or a depth-3 entropy tree per feature, as lime) or, with
    ``discretize_continuous=False``, sampled from ``N(mean, std)`` of the training data
    (centred on the instance with ``sample_around_instance``).  Categorical (and discretised)
    features take training values with their training frequencies; the surrogate sees
    ``[value == instance value]``.  Discretised values are drawn from the bin's normal
    truncated to the bin.
    """

    def __init__(self, training_data: np.ndarray, categorical_features: Sequence[int] = (),
                 discretize_continuous: bool = True, discretizer: str = "quartile",
                 training_labels: Optional[np.ndarray] = None, sample_around_instance: bool = False,
                 random_state=0, *, binning: Optional[Binning] = None,
                 value_table: Optional[Dict[int, tuple]] = None):
        X = np.asarray(training_data, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] < 1:
            raise ValueError(f"training_data must be (n_rows, n_features), got shape {X.shape}")
        D = X.shape[1]
        self.n_features = D
        self.categorical = sorted(int(c) for c in categorical_features)
        if any(c < 0 or c >= D for c in self.categorical):
            raise ValueError(f"categorical_features must be in 0..{D - 1}")
        self.sample_around_instance = bool(sample_around_instance)
        self.means = X.mean(0)
        std = X.std(0)
        self.scale = np.where(std == 0, 1.0, std)  # StandardScaler's convention
        self.bins: Dict[int, np.ndarray] = {}
        self.bin_stats = {}
        self.binning = binning if discretize_continuous else None
        self.discretized = bool(discretize_continuous)
        if self.binning is not None:
            # bins defined elsewhere (a lime discretizer, training statistics): their own
            # bin assignment and per-bin statistics
            for d, st in binning.stats.items():
                if not 0 <= int(d) < D:
                    raise ValueError(f"discretizer feature {d} outside 0..{D - 1}")
                means, stds, mins, maxs = (np.asarray(v, dtype=np.float64).reshape(-1) for v in st)
                if not len(means) == len(stds) == len(mins) == len(maxs):
                    raise ValueError(f"feature {d}: per-bin means, stds, mins and maxs differ in length")
                self.bin_stats[int(d)] = (means, stds, mins, maxs)
        elif discretize_continuous:
            for d in (d for d in range(D) if d not in self.categorical):
                self.bins[d] = np.unique(self._edges(X[:, d], discretizer, training_labels, random_state))
            for d, qts in self.bins.items():
                self.bin_stats[d] = bin_stats(X[:, d], qts)
        #: the discretised features (their bins are the surrogate's categories)
        self.binned = sorted(self.bin_stats)
        self.value_table: Dict[int, tuple] = {}
        cat_like = list(range(D)) if discretize_continuous else self.categorical
        Xd = None
        for d in cat_like:
            if value_table is not None and d in value_table:
                vals, counts = value_table[d]
                vals, counts = np.asarray(vals, dtype=np.float64), np.asarray(counts, dtype=np.float64)
                if vals.shape != counts.shape or vals.ndim != 1 or not vals.size or not counts.sum() > 0:
                    raise ValueError(f"feature {d}: feature_values and feature_frequencies must be non-empty "
                                     "lists of one length with a positive sum")
            else:
                if d in self.bin_stats and Xd is None:
                    Xd = self.discretize(X)
                col = Xd[:, d] if d in self.bin_stats else X[:, d]
                vals, counts = np.unique(col, return_counts=True)
            self.value_table[d] = (vals, counts / counts.sum())
            if d in self.bin_stats and (vals.min() < 0 or vals.max() >= len(self.bin_stats[d][0])
                                        or np.any(vals != np.round(vals))):
                raise ValueError(f"feature {d}: bin values must be bin indices 0..{len(self.bin_stats[d][0]) - 1}")
        self.kind = np.zeros(D, dtype=np.int8)
        for d in cat_like:
            self.kind[d] = 2 if d in self.bin_stats else 1
        # the surrogate sees binary columns for categorical/discretised features (mean 0, scale 1)
        self.surrogate_mean = np.where(self.kind == 0, self.means, 0.0)
        self.surrogate_scale = np.where(self.kind == 0, self.scale, 1.0)

    @staticmethod
    def _edges(col, discretizer, labels, random_state):
        if discretizer == "quartile":
            return np.percentile(col, [25, 50, 75])
        if discretizer == "decile":
            return np.percentile(col, [10, 20, 30, 40, 50, 60, 70, 80, 90])
        if discretizer == "entropy":
            if labels is None:
                raise ValueError("the entropy discretizer needs training_labels")
            return entropy_edges(col, labels, random_state)
        raise ValueError(f"discretizer must be 'quartile', 'decile' or 'entropy', got {discretizer!r}")

    def discretize(self, row: np.ndarray) -> np.ndarray:
        """Bin index of every discretised feature (``searchsorted(edges, x)``: the number of
        edges below ``x``), other features unchanged."""
        if self.binning is not None:
            return np.asarray(self.binning.discretize(np.array(row, dtype=np.float64, copy=True)), dtype=np.float64)
        out = np.array(row, dtype=np.float64, copy=True)
        edges = self.__dict__.get("_edge_table")
        if edges is None:
            dims = np.array(sorted(self.bins), dtype=np.int64)
            E = max([len(q) for q in self.bins.values()] + [0])
            tab = np.full((len(dims), E), np.inf)
            for j, d in enumerate(dims):
                tab[j, :len(self.bins[d])] = self.bins[d]
            edges = self._edge_table = (dims, tab)
        dims, tab = edges
        if out.ndim == 1 and dims.size and not np.isnan(out[dims]).any():
            # one comparison against the +inf-padded edge table instead of a searchsorted
            # per feature (NaN sorts last in searchsorted: those rows take the loop)
            out[dims] = (tab < out[dims, None]).sum(1)
            return out
        for d, qts in self.bins.items():
            out[..., d] = np.searchsorted(qts, out[..., d])
        return out

    def plan(self, row: np.ndarray) -> dict:
        """Kernel arrays for one instance."""
        row = np.asarray(row, dtype=np.float64).reshape(-1)
        D = self.n_features
        if row.shape[0] != D:
            raise ValueError(f"data_row has {row.shape[0]} features, training data {D}")
        # everything but the instance's own values depends on the training data only: built
        # once (a Python loop over features and bins), reused for every explained row
        static = self.__dict__.get("_static_plan")
        if static is None:
            static = self._static_plan = self._build_static_plan()
        center = row.copy() if self.sample_around_instance else self.means.copy()
        return dict(static, inst=self.discretize(row), center=center, row0=row.copy())

    def _build_static_plan(self) -> dict:
        from math import erfc, sqrt

        D = self.n_features
        V = max([len(v[0]) for v in self.value_table.values()] + [1])
        cdf = np.ones((D, V))
        values = np.zeros((D, V))
        lo_p = np.zeros((D, V))
        hi_p = np.zeros((D, V))
        bmean = np.zeros((D, V))
        bstd = np.ones((D, V))
        bfb = np.zeros((D, V))
        bmin = np.full((D, V), -1.0)
        bmax = np.ones((D, V))
        flat = np.zeros((D, V), dtype=np.uint8)
        for d, (vals, freq) in self.value_table.items():
            k = len(vals)
            c = np.cumsum(freq)
            c[-1] = 1.0
            cdf[d, :k] = c
            values[d, :k] = vals
            values[d, k:] = vals[-1]
            if d in self.bin_stats:
                means, stds, mins, maxs = self.bin_stats[d]
                for j, v in enumerate(vals.astype(np.int64)):
                    a = (mins[v] - means[v]) / stds[v]
                    b = (maxs[v] - means[v]) / stds[v]
                    lo_p[d, j] = 0.5 * erfc(-a / sqrt(2.0))
                    hi_p[d, j] = 0.5 * erfc(-b / sqrt(2.0))
                    bmean[d, j], bstd[d, j] = means[v], stds[v]
                    bfb[d, j] = min(max(means[v], mins[v]), maxs[v])
                    bmin[d, j], bmax[d, j] = mins[v], maxs[v]
                    flat[d, j] = not maxs[v] > mins[v]
        # inverse-CDF sampling of the bins' truncated normals: the uniform u that picked bin k
        # (u in [cdf[k-1], cdf[k])) is mapped linearly onto [Φ(a), Φ(b)]:
        # p = lo_p + (u - cdf[k-1])/freq_k·(hi_p - lo_p) = ia + ib·u
        lower = np.zeros((D, V))
        lower[:, 1:] = cdf[:, :-1]
        freq = np.maximum(cdf - lower, 1e-300)
        ib = np.where(flat == 0, (hi_p - lo_p) / freq, 0.0)
        ia = np.where(flat == 0, lo_p - lower * ib, 0.5)
        return dict(kind=self.kind, cdf=cdf, values=values, scale=self.scale.copy(), lo_p=lo_p, hi_p=hi_p,
                    bin_mean=bmean, bin_std=bstd, bin_fallback=bfb, bin_min=bmin, bin_max=bmax, bin_flat=flat,
                    smean=self.surrogate_mean.copy(), sscale=self.surrogate_scale.copy(), ia=ia, ib=ib)

    def neighbourhood(self, row: np.ndarray, n_samples: int, seed: int, metric: str = "euclidean",
                      stream: int = 0, backend: str = "auto"):
        """(scaled, inverse, distances) from the fused kernel
        (:func:`~xaikernels.ops.perturb.tabular_neighbourhood`): standardised surrogate
        features, model inputs, distance of each surrogate row to the instance's; row 0 is
        the instance."""
        return P.tabular_neighbourhood(n_samples, seed, self.plan(row), metric=metric, stream=stream,
                                       backend=backend)

    def sample(self, row: np.ndarray, n_samples: int, seed: int, stream: int = 0, backend: str = "auto"):
        """(data, inverse, scaled): surrogate features, model inputs, standardised surrogate
        features; row 0 is the instance (drawn by :meth:`neighbourhood`)."""
        scaled, inv, _ = self.neighbourhood(row, n_samples, seed, stream=stream, backend=backend)
        data = np.where(self.kind == 0, inv, scaled)
        return data, inv, scaled


def lime_tabular(model: Callable, x: Union[np.ndarray, torch.Tensor], training_data: np.ndarray,
                 target: _validate.TargetLike = None, *, categorical_features: Sequence[int] = (),
                 discretize_continuous: bool = True, discretizer: str = "quartile",
                 training_labels: Optional[np.ndarray] = None, sample_around_instance: bool = False,
                 n_samples: int = 5000, batch_size: int = 5000, kernel_width: Optional[float] = None,
                 distance: str = "euclidean", alpha: float = 1.0, feature_selection: str = "none",
                 num_features: Optional[int] = None, top_labels: Optional[int] = None,
                 output: Union[str, Callable, None] = "softmax", seed: int = 0,
                 sampler: Optional[TabularSampler] = None, backend: str = "auto") -> LimeResult:
    """LIME for tabular models, batched over rows and targets.

    Parameters
    ----------
    model : callable mapping a float tensor (B, D) to (B, K) scores (an nn.Module or a
        function).
    x : (N, D) rows to explain.
    training_data : (n, D) array defining the sampling statistics (ignored with ``sampler``).
    categorical_features, discretize_continuous, discretizer, training_labels,
    sample_around_instance : lime's sampling options (:class:`TabularSampler`).
    n_samples : int, default 5000; kernel_width : default ``0.75·sqrt(D)``;
    distance : "euclidean" (lime) | "cosine", on the standardised surrogate features.
    alpha, feature_selection, num_features, top_labels, output, seed, backend : as
    :func:`lime_image`.

    Returns
    -------
    LimeResult (coef per row: (T, D)); ``extras["sampler"]`` holds the sampler.
    """
    xn = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if xn.ndim == 1:
        xn = xn[None]
    if xn.ndim != 2:
        raise ValueError(f"x must be (N, D), got shape {xn.shape}")
    if sampler is None:
        sampler = TabularSampler(training_data, categorical_features, discretize_continuous, discretizer,
                                 training_labels, sample_around_instance)
    N, D = xn.shape
    if D != sampler.n_features:
        raise ValueError(f"x has {D} features per row, the training data {sampler.n_features}")
    width = float(np.sqrt(D) * 0.75) if kernel_width is None else float(kernel_width)
    dtype = torch.float32
    if isinstance(model, nn.Module):
        p = next(model.parameters(), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    dev = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    with torch.no_grad():
        first = postprocess(_validate.check_output(model(torch.as_tensor(xn, dtype=dtype, device=dev))), output)
    targets = _resolve_targets(target, first, top_labels)
    coefs, used_l = [], []
    icpt = np.zeros(targets.shape)
    score = np.zeros(targets.shape)
    pred = np.zeros(targets.shape)
    n_eff = np.zeros(N)
    for n in range(N):
        # one kernel call: samples, standardised surrogate rows, distances, kernel weights and
        # the weighted Gram of the surrogate rows (the fit then adds the label products)
        scaled, inv, _, w, g = P.tabular_neighbourhood(n_samples, seed, sampler.plan(xn[n]), metric=distance,
                                                       stream=n, kernel_width=width, gram=True, backend=backend)
        outs = []
        for s0 in range(0, n_samples, batch_size):
            with torch.no_grad():
                o = model(torch.as_tensor(inv[s0: s0 + batch_size], dtype=dtype, device=dev))
            outs.append(postprocess(_validate.check_output(o), output).detach().cpu().double())
        Y = torch.cat(outs).numpy()
        n_eff[n] = effective_samples(w)
        _check_weights(n_eff[n], n_samples, width, distance, "lime_tabular")
        fit = P.fit_lime_gram(scaled, Y, targets[n], w, g, alpha=alpha, feature_selection=feature_selection,
                              num_features=num_features or D, backend=backend)
        coefs.append(fit["coef"])
        used_l.append(fit["used"])
        icpt[n], score[n], pred[n] = fit["intercept"], fit["score"], fit["local_pred"]
    return LimeResult(coefs, icpt, score, pred, targets, None, used_l, n_samples,
                      extras={"sampler": sampler, "effective_samples": n_eff})


# --------------------------------------------------------------------------------------- text
class TextIndex:
    """A document split into tokens and interpretable features (lime's ``IndexedString``
    semantics, own implementation).

    ``split_expression``: a regex whose matches separate tokens (the separators are kept in
    the text) or a callable tokenizer returning the tokens in order.  ``bow=True``: one
    feature per distinct word (all occurrences removed together); ``bow=False``: one per
    position, replaced by ``mask_string`` (default ``"UNKWORDZ"``).
    """

    def __init__(self, text: str, split_expression: Union[str, Callable] = r"\W+", bow: bool = True,
                 mask_string: Optional[str] = None, char_level: bool = False):
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        self.raw = text
        self.bow = bool(bow)
        if char_level:
            pieces = list(text)
            is_word = [True] * len(pieces)
            self.mask_string = chr(0) if mask_string is None else mask_string
        else:
            self.mask_string = "UNKWORDZ" if mask_string is None else mask_string
            if callable(split_expression):
                tokens = list(split_expression(text))
                pieces, is_word = self._around_tokens(text, tokens)
            else:
                splitter = re.compile(r"(%s)|$" % split_expression)
                pieces = [s for s in splitter.split(text) if s]
                is_word = [not splitter.match(s) for s in pieces]
        self.pieces = pieces
        self.words: List[str] = []
        self.positions: List[List[int]] = []
        vocab: Dict[str, int] = {}
        for i, (p, ok) in enumerate(zip(pieces, is_word)):
            if not ok:
                continue
            if self.bow:
                if p not in vocab:
                    vocab[p] = len(self.words)
                    self.words.append(p)
                    self.positions.append([])
                self.positions[vocab[p]].append(i)
            else:
                self.words.append(p)
                self.positions.append([i])
        # piece -> feature id (-1 for separators) for vectorised reconstruction
        self.piece_feature = np.full(len(pieces), -1, dtype=np.int64)
        for f, pos in enumerate(self.positions):
            self.piece_feature[pos] = f
        starts = np.cumsum([0] + [len(p) for p in pieces[:-1]]) if pieces else np.zeros(0, dtype=np.int64)
        self.starts = np.asarray(starts, dtype=np.int64)

    @staticmethod
    def _around_tokens(text, tokens):
        pieces, is_word = [], []
        ptr = 0
        for tok in tokens:
            j = text.find(tok, ptr)
            if j < 0:
                raise ValueError(f"the tokenizer produced {tok!r}, which is not in the remaining text")
            if j > ptr:
                pieces.append(text[ptr:j])
                is_word.append(False)
            pieces.append(tok)
            is_word.append(True)
            ptr = j + len(tok)
        if ptr < len(text):
            pieces.append(text[ptr:])
            is_word.append(False)
        return pieces, is_word

    @property
    def n_features(self) -> int:
        return len(self.words)

    def render_batch(self, masks: np.ndarray, backend: str = "auto") -> List[str]:
        """:meth:`render` of every row of ``masks`` (S, n_features), written by one kernel
        call per block of rows (:func:`xaikernels.ops.perturb.render_texts`)."""
        return P.render_texts(self.pieces, self.piece_feature, "" if self.bow else self.mask_string, masks,
                              backend=backend)

    def render(self, mask: np.ndarray) -> str:
        """The text with the features where ``mask == 0`` removed (bow) or masked."""
        keep = np.ones(len(self.pieces), dtype=bool)
        pf = self.piece_feature
        has = pf >= 0
        keep[has] = mask[pf[has]].astype(bool)
        if self.bow:
            return "".join(p for p, k in zip(self.pieces, keep) if k)
        return "".join(p if k else self.mask_string for p, k in zip(self.pieces, keep))

    def word(self, f: int) -> str:
        return self.words[f]

    def string_position(self, f: int) -> np.ndarray:
        return self.starts[self.positions[f]]


def lime_text(classifier_fn: Callable[[List[str]], np.ndarray], text: str, *, labels: Sequence[int] = (1,),
              top_labels: Optional[int] = None, n_samples: int = 5000, kernel_width: float = 25.0,
              distance: str = "cosine", alpha: float = 1.0, feature_selection: str = "none",
              num_features: Optional[int] = None, split_expression: Union[str, Callable] = r"\W+",
              bow: bool = True, mask_string: Optional[str] = None, char_level: bool = False, seed: int = 0,
              masks: Optional[np.ndarray] = None, backend: str = "auto"):
    """LIME for text classifiers: tokens removed at random (lime's sampler: between 1 and all
    features removed, uniformly, then a uniform subset), cosine distance × 100 on the binary
    coalitions, exponential kernel of width 25.

    ``classifier_fn`` maps a list of strings to (n, K) probabilities.  Returns
    ``(index, fit, Y)``: the :class:`TextIndex`, the :func:`~xaikernels.ops.perturb.fit_surrogate`
    dict for the explained labels (plus ``labels``, ``masks``, ``weights`` and
    ``effective_samples``, the kernel weights' Kish size: below 2 it warns), and the model
    outputs (n_samples, K).
    """
    idx = TextIndex(text, split_expression, bow, mask_string, char_level)
    F = idx.n_features
    if F == 0:
        raise ValueError("the text has no tokens to explain")
    if masks is None:
        m = P.sample_masks(n_samples, F, seed, size_cdf=P.lime_text_size_cdf(F), first_row_ones=True,
                           backend=backend)
    else:
        m = np.ascontiguousarray(masks, dtype=np.uint8)
    docs = [text] + idx.render_batch(m[1:], backend=backend)
    Y = np.asarray(classifier_fn(docs), dtype=np.float64)
    if Y.ndim != 2 or Y.shape[0] != len(docs):
        raise ValueError(f"classifier_fn must return (n_texts, classes) = ({len(docs)}, K), got {Y.shape}")
    lab = list(np.argsort(Y[0])[-top_labels:][::-1]) if top_labels else list(labels)
    d = P.row_distances(m, np.ones(F), distance, backend=backend) * 100
    w = P.exp_kernel(d, kernel_width, backend=backend)
    n_eff = effective_samples(w)
    _check_weights(n_eff, m.shape[0], kernel_width, distance, "lime_text")
    fit = P.fit_surrogate(m.astype(np.float64), np.ascontiguousarray(Y[:, lab]), w, alpha=alpha,
                          feature_selection=feature_selection, num_features=num_features or F, backend=backend)
    fit["labels"] = lab
    fit["masks"] = m
    fit["weights"] = w
    fit["effective_samples"] = n_eff
    return idx, fit, Y
