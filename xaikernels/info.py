"""``python -m xaikernels info``: versions and which backends are live."""
from __future__ import annotations

import importlib
import os
import platform
import shutil
import sys


def _version(mod: str) -> str:
    try:
        return getattr(importlib.import_module(mod), "__version__", "installed")
    except Exception as exc:  # report, never fail: this is a diagnostic
        return f"not available ({type(exc).__name__})"


def collect() -> dict:
    import torch

    import xaikernels
    from xaikernels import _backend

    info = {
        "xaikernels": xaikernels.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch.cuda": str(torch.version.cuda),
        "cuda available": str(torch.cuda.is_available()),
        "threads": str(torch.get_num_threads()),
        "triton": _version("triton"),
        "numba": _version("numba"),
        "captum": _version("captum"),
        "nvcc": shutil.which("nvcc") or "not found",
        "XAIKERNELS_BACKEND": os.environ.get(_backend.ENV_VAR, "(unset: auto)"),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "(unset)"),
    }
    backends = _backend.backend_status()
    ops = {}
    for name, op in _backend.registered_ops().items():
        try:
            ops[name] = {"cpu": op.resolve(torch.device("cpu"))}
        except Exception as exc:  # e.g. an XAIKERNELS_BACKEND naming a missing backend
            ops[name] = {"cpu": f"error: {exc}"}
        ops[name]["kernels"] = ",".join(sorted(op.impls))
    return {"versions": info, "backends": backends, "ops": ops}


def main() -> int:
    import xaikernels.ops  # noqa: F401  (registers the ops)

    data = collect()
    print("xaikernels environment")
    for k, v in data["versions"].items():
        print(f"  {k:<20} {v}")
    print("backends")
    for k, v in data["backends"].items():
        print(f"  {k:<20} {v}")
    print("ops (auto choice on cpu; kernels available)")
    for k, v in data["ops"].items():
        print(f"  {k:<20} cpu -> {v['cpu']:<10} kernels: {v['kernels']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
