"""Benchmark runner: time and peak memory of explanation methods, as ratios to the model's cost.

For one model and batch, every *provider* (an implementation: ``xaikernels``'s native
functions, its Captum drop-ins, Captum itself, ...) builds a callable per *method*; the runner
times all of them in one process and one run, next to ``unit``: one forward and one backward
pass of the plain model (``torch.autograd.grad`` of the summed target logits w.r.t. the input),
the least any gradient method can cost.  Each row reports

- the median and interquartile range of the wall time of repeated calls after warm-up,
- ``ratio_to_unit = median / median(unit)``,
- the peak memory of tensor allocations during one call, above the level at its start, and
  ``peak_ratio_to_unit``,
- which xaikernels backend served each dispatched op (:func:`xaikernels.last_backend`).

Timing is interleaved: after warm-up, each round calls every callable once (the order rotates
from round to round), so slow drifts of a shared machine hit all rows alike and the ratios stay
comparable even when absolute times move by ±20 %.

Threads: ``torch.set_num_threads(threads)`` with ``threads=1`` by default (one effective core on
the reference machines, and the least noisy setting); the output states the value.

Peak memory on CPU is the running sum of the allocation and free events recorded by
``torch.profiler.profile(profile_memory=True)`` during one call (no allocator statistics exist
for CPU tensors); on CUDA it is ``torch.cuda.max_memory_allocated`` minus the starting level.

Results: one JSON line per measurement appended to ``<out_dir>/<name>.jsonl`` (versions, git
commit, machine, threads, date, model, batch, method, provider, times, ratios, peak memory,
backend), and ``<out_dir>/<name>.md`` regenerated from it: the latest run of each configuration.

Extension point: :func:`register_provider` adds an implementation (e.g. Zennit, lime) and
:func:`register_method` a method name; ``--plugin MODULE`` imports a module that does so
before the run.

Command line: ``xaikernels bench --help`` (or ``python -m xaikernels.benchmark``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

SCHEMA = 1
DEFAULT_THREADS = 1
UNIT = "unit"


class BenchError(ValueError):
    """A configuration the runner cannot use (unknown model, method, provider, missing shape)."""


# ---------------------------------------------------------------------------------------------
# Methods and providers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """A method name providers may implement; ``needs_layer`` for layer methods (Grad-CAM)."""

    name: str
    label: str
    needs_layer: bool = False


METHODS: Dict[str, Method] = {}

#: The gradient family, in report order.
GRADIENT_METHODS = (
    "saliency",
    "input_x_gradient",
    "guided_backprop",
    "deconvnet",
    "grad_cam",
    "guided_grad_cam",
)


def register_method(name: str, label: Optional[str] = None, *, needs_layer: bool = False) -> Method:
    """Declare a method name (idempotent); providers decide whether they implement it."""
    m = Method(name, label or name, needs_layer)
    METHODS[name] = m
    return m


for _n, _l, _layer in (
    ("saliency", "Saliency", False),
    ("input_x_gradient", "Input × gradient", False),
    ("guided_backprop", "Guided backprop", False),
    ("deconvnet", "Deconvnet", False),
    ("grad_cam", "Grad-CAM", True),
    ("guided_grad_cam", "Guided Grad-CAM", True),
    ("integrated_gradients", "Integrated Gradients (50 steps)", False),
    ("smoothgrad", "SmoothGrad (50 samples)", False),
    ("lrp", "LRP epsilon_plus_flat", False),
    ("lime", "LIME (1000 samples, 8×8 grid)", False),
    ("kernel_shap", "KernelSHAP (1000 samples, 8×8 grid)", False),
):
    register_method(_n, _l, needs_layer=_layer)

#: Methods beyond the gradient family (``--methods``): n model evaluations each, or LRP.
OTHER_METHODS = ("integrated_gradients", "smoothgrad", "lrp", "lime", "kernel_shap")
N_SAMPLES = 50  # IG steps / SmoothGrad samples (Captum's defaults are 50 steps)
N_PERTURB = 1000  # LIME / KernelSHAP samples per example


def _grid_mask(x: torch.Tensor, cells: int = 8) -> torch.Tensor:
    """A cells × cells grid of feature ids over the input's last two dims (shared by channels)."""
    h, w = x.shape[-2:]
    rows = (torch.arange(h) * cells) // h
    cols = (torch.arange(w) * cells) // w
    return (rows[:, None] * cells + cols[None, :]).to(x.device)


@dataclass
class Case:
    """What a provider builds its callables for: one model, one batch, one target per example."""

    model: nn.Module
    x: torch.Tensor
    target: torch.Tensor  # (N,) long, on x.device
    layer: Optional[str] = None
    layer_module: Optional[nn.Module] = None


