"""A run that starts from references: no random starts, no FA warm-up, poses in the
references' frame, classes from one reference by random subsets."""

import json

import numpy as np
import pytest

from conftest import make_dataset, polnet_map
from faml.evaluate.maps import lowpass
from faml.geometry.masks import default_mask
from faml.geometry.rotations import rotation_distance
from faml.io.particles import from_mrc_files
from faml.ml.config import RunConfig, Tuning
from faml.ml.em import random_class
from faml.ml.engine import run
from faml.ml.phase import phase_of, random_starts

BOX, VOXEL = 24, 10.0


@pytest.fixture(scope="module")
def two_structures(tmp_path_factory):
    structures = [polnet_map("1bxn", BOX), polnet_map("3cf3", BOX)]
    folder = tmp_path_factory.mktemp("refstart") / "particles"
    rots, shifts, classes = make_dataset(folder, structures, 12, 0.5, seed=31, voxel=VOXEL)
    refs = np.stack([lowpass(s, 60.0, VOXEL) * default_mask(BOX) for s in structures])
    return from_mrc_files(folder), refs.astype(np.float32), rots, classes


def test_the_phase_of_a_reference_start():
    cfg = RunConfig(classes=2, references=1, symmetry="C2", tuning=Tuning(fa_iterations=6))
    first, second = phase_of(cfg, 1), phase_of(cfg, 2)
    assert first.method == "faml" and first.random_classes and not second.random_classes
    assert first.symmetrize and not first.to_symmetry_frame  # the references are in its frame
    assert random_starts(cfg) == 1
    assert not phase_of(RunConfig(classes=2, references=2), 1).random_classes
    with pytest.raises(ValueError, match="2 references for --classes 3"):
        RunConfig(classes=3, references=2)


def test_from_two_references_the_classes_keep_their_references(two_structures, tmp_path):
    table, refs, _, classes = two_structures
    cfg = RunConfig(classes=2, iterations=2, seed=1, references=2)
    result = run(table, tmp_path / "run", cfg, references=refs)
    assert not (tmp_path / "run" / "starts").exists()
    entries = json.loads((tmp_path / "run" / "run.json").read_text())["iterations"]
    assert entries[0]["band_shells"] == round(BOX * VOXEL / 60.0)  # trusted to 60 A
    assert entries[1]["log_likelihood"] is not None  # FAML from the first iteration
    assert np.mean(result.classes == classes) >= 0.95


def test_from_a_reference_the_poses_are_in_its_frame(ribosome32, tmp_path):
    """An asymmetric structure: every pose is the true one, not one up to a global turn."""
    rots, _, _ = make_dataset(tmp_path / "p", [ribosome32], 16, 0.5, seed=32, voxel=21.0)
    ref = (lowpass(ribosome32, 60.0, 21.0) * default_mask(32)).astype(np.float32)
    cfg = RunConfig(iterations=2, seed=2, references=1)
    result = run(from_mrc_files(tmp_path / "p"), tmp_path / "run", cfg, references=ref[None])
    err = rotation_distance(result.rotations, rots)
    assert np.all(err < 10.0), np.sort(err)


def test_one_reference_for_two_classes_starts_from_random_subsets(two_structures, tmp_path):
    table, refs, _, _ = two_structures
    cfg = RunConfig(classes=2, iterations=1, seed=4, references=1)
    run(table, tmp_path / "run", cfg, references=refs[:1])
    with np.load(tmp_path / "run" / "iterations" / "001" / "particles.npz") as z:
        drawn = [random_class(4, i, 2) for i in range(len(table))]
        np.testing.assert_array_equal(z["classes"], drawn)
    assert 0 < np.mean(drawn) < 1


def test_references_of_the_wrong_shape_are_refused(two_structures, tmp_path):
    table, refs, _, _ = two_structures
    with pytest.raises(ValueError, match="starts from references"):
        run(table, tmp_path / "run", RunConfig(references=1), references=refs[:, :20, :20, :20])
