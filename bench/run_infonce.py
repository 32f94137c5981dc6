"""Benchmark: fused InfoNCE logsumexp (``xaikernels``) vs the materialised torch reference.

Forward + backward of ``terms.mean()`` (the InfoNCE loss) for locals X (N, K, D) and globals
Y (N, D), fp32, one thread.  Each (provider, N) runs in its own subprocess so that peak memory is
that process's: ``peak`` = peak RSS minus the RSS once the inputs exist (it includes the
gradients dX, dY that any implementation must return); ``workspace`` = peak minus the size of
those gradients (what the method itself needs on top of inputs and outputs).

    python bench/run_infonce.py                       # K=3136, D=256, N in 8..256 (reference up to --ref-max-n)
    python bench/run_infonce.py --n 8 16 --k 784 --d 64 --no-write
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(provider: str, n: int, k: int, d: int, repeats: int) -> dict:
    import resource

    import torch

    torch.set_num_threads(1)
    from xaikernels.ops.infonce import infonce_lse

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, k, d, generator=gen) / d ** 0.25
    y = torch.randn(n, d, generator=gen) / d ** 0.25
    backend = "cpp" if provider == "xaikernels" else "reference"
    if provider == "reference":
        from xaikernels.reference.infonce import infonce_lse as ref

        def run():
            xr, yr = x.requires_grad_(True), y.requires_grad_(True)
            terms, _ = ref(xr, yr, 1.0, False)  # plain torch autograd on the materialised scores
            terms.mean().backward()
            return xr.grad, yr.grad
    else:
        def run():
            xr, yr = x.requires_grad_(True), y.requires_grad_(True)
            terms, _ = infonce_lse(xr, yr, 1.0, False, backend=backend)
            terms.mean().backward()
            return xr.grad, yr.grad

    # Warm up on a tiny problem first: library loading and allocator pools are not the op's memory.
    xs, ys_ = x[:2, :4].clone(), y[:2].clone()
    x_full, y_full = x, y
    x, y = xs, ys_
    run()
    x, y = x_full, y_full
    base = _rss_bytes()
    times = []
    for r in range(repeats):
        x.grad = y.grad = None
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        if r == 0:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    grads = (x.numel() + y.numel()) * 4
    return {"provider": provider, "N": n, "K": k, "D": d, "time_s": min(times), "times_s": times,
            "peak_bytes": peak, "workspace_bytes": peak - grads, "grad_bytes": grads,
            "score_matrix_bytes": n * n * k * 4}


def _run_child(provider, n, k, d, repeats, timeout):
    cmd = [sys.executable, __file__, "--child", provider, str(n), str(k), str(d), str(repeats)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        return {"provider": provider, "N": n, "K": k, "D": d, "error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _mib(b):
    return f"{b / 2**20:,.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    ap.add_argument("--k", type=int, default=3136)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--ref-max-n", type=int, default=128, help="largest N run with the materialised reference")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        p, n, k, d, rep = a.child
        print(json.dumps(_child(p, int(n), int(k), int(d), int(rep))))
        return
    import torch

    rows = []
    for n in a.n:
        for provider in ("xaikernels", "reference"):
            if provider == "reference" and n > a.ref_max_n:
                continue
            row = _run_child(provider, n, a.k, a.d, a.repeats, a.timeout)
            rows.append(row)
            print(json.dumps(row), flush=True)

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
            "python": platform.python_version(), "commit": commit, "threads": 1,
            "command": "python bench/run_infonce.py " + " ".join(sys.argv[1:])}
    by = {(r["provider"], r["N"]): r for r in rows if "error" not in r}
    lines = [
        "# InfoNCE logsumexp: fused op vs materialised reference (CPU, fp32, 1 thread)",
        "",
        f"Command: `{meta['command']}` — torch {meta['torch']}, commit {meta['commit']}, {meta['date']}.",
        f"Forward + backward of the InfoNCE loss, K = {a.k}, D = {a.d}.  Time: best of {a.repeats}. "
        "Peak: peak RSS above the inputs (includes the returned gradients dX, dY); workspace: peak minus "
        "the gradients.  The machine is shared (2 vCPU, ~1 effective core), so times carry noise of "
        "tens of percent.",
        "",
        "| N | score matrix MiB | fused time s | ref time s | time ratio | fused peak MiB | ref peak MiB | "
        "fused workspace MiB | ref workspace MiB | workspace ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in a.n:
        f, r = by.get(("xaikernels", n)), by.get(("reference", n))
        if f is None:
            continue
        cells = [str(n), _mib(f["score_matrix_bytes"]), f"{f['time_s']:.2f}"]
        if r is not None:
            cells += [f"{r['time_s']:.2f}", f"{f['time_s'] / r['time_s']:.2f}", _mib(f["peak_bytes"]),
                      _mib(r["peak_bytes"]), _mib(f["workspace_bytes"]), _mib(r["workspace_bytes"]),
                      f"{max(f['workspace_bytes'], 1) / r['workspace_bytes']:.3f}"]
        else:
            cells += ["—", "—", _mib(f["peak_bytes"]), "—", _mib(f["workspace_bytes"]), "—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "Failed runs: " + "; ".join(f"{e['provider']} N={e['N']}: {e['error']}" for e in errors)]
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.no_write:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "infonce.jsonl"), "a") as fh:
            for r in rows:
                fh.write(json.dumps({**meta, **r}) + "\n")
        with open(os.path.join(RESULTS, "infonce.md"), "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
