"""Synthetic label noise: a K x K transition matrix C and labels sampled from its rows.

``C[i, j] = P(noisy = j | clean = i)``. Every generator is seeded and registered with
``lfm_core.registries.NOISE`` under its name, with the signature
``(labels, num_classes, rate, seed=0) -> NoiseResult``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lfm_core.errors import check_choice, UsageError
from lfm_core.registries import NOISE

KINDS = ("uniform", "flip", "pair")
# Flip noise's two target classes per class are drawn once with this seed, the same for every
# run seed (as Meta-Weight-Net's code does); only which examples flip follows the run seed.
# ``flip_noise(..., target_seed=None)`` draws the targets from the run seed instead.
FLIP_TARGET_SEED = 0


@dataclass
class NoiseResult:
    labels: np.ndarray  # noisy labels, int64
    transition: np.ndarray  # the K x K row-stochastic matrix the labels were sampled from
    corrupted: np.ndarray  # bool mask: labels != the clean labels given

    @property
    def actual_rate(self) -> float:
        return float(self.corrupted.mean()) if self.corrupted.size else 0.0


def check_rate(rate: Any) -> float:
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise UsageError(f"noise rate {rate!r} is not a number; give a value in [0, 1]") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise UsageError(f"noise rate {rate} is outside [0, 1]")
    return value


def _check_classes(num_classes: Any, minimum: int, kind: str) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < minimum:
        raise UsageError(f"{kind} noise needs num_classes >= {minimum}, got {num_classes!r}")
    return int(num_classes)


def _check_labels(labels: Any, num_classes: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise UsageError(f"labels must be a 1-D array of integers, got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        bad = arr[(arr < 0) | (arr >= num_classes)][0]
        raise UsageError(f"label {bad} is outside [0, {num_classes - 1}] for num_classes={num_classes}")
    return arr


def transition_matrix(kind: str, num_classes: int, rate: float, seed: int = 0) -> np.ndarray:
    """The transition matrix of a noise type; ``seed`` only matters for ``flip`` (its targets)."""
    check_choice("noise type", kind, KINDS)
    rate = check_rate(rate)
    k = _check_classes(num_classes, 3 if kind == "flip" else 2, kind)
    if kind == "uniform":
        c = np.full((k, k), rate / k) + (1.0 - rate) * np.eye(k)
    elif kind == "pair":
        c = (1.0 - rate) * np.eye(k)
        c[np.arange(k), (np.arange(k) + 1) % k] += rate
    else:  # flip: two distinct other classes per row, as Meta-Weight-Net's flip2
        rng = np.random.default_rng(seed)
        c = (1.0 - rate) * np.eye(k)
        for i in range(k):
            others = np.delete(np.arange(k), i)
            c[i, rng.choice(others, 2, replace=False)] += rate / 2
    return c


def apply_transition(labels: Any, transition: np.ndarray, seed: int = 0) -> NoiseResult:
    """Sample each label independently from its row of ``transition``."""
    c = np.asarray(transition, dtype=np.float64)
    clean = _check_labels(labels, c.shape[0])
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(c, axis=1)
    u = rng.random(len(clean))
    noisy = (u[:, None] >= cdf[clean]).sum(axis=1)
    noisy = np.minimum(noisy, c.shape[0] - 1).astype(np.int64)  # guard float round-off in the last bin
    return NoiseResult(labels=noisy, transition=c, corrupted=noisy != clean)


@NOISE.register("uniform")
def uniform_noise(labels: Any, num_classes: int, rate: float, seed: int = 0) -> NoiseResult:
    """C = rate/K * 11^T + (1 - rate) I: a corrupted label may land on itself."""
    return apply_transition(labels, transition_matrix("uniform", num_classes, rate, seed), seed)


@NOISE.register("flip")
def flip_noise(
    labels: Any, num_classes: int, rate: float, seed: int = 0, target_seed: int | None = FLIP_TARGET_SEED
) -> NoiseResult:
    """Each class sends rate/2 to each of two other classes, drawn with ``target_seed`` (fixed
    by default; None: the run ``seed``); 1 - rate stays. ``seed`` picks which labels flip."""
    targets = seed if target_seed is None else target_seed
    return apply_transition(labels, transition_matrix("flip", num_classes, rate, targets), seed)


@NOISE.register("pair")
def pair_noise(labels: Any, num_classes: int, rate: float, seed: int = 0) -> NoiseResult:
    """Class c sends rate to (c + 1) % K."""
    return apply_transition(labels, transition_matrix("pair", num_classes, rate, seed), seed)
