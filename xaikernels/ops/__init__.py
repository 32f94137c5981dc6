"""Op layer: one autograd.Function per op, dispatched per call to a backend."""
from xaikernels.ops.grad_cam import grad_cam_reduce

__all__ = ["grad_cam_reduce"]
