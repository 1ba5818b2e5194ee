"""faml.evaluate: planted transforms, poses and classes, found again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from conftest import polnet_map
from faml.evaluate import (
    align_map,
    cyclic_operators,
    evaluate_map,
    evaluate_run,
    fsc_resolution,
    match_classes,
    operators_score,
    oracle_average,
    pose_errors,
    principal_axis,
    score_map,
    symmetry_score,
    transform_operators,
)
from faml.geometry.euler import matrix_to_euler
from faml.geometry.rotations import random_rotations, rotation_about_axis, rotation_distance
from faml.geometry.transform import transform_volume
from faml.io.mrc import write_volume
from faml.io.star import read_particles_star
from faml.simulate.fast import simulate_fast

VOXEL = 10.0
BOX = 24


# --------------------------------------------------------------------------------------------
# Helpers: simulation and run directories written by hand
# --------------------------------------------------------------------------------------------


def write_poses_star(path, names, rotations, shifts, classes, voxel=VOXEL, max_p=None):
    """A RELION 3.1 particles STAR file with poses (origins = -shift * voxel, Angstrom)."""
    n = len(names)
    angles = matrix_to_euler(np.asarray(rotations).reshape(n, 3, 3))
    shifts = np.asarray(shifts, dtype=np.float64).reshape(n, 3)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnImagePixelSize": [voxel],
            "rlnImageSize": [BOX],
            "rlnImageDimensionality": [3],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": list(names),
            "rlnAngleRot": angles[:, 0],
            "rlnAngleTilt": angles[:, 1],
            "rlnAnglePsi": angles[:, 2],
            "rlnOriginXAngst": -shifts[:, 0] * voxel,
            "rlnOriginYAngst": -shifts[:, 1] * voxel,
            "rlnOriginZAngst": -shifts[:, 2] * voxel,
            "rlnClassNumber": np.asarray(classes, dtype=np.int64),
            "rlnMaxValueProbDistribution": np.ones(n) if max_p is None else max_p,
            "rlnOpticsGroup": np.ones(n, dtype=np.int64),
        }
    )
    starfile.write({"optics": optics, "particles": particles}, path, float_format="%.8f")


def make_simulation(folder: Path, structures, n_each, snr, seed):
    """A simulation directory: particles/, particles.star, truth/{class_NNN.mrc,
    particles.star, truth.json}. Returns the truth (rotations, shifts, 0-based classes) and
    the image names."""
    truth = simulate_fast(
        structures, n_each, folder / "particles", snr=snr, voxel_size=VOXEL, seed=seed
    )
    names = [f"particles/{Path(p).name}" for p in truth.paths]
    optics = pd.DataFrame(
        {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
         "rlnImagePixelSize": [VOXEL], "rlnImageSize": [BOX], "rlnImageDimensionality": [3]}
    )  # fmt: skip
    starfile.write(
        {"optics": optics, "particles": pd.DataFrame({"rlnImageName": names, "rlnOpticsGroup": 1})},
        folder / "particles.star",
    )
    (folder / "truth").mkdir()
    for k, s in enumerate(structures):
        write_volume(folder / "truth" / f"class_{k + 1:03d}.mrc", s, VOXEL)
    # relative to truth/: the evaluation must match particles by base name
    write_poses_star(
        folder / "truth" / "particles.star",
        [f"../{n}" for n in names],
        truth.rotations,
        truth.shifts,
        truth.classes + 1,
    )
    info = {
        "voxel_size": VOXEL,
        "box": BOX,
        "classes": (truth.classes + 1).tolist(),
        "angles_relion_deg": matrix_to_euler(truth.rotations).tolist(),
        "shifts_voxels": truth.shifts.tolist(),
        "tilt_range": [-60.0, 60.0],
    }
    (folder / "truth" / "truth.json").write_text(json.dumps(info))
    return truth, names


def make_run(folder: Path, maps, names, rotations, shifts, classes, resolution=None):
    """A run directory: class_NNN.mrc (1-based), particles.star, run.json."""
    folder.mkdir(parents=True)
    for k, m in enumerate(maps):
        write_volume(folder / f"class_{k + 1:03d}.mrc", np.asarray(m, np.float32), VOXEL)
    write_poses_star(folder / "particles.star", names, rotations, shifts, classes)
    if resolution is not None:
        (folder / "run.json").write_text(
            json.dumps({"iterations": [{"resolution_angstrom": resolution}]})
        )


@pytest.fixture(scope="module")
def structures():
    return [polnet_map("1bxn", BOX), polnet_map("3cf3", BOX)]


@pytest.fixture(scope="module")
def simulation(tmp_path_factory, structures):
    folder = tmp_path_factory.mktemp("sim")
    truth, names = make_simulation(folder, structures, n_each=8, snr=0.5, seed=11)
    return folder, truth, names


# --------------------------------------------------------------------------------------------
# Map against truth
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("box", [32, 40])
def test_score_map_recovers_a_planted_transform(box):
    """Acceptance: 1U6G (PolNet, 10 A) turned and shifted by a known transform is found
    within 1 degree and 0.3 voxel, with correlation > 0.99."""
    truth = polnet_map("1u6g", box)
    rng = np.random.default_rng(box)
    for _ in range(2):
        g = random_rotations(1, rng)[0]
        s = rng.uniform(-2.0, 2.0, 3)
        volume = transform_volume(truth, g, s, order=3)
        score = score_map(volume, truth, VOXEL)
        assert rotation_distance(score.global_rotation, g) < 0.1
        assert np.linalg.norm(score.global_shift - s) < 0.05
        assert score.correlation > 0.999
        # a noise-free copy: the FSC stays above 0.5 up to Nyquist
        assert score.resolution_05 == pytest.approx(2 * VOXEL)


def test_align_map_with_noise_and_lowpass():
    """Noise and a low-pass do not move the optimum beyond the acceptance limits."""
    truth = polnet_map("1u6g", 32)
    rng = np.random.default_rng(5)
    g = rotation_about_axis(np.array([0.2, -0.9, 0.4]), 133.0)
    s = np.array([1.4, -0.6, 0.35])
    volume = transform_volume(truth, g, s, order=3)
    volume = volume + 0.5 * rng.standard_normal(volume.shape).astype(np.float32)
    al = align_map(volume, truth, lowpass_angstrom=30.0, voxel_size=VOXEL)
    assert rotation_distance(al.rotation, g) < 1.0
    assert np.linalg.norm(al.shift - s) < 0.3
    score = score_map(volume, truth, VOXEL, lowpass_angstrom=30.0, alignment=al)
    assert score.correlation_lowpass > score.correlation > 0.8


def test_fsc_resolution_interpolates():
    curve = np.array([1.0, 0.9, 0.7, 0.3, 0.1, 0.0])  # box 10: shells 0..5
    assert fsc_resolution(curve, 10, 2.0, 0.5) == pytest.approx(20.0 / 2.5)
    assert fsc_resolution(curve, 10, 2.0, 0.05) == pytest.approx(20.0 / 4.5)
    assert fsc_resolution(np.ones(6), 10, 2.0, 0.5) == pytest.approx(4.0)  # Nyquist
    assert fsc_resolution(np.zeros(6), 10, 2.0, 0.5) == pytest.approx(20.0)  # the box


def test_evaluate_map_files(tmp_path):
    truth = polnet_map("1u6g", 32)
    g = rotation_about_axis("y", 70.0) @ rotation_about_axis("z", 25.0)
    s = np.array([-1.2, 0.8, 0.5])
    write_volume(tmp_path / "map.mrc", transform_volume(truth, g, s, order=3), VOXEL)
    write_volume(tmp_path / "truth.mrc", truth, VOXEL)
    ev = evaluate_map(tmp_path / "map.mrc", tmp_path / "truth.mrc", lowpass_angstrom=40.0)
    assert rotation_distance(ev.score.global_rotation, g) < 1.0
    assert np.linalg.norm(ev.score.global_shift - s) < 0.3
    assert ev.score.correlation > 0.99
    json.dumps(ev.to_dict(), allow_nan=False)
    assert "FSC 0.5" in ev.to_table()


# --------------------------------------------------------------------------------------------
# Pose errors, classes, symmetry
# --------------------------------------------------------------------------------------------


def test_pose_errors_remove_the_global_transform_and_symmetry():
    rng = np.random.default_rng(3)
    n = 6
    r_true = random_rotations(n, rng)
    t_true = rng.uniform(-2, 2, (n, 3))
    g = random_rotations(1, rng)[0]
    s = np.array([0.7, -1.1, 0.3])
    # the map is T_(G, s) truth: a pose against the map is (R G^T, t - R G^T s)
    r_hat = r_true @ g.T
    t_hat = t_true - np.einsum("nij,j->ni", r_hat, s)
    err = pose_errors(r_hat, t_hat, r_true, t_true, g, s)
    np.testing.assert_allclose(err.rotation_deg, 0.0, atol=1e-5)
    np.testing.assert_allclose(err.shift_voxels, 0.0, atol=1e-9)
    # C5 about an axis off the box centre: the copy j = 2 of each true pose has error 0
    rots, shifts = cyclic_operators(5, np.array([1.0, 1.0, 0.0]), np.array([13.0, 11.0, 12.5]), 24)
    r_sym = r_true @ rots[2]
    t_sym = t_true + np.einsum("nij,j->ni", r_true, shifts[2])
    plain = pose_errors(r_sym, t_sym, r_true, t_true)
    np.testing.assert_allclose(plain.rotation_deg, 144.0, atol=1e-6)
    sym = pose_errors(r_sym, t_sym, r_true, t_true, symmetry_rotations=rots, symmetry_shifts=shifts)
    np.testing.assert_allclose(sym.rotation_deg, 0.0, atol=1e-5)
    np.testing.assert_allclose(sym.shift_voxels, 0.0, atol=1e-9)
    assert np.all(sym.symmetry_copy == 2)


def test_f1_on_a_planted_confusion():
    true = np.repeat([0, 1, 2], 10)
    pred = np.array([2] * 8 + [0] * 2 + [0] * 9 + [1] + [1] * 10)
    c = match_classes(pred, true)
    np.testing.assert_array_equal(c.matching, [1, 2, 0])
    expected = [2 * 8 / 18, 2 * 9 / 21, 2 * 10 / 21]
    np.testing.assert_allclose(c.f1, expected)
    assert c.mean_f1 == pytest.approx(np.mean(expected))
    assert c.accuracy == pytest.approx(27 / 30)
    # a fourth, empty predicted class is left unmatched; a missing one gives F1 = 0
    assert match_classes(pred, true, n_predicted=4).matching[3] == -1
    two = match_classes(np.zeros(30, dtype=int), true, n_predicted=1, n_true=3)
    assert np.sum(two.f1 == 0) == 2


def test_symmetry_score_of_a_c7_volume():
    base = polnet_map("1u6g", 32)
    rots = np.stack([rotation_about_axis("z", 360.0 * j / 7) for j in range(7)])
    c7 = transform_volume(base, rots, order=3).mean(axis=0)
    # turned and shifted: the axis must be found from the inertia tensor and centre of mass
    q = rotation_about_axis(np.array([1.0, 0.5, 0.2]), 40.0)
    t = np.array([1.0, -0.5, 0.7])
    c7 = transform_volume(c7, q, t, order=3)
    # the operators about z through the centre, moved into the turned volume's frame
    assert operators_score(c7, *transform_operators(rots, None, q, t)) > 0.98
    assert operators_score(c7, rots) < 0.9
    axis, _ = principal_axis(c7)
    assert abs(axis @ q[:, 2]) > np.cos(np.radians(2.0))
    assert symmetry_score(c7, 7).score > 0.98
    # the 20S proteasome (D7) is C7 about its principal axis; the ribosome has no symmetry.
    # (Smooth, globular maps correlate well with any turned copy: an asymmetric map scores
    # 0.45-0.95 at 10 A in 32^3, so the score is read against the same map's other orders.)
    assert symmetry_score(polnet_map("3j9i", 32), 7).score > 0.98
    assert symmetry_score(polnet_map("4v4r", 32), 7).score < 0.7


# --------------------------------------------------------------------------------------------
# Whole runs against a simulation directory
# --------------------------------------------------------------------------------------------


def test_run_written_from_the_truth_scores_perfectly(simulation, structures, tmp_path):
    """The truth maps as class maps (numbering swapped) and the true poses: F1 = 1, all
    errors 0, and the oracle is scored beside it."""
    folder, truth, names = simulation
    swapped = 1 - truth.classes  # class 1 of the run is true class 2
    run = tmp_path / "run"
    make_run(run, structures[::-1], names, truth.rotations, truth.shifts, swapped + 1, 40.0)
    ev = evaluate_run(run, folder, oracle=True)
    np.testing.assert_array_equal(ev.classification.matching, [1, 0])
    assert ev.classification.mean_f1 == 1.0
    assert np.all(ev.class_correct)
    assert np.max(ev.rotation_error_deg) < 0.05
    assert np.max(ev.shift_error_voxels) < 0.01
    assert ev.within(15.0) == 1.0
    assert [c.truth_class for c in ev.classes] == [2, 1]
    assert all(c.map.correlation > 0.999 for c in ev.classes)
    assert ev.lowpass_angstrom == 40.0
    assert ev.oracle is not None and [c.particles for c in ev.oracle] == [8, 8]
    assert all(0.6 < c.map.correlation < c.map.correlation_lowpass for c in ev.oracle)
    d = ev.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["summary"]["within_15deg"] == 1.0
    assert "oracle 2" in ev.to_table()


def test_run_errors_are_the_planted_global_rotation(simulation, structures, tmp_path):
    """Every pose composed with Q (R Q): each rotation error is the angle of Q; with Q as a
    symmetry operator the errors vanish."""
    folder, truth, names = simulation
    q = rotation_about_axis(np.array([0.3, 0.4, -0.2]), 23.0)
    run = tmp_path / "run"
    make_run(run, structures, names, truth.rotations @ q, truth.shifts, truth.classes + 1)
    ev = evaluate_run(run, folder, oracle=False, symmetry=q[None])
    np.testing.assert_allclose(ev.rotation_error_deg, 0.0, atol=0.05)
    plain = evaluate_run(run, folder, oracle=False)
    np.testing.assert_allclose(plain.rotation_error_deg, 23.0, atol=0.05)
    assert plain.within(15.0) == 0.0 and plain.within(30.0) == 1.0
    np.testing.assert_allclose(plain.shift_error_voxels, 0.0, atol=0.01)
    assert plain.lowpass_angstrom is None and plain.oracle is None


def test_run_maps_in_another_frame(simulation, structures, tmp_path):
    """Class maps T_(G, s) truth with the poses estimated against them: the global transform
    is removed, errors ~ 0 (this pins the shift part of the composition)."""
    folder, truth, names = simulation
    g = rotation_about_axis(np.array([-0.5, 0.2, 0.8]), 110.0)
    s = np.array([1.3, -0.8, 0.6])
    maps = [transform_volume(m, g, s, order=3) for m in structures]
    r_hat = truth.rotations @ g.T
    t_hat = truth.shifts - np.einsum("nij,j->ni", r_hat, s)
    run = tmp_path / "run"
    make_run(run, maps, names, r_hat, t_hat, truth.classes + 1)
    ev = evaluate_run(run, folder, oracle=False)
    for c in ev.classes:
        assert rotation_distance(c.map.global_rotation, g) < 0.1
    assert np.max(ev.rotation_error_deg) < 0.1
    assert np.max(ev.shift_error_voxels) < 0.02


def test_oracle_beats_a_random_pose_average(simulation, structures):
    folder, truth, names = simulation
    table = read_particles_star(folder / "particles.star")
    k = truth.classes
    good = oracle_average(table, truth.rotations, truth.shifts, k, 2)
    rng = np.random.default_rng(0)
    bad = oracle_average(table, random_rotations(len(k), rng), np.zeros((len(k), 3)), k, 2)
    for j in range(2):
        sg = score_map(good.maps[j], structures[j], VOXEL)
        sb = score_map(bad.maps[j], structures[j], VOXEL)
        assert sg.correlation > sb.correlation + 0.1
        assert sg.resolution_05 < sb.resolution_05


def test_run_with_an_extra_class_and_missing_particles(simulation, structures, tmp_path):
    """Three run classes against two true ones: the extra class is unmatched and scored
    against its majority class; particles absent from the run are counted, not scored."""
    folder, truth, names = simulation
    keep = np.arange(2, len(names))
    pred = truth.classes[keep] + 1
    first = np.flatnonzero(pred == 1)[:2]
    pred[first] = 3  # two particles of true class 1 in an extra class 3
    run = tmp_path / "run"
    maps = [structures[0], structures[1], structures[0]]
    make_run(run, maps, [names[i] for i in keep], truth.rotations[keep], truth.shifts[keep], pred)
    ev = evaluate_run(run, folder, oracle=False)
    assert ev.missing == 2 and len(ev.names) == len(names) - 2
    np.testing.assert_array_equal(ev.classification.matching, [0, 1, -1])
    extra = ev.classes[2]
    assert not extra.matched and extra.truth_class == 1 and extra.particles == 2
    assert extra.within_15deg == 0.0  # poses right, class not matched
    assert extra.median_rotation_error_deg < 0.05
    assert ev.within(15.0) == pytest.approx(1 - 2 / len(keep))
    assert "*" in ev.to_table()
