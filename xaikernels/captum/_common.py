"""Captum's argument plumbing, rewritten for the drop-in classes.

Everything here reproduces what Captum 0.9.0 does with the arguments of ``attribute``:
which forms ``inputs``, ``target`` and ``additional_forward_args`` may take, how the
forward function is called, and which assertion or warning a bad argument produces.  The
drop-ins promise the same observable behaviour, so the error types and messages follow
Captum's; the implementation is our own and Captum is never imported.

Two deliberate differences in *how* (not *what*):

- Gradients w.r.t. the inputs are taken on detached leaves instead of flipping
  ``requires_grad`` on the caller's tensors and back, so a caller's tensor is never mutated
  (Captum emits the same warnings either way, and so do we).
- The backward pass starts from one ``ones_like`` gradient instead of ``torch.unbind`` of
  the selected outputs: the same numbers, one autograd root instead of N.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
from inspect import signature
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

TargetType = Union[None, int, Tuple[int, ...], Tensor, List[Any]]

_NO_TARGET_MSG = ("Target not provided when necessary, cannot take gradient with respect to "
                  "multiple outputs.")


def entry(fn: Callable) -> Callable:
    """Mark a public ``attribute`` method.

    Captum wraps these in a logging decorator, and its composite methods (NoiseTunnel,
    GradientShap, the neuron variants) call ``method.attribute.__wrapped__(self, ...)``; the
    wrapper keeps that attribute so a Captum wrapper can drive a drop-in.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- formatting
def _is_tuple(inputs: Any) -> bool:
    return isinstance(inputs, tuple)


def _format_tensor_into_tuples(inputs: Any) -> Optional[Tuple[Tensor, ...]]:
    if inputs is None:
        return None
    if not isinstance(inputs, tuple):
        assert isinstance(inputs, torch.Tensor), (
            "`inputs` must be a torch.Tensor or a tuple[torch.Tensor] "
            f"but found: {type(inputs)}"
        )
        inputs = (inputs,)
    return inputs


def _format_inputs(inputs: Any, unpack_inputs: bool = True) -> Any:
    if isinstance(inputs, (tuple, list)) and unpack_inputs:
        return inputs
    return (inputs,)


def _format_additional_forward_args(args: Any) -> Optional[Tuple[Any, ...]]:
    if args is not None and not isinstance(args, tuple):
        args = (args,)
    return args


def _format_output(is_inputs_tuple: bool, output: Tuple[Tensor, ...]) -> Union[Tensor, Tuple[Tensor, ...]]:
    assert isinstance(output, tuple), "Output must be in shape of a tuple"
    assert is_inputs_tuple or len(output) == 1, (
        "The input is a single tensor however the output isn't."
        f"The number of output tensors is: {len(output)}"
    )
    return output if is_inputs_tuple else output[0]


# --------------------------------------------------------------------------- targets
def _verify_select_column(output: Tensor, target: Union[int, Tuple[Any, ...]]) -> Tensor:
    index = (target,) if isinstance(target, int) else target
    assert len(index) <= len(output.shape) - 1, (
        "Cannot choose target column with output shape %r." % (output.shape,))
    return output[(slice(None), *index)]


def _select_targets(output: Tensor, target: TargetType) -> Tensor:
    """The per-example scalar(s) to differentiate, for every target form Captum accepts.

    None: the output itself; int or tuple: that column (index tuple) for every example; a
    one-element integer tensor: like an int; a 1-D tensor or a list of ints with one entry
    per example: per-example columns of a 2-D output; a list of tuples: per-example index
    tuples into an output of any rank.
    """
    if target is None:
        return output
    num_examples = output.shape[0]
    dims = len(output.shape)
    if isinstance(target, (int, tuple)):
        return _verify_select_column(output, target)
    if isinstance(target, torch.Tensor):
        if torch.numel(target) == 1 and isinstance(target.item(), int):
            return _verify_select_column(output, int(target.item()))
        if len(target.shape) == 1 and torch.numel(target) == num_examples:
            assert dims == 2, "Output must be 2D to select tensor of targets."
            return torch.gather(output, 1, target.reshape(len(output), 1)).squeeze(-1)
        raise AssertionError(
            f"Tensor target dimension {target.shape!r} is not valid. {output.shape!r}")
    if isinstance(target, list):
        assert len(target) == num_examples, "Target list length does not match output!"
        if isinstance(target[0], int):
            assert dims == 2, "Output must be 2D to select tensor of targets."
            idx = torch.tensor(target, device=output.device).reshape(len(output), 1)
            return torch.gather(output, 1, idx).squeeze(-1)
        if isinstance(target[0], tuple):
            return torch.stack([output[(i,) + tuple(t)] for i, t in enumerate(target)])
        raise AssertionError(f"Target element type {type(target[0])} in list is not valid.")
    raise AssertionError(f"Target type {type(target)} is not valid.")


