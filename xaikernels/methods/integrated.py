"""Integrated Gradients, SmoothGrad (+SmoothGrad², VarGrad) and expected gradients (GradientSHAP),
streamed: path/noise rows are generated chunk by chunk by a fused op, pushed through the model,
and their gradients folded into fp32 running state — memory is O(chunk), never O(n × batch).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaikernels import _validate
from xaikernels._model_guard import ModelGuard
from xaikernels.methods._chunking import auto_chunk, run_chunks
from xaikernels.methods._engine import ActivationRule
from xaikernels.ops import paths as ops

QUADRATURES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
BaselineLike = Union[None, float, int, torch.Tensor, str]


# ---- quadrature --------------------------------------------------------------------------------
def quadrature(method: str, n_steps: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``alpha`` in [0, 1] and weights ``w`` (float64) of ``∫_0^1 f ≈ Σ w_j f(alpha_j)``.

    Names, nodes and weights are Captum's: Riemann nodes are ``torch.linspace`` in float32 (as
    Captum builds them), weights ``1/n`` (trapezoid halves the end weights — so, as in Captum,
    its weights sum to (n−1)/n on nodes spaced 1/(n−1)); Gauss–Legendre from
    ``numpy.polynomial.legendre.leggauss`` mapped from [-1, 1] to [0, 1].
    """
    if not isinstance(n_steps, (int, np.integer)) or isinstance(n_steps, bool):
        raise TypeError(f"n_steps must be an int, got {type(n_steps).__name__}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    n = int(n_steps)
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (x + 1)), torch.from_numpy(0.5 * w)
    if method not in QUADRATURES:
        raise ValueError(f"unknown quadrature {method!r}; choose from {QUADRATURES}")
    if n < 2:
        raise ValueError(f"{method} needs n_steps >= 2 (got {n})")
    kind = method.split("_")[1]
    lo, hi = {"left": (0, 1 - 1 / n), "right": (1 / n, 1), "middle": (1 / (2 * n), 1 - 1 / (2 * n)),
              "trapezoid": (0, 1)}[kind]
    alphas = torch.tensor(torch.linspace(lo, hi, n).tolist(), dtype=torch.float64)
    w = torch.full((n,), 1 / n, dtype=torch.float64)
    if kind == "trapezoid":
        w[0] /= 2
        w[-1] /= 2
    return alphas, w


