"""A small CNN for scikit-learn's 8×8 handwritten digits, trained once and cached.

The network is ``conv-ReLU ×2 → max-pool → conv-ReLU → global average pool → Linear``, so
every method in the package applies to it, CAM included (the last conv block feeds the
pooling layer directly).  It trains deterministically in a few seconds on one thread:
fixed seed, fixed stratified split, one thread and ``torch.use_deterministic_algorithms``
during training.

Weights are cached in ``$XAIKERNELS_CACHE`` (default ``~/.cache/xaikernels``) under a file
name that carries a hash of the architecture and training recipe, so a change to either
retrains instead of loading a stale file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterator, Tuple

import torch
from torch import nn

__all__ = [
    "DigitsCNN",
    "GRAD_CAM_LAYER",
    "cache_dir",
    "digits_weights_path",
    "load_digits_data",
    "load_digits_model",
]

#: Layer whose output feeds global average pooling (Grad-CAM and CAM use it).
GRAD_CAM_LAYER = "features.relu3"

# Everything that changes the trained weights goes into the cache key.
_RECIPE = {
    "version": 1,
    "channels": (16, 32, 32),
    "split": {"test_size": 0.25, "random_state": 0, "stratify": True},
    "scale": "x / 16",
    "seed": 0,
    "epochs": 30,
    "batch_size": 32,
    "optimizer": "adam",
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "lr_schedule": "cosine",
}


class DigitsCNN(nn.Module):
    """Digits classifier: (N, 1, 8, 8) images in [0, 1] → (N, 10) logits.

    Layers (names usable as ``layer=`` arguments): ``features.conv1``, ``features.relu1``,
    ``features.conv2``, ``features.relu2``, ``features.pool`` (8×8 → 4×4), ``features.conv3``,
    ``features.relu3`` (the CAM / Grad-CAM layer, 32×4×4), ``gap``, ``fc``.

    Parameters
    ----------
    channels : tuple of three ints, default (16, 32, 32)
        Output channels of the three conv layers.
    """

    def __init__(self, channels: Tuple[int, int, int] = (16, 32, 32)):
        super().__init__()
        c1, c2, c3 = channels
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(1, c1, 3, padding=1)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(c1, c2, 3, padding=1)),
            ("relu2", nn.ReLU()),
            ("pool", nn.MaxPool2d(2)),
            ("conv3", nn.Conv2d(c2, c3, 3, padding=1)),
            ("relu3", nn.ReLU()),
        ]))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gap(self.features(x)).flatten(1))


def cache_dir() -> Path:
    """Directory for cached weights: ``$XAIKERNELS_CACHE`` or ``~/.cache/xaikernels``."""
    env = os.environ.get("XAIKERNELS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "xaikernels"


def _recipe_hash() -> str:
    # The module's repr pins the architecture; the recipe pins data, split and optimiser.
    arch = repr(DigitsCNN(_RECIPE["channels"]))
    blob = json.dumps({"arch": arch, "recipe": _RECIPE, "torch": torch.__version__.split("+")[0]},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def digits_weights_path() -> Path:
    """Where the weights for the current architecture and recipe are (or will be) cached."""
    return cache_dir() / f"digits_cnn-{_recipe_hash()}.pt"


def _split() -> Dict[str, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the digits model needs scikit-learn: pip install scikit-learn "
                          "(or pip install 'xaikernels[demo]')") from exc
    ds = load_digits()
    x = torch.tensor(ds.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values 0..16
    y = torch.tensor(ds.target, dtype=torch.long)
    sp = _RECIPE["split"]
    idx_tr, idx_te = train_test_split(torch.arange(len(y)).numpy(), test_size=sp["test_size"],
                                      random_state=sp["random_state"],
                                      stratify=ds.target if sp["stratify"] else None)
    idx_tr, idx_te = torch.from_numpy(idx_tr), torch.from_numpy(idx_te)
    return {"x_train": x[idx_tr], "y_train": y[idx_tr], "x_test": x[idx_te], "y_test": y[idx_te]}


def load_digits_data(split: str = "test") -> Tuple[torch.Tensor, torch.Tensor]:
    """The fixed train or test split of ``sklearn.datasets.load_digits``.

    Parameters
    ----------
    split : {"test", "train"}, default "test"

    Returns
    -------
    images : Tensor (N, 1, 8, 8) float32 in [0, 1]
    labels : Tensor (N,) int64
    """
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    d = _split()
    return d[f"x_{split}"], d[f"y_{split}"]


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[torch.Generator]:
    """One thread, deterministic kernels and a private generator; restores global state."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    rng = torch.get_rng_state()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.set_rng_state(rng)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def _train(verbose: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, object]]:
    d = _split()
    r = _RECIPE
    t0 = time.perf_counter()
    with _deterministic(r["seed"]) as gen:
        model = DigitsCNN(r["channels"])
        opt = torch.optim.Adam(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
        n = len(d["y_train"])
        steps = r["epochs"] * ((n + r["batch_size"] - 1) // r["batch_size"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for epoch in range(r["epochs"]):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, r["batch_size"]):
                b = perm[i:i + r["batch_size"]]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(d["x_train"][b]), d["y_train"][b])
                loss.backward()
                opt.step()
                sched.step()
            if verbose:
                print(f"  digits epoch {epoch + 1}/{r['epochs']} loss {loss.item():.4f}",
                      flush=True)
        model.eval()
        info = {
            "test_accuracy": _accuracy(model, d["x_test"], d["y_test"]),
            "train_accuracy": _accuracy(model, d["x_train"], d["y_train"]),
            "n_train": int(n),
            "n_test": int(len(d["y_test"])),
            "n_params": int(sum(p.numel() for p in model.parameters())),
            "train_seconds": time.perf_counter() - t0,
            "recipe_hash": _recipe_hash(),
        }
    return model.state_dict(), info


def _save(path: Path, state: Dict[str, torch.Tensor], info: Dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: a concurrent reader never sees a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"state_dict": state, "info": info}, tmp)
    os.replace(tmp, path)


