"""Per-call backend dispatch.

Backends: ``"triton"`` (fused Triton kernels: CUDA tensors, or CPU tensors under Triton's
interpreter ``TRITON_INTERPRET=1``), ``"cpp"`` (the compiled extension ``xaikernels._C``),
``"numba"`` (Numba kernels), ``"reference"`` (plain torch; the oracle, always available).

Resolution order for one call: the ``backend=`` argument if it is not ``"auto"``, else the
``XAIKERNELS_BACKEND`` environment variable if set (and not ``"auto"``), else the fastest
backend that is live for the op on the tensor's device.  Asking explicitly for a backend that
is missing or that does not implement the op raises :class:`BackendUnavailableError` with an
install hint; nothing is swapped silently.  The backend that served the most recent call of
each op is recorded: :func:`last_backend`.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

BACKENDS = ("triton", "cpp", "numba", "reference")
ENV_VAR = "XAIKERNELS_BACKEND"

_HINTS = {
    "cpp": "build the extension: `pip install --no-build-isolation -e .` with torch installed "
    "(or `make demo`)",
    "triton": "`pip install triton`; on a machine without a GPU set TRITON_INTERPRET=1 before "
    "importing xaikernels to run Triton kernels in the interpreter",
    "numba": "`pip install numba`",
    "reference": "",
}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend is missing or does not implement the op."""


_EXT_HOOKS: list = []


def on_ext_load(fn: Callable[[], None]) -> None:
    """Run ``fn`` once the compiled extension is loaded (Python-side op registrations)."""
    _EXT_HOOKS.append(fn)
    if _load_ext.cache_info().currsize and _load_ext() is None:
        fn()


@functools.lru_cache(maxsize=None)
def _load_ext() -> Optional[str]:
    """Import ``xaikernels._C`` once; return an error string when it cannot be loaded."""
    if os.environ.get("XAIKERNELS_DISABLE_EXT") == "1":
        return "disabled by XAIKERNELS_DISABLE_EXT=1"
    try:
        importlib.import_module("xaikernels._C")
    except Exception as exc:  # ImportError, or an ABI mismatch surfacing as OSError
        return f"{type(exc).__name__}: {exc}"
    for fn in _EXT_HOOKS:
        fn()
    return None


def load_extension() -> bool:
    """Load ``xaikernels._C`` now (it is otherwise loaded on first use); True when live."""
    return _load_ext() is None


_warned_missing = set()


def _warn_missing_once(name: str, why: str) -> None:
    if name in _warned_missing:
        return
    _warned_missing.add(name)
    warnings.warn(
        f"xaikernels: backend {name!r} unavailable ({why}); falling back to the next backend. "
        f"To enable it: {_HINTS[name]}",
        RuntimeWarning,
        stacklevel=3,
    )


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _has_module(name: str) -> bool:
    """Importable (not just present): a broken install counts as missing.  Imported only when a
    backend is asked about, never at package import."""
    try:
        importlib.import_module(name)
        return True
    except Exception:
        return False


def backend_status() -> Dict[str, str]:
    """Whether each backend is live on this machine, with the reason when it is not."""
    status = {}
    err = _load_ext()
    status["cpp"] = "live" if err is None else f"missing ({err})"
    if not _has_module("triton"):
        status["triton"] = "missing (triton not installed)"
    elif torch.cuda.is_available():
        status["triton"] = "live (cuda)"
    elif triton_interpreting():
        status["triton"] = "live (interpreter, TRITON_INTERPRET=1)"
    else:
        status["triton"] = "installed, no GPU (set TRITON_INTERPRET=1 to interpret on CPU)"
    status["numba"] = "live" if _has_module("numba") else "missing (numba not installed)"
    status["reference"] = "live"
    return status


def _cpp_has(op: str, device: torch.device) -> bool:
    if _load_ext() is not None:
        return False
    try:
        packet = getattr(torch.ops.xaikernels, op)
    except (AttributeError, RuntimeError):
        return False
    key = "CUDA" if device.type == "cuda" else "CPU"
    return torch._C._dispatch_has_kernel_for_dispatch_key(packet.default.name(), key)


