"""LIME's parts timed one by one (one thread, medians): the pieces behind the overheads of
``bench/run_lime.py``, each against the way it was done before or the obvious alternative.

* fit of 1000 × 73 coalitions for 5 labels (lime image's sizes, default kernel):
  ``fit_lime`` (class-popcount Gram) against the dense Numba kernel it falls back to;
* a drop-in explainer's ``RandomState(0)``: ours against ``np.random.RandomState(0)``;
* lime text's 5000 perturbed documents of a 120-word text: the batch renderer (Numba) against
  its Python reference twin;
* the tabular drop-in (5000 samples, 20 features): the sampler kernel alone against a whole
  explanation's library time (total minus the classifier's); then the sampler, the fused fit
  and the whole explanation each timed right after one of lime's explanations (the cache state
  ``run_lime.py`` measures in), which shows how much of the 50× budget the two kernels alone
  take; and NumPy drawing as many plain uniforms and plain normals, for scale.

Usage::

    NUMBA_THREADING_LAYER=workqueue .venv/bin/python bench/profile_lime_parts.py [--repeats 200]

Writes ``bench/results/lime_parts.md``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from _one_thread import median_ms as _med  # one thread everywhere; before NumPy / torch / Numba
import numpy as np  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    import torch

    import xaikernels.lime as XL
    from xaikernels.kernels.numba import perturb as KP
    from xaikernels.ops import perturb as P

    torch.set_num_threads(1)
    r = args.repeats
    rows = []

    # fit: 1000 x 73 coalitions, 5 labels, lime's default kernel and 'auto' selection
    rng = np.random.RandomState(0)
    X = P.sample_masks(1000, 73, 1, first_row_ones=True)
    Y = rng.dirichlet(np.ones(10), size=1000)
    labels = np.array([1, 2, 3, 4, 5])
    sel = P.resolve_selection("auto", 73)
    rows.append(("fit, 1000 × 73 coalitions, 5 labels: class-popcount Gram (fit_lime)",
                 _med(lambda: KP.fit_lime(X, Y, labels, np.zeros(0), 0.25, 2, 1.0, sel, 73), r)))
    rows.append(("fit, same: the dense kernel",
                 _med(lambda: KP._fit_lime(X, Y, labels, np.zeros(0), 0.25, 2, 1.0, sel, 73,
                                           *KP._fit_outputs(5, 73)), r)))

    # RandomState
    rows.append(("RandomState(0): the drop-ins'", _med(lambda: XL._check_random_state(0), r)))
    rows.append(("RandomState(0): numpy's", _med(lambda: np.random.RandomState(0), r)))

    # text rendering
    words = [f"w{i}" for i in range(300)]
    text = " ".join(rng.choice(words, 120))
    idx = XL.IndexedString(text)
    m = P.sample_masks(5000, idx.num_words(), 2, size_cdf=P.lime_text_size_cdf(idx.num_words()))
    rows.append((f"text: 5000 documents of a 120-word text ({idx.num_words()} words), batch renderer",
                 _med(lambda: idx._render(m, "numba"), max(5, r // 20))))
    rows.append(("text: same, the Python reference twin",
                 _med(lambda: idx._render(m, "reference"), max(5, r // 20))))
    rs = np.random.RandomState(0)
    rows.append((f"text: lime's draws replayed (lime_text_draws, 5000 × {idx.num_words()} words)",
                 _med(lambda: P.lime_text_draws(rs, 5000, idx.num_words()), max(5, r // 20))))
    rows.append(("text: same, lime's own RandomState calls (the reference)",
                 _med(lambda: P.lime_text_draws(rs, 5000, idx.num_words(), backend="reference"), max(5, r // 20))))

    # tabular: sampler kernel vs whole explanation (library time)
    Xtr = rng.randn(1000, 20)
    Wt = rng.randn(20, 3)
    spent = [0.0]

    def pf(Z):
        t0 = time.perf_counter()
        z = Z @ Wt
        e = np.exp(z - z.max(1, keepdims=True))
        out = e / e.sum(1, keepdims=True)
        spent[0] += time.perf_counter() - t0
        return out

    ex = XL.LimeTabularExplainer(Xtr, random_state=0)
    ex_lime = XL.LimeTabularExplainer(Xtr, random_state=0, draws="lime")
    plan = ex.sampler.plan(Xtr[0])

    def explain(e=ex):
        spent[0] = 0.0
        t0 = time.perf_counter()
        e.explain_instance(Xtr[0], pf, num_samples=5000)
        return time.perf_counter() - t0 - spent[0]

    explain()
    lib = 1e3 * statistics.median([explain() for _ in range(r)])
    explain(ex_lime)
    lib_lime = 1e3 * statistics.median([explain(ex_lime) for _ in range(max(5, r // 10))])
    rows.append(("tabular, 5000 × 20: the sampler kernel (neighbourhood, weights, Gram)",
                 _med(lambda: P.tabular_neighbourhood(5000, 3, plan, kernel_width=ex.base.kernel_width, gram=True,
                                                      binary_uint8=True), r)))
    rows.append(("tabular, same: a whole explanation's library time", lib))
    rows.append(("tabular, same with draws='lime' (lime's own draws): library time", lib_lime))
    try:
        import lime.lime_tabular as LT
    except ImportError:
        LT = None
    if LT is not None:
        # run_lime.py's condition: lime's explanation (23 ms of Python, NumPy and SciPy) runs
        # between ours and evicts the caches; each part timed alone right after one
        theirs = LT.LimeTabularExplainer(Xtr, random_state=0)

        def after_lime(fn):
            theirs.explain_instance(Xtr[0], pf, num_samples=5000)
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        nb = P.tabular_neighbourhood(5000, 3, plan, kernel_width=ex.base.kernel_width, gram=True, binary_uint8=True)
        Yt = pf(nb[1])

        def cold(fn, n):
            fn()
            return 1e3 * statistics.median([after_lime(fn) for _ in range(n)])
        n_cold = max(5, r // 4)
        sampler_cold = cold(lambda: P.tabular_neighbourhood(5000, 3, plan, kernel_width=ex.base.kernel_width,
                                                            gram=True, binary_uint8=True), n_cold)
        fit_cold = cold(lambda: P.fit_lime_gram(nb[0], Yt, [1], nb[3], nb[4], feature_selection="auto",
                                                num_features=10), n_cold)
        whole_cold = 1e3 * statistics.median([after_lime(explain) - spent[0] for _ in range(n_cold)])
        rows.append(("tabular, same, each right after a lime explanation (run_lime.py's condition): the sampler "
                     "kernel", sampler_cold))
        rows.append(("tabular, same condition: the fused fit (fit_lime_gram, lime's defaults)", fit_cold))
        rows.append(("tabular, same condition: a whole explanation's library time", whole_cold))
    # reference points for the sampler: NumPy drawing as many (5000 × 20) plain uniforms and
    # plain normals, nothing else (the sampler draws truncated normals in bins, standardises,
    # and sums distances, weights and the Gram)
    g = np.random.default_rng(0)
    rows.append(("tabular reference: NumPy Generator.random(100000) alone (uniforms)", _med(lambda: g.random(100000), r)))
    rows.append(("tabular reference: NumPy Generator.standard_normal(100000) alone (normals)",
                 _med(lambda: g.standard_normal(100000), r)))

    # stem tables: run_lime.py's small CNN on the 64×64 astronaut, lime's quickshift segments
    from skimage import data as skdata
    from skimage.transform import resize

    from run_lime import SmallCNN
    from xaikernels.methods import _stem
    from xaikernels.methods.lime import segment_image

    img = resize(skdata.astronaut(), (64, 64), anti_aliasing=True)
    seg = segment_image(img * 255.0, "quickshift", rng=0).reshape(-1)
    xi = torch.from_numpy(img.transpose(2, 0, 1)).float().contiguous()
    cov = (np.random.RandomState(0).rand(1000, int(seg.max()) + 1) < 0.5).astype(np.uint8)
    st = _stem.trace_stem(SmallCNN().eval())
    wd = _stem.windows(st, 1, seg, 64, 64)
    sr = P.stem_rows(wd.segs, cov)
    n_win = int(len(wd.segs) + (wd.segs >= 0).sum())
    rows.append((f"stem tables, 64×64 quickshift ({int(seg.max()) + 1} segments), 1000 coalitions: stem_rows "
                 f"({len(wd.segs)} positions)", _med(lambda: P.stem_rows(wd.segs, cov), r)))
    for by, what in ((False, f"one window per row ({len(sr[1])})"), (True, f"per segment ({n_win} windows)")):
        rows.append((f"stem tables, same: the first stage's table, {what}",
                     _med(lambda by=by: _stem.plan_stem(st, wd, xi, torch.zeros_like(xi), cov, sr, by_segment=by), r)))
    # the tail's first max pool: a batch of 100 of the small CNN's 16×32×32 maps, channels-last
    ymap = torch.randn(100, 16, 32, 32).contiguous(memory_format=torch.channels_last)
    rows.append(("tail max pool 2×2, 100×16×32×32 channels-last: F.max_pool2d",
                 _med(lambda: torch.nn.functional.max_pool2d(ymap, 2), r)))
    rows.append(("tail max pool, same: strided_max (maxima of strided slices, fast_tail's rewrite)",
                 _med(lambda: _stem.strided_max(ymap, 2, 2), r)))

    # the stem-table gather (the tail's input of a batch of 100 samples) on the bench's
    # quickshift tables (two levels), with a channels-last 16→16 conv over a batch between
    # calls (the tail's, which evicts the table), by how many rows it requests ahead
    from xaikernels.kernels.numba import perturb as KPn

    plans, _ = _stem.build_plans(st, [xi], [torch.zeros_like(xi)], [seg], [cov])
    tab, gidx = plans[0].table.numpy(), plans[0].index[:100]
    gout = np.empty(gidx.shape + (tab.shape[1],), tab.dtype)
    evict_in = torch.randn(100, 16, 16, 16).contiguous(memory_format=torch.channels_last)
    evict_conv = torch.nn.Conv2d(16, 16, 3, padding=1).to(memory_format=torch.channels_last)
    aheads = (0, 8, 16, 32)
    g_t = {a: [] for a in aheads}
    for a in aheads:
        KPn.stem_gather(tab, gidx, gout, ahead=a)
    for _ in range(max(10, r)):
        for a in aheads:
            with torch.no_grad():
                evict_conv(evict_in)
            t0 = time.perf_counter()
            KPn.stem_gather(tab, gidx, gout, ahead=a)
            g_t[a].append(time.perf_counter() - t0)
    for a in aheads:
        rows.append((f"stem gather, 100 samples × {gidx.shape[1]} positions × {tab.shape[1]} channels from the "
                     f"{tab.shape[0]}-row table, after a conv: rows requested {a} ahead"
                     + (" (the kernel's)" if a == KPn._GATHER_AHEAD else ""), 1e3 * statistics.median(g_t[a])))

    # the Captum drop-ins' batches: 20 batches of 50 3×64×64 float32 images (run_lime.py's
    # Captum case) built into a new tensor each (as before) or into one reused tensor; the
    # two alternate, as the bench's providers do (new tensors then page-fault more)
    xb = torch.rand(3, 64 * 64, 1)
    fm = ((np.arange(64)[:, None] * 7 // 64) * 7 + (np.arange(64)[None, :] * 7 // 64)).reshape(-1)
    bld = P.PerturbedBuilder(xb.numpy(), np.zeros_like(xb.numpy()), fm)
    cm = (np.random.RandomState(1).rand(1000, 49) < 0.5).astype(np.uint8)
    one = torch.empty((50, 3, 64 * 64, 1))

    def batches(reuse):
        t0 = time.perf_counter()
        for s in range(0, 1000, 50):
            bld(cm[s:s + 50], (one if reuse else torch.empty((50, 3, 64 * 64, 1))).numpy())
        return time.perf_counter() - t0

    batches(False)
    batches(True)
    new_t, one_t = [], []
    for _ in range(max(5, r // 4)):
        new_t.append(batches(False))
        one_t.append(batches(True))
    rows.append(("Captum drop-ins' batches, 20 × 50 images 3×64×64 float32: a new tensor per batch",
                 1e3 * statistics.median(new_t)))
    rows.append(("same: one tensor reused (the drop-ins' _BatchBuffer, while the forward keeps none)",
                 1e3 * statistics.median(one_t)))

    cmd = shlex.join([os.path.relpath(sys.executable), os.path.relpath(__file__), *(argv or sys.argv[1:])])
    lines = [f"# LIME parts ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Command: `NUMBA_THREADING_LAYER=workqueue {cmd}` (one thread; medians)", "",
             "| part | ms |", "|---|---:|"] + [f"| {k} | {v:.3f} |" for k, v in rows]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "lime_parts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
