"""Mutual-information attribution: an InfoMax estimator and an information bottleneck inserted
into a frozen network.

Local representations ``x_ij`` (position j of sample i at an early layer) and the global
representation ``y_i`` (a late layer, by default the model output) are related through

- the InfoMax estimator, the InfoNCE lower bound with a dot-product critic on small projections,
  ``I(x; y) >= log(NK) + 1/(NK) sum_ij log( e^{f(x_ij, y_i)} / sum_mk e^{f(x_mk, y_i)} )``,
  computed by the fused :func:`~xaikernels.ops.infonce.infonce_lse` op;
- an information bottleneck at the local layer, ``x'_ij = a_ij eps + (1 - a_ij) x_ij`` with
  ``eps`` drawn with the layer's statistics and ``a = alpha`` in [0, 1] per position inferred by a
  small inference network from several layers' outputs (resized and concatenated); its
  information is bounded by ``E[KL(p(x'|x) || r(x'))]`` with ``r`` the layer's Gaussian
  (the fused :func:`~xaikernels.ops.bottleneck.info_bottleneck` op).

Two forward passes per step: the first (clean) yields the features, ``y`` and ``alpha``; the
second runs the network on ``x'``.  The objective
``L = CE(f(x'), t) - beta1 * (InfoNCE(x, y) + InfoNCE(sg(x'), y)) + beta2 * KL(x')`` trains the
two critics (one per estimate; ``sg`` stops the gradient into the bottleneck), the inference
network and nothing else (the base network is frozen and handed back unchanged).

Outputs per location, upsampled to the input: ``I(x_ij; y_i)`` (information about the input that
the global representation holds), ``I(x'_ij; y_i)`` (the decision-sufficient information: the
explanation) and their difference (redundant information).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from xaikernels import _validate
from xaikernels._model_guard import ModelGuard
from xaikernels.methods.cam import upsample
from xaikernels.ops.bottleneck import info_bottleneck
from xaikernels.ops.infonce import infonce_lse, n_candidates

LayerLike = Union[str, nn.Module]


class _LayerTap:
    """Record a layer's output; optionally replace it (the bottleneck) while recording the clean one."""

    def __init__(self, module: nn.Module, name: str):
        self.name = name
        self.out: Optional[torch.Tensor] = None
        self.replace: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer {self.name!r} returns {type(output).__name__}; a tensor is required")
        self.calls += 1
        self.out = output
        return self.replace(output) if self.replace is not None else None

    def take(self) -> torch.Tensor:
        if self.calls != 1 or self.out is None:
            raise ValueError(f"layer {self.name!r} ran {self.calls} times in one forward pass; choose a layer that "
                             "runs exactly once")
        self.calls = 0
        return self.out


def _layer_name(layer: LayerLike) -> str:
    return layer if isinstance(layer, str) else type(layer).__name__


def layer_stats(feats: torch.Tensor, min_std: float = 1e-4):
    """Per-channel mean and standard deviation of (N, C, *spatial) features (over N and space)."""
    dims = [0] + list(range(2, feats.dim()))
    mu = feats.mean(dim=dims)
    std = feats.std(dim=dims, unbiased=False).clamp_min(min_std)
    return mu, std


