"""Captum drop-in ``NoiseTunnel``: SmoothGrad, SmoothGrad², VarGrad around any attribution.

Same numbers as Captum for the same ``torch.manual_seed`` (and ``numpy.random.seed`` when
baselines are drawn from a distribution): the noise is drawn with the same calls, shapes
and order on torch's global generator (one ``normal`` draw of ``N · k`` rows per input and
per partition of ``k`` samples), baseline indices with the same ``numpy.random.choice``
calls.  What differs is how the samples are pushed through the wrapped method:

- Captum repeats every input ``nt_samples`` times, adds a full-size noise tensor made from
  a full-size ``stdev`` tensor, and calls the method once on all ``N · nt_samples`` rows.
- Here, when ``nt_samples_batch_size`` is None and the wrapped method is one whose rows are
  independent (Saliency, InputXGradient, GuidedBackprop, Deconvolution, IntegratedGradients,
  LayerGradCam, GuidedGradCam — these drop-ins or Captum's own), only the noise itself is
  held; noisy rows are formed chunk by chunk (chunk size from a memory budget), and their
  attributions are folded into running sums (fp32 mean or mean of squares; for
  ``vargrad`` Welford's numerically stable variance, with fp64 state).
- With ``nt_samples_batch_size`` given, or any other wrapped method, the method is called
  on Captum's partitions exactly (its own random draws, if any, then match Captum's too);
  the noisy inputs are formed in place in the noise tensor, and the sums are still folded
  by the streaming accumulator.

``vargrad`` differs from Captum only by rounding: Captum computes ``E[a²] − E[a]²`` (which
cancels catastrophically when the variance is small next to the mean), here the variance
is Welford's ``M2 / n`` accumulated in fp64.
"""
from __future__ import annotations

from enum import Enum
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from xaikernels.captum import _common as C
from xaikernels.captum._base import Attribution
from xaikernels.captum._integrated import OnceWarnings, run_rows, tensor_bytes_per_row
from xaikernels.ops import paths as ops


class NoiseTunnelType(Enum):
    smoothgrad = 1
    smoothgrad_sq = 2
    vargrad = 3


SUPPORTED_NOISE_TUNNEL_TYPES: List[str] = list(NoiseTunnelType.__members__.keys())

# Wrapped methods whose attribution of a row depends on that row alone, with no random
# draws: their calls can be re-chunked freely without changing a number.
_ROW_INDEPENDENT = frozenset({"Saliency", "InputXGradient", "GuidedBackprop", "Deconvolution",
                              "IntegratedGradients", "LayerGradCam", "GuidedGradCam"})


def _is_row_independent(method: Any) -> bool:
    cls = type(method)
    return cls.__name__ in _ROW_INDEPENDENT and (
        cls.__module__.startswith("xaikernels.captum") or cls.__module__.startswith("captum.attr"))


def _is_gradient_method(method: Any) -> bool:
    # Captum's own classes derive from captum's GradientAttribution, ours from ours.
    return any(c.__name__ == "GradientAttribution" for c in type(method).__mro__)


# --------------------------------------------------------------------------- noise
def stdevs_tuple(stdevs: Any, inputs: Tuple[Tensor, ...]) -> Tuple[Any, ...]:
    """Captum's checks on ``stdevs``: a float, or a tuple with one entry per input."""
    if isinstance(stdevs, tuple):
        assert len(stdevs) == len(inputs), (
            f"The number of input tensors in {len(inputs)} must be equal to the number of "
            f"stdevs values {len(stdevs)}")
        return stdevs
    assert isinstance(stdevs, float), f"stdevs must be type float. Given: {type(stdevs)}"
    return (stdevs,) * len(inputs)


def draw_noise(inp: Tensor, stdev: Any, k: int) -> Tensor:
    """The noise Captum adds for ``k`` samples per example: shape (N·k, ...), row
    ``e·k + s`` for sample ``s`` of example ``e``.

    Captum calls ``torch.normal(0, full-size stdev tensor)``, which draws a standard normal
    tensor of that shape and scales it; ``randn`` of the same shape and dtype consumes the
    generator identically, so scaling it in place gives the same numbers without the
    full-size stdev tensor.  Anything unusual (a negative, NaN or non-float stdev) takes
    Captum's own expression, so its errors are Captum's too.
    """
    std_t = torch.tensor(stdev, device=inp.device)
    size = (inp.shape[0] * k,) + tuple(inp.shape[1:])
    if not (isinstance(stdev, float) and std_t.is_floating_point() and stdev >= 0):
        return torch.normal(0, std_t.repeat(size))
    noise = torch.randn(size, dtype=std_t.dtype, device=inp.device)
    return noise.mul_(std_t).add_(0.0)


