"""Layer-wise Relevance Propagation in plain torch: the torch backend and the closed-form oracle.

Every rule acts on a *linear-like* layer ``z = W x + b`` (``nn.Linear``, ``nn.ConvNd``, or any
layer expressible as one).  Writing ``c_ji = W_ji x_i`` for the contribution of input ``i`` to
output ``j``, ``c⁺ = max(c, 0)``, ``c⁻ = min(c, 0)`` and the stabiliser
``s(z) = z + ε·sign(z)`` with ``sign(0) = +1`` (Zennit's and Captum's convention), the rules are
(Bach et al. 2015, Montavon et al. 2017, 2019; the generalised forms Zennit uses for inputs of
either sign)::

    epsilon    R_i = Σ_j c_ji / s(z_j) R_j                       z = Σ_i c + b
    zplus      R_i = Σ_j c⁺_ji / s(z⁺_j) R_j                      z⁺ = Σ_i c⁺ + b⁺
    alphabeta  R_i = Σ_j (α c⁺_ji / s(z⁺_j) − β c⁻_ji / s(z⁻_j)) R_j      z⁻ = Σ_i c⁻ + b⁻
    gamma      R_i = Σ_j ([z_j>0] (c+γc⁺)_ji / s(z_j + γ z⁺_j) + [z_j<0] (c+γc⁻)_ji / s(z_j + γ z⁻_j)) R_j
    zbox       R_i = Σ_j (c_ji − W⁺_ji l_i − W⁻_ji h_i) / s(Σ_i(...)) R_j   (input bounds l ≤ x ≤ h)
    flat       R_i = Σ_j 1_ji / s(Σ_i 1_ji) R_j                   (1_ji: i is in j's receptive field)
    wsquare    R_i = Σ_j W²_ji / s(Σ_i W²_ji + b²_j) R_j
    norm       the epsilon rule for a parameter-free linear map (average pooling, sums)

Here ``c⁺ = W⁺x⁺ + W⁻x⁻`` and ``c⁻ = W⁻x⁺ + W⁺x⁻``, so every rule is a handful of products
with sign-split weights.  Two implementations live here:

* :func:`layer_forward` / :func:`layer_backward` — the ``"reference"`` backend of the
  ``lrp_linear`` / ``lrp_conv`` ops.  The forward is the plain layer; it keeps only what is
  cheap (ε: ``s(z)``; flat and w²: a one-example denominator).  The sign-split rules recompute
  their products in the backward — z⁺ on ``x ≥ 0`` is one product with W⁺, αβ and γ add the
  layer output (or read it, kept by the caller within a memory budget) — so between the passes
  nothing output-sized is held beyond what the plain gradient holds: the forward pass, z⁺'s
  product and the transposed product are the same work wherever they run.  Inputs with
  negative entries use stacked sign-split weights (``[W⁺, W⁻]`` on ``[x⁺; x⁻]``); where the
  weights are small next to the activations, αβ/γ stack ``[W; W⁺]`` into one product.
* :func:`dense_rule` and friends — the oracle: the layer written out as an explicit dense matrix
  per example and each rule evaluated term by term as in the formulas above.  Tests run it in
  float64.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

#: Rule kinds understood by the linear-like layer ops.
RULES = ("epsilon", "zplus", "alphabeta", "gamma", "zbox", "flat", "wsquare")
#: Rules whose :func:`layer_backward` accepts the layer output ``z`` as ``saved`` (kept by the
#: caller, :class:`xaikernels.ops.lrp.SaveBudget`) instead of recomputing it.
KEEPS_OUTPUT = ("alphabeta", "gamma")


class RuleParams(NamedTuple):
    """A rule for one linear-like layer, as the ops and kernels see it.

    ``eps`` is the ε of the epsilon rule and the stabiliser of every other rule.  ``low`` and
    ``high`` (zbox) broadcast against the layer input (a leading dimension larger than the
    batch is cut, as Zennit does).  ``wmod`` modifies the weights the epsilon rule propagates
    with — ``"gamma"``: ``W + γW⁺``, ``"positive"``: ``W⁺`` — and ``zero_bias`` drops the bias
    from the rule (not from the layer output); both exist for Captum's rules.
    """

    kind: str
    eps: float = 1e-6
    alpha: float = 1.0
    beta: float = 0.0
    gamma: float = 0.25
    low: Optional[Tensor] = None
    high: Optional[Tensor] = None
    wmod: str = ""
    zero_bias: bool = False


class ConvGeom(NamedTuple):
    """Geometry of an N-d convolution (tuples of length ``dims``; ``padding`` symmetric).

    ``pre_pad``: extra zero padding applied to the input before the convolution, in
    :func:`torch.nn.functional.pad` order (last dimension first, ``(before, after)`` pairs) —
    the asymmetric "SAME" padding of TensorFlow-ported networks.  The padded zeros are not
    inputs: no rule gives them relevance (flat and w² spread only over real inputs).
    """

    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    dilation: Tuple[int, ...]
    groups: int
    pre_pad: Optional[Tuple[int, ...]] = None


def pad_input(x: Tensor, geom: Optional[ConvGeom]) -> Tensor:
    """``x`` with the geometry's explicit zero padding (``pre_pad``) applied."""
    if geom is None or not geom.pre_pad:
        return x
    return F.pad(x, geom.pre_pad)


