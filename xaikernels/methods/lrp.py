"""Layer-wise Relevance Propagation: rules, composites, canonizers and the one-pass engine.

LRP (Bach et al. 2015, "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
Layer-Wise Relevance Propagation", PLoS ONE; Montavon et al. 2019, "Layer-Wise Relevance
Propagation: An Overview") redistributes the target score layer by layer,
``R_i = Σ_j (contribution of i to z_j) / s(z_j) · R_j``, with a *rule* per layer that says which
contributions count.  Every rule's formula is in :mod:`xaikernels.reference.lrp`.

How it runs: for the duration of one call, each module that has a rule has its ``forward``
replaced by the rule's autograd Function (the replacement is an instance attribute that is
deleted afterwards; hooks, flags and parameters are restored by
:class:`~xaikernels._model_guard.ModelGuard`).  The Function's forward *is* the layer call and
is the plain layer; its backward is the rule.  So one forward and one backward through the model
give the relevance, and no hook re-runs a layer.  Memory stays near the plain gradient's: the
rules recompute their sign-split products in the backward rather than keep them (αβ/γ layers
may keep their outputs within a per-pass budget, :class:`~xaikernels.ops.lrp.SaveBudget`), and
max pooling keeps only its indices.

Layers: ``Linear``, ``Conv1d/2d/3d`` (stride, zero padding, dilation, groups incl. depthwise),
average and adaptive-average pooling (norm rule, i.e. linear maps), max pooling (gradient:
relevance goes to the winning input, winner-take-all), ``Flatten``/``Dropout`` (eval)/
``Identity`` (gradient, i.e. pass-through), activations (pass rule), BatchNorm (merged into the
preceding convolution/linear by the canonizer, else pass rule), residual additions (canonized
ResNet blocks, an explicit :class:`ResidualSum` module, or — with :class:`FunctionalAdditions`,
part of ``canonizers="auto"`` — additions written inline, ``x + block(x)`` / ``out += identity``
as in MobileNetV2/EfficientNet MBConv blocks: these work, with the norm rule).  Any other module
is an error that names its path, unless ``unsupported="gradient"`` lets relevance pass through
it as gradient.  Other operations written inline in a ``forward`` (``F.relu``, ``x.view``,
``torch.cat``, ``*``) cannot be seen: they propagate the gradient, as in Zennit.

A convolution/linear subclass with its own ``forward`` (TensorFlow "SAME" padding applied before
the convolution, as ``efficientnet_lite_pytorch``'s ``Conv2dStaticSamePadding``) runs that
forward; its one call of the convolution with the layer's own weight becomes the rule, and zero
padding of the layer input inside it becomes (possibly asymmetric) padding of the rule, so
padded zeros never receive relevance.  A forward that never convolves with the layer's own
weight (weight standardisation, say) is an error naming the layer.
"""
from __future__ import annotations

import contextlib
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from xaikernels import _validate
from xaikernels._model_guard import ModelGuard
from xaikernels.ops import lrp as _ops
from xaikernels.reference.lrp import ConvGeom, RuleParams, pad_input

