"""Zennit-style drop-in: ``Gradient(model, composite)`` as Zennit's attributor, on xaikernels' LRP.

::

    from xaikernels.zennit import Gradient, EpsilonPlusFlat, ResNetCanonizer
    with Gradient(model, EpsilonPlusFlat(canonizers=[ResNetCanonizer()])) as attributor:
        output, relevance = attributor(x, torch.eye(1000)[target])

The composite may also be a real Zennit ``Composite`` (``zennit.composites.EpsilonPlusFlat(...)``)
when zennit is importable: its rules are read off its hook objects and mapped to
:mod:`xaikernels.methods.lrp` rules (ε, z⁺, αβ, γ, z^B, flat, w², norm, pass with float
stabilisers), its canonizers to ours (BatchNorm merging reproduces Zennit's exactly), and the
relevance is the same as Zennit's.  No hooks are used: a call outside ``with`` installs the rules
(as the backward of the layers' own autograd Functions) for one forward/backward pass and removes
them; inside ``with attributor:`` they stay installed for the block, so the model's own forward
and backward give the relevance there, as with Zennit's registered composites.

Zennit's attributor API is here too (``Gradient``, ``SmoothGrad``, ``IntegratedGradients``,
``Occlusion``, ``occlude_independent``, ``identity``, ``constant``) with Zennit's semantics
(one model call per iteration or window, Zennit's noise and path, the output attribution's
precedence); with a composite every iteration runs the one-pass LRP engine.  A Zennit
composite with rules the engine lacks (guided backprop, DeconvNet, β-smooth ReLU rules;
transposed convolutions) runs on its own hooks under ``backend="auto"``
(``attributor.last_backend`` says which ran).  Zennit's own ``tests/test_attribution.py``
passes 9314/9314 with the import swapped.  The presets support Zennit's registration API:
``with EpsilonPlusFlat().context(model) as modified:`` makes the input gradient the relevance
(``register`` / ``remove`` too), without hooks, and hands the model back unchanged.

Zennit: Anders et al. 2021, "Software for Dataset-wide XAI: From Local Explanations to Global
Insights with Zennit, CoRelAy, and ViRelAy".
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from xaikernels.methods import lrp as _lrp
from xaikernels.methods.lrp import (AlphaBeta, Composite, Epsilon, Flat, Gamma, MergeBatchNorm, Norm, Pass,
                                    ResidualBlocks, ResidualSum, Rule, WSquare, ZBox, ZPlus)

__all__ = ["Attributor", "Gradient", "SmoothGrad", "IntegratedGradients", "Occlusion", "occlude_independent",
           "identity", "constant", "EpsilonPlus", "EpsilonPlusFlat", "EpsilonAlpha2Beta1", "EpsilonAlpha2Beta1Flat",
           "EpsilonGammaBox", "SequentialMergeBatchNorm", "ResNetCanonizer", "ZennitComposite",
           "convert_canonizer", "convert_rule"]


# ---------------------------------------------------------------------------------------------
# Zennit-named presets and canonizers (our objects)
# ---------------------------------------------------------------------------------------------

def _maps(layer_map, first_map, zero_params, name):
    """Zennit's preset arguments as ours: ``None`` maps allowed, Zennit rule objects converted
    (:func:`convert_rule`); ``zero_params`` (parameters a rule zeroes) is not implemented for
    the presets."""
    if zero_params not in (None, [], ()):
        raise NotImplementedError(f"{name}(zero_params={zero_params!r}) is not supported by xaikernels' presets; "
                                  "pass zennit's own composite to xaikernels.zennit.Gradient instead")

    def conv(m):
        return [(t, convert_rule(r) if _lrp._is_zennit(r) else r) for t, r in (m or ())]
    return conv(layer_map), conv(first_map)


def EpsilonPlus(epsilon=1e-6, stabilizer=1e-6, layer_map=None, zero_params=None, canonizers=None) -> Composite:
    """Zennit's ``EpsilonPlus``: z⁺ on convolutions, ε on linear layers (Zennit's signature)."""
    lm, _ = _maps(layer_map, None, zero_params, "EpsilonPlus")
    return _lrp.epsilon_plus(epsilon, stabilizer, lm, canonizers=list(canonizers or []))


def EpsilonPlusFlat(epsilon=1e-6, stabilizer=1e-6, layer_map=None, first_map=None, zero_params=None,
                    canonizers=None) -> Composite:
    """Zennit's ``EpsilonPlusFlat``: flat on the first linear-like layer, then as ``EpsilonPlus``."""
    lm, fm = _maps(layer_map, first_map, zero_params, "EpsilonPlusFlat")
    return _lrp.epsilon_plus_flat(epsilon, stabilizer, lm, fm, canonizers=list(canonizers or []))


