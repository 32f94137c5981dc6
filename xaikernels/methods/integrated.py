"""Integrated Gradients, SmoothGrad (+SmoothGrad², VarGrad) and expected gradients (GradientSHAP),
streamed: path/noise rows are generated chunk by chunk by a fused op, pushed through the model,
and their gradients folded into fp32 running state — memory is O(chunk), never O(n × batch).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Type, Union

import functools

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
    alphas, weights = _quadrature(method, n_steps)
    return alphas.clone(), weights.clone()


@functools.lru_cache(maxsize=64)
def _quadrature(method: str, n_steps: int) -> Tuple[torch.Tensor, torch.Tensor]:
    # Cached: leggauss(n) costs ~0.1 s at n = 512 and IG asks for it more than once per call.
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
        self._k: Optional[torch.Tensor] = None  # explicit targets whose upper range is not checked yet
        self.evals = 0

    def outputs(self, inp: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _validate.check_output(self.model(inp, *self.forward_args))

    def resolve_targets(self) -> torch.Tensor:
        """Targets (N,).  An explicit target is checked here for everything but its upper range,
        which the first model call checks (``check_range``): a separate forward pass only to
        count the model's outputs would cost a whole row's forward per call."""
        if self.t is None:
            if self.target is None:
                self.t = _validate.resolve_target(None, self.outputs(self.x))
            else:
                # an expanded (stride-0) stand-in: any class count, no memory
                wide = torch.empty((1, 1), device=self.x.device).expand(self.n, 2**62 // max(self.n, 1))
                self.t = _validate.resolve_target(self.target, wide)
                self._k = self.t
        return self.t

    def check_range(self, out: torch.Tensor) -> None:
        """The upper-range check of an explicit target, on the first output seen."""
        t, self._k = self._k, None
        if t is not None and t.numel() and int(t.max()) >= out.shape[1]:
            raise IndexError(f"target out of range: model has {out.shape[1]} outputs, got targets {t.tolist()[:8]}")

    def grads(self, rows: torch.Tensor, p0: int, idx: Optional[torch.Tensor] = None,
              with_scores: bool = False):
        """Gradient of each row's target score w.r.t. the row; rows (r, M) at flat index p0
        (example ``p % N``), or belonging to examples ``idx``; also the scores if asked."""
        if idx is None:
            idx = torch.arange(p0, p0 + rows.shape[0]) % self.n
        inp = rows.view(rows.shape[0], *self.shape).detach().requires_grad_(True)
        fargs = _rows_forward_args(self.forward_args, self.n, idx)
        tix = self.t[idx].unsqueeze(1)
        del idx  # (a row index of our own must not outlive the forward: peak memory is the backward's)
        with torch.enable_grad():
            out = _validate.check_output(self.model(inp, *fargs))
            self.check_range(out)
            picked = out.gather(1, tix.to(out.device))
            del out, tix  # the full (rows, classes) logits need not live through the backward pass
            (g,) = torch.autograd.grad(picked.sum(), inp)
        self.evals += rows.shape[0]
        g = g.reshape(rows.shape[0], -1)
        return (g, picked.detach().squeeze(1)) if with_scores else g


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
    # Nodes and weights are held as Python floats, and each chunk gets tensors of its own steps
    # only, made before its forward pass (alphas) or after its backward pass (weights): nothing
    # of O(n_steps) is alive while the chunk's activations are (the peak).
    al, wl = alphas.tolist(), weights.tolist()
    del alphas, weights
    n = x2.shape[0]
    acc = torch.zeros(x2.shape, dtype=ops.acc_dtype(x2.dtype), device=x2.device)

    def work(p0, p1):
        j0, j1 = p0 // n, (p1 - 1) // n + 1  # steps of rows [p0, p1); row p is step p // n
        rows = ops.make_path(x2, b2, torch.tensor(al[j0:j1], dtype=torch.float64), p0 - j0 * n,
                             p1 - j0 * n, backend=backend)
        g = ex.grads(rows, p0)
        ops.accumulate(acc, None, g, p0 - j0 * n, n, torch.tensor(wl[j0:j1], dtype=acc.dtype),
                       ops.WSUM, backend=backend)

    run_chunks(n_steps * n, chunk, work, progress, desc="integrated gradients")
    return acc


@functools.lru_cache(maxsize=None)
def _lobatto(n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Gauss–Lobatto nodes and weights on [-1, 1] (n >= 3 points, both end points included):
    interior nodes are the roots of P'_{n-1}, weights 2 / (n (n-1) P_{n-1}(x)^2)."""
    from numpy.polynomial import legendre as L

    c = np.zeros(n)
    c[-1] = 1.0
    inner = np.sort(L.legroots(L.legder(c)))
    xs = np.concatenate([[-1.0], inner, [1.0]])
    return xs, 2.0 / (n * (n - 1) * L.legval(xs, c) ** 2)