class Critic(nn.Module):
    """Dot-product critic on small projections: ``f(x, y) = <phi(x), psi(y)>``.

    ``phi`` acts on each local (a 1x1 convolution = a linear map per position), ``psi`` on the
    global vector; both are two-layer MLPs.
    """

    def __init__(self, local_channels: int, global_dim: int, dim: int = 32, hidden: int = 64):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(local_channels, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.psi = nn.Sequential(nn.Linear(global_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, local: torch.Tensor, glob: torch.Tensor):
        n, c = local.shape[:2]
        xl = local.reshape(n, c, -1).transpose(1, 2)  # (N, K, C)
        return self.phi(xl).contiguous(), self.psi(glob.reshape(n, -1)).contiguous()


class InferenceNet(nn.Module):
    """Infers the noise fraction ``alpha`` (N, 1, h, w) from several layers' outputs, each
    resized to the local map's size and concatenated along channels."""

    def __init__(self, in_channels: int, hidden: int = 16, init_alpha: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 1, 3, padding=1))
        with torch.no_grad():
            # Start letting most information through: the decision loss then has a signal.
            self.net[-1].bias.fill_(math.log(init_alpha / (1 - init_alpha)))

    def forward(self, feats: Sequence[torch.Tensor], size) -> torch.Tensor:
        maps = []
        for f in feats:
            f = f if f.dim() == 4 else f.reshape(f.shape[0], -1, 1, 1)
            maps.append(f if tuple(f.shape[2:]) == tuple(size) else
                        F.interpolate(f, size=tuple(size), mode="bilinear", align_corners=False))
        return torch.sigmoid(self.net(torch.cat(maps, dim=1)))


@dataclass
class InfoMaxResult:
    """Per-location mutual-information maps (nats), upsampled to the input's spatial size.

    ``mi_local``: I(x_ij; y_i); ``mi_bottleneck``: I(x'_ij; y_i), the decision-sufficient
    information (the explanation); ``redundant``: their difference.  ``*_raw`` are at the layer's
    resolution; ``alpha`` (N, 1, h, w) is the inferred noise fraction, ``kl`` (N, h, w) the
    bottleneck's information bound per location; ``estimate`` the InfoNCE bound on I(x; y) of
    the batch; ``history`` the objective per step.
    """

    mi_local: torch.Tensor
    mi_bottleneck: torch.Tensor
    redundant: torch.Tensor
    mi_local_raw: torch.Tensor
    mi_bottleneck_raw: torch.Tensor
    alpha: torch.Tensor
    kl: torch.Tensor
    estimate: float
    history: List[float] = field(default_factory=list)


def _check_args(x, steps, lr, beta1, beta2, temperature, noise_samples):
    _validate.check_input(x, min_dim=4, max_dim=4)
    if x.shape[0] < 2:
        raise ValueError("the InfoMax estimator contrasts samples: explain a batch of at least 2 (or pass "
                         "train_data)")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not isinstance(noise_samples, int) or noise_samples < 1:
        raise ValueError(f"noise_samples must be an int >= 1, got {noise_samples!r}")
    for name, v in (("lr", lr), ("beta1", beta1), ("beta2", beta2), ("temperature", temperature)):
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (name in ("lr", "temperature") and v == 0):
            raise ValueError(f"{name} must be a finite number {'> 0' if name in ('lr', 'temperature') else '>= 0'}, "
                             f"got {v!r}")


def infomax(
    model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *,
    layer: LayerLike, global_layer: Optional[LayerLike] = None,
    feature_layers: Optional[Sequence[LayerLike]] = None,
    train_data: Optional[torch.Tensor] = None,
    steps: int = 150, lr: float = 1e-2, beta1: float = 1.0, beta2: float = 0.05,
    critic_dim: int = 32, temperature: float = 1.0, exclude_self: bool = False,
    noise_samples: int = 8, upsample_mode: str = "bilinear", seed: int = 0, backend: str = "auto",
) -> InfoMaxResult:
    """Mutual-information heatmaps of a frozen network: InfoMax estimator + information bottleneck.

    Objective, minimised over the critic and the inference network for ``steps`` Adam steps:
    ``L = CE(f(x'), t) - beta1 * (InfoNCE(x, y) + InfoNCE(sg(x'), y)) + beta2 * mean_ij KL_ij / C``.
    The critics read standardised inputs: locals (clean or bottlenecked) with the layer's clean
    per-channel mean and standard deviation, ``y`` per dimension over the batch.

    Parameters
    ----------
    model : nn.Module in eval mode, returning class scores (N, classes).  Left unchanged.
    x : Tensor (N, C, H, W), N >= 2 (the estimator contrasts samples).
    target : class per example (``None``: the predicted class), the decision the bottleneck
        must preserve.
    layer : the local layer (output (N, C, h, w)), where the bottleneck is inserted.
    global_layer : the layer whose output is the global representation ``y``; default: the
        model output.
    feature_layers : layers feeding the inference network; default ``[layer]``.
    train_data : Tensor (M, C, H, W), optional extra samples: the estimator and the inference
        network are trained on ``cat(x, train_data)`` (also the negatives of the final maps).
    steps, lr : optimisation length and Adam learning rate.
    beta1, beta2 : weights of the InfoNCE term and of the bottleneck's KL.
    critic_dim : dimension of the critic's projections.
    temperature, exclude_self : InfoNCE options (see :func:`~xaikernels.ops.infonce.infonce_lse`).
    noise_samples : bottleneck noise draws averaged for the final ``I(x'; y)`` map.
    upsample_mode : interpolation to the input size.
    seed : seeds the critic/inference-network initialisation and the bottleneck noise.
    backend : backend of the fused ops.

    Returns
    -------
    InfoMaxResult
        ``mi_local``, ``mi_bottleneck``, ``redundant``: (N, H, W) maps in nats.  ``I(x; y)`` is
        estimated by a critic trained on the clean locals, ``I(x'; y)`` by a second critic trained
        on the bottleneck's output (averaged over ``noise_samples`` draws, seeded).

    References
    ----------
    Hjelm et al. (2019), "Learning deep representations by mutual information estimation and
    maximization", ICLR.  Schulz et al. (2020), "Restricting the Flow: Information Bottlenecks for
    Attribution", ICLR.  Alemi et al. (2017), "Deep Variational Information Bottleneck", ICLR.
    """
    _check_args(x, steps, lr, beta1, beta2, temperature, noise_samples)
    _validate.check_mode(model)
    n_explain = x.shape[0]
    if train_data is not None:
        _validate.check_input(train_data, "train_data", min_dim=4, max_dim=4)
        if train_data.shape[1:] != x.shape[1:]:
            raise ValueError(f"train_data samples {tuple(train_data.shape[1:])} must match x's {tuple(x.shape[1:])}")
        data = torch.cat([x, train_data.to(x)], dim=0)
    else:
        data = x
    local_mod = _validate.find_layer(model, layer)
    global_mod = _validate.find_layer(model, global_layer) if global_layer is not None else None
    feat_mods = [_validate.find_layer(model, f) for f in (feature_layers or [layer])]
    gen = torch.Generator(device="cpu").manual_seed(seed)

    with ModelGuard(model):
        for p in model.parameters():
            p.requires_grad_(False)
        local_tap = _LayerTap(local_mod, _layer_name(layer))
        global_tap = _LayerTap(global_mod, _layer_name(global_layer)) if global_mod is not None else None
        feat_taps = [local_tap if m is local_mod else _LayerTap(m, _layer_name(m)) for m in feat_mods]

        def clean_pass():
            with torch.no_grad():
                out = _validate.check_output(model(data))
                loc = local_tap.take()
                glob = global_tap.take() if global_tap is not None else out
                feats = [loc if t is local_tap else t.take() for t in feat_taps]
            if loc.dim() != 4:
                raise ValueError(f"layer {_layer_name(layer)!r} output has shape {tuple(loc.shape)}; a (N, C, h, w) "
                                 "map is required")
            return out, loc, glob, feats

        out, loc, glob, feats = clean_pass()
        t = _validate.resolve_target(target, out[:n_explain])
        if data.shape[0] > n_explain:
            t = torch.cat([t, out[n_explain:].argmax(dim=1)])
        mu, std = layer_stats(loc)
        n, c, h, w = loc.shape
        # The critics see standardised inputs (locals with the layer's clean statistics, the
        # global per dimension): an affine rescaling is absorbed by their first linear layer, so
        # the bound is the same family, but Adam stalls on raw scales (a prototypical embedding
        # of magnitude ~4 kept the digits estimate at 0.18 nats after 120 steps; 1.07 standardised).
        glob_s = glob.reshape(n, -1)
        glob_s = (glob_s - glob_s.mean(dim=0)) / glob_s.std(dim=0, unbiased=False).clamp_min(1e-4)
        mu4, std4 = mu.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

        def standard(t):
            # The bottleneck draws its noise with these statistics too, so x' stays on this scale.
            return (t - mu4) / std4

        with torch.random.fork_rng(devices=[]):  # reproducible initialisation, the caller's RNG untouched
            torch.manual_seed(seed)
            critic = Critic(c, glob.reshape(n, -1).shape[1], dim=critic_dim).to(loc)
            # A second estimator for I(x'; y), trained on the bottleneck's noisy output (detached: it
            # measures the bottleneck, it does not steer it).
            critic_b = Critic(c, glob.reshape(n, -1).shape[1], dim=critic_dim).to(loc)
            infer = InferenceNet(sum(f.shape[1] if f.dim() == 4 else f[0].numel() for f in feats)).to(loc)
        opt = torch.optim.Adam([*critic.parameters(), *critic_b.parameters(), *infer.parameters()], lr=lr)
        log_c = math.log(n_candidates(n, h * w, exclude_self))
        history: List[float] = []

        for _ in range(steps):
            alpha = infer(feats, (h, w))
            noise = torch.randn(loc.shape, generator=gen, dtype=loc.dtype).to(loc.device)
            state = {}

            def bottleneck(o, alpha=alpha, noise=noise, state=state):
                z, kl = info_bottleneck(o.detach(), alpha, mu, std, noise=noise, backend=backend)
                state["kl"], state["z"] = kl, z
                return z

            local_tap.replace = bottleneck
            with torch.enable_grad():
                out2 = model(data)
            local_tap.replace = None
            local_tap.calls = 0
            if global_tap is not None:
                global_tap.calls = 0
            for ft in feat_taps:
                ft.calls = 0
            xl, yg = critic(standard(loc), glob_s)
            terms, _ = infonce_lse(xl, yg, temperature, exclude_self, backend=backend)
            nce = terms.mean() + log_c
            xb, yb = critic_b(standard(state["z"].detach()), glob_s)
            nce_b = infonce_lse(xb, yb, temperature, exclude_self, backend=backend)[0].mean() + log_c
            loss = F.cross_entropy(out2, t) - beta1 * (nce + nce_b) + beta2 * state["kl"].mean() / c
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))

        with torch.no_grad():
            alpha = infer(feats, (h, w))
            xl, yg = critic(standard(loc), glob_s)
            terms, _ = infonce_lse(xl, yg, temperature, exclude_self, backend=backend)
            estimate = float(terms.mean() + log_c)
            # I(x'_ij; y_i) is an expectation over the bottleneck's noise: Monte Carlo over draws from
            # a generator seeded apart from training's, so the maps are reproducible.
            eval_gen = torch.Generator(device="cpu").manual_seed(seed + 1)
            terms_b = torch.zeros_like(terms)
            for _ in range(noise_samples):
                noise = torch.randn(loc.shape, generator=eval_gen, dtype=loc.dtype).to(loc.device)
                z, kl = info_bottleneck(loc, alpha, mu, std, noise=noise, backend=backend)
                xb, yb = critic_b(standard(z), glob_s)
                terms_b += infonce_lse(xb, yb, temperature, exclude_self, backend=backend)[0] / noise_samples

    mi_local_raw = (terms + log_c).reshape(n, 1, h, w)[:n_explain]
    mi_b_raw = (terms_b + log_c).reshape(n, 1, h, w)[:n_explain]
    size = x.shape[2:]
    mi_local = upsample(mi_local_raw, size, upsample_mode)[:, 0]
    mi_b = upsample(mi_b_raw, size, upsample_mode)[:, 0]
    return InfoMaxResult(
        mi_local=mi_local, mi_bottleneck=mi_b, redundant=mi_local - mi_b,
        mi_local_raw=mi_local_raw[:, 0], mi_bottleneck_raw=mi_b_raw[:, 0],
        alpha=alpha[:n_explain], kl=kl[:n_explain], estimate=estimate, history=history,
    )