def EpsilonAlpha2Beta1(epsilon=1e-6, stabilizer=1e-6, layer_map=None, zero_params=None,
                       canonizers=None) -> Composite:
    """Zennit's ``EpsilonAlpha2Beta1``: α2β1 on convolutions, ε on linear layers."""
    lm, _ = _maps(layer_map, None, zero_params, "EpsilonAlpha2Beta1")
    return _lrp.epsilon_alpha2_beta1(epsilon, stabilizer, lm, canonizers=list(canonizers or []))


def EpsilonAlpha2Beta1Flat(epsilon=1e-6, stabilizer=1e-6, layer_map=None, first_map=None, zero_params=None,
                           canonizers=None) -> Composite:
    """Zennit's ``EpsilonAlpha2Beta1Flat``."""
    lm, fm = _maps(layer_map, first_map, zero_params, "EpsilonAlpha2Beta1Flat")
    return _lrp.epsilon_alpha2_beta1_flat(epsilon, stabilizer, lm, fm, canonizers=list(canonizers or []))


def EpsilonGammaBox(low, high, epsilon=1e-6, gamma=0.25, stabilizer=1e-6, layer_map=None, first_map=None,
                    zero_params=None, canonizers=None) -> Composite:
    """Zennit's ``EpsilonGammaBox``: z^B on the first convolution, γ on the others, ε on linear layers."""
    lm, fm = _maps(layer_map, first_map, zero_params, "EpsilonGammaBox")
    return _lrp.epsilon_gamma_box(low, high, epsilon, gamma, stabilizer, lm, fm, canonizers=list(canonizers or []))


def SequentialMergeBatchNorm() -> MergeBatchNorm:
    """Zennit's ``SequentialMergeBatchNorm`` (exact merge: the BatchNorm becomes the identity)."""
    return MergeBatchNorm()


def ResNetCanonizer() -> List[Any]:
    """Zennit's ``ResNetCanonizer``: BatchNorm merging plus residual blocks (a list; pass it as
    ``canonizers=ResNetCanonizer()`` or splice it into a list)."""
    return [MergeBatchNorm(), ResidualBlocks()]


# ---------------------------------------------------------------------------------------------
# Real zennit objects → ours
# ---------------------------------------------------------------------------------------------

def _nonlocals(fn) -> Dict[str, Any]:
    try:
        return dict(inspect.getclosurevars(fn).nonlocals)
    except (TypeError, ValueError):
        return {}


def _stabilizer(hook) -> float:
    from zennit.core import Stabilizer

    fn = _nonlocals(hook.gradient_mapper).get("stabilizer_fn")
    if isinstance(fn, Stabilizer) and not fn.clip and not fn.norm_scale:
        return float(fn.epsilon)
    raise NotImplementedError(f"zennit rule {type(hook).__name__} uses a custom stabilizer ({fn!r}); only float "
                              "stabilizers (z + eps*sign(z)) are supported")


def _check_no_zero_params(hook, allowed=(None, [], ("bias",), ["bias"])):
    for i, pm in enumerate(getattr(hook, "param_modifiers", ())):
        zp = getattr(pm, "zero_params", None)
        if zp in (None, []):
            continue
        # The rules themselves zero the bias of the x⁻ terms; a user's zero_params would show on
        # the first modifier.
        if i == 0:
            raise NoKernelError(f"zennit rule {type(hook).__name__} with zero_params={zp!r} is not supported")


class NoKernelError(NotImplementedError):
    """A Zennit rule or canonizer with no xaikernels equivalent."""


