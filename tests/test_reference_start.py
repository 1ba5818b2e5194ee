"""A run that starts from references: no random starts, no FA warm-up, poses in the
references' frame, classes from one reference by random subsets."""

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

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


def _turned(rotations, degrees, rng):
    """Each rotation turned by ``degrees`` about a random axis."""
    axes = rng.normal(size=(len(rotations), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    turns = Rotation.from_rotvec(axes * np.radians(degrees)).as_matrix()
    return turns @ rotations


def test_a_local_search_finds_the_poses_near_good_priors_and_stays_near_bad_ones(
    ribosome32, tmp_path
):
    rng = np.random.default_rng(7)
    rots, shifts, _ = make_dataset(tmp_path / "p", [ribosome32], 20, 0.5, seed=33, voxel=21.0)
    priors = _turned(rots, 8.0, rng)
    priors[0] = _turned(rots[:1], 90.0, rng)[0]  # one prior far off: its search stays there
    table = replace(from_mrc_files(tmp_path / "p"), prior_rotations=priors,
                    prior_shifts=np.round(shifts))  # fmt: skip
    cfg = RunConfig(iterations=2, seed=3, local_search_deg=20.0)
    result = run(table, tmp_path / "run", cfg)
    assert not (tmp_path / "run" / "starts").exists()
    err = rotation_distance(result.rotations, rots)
    assert np.all(err[1:] < 8.0), np.sort(err[1:])  # closer to the truth than the priors
    assert rotation_distance(result.rotations[:1], priors[:1])[0] <= 20.0 + 1e-6
    assert np.all(np.abs(result.shifts - np.round(shifts)).max(axis=1) <= 32 / 4 + 1e-6)


def test_a_local_search_without_priors_is_refused(ribosome32, tmp_path):
    make_dataset(tmp_path / "p", [ribosome32], 4, 0.5, seed=34, voxel=21.0)
    with pytest.raises(ValueError, match="--local-search needs poses in the input"):
        run(from_mrc_files(tmp_path / "p"), tmp_path / "r", RunConfig(local_search_deg=15.0))