def noisy_block(inp: Tensor, noise: Tensor, k: int) -> Tensor:
    """``inp.repeat_interleave(k) + noise`` (Captum's noisy partition), in place in ``noise``
    when the dtypes allow."""
    if torch.result_type(inp, noise) == noise.dtype and inp.shape[0] > 0:
        n = inp.shape[0]
        noise.view(n, k, *inp.shape[1:]).add_(inp.detach().unsqueeze(1))
        return noise
    return inp.repeat_interleave(k, dim=0) + noise


# --------------------------------------------------------------------------- kwargs
def expand_partial(k: int, kwargs: Dict[str, Any], inputs: Tuple[Tensor, ...], draw: bool) -> None:
    """Captum's expansion of per-example keyword arguments to ``k`` samples per example
    (``repeat_interleave``; baselines drawn with ``numpy.random.choice`` when ``draw``)."""
    if "additional_forward_args" in kwargs:
        args = C._format_additional_forward_args(kwargs["additional_forward_args"])
        if args is not None:
            kwargs["additional_forward_args"] = tuple(
                a.repeat_interleave(k, dim=0) if isinstance(a, Tensor) and a.dim() > 0 else a
                for a in args)
    if "target" in kwargs:
        t = kwargs["target"]
        if isinstance(t, list):
            kwargs["target"] = [i for i in t for _ in range(k)]
        elif isinstance(t, Tensor) and torch.numel(t) > 1:
            kwargs["target"] = t.repeat_interleave(k, dim=0)
    if "baselines" in kwargs:
        baselines = C._format_baseline(kwargs["baselines"], inputs)
        C._validate_input(inputs, baselines, draw_baseline_from_distrib=draw)
        if draw:
            bsz = inputs[0].shape[0]
            baselines = tuple(b[np.random.choice(b.shape[0], k * bsz).tolist()]
                              if isinstance(b, Tensor) else b for b in baselines)
        else:
            baselines = tuple(
                b.repeat_interleave(k, dim=0)
                if isinstance(b, Tensor) and b.shape[0] == inp.shape[0] and b.shape[0] > 1 else b
                for inp, b in zip(inputs, baselines))
        kwargs["baselines"] = baselines
    if kwargs.get("feature_mask") is not None:
        fm = kwargs["feature_mask"]
        fm_t = C._format_tensor_into_tuples(fm)
        fm_t = tuple(m.repeat_interleave(k, dim=0) if m.size(0) > 1 else m for m in fm_t)
        kwargs["feature_mask"] = C._format_output(isinstance(fm, tuple), fm_t)


class RowKwargs:
    """Per-example keyword arguments of the wrapped method, gathered for streamed rows.

    A streamed row ``p = s·N + e`` is sample ``s`` of example ``e``; in Captum's expanded
    partition it sits at ``q = e·k + s``.  Each argument Captum would ``repeat_interleave``
    is gathered at ``e``; baselines drawn from a distribution at the drawn index of ``q``.
    ``ok`` is False when an argument has no per-example layout (then streaming is off).
    """

    def __init__(self, kwargs: Dict[str, Any], inputs: Tuple[Tensor, ...], k: int, draw: bool):
        self.kwargs, self.k, self.n = kwargs, k, inputs[0].shape[0]
        n = self.n
        self.args = (C._format_additional_forward_args(kwargs["additional_forward_args"])
                     if "additional_forward_args" in kwargs else None)
        ok = kwargs.get("feature_mask") is None
        t = kwargs.get("target")
        if isinstance(t, list):
            ok = ok and len(t) == n
        elif isinstance(t, Tensor) and t.numel() > 1:
            ok = ok and t.dim() == 1 and t.shape[0] == n
        for a in self.args or ():
            if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] != n:
                ok = False
        self.ok = ok
        self.baselines: Optional[Tuple[Any, ...]] = None
        self.picks: List[Optional[Tensor]] = []
        self.draw = draw
        if ok and "baselines" in kwargs:
            self.baselines = C._format_baseline(kwargs["baselines"], inputs)
            C._validate_input(inputs, self.baselines, draw_baseline_from_distrib=draw)
            if draw:  # the same numpy draws, in the same order, as Captum's expansion
                self.picks = [torch.as_tensor(np.random.choice(b.shape[0], k * n), dtype=torch.long)
                              if isinstance(b, Tensor) else None for b in self.baselines]

    def rows(self, e: Tensor, q: Tensor) -> Dict[str, Any]:
        kw = dict(self.kwargs)
        if self.args is not None:
            kw["additional_forward_args"] = tuple(
                a[e.to(a.device)] if isinstance(a, Tensor) and a.dim() > 0 else a for a in self.args)
        if "target" in kw:
            t = kw["target"]
            if isinstance(t, list):
                kw["target"] = [t[i] for i in e.tolist()]
            elif isinstance(t, Tensor) and t.numel() > 1:
                kw["target"] = t[e.to(t.device)]
        if self.baselines is not None:
            if self.draw:
                kw["baselines"] = tuple(b[pick[q].to(b.device)] if pick is not None else b
                                        for b, pick in zip(self.baselines, self.picks))
            else:
                kw["baselines"] = tuple(
                    b[e.to(b.device)] if isinstance(b, Tensor) and b.shape[0] == self.n and self.n > 1
                    else b for b in self.baselines)
        return kw