def convert_rule(hook) -> Rule:
    """Our rule for a Zennit rule (hook) instance; raises for rules we do not implement."""
    from zennit import rules as zr

    t = type(hook)
    if t is zr.Pass:
        return Pass()
    if t is zr.Epsilon:
        _check_no_zero_params(hook)
        return Epsilon(_stabilizer(hook))
    if t is zr.ZPlus:
        _check_no_zero_params(hook)
        return ZPlus(_stabilizer(hook))
    if t is zr.AlphaBeta:
        _check_no_zero_params(hook)
        nl = _nonlocals(hook.reducer)
        return AlphaBeta(float(nl["alpha"]), float(nl["beta"]), _stabilizer(hook))
    if t is zr.Gamma:
        _check_no_zero_params(hook)
        gamma = _nonlocals(hook.param_modifiers[0].modifier)["gamma"]
        return Gamma(float(gamma), _stabilizer(hook))
    if t is zr.ZBox:
        _check_no_zero_params(hook)
        low = _nonlocals(hook.input_modifiers[1])["low"]
        high = _nonlocals(hook.input_modifiers[2])["high"]
        return ZBox(low, high, _stabilizer(hook))
    if t is zr.Flat:
        return Flat(_stabilizer(hook))
    if t is zr.WSquare:
        _check_no_zero_params(hook)
        return WSquare(_stabilizer(hook))
    if t is zr.Norm:
        return Norm(_stabilizer(hook))
    raise NoKernelError(f"zennit rule {t.__module__}.{t.__name__} has no xaikernels kernel")


def convert_canonizer(canonizer) -> List[Any]:
    """Our canonizers for a Zennit canonizer (composite canonizers are flattened)."""
    from zennit import canonizers as zc

    if isinstance(canonizer, zc.CompositeCanonizer):
        out: List[Any] = []
        for c in canonizer.canonizers:
            out.extend(convert_canonizer(c))
        return out
    if isinstance(canonizer, zc.NamedMergeBatchNorm):
        return [MergeBatchNorm(zennit_compat=True, pairs=canonizer.name_map)]
    if isinstance(canonizer, zc.SequentialMergeBatchNorm):
        return [MergeBatchNorm(zennit_compat=True)]
    try:
        from zennit import torchvision as ztv
    except Exception:  # zennit.torchvision needs torchvision (or its stand-in)
        ztv = None
    if ztv is not None and isinstance(canonizer, ztv.ResNetBasicBlockCanonizer):
        return [ResidualBlocks(types=(_tv_class("BasicBlock"),))]
    if ztv is not None and isinstance(canonizer, ztv.ResNetBottleneckCanonizer):
        return [ResidualBlocks(types=(_tv_class("Bottleneck"),))]
    raise NoKernelError(f"zennit canonizer {type(canonizer).__name__} has no xaikernels equivalent")


def _tv_class(name):
    import sys

    return getattr(sys.modules["torchvision.models.resnet"], name)


class ZennitComposite:
    """Adapter: a Zennit ``Composite`` seen through :meth:`rule_for` (Zennit's own module map)."""

    def __init__(self, composite):
        if getattr(composite, "handles", None):
            raise RuntimeError("this zennit composite is registered on a model (its hooks are live); remove it "
                               "(composite.remove()) before passing it to xaikernels")
        self.composite = composite
        self.canonizers = list(composite.canonizers or [])
        self._rules: Dict[int, Rule] = {}
        self._sum = None

    def rule_for(self, ctx: dict, name: str, module: nn.Module) -> Optional[Rule]:
        if isinstance(module, ResidualSum):
            # Zennit's ResNet canonizer adds a ``zennit.layer.Sum`` module at this position.
            if self._sum is None:
                from zennit.layer import Sum

                self._sum = Sum()
            module = self._sum
        hook = self.composite.module_map(ctx, name, module)
        if hook is None:
            return None
        if id(hook) not in self._rules:
            self._rules[id(hook)] = convert_rule(hook)
        return self._rules[id(hook)]

    def __repr__(self):
        return f"zennit {type(self.composite).__name__}"


# ---------------------------------------------------------------------------------------------
# Attributors (Zennit's ``zennit.attribution`` API)
# ---------------------------------------------------------------------------------------------

def constant(obj):
    """A function that returns ``obj`` whatever it is called with (Zennit's ``constant``)."""
    def wrapped_const(*args, **kwargs):
        return obj
    return wrapped_const


def identity(obj):
    """``obj`` itself (Zennit's default output attribution: the output)."""
    return obj


