"""``xaikernels bench infonce``: the fused InfoNCE logsumexp op against the materialised reference.

For each N, locals X (N, K, D) and globals Y (N, D) (seeded Gaussians scaled by ``D**-0.25`` so
scores are O(1)), both providers run forward + backward of the InfoNCE loss
``terms.mean()``:

- ``xaikernels``: :func:`xaikernels.ops.infonce.infonce_lse` (tiled, online logsumexp; the N x N*K
  score matrix is never built), on the backend asked for (``auto``: the fastest available);
- ``reference``: :func:`xaikernels.reference.infonce.infonce_lse` differentiated by plain torch
  autograd, which materialises the score matrix and its softmax.

Timing follows :mod:`xaikernels.benchmark`: warm-up calls, then interleaved rounds (each round
calls both providers, the order alternating) so drift on a shared machine hits both alike; the
median and interquartile range are reported, and ``time_ratio`` = median(fused) / median(reference).
Peak memory is :func:`xaikernels.benchmark.peak_memory` of one call (tensor allocations above
the starting level, the returned gradients included); ``peak_ratio`` = fused / reference.  The two
providers' gradients are compared on every N (``max_abs_grad_diff``), so a fast wrong kernel
cannot pass unnoticed.

One JSON line per (N, provider) is appended to ``<out-dir>/infonce_cli.jsonl`` (default
``bench/results``) with versions, git commit, machine and threads.  For the issue's full-size
sweep (N = 256, K = 3136, D = 256, per-process RSS) see ``bench/run_infonce.py``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

NAME = "infonce_cli"
PROVIDERS = ("xaikernels", "reference")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_parser(prog: str = "xaikernels bench infonce") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Time and peak memory of the fused InfoNCE op vs the materialised "
                               "reference (forward + backward).")
    p.add_argument("--n", type=int, nargs="+", default=[16, 32, 64], metavar="N",
                   help="samples (sweep; default 16 32 64)")
    p.add_argument("--k", type=int, default=784, help="local positions per sample (default 784 = 28x28)")
    p.add_argument("--d", type=int, default=64, help="feature dimension (default 64)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--exclude-self", action="store_true", help="Deep InfoMax's NCE (negatives from other samples)")
    p.add_argument("--backend", default="auto", help="backend of the fused op (auto, cpp, reference)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per provider first (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=None, help="results directory (default bench/results)")
    p.add_argument("--no-write", action="store_true", help="print only; append nothing")
    return p


def _callables(x: torch.Tensor, y: torch.Tensor, temperature: float, exclude_self: bool,
               backend: str) -> Dict[str, Callable[[], tuple]]:
    from xaikernels.ops.infonce import infonce_lse
    from xaikernels.reference.infonce import infonce_lse as reference

    def fused():
        xr, yr = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        terms, _ = infonce_lse(xr, yr, temperature, exclude_self, backend=backend)
        return torch.autograd.grad(terms.mean(), (xr, yr))

    def ref():
        xr, yr = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        terms, _ = reference(xr, yr, temperature, exclude_self)
        return torch.autograd.grad(terms.mean(), (xr, yr))

    return {"xaikernels": fused, "reference": ref}


def measure(n: int, k: int, d: int, *, temperature: float = 1.0, exclude_self: bool = False,
            backend: str = "auto", dtype: torch.dtype = torch.float32, repeats: int = 5, warmup: int = 1,
            memory: bool = True, seed: int = 0) -> List[dict]:
    """Measure both providers at one size; returns two rows (``xaikernels`` first).

    Each row: ``times_ms``, ``median_ms``, ``iqr_ms``, ``peak_bytes`` (None without ``memory``),
    ``backend``; the ``xaikernels`` row also ``time_ratio``, ``peak_ratio`` and
    ``max_abs_grad_diff`` against the reference.
    """
    import xaikernels as xk
    from xaikernels.benchmark import peak_memory, summarize

    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, k, d, generator=gen, dtype=torch.float64) / d ** 0.25).to(dtype)
    y = (torch.randn(n, d, generator=gen, dtype=torch.float64) / d ** 0.25).to(dtype)
    fns = _callables(x, y, temperature, exclude_self, backend)
    grads = {}
    for name, fn in fns.items():
        for _ in range(max(warmup, 1)):  # at least one call: its gradients are compared below
            grads[name] = fn()
    used = xk.last_backend("infonce_lse")
    diff = max(float((a - b).abs().max()) for a, b in zip(grads["xaikernels"], grads["reference"]))
    del grads
    times: Dict[str, List[float]] = {p: [] for p in PROVIDERS}
    for r in range(repeats):
        for name in (PROVIDERS if r % 2 == 0 else PROVIDERS[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    peaks = {p: (peak_memory(fns[p]) if memory else None) for p in PROVIDERS}
    rows = []
    for p in PROVIDERS:
        med, iqr = summarize(times[p])
        rows.append({"provider": p, "N": n, "K": k, "D": d, "dtype": str(dtype).replace("torch.", ""),
                     "temperature": temperature, "exclude_self": exclude_self,
                     "backend": used if p == "xaikernels" else "torch-autograd",
                     "times_ms": [round(t * 1e3, 3) for t in times[p]], "median_ms": round(med * 1e3, 3),
                     "iqr_ms": round(iqr * 1e3, 3), "peak_bytes": peaks[p],
                     "score_matrix_bytes": n * n * k * torch.finfo(dtype).bits // 8})
    fused, ref = rows
    fused["time_ratio"] = round(fused["median_ms"] / ref["median_ms"], 4) if ref["median_ms"] > 0 else None
    fused["peak_ratio"] = (round(fused["peak_bytes"] / ref["peak_bytes"], 4)
                           if memory and ref["peak_bytes"] else None)
    fused["max_abs_grad_diff"] = diff
    return rows


def _mib(b: Optional[int]) -> str:
    return "–" if b is None else f"{b / 2**20:,.1f}"


def format_table(rows: Sequence[dict]) -> str:
    """Plain-text table: one line per N with both providers side by side."""
    head = (f"{'N':>6} {'K':>6} {'D':>5} {'fused ms':>10} {'ref ms':>10} {'time ratio':>10} "
            f"{'fused MiB':>10} {'ref MiB':>10} {'peak ratio':>10} {'grad diff':>10}  backend")
    lines = [head]
    by = {}
    for r in rows:
        by.setdefault((r["N"], r["K"], r["D"]), {})[r["provider"]] = r
    for (n, k, d), pr in by.items():
        f, r = pr["xaikernels"], pr["reference"]
        ratio = "–" if f["time_ratio"] is None else f"{f['time_ratio']:.3f}"
        pratio = "–" if f["peak_ratio"] is None else f"{f['peak_ratio']:.4f}"
        lines.append(f"{n:>6} {k:>6} {d:>5} {f['median_ms']:>10.2f} {r['median_ms']:>10.2f} {ratio:>10} "
                     f"{_mib(f['peak_bytes']):>10} {_mib(r['peak_bytes']):>10} {pratio:>10} "
                     f"{f['max_abs_grad_diff']:>10.2e}  {f['backend']}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None, prog: str = "xaikernels bench infonce") -> int:
    """Entry point; returns the exit status (2 on a bad argument)."""
    from xaikernels import benchmark as bm

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    bad = [f"--{n} must be >= {lo}" for n, v, lo in
           (("n", min(args.n), 1), ("k", args.k, 1), ("d", args.d, 1), ("repeats", args.repeats, 1),
            ("warmup", args.warmup, 0), ("threads", args.threads, 1)) if v < lo]
    if args.exclude_self and min(args.n) < 2:
        bad.append("--exclude-self needs every N >= 2")
    if bad:
        print(f"{prog}: error: " + "; ".join(bad), file=sys.stderr)
        return 2
    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        rows: List[dict] = []
        for n in args.n:
            try:
                rows += measure(n, args.k, args.d, temperature=args.temperature, exclude_self=args.exclude_self,
                                backend=args.backend, dtype=_DTYPES[args.dtype], repeats=args.repeats,
                                warmup=args.warmup, memory=not args.no_memory, seed=args.seed)
            except (ValueError, RuntimeError) as exc:  # e.g. a backend that is not available here
                print(f"{prog}: error: N={n}: {exc}", file=sys.stderr)
                return 2
    finally:
        torch.set_num_threads(old_threads)
    print(f"InfoNCE logsumexp, forward + backward, {args.dtype}, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(format_table(rows))
    if args.no_write:
        return 0
    meta = {"schema": bm.SCHEMA, "bench": "infonce", "date": _dt.datetime.now().isoformat(timespec="seconds"),
            **bm.git_commit(), "versions": bm.versions(), "machine": bm.machine_info(torch.device("cpu")),
            "threads": args.threads, "device": "cpu", "command": " ".join([prog, shlex.join(argv)]).strip()}
    out_dir = Path(args.out_dir) if args.out_dir is not None else bm.default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{NAME}.jsonl"
    with path.open("a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({**meta, **r}) + "\n")
    print(f"wrote {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(prog="python -m xaikernels.bench_infonce"))