#: ``build(method, case)`` returns a zero-argument callable doing one full explanation of
#: ``case.x``, or None when the provider does not implement ``method``.  Set-up that a user
#: does once (constructing an attribution object) belongs in ``build``, not in the callable.
Builder = Callable[[str, Case], Optional[Callable[[], Any]]]


@dataclass(frozen=True)
class Provider:
    """An implementation of some methods.

    Parameters
    ----------
    name : provider name used on the command line and in the results.
    build : see :data:`Builder`.
    requires : modules that must be importable; otherwise the provider is reported as
        unavailable and skipped.
    distribution : package whose version is recorded with the results.
    ours : rows of this provider are checked against the targets (``--target-ratio``).
    description : one line for ``--list``.
    """

    name: str
    build: Builder
    requires: Tuple[str, ...] = ()
    distribution: Optional[str] = None
    ours: bool = False
    description: str = ""

    def unavailable(self) -> Optional[str]:
        """None when usable, else why not."""
        for mod in self.requires:
            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return f"{mod} is not importable"
        return None


PROVIDERS: Dict[str, Provider] = {}


def register_provider(provider: Provider, *, replace: bool = False) -> Provider:
    """Add a provider; the extension point for peers such as Zennit or lime.

    Example
    -------
    >>> def build(method, case):
    ...     if method != "saliency":
    ...         return None
    ...     return lambda: my_saliency(case.model, case.x, case.target)
    >>> register_provider(Provider("mine", build, requires=("mylib",), distribution="mylib"))
    """
    if provider.name in PROVIDERS and not replace:
        raise ValueError(f"provider {provider.name!r} is already registered (pass replace=True)")
    PROVIDERS[provider.name] = provider
    return provider


def _build_unit(method: str, case: Case):
    if method != UNIT:
        return None
    model = case.model
    xg = case.x.detach().requires_grad_(True)
    idx = case.target.unsqueeze(1)

    def unit():
        out = model(xg)
        return torch.autograd.grad(out.gather(1, idx).sum(), xg)[0]

    return unit


def _native_builder(cam_backend: str, methods: Optional[Iterable[str]] = None) -> Builder:
    offered = None if methods is None else frozenset(methods)

    def build(method: str, case: Case):
        if offered is not None and method not in offered:
            return None
        import xaikernels as xk

        m, x, t, layer = case.model, case.x, case.target, case.layer_module
        if method == "saliency":
            return lambda: xk.saliency(m, x, t)
        if method == "input_x_gradient":
            return lambda: xk.input_x_gradient(m, x, t)
        if method == "guided_backprop":
            return lambda: xk.guided_backprop(m, x, t)
        if method == "deconvnet":
            return lambda: xk.deconvnet(m, x, t)
        if method == "grad_cam":
            return lambda: xk.grad_cam(m, x, t, layer=layer, backend=cam_backend)
        if method == "guided_grad_cam":
            return lambda: xk.guided_grad_cam(m, x, t, layer=layer, backend=cam_backend)
        if method == "integrated_gradients":
            return lambda: xk.integrated_gradients(m, x, t, n_steps=N_SAMPLES)
        if method == "smoothgrad":
            return lambda: xk.smoothgrad(m, x, t, n_samples=N_SAMPLES, stdev=0.15,
                                         noise_scale="absolute", seed=0)
        if method == "lrp":
            return lambda: xk.lrp(m, x, t, composite="epsilon_plus_flat")
        if method in ("lime", "kernel_shap") and x.dim() == 4:
            grid = _grid_mask(x)
            if method == "lime":
                return lambda: xk.lime_image(m, x, t, segments=grid.cpu().numpy(), n_samples=N_PERTURB)
            return lambda: xk.kernel_shap(m, x, t, feature_mask=grid[None], n_samples=N_PERTURB)
        return None

    return build


_CAPTUM_CLASSES = {
    "saliency": "Saliency",
    "input_x_gradient": "InputXGradient",
    "guided_backprop": "GuidedBackprop",
    "deconvnet": "Deconvolution",
    "grad_cam": "LayerGradCam",
    "guided_grad_cam": "GuidedGradCam",
    "integrated_gradients": "IntegratedGradients",
    "smoothgrad": "NoiseTunnel",
    "lrp": "LRP",
    "lime": "Lime",
    "kernel_shap": "KernelShap",
}