def padded_shape(shape: Sequence[int], geom: Optional[ConvGeom]) -> Tuple[int, ...]:
    s = list(shape)
    if geom is not None and geom.pre_pad:
        p = geom.pre_pad
        for j in range(len(p) // 2):
            s[len(s) - 1 - j] += p[2 * j] + p[2 * j + 1]
    return tuple(s)


def crop_input(t: Tensor, geom: Optional[ConvGeom]) -> Tensor:
    """Inverse of :func:`pad_input` on a tensor shaped like the padded input (drops the pad)."""
    if geom is None or not geom.pre_pad:
        return t
    p = geom.pre_pad
    idx = [slice(None)] * t.dim()
    for j in range(len(p) // 2):
        d = t.dim() - 1 - j
        idx[d] = slice(p[2 * j], t.shape[d] - p[2 * j + 1])
    return t[tuple(idx)]


def stabilize(z: Tensor, eps: float) -> Tensor:
    """``z + eps * sign(z)`` with ``sign(0) = +1``."""
    return torch.where(z >= 0, z + eps, z - eps)


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


# --------------------------------------------------------------------------------------------
# Linear maps and their transposes, with block-stacked weights
# --------------------------------------------------------------------------------------------

def _fwd(x: Tensor, w: Tensor, b: Optional[Tensor], geom: Optional[ConvGeom]) -> Tensor:
    if geom is None:
        return F.linear(x, w, b)
    d = len(geom.stride)
    return torch.convolution(pad_input(x, geom), w, b, geom.stride, geom.padding, geom.dilation, False, (0,) * d, geom.groups)


def _bwd(g: Tensor, w: Tensor, in_shape: Sequence[int], geom: Optional[ConvGeom]) -> Tensor:
    """``Wᵀ g``: the adjoint of :func:`_fwd` w.r.t. its input."""
    if geom is None:
        return g.matmul(w)
    d = len(geom.stride)
    shaped = g.new_empty(1).expand(padded_shape(in_shape, geom))  # only the shape is read
    return crop_input(torch.ops.aten.convolution_backward(
        g, shaped, w, None, geom.stride, geom.padding, geom.dilation, False, (0,) * d, geom.groups,
        (True, False, False))[0], geom)


def _groups(geom: Optional[ConvGeom]) -> int:
    return 1 if geom is None else geom.groups


_FILL = {
    "p": lambda src, out: torch.clamp(src, min=0, out=out),
    "n": lambda src, out: torch.clamp(src, max=0, out=out),
    "w": lambda src, out: out.copy_(src),
    "1": lambda src, out: out.fill_(1),
    "s": lambda src, out: torch.mul(src, src, out=out),
}


def _fill(item, src: Tensor, out: Tensor) -> None:
    if isinstance(item, str):
        _FILL[item](src, out)
    else:
        out.copy_(item.reshape(src.shape) if item.shape != src.shape else item)


def block_weight(w: Tensor, rows: Sequence[Sequence], geom: Optional[ConvGeom]) -> Tensor:
    """One weight for a block matrix built from ``w``: ``rows[ko][ki]`` is a code — ``"p"`` (W⁺),
    ``"n"`` (W⁻), ``"w"`` (W), ``"1"`` (ones), ``"s"`` (W²) — or a tensor shaped like ``w``.

    Output channels are laid out as ``(group, kout, O/g)`` and input channels as
    ``(group, kin, I/g)``, so a grouped convolution keeps each block inside its group.  Each
    block is written straight into its slice of the result (one pass over the weights).
    """
    kout, kin = len(rows), len(rows[0])
    if kout == 1 and kin == 1 and isinstance(rows[0][0], str) and rows[0][0] == "w":
        return w
    if geom is None:
        o, i = w.shape
        out = w.new_empty(kout * o, kin * i)
        view = out.view(kout, o, kin, i)
        for ko, row in enumerate(rows):
            for ki, item in enumerate(row):
                _fill(item, w, view[ko, :, ki])
        return out
    g = geom.groups
    o, ig, k = w.shape[0], w.shape[1], tuple(w.shape[2:])
    out = w.new_empty(kout * o, kin * ig, *k)
    view = out.view(g, kout, o // g, kin, ig, *k)
    src = w.view(g, o // g, ig, *k)
    for ko, row in enumerate(rows):
        for ki, item in enumerate(row):
            _fill(item if isinstance(item, str) else item.view(g, o // g, ig, *k), src, view[:, ko, :, ki])
    return out


def stack_channels(items: Sequence, geom: Optional[ConvGeom], base: Optional[Tensor] = None) -> Tensor:
    """Stack along the channel (feature) axis in ``(group, k, C/g)`` order.

    ``items``: tensors shaped like ``base``, or codes applied to ``base`` (``"p"``: x⁺, ``"n"``: x⁻).
    """
    if len(items) == 1 and not isinstance(items[0], str):
        return items[0]
    ref = base if base is not None else items[0]
    k = len(items)
    if geom is None:
        out = ref.new_empty(*ref.shape[:-1], k * ref.shape[-1])
        view = out.view(*ref.shape[:-1], k, ref.shape[-1])
        for j, item in enumerate(items):
            _fill(item, ref, view[..., j, :])
        return out
    g = geom.groups
    n, c, sp = ref.shape[0], ref.shape[1], tuple(ref.shape[2:])
    out = ref.new_empty(n, k * c, *sp)
    view = out.view(n, g, k, c // g, *sp)
    src = ref.reshape(n, g, c // g, *sp)
    for j, item in enumerate(items):
        _fill(item if isinstance(item, str) else item.reshape(n, g, c // g, *sp), src, view[:, :, j])
    return out


def split_channels(y: Tensor, k: int, geom: Optional[ConvGeom]) -> List[Tensor]:
    """Inverse of :func:`stack_channels` (views when ``groups == 1``)."""
    if k == 1:
        return [y]
    if geom is None:
        return list(y.chunk(k, dim=-1))
    g = geom.groups
    if g == 1:
        return list(y.chunk(k, dim=1))
    n, c, sp = y.shape[0], y.shape[1] // k, y.shape[2:]
    y = y.reshape(n, g, k, c // g, *sp)
    return [y[:, :, j].reshape(n, c, *sp) for j in range(k)]


def _stacked_shape(x: Tensor, k: int, geom: Optional[ConvGeom]) -> Tuple[int, ...]:
    s = list(x.shape)
    s[-1 if geom is None else 1] *= k
    return tuple(s)


def expand_bound(v, x: Tensor, name: str) -> Tensor:
    """Broadcast a zbox bound to ``x``'s shape; a larger leading (batch) dimension is cut."""
    if v is None:
        raise ValueError(f"the zbox rule needs the input bound {name!r} (low ≤ x ≤ high)")
    t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    if t.dim() == x.dim() and t.shape[0] > x.shape[0]:
        t = t[: x.shape[0]]
    try:
        return t.expand_as(x) if t.dim() == x.dim() else torch.broadcast_to(t, x.shape)
    except RuntimeError:
        raise ValueError(f"zbox bound {name!r} of shape {tuple(t.shape)} does not broadcast to the "
                         f"layer input {tuple(x.shape)}") from None


def _modified_weight(w: Tensor, rule: RuleParams) -> Tensor:
    if rule.wmod == "gamma":
        return w + rule.gamma * w.clamp(min=0)
    if rule.wmod == "positive":
        return w.clamp(min=0)
    if rule.wmod:
        raise ValueError(f"unknown weight modifier {rule.wmod!r}")
    return w


class Workspace:
    """Scratch buffers shared by the layers of one LRP pass (backward).

    The layers' backwards run one after another, and each needs its sign-split weights (W⁺,
    W⁻) only while it runs.  A fresh weight-sized tensor per layer costs page faults on every
    allocation (a 512×512×3×3 weight is 9.4 MB: measured 3.2 ms for its clamp inside a VGG
    pass, 0.3 ms into a reused buffer), and deep networks repeat their largest layer shape
    (VGG-16: five 512×512 convolutions in a row).  One buffer per slot serves them.  So as not
    to hold a deep layer's weight through the memory-heavy early layers (the backward's peak),
    a buffer more than twice the size asked for is dropped for one of the new size: the
    workspace never holds more than twice the current layer's weight per slot.  What it hands
    out is valid until the next request for the same slot and must never be returned or saved.
    """

    def __init__(self):
        self._bufs = {}

    def buffer(self, slot: str, like: Tensor) -> Tensor:
        """An uninitialised tensor shaped and typed like ``like``, from ``slot``'s buffer."""
        n = like.numel()
        key = (slot, like.dtype, like.device)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n or buf.numel() > 2 * n:
            self._bufs.pop(key, None)
            buf = None  # the old buffer is freed before the new one is made
            buf = self._bufs[key] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(like.shape)


def _clamped(w: Tensor, ws: Optional[Workspace], slot: str, *, min=None, max=None) -> Tensor:
    """``w.clamp(min=..., max=...)``, into ``ws``'s ``slot`` when a workspace is given."""
    if ws is None:
        return w.clamp(min=min, max=max)
    return torch.clamp(w, min=min, max=max, out=ws.buffer(slot, w))


# --------------------------------------------------------------------------------------------
# The torch backend
# --------------------------------------------------------------------------------------------

def layer_forward(x: Tensor, w: Tensor, b: Optional[Tensor], geom: Optional[ConvGeom],
                  rule: RuleParams) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """Layer output ``z = W x + b`` and the tensors :func:`layer_backward` needs.

    Memory: the sign-split rules (z⁺, αβ, γ) and z^B save nothing beyond the input (which the
    plain gradient saves too) — their products with sign-split weights are recomputed in the
    backward, which costs the same arithmetic as computing them here and keeps no output-sized
    tensor alive between the passes.  ε saves ``s(z)``; flat and w² a one-example denominator.

    Parameters
    ----------
    x : Tensor (N, ..., I) for a linear layer, (N, C, *spatial) for a convolution.
    w, b : weight (O, I) or (O, C/groups, *kernel) and bias (O,) or None.
    geom : :class:`ConvGeom` for a convolution, None for a linear layer.
    rule : :class:`RuleParams`.

    Returns
    -------
    z : Tensor, the layer output, in ``x.dtype``.
    saved : tuple of Tensors (opmath dtype) for the backward.
    """
    out_dtype = x.dtype
    acc = _opmath(x.dtype)
    x, w = x.to(acc), w.to(acc)
    b = None if b is None else b.to(acc)
    k, eps = rule.kind, rule.eps
    if k == "epsilon":
        if not rule.wmod and not rule.zero_bias:
            z = _fwd(x, w, b, geom)
            return z.to(out_dtype), (stabilize(z, eps),)
        # Captum's modified-weight rules: the layer output keeps the true weights, the rule
        # propagates with the modified ones; both from one stacked product.
        bb = None if b is None else _bshape(b, geom)
        z, zr = split_channels(_fwd(x, block_weight(w, [["w"], [_modified_weight(w, rule)]], geom), None, geom),
                               2, geom)
        if bb is not None:
            z = z + bb
            if not rule.zero_bias:
                zr = zr + bb
        return z.to(out_dtype), (stabilize(zr, eps),)
    if k in ("flat", "wsquare"):
        z = _fwd(x, w, b, geom)
        # The denominator does not depend on the input values: one example is enough.
        one = torch.ones_like(x[:1])
        if k == "flat":
            # every output channel sees the same count of real inputs (C/groups channels deep):
            # one channel is enough
            one = one[:, : w.shape[1]] if geom is not None else one
            den = _fwd(one, torch.ones_like(w[:1]), None, None if geom is None else geom._replace(groups=1))
        else:
            den = _fwd(one, w * w, None if b is None else b * b, geom)
        return z.to(out_dtype), (stabilize(den, eps),)
    if k not in RULES:
        raise ValueError(f"unknown LRP rule kind {k!r}; choose from {RULES}")
    return _fwd(x, w, b, geom).to(out_dtype), ()


def _has_negative(x: Tensor) -> bool:
    # one reduction, no boolean temporary of x's size
    return x.numel() > 0 and bool(x.amin() < 0)


def _bshape(b: Tensor, geom: Optional[ConvGeom]) -> Tensor:
    if geom is None:
        return b
    return b.view(-1, *([1] * len(geom.stride)))


def _stabilize_(t: Tensor, eps: float) -> Tensor:
    """:func:`stabilize` in place (bit-identical: ``t + (−ε)`` is ``t − ε``)."""
    return t.add_(torch.where(t >= 0, t.new_full((), eps), t.new_full((), -eps)))


def _zplus(x: Tensor, w: Tensor, b: Optional[Tensor], geom: Optional[ConvGeom], signed: bool,
           wp: Optional[Tensor] = None, shift: float = 0.0) -> Tensor:
    """``z⁺ + shift = W⁺x⁺ + W⁻x⁻ + (b⁺ + shift)`` (a fresh tensor); ``wp``: W⁺ if already built.

    ``shift`` rides on the bias, so adding a stabiliser costs no pass of its own."""
    bp = None if b is None else b.clamp(min=0)
    if shift:
        bp = w.new_full((w.shape[0],), shift) if bp is None else bp.add_(shift)
    if not signed:
        return _fwd(x, w.clamp(min=0) if wp is None else wp, bp, geom)
    a = _fwd(stack_channels(["p", "n"], geom, base=x), block_weight(w, [["p", "n"]], geom), None, geom)
    return a if bp is None else a.add_(_bshape(bp, geom))


def _signed_input_relevance(uv: Tensor, x: Tensor, w: Tensor, geom: Optional[ConvGeom]) -> Tensor:
    """``x⁺ ⊙ (W⁺ᵀu + W⁻ᵀv) + x⁻ ⊙ (W⁻ᵀu + W⁺ᵀv)`` for stacked ``uv = [u; v]`` (one product)."""
    gp, gn = split_channels(_bwd(uv, block_weight(w, [["p", "n"], ["n", "p"]], geom), _stacked_shape(x, 2, geom),
                                 geom), 2, geom)
    return gp.mul_(x.clamp(min=0)).add_(gn.mul_(x.clamp(max=0)))


def layer_backward(r: Tensor, x: Tensor, w: Tensor, b: Optional[Tensor], saved: Tuple[Tensor, ...],
                   geom: Optional[ConvGeom], rule: RuleParams, ws: Optional[Workspace] = None) -> Tensor:
    """Relevance of the layer input from the relevance ``r`` of its output (shape of ``z``).

    ``saved``: what :func:`layer_forward` returned; for the rules in :data:`KEEPS_OUTPUT` it may
    instead hold the layer output ``z``, which is then not recomputed.  ``ws``: a
    :class:`Workspace` for the sign-split weights (the pass's layers share its buffers), or
    None (fresh tensors).

    Returns a Tensor shaped and typed like ``x``.
    """
    out_dtype = x.dtype
    acc = _opmath(x.dtype)
    x, w, r = x.to(acc), w.to(acc), r.to(acc)
    b = None if b is None else b.to(acc)
    k, eps = rule.kind, rule.eps
    if k == "epsilon":
        return (x * _bwd(r / saved[0], _modified_weight(w, rule), x.shape, geom)).to(out_dtype)
    if k == "flat":
        return _flat_backward(r, saved[0], x, w, geom).to(out_dtype)
    if k == "wsquare":
        return _bwd(r / saved[0], w * w, x.shape, geom).to(out_dtype)
    if k == "zbox":
        lo, hi = expand_bound(rule.low, x, "low"), expand_bound(rule.high, x, "high")
        d = _fwd(stack_channels([lo, hi], geom), block_weight(w, [["p", "n"]], geom), None, geom)
        if b is not None:
            d.add_(_bshape(b, geom))
        g = _fwd(x, w, b, geom).sub_(d)  # (Wx + b) − (W⁺l + W⁻h + b): the bias cancels
        del d
        torch.div(r, _stabilize_(g, eps), out=g)
        gx, gl, gh = split_channels(
            _bwd(g, block_weight(w, [["w", "p", "n"]], geom), _stacked_shape(x, 3, geom), geom), 3, geom)
        return gx.mul_(x).sub_(lo * gl + hi * gh).to(out_dtype)
    if k not in ("zplus", "alphabeta", "gamma"):
        raise ValueError(f"unknown LRP rule kind {k!r}; choose from {RULES}")
    signed = _has_negative(x)
    if k == "zplus":
        wp = None if signed else _clamped(w, ws, "p", min=0)
        g = _zplus(x, w, b, geom, signed, wp, eps)  # z⁺ ≥ 0, so s(z⁺) = z⁺ + ε
        torch.div(r, g, out=g)
        if not signed:
            return _bwd(g, wp, x.shape, geom).mul_(x).to(out_dtype)
        gp, gn = split_channels(_bwd(g, block_weight(w, [["p", "n"]], geom), _stacked_shape(x, 2, geom), geom),
                                2, geom)
        return gp.mul_(x.clamp(min=0)).add_(gn.mul_(x.clamp(max=0))).to(out_dtype)
    # αβ and γ need z⁺ and z⁻ = z − z⁺ (z: the layer output, recomputed with the true weights;
    # z⁻ as z⁺ + z⁻ would lose precision to cancellation).  Where the weights are small next to
    # the activations (early convolutions), z and z⁺ come from one product with [W; W⁺] and the
    # relevance goes back through one product with the stacked weight, into the same buffer
    # (one larger product beats two there); elsewhere two products each way, so no stacked
    # weight copy is made.  Either way the output-sized buffers are reused in place: z and z⁺
    # become the two coefficient maps u, v.
    kept = saved[0] if saved else None
    stacked = kept is None and not signed and geom is not None and 2 * w.numel() <= r.numel() // r.shape[0]
    if stacked:
        bz = None if b is None else stack_channels([b.view(1, -1, *([1] * len(geom.stride))), "p"], geom).view(-1)
        zs = _fwd(x, block_weight(w, [["w"], ["p"]], geom), bz, geom)
        z, a = _halves(zs, geom)
        rv = _grouped(r, geom)
    else:
        wp = None if signed else _clamped(w, ws, "p", min=0)
        z = _fwd(x, w, b, geom) if kept is None else kept.to(acc)
        a = _zplus(x, w, b, geom, signed, wp)
        rv = r
    own = kept is None  # z is ours to overwrite (a kept output stays intact for a second backward)
    if k == "alphabeta":
        n = z.sub_(a) if own else torch.sub(z, a)  # z⁻
        torch.div(rv, a.add_(eps), out=a).mul_(rule.alpha)
        torch.div(rv, _stabilize_(n, eps), out=n).mul_(-rule.beta)
        u, v, codes = a, n, (["n"], ["p"])
    elif k == "gamma":
        g = rule.gamma
        n = torch.sub(z, a)
        # z > 0 ⇒ z + γz⁺ > 0 and z < 0 ⇒ z + γz⁻ < 0 (z⁺ ≥ 0 ≥ z − z⁺ exactly, rounding being
        # monotone), so each stabiliser's sign is known where its term is used
        p1 = torch.div(rv, a.mul_(g).add_(z).add_(eps), out=a).masked_fill_(z <= 0, 0.0)
        p2 = torch.div(rv, n.mul_(g).add_(z).sub_(eps), out=n).masked_fill_(z >= 0, 0.0)
        # g₁ = R/s(·)[z>0], g₂ = R/s(·)[z<0]:  u = (1+γ)g₁ + g₂,  v = g₁ + (1+γ)g₂
        u = torch.add(p2, p1, alpha=1.0 + g, out=z if own else None)
        v = p1.add_(p2, alpha=1.0 + g)
        del p2, n
        codes = (["p"], ["n"])
    else:
        raise ValueError(f"unknown LRP rule kind {k!r}; choose from {RULES}")
    if stacked:
        del u, v, z, a, rv
        # zs now holds [v; u] (αβ) or [u; v] (γ), laid out as the stacked weight's rows
        return _bwd(zs, block_weight(w, list(codes), geom), x.shape, geom).mul_(x).to(out_dtype)
    if signed:
        uv = stack_channels([u, v], geom)
        del u, v
        return _signed_input_relevance(uv, x, w, geom).to(out_dtype)
    # W⁺ᵀu + W⁻ᵀv as two products: no stacked weight or stacked relevance in memory
    out = _bwd(u, wp, x.shape, geom)
    del u, wp
    out.add_(_bwd(v, _clamped(w, ws, "p", max=0), x.shape, geom))  # W⁺ is dead: its slot serves W⁻
    return out.mul_(x).to(out_dtype)


def _halves(t: Tensor, geom: ConvGeom) -> Tuple[Tensor, Tensor]:
    """Views of the two halves of a 2-stacked convolution output, as ``(N, g, O/g, *spatial)``."""
    n, g, sp = t.shape[0], geom.groups, tuple(t.shape[2:])
    v = t.view(n, g, 2, t.shape[1] // (2 * g), *sp)
    return v[:, :, 0], v[:, :, 1]


def _grouped(t: Tensor, geom: ConvGeom) -> Tensor:
    """``t`` (N, O, *spatial) viewed as ``(N, g, O/g, *spatial)``, the layout of :func:`_halves`."""
    return t.view(t.shape[0], geom.groups, t.shape[1] // geom.groups, *t.shape[2:])


def _flat_backward(r: Tensor, den: Tensor, x: Tensor, w: Tensor, geom: Optional[ConvGeom]) -> Tensor:
    """Flat rule: ``R_in = 1ᵀ(R / s(1·1))``.  The all-ones layer maps the relevance of every
    output channel (of a group) the same way, and the denominator is one channel's tap count:
    sum the channels first, then one single-channel transposed product per group."""
    g = _groups(geom)
    if geom is None:
        return (r / den).sum(-1, keepdim=True).expand(x.shape).contiguous()
    n, o, sp = r.shape[0], r.shape[1], tuple(r.shape[2:])
    rs = r.reshape(n, g, o // g, *sp).sum(2).div_(den)  # (N, g, *spatial)
    c = x.shape[1]
    ones = torch.ones((g, 1) + tuple(w.shape[2:]), dtype=r.dtype, device=r.device)
    gin = _bwd(rs, ones, (x.shape[0], g) + tuple(x.shape[2:]), geom._replace(groups=g))
    return gin.unsqueeze(2).expand(n, g, c // g, *gin.shape[2:]).reshape(x.shape)


def norm_backward(r: Tensor, x: Tensor, den: Tensor, adjoint) -> Tensor:
    """Norm rule for a parameter-free linear map ``A``: ``R_in = x ⊙ Aᵀ(r / s(A x))``."""
    return x * adjoint(r / den)


# --------------------------------------------------------------------------------------------
# The oracle: dense matrices, rules term by term
# --------------------------------------------------------------------------------------------

def dense_matrix(fn, in_shape: Sequence[int], dtype=torch.float64) -> Tensor:
    """The matrix ``M`` (n_out × n_in) of a linear map ``fn`` on one example of ``in_shape``."""
    n_in = math.prod(in_shape)
    eye = torch.eye(n_in, dtype=dtype).reshape(n_in, *in_shape)
    return fn(eye).reshape(n_in, -1).T.contiguous()


def dense_rule(m: Tensor, x: Tensor, b: Optional[Tensor], r: Tensor, rule: RuleParams,
               m_ones: Optional[Tensor] = None, m_sq: Optional[Tensor] = None,
               b_sq: Optional[Tensor] = None) -> Tensor:
    """Closed-form relevance for one example.

    Parameters
    ----------
    m : (n_out, n_in) matrix of the layer (no bias).
    x : (n_in,) input.  b : (n_out,) bias per output, or None.  r : (n_out,) output relevance.
    m_ones : matrix of the layer with all weights one (flat rule).
    m_sq : matrix with squared weights, ``b_sq`` the squared bias (wsquare rule).

    Returns
    -------
    (n_in,) input relevance.
    """
    eps = rule.eps
    bias = torch.zeros(m.shape[0], dtype=m.dtype) if b is None else b
    k = rule.kind
    c = m * x[None, :]
    if k == "epsilon":
        mm = _modified_weight(m, rule)
        cr = mm * x[None, :]
        zr = cr.sum(1) + (0 if rule.zero_bias else bias)
        return (cr * (r / stabilize(zr, eps))[:, None]).sum(0)
    if k == "flat":
        return (m_ones * (r / stabilize(m_ones.sum(1), eps))[:, None]).sum(0)
    if k == "wsquare":
        zb = torch.zeros_like(bias) if b_sq is None else b_sq
        return (m_sq * (r / stabilize(m_sq.sum(1) + zb, eps))[:, None]).sum(0)
    if k == "zbox":
        lo = torch.as_tensor(rule.low, dtype=m.dtype).expand_as(x)
        hi = torch.as_tensor(rule.high, dtype=m.dtype).expand_as(x)
        cb = c - m.clamp(min=0) * lo[None, :] - m.clamp(max=0) * hi[None, :]
        return (cb * (r / stabilize(cb.sum(1), eps))[:, None]).sum(0)
    cp, cn = c.clamp(min=0), c.clamp(max=0)
    zp, zn = cp.sum(1) + bias.clamp(min=0), cn.sum(1) + bias.clamp(max=0)
    if k == "zplus":
        return (cp * (r / stabilize(zp, eps))[:, None]).sum(0)
    if k == "alphabeta":
        return (rule.alpha * cp * (r / stabilize(zp, eps))[:, None]
                - rule.beta * cn * (r / stabilize(zn, eps))[:, None]).sum(0)
    if k == "gamma":
        g = rule.gamma
        z = c.sum(1) + bias
        pos = (c + g * cp) * ((z > 0) * r / stabilize(z + g * zp, eps))[:, None]
        neg = (c + g * cn) * ((z < 0) * r / stabilize(z + g * zn, eps))[:, None]
        return (pos + neg).sum(0)
    raise ValueError(f"unknown LRP rule kind {k!r}")


def dense_layer_rule(x: Tensor, w: Tensor, b: Optional[Tensor], r: Tensor, geom: Optional[ConvGeom],
                     rule: RuleParams) -> Tensor:
    """Oracle for a linear-like layer on a batch: :func:`dense_rule` example by example."""
    in_shape = x.shape[1:]

    def lin(weight, bias=None):
        return lambda e: _fwd(e, weight, bias, geom)

    m = dense_matrix(lin(w), in_shape, x.dtype)
    m_ones = dense_matrix(lin(torch.ones_like(w)), in_shape, x.dtype) if rule.kind == "flat" else None
    m_sq = dense_matrix(lin(w * w), in_shape, x.dtype) if rule.kind == "wsquare" else None
    n_out = m.shape[0]
    bfull = None
    if b is not None:
        bfull = _fwd(torch.zeros(1, *in_shape, dtype=x.dtype), torch.zeros_like(w), b, geom).reshape(-1)
    b_sq = None if b is None else bfull * bfull
    out = []
    for n in range(x.shape[0]):
        rn = rule
        if rule.kind == "zbox":
            lo = expand_bound(rule.low, x, "low")[n].reshape(-1)
            hi = expand_bound(rule.high, x, "high")[n].reshape(-1)
            rn = rule._replace(low=lo, high=hi)
        out.append(dense_rule(m, x[n].reshape(-1), bfull, r[n].reshape(n_out), rn, m_ones, m_sq, b_sq))
    return torch.stack(out).reshape(x.shape)


def dense_norm(x: Tensor, r: Tensor, fn, eps: float) -> Tensor:
    """Oracle of the norm rule for a parameter-free linear map ``fn`` (e.g. average pooling)."""
    m = dense_matrix(fn, x.shape[1:], x.dtype)
    out = []
    for n in range(x.shape[0]):
        c = m * x[n].reshape(1, -1)
        out.append((c * (r[n].reshape(-1) / stabilize(c.sum(1), eps))[:, None]).sum(0))
    return torch.stack(out).reshape(x.shape)
