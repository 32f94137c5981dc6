"""Demo section: mutual-information maps on the digits CNN, for both architectures of issue 6.

On a few digits test images, with the frozen digits CNN as the base network:

- **classifier**: the CNN with its own head; the global representation is the class scores;
- **prototypical network**: the CNN's embedding (features + global average pooling) in a 5-way
  1-shot episode drawn from the test set; the global representation is the embedding, the
  decision the query's nearest prototype.

For each, :func:`~xaikernels.methods.infomax.infomax` gives ``I(x_ij; y_i)``,
``I(x'_ij; y_i)`` (decision-sufficient) and their difference (redundant information), and
:func:`~xaikernels.methods.iba.iba` the Per-Sample Bottleneck map; the eight maps share one
gallery, ``gallery_mi.png``.  The same images (queries of the episode) are explained by both
architectures, so their rows compare directly.

Called by :mod:`xaikernels.demo` as ``mi_section(out, quick, progress)``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

__all__ = ["mi_section"]

#: The bottleneck's layer (32 x 8 x 8, before pooling: a map at the input's resolution) and the
#: layers the inference network reads.
LOCAL = "features.relu2"
FEATURES = ("features.relu1", "features.relu2", "features.relu3")

#: Display of each map: MI estimates are >= 0 in theory (a negative local estimate is the
#: critic's error), so they are drawn from zero; the difference keeps its sign.
KINDS = {
    "cls_mi_local": "unsigned", "cls_mi_bottleneck": "unsigned", "cls_redundant": "signed", "cls_iba": "overlay",
    "proto_mi_local": "unsigned", "proto_mi_bottleneck": "unsigned", "proto_redundant": "signed",
    "proto_iba": "overlay",
}
TITLES = {
    "cls_mi_local": "cls: I(x; y)", "cls_mi_bottleneck": "cls: I(x'; y)", "cls_redundant": "cls: redundant",
    "cls_iba": "cls: IBA (bits)",
    "proto_mi_local": "proto: I(x; y)", "proto_mi_bottleneck": "proto: I(x'; y)",
    "proto_redundant": "proto: redundant", "proto_iba": "proto: IBA (bits)",
}


def _bar(total: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # the demo must not die without tqdm
        return None
    return tqdm(total=total, desc="MI maps", disable=not enabled, file=sys.stderr, leave=False,
                dynamic_ncols=True)


def mi_section(out: Path, quick: bool, progress: bool) -> Tuple[List[str], str]:
    """Compute the MI maps of both architectures, write ``<out>/gallery_mi.png``.

    Parameters
    ----------
    out : Path, an existing or new directory for the PNG.
    quick : fewer images, contrast samples and optimisation steps (about a third of the time).
    progress : show a progress bar on stderr.

    Returns
    -------
    lines : list of str, the report's markdown section.
    summary : str, one line for the console.
    """
    import xaikernels as xk
    from xaikernels import viz
    from xaikernels.methods.fewshot import PrototypicalNet, digits_encoder, sample_episode
    from xaikernels.methods.iba import iba
    from xaikernels.methods.infomax import infomax
    from xaikernels.models import digits

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, _ = digits.load_digits_model()
    x_test, y_test = digits.load_digits_data("test")

    n_show = 3 if quick else 5
    # Contrast samples per query class: the InfoNCE estimator ranks each positive among all
    # samples' locals, so its ceiling log(N K) and its resolution grow with N.
    n_query = 3 if quick else 8
    steps = 30 if quick else 120
    ep = sample_episode(x_test, y_test, n_way=5, k_shot=1, n_query=n_query, seed=0)
    proto = PrototypicalNet(digits_encoder(model), ep.support, ep.support_labels)
    # The first query of each class is explained, the other queries are the estimator's
    # contrast samples (train_data).
    first = torch.arange(5) * n_query
    show = first[:n_show]
    keep = torch.ones(len(ep.query), dtype=torch.bool)
    keep[show] = False
    rest = keep.nonzero().flatten()
    xs, x_rest = ep.query[show], ep.query[rest]
    with torch.no_grad():
        cls_pred = model(ep.query).argmax(1)
        proto_pred = proto(ep.query).argmax(1)
    cls_acc = float((cls_pred == ep.classes[ep.query_labels]).float().mean())
    proto_acc = float((proto_pred == ep.query_labels).float().mean())

    bar = _bar(4, progress)
    maps: Dict[str, torch.Tensor] = {}
    stats = {}
    for arch, net, prefix in (("cls", model, ""), ("proto", proto, "encoder.")):
        t1 = time.perf_counter()
        res = infomax(net, xs, layer=prefix + LOCAL, feature_layers=[prefix + f for f in FEATURES],
                      global_layer="encoder" if arch == "proto" else None, train_data=x_rest,
                      steps=steps, seed=0)
        backend = xk.last_backend("infonce_lse")
        if bar is not None:
            bar.update()
        maps[f"{arch}_mi_local"] = res.mi_local
        maps[f"{arch}_mi_bottleneck"] = res.mi_bottleneck
        maps[f"{arch}_redundant"] = res.redundant
        maps[f"{arch}_iba"] = iba(net, xs, layer=prefix + LOCAL, stats_data=ep.query)
        if bar is not None:
            bar.update()
        stats[arch] = dict(estimate=res.estimate, seconds=time.perf_counter() - t1, backend=backend,
                           local=float(res.mi_local.mean()), bottleneck=float(res.mi_bottleneck.mean()),
                           redundant=float(res.redundant.mean()), alpha=float(res.alpha.mean()))
    if bar is not None:
        bar.close()

    labels = [f"digit {int(ep.classes[ep.query_labels[i]])}: cls {int(cls_pred[i])}, "
              f"proto {int(ep.classes[proto_pred[i]])}" for i in show]
    viz.gallery([im[0] for im in xs], maps, out / "gallery_mi.png", row_labels=labels, kinds=KINDS,
                titles=TITLES,
                title="Digits CNN: mutual information of local features (features.relu2) with the "
                      "class scores (cls) and with the prototypical embedding (proto, 5-way 1-shot)")
    total = time.perf_counter() - t0
    n_ctx = len(ep.query)
    backend = stats["proto"]["backend"]
    lines = [
        "## Mutual-information maps (InfoMax + information bottleneck)", "",
        f"- Base network: the digits CNN, frozen; bottleneck at `{LOCAL}` (32×8×8), inference network "
        f"fed with {', '.join(f'`{f}`' for f in FEATURES)}; {steps} Adam steps per architecture on "
        f"{n_ctx} images (the {n_show} shown plus {n_ctx - n_show} contrast samples).",
        f"- Architectures: **classifier** (global representation: class scores) and **prototypical "
        f"network**, 5-way 1-shot episode on digits {', '.join(str(int(c)) for c in ep.classes)} "
        f"(global representation: the 32-d embedding; query accuracy {proto_acc:.0%}, the classifier's "
        f"{cls_acc:.0%} on the same queries).",
        "- Maps per image: I(x; y) (information about the input held by the global representation), "
        "I(x'; y) (decision-sufficient information after the bottleneck: the explanation), redundant "
        "= I(x; y) − I(x'; y), in nats; IBA: the Per-Sample Bottleneck (Schulz et al. 2020), bits.",
        "",
        "| architecture | InfoNCE estimate I(x; y) nats | mean I(x; y) | mean I(x'; y) | mean redundant "
        "| mean α | time s |",
        "|---|---|---|---|---|---|---|",
    ]
    for arch, name in (("cls", "classifier"), ("proto", "prototypical")):
        s = stats[arch]
        lines.append(f"| {name} | {s['estimate']:.3f} | {s['local']:.3f} | {s['bottleneck']:.3f} | "
                     f"{s['redundant']:.3f} | {s['alpha']:.2f} | {s['seconds']:.1f} |")
    lines += ["", f"- Fused InfoNCE op `infonce_lse` backend: `{backend}`; section wall time {total:.1f} s.",
              "- Gallery: [gallery_mi.png](gallery_mi.png)", ""]
    summary = (f"MI maps (classifier + prototypical 5-way 1-shot, query acc {proto_acc:.0%}): "
               f"{total:.1f} s, infonce_lse on {backend}")
    return lines, summary