def _captum_api_builder(module: str) -> Builder:
    """Captum's attribution classes, from ``captum.attr`` or a drop-in module with its API."""

    def build(method: str, case: Case):
        cls_name = _CAPTUM_CLASSES.get(method)
        if cls_name is None:
            return None
        cls = getattr(importlib.import_module(module), cls_name, None)
        if cls is None:
            return None
        mod = importlib.import_module(module)
        if METHODS[method].needs_layer:
            obj = cls(case.model, case.layer_module)
        elif method == "smoothgrad":
            obj = cls(mod.Saliency(case.model))
        else:
            obj = cls(case.model)
        # Captum's LayerGradCam leaves out the ReLU by default; Grad-CAM (and the native
        # function) applies it, so ask for it to compare the same result.
        kwargs = {"relu_attributions": True} if method == "grad_cam" else {}
        if method == "integrated_gradients":
            kwargs = {"n_steps": N_SAMPLES}
        elif method == "smoothgrad":
            kwargs = {"nt_type": "smoothgrad", "nt_samples": N_SAMPLES, "stdevs": 0.15, "abs": False}
        elif method in ("lime", "kernel_shap"):
            if case.x.dim() != 4:
                return None
            grid = _grid_mask(case.x)[None, None].expand(1, case.x.shape[1], -1, -1)
            # Captum explains one example per call; loop over the batch like its users do.
            x, t = case.x, case.target
            return lambda: [obj.attribute(x[i:i + 1], target=int(t[i]), feature_mask=grid,
                                          n_samples=N_PERTURB, perturbations_per_eval=100)
                            for i in range(x.shape[0])]
        elif method == "lrp" and module.startswith("captum"):
            return None  # Captum's LRP has no flat/z+ composite to compare with
        x, t = case.x, case.target
        return lambda: obj.attribute(x, target=t, **kwargs)

    return build


register_provider(
    Provider(
        UNIT,
        _build_unit,
        description="plain model forward + backward to the input (the denominator of every ratio)",
    )
)
register_provider(
    Provider(
        "reference",
        _native_builder("reference", ("grad_cam", "guided_grad_cam")),
        ours=False,
        description="xaikernels with backend='reference' for "
        "methods that dispatch an op (Grad-CAM family)",
    )
)
register_provider(
    Provider(
        "xaikernels",
        _native_builder("auto"),
        ours=True,
        description="xaikernels native functions (xaikernels.saliency, ...)",
    )
)
register_provider(
    Provider(
        "xaikernels.captum",
        _captum_api_builder("xaikernels.captum"),
        requires=("xaikernels.captum",),
        ours=True,
        description="xaikernels' drop-ins with Captum's API",
    )
)
def _zennit_builder(method: str, case: Case):
    if method != "lrp":
        return None
    import sys
    import types

    if "torchvision" not in sys.modules:  # zennit imports torchvision (unusable beside CPU torch)
        tv, tvm, tvr = (types.ModuleType(n) for n in ("torchvision", "torchvision.models",
                                                       "torchvision.models.resnet"))

        class BasicBlock(torch.nn.Module):  # isinstance targets only
            pass

        class Bottleneck(torch.nn.Module):
            pass

        tvr.BasicBlock, tvr.Bottleneck = BasicBlock, Bottleneck
        tv.models, tvm.resnet = tvm, tvr
        sys.modules.update({"torchvision": tv, "torchvision.models": tvm,
                            "torchvision.models.resnet": tvr})
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat

    m, x, t = case.model, case.x, case.target
    has_bn = any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in m.modules())
    canonizers = [SequentialMergeBatchNorm()] if has_bn else None
    onehot = torch.zeros(x.shape[0], m(x[:1]).shape[1], device=x.device)
    onehot[torch.arange(x.shape[0]), t] = 1.0

    def run():
        with Gradient(m, EpsilonPlusFlat(canonizers=canonizers)) as attributor:
            return attributor(x, onehot)[1]

    return run


register_provider(
    Provider(
        "zennit",
        _zennit_builder,
        requires=("zennit",),
        distribution="zennit",
        description="Zennit EpsilonPlusFlat (BatchNorm merged when present) for LRP",
    )
)
register_provider(
    Provider(
        "captum",
        _captum_api_builder("captum.attr"),
        requires=("captum",),
        distribution="captum",
        description="Captum (captum.attr)",
    )
)

# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence fd 2: Kineto prints start/stop chatter from C++ that Python cannot intercept."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Peak bytes of tensor memory allocated during one call of ``fn``, above the start level.

    CPU: the running sum, in time order, of the allocation (+) and free (−) events that
    ``torch.profiler`` records with ``profile_memory=True``; its maximum is the peak.  The
    result of ``fn`` is released only after the measurement, so it counts.  CUDA: the
    caching allocator's ``max_memory_allocated`` minus ``memory_allocated`` at the start.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - start
        del out
        return int(peak)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())  # stable: equal stamps keep recording order
    level = peak = 0
    for e in events:
        level += e.nbytes()
        peak = max(peak, level)
    return int(peak)


def summarize(times_s: Sequence[float]) -> Tuple[float, float]:
    """(median, interquartile range) in the unit of ``times_s``; IQR is 0 for one sample."""
    med = statistics.median(times_s)
    if len(times_s) < 2:
        return med, 0.0
    q1, _, q3 = statistics.quantiles(times_s, n=4, method="inclusive")
    return med, q3 - q1


