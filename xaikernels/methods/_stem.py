"""Coalition tables for a CNN's stem, for perturbation methods on images (LIME, KernelSHAP).

A perturbed image is ``x(z) = where(z[seg], x, fill)``.  The network's *stem* — ``Conv2d``
stages at its input (zero-padded convolution, then per-channel / elementwise modules such as
eval ``BatchNorm2d`` and activations, then at most one ``MaxPool2d`` / ``AvgPool2d``, whose
padding an average pool must count) — is local: its output at position ``q`` depends only on an input window, hence
only on the key ``k_q(z) = Σ_j z[S(q)_j] · 2^j`` of the segments ``S(q)`` that window meets.
All samples' coalitions are known before the model runs, so the stem is evaluated once per
distinct (position, key) — one convolution over a batch of window patches — and every sample's
stem output is a gather from that table,

    stem(x(z_s))[q] = T[row(q, k_q(z_s))]           (ops.perturb.stem_rows / stem_gather)

while the rest of the network (the *tail*: the model's traced graph from the stem's output on)
runs on the gathered batch in channels-last layout, with two exact rewrites of its graph
(:func:`fast_tail`: a ReLU-like activation moved after the max pool that follows it, and a
max pool whose stride is its kernel computed as maxima of strided slices).  A window that
meets few segments has few keys (≤ 2^|S(q)|) however many samples there are; the depth is
chosen by estimated work.  Deeper stages whose windows have too many keys to convolve as
patches can still be tabulated as *levels* (:func:`level_plan`): a stage's convolution is
linear in the previous table's rows, so its rows are sums of ``W_k · T`` rows.
The numbers are those of the model on ``x(z)`` up to float rounding (the convolutions add the
same products in another order); :func:`check_plans` checks this on the instance's first
samples before a plan is used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from xaikernels._memory import placed_empty
from xaikernels._model_guard import _HOOK_DICTS
from xaikernels.ops import perturb as P

_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity)
_ELEMENTWISE_FN = (F.relu, torch.relu, torch.sigmoid, torch.tanh)

MAX_TABLE_ELEMENTS = 1 << 24  # patch elements (rows × C × window) materialised to build a table
MAX_INDEX_ENTRIES = 1 << 26   # (sample, position) table rows kept, int32 (256 MB)


class StemUnavailable(Exception):
    """The model's stem cannot be tabulated (the reason is the message)."""


def _has_hooks(m: nn.Module) -> bool:
    # every hook dictionary the model guard restores: a hook of any kind is behaviour the
    # tables would skip
    return any(getattr(m, name, None) for name in _HOOK_DICTS)


@dataclass
class Conv:
    """A zero-padded 2-d convolution: ``weight`` (C_out, C_in/groups, kh, kw), ``bias`` or
    None, ``pad`` (top, bottom, left, right) — from an ``nn.Conv2d`` or from a ``ZeroPad2d``
    and/or a functional ``conv2d`` on the model's parameters."""

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    stride: Tuple[int, int]
    pad: Tuple[int, int, int, int]
    dilation: Tuple[int, int]
    groups: int

    def macs(self, out_h: int, out_w: int) -> int:
        co, ci, kh, kw = self.weight.shape
        return co * ci * kh * kw * out_h * out_w


def _same_pad(k: Tuple[int, int], d: Tuple[int, int]) -> Tuple[int, int, int, int]:
    # torch's padding="same": the total d·(k-1) split evenly, the odd one after
    th, tw = d[0] * (k[0] - 1), d[1] * (k[1] - 1)
    return th // 2, th - th // 2, tw // 2, tw - tw // 2


def _conv_pad(padding, k, d) -> Optional[Tuple[int, int, int, int]]:
    if isinstance(padding, str):
        return (0, 0, 0, 0) if padding == "valid" else _same_pad(k, d) if padding == "same" else None
    ph, pw = _pair(padding)
    return ph, ph, pw, pw