def occlude_independent(input, mask, fill_fn=torch.zeros_like, invert=False):
    """``input`` where ``mask`` is True, ``fill_fn(input)`` where it is False (``invert``
    swaps the two), as Zennit's ``occlude_independent``."""
    if invert:
        mask = ~mask
    return input * mask + ~mask * fill_fn(input)


def _as_output_fn(attr_output):
    if attr_output is None:
        return identity
    return attr_output if callable(attr_output) else constant(attr_output)


def _zennit_registered(composite) -> bool:
    """A Zennit composite whose hooks the user registered on the model (``composite.handles``)."""
    return _lrp._is_zennit(composite) and bool(getattr(composite, "handles", None))


class Attributor:
    """Zennit's ``Attributor``: an optional composite, a default output attribution
    (``attr_output``: a tensor, a function of the output, or None for the output itself) and a
    context-manager protocol; ``attributor(input, attr_output=None) -> (output, attribution)``.

    A composite is applied by xaikernels' one-pass LRP engine: per call, or, inside ``with``,
    installed on the model for the block (Zennit registers its composite there), so that the
    model's own forward and backward give the relevance; leaving the block hands the model back
    unchanged.  A Zennit composite that the user registered on the model is honoured as Zennit
    does (its hooks compute the gradient)."""

    def __init__(self, model, composite=None, attr_output=None):
        self.model = model
        self.composite = composite
        self.attr_output_fn = _as_output_fn(attr_output)
        self._inactive = False
        self._held = None  # the undo of a registration made on entering ``with``

    def __enter__(self):
        if self._held is None and self.composite is not None and not _zennit_registered(self.composite):
            self._held = self._register()
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        held, self._held = self._held, None
        if held is not None:
            held()
        return False

    def _register(self):
        """Install the composite on the model for a ``with`` block; return its undo, or None
        (then every call installs and removes the rules itself)."""
        return None

    def __call__(self, input, attr_output=None):
        if not isinstance(input, torch.Tensor):  # the engine would take a tuple as several inputs
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        fn = self.attr_output_fn if attr_output is None else _as_output_fn(attr_output)
        return self.forward(input, fn)

    @property
    def inactive(self):
        """A context in which the composite is not applied (plain gradients), as Zennit's."""
        import contextlib

        @contextlib.contextmanager
        def ctx():
            prev, self._inactive = self._inactive, True
            held, self._held = self._held, None
            if held is not None:
                held()  # the model's own layers for the block; the rules come back after it
            try:
                yield self
            finally:
                self._inactive = prev
                if held is not None:
                    self._held = self._register()
        return ctx()

    def forward(self, input, attr_output_fn):  # pragma: no cover - abstract
        raise NotImplementedError


