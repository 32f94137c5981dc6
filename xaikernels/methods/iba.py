"""Per-Sample Bottleneck: information bottleneck attribution (Schulz et al. 2020).

At a chosen layer the features R are replaced by ``Z = lambda R + (1 - lambda) eps``, with
``eps ~ N(mu_R, sigma_R^2)`` and ``lambda = smooth(sigmoid(p))`` per element, optimised per sample:

    min_p  CE(f(Z), t) + beta * mean_elements KL( p(Z | R) || N(mu_R, sigma_R^2) )

The attribution is the KL per location summed over channels (bits): how much information about
the input each location lets through while keeping the decision.  The noise injection and the KL
run in the fused :func:`~xaikernels.ops.bottleneck.info_bottleneck` op (its ``alpha`` is
``1 - lambda``).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from xaikernels import _validate
from xaikernels._model_guard import ModelGuard
from xaikernels.methods.cam import upsample
from xaikernels.methods.infomax import _LayerTap, _layer_name, layer_stats
from xaikernels.ops.bottleneck import info_bottleneck

LayerLike = Union[str, nn.Module]


def _gaussian_smooth(t: torch.Tensor, sigma: float) -> torch.Tensor:
    """Depthwise separable Gaussian blur of (B, C, h, w) with reflect padding."""
    if sigma <= 0:
        return t
    radius = max(1, int(math.ceil(2 * sigma)))
    xs = torch.arange(-radius, radius + 1, dtype=t.dtype, device=t.device)
    k = torch.exp(-0.5 * (xs / sigma) ** 2)
    k = k / k.sum()
    c = t.shape[1]
    pad_h = min(radius, t.shape[2] - 1)
    pad_w = min(radius, t.shape[3] - 1)
    out = t
    if pad_w > 0:
        kw = k[radius - pad_w: radius + pad_w + 1]
        kw = (kw / kw.sum()).view(1, 1, 1, -1).expand(c, 1, 1, -1)
        out = F.conv2d(F.pad(out, (pad_w, pad_w, 0, 0), mode="reflect"), kw, groups=c)
    if pad_h > 0:
        kh = k[radius - pad_h: radius + pad_h + 1]
        kh = (kh / kh.sum()).view(1, 1, -1, 1).expand(c, 1, -1, 1)
        out = F.conv2d(F.pad(out, (0, 0, pad_h, pad_h), mode="reflect"), kh, groups=c)
    return out


def iba(
    model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *, layer: LayerLike,
    beta: float = 10.0, steps: int = 10, lr: float = 1.0, batch_size: int = 10, init_lambda: float = 5.0,
    sigma: float = 1.0, stats: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    stats_data: Optional[torch.Tensor] = None, min_std: float = 1e-2, upsample_mode: str = "bilinear",
    return_raw: bool = False, seed: int = 0, backend: str = "auto",
):
    """Per-Sample Bottleneck attribution (IBA).

    ``H[n, s] = sum_c KL( N(lambda r + (1 - lambda) mu, ((1 - lambda) sigma)^2) || N(mu, sigma^2) ) / ln 2``
    at the optimised ``lambda``, resized to the input.

    Parameters
    ----------
    model : nn.Module in eval mode returning class scores (N, classes); left unchanged.
    x : Tensor (N, C, H, W).
    target : class per example; ``None``: the predicted class.
    layer : the layer (output (N, C, h, w)) where the bottleneck is inserted.
    beta : weight of the information term (the paper's beta = 10 with the mean over elements).
    steps, lr : Adam iterations and learning rate (paper: 10 steps, lr 1).
    batch_size : noise samples per example and step (paper: 10).
    init_lambda : initial logit of ``lambda`` (5: almost all information passes).
    sigma : std of the Gaussian smoothing of ``lambda`` in layer cells (0: none).
    stats : ``(mu, std)`` of the layer, each (C,) or (C, h, w); default: estimated per element from
        ``stats_data`` if given, else per channel from ``x``.
    stats_data : Tensor (M, C, H, W), samples to estimate the statistics from.
    min_std : floor of the estimated standard deviation.
    return_raw : also return the layer-resolution map.
    seed : seeds the noise.
    backend : backend of the fused bottleneck op.

    Returns
    -------
    Tensor (N, H, W) in bits per location, or ``(upsampled, raw)`` with raw (N, h, w).

    References
    ----------
    Schulz, Sixt, Tombari, Landgraf (2020), "Restricting the Flow: Information Bottlenecks for
    Attribution", ICLR.
    """
    _validate.check_input(x, min_dim=4, max_dim=4)
    _validate.check_mode(model)
    for name, v in (("beta", beta), ("lr", lr), ("sigma", sigma)):
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (name == "lr" and v == 0):
            raise ValueError(f"{name} must be a finite number >= 0 (lr > 0), got {v!r}")
    if not isinstance(steps, int) or steps < 0 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("steps must be an int >= 0 and batch_size an int >= 1")
    mod = _validate.find_layer(model, layer)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = x.shape[0]

    with ModelGuard(model):
        for p in model.parameters():
            p.requires_grad_(False)
        tap = _LayerTap(mod, _layer_name(layer))
        with torch.no_grad():
            out = _validate.check_output(model(x))
            feats = tap.take()
            if feats.dim() != 4:
                raise ValueError(f"layer {_layer_name(layer)!r} output has shape {tuple(feats.shape)}; a (N, C, h, w) "
                                 "map is required")
            t = _validate.resolve_target(target, out)
            if stats is not None:
                mu, std = stats
            elif stats_data is not None:
                _validate.check_input(stats_data, "stats_data", min_dim=4, max_dim=4)
                model(stats_data.to(x))
                ref = tap.take()
                mu, std = ref.mean(dim=0), ref.std(dim=0, unbiased=False).clamp_min(min_std)
            else:
                mu, std = layer_stats(feats, min_std)
        c, h, w = feats.shape[1:]
        logits = torch.full((n, c, h, w), float(init_lambda), dtype=feats.dtype, device=feats.device,
                            requires_grad=True)
        opt = torch.optim.Adam([logits], lr=lr)
        r = feats.repeat_interleave(batch_size, dim=0)
        data = x.repeat_interleave(batch_size, dim=0)
        tb = t.repeat_interleave(batch_size, dim=0)
        state = {}

        def alpha_of(lg):
            return 1 - _gaussian_smooth(torch.sigmoid(lg), sigma)

        def bottleneck(o):
            a = alpha_of(logits).repeat_interleave(batch_size, dim=0).clamp(0, 1)
            noise = torch.randn(r.shape, generator=gen, dtype=r.dtype).to(r.device)
            z, kl = info_bottleneck(o.detach(), a, mu, std, noise=noise, backend=backend)
            state["kl"] = kl
            return z

        for _ in range(steps):
            tap.replace = bottleneck
            with torch.enable_grad():
                out2 = model(data)
            tap.replace = None
            tap.calls = 0
            loss = F.cross_entropy(out2, tb) + beta * state["kl"].mean() / c
            opt.zero_grad()
            loss.backward()
            opt.step()

        with torch.no_grad():
            a = alpha_of(logits).clamp(0, 1)
            _, kl = info_bottleneck(feats, a, mu, std, noise=torch.zeros_like(feats), backend=backend)
    raw = kl / math.log(2)
    up = upsample(raw.unsqueeze(1), x.shape[2:], upsample_mode)[:, 0]
    return (up, raw) if return_raw else up
