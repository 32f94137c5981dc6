"""The fused InfoNCE logsumexp op and the InfoNCE (InfoMax) estimate built on it.

For locals X (N, K, D) (K positions per sample, e.g. the H*W cells of a feature map) and
globals Y (N, D), the critic scores ``s[i, (m, k)] = <X[m, k], Y[i]> / tau`` form an
N x N*K matrix.  The op returns, without materialising it (tiled, online logsumexp; the
backward recomputes the scores tile by tile from the saved logsumexp):

- ``terms`` (N, K): the log-probability of each positive pair ``(x_ik, y_i)`` among the
  candidates, ``s[i, (i, k)] - logsumexp_{m,k'} s[i, (m, k')]``;
- ``lse`` (N,): the row logsumexp (float32, or float64 for float64 inputs).

Backends: ``cpp`` (``torch.ops.xaikernels.infonce_lse``: CPU, and CUDA in a CUDA build),
``triton`` (CUDA, or CPU under ``TRITON_INTERPRET=1``), ``reference`` (materialised torch).
One autograd Function serves every backend; the compiled op also carries ``register_fake`` and
``register_autograd`` (``torch.compile``, ``opcheck``).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from xaikernels import _backend
from xaikernels.reference import infonce as _ref

OP = _backend.define_op(
    "infonce_lse",
    auto_order={"cpu": ("cpp", "reference"), "cuda": ("triton", "cpp", "reference")},
)


def _cpp_forward(x, y, temperature, exclude_self, block_rows, block_cols):
    return torch.ops.xaikernels.infonce_lse(x, y, temperature, exclude_self, block_rows, block_cols)


def _cpp_backward(grad_terms, grad_lse, x, y, lse, temperature, exclude_self, block_rows, block_cols):
    return torch.ops.xaikernels.infonce_lse_backward(
        grad_terms, grad_lse, x, y, lse, temperature, exclude_self, block_rows, block_cols
    )


def _triton_forward(x, y, temperature, exclude_self, block_rows, block_cols):
    from xaikernels.kernels.triton import infonce as k

    return k.infonce_lse(x, y, temperature, exclude_self, block_rows, block_cols)


def _triton_backward(grad_terms, grad_lse, x, y, lse, temperature, exclude_self, block_rows, block_cols):
    from xaikernels.kernels.triton import infonce as k

    return k.infonce_lse_backward(grad_terms, grad_lse, x, y, lse, temperature, exclude_self, block_rows, block_cols)


OP.register("cpp", (_cpp_forward, _cpp_backward))
OP.register("triton", (_triton_forward, _triton_backward))
OP.register("reference", (_ref.infonce_lse, _ref.infonce_lse_backward))

# The Triton kernels hold the whole feature dimension in one tile (BLOCK_D = next_pow2(D)); their
# compiled tiles (xaikernels.kernels.triton.infonce.GPU_TILES) go up to BLOCK_D = 512 in fp32
# opmath and 256 in fp64 within 99 KiB of shared memory (fp64 BLOCK_D = 256 with the former
# 32 x 64 tiles asked for 321 KiB on an H100, past its 227 KiB).
TRITON_MAX_BLOCK_D = {False: 512, True: 256}


def triton_fits(d: int, dtype: torch.dtype) -> bool:
    """Whether the compiled Triton kernels take feature dimension ``d`` in ``dtype``."""
    bd = max(16, 1 << max(int(d) - 1, 0).bit_length())
    return bd <= TRITON_MAX_BLOCK_D[dtype == torch.float64]


def _launcher(x: torch.Tensor, backend: str):
    """The op's launcher: a feature dimension too wide for the Triton kernels on a GPU is passed
    to the next backend in automatic mode (the same numbers up to rounding) and refused when
    Triton is asked for by name."""
    wide = x.device.type == "cuda" and not triton_fits(x.shape[-1], x.dtype)
    name, impl = OP.launcher(x.device, backend, unfit=("triton",) if wide else ())
    if wide and name == "triton":
        raise ValueError(f"the Triton infonce_lse kernels hold D in one tile: D={x.shape[-1]} in {x.dtype} is "
                         f"more than its widest tile (BLOCK_D = {TRITON_MAX_BLOCK_D[x.dtype == torch.float64]}); use "
                         "backend='cpp' or 'reference'")
    return impl


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _InfoNCEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, temperature, exclude_self, block_rows, block_cols, impl):
        fwd, bwd = impl
        terms, lse = fwd(x, y, temperature, exclude_self, block_rows, block_cols)
        ctx.save_for_backward(x, y, lse)
        ctx.args = (temperature, exclude_self, block_rows, block_cols)
        ctx.bwd = bwd
        return terms, lse

    @staticmethod
    def backward(ctx, grad_terms, grad_lse):
        x, y, lse = ctx.saved_tensors
        grad_terms, grad_lse = _fill_grads(grad_terms, grad_lse, x, lse)
        dx, dy = ctx.bwd(grad_terms, grad_lse, x, y, lse, *ctx.args)
        return dx, dy, None, None, None, None, None


def _fill_grads(grad_terms, grad_lse, x, lse):
    # Autograd passes None for an output that did not reach the loss.
    if grad_terms is None:
        grad_terms = x.new_zeros(x.shape[:2])
    if grad_lse is None:
        grad_lse = torch.zeros_like(lse)
    return grad_terms.contiguous(), grad_lse.contiguous()


def _check(x: torch.Tensor, y: torch.Tensor, temperature: float, exclude_self: bool) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if x.dim() != 3:
        raise ValueError(f"locals x must be (N, K, D), got shape {tuple(x.shape)}")
    if y.dim() != 2:
        raise ValueError(f"globals y must be (N, D), got shape {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has N={x.shape[0]} samples but y has N={y.shape[0]}; pair each sample's locals "
                         "with its own global")
    if x.shape[2] != y.shape[1]:
        raise ValueError(f"feature sizes differ: x has D={x.shape[2]}, y has D={y.shape[1]}; project both to "
                         "one critic dimension first")
    if x.shape[0] == 0:
        raise ValueError("empty batch (N = 0)")
    if x.shape[1] == 0:
        raise ValueError("x has no local positions (K = 0)")
    if exclude_self and x.shape[0] < 2:
        raise ValueError("exclude_self=True needs N >= 2: the negatives come from the other samples")
    if x.dtype != y.dtype:
        raise TypeError(f"x and y must share a dtype, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"x and y are on different devices ({x.device}, {y.device})")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    for name, t in (("x", x), ("y", y)):
        check_finite(t, name)


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise on NaN/inf without a full-size temporary: ``isfinite(t)`` would allocate ~1.75x the
    input (abs + masks), more than the fused op's whole workspace.  NaN/inf propagate into the sum;
    a sum that merely overflows is re-checked element-wise."""
    if bool(torch.isfinite(t.sum())):
        return
    bad = int(sum(int((~torch.isfinite(c)).sum()) for c in t.reshape(-1).split(1 << 20)))
    if bad:
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")