# --------------------------------------------------------------------------- accumulator
class Folder:
    """Running state of the attribution tuples of a noise tunnel: fp32 (fp64 for fp64
    attributions) sums, fp64 Welford state for the variance.

    Rows arrive as ``p = s·N + e`` in increasing ``p``: weighted sum (smoothgrad), sum of
    squares (smoothgrad_sq) or Welford mean/M2 (vargrad), via the ``accumulate`` op.
    """

    _MODES = {"smoothgrad": ops.WSUM, "smoothgrad_sq": ops.SQSUM, "vargrad": ops.WELFORD}

    def __init__(self, nt_type: str, n_samples: int):
        self.mode = self._MODES[nt_type]
        self.n_samples = n_samples
        self.a: List[Tensor] = []
        self.b: List[Optional[Tensor]] = []
        self.meta: List[Tuple[torch.dtype, torch.Size]] = []
        self.n = 0

    def fold(self, attrs: Tuple[Tensor, ...], p0: int, n: int) -> None:
        if not self.a:
            self.n = n
            for t in attrs:
                # Welford's M2 is a sum of small squared deviations around a mean that fp32
                # resolves only to ulp(mean): keep the variance state in fp64.
                acc_t = torch.float64 if self.mode == ops.WELFORD else ops.acc_dtype(t.dtype)
                self.a.append(torch.zeros((n, t[0].numel()), dtype=acc_t, device=t.device))
                self.b.append(torch.zeros_like(self.a[-1]) if self.mode == ops.WELFORD else None)
                self.meta.append((t.dtype, t.shape[1:]))
        assert len(attrs) == len(self.a), "the wrapped method changed its number of outputs"
        for t, a, b in zip(attrs, self.a, self.b):
            w = torch.ones(self.n_samples, dtype=a.dtype)
            ops.accumulate(a, b, t.detach().reshape(t.shape[0], -1), p0, n, w, self.mode)

    def result(self) -> Tuple[Tensor, ...]:
        out = []
        for a, b, (dt, shape) in zip(self.a, self.b, self.meta):
            # Captum's mean is ``sum * 1 / n``; the variance is Welford's M2 / n.
            r = (b if self.mode == ops.WELFORD else a) / self.n_samples
            out.append(r.to(dt).view(self.n, *shape))
        return tuple(out)


