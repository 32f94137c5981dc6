"""Captum drop-in ``GradientShap`` (and its building block ``InputBaselineXGradient``), streamed.

Captum's GradientShap is a NoiseTunnel (smoothgrad, baselines drawn from the distribution)
around ``InputBaselineXGradient``: for sample ``s`` of example ``e``,

    x̃ = x_e + ε,  b = baselines[i_{e,s}],  α_{e,s} ~ U(0, 1)
    φ_{e,s} = (x̃ − b) ⊙ ∇F(α x̃ + (1 − α) b),        GradientShap(x_e) = mean_s φ_{e,s}

with the draws taken from the global generators in this order: ``numpy.random.choice`` of
baseline indices (one call per baseline tensor), ``torch.normal`` noise (one draw per input,
also when ``stdevs`` is 0), ``numpy.random.uniform`` of the alphas.  The same calls are made
here, so the same ``torch.manual_seed`` / ``numpy.random.seed`` give Captum's numbers; the
samples are then streamed through the model in memory-budgeted chunks and folded into an
fp32 running mean instead of materialising all ``N · n_samples`` rows and their graph.
"""
from __future__ import annotations

from inspect import signature
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from xaikernels.captum import _common as C
from xaikernels.captum._base import GradientAttribution
from xaikernels.captum._integrated import RowArgs, run_rows, tensor_bytes_per_row
from xaikernels.captum._noise_tunnel import (Folder, NoiseTunnel, draw_noise, stdevs_tuple)


def _format_callable_baseline(baselines: Any, inputs: Any) -> Tuple[Any, ...]:
    """Captum's rule: a callable is called with no arguments, or with ``inputs``."""
    if callable(baselines):
        baselines = baselines() if len(signature(baselines).parameters) == 0 else baselines(inputs)
    return C._format_baseline(baselines, C._format_tensor_into_tuples(inputs))


def _scale_input(inp: Tensor, baseline: Any, alpha: Tensor) -> Tensor:
    """Captum's random point on the path: ``α x + (1 − α) b`` (in this form, for its rounding)."""
    alpha = alpha.view((inp.shape[0],) + (1,) * (inp.dim() - 1))
    return (alpha * inp + (1.0 - alpha) * baseline).requires_grad_()


class InputBaselineXGradient(GradientAttribution):
    """``(x − b) ⊙ ∇F(α x + (1 − α) b)`` at one random ``α ~ U(0, 1)`` per example
    (``numpy.random.uniform``), as ``captum.attr._core.gradient_shap.InputBaselineXGradient``.

    Parameters
    ----------
    forward_func : callable
    multiply_by_inputs : bool, default True
        Multiply the gradients by ``inputs − baselines``.
    """

    def __init__(self, forward_func: Callable[..., Tensor], multiply_by_inputs: bool = True) -> None:
        GradientAttribution.__init__(self, forward_func)
        self._multiply_by_inputs = multiply_by_inputs

    @C.entry
    def attribute(self, inputs, baselines=None, target: C.TargetType = None,
                  additional_forward_args: Any = None, return_convergence_delta: bool = False):
        """Attributions (and the convergence delta per example if requested)."""
        is_tuple = C._is_tuple(inputs)
        inputs_t, baselines_t = C._format_input_baseline(inputs, baselines)
        alpha = torch.tensor(np.random.uniform(0.0, 1.0, inputs_t[0].shape[0]),
                             device=inputs_t[0].device, dtype=inputs_t[0].dtype)
        scaled = tuple(_scale_input(x, b, alpha) for x, b in zip(inputs_t, baselines_t))
        grads = self.gradient_func(self.forward_func, scaled, target, additional_forward_args)
        if self.multiplies_by_inputs:
            attributions = tuple((x - b) * g for x, b, g in zip(inputs_t, baselines_t, grads))
        else:
            attributions = tuple(grads)
        if return_convergence_delta:
            delta = self.compute_convergence_delta(attributions, baselines_t, inputs,
                                                   additional_forward_args=additional_forward_args,
                                                   target=target)
            return C._format_output(is_tuple, attributions), delta
        return C._format_output(is_tuple, attributions)

    def attribute_future(self) -> None:
        """Not implemented (as in Captum)."""
        raise NotImplementedError("attribute_future is not implemented for InputBaseLineXGradient")

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs


