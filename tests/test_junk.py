"""Junk classes (``--junk``): held at the lowest band, never re-seeded; picks of another
protein gather in them while the target's particles stay in the target class."""

import numpy as np
import pytest

from conftest import make_dataset, polnet_map
from faml.io.particles import from_mrc_files
from faml.ml.config import RunConfig
from faml.ml.engine import run
from faml.ml.fourier import shell_index
from faml.ml.junk import hold_junk, junk_indices
from faml.ml.state import ModelState


def test_hold_junk_cuts_the_junk_classes_only():
    """K = 3 with one junk class: its joint and half spectra are zero beyond min_band, the
    target classes untouched, the band the targets' (not the junk's higher FSC)."""
    rng = np.random.default_rng(0)
    box, K = 16, 3
    shape = (K, box, box, box // 2 + 1)
    spectra = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    halves = np.stack([spectra, spectra * 0.5])
    curves = np.zeros((K, box // 2 + 1))
    curves[:, :5] = 1.0
    curves[2, :] = 1.0  # the junk class's FSC would claim every shell
    state = ModelState(3, spectra, curves, 7, np.full(K, 1 / 3), np.ones(box // 2 + 1), 2.0,
                       halves)  # fmt: skip
    config = RunConfig(classes=3, junk_classes=1)
    held = hold_junk(state, config, box)
    beyond = shell_index(box) > config.tuning.min_band
    assert list(junk_indices(config)) == [2]
    assert np.all(held.averages[2][beyond] == 0) and np.all(
        held.half_averages[:, 2][:, beyond] == 0
    )
    np.testing.assert_array_equal(held.averages[2][~beyond], spectra[2][~beyond])
    np.testing.assert_array_equal(held.averages[:2], spectra[:2])
    assert held.band == config.tuning.min_band  # the targets' 0.143 shell is 4, min_band 4
    assert hold_junk(state, RunConfig(classes=3), box) is state


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