def _load(path: Path):
    """(state_dict, info), or None when the file is missing, unreadable or does not fit."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state, info = blob["state_dict"], dict(blob["info"])
        DigitsCNN(_RECIPE["channels"]).load_state_dict(state, strict=True)
    except Exception:  # corrupt or foreign file: retrain rather than fail
        return None
    if info.get("recipe_hash") != _recipe_hash():
        return None
    return state, info


def load_digits_model(retrain: bool = False,
                      verbose: bool = False) -> Tuple[DigitsCNN, Dict[str, object]]:
    """The trained digits CNN, from the cache or trained now (a few seconds) and cached.

    Parameters
    ----------
    retrain : bool, default False
        Train even if cached weights exist (and overwrite them).
    verbose : bool, default False
        Print the loss per epoch while training.

    Returns
    -------
    model : DigitsCNN in eval mode.
    info : dict
        ``test_accuracy`` and ``train_accuracy`` (fractions), ``n_train``, ``n_test``,
        ``n_params``, ``train_seconds``, ``recipe_hash``, ``path`` (the cache file),
        ``source`` ("cache" or "trained"), ``grad_cam_layer``.
    """
    path = digits_weights_path()
    loaded = None if retrain else _load(path)
    if loaded is None:
        state, info = _train(verbose=verbose)
        try:
            _save(path, state, info)
        except OSError as exc:  # read-only home etc.: still usable, just not cached
            import warnings

            warnings.warn(f"could not cache the digits weights at {path}: {exc}", RuntimeWarning,
                          stacklevel=2)
        source = "trained"
    else:
        state, info = loaded
        source = "cache"
    model = DigitsCNN(_RECIPE["channels"])
    model.load_state_dict(state)
    model.eval()
    info = dict(info, path=str(path), source=source, grad_cam_layer=GRAD_CAM_LAYER)
    return model, info