class Gradient(Attributor):
    """Zennit's ``Gradient`` attributor on xaikernels' one-pass LRP.

    ``attributor(input, attr_output=None) -> (output, attribution)``: the vector–Jacobian
    product of the output attribution (a tensor shaped like the output, or a function of the
    output; by default the output itself), rule-modified when a composite is given (LRP).

    Parameters
    ----------
    model : nn.Module.
    composite : None (plain gradient), a preset name, an xaikernels :class:`Composite` or map, or a
        Zennit ``Composite``.
    attr_output : default output attribution (tensor or callable).
    create_graph, retain_graph : as :func:`torch.autograd.grad` for the plain gradient (Zennit's
        arguments); the LRP engine's relevance has no graph, so ``create_graph=True`` with a
        composite raises ``ValueError``.
    canonizers : ``"auto"`` takes the composite's canonizers (Zennit semantics: none unless the
        composite has them); or an explicit list.
    backend : see :func:`xaikernels.lrp`.
    unsupported : ``"gradient"`` (default, Zennit's behaviour for modules without a rule) or ``"error"``.

    A Zennit composite whose rules or layers the engine lacks (Zennit's ReLU rules for guided
    backprop / DeconvNet / β-smooth, transposed convolutions, unknown canonizers) is computed by
    the composite's own hooks when ``backend="auto"`` (``last_backend == "zennit"``: Zennit's
    numbers at Zennit's speed); with an explicit backend it raises.
    """

    def __init__(self, model, composite=None, attr_output=None, create_graph=False, retain_graph=None, *,
                 canonizers: Any = "auto", backend: str = "auto", unsupported: str = "gradient"):
        super().__init__(model=model, composite=composite, attr_output=attr_output)
        self.create_graph = create_graph
        self.retain_graph = retain_graph
        self.canonizers = canonizers
        self.backend = backend
        self.unsupported = unsupported
        #: what computed the last attribution: "xaikernels" (the one-pass LRP engine),
        #: "autograd" (no composite, or inactive), "zennit" (a Zennit composite's own hooks)
        self.last_backend = None
        self._held_backend = None

    def _plain(self) -> bool:
        return self.composite is None or self._inactive or _zennit_registered(self.composite)

    def _register(self):
        """Inside ``with``: the rules installed on the model (Zennit's semantics: the model's own
        forward and backward, called by the user too, give the relevance), by the engine, or by
        a Zennit composite's hooks where the engine lacks a rule (backend "auto")."""
        comp = _lrp.resolve_composite(self.composite)
        if any(isinstance(c, _lrp.FunctionalAdditions) for c in _lrp._canonizers(self.canonizers, comp)):
            return None  # needs the inputs of each call: the per-call engine
        try:
            reg = _lrp._Registration(self.model, comp, self.canonizers, self.backend, self.unsupported)
        except (NoKernelError, _lrp.RuleLayerError):
            undo = self._zennit_hooks()
            if undo is None:
                raise
            return undo
        self._held_backend = "xaikernels"
        return reg.remove

    def _zennit_hooks(self):
        """A Zennit composite with rules or layers the engine lacks (ReLU rules such as guided
        backprop, transposed convolutions): with backend "auto" its own hooks compute it, so the
        attribution is Zennit's.  Registers them and returns their undo; None where that is not
        allowed (an explicit backend, or not a Zennit composite): the caller re-raises.  The
        engine installs its rules before the model runs, so nothing was computed before."""
        if self.backend != "auto" or not _lrp._is_zennit(self.composite):
            return None
        self.composite.register(self.model)
        self._held_backend = "zennit"
        return self.composite.remove

    def grad(self, input, attr_output_fn):
        """(output, attribution) of ``model`` at ``input`` for the output attribution function."""
        held = self._held is not None
        if self.create_graph and not self._plain() and (not held or self._held_backend == "xaikernels"):
            raise ValueError("create_graph=True needs a differentiable attribution; xaikernels' LRP relevance has no "
                             "graph (use composite=None for higher-order gradients)")
        if held or self._plain():
            if not input.requires_grad:
                input.requires_grad = True
            output = self.model(input)
            gradient, = torch.autograd.grad((output,), (input,), grad_outputs=(attr_output_fn(output),),
                                            create_graph=self.create_graph, retain_graph=self.retain_graph)
            self.last_backend = self._held_backend if held else "autograd"
            return output, gradient

        def grad_out(out):
            g = attr_output_fn(out.detach())
            g = torch.as_tensor(g, dtype=out.dtype, device=out.device)
            if g.shape != out.shape:
                try:
                    g = g.expand(out.shape)
                except RuntimeError:
                    raise ValueError(f"attr_output of shape {tuple(g.shape)} does not match the model output "
                                     f"{tuple(out.shape)}") from None
            return g

        try:
            res = _lrp.run_lrp(self.model, input.detach(), grad_out, composite=self.composite,
                               canonizers=self.canonizers, backend=self.backend, unsupported=self.unsupported,
                               check_mode=False)
        except (NoKernelError, _lrp.RuleLayerError):
            undo = self._zennit_hooks()
            if undo is None:
                raise
            self._held = undo  # for this call only: the held path runs the hooked model
            try:
                return self.grad(input, attr_output_fn)
            finally:
                self._held = None
                undo()
        self.last_backend = "xaikernels"
        return res.output, res.relevance

    def forward(self, input, attr_output_fn):
        return self.grad(input.view_as(input), attr_output_fn)


