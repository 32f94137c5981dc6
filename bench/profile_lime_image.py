"""Where the lime-image drop-in's library time goes, against the floor of writing its batches.

The drop-in must hand ``classifier_fn`` lime's batches: float64 (batch, H, W, 3) copies of the
image with hidden segments filled, 1000 samples of a 64×64 image = 98 MB per explanation.  This
times, in one process and one thread (the image and quickshift segments of ``run_lime.py``):

* ``build``: the drop-in's batch builder alone, 1000 samples in lime's batches of 10, each into
  one reused buffer (as the drop-in does);
* ``numpy copy``: the same bytes written by a broadcast copy of the image (the floor of any
  builder that writes them);
* ``explain_instance``: a whole explanation with a near-zero-cost classifier, split into the
  time inside the builder, inside the surrogate fit, inside the classifier, and the rest;
* the floors in place: the library time of whole explanations with the builder swapped for
  stand-ins that write the same bytes (a copy of the image; image XOR fill, which reads both
  inputs as the builder does; nothing), interleaved round by round;
* page offsets: the blend kernel alone (1000 samples in batches of 10) with the image, the
  fill and the batch buffer placed at chosen offsets into their 4 KiB pages (every 64×64×3
  float64 plane is 24 pages, so each stream keeps its offset from row to row), the builder's
  own placement among them: streams that agree in their low 12 address bits stall each other
  (4K aliasing).

Usage::

    NUMBA_THREADING_LAYER=workqueue .venv/bin/python bench/profile_lime_image.py [--repeats 30]

Writes ``bench/results/lime_image_profile.md``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from _one_thread import median_ms  # one thread everywhere; before NumPy / torch / Numba
import numpy as np  # noqa: E402


def _floors(KP, explain, spent, repeats):
    """Library ms of ``explain`` with the builder's blend kernel (``KP._blend_bitmaps``, after
    the rows' bitmaps) swapped for same-size writers."""
    from numba import njit

    @njit(cache=False)
    def copy_x(x, fill, hb, h0, out):
        for s in range(out.shape[0]):
            for a in range(x.shape[0]):
                xa = x[a]
                oa = out[s, a]
                for i in range(x.shape[1]):
                    oa[i] = xa[i]

    @njit(cache=False)
    def copy_xf(x, fill, hb, h0, out):
        for s in range(out.shape[0]):
            for a in range(x.shape[0]):
                xa = x[a]
                fa = fill[a]
                oa = out[s, a]
                for i in range(x.shape[1]):
                    oa[i] = xa[i] ^ fa[i]

    def nothing(*a):
        pass

    variants = {"the drop-in's builder (reads image and fill, blends by mask)": KP._blend_bitmaps,
                "stand-in: copy of the image (reads one input)": copy_x,
                "stand-in: image XOR fill (reads both inputs, no mask)": copy_xf,
                "no batch written at all": nothing}
    orig = KP._blend_bitmaps
    got = {k: [] for k in variants}
    try:
        for k, fn in variants.items():
            KP._blend_bitmaps = fn
            explain()
        for _ in range(repeats):
            for k, fn in variants.items():
                KP._blend_bitmaps = fn
                spent["classifier"] = 0.0
                t0 = time.perf_counter()
                explain()
                got[k].append(time.perf_counter() - t0 - spent["classifier"])
    finally:
        KP._blend_bitmaps = orig
    return {k: 1e3 * statistics.median(v) for k, v in got.items()}