def _validate_target(num_samples: int, target: TargetType) -> None:
    if isinstance(target, list) or (isinstance(target, torch.Tensor) and torch.numel(target) > 1):
        assert num_samples == len(target), (
            "The number of samples provied in the"
            f"input {num_samples} does not match with the number of targets. {len(target)}")


# --------------------------------------------------------------------------- forward
def _run_forward(forward_func: Callable, inputs: Any, target: TargetType = None,
                 additional_forward_args: Any = None, takes_args: Optional[bool] = None) -> Any:
    """Call ``forward_func(*inputs, *additional_forward_args)`` and select the targets.

    A forward function that takes no parameters is called without arguments (Captum's rule,
    used by closures over the inputs).  ``takes_args``: whether it takes any, when the caller
    already knows (a loop over batches asks ``inspect.signature`` once, not per batch: ~30 µs
    a call).
    """
    if takes_args is None:
        takes_args = len(signature(forward_func).parameters) > 0
    if not takes_args:
        output = forward_func()
        return output if target is None else _select_targets(output, target)
    inputs = _format_inputs(inputs)
    extra = _format_additional_forward_args(additional_forward_args)
    output = forward_func(*((*inputs, *extra) if extra is not None else inputs))
    if isinstance(output, torch.futures.Future):
        return output.then(lambda fut: _select_targets(fut.value(), target))
    return _select_targets(output, target)


def _check_scalar_per_example(outputs: Any) -> None:
    assert outputs[0].numel() == 1, _NO_TARGET_MSG


def _backward(outputs: Tensor, inputs: Sequence[Tensor], grad_kwargs: Optional[Dict[str, Any]] = None,
              **kwargs: Any) -> Tuple[Tensor, ...]:
    """Gradients of the sum of the selected outputs w.r.t. ``inputs``."""
    kw = dict(grad_kwargs or {})
    kw.update(kwargs)
    if "grad_outputs" in kw:
        # The caller supplies one gradient per example, as for Captum's unbound outputs.
        return torch.autograd.grad(torch.unbind(outputs), inputs, **kw)
    return torch.autograd.grad(outputs, inputs, grad_outputs=torch.ones_like(outputs), **kw)


# --------------------------------------------------------------------------- gradients
_NOT_DIFF_MSG = ("Input Tensor %d has a dtype of %s.\n                    Gradients cannot be "
                 "activated\n                    for these data types.")
_SET_GRAD_MSG = ("Input Tensor %d did not already require gradients, required_grads has been "
                 "set automatically.")


def _grad_leaves(inputs: Tuple[Tensor, ...]) -> Tuple[Tuple[Tensor, ...], List[str]]:
    """Leaves to differentiate w.r.t., plus the warnings Captum would emit for ``inputs``.

    Floating and complex inputs become detached leaves that require grad (one leaf per
    distinct tensor object, so a tensor passed twice still receives its full gradient);
    other dtypes are passed through and make the backward pass fail as in Captum.
    """
    assert isinstance(inputs, (tuple, list)), (
        "Inputs should be wrapped in a tuple or list prior to preparing for gradients")
    leaves: List[Tensor] = []
    messages: List[str] = []
    seen: Dict[int, Tensor] = {}
    for index, inp in enumerate(inputs):
        assert isinstance(inp, torch.Tensor), "Given input is not a torch.Tensor"
        if id(inp) in seen:
            leaves.append(seen[id(inp)])
            continue
        dtype = inp.dtype
        if not dtype.is_floating_point and not dtype.is_complex:
            messages.append(_NOT_DIFF_MSG % (index, str(dtype)))
            leaf = inp
        else:
            if not inp.requires_grad:
                messages.append(_SET_GRAD_MSG % index)
            leaf = inp.detach().requires_grad_()
        seen[id(inp)] = leaf
        leaves.append(leaf)
    return tuple(leaves), messages


