"""Path/noise batch generation and streaming accumulation ops (IG, SmoothGrad, GradientSHAP).

Rows are addressed by the flat counter ``p = j * N + n`` (step/sample j, example n), so a chunk
is just a row range ``[p0, p1)`` and any chunking yields the same numbers.  See
``xaikernels/reference/paths.py`` for the contracts.  These ops prepare data and fold results;
they are not differentiated through.

Backends: ``numba`` (CPU fast path), ``triton`` (CUDA, or CPU under TRITON_INTERPRET=1),
``reference`` (torch).
"""
from __future__ import annotations

from typing import Optional

import torch

from xaikernels import _backend
from xaikernels.reference import paths as _ref

WSUM, SQSUM, WELFORD = _ref.WSUM, _ref.SQSUM, _ref.WELFORD

_ORDER = {"cpu": ("numba", "reference"), "cuda": ("triton", "reference")}
PATH = _backend.define_op("make_path", _ORDER)
NOISY = _backend.define_op("make_noisy", _ORDER)
ACCUM = _backend.define_op("accumulate", _ORDER)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp64 for fp64 inputs, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- numba launchers -------------------------------------------------------------------------
def _np(t: torch.Tensor, dtype: torch.dtype):
    return t.detach().to(dtype).contiguous().numpy()


def _numba_path(x, baseline, alphas, p0, p1):
    from xaikernels.kernels.numba import paths as k

    acc = acc_dtype(x.dtype)
    out = torch.empty((p1 - p0, x.shape[1]), dtype=acc)
    k.make_path(_np(x, acc), _np(baseline, acc), _np(alphas, acc), p0, p1, out.numpy())
    return out.to(x.dtype)


def _numba_noisy(x, sigma, seed, p0, p1, noise=None):
    if noise is not None:  # explicit noise is a plain broadcast add: torch is as fast
        return _ref.make_noisy(x, sigma, seed, p0, p1, noise)
    from xaikernels.kernels.numba import paths as k

    acc = acc_dtype(x.dtype)
    out = torch.empty((p1 - p0, x.shape[1]), dtype=acc)
    k.make_noisy(_np(x, acc), _np(sigma, acc), int(seed), p0, p1, out.numpy())
    return out.to(x.dtype)


def _numba_accumulate(a, b, g, p0, n, weights, mode):
    from xaikernels.kernels.numba import paths as k

    w = weights.to(a.dtype).contiguous().numpy() if weights is not None else a.new_zeros(1).numpy()
    bb = b.numpy() if b is not None else a.new_zeros((1, 1)).numpy()
    k.accumulate(a.numpy(), bb, _np(g, a.dtype), p0, n, w, mode)


def _triton(name):
    def launch(*args, **kwargs):
        from xaikernels.kernels.triton import paths as k

        return getattr(k, name)(*args, **kwargs)

    return launch


PATH.register("numba", _numba_path)
PATH.register("triton", _triton("make_path"))
PATH.register("reference", _ref.make_path)
NOISY.register("numba", _numba_noisy)
NOISY.register("triton", _triton("make_noisy"))
NOISY.register("reference", _ref.make_noisy)
ACCUM.register("numba", _numba_accumulate)
ACCUM.register("triton", _triton("accumulate"))
ACCUM.register("reference", _ref.accumulate)


# ---- public op functions ---------------------------------------------------------------------
def make_path(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor, p0: int, p1: int,
              backend: str = "auto") -> torch.Tensor:
    """Rows ``[p0, p1)`` of the IG path batch ``b + alpha_j (x - b)``; x, baseline (N, M)."""
    _, fn = PATH.launcher(x.device, backend)
    return fn(x, baseline, alphas.to(x.device), p0, p1)


def make_noisy(x: torch.Tensor, sigma: torch.Tensor, seed: int, p0: int, p1: int,
               noise: Optional[torch.Tensor] = None, backend: str = "auto") -> torch.Tensor:
    """Rows ``[p0, p1)`` of the noisy batch ``x[n] + sigma[n] * eps[p]`` (Philox or explicit)."""
    _, fn = NOISY.launcher(x.device, backend)
    # the per-example scales and an explicit noise batch follow the data's device
    return fn(x, sigma.to(x.device), seed, p0, p1, None if noise is None else noise.to(x.device))


def accumulate(a: torch.Tensor, b: Optional[torch.Tensor], g: torch.Tensor, p0: int, n: int,
               weights: Optional[torch.Tensor], mode: int, backend: str = "auto") -> None:
    """Fold gradient rows ``g`` (rows, M) starting at flat row ``p0`` into the state, in place."""
    if a.dtype not in (torch.float32, torch.float64) or not a.is_contiguous():
        raise TypeError("accumulator state must be contiguous float32/float64")
    if a.device != g.device or (b is not None and b.device != g.device):
        raise ValueError(f"accumulator state on {a.device} but gradient rows on {g.device}")
    _, fn = ACCUM.launcher(g.device, backend)
    fn(a, b, g, p0, n, None if weights is None else weights.to(g.device), mode)
