"""Captum-API ``LimeBase``, ``Lime`` and ``KernelShap`` on the perturbation kernels (Captum 0.9).

``LimeBase(forward_func, interpretable_model, similarity_func, perturb_func,
perturb_interpretable_space, from_interp_rep_transform, to_interp_rep_transform)`` with
``attribute(inputs, target, additional_forward_args, n_samples=50, perturbations_per_eval=1,
show_progress=False, **kwargs)`` is Captum's generic surrogate trainer: one sample per
``perturb_func`` call (or generator step), sampled in the interpretable space and mapped to
the input with ``from_interp_rep_transform`` or sampled in the input space and mapped with
``to_interp_rep_transform``, ``perturbations_per_eval`` samples per forward call, one
``similarity_func`` weight per sample, and the interpretable model fitted on the lot.

``Lime(forward_func, interpretable_model=None, similarity_func=None, perturb_func=None)`` and
``KernelShap(forward_func)`` with ``attribute(inputs, baselines, target,
additional_forward_args, feature_mask, n_samples=25, perturbations_per_eval=1,
return_input_shape=True, show_progress=False)`` are subclasses, as in Captum.  With their
default sampler and transform they take the fast path: the binary samples are drawn from
``torch``'s global generator with Captum's own calls in Captum's order, each evaluation
batch's samples just before its forward call (so after ``torch.manual_seed`` the samples,
and the generator's state afterwards, are Captum's, also for a forward that itself draws
from the generator, such as dropout in training mode), the perturbed batches are built by
the fused Numba kernel, the default exponential-kernel similarities come from per-feature
sums (O(F) per sample) and the recognised surrogates (``SkLearnLasso``, ``SkLearnRidge``,
``SkLearnLinearRegression``, Captum's or ours) are fitted by the Numba kernels on float32
data, as Captum hands them, with scikit-learn's input checks, messages and
``ConvergenceWarning``.  (Where the coalition tables may apply — an eval-mode ``nn.Module``
on one image, see :class:`Lime` — all samples are drawn before the first forward call: the
same samples, but a forward drawing from the generator itself would see another state.)
Inputs or baselines that are not finite, and any other ``perturb_func`` / transform, run
Captum's per-sample loop; any other similarity is called per sample; any other model is
trained through its own ``fit``.

The surrogates here (``SkLearnLasso``, ``SkLearnRidge``, ``SkLearnLinearRegression`` on
``SkLearnLinearModel`` and ``LinearModel``) are ``nn.Module``s with the interface of
Captum's: callable (``x @ W.T + b``), ``representation()``, ``bias()``, ``classes()``,
``norm``, ``fit(DataLoader)``; Captum is not needed to use them.
"""
from __future__ import annotations

import inspect
import math
import sys
import time
import warnings
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from xaikernels.captum._base import PerturbationAttribution
from xaikernels.captum._common import _format_input_baseline, _run_forward, entry
from xaikernels.ops import perturb as P

__all__ = ["Lime", "KernelShap", "LimeBase", "get_exp_kernel_similarity_function", "default_perturb_func",
           "default_from_interp_rep_transform", "construct_feature_mask", "SkLearnLasso", "SkLearnRidge",
           "SkLearnLinearRegression"]