def _hook_count(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            n += len(getattr(m, attr, ()) or ())
    return n


def _dispatched_backends(fn: Callable[[], Any]) -> Tuple[Any, Dict[str, str]]:
    """Call ``fn`` once and return (result, {op: backend}) for the ops it dispatched."""
    from xaikernels import _backend

    # Private to this package: the record of the last call per op must start empty so that
    # what is left afterwards belongs to this call only.
    _backend._LAST.clear()
    out = fn()
    return out, {op: b for op, b in _backend._LAST.items()}


@contextlib.contextmanager
def _gc_paused():
    """Collect now, then keep the cyclic GC off: a collection triggered inside a timed call
    would be charged to whichever row happened to run then."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_rounds(fns: Dict[Any, Callable[[], Any]], repeats: int, warmup: int = 0,
                device: torch.device | str = "cpu",
                on_round: Optional[Callable[[int], None]] = None) -> Dict[Any, List[float]]:
    """Seconds of each callable per round: ``warmup`` untimed calls of each, then ``repeats``
    rounds in which every callable runs once, the order rotating from round to round, with the
    cyclic GC paused (collected between rounds) and the device synchronised around each call,
    so that slow drifts of a shared machine hit all callables alike."""
    device = torch.device(device)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    keys = list(fns)
    out: Dict[Any, List[float]] = {k: [] for k in keys}
    with _gc_paused(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in range(repeats):
            k0 = r % len(keys) if keys else 0
            for k in keys[k0:] + keys[:k0]:
                _sync(device)
                t0 = time.perf_counter()
                fns[k]()
                _sync(device)
                out[k].append(time.perf_counter() - t0)
            gc.collect()
            if on_round is not None:
                on_round(r)
    return out


@dataclass
class _Entry:
    method: str
    provider: str
    fn: Optional[Callable[[], Any]]
    times: List[float] = field(default_factory=list)
    error: Optional[str] = None
    backends: Dict[str, str] = field(default_factory=dict)
    leaked_hooks: bool = False
    peak: Optional[int] = None
    warnings: List[str] = field(default_factory=list)


def _measure(
    entries: List[_Entry],
    model: nn.Module,
    device: torch.device,
    repeats: int,
    warmup: int,
    memory: bool,
    log: Callable[[str], None],
) -> None:
    baseline_hooks = _hook_count(model)
    for e in entries:
        try:
            for i in range(max(1, warmup)):
                if i == 0:
                    # Warnings are recorded with the row (once) rather than printed between
                    # progress lines, and silenced for the timed calls below.
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        _, e.backends = _dispatched_backends(e.fn)
                    for w in caught:
                        msg = f"{w.category.__name__}: {w.message}"[:200]
                        if msg not in e.warnings:
                            e.warnings.append(msg)
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        e.fn()
                _sync(device)
        except Exception as exc:  # a failing method must not stop the other rows
            e.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            log(f"  {e.provider} / {e.method}: ERROR {e.error}")
        if _hook_count(model) != baseline_hooks:
            e.leaked_hooks = True
            log(
                f"  WARNING: {e.provider} / {e.method} left hooks on the model; later rows are "
                "measured with them in place"
            )
    live = [e for e in entries if e.error is None]
    times = time_rounds({i: e.fn for i, e in enumerate(live)}, repeats, 0, device,
                        lambda r: log(f"  round {r + 1}/{repeats}"))
    for i, e in enumerate(live):
        e.times.extend(times[i])
    with _gc_paused(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if memory:
            for e in live:
                e.peak = peak_memory(e.fn, device)
                gc.collect()


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def default_out_dir() -> Path:
    """``bench/results`` of the source checkout when there is one, else of the working dir."""
    root = _repo_root()
    if (root / "bench").is_dir():
        return root / "bench" / "results"
    return Path.cwd() / "bench" / "results"


def git_commit() -> Dict[str, Any]:
    """Commit of the checkout holding this package, and whether tracked files are modified."""
    root = _repo_root()

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _dist_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> Dict[str, Optional[str]]:
    import xaikernels

    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "xaikernels": getattr(xaikernels, "__version__", None),
        "numpy": _dist_version("numpy"),
        "captum": _dist_version("captum"),
    }
    for p in PROVIDERS.values():
        if p.distribution and p.distribution not in v:
            v[p.distribution] = _dist_version(p.distribution)
    return v


def machine_info(device: torch.device) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "platform": platform.platform(),
        "arch": platform.machine(),
        "cpu": platform.processor() or None,
        "cpu_count": os.cpu_count(),
    }
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    model: nn.Module
    label: str
    input_shape: Tuple[int, ...]
    batch: int
    layer: Optional[str]
    description: str


def load_model(
    spec: str,
    *,
    input_shape: Optional[Sequence[int]] = None,
    quick: bool = False,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> LoadedModel:
    """Build the model named by ``spec``.

    ``spec`` is a built-in name (``"vgg16"``, ``"resnet18"``; see
    :data:`xaikernels.models.zoo.MODELS`), a TorchScript file (``*.pt``, ``*.pth``, ``*.ts``),
    or ``"package.module:factory"`` (called with no arguments).  Non-built-in models need
    ``input_shape`` (C, H, W).  ``quick`` shrinks built-in models (width 8, small images)
    for tests.
    """
    from xaikernels.models import zoo

    if spec in zoo.MODELS:
        ms = zoo.MODELS[spec]
        shape = tuple(input_shape) if input_shape else ms.input_shape
        kwargs: Dict[str, Any] = {"seed": seed}
        if quick:
            kwargs["width"] = 8
            if not input_shape:
                shape = (3, 32, 32) if spec == "vgg16" else (3, 64, 64)
        if spec == "vgg16":
            kwargs["image_size"] = shape[-1]
        model = ms.factory(**kwargs)
        return LoadedModel(
            model.to(device),
            spec,
            shape,
            2 if quick else ms.batch,
            ms.cam_layer,
            ms.description + (" (quick: width 8)" if quick else ""),
        )
    if not input_shape:
        raise BenchError(
            f"--input-shape is required for model {spec!r} (only built-in models "
            f"{sorted(zoo.MODELS)} have a default)"
        )
    if ":" in spec and not os.path.exists(spec):
        mod_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            raise BenchError(f"cannot load factory {spec!r}: {exc}") from exc
        model = factory()
        desc = f"{spec}()"
    elif os.path.exists(spec):
        model = torch.jit.load(spec, map_location=device)
        desc = f"TorchScript {os.path.basename(spec)}"
    else:
        raise BenchError(
            f"model {spec!r} is neither a built-in ({sorted(zoo.MODELS)}), an existing "
            "TorchScript file nor 'module:factory'"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"{spec} gave a {type(model).__name__}, not an nn.Module")
    label = Path(spec).stem if os.path.exists(spec) else spec.rpartition(":")[2]
    return LoadedModel(
        model.to(device).eval(), label, tuple(input_shape), 2 if quick else 8, None, desc
    )


# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    """One benchmark run: one model and batch, several methods and providers.

    ``repeats`` timed rounds after ``warmup`` calls of each callable (at least one: it is also
    where errors and the serving backend are recorded).  ``target_ratio`` / ``target_peer``
    turn on PASS/FAIL for the providers marked ``ours``: ratio ≤ target_ratio and ≤ the
    peer's ratio for the same method.
    """

    model: str = "vgg16"
    input_shape: Optional[Tuple[int, ...]] = None
    batch: Optional[int] = None
    methods: Sequence[str] = GRADIENT_METHODS
    providers: Optional[Sequence[str]] = None  # None: every registered provider
    repeats: int = 10
    warmup: int = 2
    threads: Optional[int] = DEFAULT_THREADS  # None: leave torch's setting alone
    layer: Optional[str] = None
    name: str = "bench"
    out_dir: Optional[Path] = None
    device: str = "cpu"
    seed: int = 0
    memory: bool = True
    quick: bool = False
    target_ratio: Optional[float] = None
    target_peer: Optional[str] = None
    command: Optional[str] = None
    verbose: bool = True


def _targets(rows: List[dict], ratio: Optional[float], peer: Optional[str]) -> None:
    if ratio is None and peer is None:
        return
    peer_ratio = {
        r["method"]: r["ratio_to_unit"]
        for r in rows
        if r["provider"] == peer and r["status"] == "ok"
    }
    for r in rows:
        p = PROVIDERS.get(r["provider"])
        if not (p and p.ours) or r["method"] == UNIT:
            continue
        t: Dict[str, Any] = {
            "max_ratio_to_unit": ratio,
            "peer": peer,
            "peer_ratio_to_unit": peer_ratio.get(r["method"]),
        }
        why = []
        if r["status"] != "ok":
            why.append("no measurement")
        else:
            if ratio is not None and r["ratio_to_unit"] > ratio:
                why.append(f"{r['ratio_to_unit']:.2f} > {ratio:.2f}× unit")
            pr = t["peer_ratio_to_unit"]
            if pr is not None and r["ratio_to_unit"] > pr:
                why.append(f"slower than {peer} ({r['ratio_to_unit']:.2f} > {pr:.2f})")
        t["pass"] = not why
        t["why"] = "; ".join(why) or None
        r["target"] = t


def run(config: BenchConfig) -> List[dict]:
    """Measure one configuration; append its rows to ``<name>.jsonl``, refresh ``<name>.md``.

    Returns the rows written (dicts, one per method × provider, ``unit`` first).
    """
    log = (lambda s: print(s, flush=True)) if config.verbose else (lambda s: None)
    device = torch.device(config.device)
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown:
        raise BenchError(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    names = list(PROVIDERS) if config.providers is None else list(config.providers)
    bad = [p for p in names if p not in PROVIDERS]
    if bad:
        raise BenchError(f"unknown provider(s) {bad}; known: {sorted(PROVIDERS)}")
    if UNIT in names:
        names.remove(UNIT)
    names.insert(0, UNIT)  # every ratio needs it
    if config.repeats < 1:
        raise BenchError("repeats must be >= 1")

    old_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        lm = load_model(
            config.model,
            input_shape=config.input_shape,
            quick=config.quick,
            device=device,
            seed=config.seed,
        )
        batch = config.batch or lm.batch
        layer = config.layer or lm.layer
        gen = torch.Generator().manual_seed(config.seed)
        x = torch.randn((batch, *lm.input_shape), generator=gen).to(device)
        with torch.no_grad():
            n_classes = lm.model(x).shape[-1]
        target = (torch.arange(batch) % n_classes).to(device)
        layer_module = None
        if layer is not None:
            from xaikernels._validate import find_layer

            layer_module = find_layer(lm.model, layer)
        case = Case(lm.model, x, target, layer, layer_module)

        unavailable: Dict[str, str] = {}
        entries: List[_Entry] = []
        methods = [UNIT] + [m for m in config.methods if m != UNIT]
        no_layer = [
            m for m in methods if m != UNIT and METHODS[m].needs_layer and layer_module is None
        ]
        # Grouped by method, so that the providers of one method sit together in the report.
        for method in methods:
            if method in no_layer:
                continue
            for pname in names:
                p = PROVIDERS[pname]
                why = unavailable.get(pname) or p.unavailable()
                if why:
                    unavailable[pname] = why
                    continue
                try:
                    fn = p.build(method, case)
                except Exception as exc:
                    e = _Entry(method, pname, None, error=f"{type(exc).__name__}: {exc}"[:300])
                    entries.append(e)
                    continue
                if fn is not None:
                    entries.append(_Entry(method, pname, fn))
        threads = torch.get_num_threads()
        log(
            f"xaikernels bench — model {lm.label} ({lm.description}), input {batch}×"
            f"{'×'.join(map(str, lm.input_shape))}, layer {layer}, device {device}"
        )
        log(
            f"  threads: torch.set_num_threads({threads})"
            + ("" if config.threads is not None else " (left as found)")
            + f"; repeats {config.repeats} after {max(1, config.warmup)} warm-up call(s), "
            "interleaved rounds"
        )
        for pname, why in unavailable.items():
            log(f"  provider {pname}: skipped ({why})")
        if no_layer:
            log(f"  skipped {', '.join(no_layer)}: no layer (pass --layer)")
        log(f"  measuring {len(entries)} callables")
        todo = [e for e in entries if e.error is None]
        _measure(todo, lm.model, device, config.repeats, config.warmup, config.memory, log)
    finally:
        torch.set_num_threads(old_threads)

    unit = next((e for e in entries if e.provider == UNIT), None)
    if unit is None or unit.error is not None or not unit.times:
        raise RuntimeError(f"the unit measurement failed: {unit.error if unit else 'not built'}")
    unit_med, _ = summarize(unit.times)

    now = _dt.datetime.now(_dt.timezone.utc)
    meta = {
        "schema": SCHEMA,
        # Sortable, so the report can pick the latest run of each configuration.
        "run_id": f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{os.getpid()}",
        "date": now.isoformat(timespec="seconds"),
        "name": config.name,
        "command": config.command,
        **git_commit(),
        "versions": versions(),
        "machine": machine_info(device),
        "threads": threads,
        "device": str(device),
        "model": lm.label,
        "model_description": lm.description,
        "input_shape": list(lm.input_shape),
        "batch": batch,
        "layer": layer,
        "repeats": config.repeats,
        "warmup": max(1, config.warmup),
        "unavailable": unavailable,
    }
    rows: List[dict] = []
    for e in entries:
        row = dict(
            meta,
            method=e.method,
            provider=e.provider,
            status="ok" if e.error is None else "error",
            error=e.error,
            times_ms=[round(t * 1e3, 3) for t in e.times],
            median_ms=None,
            iqr_ms=None,
            min_ms=None,
            ratio_to_unit=None,
            peak_bytes=e.peak,
            peak_ratio_to_unit=None,
            backends=e.backends or None,
            backend=", ".join(sorted(set(e.backends.values()))) or None,
            leaked_hooks=e.leaked_hooks,
            warnings=e.warnings or None,
            target=None,
        )
        if e.error is None and e.times:
            med, iqr = summarize(e.times)
            row.update(
                median_ms=round(med * 1e3, 3),
                iqr_ms=round(iqr * 1e3, 3),
                min_ms=round(min(e.times) * 1e3, 3),
                ratio_to_unit=round(med / unit_med, 4),
            )
        if e.peak is not None and unit.peak:
            row["peak_ratio_to_unit"] = round(e.peak / unit.peak, 4)
        rows.append(row)
    _targets(rows, config.target_ratio, config.target_peer)

    out_dir = Path(config.out_dir) if config.out_dir is not None else default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / f"{config.name}.jsonl"
    with jsonl.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=False) + "\n")
    md = out_dir / f"{config.name}.md"
    md.write_text(render_markdown(read_rows(jsonl), config.name), encoding="utf-8")
    log("")
    log(format_table(rows))
    note = noise_note(rows)
    if note:
        log(f"\n  {note}")
    log(f"\n  wrote {len(rows)} rows to {jsonl} and refreshed {md}")
    return rows


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


def read_rows(path: Path) -> List[dict]:
    """All rows of a results file (lines that do not parse are skipped)."""
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return rows


def _fmt(v: Optional[float], spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(rows: Sequence[dict]) -> str:
    """A Markdown table of one configuration's rows."""
    has_target = any(r.get("target") for r in rows)
    head = [
        "method",
        "provider",
        "median ms",
        "IQR ms",
        "× unit",
        "peak MiB",
        "peak × unit",
        "backend",
    ] + (["target"] if has_target else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            cells = [
                r["method"],
                r["provider"],
                "error",
                "",
                "",
                "",
                "",
                "",
            ] + ([""] if has_target else [])
            cells[3] = (r.get("error") or "")[:80].replace("|", "/")
        else:
            peak = None if r.get("peak_bytes") is None else r["peak_bytes"] / 2**20
            cells = [
                r["method"],
                r["provider"],
                _fmt(r["median_ms"], ".1f"),
                _fmt(r["iqr_ms"], ".1f"),
                _fmt(r["ratio_to_unit"], ".2f"),
                _fmt(peak, ".1f"),
                _fmt(r.get("peak_ratio_to_unit"), ".2f"),
                r.get("backend") or "–",
            ]
            if has_target:
                t = r.get("target")
                cells.append("" if not t else "PASS" if t["pass"] else f"FAIL ({t['why']})")
        if r.get("leaked_hooks"):
            cells[1] += " (left hooks!)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Above this spread of unit's calls (IQR / median) the report flags the run as noisy.
NOISY_UNIT_IQR = 0.10


def noise_note(rows: Sequence[dict]) -> Optional[str]:
    """A warning when unit's own calls varied so much that small ratio differences mean little."""
    unit = next((r for r in rows if r["provider"] == UNIT and r["status"] == "ok"), None)
    if not unit or not unit.get("median_ms"):
        return None
    rel = unit["iqr_ms"] / unit["median_ms"]
    if rel <= NOISY_UNIT_IQR:
        return None
    return (
        f"NOISY RUN: unit's IQR is {rel:.0%} of its median (the machine was busy); ratio "
        "differences below that are not significant — rerun on a quiet machine."
    )


def _config_key(r: dict) -> tuple:
    return (
        r.get("model"),
        tuple(r.get("input_shape") or ()),
        r.get("batch"),
        r.get("device"),
        r.get("threads"),
    )


def render_markdown(rows: Sequence[dict], name: str) -> str:
    """The Markdown report: for each configuration, the rows of its latest run."""
    latest: Dict[tuple, str] = {}
    for r in rows:
        k = _config_key(r)
        if k not in latest or r["run_id"] > latest[k]:
            latest[k] = r["run_id"]
    out = [
        f"# Benchmark results: {name}",
        "",
        f"Latest run of each configuration, regenerated from `{name}.jsonl` (which keeps every "
        "run). Times are medians of interleaved repeated calls after warm-up; `× unit` divides by "
        "the median of `unit` (one forward + backward of the plain model to the input) measured "
        "in the same run; peak is the tensor memory allocated during one call above the level at "
        "its start.",
        "",
    ]
    for k in sorted(latest, key=lambda k: tuple(str(p) for p in k)):
        sel = [r for r in rows if _config_key(r) == k and r["run_id"] == latest[k]]
        m = sel[0]
        v = m.get("versions", {})
        shape = "×".join(str(s) for s in [m["batch"], *m["input_shape"]])
        commit = (m.get("commit") or "unknown")[:12] + (" (modified)" if m.get("dirty") else "")
        mach = m.get("machine", {})
        out += [
            f"## {m['model']} — {shape}, {m['device']}, {m['threads']} thread(s)",
            "",
            f"- {m.get('model_description', '')}; Grad-CAM layer `{m.get('layer')}`",
            f"- {m['date']}, commit {commit}; torch {v.get('torch')}, captum {v.get('captum')}, "
            f"xaikernels {v.get('xaikernels')}, Python {v.get('python')}",
            f"- machine: {mach.get('cpu')}, {mach.get('cpu_count')} CPUs "
            f"({mach.get('cpu_affinity', '?')} usable); torch.set_num_threads({m['threads']})",
            f"- {m['repeats']} timed rounds after {m['warmup']} warm-up call(s)",
        ]
        if m.get("unavailable"):
            out.append(
                "- skipped providers: "
                + "; ".join(f"{p} ({w})" for p, w in m["unavailable"].items())
            )
        if m.get("command"):
            out.append(f"- command: `{m['command']}`")
        note = noise_note(sel)
        if note:
            out.append(f"- **{note}**")
        out += ["", format_table(sel), ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _csv(s: str) -> List[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def _shape(s: str) -> Tuple[int, ...]:
    try:
        return tuple(int(p) for p in s.lower().replace("x", ",").replace("×", ",").split(",") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must look like 3,64,64 or 3x64x64, got {s!r}"
        ) from None


def build_parser(prog: str = "xaikernels bench") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Time and peak memory of explanation methods per provider, as ratios "
        "to one forward+backward pass of the plain model ('unit'), in one process and one run.",
    )
    ap.add_argument(
        "--model",
        action="append",
        default=None,
        help="vgg16 | resnet18 | a TorchScript file | package.module:factory; repeat "
        "for several models (default: vgg16)",
    )
    ap.add_argument(
        "--input-shape",
        type=_shape,
        default=None,
        help="per-example shape C,H,W (default: the built-in model's)",
    )
    ap.add_argument(
        "--batch",
        type=int,
        default=None,
        help="batch size (default: the built-in model's, else 8; --quick 2)",
    )
    ap.add_argument(
        "--methods",
        type=_csv,
        default=list(GRADIENT_METHODS),
        help=f"comma-separated, or 'all' (default: {','.join(GRADIENT_METHODS)})",
    )
    ap.add_argument(
        "--providers",
        type=_csv,
        default=None,
        help="comma-separated (default: all registered; unavailable ones are skipped)",
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed rounds (default 10; --quick 3)"
    )
    ap.add_argument(
        "--warmup", type=int, default=None, help="warm-up calls, >= 1 (default 2; --quick 1)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help="torch.set_num_threads for the run (default 1; 0 leaves torch's setting)",
    )
    ap.add_argument("--layer", default=None, help="Grad-CAM layer (default: the built-in model's)")
    ap.add_argument("--name", default="bench", help="results go to <out-dir>/<name>.jsonl and .md")
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="results folder (default: bench/results of the checkout)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory call")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes for tests: built-in models at width 8 on 32×32 (vgg16) or "
        "64×64 (resnet18), batch 2, 3 rounds, 1 warm-up",
    )
    ap.add_argument(
        "--target-ratio",
        type=float,
        default=None,
        help="PASS/FAIL: our rows must be <= this × unit (e.g. 1.05)",
    )
    ap.add_argument(
        "--target-peer",
        default=None,
        help="PASS/FAIL: our rows must be no slower than this provider (e.g. captum)",
    )
    ap.add_argument(
        "--plugin",
        action="append",
        default=[],
        help="import this module first (it may register providers or methods)",
    )
    ap.add_argument("--list", action="store_true", help="list methods and providers, then exit")
    return ap


def main(argv: Optional[Sequence[str]] = None, prog: str = "xaikernels bench") -> int:
    """Entry point of ``xaikernels bench``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    for mod in args.plugin:
        importlib.import_module(mod)
    if args.list:
        print("methods:", ", ".join(METHODS))
        for p in PROVIDERS.values():
            why = p.unavailable()
            print(f"provider {p.name}: {p.description}" + (f" [unavailable: {why}]" if why else ""))
        return 0
    methods = list(METHODS) if args.methods == ["all"] else args.methods
    providers = None if args.providers in (None, ["all"]) else args.providers
    for model in args.model or ["vgg16"]:
        cfg = BenchConfig(
            model=model,
            input_shape=args.input_shape,
            batch=args.batch,
            methods=methods,
            providers=providers,
            repeats=args.repeats or (3 if args.quick else 10),
            warmup=args.warmup if args.warmup is not None else (1 if args.quick else 2),
            threads=args.threads or None,
            layer=args.layer,
            name=args.name,
            out_dir=args.out_dir,
            device=args.device,
            seed=args.seed,
            memory=not args.no_memory,
            quick=args.quick,
            target_ratio=args.target_ratio,
            target_peer=args.target_peer,
            command=" ".join([prog, shlex.join(argv)]).strip(),
        )
        try:
            run(cfg)
        except BenchError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m xaikernels.benchmark"))
