"""Captum drop-in ``IntegratedGradients`` on the streamed path engine, and the row-streaming
plumbing shared with ``NoiseTunnel`` and ``GradientShap``.

Captum builds all ``n_steps × N`` path points of every input before one forward pass (or
``internal_batch_size``-sized slices of them).  Here the path rows are generated chunk by
chunk by the fused ``make_path`` op and each chunk's gradients are folded into an fp32 (fp64
for fp64 paths) running sum by ``accumulate``: memory is O(chunk) whatever ``n_steps``.

Rows are addressed by Captum's own layout, ``p = step * N + example``, so a chunk is a row
range ``[p0, p1)``; the targets and ``additional_forward_args`` of a chunk are the per-example
ones gathered at ``p % N`` — exactly the rows Captum's expanded batch holds there.
"""
from __future__ import annotations

import functools
import warnings
from inspect import signature
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from xaikernels.captum import _common as C
from xaikernels.captum._base import GradientAttribution
from xaikernels.methods import _chunking
from xaikernels.methods.integrated import quadrature
from xaikernels.ops import paths as ops

SUPPORTED_METHODS: List[str] = ["riemann_left", "riemann_right", "riemann_middle",
                                "riemann_trapezoid", "gausslegendre"]

_IBS_WARNING = ("Internal batch size cannot be less than the number of input examples. "
                "Defaulting to internal batch size of %d equal to the number of examples.")


# --------------------------------------------------------------------------- row plumbing
class RowArgs:
    """Per-example ``target`` and ``additional_forward_args`` mapped onto streamed rows.

    ``gather`` is True when every per-example argument has one entry per example (a list or
    1-D tensor target of length N, tensor arguments with N rows); rows belonging to
    examples ``e`` then get ``target[e]`` and ``arg[e]``, which is what Captum's expanded
    batch holds at those rows.  Otherwise (a malformed target, an argument whose first dim
    is not N) only whole blocks of N rows can be formed, by Captum's own ``repeat``
    expansion, so Captum's behaviour, errors included, is kept.
    """

    def __init__(self, n: int, target: C.TargetType, args: Optional[Tuple[Any, ...]]):
        self.n, self.target, self.args = n, target, args
        t = target
        ok = True
        if isinstance(t, list):
            ok = len(t) == n
        elif isinstance(t, Tensor) and t.numel() > 1:
            ok = t.dim() == 1 and t.shape[0] == n
        for a in args or ():
            if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] != n:
                ok = False
        self.gather = ok

    def target_rows(self, e: Tensor) -> C.TargetType:
        t = self.target
        if isinstance(t, list):
            return [t[i] for i in e.tolist()]
        if isinstance(t, Tensor) and t.numel() > 1:
            return t[e.to(t.device)]
        return t

    def args_rows(self, e: Tensor) -> Optional[Tuple[Any, ...]]:
        if self.args is None:
            return None
        return tuple(a[e.to(a.device)] if isinstance(a, Tensor) and a.dim() > 0 else a
                     for a in self.args)

    def target_repeat(self, k: int) -> C.TargetType:
        """Captum's ``_expand_target(target, k)`` (whole copies of the batch)."""
        t = self.target
        if isinstance(t, list):
            return t * k
        if isinstance(t, Tensor) and t.numel() > 1:
            return torch.cat([t] * k, dim=0)
        return t

    def args_repeat(self, k: int) -> Optional[Tuple[Any, ...]]:
        """Captum's ``_expand_additional_forward_args(args, k)``."""
        if self.args is None:
            return None
        return tuple(torch.cat([a] * k, dim=0) if isinstance(a, Tensor) and a.dim() > 0 else a
                     for a in self.args)


def _count_saved(counter: List[int]):
    def pack(t: Tensor) -> Tensor:
        counter[0] += t.numel() * t.element_size()
        return t

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)


