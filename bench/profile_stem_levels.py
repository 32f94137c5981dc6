"""Stem tables: a second table level built from the first (``_stem.level_plan``), measured.

On ``run_lime.py``'s end-to-end quickshift case (small CNN, 64×64 astronaut, 73 segments,
1000 coalitions) the tables cover the first stage only; the second stage's windows (10×10
pixels) meet up to 19 segments and have 86,005 distinct coalitions, too many to convolve as
patches (oneDNN on 4×4 patches runs at a third of its speed).  The second stage's
convolution is linear in the first table's rows, though: with ``U_k = T₁ · W_k`` per kernel
offset ``k``, a second-level row is ``max_pool(relu(b + Σ_k U_k[row₁(p + k)]))`` over its pool
window, the first-level rows read off any sample that has the row's coalition.  This script
times, one thread, medians:

* the per-sample part with one table level (gather + the tail from the second stage on)
  against two levels (gather + the tail from the third stage on);
* what building the second level costs: ``stem_rows`` at depth 2, the representatives, the
  ``U`` product, and the rows three ways — a first fused Numba kernel (a prototype kept here
  for the comparison), ``embedding_bag`` over the package's bags
  (``ops.perturb.stem_level_ids``) and the package's fused kernel
  (``ops.perturb.stem_level_max``: bags, sums and the pool's max in one pass, 64 bytes of
  channels per vector, rows requested ahead) — checked against the model's own
  second-stage output; then the package's ``level_plan`` whole (max-pool stages take
  ``stem_level_max``).

Usage::

    NUMBA_THREADING_LAYER=workqueue .venv/bin/python bench/profile_stem_levels.py [--repeats 10]

Writes ``bench/results/stem_levels.md``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from _one_thread import median_ms as _med  # one thread everywhere; before NumPy / torch / Numba
import numpy as np  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    import torch
    import torch.nn.functional as F
    from numba import njit
    from skimage import data as skdata
    from skimage.transform import resize

    from run_lime import SmallCNN
    from xaikernels.methods import _stem
    from xaikernels.methods.lime import segment_image
    from xaikernels.ops import perturb as P

    @njit(cache=False)
    def level2(U, bias, index1, rep, row_pos2, Hi, Wi, Wq, pool, kh, kw, pt, pl, out):
        # out[t] = relu(max over the pool window of b + Σ_k U[row₁, k]): the prototype
        T2, Co = out.shape
        acc = np.empty(Co, dtype=out.dtype)
        m = np.empty(Co, dtype=out.dtype)
        for t in range(T2):
            qy, qx = row_pos2[t] // Wq, row_pos2[t] % Wq
            idx = index1[rep[t]]
            m[:] = -np.inf
            for i in range(pool):
                for j in range(pool):
                    oy, ox = qy * pool + i, qx * pool + j
                    acc[:] = bias
                    for a in range(kh):
                        iy = oy - pt + a
                        if 0 <= iy < Hi:
                            for b in range(kw):
                                ix = ox - pl + b
                                if 0 <= ix < Wi:
                                    u = U[idx[iy * Wi + ix], a * kw + b]
                                    for c in range(Co):
                                        acc[c] += u[c]
                    for c in range(Co):
                        m[c] = max(m[c], acc[c])
            for c in range(Co):
                out[t, c] = max(m[c], 0.0)
        return out

    torch.set_num_threads(1)
    r = args.repeats
    img = resize(skdata.astronaut(), (64, 64), anti_aliasing=True)
    seg = segment_image(img * 255.0, "quickshift", rng=0).reshape(-1)
    x = torch.from_numpy(img.transpose(2, 0, 1)).float().contiguous()
    fill = torch.zeros_like(x)
    masks = (np.random.RandomState(0).rand(1000, int(seg.max()) + 1) < 0.5).astype(np.uint8)
    cnn = SmallCNN().eval()
    st = _stem.trace_stem(cnn)
    w1, w2 = _stem.windows(st, 1, seg, 64, 64), _stem.windows(st, 2, seg, 64, 64)
    p1 = _stem.plan_stem(st, w1, x, fill, masks)
    index2, row_pos2, _ = P.stem_rows(w2.segs, masks)
    rep = P.stem_representatives(index2)
    conv = st.stages[1].conv
    Wt, bias = conv.weight.detach(), conv.bias.detach().numpy().copy()
    Co, Ci, kh, kw = Wt.shape
    Wk = Wt.permute(1, 2, 3, 0).reshape(Ci, kh * kw * Co)

    def u_product():
        return (p1.table @ Wk).reshape(-1, kh * kw, Co).numpy()

    U = u_product()
    Hi, Wi, _ = p1.out_hwc
    out2 = np.empty((len(row_pos2), Co), np.float32)
    args2 = (U, bias, p1.index, rep, row_pos2, Hi, Wi, Wi // 2, 2, kh, kw, conv.pad[0], conv.pad[2], out2)
    level2(*args2)
    # the second level against the model's own output after the second stage
    k = 4
    imgs = torch.empty(k, 3, 64 * 64, 1)
    P.build_perturbed(P.as_apb(x, "chw"), P.as_apb(fill, "chw"), seg, masks[:k], imgs)
    with torch.no_grad():
        want = cnn.f[:6](imgs.reshape(k, 3, 64, 64))
    got = torch.from_numpy(out2[index2[:k]]).reshape(k, Hi // 2, Wi // 2, Co).permute(0, 3, 1, 2)
    err = (got - want).abs().max().item()

    tail1, tail2 = st.tail(1), st.tail(2)
    b1 = torch.empty((100,) + p1.out_hwc)
    b2 = torch.empty(100, Hi // 2, Wi // 2, Co)

    def per_sample(level):
        def run():
            with torch.no_grad():
                for s0 in range(0, 1000, 100):
                    if level == 1:
                        p1.gather(s0, s0 + 100, b1.view(100, -1, p1.out_hwc[2]))
                        tail1(b1.permute(0, 3, 1, 2))
                    else:
                        P.stem_gather(out2, index2[s0:s0 + 100], b2.view(100, -1, Co).numpy())
                        tail2(b2.permute(0, 3, 1, 2))
        return run

    # the same rows by embedding_bag over U as (R₁·K + 1, C_out), r·K + k = W_k·T₁[r]
    Ubag = torch.cat([torch.from_numpy(U).reshape(-1, Co), torch.zeros(1, Co)])
    geo = dict(map_hw=(Hi, Wi), window=(2, 2), step=(2, 2), origin=(0, 0), stride=conv.stride,
               pad=(conv.pad[0], conv.pad[2]), dilation=conv.dilation, kernel=(kh, kw), n_rows1=p1.rows)

    def bags():
        return P.stem_level_ids(p1.index, rep, row_pos2, Wi // 2, **geo)

    it, bt = torch.from_numpy(bags()), torch.from_numpy(bias)

    def by_bags():
        z = F.embedding_bag(it, Ubag, mode="sum").view(-1, 4, Co)
        m = torch.maximum(torch.maximum(z[:, 0], z[:, 1]), torch.maximum(z[:, 2], z[:, 3]))
        return (m + bt).clamp_min_(0)

    err_bag = np.abs(by_bags().numpy() - out2).max()
    # the package's: bags, sums and the pool's max fused (P.stem_level_max), bias and ReLU after
    Un = _stem._scratch(tuple(Ubag.shape), Ubag.dtype)
    Un.copy_(Ubag)
    un = Un.numpy()

    def by_max():
        m = torch.from_numpy(P.stem_level_max(p1.index, rep, row_pos2, Wi // 2, un, **geo))
        return (m + bt).clamp_min_(0)

    def bags_chunked():
        for _ in P.stem_level_id_chunks(p1.index, rep, row_pos2, Wi // 2, chunk_rows=8192, **geo):
            pass

    err_max = np.abs(by_max().numpy() - out2).max()
    rows = [(f"per sample, one level ({p1.rows} rows): gather + tail from the second stage, 1000 samples",
             _med(per_sample(1), r)),
            (f"per sample, two levels ({len(row_pos2)} rows): gather + tail from the third stage",
             _med(per_sample(2), r)),
            ("second level: stem_rows at depth 2", _med(lambda: P.stem_rows(w2.segs, masks), r)),
            ("second level: a representative sample per row (stem_representatives)",
             _med(lambda: P.stem_representatives(index2), r)),
            (f"second level: U = T₁·W ({p1.rows} × {Ci} by {Ci} × {kh * kw * Co})", _med(u_product, r)),
            ("second level: the rows, prototype Numba kernel", _med(lambda: level2(*args2), r)),
            ("second level: the rows by embedding_bag — the bags (stem_level_ids)", _med(bags, r)),
            ("second level: the rows by embedding_bag — the sums, max, bias, ReLU", _med(by_bags, r)),
            ("second level: the bags in chunks of 8192 rows (stem_level_id_chunks, one buffer)",
             _med(bags_chunked, r)),
            ("second level: the rows by stem_level_max (bags, sums and max fused) + bias, ReLU", _med(by_max, r)),
            ("second level: all of it as the package builds it (_stem.level_plan, from stem_rows on)",
             _med(lambda: _stem.level_plan(st, p1, w2, masks), r))]
    cmd = shlex.join([os.path.relpath(sys.executable), os.path.relpath(__file__), *(argv or sys.argv[1:])])
    lines = [f"# Stem tables: a second level from the first ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Command: `NUMBA_THREADING_LAYER=workqueue {cmd}` (one thread; medians)", "",
             f"The second level's rows against the model's second-stage output on {k} samples: max |Δ| = "
             f"{err:.2g} (float32); the embedding_bag rows against the prototype's: {err_bag:.2g}; "
             f"stem_level_max's: {err_max:.2g}.", "",
             "| part | ms |", "|---|---:|"]
    lines += [f"| {name} | {v:.2f} |" for name, v in rows]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "stem_levels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
