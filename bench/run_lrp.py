"""LRP benchmark: xaikernels' one-pass LRP vs Zennit vs the plain gradient, side by side in one run.

Models: VGG-16-like on 8×3×64×64 and the ResNet-18 replica on 4×3×224×224
(:mod:`xaikernels.models.zoo`; the ResNet with BatchNorm merging and residual canonizers for both
libraries).  Composites: ``epsilon_plus_flat`` (z⁺/ε), ``epsilon_alpha2_beta1_flat`` (αβ) and
``epsilon_gamma_box`` (γ).  "unit" = one forward + backward of the model (gradient of the target
logits w.r.t. the input).  One thread.

Targets (issue 4): ε-composite ≤ 1.5 × unit, αβ/γ ≤ 2.5 × unit, each ≥ 2 × faster than Zennit on
the same composite; peak memory ≤ 1.5 × the gradient's.  Peak memory is the profiler's tensor
allocations above the start level (:func:`xaikernels.benchmark.peak_memory`).

Usage (repository root)::

    .venv/bin/python bench/run_lrp.py            # full run, a few minutes on one thread
    .venv/bin/python bench/run_lrp.py --quick    # tiny models, seconds

Appends rows to ``bench/results/lrp.jsonl`` and writes ``bench/results/lrp.md`` with the command.
Zennit needs ``pip install zennit --no-deps click Pillow``; its torchvision import is satisfied
by the test stand-in (``tests/_zennit_stub.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from xaikernels.benchmark import peak_memory, time_rounds, versions  # noqa: E402
from xaikernels.methods.lrp import lrp  # noqa: E402
from xaikernels.models.zoo import resnet18_like, vgg16_like  # noqa: E402

BOUNDS = dict(low=-3.0, high=3.0)
COMPOSITES = {"epsilon_plus_flat": 1.5, "epsilon_alpha2_beta1_flat": 2.5, "epsilon_gamma_box": 2.5}


def _zennit():
    try:
        import importlib.util

        if importlib.util.find_spec("zennit") is None:
            return None
        import _zennit_stub

        _zennit_stub.install()
        from zennit import composites as zc
        from zennit.attribution import Gradient
        from zennit.torchvision import ResNetCanonizer

        return zc, Gradient, ResNetCanonizer
    except Exception as exc:  # pragma: no cover - reported in the output
        print(f"zennit unavailable: {exc}")
        return None


def _paired(num, den):
    """Median and quartiles of the per-round ratios num[i] / den[i]: each round's two timings
    are adjacent, so slow drift of the shared machine cancels in the ratio."""
    r = sorted(a / b for a, b in zip(num, den))
    q = statistics.quantiles(r, n=4, method="inclusive") if len(r) > 1 else [r[0]] * 3
    return statistics.median(r), q[0], q[2]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--models", nargs="*", default=["vgg16", "resnet18"], choices=["vgg16", "resnet18"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = shlex.join([os.path.relpath(sys.executable), os.path.relpath(__file__), *argv])
    zen = _zennit()
    if args.quick:
        cases = [("vgg16", vgg16_like(width=8), (2, 3, 64, 64)),
                 ("resnet18", resnet18_like(width=8), (2, 3, 64, 64))]
    else:
        cases = [("vgg16", vgg16_like(), (8, 3, 64, 64)), ("resnet18", resnet18_like(), (4, 3, 224, 224))]
    cases = [c for c in cases if c[0] in args.models]
    rows = []
    for mname, model, shape in cases:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            target = model(x).argmax(1)

        def unit():
            xg = x.clone().requires_grad_(True)
            out = model(xg)
            torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)

        m_unit = peak_memory(unit)
        print(f"{mname}: peak of the gradient {m_unit / 2**20:.1f} MiB", flush=True)
        for comp, target_ratio in COMPOSITES.items():
            kw = dict(composite_kwargs=BOUNDS) if comp == "epsilon_gamma_box" else {}
            fns = {"unit": unit, "ours": lambda: lrp(model, x, target, composite=comp, **kw)}
            if zen is not None:
                zc, ZGradient, ZResNet = zen
                canon = [ZResNet()] if mname == "resnet18" else []
                factory = {"epsilon_plus_flat": lambda: zc.EpsilonPlusFlat(canonizers=canon),
                           "epsilon_alpha2_beta1_flat": lambda: zc.EpsilonAlpha2Beta1Flat(canonizers=canon),
                           "epsilon_gamma_box": lambda: zc.EpsilonGammaBox(canonizers=canon, **BOUNDS)}[comp]
                onehot = torch.eye(model(x[:1]).shape[1])[target]

                def zfn():
                    with ZGradient(model, factory()) as attributor:
                        attributor(x.clone(), onehot)

                fns["zennit"] = zfn
            ts = time_rounds(fns, args.repeats, args.warmup)
            t = {k: statistics.median(v) for k, v in ts.items()}
            m_ours = peak_memory(fns["ours"])
            x_unit, lo, hi = _paired(ts["ours"], ts["unit"])
            row = dict(model=mname, batch=shape[0], composite=comp, unit_ms=t["unit"] * 1e3, ours_ms=t["ours"] * 1e3,
                       ours_x_unit=x_unit, ours_x_unit_iqr=[lo, hi], ours_peak_x_unit=m_ours / m_unit,
                       target_x_unit=target_ratio)
            if "zennit" in t:
                row.update(zennit_ms=t["zennit"] * 1e3, zennit_x_unit=_paired(ts["zennit"], ts["unit"])[0],
                           speedup_vs_zennit=_paired(ts["zennit"], ts["ours"])[0],
                           zennit_peak_x_unit=peak_memory(fns["zennit"]) / m_unit)
            row["pass"] = (row["ours_x_unit"] <= target_ratio and row.get("speedup_vs_zennit", 2.0) >= 2.0
                           and row["ours_peak_x_unit"] <= 1.5)
            rows.append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(command=command, threads=args.threads, versions=versions(), date=time.strftime("%Y-%m-%d %H:%M"))
    with open(args.out_dir / "lrp.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps({**meta, **r}) + "\n")
    if args.quick:
        shown = [{**meta, **r} for r in rows]
    else:
        # the latest full-size row of every (model, composite) in the log: a run of one model
        # updates its rows and keeps the other model's
        latest = {}
        for line in (args.out_dir / "lrp.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r.get("batch") in (8, 4) and "--quick" not in r.get("command", ""):
                latest[(r["model"], r["composite"])] = r
        shown = [latest[k] for k in sorted(latest, key=lambda k: (k[0] != "vgg16", k[1]))]
    lines = ["# LRP benchmark", "", f"Latest run of each row; commands and dates per row below ({args.threads} thread; "
             "medians; ratios are medians of per-round ratios (each round times every provider once, "
             "back to back), with their quartiles where recorded; the machine is shared, so absolute times "
             "drift)", "",
             "| model | composite | unit ms | ours ms | ours × unit (IQR) | target | Zennit × unit | speedup vs Zennit "
             "| peak × unit (ours / Zennit) | pass |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in shown:
        iqr = r.get("ours_x_unit_iqr")
        iqr = f" ({iqr[0]:.2f}–{iqr[1]:.2f})" if iqr else ""
        lines.append(f"| {r['model']} b{r['batch']} | {r['composite']} | {r['unit_ms']:.0f} | {r['ours_ms']:.0f} | "
                     f"{r['ours_x_unit']:.2f}{iqr} | ≤ {r['target_x_unit']} | "
                     f"{r.get('zennit_x_unit', float('nan')):.2f} | "
                     f"{r.get('speedup_vs_zennit', float('nan')):.2f} | {r['ours_peak_x_unit']:.2f} / "
                     f"{r.get('zennit_peak_x_unit', float('nan')):.2f} | {'PASS' if r['pass'] else 'FAIL'} |")
    lines += ["", "Commands:", ""] + sorted({f"- `{r['command']}` ({r['date']})" for r in shown})
    (args.out_dir / "lrp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