def _ig_adaptive(ex: "_Explainer", x2, b2, tol, atol, max_steps, chunk, orders, progress):
    """Adaptive composite Gauss–Lobatto IG with exact local errors, per example.

    The completeness integrand h(α) = ∇f(b + α(x − b))·(x − b) has a known integral on every
    interval: ∫_a^c h = F(c) − F(a), with F(α) = f_t(b + α(x − b)).  Lobatto nodes include the
    interval ends, and the forward pass of each gradient evaluation gives F there for free, so
    every interval's quadrature error on h is exact, and so is the completeness delta of the
    current estimate.  Start with ``orders[0]`` Lobatto nodes on [0, 1]; while
    ``|delta| > tol·|F(1) − F(0)| + atol``, bisect the interval with the largest |error| and put
    ``orders[1]`` nodes on each half (the halves share the parent's end points and midpoint:
    a split costs 2·orders[1] − 3 new gradient evaluations).  Returns (acc (N, M), gradient
    evaluations (N,), forward-only evaluations (N,) = 0).
    """
    from tqdm.auto import tqdm

    n, m = x2.shape
    k0, k1 = orders
    acc_t = ops.acc_dtype(x2.dtype)
    diff = (x2 - b2).to(acc_t)
    points = [dict() for _ in range(n)]  # alpha -> (F(alpha), gradient (M,))
    intervals = [[] for _ in range(n)]  # [a, c, vec (M,), ∫h by quadrature]
    bar = tqdm(desc="integrated gradients (auto)", unit="grad", disable=not progress, leave=False)

    def nodes(a, c, k):
        u, w = _lobatto(k)
        al = list(a + (c - a) * (u + 1) / 2)
        al[0], al[-1] = a, c  # exact shared end points (dictionary keys)
        return al, (c - a) * w / 2

    def evaluate(new):  # new: list of (e, a, c, k)
        req = sorted({(e, al) for e, a, c, k in new for al in nodes(a, c, k)[0] if al not in points[e]})
        if req:
            e_idx = torch.tensor([e for e, _ in req])
            alpha = torch.tensor([al for _, al in req], dtype=torch.float64)
            grads = torch.empty(len(req), m, dtype=acc_t, device=x2.device)
            scores = torch.empty(len(req), dtype=torch.float64)

            def work(p0, p1):
                e = e_idx[p0:p1]
                a = alpha[p0:p1].to(acc_t).unsqueeze(1).to(x2.device)
                rows = (b2[e].to(acc_t) + a * diff[e]).to(x2.dtype)
                g, f = ex.grads(rows, 0, idx=e, with_scores=True)
                grads[p0:p1] = g.to(acc_t)
                scores[p0:p1] = f.detach().double().cpu()
                bar.update(p1 - p0)

            run_chunks(len(req), chunk, work, False)
            for i, (e, al) in enumerate(req):
                points[e][al] = (float(scores[i]), grads[i])
        for e, a, c, k in new:
            al, w = nodes(a, c, k)
            vec = sum(float(wi) * points[e][ai][1] for ai, wi in zip(al, w))
            intervals[e].append([a, c, vec, float((vec * diff[e]).sum())])

    evaluate([(e, 0.0, 1.0, k0) for e in range(n)])
    while True:
        splits = []
        for e in range(n):
            F = points[e]
            errs = [h - (F[c][0] - F[a][0]) for a, c, _, h in intervals[e]]
            bound = tol * abs(F[1.0][0] - F[0.0][0]) + atol
            if abs(sum(errs)) <= bound or len(F) + 2 * k1 - 3 > max_steps:
                continue
            worst = max(range(len(errs)), key=lambda i: abs(errs[i]))
            a, c, *_ = intervals[e].pop(worst)
            mid = 0.5 * (a + c)
            splits += [(e, a, mid, k1), (e, mid, c, k1)]
        if not splits:
            break
        evaluate(splits)
    bar.close()
    acc = torch.stack([sum(iv[2] for iv in intervals[e]) for e in range(n)])
    grads_used = torch.tensor([len(points[e]) for e in range(n)], dtype=torch.long)
    return acc, grads_used, torch.zeros(n, dtype=torch.long)


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *,
                         baseline: BaselineLike = None, n_steps: Union[int, str] = 50,
                         method: str = "gausslegendre", tol: float = 5e-3, atol: float = 1e-6,
                         max_steps: int = 512, auto_orders: Tuple[int, int] = (5, 4),
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
    n_steps : int (default 50) or "auto".  "auto": adaptive composite Gauss–Lobatto per
        example (see ``_ig_adaptive``: exact local errors from the model values at interval
        ends, which the gradient passes give for free; bisection of the worst interval) until
        the completeness delta
        ``|Σ IG − (f(x) − f(b))| ≤ tol·|f(x) − f(b)| + atol`` or ``max_steps`` gradient
        evaluations; ``method`` is then ignored.
    method : "gausslegendre" (default) | "riemann_left" | "riemann_right" | "riemann_middle" |
        "riemann_trapezoid" — Captum's names, nodes and weights.
    tol, atol, max_steps : stopping rule of ``n_steps="auto"``.
    auto_orders : Gauss–Lobatto nodes (>= 3) on [0, 1] first, then on each half of a split
        interval.
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
    if adaptive and (len(auto_orders) != 2 or min(auto_orders) < 3):
        raise ValueError(f"auto_orders must be two ints >= 3 (Lobatto nodes), got {auto_orders!r}")
    if not adaptive:
        quadrature(method, n_steps)  # validate before any model work
    b = resolve_baseline(x, baseline, blur_sigma)
    n = x.shape[0]
    with ModelGuard(model) as guard:
        ex = _Explainer(model, x, target, forward_args, None, (nn.ReLU,), guard)
        ex.resolve_targets()
        chunk = _chunk(model, x, batch_size, memory_budget, forward_args)
        x2, b2 = x.reshape(n, -1), b.reshape(n, -1)
        if return_delta:
            ox = ex.outputs(x)
            ex.check_range(ox)
            fx = ox.gather(1, ex.t.unsqueeze(1)).squeeze(1)
            fb = ex.outputs(b).gather(1, ex.t.unsqueeze(1)).squeeze(1)
        if adaptive:
            acc, grads_used, fwd_used = _ig_adaptive(ex, x2, b2, tol, atol, max_steps, chunk,
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
        sig = sig * (x2.amax(1) - x2.amin(1)).double().cpu()
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
                sub._k = None if ex._k is None else sub.t  # range check on its first call
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
            a = al[p0:p1].to(x.device, acc_t).unsqueeze(1)
            rows = (bs.to(acc_t) + a * (xt.to(acc_t) - bs.to(acc_t))).to(x.dtype)
            g = ex.grads(rows, p0)
            ops.accumulate(acc, None, g * (xt - bs), p0, n, w, ops.WSUM, backend=backend)

        run_chunks(n_samples * n, chunk, work, progress, desc="expected gradients")
    return acc.to(x.dtype).reshape(x.shape)
