"""LRP rule ops: each rule is the backward of one autograd Function.

The forward of a rule Function is the layer's own forward (it *is* the layer call during an
LRP pass); the backward maps output relevance to input relevance.  One forward and one backward
through the model therefore give the LRP attribution — no hook re-runs a layer.  What a
backward needs beyond the layer input is kept only where it is cheap; the torch backend
recomputes the sign-split products in the backward (the same work as computing them in the
forward, without holding them in between), and a :class:`SaveBudget` lets αβ/γ layers keep
their outputs within a bound on memory.

Ops (dispatched per call, :mod:`xaikernels._backend`):

* ``lrp_linear`` — ``nn.Linear`` layers; backends ``triton`` (fused kernels) and ``reference``.
* ``lrp_conv`` — N-d convolutions; backends ``triton`` (2-d) and ``reference``.

Both take the layer's weights through a zero-argument *provider* (``() -> (W, b)``) rather than
tensors, so that effective weights (BatchNorm merged in by a canonizer, sign-split stacks) are
built when needed and never held alive between the forward and the backward.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from xaikernels import _backend
from xaikernels.reference import lrp as _ref
from xaikernels.reference.lrp import ConvGeom, RuleParams, Workspace, stabilize

WeightProvider = Callable[[], Tuple[torch.Tensor, Optional[torch.Tensor]]]

# On CUDA the torch backend (cuBLAS / cuDNN products) comes first: on an H100 the Triton rule
# kernels took 2.1-2.8x its time and, for convolutions, 8x its memory (im2col columns)
# (bench/results/gpu.md); they stay available as backend="triton".
LINEAR_OP = _backend.define_op(
    "lrp_linear", auto_order={"cpu": ("reference",), "cuda": ("reference", "triton")})
CONV_OP = _backend.define_op(
    "lrp_conv", auto_order={"cpu": ("reference",), "cuda": ("reference", "triton")})


def _triton_linear():
    from xaikernels.kernels.triton import lrp as k

    return k.linear_forward, k.linear_backward


def _triton_conv():
    from xaikernels.kernels.triton import lrp as k

    return k.conv_forward, k.conv_backward


class _Lazy:
    """A (forward, backward) pair imported on first use (Triton is never imported eagerly)."""

    def __init__(self, load):
        self._load = load

    def __iter__(self):
        return iter(self._load())


LINEAR_OP.register("reference", (_ref.layer_forward, _ref.layer_backward))
CONV_OP.register("reference", (_ref.layer_forward, _ref.layer_backward))
LINEAR_OP.register("triton", _Lazy(_triton_linear))
CONV_OP.register("triton", _Lazy(_triton_conv))


class SaveBudget:
    """How much a pass may keep between forward and backward to save recomputation.

    The torch backend recomputes the products of the sign-split rules (αβ, γ) in the backward,
    so it keeps nothing beyond the layer inputs the plain gradient keeps too.  With a budget, a
    layer may instead keep a copy of its output ``z`` (one product fewer in the backward) while
    the bytes kept so far stay within ``ratio`` × the bytes of the rule layers' inputs seen so
    far.  Greedy in forward order, so it favours the small outputs of deep layers, where a
    product costs as much as in the early layers but a kept output little memory.
    """

    def __init__(self, ratio: float = 0.75):
        self.ratio = float(ratio)
        self.seen = 0
        self.kept = 0

    def see(self, x: torch.Tensor) -> None:
        self.seen += x.numel() * x.element_size()

    def take(self, z: torch.Tensor) -> bool:
        nb = z.numel() * z.element_size()
        if self.kept + nb > self.ratio * self.seen:
            return False
        self.kept += nb
        return True


class _LayerRule(torch.autograd.Function):
    """forward: the layer output; backward: the rule's input relevance."""

    @staticmethod
    def forward(ctx, x, weights, geom, rule, impl, budget, ws):
        fwd, bwd = impl
        w, b = weights()
        z, saved = fwd(x, w, b, geom, rule)
        if budget is not None:
            budget.see(x)
            # only the torch backend reads a kept output (its αβ/γ backward); not in low
            # precision, where z is a rounded copy of what the backward would recompute
            if (fwd is _ref.layer_forward and rule.kind in _ref.KEEPS_OUTPUT and not saved
                    and z.dtype in (torch.float32, torch.float64) and budget.take(z)):
                saved = (z.detach().clone(),)
        ctx.save_for_backward(x, *saved)
        ctx.weights, ctx.geom, ctx.rule, ctx.bwd, ctx.ws = weights, geom, rule, bwd, ws
        return z

    @staticmethod
    def backward(ctx, r):
        x, *saved = ctx.saved_tensors
        w, b = ctx.weights()
        rel = ctx.bwd(r.contiguous(), x, w, b, tuple(saved), ctx.geom, ctx.rule, ws=ctx.ws)
        return rel, None, None, None, None, None, None


