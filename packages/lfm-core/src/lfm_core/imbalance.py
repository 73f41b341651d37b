"""Class-imbalance generators: pick which training examples of each class are kept.

Registered with ``lfm_core.registries.IMBALANCE``; signature
``(labels, num_classes, factor, n_max=None, seed=0) -> ImbalanceResult``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lfm_core.errors import UsageError
from lfm_core.registries import IMBALANCE


@dataclass
class ImbalanceResult:
    indices: np.ndarray  # sorted indices into the given labels of the examples kept
    counts: list[int]  # kept per class, class 0..K-1


def _check_factor(factor: Any) -> float:
    try:
        value = float(factor)
    except (TypeError, ValueError):
        raise UsageError(f"imbalance factor {factor!r} is not a number; give a value >= 1") from None
    if not math.isfinite(value) or value < 1.0:
        raise UsageError(f"imbalance factor {factor} is invalid; it must be a finite number >= 1")
    return value


def _check_n_max(n_max: Any) -> int:
    if isinstance(n_max, bool) or not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise UsageError(f"n_max {n_max!r} is invalid; it must be an integer >= 1")
    return int(n_max)


def _check_zero(counts: list[int], factor: float, n_max: int, max_factor: int) -> list[int]:
    for c, n in enumerate(counts):
        if n == 0:
            raise UsageError(
                f"imbalance factor {factor:g} leaves class {c} with 0 examples (n_max={n_max}); "
                f"use a smaller factor (at most {max_factor})"
            )
    return counts


def longtail_counts(n_max: int, num_classes: int, factor: float) -> list[int]:
    """Class i keeps ``int(n_max * (1/factor) ** (i / (K-1)))`` (Cui et al.; Meta-Weight-Net)."""
    factor, n_max = _check_factor(factor), _check_n_max(n_max)
    if num_classes < 1:
        raise UsageError(f"num_classes {num_classes} is invalid; it must be >= 1")
    if num_classes == 1:
        return [n_max]
    counts = [int(n_max * (1.0 / factor) ** (i / (num_classes - 1))) for i in range(num_classes)]
    return _check_zero(counts, factor, n_max, n_max)


def step_counts(n_max: int, num_classes: int, factor: float) -> list[int]:
    """The first ceil(K/2) classes keep n_max, the others ``int(n_max / factor)``."""
    factor, n_max = _check_factor(factor), _check_n_max(n_max)
    if num_classes < 1:
        raise UsageError(f"num_classes {num_classes} is invalid; it must be >= 1")
    head = math.ceil(num_classes / 2)
    counts = [n_max if i < head else int(n_max / factor) for i in range(num_classes)]
    return _check_zero(counts, factor, n_max, n_max)


def subsample(labels: Any, counts: list[int], seed: int = 0) -> ImbalanceResult:
    """Keep a seeded random ``counts[c]`` examples of each class c."""
    y = np.asarray(labels).astype(np.int64)
    rng = np.random.default_rng(seed)
    kept = []
    for c, n in enumerate(counts):
        pool = np.flatnonzero(y == c)
        if n > len(pool):
            raise UsageError(
                f"class {c} has {len(pool)} examples but the imbalance profile asks for {n}; "
                f"use n_max <= the smallest class count or a larger factor"
            )
        kept.append(rng.choice(pool, n, replace=False))
    indices = np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
    return ImbalanceResult(indices=indices.astype(np.int64), counts=[int(n) for n in counts])


def _default_n_max(labels: Any, num_classes: int, n_max: int | None) -> int:
    if n_max is not None:
        return _check_n_max(n_max)
    y = np.asarray(labels).astype(np.int64)
    smallest = int(np.bincount(y, minlength=num_classes)[:num_classes].min()) if num_classes else 0
    if smallest < 1:
        raise UsageError("a class has no examples at all; cannot build an imbalanced training set")
    return smallest


@IMBALANCE.register("longtail")
def longtail(labels: Any, num_classes: int, factor: float, n_max: int | None = None, seed: int = 0) -> ImbalanceResult:
    counts = longtail_counts(_default_n_max(labels, num_classes, n_max), num_classes, factor)
    return subsample(labels, counts, seed)


@IMBALANCE.register("step")
def step(labels: Any, num_classes: int, factor: float, n_max: int | None = None, seed: int = 0) -> ImbalanceResult:
    counts = step_counts(_default_n_max(labels, num_classes, n_max), num_classes, factor)
    return subsample(labels, counts, seed)
