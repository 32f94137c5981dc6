"""Channels-last batches for CPU conv nets: the model's forward on contiguous (NCHW) against
channels-last batches, and ``lime_image(stem="off")`` with the layout probe against the
contiguous layout (the model behind a plain function, which the probe leaves alone).

One thread; variants interleaved round by round; medians.  Models: the small CNN of
``run_lime.py`` (64×64, batch 100) and EfficientNet-Lite0 (224×224, batch 25; skipped when its
package is not installed).

Usage::

    NUMBA_THREADING_LAYER=workqueue .venv/bin/python bench/run_layout.py [--repeats 7]

Writes ``bench/results/layout.md``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import _one_thread  # noqa: F401  (one thread everywhere; before NumPy / torch / Numba)
import torch  # noqa: E402


def _interleaved(fns: dict, rounds: int) -> dict:
    for f in fns.values():
        f()
    got = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            got[k].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in got.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_lime import SmallCNN

    from xaikernels.methods.lime import lime_image

    models = [("small CNN (run_lime.py), 3×64×64", SmallCNN().eval(), 64, 100, 1000)]
    try:
        from xaikernels.models import efficientnet as eff

        models.append(("EfficientNet-Lite0, 3×224×224", eff.load_efficientnet_lite0().eval(), 224, 25, 50))
    except Exception as e:  # pragma: no cover - optional model package
        print(f"EfficientNet-Lite0 skipped: {e}")
    rows = []
    for name, model, S, B, n in models:
        x = torch.rand(B, 3, S, S)
        xcl = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            diff = float((model(x) - model(xcl)).abs().max())
            fwd = _interleaved({"nchw": lambda: model(x), "nhwc": lambda: model(xcl)}, args.repeats)
        img = torch.rand(1, 3, S, S)
        plain = lambda b: model(b)  # noqa: E731  (not an nn.Module: never probed)
        kw = dict(segments="slic", n_samples=n, batch_size=B, top_labels=1, seed=0, stem="off")
        layout = lime_image(model, img, **kw).extras["layout"]
        lm = _interleaved({"probe": lambda: lime_image(model, img, **kw),
                           "contiguous": lambda: lime_image(plain, img, **kw)}, max(3, args.repeats // 2))
        rows.append((name, B, fwd["nchw"], fwd["nhwc"], diff, n, lm["contiguous"], lm["probe"], layout))
        print(rows[-1], flush=True)
    cmd = shlex.join([os.path.relpath(sys.executable), os.path.relpath(__file__), *(argv or sys.argv[1:])])
    lines = [f"# Channels-last batches ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Command: `NUMBA_THREADING_LAYER=workqueue {cmd}` (one thread; interleaved medians)", "",
             "| model | batch | forward NCHW ms | forward channels-last ms | speed-up | max abs diff | "
             "lime_image(stem='off') samples | contiguous ms | with the probe ms | speed-up | layout |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, B, a, b, d, n, c, p, lay in rows:
        lines.append(f"| {name} | {B} | {a:.1f} | {b:.1f} | {a / b:.2f}× | {d:.1e} | {n} | {c:.1f} | {p:.1f} | "
                     f"{c / p:.2f}× | {lay} |")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "layout.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