# ------------------------------------------------------------------------ interpretable models
class LinearModel(torch.nn.Module):
    """Captum's ``LinearModel`` interface without Captum: an ``nn.Module`` whose ``linear``
    (an ``nn.Linear``, built lazily by ``_construct_model_params`` when ``fit`` trains it) and
    optional ``norm`` give ``model(x) = linear(norm(x))``; ``representation()`` is the weight
    (out, F), ``bias()`` the intercept (out,), ``classes()`` the classifier's classes.
    ``fit(train_data, **kwargs)`` calls ``train_fn(self, dataloader=train_data,
    construct_kwargs=self.construct_kwargs, **kwargs)``."""

    SUPPORTED_NORMS: List[Optional[str]] = [None, "batch_norm", "layer_norm"]

    def __init__(self, train_fn: Callable, **kwargs) -> None:
        super().__init__()
        self.norm: Optional[torch.nn.Module] = None
        self.linear: Optional[torch.nn.Linear] = None
        self.train_fn = train_fn
        self.construct_kwargs = kwargs

    def _construct_model_params(self, in_features: Optional[int] = None, out_features: Optional[int] = None,
                                norm_type: Optional[str] = None, affine_norm: bool = False, bias: bool = True,
                                weight_values: Optional[Tensor] = None, bias_value: Optional[Tensor] = None,
                                classes: Optional[Tensor] = None) -> None:
        """(Re)build ``linear`` (and ``norm``): from ``weight_values`` (F,) or (out, F) when
        given, else ``in_features`` × ``out_features``.  Building the ``nn.Linear`` draws its
        initialisation from torch's global generator, as Captum's does."""
        if norm_type not in LinearModel.SUPPORTED_NORMS:
            raise ValueError(f"{norm_type} not supported. Please use {LinearModel.SUPPORTED_NORMS}")
        if weight_values is not None:
            in_features = weight_values.shape[-1]
            out_features = 1 if weight_values.dim() == 1 else weight_values.shape[0]
        if in_features is None or out_features is None:
            raise ValueError("Please provide `in_features` and `out_features` or `weight_values`")
        if norm_type == "batch_norm":
            self.norm = torch.nn.BatchNorm1d(in_features, eps=1e-8, affine=affine_norm)
        elif norm_type == "layer_norm":
            self.norm = torch.nn.LayerNorm(in_features, eps=1e-8, elementwise_affine=affine_norm)
        else:
            self.norm = None
        self.linear = torch.nn.Linear(in_features, out_features, bias=bias)
        if weight_values is not None:
            self.linear.weight.data = weight_values
        if bias_value is not None:
            if not bias:
                raise ValueError("`bias_value` is not None and bias is False")
            self.linear.bias.data = bias_value
        if classes is not None:
            self.linear.classes = classes

    def fit(self, train_data, **kwargs):
        """Train through ``train_fn`` on a DataLoader of (X, y[, w]) batches."""
        return self.train_fn(self, dataloader=train_data, construct_kwargs=self.construct_kwargs, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        assert self.linear is not None
        if self.norm is not None:
            x = self.norm(x)
        return self.linear(x)

    def representation(self) -> Tensor:
        """The fitted weight (out, F), detached (the bias is :meth:`bias`)."""
        assert self.linear is not None
        return self.linear.weight.detach()

    def bias(self) -> Optional[Tensor]:
        if self.linear is None or self.linear.bias is None:
            return None
        return self.linear.bias.detach()

    def classes(self) -> Optional[Tensor]:
        # (a regression's linear layer has no ``classes``: AttributeError, as Captum's)
        if self.linear is None or self.linear.classes is None:
            return None
        return self.linear.classes.detach()


class SkLearnLinearModel(LinearModel):
    """A :class:`LinearModel` trained like scikit-learn's ``sklearn_module`` (e.g.
    ``"linear_model.Lasso"``) built with ``kwargs``, on the float32 (X, y, w) it is handed
    (Captum's ``SkLearnLinearModel``).  Lasso (``alpha``, ``max_iter``, ``tol``), Ridge
    (``alpha``) and LinearRegression with their other settings at the defaults are fitted by
    the Numba kernels, with scikit-learn's input checks, error messages and
    ``ConvergenceWarning``; anything else by scikit-learn itself."""

    def __init__(self, sklearn_module: str, **kwargs) -> None:
        super().__init__(train_fn=sklearn_train_linear_model, **kwargs)
        self.sklearn_module = sklearn_module

    def fit(self, train_data, **kwargs):
        """``kwargs`` go to the scikit-learn model's ``fit``."""
        return super().fit(train_data=train_data, sklearn_trainer=self.sklearn_module, **kwargs)


class SkLearnLasso(SkLearnLinearModel):
    """``sklearn.linear_model.Lasso(**kwargs)`` as a :class:`LinearModel` (Lime's default
    surrogate, with ``alpha=0.01``)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(sklearn_module="linear_model.Lasso", **kwargs)

    def fit(self, train_data, **kwargs):
        return super().fit(train_data=train_data, **kwargs)


class SkLearnRidge(SkLearnLinearModel):
    """``sklearn.linear_model.Ridge(**kwargs)`` as a :class:`LinearModel`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(sklearn_module="linear_model.Ridge", **kwargs)

    def fit(self, train_data, **kwargs):
        return super().fit(train_data=train_data, **kwargs)


class SkLearnLinearRegression(SkLearnLinearModel):
    """``sklearn.linear_model.LinearRegression(**kwargs)`` as a :class:`LinearModel`
    (KernelShap's surrogate)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(sklearn_module="linear_model.LinearRegression", **kwargs)

    def fit(self, train_data, **kwargs):
        return super().fit(train_data=train_data, **kwargs)


_KNOWN = {"SkLearnLasso": "lasso", "SkLearnRidge": "ridge", "SkLearnLinearRegression": "linear"}
_TRAINERS = {"linear_model.Lasso": "lasso", "linear_model.Ridge": "ridge",
             "linear_model.LinearRegression": "linear"}
_FAST_KWARGS = {"lasso": {"alpha", "max_iter", "tol"}, "ridge": {"alpha"}, "linear": set()}


def _kind_of(kind: Optional[str], kwargs) -> Optional[str]:
    if kind is None:
        return None
    kw = dict(kwargs or {})
    if kw.get("fit_intercept", True) is not True:
        return None
    kw.pop("fit_intercept", None)
    if not set(kw) <= _FAST_KWARGS[kind]:
        return None
    return kind


def _model_kind(m) -> Optional[str]:
    """The Numba-fitted kind of a surrogate (ours or Captum's, by class name), or None."""
    return _kind_of(_KNOWN.get(type(m).__name__), getattr(m, "construct_kwargs", {}))


def sklearn_train_linear_model(model: LinearModel, dataloader, construct_kwargs, sklearn_trainer: str = "Lasso",
                               norm_input: bool = False, **fit_kwargs) -> dict:
    """Captum's ``sklearn_train_linear_model`` contract: gather the DataLoader's (X, y[, w])
    batches, fit ``sklearn.<sklearn_trainer>(**construct_kwargs)`` on them and store the
    coefficients in ``model`` (``_construct_model_params``).  The recognised settings run on
    the Numba kernels; returns ``{"train_time": seconds}``."""
    xs, ys, ws = [], [], []
    for data in dataloader:
        if len(data) == 3:
            x, y, w = data
            ws.append(w.cpu().numpy())
        else:
            assert len(data) == 2
            x, y = data
        xs.append(x.cpu().numpy())
        ys.append(y.cpu().numpy())
    X, y = np.concatenate(xs, axis=0), np.concatenate(ys, axis=0)
    w = np.concatenate(ws, axis=0) if ws else None
    t0 = time.time()
    kind = _kind_of(_TRAINERS.get(sklearn_trainer), construct_kwargs)
    if kind is not None and w is not None and not norm_input and not fit_kwargs:
        _fit_known(model, kind, dict(construct_kwargs), X, y, w)
        return {"train_time": time.time() - t0}
    mean = std = None
    if norm_input:
        mean, std = X.mean(0), X.std(0)
        X = (X - mean) / std
    mdl = _sklearn_fit(sklearn_trainer, construct_kwargs, X, y, w, fit_kwargs)
    t1 = time.time()
    classes = torch.IntTensor(mdl.classes_) if hasattr(mdl, "classes_") else None
    coef = torch.FloatTensor(np.asarray(mdl.coef_))
    out = coef.shape[0] if coef.dim() > 1 else 1
    model._construct_model_params(norm_type=None, weight_values=coef.view(out, -1),
                                  bias_value=torch.FloatTensor([mdl.intercept_]).squeeze().unsqueeze(0),
                                  classes=classes)
    if norm_input:
        model.norm = _NormLayer(torch.as_tensor(mean), torch.as_tensor(std))
    return {"train_time": t1 - t0}


class _NormLayer(torch.nn.Module):
    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _sklearn_fit(trainer: str, construct_kwargs, X, y, w, fit_kwargs):
    import sklearn
    from sklearn import linear_model  # noqa: F401  (the submodules getattr walks)

    cls = sklearn
    for part in trainer.split("."):
        cls = getattr(cls, part)
    mdl = cls(**construct_kwargs)
    try:
        mdl.fit(X, y, sample_weight=w, **fit_kwargs)
    except TypeError:
        mdl.fit(X, y, **fit_kwargs)
        warnings.warn("Sample weight is not supported for the provided linear model! Trained model without "
                      "weighting inputs. For Lasso, please upgrade sklearn to a version >= 0.23.0.", stacklevel=1)
    return mdl


_SK_TRAINER = {"lasso": "linear_model.Lasso", "ridge": "linear_model.Ridge", "linear": "linear_model.LinearRegression"}


def _sk_check(name: str, a: np.ndarray) -> None:
    """scikit-learn's finiteness check and wording (``Input y contains NaN.``); the data
    Captum hands its surrogates are float32."""
    if not np.isfinite(a).all():
        what = "NaN" if np.isnan(a).any() else f"infinity or a value too large for {a.dtype!r}"
        raise ValueError(f"Input {name} contains {what}.")


def _convergence_warning_class():
    try:
        from sklearn.exceptions import ConvergenceWarning

        return ConvergenceWarning
    except ImportError:
        return LassoConvergenceWarning


class LassoConvergenceWarning(UserWarning):
    """Stand-in for scikit-learn's ``ConvergenceWarning`` where scikit-learn is absent."""


_CONV_MSG = ("Objective did not converge. You might want to increase the number of iterations, check the scale "
             "of the features or consider increasing regularisation.")


def _fit_known(m, kind: str, kw: dict, X: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
    """Fit a recognised surrogate on Captum's float32 (X, y, w) with scikit-learn's checks in
    scikit-learn's order and wording; on the Numba kernels, or through scikit-learn for
    negative weights (whose handling differs per estimator)."""
    X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    w = np.asarray(w, dtype=np.float32).reshape(-1)
    if not len(X) == len(y) == len(w):
        raise ValueError(f"Found input variables with inconsistent numbers of samples: {[len(X), len(y), len(w)]}")
    for name, a in (("X", X), ("y", y), ("sample_weight", w)):
        _sk_check(name, a)
    if (w < 0).any():
        mdl = _sklearn_fit(_SK_TRAINER[kind], kw, X, y, w, {})
        _store(m, np.asarray(mdl.coef_, dtype=np.float64).reshape(-1), float(np.ravel(mdl.intercept_)[0]))
        return
    if not (w != 0).any():
        raise ValueError("Sample weights must contain at least one non-zero number.")
    X64, y64, w64 = X.astype(np.float64), y.astype(np.float64), w.astype(np.float64)
    if kind == "lasso":
        tol = kw.get("tol", 1e-4)
        coef, icpt, info = P.lasso_fit(X64[None], y64[None, :, None], w64[None], kw.get("alpha", 1.0),
                                       max_iter=kw.get("max_iter", 1000), tol=tol, return_info=True)
        if not info[0, 0, 2]:
            msg = f"{_CONV_MSG} Duality gap: {info[0, 0, 0]:.6e}, tolerance: {info[0, 0, 1]:.3e}"
            warnings.warn(msg, _convergence_warning_class(), stacklevel=2)
        c, b = coef[0, 0], float(icpt[0, 0])
    else:
        fit = P.fit_surrogate(X64, y64[:, None], w64, alpha=float(kw.get("alpha", 1.0)) if kind == "ridge" else 0.0)
        c, b = fit["coef"][0], float(fit["intercept"][0])
    _store(m, c, b)


def _store(m, coef: np.ndarray, icpt: float) -> None:
    # Captum's wrappers build an nn.Linear here (``_construct_model_params``), whose
    # initialisation draws from the global generator; so does ours, for the draws after a
    # fit to stay Captum's
    w = torch.tensor(coef, dtype=torch.float32).view(1, -1)
    b = torch.tensor([icpt], dtype=torch.float32)
    m._construct_model_params(norm_type=None, weight_values=w, bias_value=b)


# ------------------------------------------------------------------- Captum's lime.py helpers
def get_exp_kernel_similarity_function(distance_mode: str = "cosine", kernel_width: float = 1.0) -> Callable:
    """Captum's exponential-kernel similarity ``exp(-d²/(2·width²))`` on the cosine or
    euclidean distance between the flattened original and perturbed inputs.  Recognised by
    :class:`Lime`, which then computes it from the masks without materialising the
    comparison.  An unknown ``distance_mode`` raises ``ValueError`` when called (as Captum)."""

    def default_exp_kernel(original_inp, perturbed_inp, __, **kwargs):
        a = _flatten(original_inp).float()
        b = _flatten(perturbed_inp).float()
        if distance_mode == "cosine":
            d = 1 - torch.nn.CosineSimilarity(dim=0)(a, b)
        elif distance_mode == "euclidean":
            d = torch.norm(a - b)
        else:
            raise ValueError("distance_mode must be either cosine or euclidean.")
        return math.exp(-1 * (d ** 2) / (2 * (kernel_width ** 2)))

    if distance_mode in ("cosine", "euclidean"):
        default_exp_kernel._xk_exp = (distance_mode, float(kernel_width))
    return default_exp_kernel


def default_perturb_func(original_inp, **kwargs) -> Tensor:
    """One (1, num_interp_features) long sample, each feature kept with probability ½
    (``torch.bernoulli`` on the global generator, as Captum)."""
    assert "num_interp_features" in kwargs, \
        "Must provide num_interp_features to use default interpretable sampling function"
    device = (original_inp if isinstance(original_inp, Tensor) else original_inp[0]).device
    probs = torch.ones(1, int(kwargs["num_interp_features"])) * 0.5
    return torch.bernoulli(probs).to(device=device).long()


def default_from_interp_rep_transform(curr_sample: Tensor, original_inputs, **kwargs):
    """Interpretable sample (1, F) → input: kept features from the input, hidden ones from
    ``kwargs["baselines"]``, features located by ``kwargs["feature_mask"]``."""
    assert "feature_mask" in kwargs, "Must provide feature_mask to use default interpretable representation transform"
    assert "baselines" in kwargs, "Must provide baselines to use default interpretable representation transform"
    masks, bases = kwargs["feature_mask"], kwargs["baselines"]
    row = curr_sample[0]

    def one(x, fm, b):
        keep = row[fm].bool()
        return keep.to(x.dtype) * x + (~keep).to(x.dtype) * b

    if isinstance(masks, Tensor):
        return one(original_inputs, masks, bases)
    return tuple(one(original_inputs[j], masks[j], bases[j]) for j in range(len(masks)))


def _spans(t: Tensor, x: Tensor) -> bool:
    """Whether ``t`` broadcasts to exactly ``x``'s shape."""
    try:
        return torch.broadcast_shapes(t.shape, x.shape) == x.shape
    except RuntimeError:
        return False


def _fill_like(x: Tensor, b) -> Tensor:
    """The baseline as a contiguous tensor like ``x``: a tensor broadcast, a number as Captum's
    transform applies it (``hidden.to(x.dtype) * b``), so an integer outside an integer
    dtype's range wraps as torch's scalar arithmetic wraps it (``300`` on uint8 inputs is
    44) instead of failing ``full_like``'s range check."""
    if isinstance(b, Tensor):
        return b.detach().cpu().expand_as(x).contiguous()
    if isinstance(b, int) and not isinstance(b, bool) and not x.dtype.is_floating_point and x.dtype != torch.bool:
        return torch.ones_like(x) * b
    return torch.full_like(x, b)


def construct_feature_mask(feature_mask, formatted_inputs: Tuple[Tensor, ...]) -> Tuple[Tuple[Tensor, ...], int]:
    """(feature masks as a tuple, number of interpretable features): by default one feature
    per element of one example, numbered across the inputs; a given mask is shifted to start
    at 0 (with a warning) when its smallest id is not 0."""
    if feature_mask is None:
        out, cur = [], 0
        for t in formatted_inputs:
            n = torch.numel(t[0:1])
            out.append(cur + torch.arange(n, device=t.device).reshape(t[0:1].shape))
            cur += n
        return tuple(out), cur
    fm = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
    lo = int(min(torch.min(m).item() for m in fm if m.numel()))
    if lo != 0:
        warnings.warn("Minimum element in feature mask is not 0, shifting indices to start at 0.", stacklevel=2)
        fm = tuple(m - lo for m in fm)
    return fm, int(max(torch.max(m).item() for m in fm if m.numel())) + 1


# ----------------------------------------------------------------------------------- helpers
def _tup(x) -> Tuple[Any, ...]:
    return x if isinstance(x, tuple) else (x,)


def _flatten(x) -> Tensor:
    return torch.cat([t.flatten() for t in _tup(x)])


def _reduce_list(vals: List[Any]) -> Any:
    if isinstance(vals[0], Tensor):
        dev = vals[0].device
        return torch.cat([v.to(dev) for v in vals])
    if isinstance(vals[0], bool):
        return any(vals)
    if isinstance(vals[0], (tuple, list)):
        return tuple(_reduce_list([v[i] for v in vals]) for i in range(len(vals[0])))
    raise AssertionError("Elements to be reduced can only be either Tensors or tuples containing Tensors.")


def _expand_args(args, n):
    # as Captum's: the arguments are iterated as given (a list's items become separate
    # arguments, a float raises TypeError), tensors repeated n times along dim 0
    if args is None:
        return None
    return tuple(torch.cat([x] * n, dim=0) if isinstance(x, Tensor) and x.dim() > 0 else x for x in args)


def _hooked(model) -> bool:
    """Forward hooks on an nn.Module (or any submodule) or global module hooks."""
    from torch.nn.modules import module as mm

    if getattr(mm, "_global_forward_hooks", None) or getattr(mm, "_global_forward_pre_hooks", None):
        return True
    return isinstance(model, torch.nn.Module) and any(m._forward_hooks or m._forward_pre_hooks
                                                      for m in model.modules())


def _expand_target(target, n):
    if isinstance(target, list):
        return target * n
    if isinstance(target, Tensor) and torch.numel(target) > 1:
        return torch.cat([target] * n, dim=0)
    return target


def _select_example(arg, i: int, bsz: int):
    if arg is None:
        return None
    sel = tuple(a[i: i + 1] if isinstance(a, (Tensor, list)) and len(a) == bsz else a for a in _tup(arg))
    return sel if isinstance(arg, tuple) else sel[0]


def _as_float_tensor(vals: List[Tensor]) -> Tensor:
    return (torch.cat(vals) if len(vals[0].shape) > 0 else torch.stack(vals)).float()


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, mininterval=0.5)
    bar.update(0)
    return bar


# --------------------------------------------------------------------------------- LimeBase
class LimeBase(PerturbationAttribution):
    """Captum's generic surrogate trainer (see the module docstring): returns the fitted
    interpretable model's ``representation()``."""

    def __init__(self, forward_func: Callable, interpretable_model, similarity_func: Callable,
                 perturb_func: Callable, perturb_interpretable_space: bool,
                 from_interp_rep_transform: Optional[Callable], to_interp_rep_transform: Optional[Callable]) -> None:
        PerturbationAttribution.__init__(self, forward_func)
        self.interpretable_model = interpretable_model
        self.similarity_func = similarity_func
        self.perturb_func = perturb_func
        self.perturb_interpretable_space = perturb_interpretable_space
        self.from_interp_rep_transform = from_interp_rep_transform
        self.to_interp_rep_transform = to_interp_rep_transform
        if self.perturb_interpretable_space:
            assert self.from_interp_rep_transform is not None, \
                "Must provide transform from interpretable space to original input space"
        else:
            assert self.to_interp_rep_transform is not None, \
                "Must provide transform from original input space to interpretable space"

    @entry
    @torch.no_grad()
    def attribute(self, inputs, target=None, additional_forward_args=None, n_samples: int = 50,
                  perturbations_per_eval: int = 1, show_progress: bool = False, **kwargs) -> Tensor:
        """Train the interpretable model on ``n_samples`` perturbations of ``inputs`` and
        return its ``representation()``.  ``kwargs`` go to the sampler, the transforms and
        the similarity function."""
        device = (inputs if isinstance(inputs, Tensor) else inputs[0]).device
        step = self._perturb_generator(inputs, **kwargs)
        interp: List[Tensor] = []
        sims: List[Tensor] = []
        outs: List[Tensor] = []
        pending: List[Any] = []
        exp_args = exp_target = None
        bar = _progress(math.ceil(n_samples / perturbations_per_eval), f"{self.get_name()} attribution") \
            if show_progress else None
        count = 0
        for _ in range(n_samples):
            try:
                z, x = step()
            except StopIteration:
                warnings.warn("Generator completed prior to given n_samples iterations!", stacklevel=1)
                break
            count += 1
            interp.append(z)
            pending.append(x)
            s = self.similarity_func(inputs, x, z, **kwargs)
            sims.append(s.flatten() if isinstance(s, Tensor) else torch.tensor([s], device=device))
            if len(pending) == perturbations_per_eval:
                if exp_args is None:
                    exp_args = _expand_args(additional_forward_args, len(pending))
                if exp_target is None:
                    exp_target = _expand_target(target, len(pending))
                outs.append(self._evaluate_batch(pending, exp_target, exp_args, device))
                if bar is not None:
                    bar.update()
                pending = []
        if pending:
            outs.append(self._evaluate_batch(pending, _expand_target(target, len(pending)),
                                             _expand_args(additional_forward_args, len(pending)), device))
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        X = torch.cat(interp).float()
        return self._train(X, _as_float_tensor(outs), _as_float_tensor(sims), count)

    def _perturb_generator(self, inputs, **kwargs) -> Callable[[], Tuple[Any, Any]]:
        gen = self.perturb_func(inputs, **kwargs) if inspect.isgeneratorfunction(self.perturb_func) else None

        def step():
            sample = next(gen) if gen is not None else self.perturb_func(inputs, **kwargs)
            if self.perturb_interpretable_space:
                return sample, self.from_interp_rep_transform(sample, inputs, **kwargs)
            return self.to_interp_rep_transform(sample, inputs, **kwargs), sample

        return step

    def _evaluate_batch(self, model_inputs: List[Any], target, args, device) -> Tensor:
        out = _run_forward(self.forward_func, _reduce_list(model_inputs), target, args)
        if isinstance(out, Tensor):
            assert out.numel() == len(model_inputs), \
                "Number of outputs is not appropriate, must return one output per perturbed input"
            return out.flatten()
        return torch.tensor([out], device=device)

    def _train(self, X: Tensor, y: Tensor, w: Tensor, count: int) -> Tensor:
        """Fit the interpretable model on float32 (X, y, w): the recognised linear models on
        the Numba kernels, anything else through its own ``fit`` (one batch of all rows)."""
        # Captum wraps the three in a TensorDataset, whose constructor checks their lengths
        # (a forward returning one float per batch of several samples trips it); checked
        # before anything reads them
        if not X.shape[0] == y.shape[0] == w.shape[0]:
            raise AssertionError("Size mismatch between tensors")
        m = self.interpretable_model
        kind = _model_kind(m)
        if kind is None:
            from torch.utils.data import DataLoader, TensorDataset

            m.fit(DataLoader(TensorDataset(X, y, w), batch_size=count))
            return m.representation()
        # Captum's fit iterates a DataLoader once, and creating its iterator draws a base seed
        # from the global generator: draw it too, so that later draws stay Captum's
        torch.empty((), dtype=torch.int64).random_()
        _fit_known(m, kind, dict(getattr(m, "construct_kwargs", {}) or {}), X.detach().cpu().numpy(),
                   y.detach().cpu().numpy(), w.detach().cpu().numpy())
        return m.representation()

    def attribute_future(self) -> None:
        raise NotImplementedError("LimeBase does not support attribution of future samples.")

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False


# ------------------------------------------------------------------------------------- Lime
_MULTI_MSG = ("You are providing multiple inputs for Lime / Kernel SHAP attributions. This trains a separate "
              "interpretable model for each example, which can be time consuming. It is recommended to compute "
              "attributions for one example at a time.")


class Lime(LimeBase):
    """Captum's ``Lime``: binary samples of the interpretable features (groups of
    ``feature_mask``), hidden features set to the baselines; see the module docstring.

    Beyond Captum: for an ``nn.Module`` on one CPU float32/float64 image whose feature mask is
    the same in every channel, the network's leading convolution stages are evaluated from
    coalition tables (:mod:`xaikernels.methods._stem`; the same numbers up to float rounding,
    checked before use).  Set ``stem = "off"`` on the instance to evaluate the model as is;
    ``stem_info`` says what the last call did.  Without tables, a CPU conv net on one float32
    image input runs its batches channels-last where that reproduces its outputs on the first
    batch (faster oneDNN kernels); ``layout_info`` says which layout the last call used.

    Forward calls: the tables check themselves against the model (and then evaluate only its
    tail), and the layout check (:class:`~xaikernels.methods.lime.LayoutProbe`) evaluates the
    model once more on two samples of the first batch, so such a model runs calls beyond
    Captum's and sees channels-last batches.  A model with forward hooks on itself (or global
    module hooks) gets neither and is called exactly as Captum calls it; hooks on a submodule
    only turn the layout check off."""

    stem = "auto"
    stem_info = "off"
    layout_info = "contiguous"

    def __init__(self, forward_func: Callable, interpretable_model=None, similarity_func: Optional[Callable] = None,
                 perturb_func: Optional[Callable] = None) -> None:
        if interpretable_model is None:
            interpretable_model = SkLearnLasso(alpha=0.01)
        if similarity_func is None:
            similarity_func = get_exp_kernel_similarity_function()
        if perturb_func is None:
            perturb_func = default_perturb_func
        LimeBase.__init__(self, forward_func, interpretable_model, similarity_func, perturb_func, True,
                          default_from_interp_rep_transform, None)

    @entry
    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, feature_mask=None,
                  n_samples: int = 25, perturbations_per_eval: int = 1, return_input_shape: bool = True,
                  show_progress: bool = False):
        """Surrogate coefficients per example, in the inputs' shapes (or (N, F) with
        ``return_input_shape=False``).  Arguments as Captum's ``Lime.attribute``."""
        return self._attribute_kwargs(inputs=inputs, baselines=baselines, target=target,
                                      additional_forward_args=additional_forward_args, feature_mask=feature_mask,
                                      n_samples=n_samples, perturbations_per_eval=perturbations_per_eval,
                                      return_input_shape=return_input_shape, show_progress=show_progress)

    def attribute_future(self) -> None:
        return super().attribute_future()

    def _attribute_kwargs(self, inputs, baselines=None, target=None, additional_forward_args=None,
                          feature_mask=None, n_samples: int = 25, perturbations_per_eval: int = 1,
                          return_input_shape: bool = True, show_progress: bool = False, **kwargs):
        is_tuple = isinstance(inputs, tuple)
        formatted, baselines = _format_input_baseline(inputs, baselines)
        bsz = formatted[0].shape[0]
        fms, F = construct_feature_mask(feature_mask, formatted)
        if F > 10000:
            warnings.warn("Attempting to construct interpretable model with > 10000 features.This can be very slow "
                          "or lead to OOM issues. Please provide a featuremask which groups input features to reduce "
                          "the number of interpretablefeatures. ", stacklevel=1)
        if bsz > 1:
            test = _run_forward(self.forward_func, inputs, target, additional_forward_args)
            if isinstance(test, Tensor) and torch.numel(test) > 1:
                if torch.numel(test) != bsz:
                    raise AssertionError("Invalid number of outputs, forward function should return ascalar per "
                                         "example or a scalar per input batch.")
                warnings.warn(_MULTI_MSG, stacklevel=1)
                outs = []
                for i in range(bsz):
                    ci, ct, ca, cb, cf = (_select_example(a, i, bsz) for a in
                                          (formatted, target, additional_forward_args, baselines, fms))
                    coefs = self._one(ci if is_tuple else ci[0], ct, ca, n_samples, perturbations_per_eval,
                                      show_progress, baselines=cb if is_tuple else cb[0],
                                      feature_mask=cf if is_tuple else cf[0], num_interp_features=F, **kwargs)
                    outs.append(self._convert_output_shape(ci, cf, coefs, F, is_tuple) if return_input_shape
                                else coefs.reshape(1, -1))
                return _reduce_list(outs)
            assert perturbations_per_eval == 1, \
                "Perturbations per eval must be 1 when forward functionreturns single value per batch!"
        coefs = self._one(inputs, target, additional_forward_args, n_samples, perturbations_per_eval, show_progress,
                          baselines=baselines if is_tuple else baselines[0],
                          feature_mask=fms if is_tuple else fms[0], num_interp_features=F, **kwargs)
        if return_input_shape:
            return self._convert_output_shape(formatted, fms, coefs, F, is_tuple, leading_dim_one=bsz > 1)
        return coefs

    def _convert_output_shape(self, formatted_inp, feature_mask, coefs, num_interp_features, is_inputs_tuple,
                              leading_dim_one: bool = False):
        # Captum sums coefs[f] · (mask == f) over f < num_interp_features: ids outside that
        # range get 0; the result is float32 in each input's shape and device
        c = coefs.detach().flatten().float().cpu().numpy()
        n = min(int(num_interp_features), c.size)
        out = []
        for x, fm in zip(formatted_inp, feature_mask):
            idx = fm.detach().cpu().long().numpy()
            ok = (idx >= 0) & (idx < n)
            a = np.where(ok, c[np.clip(idx, 0, max(n - 1, 0))], np.float32(0)) if n else np.zeros(idx.shape, np.float32)
            a = np.array(np.broadcast_to(a, np.broadcast_shapes(a.shape, tuple(x.shape))), np.float32)  # writable
            a = torch.from_numpy(a).to(x.device)
            out.append(a[0:1] if leading_dim_one else a)
        return tuple(out) if is_inputs_tuple else out[0]

    # ------------------------------------------------------------------------- fast path
    def _one(self, inputs, target, args, n_samples, per_eval, show_progress, **kwargs) -> Tensor:
        """One surrogate: the kernel path for the default sampler and transform, Captum's
        per-sample loop otherwise."""
        if n_samples >= 1 and per_eval >= 1 and self._sampler() is not None \
                and self._fast_ok(inputs, kwargs["baselines"], kwargs.get("feature_mask")):
            # Captum batches by ``len(batch) == perturbations_per_eval``: a float with an
            # integral value batches as that int, any other number never fills a batch (all
            # samples go in the final one)
            per_eval = int(per_eval) if per_eval == int(per_eval) else n_samples
            with torch.no_grad():
                return self._fast(inputs, target, args, n_samples, per_eval, show_progress, **kwargs)
        return LimeBase.attribute.__wrapped__(self, inputs, target=target, additional_forward_args=args,
                                              n_samples=n_samples, perturbations_per_eval=per_eval,
                                              show_progress=show_progress, **kwargs)

    def _sampler(self) -> Optional[str]:
        if not self.perturb_interpretable_space or self.from_interp_rep_transform is not \
                default_from_interp_rep_transform:
            return None
        return "bernoulli" if self.perturb_func is default_perturb_func else None

    @staticmethod
    def _fast_ok(inputs, baselines, masks=None) -> bool:
        # the kernel selects between the input and the baseline in the input's dtype; the
        # default transform computes keep·x + (1-keep)·b, whose dtype / shape may differ, and
        # whose values differ where x or b is not finite (0·inf = NaN).  The transform indexes
        # the sample with the feature mask: a mask that is not int32 / int64 (float, bool,
        # uint8 and int8 / int16 fail or index otherwise) or whose shape does not broadcast
        # to the input's takes Captum's loop, which fails (or not) as Captum does
        n_in = len(_tup(inputs))
        if len(_tup(baselines)) != n_in or (masks is not None and len(_tup(masks)) != n_in):
            return False  # a tensor where a tuple is due: Captum's loop indexes past its end
        for fm, x in zip(_tup(masks) if masks is not None else (), _tup(inputs)):
            if not isinstance(fm, Tensor) or fm.dtype not in (torch.int32, torch.int64) or not _spans(fm, x):
                return False
        for x, b in zip(_tup(inputs), _tup(baselines)):
            if x.dtype.itemsize not in (1, 2, 4, 8) or x.is_complex():
                return False
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                return False
            if isinstance(b, float) and not math.isfinite(b):
                return False
            if isinstance(b, Tensor):
                if b.dtype != x.dtype or (b.is_floating_point() and not bool(torch.isfinite(b).all())) \
                        or not _spans(b, x):
                    return False
            elif isinstance(b, bool):
                if x.dtype != torch.bool:
                    return False
            elif isinstance(b, int):
                if x.dtype == torch.bool and b not in (0, 1):
                    return False
            elif isinstance(b, float):
                if not x.dtype.is_floating_point:
                    return False
            else:
                return False
        return True

    def _draw_masks(self, n: int, F: int, kwargs) -> np.ndarray:
        """Samples 0 .. n-1, drawn as Captum draws them (uint8 (n, F))."""
        return self._draw_rows(0, n, F, kwargs)

    def _draw_rows(self, s0: int, s1: int, F: int, kwargs) -> np.ndarray:
        """Samples s0 .. s1-1 (drawing them consumes the global generator as Captum's
        per-sample calls for these samples do; called in order, block by block)."""
        # Captum draws torch.bernoulli(ones(1, F) * 0.5) per sample; one (k, F) call consumes
        # the generator identically (elementwise, in order)
        # (the probabilities come from NumPy: a torch fill of this size wakes the intra-op
        # thread pool, which on a loaded machine cost more than the whole draw)
        return torch.bernoulli(torch.from_numpy(np.full((s1 - s0, F), 0.5, np.float32))).numpy().astype(np.uint8)

    def _fast_weights(self, masks, xs, bs, segs, F) -> Optional[np.ndarray]:
        mode = getattr(self.similarity_func, "_xk_exp", None)
        if mode is None:
            return None
        metric, width = mode
        stats = np.zeros((F, 4))
        for x, b, seg in zip(xs, bs, segs):
            stats += P.feature_stats(_f32(x).reshape(1, -1, 1), _f32(b).reshape(1, -1, 1), seg, F)
        # Captum's exp(-d²/(2w²)) == lime's sqrt(exp(-d²/w²))
        return P.exp_kernel(P.mask_distances(masks, stats, metric), width)

    def _fast(self, inputs, target, args, n_samples, per_eval, show_progress, **kwargs) -> Tensor:
        F = int(kwargs["num_interp_features"])
        inp = _tup(inputs)
        device = inp[0].device
        n = n_samples
        xs = [x.detach().cpu().contiguous() for x in inp]
        bs = [_fill_like(x, b) for x, b in zip(xs, _tup(kwargs["baselines"]))]
        segs = []
        for x, fm in zip(xs, _tup(kwargs["feature_mask"])):
            seg = fm.detach().cpu().long().expand_as(x).reshape(-1).numpy().astype(np.int64)
            if seg.size and (seg.min() < 0 or seg.max() >= F):
                raise ValueError(f"feature_mask ids must lie in 0..{F - 1}")
            segs.append(np.ascontiguousarray(seg))
        no_params = len(inspect.signature(self.forward_func).parameters) == 0
        # Captum draws each batch's samples just before evaluating it, so a forward that
        # itself draws from the global generator (dropout in training mode) sees Captum's
        # generator state: the samples are drawn batch by batch here too, except where the
        # coalition tables may apply (they are planned from all samples: an eval-mode
        # nn.Module on one image, whose forward does not draw)
        # (a ``_draw_masks`` set on the instance, as tests do to inject samples, supplies them
        # all up front too)
        off = self._tables_off(xs, args, n, no_params)
        self.stem_info = off or "off"
        upfront = off is None or "_draw_masks" in vars(self)
        masks = np.ascontiguousarray(self._draw_masks(n, F, kwargs), dtype=np.uint8) if upfront else None
        w = self._fast_weights(masks, xs, bs, segs, F) if upfront else None
        tables = self._stem_tables(inp, xs, bs, segs, F, masks, args) if w is not None and off is None else None
        builders = [P.PerturbedBuilder(_flat(x), _flat(b), seg) for x, b, seg in zip(xs, bs, segs)] \
            if tables is None else []
        # one image input to a CPU conv net: its batches run channels-last where that gives the
        # model's own outputs (LayoutProbe, checked on the first batch by one more call on two
        # of its samples); not for a model with forward hooks (they would see that extra call)
        from xaikernels.methods.lime import LayoutProbe, channels_last_candidate

        probe = LayoutProbe(self.forward_func, (), len(xs) == 1 and not _hooked(self.forward_func)
                            and channels_last_candidate(self.forward_func, tuple(xs[0].shape[1:]), xs[0].dtype,
                                                        device)) \
            if tables is None and not no_params else None
        outs: List[Tensor] = []
        sims: List[float] = []
        blocks: List[np.ndarray] = []
        bar = _progress(math.ceil(n / per_eval), f"{self.get_name()} attribution") if show_progress else None
        exp_args, exp_target = _expand_args(args, per_eval), _expand_target(target, per_eval)
        # one buffer per input for every batch, unless the forward kept a reference to one
        holders = [_BatchBuffer() for _ in range(max(1, len(xs)))]
        for s0 in range(0, n, per_eval):
            s1 = min(n, s0 + per_eval)
            k = s1 - s0
            if tables is not None:
                plan, tail = tables
                buf = holders[0].get((k,) + plan.out_hwc, xs[0].dtype)
                plan.gather(s0, s1, buf.view(k, -1, plan.out_hwc[2]))
                t = exp_target if k == per_eval else _expand_target(target, k)
                out = _run_forward(tail, (buf.permute(0, 3, 1, 2),), t, None, takes_args=True)
                buf = None
                assert out.numel() == k, \
                    "Number of outputs is not appropriate, must return one output per perturbed input"
                outs.append(out.flatten())
                out = None
                if bar is not None:
                    bar.update()
                continue
            if masks is not None:
                block = masks[s0:s1]
            else:
                block = np.ascontiguousarray(self._draw_rows(s0, s1, F, kwargs), dtype=np.uint8)
                blocks.append(block)
            batch = []
            for x, build, holder in zip(xs, builders, holders):
                buf = holder.get((k,) + tuple(x.shape), x.dtype)
                build(block, buf.view(k, 1, x.numel(), 1))
                batch.append(buf.reshape((k * x.shape[0],) + tuple(x.shape[1:])).to(device))
            buf = None
            if self._fast_weights_kind() is None:
                rows = [x.shape[0] for x in xs]
                for j in range(k):
                    pert = tuple(t[j * r:(j + 1) * r] for t, r in zip(batch, rows))
                    z = torch.from_numpy(block[j: j + 1]).long().to(device)
                    s = self.similarity_func(inputs, pert if isinstance(inputs, tuple) else pert[0], z, **kwargs)
                    sims.append(float(s.flatten()[0]) if isinstance(s, Tensor) else float(s))
            a = exp_args if k == per_eval else _expand_args(args, k)
            t = exp_target if k == per_eval else _expand_target(target, k)
            outs.append(self._evaluate_batch_tuple(tuple(batch), k, t, a, device, probe, not no_params))
            batch = pert = None  # (the buffers' reuse checks count every reference)
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        if masks is None:
            masks = np.concatenate(blocks) if blocks else np.zeros((0, F), np.uint8)
            w = self._fast_weights(masks, xs, bs, segs, F)
        self.layout_info = "channels_last (the tables' tail)" if tables is not None else \
            ((probe.layout if probe is not None else None) or "contiguous")
        y = _as_float_tensor(outs)
        wt = torch.tensor(np.asarray(sims if w is None else w), dtype=torch.float32)
        return self._train(torch.from_numpy(masks.astype(np.float32)), y, wt, n)

    def _tables_off(self, xs, args, n: int, no_params: bool) -> Optional[str]:
        """Why the coalition tables cannot apply, from the cheap conditions of
        :meth:`_stem_tables` (which decide whether samples are drawn up front); None where
        they might."""
        from xaikernels.methods.lime import SMALL_WORK

        m = self.forward_func
        if getattr(self, "stem", "auto") == "off":
            return "off"
        if self._fast_weights_kind() is None:
            return "off"  # (a custom similarity_func)
        if no_params or not isinstance(m, torch.nn.Module) or m.training:
            return "off: the forward is not an nn.Module in eval mode"
        if len(xs) != 1 or xs[0].dim() != 4 or xs[0].shape[0] != 1:
            return "off: not one image (1, C, H, W)"
        if xs[0].dtype not in (torch.float32, torch.float64):
            return f"off: the input is {xs[0].dtype} (tables: float32/float64 on CPU)"
        if args is not None and _tup(args):
            return "off: additional_forward_args are given"
        if n * xs[0][0].numel() < SMALL_WORK:
            return f"off: too little work for the tables' set-up (samples × input size < {SMALL_WORK:.0e})"
        return None

    def _fast_weights_kind(self) -> Optional[str]:
        """Which similarity :meth:`_fast_weights` computes from the masks (None: the user's
        function is called per sample)."""
        return "exp" if getattr(self.similarity_func, "_xk_exp", None) is not None else None

    def _stem_tables(self, inp, xs, bs, segs, F, masks, args):
        """(plan, tail) of stem coalition tables (:mod:`xaikernels.methods._stem`) for one
        CPU float32/float64 image (1, C, H, W) of an ``nn.Module`` with a feature mask that is
        the same in every channel, no additional arguments and the default similarity; None
        otherwise (or with ``self.stem = "off"``).  ``self.stem_info`` says which and why."""
        from xaikernels.methods import _stem
        from xaikernels.methods.lime import _stem_plans

        self.stem_info = "off"
        if getattr(self, "stem", "auto") == "off":
            return None
        try:
            x = xs[0]
            if len(xs) != 1 or x.dim() != 4 or x.shape[0] != 1:
                raise _stem.StemUnavailable("not one image (1, C, H, W)")
            if args is not None and _tup(args):
                raise _stem.StemUnavailable("additional_forward_args are given")
            C, HW = x.shape[1], x.shape[2] * x.shape[3]
            seg = _stem.pixel_map(segs[0], C, HW)
            plans, tail, info = _stem_plans(self.forward_func, inp[0], x, [bs[0].reshape(C, HW, 1)], [(seg, F)],
                                            [masks], (), "auto")
        except _stem.StemUnavailable as e:
            self.stem_info = f"off: {e}"
            return None
        self.stem_info = info
        return plans[0], tail

    def _evaluate_batch_tuple(self, batch, k, target, args, device, probe=None, takes_args=None) -> Tensor:
        out = _run_forward(self.forward_func if probe is None else probe, batch, target, args, takes_args)
        if isinstance(out, Tensor):
            assert out.numel() == k, "Number of outputs is not appropriate, must return one output per perturbed input"
            return out.flatten()
        return torch.tensor([out], device=device)


_use_count = getattr(torch._C, "_storage_Use_Count", None)


class _BatchBuffer:
    """A CPU tensor for the perturbed batches of one input, reused from batch to batch while
    nothing but this holder refers to it (the builders rewrite every element of it).

    Captum hands the forward a new tensor per batch.  A new multi-megabyte tensor can cost
    page faults, depending on what the allocator has kept (bench/profile_lime_parts.py's
    Captum rows, 20 batches of 50 3×64×64 float32 images, where it has kept the memory: 2.9
    ms either way; bench/run_lime.py's Captum overheads in ``lime.jsonl``, before and after:
    8.6 → 8.0 ms for Lime, 12.5 → 11.7 ms for KernelShap); reusing it is only safe while the
    forward keeps nothing of it.  So a buffer is
    reused only when, after the batch, the Python references to it, the uses of its storage
    (views, ``.numpy()`` arrays, outputs that alias the input hold one) and the Python
    references to its storage object are all back at their counts when it was made;
    otherwise the next batch gets a new tensor, and what the forward kept is never
    overwritten.  Without torch's storage use count (a private API) nothing is reused."""

    def __init__(self):
        self.t: Optional[Tensor] = None
        self.counts = None

    def get(self, shape, dtype) -> Tensor:
        t = self.t
        if (t is not None and self.counts is not None and tuple(t.shape) == tuple(shape) and t.dtype == dtype
                and self._counts() == self.counts):
            return t
        t = self.t = torch.empty(shape, dtype=dtype)
        # (taken with the same frames alive as at the check above: this method's ``t``)
        self.counts = self._counts() if _use_count is not None else None
        return t

    def _counts(self):
        st = self.t.untyped_storage()
        return sys.getrefcount(self.t), _use_count(st._cdata), sys.getrefcount(st)


def _flat(x: Tensor) -> Tensor:
    return x.reshape(1, x.numel(), 1)


def _f32(x: Tensor) -> np.ndarray:
    return x.float().numpy() if x.dtype == torch.bfloat16 else x.numpy().astype(np.float32)


# ------------------------------------------------------------------------------- KernelShap
class KernelShap(Lime):
    """Captum's ``KernelShap``: the full and the empty coalition first (weight 1e6), then
    coalition sizes drawn with probability ∝ (M-1)/(k(M-k)) and a random coalition of that
    size, fitted by an unregularised linear regression.  Same draws as Captum."""

    def __init__(self, forward_func: Callable) -> None:
        Lime.__init__(self, forward_func, interpretable_model=SkLearnLinearRegression(),
                      similarity_func=self.kernel_shap_similarity_kernel,
                      perturb_func=self.kernel_shap_perturb_generator)
        self.inf_weight = 1000000.0

    @entry
    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, feature_mask=None,
                  n_samples: int = 25, perturbations_per_eval: int = 1, return_input_shape: bool = True,
                  show_progress: bool = False):
        """Shapley value estimates per example (input shape, or (N, F)).  Arguments as
        Captum's ``KernelShap.attribute``."""
        from torch.distributions.categorical import Categorical

        formatted, baselines = _format_input_baseline(inputs, baselines)
        feature_mask, F = construct_feature_mask(feature_mask, formatted)
        sizes = torch.arange(F, dtype=torch.float)
        probs = torch.tensor(F - 1) / (sizes * (F - sizes))
        probs[0] = 0.0
        return self._attribute_kwargs(inputs=inputs, baselines=baselines, target=target,
                                      additional_forward_args=additional_forward_args, feature_mask=feature_mask,
                                      n_samples=n_samples, perturbations_per_eval=perturbations_per_eval,
                                      return_input_shape=return_input_shape,
                                      num_select_distribution=Categorical(probs), show_progress=show_progress)

    def attribute_future(self) -> None:
        raise NotImplementedError("attribute_future is not implemented for KernelShap")

    def kernel_shap_similarity_kernel(self, _, __, interpretable_sample: Tensor, **kwargs) -> Tensor:
        assert "num_interp_features" in kwargs, "Must provide num_interp_features to use default similarity kernel"
        k = int(interpretable_sample.sum(dim=1).item())
        full = k == 0 or k == kwargs["num_interp_features"]
        return torch.tensor([self.inf_weight if full else 1.0])

    def kernel_shap_perturb_generator(self, original_inp, **kwargs):
        assert "num_select_distribution" in kwargs and "num_interp_features" in kwargs, \
            "num_select_distribution and num_interp_features are necessary to use kernel_shap_perturb_func"
        device = (original_inp if isinstance(original_inp, Tensor) else original_inp[0]).device
        F = int(kwargs["num_interp_features"])
        yield torch.ones(1, F, device=device, dtype=torch.long)
        yield torch.zeros(1, F, device=device, dtype=torch.long)
        while True:
            k = kwargs["num_select_distribution"].sample()
            r = torch.randn(1, F)
            thr = torch.kthvalue(r, F - k).values.item()
            yield (r > thr).to(device=device).long()

    def _sampler(self) -> Optional[str]:
        if not self.perturb_interpretable_space or self.from_interp_rep_transform is not \
                default_from_interp_rep_transform:
            return None
        pf = self.perturb_func
        if getattr(pf, "__func__", None) is KernelShap.kernel_shap_perturb_generator and pf.__self__ is self:
            return "shap"
        return super()._sampler()

    def _draw_rows(self, s0: int, s1: int, F: int, kwargs) -> np.ndarray:
        if self._sampler() != "shap":
            return super()._draw_rows(s0, s1, F, kwargs)
        # samples 0 and 1 are the full and the empty coalition (no draws)
        head = np.vstack([np.ones((1, F), np.uint8), np.zeros((1, F), np.uint8)])[s0:min(s1, 2)]
        m = s1 - max(s0, 2)
        if m <= 0:
            return head
        # Captum's generator, step by step: a size from the categorical, then randn(1, F);
        # the draws stay interleaved (the generator's order), the thresholds are batched
        dist = kwargs["num_select_distribution"]
        rand_t = torch.empty((m, F), dtype=torch.float32)
        # Categorical.sample() is torch.multinomial(probs (1, K), 1, True), which for one
        # sample is argmax(p / q) with q = empty_like(p).exponential_() (torch's Gumbel-max
        # fast path).  The same exponential_ call on a row of a preallocated buffer consumes
        # the generator identically and costs ~2 µs instead of ~26 µs; the argmax is then
        # done for all samples at once.  A user's own distribution is sampled as it is.
        probs = getattr(dist, "probs", None) if type(dist).__name__ == "Categorical" else None
        fast = probs is not None and probs.dim() == 1 and probs.device.type == "cpu"
        # (row views from one unbind instead of a slice per call; normal_ on a row consumes
        # the generator as randn(1, F, out=row) does)
        if fast:
            q = torch.empty((m, probs.shape[-1]), dtype=probs.dtype)
            for q_row, r_row in zip(q.unbind(0), rand_t.unbind(0)):
                q_row.exponential_()
                r_row.normal_()
            sel = np.argmax(probs.reshape(1, -1).numpy() / q.numpy(), axis=1).astype(np.int64)
        else:
            sel = np.empty(m, dtype=np.int64)
            for i, r_row in enumerate(rand_t.unbind(0)):
                sel[i] = int(dist.sample())
                r_row.normal_()
        rand = rand_t.numpy()
        # Captum: threshold = kthvalue(row, F - k), kept = row > threshold (NumPy: torch's
        # sort of this size wakes the intra-op pool, slow on a loaded machine)
        thr = np.take_along_axis(np.sort(rand, axis=1), (F - sel - 1)[:, None], axis=1)
        return np.vstack([head, (rand > thr).astype(np.uint8)])

    def _fast_weights_kind(self) -> Optional[str]:
        sf = self.similarity_func
        if getattr(sf, "__func__", None) is KernelShap.kernel_shap_similarity_kernel and sf.__self__ is self:
            return "shap"
        return super()._fast_weights_kind()

    def _fast_weights(self, masks, xs, bs, segs, F) -> Optional[np.ndarray]:
        if self._fast_weights_kind() == "shap":
            k = masks.sum(1)
            return np.where((k == 0) | (k == F), self.inf_weight, 1.0)
        return super()._fast_weights(masks, xs, bs, segs, F)
