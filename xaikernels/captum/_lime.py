"""Captum-API ``Lime`` and ``KernelShap`` on the perturbation kernels (Captum 0.9 signatures).

``Lime(forward_func, interpretable_model=None, similarity_func=None, perturb_func=None)`` and
``KernelShap(forward_func)`` with ``attribute(inputs, baselines, target,
additional_forward_args, feature_mask, n_samples, perturbations_per_eval,
return_input_shape, show_progress)``.  Captum's semantics are kept: one surrogate per example
(or one for the batch when the forward returns a scalar per batch), ``perturbations_per_eval``
samples per forward call, the default similarity (exponential kernel, width 1, on the cosine
distance between the original and the perturbed *inputs*), the default interpretable model
(lasso α=0.01) and KernelShap's Shapley-size sampling with weight 1e6 on the empty and full
coalitions and an unregularised linear regression.

Where Captum loops in Python per sample, here the coalitions come from the counter-based
kernel (seeded from ``torch``'s global generator, so ``torch.manual_seed`` makes runs
repeatable), the perturbed batches are built by the fused kernel, the input-space distances
come from per-feature sums (O(F) per sample) and the surrogate is fitted by the Numba
ridge / lasso kernels.  A user ``perturb_func`` or ``similarity_func`` is honoured (called per
sample, as Captum does); an interpretable model other than the recognised Captum/sklearn
wrappers (``SkLearnLasso``, ``SkLearnRidge``, ``SkLearnLinearRegression``) is trained through
its own ``fit`` exactly as Captum would.  Captum hands its surrogate float32 data; so do we
(rounded to float32, solved in float64).
"""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from xaikernels.captum._base import PerturbationAttribution
from xaikernels.ops import perturb as P

__all__ = ["Lime", "KernelShap", "LimeBase", "get_exp_kernel_similarity_function", "SkLearnLasso",
           "SkLearnRidge", "SkLearnLinearRegression"]


# ------------------------------------------------------------------------ interpretable models
class _LinearSurrogate:
    """Minimal stand-ins for Captum's sklearn wrappers (usable without Captum installed):
    ``representation()`` (1, F) and ``bias()`` after a fit."""

    kind = "ridge"

    def __init__(self, **kwargs):
        self.construct_kwargs = kwargs
        self._coef: Optional[Tensor] = None
        self._bias: Optional[Tensor] = None

    def representation(self) -> Tensor:
        if self._coef is None:
            raise RuntimeError("the interpretable model has not been fitted")
        return self._coef

    def bias(self) -> Optional[Tensor]:
        return self._bias


class SkLearnLasso(_LinearSurrogate):
    kind = "lasso"


class SkLearnRidge(_LinearSurrogate):
    kind = "ridge"


class SkLearnLinearRegression(_LinearSurrogate):
    kind = "linear"


_KNOWN = {"SkLearnLasso": "lasso", "SkLearnRidge": "ridge", "SkLearnLinearRegression": "linear"}
_FAST_KWARGS = {"lasso": {"alpha", "max_iter", "tol"}, "ridge": {"alpha"}, "linear": set()}


def _model_kind(m) -> Optional[str]:
    kind = _KNOWN.get(type(m).__name__)
    if kind is None:
        return None
    kw = dict(getattr(m, "construct_kwargs", {}) or {})
    if kw.get("fit_intercept", True) is not True:
        return None
    kw.pop("fit_intercept", None)
    if not set(kw) <= _FAST_KWARGS[kind]:
        return None
    return kind


def _store(m, coef: np.ndarray, icpt: float) -> None:
    w = torch.tensor(coef, dtype=torch.float32).view(1, -1)
    b = torch.tensor([icpt], dtype=torch.float32)
    if isinstance(m, _LinearSurrogate):
        m._coef, m._bias = w, b
    elif hasattr(m, "_construct_model_params"):  # Captum's LinearModel
        m._construct_model_params(norm_type=None, weight_values=w, bias_value=b)


