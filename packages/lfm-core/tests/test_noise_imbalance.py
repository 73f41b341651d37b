"""Label-noise and class-imbalance generators."""

import math

import numpy as np
import pytest

from lfm_core.errors import UsageError
from lfm_core.imbalance import longtail, longtail_counts, step, step_counts
from lfm_core.noise import FLIP_TARGET_SEED, flip_noise, pair_noise, transition_matrix, uniform_noise
from lfm_core.registries import IMBALANCE, NOISE

K = 10
CLEAN = np.arange(200_000) % K


def empirical(clean, noisy, k):
    c = np.zeros((k, k))
    np.add.at(c, (clean, noisy), 1)
    return c / c.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["uniform", "flip", "pair"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 1.0])
def test_empirical_transition_matches(kind, rate):
    res = NOISE.create(kind, labels=CLEAN, num_classes=K, rate=rate, seed=3)
    assert res.labels.dtype == np.int64 and res.labels.shape == CLEAN.shape
    np.testing.assert_allclose(res.transition.sum(axis=1), 1.0)
    targets = FLIP_TARGET_SEED if kind == "flip" else 3  # flip: the same two targets for every run seed
    np.testing.assert_allclose(res.transition, transition_matrix(kind, K, rate, seed=targets))
    assert np.abs(empirical(CLEAN, res.labels, K) - res.transition).max() < 0.01
    np.testing.assert_array_equal(res.corrupted, res.labels != CLEAN)
    assert res.actual_rate == pytest.approx(1.0 - np.trace(res.transition) / K, abs=0.005)


def test_matrix_shapes():
    u = transition_matrix("uniform", 4, 0.4)
    np.testing.assert_allclose(u, np.full((4, 4), 0.1) + 0.6 * np.eye(4))
    p = transition_matrix("pair", 4, 0.3)
    assert p[3, 0] == pytest.approx(0.3) and p[1, 2] == pytest.approx(0.3) and p[1, 1] == pytest.approx(0.7)
    for seed in range(5):
        f = transition_matrix("flip", K, 0.4, seed=seed)
        off = f - np.diag(np.diag(f))
        np.testing.assert_allclose(np.diag(f), 0.6)
        assert ((off > 0).sum(axis=1) == 2).all()
        np.testing.assert_allclose(off[off > 0], 0.2)


def test_seeds():
    a = flip_noise(CLEAN[:5000], K, 0.4, seed=1)
    b = flip_noise(CLEAN[:5000], K, 0.4, seed=1)
    c = flip_noise(CLEAN[:5000], K, 0.4, seed=2)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert (a.labels != c.labels).any()
    assert (uniform_noise(CLEAN[:5000], K, 0.4, 0).labels != uniform_noise(CLEAN[:5000], K, 0.4, 1).labels).any()
    assert NOISE.get("pair") is pair_noise


def test_flip_targets_fixed_across_run_seeds():
    """Meta-Weight-Net's protocol: one seed fixes the two targets per class; the run seed picks
    which labels flip. ``target_seed=None`` draws the targets from the run seed."""
    runs = [flip_noise(CLEAN[:20_000], K, 0.4, seed=s) for s in (1, 2, 3)]
    for res in runs:
        np.testing.assert_array_equal(res.transition, transition_matrix("flip", K, 0.4, seed=FLIP_TARGET_SEED))
        targets = empirical(CLEAN[:20_000], res.labels, K) > 0.05
        np.testing.assert_array_equal(targets, res.transition > 0)  # the labels follow that matrix
    assert (runs[0].labels != runs[1].labels).any()
    per_seed = [flip_noise(CLEAN[:100], K, 0.4, seed=s, target_seed=None).transition for s in (1, 2)]
    np.testing.assert_array_equal(per_seed[0], transition_matrix("flip", K, 0.4, seed=1))
    assert not np.array_equal(per_seed[0], per_seed[1])
    fixed7 = flip_noise(CLEAN[:100], K, 0.4, seed=1, target_seed=7).transition
    np.testing.assert_array_equal(fixed7, transition_matrix("flip", K, 0.4, seed=7))


@pytest.mark.parametrize("rate", [-0.1, 1.5, math.nan, math.inf, "abc", None])
@pytest.mark.parametrize("kind", ["uniform", "flip", "pair"])
def test_bad_rates(kind, rate):
    with pytest.raises(UsageError, match="noise rate"):
        NOISE.create(kind, labels=CLEAN[:10], num_classes=K, rate=rate)


def test_bad_rate_message():
    with pytest.raises(UsageError, match=r"noise rate 1\.5 is outside \[0, 1\]"):
        uniform_noise(CLEAN[:10], K, 1.5)


def test_bad_classes_and_labels():
    with pytest.raises(UsageError, match="num_classes"):
        uniform_noise([0, 0], 1, 0.2)
    with pytest.raises(UsageError, match=">= 3"):
        flip_noise([0, 1], 2, 0.2)
    pair_noise([0, 1], 2, 0.2)  # pair works with 2 classes
    with pytest.raises(UsageError, match="label 7"):
        uniform_noise([0, 7], 3, 0.2)
    with pytest.raises(UsageError, match="unknown noise type"):
        transition_matrix("gaussian", 3, 0.2)


# -- imbalance ----------------------------------------------------------------------------
def test_longtail_counts_cifar10():
    assert longtail_counts(4990, 10, 200) == [4990, 2769, 1537, 853, 473, 262, 145, 80, 44, 24]
    assert longtail_counts(4990, 10, 100)[-1] == 49
    assert longtail_counts(4990, 10, 1) == [4990] * 10
    assert longtail_counts(490, 100, 200)[0] == 490 and longtail_counts(490, 100, 200)[-1] == 2


def test_step_counts():
    assert step_counts(100, 10, 10) == [100] * 5 + [10] * 5
    assert step_counts(100, 5, 4) == [100] * 3 + [25] * 2
    assert step_counts(100, 4, 1) == [100] * 4


@pytest.mark.parametrize("fn", [longtail_counts, step_counts])
def test_bad_factors(fn):
    for bad in (0.5, 0, -3, math.nan, "x"):
        with pytest.raises(UsageError, match="imbalance factor"):
            fn(100, 10, bad)
    with pytest.raises(UsageError, match=r"imbalance factor 200 leaves class \d with 0 examples.*smaller factor"):
        fn(100, 10, 200)


def test_longtail_and_step_pick_examples():
    labels = np.repeat(np.arange(5), 100)[np.random.default_rng(0).permutation(500)]
    res = longtail(labels, 5, 10)  # n_max = smallest class = 100
    assert res.counts == longtail_counts(100, 5, 10)
    assert (np.diff(res.indices) > 0).all()
    np.testing.assert_array_equal(np.bincount(labels[res.indices], minlength=5), res.counts)
    np.testing.assert_array_equal(res.indices, longtail(labels, 5, 10).indices)
    assert not np.array_equal(res.indices, longtail(labels, 5, 10, seed=1).indices)
    s = IMBALANCE.create("step", labels=labels, num_classes=5, factor=4, n_max=80)
    assert s.counts == [80, 80, 80, 20, 20] and step is IMBALANCE.get("step")
    np.testing.assert_array_equal(np.bincount(labels[s.indices], minlength=5), s.counts)
    with pytest.raises(UsageError, match="class 0 has 100 examples"):
        longtail(labels, 5, 10, n_max=150)