_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def warn(message: str) -> None:
    """``UserWarning`` attributed to the caller's line (the first frame outside this package)."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PKG_DIR:
        level += 1
        frame = frame.f_back
    warnings.warn(message, UserWarning, stacklevel=level)


def _emit(messages: Sequence[str]) -> None:
    for msg in messages:
        warn(msg)


def _require_grads_inplace(tensors: Sequence[Any]) -> None:
    """Make captured layer tensors differentiable (in place; they are ours, not the caller's)."""
    assert isinstance(tensors, (tuple, list)), (
        "Inputs should be wrapped in a tuple or list prior to preparing for gradients")
    for t in tensors:
        assert isinstance(t, torch.Tensor), "Given input is not a torch.Tensor"
        if (t.dtype.is_floating_point or t.dtype.is_complex) and not t.requires_grad:
            t.requires_grad_()


def compute_gradients(forward_fn: Callable, inputs: Union[Tensor, Tuple[Tensor, ...]],
                      target_ind: TargetType = None,
                      additional_forward_args: Any = None) -> Tuple[Tensor, ...]:
    """Gradients of the selected outputs (summed over examples) w.r.t. ``inputs``.

    One forward and one backward pass.  ``inputs`` must already require grad.  The outputs
    selected by ``target_ind`` must be one scalar per example, otherwise ``AssertionError``.
    """
    with torch.autograd.set_grad_enabled(True):
        outputs = _run_forward(forward_fn, inputs, target_ind, additional_forward_args)
        _check_scalar_per_example(outputs)
        return _backward(outputs, inputs)


# --------------------------------------------------------------------------- layers
class LayerTap:
    """Capture a layer's output (or positional inputs) for one forward pass, as Captum does.

    The tensors the layer produced are saved per device (requiring grad) and *clones* are
    handed on to the rest of the model: an in-place op after the layer (``ReLU(inplace=True)``
    after a conv) then changes the clone, not the saved activations or their gradient.  When
    the layer runs several times the last call wins.
    """

    def __init__(self, layer: torch.nn.Module, to_input: bool = False):
        self.saved: Dict[torch.device, Tuple[Tensor, ...]] = {}
        self._lock = threading.Lock()
        if to_input:
            self.handle = layer.register_forward_pre_hook(self._pre_hook)
        else:
            self.handle = layer.register_forward_hook(self._hook)

    def _capture(self, vals: Any) -> Any:
        is_seq = isinstance(vals, (tuple, list))
        tensors = vals if is_seq else (vals,)
        _require_grads_inplace(tensors)
        with self._lock:
            self.saved[tensors[0].device] = tuple(tensors)
        if not is_seq:
            return tensors[0].clone()
        clones = [t.clone() for t in tensors]
        return clones if isinstance(vals, list) else tuple(clones)

    def _hook(self, module, inputs, output):
        return self._capture(output)

    def _pre_hook(self, module, inputs):
        return self._capture(inputs)

    def ordered(self, forward_func: Callable, device_ids: Optional[List[int]]) -> List[Tuple[Tensor, ...]]:
        """Saved tensors per device, in the batch order of a DataParallel model."""
        if not self.saved:
            raise AssertionError("Forward hook did not obtain any outputs for given layer")
        keys = list(self.saved)
        if len(keys) == 1:
            return [self.saved[keys[0]]]
        if device_ids is None:
            device_ids = getattr(forward_func, "device_ids", None)
            if device_ids is None:
                raise AssertionError(
                    "Layer tensors are saved on multiple devices, however unable to access"
                    " device ID list from the `forward_fn`. Device ID list must be"
                    " accessible from `forward_fn`. For example, they can be retrieved"
                    " if `forward_fn` is a model of type `DataParallel`. It is used"
                    " for identifying device batch ordering.")
        by_index: Dict[int, torch.device] = {}
        for key in keys:
            if key.index in by_index:
                raise AssertionError("Duplicate CUDA Device ID identified in device list.")
            by_index[key.index] = key
        ordered = [by_index[i] for i in device_ids if i in by_index]
        assert len(ordered) == len(keys), "Given Device ID List does not match"
        return [self.saved[k] for k in ordered]


def layer_gradients_and_eval(outputs: Tensor, per_device: List[Tuple[Tensor, ...]],
                             grad_kwargs: Optional[Dict[str, Any]] = None, **kwargs: Any
                             ) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
    """(gradients, activations) of the tapped layer, one entry per layer tensor."""
    flat = [t for group in per_device for t in group]
    grads = _backward(outputs, flat, grad_kwargs, **kwargs)
    k = len(per_device[0])
    if len(per_device) == 1:
        return tuple(grads), tuple(per_device[0])
    dev = per_device[0][0].device
    g_out = tuple(torch.cat([grads[d * k + i].to(dev) for d in range(len(per_device))]) for i in range(k))
    a_out = tuple(torch.cat([grp[i].to(dev) for grp in per_device]) for i in range(k))
    return g_out, a_out


# --------------------------------------------------------------------------- baselines
def _zeros(inputs: Tuple[Tensor, ...]) -> Tuple[Union[int, bool], ...]:
    return tuple(0 if inp.dtype is not torch.bool else False for inp in inputs)


def _format_baseline(baselines: Any, inputs: Tuple[Tensor, ...]) -> Tuple[Any, ...]:
    if baselines is None:
        return _zeros(inputs)
    if not isinstance(baselines, tuple):
        baselines = (baselines,)
    for b in baselines:
        assert isinstance(b, (torch.Tensor, int, float)), (
            f"baseline input argument must be either a torch.Tensor or a number however "
            f"{type(b)} detected")
    return baselines


def _format_input_baseline(inputs: Any, baselines: Any) -> Tuple[Tuple[Tensor, ...], Tuple[Any, ...]]:
    inputs = _format_tensor_into_tuples(inputs)
    return inputs, _format_baseline(baselines, inputs)


def _tensorize_baseline(inputs: Tuple[Tensor, ...], baselines: Tuple[Any, ...]) -> Tuple[Tensor, ...]:
    assert isinstance(inputs, tuple) and isinstance(baselines, tuple), (
        "inputs and baselines must have tuple type but found baselines: "
        f"{type(baselines)} and inputs: {type(inputs)}")

    def one(b, inp):
        if isinstance(b, (int, float)):
            return torch.full_like(inp, b)
        if inp.shape[0] > b.shape[0] and b.shape[0] == 1:
            return torch.cat([b] * inp.shape[0])
        return b

    return tuple(one(b, inp) for b, inp in zip(baselines, inputs))


def _validate_input(inputs: Tuple[Tensor, ...], baselines: Tuple[Any, ...],
                    draw_baseline_from_distrib: bool = False) -> None:
    assert len(inputs) == len(baselines), (
        "Input and baseline must have the same dimensions, baseline has "
        f"{len(baselines)} features whereas input has {len(inputs)}.")
    for inp, b in zip(inputs, baselines):
        if draw_baseline_from_distrib:
            assert isinstance(b, (int, float)) or inp.shape[1:] == b.shape[1:], (
                "The samples in input and baseline batches must have the same shape or the "
                "baseline corresponding to the input tensor must be a scalar. "
                f"Found baseline: {b} and input: {inp} ")
        else:
            assert isinstance(b, (int, float)) or inp.shape == b.shape or b.shape[0] == 1, (
                "Baseline can be provided as a tensor for just one input and broadcasted to "
                "the batch or input and baseline must have the same shape or the baseline "
                "corresponding to each input tensor must be a scalar. "
                f"Found baseline: {b} and input: {inp}")


def _sum_rows(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(1)