# ------------------------------------------------------------------------------ similarities
def get_exp_kernel_similarity_function(distance_mode: str = "cosine", kernel_width: float = 1.0) -> Callable:
    """Captum's exponential-kernel similarity ``exp(-d²/(2·width²))`` on the cosine or
    euclidean distance between the original and the perturbed input; recognised by
    :class:`Lime` and computed from the masks without materialising the comparison."""
    if distance_mode not in ("cosine", "euclidean"):
        raise ValueError("distance_mode must be either cosine or euclidean.")

    def default_exp_kernel(original_inp, perturbed_inp, __, **kwargs):
        a = torch.cat([t.flatten() for t in _tup(original_inp)]).float()
        b = torch.cat([t.flatten() for t in _tup(perturbed_inp)]).float()
        if distance_mode == "cosine":
            d = 1 - torch.nn.CosineSimilarity(dim=0)(a, b)
        else:
            d = torch.norm(a - b)
        return math.exp(-1 * (d ** 2) / (2 * (kernel_width ** 2)))

    default_exp_kernel._xk_exp = (distance_mode, float(kernel_width))
    return default_exp_kernel


def _tup(x) -> Tuple[Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


# ----------------------------------------------------------------------------------- helpers
def _format_baselines(inputs: Tuple[Tensor, ...], baselines) -> Tuple[Any, ...]:
    if baselines is None:
        return tuple(0.0 for _ in inputs)
    b = baselines if isinstance(baselines, tuple) else (baselines,)
    if len(b) != len(inputs):
        raise ValueError(f"{len(inputs)} inputs but {len(b)} baselines")
    return b


def _feature_masks(inputs, feature_mask) -> Tuple[Tuple[Tensor, ...], int]:
    if feature_mask is None:
        out, cur = [], 0
        for t in inputs:
            n = t[0].numel()
            out.append(cur + torch.arange(n, device=t.device).reshape(t[0:1].shape))
            cur += n
        return tuple(out), cur
    fm = _tup(feature_mask)
    if len(fm) != len(inputs):
        raise ValueError(f"{len(inputs)} inputs but {len(fm)} feature masks")
    lo = int(min(int(m.min()) for m in fm if m.numel()))
    if lo != 0:
        warnings.warn("Minimum element in feature mask is not 0, shifting indices to start at 0.", stacklevel=3)
        fm = tuple(m - lo for m in fm)
    return fm, int(max(int(m.max()) for m in fm if m.numel())) + 1


def _select(out: Tensor, target, n: int) -> Tensor:
    if target is None:
        pass
    elif isinstance(target, int) or (isinstance(target, Tensor) and target.numel() == 1):
        out = out[:, int(target)]
    elif isinstance(target, tuple):
        out = out[(slice(None),) + tuple(target)]
    else:
        t = torch.as_tensor(target, device=out.device).reshape(-1)
        out = torch.gather(out.reshape(out.shape[0], -1), 1, t.reshape(-1, 1))
    if n is not None and out.numel() != n:
        raise AssertionError(f"Number of outputs is not appropriate, must return one output per perturbed input "
                             f"(got {out.numel()} for {n})")
    return out.reshape(-1)


def _slice_args(args, i):
    if args is None:
        return None
    a = args if isinstance(args, tuple) else (args,)
    return tuple(x[i: i + 1] if isinstance(x, Tensor) and x.dim() > 0 else x for x in a)


def _expand_args(args, n):
    if args is None:
        return ()
    a = args if isinstance(args, tuple) else (args,)
    return tuple(torch.cat([x] * n, dim=0) if isinstance(x, Tensor) and x.dim() > 0 else x for x in a)


def _expand_target(target, n):
    if isinstance(target, list):
        return target * n
    if isinstance(target, Tensor) and target.numel() > 1:
        return torch.cat([target] * n, dim=0)
    return target


def _slice_target(target, i, bsz):
    if isinstance(target, (list, Tensor)) and not (isinstance(target, Tensor) and target.numel() == 1) \
            and len(target) == bsz:
        t = target[i]
        return int(t) if isinstance(t, Tensor) else t
    return target


# --------------------------------------------------------------------------------- LimeBase
class LimeBase(PerturbationAttribution):
    """Shared engine: one surrogate for one (possibly batched) example."""

    def __init__(self, forward_func: Callable, interpretable_model, similarity_func, perturb_func):
        PerturbationAttribution.__init__(self, forward_func)
        self.interpretable_model = interpretable_model
        self.similarity_func = similarity_func
        self.perturb_func = perturb_func

    # -- the parts KernelShap overrides
    def _draw_masks(self, n_samples: int, n_features: int, seed: int) -> np.ndarray:
        return P.sample_masks(n_samples, n_features, seed, p_on=0.5)

    def _weights(self, masks, inputs, baselines, fms, num_features, n_samples) -> np.ndarray:
        sim = self.similarity_func
        mode = getattr(sim, "_xk_exp", None)
        if mode is None:
            return None  # computed per sample by the caller
        metric, width = mode
        stats = np.zeros((num_features, 4))
        for x, b, fm in zip(inputs, baselines, fms):
            xa = x.detach().cpu().float()
            ba = (torch.as_tensor(b, dtype=xa.dtype).expand_as(xa) if not isinstance(b, Tensor)
                  else b.detach().cpu().float().expand_as(xa)).contiguous()
            seg = fm.detach().cpu().expand_as(xa).reshape(-1).numpy().astype(np.int64)
            stats += P.feature_stats(P.as_apb(xa.numpy(), "flat"), P.as_apb(ba.numpy(), "flat"), seg, num_features)
        d = P.mask_distances(masks, stats, metric)
        # Captum's exp(-d²/(2w²)) == lime's sqrt(exp(-d²/w²))
        return P.exp_kernel(d, width)

    def _fit(self, masks: np.ndarray, y: np.ndarray, w: np.ndarray) -> Tensor:
        m = self.interpretable_model
        X = masks.astype(np.float32).astype(np.float64)
        y = y.astype(np.float32).astype(np.float64)
        w = w.astype(np.float32).astype(np.float64)
        kind = _model_kind(m)
        if kind is None:
            from torch.utils.data import DataLoader, TensorDataset

            ds = TensorDataset(torch.from_numpy(X).float(), torch.from_numpy(y).float(), torch.from_numpy(w).float())
            m.fit(DataLoader(ds, batch_size=len(X)))
            return m.representation()
        kw = dict(getattr(m, "construct_kwargs", {}) or {})
        if kind == "lasso":
            coef, icpt = P.lasso_fit(X[None], y[None, :, None], w[None], kw.get("alpha", 1.0),
                                     max_iter=kw.get("max_iter", 1000), tol=kw.get("tol", 1e-4))
            c, b = coef[0, 0], float(icpt[0, 0])
        else:
            fit = P.fit_surrogate(X, y[:, None], w, alpha=float(kw.get("alpha", 1.0)) if kind == "ridge" else 0.0)
            c, b = fit["coef"][0], float(fit["intercept"][0])
        _store(m, c, b)
        return torch.tensor(c, dtype=torch.float32).view(1, -1)

    def _surrogate(self, inputs: Tuple[Tensor, ...], baselines, fms, num_features: int, target, args,
                   n_samples: int, per_eval: int, show_progress: bool) -> Tensor:
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        device = inputs[0].device
        custom_perturb = self.perturb_func is not None
        if custom_perturb:
            masks = self._custom_masks(inputs, baselines, fms, num_features, n_samples)
        else:
            seed = int(torch.randint(0, 2 ** 62, (1,)).item())
            masks = self._draw_masks(n_samples, num_features, seed)
        n = masks.shape[0]
        xs = [x.detach().cpu().contiguous() for x in inputs]
        bs = [(torch.as_tensor(b, dtype=x.dtype).expand_as(x) if not isinstance(b, Tensor)
               else b.detach().cpu().to(x.dtype).expand_as(x)).contiguous() for x, b in zip(xs, baselines)]
        segs = [fm.detach().cpu().expand_as(x).reshape(-1).numpy().astype(np.int64) for x, fm in zip(xs, fms)]
        if any(s.size and (s.min() < 0 or s.max() >= num_features) for s in segs):
            raise ValueError("feature_mask ids must lie in 0..num_features-1")
        w = self._weights(masks, xs, bs, fms, num_features, n)
        outs: List[Tensor] = []
        sims: List[float] = []
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=math.ceil(n / per_eval), desc=f"{type(self).__name__} attribution")
        # the feature map is prepared once; each batch is then one kernel call per input
        builders = [P.PerturbedBuilder(P.as_apb(x, "flat"), P.as_apb(b, "flat"), seg) for x, b, seg in zip(xs, bs, segs)]
        exp_args = _expand_args(args, per_eval)
        exp_target = _expand_target(target, per_eval)
        for s0 in range(0, n, per_eval):
            s1 = min(n, s0 + per_eval)
            k = s1 - s0
            batch = []
            for x, build in zip(xs, builders):
                out = torch.empty((k,) + tuple(x.shape), dtype=x.dtype)
                build(masks[s0:s1], out.view(k, 1, -1, 1))
                # one example per sample row: stack along the batch dimension like Captum
                batch.append(out.reshape((k * x.shape[0],) + tuple(x.shape[1:])).to(device))
            if w is None:
                for j in range(k):
                    pert = tuple(t[j * inputs[i].shape[0]:(j + 1) * inputs[i].shape[0]] for i, t in enumerate(batch))
                    s = self.similarity_func(inputs if len(inputs) > 1 else inputs[0],
                                             pert if len(pert) > 1 else pert[0],
                                             torch.from_numpy(masks[s0 + j: s0 + j + 1]).long().to(device),
                                             baselines=baselines if len(inputs) > 1 else baselines[0],
                                             feature_mask=fms if len(inputs) > 1 else fms[0],
                                             num_interp_features=num_features)
                    sims.append(float(s.flatten()[0]) if isinstance(s, Tensor) else float(s))
            a = exp_args if k == per_eval else _expand_args(args, k)
            t = exp_target if k == per_eval else _expand_target(target, k)
            with torch.no_grad():
                o = self.forward_func(*batch, *a)
            if not isinstance(o, Tensor):
                o = torch.tensor([o])
            outs.append(_select(o, t, k).detach().cpu().double())
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        y = torch.cat(outs).numpy()
        if w is None:
            w = np.asarray(sims, dtype=np.float64)
        return self._fit(masks, y, w)

    def _custom_masks(self, inputs, baselines, fms, num_features, n_samples) -> np.ndarray:
        kwargs = dict(baselines=baselines if len(inputs) > 1 else baselines[0],
                      feature_mask=fms if len(inputs) > 1 else fms[0], num_interp_features=num_features)
        inp = inputs if len(inputs) > 1 else inputs[0]
        rows = []
        if inspect.isgeneratorfunction(self.perturb_func):
            gen = self.perturb_func(inp, **kwargs)
            for _ in range(n_samples):
                try:
                    rows.append(next(gen))
                except StopIteration:
                    warnings.warn("Generator completed prior to given n_samples iterations!", stacklevel=3)
                    break
        else:
            rows = [self.perturb_func(inp, **kwargs) for _ in range(n_samples)]
        m = torch.cat([torch.as_tensor(r).reshape(1, -1) for r in rows]).cpu().numpy()
        if m.shape[1] != num_features or not np.isin(m, (0, 1)).all():
            raise ValueError(f"perturb_func must return binary (1, {num_features}) samples")
        return m.astype(np.uint8)

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False