class NoiseTunnel(Attribution):
    """SmoothGrad / SmoothGrad² / VarGrad around any attribution method.

    Drop-in for ``captum.attr.NoiseTunnel``: for each example, ``nt_samples`` noisy copies
    ``x + ε``, ``ε ~ N(0, stdev²)`` are attributed with the wrapped method and reduced to
    the mean (``smoothgrad``), the mean of squares (``smoothgrad_sq``) or the variance
    (``vargrad``).  Wraps these drop-ins or Captum's own classes.

    Parameters
    ----------
    attribution_method : Attribution
        Any attribution instance (``Saliency``, ``IntegratedGradients``, ...).

    Attributes
    ----------
    memory_budget : int or None
        Bytes per streamed chunk (default ``XAIKERNELS_MEMORY_BUDGET_MB``, 768 MiB).
    """

    is_delta_supported: bool
    _multiply_by_inputs: bool
    is_gradient_method: bool
    memory_budget: Optional[int] = None

    def __init__(self, attribution_method: Attribution) -> None:
        self.attribution_method = attribution_method
        self.is_delta_supported = self.attribution_method.has_convergence_delta()
        self._multiply_by_inputs = self.attribution_method.multiplies_by_inputs
        self.is_gradient_method = _is_gradient_method(self.attribution_method)
        Attribution.__init__(self, self.attribution_method.forward_func)

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    @C.entry
    def attribute(self, inputs, nt_type: str = "smoothgrad", nt_samples: int = 5,
                  nt_samples_batch_size: Optional[int] = None, stdevs=1.0,
                  draw_baseline_from_distrib: bool = False, **kwargs: Any):
        """Noise-tunnel attributions.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensors, each (N, ...).
        nt_type : "smoothgrad" (default) | "smoothgrad_sq" | "vargrad".
        nt_samples : int, default 5
            Noisy samples per example.
        nt_samples_batch_size : int, optional
            Samples per example in one call of the wrapped method (Captum's partitions).
            None: all samples, streamed in memory-budgeted chunks where the wrapped method
            allows it (same numbers).
        stdevs : float or tuple of floats (one per input), default 1.0
            Standard deviation of the Gaussian noise (must be a float, as in Captum).
        draw_baseline_from_distrib : bool, default False
            Draw each sample's baseline from the rows of ``baselines`` (numpy's global RNG).
        **kwargs
            Passed on to the wrapped method's ``attribute`` (target, baselines,
            additional_forward_args, return_convergence_delta, ...), expanded per sample.

        Returns
        -------
        Attributions shaped like the wrapped method's (tensor or tuple); with
        ``return_convergence_delta=True`` for a method that supports it, also the deltas
        (N · nt_samples,), example by example.
        """
        return_delta = bool("return_convergence_delta" in kwargs and kwargs["return_convergence_delta"])
        with torch.no_grad():
            batch = nt_samples if nt_samples_batch_size is None else min(nt_samples, nt_samples_batch_size)
            n_partitions = nt_samples // batch
            is_inputs_tuple = isinstance(inputs, tuple)
            inputs = C._format_tensor_into_tuples(inputs)
            assert nt_type in SUPPORTED_NOISE_TUNNEL_TYPES, (
                "Noise types must be either `smoothgrad`, `smoothgrad_sq` or `vargrad`. "
                f"Given {nt_type}")
            folder = Folder(nt_type, nt_samples)
            streamed = None
            if nt_samples_batch_size is None and _is_row_independent(self.attribution_method):
                row_kwargs = RowKwargs(kwargs, inputs, nt_samples, draw_baseline_from_distrib)
                if row_kwargs.ok:
                    streamed = self._stream(inputs, is_inputs_tuple, nt_samples, stdevs,
                                            row_kwargs, folder, return_delta)
            if streamed is None:
                streamed = self._partitions(inputs, is_inputs_tuple, nt_samples, batch,
                                            n_partitions, stdevs, draw_baseline_from_distrib,
                                            kwargs, folder, return_delta)
            is_attrib_tuple, delta = streamed
            attributions = folder.result()
        out = C._format_output(is_attrib_tuple, attributions)
        if self.is_delta_supported and return_delta:
            return out, delta
        return out

    # ------------------------------------------------------------------ internals
    def _call(self, caller: OnceWarnings, inputs: Tuple[Tensor, ...], is_inputs_tuple: bool,
              kwargs: Dict[str, Any], return_delta: bool):
        method = self.attribution_method
        fn = getattr(method.attribute, "__wrapped__", None)
        arg = inputs if is_inputs_tuple else inputs[0]
        out = caller(fn, method, arg, **kwargs) if fn is not None else caller(method.attribute, arg, **kwargs)
        delta = None
        if self.is_delta_supported and return_delta:
            out, delta = out
        return C._is_tuple(out), C._format_tensor_into_tuples(out), delta

    def _stream(self, inputs, is_inputs_tuple, k, stdevs, row_kwargs: RowKwargs, folder: Folder,
                return_delta):
        n = inputs[0].shape[0]
        noise = [draw_noise(inp, sd, k) for inp, sd in zip(inputs, stdevs_tuple(stdevs, inputs))]
        caller = OnceWarnings()
        state: Dict[str, Any] = {"tuple": is_inputs_tuple, "delta": None}

        def work(p0: int, p1: int) -> None:
            pr = torch.arange(p0, p1)
            s, e = pr // n, pr % n
            q = e * k + s
            rows = []
            for inp, z in zip(inputs, noise):
                row = torch.add(inp.detach()[e.to(inp.device)], z[q.to(z.device)])
                rows.append(row.requires_grad_() if self.is_gradient_method else row)
            is_tuple, attrs, delta = self._call(caller, tuple(rows), is_inputs_tuple,
                                                row_kwargs.rows(e, q), return_delta)
            for t in attrs:
                assert t.shape[0] == p1 - p0, "attributions must have one row per input row"
            folder.fold(attrs, p0, n)
            state["tuple"] = is_tuple
            if delta is not None:
                if state["delta"] is None:
                    state["delta"] = torch.empty(n * k, dtype=delta.dtype, device=delta.device)
                state["delta"][q.to(delta.device)] = delta

        row_bytes = 4 * tensor_bytes_per_row(noise)
        run_rows(n * k, work, None, row_bytes, self.memory_budget)
        return state["tuple"], state["delta"]

    def _partitions(self, inputs, is_inputs_tuple, nt_samples, batch, n_partitions, stdevs, draw,
                    kwargs, folder: Folder, return_delta):
        kwargs_copy = kwargs.copy()
        expand_partial(batch, kwargs_copy, inputs, draw)
        caller = OnceWarnings(once=False)  # Captum's own calls: its warnings, each time
        deltas: List[Tensor] = []
        is_attrib_tuple = is_inputs_tuple
        done = 0

        def one(k: int, kw: Dict[str, Any]) -> None:
            nonlocal is_attrib_tuple, done
            sds = stdevs_tuple(stdevs, inputs)
            noisy = []
            for inp, sd in zip(inputs, sds):
                row = noisy_block(inp, draw_noise(inp, sd, k), k)
                noisy.append(row.requires_grad_() if self.is_gradient_method else row)
            is_attrib_tuple, attrs, delta = self._call(caller, tuple(noisy), is_inputs_tuple, kw,
                                                       return_delta)
            # Partition rows are example-major (e·k + s); the folder takes sample-major rows.
            bsz = attrs[0].shape[0] // k
            folder.fold(tuple(t.reshape(bsz, k, -1).transpose(0, 1).reshape(k * bsz, *t.shape[1:])
                              for t in attrs), done * bsz, bsz)
            done += k
            if self.is_delta_supported and return_delta:
                deltas.append(delta)

        for _ in range(n_partitions):
            one(batch, kwargs_copy)
        remaining = nt_samples - n_partitions * batch
        if remaining > 0:
            # Captum draws this partition's noise before expanding the arguments.
            sds = stdevs_tuple(stdevs, inputs)
            pre = [noisy_block(inp, draw_noise(inp, sd, remaining), remaining)
                   for inp, sd in zip(inputs, sds)]
            expand_partial(remaining, kwargs, inputs, draw)
            noisy = tuple(r.requires_grad_() if self.is_gradient_method else r for r in pre)
            is_attrib_tuple, attrs, delta = self._call(caller, noisy, is_inputs_tuple, kwargs,
                                                       return_delta)
            bsz = attrs[0].shape[0] // remaining
            folder.fold(tuple(t.reshape(bsz, remaining, -1).transpose(0, 1)
                              .reshape(remaining * bsz, *t.shape[1:]) for t in attrs),
                        done * bsz, bsz)
            if self.is_delta_supported and return_delta:
                deltas.append(delta)
        delta = torch.cat(deltas, dim=0) if deltas else None
        return is_attrib_tuple, delta

    def attribute_future(self) -> None:
        """Not implemented for NoiseTunnel (as in Captum)."""
        raise NotImplementedError("attribute_future is not implemented for NoiseTunnel")

    def has_convergence_delta(self) -> bool:
        """Whether the wrapped method supports convergence deltas."""
        return self.is_delta_supported


__all__: Tuple[str, ...] = ("NoiseTunnel", "NoiseTunnelType", "SUPPORTED_NOISE_TUNNEL_TYPES")
