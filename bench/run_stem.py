"""Stem coalition tables on a real network: LIME and KernelSHAP end to end on EfficientNet-Lite0.

EfficientNet-Lite0 (the demo's ImageNet model, 224×224, scikit-image's ``chelsea``), SLIC
superpixels (50 requested, computed once outside the timings), ``n_samples`` coalitions per
explanation, batch 50, one thread.  Providers, interleaved round by round in one process:

* lime: ``LimeImageExplainer.explain_instance`` with a classifier function that takes lime's
  float64 (B, H, W, C) batches to the network (normalised, float32, NCHW) and returns
  softmax probabilities;
* captum: ``KernelShap.attribute`` with the segments as feature mask and a zero baseline;
* xaikernels: the native ``lime_image`` / ``kernel_shap`` with ``stem="auto"`` (the
  network's leading stages from coalition tables) and with ``stem="off"``.

Usage::

    .venv/bin/python bench/run_stem.py [--repeats 3] [--samples 200]

Appends rows to ``bench/results/stem.jsonl`` and writes ``bench/results/stem.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

import _one_thread  # noqa: F401  (one thread everywhere; before NumPy / torch / Numba)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from run_lime import Interleaved  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--samples", type=int, default=200, help="coalitions per explanation")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from skimage import data

    from xaikernels.methods.kernel_shap import kernel_shap
    from xaikernels.methods.lime import lime_image, segment_image
    from xaikernels.models import efficientnet as eff

    model = eff.load_efficientnet_lite0()
    img01 = eff.crop_resize(data.chelsea())  # (3, 224, 224) in [0, 1]
    x = eff.normalize(img01[None])
    img_hwc = img01.permute(1, 2, 0).double().numpy()
    t0 = time.perf_counter()
    seg = segment_image(img_hwc, "slic", n_segments=50, compactness=10.0)
    seg_ms = 1e3 * (time.perf_counter() - t0)
    n_seg = int(seg.max()) + 1
    n = args.samples
    with torch.no_grad():
        target = int(model(x).argmax(1))

    def clf(b):
        with torch.no_grad():
            t = eff.normalize(torch.from_numpy(np.ascontiguousarray(b.transpose(0, 3, 1, 2))).float())
            return torch.softmax(model(t), 1).numpy()

    bench = Interleaved()
    info = {}
    try:
        import lime.lime_image as LI

        def lime_run():
            LI.LimeImageExplainer(random_state=0).explain_instance(
                img_hwc, clf, labels=(target,), top_labels=None, num_samples=n, batch_size=50,
                segmentation_fn=lambda i: seg, random_seed=0)
            return 0.0
        bench.add("lime_efficientnet", "lime", lime_run)
    except ImportError:
        pass

    def ours(case, explain, stem):
        def run():
            info[(case, stem)] = explain(stem).extras["stem"]
            return 0.0
        return run

    def ours_lime(stem):
        return lime_image(model, x, target, segments=seg, n_samples=n, batch_size=50, seed=0, stem=stem)

    for stem, provider in (("auto", "xaikernels"), ("off", "xaikernels(stem=off)")):
        bench.add("lime_efficientnet", provider, ours("lime_efficientnet", ours_lime, stem))

    fm = torch.from_numpy(seg)[None, None]
    try:
        import captum.attr as CA

        def captum_run():
            with torch.no_grad():
                CA.KernelShap(model).attribute(x, target=target, feature_mask=fm, n_samples=n,
                                               perturbations_per_eval=50)
            return 0.0
        bench.add("kernel_shap_efficientnet", "captum", captum_run)
    except ImportError:
        pass

    def ours_ks(stem):
        return kernel_shap(model, x, target, feature_mask=fm[0], n_samples=n, batch_size=50, seed=0, stem=stem)

    for stem, provider in (("auto", "xaikernels"), ("off", "xaikernels(stem=off)")):
        bench.add("kernel_shap_efficientnet", provider, ours("kernel_shap_efficientnet", ours_ks, stem))

    rows = []
    for case, provider, (t, t25, t75), _, runs, _ in bench.measure(args.repeats):
        rows.append(dict(case=case, provider=provider, total_ms=1e3 * t, total_iqr_ms=[1e3 * t25, 1e3 * t75],
                         runs=runs))
        print(f"{case:26s} {provider:22s} {1e3 * t:10.1f} ms", flush=True)
    pairs = []
    for case, peer in (("lime_efficientnet", "lime"), ("kernel_shap_efficientnet", "captum")):
        for ours in ("xaikernels", "xaikernels(stem=off)"):
            if (case, peer) in bench.per_round:
                pairs.append((case, peer, ours, *bench.paired(case, peer, ours, "total_ms")))
        pairs.append((case, "xaikernels(stem=off)", "xaikernels",
                      *bench.paired(case, "xaikernels(stem=off)", "xaikernels", "total_ms")))

    cmd = shlex.join([os.path.relpath(sys.executable), os.path.relpath(__file__), *(argv or sys.argv[1:])])
    try:
        from xaikernels.benchmark import git_commit, versions

        meta = dict(commit=git_commit(), versions=versions())
    except Exception:  # pragma: no cover
        meta = {}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / "stem.jsonl", "a") as fh:
        for r in rows:
            fh.write(json.dumps(dict(r, samples=n, segments=n_seg, time=stamp, command=cmd, **meta)) + "\n")
        for case, a, b, rt, lo, hi in pairs:
            fh.write(json.dumps(dict(case=case, provider="ratio", of=a, over=b, ratio=rt, ratio_iqr=[lo, hi],
                                     time=stamp, command=cmd, **meta)) + "\n")
    lines = [f"# Stem coalition tables on EfficientNet-Lite0 ({stamp})", "", f"Command: `{cmd}`", "",
             f"224×224 `chelsea`, SLIC ({n_seg} segments, {seg_ms:.0f} ms, outside the timings), {n} coalitions, "
             f"batch 50, target class {target}; one thread; providers interleaved over {args.repeats} rounds "
             "(medians, interquartile ranges).", "",
             "| case | provider | runs | total ms (median) | IQR |", "|---|---|---:|---:|---|"]
    lines += [f"| {r['case']} | {r['provider']} | {r['runs']} | {r['total_ms']:.0f} | "
              f"{r['total_iqr_ms'][0]:.0f}–{r['total_iqr_ms'][1]:.0f} |" for r in rows]
    lines += ["", "Per-round paired ratios (time of the first / time of the second):", "",
              "| case | ratio | median (IQR) |", "|---|---|---:|"]
    lines += [f"| {c} | {a} / {b} | {rt:.2f}× ({lo:.2f}–{hi:.2f}) |" for c, a, b, rt, lo, hi in pairs]
    lines += [""] + [f"- {c}, stem={s}: {v}" for (c, s), v in sorted(info.items())]
    (args.out_dir / "stem.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