# ---- shared plumbing ---------------------------------------------------------------------------
def _blur(x: torch.Tensor, sigma: Optional[float]) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError("baseline='blur' needs image input (N, C, H, W)")
    h, w = x.shape[2:]
    s = float(sigma) if sigma is not None else max(1.0, min(h, w) / 8)
    r = int(3 * s)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * s * s))
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    y = F.pad(x, (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def resolve_baseline(x: torch.Tensor, baseline: BaselineLike, blur_sigma: Optional[float] = None) -> torch.Tensor:
    """Baseline as a tensor shaped like ``x`` (None → zeros; scalar; tensor broadcast; "blur")."""
    if baseline is None:
        return torch.zeros_like(x)
    if isinstance(baseline, str):
        if baseline != "blur":
            raise ValueError(f"unknown baseline {baseline!r}; use None, a number, a tensor or 'blur'")
        return _blur(x, blur_sigma)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if not isinstance(baseline, torch.Tensor):
        raise TypeError(f"baseline must be None, a number, a tensor or 'blur', got {type(baseline).__name__}")
    if not baseline.is_floating_point():
        raise TypeError(f"baseline must be floating point, got {baseline.dtype}")
    try:
        b = torch.broadcast_to(baseline.to(device=x.device, dtype=x.dtype), x.shape)
    except RuntimeError:
        raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to the input "
                         f"shape {tuple(x.shape)}") from None
    if not bool(torch.isfinite(b).all()):
        raise ValueError("baseline contains non-finite values (NaN or inf)")
    return b.contiguous()


def _rows_forward_args(forward_args: Sequence, n: int, idx: torch.Tensor):
    """Captum's convention: tensor arguments with the batch's leading size are indexed per row."""
    return tuple(a[idx] if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == n else a
                 for a in forward_args)


class _Explainer:
    """One attribution call's state: the guarded model, targets and the row evaluator."""

    def __init__(self, model, x, target, forward_args, rule, activation_types, guard):
        self.model, self.x, self.n = model, x, x.shape[0]
        self.shape = x.shape[1:]
        self.forward_args = tuple(forward_args)
        self.rule = ActivationRule(guard, model, rule, activation_types)
        self.target = target
        self.t: Optional[torch.Tensor] = None
        self.evals = 0

    def outputs(self, inp: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _validate.check_output(self.model(inp, *self.forward_args))

    def resolve_targets(self) -> torch.Tensor:
        if self.t is None:
            if self.target is None:
                self.t = _validate.resolve_target(None, self.outputs(self.x))
            else:
                k = self._num_outputs()
                self.t = _validate.resolve_target(self.target, torch.empty(self.n, k))
        return self.t

    def _num_outputs(self) -> int:
        out = self.outputs(self.x[:1])
        return out.shape[1]

    def scores(self, rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Target scores of rows belonging to examples ``idx`` (forward only)."""
        inp = rows.view(rows.shape[0], *self.shape)
        with torch.no_grad():
            out = _validate.check_output(self.model(inp, *_rows_forward_args(self.forward_args, self.n, idx)))
        return out.gather(1, self.t.to(out.device)[idx].unsqueeze(1)).squeeze(1)

    def grads(self, rows: torch.Tensor, p0: int, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Gradient of each row's target score w.r.t. the row; rows (r, M) at flat index p0
        (example ``p % N``), or belonging to examples ``idx``."""
        if idx is None:
            idx = torch.arange(p0, p0 + rows.shape[0]) % self.n
        inp = rows.view(rows.shape[0], *self.shape).detach().requires_grad_(True)
        with torch.enable_grad():
            out = _validate.check_output(self.model(inp, *_rows_forward_args(self.forward_args, self.n, idx)))
            score = out.gather(1, self.t.to(out.device)[idx].unsqueeze(1)).sum()
            (g,) = torch.autograd.grad(score, inp)
        self.evals += rows.shape[0]
        return g.reshape(rows.shape[0], -1)


def _check_common(model, x, batch_size):
    _validate.check_input(x)
    _validate.check_mode(model)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")


def _chunk(model, x, batch_size, memory_budget, forward_args):
    if batch_size is not None:
        return batch_size
    return auto_chunk(model, x[:1], memory_budget, _rows_forward_args(forward_args, x.shape[0], torch.tensor([0])))


# ---- Integrated Gradients ------------------------------------------------------------------------
def _ig_core(ex: _Explainer, x2, b2, n_steps, method, chunk, backend, progress):
    """Σ_j w_j ∇f(b + α_j (x − b)) accumulated in fp32/fp64; returns (N, M) in the acc dtype."""
    alphas, weights = quadrature(method, n_steps)
    n = x2.shape[0]
    acc = torch.zeros(x2.shape, dtype=ops.acc_dtype(x2.dtype), device=x2.device)
    w = weights.to(acc.dtype)

    def work(p0, p1):
        rows = ops.make_path(x2, b2, alphas, p0, p1, backend=backend)
        g = ex.grads(rows, p0)
        ops.accumulate(acc, None, g, p0, n, w, ops.WSUM, backend=backend)

    run_chunks(n_steps * n, chunk, work, progress, desc="integrated gradients")
    return acc


def _ig_adaptive(ex: "_Explainer", x2, b2, fx, fb, tol, atol, max_steps, chunk, orders, progress):
    """Adaptive composite Gauss–Legendre IG with exact local errors, per example.

    The completeness integrand h(α) = ∇f(b + α(x − b))·(x − b) has a known integral on every
    interval: ∫_a^c h = F(c) − F(a), F(α) = f_t(b + α(x − b)).  So each interval's quadrature
    error on h is exact (one forward-only pass per new interval end point), and so is the
    completeness delta of the current estimate.  Start with ``orders[0]`` Gauss–Legendre nodes on
    [0, 1]; while ``|delta| > tol·|f(x) − f(b)| + atol`` bisect the interval with the largest
    |error| and put ``orders[1]`` nodes on each half.  Returns (acc (N, M), gradient evaluations
    (N,), forward-only evaluations (N,)).
    """
    from tqdm.auto import tqdm

    n, m = x2.shape
    k0, k1 = orders
    acc_t = ops.acc_dtype(x2.dtype)
    diff = (x2 - b2).to(acc_t)
    fx, fb = fx.double().cpu(), fb.double().cpu()
    bound = tol * (fx - fb).abs() + atol
    F = [{0.0: float(fb[e]), 1.0: float(fx[e])} for e in range(n)]
    intervals = [[] for _ in range(n)]  # [a, c, vec (M,), integral of h]
    grads_used = torch.zeros(n, dtype=torch.long)
    fwd_used = torch.zeros(n, dtype=torch.long)
    bar = tqdm(desc="integrated gradients (auto)", unit="grad", disable=not progress, leave=False)

    def rows_of(e_idx, alpha):
        a = alpha.to(acc_t).unsqueeze(1).to(x2.device)
        return (b2[e_idx].to(acc_t) + a * diff[e_idx]).to(x2.dtype)

    def evaluate(new):  # new: list of (e, a, c, k) -> appends intervals
        if not new:
            return
        e_idx, alpha, weight, owner = [], [], [], []
        for i, (e, a, c, k) in enumerate(new):
            gx, gw = np.polynomial.legendre.leggauss(k)
            alpha += list(a + (c - a) * (gx + 1) / 2)
            weight += list((c - a) * gw / 2)
            e_idx += [e] * k
            owner += [i] * k
        e_idx, alpha = torch.tensor(e_idx), torch.tensor(alpha, dtype=torch.float64)
        weight = torch.tensor(weight, dtype=torch.float64).to(acc_t)
        owner = torch.tensor(owner)
        vecs = torch.zeros(len(new), m, dtype=acc_t, device=x2.device)

        def work(p0, p1):
            g = ex.grads(rows_of(e_idx[p0:p1], alpha[p0:p1]), 0, idx=e_idx[p0:p1]).to(acc_t)
            vecs.index_add_(0, owner[p0:p1].to(x2.device), weight[p0:p1].unsqueeze(1).to(x2.device) * g)
            bar.update(p1 - p0)

        run_chunks(len(alpha), chunk, work, False)
        hs = (vecs * diff[torch.tensor([e for e, *_ in new])]).sum(1).double().cpu()
        for i, (e, a, c, k) in enumerate(new):
            intervals[e].append([a, c, vecs[i], float(hs[i])])
            grads_used[e] += k

    evaluate([(e, 0.0, 1.0, k0) for e in range(n)])
    while True:
        splits = []
        for e in range(n):
            errs = [h - (F[e][c] - F[e][a]) for a, c, _, h in intervals[e]]
            if abs(sum(errs)) <= bound[e] or grads_used[e] + 2 * k1 > max_steps:
                continue
            worst = max(range(len(errs)), key=lambda i: abs(errs[i]))
            a, c, *_ = intervals[e].pop(worst)
            splits.append((e, a, 0.5 * (a + c), c))
        if not splits:
            break
        # F at the new midpoints: forward only, no backward.
        e_idx = torch.tensor([e for e, *_ in splits])
        mids = torch.tensor([mid for _, _, mid, _ in splits], dtype=torch.float64)
        vals = torch.cat([ex.scores(rows_of(e_idx[i:i + chunk], mids[i:i + chunk]), e_idx[i:i + chunk])
                          for i in range(0, len(splits), chunk)]).double().cpu()
        for (e, a, mid, c), v in zip(splits, vals.tolist()):
            F[e][mid] = v
            fwd_used[e] += 1
        evaluate([item for e, a, mid, c in splits for item in ((e, a, mid, k1), (e, mid, c, k1))])
    bar.close()
    acc = torch.stack([sum(iv[2] for iv in intervals[e]) for e in range(n)])
    return acc, grads_used, fwd_used


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *,
                         baseline: BaselineLike = None, n_steps: Union[int, str] = 50,
                         method: str = "gausslegendre", tol: float = 5e-3, atol: float = 1e-6,
                         max_steps: int = 512, auto_orders: Tuple[int, int] = (6, 3),
                         batch_size: Optional[int] = None, return_delta: bool = False,
                         memory_budget: Optional[int] = None, blur_sigma: Optional[float] = None,
                         backend: str = "auto", progress: bool = False, forward_args: Sequence = (),
                         return_steps: bool = False):
    """Integrated Gradients (Sundararajan et al. 2017), streamed.

    ``IG(x) = (x − b) ⊙ ∫_0^1 ∇f_t(b + α (x − b)) dα ≈ (x − b) ⊙ Σ_j w_j ∇f_t(b + α_j (x − b))``

    Path rows are generated chunk by chunk by the fused ``make_path`` op and their gradients are
    folded into an fp32 (fp64 for fp64 input) running sum by ``accumulate``: memory is
    O(chunk), whatever ``n_steps``.

    Parameters
    ----------
    model : nn.Module returning (N, K) scores, eval mode.
    x : Tensor (N, ...).
    target : int | sequence | tensor (N,) | None (predicted class).
    baseline : None (zeros) | number | tensor broadcastable to ``x`` | "blur" (Gaussian-blurred
        input, sigma ``blur_sigma`` px, default min(H, W)/8).
    n_steps : int (default 50) or "auto".  "auto": adaptive composite Gauss–Legendre per
        example (see ``_ig_adaptive``: exact local errors from forward-only evaluations at
        interval ends, bisection of the worst interval) until the completeness delta
        ``|Σ IG − (f(x) − f(b))| ≤ tol·|f(x) − f(b)| + atol`` or ``max_steps`` gradient
        evaluations; ``method`` is then ignored.
    method : "gausslegendre" (default) | "riemann_left" | "riemann_right" | "riemann_middle" |
        "riemann_trapezoid" — Captum's names, nodes and weights.
    tol, atol, max_steps : stopping rule of ``n_steps="auto"``.
    auto_orders : Gauss–Legendre nodes on [0, 1] first, then on each half of a split interval.
    return_steps : also return the gradient and forward-only evaluations spent per example
        (two (N,) tensors; fixed ``n_steps`` spends ``n_steps`` and 0).
    batch_size : rows (path points) per model call; default: chosen from ``memory_budget``
        (bytes; default 768 MiB, env ``XAIKERNELS_MEMORY_BUDGET_MB``).  A chunk that runs out
        of memory is retried in halves.
    return_delta : also return Captum's convergence delta
        ``Σ_i IG_i(x) − (f_t(x) − f_t(b))`` per example.
    backend : {"auto", "numba", "triton", "reference"} for the path/accumulate ops.
    progress : tqdm bar over rows.

    Returns
    -------
    Tensor shaped like ``x``; then the delta (N,) when ``return_delta``; then the evaluation
    counts when ``return_steps``.
    """
    _check_common(model, x, batch_size)
    adaptive = isinstance(n_steps, str)
    if adaptive and n_steps != "auto":
        raise ValueError(f"n_steps must be an int or 'auto', got {n_steps!r}")
    if adaptive and (not tol >= 0 or not atol >= 0 or tol + atol <= 0):
        raise ValueError("tol and atol must be >= 0 and not both 0")
    if adaptive and (len(auto_orders) != 2 or min(auto_orders) < 1):
        raise ValueError(f"auto_orders must be two positive ints, got {auto_orders!r}")
    if not adaptive:
        quadrature(method, n_steps)  # validate before any model work
    b = resolve_baseline(x, baseline, blur_sigma)
    n = x.shape[0]
    with ModelGuard(model) as guard:
        ex = _Explainer(model, x, target, forward_args, None, (nn.ReLU,), guard)
        ex.resolve_targets()
        chunk = _chunk(model, x, batch_size, memory_budget, forward_args)
        x2, b2 = x.reshape(n, -1), b.reshape(n, -1)
        if adaptive or return_delta:
            fx = ex.outputs(x).gather(1, ex.t.unsqueeze(1)).squeeze(1)
            fb = ex.outputs(b).gather(1, ex.t.unsqueeze(1)).squeeze(1)
        if adaptive:
            acc, grads_used, fwd_used = _ig_adaptive(ex, x2, b2, fx, fb, tol, atol, max_steps, chunk,
                                                     auto_orders, progress)
        else:
            acc = _ig_core(ex, x2, b2, n_steps, method, chunk, backend, progress)
            grads_used = torch.full((n,), n_steps, dtype=torch.long)
            fwd_used = torch.zeros(n, dtype=torch.long)
        attr = (acc * (x2 - b2).to(acc.dtype)).to(x.dtype).reshape(x.shape)
    out = (attr,)
    if return_delta:
        out += (attr.reshape(n, -1).sum(1) - (fx - fb),)
    if return_steps:
        out += (grads_used, fwd_used)
    return out[0] if len(out) == 1 else out


# ---- SmoothGrad family -------------------------------------------------------------------------
KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")
BASES = ("saliency", "input_x_gradient", "guided_backprop", "deconvnet", "integrated_gradients")


def _seed(seed: Optional[int]) -> int:
    if seed is None:
        # Drawn from torch's global generator so torch.manual_seed makes runs repeatable.
        return int(torch.randint(0, 2**62, (1,)).item())
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    return int(seed)


def smoothgrad(model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *,
               n_samples: int = 50, stdev: Union[float, torch.Tensor] = 0.15,
               noise_scale: str = "relative", kind: str = "smoothgrad", base: str = "saliency",
               batch_size: Optional[int] = None, seed: Optional[int] = None,
               noise: Optional[torch.Tensor] = None, memory_budget: Optional[int] = None,
               activation_types: Tuple[Type[nn.Module], ...] = (nn.ReLU,),
               base_kwargs: Optional[dict] = None, backend: str = "auto", progress: bool = False,
               forward_args: Sequence = ()) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017), SmoothGrad² and VarGrad (Adebayo et al. 2018), streamed.

    With ``x̃_j = x + σ ε_j``, ``ε_j ~ N(0, I)`` and ``A`` the base attribution:
    smoothgrad ``mean_j A(x̃_j)``; smoothgrad_sq ``mean_j A(x̃_j)²``; vargrad ``var_j A(x̃_j)``
    (population variance, Welford-accumulated).

    Noise is counter-based Philox (Triton's ``tl.randn`` stream, reproduced on every backend):
    the same ``seed`` gives the same result for any ``batch_size`` and backend.

    Parameters
    ----------
    n_samples : int, default 50.
    stdev : σ; a float or a (N,) tensor of per-example values.
    noise_scale : "relative" (default; σ × (max − min) of each example, the paper's convention,
        stdev 0.15 = 15 %) or "absolute".
    kind : "smoothgrad" | "smoothgrad_sq" | "vargrad".
    base : "saliency" (signed gradient) | "input_x_gradient" (gradient × noisy input) |
        "guided_backprop" | "deconvnet" | "integrated_gradients" (``base_kwargs``: baseline,
        n_steps, method).
    seed : int or None (drawn from torch's global generator).
    noise : optional explicit ε of shape (n_samples, *x.shape) (row j·N+n = sample j of example
        n), for exact comparison with other implementations.
    batch_size, memory_budget, backend, progress : as :func:`integrated_gradients`.

    Returns
    -------
    Tensor shaped like ``x``.
    """
    _check_common(model, x, batch_size)
    if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    if base not in BASES:
        raise ValueError(f"unknown base {base!r}; choose from {BASES}")
    if noise_scale not in ("relative", "absolute"):
        raise ValueError("noise_scale must be 'relative' or 'absolute'")
    n = x.shape[0]
    sig = torch.as_tensor(stdev, dtype=torch.float64).reshape(-1)
    if sig.numel() not in (1, n):
        raise ValueError(f"stdev must be a scalar or have one value per example ({n}), got {sig.numel()}")
    if not bool(torch.isfinite(sig).all()) or bool((sig < 0).any()):
        raise ValueError(f"stdev must be finite and >= 0, got {sig.tolist()}")
    sig = sig.expand(n)
    x2 = x.reshape(n, -1)
    if noise_scale == "relative":
        sig = sig * (x2.amax(1) - x2.amin(1)).double()
    if noise is not None:
        if tuple(noise.shape) != (n_samples, *x.shape):
            raise ValueError(f"noise must have shape {(n_samples, *x.shape)}, got {tuple(noise.shape)}")
        noise = noise.reshape(n_samples * n, -1)
    sd = _seed(seed) if noise is None else 0
    base_kwargs = dict(base_kwargs or {})
    rule = {"guided_backprop": "guided", "deconvnet": "deconv"}.get(base)
    acc_t = ops.acc_dtype(x.dtype)
    a = torch.zeros(x2.shape, dtype=acc_t, device=x.device)
    b2 = torch.zeros_like(a) if kind == "vargrad" else None
    mode = {"smoothgrad": ops.WSUM, "smoothgrad_sq": ops.SQSUM, "vargrad": ops.WELFORD}[kind]
    w = torch.full((n_samples,), 1.0 / n_samples, dtype=acc_t)
    with ModelGuard(model) as guard:
        ex = _Explainer(model, x, target, forward_args, rule, tuple(activation_types), guard)
        ex.resolve_targets()
        chunk = _chunk(model, x, batch_size, memory_budget, forward_args)
        sig_t = sig.to(device=x.device, dtype=acc_t)

        if base == "integrated_gradients":
            ig_steps = base_kwargs.pop("n_steps", 50)
            ig_method = base_kwargs.pop("method", "gausslegendre")
            ig_base = resolve_baseline(x, base_kwargs.pop("baseline", None)).reshape(n, -1)
            if base_kwargs:
                raise TypeError(f"unexpected base_kwargs {sorted(base_kwargs)}")
            per_chunk = max(1, chunk // ig_steps)
        else:
            if base_kwargs:
                raise TypeError(f"base {base!r} takes no base_kwargs, got {sorted(base_kwargs)}")
            per_chunk = chunk

        def work(p0, p1):
            rows = ops.make_noisy(x2, sig_t, sd, p0, p1, noise, backend=backend)
            if base == "integrated_gradients":
                idx = torch.arange(p0, p1) % n
                sub = _Explainer(model, rows.view(-1, *x.shape[1:]), None, (), None, (nn.ReLU,), guard)
                sub.t = ex.t[idx]
                sub.forward_args = _rows_forward_args(ex.forward_args, n, idx)
                sub.rule = ex.rule
                acc_ig = _ig_core(sub, rows, ig_base[idx], ig_steps, ig_method, chunk, backend, False)
                attr = acc_ig * (rows - ig_base[idx]).to(acc_ig.dtype)
            else:
                attr = ex.grads(rows, p0)
                if base == "input_x_gradient":
                    attr = attr * rows
            ops.accumulate(a, b2, attr, p0, n, w, mode, backend=backend)

        run_chunks(n_samples * n, per_chunk, work, progress, desc=kind)
    if kind == "smoothgrad_sq":
        a /= n_samples
    out = b2 / n_samples if kind == "vargrad" else a
    return out.to(x.dtype).reshape(x.shape)


# ---- Expected gradients / GradientSHAP -----------------------------------------------------------
def expected_gradients(model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *,
                       background: torch.Tensor, n_samples: int = 50, stdev: float = 0.0,
                       seed: Optional[int] = None, baseline_index: Optional[torch.Tensor] = None,
                       alphas: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                       batch_size: Optional[int] = None, memory_budget: Optional[int] = None,
                       backend: str = "auto", progress: bool = False, forward_args: Sequence = ()):
    """Expected gradients / GradientSHAP (Erion et al. 2021; Lundberg & Lee 2017).

    ``φ(x) = E_{b ~ D, α ~ U(0,1), ε}[ (x̃ − b) ⊙ ∇f_t(b + α (x̃ − b)) ]``, ``x̃ = x + stdev·ε``,
    estimated with ``n_samples`` draws per example, streamed like :func:`smoothgrad`.

    Parameters
    ----------
    background : Tensor (B, *x.shape[1:]), the baseline distribution D.
    n_samples : draws per example (default 50).
    stdev : absolute Gaussian noise on the input (default 0, as Captum's GradientShap).
    seed : draws of baseline indices and alphas (torch.Generator) and noise (Philox).
    baseline_index, alphas, noise : optional explicit draws, shapes (n_samples, N),
        (n_samples, N) and (n_samples, *x.shape), for exact comparison.

    Returns
    -------
    Tensor shaped like ``x``.
    """
    _check_common(model, x, batch_size)
    if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    _validate.check_input(background, name="background")
    if tuple(background.shape[1:]) != tuple(x.shape[1:]):
        raise ValueError(f"background examples must be shaped {tuple(x.shape[1:])}, got {tuple(background.shape[1:])}")
    if stdev < 0:
        raise ValueError(f"stdev must be >= 0, got {stdev}")
    n = x.shape[0]
    sd = _seed(seed)
    gen = torch.Generator().manual_seed(sd)
    if baseline_index is None:
        baseline_index = torch.randint(0, background.shape[0], (n_samples, n), generator=gen)
    if alphas is None:
        alphas = torch.rand((n_samples, n), generator=gen, dtype=torch.float64)
    if tuple(baseline_index.shape) != (n_samples, n) or tuple(alphas.shape) != (n_samples, n):
        raise ValueError(f"baseline_index and alphas must have shape {(n_samples, n)}")
    bidx, al = baseline_index.reshape(-1), alphas.reshape(-1).double()
    x2, bg2 = x.reshape(n, -1), background.reshape(background.shape[0], -1).to(x.dtype)
    if noise is not None:
        noise = noise.reshape(n_samples * n, -1)
    acc_t = ops.acc_dtype(x.dtype)
    acc = torch.zeros(x2.shape, dtype=acc_t, device=x.device)
    w = torch.full((n_samples,), 1.0 / n_samples, dtype=acc_t)
    sig = torch.full((n,), float(stdev), dtype=acc_t)
    with ModelGuard(model) as guard:
        ex = _Explainer(model, x, target, forward_args, None, (nn.ReLU,), guard)
        ex.resolve_targets()
        chunk = _chunk(model, x, batch_size, memory_budget, forward_args)

        def work(p0, p1):
            xt = ops.make_noisy(x2, sig, sd, p0, p1, noise, backend=backend) if (stdev > 0 or noise is not None) \
                else x2[torch.arange(p0, p1) % n]
            bs = bg2[bidx[p0:p1]]
            a = al[p0:p1].to(acc_t).unsqueeze(1)
            rows = (bs.to(acc_t) + a * (xt.to(acc_t) - bs.to(acc_t))).to(x.dtype)
            g = ex.grads(rows, p0)
            ops.accumulate(acc, None, g * (xt - bs), p0, n, w, ops.WSUM, backend=backend)

        run_chunks(n_samples * n, chunk, work, progress, desc="expected gradients")
    return acc.to(x.dtype).reshape(x.shape)