class SmoothGrad(Gradient):
    """Zennit's ``SmoothGrad``: the (rule-modified) gradient averaged over ``n_iter`` inputs with
    Gaussian noise of standard deviation ``noise_level · (max − min)`` of each example (drawn
    with ``torch.randn_like``, the last iteration noise-free, as Zennit)."""

    def __init__(self, model, composite=None, attr_output=None, create_graph=False, retain_graph=None,
                 noise_level=0.1, n_iter=20, **kwargs):
        super().__init__(model, composite, attr_output, create_graph, retain_graph, **kwargs)
        self.noise_level = noise_level
        self.n_iter = n_iter

    def forward(self, input, attr_output_fn):
        dims = tuple(range(1, input.ndim))
        std = self.noise_level * (input.amax(dims, keepdim=True) - input.amin(dims, keepdim=True))
        result = torch.zeros_like(input)
        for n in range(self.n_iter):
            eps = torch.zeros_like(input) if n == self.n_iter - 1 else torch.randn_like(input) * std
            output, gradient = self.grad(input + eps, attr_output_fn)
            result += gradient / self.n_iter
        return output, result


class IntegratedGradients(Gradient):
    """Zennit's ``IntegratedGradients``: ``n_iter`` right-endpoint steps ``α = k/n_iter`` from
    ``baseline_fn(input)`` (zeros by default) to the input, times ``input − baseline``."""

    def __init__(self, model, composite=None, attr_output=None, create_graph=False, retain_graph=None,
                 baseline_fn=None, n_iter=20, **kwargs):
        super().__init__(model, composite, attr_output, create_graph, retain_graph, **kwargs)
        self.baseline_fn = torch.zeros_like if baseline_fn is None else baseline_fn
        self.n_iter = n_iter

    def forward(self, input, attr_output_fn):
        baseline = self.baseline_fn(input)
        result = torch.zeros_like(input)
        for alpha in torch.linspace(1.0 / self.n_iter, 1.0, self.n_iter):
            output, gradient = self.grad(baseline + alpha * (input - baseline), attr_output_fn)
            result += gradient / self.n_iter
        result *= input - baseline
        return output, result  # the last step is the input itself


def _int_or_ints(obj) -> bool:
    return isinstance(obj, int) or isinstance(obj, tuple) and all(isinstance(e, int) for e in obj)


class Occlusion(Attributor):
    """Zennit's ``Occlusion``: for each window (``window``/``stride``: ints or tuples, trailing
    dimensions; an int is clipped to every dimension's size) the model sees
    ``occlusion_fn(input, mask)`` with ``mask`` True on the window (by default
    :func:`occlude_independent`: the window kept, the rest zero, as Zennit); the score,
    ``attr_output_fn(output)`` summed per example, is added over the window.  One model call
    per window, then one on the input."""

    def __init__(self, model, composite=None, attr_output=None, occlusion_fn=None, window=8, stride=8):
        super().__init__(model=model, composite=composite, attr_output=attr_output)
        if not _int_or_ints(window):
            raise TypeError("Occlusion window must either be an int, or a tuple of ints.")
        if not _int_or_ints(stride):
            raise TypeError("Occlusion stride must either be an int, or a tuple of ints.")
        self.occlusion_fn = occlusion_fn if occlusion_fn is not None else occlude_independent
        self.window = window
        self.stride = stride

    def _resolve_window_stride(self, input):
        window, stride = self.window, self.stride
        if isinstance(window, int):
            window = tuple(min(window, size) for size in input.shape[1:])
        if isinstance(stride, int):
            stride = tuple(min(stride, size) for size in input.shape[1:])
        if len(window) < input.ndim:
            window = tuple(input.shape)[:input.ndim - len(window)] + window
        if len(stride) < len(window):
            stride = window[:len(window) - len(stride)] + stride
        return window, stride

    def forward(self, input, attr_output_fn):
        import itertools

        window, stride = self._resolve_window_stride(input)
        root = torch.zeros_like(input, dtype=torch.bool)
        root[tuple(slice(0, w) for w in window)] = True
        result = torch.zeros_like(input)
        dims = tuple(range(input.ndim))
        for offset in itertools.product(*(range(0, size, st) for size, st in zip(input.shape, stride))):
            mask = root.roll(offset, dims)
            with torch.no_grad():
                output = self.model(self.occlusion_fn(input, mask))
            score = attr_output_fn(output).sum(tuple(range(1, output.ndim)))
            result += mask * score[(slice(None),) + (None,) * (input.ndim - 1)]
        return self.model(input), result
