"""Class stability across seeds: the adjusted Rand index, co-assignment, a suggested K."""

import numpy as np
import pytest

from faml.ml.stability import adjusted_rand_index, measure


def test_adjusted_rand_index_known_values():
    """The same partition under other labels: 1; the textbook example [0,0,1,1] against
    [0,0,1,2]: 4/7; independent random labellings of 4000 items: about 0."""
    a = np.array([0, 0, 1, 1, 2, 2, 2])
    assert adjusted_rand_index(a, (a + 1) % 3) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(4 / 7)
    rng = np.random.default_rng(0)
    assert abs(adjusted_rand_index(rng.integers(0, 2, 4000), rng.integers(0, 2, 4000))) < 0.02
    with pytest.raises(ValueError, match="same items"):
        adjusted_rand_index([0, 1], [0, 1, 1])


def _flip(labels, share, rng, classes=2):
    out = labels.copy()
    moved = rng.random(labels.size) < share
    out[moved] = (out[moved] + rng.integers(1, classes, moved.sum())) % classes
    return out


def test_a_real_split_is_stable():
    """Two classes (100 + 60) that replicates find again with 5% of particles moved and the
    labels swapped: stable, K = 2 supported, consistency about 0.95."""
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], [100, 60])
    reps = [1 - _flip(labels, 0.05, rng) for _ in range(3)]
    found = measure(labels, reps, 2, (1, 2, 3, 4), (-10.0, -10.5, -9.8, -10.1))
    assert found.suggested_classes == 2
    assert found.stable.all()
    assert found.rand_index.min() > 0.6
    assert np.all(found.kept > 0.9)
    assert 0.9 < np.mean(found.consistency) <= 1.0
    assert found.groups == ((0,), (1,))
    assert "K = 2 is supported" in found.evidence
    assert "+0.00125 per particle from the run's" in found.evidence
    d = found.to_dict()
    assert d["suggested_classes"] == 2 and d["groups"] == [[1], [2]]
    # a replicate whose likelihood covers another band is not compared
    other_band = measure(labels, reps, 2, (1, 2, 3, 4), (-10.0, -10.5, -9.8, -10.1),
                         bands=(10, 10, 11, 10))  # fmt: skip
    assert np.isnan(other_band.log_likelihood[2])
    assert "-0.000625 per particle from the run's" in other_band.evidence


def test_a_forced_split_is_not_stable():
    """One state cut in two at random by each seed: the classes exchange half their
    particles, neither is stable, K = 1 is suggested."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 150)
    reps = [rng.integers(0, 2, 150) for _ in range(3)]
    found = measure(labels, reps, 2, (1, 2, 3, 4))
    assert found.suggested_classes == 1
    assert not found.stable.any()
    assert np.all(np.abs(found.rand_index) < 0.1)
    assert found.groups == ((0, 1),)
    assert "not stable, suggested K = 1" in found.evidence


def test_two_real_classes_and_a_forced_third():
    """Classes 1 and 2 real, class 3 cut out of class 2 anew by each seed: K = 2 suggested,
    classes 2 and 3 grouped."""
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1, 2], [80, 40, 40])
    reps = []
    for _ in range(3):
        r = labels.copy()
        second = np.flatnonzero(labels > 0)
        r[second] = 1 + rng.integers(0, 2, second.size)
        reps.append(r)
    found = measure(labels, reps, 3, (1, 2, 3, 4))
    assert found.suggested_classes == 2
    assert found.groups == ((0,), (1, 2))
    assert found.stable[0] and not found.stable[1:].any()