def _offsets(KP, x_apb, fill, seg_ids, masks, repeats):
    """Blend ms of 1000 samples in batches of 10 for (x, fill, out) page offsets."""
    F = int(seg_ids.max()) + 1
    A, Pn, Bn = x_apb.shape
    L = Pn * Bn
    W = (L + 63) >> 6
    ptr, word, bits = KP._word_masks(seg_ids, np.int64(Bn), np.int64(F))
    wp, wf, wq = KP._word_entries(ptr, word, W)
    B = KP._BITMAP_BLOCK
    hb = np.empty(((masks.shape[0] + B - 1) // B, W, B), dtype=np.uint64)
    KP._hidden_bitmaps(wp, wf, wq, bits, F, masks, 0, hb)
    o = KP.Builder.OUT_OFFSET
    own = ((o + KP._X_SHIFT) % 4096, (o + KP._FILL_SHIFT) % 4096, o)  # where batches() places them
    res = {}
    for ox, of, oo in [(0, 0, 0), (0, 64, 128), (0, 0, 2048), (0, 2048, 64), (512, 1536, 2560), own]:
        x = KP.placed_copy(x_apb.reshape(A, L), ox).view(np.uint64)
        f = KP.placed_copy(fill.reshape(A, L), of).view(np.uint64)
        out = KP.placed_empty((10, A, L), np.uint64, oo)

        def blend():
            for s0 in range(0, masks.shape[0], 10):
                KP._blend_bitmaps(x, f, hb, s0, out)
        label = f"x at {ox}, fill at {of}, batch at {oo}" + (" (the builder's)" if (ox, of, oo) == own else "")
        res[label] = median_ms(blend, repeats)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    import torch
    from skimage import data as skdata
    from skimage.transform import resize

    import xaikernels.lime as XL
    from xaikernels.kernels.numba import perturb as KP
    from xaikernels.methods import lime as M
    from xaikernels.ops import perturb as P

    torch.set_num_threads(1)
    img = resize(skdata.astronaut(), (64, 64), anti_aliasing=True)
    seg = M.segment_image(img * 255.0, "quickshift", rng=0)
    seg_ids, F, _ = XL._rank_ids(seg)
    x_apb = P.as_apb(np.ascontiguousarray(img), "hwc")
    fill = M.segment_fill(x_apb, seg_ids, F, "mean")
    masks = P.sample_masks(1000, F, 1, first_row_ones=True)
    builder = P.PerturbedBuilder(x_apb, fill, seg_ids)
    rows = builder.batches(masks)
    Wc = np.random.RandomState(0).randn(16 * 16 * 3, 10) * 0.5

    def clf(b):
        z = b[:, ::4, ::4, :].reshape(len(b), -1) @ Wc
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def build():
        buf = builder.new_out((10, 64, 64, 3))  # one buffer, placed and reused as the drop-in does
        for s0 in range(0, 1000, 10):
            rows(s0, s0 + 10, buf)

    def copy():
        for _ in range(100):
            np.empty((10, 64, 64, 3))[:] = img

    spent = {"build": 0.0, "fit": 0.0, "classifier": 0.0}

    def timed(fn, key):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            spent[key] += time.perf_counter() - t0
            return out
        return wrapper

    def timed_clf(b):
        t0 = time.perf_counter()
        out = clf(b)
        spent["classifier"] += time.perf_counter() - t0
        return out

    def explain():
        XL.LimeImageExplainer(random_state=0).explain_instance(img, timed_clf, num_samples=1000,
                                                               segmentation_fn=lambda i: seg, random_seed=0)

    res = {"build alone (1000 samples, batches of 10)": median_ms(build, args.repeats),
           "numpy copy of the same bytes": median_ms(copy, args.repeats)}
    orig = (KP._hidden_bitmaps, KP._blend_bitmaps, XL._SurrogateFitter.fit)
    KP._hidden_bitmaps = timed(orig[0], "build")
    KP._blend_bitmaps = timed(orig[1], "build")
    XL._SurrogateFitter.fit = timed(orig[2], "fit")
    try:
        explain()
        tot = []
        parts = {k: [] for k in spent}
        for _ in range(args.repeats):
            for k in spent:
                spent[k] = 0.0
            t0 = time.perf_counter()
            explain()
            tot.append(time.perf_counter() - t0)
            for k in spent:
                parts[k].append(spent[k])
    finally:
        KP._hidden_bitmaps, KP._blend_bitmaps, XL._SurrogateFitter.fit = orig
    total = 1e3 * statistics.median(tot)
    p = {k: 1e3 * statistics.median(v) for k, v in parts.items()}
    res["explain_instance, total"] = total
    res["  in the classifier (model time)"] = p["classifier"]
    res["  in the batch builder"] = p["build"]
    res["  in the surrogate fit"] = p["fit"]
    res["  the rest (Python per batch, masks, fill, checks)"] = total - sum(p.values())
    floors = _floors(KP, explain, spent, args.repeats)
    offsets = _offsets(KP, x_apb, fill, seg_ids, masks, args.repeats)
    cmd = shlex.join([os.path.relpath(sys.executable), os.path.relpath(__file__), *(argv or sys.argv[1:])])
    lines = [f"# lime-image drop-in: where the library time goes ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Command: `NUMBA_THREADING_LAYER=workqueue {cmd}` (one thread; medians of {args.repeats})", "",
             "| part | ms |", "|---|---:|"] + [f"| {k} | {v:.2f} |" for k, v in res.items()]
    lines += ["", "Library time of a whole explanation (total minus the classifier's time) with the batch builder "
              "swapped for stand-ins that write the same bytes (their batches are wrong; only the time counts), "
              "measured in lime's loop, where the classifier's reads evict between batches; the variants "
              "interleaved round by round:", "", "| builder | library ms |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in floors.items()]
    lines += ["", "The blend kernel alone (1000 samples, batches of 10, bitmaps built ahead) by the page offsets "
              "(bytes mod 4096) of the image, the fill and the batch buffer:", "", "| placement | blend ms |",
              "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in offsets.items()]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "lime_image_profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
