"""LIME / KernelSHAP: library overhead and end-to-end time, xaikernels vs lime vs Captum.

Overhead = wall time of one explanation minus the time spent inside the model, with a
near-zero-cost model (a few strided pixels through a tiny linear map), so what remains is the
library's own work: sampling, building the perturbed batches, distances, weights, fits.
Cases (issue 5):

* image: 64×64×3, 1000 samples, lime's defaults (top_labels=5, feature_selection='auto',
  batch_size=10), the same precomputed quickshift segments for both (segmentation time is
  reported separately: it is the same scikit-image call in both libraries);
* tabular: 5000 samples, 20 features (quartile discretiser, lime's defaults);
* text: 5000 samples of a 120-word document, lime's defaults, a
  bag-of-words classifier (no target in issue 5; reported for the record);
* Captum Lime / KernelShap: 3×64×64, 49-cell feature mask, 1000 samples,
  perturbations_per_eval=50 for both;
* end to end: lime image on a small CNN (64×64, 1000 samples, batch 100 for all; lime's
  quickshift segments as above, and SLIC with 50 segments as a second case): lime and
  the drop-in call the user's classifier function (float64 HWC batches, as lime's API hands
  them); the native ``lime_image`` takes the torch model and tabulates its stem
  (``stem="auto"``; also run with ``stem="off"`` for the record).  The target is for the
  native call; the model time inside it is not separated (its overhead column is its total).

Targets: overhead ≥ 50× lower than lime (image, tabular), ≥ 10× lower than Captum; end to end
≥ 10× faster than lime.  One thread (``torch.set_num_threads(1)``); all providers in this one
process, interleaved round by round (every provider once per round, so load drift on a shared
machine hits all alike); medians with interquartile ranges.

Usage::

    NUMBA_THREADING_LAYER=workqueue .venv/bin/python bench/run_lime.py [--repeats 7] [--quick]

Appends rows to ``bench/results/lime.jsonl`` and writes ``bench/results/lime.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import _one_thread  # noqa: F401  (one thread everywhere; before NumPy / torch / Numba)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


class Timed:
    """Wrap a model/classifier and accumulate the seconds spent inside it."""

    def __init__(self, fn):
        self.fn = fn
        self.t = 0.0

    def __call__(self, *a, **k):
        t0 = time.perf_counter()
        out = self.fn(*a, **k)
        self.t += time.perf_counter() - t0
        return out


def quantiles(xs):
    """(median, q25, q75) of a list."""
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return q[1], q[0], q[2]


class Interleaved:
    """All (case, provider) runs, measured round by round in one process: round r runs every
    provider once, so load drift on a shared machine hits all providers alike (instead of
    whichever provider happened to run during a busy stretch)."""

    def __init__(self, cases=None):
        self.entries = []  # (case, provider, run, every, extra)
        self.cases = cases  # None: all; else case-name prefixes to keep

    def add(self, case, provider, run, every=1, **extra):
        """``run() -> seconds spent in the model``; ``every``: run in every k-th round only
        (slow peers)."""
        if self.cases is None or any(case.startswith(c) for c in self.cases):
            self.entries.append((case, provider, run, every, extra))

    def measure(self, rounds):
        for case, provider, run, _, _ in self.entries:
            run()  # warm-up (Numba compile / caches)
        tot = {i: {} for i in range(len(self.entries))}  # entry -> {round: seconds}
        ovh = {i: {} for i in range(len(self.entries))}
        for r in range(rounds):
            for i, (case, provider, run, every, _) in enumerate(self.entries):
                if r % every:
                    continue
                t0 = time.perf_counter()
                model_s = run()
                dt = time.perf_counter() - t0
                tot[i][r] = dt
                ovh[i][r] = dt - model_s
            print(f"round {r + 1}/{rounds} done", flush=True)
        self.per_round = {(case, provider): (tot[i], ovh[i])
                          for i, (case, provider, _, _, _) in enumerate(self.entries)}
        return [(case, provider, quantiles(list(tot[i].values())), quantiles(list(ovh[i].values())), len(tot[i]),
                 extra) for i, (case, provider, _, _, extra) in enumerate(self.entries)]

    def paired(self, case, peer, ours, key):
        """Median and quartiles of the per-round ratios peer / ours (rounds where both ran):
        the two runs of a round are adjacent, so slow drift of the shared machine cancels."""
        which = 0 if key == "total_ms" else 1
        a, b = self.per_round[(case, peer)][which], self.per_round[(case, ours)][which]
        return quantiles([a[r] / max(b[r], 1e-12) for r in sorted(set(a) & set(b))])


class SmallCNN(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.f = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(16, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x):
        return self.fc(self.f(x).flatten(1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    ap.add_argument("--quick", action="store_true", help="fewer samples, 1 repeat")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--cases", default=None,
                    help="comma-separated case-name prefixes to run (image, tabular, text, captum, image_end); "
                         "a partial run appends to lime.jsonl but leaves lime.md alone")
    args = ap.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases else None
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    reps = 1 if args.quick else args.repeats
    n_img = 200 if args.quick else 1000
    n_tab = 1000 if args.quick else 5000
    rows = []

    bench = Interleaved(cases)

    from xaikernels import lime as XL
    import xaikernels.captum  # noqa: F401  (package first: importing captum_lime first is a circular import)
    from xaikernels.captum import _lime as XC
    from xaikernels.methods.lime import lime_image, segment_image

    have_lime = have_captum = True
    try:
        import lime.lime_image as LI
        import lime.lime_tabular as LT
    except ImportError:
        have_lime = False
    try:
        import captum.attr as CA
    except ImportError:
        have_captum = False

    # ---------------------------------------------------------------- image overhead
    rng = np.random.RandomState(0)
    from skimage import data as skdata
    from skimage.transform import resize

    img = resize(skdata.astronaut(), (64, 64), anti_aliasing=True)  # float64 in [0, 1]
    t0 = time.perf_counter()
    # lime's quickshift defaults (max_dist=200) are tuned for 0..255 images
    seg = segment_image(img * 255.0, "quickshift", rng=0)
    seg_ms = 1e3 * (time.perf_counter() - t0)
    n_seg = int(seg.max()) + 1
    print(f"quickshift 64x64: {seg_ms:.1f} ms, {n_seg} segments")
    Wc = rng.randn(16 * 16 * 3, 10) * 0.5

    def cheap_clf(b):
        z = b[:, ::4, ::4, :].reshape(len(b), -1) @ Wc
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def img_run(explainer_cls):
        def run():
            clf = Timed(cheap_clf)
            explainer_cls(random_state=0).explain_instance(img, clf, num_samples=n_img, segmentation_fn=lambda i: seg,
                                                           random_seed=0)
            return clf.t
        return run

    if have_lime:
        bench.add("image_overhead", "lime", img_run(LI.LimeImageExplainer), segments=n_seg,
                  segmentation_ms=seg_ms)
    bench.add("image_overhead", "xaikernels.lime", img_run(XL.LimeImageExplainer), segments=n_seg,
              segmentation_ms=seg_ms)

    # -------------------------------------------------------------- tabular overhead
    Xtr = rng.randn(1000, 20)
    Wt = rng.randn(20, 3)

    def cheap_pf(X):
        z = X @ Wt
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def tab_run(cls):
        ex = cls(Xtr, random_state=0)

        def run():
            pf = Timed(cheap_pf)
            ex.explain_instance(Xtr[0], pf, num_samples=n_tab)
            return pf.t
        return run

    if have_lime:
        bench.add("tabular_overhead", "lime", tab_run(LT.LimeTabularExplainer))
    bench.add("tabular_overhead", "xaikernels.lime", tab_run(XL.LimeTabularExplainer))

    # ------------------------------------------------------------------ text overhead
    words = [f"w{i}" for i in range(300)]
    text = " ".join(rng.choice(words, 120))
    word_w = dict(zip(words, rng.randn(300) * 0.05))

    def cheap_text_clf(docs):
        z = np.array([sum(word_w.get(t, 0.0) for t in d.split()) for d in docs])
        p = 1.0 / (1.0 + np.exp(-z))
        return np.c_[1.0 - p, p]

    def text_run(cls):
        def run():
            clf = Timed(cheap_text_clf)
            cls(random_state=0).explain_instance(text, clf, num_samples=n_tab, num_features=10)
            return clf.t
        return run

    if have_lime:
        import lime.lime_text as LX

        bench.add("text_overhead", "lime", text_run(LX.LimeTextExplainer), features=len(set(text.split())))
    bench.add("text_overhead", "xaikernels.lime", text_run(XL.LimeTextExplainer), features=len(set(text.split())))

    # ----------------------------------------------------------- captum overhead
    x = torch.from_numpy(img.transpose(2, 0, 1)).float()[None].contiguous()
    fm = torch.from_numpy((np.arange(64)[:, None] * 7 // 64) * 7 + (np.arange(64)[None, :] * 7 // 64))[None, None]
    lin = nn.Linear(16 * 16 * 3, 10).eval()

    def cheap_model(t):
        return lin(t[:, :, ::4, ::4].reshape(t.shape[0], -1))

    for name in ("Lime", "KernelShap"):
        def cap_run(mod, name=name):
            def run():
                f = Timed(cheap_model)
                with torch.no_grad():
                    getattr(mod, name)(f).attribute(x, target=3, feature_mask=fm, n_samples=n_img,
                                                    perturbations_per_eval=50)
                return f.t
            return run
        if have_captum:
            bench.add(f"captum_{name}_overhead", "captum", cap_run(CA), every=2)
        bench.add(f"captum_{name}_overhead", "xaikernels.captum", cap_run(XC))

    # ---------------------------------------------------------------- end to end
    cnn = SmallCNN().eval()

    def cnn_clf(b):
        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(b.transpose(0, 3, 1, 2))).float()
            return torch.softmax(cnn(t), 1).numpy()

    def e2e(cls, sg):
        def run():
            clf = Timed(cnn_clf)
            cls(random_state=0).explain_instance(img, clf, num_samples=n_img, segmentation_fn=lambda i: sg,
                                                 random_seed=0, batch_size=100)
            return clf.t
        return run

    x_cnn = torch.from_numpy(img.transpose(2, 0, 1)).float()[None].contiguous()

    def native(stem, sg):
        def run():
            lime_image(cnn, x_cnn, segments=sg, n_samples=n_img, batch_size=100, top_labels=5, seed=0, stem=stem)
            return 0.0  # the tail runs inside lime_image: not separated (overhead column = total)
        return run

    # lime's default quickshift (as above: many small segments on a 64×64 image), and SLIC
    # (lime's SegmentationAlgorithm('slic', n_segments=50, compactness=10), a common choice)
    seg_slic = segment_image(img, "slic", n_segments=50, compactness=10.0)
    for case, sg in (("image_end_to_end_cnn", seg), ("image_end_to_end_cnn_slic", seg_slic)):
        if have_lime:
            bench.add(case, "lime", e2e(LI.LimeImageExplainer, sg))
        bench.add(case, "xaikernels.lime", e2e(XL.LimeImageExplainer, sg))
        bench.add(case, "xaikernels.lime_image", native("auto", sg), segments=int(sg.max()) + 1,
                  stem=lime_image(cnn, x_cnn, segments=sg, n_samples=n_img, top_labels=5).extras["stem"])
        bench.add(case, "xaikernels.lime_image(stem=off)", native("off", sg))

    for case, provider, (t, t25, t75), (o, o25, o75), n_runs, extra in bench.measure(reps):
        r = dict(case=case, provider=provider, total_ms=1e3 * t, total_iqr_ms=[1e3 * t25, 1e3 * t75],
                 overhead_ms=1e3 * o, overhead_iqr_ms=[1e3 * o25, 1e3 * o75], runs=n_runs, **extra)
        rows.append(r)
        print(f"{case:28s} {provider:18s} total {r['total_ms']:9.2f} ms   overhead {r['overhead_ms']:9.2f} ms "
              f"[IQR {1e3 * o25:.2f}-{1e3 * o75:.2f}]", flush=True)

    # ------------------------------------------------------------------ report
    by = {(r["case"], r["provider"]): r for r in rows}
    summary = []
    for case, peer, ours, key, target in (
            ("image_overhead", "lime", "xaikernels.lime", "overhead_ms", 50),
            ("tabular_overhead", "lime", "xaikernels.lime", "overhead_ms", 50),
            ("text_overhead", "lime", "xaikernels.lime", "overhead_ms", None),
            ("captum_Lime_overhead", "captum", "xaikernels.captum", "overhead_ms", 10),
            ("captum_KernelShap_overhead", "captum", "xaikernels.captum", "overhead_ms", 10),
            ("image_end_to_end_cnn", "lime", "xaikernels.lime", "total_ms", None),
            ("image_end_to_end_cnn", "lime", "xaikernels.lime_image", "total_ms", 10),
            ("image_end_to_end_cnn_slic", "lime", "xaikernels.lime", "total_ms", None),
            ("image_end_to_end_cnn_slic", "lime", "xaikernels.lime_image", "total_ms", 10)):
        if (case, peer) in by:
            ratio, lo, hi = bench.paired(case, peer, ours, key)
            label = case if ours in ("xaikernels.lime", "xaikernels.captum") else f"{case} ({ours})"
            summary.append((label, key, by[(case, peer)][key], by[(case, ours)][key], ratio, lo, hi, target))
    cmd = shlex.join([os.path.relpath(sys.executable), os.path.relpath(__file__), *(argv or sys.argv[1:])])
    try:
        from xaikernels.benchmark import git_commit, versions

        meta = dict(commit=git_commit(), versions=versions())
    except Exception:  # pragma: no cover
        meta = {}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with open(args.out_dir / "lime.jsonl", "a") as fh:
        for r in rows:
            fh.write(json.dumps(dict(r, time=stamp, command=cmd, quick=args.quick, repeats=reps, cases=args.cases, **meta)) + "\n")
        for c, k, p, o, rt, lo, hi, t in summary:
            fh.write(json.dumps(dict(case=c, provider="ratio", metric=k, ratio=rt, ratio_iqr=[lo, hi], target=t,
                                     time=stamp, command=cmd, quick=args.quick, repeats=reps, cases=args.cases,
                                     **meta)) + "\n")
    lines = [f"# LIME / KernelSHAP benchmark ({stamp})", "", f"Command: `NUMBA_THREADING_LAYER=workqueue {cmd}`", "",
             f"One thread (torch, BLAS, Numba); all providers in one process, interleaved round by round "
             f"({reps} rounds after a warm-up; the slow Captum peers every other round), so load drift on this "
             "shared machine hits all providers alike.  Medians with the interquartile range. "
             f"Quickshift segmentation of the 64×64 image ({n_seg} segments) took {seg_ms:.1f} ms, outside the "
             "timings (the same scikit-image call in both libraries).", "",
             "| case | provider | runs | total ms (median) | total IQR | overhead ms (median) | overhead IQR |",
             "|---|---|---:|---:|---|---:|---|"]
    lines += [f"| {r['case']} | {r['provider']} | {r['runs']} | {r['total_ms']:.2f} | "
              f"{r['total_iqr_ms'][0]:.2f}–{r['total_iqr_ms'][1]:.2f} | {r['overhead_ms']:.2f} | "
              f"{r['overhead_iqr_ms'][0]:.2f}–{r['overhead_iqr_ms'][1]:.2f} |" for r in rows]
    lines += [""] + [f"- {r['case']}, {r['provider']}: {r['segments']} segments; stem: {r['stem']}"
                     for r in rows if "stem" in r]
    lines += ["", "Ratio: the median over rounds of the per-round ratio peer / xaikernels (both runs of a round are "
              "adjacent, so machine drift cancels), with its interquartile range; pass when the median meets the "
              "target.", "",
              "| case | metric | peer ms | xaikernels ms | ratio (IQR) | target | pass |",
              "|---|---|---:|---:|---:|---:|---|"]
    lines += [f"| {c} | {k} | {p:.2f} | {o:.2f} | {rt:.1f}× ({lo:.1f}–{hi:.1f}) | "
              f"{'≥%d×' % t if t else '— (no target)'} | {('PASS' if rt >= t else 'FAIL') if t else '—'} |"
              for c, k, p, o, rt, lo, hi, t in summary]
    if cases is None:
        (args.out_dir / "lime.md").write_text("\n".join(lines) + "\n")
    else:
        print("\n".join(lines[:-len(summary) - 5]))
    print("\n".join(lines[-len(summary) - 2:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
