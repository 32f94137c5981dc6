"""Plotting helpers: a gallery of attribution maps, one row per image, one column per method.

Display conventions:

- Attributions with a channel dimension are summed over channels (signed sum, so positive
  and negative evidence in different colour channels can cancel, as in Captum's "sum").
- Signed maps use a diverging colormap centred at zero with symmetric limits (red positive,
  blue negative); unsigned maps a sequential one starting at zero.
- Class activation maps (Grad-CAM, CAM) are drawn semi-transparently over a grey copy of
  the image; on small grey images (8×8 digits) the input's outline is drawn on top.
- Colour limits are the 99.5th percentile of ``|map|`` per panel, so a few extreme pixels do
  not wash out the rest (values beyond it saturate).

Only matplotlib's object API is used (``Figure`` + the Agg canvas), never ``pyplot``, so no
global backend state is touched and no display is needed.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["METHOD_KINDS", "METHOD_TITLES", "gallery", "gallery_figure", "to_display_map"]

#: How each built-in method's map is drawn: "signed", "unsigned", or over the image:
#: "overlay" (sequential colours from zero: Grad-CAM's ReLU'd map) or "overlay_signed"
#: (diverging colours centred at zero: CAM, which keeps negative evidence).
METHOD_KINDS: Dict[str, str] = {
    "saliency": "unsigned",
    "input_x_gradient": "signed",
    "guided_backprop": "signed",
    "deconvnet": "signed",
    "grad_cam": "overlay",
    "guided_grad_cam": "signed",
    "cam": "overlay_signed",
    "integrated_gradients": "signed",
    "smoothgrad": "unsigned",
    "lrp": "signed",
    "lime": "signed",
    "kernel_shap": "signed",
}

METHOD_TITLES: Dict[str, str] = {
    "saliency": "Saliency |∇|",
    "input_x_gradient": "Input × Gradient",
    "guided_backprop": "Guided Backprop",
    "deconvnet": "Deconvnet",
    "grad_cam": "Grad-CAM",
    "guided_grad_cam": "Guided Grad-CAM",
    "cam": "CAM",
    "integrated_gradients": "Integrated Gradients",
    "smoothgrad": "SmoothGrad |·|",
    "lrp": "LRP ε/z⁺",
    "lime": "LIME",
    "kernel_shap": "KernelSHAP",
}

_SEQUENTIAL = "inferno"
_DIVERGING = "RdBu_r"
_OVERLAY_SEQ = "jet"
_CLIP_PERCENTILE = 99.5

ArrayLike = Union[np.ndarray, torch.Tensor]


def _np(a: ArrayLike) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float32).numpy()
    return np.asarray(a, dtype=np.float32)


def to_display_map(attr: ArrayLike) -> np.ndarray:
    """A (C, H, W), (1, C, H, W) or (H, W) attribution as an (H, W) map, channels summed."""
    a = _np(attr)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3:
        a = a.sum(axis=0)
    if a.ndim != 2:
        raise ValueError(f"cannot display an attribution of shape {a.shape}; "
                         "expected (C, H, W) or (H, W)")
    return a


def _display_image(img: ArrayLike) -> np.ndarray:
    """(H, W), (H, W, 3), (3, H, W) or (1, H, W) → (H, W) or (H, W, 3) float in [0, 1]."""
    a = _np(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    lo, hi = float(a.min()), float(a.max())
    if lo < 0.0 or hi > 1.0:  # not in [0, 1] (e.g. normalised): stretch for display only
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return a


def _limit(m: np.ndarray) -> float:
    v = float(np.percentile(np.abs(m), _CLIP_PERCENTILE)) if m.size else 0.0
    return v if v > 0 else (float(np.abs(m).max()) or 1.0)


def _kind(method: str, m: np.ndarray, kinds: Optional[Mapping[str, str]]) -> str:
    if kinds and method in kinds:
        return kinds[method]
    if method in METHOD_KINDS:
        return METHOD_KINDS[method]
    return "signed" if float(m.min()) < 0 else "unsigned"


def _draw(ax, img: np.ndarray, m: np.ndarray, kind: str, interp: str):
    if kind in ("overlay", "overlay_signed"):
        grey = img if img.ndim == 2 else img.mean(axis=2)  # a grey base keeps colours readable
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation=interp)
        v = _limit(m)
        if kind == "overlay_signed":
            im = ax.imshow(m, cmap=_DIVERGING, vmin=-v, vmax=v, alpha=0.6, interpolation=interp)
        else:
            im = ax.imshow(m, cmap=_OVERLAY_SEQ, vmin=0, vmax=v, alpha=0.5, interpolation=interp)
        if img.ndim == 2 and max(img.shape) <= 64 and float(grey.max()) > float(grey.min()):
            # Under an opaque-ish heatmap an 8×8 digit is unreadable: outline its strokes.
            mid = 0.5 * (float(grey.min()) + float(grey.max()))
            ax.contour(grey, levels=[mid], colors="white", linewidths=1.0)
        return im
    v = _limit(m)
    if kind == "signed":
        return ax.imshow(m, cmap=_DIVERGING, vmin=-v, vmax=v, interpolation=interp)
    if kind == "unsigned":
        return ax.imshow(m, cmap=_SEQUENTIAL, vmin=0, vmax=v, interpolation=interp)
    raise ValueError(f"unknown map kind {kind!r}; use 'signed', 'unsigned', 'overlay' or "
                     "'overlay_signed'")


def gallery(images: Sequence[ArrayLike], maps: Mapping[str, ArrayLike], path, **kwargs) -> str:
    """Save :func:`gallery_figure` as a PNG at ``path``; returns the path as a string."""
    fig = gallery_figure(images, maps, **kwargs)
    fig.savefig(str(path))
    return str(path)


def gallery_figure(images: Sequence[ArrayLike], maps: Mapping[str, ArrayLike], *,
                   row_labels: Optional[Sequence[str]] = None,
                   kinds: Optional[Mapping[str, str]] = None,
                   titles: Optional[Mapping[str, str]] = None, title: Optional[str] = None,
                   cell_inches: float = 1.9, dpi: int = 110, colorbar: bool = False):
    """A grid figure: one row per image, the input first, then one map per method.

    Parameters
    ----------
    images : sequence of N images for display, each (H, W) grey or (H, W, 3) / (3, H, W) RGB,
        values in [0, 1] (other ranges are stretched to [0, 1]).
    maps : {method: attributions (N, C, H, W) or (N, H, W)}; columns in this order.
    row_labels : N strings shown under the input image (e.g. "pred: 7").
    kinds : per-method override of :data:`METHOD_KINDS` ("signed", "unsigned", "overlay",
        "overlay_signed").
        Unknown methods: "signed" if the map has negative values, else "unsigned".
    titles : per-method column titles; default :data:`METHOD_TITLES` or the method name.
    title : figure title.
    colorbar : draw a small colour bar next to every map.

    Returns
    -------
    matplotlib.figure.Figure (Agg canvas attached; ``fig.savefig`` works without pyplot).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(images)
    if n == 0:
        raise ValueError("gallery needs at least one image")
    names = list(maps)
    for name in names:
        if len(maps[name]) != n:
            raise ValueError(f"maps[{name!r}] has {len(maps[name])} entries for {n} images")
    cols = 1 + len(names)
    # Constrained layout leaves room for the suptitle (tight_layout lets it overlap titles).
    fig = Figure(figsize=(cols * cell_inches, n * cell_inches + (0.5 if title else 0.2)), dpi=dpi,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, cols, squeeze=False)
    for r in range(n):
        img = _display_image(images[r])
        # Small inputs (8×8 digits) are shown as pixels, photos smoothly.
        interp = "nearest" if max(img.shape[:2]) <= 64 else "antialiased"
        ax = axes[r, 0]
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation=interp)
        if r == 0:
            ax.set_title("input", fontsize=9)
        if row_labels is not None:
            ax.set_xlabel(row_labels[r], fontsize=8)
        for c, name in enumerate(names, start=1):
            m = to_display_map(maps[name][r])
            if m.shape != img.shape[:2]:
                raise ValueError(f"maps[{name!r}][{r}] is {m.shape}, the image is {img.shape[:2]}")
            ax = axes[r, c]
            im = _draw(ax, img, m, _kind(name, m, kinds), interp)
            if colorbar:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            if r == 0:
                label = (titles or {}).get(name) or METHOD_TITLES.get(name, name)
                ax.set_title(label, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
