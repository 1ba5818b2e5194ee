"""The M-step on planted sums, the phase of each iteration, and the re-seeding of a class."""

import numpy as np
import pytest

from conftest import make_dataset, polnet_map
from faml.io.particles import from_mrc_files
from faml.ml.config import RunConfig, Tuning
from faml.ml.em import ParticleResult, hard_chunk
from faml.ml.fourier import fsc
from faml.ml.mstep import compensated_mean, m_step
from faml.ml.phase import iterations_in_all, phase_of, random_starts, start_iterations
from faml.ml.reseed import reseed, reseed_below
from faml.ml.state import ModelState
from faml.ml.stats import Stats, frame_points
from faml.ml.tasks import split_halves
from faml.parallel import make_executor

BOX, BAND = 16, 6


def planted_stats(rng, sigma2_true, n, shift2):
    """Sums of K = 2 classes whose maximiser is a known average ``A`` and whose residual per
    shell is ``sigma2_true * C``: ``S = W A`` at every point, ``P = sum |A|^2 W + sigma^2 C``."""
    stats = Stats.zeros(2, BOX, BAND)
    _, _, shell, mult = frame_points(BOX, BAND)
    points = stats.S.shape[-1]
    truth = rng.normal(size=(2, points)) + 1j * rng.normal(size=(2, points))
    stats.W[:] = rng.uniform(0.5, 2.0, size=stats.W.shape)
    stats.S[:] = stats.W * truth[None]
    stats.n[:] = n
    stats.level[:] = 1.0  # the floor 0.1 stays below every W
    stats.count[1 : BAND + 1] = 50.0 + np.arange(BAND)
    w_total = stats.W.sum(axis=0)  # (K, P)
    signal = (np.abs(truth) ** 2 * w_total * mult[None]).sum(axis=0)
    per_shell = np.bincount(shell, weights=signal, minlength=BOX // 2 + 2)[: BOX // 2 + 1]
    stats.power[:] = per_shell + sigma2_true * stats.count
    stats.shift2 = shift2
    return stats, truth


def test_m_step_recovers_planted_parameters():
    rng = np.random.default_rng(0)
    sigma2_true = np.linspace(3.0, 0.5, BOX // 2 + 1)
    n = np.array([[3.0, 1.0], [3.0, 1.0]])
    stats, truth = planted_stats(rng, sigma2_true, n, shift2=3 * 8 * 4.0)
    m = m_step(stats, None, "faml", None, 8, "compensated")
    flat = frame_points(BOX, BAND)[1]
    for k in range(2):
        np.testing.assert_allclose(m.averages[k].reshape(-1)[flat], truth[k], rtol=1e-12)
        for h in range(2):
            np.testing.assert_allclose(m.half_averages[h, k].reshape(-1)[flat], truth[k])
    outside = np.ones(m.averages.shape[1:], bool)
    outside.reshape(-1)[flat] = False
    assert np.all(m.averages[:, outside] == 0)  # no sums there: nothing observed
    np.testing.assert_allclose(m.alpha, [0.75, 0.25])
    np.testing.assert_allclose(m.sigma2[1 : BAND + 1], sigma2_true[1 : BAND + 1], rtol=1e-9)
    assert m.xi == pytest.approx(2.0)  # sqrt(D / 3N)


def test_m_step_paper_update_keeps_the_old_average_where_unobserved():
    rng = np.random.default_rng(1)
    n = np.array([[2.0, 2.0], [2.0, 2.0]])
    stats, _ = planted_stats(rng, np.ones(BOX // 2 + 1), n, shift2=0.0)
    old = rng.normal(size=(2, BOX, BOX, BOX // 2 + 1)) + 0j
    m = m_step(stats, old, "faml", None, 8, "paper")
    S, W = stats.dense()
    expected = (S.sum(0) + (n.sum(0)[:, None, None, None] - W.sum(0)) * old) / n.sum(0)[
        :, None, None, None
    ]
    np.testing.assert_allclose(m.averages, expected)
    flat = frame_points(BOX, BAND)[1]
    unobserved = np.ones(old.shape[1:], bool)
    unobserved.reshape(-1)[flat] = False
    np.testing.assert_allclose(m.averages[:, unobserved], old[:, unobserved])
    assert m.xi == 1.0  # floored at one voxel


def test_phase_of_each_iteration():
    cfg = RunConfig(
        gold_standard=True,
        symmetry="C2",
        iterations=10,
        tuning=Tuning(fa_iterations=4, grid_iterations=5, starts=3, start_iterations=3),
    )
    rows = [phase_of(cfg, i) for i in range(0, 8)]
    assert [p.method for p in rows] == ["fa"] * 5 + ["faml"] * 3
    assert [p.grid for p in rows] == [False] * 5 + [True] + [False] * 2
    assert [p.halves_independent for p in rows] == [False] * 5 + [True] * 3
    assert [p.to_symmetry_frame for p in rows] == [i == 2 for i in range(8)]
    assert [p.symmetrize for p in rows] == [i > 2 for i in range(8)]
    assert [p.may_stop for p in rows] == [i > 5 for i in range(8)]
    held = phase_of(cfg, 7, held_band=5, comparing=True)
    assert held.held_band == 5 and not held.may_stop
    assert random_starts(cfg) == 3 and start_iterations(cfg) == 3
    assert iterations_in_all(cfg) == 3 * 3 + 10 - 3
    plain = RunConfig(method="fa", iterations=1, tuning=Tuning(fa_iterations=0))
    assert phase_of(plain, 1).method == "fa" and not phase_of(plain, 1).grid
    assert not phase_of(plain, 1).symmetrize and not phase_of(plain, 1).halves_independent
    # several starts need two iterations each: with one iteration there is nothing to compare
    assert random_starts(plain) == 1 and start_iterations(plain) == 0
    assert iterations_in_all(plain) == 1


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reseed") / "particles"
    rots, shifts, _ = make_dataset(folder, [polnet_map("1bxn", 24)], 12, 1.0, seed=8)
    return from_mrc_files(folder), rots, shifts


def test_reseed_moves_the_worst_fitting_half_of_the_largest_class(small_set):
    table, rots, shifts = small_set
    n, K = len(table), 2
    halves = split_halves(n, 3)
    fits = np.random.default_rng(2).normal(size=n)
    # class 2 holds no particle: below reseed_below(K) of them
    klass = np.zeros(n, int)
    results = [
        ParticleResult(i, int(klass[i]), rots[i], shifts[i], 0.9, 3, float(fits[i]))
        for i in range(n)
    ]
    alpha = np.array([1.0, 0.0])
    assert alpha[1] < reseed_below(K)
    spectrum = np.zeros((K, 24, 24, 13), complex)
    state = ModelState(4, spectrum, np.zeros((K, 13)), 5, alpha, np.ones(13), 2.0)
    cfg = RunConfig(classes=K, seed=3)
    executor = make_executor(1)
    try:
        new_state, new_results = reseed(executor, table, state, results, cfg, halves, 5)
    finally:
        executor.close()
    members = [i for i in range(n) if klass[i] == 0]
    moved = sorted(sorted(members, key=lambda i: fits[i])[: len(members) // 2])
    assert sorted(r.index for r in new_results if r.klass == 1) == moved
    assert [r.fit for r in new_results] == [r.fit for r in results]  # poses and fits kept
    np.testing.assert_allclose(new_state.alpha, [n - len(moved), len(moved)] / np.float64(n))
    # class 2's average: the wedge-compensated mean of the moved particles at their poses
    _, stats = hard_chunk(table, [(i, 1, rots[i], shifts[i]) for i in moved], K, halves)
    S, W = stats.dense()
    joint = compensated_mean(S[:, 1].sum(0), W[:, 1].sum(0), stats.level[:, 1].sum(0))
    np.testing.assert_allclose(new_state.averages[1], joint, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(new_state.averages[0], state.averages[0])
    halves_k = [compensated_mean(S[h, 1], W[h, 1], stats.level[h, 1]) for h in (0, 1)]
    np.testing.assert_allclose(new_state.fsc[1], fsc(*halves_k), rtol=1e-9)
    assert new_state.band >= cfg.tuning.min_band


@pytest.mark.parametrize("rare", [False, True])
def test_reseed_leaves_classes_above_the_share_alone(small_set, rare):
    """Half and half, and a rare class of one particle in 12 (8%): neither is re-seeded."""
    table, rots, shifts = small_set
    n = len(table)
    klass = (np.arange(n) == 5).astype(int) if rare else np.arange(n) % 2
    results = [ParticleResult(i, int(klass[i]), rots[i], shifts[i], 0.9, 3, 0.0) for i in range(n)]
    alpha = np.bincount(klass, minlength=2) / n
    state = ModelState(
        4, np.zeros((2, 24, 24, 13), complex), np.zeros((2, 13)), 5, alpha, np.ones(13), 2.0,
    )  # fmt: skip
    same_state, same_results = reseed(
        None, table, state, results, RunConfig(classes=2), split_halves(n, 0), 8
    )
    assert same_state is state and same_results == results