class GradientShap(GradientAttribution):
    """GradientSHAP (Lundberg & Lee 2017): expected gradients over random baselines,
    random points on the path and input noise, streamed.

    Drop-in for ``captum.attr.GradientShap`` (see the module docstring for the estimator and
    the random draws, which are Captum's).

    Parameters
    ----------
    forward_func : callable
    multiply_by_inputs : bool, default True
        Multiply the gradients by ``inputs − baselines`` (global attribution).

    Attributes
    ----------
    memory_budget : int or None
        Bytes per streamed chunk (default ``XAIKERNELS_MEMORY_BUDGET_MB``, 768 MiB).
    """

    memory_budget: Optional[int] = None

    def __init__(self, forward_func: Callable[..., Tensor], multiply_by_inputs: bool = True) -> None:
        GradientAttribution.__init__(self, forward_func)
        self._multiply_by_inputs = multiply_by_inputs

    @C.entry
    def attribute(self, inputs, baselines, n_samples: int = 5, stdevs=0.0,
                  target: C.TargetType = None, additional_forward_args: Any = None,
                  return_convergence_delta: bool = False):
        """GradientSHAP attributions.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensors, each (N, ...).
        baselines : Tensor (B, ...) or tuple of those (one per input; a number is allowed for
            inputs after the first), or a callable returning them (called with no
            arguments, or with ``inputs``): the baseline distribution.
        n_samples : int, default 5
            Random samples per example.
        stdevs : float or tuple of floats, default 0.0
            Standard deviation of Gaussian noise added to the inputs.
        target, additional_forward_args : Captum's forms, as for IntegratedGradients.
        return_convergence_delta : bool, default False
            Also return ``Σ φ − (F(x̃) − F(b))`` for every sample, (N · n_samples,),
            example by example.

        Returns
        -------
        Tensor or tuple of Tensors shaped like the inputs; then the deltas if requested.
        """
        formatted = _format_callable_baseline(baselines, inputs)
        assert isinstance(formatted[0], torch.Tensor), (
            "Baselines distribution has to be provided in a form of a torch.Tensor "
            f"{formatted[0]}.")
        if not isinstance(n_samples, int) or n_samples < 1:
            # Captum's own path: its errors (division by zero, negative sizes) as Captum's.
            method = InputBaselineXGradient(self.forward_func, self.multiplies_by_inputs)
            method.gradient_func = self.gradient_func
            nt = NoiseTunnel(method)
            return nt.attribute.__wrapped__(
                nt, inputs, nt_type="smoothgrad", nt_samples=n_samples, stdevs=stdevs,
                draw_baseline_from_distrib=True, baselines=formatted, target=target,
                additional_forward_args=additional_forward_args,
                return_convergence_delta=return_convergence_delta)
        with torch.no_grad():
            return self._streamed(inputs, formatted, n_samples, stdevs, target,
                                  additional_forward_args, return_convergence_delta)

    def _streamed(self, inputs, baselines, k: int, stdevs, target, additional_forward_args,
                  return_delta: bool):
        is_tuple = C._is_tuple(inputs)
        inputs_t = C._format_tensor_into_tuples(inputs)
        n = inputs_t[0].shape[0]
        rows = RowArgs(n, target, C._format_additional_forward_args(additional_forward_args))
        if not rows.gather:  # no per-example layout: Captum's exact batch, one call
            method = InputBaselineXGradient(self.forward_func, self.multiplies_by_inputs)
            method.gradient_func = self.gradient_func
            nt = NoiseTunnel(method)
            return nt.attribute.__wrapped__(
                nt, inputs, nt_type="smoothgrad", nt_samples=k, stdevs=stdevs,
                draw_baseline_from_distrib=True, baselines=baselines, target=target,
                additional_forward_args=additional_forward_args,
                return_convergence_delta=return_delta)
        # 1. baseline indices (numpy), one draw per baseline tensor, as Captum's expansion
        C._validate_input(inputs_t, baselines, draw_baseline_from_distrib=True)
        picks = [torch.as_tensor(np.random.choice(b.shape[0], k * n), dtype=torch.long)
                 if isinstance(b, Tensor) else None for b in baselines]
        # 2. noise (torch), one draw per input, drawn even for stdev 0
        noise = [draw_noise(x, sd, k) for x, sd in zip(inputs_t, stdevs_tuple(stdevs, inputs_t))]
        # 3. the point on the path (numpy), in the first input's dtype
        alphas = torch.tensor(np.random.uniform(0.0, 1.0, n * k), device=inputs_t[0].device,
                              dtype=inputs_t[0].dtype)
        folder = Folder("smoothgrad", k)
        state: Dict[str, Any] = {"delta": None}

        def work(p0: int, p1: int) -> None:
            pr = torch.arange(p0, p1)
            s, e = pr // n, pr % n
            q = e * k + s  # the row of Captum's example-major batch
            noisy = tuple(torch.add(x.detach()[e.to(x.device)], z[q.to(z.device)])
                          for x, z in zip(inputs_t, noise))
            bases = tuple(b[pick[q].to(b.device)] if pick is not None else b
                          for b, pick in zip(baselines, picks))
            alpha = alphas[q.to(alphas.device)]
            scaled = tuple(_scale_input(x, b, alpha) for x, b in zip(noisy, bases))
            tgt, args = rows.target_rows(e), rows.args_rows(e)
            grads = self.gradient_func(self.forward_func, scaled, tgt, args)
            if self.multiplies_by_inputs:
                attrs = tuple((x - b) * g for x, b, g in zip(noisy, bases, grads))
            else:
                attrs = tuple(grads)
            if return_delta:
                d = self.compute_convergence_delta(attrs, bases, noisy, target=tgt,
                                                   additional_forward_args=args)
                if state["delta"] is None:
                    state["delta"] = torch.empty(n * k, dtype=d.dtype, device=d.device)
                state["delta"][q.to(d.device)] = d
            folder.fold(attrs, p0, n)

        run_rows(n * k, work, None, 4 * tensor_bytes_per_row(noise), self.memory_budget)
        out = C._format_output(is_tuple, folder.result())
        return (out, state["delta"]) if return_delta else out

    def attribute_future(self) -> None:
        """Not implemented for GradientShap (as in Captum)."""
        raise NotImplementedError("attribute_future is not implemented for GradientShap")

    def has_convergence_delta(self) -> bool:
        """True: ``attribute`` can return convergence deltas."""
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs


__all__: Tuple[str, ...] = ("GradientShap", "InputBaselineXGradient")
