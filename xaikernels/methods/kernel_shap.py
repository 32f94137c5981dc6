"""KernelSHAP (Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions").

For features ``f = 0..M-1`` (a feature map groups input elements) and coalitions ``z ⊆ M``,
with ``h(z)`` the input keeping the features in ``z`` and the baseline elsewhere, the Shapley
values of ``v(z) = f_t(h(z))`` solve

    min_φ Σ_z π(z) (v(z) - v(∅) - z·φ)²   s.t.  Σ_f φ_f = v(M) - v(∅)   (efficiency)

with the Shapley kernel ``π(z) = (M-1) / (C(M,|z|) |z| (M-|z|))``.  When the budget covers
all ``2^M - 2`` proper coalitions they are enumerated and the answer is the exact Shapley
value; otherwise coalition sizes are drawn with probability ``∝ Σ_{|z|=k} π(z)``, the
members uniformly, in antithetic pairs (``z`` and its complement), each with weight 1.  The
constraint is imposed exactly (a Lagrange multiplier), not by a large weight.

For image models the leading convolution stages can be evaluated from coalition tables
(:mod:`xaikernels.methods._stem`, shared with :func:`~xaikernels.methods.lime.lime_image`):
``stem="auto"`` (default) | ``"on"`` | ``"off"``; the result's ``extras["stem"]`` says which ran,
``extras["layout"]`` whether the model ran channels-last.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from xaikernels import _validate
from xaikernels._model_guard import ModelGuard
from xaikernels.methods import _stem
from xaikernels.methods.lime import (_resolve_targets, _stem_plans, _Streamer, postprocess, stem_or_reason,
                                    table_streamer)
from xaikernels.ops import perturb as P


@dataclass
class KernelShapResult:
    """phi: list of (T, M_n) Shapley values; base_value (N, T) = f(baseline); full_value
    (N, T) = f(x); score (N, T) weighted R² of ``base + z·φ`` on the coalitions; targets
    (N, T); exact (N,) bool — all coalitions enumerated; feature_map: per-instance int64 maps
    (flattened input); shape: the per-instance input shape; n_evals: model evaluations per
    instance; extras: ``"stem"`` — ``"tables: <stages> (...)"`` when the model's stem was
    evaluated from coalition tables, ``"off: <reason>"`` when ``stem="auto"`` could not use
    them, ``"off"`` when ``stem="off"``."""

    phi: list
    base_value: np.ndarray
    full_value: np.ndarray
    score: np.ndarray
    targets: np.ndarray
    exact: np.ndarray
    feature_map: list
    shape: tuple
    n_evals: int
    extras: Dict[str, object] = field(default_factory=dict)

    def attribution(self) -> torch.Tensor:
        """φ painted onto the input: (N, T, *shape) float32."""
        maps = [torch.from_numpy(p[:, fm]).float() for p, fm in zip(self.phi, self.feature_map)]
        out = torch.stack(maps)
        return out.reshape(out.shape[0], out.shape[1], *self.shape)


def all_coalitions(M: int) -> np.ndarray:
    """Every proper coalition of M features, (2^M - 2, M) uint8, by increasing bit pattern."""
    if M < 1 or M > 24:
        raise ValueError(f"enumeration needs 1 <= M <= 24 features, got {M}")
    codes = np.arange(1, 2 ** M - 1, dtype=np.int64)
    return ((codes[:, None] >> np.arange(M)[None, :]) & 1).astype(np.uint8)


def _feature_maps(feature_mask, x: torch.Tensor):
    N = x.shape[0]
    inner = tuple(x.shape[1:])
    D = int(np.prod(inner)) if inner else 1
    if feature_mask is None:
        return [np.arange(D, dtype=np.int64)] * N
    fm = feature_mask.detach().cpu() if isinstance(feature_mask, torch.Tensor) else torch.as_tensor(np.asarray(feature_mask))
    try:
        if fm.dim() == len(inner) + 1 and fm.shape[0] in (1, N):
            full = fm.expand((N,) + inner) if fm.shape[0] == 1 else fm.expand((N,) + inner)
            return [full[n].reshape(-1).numpy() for n in range(N)]
        full = fm.expand(inner)
    except RuntimeError:
        raise ValueError(f"feature_mask of shape {tuple(fm.shape)} does not broadcast to the input {inner} "
                         f"(or (N, ...) = {(N,) + inner})") from None
    return [full.reshape(-1).numpy()] * N


def kernel_shap(model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *,
                baselines: Union[float, torch.Tensor] = 0.0, feature_mask: Optional[torch.Tensor] = None,
                n_samples: int = 2048, batch_size: int = 256, paired: bool = True, alpha: float = 0.0,
                enumerate_all: Union[str, bool] = "auto", output: Union[str, Callable, None] = "logits",
                top_labels: Optional[int] = None, seed: int = 0, forward_args: Sequence = (),
                progress: bool = False, check_mode: bool = True, stem: str = "auto",
                backend: str = "auto") -> KernelShapResult:
    """KernelSHAP values for a batch of inputs and one or several targets each.

    Parameters
    ----------
    model : nn.Module (or callable) mapping (B, ...) to (B, K) scores.
    x : Tensor (N, ...), floating point.
    target : int | sequence of N ints | (N,) or (N, T) tensor | None (predicted class).
    baselines : number or tensor broadcastable to ``x`` (or to one instance): the value of an
        absent feature.
    feature_mask : int tensor broadcastable to one instance (or (N, ...)) with ids 0..M-1;
        None = every input element is a feature.
    n_samples : int, default 2048 — coalitions evaluated besides the empty and the full one.
    batch_size : rows per model call.
    paired : sample coalitions in complementary pairs (variance reduction).
    alpha : ridge penalty on φ (0 = the Shapley regression).  With ``alpha=0`` the number of
        coalitions must be at least M (ValueError otherwise).
    enumerate_all : "auto" (when ``2^M - 2 <= n_samples``) | True | False.
    output : "logits" (default) | "softmax" | "sigmoid" | callable applied to the outputs.
    top_labels : explain the k highest outputs instead of ``target``.
    seed : counter-based RNG seed (instance n uses stream n).
    forward_args : extra positional arguments for ``model``.
    progress : tqdm bar over model batches.
    check_mode : warn when the model is in training mode.
    stem : "auto" (default) | "on" | "off" — coalition tables for the model's stem
        (:mod:`xaikernels.methods._stem`, as :func:`~xaikernels.methods.lime.lime_image`):
        for an image input (N, C, H, W) in float32/float64 on CPU, an ``nn.Module`` traceable
        by ``torch.fx``, no ``forward_args`` and a feature map that is the same in every
        channel of an instance, the leading convolution / activation / pooling stages are
        evaluated once per distinct coalition of the features that each output position's
        window meets (the baseline plays the role of LIME's fill), so that a coalition costs a table gather plus
        the rest of the network.  The same numbers up to float rounding, checked on the
        instance before use.  "auto" uses them where they save work and evaluates the model as
        is otherwise; "on" raises ValueError when they cannot be used; the result's
        ``extras["stem"]`` says which ran and why.
    backend : "auto" | "numba" | "reference".

    Returns
    -------
    KernelShapResult; ``phi[n].sum(1) == full_value[n] - base_value[n]`` (efficiency).
    """
    _validate.check_input(x)
    if check_mode and isinstance(model, nn.Module):
        _validate.check_mode(model)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if stem not in ("auto", "on", "off"):
        raise ValueError(f"stem must be 'auto', 'on' or 'off', got {stem!r}")
    N = x.shape[0]
    inner = tuple(x.shape[1:])
    xc = x.detach().cpu().contiguous()
    base = torch.as_tensor(baselines, dtype=xc.dtype) if not isinstance(baselines, torch.Tensor) else \
        baselines.detach().cpu().to(xc.dtype)
    try:
        base = base.expand_as(xc) if base.dim() == xc.dim() else base.expand(inner).unsqueeze(0).expand_as(xc)
    except RuntimeError:
        raise ValueError(f"baselines of shape {tuple(base.shape)} do not broadcast to the input {tuple(x.shape)}") from None
    base = base.contiguous()
    maps = _feature_maps(feature_mask, x)
    plans = []
    for n in range(N):
        seg, M = P.check_feature_map(maps[n], int(np.prod(inner)) if inner else 1, "feature_mask")
        exact = (2 ** M - 2 <= n_samples) if enumerate_all == "auto" and M <= 24 else bool(enumerate_all is True)
        if exact:
            Z = all_coalitions(M) if M > 1 else np.zeros((0, 1), np.uint8)
            w = P.shapley_kernel(Z, backend=backend) if len(Z) else np.zeros(0)
        else:
            if M < 2:
                raise ValueError("sampling needs at least 2 features (use enumerate_all=True)")
            Z = P.sample_masks(n_samples, M, seed, stream=n, size_cdf=P.shapley_size_cdf(M), paired=paired,
                               backend=backend)
            w = np.ones(len(Z))
        if alpha == 0 and len(Z) < M - 1 + (0 if exact else 1):
            raise ValueError(
                f"{len(Z)} coalitions for {M} features: the Shapley regression is underdetermined. Use "
                f"n_samples >= {M} or a ridge penalty alpha > 0")
        rows = np.vstack([np.ones((1, M), np.uint8), np.zeros((1, M), np.uint8), Z])
        plans.append((seg, M, rows, w, exact))
    starts = np.cumsum([0] + [len(p[2]) for p in plans])
    guard = ModelGuard(model) if isinstance(model, nn.Module) else None
    if guard is not None:
        guard.__enter__()
    try:
        with torch.no_grad():
            first = postprocess(_validate.check_output(model(x.detach(), *forward_args)), output)
        targets = _resolve_targets(target, first, top_labels)
        tables, tail, stem_info = stem_or_reason(
            stem, lambda: _kernel_shap_tables(model, x, xc, base, plans, forward_args, backend, stem))
        if tables is not None:
            streamer, fill_rows = table_streamer(tables, tail, starts, xc.dtype, x.device, batch_size, output,
                                                 progress, "kernel_shap")
        else:
            xa = [P.as_apb(xc[n], "flat") for n in range(N)]
            ba = [P.as_apb(base[n], "flat") for n in range(N)]

            # prepared once per instance (feature-map bitmaps), then one kernel call per batch
            builders = [P.PerturbedBuilder(xa[n], ba[n], plans[n][0], backend=backend) for n in range(N)]

            def fill_rows(view, start, stop):
                r = start
                flat = view.reshape(view.shape[0], 1, -1, 1)
                while r < stop:
                    n = int(np.searchsorted(starts, r, side="right") - 1)
                    e = min(stop, int(starts[n + 1]))
                    s = r - int(starts[n])
                    builders[n](plans[n][2][s: s + e - r], flat[r - start: e - start])
                    r = e

            streamer = _Streamer(model, inner, xc.dtype, x.device, batch_size, output, forward_args, progress,
                                 "kernel_shap")
        Y = streamer.run(int(starts[-1]), fill_rows, first.shape[1]).numpy()
        layout = "channels_last (the tables' tail)" if tables is not None else streamer.layout
    finally:
        if guard is not None:
            guard.__exit__(None, None, None)
    T = targets.shape[1]
    phis = []
    fb = np.zeros((N, T))
    fx = np.zeros((N, T))
    score = np.zeros((N, T))
    for n, (seg, M, rows, w, exact) in enumerate(plans):
        Yn = Y[starts[n]: starts[n + 1]][:, targets[n]]
        fx[n], fb[n] = Yn[0], Yn[1]
        delta = fx[n] - fb[n]
        Z = rows[2:]
        if M == 1 or len(Z) == 0:
            phis.append(delta[:, None].copy())
            score[n] = 1.0
            continue
        Yc = Yn[2:] - fb[n]
        phi, flag = P.constrained_wls(Z[None].astype(np.float64), Yc[None], w[None], delta[None], alpha,
                                      backend=backend)
        if flag[0]:
            import warnings

            warnings.warn("KernelSHAP: the coalition design is rank-deficient; returning the minimum-norm "
                          "solution (increase n_samples or set alpha > 0)", RuntimeWarning, stacklevel=2)
        phis.append(phi[0])
        pred = Z.astype(np.float64) @ phi[0].T
        res = Yc - pred
        mu = (w @ Yc) / w.sum()
        tss = (w[:, None] * (Yc - mu) ** 2).sum(0)
        rss = (w[:, None] * res ** 2).sum(0)
        score[n] = np.where(tss > 0, 1 - rss / np.where(tss > 0, tss, 1), np.where(rss <= 0, 1.0, 0.0))
    return KernelShapResult(phis, fb, fx, score, targets, np.array([p[4] for p in plans]), [p[0] for p in plans],
                            inner, int(starts[-1]) // max(N, 1), extras={"stem": stem_info, "layout": layout})


def _kernel_shap_tables(model, x, xc, base, plans, forward_args, backend, mode):
    """Stem tables (:func:`xaikernels.methods.lime._stem_plans`) for KernelSHAP's coalitions:
    the per-pixel feature map of every instance (its flattened C·H·W map must repeat over
    the channels) and the baseline as the fill; raise :class:`_stem.StemUnavailable` when the
    model is evaluated as is."""
    if xc.dim() != 4:
        raise _stem.StemUnavailable(f"the input is {xc.dim()}-D, not an image (N, C, H, W)")
    N, C, H, W = xc.shape
    feats = [(_stem.pixel_map(seg, C, H * W), M) for seg, M, _, _, _ in plans]
    fills = [P.as_apb(base[n], "chw") for n in range(N)]
    return _stem_plans(model, x, xc, fills, feats, [p[2] for p in plans], forward_args, backend, mode)