class Lime(LimeBase):
    """Captum's ``Lime`` on Numba kernels (see the module docstring)."""

    def __init__(self, forward_func: Callable, interpretable_model=None, similarity_func: Optional[Callable] = None,
                 perturb_func: Optional[Callable] = None) -> None:
        if interpretable_model is None:
            interpretable_model = SkLearnLasso(alpha=0.01)
        if similarity_func is None:
            similarity_func = get_exp_kernel_similarity_function()
        super().__init__(forward_func, interpretable_model, similarity_func, perturb_func)

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, feature_mask=None,
                  n_samples: int = 25, perturbations_per_eval: int = 1, return_input_shape: bool = True,
                  show_progress: bool = False):
        """Surrogate coefficients, per example, in the input's shape (or (N, F) with
        ``return_input_shape=False``).  Arguments as Captum's ``Lime.attribute``."""
        return self._attribute(inputs, baselines, target, additional_forward_args, feature_mask, n_samples,
                               perturbations_per_eval, return_input_shape, show_progress)

    def _attribute(self, inputs, baselines, target, args, feature_mask, n_samples, per_eval, return_input_shape,
                   show_progress):
        is_tuple = isinstance(inputs, tuple)
        inp = _tup(inputs)
        if not all(isinstance(t, Tensor) for t in inp):
            raise TypeError("inputs must be a tensor or a tuple of tensors")
        if per_eval < 1:
            raise ValueError("perturbations_per_eval must be >= 1")
        base = _format_baselines(inp, baselines)
        fms, F = _feature_masks(inp, feature_mask)
        if F > 10000:
            warnings.warn("Attempting to construct interpretable model with > 10000 features.", stacklevel=2)
        bsz = inp[0].shape[0]
        if bsz > 1:
            with torch.no_grad():
                test = self.forward_func(*inp, *_expand_args(args, 1))
            if isinstance(test, Tensor) and test.dim() > 0:
                test = _select(test, target, None)
            if isinstance(test, Tensor) and test.numel() > 1:
                if test.numel() != bsz:
                    raise AssertionError("Invalid number of outputs, forward function should return a scalar per "
                                         "example or a scalar per input batch.")
                outs = []
                for i in range(bsz):
                    ci = tuple(t[i: i + 1] for t in inp)
                    cb = tuple(b[i: i + 1] if isinstance(b, Tensor) and b.dim() > 0 and b.shape[0] == bsz else b
                               for b in base)
                    cf = tuple(m[i: i + 1] if m.dim() > 0 and m.shape[0] == bsz else m for m in fms)
                    coefs = self._surrogate(ci, cb, cf, F, _slice_target(target, i, bsz), _slice_args(args, i),
                                            n_samples, per_eval, show_progress)
                    outs.append(self._shape(ci, cf, coefs, F, True) if return_input_shape else coefs.reshape(1, -1))
                if return_input_shape:
                    res = tuple(torch.cat([o[j] for o in outs]) for j in range(len(inp)))
                    return res if is_tuple else res[0]
                return torch.cat(outs)
            if per_eval != 1:
                raise AssertionError("Perturbations per eval must be 1 when forward function returns single value "
                                     "per batch!")
        coefs = self._surrogate(inp, base, fms, F, target, args, n_samples, per_eval, show_progress)
        if not return_input_shape:
            return coefs
        res = self._shape(inp, fms, coefs, F, True, leading_dim_one=bsz > 1)
        return res if is_tuple else res[0]

    @staticmethod
    def _shape(inp, fms, coefs, F, _is_tuple, leading_dim_one=False):
        c = coefs.flatten().float()
        out = []
        for x, fm in zip(inp, fms):
            idx = fm.to(x.device).long().expand_as(x)
            a = c.to(x.device)[idx]
            if leading_dim_one:
                a = a[0:1]
            out.append(a)
        return tuple(out)


