"""Gradient-family comparison: every provider on the two anchor models, with the issue's targets.

Methods: saliency, input × gradient, guided backprop, deconvnet, Grad-CAM, Guided Grad-CAM.
Models: VGG-16-like on 8×3×64×64 and the ResNet-18 replica on 4×3×224×224
(:mod:`xaikernels.models.zoo`).  Providers: ``unit``, ``reference`` (Grad-CAM family with the
reference backend), ``xaikernels``, ``xaikernels.captum`` and ``captum`` when importable.

Targets (for the ``xaikernels`` and ``xaikernels.captum`` rows): time ≤ 1.05 × unit and no
slower than Captum on the same method, both measured in this run; each row prints PASS/FAIL.

Usage (from the repository root)::

    .venv/bin/python bench/run_gradient.py             # full run, ~4 min on one thread
    .venv/bin/python bench/run_gradient.py --quick     # tiny models, seconds

Results are appended to ``bench/results/gradient.jsonl`` and summarised in
``bench/results/gradient.md``, with the exact command line.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from xaikernels import benchmark as B

MODELS = ("vgg16", "resnet18")
TARGET_RATIO = 1.05
TARGET_PEER = "captum"


def _command(argv: Sequence[str]) -> str:
    def rel(p: str) -> str:
        r = os.path.relpath(p)
        return p if r.startswith("..") else r

    return shlex.join([rel(sys.executable), rel(os.path.abspath(__file__)), *argv])


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=B._csv, default=list(MODELS), help="default: vgg16,resnet18")
    ap.add_argument("--providers", type=B._csv, default=None, help="default: all available")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7; --quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 2; --quick 1)")
    ap.add_argument(
        "--threads", type=int, default=B.DEFAULT_THREADS, help="torch.set_num_threads (default 1)"
    )
    ap.add_argument("--quick", action="store_true", help="tiny models (width 8) and shapes")
    ap.add_argument("--name", default="gradient")
    ap.add_argument("--out-dir", type=Path, default=None, help="default: bench/results")
    ap.add_argument("--strict", action="store_true", help="exit with status 1 if a target fails")
    args = ap.parse_args(argv)

    command = _command(argv)
    rows: List[dict] = []
    for model in args.models:
        rows += B.run(
            B.BenchConfig(
                model=model,
                methods=B.GRADIENT_METHODS,
                providers=args.providers,
                repeats=args.repeats or (3 if args.quick else 7),
                warmup=args.warmup if args.warmup is not None else (1 if args.quick else 2),
                threads=args.threads or None,
                quick=args.quick,
                name=args.name,
                out_dir=args.out_dir,
                target_ratio=TARGET_RATIO,
                target_peer=TARGET_PEER,
                command=command,
            )
        )
        print()

    print(f"Targets: ≤ {TARGET_RATIO} × unit and no slower than {TARGET_PEER} (same run)")
    n_fail = 0
    for r in rows:
        t = r.get("target")
        if not t:
            continue
        n_fail += not t["pass"]
        peer = t["peer_ratio_to_unit"]
        ratio = "–" if r["ratio_to_unit"] is None else f"{r['ratio_to_unit']:.2f}"
        print(
            f"{'PASS' if t['pass'] else 'FAIL'}  {r['model']:<9} {r['method']:<17} "
            f"{r['provider']:<18} {ratio:>5} × unit   {TARGET_PEER} "
            f"{'–' if peer is None else f'{peer:.2f}'}" + ("" if t["pass"] else f"   ({t['why']})")
        )
    print(f"{n_fail} target(s) failed" if n_fail else "all targets met")
    print(f"command: {command}")
    return 1 if (args.strict and n_fail) else 0


if __name__ == "__main__":
    sys.exit(main())
