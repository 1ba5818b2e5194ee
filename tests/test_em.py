"""The EM step itself: with the candidates held fixed it is a (generalised) EM step."""

import numpy as np
import pytest
import scipy.fft
from scipy.spatial.transform import Rotation

from conftest import make_dataset, polnet_map
from faml.geometry.rotations import random_rotations
from faml.io.particles import from_mrc_files
from faml.ml.config import RunConfig, Tuning
from faml.ml.em import StepContext, process_particle
from faml.ml.fourier import shell_index
from faml.ml.mstep import m_step
from faml.ml.phase import phase_of
from faml.ml.stats import reference_points

BAND_E = 10


@pytest.fixture(scope="module")
def two_class_set(tmp_path_factory):
    structures = [polnet_map("1bxn"), polnet_map("3cf3")]
    folder = tmp_path_factory.mktemp("em") / "particles"
    rots, shifts, classes = make_dataset(folder, structures, 6, 0.05, seed=21)
    return from_mrc_files(folder), structures, rots, shifts, classes


def fixed_candidates(rots, shifts, rng):
    """Per particle and class: the true pose, two poses near it and three random ones."""
    out = {}
    for i, (r, t) in enumerate(zip(rots, shifts, strict=True)):
        per_class = []
        for _ in range(2):
            near = random_rotations(2, rng)
            # rotations of about 8% of a random one's angle: near the truth
            small = Rotation.from_rotvec(Rotation.from_matrix(near).as_rotvec() * 0.08).as_matrix()
            cand_r = np.concatenate([r[None], small @ r, random_rotations(3, rng)])
            cand_t = np.concatenate(
                [t[None], t + rng.normal(0.0, 0.7, (2, 3)), rng.uniform(-3, 3, (3, 3))]
            )
            nu = rng.dirichlet(np.ones(len(cand_r)))
            per_class.append((cand_r, cand_t, nu))
        out[i] = per_class
    return out


def em_step(table, candidates, averages, alpha, sigma2, xi, config):
    """One E-step (at the given parameters) and M-step: the log-likelihood and new parameters."""
    ctx = StepContext(
        config=config,
        phase=phase_of(config, 1),
        box=table.box,
        log_alpha=np.log(alpha),
        sigma2=sigma2,
        xi=xi,
        align=(),
        references=reference_points(averages, BAND_E),
        band_e=BAND_E,
    )
    stats = sum(
        (process_particle(ctx, table, i, i % 2, candidates)[1] for i in range(1, len(table))),
        start=process_particle(ctx, table, 0, 0, candidates)[1],
    )
    m = m_step(stats, averages, config.method, sigma2, len(table), config.tuning.average_update)
    return stats.loglik, m


@pytest.mark.parametrize("likelihood", ["plain", "scaled"])
@pytest.mark.parametrize("update", ["paper", "compensated"])
def test_fixed_candidate_em_step_never_lowers_the_likelihood(two_class_set, update, likelihood):
    table, structures, rots, shifts, _ = two_class_set
    rng = np.random.default_rng(5)
    candidates = fixed_candidates(rots, shifts, rng)
    box = table.box
    # A poor start: the true maps, low-passed and noisy, swapped in strength.
    low = (shell_index(box) <= 4).astype(np.float64)
    averages = np.stack(
        [
            scipy.fft.rfftn(s + rng.normal(0.0, 0.5, s.shape)) * low * f
            for s, f in zip(structures, (0.4, 1.5), strict=True)
        ]
    )
    alpha = np.array([0.2, 0.8])
    sigma2 = np.full(box // 2 + 1, 1e3)
    xi = 6.0
    config = RunConfig(
        classes=2,
        tuning=Tuning(
            min_responsibility=0.0, likelihood=likelihood, average_update=update, fa_iterations=0
        ),
    )
    history = []
    for _ in range(6):
        loglik, m = em_step(table, candidates, averages, alpha, sigma2, xi, config)
        history.append(loglik)
        averages, alpha, sigma2, xi = m.averages, m.alpha, m.sigma2, m.xi
        assert abs(alpha.sum() - 1.0) < 1e-12
    steps = np.diff(history)
    assert np.all(steps >= -1e-9 * np.abs(history[:-1])), (history, steps)
    assert history[-1] - history[0] > 1e3, history  # and it does climb


def test_neighbour_rings_lie_at_multiples_of_the_step():
    from faml.geometry.rotations import rotation_distance
    from faml.ml.em import neighbour_step_deg, with_neighbours

    rng = np.random.default_rng(4)
    rots = random_rotations(3, rng)
    shifts = rng.normal(size=(3, 3))
    r, t = with_neighbours(rots, shifts, count=2, step_deg=5.0, rings=2)
    assert r.shape == (3 + 2 * 12, 3, 3) and t.shape == (3 + 2 * 12, 3)
    np.testing.assert_array_equal(r[:3], rots)
    extra = r[3:].reshape(2, 2, 6, 3, 3)  # ring, candidate, +-x/y/z
    for ring in (0, 1):
        for c in (0, 1):
            angles = rotation_distance(extra[ring, c], np.repeat(rots[c][None], 6, axis=0))
            np.testing.assert_allclose(angles, 5.0 * (ring + 1), atol=1e-6)
    np.testing.assert_array_equal(t[3:].reshape(2, 2, 6, 3)[1, 1], np.repeat(shifts[1:2], 6, 0))
    assert neighbour_step_deg(RunConfig(tuning=Tuning(local_step_deg=None)), 8) == pytest.approx(
        57.29578 / 8
    )
    assert neighbour_step_deg(RunConfig(tuning=Tuning(local_step_deg=None)), 2) == 15.0
    assert neighbour_step_deg(RunConfig(), 8) == 5.0
