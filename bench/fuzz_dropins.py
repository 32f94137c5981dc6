"""Differential fuzz of the drop-ins against the peers themselves: random configurations, the
same seeds, the explanations compared.

Cases (each trial draws its data, model and arguments from ``RandomState(trial)``):

* ``tabular``: ``xaikernels.lime.LimeTabularExplainer(draws="lime")`` against lime's, dense
  data with categorical and constant columns, every discretizer, selection mode, metric,
  kernel width and label choice;
* ``recurrent``: ``RecurrentTabularExplainer(draws="lime")`` against lime's;
* ``image``: ``LimeImageExplainer`` (lime's draws by default) against lime's, float64 /
  float32 / uint8 and gray images, grid / felzenszwalb / SLIC / non-consecutive segment ids,
  fills, metrics, batch sizes, selections;
* ``text``: ``LimeTextExplainer`` against lime's, bag of words or positions, characters,
  mask strings, split expressions;
* ``captum``: ``xaikernels.captum.Lime`` / ``KernelShap`` against Captum's, MLPs, conv nets
  and two-input models, batches of 1 and 2, masks, baselines, targets, surrogates and
  similarity kernels, after the same ``torch.manual_seed`` (the generator's state after the
  run compared too).

Outcomes per trial: ``equal`` (the same features in the same order, values, intercept and
score to 1e-6 — Captum's attributions to 1e-4, its surrogates being fitted in float32 — or
the same exception type); ``ties`` (the same values to 1e-12, listed in
another order among exact ties); ``degenerate`` (the same intercept and score, every
coefficient of both below 1e-9, listed in another order: the kernel weights have underflowed
onto the instance and the coefficients are rounding noise); ``differs`` (printed with its
configuration).

Usage::

    .venv/bin/python bench/fuzz_dropins.py [--cases tabular,image,...] [--trials 200]

Writes ``bench/results/fuzz_dropins.md`` (the counts and the differing trials).
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
import warnings
from pathlib import Path

from _one_thread import median_ms  # noqa: F401  (one thread everywhere; before NumPy / torch)
import numpy as np  # noqa: E402

def _lists_equal(a, b, tol):
    return len(a) == len(b) and all(str(x[0]) == str(y[0]) and abs(x[1] - y[1]) <= tol * max(1.0, abs(x[1]))
                                    for x, y in zip(a, b))


def _classify(a, b, tol=1e-6):
    """a, b: ("ok", {label: (list, intercept, score)}) or ("err", "Type: message")."""
    if a[0] != b[0]:
        return "differs"
    if a[0] == "err":
        return "equal" if a[1].split(":")[0] == b[1].split(":")[0] else "differs"
    if list(a[1]) != list(b[1]):
        return "differs"
    worst = "equal"
    for lab in a[1]:
        la, ia, sa = a[1][lab]
        lb, ib, sb = b[1][lab]
        if _lists_equal(la, lb, tol) and abs(ia - ib) <= tol * max(1.0, abs(ia)) and abs(sa - sb) <= tol:
            continue
        if (max([abs(v) for _, v in la] + [0.0]) < 1e-9 and max([abs(v) for _, v in lb] + [0.0]) < 1e-9
                and abs(ia - ib) <= tol * max(1.0, abs(ia)) and abs(sa - sb) <= tol):
            worst = "degenerate" if worst == "equal" else worst
            continue
        va, vb = sorted(v for _, v in la), sorted(v for _, v in lb)
        if (len(va) == len(vb) and all(abs(x - y) <= 1e-12 * max(1.0, abs(x)) for x, y in zip(va, vb))
                and abs(ia - ib) <= tol * max(1.0, abs(ia))):
            worst = "ties" if worst in ("equal", "degenerate") else worst
            continue
        return "differs"
    return worst


def _run(fn):
    try:
        return "ok", fn()
    except Exception as e:  # the outcome compared is the exception's type
        return "err", f"{type(e).__name__}: {str(e)[:120]}"


# ------------------------------------------------------------------------------------ cases
def case_tabular(trial):
    import lime.lime_tabular as LT

    import xaikernels.lime as XL
    from sklearn.linear_model import LogisticRegression, Ridge

    r = np.random.RandomState(trial)
    D, N = r.randint(2, 9), r.randint(30, 300)
    X = r.randn(N, D) * r.uniform(0.1, 5, D) + r.uniform(-3, 3, D)
    cats = sorted(r.choice(D, r.randint(0, min(3, D)), replace=False).tolist())
    for c in cats:
        X[:, c] = r.randint(0, r.randint(2, 5), N)
    if r.rand() < 0.2:
        X[:, r.randint(D)] = 1.5  # a constant column
    mode = "regression" if r.rand() < 0.3 else "classification"
    y = (X[:, 0] + r.randn(N) > np.median(X[:, 0])).astype(int)
    if r.rand() < 0.3:
        y = y + (X[:, -1] > X[:, -1].mean()).astype(int)
    if mode == "classification":
        if len(set(y)) < 2:
            return None
        fn = LogisticRegression(max_iter=500).fit(X, y).predict_proba
    else:
        fn = Ridge().fit(X, X[:, 0] * 2 + r.randn(N)).predict
    kw = dict(mode=mode, categorical_features=cats, discretize_continuous=bool(r.rand() < 0.8),
              discretizer=str(r.choice(["quartile", "decile", "entropy"] if mode == "classification"
                                       else ["quartile", "decile"])),
              sample_around_instance=bool(r.rand() < 0.3),
              feature_selection=str(r.choice(["auto", "none", "forward_selection", "highest_weights", "lasso_path"])),
              kernel_width=None if r.rand() < 0.6 else float(r.uniform(0.5, 5)))
    if kw["discretizer"] == "entropy":
        kw["training_labels"] = y
    ekw = dict(num_features=int(r.randint(1, D + 2)), num_samples=int(r.choice([50, 300, 1000])),
               distance_metric=str(r.choice(["euclidean", "cosine", "manhattan"])))
    if kw["feature_selection"] == "forward_selection":
        ekw["num_features"] = min(ekw["num_features"], 4)
    if mode == "classification":
        ekw["top_labels"] = None if r.rand() < 0.5 else int(r.randint(1, 3))
        if ekw["top_labels"] is None:
            ekw["labels"] = (int(r.randint(0, len(set(y)))),)
    row = X[r.randint(N)]

    def run(lib, extra):
        e = lib.LimeTabularExplainer(X, random_state=trial, **kw, **extra).explain_instance(row, fn, **ekw)
        labs = e.available_labels() if mode == "classification" and ekw.get("top_labels") else \
            list(ekw.get("labels") or [1])
        return {lab: (e.as_list(label=lab), e.intercept[lab], float(np.ravel(e.score)[0])) for lab in labs}

    desc = {k: v for k, v in kw.items() if k != "training_labels"} | ekw | {"D": int(D)}
    return desc, _run(lambda: run(LT, {})), _run(lambda: run(XL, {"draws": "lime"}))


def case_recurrent(trial):
    import lime.lime_tabular as LT

    import xaikernels.lime as XL

    r = np.random.RandomState(trial)
    N, T, D = r.randint(20, 100), r.randint(2, 5), r.randint(1, 4)
    X = r.randn(N, T, D)
    Wm = r.randn(T * D, r.randint(2, 4))

    def fn(Z):
        z = Z.reshape(len(Z), -1) @ Wm
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    kw = dict(discretize_continuous=bool(r.rand() < 0.7), discretizer=str(r.choice(["quartile", "decile"])),
              feature_selection=str(r.choice(["auto", "none", "highest_weights", "lasso_path"])),
              feature_names=[f"f{i}" for i in range(D)])
    ekw = dict(num_features=int(r.randint(1, T * D + 1)), num_samples=int(r.choice([50, 300, 1000])))
    row = X[r.randint(N)]

    def run(lib, extra):
        e = lib.RecurrentTabularExplainer(X, random_state=trial, **kw, **extra).explain_instance(row, fn, **ekw,
                                                                                                  labels=(1,))
        return {1: (e.as_list(1), e.intercept[1], float(e.score))}
    return kw | ekw, _run(lambda: run(LT, {})), _run(lambda: run(XL, {"draws": "lime"}))


def case_image(trial):
    import lime.lime_image as LI
    from skimage.segmentation import felzenszwalb, slic

    import xaikernels.lime as XL

    r = np.random.RandomState(trial)
    H, W = r.randint(8, 40), r.randint(8, 40)
    dt = str(r.choice(["f64", "u8", "f32"]))
    img = r.rand(H, W, 3)
    img = (img * 255).astype(np.uint8) if dt == "u8" else img.astype(np.float32) if dt == "f32" else img
    if r.rand() < 0.15:
        img = img[..., 0]
    K = r.randint(2, 6)
    Wm = r.randn(12, K)
    scale = 0.02 if dt == "u8" else 5.0

    def clf(b):
        b = np.asarray(b, dtype=np.float64)
        if b.ndim == 3:
            b = np.repeat(b[..., None], 3, axis=3)
        f = np.concatenate([b[:, :H // 2, :W // 2].mean((1, 2)), b[:, H // 2:, :W // 2].mean((1, 2)),
                            b[:, :H // 2, W // 2:].mean((1, 2)), b[:, H // 2:, W // 2:].mean((1, 2))], 1)
        z = f @ Wm * scale
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    kind = str(r.choice(["grid", "felzenszwalb", "slic", "gaps"]))

    def rgb(im):
        im = np.asarray(im, dtype=np.float64)
        return im if im.ndim == 3 else np.repeat(im[..., None], 3, 2)

    def seg_fn(im):
        if kind == "grid":
            g = max(2, H // 4)
            return (np.arange(H)[:, None] // g) * 10 + np.arange(W)[None, :] // g
        if kind == "felzenszwalb":
            return felzenszwalb(rgb(im), scale=50)
        if kind == "slic":
            return slic(rgb(im), n_segments=12, start_label=0)
        return ((np.arange(H)[:, None] // 5) * 7 + np.arange(W)[None, :] // 6) * 3 + 1  # ids with gaps
    kw = dict(kernel_width=float(r.choice([0.25, 0.25, 1.0])),
              feature_selection=str(r.choice(["auto", "none", "highest_weights", "forward_selection", "lasso_path"])))
    ekw = dict(hide_color=[None, 0, 128 if dt == "u8" else 0.5][r.randint(3)],
               num_features=int(r.choice([3, 5, 100000])), num_samples=int(r.choice([20, 100, 300])),
               batch_size=int(r.choice([1, 7, 10, 50])), distance_metric=str(r.choice(["cosine", "euclidean",
                                                                                        "manhattan"])),
               random_seed=int(r.randint(100)))
    if r.rand() < 0.5:
        ekw["top_labels"] = int(r.randint(1, K + 1))
    else:
        ekw["top_labels"] = None
        ekw["labels"] = tuple(int(v) for v in r.choice(K, r.randint(1, K), replace=False))
    if kw["feature_selection"] == "forward_selection":
        ekw["num_features"] = 3

    def run(lib):
        e = lib.LimeImageExplainer(random_state=trial, **kw).explain_instance(img, clf, segmentation_fn=seg_fn, **ekw)
        labs = e.top_labels if ekw["top_labels"] else list(ekw["labels"])
        return {lab: (sorted(e.local_exp[lab], key=lambda t: (-abs(t[1]), t[0])), e.intercept[lab], float(e.score))
                for lab in labs}
    desc = dict(dtype=dt, shape=img.shape, segments=kind) | kw | ekw
    return desc, _run(lambda: run(LI)), _run(lambda: run(XL))


def case_text(trial):
    import lime.lime_text as LX

    import xaikernels.lime as XL

    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa", "lam", "mu"]
    r = np.random.RandomState(trial)
    seps = [" ", ", ", "  ", ". ", "-", " ("]
    text = "".join(r.choice(words) + r.choice(seps) for _ in range(r.randint(1, 25))).strip()
    if r.rand() < 0.2:
        text = text.upper()
    K = r.randint(2, 4)
    wv = {w: r.randn(K) for w in words}

    def clf(docs):
        out = []
        for d in docs:
            z = np.zeros(K)
            for t in re.findall(r"\w+", d.lower()):
                z += wv.get(t, 0)
            e = np.exp(z - z.max())
            out.append(e / e.sum())
        return np.array(out)
    kw = dict(kernel_width=float(r.choice([25, 5, 100])),
              feature_selection=str(r.choice(["auto", "none", "highest_weights", "forward_selection", "lasso_path"])),
              bow=bool(r.rand() < 0.6), char_level=bool(r.rand() < 0.15), mask_string=[None, "UNK", ""][r.randint(3)])
    if r.rand() < 0.2:
        kw["split_expression"] = r"\s+"
    ekw = dict(num_features=int(r.choice([2, 6, 10])), num_samples=int(r.choice([10, 100, 500])),
               distance_metric=str(r.choice(["cosine", "euclidean"])))
    if kw["feature_selection"] == "forward_selection":
        ekw["num_features"] = min(ekw["num_features"], 4)
    if r.rand() < 0.5:
        ekw["top_labels"] = int(r.randint(1, K + 1))
    else:
        ekw["labels"] = (int(r.randint(K)),)

    def run(lib):
        e = lib.LimeTextExplainer(random_state=trial, **kw).explain_instance(text, clf, **ekw)
        return {lab: (e.as_list(lab), e.intercept[lab], float(e.score)) for lab in e.available_labels()}
    return dict(text=text[:40]) | kw | ekw, _run(lambda: run(LX)), _run(lambda: run(XL))


def case_captum(trial):
    import torch
    from torch import nn

    import captum.attr as CA
    from captum._utils.models.linear_model import SkLearnLinearRegression, SkLearnRidge
    from captum.attr._core.lime import get_exp_kernel_similarity_function as captum_kernel

    import xaikernels.captum as XC
    from xaikernels.captum._lime import get_exp_kernel_similarity_function as our_kernel

    r = np.random.RandomState(trial)
    torch.manual_seed(trial)
    kind = str(r.choice(["mlp", "conv", "two"]))
    B = int(r.choice([1, 1, 2]))
    if kind == "mlp":
        D = int(r.randint(2, 12))
        net = nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        x = torch.randn(B, D)
        fm = None if r.rand() < 0.4 else torch.as_tensor(r.randint(0, max(1, D // 2), (1, D)))
    elif kind == "conv":
        H = int(r.randint(3, 7))
        net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(3, 3)).eval()
        x = torch.randn(B, 2, H, H)
        fm = None if r.rand() < 0.3 else torch.as_tensor(r.randint(0, 5, (1, 1, H, H))).expand(1, 2, H, H).contiguous()
    else:
        D = int(r.randint(2, 6))
        l1, l2 = nn.Linear(D, 3), nn.Linear(D + 1, 3)

        class Two(nn.Module):
            def forward(self, a, b):
                return l1(a) + l2(b)
        net = Two().eval()
        x = (torch.randn(B, D), torch.randn(B, D + 1))
        fm = None if r.rand() < 0.5 else (torch.as_tensor(r.randint(0, 3, (1, D))),
                                          torch.as_tensor(r.randint(2, 5, (1, D + 1))))
    method = str(r.choice(["Lime", "KernelShap"]))
    base = None if r.rand() < 0.5 else (float(r.randn()) if kind != "two" else (float(r.randn()), 0.0))
    kw = dict(n_samples=int(r.choice([5, 20, 60])), perturbations_per_eval=int(r.choice([1, 3, 16])),
              return_input_shape=bool(r.rand() < 0.8))
    if r.rand() < 0.8:
        kw["target"] = int(r.randint(3))
    if base is not None:
        kw["baselines"] = base
    if fm is not None:
        kw["feature_mask"] = fm
    ctor = {}
    if method == "Lime":
        choice = r.randint(4)
        if choice == 1:
            ctor = dict(interpretable_model="ridge", similarity_func=("euclidean", float(r.choice([0.5, 1.0, 3.0]))))
        elif choice == 2:
            ctor = dict(interpretable_model="linreg")
        elif choice == 3:
            ctor = dict(similarity_func=("cosine", float(r.choice([0.5, 1.0]))))

    def run(lib):
        c = {}
        if "interpretable_model" in ctor:
            c["interpretable_model"] = SkLearnRidge(alpha=1.0) if ctor["interpretable_model"] == "ridge" \
                else SkLearnLinearRegression()
        if "similarity_func" in ctor:
            c["similarity_func"] = (captum_kernel if lib is CA else our_kernel)(*ctor["similarity_func"])
        torch.manual_seed(trial)
        out = getattr(lib, method)(net, **c).attribute(x, **kw)
        after = torch.rand(2)
        outs = out if isinstance(out, tuple) else (out,)
        # attributions as a label-free "list": every element, in order, plus the generator's
        # next draws (equal generator states)
        flat = [(i, float(v)) for i, v in enumerate(torch.cat([o.detach().double().flatten() for o in outs]))]
        shapes = tuple(tuple(o.shape) for o in outs)
        return {0: (flat + [("shape", float(hash(shapes) % 997))] + [("rng", float(v)) for v in after], 0.0, 0.0)}
    desc = dict(model=kind, batch=B, method=method, ctor=ctor, mask=fm is not None) | \
        {k: v for k, v in kw.items() if k != "feature_mask"}
    return desc, _run(lambda: run(CA)), _run(lambda: run(XC))


CASES = {"tabular": case_tabular, "recurrent": case_recurrent, "image": case_image, "text": case_text,
         "captum": case_captum}
# Captum fits its surrogates in float32 (scikit-learn on float32 tensors), the drop-ins in
# float64: attributions agree to about 1e-5 of their scale
TOLERANCE = {"captum": 1e-4}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    rows, details = [], []
    for name in args.cases.split(","):
        counts = {"equal": 0, "ties": 0, "degenerate": 0, "differs": 0}
        t0 = time.perf_counter()
        for trial in range(args.trials):
            got = CASES[name](trial)
            if got is None:
                continue
            desc, a, b = got
            outcome = _classify(a, b, TOLERANCE.get(name, 1e-6))
            counts[outcome] += 1
            if outcome == "differs":
                details.append(f"- {name} trial {trial}: {desc}; peer: "
                               f"{a[1] if a[0] == 'err' else 'ok'}; drop-in: {b[1] if b[0] == 'err' else 'ok'}")
                print(details[-1], flush=True)
        rows.append((name, sum(counts.values()), counts, time.perf_counter() - t0))
        print(f"{name}: {counts}", flush=True)
    cmd = "NUMBA_THREADING_LAYER=workqueue .venv/bin/python bench/fuzz_dropins.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    lines = [f"# Drop-ins against the peers: differential fuzz ({time.strftime('%Y-%m-%dT%H:%M:%S')})", "",
             f"Command: `{cmd.strip()}`", "", (__doc__.split("\n\n")[2] + "\n\n" + __doc__.split("\n\n")[3]).strip(),
             "", "| case | trials | equal | ties | degenerate | differs |", "|---|---:|---:|---:|---:|---:|"]
    for name, n, c, _ in rows:
        lines.append(f"| {name} | {n} | {c['equal']} | {c['ties']} | {c['degenerate']} | {c['differs']} |")
    lines += ["", "Differing trials:" if details else "No trial differs.", ""] + details
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "fuzz_dropins.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
