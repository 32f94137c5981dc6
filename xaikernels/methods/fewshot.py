"""Few-shot classification on a frozen base network: episodes and a prototypical network.

The second architecture of the mutual-information explainer (issue 6): a base network (the
*encoder*) followed by a downstream network that is not a trained head but a **prototypical
network** (Snell et al. 2017).  In an N-way k-shot episode the prototype of class c is the mean
embedding of its k support images, ``p_c = 1/k sum_s g(x_s)``, and a query x is scored by its
negative squared Euclidean distance to each prototype,

    ``logits_c(x) = -|| g(x) - p_c ||^2``,   ``p(c | x) = softmax_c logits_c(x)``.

:class:`PrototypicalNet` is an ``nn.Module`` returning these (N, n_way) scores, so every method
that explains a classifier (:func:`~xaikernels.methods.infomax.infomax`,
:func:`~xaikernels.methods.iba.iba`, the gradient methods) explains a query's assignment to a
class of the episode unchanged; the embedding ``g(x)`` is the output of its ``encoder``
submodule, which is what ``global_layer="encoder"`` selects as the global representation.

The prototypes are computed once, when the module is built, and stored as a buffer: a forward
pass runs the encoder on the queries only, so each encoder layer runs exactly once per pass (what
layer hooks need) and the support set does not leak into the explanation of a query.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

__all__ = ["Episode", "PrototypicalNet", "digits_encoder", "sample_episode"]


@dataclass
class Episode:
    """One few-shot episode.

    ``support`` (n_way * k_shot, C, H, W) with ``support_labels`` (n_way * k_shot,) in
    ``0 .. n_way-1``; ``query`` (n_way * n_query, C, H, W) with ``query_labels`` likewise;
    ``classes`` (n_way,): the dataset class of each episode label.  Support and query images are
    grouped by episode label, in label order.
    """

    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor
    classes: torch.Tensor


def sample_episode(
    x: torch.Tensor, y: torch.Tensor, n_way: int = 5, k_shot: int = 1, n_query: int = 5, *,
    seed: int = 0, classes: Optional[Sequence[int]] = None,
) -> Episode:
    """Draw an N-way k-shot episode from a labelled pool, reproducibly.

    ``n_way`` classes are drawn without replacement from those in ``y`` that have at least
    ``k_shot + n_query`` examples (or taken from ``classes``); for each, ``k_shot + n_query``
    distinct examples are drawn, the first ``k_shot`` forming the support set.  Only a private
    ``torch.Generator`` seeded with ``seed`` is used, so the caller's RNG state is untouched.

    Parameters
    ----------
    x : Tensor (M, ...), the pool of inputs.
    y : Tensor (M,) int, their class labels.
    n_way : int, default 5, classes per episode.
    k_shot : int, default 1, support examples per class.
    n_query : int, default 5, query examples per class (0 allowed).
    seed : int, default 0.
    classes : optional sequence of ``n_way`` dataset classes to use (in this order).

    Returns
    -------
    Episode
    """
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("x and y must be tensors")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be (M,) with M = x.shape[0] = {x.shape[0]}, got shape {tuple(y.shape)}")
    for name, v, lo in (("n_way", n_way, 2), ("k_shot", k_shot, 1), ("n_query", n_query, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    per = k_shot + n_query
    counts = torch.bincount(y.long().cpu())
    eligible = torch.nonzero(counts >= per).flatten()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if classes is None:
        if len(eligible) < n_way:
            raise ValueError(f"only {len(eligible)} classes have >= {per} examples; {n_way} are needed")
        chosen = eligible[torch.randperm(len(eligible), generator=gen)[:n_way]]
    else:
        chosen = torch.as_tensor(list(classes), dtype=torch.long)
        if chosen.numel() != n_way or len(set(chosen.tolist())) != n_way:
            raise ValueError(f"classes must hold {n_way} distinct labels, got {list(classes)}")
        short = [c for c in chosen.tolist() if c >= len(counts) or counts[c] < per]
        if short:
            raise ValueError(f"classes {short} have fewer than {per} examples")
    ycpu = y.long().cpu()
    sup, qry = [], []
    for c in chosen.tolist():
        idx = torch.nonzero(ycpu == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)[:per]]
        sup.append(idx[:k_shot])
        qry.append(idx[k_shot:])
    sup_idx, qry_idx = torch.cat(sup), torch.cat(qry)
    ways = torch.arange(n_way)
    return Episode(
        support=x[sup_idx.to(x.device)], support_labels=ways.repeat_interleave(k_shot).to(y.device),
        query=x[qry_idx.to(x.device)], query_labels=ways.repeat_interleave(n_query).to(y.device),
        classes=chosen,
    )


class PrototypicalNet(nn.Module):
    """Prototypical-network classifier over a frozen encoder: (N, ...) -> (N, n_way) scores.

    ``forward(x) = -|| g(x) - p_c ||^2`` for each class prototype ``p_c`` (the mean embedding of
    the class's support examples), ``g = encoder`` with its output flattened per sample.  The
    scores are logits: softmax gives the prototypical network's class probabilities.

    Parameters
    ----------
    encoder : nn.Module mapping inputs to embeddings (N, D) or (N, D, 1, 1), ... (flattened).
        It is used as is and not copied: its parameters are shared with the caller's model, and
        this module changes neither them nor its mode.
    support : Tensor (S, ...), the support images.
    support_labels : Tensor (S,) int in ``0 .. n_way-1``, every label present.

    Attributes
    ----------
    prototypes : buffer (n_way, D), computed once without gradients.

    References
    ----------
    Snell, Swersky, Zemel (2017), "Prototypical Networks for Few-shot Learning", NeurIPS.
    """

    def __init__(self, encoder: nn.Module, support: torch.Tensor, support_labels: torch.Tensor):
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
        if support_labels.dim() != 1 or support_labels.shape[0] != support.shape[0] or support.shape[0] == 0:
            raise ValueError(f"support_labels must be (S,) with S = {support.shape[0]} > 0, got shape "
                             f"{tuple(support_labels.shape)}")
        labels = support_labels.long()
        n_way = int(labels.max()) + 1
        if int(labels.min()) < 0 or set(labels.tolist()) != set(range(n_way)):
            raise ValueError(f"support_labels must cover 0 .. n_way-1 without gaps, got {sorted(set(labels.tolist()))}")
        self.encoder = encoder
        # Follow the encoder's mode without touching it (``self.train()`` would recurse into the
        # caller's layers).
        self.training = encoder.training
        with torch.no_grad():
            emb = encoder(support).flatten(1)
        if not torch.isfinite(emb).all():
            raise ValueError("the encoder returned non-finite embeddings for the support set")
        protos = torch.zeros(n_way, emb.shape[1], dtype=emb.dtype, device=emb.device)
        protos.index_add_(0, labels.to(emb.device), emb)
        protos /= torch.bincount(labels, minlength=n_way).to(emb).unsqueeze(1)
        self.register_buffer("prototypes", protos)

    @property
    def n_way(self) -> int:
        return self.prototypes.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.encoder(x).flatten(1)
        # Expanded square rather than cdist: cdist's backward is undefined at zero distance, and a
        # support image used as a query sits exactly on its prototype.
        return -((e.unsqueeze(1) - self.prototypes.unsqueeze(0)) ** 2).sum(dim=2)


def digits_encoder(model: nn.Module) -> nn.Sequential:
    """The embedding of :class:`~xaikernels.models.digits.DigitsCNN`: its features and global
    average pooling, flattened to (N, 32); the classifier head ``fc`` is left out.

    The returned module shares (does not copy) the model's layers, so the names inside an
    encoder are ``features.relu2`` etc. and, under :class:`PrototypicalNet`,
    ``encoder.features.relu2``.
    """
    for name in ("features", "gap"):
        if not isinstance(getattr(model, name, None), nn.Module):
            raise TypeError(f"expected a DigitsCNN-like model with a '{name}' submodule")
    flatten = nn.Flatten()
    flatten.training = model.training  # a fresh module is in train mode; match the model's
    enc = nn.Sequential(OrderedDict([("features", model.features), ("gap", model.gap), ("flatten", flatten)]))
    enc.training = model.training
    return enc
