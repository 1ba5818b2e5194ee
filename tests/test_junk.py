"""Junk classes (``--junk``): the iterations refine the targets only, the screen after the
last one moves the picks whose correlation with the target is of a second, lower population
to the junk classes; picks of another protein gather there while the target's particles
stay in the target class."""

from dataclasses import replace

import numpy as np
import pytest

from conftest import make_dataset, polnet_map
from faml.io.particles import from_mrc_files
from faml.ml.config import RunConfig
from faml.ml.engine import run
from faml.ml.junk import junk_indices, screen_junk, target_band
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


def _picks(tmp_path, iterations: int, fa_iterations: int):
    """24 particles of 1BXN and 12 of 3CF3 (a third picked by mistake), SNR 0.5, and a run
    of one target class and one junk class: ``(table, true classes, result, config)``."""
    structures = [polnet_map("1bxn", 24)] * 2 + [polnet_map("3cf3", 24)]
    _, _, classes = make_dataset(tmp_path / "p", structures, 12, 0.5, seed=3)
    table = from_mrc_files(tmp_path / "p")
    config = RunConfig(classes=2, junk_classes=1, seed=2, iterations=iterations).tuned(
        starts=1, fa_iterations=fa_iterations, verify=False
    )
    return table, classes, run(table, tmp_path / "run", config), config


def test_another_protein_gathers_in_the_junk_class(tmp_path):
    """At least 80% of the 3CF3 picks end in the junk class and at least 90% of the 1BXN
    particles in the target class. Through the iterations the junk class takes no pick (the
    target's average is refined as without it); the screen after the last one fills it,
    and ``run.json`` says on what evidence."""
    import json

    _, classes, result, _ = _picks(tmp_path, 5, 2)
    target = classes < 2
    assert np.mean(result.classes[~target] == 1) >= 0.8
    assert np.mean(result.classes[target] == 0) >= 0.9
    assert all(r.alpha[1] == 0.0 for r in result.history[1:])
    screen = json.loads((tmp_path / "run" / "run.json").read_text())["junk_screen"]
    assert screen["applied"] and screen["separation"] >= 2.0 and screen["p_value"] < 0.1
    assert screen["moved"] == int(np.sum(result.classes == 1))


def test_the_screen_moves_the_low_population_out_of_the_target_class(tmp_path):
    """Planted correlations with the target: 24 1BXN particles near 0.30 and 12 3CF3 picks
    near 0.10, all in the target class. The screen finds two separated populations, moves
    the 12 picks (and no target particle) to the junk class and rebuilds the target average
    from the 24 and the junk average from the 12; one planted population (all near 0.30)
    moves nothing and keeps the state."""
    import json

    from faml.geometry.masks import soft_sphere
    from faml.ml.em import ParticleResult
    from faml.ml.tasks import split_halves
    from faml.parallel import SerialExecutor

    table, classes, result, config = _picks(tmp_path, 1, 1)
    rng = np.random.default_rng(5)
    other = classes == 2
    fits = np.where(other, 0.10, 0.30) + 0.02 * rng.standard_normal(len(table))
    results = [
        ParticleResult(i, 0, result.rotations[i], result.shifts[i], 1.0, 1, 0.0, float(f))
        for i, f in enumerate(fits)
    ]
    halves = split_halves(len(table), config.seed)
    mask = soft_sphere(table.box, 0.4 * table.box - 3.0, edge=3.0)
    start = replace(result.state, alpha=np.array([1.0, 0.0]))
    state, screened, found = screen_junk(SerialExecutor(), table, start, results, config,
                                         halves, 8, mask)  # fmt: skip
    moved = np.array([r.klass for r in screened]) == 1
    assert found.applied and found.moved == 12 and found.separation >= 2.0
    assert np.array_equal(moved, other)
    assert state.alpha == pytest.approx([24 / 36, 12 / 36])
    assert not np.allclose(state.averages[0], start.averages[0])
    assert np.any(state.averages[1] != 0)
    assert "moved to junk class(es) 2" in found.reason

    same = [replace(r, target_fit=0.30 + 0.02 * rng.standard_normal()) for r in results]
    kept_state, kept, found = screen_junk(SerialExecutor(), table, start, same, config,
                                          halves, 8, mask)  # fmt: skip
    assert not found.applied and found.moved == 0 and kept_state is start
    assert all(r.klass == 0 for r in kept)
    assert "one population" in found.reason

    few = [replace(r, target_fit=np.nan) if r.index >= 20 else r for r in results]
    _, _, found = screen_junk(SerialExecutor(), table, start, few, config, halves, 8, mask)
    assert not found.applied and "20 particles have a measured correlation" in found.reason
    assert found.to_dict()["separation"] is None  # run.json stays strict JSON
    json.dumps(found.to_dict(), allow_nan=False)
