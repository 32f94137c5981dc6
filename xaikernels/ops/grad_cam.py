"""The fused Grad-CAM reduction op.

    w[n,c] = mean_s G[n,c,s];   cam[n,s] = act(sum_c w[n,c] A[n,c,s])

Backends: ``cpp`` (``torch.ops.xaikernels.grad_cam``, CPU and, in a CUDA build, CUDA),
``triton`` (CUDA, or CPU under ``TRITON_INTERPRET=1``), ``reference`` (torch).  One autograd
Function serves every backend; only the bottom call differs.  The compiled op itself also
carries ``register_fake`` and ``register_autograd`` so that ``torch.ops.xaikernels.grad_cam`` works
with ``torch.compile`` and passes ``torch.library.opcheck``.
"""
from __future__ import annotations

import torch

from xaikernels import _backend
from xaikernels.reference import grad_cam as _ref

OP = _backend.define_op(
    "grad_cam",
    # CUDA: the extension's kernel first (0.47 ms against Triton's 0.62 ms for fp32 (64, 512, 196)
    # forward + backward on an H100, bench/results/gpu.md)
    auto_order={"cpu": ("cpp", "reference"), "cuda": ("cpp", "triton", "reference")},
)


def _cpp_forward(acts, grads, relu):
    return torch.ops.xaikernels.grad_cam(acts, grads, relu)


def _cpp_backward(grad_out, acts, grads, out, relu):
    return torch.ops.xaikernels.grad_cam_backward(grad_out, acts, grads, out, relu)


def _triton_forward(acts, grads, relu):
    from xaikernels.kernels.triton import grad_cam as k

    return k.grad_cam(acts, grads, relu)


def _triton_backward(grad_out, acts, grads, out, relu):
    from xaikernels.kernels.triton import grad_cam as k

    return k.grad_cam_backward(grad_out, acts, grads, out, relu)


OP.register("cpp", (_cpp_forward, _cpp_backward))
OP.register("triton", (_triton_forward, _triton_backward))
OP.register("reference", (_ref.grad_cam, _ref.grad_cam_backward))


class _GradCamFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, acts, grads, relu, impl):
        fwd, bwd = impl
        out = fwd(acts, grads, relu)
        ctx.save_for_backward(acts, grads, out)
        ctx.relu, ctx.bwd = relu, bwd
        return out

    @staticmethod
    def backward(ctx, grad_out):
        acts, grads, out = ctx.saved_tensors
        d_acts, d_grads = ctx.bwd(grad_out, acts, grads, out, ctx.relu)
        return d_acts, d_grads, None, None


def grad_cam_reduce(
    acts: torch.Tensor, grads: torch.Tensor, relu: bool = False, backend: str = "auto"
) -> torch.Tensor:
    """Fused Grad-CAM reduction.

    ``cam[n, *sp] = act(sum_c mean_sp(grads[n, c]) * acts[n, c, *sp])``

    Parameters
    ----------
    acts, grads : Tensor, shape (N, C, *spatial)
        Layer activations and the gradient of the target score w.r.t. them.  Same shape and
        floating dtype.  ``(N, C)`` is treated as one spatial position.
    relu : bool
        Apply ReLU to the map (Grad-CAM's convention).
    backend : {"auto", "cpp", "triton", "reference"}

    Returns
    -------
    Tensor, shape (N, *spatial), dtype of ``acts``.  Differentiable w.r.t. both inputs.
    """
    if acts.shape != grads.shape:
        raise ValueError(f"acts {tuple(acts.shape)} and grads {tuple(grads.shape)} must have the same shape")
    if acts.dim() < 2:
        raise ValueError(f"acts must be (N, C, *spatial), got shape {tuple(acts.shape)}")
    if not acts.is_floating_point() or acts.dtype != grads.dtype:
        raise TypeError(f"floating inputs of one dtype required, got {acts.dtype} and {grads.dtype}")
    spatial = acts.shape[2:]
    n, c = acts.shape[:2]
    a3 = acts.reshape(n, c, -1)
    g3 = grads.reshape(n, c, -1)
    _, impl = OP.launcher(acts.device, backend)
    out = _GradCamFunction.apply(a3, g3, bool(relu), impl)
    return out.reshape(n, *spatial)


def _register_library_extras() -> None:
    """Fake (meta) shapes and autograd for the compiled op; run once when _C loads."""

    @torch.library.register_fake("xaikernels::grad_cam")
    def _fake(acts, grads, relu):
        torch._check(acts.dim() == 3)
        return acts.new_empty((acts.shape[0], acts.shape[2]))

    @torch.library.register_fake("xaikernels::grad_cam_backward")
    def _fake_bwd(grad_out, acts, grads, out, relu):
        return torch.empty_like(acts), torch.empty_like(grads)

    def _setup(ctx, inputs, output):
        acts, grads, relu = inputs
        ctx.save_for_backward(acts, grads, output)
        ctx.relu = relu

    def _bwd(ctx, grad_out):
        acts, grads, out = ctx.saved_tensors
        d_acts, d_grads = torch.ops.xaikernels.grad_cam_backward(grad_out, acts, grads, out, ctx.relu)
        return d_acts, d_grads, None

    torch.library.register_autograd("xaikernels::grad_cam", _bwd, setup_context=_setup)


_backend.on_ext_load(_register_library_extras)