# ---------------------------------------------------------------------------------------------
# Module families
# ---------------------------------------------------------------------------------------------

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR_TYPES = CONV_TYPES + (nn.Linear,)
AVGPOOL_TYPES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
MAXPOOL_TYPES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Activation modules (Zennit's list): the presets give them the pass rule.
ACTIVATION_TYPES = (nn.ELU, nn.Hardshrink, nn.Hardsigmoid, nn.Hardtanh, nn.Hardswish, nn.LeakyReLU,
                    nn.LogSigmoid, nn.PReLU, nn.ReLU, nn.ReLU6, nn.RReLU, nn.SELU, nn.CELU, nn.GELU,
                    nn.Sigmoid, nn.SiLU, nn.Softplus, nn.Softshrink, nn.Softsign, nn.Tanh, nn.Tanhshrink,
                    nn.Threshold)
#: Modules through which the gradient is the right relevance flow (routing/reshaping only).
GRADIENT_TYPES = MAXPOOL_TYPES + (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                                  nn.FeatureAlphaDropout, nn.Flatten, nn.Unflatten, nn.Identity,
                                  nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)
#: The stock forwards; a subclass that overrides them (e.g. TensorFlow "SAME" padding before the
#: convolution) is run as written, with its convolution call routed to the rule.
_STOCK_FORWARD = {nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward}
_CONV_FUNCS = {torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}
#: Stock max-pooling forwards, run during LRP with a backward that keeps only the indices.
_MAXPOOL_FUNCS = {nn.MaxPool1d.forward: (F.max_pool1d, 1), nn.MaxPool2d.forward: (F.max_pool2d, 2),
                  nn.MaxPool3d.forward: (F.max_pool3d, 3)}
_ADD_FUNCS = (torch.Tensor.add, torch.Tensor.add_, torch.add)


class ResidualSum(nn.Module):
    """``a + b`` as a module, so that a rule (by default the norm rule) can see the addition.

    The residual canonizer uses it (virtually: nothing is attached to the model) for ResNet
    blocks; put one in a custom model (``self.add = ResidualSum()`` and ``self.add(a, b)``) to
    make its additions explicit.
    """

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------

class Rule:
    """Base class of LRP rules.  Linear-like rules convert to :class:`RuleParams`."""

    def params(self) -> Optional[RuleParams]:
        return None


def _check_eps(v, name):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite float >= 0, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-ε: ``R_i = Σ_j x_i w_ji / s(z_j) R_j`` (ε = 0 is LRP-0).  Bach et al. 2015."""

    epsilon: float = 1e-6

    def __post_init__(self):
        _check_eps(self.epsilon, "epsilon")

    def params(self):
        return RuleParams("epsilon", eps=float(self.epsilon))


@dataclass(frozen=True)
class ZPlus(Rule):
    """LRP-z⁺ (αβ with α=1, β=0): positive contributions only.  Montavon et al. 2017."""

    stabilizer: float = 1e-6

    def __post_init__(self):
        _check_eps(self.stabilizer, "stabilizer")

    def params(self):
        return RuleParams("zplus", eps=float(self.stabilizer))


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-αβ: ``α`` × positive minus ``β`` × negative contributions, ``α − β = 1``.  Bach et al. 2015."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self):
        _check_eps(self.stabilizer, "stabilizer")
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={self.alpha}, beta={self.beta}")
        if abs((self.alpha - self.beta) - 1.0) > 1e-12:
            raise ValueError(f"the alpha-beta rule needs alpha - beta = 1 (relevance conservation), got "
                             f"alpha={self.alpha}, beta={self.beta}")

    def params(self):
        if self.beta == 0:
            return RuleParams("zplus", eps=float(self.stabilizer))
        return RuleParams("alphabeta", eps=float(self.stabilizer), alpha=float(self.alpha), beta=float(self.beta))


@dataclass(frozen=True)
class Gamma(Rule):
    """LRP-γ (generalised, Zennit's form): positive contributions boosted by ``γ``.  Montavon et al. 2019."""

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def __post_init__(self):
        _check_eps(self.stabilizer, "stabilizer")
        _check_eps(self.gamma, "gamma")

    def params(self):
        return RuleParams("gamma", eps=float(self.stabilizer), gamma=float(self.gamma))


@dataclass(frozen=True, eq=False)
class ZBox(Rule):
    """LRP-z^B for a bounded input ``low ≤ x ≤ high`` (e.g. the pixel range).  Montavon et al. 2017.

    ``low``/``high``: floats or tensors broadcastable to the layer input (per-channel bounds of
    normalised images as ``(1, 3, 1, 1)``).
    """

    low: Any = None
    high: Any = None
    stabilizer: float = 1e-6

    def __post_init__(self):
        _check_eps(self.stabilizer, "stabilizer")
        if self.low is None or self.high is None:
            raise ValueError("the zbox rule needs both input bounds: ZBox(low=..., high=...) "
                             "(e.g. low=0., high=1. for raw pixels in [0, 1])")

    def params(self):
        return RuleParams("zbox", eps=float(self.stabilizer), low=self.low, high=self.high)


@dataclass(frozen=True)
class Flat(Rule):
    """LRP-flat: relevance spread uniformly over each output's receptive field.  Lapuschkin et al. 2019."""

    stabilizer: float = 1e-6

    def __post_init__(self):
        _check_eps(self.stabilizer, "stabilizer")

    def params(self):
        return RuleParams("flat", eps=float(self.stabilizer))


@dataclass(frozen=True)
class WSquare(Rule):
    """LRP-w²: relevance spread in proportion to the squared weights.  Montavon et al. 2017."""

    stabilizer: float = 1e-6

    def __post_init__(self):
        _check_eps(self.stabilizer, "stabilizer")

    def params(self):
        return RuleParams("wsquare", eps=float(self.stabilizer))


@dataclass(frozen=True)
class Pass(Rule):
    """Relevance passes through unchanged (activations, a merged BatchNorm)."""


@dataclass(frozen=True)
class Norm(Rule):
    """ε-rule for parameter-free linear maps (average pooling, additions): ``R_in = x ⊙ Aᵀ(R / s(Ax))``."""

    stabilizer: float = 1e-6

    def __post_init__(self):
        _check_eps(self.stabilizer, "stabilizer")


@dataclass(frozen=True)
class Gradient(Rule):
    """Explicit opt-in: the relevance crosses this module as the plain gradient."""


@dataclass(frozen=True)
class _PassLayer(Rule):
    """Captum's ``IdentityRule``: the layer runs as written (weights included) and hands its output
    relevance to its input unchanged, so input and output must have the same shape.  Unlike
    :class:`Pass` it may sit on a linear/convolution layer (Captum allows that)."""


@dataclass(frozen=True)
class _CaptumActivation(Rule):
    """Captum's pass-through on ``ReLU``/``Dropout``/``Tanh``, including its hook-order effect: in
    a run of such layers each taking the previous one's output tensor as is, the 2nd, 4th, ...
    propagate the gradient (Captum's backward hooks capture the gradient before the next layer
    replaces it), the others pass relevance unchanged."""


@dataclass(frozen=True, eq=False)
class _ModifiedEpsilon(Rule):
    """Captum's rules: ε propagated with modified weights (``"gamma"``: W + γW⁺, ``"positive"``: W⁺)."""

    epsilon: float = 1e-9
    wmod: str = ""
    gamma: float = 0.25
    zero_bias: bool = False

    def params(self):
        return RuleParams("epsilon", eps=float(self.epsilon), gamma=float(self.gamma), wmod=self.wmod,
                          zero_bias=bool(self.zero_bias))


_RULE_NAMES = {
    "epsilon": Epsilon, "zplus": ZPlus, "z+": ZPlus, "alpha1beta0": lambda: AlphaBeta(1.0, 0.0),
    "alpha2beta1": lambda: AlphaBeta(2.0, 1.0), "alphabeta": AlphaBeta, "gamma": Gamma, "flat": Flat,
    "wsquare": WSquare, "w2": WSquare, "pass": Pass, "norm": Norm, "gradient": Gradient, "zbox": ZBox,
}


def make_rule(rule: Union[str, Rule]) -> Rule:
    """A :class:`Rule` from an instance or a name (``"epsilon"``, ``"zplus"``, ``"alpha2beta1"``, ...)."""
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str):
        key = rule.strip().lower().replace("_", "").replace("-", "")
        if key in _RULE_NAMES:
            return _RULE_NAMES[key]()
        close = difflib.get_close_matches(key, list(_RULE_NAMES), n=3)
        raise ValueError(f"unknown LRP rule {rule!r}; known: {sorted(_RULE_NAMES)}"
                         + (f" (did you mean {close}?)" if close else ""))
    raise TypeError(f"a rule must be a Rule instance or a rule name, got {type(rule).__name__}")


# ---------------------------------------------------------------------------------------------
# Canonizers
# ---------------------------------------------------------------------------------------------

def _leaves(module: nn.Module) -> Iterable[nn.Module]:
    children = list(module.children())
    # A linear-like layer is one layer even when it holds helpers (a padding module).
    if not children or isinstance(module, LINEAR_TYPES):
        yield module
        return
    for c in children:
        yield from _leaves(c)


@dataclass(eq=False)
class MergeBatchNorm:
    """Merge each BatchNorm into the linear-like layer right before it (in module order).

    ``W' = W · γ/√(σ² + ε)``, ``b' = (b − μ) · γ/√(σ² + ε) + β``; the BatchNorm then acts as the
    identity with the pass rule.  Nothing on the model changes: the merged weights are computed
    per call.  The forward pass checks that each merged BatchNorm really consumes its layer's
    output and raises otherwise.  ``zennit_compat=True`` reproduces Zennit's merge exactly, which
    leaves the BatchNorm computing ``x / √(1 + ε)`` (used when a Zennit canonizer is passed).
    ``pairs``: explicit ``[(linear names, batchnorm name), ...]`` instead of module order.
    """

    zennit_compat: bool = False
    pairs: Optional[Sequence[Tuple[Sequence[str], str]]] = None

    def find(self, model: nn.Module) -> List[Tuple[nn.Module, nn.Module]]:
        if self.pairs is not None:
            named = dict(model.named_modules())
            out = []
            for lin_names, bn_name in self.pairs:
                for ln in ([lin_names] if isinstance(lin_names, str) else lin_names):
                    out.append((named[ln], named[bn_name]))
            return out
        out, last = [], None
        for leaf in _leaves(model):
            if isinstance(last, LINEAR_TYPES) and isinstance(leaf, BATCHNORM_TYPES):
                out.append((last, leaf))
            last = leaf
        return out


@dataclass(eq=False)
class ResidualBlocks:
    """Route the residual addition of ResNet blocks through :class:`ResidualSum` (norm rule).

    ``types``: block classes to canonize.  Default: torchvision-style ``BasicBlock`` and
    ``Bottleneck`` (class name ending so, with ``conv1, bn1, conv2, bn2, relu, downsample`` and
    for bottlenecks ``conv3, bn3``), whose forward is re-expressed without the in-place add.
    """

    types: Optional[Tuple[type, ...]] = None

    def kind(self, m: nn.Module) -> Optional[str]:
        if self.types is not None and not isinstance(m, self.types):
            return None
        name = type(m).__name__
        base = all(hasattr(m, a) for a in ("conv1", "bn1", "conv2", "bn2", "relu", "downsample"))
        if not base:
            return None
        bottleneck = hasattr(m, "conv3") and hasattr(m, "bn3")
        if self.types is None and not (name.endswith("BasicBlock") or name.endswith("Bottleneck")):
            return None
        return "bottleneck" if bottleneck else "basic"

    def find(self, model: nn.Module) -> List[Tuple[nn.Module, str]]:
        out = []
        for m in model.modules():
            k = self.kind(m)
            if k is not None:
                out.append((m, k))
        return out


@dataclass(eq=False)
class FunctionalAdditions:
    """Norm rule for additions written inline in a ``forward``: ``x + block(x)``, ``out += identity``.

    While the model runs, every addition of two *computed* tensors (both produced by operations
    on the input, e.g. a skip connection and a branch output; parameters and constants do not
    count) — ``a + b``, ``a += b``, ``a.add(b)``, ``a.add_(b)``, ``torch.add(a, b)`` with
    ``alpha=1`` — splits its relevance in proportion to the summands,
    ``R_a = a ⊙ R / s(a + b)`` (as :class:`ResidualSum`), instead of letting the gradient copy the
    full relevance into both (which doubles it at every skip connection).  This is how
    MobileNetV2 / EfficientNet (MBConv) and torchvision-style ``InvertedResidual`` blocks work
    without a block-specific canonizer.  Other inline operations (``torch.cat``, ``*``, ``-``)
    still propagate the gradient.  Part of ``canonizers="auto"``; Zennit has no equivalent, so
    Zennit composites and canonizers do not bring it.
    """

    stabilizer: float = 1e-6

    def __post_init__(self):
        _check_eps(self.stabilizer, "stabilizer")


class _AdditionMode(torch.overrides.TorchFunctionMode):
    """Routes inline additions of two computed tensors through the norm rule (see
    :class:`FunctionalAdditions`).  Rule ops run their forwards without grad, so their internal
    arithmetic is never caught."""

    def __init__(self, eps: float, xs: Sequence[torch.Tensor]):
        super().__init__()
        self.eps, self.xs = eps, tuple(xs)

    def _computed(self, t) -> bool:
        # The model inputs are leaves; parameters are leaves and are not summands that carry relevance.
        return (isinstance(t, torch.Tensor) and t.is_floating_point()
                and (t.grad_fn is not None or any(t is x for x in self.xs)))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ADD_FUNCS and len(args) == 2 and not kwargs and torch.is_grad_enabled():
            a, b = args
            if self._computed(a) and self._computed(b):
                if func is torch.Tensor.add_:
                    return _ops.sum_norm_(a, b, self.eps)
                return _ops.sum_norm(a, b, self.eps)
        return func(*args, **kwargs)


_CANONIZER_NAMES = {"merge_batchnorm": MergeBatchNorm, "residual": ResidualBlocks,
                    "functional_additions": FunctionalAdditions}
_CANONIZER_TYPES = (MergeBatchNorm, ResidualBlocks, FunctionalAdditions)


def _canonizers(spec, composite) -> List[Any]:
    if isinstance(spec, str) and spec == "auto":
        own = getattr(composite, "canonizers", None)
        if own is not None:
            return _canonizers(list(own), None)
        return [MergeBatchNorm(), ResidualBlocks(), FunctionalAdditions()]
    if spec is None:
        return []
    if isinstance(spec, (str,) + _CANONIZER_TYPES) or _is_zennit(spec):
        spec = [spec]
    out = []
    for c in spec:
        if isinstance(c, str):
            if c not in _CANONIZER_NAMES:
                raise ValueError(f"unknown canonizer {c!r}; known: {sorted(_CANONIZER_NAMES)} or 'auto'")
            out.append(_CANONIZER_NAMES[c]())
        elif isinstance(c, _CANONIZER_TYPES):
            out.append(c)
        elif _is_zennit(c):
            from xaikernels.zennit import convert_canonizer

            out.extend(convert_canonizer(c))
        elif isinstance(c, (list, tuple)):  # a group, e.g. ResNetCanonizer() inside a list (Zennit's idiom)
            out.extend(_canonizers(list(c), None))
        else:
            raise TypeError(f"unsupported canonizer {c!r}")
    return out


# ---------------------------------------------------------------------------------------------
# Composites
# ---------------------------------------------------------------------------------------------

TypeMap = Sequence[Tuple[Union[type, Tuple[type, ...]], Union[str, Rule]]]


class Composite:
    """Which rule each module gets, with Zennit's assignment semantics.

    For each module in ``model.named_modules()`` order (plus a virtual ``<block>.canonizer_sum``
    :class:`ResidualSum` after each canonized residual block): ``name_map`` by module name first;
    then, until one module has matched it, ``first_map`` (the "first layer" rule); then the first
    matching entry of ``layer_map`` (by ``isinstance``).  No match: the gradient.

    Parameters
    ----------
    layer_map : sequence of ``(types, rule)``.
    first_map : sequence of ``(types, rule)`` for the first matching module only.
    name_map : mapping ``{module name: rule}``.
    canonizers : canonizers this composite brings (None: the caller's choice, ``"auto"``).
    """

    def __init__(self, layer_map: TypeMap = (), first_map: TypeMap = (), name_map: Optional[Dict[str, Any]] = None,
                 canonizers: Optional[Sequence[Any]] = None, name: str = "custom"):
        self.layer_map = [(t, make_rule(r)) for t, r in layer_map]
        self.first_map = [(t, make_rule(r)) for t, r in first_map]
        self.name_map = {k: make_rule(v) for k, v in (name_map or {}).items()}
        self.canonizers = canonizers
        self.name = name

    def rule_for(self, ctx: dict, name: str, module: nn.Module) -> Optional[Rule]:
        if name in self.name_map:
            return self.name_map[name]
        if not ctx.get("first_done"):
            for types, rule in self.first_map:
                if isinstance(module, types):
                    ctx["first_done"] = True
                    return rule
        for types, rule in self.layer_map:
            if isinstance(module, types):
                return rule
        return None

    def __repr__(self):
        return f"Composite({self.name!r})"

    # -- Zennit's registration API --------------------------------------------------------------

    def register(self, model: nn.Module, *, canonizers: Any = "auto", backend: str = "auto",
                 unsupported: str = "gradient") -> None:
        """Install the rules on ``model`` (Zennit's ``Composite.register``): until :meth:`remove`,
        the gradient of the model's output w.r.t. its input is the LRP relevance.  The model's
        layers run the rule Functions (no hooks); :meth:`remove` hands the model back exactly as
        it was (parameters, BatchNorm, hooks, flags).  Modules without a rule pass the gradient
        (``unsupported="gradient"``, Zennit's behaviour) or raise (``"error"``)."""
        reg = _Registration(model, self, canonizers, backend, unsupported)
        self.__dict__.setdefault("handles", []).append(reg)

    def remove(self) -> None:
        """Undo every :meth:`register` (latest first)."""
        handles = self.__dict__.get("handles", [])
        try:
            while handles:
                handles.pop().remove()
        finally:
            handles.clear()

    @contextlib.contextmanager
    def context(self, model: nn.Module, **kwargs):
        """``with composite.context(model) as modified:`` — :meth:`register` on entry,
        :meth:`remove` on exit (also on an exception); yields the model."""
        self.register(model, **kwargs)
        try:
            yield model
        finally:
            self.remove()


class _Registration:
    """A composite installed on a model until :meth:`remove` (the engine of one pass, kept
    open: every forward inside runs the rule Functions)."""

    def __init__(self, model: nn.Module, composite: "Composite", canonizers, backend: str, unsupported: str):
        self.run = _Run(model, composite, _canonizers(canonizers, composite), backend, unsupported)
        if self.run.additions is not None:
            raise ValueError("the functional-additions canonizer needs the model's inputs: use lrp() or "
                             "xaikernels.zennit.Gradient for models that add tensors with + outside modules")
        self.guard = ModelGuard(model).__enter__()
        try:
            self.run.install(self.guard)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        try:
            self.guard.__exit__(None, None, None)
        finally:
            self.run.restore()


def _base_map(stabilizer: float) -> list:
    return [(ACTIVATION_TYPES, Pass()), (ResidualSum, Norm(stabilizer)), (AVGPOOL_TYPES, Norm(stabilizer)),
            (BATCHNORM_TYPES, Pass())]


def epsilon_plus(epsilon: float = 1e-6, stabilizer: float = 1e-6, layer_map: TypeMap = (),
                 canonizers=None) -> Composite:
    """z⁺ for convolutions, ε for linear layers (Zennit's ``EpsilonPlus``)."""
    return Composite(list(layer_map) + _base_map(stabilizer) + [(CONV_TYPES, ZPlus(stabilizer)),
                                                                (nn.Linear, Epsilon(epsilon))],
                     canonizers=canonizers, name="epsilon_plus")


def epsilon_plus_flat(epsilon: float = 1e-6, stabilizer: float = 1e-6, layer_map: TypeMap = (),
                      first_map: TypeMap = (), canonizers=None) -> Composite:
    """:func:`epsilon_plus` with the flat rule on the first linear-like layer (``EpsilonPlusFlat``)."""
    c = epsilon_plus(epsilon, stabilizer, layer_map, canonizers)
    c.first_map = [(t, make_rule(r)) for t, r in first_map] + [(LINEAR_TYPES, Flat(stabilizer))]
    c.name = "epsilon_plus_flat"
    return c


def epsilon_alpha2_beta1(epsilon: float = 1e-6, stabilizer: float = 1e-6, layer_map: TypeMap = (),
                         canonizers=None) -> Composite:
    """α2β1 for convolutions, ε for linear layers (``EpsilonAlpha2Beta1``)."""
    return Composite(list(layer_map) + _base_map(stabilizer) + [(CONV_TYPES, AlphaBeta(2.0, 1.0, stabilizer)),
                                                                (nn.Linear, Epsilon(epsilon))],
                     canonizers=canonizers, name="epsilon_alpha2_beta1")


def epsilon_alpha2_beta1_flat(epsilon: float = 1e-6, stabilizer: float = 1e-6, layer_map: TypeMap = (),
                              first_map: TypeMap = (), canonizers=None) -> Composite:
    """:func:`epsilon_alpha2_beta1` with flat on the first linear-like layer (``EpsilonAlpha2Beta1Flat``)."""
    c = epsilon_alpha2_beta1(epsilon, stabilizer, layer_map, canonizers)
    c.first_map = [(t, make_rule(r)) for t, r in first_map] + [(LINEAR_TYPES, Flat(stabilizer))]
    c.name = "epsilon_alpha2_beta1_flat"
    return c


def epsilon_gamma_box(low=None, high=None, epsilon: float = 1e-6, gamma: float = 0.25, stabilizer: float = 1e-6,
                      layer_map: TypeMap = (), first_map: TypeMap = (), canonizers=None) -> Composite:
    """z^B on the first convolution, γ on the other convolutions, ε on linear layers (``EpsilonGammaBox``).

    ``low``/``high``: the input bounds (required), floats or tensors broadcastable to the input.
    """
    if low is None or high is None:
        raise ValueError("the 'epsilon_gamma_box' composite needs the input bounds: "
                         "epsilon_gamma_box(low=..., high=...), or composite_kwargs={'low': ..., 'high': ...}")
    c = Composite(list(layer_map) + _base_map(stabilizer) + [(CONV_TYPES, Gamma(gamma, stabilizer)),
                                                             (nn.Linear, Epsilon(epsilon))],
                  first_map=list(first_map) + [(CONV_TYPES, ZBox(low, high, stabilizer))],
                  canonizers=canonizers, name="epsilon_gamma_box")
    return c


PRESETS: Dict[str, Callable[..., Composite]] = {
    "epsilon_plus": epsilon_plus,
    "epsilon_plus_flat": epsilon_plus_flat,
    "epsilon_alpha2_beta1": epsilon_alpha2_beta1,
    "epsilon_alpha2_beta1_flat": epsilon_alpha2_beta1_flat,
    "epsilon_gamma_box": epsilon_gamma_box,
}


def _is_zennit(obj) -> bool:
    """A Zennit object: its class, or a class it derives from, is defined in ``zennit``."""
    return any(c.__module__.split(".")[0] == "zennit" for c in type(obj).__mro__)


def resolve_composite(composite, composite_kwargs: Optional[dict] = None):
    """A composite object from a preset name, a Composite, a ``{type or name: rule}`` map, or a
    Zennit ``Composite``."""
    kw = dict(composite_kwargs or {})
    if isinstance(composite, str):
        if composite not in PRESETS:
            close = difflib.get_close_matches(composite, list(PRESETS), n=3)
            raise ValueError(f"unknown composite {composite!r}; presets: {sorted(PRESETS)}"
                             + (f" (did you mean {close}?)" if close else ""))
        return PRESETS[composite](**kw)
    if kw:
        raise ValueError("composite_kwargs only apply to a preset given by name")
    if isinstance(composite, Composite):
        return composite
    if isinstance(composite, dict):
        names = {k: v for k, v in composite.items() if isinstance(k, str)}
        types = [(k, v) for k, v in composite.items() if not isinstance(k, str)]
        for k, _ in types:
            ks = k if isinstance(k, tuple) else (k,)
            if not all(isinstance(t, type) for t in ks):
                raise TypeError(f"composite map keys must be module names or module types, got {k!r}")
        return Composite(types + _base_map(1e-6), name_map=names, name="map")
    if _is_zennit(composite):
        from xaikernels.zennit import ZennitComposite

        return ZennitComposite(composite)
    if hasattr(composite, "rule_for"):
        return composite
    raise TypeError(f"composite must be a preset name ({sorted(PRESETS)}), a Composite, a dict mapping module "
                    f"types/names to rules, or a zennit Composite; got {type(composite).__name__}")


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------

def _tuple(v, d: int) -> Tuple[int, ...]:
    return tuple(int(e) for e in v) if isinstance(v, (tuple, list)) else (int(v),) * d


def _add_pads(p: Tuple[int, ...], q: Tuple[int, ...]) -> Tuple[int, ...]:
    """Sum of two paddings in F.pad order (possibly of different lengths)."""
    n = max(len(p), len(q))
    return tuple(u + v for u, v in zip(p + (0,) * (n - len(p)), q + (0,) * (n - len(q))))


def _geom(stride, padding, dilation, groups, kernel: Sequence[int], pre_pad=None) -> ConvGeom:
    """A :class:`ConvGeom` from convolution arguments (ints, tuples or ``"valid"``/``"same"``)."""
    d = len(kernel)
    stride, dilation = _tuple(stride, d), _tuple(dilation, d)
    if padding == "valid":
        padding = 0
    elif padding == "same":
        # PyTorch's "same": the odd pixel of an even total goes after (as explicit F.pad order)
        tot = [dl * (k - 1) for dl, k in zip(dilation, kernel)]
        sym = tuple(t // 2 for t in tot)
        extra = tuple(e for t in reversed(tot) for e in (0, t % 2))
        if any(extra):
            pre_pad = extra if pre_pad is None else _add_pads(pre_pad, extra)
        return ConvGeom(stride, sym, dilation, int(groups), pre_pad)
    return ConvGeom(stride, _tuple(padding, d), dilation, int(groups), pre_pad)


def _conv_geom(m: nn.Module, path: str) -> ConvGeom:
    if m.padding_mode != "zeros":
        raise NotImplementedError(f"layer {path!r}: padding_mode={m.padding_mode!r} is not supported by LRP "
                                  "(only zero padding)")
    return _geom(m.stride, m.padding, m.dilation, m.groups, m.kernel_size)


def _bind(args, kwargs, names, defaults):
    out = dict(zip(names, defaults))
    out.update(zip(names, args))
    out.update(kwargs)
    return out


class _LayerCallMode(torch.overrides.TorchFunctionMode):
    """Runs a linear-like layer's own ``forward`` (a subclass that pads before convolving, as
    TensorFlow "SAME" ports do) and routes its one convolution/linear call with the layer's own
    weight to the rule.  Zero padding of the layer input written in that forward becomes the
    geometry's ``pre_pad``, so padded zeros never count as inputs (this matters for flat/w²)."""

    _CONV_ARGS = (("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
                  (None, None, None, 1, 0, 1, 1))
    _PAD_ARGS = (("input", "pad", "mode", "value"), (None, None, "constant", None))

    def __init__(self, m: nn.Module, name: str, call):
        super().__init__()
        self.m, self.name, self.call = m, name, call
        self.pads: Dict[int, Tuple[torch.Tensor, Tuple[int, ...], torch.Tensor]] = {}
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.pad:
            out = func(*args, **kwargs)
            a = _bind(args, kwargs, *self._PAD_ARGS)
            pad = tuple(int(v) for v in a["pad"])
            if a["mode"] == "constant" and not a["value"] and min(pad) >= 0:
                src = a["input"]
                prev = self.pads.get(id(src))
                if prev is not None and prev[2] is src:  # padded twice: one pad
                    src, pad = prev[0], _add_pads(prev[1], pad)
                self.pads[id(out)] = (src, pad, out)
            return out
        is_conv = func in _CONV_FUNCS
        if is_conv or func is F.linear:
            a = _bind(args, kwargs, *self._CONV_ARGS)
            if a["weight"] is self.m.weight:
                self.calls += 1
                if self.calls > 1:
                    raise TypeError(f"layer {self.name!r} ({type(self.m).__name__}) uses its weight twice in its "
                                    "forward; LRP rules need one linear map per layer")
                x = a["input"]
                if not is_conv:
                    return self.call(x, None)
                pre, padded = None, self.pads.get(id(x))
                if padded is not None and padded[2] is x:
                    x, pre = padded[0], padded[1]
                return self.call(x, _geom(a["stride"], a["padding"], a["dilation"], a["groups"],
                                          tuple(self.m.weight.shape[2:]), pre))
        return func(*args, **kwargs)


def _layer_forward(m: nn.Module, name: str, call):
    """``m``'s forward during LRP: ``call(x, geom)`` computes the layer with its rule."""
    if type(m).forward in _STOCK_FORWARD:
        geom = None if isinstance(m, nn.Linear) else _conv_geom(m, name)
        return lambda x: call(x, geom)
    own = type(m).forward.__get__(m)

    def fwd(*args, **kwargs):
        mode = _LayerCallMode(m, name, call)
        with mode:
            out = own(*args, **kwargs)
        if mode.calls == 0:
            raise TypeError(f"layer {name!r} ({type(m).__name__}) has its own forward, which never calls "
                            "its convolution/linear map with the layer's weight; LRP cannot apply a rule to "
                            "it (map it to 'gradient', or give LRP a standard layer)")
        return out
    return fwd


def _bn_scale(bn: nn.Module):
    var = bn.running_var.detach()
    scale = (var + bn.eps) ** 0.5
    w = bn.weight.detach() if bn.weight is not None else torch.ones_like(var)
    scale = w / scale
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(var)
    return scale, bn.running_mean.detach(), beta


def _provider(m: nn.Module, bn: Optional[nn.Module]):
    def weights():
        w = m.weight.detach()
        b = None if m.bias is None else m.bias.detach()
        if bn is None:
            return w, b
        scale, mean, beta = _bn_scale(bn)
        w = w * scale.view(-1, *([1] * (w.dim() - 1)))
        b = ((0.0 if b is None else b) - mean) * scale + beta
        return w, b
    return weights


def _bn_as_layer(bn: nn.Module, x: torch.Tensor):
    """A non-merged BatchNorm as a diagonal linear-like layer (for rules other than pass)."""
    c = bn.num_features

    def weights():
        scale, mean, beta = _bn_scale(bn)
        if x.dim() == 2:
            return torch.diag(scale), beta - mean * scale
        return scale.view(c, 1, *([1] * (x.dim() - 2))), beta - mean * scale

    if x.dim() == 2:
        return weights, None
    d = x.dim() - 2
    return weights, ConvGeom((1,) * d, (0,) * d, (1,) * d, c)


class _Unsupported(TypeError):
    pass


class RuleLayerError(TypeError):
    """A rule given to a layer type that the LRP engine cannot apply it to (raised while the
    rules are installed, before the model runs)."""


class _Run:
    """One LRP call: plan the rules, install the forwards, and take them out again."""

    def __init__(self, model: nn.Module, composite, canonizers: List[Any], backend: str, unsupported: str):
        if unsupported not in ("error", "gradient"):
            raise ValueError(f"unsupported must be 'error' or 'gradient', got {unsupported!r}")
        self.model, self.composite, self.backend, self.unsupported = model, composite, backend, unsupported
        # one per pass: layers may keep their outputs for the backward within it (time for memory)
        self.budget = _ops.SaveBudget()
        self.workspace = _ops.Workspace()
        self.merged: Dict[int, nn.Module] = {}       # id(linear) -> bn
        self.merged_bn: Dict[int, Tuple[nn.Module, bool]] = {}  # id(bn) -> (linear, zennit_compat)
        self.blocks: Dict[int, Tuple[nn.Module, str, ResidualSum]] = {}
        self.additions: Optional[FunctionalAdditions] = None
        for c in canonizers:
            if isinstance(c, MergeBatchNorm):
                for lin, bn in c.find(model):
                    if id(bn) in self.merged_bn:
                        continue
                    self.merged[id(lin)] = bn
                    self.merged_bn[id(bn)] = (lin, c.zennit_compat)
            elif isinstance(c, ResidualBlocks):
                for blk, kind in c.find(model):
                    self.blocks.setdefault(id(blk), (blk, kind, ResidualSum()))
            elif isinstance(c, FunctionalAdditions):
                self.additions = c
            else:
                raise TypeError(f"unsupported canonizer {c!r}")
        self.rules: Dict[int, Rule] = {}
        self.names: Dict[int, str] = {}
        ctx: dict = {}
        for name, mod in self._entries():
            self.names.setdefault(id(mod), name)
            rule = composite.rule_for(ctx, name, mod)
            if rule is not None:
                self.rules[id(mod)] = rule
        self._swapped: List[Tuple[nn.Module, bool, Any]] = []
        self._last_out: Dict[int, torch.Tensor] = {}
        self._act_chain: Optional[Tuple[torch.Tensor, int]] = None  # last _CaptumActivation output

    def _entries(self):
        out, seen = [], set()

        def visit(prefix, m):
            if id(m) in seen:
                return
            seen.add(id(m))
            out.append((prefix, m))
            if isinstance(m, LINEAR_TYPES):  # its helpers (a padding module) are part of the layer
                return
            for cname, c in m._modules.items():
                if c is not None:
                    visit(f"{prefix}.{cname}" if prefix else cname, c)
            if id(m) in self.blocks:
                out.append((f"{prefix}.canonizer_sum" if prefix else "canonizer_sum", self.blocks[id(m)][2]))

        visit("", self.model)
        return out

    # -- installing -------------------------------------------------------------------------

    def _swap(self, m: nn.Module, fn) -> None:
        had = "forward" in m.__dict__
        self._swapped.append((m, had, m.__dict__.get("forward")))
        m.__dict__["forward"] = fn

    def restore(self) -> None:
        for m, had, old in reversed(self._swapped):
            if had:
                m.__dict__["forward"] = old
            else:
                m.__dict__.pop("forward", None)
        self._swapped.clear()
        self._last_out.clear()
        self._act_chain = None

    def install(self, guard: ModelGuard) -> None:
        virtual = {id(mk) for _, _, mk in self.blocks.values()}
        for name, m in self._entries():
            if id(m) not in virtual:  # virtual sums run inside their block's forward
                self._install_one(guard, name, m)
        for blk, kind, marker in self.blocks.values():
            self._swap(blk, self._block_forward(blk, kind, marker))

    def _rule_error(self, name, m, rule):
        return RuleLayerError(f"rule {rule!r} cannot be applied to layer {name!r} ({type(m).__name__})")

    def _install_one(self, guard: ModelGuard, name: str, m: nn.Module) -> None:
        rule = self.rules.get(id(m))
        orig = m.forward
        if isinstance(m, ResidualSum) or type(m).__name__ == "Addition_Module":  # Captum's two-input add
            if rule is None or isinstance(rule, (Gradient, _PassLayer)):  # the gradient: R to both summands
                return
            if not isinstance(rule, Norm):
                raise self._rule_error(name, m, rule)
            self._swap(m, lambda a, b, _e=rule.stabilizer: _ops.sum_norm(a, b, _e))
            return
        if getattr(m, "inplace", False) is True:
            # Rules must see the activation's input intact, and their outputs are fresh tensors.
            guard.set_attr(m, "inplace", False)
        if isinstance(m, LINEAR_TYPES):
            bn = self.merged.get(id(m))
            weights = _provider(m, bn)
            if isinstance(rule, Norm):
                rule = Epsilon(rule.stabilizer)
            if rule is None or isinstance(rule, Gradient):
                if rule is None and self.unsupported == "error":
                    self._swap(m, self._raiser(
                        f"layer {name!r} ({type(m).__name__}) has no LRP rule in composite {self.composite!r}; "
                        "map it to a rule, or pass unsupported='gradient' to let relevance cross it as gradient"))
                elif bn is not None:
                    self._swap(m, _layer_forward(m, name, lambda x, g: self._record(m, _plain_linear(x, weights, g))))
                return
            if isinstance(rule, Pass):
                raise self._rule_error(name, m, rule)
            if isinstance(rule, _PassLayer):
                self._swap(m, _layer_forward(m, name, lambda x, g: self._record(
                    m, _pass_layer(name, m, x, lambda t: _plain_linear(t, weights, g)))))
                return
            params = rule.params()
            if params is None:
                raise self._rule_error(name, m, rule)
            self._swap(m, _layer_forward(m, name, lambda x, g: self._linear_call(x, weights, params, g, m)))
            return
        if id(m) in self.merged_bn:
            lin, compat = self.merged_bn[id(m)]
            if rule is not None and not isinstance(rule, (Pass, Gradient, _PassLayer)):
                raise self._rule_error(name, m, rule)
            self._swap(m, self._merged_bn_forward(name, m, lin, compat, isinstance(rule, (Pass, _PassLayer))))
            return
        if rule is None or isinstance(rule, Gradient):
            if rule is None and self.unsupported == "error" and not self._gradient_ok(m):
                kind = "layer" if not list(m.children()) else "module with its own parameters"
                self._swap(m, self._raiser(
                    f"unsupported {kind} {name!r} ({type(m).__name__}) for LRP: no rule in composite "
                    f"{self.composite!r} and no known relevance flow; map it to a rule, or pass "
                    "unsupported='gradient' to let relevance cross it as the gradient"))
            elif type(m).forward in _MAXPOOL_FUNCS and not m.return_indices:
                self._swap(m, self._max_pool_forward(m, orig))
            return
        if isinstance(rule, Pass):
            self._swap(m, lambda x, _f=orig: _ops.pass_through(x, _f))
        elif isinstance(rule, _PassLayer):
            self._swap(m, lambda x, _f=orig: _pass_layer(name, m, x, _f))
        elif isinstance(rule, _CaptumActivation):
            self._swap(m, lambda x, _f=orig: self._captum_activation(x, _f))
        elif isinstance(rule, Norm):
            self._swap(m, lambda x, _f=orig, _e=rule.stabilizer: _ops.norm_rule(x, _f, _e))
        elif isinstance(m, BATCHNORM_TYPES) and rule.params() is not None:
            params = rule.params()
            self._swap(m, lambda x, _m=m, _p=params: self._bn_call(x, _m, _p))
        else:
            raise self._rule_error(name, m, rule)

    @staticmethod
    def _max_pool_forward(m, orig):
        pool, d = _MAXPOOL_FUNCS[type(m).forward]

        def fn(t):
            return pool(t, m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode, return_indices=True)

        def fwd(x):
            if x.dim() != d + 2:  # unbatched input: autograd's own op
                return orig(x)
            return _ops.max_pool(x, fn)
        return fwd

    def _gradient_ok(self, m: nn.Module) -> bool:
        if list(m.children()):
            return not list(m.parameters(recurse=False))
        return isinstance(m, GRADIENT_TYPES + ACTIVATION_TYPES + BATCHNORM_TYPES + (ResidualSum,))

    @staticmethod
    def _raiser(msg):
        def fwd(*a, **k):
            raise _Unsupported(msg)
        return fwd

    def _linear_call(self, x, weights, params, geom, m):
        return self._record(m, _ops.lrp_layer(x, weights, params, geom, self.backend, self.budget, self.workspace))

    def _captum_activation(self, x, fn):
        prev = self._act_chain
        pos = prev[1] + 1 if prev is not None and prev[0] is x else 1
        if pos % 2:
            out = _ops.pass_through(x, fn)
        else:
            out = fn(x)
            if out is x:  # Captum's hooks run the layer on a copy: a fresh tensor either way
                out = x.view_as(x)
        self._act_chain = (out, pos)
        return out

    def _record(self, m, z):
        if id(m) in self.merged:
            self._last_out[id(m)] = z
        return z

    def _bn_call(self, x, m, params):
        if params.wmod or params.zero_bias:
            return self._captum_bn(x, m, params)
        weights, geom = _bn_as_layer(m, x)
        return _ops.lrp_layer(x, weights, params, geom, self.backend, self.budget, self.workspace)

    @staticmethod
    def _captum_bn(x, m, params):
        """Captum's γ/α1β0 on a BatchNorm modify its weight γ, hence the shift ``β − μγ'/σ``
        too (``β`` → 0 with ``set_bias_to_zero``): the ε rule of ``z' = (γ'/σ)·x + β' − μγ'/σ``."""
        var = m.running_var.detach()
        sigma = (var + m.eps) ** 0.5
        g = m.weight.detach() if m.weight is not None else torch.ones_like(var)
        g = g + params.gamma * g.clamp(min=0) if params.wmod == "gamma" else g.clamp(min=0) if params.wmod else g
        beta = m.bias.detach() if m.bias is not None and not params.zero_bias else torch.zeros_like(var)
        scale = g / sigma
        shift = beta - m.running_mean.detach() * scale
        shape = (-1,) + (1,) * (x.dim() - 2)
        return _ops.diag_epsilon(x, m.__class__.forward.__get__(m), scale.view(shape).to(x.dtype),
                                 shift.view(shape).to(x.dtype), params.eps)

    def _merged_bn_forward(self, name, bn, lin, compat, pass_rule):
        lin_name = self.names.get(id(lin), "?")

        def ident(t):
            if not compat:
                return t
            c = bn.num_features
            return F.batch_norm(t, t.new_zeros(c), t.new_ones(c), t.new_ones(c), t.new_zeros(c), False, 0.0, bn.eps)

        def fwd(x):
            prev = self._last_out.pop(id(lin), None)
            if prev is None or prev is not x:
                raise RuntimeError(
                    f"BatchNorm canonizer: {name!r} was merged into {lin_name!r} (the layer before it in module "
                    f"order) but does not consume that layer's output in the forward pass; pass canonizers "
                    "without MergeBatchNorm, or MergeBatchNorm(pairs=[...]) naming the right layers")
            if not compat:  # the identity, forward and backward: no op, no copy
                return x
            return _ops.pass_through(x, ident) if pass_rule else ident(x)
        return fwd

    def _block_forward(self, blk, kind, marker):
        rule = self.rules.get(id(marker))
        if rule is not None and not isinstance(rule, (Norm, Gradient)):
            raise self._rule_error(self.names.get(id(marker)), marker, rule)
        eps = rule.stabilizer if isinstance(rule, Norm) else None

        def add(a, b):
            return a + b if eps is None else _ops.sum_norm(a, b, eps)

        if kind == "basic":
            def fwd(x):
                out = blk.relu(blk.bn1(blk.conv1(x)))
                out = blk.bn2(blk.conv2(out))
                identity = x if blk.downsample is None else blk.downsample(x)
                return blk.relu(add(identity, out))
        else:
            def fwd(x):
                out = blk.relu(blk.bn1(blk.conv1(x)))
                out = blk.relu(blk.bn2(blk.conv2(out)))
                out = blk.bn3(blk.conv3(out))
                identity = x if blk.downsample is None else blk.downsample(x)
                return blk.relu(add(identity, out))
        return fwd


def _pass_layer(name: str, m: nn.Module, x: torch.Tensor, fn) -> torch.Tensor:
    out = _ops.pass_through(x, fn)
    if out.shape != x.shape:
        raise RuntimeError(f"layer {name!r} ({type(m).__name__}): the identity rule hands the output relevance "
                           f"to the input unchanged, so the layer must keep the shape; got {tuple(x.shape)} -> "
                           f"{tuple(out.shape)}")
    return out


def _plain_linear(x, weights, geom):
    w, b = weights()
    if geom is None:
        return F.linear(x, w, b)
    d = len(geom.stride)
    return torch.convolution(pad_input(x, geom), w, b, geom.stride, geom.padding, geom.dilation, False, (0,) * d,
                             geom.groups)


@dataclass
class LRPResult:
    output: torch.Tensor
    relevance: Union[torch.Tensor, Tuple[torch.Tensor, ...]]  # a tuple when the inputs were a tuple
    layers: Dict[str, torch.Tensor] = field(default_factory=dict)


def _leaves_of(xs: Tuple[torch.Tensor, ...]) -> List[torch.Tensor]:
    """One detached leaf per distinct input tensor (a tensor passed twice gets its full relevance
    in both places); non-floating inputs stay as they are (autograd then refuses them)."""
    seen: Dict[int, torch.Tensor] = {}
    out = []
    for t in xs:
        if id(t) not in seen:
            seen[id(t)] = (t.detach().requires_grad_(True)
                           if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) else t)
        out.append(seen[id(t)])
    return out


def run_lrp(model: nn.Module, x: Union[torch.Tensor, Tuple[torch.Tensor, ...]],
            grad_out: Callable[[torch.Tensor], torch.Tensor], *,
            composite="epsilon_plus", canonizers="auto", backend: str = "auto", unsupported: str = "error",
            layers: Sequence[str] = (), forward_args: Sequence = (), composite_kwargs: Optional[dict] = None,
            check_mode: bool = True, check_input: bool = True) -> LRPResult:
    """The engine behind :func:`lrp` and the drop-ins: ``grad_out(output)`` is the output relevance.

    ``x`` may be a tuple of inputs (``model(*x, *forward_args)``); the relevance is then a tuple
    with one tensor per input.  ``check_input=False`` skips the input checks (the Captum drop-in
    lets torch report bad inputs, as Captum does)."""
    multi = isinstance(x, tuple)
    xs = x if multi else (x,)
    if check_input:
        for i, xi in enumerate(xs):
            _validate.check_input(xi, f"x[{i}]" if multi else "x")
    if check_mode:
        _validate.check_mode(model)
    comp = resolve_composite(composite, composite_kwargs)
    canon = _canonizers(canonizers, comp)
    run = _Run(model, comp, canon, backend, unsupported)
    targets = {name: _validate.find_layer(model, name) for name in layers}
    captured: Dict[str, List[torch.Tensor]] = {name: [] for name in targets}
    try:
        with ModelGuard(model) as guard:
            for name, mod in targets.items():
                mod.register_forward_hook(_capture_hook(name, captured))
            run.install(guard)
            xgs = _leaves_of(xs)
            adds = (_AdditionMode(run.additions.stabilizer, xgs) if run.additions is not None
                    else contextlib.nullcontext())
            with torch.enable_grad():
                try:
                    with adds:
                        out = model(*xgs, *forward_args)
                except _Unsupported as e:
                    raise TypeError(str(e)) from None
                if not isinstance(out, torch.Tensor):
                    _validate.check_output(out)
                go = grad_out(out)
                rels = torch.autograd.grad(out, xgs, go)
    finally:
        run.restore()
    rel = tuple(rels) if multi else rels[0]
    lay = {}
    for name, vals in captured.items():
        if not vals:
            raise RuntimeError(f"layer {name!r} was not called during the forward pass")
        if len(vals) > 1:
            raise ValueError(f"layer {name!r} ran {len(vals)} times in one forward pass; its relevance is "
                             "ambiguous — choose a layer that runs once")
        if vals[0] is None:
            raise RuntimeError(f"no relevance reached layer {name!r}")
        lay[name] = vals[0]
    return LRPResult(out.detach(), rel, lay)


def _capture_hook(name, store):
    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer {name!r} returns {type(output).__name__}; relevance needs a tensor output")
        slot = len(store[name])
        store[name].append(None)
        if output.requires_grad:
            def grab(g):
                store[name][slot] = g.detach()
            output.register_hook(grab)
    return hook


def lrp(model: nn.Module, x: torch.Tensor, target: _validate.TargetLike = None, *,
        composite: Any = "epsilon_plus", canonizers: Any = "auto", backend: str = "auto",
        unsupported: str = "error", init: str = "score", layers: Optional[Sequence[str]] = None,
        composite_kwargs: Optional[dict] = None, forward_args: Sequence = ()):
    """Layer-wise Relevance Propagation of the target score to the input.

    Starting from ``R = f_t(x)`` at the target logit (``init="score"``; ``"one_hot"`` starts from 1,
    as Zennit's usual one-hot output attribution), each layer redistributes relevance to its
    inputs, ``R_i = Σ_j q_ij(rule) R_j``; e.g. the ε rule ``R_i = Σ_j x_i w_ji / (z_j + ε·sign(z_j)) R_j``
    (``sign(0) = +1``).  Conservative rules (z⁺, αβ, ε without bias, as ε → 0) keep ``Σ_i R_i = f_t(x)``.
    Bach et al. 2015 (PLoS ONE 10(7)); Montavon et al. 2019 ("Layer-Wise Relevance Propagation:
    An Overview").

    Parameters
    ----------
    model : nn.Module returning class scores (N, K), in eval mode.
    x : Tensor (N, ...) floating point.
    target : int | sequence of N ints | tensor (N,) | None (the predicted class).
    composite : the rule of each layer.  A preset name — ``"epsilon_plus"`` (default),
        ``"epsilon_plus_flat"``, ``"epsilon_alpha2_beta1"``, ``"epsilon_alpha2_beta1_flat"``,
        ``"epsilon_gamma_box"`` (needs ``composite_kwargs={"low": ..., "high": ...}``) — with
        Zennit's layer assignment; a :class:`Composite`; a dict ``{module type or name: rule}``
        (rules as :class:`Rule` instances or names; activations, pooling, BatchNorm and residual
        sums get the presets' pass/norm rules); or a Zennit ``Composite`` (its rules are mapped
        to these kernels and give Zennit's numbers).
    canonizers : ``"auto"`` (default: the composite's own, else BatchNorm merging, ResNet
        residual blocks and inline additions), None, or a list of :class:`MergeBatchNorm`,
        :class:`ResidualBlocks`, :class:`FunctionalAdditions`, names ``"merge_batchnorm"``/
        ``"residual"``/``"functional_additions"``, or Zennit canonizers.  The model is never
        modified (merged weights are computed per call).
    backend : ``"auto"``, ``"reference"`` (torch) or ``"triton"`` for the linear/conv rule ops.
    unsupported : ``"error"`` (default) raises for a module without a rule or known relevance
        flow, naming its path; ``"gradient"`` lets relevance cross such modules as the gradient.
    init : ``"score"`` (default) or ``"one_hot"``: the relevance put on the target logit.
    layers : module names whose output relevance is returned as well.
    composite_kwargs : keyword arguments of a preset named in ``composite``.
    forward_args : extra positional arguments of ``model(x, *forward_args)``.

    Returns
    -------
    Tensor shaped like ``x`` (the input relevance); with ``layers``, a tuple
    ``(relevance, {name: relevance of that module's output})``.
    """
    if init not in ("score", "one_hot"):
        raise ValueError(f"init must be 'score' or 'one_hot', got {init!r}")
    if not isinstance(x, torch.Tensor):  # one input tensor here (the engine also takes a tuple)
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")

    def grad_out(out):
        out2 = _validate.check_output(out)
        t = _validate.resolve_target(target, out2)
        oh = torch.zeros_like(out2).scatter_(1, t.unsqueeze(1), 1.0)
        if init == "score":
            oh = oh * out2.detach()
        return oh.reshape(out.shape)

    res = run_lrp(model, x, grad_out, composite=composite, canonizers=canonizers, backend=backend,
                  unsupported=unsupported, layers=tuple(layers or ()), forward_args=forward_args,
                  composite_kwargs=composite_kwargs)
    if layers:
        return res.relevance, res.layers
    return res.relevance
