"""Command line: ``python -m xaikernels {info,demo,explain,bench}`` (console script ``xaikernels``).

- ``info``: versions and which backends are live.
- ``demo``: every method on the digits CNN and EfficientNet-Lite0, galleries + report.
- ``explain``: attribution maps for your image and model, saved as a PNG.
- ``bench``: the benchmark suite.

Subcommands are imported lazily, so ``xaikernels --help`` does not load the models.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

_COMMANDS = {
    "info": "print versions and which backends are live",
    "demo": "explain real models with every method; writes galleries and a report",
    "explain": "explain one image with a built-in, TorchScript or Python model",
    "bench": "run the benchmarks",
}


class CLIError(Exception):
    """A user error: printed as ``error: ...`` with exit status 2, no traceback."""


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xaikernels",
        description="Compiled-kernel acceleration for explaining PyTorch models.",
        epilog="commands:\n" + "\n".join(f"  {k:<9} {v}" for k, v in _COMMANDS.items())
        + "\n\nRun `xaikernels COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("command", nargs="?", choices=list(_COMMANDS), metavar="COMMAND")
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


# --------------------------------------------------------------------------------- explain

def _explain_parser() -> argparse.ArgumentParser:
    from xaikernels.demo import METHODS

    p = argparse.ArgumentParser(
        prog="xaikernels explain",
        description="Explain a model's prediction on one image; writes a PNG with one panel "
                    "per method.",
        epilog="models: 'efficientnet' (ImageNet EfficientNet-Lite0, default), 'digits' (8x8 "
               "digits "
               "CNN; the image is turned grey, shrunk to 8x8 and inverted if its background is "
               "light), a TorchScript file (gradient methods only: TorchScript runs no Python "
               "hooks), or 'package.module:factory' returning an nn.Module.  Other models get "
               "RGB input scaled to [0, 1] (--grey for one channel); wrap the model to normalise.")
    p.add_argument("image", help="PNG or JPEG file")
    p.add_argument("--model", default="efficientnet",
                   help="efficientnet | digits | PATH.pt (TorchScript) | package.module:factory")
    p.add_argument("--method", nargs="+", default=None, metavar="METHOD",
                   help=f"one or several of {', '.join(METHODS)}, or 'all' (default: every method "
                        "that applies to the model)")
    p.add_argument("--target", type=int, default=None,
                   help="class index to explain (default: the predicted class)")
    p.add_argument("--layer", default=None,
                   help="layer name for grad_cam / guided_grad_cam / cam (built-in models have "
                        "one)")
    p.add_argument("--size", default=None,
                   help="resize the input to SIZE or HxW (default: 224 for efficientnet, 8 for "
                        "digits, unchanged otherwise)")
    p.add_argument("--grey", action="store_true", help="feed a one-channel image (custom models)")
    p.add_argument("--out", default=None,
                   help="output PNG (default: <image name>_explained.png in the current directory)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _parse_methods(spec: Optional[Sequence[str]]) -> Optional[List[str]]:
    from xaikernels.demo import METHODS

    if spec is None:
        return None
    names: List[str] = []
    for item in spec:
        names += [s.strip() for s in item.split(",") if s.strip()]
    if "all" in names:
        return list(METHODS)
    for n in names:
        if n not in METHODS:
            close = difflib.get_close_matches(n, METHODS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CLIError(f"unknown method {n!r}{hint}; choose from {', '.join(METHODS)} or 'all'")
    return list(dict.fromkeys(names))


def _parse_size(spec: Optional[str]):
    if spec is None:
        return None
    try:
        parts = [int(v) for v in spec.lower().replace("x", ",").split(",")]
    except ValueError:
        raise CLIError(f"--size must be an integer or HxW, got {spec!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise CLIError(f"--size must be a positive integer or HxW, got {spec!r}")
    return tuple(parts)


def _read_image(path: str):
    """(H, W, 3) float32 in [0, 1]."""
    import numpy as np

    if not os.path.exists(path):
        raise CLIError(f"image file not found: {path}")
    if not os.path.isfile(path):
        raise CLIError(f"not a file: {path}")
    try:
        from skimage import io

        img = io.imread(path)
    except ImportError:  # no scikit-image: matplotlib reads PNG (and JPEG with Pillow)
        from matplotlib import image as mpimg

        img = mpimg.imread(path)
    except Exception as exc:
        raise CLIError(f"cannot read {path} as an image: {exc}") from None
    img = np.asarray(img)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    elif img.dtype == bool:
        img = img.astype(np.float32)
    else:
        img = img.astype(np.float32)
        if img.max() > 1.0:
            img = img / 255.0
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise CLIError(f"{path}: unsupported image shape {img.shape}")
    if img.shape[2] in (1, 2):  # grey (+ alpha)
        img = np.repeat(img[..., :1], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def _resize(x, size):
    import torch.nn.functional as F

    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True,
                         align_corners=False).clamp_(0, 1)


class _Loaded:
    """A model ready for the CLI: how to prepare an image and what applies to it."""

    def __init__(self, name, model, prepare, layer=None, activation_types=None, class_name=None,
                 scripted=False):
        from torch import nn

        self.name = name
        self.model = model
        self.prepare = prepare  # (H, W, 3) float → (input (1, C, h, w), display image)
        self.layer = layer
        self.activation_types = activation_types or (nn.ReLU,)
        self.class_name = class_name or (lambda k: f"class {k}")
        self.scripted = scripted


def _load_model(spec: str, size, grey: bool) -> _Loaded:
    import torch
    from torch import nn

    def generic(img):
        x = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)
        if grey:
            x = x.mean(dim=1, keepdim=True)
        x = _resize(x, size)
        return x, x[0]

    if spec == "efficientnet":
        from xaikernels.models import efficientnet as eff

        if size is not None and size[0] != size[1]:
            raise CLIError("efficientnet takes a square input: use --size N")
        n = size[0] if size else eff.IMAGE_SIZE
        model = eff.load_efficientnet_lite0()

        def prep(img):
            shown = eff.crop_resize(img, n)
            return eff.normalize(shown).unsqueeze(0), shown

        return _Loaded("EfficientNet-Lite0", model, prep, eff.GRAD_CAM_LAYER, eff.ACTIVATION_TYPES,
                       eff.class_name)
    if spec == "digits":
        from xaikernels.models import digits

        model, _ = digits.load_digits_model()

        def prep(img):
            x = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).mean(dim=1, keepdim=True)
            x = _resize(x, size or (8, 8))
            if float(x.mean()) > 0.5:  # dark ink on light paper; the digits data are the reverse
                x = 1.0 - x
            return x, x[0]

        return _Loaded("digits CNN", model, prep, digits.GRAD_CAM_LAYER, (nn.ReLU,),
                       lambda k: f"digit {k}")
    if os.path.isfile(spec):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's deprecation note
                model = torch.jit.load(spec, map_location="cpu")
        except Exception as exc:
            raise CLIError(f"cannot load {spec} as a TorchScript model ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); save one with "
                           "torch.jit.script(model).save(path), or use "
                           "--model package.module:factory") from None
        return _Loaded(Path(spec).name, model.eval(), generic, scripted=True)
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as exc:
            raise CLIError(f"cannot import {mod_name!r} for --model {spec}: {exc}") from None
        obj = mod
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise CLIError(f"{mod_name!r} has no attribute {attr!r} (--model {spec})")
            obj = getattr(obj, part)
        model = obj() if callable(obj) and not isinstance(obj, nn.Module) else obj
        if not isinstance(model, nn.Module):
            raise CLIError(f"--model {spec} returned {type(model).__name__}, not a torch.nn.Module")
        return _Loaded(spec, model.eval(), generic)
    raise CLIError(f"model not found: {spec!r} is not a file, 'digits', 'efficientnet' or "
                   "'package.module:factory'")


def _conv_layers(model) -> List[str]:
    from torch import nn

    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]


def explain(argv: Sequence[str]) -> int:
    """``xaikernels explain``: returns an exit code."""
    args = _explain_parser().parse_args(list(argv))
    methods = _parse_methods(args.method)
    size = _parse_size(args.size)
    img = _read_image(args.image)

    import torch

    import xaikernels as xk  # noqa: F401  (loads the ops before timing-free use below)
    from xaikernels import _validate, viz
    from xaikernels.demo import HOOK_METHODS, LAYER_METHODS, METHODS, explainers

    loaded = _load_model(args.model, size, args.grey)
    layer = args.layer or loaded.layer
    if methods is None:  # everything that applies; CAM only where its head is known to fit
        methods = [m for m in METHODS if not (loaded.scripted and m in HOOK_METHODS)
                   and (m not in LAYER_METHODS or layer is not None)
                   and (m != "cam" or loaded.layer is not None)]
    if loaded.scripted:
        bad = [m for m in methods if m in HOOK_METHODS]
        if bad:
            raise CLIError(f"cannot run {', '.join(bad)} on a TorchScript model: these methods use "
                           "Python module hooks, which TorchScript does not run; use saliency / "
                           "input_x_gradient, or load the model from Python with "
                           "--model package.module:factory")
    need_layer = [m for m in methods if m in LAYER_METHODS]
    if need_layer and layer is None:
        convs = _conv_layers(loaded.model)
        raise CLIError(f"--layer is required for {', '.join(need_layer)}; conv layers in this "
                       "model: "
                       f"{convs[-5:] if convs else 'none found'}")
    if layer is not None and need_layer:
        try:
            _validate.find_layer(loaded.model, layer)
        except (ValueError, TypeError) as exc:
            raise CLIError(f"bad --layer: {exc}") from None

    x, shown = loaded.prepare(img)
    try:
        with torch.no_grad():
            out = _validate.check_output(loaded.model(x))
    except CLIError:
        raise
    except Exception as exc:
        raise CLIError(f"the model failed on a {tuple(x.shape)} input: {type(exc).__name__}: {exc}"
                       " (see --size / --grey)") from None
    prob = out.float().softmax(1)[0]
    pred = int(prob.argmax())
    target = pred if args.target is None else args.target
    if not 0 <= target < out.shape[1]:
        raise CLIError(f"--target {target} out of range: the model has {out.shape[1]} classes")
    print(f"predicted: {pred} {loaded.class_name(pred)} ({float(prob[pred]):.1%})")
    if target != pred:
        print(f"explaining: {target} {loaded.class_name(target)} ({float(prob[target]):.1%})")

    fns = explainers(layer, loaded.activation_types, methods)
    t = torch.tensor([target])
    maps = {}
    try:
        from tqdm import tqdm
    except ImportError:
        def tqdm(it, **kw):
            return it
    bar = tqdm(methods, desc="explain", unit="method", file=sys.stderr, disable=args.no_progress)
    for name in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(name)
        try:
            maps[name] = fns[name](loaded.model, x, t)
        except (ValueError, TypeError, RuntimeError, IndexError) as exc:
            raise CLIError(f"{name} failed: {exc}") from None
    out_path = Path(args.out) if args.out else Path(f"{Path(args.image).stem}_explained.png")
    if out_path.parent and not out_path.parent.exists():
        out_path.parent.mkdir(parents=True, exist_ok=True)
    label = f"{loaded.class_name(target)} ({float(prob[target]):.0%})"
    viz.gallery([shown], maps, out_path, row_labels=[label],
                cell_inches=2.4 if max(shown.shape) > 64 else 1.9,
                title=f"{loaded.name}: why class {target} ({loaded.class_name(target)})?")
    print(f"wrote {out_path}")
    return 0


# ------------------------------------------------------------------------------------ main

def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m xaikernels`` and the ``xaikernels`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _top_parser()
    ns = parser.parse_args(argv)
    if ns.version:
        from xaikernels import __version__

        print(f"xaikernels {__version__}")
        return 0
    if ns.command is None:
        parser.print_help()
        return 2
    rest = ns.args
    try:
        if ns.command == "info":
            from xaikernels.info import main as info_main

            if rest and rest[0] in ("-h", "--help"):
                print("usage: xaikernels info\n\n" + _COMMANDS["info"])
                return 0
            return int(info_main() or 0)
        if ns.command == "demo":
            from xaikernels.demo import main as demo_main

            return int(demo_main(rest) or 0)
        if ns.command == "bench":
            if rest and rest[0] == "infonce":  # the fused InfoNCE op vs its materialised reference
                from xaikernels.bench_infonce import main as infonce_main

                return int(infonce_main(rest[1:]) or 0)
            from xaikernels.benchmark import main as bench_main

            return int(bench_main(rest) or 0)
        return explain(rest)
    except CLIError as exc:
        print(f"xaikernels {ns.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
