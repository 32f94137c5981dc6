"""GPU benchmark: the CUDA backends of every op, and the methods beside Captum / Zennit on CUDA.

Needs a CUDA device (none on the development machines or CI; run it where one is lent).

* **ops**: each op's forward + backward (or its one call, for the stream ops) on CUDA tensors,
  per backend: ``triton`` (compiled kernels), ``cpp`` (the extension's CUDA kernels, where the
  op has them) and ``reference`` (plain torch, the tests' oracle).  Medians over round-robin
  rounds (each round calls every backend once), CUDA-synchronised wall time; peak memory is the
  caching allocator's maximum above the start (:func:`xaikernels.benchmark.peak_memory`).
* **methods**: Integrated Gradients and SmoothGrad (n = 50) beside Captum, LRP composites beside
  Zennit, Grad-CAM beside Captum's ``LayerGradCam``, KernelSHAP and LIME (one image, an 8 × 8 grid
  of superpixels, 512 samples) beside Captum's ``KernelShap`` / ``Lime``, on the ResNet-18 replica (224², batch 8)
  and the VGG-16-like model (64², batch 32) from :mod:`xaikernels.models.zoo`.  "unit" = one
  forward + backward of the model.

Usage (repository root, on a GPU machine)::

    python bench/run_gpu.py             # a few minutes on an H100
    python bench/run_gpu.py --quick     # small shapes, seconds
    .venv/bin/python bench/run_gpu.py --device cpu --quick --repeats 1 --warmup 0 --out-dir /tmp/x
                                        # dry run of the script's code paths on a machine without a GPU

Appends rows to ``bench/results/gpu.jsonl`` and writes ``bench/results/gpu.md`` with the command.
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

import xaikernels  # noqa: E402
from xaikernels import _backend  # noqa: E402
from xaikernels.benchmark import peak_memory, time_rounds, versions  # noqa: E402
from xaikernels.models.zoo import resnet18_like, vgg16_like  # noqa: E402
from xaikernels.ops import paths as P  # noqa: E402
from xaikernels.ops.bottleneck import info_bottleneck  # noqa: E402
from xaikernels.ops.grad_cam import grad_cam_reduce  # noqa: E402
from xaikernels.ops.infonce import infonce_lse  # noqa: E402
from xaikernels.ops.lrp import lrp_layer  # noqa: E402
from xaikernels.reference.lrp import ConvGeom, RuleParams  # noqa: E402

DEV = torch.device("cuda")


def _rounds(fns, repeats, warmup):
    """Median seconds of each callable (:func:`xaikernels.benchmark.time_rounds`)."""
    return {k: statistics.median(v) for k, v in time_rounds(fns, repeats, warmup, DEV).items()}


def _live(op, names):
    return [b for b in names if _backend._available(b, op, DEV) is None]


# ------------------------------------------------------------------------------------ ops
def op_cases(quick):
    g = torch.Generator(device=DEV).manual_seed(0)

    def rn(*shape, dtype=torch.float32):
        return torch.randn(shape, generator=g, device=DEV, dtype=dtype)

    cases = []
    s = (8, 64, 49) if quick else (64, 512, 196)
    for dtype in (torch.float32, torch.bfloat16):
        a, gr = rn(*s, dtype=dtype), rn(*s, dtype=dtype)
        up = rn(s[0], s[2], dtype=dtype)

        def cam(b, a=a, gr=gr, up=up):
            ac, gc = a.detach().requires_grad_(True), gr.detach().requires_grad_(True)
            out = grad_cam_reduce(ac, gc, relu=True, backend=b)
            return torch.autograd.grad(out, (ac, gc), up)

        cases.append((f"grad_cam fwd+bwd {tuple(s)} {str(dtype)[6:]}", "grad_cam", ("triton", "cpp", "reference"), cam))

    for n, k, d in ([(64, 4, 32)] if quick else [(1024, 8, 128), (4096, 4, 256)]):
        for dtype in (torch.float32, torch.bfloat16):
            x, y = rn(n, k, d, dtype=dtype), rn(n, d, dtype=dtype)
            gt = rn(n, k)

            def nce(b, x=x, y=y, gt=gt):
                xc, yc = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
                terms, lse = infonce_lse(xc, yc, 0.5, False, backend=b)
                return torch.autograd.grad((terms.float() * gt).sum() + lse.sum(), (xc, yc))

            cases.append((f"infonce_lse fwd+bwd N={n} K={k} D={d} {str(dtype)[6:]}", "infonce_lse",
                          ("triton", "cpp", "reference"), nce))

    s = (4, 32, 14, 14) if quick else (32, 256, 28, 28)
    x, noise = rn(*s), rn(*s)
    alpha = torch.rand((s[0], 1) + s[2:], generator=g, device=DEV)
    mu, std = rn(s[1]), rn(s[1]).abs() + 0.5

    def ib(b):
        xc, ac = x.detach().requires_grad_(True), alpha.detach().requires_grad_(True)
        z, kl = info_bottleneck(xc, ac, mu, std, noise=noise, backend=b)
        return torch.autograd.grad(z.sum() + kl.sum(), (xc, ac))

    cases.append((f"info_bottleneck fwd+bwd {tuple(s)}", "info_bottleneck", ("triton", "reference"), ib))

    n, m, samples = (2, 3 * 32 * 32, 8) if quick else (8, 3 * 224 * 224, 32)
    xs, sigma = rn(n, m), torch.full((n,), 0.15, device=DEV)
    cases.append((f"make_noisy {n}×{samples} rows of {m}", "make_noisy", ("triton", "reference"),
                  lambda b: P.make_noisy(xs, sigma, 7, 0, n * samples, backend=b)))
    base = torch.zeros_like(xs)
    alphas = torch.linspace(0, 1, samples, dtype=torch.float64)
    cases.append((f"make_path {n}×{samples} rows of {m}", "make_path", ("triton", "reference"),
                  lambda b: P.make_path(xs, base, alphas, 0, n * samples, backend=b)))
    grads = rn(n * samples, m)

    def acc(b):
        st_a, st_b = torch.zeros(n, m, device=DEV), torch.zeros(n, m, device=DEV)
        P.accumulate(st_a, st_b, grads, 0, n, None, P.WELFORD, backend=b)
        return st_a

    cases.append((f"accumulate (Welford) {n * samples} rows of {m}", "accumulate", ("triton", "reference"), acc))

    geom = ConvGeom((1, 1), (1, 1), (1, 1), 1)
    s = (2, 16, 28, 28) if quick else (16, 64, 56, 56)
    eps, zplus = RuleParams("epsilon", eps=1e-6), RuleParams("zplus", eps=1e-6)
    ab = RuleParams("alphabeta", eps=1e-6, alpha=2.0, beta=1.0)
    sl = (64, 1024) if quick else (256, 4096)
    layers = [("lrp_conv", f"{tuple(s)} 3×3", rn(*s).clamp_min(0), rn(s[1], s[1], 3, 3) * 0.05, rn(s[1]) * 0.1,
               rn(*s), geom, [("epsilon", eps), ("zplus", zplus), ("alpha2beta1", ab)]),
              ("lrp_linear", f"{sl}", rn(*sl).clamp_min(0), rn(sl[1], sl[1]) * 0.02, None, rn(*sl), None,
               [("epsilon", eps), ("alpha2beta1", ab)])]
    for op, shape, xl, w, bias, rl, g, rules in layers:
        for rname, rule in rules:
            def lrp_case(b, xl=xl, w=w, bias=bias, rl=rl, g=g, rule=rule):
                xg = xl.detach().requires_grad_(True)
                z = lrp_layer(xg, lambda: (w, bias), rule, g, b)
                return torch.autograd.grad(z, xg, rl)

            cases.append((f"{op} {rname} fwd+bwd {shape}", op, ("triton", "reference"), lrp_case))
    return cases


def run_ops(args):
    rows = []
    for name, op, names, fn in op_cases(args.quick):
        live = _live(op, names)
        fns = {b: (lambda b=b: fn(b)) for b in live}
        t = _rounds(fns, args.repeats, args.warmup)
        mem = {b: peak_memory(f, DEV) for b, f in fns.items()}
        row = dict(part="ops", case=name, op=op, ms={b: t[b] * 1e3 for b in live},
                   peak_mib={b: mem[b] / 2**20 for b in live},
                   speedup_vs_reference={b: t["reference"] / t[b] for b in live if b != "reference"})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# -------------------------------------------------------------------------------- methods
def _zennit():
    try:
        import _zennit_stub

        _zennit_stub.install()
        from zennit import composites as zc
        from zennit.attribution import Gradient
        from zennit.torchvision import ResNetCanonizer

        return zc, Gradient, ResNetCanonizer
    except Exception as exc:  # reported in the output
        print(f"zennit unavailable: {exc}")
        return None


def _captum():
    try:
        import captum.attr as ca

        return ca
    except Exception as exc:
        print(f"captum unavailable: {exc}")
        return None


def run_methods(args):
    ca, zen = _captum(), _zennit()
    if args.quick:
        models = [("resnet18", resnet18_like(width=8), (2, 3, 64, 64), "layer4"),
                  ("vgg16", vgg16_like(width=8), (4, 3, 64, 64), "features")]
    else:
        models = [("resnet18", resnet18_like(), (8, 3, 224, 224), "layer4"),
                  ("vgg16", vgg16_like(), (32, 3, 64, 64), "features")]
    rows = []
    for mname, model, shape, cam_layer in models:
        model = model.to(DEV).eval()
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(DEV)
        with torch.no_grad():
            target = model(x).argmax(1)

        def unit():
            xg = x.clone().requires_grad_(True)
            out = model(xg)
            return torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)

        fam = {}
        fam["integrated_gradients n=50"] = {
            "ours": lambda: xaikernels.integrated_gradients(model, x, target, n_steps=50, method="riemann_trapezoid"),
        }
        fam["smoothgrad n=50"] = {
            "ours": lambda: xaikernels.smoothgrad(model, x, target, n_samples=50, stdev=0.15, seed=0),
        }
        if ca is not None:
            ig, sal = ca.IntegratedGradients(model), ca.NoiseTunnel(ca.Saliency(model))
            sd = 0.15 * (x.amax() - x.amin()).item()
            fam["integrated_gradients n=50"]["captum"] = lambda: ig.attribute(
                x, target=target, n_steps=50, method="riemann_trapezoid")
            fam["integrated_gradients n=50"]["captum (internal_batch_size=64)"] = lambda: ig.attribute(
                x, target=target, n_steps=50, method="riemann_trapezoid", internal_batch_size=64)
            fam["smoothgrad n=50"]["captum"] = lambda: sal.attribute(
                x, target=target, nt_type="smoothgrad", nt_samples=50, stdevs=sd, abs=False)
        layer = dict(model.named_modules())[cam_layer]
        fam["grad_cam"] = {"ours": lambda: xaikernels.grad_cam(model, x, target, layer=cam_layer)}
        if ca is not None:
            gc = ca.LayerGradCam(model, layer)
            fam["grad_cam"]["captum"] = lambda: ca.LayerAttribution.interpolate(
                gc.attribute(x, target=target, relu_attributions=True), tuple(shape[2:]), "bilinear")
        for comp in ("epsilon_plus_flat", "epsilon_alpha2_beta1_flat"):
            key = f"lrp {comp}"
            fam[key] = {"ours": lambda comp=comp: xaikernels.lrp(model, x, target, composite=comp)}
            if zen is not None:
                zc, ZGradient, ZResNet = zen
                canon = [ZResNet()] if mname == "resnet18" else []
                factory = {"epsilon_plus_flat": lambda: zc.EpsilonPlusFlat(canonizers=canon),
                           "epsilon_alpha2_beta1_flat": lambda: zc.EpsilonAlpha2Beta1Flat(canonizers=canon)}[comp]
                onehot = torch.eye(model(x[:1]).shape[1], device=DEV)[target]

                def zfn(factory=factory, onehot=onehot):
                    with ZGradient(model, factory()) as attributor:
                        return attributor(x.clone(), onehot)

                fam[key]["zennit"] = zfn
        # perturbation methods on one image: 8 x 8 grid of superpixels, Captum's KernelShap / Lime
        # with the same feature mask and sample count
        x1, t1 = x[:1], int(target[0])
        h, w = shape[2:]
        grid = (torch.arange(h, device=DEV)[:, None] * 8 // h * 8 + torch.arange(w, device=DEV)[None, :] * 8 // w)
        n_pert = 64 if args.quick else 512
        fam["kernel_shap (1 image, 64 features)"] = {"ours": lambda: xaikernels.kernel_shap(
            model, x1, t1, feature_mask=grid, n_samples=n_pert, batch_size=n_pert)}
        fam["lime_image (1 image, 64 features)"] = {"ours": lambda: xaikernels.lime_image(
            model, x1, t1, segments=grid.cpu().numpy(), n_samples=n_pert, batch_size=n_pert)}
        if ca is not None:
            ks, lm = ca.KernelShap(model), ca.Lime(model)
            fmask = grid[None, None].expand(1, shape[1], h, w)
            fam["kernel_shap (1 image, 64 features)"]["captum"] = lambda: ks.attribute(
                x1, target=t1, feature_mask=fmask, n_samples=n_pert, perturbations_per_eval=n_pert)
            fam["lime_image (1 image, 64 features)"]["captum"] = lambda: lm.attribute(
                x1, target=t1, feature_mask=fmask, n_samples=n_pert, perturbations_per_eval=n_pert)
        m_unit = peak_memory(unit, DEV)
        for method, provs in fam.items():
            fns = {"unit": unit, **provs}
            t = _rounds(fns, args.repeats, args.warmup)
            mem = {k: peak_memory(f, DEV) / m_unit for k, f in provs.items()}
            row = dict(part="methods", model=mname, batch=shape[0], method=method,
                       ms={k: v * 1e3 for k, v in t.items()}, x_unit={k: t[k] / t["unit"] for k in provs},
                       peak_x_unit=mem, speedup={k: t[k] / t["ours"] for k in provs if k != "ours"})
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _fmt(d, spec="{:.3g}"):
    return " / ".join(f"{k} {spec.format(v)}" for k, v in d.items())


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--parts", nargs="*", default=["ops", "methods"], choices=["ops", "methods"])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--device", default="cuda",
                    help="cuda (the benchmark), or cpu for a dry run of the script's code paths (writes gpu_dryrun.md)")
    args = ap.parse_args(argv)
    global DEV
    DEV = torch.device(args.device)
    if DEV.type == "cuda" and not torch.cuda.is_available():
        print("run_gpu.py needs a CUDA device (or --device cpu for a dry run)")
        return 2
    command = shlex.join(["python", os.path.relpath(__file__), *argv])
    rows = []
    if "ops" in args.parts:
        rows += run_ops(args)
    if "methods" in args.parts:
        rows += run_methods(args)
    meta = dict(command=command, device=torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu (dry run)",
                versions=versions(),
                triton=_dist("triton"), cuda=torch.version.cuda, date=time.strftime("%Y-%m-%d %H:%M"))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / ("gpu.jsonl" if DEV.type == "cuda" else "gpu_dryrun.jsonl"), "a") as f:
        for r in rows:
            f.write(json.dumps({**meta, **r}) + "\n")
    lines = ["# GPU benchmark", "", f"`{command}` on {meta['device']} ({meta['date']}; torch {torch.__version__}, "
             f"CUDA {meta['cuda']}, Triton {meta['triton']}).  Medians of {args.repeats} round-robin rounds "
             "(CUDA-synchronised wall time); peak = the caching allocator's maximum above the start.", ""]
    ops = [r for r in rows if r["part"] == "ops"]
    if ops:
        lines += [f"## Ops (forward + backward on {DEV.type} tensors)", "",
                  "| case | ms per backend | speedup vs reference | peak MiB |", "|---|---|---|---|"]
        for r in ops:
            lines.append(f"| {r['case']} | {_fmt(r['ms'])} | {_fmt(r['speedup_vs_reference'], '{:.2f}×')} | "
                         f"{_fmt(r['peak_mib'], '{:.1f}')} |")
    meth = [r for r in rows if r["part"] == "methods"]
    if meth:
        lines += ["", f"## Methods beside the peers ({DEV.type})", "",
                  "| model | method | ms | × unit | speedup of ours | peak × unit |", "|---|---|---|---|---|---|"]
        for r in meth:
            lines.append(f"| {r['model']} b{r['batch']} | {r['method']} | {_fmt(r['ms'])} | {_fmt(r['x_unit'], '{:.2f}')} | "
                         f"{_fmt(r['speedup'], '{:.2f}×')} | {_fmt(r['peak_x_unit'], '{:.2f}')} |")
    name = "gpu_dryrun.md" if DEV.type != "cuda" else ("gpu_quick.md" if args.quick else "gpu.md")
    (args.out_dir / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _dist(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