def chunk_from_budget(probes: Sequence[Tuple[int, int]], row_bytes: int,
                      budget: Optional[int]) -> int:
    """Rows per call from two measured calls ``(rows, bytes saved for backward)``.

    The per-row cost is the difference of the two (constants such as saved weights cancel);
    it is charged ``_chunking._ACTIVATION_FACTOR`` times (activations saved for backward,
    their gradients, workspace), plus ``row_bytes`` for the row's own copies — the rule the
    native methods' ``auto_chunk`` applies to a module's activations, so a drop-in and the
    native call pick the same chunk for the same model (8 rows for ResNet-18 at 224², 25 for
    the VGG-16-like at 64²).
    """
    (r1, b1), (r2, b2) = probes
    per_row = (b2 - b1) / (r2 - r1) if r2 != r1 else b2 / max(r2, 1)
    if per_row <= 0:
        per_row = b2 / max(r2, 1)
    return _chunking.rows_within(per_row, row_bytes, budget)


def run_rows(total: int, work: Callable[[int, int], None], chunk: Optional[int],
             row_bytes: int, budget: Optional[int], splittable: bool = True) -> None:
    """Call ``work(p0, p1)`` over ``[0, total)``; every row is real work, none is wasted.

    ``chunk`` given: fixed chunks.  ``chunk`` None: the first two calls (1 and 2 rows) count
    the bytes autograd saves, which sets the chunk from ``budget`` (default
    ``XAIKERNELS_MEMORY_BUDGET_MB``, 768 MiB) by :func:`chunk_from_budget` — a byte count,
    not a timing, so the chunk does not depend on the machine's load.  A chunk that runs out
    of memory is retried in halves when ``splittable`` (``work`` folds its rows only after
    the model calls succeed).  ``work`` must give the same rows whatever the chunking; only
    the model's own batch-size rounding can differ.
    """
    p = 0
    if chunk is None:
        probes: List[Tuple[int, int]] = []
        for r in (1, 2):
            if p >= total:
                return
            q = min(total, p + r)
            counter = [0]
            with _count_saved(counter):
                work(p, q)
            probes.append((q - p, counter[0]))
            p = q
        chunk = chunk_from_budget(probes, row_bytes, budget)
    while p < total:
        q = min(total, p + chunk)
        try:
            work(p, q)
        except Exception as exc:  # noqa: BLE001 — only out-of-memory is retried
            if not splittable or not _chunking._is_oom(exc) or q - p == 1:
                raise
            chunk = max(1, (q - p) // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        p = q


class OnceWarnings:
    """Call a wrapped method; with ``once``, re-emit a warning of a later call only if no
    earlier call emitted it.

    Streaming calls a wrapped method several times where Captum calls it once; its
    per-call notices (e.g. "Setting backward hooks ...") must still appear once.  Without
    ``once`` (calls that are Captum's own calls) everything passes through.
    """

    def __init__(self, once: bool = True):
        self.once = once
        self.seen: set = set()

    def __call__(self, fn: Callable, *args, **kwargs):
        if not self.once:
            return fn(*args, **kwargs)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            out = fn(*args, **kwargs)
        for w in rec:
            key = (w.category, str(w.message))
            if key in self.seen:
                continue
            self.seen.add(key)
            # (module/registry left at their defaults: an explicit module=None drops it)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return out


def tensor_bytes_per_row(tensors: Sequence[Tensor]) -> int:
    return sum(t[0].numel() * t.element_size() for t in tensors if t.dim() > 0 and t.shape[0] > 0)


# --------------------------------------------------------------------------- IG
def _path_operands(inp: Tensor, baseline: Any) -> Tuple[Tensor, Tensor, torch.dtype]:
    """(x, b) as (N, M) in the path dtype — the dtype of Captum's ``b + α (x − b)``."""
    if isinstance(baseline, Tensor):
        dt = torch.promote_types(inp.dtype, baseline.dtype)
    else:
        dt = torch.result_type(inp, baseline)
    if not dt.is_floating_point:  # α is a Python float: integer paths become floating
        dt = torch.promote_types(dt, torch.get_default_dtype())
    n = inp.shape[0]
    x2 = inp.detach().to(dt).reshape(n, -1)
    if isinstance(baseline, Tensor):
        b2 = torch.broadcast_to(baseline.detach().to(dt), inp.shape).reshape(n, -1)
    else:
        b2 = torch.full_like(x2, baseline)
    return x2.contiguous(), b2.contiguous(), dt


def _step_params(method: str, n_steps: int) -> Tuple[Tensor, Tensor]:
    """Captum's alphas and step sizes (its own assertions for too few steps)."""
    if method == "gausslegendre":
        assert n_steps > 0, "The number of steps has to be larger than zero"
    else:
        assert n_steps > 1, "The number of steps has to be larger than one"
    return _cached_quadrature(method, n_steps)


@functools.lru_cache(maxsize=64)
def _cached_quadrature(method: str, n_steps: int) -> Tuple[Tensor, Tensor]:
    # Gauss–Legendre nodes cost an eigenvalue problem (~0.1 s at n = 500); NoiseTunnel
    # calls IG once per chunk.  The tensors are only read.
    return quadrature(method, n_steps)


class IntegratedGradients(GradientAttribution):
    """Integrated Gradients (Sundararajan et al. 2017), streamed.

    Drop-in for ``captum.attr.IntegratedGradients``:

        IG_i(x) = (x_i − b_i) · Σ_j w_j ∂F(b + α_j (x − b)) / ∂x_i

    with Captum's quadratures (``riemann_left/right/middle/trapezoid``, ``gausslegendre``;
    nodes and weights exactly as Captum builds them, step sizes rounded to fp32 as Captum
    does).  The path points are never materialised together: chunks of path rows are
    generated, differentiated and folded into an fp32 running sum (fp64 for fp64 paths).

    Parameters
    ----------
    forward_func : callable
        The model or any function returning (N,) or (N, ...) outputs.
    multiply_by_inputs : bool, default True
        Multiply the integrated gradients by ``inputs − baselines`` (global attribution);
        False returns the integrated gradients themselves.

    Attributes
    ----------
    memory_budget : int or None
        Bytes one chunk may use when ``internal_batch_size`` is None (default: the
        ``XAIKERNELS_MEMORY_BUDGET_MB`` environment variable, 768 MiB).
    """

    memory_budget: Optional[int] = None

    def __init__(self, forward_func: Callable[..., Tensor], multiply_by_inputs: bool = True) -> None:
        GradientAttribution.__init__(self, forward_func)
        self._multiply_by_inputs = multiply_by_inputs

    @C.entry
    def attribute(self, inputs, baselines=None, target: C.TargetType = None,
                  additional_forward_args: Any = None, n_steps: int = 50,
                  method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                  return_convergence_delta: bool = False):
        """Integrated gradients of the target output w.r.t. each input.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensors, each (N, ...).
        baselines : None (zeros) | number | Tensor (N or 1 rows, or broadcastable) | tuple
            of those, one per input.  Default None.
        target : Captum's target forms (int, tuple, Tensor, list); None only for models
            returning one value per example.
        additional_forward_args : any, optional
            Appended after the inputs; tensors with N rows are matched to each path row.
        n_steps : int, default 50
            Quadrature points (≥ 1 for Gauss–Legendre, ≥ 2 for the Riemann rules).
        method : str, default "gausslegendre"
            One of ``riemann_left``, ``riemann_right``, ``riemann_middle``,
            ``riemann_trapezoid``, ``gausslegendre``.
        internal_batch_size : int, optional
            Captum's meaning: each forward pass takes ``max(1, internal_batch_size // N)``
            whole steps of the N examples (a warning if it is below N).  None (default):
            rows per pass set by ``memory_budget`` from the bytes the first two rows save for
            backward (the native methods' rule); the result does not depend on it.
        return_convergence_delta : bool, default False
            Also return ``Σ attributions − (F(inputs) − F(baselines))`` per example.

        Returns
        -------
        Tensor or tuple of Tensors shaped like the inputs; then the delta (N,) if requested.
        """
        is_tuple = C._is_tuple(inputs)
        f_inputs, f_baselines = C._format_input_baseline(inputs, baselines)
        C._validate_input(f_inputs, f_baselines)
        assert n_steps >= 0, f"The number of steps must be a positive integer. Given: {n_steps}"
        assert method in SUPPORTED_METHODS, (
            f"Approximation method must be one for the following {SUPPORTED_METHODS}. "
            f"Given {method}")
        n = f_inputs[0].shape[0]
        steps_per_call = None
        if internal_batch_size is not None:
            if internal_batch_size < n:
                C.warn(_IBS_WARNING % n)
            steps_per_call = max(1, internal_batch_size // n)
        attributions = self._streamed(f_inputs, f_baselines, target, additional_forward_args,
                                      n_steps, method, steps_per_call)
        if return_convergence_delta:
            delta = self.compute_convergence_delta(
                attributions, baselines, inputs, additional_forward_args=additional_forward_args,
                target=target)
            return C._format_output(is_tuple, attributions), delta
        return C._format_output(is_tuple, attributions)

    def _streamed(self, inputs: Tuple[Tensor, ...], baselines: Tuple[Any, ...], target,
                  additional_forward_args, n_steps: int, method: str,
                  steps_per_call: Optional[int]) -> Tuple[Tensor, ...]:
        alphas, weights = _step_params(method, n_steps)
        n = inputs[0].shape[0]
        # The difference is needed at the end; forming it first also raises Captum's error
        # for inputs that cannot be subtracted (bool) before any model work.
        diffs = tuple(inp - b for inp, b in zip(inputs, baselines)) \
            if self.multiplies_by_inputs else None
        operands = [_path_operands(inp, b) for inp, b in zip(inputs, baselines)]
        shapes = [inp.shape[1:] for inp in inputs]
        accs = [torch.zeros(x2.shape, dtype=ops.acc_dtype(dt), device=x2.device)
                for x2, _, dt in operands]
        # Captum multiplies by step sizes held as an fp32 tensor, whatever the input dtype.
        ws = [weights.float().to(acc.dtype) for acc in accs]
        rows = RowArgs(n, target, C._format_additional_forward_args(additional_forward_args))

        def work(p0: int, p1: int) -> None:
            r = p1 - p0
            path = tuple(ops.make_path(x2, b2, alphas, p0, p1).view(r, *shape).requires_grad_()
                         for (x2, b2, _), shape in zip(operands, shapes))
            if rows.gather:
                e = torch.arange(p0, p1) % n
                tgt, args = rows.target_rows(e), rows.args_rows(e)
            else:
                tgt, args = rows.target_repeat(r // n), rows.args_repeat(r // n)
            grads = self.gradient_func(forward_fn=self.forward_func, inputs=path,
                                       target_ind=tgt, additional_forward_args=args)
            for acc, w, g in zip(accs, ws, grads):
                ops.accumulate(acc, None, g.detach().reshape(r, -1), p0, n, w, ops.WSUM)

        total = n_steps * n
        if steps_per_call is not None:
            chunk: Optional[int] = steps_per_call * n
        elif not rows.gather or n == 0 or len(signature(self.forward_func).parameters) == 0:
            chunk = max(total, 1)  # Captum's single call
        else:
            chunk = None
        row_bytes = 4 * sum(x2[0].numel() * x2.element_size() for x2, _, _ in operands) if n else 0
        run_rows(total, work, chunk, row_bytes, self.memory_budget, splittable=rows.gather)
        total_grads = tuple(acc.view(inp.shape[0], *shape) for acc, inp, shape in
                            zip(accs, inputs, shapes))
        if diffs is None:
            return total_grads
        return tuple(tg * d for tg, d in zip(total_grads, diffs))

    def attribute_future(self) -> None:
        """Not implemented for IntegratedGradients (as in Captum)."""
        raise NotImplementedError("attribute_future is not implemented for IntegratedGradients")

    def has_convergence_delta(self) -> bool:
        """True: ``attribute`` can return the completeness delta."""
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs


__all__: Tuple[str, ...] = ("IntegratedGradients", "RowArgs", "run_rows", "OnceWarnings")