def lrp_layer(x: torch.Tensor, weights: WeightProvider, rule: RuleParams, geom: Optional[ConvGeom] = None,
              backend: str = "auto", budget: Optional[SaveBudget] = None,
              workspace: Optional[Workspace] = None) -> torch.Tensor:
    """Apply a linear-like layer whose backward is an LRP rule.

    ``z = W x + b`` forward;  backward ``R_in = rule(x, W, b, R)`` (see :mod:`xaikernels.reference.lrp`
    for every rule's formula; stabiliser ``z + ε·sign(z)``, ``sign(0) = +1``).

    Parameters
    ----------
    x : Tensor (N, ..., I) for a linear layer, (N, C, *spatial) for a convolution.
    weights : callable returning ``(W, b)`` (detached; ``b`` may be None).
    rule : :class:`~xaikernels.reference.lrp.RuleParams`.
    geom : :class:`~xaikernels.reference.lrp.ConvGeom` for a convolution, None for a linear layer.
    backend : {"auto", "triton", "reference"}.
    budget : :class:`SaveBudget` shared by the layers of one pass, or None (keep nothing extra).
    workspace : :class:`~xaikernels.reference.lrp.Workspace` shared by the layers of one pass
        (scratch for sign-split weights in the backward), or None (fresh tensors per layer).

    Returns
    -------
    Tensor, the layer output; its gradient w.r.t. ``x`` is the rule's relevance.
    """
    op = LINEAR_OP if geom is None else CONV_OP
    _, impl = op.launcher(x.device, backend)
    return _LayerRule.apply(x, weights, geom, rule, tuple(impl), budget, workspace)


class _Pass(torch.autograd.Function):
    """forward: ``fn(x)``; backward: relevance passed through unchanged (activations)."""

    @staticmethod
    def forward(ctx, x, fn):
        with torch.no_grad():
            out = fn(x)
        # A fresh tensor: the activation must not alias its input (in-place activations).
        return out.clone() if out.data_ptr() == x.data_ptr() else out

    @staticmethod
    def backward(ctx, r):
        return r, None