@dataclass
class Stage:
    """``conv`` then ``steps`` (elementwise / per-channel modules or functions) then ``pool``
    (or None)."""

    conv: Conv
    steps: List[Callable[[torch.Tensor], torch.Tensor]]
    pool: Optional[nn.Module]
    nodes: List[str]       # module paths / function names, for messages
    node_names: List[str]  # fx node names in the traced graph
    monotone: bool = True  # every step commutes with a max (:func:`_monotone_step`)

    def __call__(self, y: torch.Tensor, conv_ok: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The stage on patches that carry their own padding: the convolution and the pool
        unpadded.  ``conv_ok`` (T, h, w) bool marks the convolution outputs inside the map;
        the others are the pool's padding (-inf for max, 0 for average)."""
        c = self.conv
        return self.after_conv(F.conv2d(y, c.weight, c.bias, c.stride, 0, c.dilation, c.groups), conv_ok)

    def after_conv(self, y: torch.Tensor, conv_ok: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The steps and the pool on the convolution's output ``y`` (``conv_ok`` as above).
        Steps that all commute with a max (:func:`_monotone_step`) run after a max pool, on
        its smaller output — the same values (every pool window holds a convolution output)."""
        is_max = isinstance(self.pool, nn.MaxPool2d)
        late = is_max and self.monotone
        if not late:
            for f in self.steps:
                y = f(y)
        if self.pool is not None:
            k2, t2 = self.pool_geometry()
            if conv_ok is not None:
                y = y.masked_fill(~conv_ok[:, None], -math.inf if is_max else 0.0)
            if not is_max:
                y = F.avg_pool2d(y, k2, t2)  # count_include_pad (checked when traced)
            elif tuple(y.shape[2:]) == tuple(k2):
                # one window per row (the last stage's table rows): maxima of its slices
                # instead of max_pool2d's per-map loop, the same values (max is exact)
                m = y[:, :, 0, 0]
                for i in range(k2[0]):
                    for j in range(k2[1]):
                        if i or j:
                            m = torch.maximum(m, y[:, :, i, j])
                y = m[:, :, None, None]
            else:
                y = F.max_pool2d(y, k2, t2)
        if late:
            for f in self.steps:
                y = f(y)
        return y

    def pool_geometry(self):
        """(kernel, stride) of the pool, (1, 1) twice without one."""
        if self.pool is None:
            return (1, 1), (1, 1)
        return _pair(self.pool.kernel_size), _pair(self.pool.stride if self.pool.stride is not None
                                                   else self.pool.kernel_size)

    def conv_ok(self, qh: torch.Tensor, qw: torch.Tensor, level_h, level_w, in_h: int, in_w: int):
        """For table rows at output positions (qh, qw) whose windows at this stage's output
        are ``level_*`` = (start, length, stride) per axis (``_layout``), the (T, h, w) mask of
        the convolution outputs they cover that lie inside the convolution's map (of an
        ``in_h × in_w`` input); the others are the pool's padding.  None without pool
        padding."""
        if self.pool_pad() == (0, 0):
            return None
        (k2, t2), pp, geo = self.pool_geometry(), self.pool_pad(), self.geometry()
        hc, wc = geo[0][4](in_h), geo[1][4](in_w)
        (sh_, lh_, vh_), (sw_, lw_, vw_) = level_h, level_w
        r_ = (qh[:, None] * vh_ + sh_) * t2[0] - pp[0] + torch.arange((lh_ - 1) * t2[0] + k2[0])
        c_ = (qw[:, None] * vw_ + sw_) * t2[1] - pp[1] + torch.arange((lw_ - 1) * t2[1] + k2[1])
        return ((r_ >= 0) & (r_ < hc))[:, :, None] & ((c_ >= 0) & (c_ < wc))[:, None, :]

    def pool_pad(self) -> Tuple[int, int]:
        return _pair(self.pool.padding) if self.pool is not None else (0, 0)

    def geometry(self):
        """Per axis: (step in the input per output position, window length of one output
        position, zero padding before, the map-size function, the convolution's map-size
        function)."""
        c = self.conv
        k, (k2, t2), pp = c.weight.shape[2:], self.pool_geometry(), self.pool_pad()
        axes = []
        for a in (0, 1):
            def conv_size(n, k=k[a], s_=c.stride[a], p_=c.pad[2 * a] + c.pad[2 * a + 1], d=c.dilation[a]):
                return (n + p_ - d * (k - 1) - 1) // s_ + 1

            def size(n, conv_size=conv_size, kp=k2[a], tp=t2[a], pp_=pp[a]):
                return (conv_size(n) + 2 * pp_ - kp) // tp + 1
            axes.append((t2[a] * c.stride[a], (k2[a] - 1) * c.stride[a] + c.dilation[a] * (k[a] - 1) + 1,
                         pp[a] * c.stride[a] + c.pad[2 * a], size, conv_size))
        return axes


@dataclass
class Stem:
    """The traced stages at the model's input and the traced graph to cut them from."""

    stages: List[Stage]
    gm: fx.GraphModule

    def describe(self, depth: int) -> str:
        return " → ".join(n for st in self.stages[:depth] for n in st.nodes)

    def tail(self, depth: int) -> fx.GraphModule:
        """The model with its first ``depth`` stages replaced by an input (shares the model's
        modules and parameters)."""
        g = fx.Graph()
        vals: Dict[fx.Node, fx.Node] = {}
        out = g.graph_copy(self.gm.graph, vals)
        g.output(out)
        old = {n.name: n for n in self.gm.graph.nodes}
        chain = [vals[old[name]] for st in self.stages[:depth] for name in st.node_names]
        x = vals[next(n for n in self.gm.graph.nodes if n.op == "placeholder")]
        with g.inserting_after(x):
            new = g.placeholder("stem_out")
        chain[-1].replace_all_uses_with(new)
        for node in reversed(chain):
            g.erase_node(node)
        g.erase_node(x)
        for node in [n for n in g.nodes if n.op == "get_attr" and not n.users]:  # functional convs' weights
            g.erase_node(node)
        _rewrite_tail(g, self.gm)
        g.lint()
        return fx.GraphModule(self.gm, g)


# ------------------------------------------------------------------ exact rewrites of the tail
def _monotone_step(node: fx.Node, gm: fx.GraphModule) -> bool:
    """A piecewise-linear non-decreasing activation of one tensor (ReLU, ReLU6, Hardtanh,
    LeakyReLU with slope ≥ 0, ``F.relu`` / ``torch.relu``): ``f(max(a, b)) == max(f(a), f(b))``
    holds exactly in floating point, so it commutes with a max pool."""
    if node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
        m = gm.get_submodule(node.target)
        if _has_hooks(m):
            return False
        t = type(m)
        return t in (nn.ReLU, nn.ReLU6, nn.Hardtanh) or (t is nn.LeakyReLU and m.negative_slope >= 0)
    return (node.op == "call_function" and node.target in (F.relu, torch.relu) and len(node.args) == 1
            and set(node.kwargs) <= {"inplace"})


def _in_place(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether an activation node writes its input (then every other reader of that input
    sees the activation's output, and it must not move past them)."""
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    return bool(node.kwargs.get("inplace", False))


def _max_pool(node: fx.Node, gm: fx.GraphModule) -> Optional[nn.MaxPool2d]:
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    m = gm.get_submodule(node.target)
    return m if type(m) is nn.MaxPool2d and not m.return_indices and not _has_hooks(m) else None


def strided_max(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """``max_pool2d(x, (kh, kw))`` (stride = kernel, no padding, floor) as maxima of strided
    slices: the same values (a maximum is exact, NaN propagates in both), in ``x``'s memory
    format, without max_pool2d's per-window loop (bench/results/lime_parts.md times both on
    a channels-last batch of the bench's small CNN)."""
    H, W = x.shape[-2] // kh * kh, x.shape[-1] // kw * kw
    y = x[..., :H, 0:W:kw]
    for j in range(1, kw):
        y = torch.maximum(y, x[..., :H, j:W:kw])
    z = y[..., 0:H:kh, :]
    for i in range(1, kh):
        z = torch.maximum(z, y[..., i:H:kh, :])
    return z


def fast_tail(gm: fx.GraphModule) -> fx.GraphModule:
    """Two exact rewrites of a tail's graph (modules with hooks are left alone):

    * a monotone activation (:func:`_monotone_step`) whose only user is a ``MaxPool2d`` runs
      after the pool, on a map the pool made smaller;
    * a ``MaxPool2d`` with stride = kernel, no padding, no dilation and floor mode is
      :func:`strided_max`.
    """
    _rewrite_tail(gm.graph, gm)
    gm.graph.lint()
    gm.recompile()
    return gm


def _rewrite_tail(g: fx.Graph, gm: fx.GraphModule) -> None:
    """:func:`fast_tail`'s rewrites on the graph ``g``, whose modules ``gm`` holds."""
    for node in list(g.nodes):
        pool = _max_pool(node, gm)
        if pool is None:
            continue
        act = node.args[0]
        if (isinstance(act, fx.Node) and len(act.users) == 1 and _monotone_step(act, gm)
                and (not _in_place(act, gm) or len(act.args[0].users) == 1)):
            node.replace_input_with(act, act.args[0])
            with g.inserting_after(node):
                moved = g.create_node(act.op, act.target, (node,), dict(act.kwargs))
            node.replace_all_uses_with(moved, delete_user_cb=lambda u: u is not moved)
            g.erase_node(act)
        k, t = _pair(pool.kernel_size), _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        if (k == t and k != (1, 1) and _pair(pool.padding) == (0, 0) and _pair(pool.dilation) == (1, 1)
                and not pool.ceil_mode):
            with g.inserting_after(node):
                fast = g.call_function(strided_max, (node.args[0], k[0], k[1]))
            node.replace_all_uses_with(fast)
            g.erase_node(node)


def _attr(gm: fx.GraphModule, node) -> Optional[torch.Tensor]:
    if node is None:
        return None
    obj = gm
    for a in node.target.split("."):
        obj = getattr(obj, a)
    return obj


def _conv_of(node: fx.Node, gm: fx.GraphModule, prev: fx.Node, pre_pad) -> Optional[Tuple[Conv, str]]:
    """A convolution of ``prev`` alone with zero padding (plus ``pre_pad`` from a ZeroPad2d)."""
    if node.op == "call_module" and node.args == (prev,) and not node.kwargs:
        m = gm.get_submodule(node.target)
        if type(m) is not nn.Conv2d or _has_hooks(m) or m.padding_mode != "zeros":
            return None
        w, b, stride, padding, dil, groups = m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups
        name = node.target
    elif node.op == "call_function" and node.target in (F.conv2d, torch.conv2d):
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        a = dict(zip(names, node.args), **node.kwargs)
        if set(a) - set(names) or a.get("input") is not prev or not isinstance(a.get("weight"), fx.Node):
            return None
        if a["weight"].op != "get_attr" or not (a.get("bias") is None or isinstance(a["bias"], fx.Node)
                                                 and a["bias"].op == "get_attr"):
            return None  # weights computed in the forward: not a fixed convolution
        w, b = _attr(gm, a["weight"]), _attr(gm, a.get("bias"))
        stride, padding, dil, groups = (a.get("stride", 1), a.get("padding", 0), a.get("dilation", 1),
                                        a.get("groups", 1))
        name = "conv2d"
    else:
        return None
    if not isinstance(w, torch.Tensor) or w.dim() != 4 or not isinstance(groups, int):
        return None
    pad = _conv_pad(padding, tuple(w.shape[2:]), _pair(dil))
    if pad is None:
        return None
    pad = tuple(p + q for p, q in zip(pad, pre_pad))
    return Conv(w, b, _pair(stride), pad, _pair(dil), groups), str(name)


def _step_of(node: fx.Node, gm: fx.GraphModule, prev: fx.Node):
    """(kind, callable, name) of an fx node that applies one stem step to ``prev`` alone."""
    if node.op == "call_module" and node.args == (prev,) and not node.kwargs:
        m = gm.get_submodule(node.target)
        if _has_hooks(m):
            return None
        t = type(m)
        if t is nn.BatchNorm2d:
            ok = not m.training and m.running_mean is not None
            return ("step", m, node.target) if ok else None
        if t in _ELEMENTWISE:
            return "step", m, node.target
        if t is nn.MaxPool2d:
            ok = _pair(m.dilation) == (1, 1) and not m.ceil_mode and not m.return_indices
            return ("pool", m, node.target) if ok else None
        if t is nn.AvgPool2d:
            ok = (not m.ceil_mode and m.divisor_override is None
                  and (_pair(m.padding) == (0, 0) or m.count_include_pad))
            return ("pool", m, node.target) if ok else None
        return None
    if (node.op == "call_function" and node.target in _ELEMENTWISE_FN and node.args == (prev,)
            and set(node.kwargs) <= {"inplace"}):
        kw = dict(node.kwargs)
        return "step", (lambda y, f=node.target, kw=kw: f(y, **kw)), node.target.__name__
    return None


def _padded_conv(node: fx.Node, gm: fx.GraphModule, prev: fx.Node):
    """(Conv, names, fx nodes) of a convolution of ``prev``, or of a ``ZeroPad2d`` of ``prev``
    whose only user is a convolution; None otherwise."""
    if node.op == "call_module" and node.args == (prev,) and not node.kwargs:
        m = gm.get_submodule(node.target)
        if type(m) is nn.ZeroPad2d and not _has_hooks(m) and len(node.users) == 1:
            left, right, top, bottom = m.padding
            if min(m.padding) < 0:
                return None
            nxt = next(iter(node.users))
            c = _conv_of(nxt, gm, node, (top, bottom, left, right))
            return (c[0], [str(node.target), c[1]], [node, nxt]) if c is not None else None
    c = _conv_of(node, gm, prev, (0, 0, 0, 0))
    return (c[0], [c[1]], [node]) if c is not None else None


def _pair(v) -> Tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def trace_stem(model: nn.Module) -> Stem:
    """Find the model's stem by tracing it with ``torch.fx``; raise :class:`StemUnavailable`
    with the reason when there is none to tabulate."""
    from torch.nn.modules import module as _mm

    if not isinstance(model, nn.Module):
        raise StemUnavailable("the model is not an nn.Module")
    if _mm._global_forward_hooks or _mm._global_forward_pre_hooks or _has_hooks(model):
        raise StemUnavailable("forward hooks on the model (or global ones) would be skipped")
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 — any trace failure means: evaluate the model as is
        raise StemUnavailable(f"torch.fx cannot trace the model ({type(e).__name__}: {e})") from None
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise StemUnavailable(f"the traced forward takes {len(inputs)} inputs, not one")
    stages: List[Stage] = []
    prev, cur = inputs[0], None
    while len(prev.users) == 1:
        node = next(iter(prev.users))
        conv = _padded_conv(node, gm, prev)
        if conv is not None:
            if cur is not None:
                stages.append(cur)
            c, names, nodes = conv
            cur = Stage(c, [], None, names, [n.name for n in nodes])
            prev = nodes[-1]
            continue
        step = _step_of(node, gm, prev) if cur is not None else None
        if step is None:
            break
        kind, fn, name = step
        cur.nodes.append(str(name))
        cur.node_names.append(node.name)
        if kind == "step":
            cur.steps.append(fn)
            cur.monotone = cur.monotone and _monotone_step(node, gm)
        else:
            cur.pool = fn
            stages.append(cur)
            cur = None
        prev = node
    if cur is not None:
        stages.append(cur)
    if not stages:
        raise StemUnavailable("the input does not go into a zero-padded 2-d convolution alone")
    return Stem(stages, gm)


def _layout(stem: Stem, depth: int, H: int, W: int):
    """Per axis: for every level (input, stage 1 .. stage ``depth`` output) the (start of
    window 0 — negative in the padding —, window length, stride between windows) of one
    output position of the last stage, and the map sizes."""
    per_axis = []
    for a, n in ((0, H), (1, W)):
        geo = [st.geometry()[a] for st in stem.stages[:depth]]
        sizes = [n]
        for step, rf, pad, size, _ in geo:
            sizes.append(size(sizes[-1]))
        start, length, stride = 0, 1, 1
        levels = [(start, length, stride)]
        for step, rf, pad, size, _ in reversed(geo):
            start, length, stride = start * step - pad, (length - 1) * step + rf, stride * step
            levels.append((start, length, stride))
        per_axis.append((levels[::-1], sizes))
    return per_axis


def _conv_macs(stage: Stage, out_len_h: int, out_len_w: int) -> int:
    """Multiply-adds of ``stage``'s convolution for ``out_len`` (pooled) outputs per axis."""
    k2, t2 = stage.pool_geometry()
    return stage.conv.macs((out_len_h - 1) * t2[0] + k2[0], (out_len_w - 1) * t2[1] + k2[1])


@dataclass
class Windows:
    """Segment analysis of one instance for the first ``depth`` stages: ``segs`` (Q, M) the
    segments each output position's input window meets (then -1), ``pix_rank`` (Q, R) the
    index in that list of every window pixel's segment (-1: padding), the multiply-adds of
    one table row and of the stages on one whole image."""

    depth: int
    layout: list
    pads: Tuple[Tuple[int, int], Tuple[int, int]]  # ((top, bottom), (left, right)) the windows need
    segs: np.ndarray
    pix_rank: np.ndarray
    row_macs: int
    direct_macs: int

    @property
    def max_segments(self) -> int:
        return int((self.segs >= 0).sum(1).max())


def windows(stem: Stem, depth: int, seg: np.ndarray, H: int, W: int, backend: str = "auto") -> Windows:
    (lv_h, sz_h), (lv_w, sz_w) = layout = _layout(stem, depth, H, W)
    if min(sz_h + sz_w) < 1:
        raise StemUnavailable(f"{depth} stage(s) leave no output for a {H}×{W} input")
    Ho, Wo = sz_h[-1], sz_w[-1]
    (s0h, RH, vh), (s0w, RW, vw) = lv_h[0], lv_w[0]
    pads = (-s0h, max(0, (Ho - 1) * vh + s0h + RH - H)), (-s0w, max(0, (Wo - 1) * vw + s0w + RW - W))
    seg_pad = np.pad(np.asarray(seg, dtype=np.int64).reshape(H, W), pads, constant_values=-1)
    segs, pix_rank = P.stem_windows(seg_pad, Ho, Wo, (RH, RW), (vh, vw), backend)
    stages = stem.stages[:depth]
    row = sum(_conv_macs(st, lv_h[k + 1][1], lv_w[k + 1][1]) for k, st in enumerate(stages))
    direct = sum(_conv_macs(st, sz_h[k + 1], sz_w[k + 1]) for k, st in enumerate(stages))
    return Windows(depth, layout, pads, segs, pix_rank, row, direct)


@dataclass
class StemPlan:
    """One instance's table for the first ``depth`` stages: ``gather(s0, s1, out)`` writes
    the stem outputs of samples ``s0..s1-1`` into ``out`` (s1 - s0, Ho·Wo, C_out)
    (:func:`ops.perturb.stem_gatherer`); ``out_hwc`` is (Ho, Wo, C_out)."""

    table: torch.Tensor    # (T, C_out)
    index: np.ndarray      # (S, Q) int32
    depth: int
    out_hwc: Tuple[int, int, int]
    max_segments: int
    backend: str = "auto"
    levels: int = 1        # tables built one on another (:func:`level_plan`)

    def __post_init__(self):
        self.gather = P.stem_gatherer(self.table, self.index, self.backend)  # checked once here

    @property
    def rows(self) -> int:
        return self.table.shape[0]


def plan_stem(stem: Stem, wd: Windows, x_chw: torch.Tensor, fill_chw: torch.Tensor, masks: np.ndarray,
              rows=None, backend: str = "auto", by_segment: Optional[bool] = None) -> StemPlan:
    """Tabulate the first ``wd.depth`` stages of one instance ``x`` (C, H, W) with hidden
    segments ``fill``, for the coalitions ``masks`` (S, F): one table row per distinct
    coalition an output position sees (``rows``: :func:`ops.perturb.stem_rows`' result, if
    already computed).  ``by_segment``: convolve the first stage per segment
    (:func:`ops.perturb.stem_segment_patches`) or per row; None chooses by the window counts."""
    C, H, W = x_chw.shape
    depth = wd.depth
    (lv_h, sz_h), (lv_w, sz_w) = wd.layout
    Ho, Wo = sz_h[-1], sz_w[-1]
    (_, RH, vh), (_, RW, vw) = lv_h[0], lv_w[0]
    R = RH * RW
    index, row_pos, row_key = rows if rows is not None else P.stem_rows(wd.segs, masks, backend)
    T = len(row_pos)
    # The first convolution is linear in its window: with few segments per window, convolve
    # per position the fill's window and x - fill on each segment (Σ_q 1 + segments of q
    # windows), and sum each row's kept terms (P.stem_combine), instead of convolving one
    # window per row (the bench's 64×64 quickshift case, 25,460 rows against 4,329 windows:
    # bench/results/lime_parts.md; float32 tables differ by float rounding).
    offsets = np.concatenate([[0], np.cumsum(1 + (wd.segs >= 0).sum(1))]).astype(np.int64)
    if by_segment is None:
        by_segment = 2 * offsets[-1] <= T
    n_win = int(offsets[-1]) if by_segment else T
    if n_win * C * R > MAX_TABLE_ELEMENTS:
        raise StemUnavailable(f"a {depth}-stage table would need {n_win} windows of {C}×{RH}×{RW} pixels")
    (pt, pb), (pl, pr_) = wd.pads

    def padded_hwc(img):
        return F.pad(img, (pl, pr_, pt, pb)).permute(1, 2, 0).contiguous().numpy()

    # padding pixels are 0 in both padded images
    x_pad, fill_pad = padded_hwc(x_chw), padded_hwc(fill_chw.to(x_chw.dtype))
    if by_segment:
        y = torch.from_numpy(P.stem_segment_patches(x_pad, fill_pad, wd.pix_rank, offsets, Wo, (vh, vw), (RH, RW),
                                                    backend))
    else:
        y = torch.from_numpy(P.stem_patches(x_pad, fill_pad, wd.pix_rank, row_pos, row_key, Wo, (vh, vw), (RH, RW),
                                            backend))
    qt = torch.from_numpy(row_pos.astype(np.int64))
    qh, qw = qt // Wo, qt % Wo
    with torch.no_grad():
        for k, st in enumerate(stem.stages[:depth]):
            conv_ok = st.conv_ok(qh, qw, lv_h[k + 1], lv_w[k + 1], sz_h[k], sz_w[k])
            if k == 0 and by_segment:
                c = st.conv
                z = F.conv2d(y, c.weight, None, c.stride, 0, c.dilation, c.groups)
                if c.bias is not None:  # the fill's term carries the bias
                    z[torch.from_numpy(offsets[:-1])] += c.bias[:, None, None]
                y = torch.from_numpy(P.stem_combine(z.reshape(len(z), -1).numpy(), offsets, row_pos, row_key,
                                                    backend)).reshape((T,) + tuple(z.shape[1:]))
                y = st.after_conv(y, conv_ok)
            else:
                y = st(y, conv_ok)
            if k + 1 < depth:
                # positions outside this stage's map are the next convolution's zero padding
                (sh_, _, vh_), (sw_, _, vw_) = lv_h[k + 1], lv_w[k + 1]
                r_ = qh[:, None] * vh_ + sh_ + torch.arange(y.shape[2])
                c_ = qw[:, None] * vw_ + sw_ + torch.arange(y.shape[3])
                ok = (((r_ >= 0) & (r_ < sz_h[k + 1]))[:, :, None]
                      & ((c_ >= 0) & (c_ < sz_w[k + 1]))[:, None, :])
                edge = torch.nonzero(~ok.flatten(1).all(1)).flatten()  # only windows at the border
                y[edge] = y[edge].masked_fill(~ok[edge, None], 0.0)  # (-inf from a max pool's padding too)
        table = y.reshape(T, -1).contiguous()
    return StemPlan(table, index, depth, (Ho, Wo, table.shape[1]), wd.max_segments, backend)


def level_plan(stem: Stem, plan: StemPlan, wd: Windows, masks: np.ndarray, rows=None,
               backend: str = "auto") -> StemPlan:
    """The table of one more stage, built on ``plan``'s (a *level*).  The stage's
    convolution is linear in the previous table's rows: each new row's convolution outputs
    are sums of rows of ``U`` (``W_k · T`` per kernel offset ``k``) — ``embedding_bag`` over
    the bags of :func:`ops.perturb.stem_level_ids`, the previous rows read off a sample that
    has the new row's coalition (:func:`ops.perturb.stem_representatives`) —, then the
    stage's steps and pool.  ``wd``: the windows of ``plan.depth + 1`` stages.  The rows
    are the stage's outputs up to float rounding (the convolution's products added in
    another order)."""
    d = plan.depth
    st = stem.stages[d]
    c = st.conv
    if c.groups != 1:
        raise StemUnavailable(f"stage {d + 1}'s convolution is grouped")
    index, row_pos, _ = rows if rows is not None else P.stem_rows(wd.segs, masks, backend)
    T = len(row_pos)
    Hi, Wi, Ci = plan.out_hwc
    Co, _, kh, kw = c.weight.shape
    (_, sz_h), (_, sz_w) = wd.layout
    Ho, Wo = sz_h[-1], sz_w[-1]
    (k2, t2), pp = st.pool_geometry(), st.pool_pad()
    if (T * k2[0] * k2[1] * kh * kw > MAX_INDEX_ENTRIES or T * Co * k2[0] * k2[1] > MAX_TABLE_ELEMENTS
            or plan.rows * kh * kw * Co > MAX_TABLE_ELEMENTS):
        raise StemUnavailable(f"a level of {T} rows on {plan.rows} for stage {d + 1} is too large")
    rep = P.stem_representatives(index, backend)
    with torch.no_grad():
        w = c.weight.to(plan.table.dtype)
        # U[r·K + k] = W_k · table[r], straight from one product, then a zero row
        u = _scratch((plan.rows * kh * kw + 1, Co), plan.table.dtype)
        torch.mm(plan.table, w.permute(1, 2, 3, 0).reshape(Ci, kh * kw * Co), out=u[:-1].view(plan.rows, -1))
        u[-1] = 0
        qt = torch.from_numpy(row_pos.astype(np.int64))
        conv_ok = st.conv_ok(qt // Wo, qt % Wo, (0, 1, 1), (0, 1, 1), Hi, Wi)
        bias = c.bias.to(u.dtype) if c.bias is not None else None
        per = k2[0] * k2[1]
        geo = dict(map_hw=(Hi, Wi), window=k2, step=t2, origin=(-pp[0], -pp[1]), stride=c.stride,
                   pad=(c.pad[0], c.pad[2]), dilation=c.dilation, kernel=(kh, kw), n_rows1=plan.rows)
        if isinstance(st.pool, nn.MaxPool2d) and st.monotone and u.dtype in (torch.float32, torch.float64):
            # each row is one pool window: the max of its convolution sums made as they are
            # summed (P.stem_level_max), then the bias and the steps on the pooled rows —
            # the same values (max commutes with adding the bias and with the steps), without
            # the bags or the convolution outputs in memory
            ok = conv_ok.reshape(T, per).numpy() if conv_ok is not None else None
            y = torch.from_numpy(P.stem_level_max(plan.index, rep, row_pos, Wo, u.numpy(), ok=ok, backend=backend,
                                                  **geo))
            if bias is not None:
                y += bias
            y = y.view(T, Co, 1, 1)
            for f in st.steps:
                y = f(y)
            table = y.reshape(T, -1).contiguous()
        else:
            # in chunks of rows whose bags and convolution outputs stay in cache for the sums,
            # the steps and the pool
            step = max(1, LEVEL_CHUNK_BYTES // (per * Co * u.element_size()))
            table = None
            for t0, t1, ids in P.stem_level_id_chunks(plan.index, rep, row_pos, Wo, chunk_rows=step, backend=backend,
                                                      **geo):
                z = F.embedding_bag(torch.from_numpy(ids), u, mode="sum").view(t1 - t0, k2[0], k2[1], Co)
                if bias is not None:
                    z += bias
                ok = conv_ok[t0:t1] if conv_ok is not None else None
                # (permuted: channels last in memory)
                y = st.after_conv(z.permute(0, 3, 1, 2), ok).reshape(t1 - t0, -1)
                if table is None:
                    table = _scratch((T, y.shape[1]), y.dtype)
                table[t0:t1] = y
    return StemPlan(table, index, d + 1, (Ho, Wo, table.shape[1]), wd.max_segments, backend, plan.levels + 1)


_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64),
                 torch.float16: np.dtype(np.float16)}


def _scratch(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor whose memory NumPy allocates, starting a page (so each
    row of 64 bytes on one cache line).  For a level's large buffers (megabytes, new on every
    call): NumPy asks the kernel for transparent huge pages on allocations of 4 MiB and more
    (``madvise``), torch's CPU allocator does not, and a fresh buffer of 4 KiB pages takes one
    page fault per page on first touch.  A dtype NumPy lacks (bfloat16) gets a plain torch
    tensor."""
    dt = _NUMPY_DTYPES.get(dtype)
    if dt is None:  # no NumPy twin (bfloat16)
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(placed_empty(shape, dt, 0))


LEVEL_CHUNK_BYTES = 2 << 20  # a level's convolution outputs made and reduced at a time

#: A level's bag entries cost this many of a batched model's multiply-adds per channel
#: (bench/results/stem_levels.md: the bench's second level, 3.1 M entries of 16 channels,
#: took 20.7 ms all told by embedding_bag, and saves 32 ms of per-sample work — 1.18 G
#: multiply-adds of convolution, its pool and its ReLU — per 1000 samples).  Max-pool
#: stages now take 15.6 ms by stem_level_max (about 12 per entry and channel); the figure
#: stays that of the embedding_bag path, which the other stages take
LEVEL_COST = 16


def extend_plans(stem: Stem, plans: List[StemPlan], segs: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 H: int, W: int, backend: str = "auto", min_gain: float = 0.0,
                 known: Optional[Dict[int, List[Windows]]] = None) -> List[StemPlan]:
    """Add levels (:func:`level_plan`) while the next stage's per-sample convolution costs
    more, by estimate, than building its level; the plans as they are once none pays.
    ``known``: windows already computed, by depth."""
    while plans[0].depth < len(stem.stages):
        d = plans[0].depth
        st = stem.stages[d]
        try:
            wins = (known or {}).get(d + 1) or [windows(stem, d + 1, sg, H, W, backend) for sg in segs]
        except StemUnavailable:
            break
        if max(w.max_segments for w in wins) > P.MAX_KEY_BITS:
            break
        (_, sz_h), (_, sz_w) = wins[0].layout
        saved = sum(len(m) * _conv_macs(st, sz_h[-1], sz_w[-1]) for m in masks)
        co, _, kh, kw = st.conv.weight.shape
        k2, _ = st.pool_geometry()
        est = sum(LEVEL_COST * _expected_rows(w, len(m)) * k2[0] * k2[1] * kh * kw * co for w, m in zip(wins, masks))
        if saved - est <= min_gain:
            break
        try:  # refuses a grouped convolution or a level past the caps
            plans = [level_plan(stem, p, w, m, None, backend) for p, w, m in zip(plans, wins, masks)]
        except StemUnavailable:
            break
    return plans


TABLE_COST = 4  # a table row's multiply-adds run this much slower than a batched model's (small patches)
MIN_GAIN = 5e7  # multiply-adds the tables must save to pay for their set-up (trace, plans, check: a few ms)


def _expected_rows(w: Windows, n: int) -> float:
    """Expected distinct keys over ``n`` uniform coalitions, summed over positions:
    ``Σ_q 2^m (1 - (1 - 2^-m)^n)`` (LIME's and KernelSHAP's samplers keep each segment with
    probability ½ or by sizes; only used to order the depths before counting exactly)."""
    m = (w.segs >= 0).sum(1).astype(np.float64)
    k = np.exp2(m)
    # a window wholly in padding (m = 0, k = 1) has one key: log1p(-1) = -inf gives the term
    # 1 exactly, written as -inf here rather than computed (which warns "divide by zero")
    lg = np.where(m > 0, np.log1p(-1.0 / np.maximum(k, 2.0)), -np.inf)
    return float(np.sum(k * -np.expm1(n * lg))) if n else 0.0


def build_plans(stem: Stem, xs: Sequence[torch.Tensor], fills: Sequence[torch.Tensor], segs: Sequence[np.ndarray],
                masks: Sequence[np.ndarray], backend: str = "auto",
                min_gain: float = 0.0, levels: bool = True) -> Tuple[List[StemPlan], fx.GraphModule]:
    """Plans for every instance at the stage count with the least work — the tables'
    multiply-adds (× ``TABLE_COST``) against the samples' evaluations of those stages — and
    that depth's tail; raise :class:`StemUnavailable` when no depth can be tabulated or none
    saves more than ``min_gain`` multiply-adds (with the shallowest depth's reason; a
    ``min_gain`` of ``-inf`` takes the best depth even when it saves nothing).  Depths are
    tried in the order of their expected gain; the rows are counted exactly for the one
    taken.  With ``levels``, the plans then grow by levels (:func:`extend_plans`) while
    those pay."""
    C, H, W = xs[0].shape
    reason, cands, known = None, [], {}
    for depth in range(1, len(stem.stages) + 1):
        try:
            wins = [windows(stem, depth, sg, H, W, backend) for sg in segs]
        except StemUnavailable as e:
            reason = reason or e
            break
        M = max(w.max_segments for w in wins)
        if M > P.MAX_KEY_BITS:
            reason = reason or StemUnavailable(f"a {depth}-stage window meets {M} segments (at most "
                                               f"{P.MAX_KEY_BITS} are tabulated)")
            break  # deeper windows only grow
        entries = sum(len(m) * w.segs.shape[0] for w, m in zip(wins, masks))
        if entries > MAX_INDEX_ENTRIES:
            reason = reason or StemUnavailable(f"the {depth}-stage (sample, position) index would take "
                                               f"{entries * 4 / 2**20:.0f} MB")
            continue  # deeper stages have fewer positions
        saved = sum(len(m) * w.direct_macs for w, m in zip(wins, masks))
        est = sum(TABLE_COST * _expected_rows(w, len(m)) * w.row_macs for w, m in zip(wins, masks))
        cands.append((saved - est, saved, wins))
        known[depth] = wins
    for _, saved, wins in sorted(cands, key=lambda c: -c[0]):
        rows = [P.stem_rows(w.segs, m, backend) for w, m in zip(wins, masks)]
        cost = sum(TABLE_COST * len(r[1]) * w.row_macs for w, r in zip(wins, rows))
        if saved - cost > min_gain:
            plans = [plan_stem(stem, w, x, f, m, r, backend) for w, x, f, m, r in zip(wins, xs, fills, masks, rows)]
            if levels:
                plans = extend_plans(stem, plans, segs, masks, H, W, backend, max(min_gain, 0.0), known)
            return plans, stem.tail(plans[0].depth)
        why = "costs more than evaluating them" if cost >= saved else "saves too little to pay for its set-up"
        reason = reason if reason is not None and wins[0].depth > 1 else StemUnavailable(
            f"tabulating {wins[0].depth} stage(s) {why} ({cost:.3g} vs {saved:.3g} estimated multiply-adds)")
    raise reason


def pixel_map(feature_map: np.ndarray, C: int, HW: int) -> np.ndarray:
    """The (H·W,) segment map of a flattened (C·H·W) feature map that repeats over the
    channels; raise :class:`StemUnavailable` when it does not."""
    per_channel = np.asarray(feature_map).reshape(C, HW)
    if not (per_channel == per_channel[:1]).all():
        raise StemUnavailable("the feature map differs between channels")
    return np.ascontiguousarray(per_channel[0])


def check_plans(tail: fx.GraphModule, model: nn.Module, xs: Sequence[torch.Tensor], fills: Sequence[torch.Tensor],
                segs: Sequence[np.ndarray], masks: Sequence[np.ndarray], plans: Sequence[StemPlan]) -> None:
    """Raise :class:`StemUnavailable` unless tail∘gather reproduces the model on the first
    two samples of every instance (float rounding aside)."""
    with torch.no_grad():
        for x, f, sg, m, plan in zip(xs, fills, segs, masks, plans):
            k = min(2, len(m))
            buf = torch.empty((k,) + plan.out_hwc, dtype=x.dtype)
            plan.gather(0, k, buf.view(k, -1, plan.out_hwc[2]))
            got = tail(buf.permute(0, 3, 1, 2))
            imgs = torch.empty((k,) + x.shape, dtype=x.dtype)
            P.build_perturbed(P.as_apb(x, "chw"), P.as_apb(f.to(x.dtype).contiguous(), "chw"),
                              np.asarray(sg).reshape(-1), m[:k], imgs.view(k, x.shape[0], -1, 1))
            want = model(imgs)
            if not isinstance(got, torch.Tensor) or not isinstance(want, torch.Tensor) or got.shape != want.shape:
                raise StemUnavailable("the traced tail returns another shape than the model")
            eps = 1e-4 if x.dtype == torch.float32 else 1e-10
            err = (got - want).abs().max().item()
            if not err <= eps * max(1.0, want.abs().max().item()):
                raise StemUnavailable(f"the traced tail does not reproduce the model (max |Δ| = {err:.3g})")