def _available(name: str, op: str, device: torch.device) -> Optional[str]:
    """None when ``name`` can run ``op`` on ``device``; otherwise why not."""
    if name == "reference":
        return None
    if name == "cpp":
        err = _load_ext()
        if err is not None:
            return f"the compiled extension xaikernels._C is not loadable ({err})"
        if not _cpp_has(op, device):
            return f"xaikernels._C has no {device.type.upper()} kernel for {op!r}"
        return None
    if name == "triton":
        if not _has_module("triton"):
            return "triton is not installed"
        if device.type == "cuda":
            return None
        if device.type == "cpu" and triton_interpreting():
            return None
        return f"Triton needs a CUDA device, or TRITON_INTERPRET=1 for CPU tensors (got {device})"
    if name == "numba":
        if not _has_module("numba"):
            return "numba is not installed"
        if device.type != "cpu":
            return f"Numba kernels run on CPU tensors only (got {device})"
        return None
    raise ValueError(f"unknown backend {name!r}; choose from {('auto',) + BACKENDS}")


class Op:
    """A dispatchable op: one launcher per backend, same signature for each."""

    def __init__(self, name: str, auto_order: Dict[str, tuple]):
        self.name = name
        self.auto_order = auto_order  # device type -> backend preference
        self.impls: Dict[str, Callable] = {}
        # launcher's resolutions by (device type, backend argument, the two environment
        # variables it reads, unfit): availability is fixed per process (module and extension
        # probes are cached), so a resolution is too; registering a backend clears it
        self._resolved: Dict[tuple, Tuple[str, Callable]] = {}

    def register(self, backend: str, fn: Optional[Callable] = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}")

        def deco(f):
            self.impls[backend] = f
            self._resolved.clear()
            return f

        return deco(fn) if fn is not None else deco

    def resolve(self, device: torch.device, backend: str = "auto", unfit: Tuple[str, ...] = ()) -> str:
        """The backend serving one call.  ``unfit``: backends that cannot take this call's
        shapes (the op says why); automatic resolution passes over them, an explicit request for
        one is the op's to refuse."""
        requested = backend
        if requested in (None, "auto"):
            env = os.environ.get(ENV_VAR, "auto").strip().lower()
            requested = env if env else "auto"
        if requested != "auto":
            if requested not in BACKENDS:
                raise ValueError(f"unknown backend {requested!r}; choose from {('auto',) + BACKENDS}")
            if requested not in self.impls:
                raise BackendUnavailableError(
                    f"op {self.name!r} has no {requested!r} kernel; it has {sorted(self.impls)}"
                )
            why = _available(requested, self.name, device)
            if why is not None:
                hint = _HINTS[requested]
                raise BackendUnavailableError(
                    f"backend {requested!r} requested for {self.name!r} but unavailable: {why}."
                    + (f" Hint: {hint}" if hint else "")
                )
            return requested
        order = self.auto_order.get(device.type, ("reference",))
        for name in order:
            if name not in self.impls or name in unfit:
                continue
            why = _available(name, self.name, device)
            if why is None:
                return name
            if name == "cpp":
                _warn_missing_once(name, why)
        return "reference"

    def launcher(self, device: torch.device, backend: str = "auto", unfit: Tuple[str, ...] = ()):
        env = os.environ
        key = (device.type, backend, env.get(ENV_VAR), env.get("TRITON_INTERPRET"), unfit)
        try:
            hit = self._resolved.get(key)
        except TypeError:  # an unhashable argument: resolve says what is wrong with it
            hit, key = None, None
        if hit is None:
            # a few microseconds warm, but tens right after other work has flushed the caches
            # (every object resolve touches is a miss): a tabular LIME explanation calls three
            # ops, each once
            name = self.resolve(device, backend, unfit)
            hit = (name, self.impls[name])
            if key is not None:
                self._resolved[key] = hit
        _LAST[self.name] = hit[0]
        return hit


_LAST: Dict[str, str] = {}
_OPS: Dict[str, Op] = {}


def define_op(name: str, auto_order: Dict[str, tuple]) -> Op:
    op = Op(name, auto_order)
    _OPS[name] = op
    return op


def get_op(name: str) -> Op:
    return _OPS[name]


def registered_ops() -> Dict[str, Op]:
    return dict(_OPS)


def last_backend(op: str) -> Optional[str]:
    """Name of the backend that served the most recent call of ``op`` (None before any call)."""
    return _LAST.get(op)
