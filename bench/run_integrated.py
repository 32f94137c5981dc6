"""Integrated Gradients and SmoothGrad (issue 3): speed, memory, chunk size, quadrature error,
adaptive ``n_steps="auto"`` — xaikernels vs Captum, measured side by side in one process.

Parts (``--parts``, default all, in this order):

* ``curve`` → ``ig_chunk_curve.md`` / ``.png``: time per path row of ``integrated_gradients``
  with ``batch_size=c`` and of the plain model's gradient in batches of ``c``, for a sweep of
  ``c``, on each model of ``--models`` and the digits CNN; the chunk ``auto_chunk`` picks is
  marked.  The plain curve's fastest batch size is the batch size of the *ideal* below.
* ``speed`` → ``integrated.md``: IG (n=50, Gauss–Legendre) and SmoothGrad (50 samples,
  absolute σ=0.15, signed gradient) on VGG-16-like 8×3×64×64 and ResNet-18-like 4×3×224×224.
  Providers: ``ideal`` (n × batch gradients of the plain model in its fastest batch size),
  ``unit`` (one forward+backward of the batch), ``xaikernels`` (defaults), ``captum``
  (``IntegratedGradients`` with ``internal_batch_size=None`` and ``=64``; ``NoiseTunnel``
  over ``Saliency`` with ``nt_samples_batch_size=None``), and ``xaikernels.captum`` drop-ins when
  importable.  Each callable's first call (the warm-up) is the peak-memory call (torch.profiler
  memory events, :func:`xaikernels.benchmark.peak_memory`); then ``--repeats`` interleaved
  rounds (rotating order, GC paused).  Targets (issue 3): time ≤ 1.05 × ideal and ≤ Captum at
  the same (default) settings.
* ``memory`` → ``integrated.md`` (second section): peak at n_steps=200 on ResNet-18-like batch 4
  with default settings vs Captum IG ``internal_batch_size=None`` (target ≤ 1/4), and vs Captum
  at several ``internal_batch_size`` with xaikernels at the same rows per model call (target:
  never more).  Captum's un-chunked peak at n=200 (~20 GB) does not fit a shared machine: it is
  measured at n=25 and n=50 and extrapolated linearly (its path batch and activations are
  linear in n).  Chunked peaks do not depend on n_steps (both libraries sum chunk by chunk), so
  the ``internal_batch_size`` sweep runs 3 chunks per call; the xaikernels row at the auto chunk
  checks that claim against the n=200 call.
* ``completeness`` → ``ig_completeness.md`` / ``.png``: |Σ IG − (f(x) − f(b))| / |f(x) − f(b)|
  of the five quadratures vs n_steps on the demo digits CNN (100 real test digits) and on the
  VGG-16-like model (2 random inputs).
* ``auto`` → ``ig_auto.md``: ``n_steps="auto"`` at several ``tol`` vs fixed 50-step
  Gauss–Legendre (Captum's default) on 300 real test digits: gradient and forward-only
  evaluations per example, completeness error, and relative L2 error against a converged
  reference (2000-step riemann_middle).

Usage (repository root; one thread, ``torch.set_num_threads(1)``, unless ``--threads``)::

    .venv/bin/python bench/run_integrated.py                   # everything, ~15-20 min quiet
    .venv/bin/python bench/run_integrated.py --models resnet18 --parts speed,memory
    .venv/bin/python bench/run_integrated.py --quick           # tiny models, ~1 min

Rows (with versions, commit, machine, threads, the command) are appended to
``bench/results/integrated.jsonl``; the Markdown files are regenerated from it (latest run of
each part × model).  ``--quick`` writes to a temporary folder unless ``--out-dir`` is given.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import xaikernels as xk  # noqa: E402
from xaikernels import benchmark as B  # noqa: E402
from xaikernels.methods._chunking import auto_chunk  # noqa: E402
from xaikernels.methods.integrated import QUADRATURES  # noqa: E402

NAME = "integrated"
PARTS = ("curve", "speed", "memory", "completeness", "auto")
MODELS = ("vgg16", "resnet18")
TARGET_RATIO = 1.05
SG_STDEV = 0.15
GiB = 2**30
MiB = 2**20

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def _command(argv: Sequence[str]) -> str:
    def rel(p: str) -> str:
        r = os.path.relpath(p)
        return p if r.startswith("..") else r

    return shlex.join([rel(sys.executable), rel(os.path.abspath(__file__)), *argv])


# ---------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------


class Entry:
    """One callable to time (and measure once for peak memory)."""

    def __init__(self, method: str, provider: str, settings: str, fn: Optional[Callable[[], Any]],
                 **extra):
        self.method, self.provider, self.settings, self.fn = method, provider, settings, fn
        self.times: List[float] = []
        self.peak: Optional[int] = None
        self.first_s: Optional[float] = None
        self.error: Optional[str] = None
        self.extra = extra


def measure(entries: List[Entry], repeats: int, memory: bool = True, warmup: bool = True) -> None:
    """First call of each entry = warm-up (and the profiled peak-memory call), then ``repeats``
    interleaved rounds (each starts a further len/repeats entries along) with the cyclic GC
    paused.  ``warmup=False`` (and no
    memory): the caller has warmed up already."""
    for e in entries:
        if e.fn is None or not (warmup or memory):
            continue
        log(f"  warm-up{' + peak memory' if memory else ''}: {e.method} / {e.provider} "
            f"({e.settings})")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                if memory:
                    e.peak = B.peak_memory(e.fn)
                else:
                    e.fn()
                e.first_s = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 — one failing row must not stop the run
            e.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            log(f"    ERROR {e.error}")
        gc.collect()
    live = [e for e in entries if e.fn is not None and e.error is None]
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for r in range(repeats):
                # Rotate by len/repeats per round, so that with few rounds every entry still sits
                # at spread-out positions (a load burst then hits different rows each round).
                k = (r * len(live)) // repeats % len(live) if live else 0
                for e in live[k:] + live[:k]:
                    t0 = time.perf_counter()
                    e.fn()
                    e.times.append(time.perf_counter() - t0)
                gc.collect()
                log(f"  round {r + 1}/{repeats} done")
    finally:
        if was:
            gc.enable()


def med_iqr(ts: Sequence[float]):
    if not ts:
        return None, None
    m, i = B.summarize(list(ts))
    return m, i


def pct(a, q):
    return float(np.percentile(np.asarray(a, dtype=np.float64), q))


class Ctx:
    """Run-wide settings, metadata and collected rows."""

    def __init__(self, args, command: str):
        self.args = args
        self.quick = args.quick
        self.out_dir: Path = args.out_dir
        now = _dt.datetime.now(_dt.timezone.utc)
        self.meta = {
            "schema": 1,
            "run_id": f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{os.getpid()}",
            "date": now.isoformat(timespec="seconds"),
            "name": NAME,
            "command": command,
            **B.git_commit(),
            "versions": B.versions(),
            "machine": B.machine_info(torch.device("cpu")),
            "threads": torch.get_num_threads(),
            "device": "cpu",
            "quick": self.quick,
            "numba_threading_layer": os.environ.get("NUMBA_THREADING_LAYER"),
        }
        self.best_batch: Dict[str, int] = {}

    def write(self, rows: List[dict]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / f"{NAME}.jsonl").open("a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(dict(self.meta, **r)) + "\n")


def load(ctx: Ctx, name: str, digits_batch: int = 16):
    """(model, x, target, label, description) for a zoo model or the digits CNN."""
    if name == "digits":
        from xaikernels.models.digits import load_digits_data, load_digits_model

        model, info = load_digits_model()
        xs, _ = load_digits_data("test")
        x = xs[: 4 if ctx.quick else digits_batch].contiguous()
        with torch.no_grad():
            t = model(x).argmax(1)
        return model, x, t, "digits", (f"demo digits CNN (sklearn 8×8, test accuracy "
                                        f"{info['test_accuracy']:.3f}), real test images")
    lm = B.load_model(name, quick=ctx.quick, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((lm.batch, *lm.input_shape), generator=gen)
    with torch.no_grad():
        k = lm.model(x).shape[-1]
    t = torch.arange(lm.batch) % k
    return lm.model, x, t, lm.label, lm.description


def plain_rows_fn(model, shape, rows: int, b: int, n_classes: int):
    """n rows of plain-model gradients (target logit w.r.t. the input) in batches of b."""
    gen = torch.Generator().manual_seed(1)
    full = torch.randn((b, *shape), generator=gen).requires_grad_(True)
    rem_n = rows % b
    rem = full.detach()[:rem_n].clone().requires_grad_(True) if rem_n else None
    tf = (torch.arange(b) % n_classes).unsqueeze(1)
    tr = tf[:rem_n]

    def run():
        out_g = None
        for _ in range(rows // b):
            out = model(full)
            out_g = torch.autograd.grad(out.gather(1, tf).sum(), full)[0]
        if rem is not None:
            out = model(rem)
            out_g = torch.autograd.grad(out.gather(1, tr).sum(), rem)[0]
        return out_g

    return run


def n_classes_of(model, x) -> int:
    with torch.no_grad():
        return model(x[:1]).shape[-1]


# ---------------------------------------------------------------------------------------------
# Part: chunk curve
# ---------------------------------------------------------------------------------------------


def part_curve(ctx: Ctx, name: str) -> List[dict]:
    # Digits: 64 images, so that n_steps stays <= 128 at the largest chunk (Gauss-Legendre nodes
    # for n in the hundreds cost ~0.1 s to compute, which would be charged to the chunk size).
    model, x, t, label, desc = load(ctx, name, digits_batch=64)
    N, shape = x.shape[0], tuple(x.shape[1:])
    k = n_classes_of(model, x)
    c_auto = auto_chunk(model, x[:1])
    if name == "digits":
        chunks, r_min = [1, 4, 16, 64, 256, 1024, 4096], 1024
        if ctx.quick:
            chunks, r_min = [1, 16, 256, 1024], 256
    elif name == "resnet18":
        chunks, r_min = [1, 2, 4, 8, 16, 32], 16
        if ctx.quick:
            chunks, r_min = [1, 4, 16], 8
    else:
        chunks, r_min = [1, 2, 4, 8, 16, 32, 64], 32
        if ctx.quick:
            chunks, r_min = [1, 4, 16], 8
    chunks = sorted(set(chunks) | {c_auto})
    log(f"curve: {label} batch {N}×{'×'.join(map(str, shape))}, auto_chunk={c_auto}, chunks {chunks}")
    entries: List[Entry] = []
    # Warm-up: one small call per chunk size (allocator, Numba), not timed.
    log("  warm-up: one chunk per chunk size")
    for c in chunks:
        steps = max(1, math.ceil(c / N))
        xk.integrated_gradients(model, x, t, n_steps=steps, batch_size=c)
        plain_rows_fn(model, shape, c, c, k)()
    for c in chunks:
        steps = max(1, math.ceil(max(r_min, 2 * c) / N))
        rows = steps * N
        entries.append(Entry("integrated_gradients", "xaikernels", f"batch_size={c}",
                             (lambda c=c, steps=steps: xk.integrated_gradients(
                                 model, x, t, n_steps=steps, batch_size=c)),
                             chunk=c, rows=rows, n_steps=steps))
        entries.append(Entry("plain_gradient", "ideal", f"batch {c}",
                             plain_rows_fn(model, shape, rows, c, k), chunk=c, rows=rows))
    measure(entries, ctx.args.curve_repeats or (1 if ctx.quick else 2), memory=False, warmup=False)
    rows_out = []
    for e in entries:
        per = [s / e.extra["rows"] * 1e3 for s in e.times]
        m, i = med_iqr(per)
        rows_out.append(dict(part="curve", model=label, model_description=desc, batch=N,
                             input_shape=list(shape), method=e.method, provider=e.provider,
                             settings=e.settings, chunk=e.extra["chunk"], rows=e.extra["rows"],
                             n_steps=e.extra.get("n_steps"), auto_chunk=c_auto,
                             per_row_ms=[round(v, 5) for v in per], median_per_row_ms=m,
                             iqr_per_row_ms=i, status="ok" if e.error is None else "error",
                             error=e.error))
    plain = {r["chunk"]: r["median_per_row_ms"] for r in rows_out if r["method"] == "plain_gradient"
             and r["median_per_row_ms"]}
    best = min(plain, key=plain.get)
    ctx.best_batch[name] = best
    log(f"curve: {label}: fastest plain batch {best} ({plain[best]:.3f} ms/row); auto chunk "
        f"{c_auto}")
    for r in rows_out:
        r["best_plain_batch"] = best
    return rows_out


def curve_best_batch(ctx: Ctx, label: str) -> Optional[int]:
    """Fastest plain batch of the latest curve run of this model in the results file."""
    rows = [r for r in read_rows(ctx.out_dir / f"{NAME}.jsonl")
            if r.get("part") == "curve" and r.get("model") == label and r.get("quick") == ctx.quick]
    if not rows:
        return None
    rid = max(r["run_id"] for r in rows)
    b = next((r.get("best_plain_batch") for r in rows if r["run_id"] == rid), None)
    if b:
        log(f"  fastest plain batch from the latest curve run: {b}")
    return b


def quick_best_batch(ctx: Ctx, name: str, model, x) -> int:
    """Fastest plain-gradient batch size, by a short sweep (when the curve part did not run)."""
    shape, k = tuple(x.shape[1:]), n_classes_of(model, x)
    cands = [1, 2, 4, 8, 16, 32] + ([64] if name != "resnet18" else [])
    if ctx.quick:
        cands = [1, 4, 16]
    best, best_t = None, float("inf")
    for b in cands:
        fn = plain_rows_fn(model, shape, max(b, 8 if name == "resnet18" else 16), b, k)
        fn()
        rows = max(b, 8 if name == "resnet18" else 16)
        ts = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) / rows)
        if min(ts) < best_t:
            best, best_t = b, min(ts)
    log(f"  short sweep: fastest plain batch {best}")
    return best


# ---------------------------------------------------------------------------------------------
# Part: speed (IG and SmoothGrad, n = 50)
# ---------------------------------------------------------------------------------------------


def _captum_module(name: str):
    try:
        return __import__(name, fromlist=["_"])
    except Exception:  # noqa: BLE001
        return None


def part_speed(ctx: Ctx, name: str) -> List[dict]:
    model, x, t, label, desc = load(ctx, name)
    N, shape = x.shape[0], tuple(x.shape[1:])
    k = n_classes_of(model, x)
    n = ctx.args.n
    c_auto = auto_chunk(model, x[:1])
    best = ctx.best_batch.get(name) or curve_best_batch(ctx, label) or quick_best_batch(ctx, name, model, x)
    # The ideal's batch size: the plain-gradient sweep's fastest, the auto chunk and the batch
    # itself, each measured in the same rounds; the fastest of them is the ideal (a single
    # noisy sweep point must not decide the denominator).
    cands = sorted({best, c_auto, N})
    log(f"speed: {label} batch {N}×{'×'.join(map(str, shape))}, n={n}, auto chunk {c_auto}, "
        f"ideal candidates: batches of {cands} (sweep's fastest {best})")
    xg = x.detach().clone().requires_grad_(True)
    idx = t.unsqueeze(1)

    def unit():
        out = model(xg)
        return torch.autograd.grad(out.gather(1, idx).sum(), xg)[0]

    entries = [Entry("unit", "unit", f"one forward+backward of batch {N}", unit)]
    entries += [Entry("ideal", "ideal", f"{n * N} gradient rows in batches of {b}",
                      plain_rows_fn(model, shape, n * N, b, k), ideal_batch=b) for b in cands]
    ig_kw = dict(n_steps=n, method="gausslegendre")
    entries.append(Entry("integrated_gradients", "xaikernels",
                         f"defaults (batch_size=None → auto chunk {c_auto})",
                         lambda: xk.integrated_gradients(model, x, t, **ig_kw), default=True))
    sg_kw = dict(n_samples=n, stdev=SG_STDEV, noise_scale="absolute", seed=0)
    unavailable = {}
    cap = _captum_module("captum.attr")
    if cap is not None:
        ig = cap.IntegratedGradients(model)
        for ibs in (None, 64):
            entries.append(Entry("integrated_gradients", "captum", f"internal_batch_size={ibs}",
                                 (lambda ibs=ibs: ig.attribute(x, target=t, internal_batch_size=ibs,
                                                               **ig_kw)), default=ibs is None))
    else:
        unavailable["captum"] = "captum.attr not importable"
    xc = _captum_module("xaikernels.captum")
    xc_ig = getattr(xc, "IntegratedGradients", None) if xc else None
    xc_nt = getattr(xc, "NoiseTunnel", None) if xc else None
    if xc_ig is not None:
        dig = xc_ig(model)
        entries.append(Entry("integrated_gradients", "xaikernels.captum",
                             "internal_batch_size=None (drop-in default)",
                             lambda: dig.attribute(x, target=t, **ig_kw), default=True))
    else:
        unavailable["xaikernels.captum IntegratedGradients"] = "not importable"
    entries.append(Entry("smoothgrad", "xaikernels",
                         f"defaults (batch_size=None → auto chunk {c_auto}); σ={SG_STDEV} absolute",
                         lambda: xk.smoothgrad(model, x, t, **sg_kw), default=True))
    nt_kw = dict(nt_type="smoothgrad", nt_samples=n, stdevs=SG_STDEV, target=t, abs=False)
    if cap is not None:
        nt = cap.NoiseTunnel(cap.Saliency(model))
        entries.append(Entry("smoothgrad", "captum",
                             "NoiseTunnel(Saliency(abs=False)), nt_samples_batch_size=None",
                             lambda: nt.attribute(x, **nt_kw), default=True))
    if xc_nt is not None and getattr(xc, "Saliency", None) is not None:
        dnt = xc_nt(xc.Saliency(model))
        entries.append(Entry("smoothgrad", "xaikernels.captum",
                             "NoiseTunnel(Saliency(abs=False)) drop-in, defaults",
                             lambda: dnt.attribute(x, **nt_kw), default=True))
    else:
        unavailable["xaikernels.captum NoiseTunnel"] = "not importable"
    measure(entries, ctx.args.repeats or (1 if ctx.quick else 2), memory=not ctx.args.no_memory)

    med = {id(e): med_iqr(e.times) for e in entries}
    ideals = [e for e in entries if e.provider == "ideal" and e.times]
    ideal_e = min(ideals, key=lambda e: med[id(e)][0])
    best = ideal_e.extra["ideal_batch"]
    for e in ideals:
        if e is not ideal_e:
            e.provider = "ideal (candidate)"
    unit_e = entries[0]
    ideal_m = med[id(ideal_e)][0]
    unit_m = med[id(unit_e)][0]
    cap_default = {e.method: med[id(e)][0] for e in entries
                   if e.provider == "captum" and e.extra.get("default") and e.times}
    rows = []
    for e in entries:
        m, i = med[id(e)]
        row = dict(part="speed", model=label, model_description=desc, batch=N,
                   input_shape=list(shape), n=n, method=e.method, provider=e.provider,
                   settings=e.settings, auto_chunk=c_auto, ideal_batch=best,
                   status="ok" if e.error is None else "error", error=e.error,
                   times_ms=[round(s * 1e3, 2) for s in e.times],
                   median_ms=None if m is None else round(m * 1e3, 2),
                   iqr_ms=None if i is None else round(i * 1e3, 2),
                   ratio_to_ideal=None if m is None or not ideal_m else round(m / ideal_m, 4),
                   ratio_to_unit=None if m is None or not unit_m else round(m / unit_m, 3),
                   peak_bytes=e.peak, first_call_s=e.first_s, unavailable=unavailable,
                   repeats=len(e.times), target=None)
        if e.provider in ("xaikernels", "xaikernels.captum") and e.method in (
                "integrated_gradients", "smoothgrad"):
            why = []
            if m is None:
                why.append("no measurement")
            else:
                if m / ideal_m > TARGET_RATIO:
                    why.append(f"{m / ideal_m:.3f} > {TARGET_RATIO} × ideal")
                cd = cap_default.get(e.method)
                if cd is not None and m > cd:
                    why.append(f"slower than Captum default ({m / ideal_m:.3f} > {cd / ideal_m:.3f})")
            row["target"] = {"pass": not why, "why": "; ".join(why) or None,
                             "captum_default_ratio": (None if cap_default.get(e.method) is None
                                                      else round(cap_default[e.method] / ideal_m, 4))}
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Part: memory (n_steps = 200, ResNet-18-like)
# ---------------------------------------------------------------------------------------------


def part_memory(ctx: Ctx, name: str) -> List[dict]:
    model, x, t, label, desc = load(ctx, name)
    N, shape = x.shape[0], tuple(x.shape[1:])
    n_big = ctx.args.memory_steps or (16 if ctx.quick else 200)
    c_auto = auto_chunk(model, x[:1])
    rows: List[dict] = []

    def one(provider, settings, fn, n_steps, **extra):
        log(f"memory: {provider} {settings} (n_steps={n_steps})")
        gc.collect()
        err = None
        peak = None
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peak = B.peak_memory(fn)
        except Exception as exc:  # noqa: BLE001
            err = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            log(f"    ERROR {err}")
        dt = time.perf_counter() - t0
        gc.collect()
        r = dict(part="memory", model=label, model_description=desc, batch=N,
                 input_shape=list(shape), provider=provider, settings=settings, n_steps=n_steps,
                 peak_bytes=peak, wall_s=round(dt, 2), status="ok" if err is None else "error",
                 error=err, auto_chunk=c_auto, **extra)
        rows.append(r)
        if peak is not None:
            log(f"    peak {peak / MiB:.1f} MiB in {dt:.1f} s")
        return r

    # Warm-up (Numba compile, lazy init) so that nothing one-off lands in a peak.
    xk.integrated_gradients(model, x, t, n_steps=2)
    ours = one("xaikernels", f"defaults (auto chunk {c_auto} rows)",
               lambda: xk.integrated_gradients(model, x, t, n_steps=n_big), n_big, kind="default",
               rows_per_call=c_auto)
    cap = _captum_module("captum.attr")
    if cap is None:
        return rows
    ig = cap.IntegratedGradients(model)
    small = [max(2, n_big // 8), max(4, n_big // 4)]
    pts = []
    for ns in small:
        r = one("captum", "internal_batch_size=None", lambda ns=ns: ig.attribute(
            x, target=t, n_steps=ns, internal_batch_size=None), ns, kind="captum_none",
            rows_per_call=ns * N)
        if r["peak_bytes"]:
            pts.append((ns, r["peak_bytes"]))
    if len(pts) == 2:
        (n1, p1), (n2, p2) = pts
        slope = (p2 - p1) / (n2 - n1)
        est = p2 + slope * (n_big - n2)
        rows.append(dict(part="memory", model=label, model_description=desc, batch=N,
                         input_shape=list(shape), provider="captum",
                         settings="internal_batch_size=None", n_steps=n_big, peak_bytes=int(est),
                         kind="captum_none_extrapolated", status="ok", error=None,
                         extrapolated_from={str(n1): p1, str(n2): p2},
                         slope_bytes_per_step=slope, auto_chunk=c_auto))
        ratio = ours["peak_bytes"] / est if ours["peak_bytes"] else None
        rows.append(dict(part="memory", model=label, kind="target_quarter", n_steps=n_big,
                         ratio=ratio, status="ok", provider="xaikernels", settings="",
                         target={"pass": ratio is not None and ratio <= 0.25,
                                 "why": None if ratio is not None and ratio <= 0.25 else
                                 f"ours / Captum(None) = {ratio}"}))
    ibs_list = sorted({N, c_auto, 16, 64} if not ctx.quick else {N, c_auto, 16})
    for ibs in ibs_list:
        per = max(1, ibs // N)  # Captum: steps per chunk
        r_call = per * N
        ns = min(n_big, 3 * per)
        rc = one("captum", f"internal_batch_size={ibs}", lambda ibs=ibs, ns=ns: ig.attribute(
            x, target=t, n_steps=ns, internal_batch_size=ibs), ns, kind="ibs_sweep", ibs=ibs,
            rows_per_call=r_call)
        ro = one("xaikernels", f"batch_size={r_call}", lambda r_call=r_call, ns=ns:
                 xk.integrated_gradients(model, x, t, n_steps=ns, batch_size=r_call), ns,
                 kind="ibs_sweep", ibs=ibs, rows_per_call=r_call)
        ok = (ro["peak_bytes"] is not None and rc["peak_bytes"] is not None
              and ro["peak_bytes"] <= rc["peak_bytes"])
        ro["target"] = {"pass": ok, "why": None if ok else "more than Captum at this chunk"}
    return rows


# ---------------------------------------------------------------------------------------------
# Part: completeness error vs n_steps
# ---------------------------------------------------------------------------------------------


def _fdiff(model, x, t, b=None):
    b = torch.zeros_like(x) if b is None else b
    with torch.no_grad():
        fx = model(x).gather(1, t.unsqueeze(1)).squeeze(1)
        fb = model(b).gather(1, t.unsqueeze(1)).squeeze(1)
    return (fx - fb).double()


def part_completeness(ctx: Ctx, name: str) -> List[dict]:
    if name == "digits":
        from xaikernels.models.digits import load_digits_data, load_digits_model

        model, info = load_digits_model()
        xs, _ = load_digits_data("test")
        x = xs[: 20 if ctx.quick else 100].contiguous()
        label = "digits"
        desc = f"demo digits CNN, {x.shape[0]} real test digits, zero baseline, predicted class"
        steps = [4, 16] if ctx.quick else [4, 8, 16, 32, 50, 100, 200]
        baseline = None
    else:
        lm = B.load_model(name, quick=ctx.quick, seed=0)
        model, label = lm.model, lm.label
        gen = torch.Generator().manual_seed(3)
        x = torch.randn((1 if ctx.quick else 2, *lm.input_shape), generator=gen)
        # Blurred-input baseline, not zeros: the random-init VGG-like model has zero biases, so
        # it is positively homogeneous (f(a x) = a f(x)) and with a zero baseline the IG
        # integrand is constant on (0, 1] — every rule that does not sample alpha = 0 is exact.
        baseline = "blur"
        desc = (f"{lm.description}, {x.shape[0]} random N(0,1) inputs, baseline = blurred input "
                "(σ = H/8; a zero baseline is degenerate here: zero biases make f positively "
                "homogeneous, so the integrand is constant), predicted class")
        steps = [4, 8] if ctx.quick else [4, 8, 16, 32, 50, 100]
    with torch.no_grad():
        t = model(x).argmax(1)
    from xaikernels.methods.integrated import resolve_baseline

    d = _fdiff(model, x, t, resolve_baseline(x, baseline))
    log(f"completeness: {label}: {x.shape[0]} inputs, |f(x)-f(b)| median {d.abs().median():.4g}")
    rows = []
    for method in QUADRATURES:
        for n in steps:
            _, delta = xk.integrated_gradients(model, x, t, n_steps=n, method=method,
                                               baseline=baseline, return_delta=True)
            rel = (delta.double().abs() / d.abs()).numpy()
            rows.append(dict(part="completeness", model=label, model_description=desc,
                             n_inputs=int(x.shape[0]), input_shape=list(x.shape[1:]),
                             method=method, n_steps=n, median=float(np.median(rel)),
                             p90=pct(rel, 90), mean=float(rel.mean()), max=float(rel.max()),
                             status="ok", error=None))
        log(f"  {method}: " + ", ".join(f"n={r['n_steps']}: {r['median']:.2e}"
                                        for r in rows if r["method"] == method))
    return rows


# ---------------------------------------------------------------------------------------------
# Part: n_steps="auto" vs fixed 50-step Gauss–Legendre
# ---------------------------------------------------------------------------------------------


def part_auto(ctx: Ctx) -> List[dict]:
    from xaikernels.models.digits import load_digits_data, load_digits_model

    model, info = load_digits_model()
    xs, _ = load_digits_data("test")
    n_ex = ctx.args.auto_examples or (40 if ctx.quick else 300)
    x = xs[:n_ex].contiguous()
    with torch.no_grad():
        t = model(x).argmax(1)
    d = _fdiff(model, x, t)
    ref_steps = 200 if ctx.quick else 2000
    log(f"auto: {n_ex} test digits; reference: {ref_steps}-step riemann_middle")
    ref, ref_delta = xk.integrated_gradients(model, x, t, n_steps=ref_steps, method="riemann_middle",
                                             return_delta=True)
    ref2 = ref.reshape(n_ex, -1).double()
    tols = [5e-3] if ctx.quick else [1e-2, 5e-3, 2e-3, 1e-3]
    fixed = [50] if ctx.quick else [8, 16, 25, 50]
    configs = [(f"fixed gausslegendre n={n}", dict(n_steps=n, method="gausslegendre"), n)
               for n in fixed]
    configs += [(f"auto tol={tol:g}", dict(n_steps="auto", tol=tol), None) for tol in tols]
    rows = []
    desc = f"demo digits CNN, {n_ex} real test digits, zero baseline, predicted class"

    def stats(a):
        a = np.asarray(a, dtype=np.float64)
        return dict(mean=float(a.mean()), median=float(np.median(a)), p90=pct(a, 90),
                    max=float(a.max()), min=float(a.min()))

    rel_ref = (ref_delta.double().abs() / d.abs()).numpy()
    rows.append(dict(part="auto", model="digits", model_description=desc, n_examples=n_ex,
                     config=f"reference riemann_middle n={ref_steps}", completeness=stats(rel_ref),
                     status="ok", error=None))
    for label, kw, nfix in configs:
        times = []
        for _ in range(1 if ctx.quick else 3):
            t0 = time.perf_counter()
            attr, delta, g, f = xk.integrated_gradients(model, x, t, return_delta=True,
                                                        return_steps=True, **kw)
            times.append(time.perf_counter() - t0)
        fwd = f.numpy() + (2 if nfix is None else 0)  # auto also evaluates f(x) and f(b)
        rel = (delta.double().abs() / d.abs()).numpy()
        a2 = attr.reshape(n_ex, -1).double()
        l2 = ((a2 - ref2).norm(dim=1) / ref2.norm(dim=1)).numpy()
        rows.append(dict(part="auto", model="digits", model_description=desc, n_examples=n_ex,
                         config=label, grads=stats(g.numpy()), forwards=stats(fwd),
                         evals=stats(g.numpy() + fwd), completeness=stats(rel), l2_vs_ref=stats(l2),
                         hit_max_steps=int((g.numpy() + 6 > 512).sum()) if nfix is None else 0,
                         time_s=stats(times), status="ok", error=None))
        r = rows[-1]
        log(f"  {label}: grads mean {r['grads']['mean']:.1f}, evals mean {r['evals']['mean']:.1f}, "
            f"completeness median {r['completeness']['median']:.2e} p90 {r['completeness']['p90']:.2e}, "
            f"L2 median {r['l2_vs_ref']['median']:.2e}")
    cap = _captum_module("captum.attr")
    if cap is not None:
        ca = cap.IntegratedGradients(model).attribute(x, target=t, n_steps=50)
        xa = xk.integrated_gradients(model, x, t, n_steps=50)
        rows.append(dict(part="auto", model="digits", config="check: captum vs xaikernels GL-50",
                         max_abs_diff=float((ca - xa).abs().max()),
                         max_abs=float(ca.abs().max()), status="ok", error=None))
    return rows


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


def read_rows(path: Path) -> List[dict]:
    return B.read_rows(path) if path.exists() else []


def latest(rows: List[dict], part: str) -> Dict[tuple, List[dict]]:
    """{(model, quick): rows of the latest run} for one part."""
    best: Dict[tuple, str] = {}
    for r in rows:
        if r.get("part") != part:
            continue
        key = (r.get("model"), r.get("quick"))
        if key not in best or r["run_id"] > best[key]:
            best[key] = r["run_id"]
    return {k: [r for r in rows if r.get("part") == part and (r.get("model"), r.get("quick")) == k
                and r["run_id"] == rid] for k, rid in sorted(best.items(), key=lambda kv: str(kv[0]))}


def _hdr(r: dict) -> List[str]:
    v = r.get("versions", {})
    mach = r.get("machine", {})
    commit = (r.get("commit") or "unknown")[:12] + (" (modified)" if r.get("dirty") else "")
    return [f"- {r['date']}, commit {commit}; torch {v.get('torch')}, captum {v.get('captum')}, "
            f"xaikernels {v.get('xaikernels')}, Python {v.get('python')}",
            f"- machine: {mach.get('cpu')}, {mach.get('cpu_count')} CPUs "
            f"({mach.get('cpu_affinity', '?')} usable), {mach.get('mem_gib')} GiB; "
            f"torch.set_num_threads({r['threads']}); "
            f"NUMBA_THREADING_LAYER={r.get('numba_threading_layer')}",
            f"- command: `{r['command']}`"]


def _f(v, spec=".2f"):
    return "–" if v is None else format(v, spec)


def render_integrated(rows: List[dict]) -> str:
    out = ["# Integrated Gradients and SmoothGrad: time and peak memory (issue 3)", "",
           "Generated by `bench/run_integrated.py` from `integrated.jsonl` (latest run of each "
           "model). **ideal** = n × batch gradients of the plain model (target logit w.r.t. the "
           "input) done in the fastest of three batch sizes (the plain-gradient sweep's fastest in "
           "`ig_chunk_curve.md`, the auto chunk, the batch itself) — each measured as one callable "
           "in the same interleaved rounds, the fastest being the ideal (the others are listed as "
           "candidates); "
           "`× ideal` divides each median by its median (the targets use it); `× ideal (min)` divides "
           "the fastest call by the fastest ideal call (load on a shared machine only adds time, so "
           "the minimum is the steadier estimate when the IQR is large). **unit** = one forward+backward of the "
           "batch. Peak = tensor memory allocated during the call above its start level "
           "(torch.profiler memory events; the first call of each row, which is also its "
           "warm-up). Targets (issue 3): xaikernels rows ≤ 1.05 × ideal and no slower than "
           "Captum at the same (default) settings. Times drift ±15–25 % between runs on this "
           "shared machine, and with 2 rounds the IQR is the spread of two calls: read differences "
           "below it as noise.", ""]
    for (model, quick), sel in latest(rows, "speed").items():
        r0 = sel[0]
        shape = "×".join(map(str, [r0["batch"], *r0["input_shape"]]))
        out += [f"## Speed: {model} — {shape}, n = {r0['n']}{' (quick)' if quick else ''}", "",
                f"- {r0['model_description']}; IG: Gauss–Legendre, zero baseline; SmoothGrad: "
                f"σ = {SG_STDEV} (absolute), signed gradient; targets = example index mod classes",
                f"- auto chunk (xaikernels default) = {r0['auto_chunk']} rows; ideal batch = "
                f"{r0['ideal_batch']}; {r0['repeats']} timed rounds after the warm-up/peak call",
                *_hdr(r0)]
        if r0.get("unavailable"):
            out.append("- not measured: " + "; ".join(f"{k} ({v})" for k, v in r0["unavailable"].items()))
        out += ["", "| method | provider | settings | median s | IQR s | × ideal | × ideal (min) | × unit | peak MiB | target |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
        ideal_r = next((r for r in sel if r["provider"] == "ideal" and r["times_ms"]), None)
        for r in sel:
            rmin = (min(r["times_ms"]) / min(ideal_r["times_ms"])) if (ideal_r and r.get("times_ms")) else None
            tgt = r.get("target")
            tcell = "" if not tgt else ("PASS" if tgt["pass"] else f"FAIL ({tgt['why']})")
            if r["status"] != "ok":
                out.append(f"| {r['method']} | {r['provider']} | {r['settings']} | error | "
                           f"{(r['error'] or '')[:80]} | | | | | {tcell} |")
                continue
            peak = None if r.get("peak_bytes") is None else r["peak_bytes"] / MiB
            out.append(f"| {r['method']} | {r['provider']} | {r['settings']} | "
                       f"{_f(r['median_ms'] and r['median_ms'] / 1e3, '.2f')} | "
                       f"{_f(r['iqr_ms'] and r['iqr_ms'] / 1e3, '.2f')} | {_f(r['ratio_to_ideal'], '.3f')} | "
                       f"{_f(rmin, '.3f')} | "
                       f"{_f(r['ratio_to_unit'], '.1f')} | {_f(peak, '.0f')} | {tcell} |")
        out.append("")
    for (model, quick), sel in latest(rows, "memory").items():
        r0 = sel[0]
        shape = "×".join(map(str, [r0["batch"], *r0["input_shape"]]))
        nb = next((r["n_steps"] for r in sel if r.get("kind") == "default"), None)
        out += [f"## Memory: {model} — {shape}, IG n_steps = {nb}{' (quick)' if quick else ''}", "",
                f"- {r0['model_description']}", *_hdr(r0), ""]
        d = next((r for r in sel if r.get("kind") == "default"), None)
        ex = next((r for r in sel if r.get("kind") == "captum_none_extrapolated"), None)
        tq = next((r for r in sel if r.get("kind") == "target_quarter"), None)
        out += ["| provider | settings | n_steps | rows per model call | peak MiB | how |",
                "|---|---|---:|---:|---:|---|"]
        for r in sel:
            if r.get("kind") in ("default", "captum_none", "captum_none_extrapolated"):
                how = ("extrapolated linearly from the two measured rows above"
                       if r["kind"] == "captum_none_extrapolated" else
                       (f"measured ({r['wall_s']} s)" if r["status"] == "ok" else r["error"]))
                out.append(f"| {r['provider']} | {r['settings']} | {r['n_steps']} | "
                           f"{r.get('rows_per_call', r['n_steps'] * r['batch'])} | "
                           f"{_f(r['peak_bytes'] and r['peak_bytes'] / MiB, '.0f')} | {how} |")
        if tq:
            t = tq["target"]
            out += ["", f"**Target: default settings ≤ 1/4 of Captum `internal_batch_size=None` "
                    f"at n_steps = {tq['n_steps']}: {'PASS' if t['pass'] else 'FAIL'}** — ratio "
                    f"{_f(tq['ratio'], '.4f')} (xaikernels {d['peak_bytes'] / MiB:.0f} MiB vs Captum "
                    f"≈ {ex['peak_bytes'] / GiB:.1f} GiB, extrapolated: Captum's path batch and "
                    f"activations grow linearly with n_steps, "
                    f"{ex['slope_bytes_per_step'] / MiB:.0f} MiB per step here; measuring it at "
                    f"n_steps = {tq['n_steps']} would need about that much RAM on a shared "
                    f"24 GiB machine)."]
        sw = [r for r in sel if r.get("kind") == "ibs_sweep"]
        if sw:
            out += ["", "Same rows per model call: Captum `internal_batch_size=ibs` (its chunk is "
                    "ibs // batch steps × batch rows) vs xaikernels `batch_size` = those rows. Both "
                    "sum chunk by chunk, so the peak does not depend on n_steps; each call runs 3 "
                    "chunks (n_steps below)"
                    + (f", and the xaikernels row at {r0['auto_chunk']} rows can be checked against "
                       f"the n_steps = {nb} call above." if d else "."), "",
                    "| internal_batch_size | rows per call | n_steps | Captum peak MiB | xaikernels peak MiB | ours / Captum | ours − Captum KiB | target |",
                    "|---:|---:|---:|---:|---:|---:|---:|---|"]
            for ibs in sorted({r["ibs"] for r in sw}):
                c = next((r for r in sw if r["ibs"] == ibs and r["provider"] == "captum"), None)
                o = next((r for r in sw if r["ibs"] == ibs and r["provider"] == "xaikernels"), None)
                if not (c and o):
                    continue
                ratio = (o["peak_bytes"] / c["peak_bytes"]) if (o["peak_bytes"] and c["peak_bytes"]) else None
                t = o.get("target") or {}
                out.append(f"| {ibs} | {o['rows_per_call']} | {o['n_steps']} | "
                           f"{_f(c['peak_bytes'] and c['peak_bytes'] / MiB, '.0f')} | "
                           f"{_f(o['peak_bytes'] and o['peak_bytes'] / MiB, '.0f')} | {_f(ratio, '.4f')} | "
                           f"{_f((o['peak_bytes'] - c['peak_bytes']) / 1024 if (o['peak_bytes'] and c['peak_bytes']) else None, '+.0f')} | "
                           f"{'PASS' if t.get('pass') else 'FAIL'} |")
        out.append("")
    return "\n".join(out)


def render_curve(rows: List[dict], png: Optional[Path]) -> str:
    groups = latest(rows, "curve")
    out = ["# IG: time per path row vs chunk size", "",
           "Generated by `bench/run_integrated.py` (part `curve`) from `integrated.jsonl`. For each "
           "chunk size c: `integrated_gradients(..., batch_size=c)` on the model's benchmark batch "
           "(IG rows = n_steps × batch, n_steps chosen for ≥ 2 chunks), and the plain model's "
           "gradient in batches of c over the same number of rows; ms per row, median of the "
           "interleaved rounds (one untimed warm-up call per point first). **auto** = the chunk "
           "`auto_chunk` picks from the default 768 MiB memory budget (what `batch_size=None` "
           "uses). The fastest plain batch is the batch size of the *ideal* in `integrated.md`.", ""]
    for (model, quick), sel in groups.items():
        r0 = sel[0]
        shape = "×".join(map(str, [r0["batch"], *r0["input_shape"]]))
        ig = {r["chunk"]: r for r in sel if r["method"] == "integrated_gradients"}
        pl = {r["chunk"]: r for r in sel if r["method"] == "plain_gradient"}
        ca = r0["auto_chunk"]
        ig_ok = {c: r["median_per_row_ms"] for c, r in ig.items() if r["median_per_row_ms"]}
        pl_ok = {c: r["median_per_row_ms"] for c, r in pl.items() if r["median_per_row_ms"]}
        best_ig = min(ig_ok, key=ig_ok.get)
        best_pl = min(pl_ok, key=pl_ok.get)
        out += [f"## {model} — batch {shape}{' (quick)' if quick else ''}", "",
                f"- {r0['model_description']}", *_hdr(r0),
                f"- auto chunk = **{ca}**: IG {ig_ok.get(ca, float('nan')):.3f} ms/row = "
                f"**{ig_ok.get(ca, float('nan')) / ig_ok[best_ig]:.2f} × the fastest IG chunk** "
                f"({best_ig}: {ig_ok[best_ig]:.3f} ms/row) and "
                f"{ig_ok.get(ca, float('nan')) / pl_ok[best_pl]:.2f} × the fastest plain gradient "
                f"(batch {best_pl}: {pl_ok[best_pl]:.3f} ms/row)"
                + ("" if ca not in ig or ca == best_ig else
                   " — within the noise (the gap is smaller than the IQR of one of the two points)"
                   if ig_ok[ca] - ig_ok[best_ig] <= max(ig[ca]["iqr_per_row_ms"] or 0,
                                                        ig[best_ig]["iqr_per_row_ms"] or 0)
                   else " — larger than both points' IQR"), "",
                "| chunk c | IG ms/row | IG IQR | plain ms/row | plain IQR | IG / plain | rows | |",
                "|---:|---:|---:|---:|---:|---:|---:|---|"]
        for c in sorted(ig):
            a, b = ig[c], pl.get(c, {})
            am, bm = a["median_per_row_ms"], b.get("median_per_row_ms")
            mark = []
            if c == ca:
                mark.append("**auto**")
            if c == best_ig:
                mark.append("fastest IG")
            if c == best_pl:
                mark.append("fastest plain (ideal)")
            out.append(f"| {c} | {_f(am, '.3f')} | {_f(a['iqr_per_row_ms'], '.3f')} | {_f(bm, '.3f')} | "
                       f"{_f(b.get('iqr_per_row_ms'), '.3f')} | {_f(am / bm if am and bm else None, '.3f')} | "
                       f"{a['rows']} | {', '.join(mark)} |")
        out.append("")
    if png is not None and groups:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            import matplotlib.ticker  # noqa: F401

            fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.6), squeeze=False)
            for ax, ((model, quick), sel) in zip(axes[0], groups.items()):
                for meth, lab, st in (("integrated_gradients", "IG (xaikernels)", "o-"),
                                      ("plain_gradient", "plain gradient", "s--")):
                    pts = sorted((r["chunk"], r["median_per_row_ms"]) for r in sel
                                 if r["method"] == meth and r["median_per_row_ms"])
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], st, label=lab, ms=4)
                ax.axvline(sel[0]["auto_chunk"], color="red", ls=":", label=f"auto ({sel[0]['auto_chunk']})")
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}")
                ax.yaxis.set_major_formatter(fmt)
                ax.yaxis.set_minor_formatter(fmt)
                ax.tick_params(axis="y", which="minor", labelsize=7)
                ax.set_xlabel("chunk (rows per model call)")
                ax.set_ylabel("ms per row")
                ax.set_title(f"{model}{' (quick)' if quick else ''}")
                ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(png, dpi=110)
            plt.close(fig)
            out += [f"![time per row vs chunk]({png.name})", ""]
        except Exception as exc:  # noqa: BLE001
            out += [f"(plot failed: {exc})", ""]
    return "\n".join(out)


def render_completeness(rows: List[dict], png: Optional[Path]) -> str:
    groups = latest(rows, "completeness")
    out = ["# IG completeness error vs n_steps, per quadrature", "",
           "Generated by `bench/run_integrated.py` (part `completeness`) from `integrated.jsonl`. "
           "Relative completeness error |Σ IG − (f(x) − f(b))| / |f(x) − f(b)| of "
           "`xaikernels.integrated_gradients(..., method=m, n_steps=n, return_delta=True)` "
           "(the delta as Captum defines it). Each cell: median / 90th percentile over the inputs. "
           "Nodes and weights are Captum's: note that Captum's `riemann_trapezoid` puts weights "
           "1/n (halved at the ends, summing to (n−1)/n) on nodes spaced 1/(n−1), so it has an "
           "O(1/n) bias that the textbook trapezoid rule does not.", ""]
    for (model, quick), sel in groups.items():
        r0 = sel[0]
        steps = sorted({r["n_steps"] for r in sel})
        out += [f"## {model}{' (quick)' if quick else ''}", "", f"- {r0['model_description']}",
                *_hdr(r0), "", "| method | " + " | ".join(f"n={n}" for n in steps) + " |",
                "|---|" + "---:|" * len(steps)]
        for m in QUADRATURES:
            cells = []
            for n in steps:
                r = next((r for r in sel if r["method"] == m and r["n_steps"] == n), None)
                cells.append("–" if r is None else f"{r['median']:.1e} / {r['p90']:.1e}")
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        out.append("")
    if png is not None and groups:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, axes = plt.subplots(1, len(groups), figsize=(4.8 * len(groups), 3.8), squeeze=False)
            for ax, ((model, quick), sel) in zip(axes[0], groups.items()):
                for m in QUADRATURES:
                    pts = sorted((r["n_steps"], r["median"]) for r in sel if r["method"] == m)
                    ax.loglog([p[0] for p in pts], [max(p[1], 1e-12) for p in pts], "o-", ms=3, label=m)
                ax.set_xlabel("n_steps")
                ax.set_ylabel("median relative completeness error")
                ax.set_title(f"{model}{' (quick)' if quick else ''}")
                ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(png, dpi=110)
            plt.close(fig)
            out += [f"![completeness error vs n_steps]({png.name})", ""]
        except Exception as exc:  # noqa: BLE001
            out += [f"(plot failed: {exc})", ""]
    return "\n".join(out)


def render_auto(rows: List[dict]) -> str:
    out = ["# IG `n_steps=\"auto\"` vs fixed 50-step Gauss–Legendre (Captum's default)", "",
           "Generated by `bench/run_integrated.py` (part `auto`) from `integrated.jsonl`. Per "
           "example: **grads** = gradient evaluations (forward+backward of one path row), "
           "**fwd** = forward-only evaluations (auto: f(x), f(b) and one per bisection midpoint; "
           "fixed: none, as Captum without `return_convergence_delta`), **evals** = grads + fwd "
           "(a forward-only evaluation counted as a full one: conservative for auto). "
           "**completeness** = |Σ IG − (f(x) − f(b))| / |f(x) − f(b)|; **L2** = ‖IG − IG_ref‖ / "
           "‖IG_ref‖ against the reference row. Cells: mean / median / 90th percentile. "
           "Time: seconds for the whole set in one call (median of 3; auto's bookkeeping is "
           "per-example Python).", ""]
    for (model, quick), sel in latest(rows, "auto").items():
        r0 = sel[0]
        out += [f"## {model}{' (quick)' if quick else ''}", "", f"- {r0.get('model_description', '')}",
                *_hdr(r0), "",
                "| config | grads | fwd | evals | 50 / mean evals | completeness | L2 vs reference | time s |",
                "|---|---|---|---|---:|---|---|---:|"]

        def c3(s, spec=".1f"):
            return f"{s['mean']:{spec}} / {s['median']:{spec}} / {s['p90']:{spec}}"

        ref = next((r for r in sel if r["config"].startswith("reference")), None)
        for r in sel:
            if r["config"].startswith("check"):
                continue
            if r is ref:
                out.append(f"| {r['config']} | | | | | {c3(r['completeness'], '.1e')} | 0 | |")
                continue
            out.append(f"| {r['config']} | {c3(r['grads'])} | {c3(r['forwards'])} | {c3(r['evals'])} | "
                       f"{50 / r['evals']['mean']:.2f} | {c3(r['completeness'], '.1e')} | "
                       f"{c3(r['l2_vs_ref'], '.1e')} | {r['time_s']['median']:.2f} |")
        gl = next((r for r in sel if r["config"] == "fixed gausslegendre n=50"), None)
        out += [""]
        if gl:
            out += ["Claim checked: **≥ 2 × fewer model evaluations than fixed 50-step "
                    "Gauss–Legendre at equal or better completeness error** (equal or better = "
                    "auto's median and 90th percentile completeness error ≤ GL-50's; evals as "
                    "above).", "", "| tol | 50 / mean evals | completeness median / p90 vs GL-50 | "
                    "L2 median / p90 vs GL-50 | examples at max_steps | holds? |",
                    "|---|---:|---|---|---:|---|"]
            for r in sel:
                if not r["config"].startswith("auto"):
                    continue
                fewer = 50 / r["evals"]["mean"]
                eq = (r["completeness"]["median"] <= gl["completeness"]["median"]
                      and r["completeness"]["p90"] <= gl["completeness"]["p90"])
                out.append(f"| {r['config'].split('=')[1]} | {fewer:.2f} | "
                           f"{r['completeness']['median']:.1e} / {r['completeness']['p90']:.1e} vs "
                           f"{gl['completeness']['median']:.1e} / {gl['completeness']['p90']:.1e} | "
                           f"{r['l2_vs_ref']['median']:.1e} / {r['l2_vs_ref']['p90']:.1e} vs "
                           f"{gl['l2_vs_ref']['median']:.1e} / {gl['l2_vs_ref']['p90']:.1e} | "
                           f"{r.get('hit_max_steps', 0)} | "
                           f"{'YES' if (fewer >= 2 and eq) else 'NO'}"
                           f"{'' if fewer >= 2 else ' (evals)'}{'' if eq else ' (error)'} |")
        chk = next((r for r in sel if r["config"].startswith("check")), None)
        if chk:
            out += ["", f"Sanity check: Captum `IntegratedGradients` (n_steps=50, gausslegendre) vs "
                    f"xaikernels on the same inputs: max |Δ| = {chk['max_abs_diff']:.2e} "
                    f"(max |attribution| {chk['max_abs']:.2e})."]
        out.append("")
    return "\n".join(out)


def render_all(out_dir: Path) -> None:
    rows = read_rows(out_dir / f"{NAME}.jsonl")
    parts = {r.get("part") for r in rows}
    if parts & {"speed", "memory"}:
        (out_dir / "integrated.md").write_text(render_integrated(rows), encoding="utf-8")
    if "curve" in parts:
        (out_dir / "ig_chunk_curve.md").write_text(
            render_curve(rows, out_dir / "ig_chunk_curve.png"), encoding="utf-8")
    if "completeness" in parts:
        (out_dir / "ig_completeness.md").write_text(
            render_completeness(rows, out_dir / "ig_completeness.png"), encoding="utf-8")
    if "auto" in parts:
        (out_dir / "ig_auto.md").write_text(render_auto(rows), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=B._csv, default=list(MODELS),
                    help="zoo models for curve/speed/memory/completeness (default vgg16,resnet18); "
                         "memory runs on resnet18 only")
    ap.add_argument("--parts", type=B._csv, default=list(PARTS), help=f"default: {','.join(PARTS)}")
    ap.add_argument("--n", type=int, default=None, help="IG steps / SmoothGrad samples (default 50; --quick 8)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds, speed part (default 2)")
    ap.add_argument("--curve-repeats", type=int, default=None, help="timed rounds, curve part (default 2)")
    ap.add_argument("--memory-steps", type=int, default=None, help="n_steps of the memory case (default 200)")
    ap.add_argument("--auto-examples", type=int, default=None, help="test digits for the auto part (default 300)")
    ap.add_argument("--no-memory", action="store_true", help="speed part: skip peak memory (warm-up only)")
    ap.add_argument("--threads", type=int, default=B.DEFAULT_THREADS, help="torch.set_num_threads (default 1)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny models (width 8), few steps and inputs; writes to a temp folder "
                         "unless --out-dir")
    ap.add_argument("--out-dir", type=Path, default=None, help="default: bench/results")
    ap.add_argument("--render-only", action="store_true", help="regenerate the Markdown from the JSONL")
    args = ap.parse_args(argv)
    bad = [p for p in args.parts if p not in PARTS]
    if bad:
        ap.error(f"unknown part(s) {bad}; choose from {PARTS}")
    if args.out_dir is None:
        args.out_dir = (Path(tempfile.gettempdir()) / "xaikernels-bench-quick" if args.quick
                        else Path(__file__).resolve().parent / "results")
    if args.render_only:
        render_all(args.out_dir)
        return 0
    if args.n is None:
        args.n = 8 if args.quick else 50
    if args.threads:
        torch.set_num_threads(args.threads)
    command = _command(argv)
    ctx = Ctx(args, command)
    log(f"run_integrated: parts {args.parts}, models {args.models}, torch.set_num_threads("
        f"{torch.get_num_threads()}), out {args.out_dir}")

    def go(fn, *a):
        try:
            rows = fn(ctx, *a)
        except Exception as exc:  # noqa: BLE001 — keep the other parts
            import traceback

            traceback.print_exc()
            log(f"{fn.__name__}{a}: FAILED {type(exc).__name__}: {exc}")
            return
        ctx.write(rows)
        render_all(args.out_dir)

    if "curve" in args.parts:
        for m in [*args.models, "digits"]:
            go(part_curve, m)
    if "speed" in args.parts:
        for m in args.models:
            go(part_speed, m)
    if "memory" in args.parts and "resnet18" in args.models:
        go(part_memory, "resnet18")
    if "completeness" in args.parts:
        go(part_completeness, "digits")
        if "vgg16" in args.models:
            go(part_completeness, "vgg16")
    if "auto" in args.parts:
        go(part_auto)

    rows = read_rows(args.out_dir / f"{NAME}.jsonl")
    mine = [r for r in rows if r.get("run_id") == ctx.meta["run_id"]]
    print()
    print(f"Targets (issue 3): ≤ {TARGET_RATIO} × ideal and no slower than Captum's default; memory")
    nfail = 0
    for r in mine:
        t = r.get("target")
        if not t:
            continue
        nfail += not t["pass"]
        what = (f"{r['model']:<9} {r.get('method', 'IG memory'):<21} {r['provider']:<18} "
                f"{r.get('settings', '')}")
        val = (f"{r['ratio_to_ideal']:.3f} × ideal (Captum default {t.get('captum_default_ratio')})"
               if r.get("part") == "speed" and r.get("ratio_to_ideal") is not None else
               f"ratio {r['ratio']:.4f}" if r.get("ratio") is not None else
               f"peak {r['peak_bytes'] / MiB:.0f} MiB" if r.get("peak_bytes") else "")
        print(f"{'PASS' if t['pass'] else 'FAIL'}  {what}  {val}"
              + ("" if t["pass"] else f"  ({t['why']})"))
    print(f"{nfail} target(s) failed" if nfail else "all targets met")
    print(f"results: {args.out_dir}; command: {command}")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
