"""Junk classes (``--junk``): closed during the FA warm-up, opened with the worst-fitting
picks, never re-seeded; picks of another protein gather in them while the target's
particles stay in the target class."""

from dataclasses import replace

import numpy as np
import pytest

from conftest import make_dataset, polnet_map
from faml.io.particles import from_mrc_files
from faml.ml.config import RunConfig
from faml.ml.engine import run
from faml.ml.junk import JUNK_SEED_SHARE, junk_indices, target_band
from faml.ml.state import ModelState


def test_the_band_comes_from_the_target_classes():
    """K = 3 with one junk class whose FSC claims every shell: the band is the targets'
    (their 0.143 shell is 4), the averages untouched; no junk class, the state itself."""
    rng = np.random.default_rng(0)
    box, K = 16, 3
    shape = (K, box, box, box // 2 + 1)
    spectra = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    curves = np.zeros((K, box // 2 + 1))
    curves[:, :5] = 1.0
    curves[2, :] = 1.0  # the junk class's FSC would claim every shell
    state = ModelState(3, spectra, curves, 7, np.full(K, 1 / 3), np.ones(box // 2 + 1), 2.0)
    config = RunConfig(classes=3, junk_classes=1)
    banded = target_band(state, config, box)
    assert list(junk_indices(config)) == [2]
    assert banded.band == config.tuning.min_band == 4
    assert banded.averages is state.averages
    assert target_band(state, RunConfig(classes=3), box) is state


def test_junk_classes_are_checked():
    with pytest.raises(ValueError, match="at least one class must be a target class"):
        RunConfig(classes=2, junk_classes=2)
    with pytest.raises(ValueError, match="2 references for --classes 3"):
        RunConfig(classes=4, junk_classes=1, references=2)
    RunConfig(classes=3, junk_classes=1, references=2)  # one per target class: accepted


def test_another_protein_gathers_in_the_junk_class(tmp_path):
    """24 particles of 1BXN and 12 of 3CF3 (a third picked by mistake), SNR 0.5: with one
    target class and one junk class, at least 80% of the 3CF3 picks end in the junk class
    and at least 90% of the 1BXN particles in the target class."""
    structures = [polnet_map("1bxn", 24)] * 2 + [polnet_map("3cf3", 24)]
    _, _, classes = make_dataset(tmp_path / "p", structures, 12, 0.5, seed=3)
    config = RunConfig(classes=2, junk_classes=1, seed=2, iterations=5).tuned(
        starts=1, fa_iterations=2, verify=False
    )
    result = run(from_mrc_files(tmp_path / "p"), tmp_path / "run", config)
    target = classes < 2
    assert np.mean(result.classes[~target] == 1) >= 0.8
    assert np.mean(result.classes[target] == 0) >= 0.9


def test_the_junk_class_opens_after_the_warm_up_with_the_worst_fits(tmp_path):
    """Through the FA warm-up (2 iterations) the junk class takes no pick; its last M-step
    deals the third of the picks that fit the target worst to it, most of them the other
    protein's (SNR 0.5: the target's own fit it far better)."""
    structures = [polnet_map("1bxn", 24)] * 2 + [polnet_map("3cf3", 24)]
    _, _, classes = make_dataset(tmp_path / "p", structures, 12, 0.5, seed=3)
    table = from_mrc_files(tmp_path / "p")
    config = RunConfig(classes=2, junk_classes=1, seed=2, iterations=1).tuned(
        starts=1, fa_iterations=2, verify=False
    )
    closed = run(table, tmp_path / "one", config)
    assert np.all(closed.classes == 0) and closed.state.alpha[1] == 0.0
    opened = run(table, tmp_path / "two", replace(config, iterations=2))
    in_junk = opened.classes == 1
    assert in_junk.sum() == round(JUNK_SEED_SHARE * len(table))
    assert opened.state.alpha[1] == pytest.approx(in_junk.mean())
    assert np.mean(classes[in_junk] == 2) >= 0.75


def test_the_screen_moves_the_low_population_out_of_the_target_class(tmp_path):
    """Planted correlations with the target: 24 1BXN particles near 0.30 (4 of them in the
    junk class) and 12 3CF3 picks near 0.10 in the target class. The screen finds two
    populations (BIC), moves the 12 picks to the junk class and the 4 back, and rebuilds the
    target average from the 24; one planted population (all near 0.30) moves nothing and
    keeps the state."""
    from faml.ml.junk import screen_junk
    from faml.ml.tasks import split_halves
    from faml.parallel import SerialExecutor

    structures = [polnet_map("1bxn", 24)] * 2 + [polnet_map("3cf3", 24)]
    _, _, classes = make_dataset(tmp_path / "p", structures, 12, 0.5, seed=3)
    table = from_mrc_files(tmp_path / "p")
    config = RunConfig(classes=2, junk_classes=1, seed=2, iterations=1).tuned(
        starts=1, fa_iterations=1, verify=False
    )
    result = run(table, tmp_path / "run", config)
    rng = np.random.default_rng(5)
    other = classes == 2
    fits = np.where(other, 0.10, 0.30) + 0.02 * rng.standard_normal(len(table))
    from faml.ml.em import ParticleResult

    # 4 of the 1BXN particles start in the junk class, their best target fit known
    stray = np.flatnonzero(~other)[:4]
    results = [
        ParticleResult(
            i,
            int(i in stray),
            result.rotations[i],
            result.shifts[i],
            1.0,
            1,
            0.0,
            float(f),
            0,
            result.rotations[i],
            result.shifts[i],
        )  # fmt: skip
        for i, f in enumerate(fits)
    ]
    halves = split_halves(len(table), config.seed)
    state, screened, found = screen_junk(SerialExecutor(), table, result.state, results,
                                         config, halves, 8)  # fmt: skip
    moved = np.array([r.klass for r in screened]) == 1
    assert found.applied and found.moved == 12 and found.returned == 4
    assert found.bic[1] < found.bic[0]
    assert np.array_equal(moved, other)
    assert state.alpha == pytest.approx([24 / 36, 12 / 36])
    assert not np.allclose(state.averages[0], result.state.averages[0])
    assert "moved to junk class 2" in found.reason

    same = [replace(r, klass=0, target_fit=0.30 + 0.02 * rng.standard_normal()) for r in results]
    kept_state, kept, found = screen_junk(SerialExecutor(), table, result.state, same, config,
                                          halves, 8)  # fmt: skip
    assert not found.applied and found.moved == 0 and kept_state is result.state
    assert all(r.klass == 0 for r in kept)
    assert "one population" in found.reason
