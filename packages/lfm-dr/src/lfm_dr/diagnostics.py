"""Per-epoch diagnostics of a reweighting method: do its weights separate clean from corrupted
training examples, and what is their scale.

A method records each training example's latest weight (:class:`WeightLog`) and reports, at
the end of an epoch, the mean weight on clean and on corrupted examples and the AUROC of the
weight as a noise detector (probability that a clean example outweighs a corrupted one; 0.5 is
chance, 1 a perfect filter, below 0.5 the weights favour the corrupted examples).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def clean_mask_of(data) -> Tensor | None:
    """True where a training label equals its clean label (None when the data set has no clean labels)."""
    clean = getattr(data, "clean_labels", None)
    return None if clean is None else (clean == data.labels).cpu()


def noise_auroc(weights: Tensor, clean: Tensor) -> float:
    """AUROC of ``weights`` for telling clean (high) from corrupted (low) examples; ties count half.
    NaN when either group is empty."""
    from scipy.stats import rankdata

    w = np.asarray(weights.detach().double().cpu())
    c = np.asarray(clean.bool().cpu())
    n_clean, n_noisy = int(c.sum()), int((~c).sum())
    if n_clean == 0 or n_noisy == 0:
        return math.nan
    ranks = rankdata(w)
    return float((ranks[c].sum() - n_clean * (n_clean + 1) / 2) / (n_clean * n_noisy))


def weight_stats(name: str, weights: Tensor, clean: Tensor | None) -> dict[str, float]:
    """``<name>_mean``, and with corrupted examples present ``<name>_clean``, ``<name>_noisy``,
    ``<name>_auroc``; only examples with a finite weight count."""
    w = weights.detach().float().cpu()
    seen = torch.isfinite(w)
    if not bool(seen.any()):
        return {}
    out = {f"{name}_mean": float(w[seen].mean())}
    if clean is not None:
        c = clean.bool().cpu()[seen]
        ws = w[seen]
        if bool(c.any()) and bool((~c).any()):
            out[f"{name}_clean"] = float(ws[c].mean())
            out[f"{name}_noisy"] = float(ws[~c].mean())
            out[f"{name}_auroc"] = noise_auroc(ws, c)
    return out


class WeightLog:
    """The latest weight each training example received (NaN until it is seen)."""

    def __init__(self, n: int):
        self.values = torch.full((n,), math.nan, dtype=torch.float32)

    def record(self, idx: Tensor, weights: Tensor) -> None:
        self.values[idx.cpu()] = weights.detach().float().cpu()

    def stats(self, name: str, clean: Tensor | None) -> dict[str, float]:
        return weight_stats(name, self.values, clean)
