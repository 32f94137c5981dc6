"""The fused information-bottleneck op: noise injection and the per-location KL in one pass.

    eps = mu + std * n,  n ~ N(0, I)             (noise with the layer's statistics)
    z   = alpha * eps + (1 - alpha) * x           (the bottleneck's output x')
    kl[n, s] = sum_c 0.5 * (a^2 + m^2 - 1) - log a,   m = (1 - a)(x - mu)/std,  a = max(alpha, eps_kl)

``kl`` is KL( p(z | x) || N(mu, std^2) ) summed over channels: the variational upper bound on
the information the bottleneck lets through at each location (Alemi et al. 2017; Schulz et
al. 2020).  Backends: ``cpp`` (``torch.ops.xaikernels.info_bottleneck``, CPU), ``reference``
(torch, any device).  The noise is drawn by the caller (or here, from ``generator``) so that every
backend sees the same sample.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from xaikernels import _backend
from xaikernels.ops.infonce import check_finite
from xaikernels.reference import bottleneck as _ref

OP = _backend.define_op(
    "info_bottleneck",
    auto_order={"cpu": ("cpp", "reference"), "cuda": ("triton", "reference")},
)


def _cpp_forward(x, alpha, noise, mu, std, eps):
    return torch.ops.xaikernels.info_bottleneck(x, alpha, noise, mu, std, eps)


def _cpp_backward(grad_z, grad_kl, x, alpha, noise, mu, std, eps):
    return torch.ops.xaikernels.info_bottleneck_backward(grad_z, grad_kl, x, alpha, noise, mu, std, eps)


def _triton_forward(x, alpha, noise, mu, std, eps):
    from xaikernels.kernels.triton import bottleneck as k

    return k.info_bottleneck(x, alpha, noise, mu, std, eps)


def _triton_backward(grad_z, grad_kl, x, alpha, noise, mu, std, eps):
    from xaikernels.kernels.triton import bottleneck as k

    return k.info_bottleneck_backward(grad_z, grad_kl, x, alpha, noise, mu, std, eps)


OP.register("cpp", (_cpp_forward, _cpp_backward))
OP.register("triton", (_triton_forward, _triton_backward))
OP.register("reference", (_ref.info_bottleneck, _ref.info_bottleneck_backward))


def _fill(grad_z, grad_kl, x):
    if grad_z is None:
        grad_z = torch.zeros_like(x)
    if grad_kl is None:
        grad_kl = x.new_zeros((x.shape[0], x.shape[2]))
    return grad_z.contiguous(), grad_kl.contiguous()


class _BottleneckFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, noise, mu, std, eps, impl):
        fwd, bwd = impl
        z, kl = fwd(x, alpha, noise, mu, std, eps)
        ctx.save_for_backward(x, alpha, noise, mu, std)
        ctx.eps, ctx.bwd = eps, bwd
        return z, kl

    @staticmethod
    def backward(ctx, grad_z, grad_kl):
        x, alpha, noise, mu, std = ctx.saved_tensors
        grad_z, grad_kl = _fill(grad_z, grad_kl, x)
        dx, dalpha = ctx.bwd(grad_z, grad_kl, x, alpha, noise, mu, std, ctx.eps)
        return dx, dalpha, None, None, None, None, None


def _as_stat(t, name: str, c: int, spatial, dtype, device) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=dtype, device=device)
    t = t.to(dtype=dtype, device=device)
    if t.dim() == 0:
        t = t.expand(c)
    if t.shape[0] != c or (t.dim() > 1 and tuple(t.shape[1:]) != tuple(spatial)):
        raise ValueError(f"{name} must be a scalar, (C,) or (C, *spatial) = ({c}, {', '.join(map(str, spatial))}), "
                         f"got shape {tuple(t.shape)}")
    t = t.reshape(c, -1) if t.dim() > 1 else t.reshape(c, 1)
    s = 1
    for v in spatial:
        s *= v
    return t.expand(c, s).contiguous()


def info_bottleneck(
    x: torch.Tensor, alpha: torch.Tensor, mu, std, noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None, eps: float = 1e-6, backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Information bottleneck on a feature map: noisy features and the per-location KL.

    ``z = alpha * (mu + std * n) + (1 - alpha) * x`` and
    ``kl[n, *s] = sum_c 0.5 (a^2 + ((1 - a)(x - mu)/std)^2 - 1) - log a`` with ``a = max(alpha, eps)``.

    Parameters
    ----------
    x : Tensor, shape (N, C, *spatial)
        Layer features.
    alpha : Tensor, shape (N, 1, *spatial), (N, *spatial) or (N, C, *spatial)
        Fraction of noise per location (or per element), in [0, 1]: 0 passes ``x`` unchanged,
        1 replaces it by noise.  Differentiable.
    mu, std : scalar or Tensor, shape (C,) or (C, *spatial)
        The layer's statistics (mean and standard deviation, std > 0); constants.
    noise : Tensor, shape of ``x``, optional
        Standard-normal sample ``n``; drawn with ``generator`` when omitted.
    generator : torch.Generator, optional
    eps : float, default 1e-6
        Floor of ``alpha`` inside the KL (no noise would carry infinite information).
    backend : {"auto", "cpp", "triton", "reference"}

    Returns
    -------
    z : Tensor, shape of ``x``
    kl : Tensor, shape (N, *spatial), nats (summed over channels)
        Both differentiable w.r.t. ``x`` and ``alpha``.

    References
    ----------
    Schulz, Sixt, Tombari, Landgraf (2020), "Restricting the Flow: Information Bottlenecks for
    Attribution", ICLR.  Alemi et al. (2017), "Deep Variational Information Bottleneck", ICLR.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor")
    if x.dim() < 2:
        raise ValueError(f"x must be (N, C, *spatial), got shape {tuple(x.shape)}")
    n, c = x.shape[:2]
    spatial = tuple(x.shape[2:])
    if not isinstance(alpha, torch.Tensor) or not alpha.is_floating_point():
        raise TypeError("alpha must be a floating-point tensor")
    if tuple(alpha.shape) == (n,) + spatial:
        alpha = alpha.unsqueeze(1)
    if alpha.dim() != x.dim() or alpha.shape[0] != n or tuple(alpha.shape[2:]) != spatial or alpha.shape[1] not in (1, c):
        raise ValueError(f"alpha must be (N, 1, *spatial) or (N, C, *spatial) for x of shape {tuple(x.shape)}, "
                         f"got {tuple(alpha.shape)}")
    check_finite(x, "x")
    if not bool(((alpha >= 0) & (alpha <= 1)).all()):
        raise ValueError(f"alpha must lie in [0, 1] (it is the fraction of noise); got values in "
                         f"[{alpha.min().item():.4g}, {alpha.max().item():.4g}]")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be > 0, got {eps!r}")
    mu_t = _as_stat(mu, "mu", c, spatial, x.dtype, x.device)
    std_t = _as_stat(std, "std", c, spatial, x.dtype, x.device)
    if not bool(torch.isfinite(mu_t).all()) or not bool((std_t > 0).all()) or not bool(torch.isfinite(std_t).all()):
        raise ValueError("mu must be finite and std finite and > 0")
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    elif noise.shape != x.shape:
        raise ValueError(f"noise must have the shape of x {tuple(x.shape)}, got {tuple(noise.shape)}")
    alpha = alpha.to(x.dtype)
    x3 = x.reshape(n, c, -1).contiguous()
    a3 = alpha.reshape(n, alpha.shape[1], -1).contiguous()
    n3 = noise.to(x.dtype).reshape(n, c, -1).contiguous()
    _, impl = OP.launcher(x.device, backend)
    z, kl = _BottleneckFunction.apply(x3, a3, n3, mu_t, std_t, float(eps), impl)
    return z.reshape(x.shape), kl.reshape((n,) + spatial)


def _register_library_extras() -> None:
    @torch.library.register_fake("xaikernels::info_bottleneck")
    def _fake(x, alpha, noise, mu, std, eps=1e-6):
        return torch.empty_like(x), x.new_empty((x.shape[0], x.shape[2]))

    @torch.library.register_fake("xaikernels::info_bottleneck_backward")
    def _fake_bwd(grad_z, grad_kl, x, alpha, noise, mu, std, eps=1e-6):
        return torch.empty_like(x), torch.empty_like(alpha)

    def _setup(ctx, inputs, output):
        x, alpha, noise, mu, std, eps = inputs
        ctx.save_for_backward(x, alpha, noise, mu, std)
        ctx.eps = eps

    def _bwd(ctx, grad_z, grad_kl):
        x, alpha, noise, mu, std = ctx.saved_tensors
        grad_z, grad_kl = _fill(grad_z, grad_kl, x)
        dx, dalpha = torch.ops.xaikernels.info_bottleneck_backward(grad_z, grad_kl, x, alpha, noise, mu, std, ctx.eps)
        return dx, dalpha, None, None, None, None

    torch.library.register_autograd("xaikernels::info_bottleneck", _bwd, setup_context=_setup)


_backend.on_ext_load(_register_library_extras)