class KernelShap(Lime):
    """Captum's ``KernelShap`` on Numba kernels: coalition sizes drawn with probability
    ``∝ (M-1)/(k(M-k))``, the first two samples the full and the empty coalition (weight
    1e6), an unregularised linear regression with intercept."""

    def __init__(self, forward_func: Callable) -> None:
        super().__init__(forward_func, interpretable_model=SkLearnLinearRegression(),
                         similarity_func=self.kernel_shap_similarity_kernel)
        self.inf_weight = 1000000.0

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, feature_mask=None,
                  n_samples: int = 25, perturbations_per_eval: int = 1, return_input_shape: bool = True,
                  show_progress: bool = False):
        """Shapley value estimates per example (input shape, or (N, F)).  Arguments as
        Captum's ``KernelShap.attribute``."""
        return self._attribute(inputs, baselines, target, additional_forward_args, feature_mask, n_samples,
                               perturbations_per_eval, return_input_shape, show_progress)

    def kernel_shap_similarity_kernel(self, _, __, interpretable_sample: Tensor, **kwargs) -> Tensor:
        k = int(interpretable_sample.sum(dim=1).item())
        return torch.tensor([self.inf_weight if k in (0, kwargs["num_interp_features"]) else 1.0])

    def _draw_masks(self, n_samples: int, n_features: int, seed: int) -> np.ndarray:
        head = np.vstack([np.ones((1, n_features), np.uint8), np.zeros((1, n_features), np.uint8)])[:n_samples]
        if n_samples <= 2 or n_features < 2:
            if n_features < 2 and n_samples > 2:
                head = np.vstack([head] + [head[i % 2: i % 2 + 1] for i in range(n_samples - 2)])
            return head
        rest = P.sample_masks(n_samples - 2, n_features, seed, size_cdf=P.shapley_size_cdf(n_features))
        return np.vstack([head, rest])

    def _weights(self, masks, inputs, baselines, fms, num_features, n_samples) -> np.ndarray:
        k = masks.sum(1)
        return np.where((k == 0) | (k == num_features), self.inf_weight, 1.0)