def pass_through(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn(x)`` forward, identity backward (the pass rule; ``fn`` must keep the shape)."""
    return _Pass.apply(x, fn)


class _MaxPool(torch.autograd.Function):
    """Max pooling whose backward (the gradient: winner takes all) keeps only the indices.

    Autograd's own max pooling also keeps its input, only for its shape; during LRP no other
    op keeps that tensor (the activation before it has the pass rule), so it would be held
    through the backward for nothing.
    """

    @staticmethod
    def forward(ctx, x, fn):
        out, idx = fn(x)
        ctx.save_for_backward(idx)
        ctx.in_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, r):
        (idx,) = ctx.saved_tensors
        n, c = r.shape[:2]
        g = r.new_zeros((n, c, math.prod(ctx.in_shape[2:])))
        # indices are flat positions in each (example, channel) plane; overlapping windows add
        g.scatter_add_(2, idx.reshape(n, c, -1), r.reshape(n, c, -1))
        return g.view(ctx.in_shape), None


def max_pool(x: torch.Tensor, fn: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``fn(x)`` = (output, indices) of a batched max pooling forward; its gradient backward."""
    return _MaxPool.apply(x, fn)


class _Norm(torch.autograd.Function):
    """Norm rule for a parameter-free linear map ``A``: ``R_in = x ⊙ Aᵀ(R / s(A x))``.

    ``A``'s adjoint comes from the small autograd graph built in the forward (pooling ops save
    no activations), so nothing is recomputed in the backward.
    """

    @staticmethod
    def forward(ctx, x, fn, eps):
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            z = fn(xd)
        zd = z.detach()
        ctx.save_for_backward(x, stabilize(zd, eps))
        ctx.graph = (xd, z)
        return zd.clone()

    @staticmethod
    def backward(ctx, r):
        x, den = ctx.saved_tensors
        xd, z = ctx.graph
        del ctx.graph
        (adj,) = torch.autograd.grad(z, xd, r / den)
        return x * adj, None, None


def norm_rule(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], eps: float) -> torch.Tensor:
    """``fn(x)`` forward (``fn`` linear, parameter-free), norm-rule relevance backward."""
    return _Norm.apply(x, fn, float(eps))


class _SumNorm(torch.autograd.Function):
    """Norm rule on ``a + b`` (residual additions): ``R_a = a ⊙ R / s(a + b)``, same for b."""

    @staticmethod
    def forward(ctx, a, b, eps):
        z = a + b
        den = stabilize(z, eps)
        ctx.save_for_backward(a / den, b / den)
        return z

    @staticmethod
    def backward(ctx, r):
        fa, fb = ctx.saved_tensors
        return r * fa, r * fb, None


def sum_norm(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """``a + b`` forward, relevance split in proportion to each summand backward."""
    if a.shape != b.shape:
        a, b = torch.broadcast_tensors(a, b)
    return _SumNorm.apply(a, b, float(eps))


class _SumNormInplace(torch.autograd.Function):
    """:class:`_SumNorm` for ``a += b`` / ``a.add_(b)``: ``a`` is updated in place, as the model wrote it."""

    @staticmethod
    def forward(ctx, a, b, eps):
        den = stabilize(a + b, eps)
        ctx.save_for_backward(a / den, b / den)
        a.add_(b)
        ctx.mark_dirty(a)
        return a

    @staticmethod
    def backward(ctx, r):
        fa, fb = ctx.saved_tensors
        return r * fa, r * fb, None


def sum_norm_(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """In-place :func:`sum_norm`: ``a += b`` forward, proportional relevance split backward."""
    if b.shape != a.shape:
        b = b.expand_as(a)
    return _SumNormInplace.apply(a, b, float(eps))


class _DiagEpsilon(torch.autograd.Function):
    """forward: ``fn(x)``; backward: the ε rule of the per-channel affine map ``z' = s·x + t``,
    ``R_in = x ⊙ s R / (z' + ε·sign(z'))`` (Captum's γ/α1β0 on a BatchNorm: ``z'`` uses the
    modified BatchNorm weight, not the layer's own)."""

    @staticmethod
    def forward(ctx, x, fn, scale, shift, eps):
        with torch.no_grad():
            out = fn(x)
        ctx.save_for_backward(x, scale, shift)
        ctx.eps = eps
        return out.clone() if out.data_ptr() == x.data_ptr() else out

    @staticmethod
    def backward(ctx, r):
        x, scale, shift = ctx.saved_tensors
        return x * scale * r / stabilize(scale * x + shift, ctx.eps), None, None, None, None


def diag_epsilon(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], scale: torch.Tensor,
                 shift: torch.Tensor, eps: float) -> torch.Tensor:
    """``fn(x)`` forward; ε rule of ``scale·x + shift`` backward (``scale``/``shift`` broadcast to ``x``)."""
    return _DiagEpsilon.apply(x, fn, scale, shift, float(eps))
