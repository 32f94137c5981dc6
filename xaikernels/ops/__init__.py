"""Op layer: one autograd.Function per op, dispatched per call to a backend.

Importing this package registers every op with the dispatcher (and, once the compiled
extension loads, the fake/autograd registrations of its ``torch.ops.xaikernels`` ops).
"""
from xaikernels.ops import bottleneck, infonce, paths  # noqa: F401  (register the ops)
from xaikernels.ops.bottleneck import info_bottleneck
from xaikernels.ops.grad_cam import grad_cam_reduce
from xaikernels.ops.infonce import infonce as infonce_loss
from xaikernels.ops.infonce import infonce_lse

__all__ = ["grad_cam_reduce", "info_bottleneck", "infonce_loss", "infonce_lse"]