def infonce_lse(
    x: torch.Tensor, y: torch.Tensor, temperature: float = 1.0, exclude_self: bool = False,
    backend: str = "auto", block_rows: int = 0, block_cols: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fused InfoNCE log-probabilities of the positive pairs and the row logsumexp.

    With ``s[i, (m, k)] = <x[m, k], y[i]> / temperature``:

    - ``exclude_self=False``: ``lse[i] = logsumexp_{m, k} s[i, (m, k)]`` (all N*K locals) and
      ``terms[i, k] = s[i, (i, k)] - lse[i]``;
    - ``exclude_self=True`` (Deep InfoMax's NCE, Hjelm et al. 2019): each positive is contrasted
      with itself and the (N-1)*K locals of the other samples, ``lse[i] = logsumexp_{m != i, k}
      s[i, (m, k)]`` and ``terms[i, k] = s[i, (i, k)] - logaddexp(s[i, (i, k)], lse[i])``.

    The N x N*K score matrix is never materialised: memory is O(N*K*D) for the inputs and
    gradients plus a few cache-sized tiles.

    Parameters
    ----------
    x : Tensor, shape (N, K, D)
        Local features (after the critic's projection).
    y : Tensor, shape (N, D)
        Global features, same dtype and device.
    temperature : float, default 1.0
        Score scale ``tau > 0``.
    exclude_self : bool, default False
        Contrast each positive only with the other samples' locals (see above).
    backend : {"auto", "cpp", "triton", "reference"}
    block_rows, block_cols : int, default 0 (automatic)
        Tile sizes of the fused kernel (rows of ``y``, flattened locals).  Results do not depend
        on them beyond floating-point rounding; exposed for tests and tuning.

    Returns
    -------
    terms : Tensor, shape (N, K), dtype of ``x``
    lse : Tensor, shape (N,), float32 (float64 for float64 inputs)
        Both differentiable w.r.t. ``x`` and ``y``.

    References
    ----------
    van den Oord, Li, Vinyals (2018), "Representation Learning with Contrastive Predictive
    Coding", arXiv:1807.03748.  Hjelm et al. (2019), "Learning deep representations by mutual
    information estimation and maximization", ICLR.
    """
    _check(x, y, temperature, exclude_self)
    if int(block_rows) < 0 or int(block_cols) < 0:
        raise ValueError("block_rows and block_cols must be >= 0 (0 = automatic)")
    impl = _launcher(x, backend)
    return _InfoNCEFunction.apply(x.contiguous(), y.contiguous(), float(temperature), bool(exclude_self),
                                  int(block_rows), int(block_cols), impl)


def n_candidates(n: int, k: int, exclude_self: bool) -> int:
    """Number of candidates each positive is ranked against (the InfoNCE bound's ceiling is its log)."""
    return (n - 1) * k + 1 if exclude_self else n * k


def infonce(
    x: torch.Tensor, y: torch.Tensor, temperature: float = 1.0, exclude_self: bool = False,
    reduction: str = "mean", backend: str = "auto",
) -> torch.Tensor:
    """InfoNCE lower bound on the mutual information between locals and globals (nats).

    ``I(x; y) >= log(C) + 1/(N K) sum_{i,k} log( e^{s[i,(i,k)]} / sum_{candidates} e^{s[i, .]} )``

    with ``C = N*K`` candidates (``(N-1)*K + 1`` with ``exclude_self``).  Every term is <= 0,
    so the estimate never exceeds ``log(C)``.

    Parameters
    ----------
    x, y, temperature, exclude_self, backend
        As in :func:`infonce_lse`.
    reduction : {"mean", "none"}
        ``"mean"``: the scalar bound; ``"none"``: the per-location estimate (N, K),
        ``log(C) + terms`` (the pointwise MI map of each local with its own global).

    Returns
    -------
    Tensor, scalar or (N, K), dtype of ``x``; differentiable.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    terms, _ = infonce_lse(x, y, temperature, exclude_self, backend)
    log_c = math.log(n_candidates(x.shape[0], x.shape[1], exclude_self))
    # Mean first, then + log(C): a mean of terms <= 0 stays <= 0 in floating point and rounding is
    # monotone, so the estimate never exceeds log(C) even by an ulp.
    return terms.mean() + log_c if reduction == "mean" else terms + log_c


def _register_library_extras() -> None:
    """Fake (meta) shapes and autograd for the compiled op; run once when _C loads."""

    @torch.library.register_fake("xaikernels::infonce_lse")
    def _fake(x, y, temperature=1.0, exclude_self=False, block_rows=0, block_cols=0):
        torch._check(x.dim() == 3 and y.dim() == 2)
        return x.new_empty((x.shape[0], x.shape[1])), x.new_empty((x.shape[0],), dtype=_opmath(x.dtype))

    @torch.library.register_fake("xaikernels::infonce_lse_backward")
    def _fake_bwd(grad_terms, grad_lse, x, y, lse, temperature=1.0, exclude_self=False, block_rows=0,
                  block_cols=0):
        return torch.empty_like(x), torch.empty_like(y)

    def _setup(ctx, inputs, output):
        x, y, temperature, exclude_self, block_rows, block_cols = inputs
        ctx.save_for_backward(x, y, output[1])
        ctx.args = (temperature, exclude_self, block_rows, block_cols)

    def _bwd(ctx, grad_terms, grad_lse):
        x, y, lse = ctx.saved_tensors
        grad_terms, grad_lse = _fill_grads(grad_terms, grad_lse, x, lse)
        dx, dy = torch.ops.xaikernels.infonce_lse_backward(grad_terms, grad_lse, x, y, lse, *ctx.args)
        return dx, dy, None, None, None, None

    torch.library.register_autograd("xaikernels::infonce_lse", _bwd, setup_context=_setup)


_backend.on_ext_load(_register_library_extras)
