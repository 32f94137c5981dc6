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
  ``lrp_linear`` / ``lrp_conv`` ops.  The forward returns the layer output ``z`` plus the
  stabilised denominators the rule needs, computed from one *stacked* product: the sign-split
  weights are laid side by side (``[W⁺; W⁻]``, or ``[[W⁺, W⁻], [W⁻, W⁺]]`` on ``[x⁺; x⁻]``
  when the input has negative entries) so αβ and γ cost one larger GEMM/convolution instead of
  four or five, and the layer output is assembled from the same product.  The backward is one
  transposed product with the same stacked weight and the final input multiply.
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


# --------------------------------------------------------------------------------------------
# The torch backend
# --------------------------------------------------------------------------------------------

def layer_forward(x: Tensor, w: Tensor, b: Optional[Tensor], geom: Optional[ConvGeom],
                  rule: RuleParams) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """Layer output ``z = W x + b`` and the tensors :func:`layer_backward` needs.

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
    bb = None if b is None else _bshape(b, geom)
    k, eps = rule.kind, rule.eps
    if k == "epsilon":
        if not rule.wmod and not rule.zero_bias:
            z = _fwd(x, w, b, geom)
            return z.to(out_dtype), (stabilize(z, eps),)
        # Captum's modified-weight rules: the layer output keeps the true weights, the rule
        # propagates with the modified ones; both from one stacked product.
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
            den = _fwd(one, torch.ones_like(w), None, geom)
        else:
            den = _fwd(one, w * w, None if b is None else b * b, geom)
        return z.to(out_dtype), (stabilize(den, eps),)
    if k == "zbox":
        z = _fwd(x, w, b, geom)
        lo, hi = expand_bound(rule.low, x, "low"), expand_bound(rule.high, x, "high")
        d = _fwd(stack_channels([lo, hi], geom), block_weight(w, [["p", "n"]], geom), None, geom)
        zd = z - d if bb is None else z - (d + bb)
        return z.to(out_dtype), (lo, hi, stabilize(zd, eps))
    if k not in ("zplus", "alphabeta", "gamma"):
        raise ValueError(f"unknown LRP rule kind {k!r}; choose from {RULES}")
    # The layer output with the true weights (no copy of W), and z⁺ from one more product: with
    # W⁺ alone on a non-negative input (after a ReLU), with [W⁺, W⁻] on [x⁺; x⁻] otherwise.
    # z⁻ = z − z⁺.  (Summing z⁺ + z⁻ into the output instead loses precision to their
    # cancellation, which then compounds through the network's forward pass.)  Two products
    # rather than one on [W⁺; W] stacked: same arithmetic, but no stacked weight copy, and the
    # output is a tensor of its own instead of a view pinning the stacked result.
    z = _fwd(x, w, b, geom)
    if _has_negative(x):
        a = _fwd(stack_channels(["p", "n"], geom, base=x), block_weight(w, [["p", "n"]], geom), None, geom)
    else:
        a = _fwd(x, w.clamp(min=0), None, geom)
    if bb is not None:
        a.add_(bb.clamp(min=0))
    if k == "zplus":
        # z⁺ is a sum of non-negative terms, so s(z⁺) = z⁺ + ε, in place
        return z.to(out_dtype), (a.add_(eps),)
    bneg = z - a
    if k == "alphabeta":
        return z.to(out_dtype), (a.add_(eps), stabilize(bneg, eps))
    g = rule.gamma
    # z > 0 ⇒ z + γz⁺ > 0 and z < 0 ⇒ z + γz⁻ < 0: one signed tensor carries both
    # coefficients and, through its sign, their masks.
    q = torch.where(z > 0, stabilize(a.mul_(g).add_(z), eps).reciprocal_(),
                    torch.where(z < 0, stabilize(bneg.mul_(g).add_(z), eps).reciprocal_(), 0.0))
    return z.to(out_dtype), (q,)


def _has_negative(x: Tensor) -> bool:
    # one reduction, no boolean temporary of x's size
    return x.numel() > 0 and bool(x.amin() < 0)


def _bshape(b: Tensor, geom: Optional[ConvGeom]) -> Tensor:
    if geom is None:
        return b
    return b.view(-1, *([1] * len(geom.stride)))


def layer_backward(r: Tensor, x: Tensor, w: Tensor, b: Optional[Tensor], saved: Tuple[Tensor, ...],
                   geom: Optional[ConvGeom], rule: RuleParams) -> Tensor:
    """Relevance of the layer input from the relevance ``r`` of its output (shape of ``z``).

    Returns a Tensor shaped and typed like ``x``.
    """
    out_dtype = x.dtype
    acc = _opmath(x.dtype)
    x, w, r = x.to(acc), w.to(acc), r.to(acc)
    k = rule.kind
    if k == "epsilon":
        return (x * _bwd(r / saved[0], _modified_weight(w, rule), x.shape, geom)).to(out_dtype)
    if k == "flat":
        return _bwd(r / saved[0], torch.ones_like(w), x.shape, geom).to(out_dtype)
    if k == "wsquare":
        return _bwd(r / saved[0], w * w, x.shape, geom).to(out_dtype)
    if k == "zbox":
        lo, hi, den = saved
        gx, gl, gh = split_channels(
            _bwd(r / den, block_weight(w, [["w", "p", "n"]], geom), _stacked_shape(x, 3, geom), geom), 3, geom)
        return (x * gx - (lo * gl + hi * gh)).to(out_dtype)
    signed = _has_negative(x)
    if k == "zplus":
        g = r / saved[0]
        if not signed:
            return _bwd(g, w.clamp(min=0), x.shape, geom).mul_(x).to(out_dtype)
        gp, gn = split_channels(_bwd(g, block_weight(w, [["p", "n"]], geom), _stacked_shape(x, 2, geom), geom),
                                2, geom)
        return (gp.mul_(x.clamp(min=0)) + gn.mul_(x.clamp(max=0))).to(out_dtype)
    if k == "alphabeta":
        u = (r / saved[0]).mul_(rule.alpha)
        v = (r / saved[1]).mul_(-rule.beta)
    elif k == "gamma":
        g = r * saved[0]
        pos = saved[0] > 0
        # u = (1+γ)g₁ + g₂, v = g₁ + (1+γ)g₂ with g₁ = g[z>0], g₂ = g[z<0]
        gg = g * (1.0 + rule.gamma)
        u = torch.where(pos, gg, g)
        v = torch.where(pos, g, gg)
        del g, gg
    else:
        raise ValueError(f"unknown LRP rule kind {k!r}; choose from {RULES}")
    uv = stack_channels([u, v], geom)
    del u, v
    if not signed:
        return _bwd(uv, block_weight(w, [["p"], ["n"]], geom), x.shape, geom).mul_(x).to(out_dtype)
    gp, gn = split_channels(_bwd(uv, block_weight(w, [["p", "n"], ["n", "p"]], geom), _stacked_shape(x, 2, geom),
                                 geom), 2, geom)
    return (gp.mul_(x.clamp(min=0)) + gn.mul_(x.clamp(max=0))).to(out_dtype)


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
