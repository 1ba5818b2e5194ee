"""The run's verdict, the particle mask and the whole-grid candidates, on planted answers."""

import json

import numpy as np
import pytest

from conftest import make_dataset, transform_reference
from faml.align import AlignSettings, grid_candidates, prepare_average
from faml.align.scan import rotation_grid
from faml.geometry.masks import soft_sphere
from faml.geometry.rotations import random_rotations, rotation_distance
from faml.geometry.symmetry import parse_symmetry
from faml.geometry.wedge import wedge_mask
from faml.io.mrc import write_volume
from faml.io.particles import from_mrc_files
from faml.ml.config import RunConfig, Tuning
from faml.ml.em import load_particle
from faml.ml.engine import run
from faml.ml.verdict import MIN_START_AGREEMENT, judge, start_agreement


def test_start_agreement_of_one_global_rotation_is_one_and_of_unrelated_poses_small():
    rng = np.random.default_rng(3)
    a = random_rotations(200, rng)
    g = random_rotations(1, rng)[0]
    assert start_agreement(a, a @ g) == 1.0
    # half the particles share the global rotation, the rest are random
    b = a @ g
    b[100:] = random_rotations(100, rng)
    assert 0.5 <= start_agreement(a, b) < 0.55
    assert start_agreement(a, random_rotations(200, rng)) < 0.05


def test_start_agreement_counts_symmetry_copies_as_the_same_pose():
    rng = np.random.default_rng(4)
    group = parse_symmetry("D7").rotations()
    a = random_rotations(80, rng)
    b = a @ random_rotations(1, rng)[0] @ group[rng.integers(len(group), size=80)]
    assert start_agreement(a, b) < 0.3
    assert start_agreement(a, b, group) == 1.0


def test_judge_names_each_failed_check_and_what_it_could_not_assess():
    rng = np.random.default_rng(5)
    a, b = random_rotations(50, rng), random_rotations(50, rng)
    v = judge(4, band_shells=4, pose_change_deg=120.0, rotations=a, second_rotations=b)
    assert not v.trusted and len(v.reasons) == 3
    assert v.evidence["start_agreement"] < MIN_START_AGREEMENT
    assert "cannot be trusted" in v.sentence()
    good = {"band_shells": 8, "pose_change_deg": 0.5}
    v = judge(4, **good, rotations=a, second_rotations=a @ random_rotations(1, rng)[0])
    assert v.trusted and v.reasons == () and v.evidence["start_agreement"] == 1.0
    # disagreeing starts: trusted only when the run out-fits the second by the margin
    fitted = {**good, "log_likelihood": -1000.0, "rotations": a, "second_rotations": b}
    v = judge(4, **fitted, second_loglik=-1000.0 - 4.0 * 50)
    assert v.trusted is False and "4.0 nats per particle" in v.reasons[0]
    v = judge(4, **fitted, second_loglik=-1000.0 - 6.0 * 50)
    assert v.trusted is True and v.evidence["second_start_worse"]
    assert v.evidence["loglik_margin_per_particle"] == pytest.approx(6.0)
    assert "worse optimum" in v.sentence()
    v = judge(4, **good)  # no second start: undetermined, not trusted
    assert v.trusted is None and v.not_assessed and v.evidence["start_agreement"] is None
    assert "undetermined" in v.sentence()


def test_load_particle_removes_the_background_and_masks(tmp_path):
    box = 24
    vol = np.full((box,) * 3, 5.0, np.float32)
    vol[10:14, 10:14, 10:14] += 3.0  # a planted blob at the centre
    write_volume(tmp_path / "p_000.mrc", vol, 10.0)
    table = from_mrc_files(tmp_path)
    raw, w = load_particle(table, 0, None)
    np.testing.assert_array_equal(raw, vol)
    masked, w2 = load_particle(table, 0, 0.45)
    np.testing.assert_array_equal(w, w2)
    mask = soft_sphere(box, 0.45 * box - 3.0, edge=3.0)
    assert np.all(masked[mask == 0] == 0.0)  # outside the sphere: nothing
    assert masked[box // 2, box // 2, box // 2] == pytest.approx(3.0)  # blob kept, level gone
    assert np.abs(masked[mask == 1]).max() == pytest.approx(3.0)


def test_grid_candidates_find_a_planted_pose(ribosome32):
    box = 32
    truth = rotation_grid(15.0)[1234]
    particle = transform_reference(ribosome32, truth, np.array([2.0, -2.0, 0.0]))
    weight = np.ones((box, box, box // 2 + 1), np.float32)
    settings = AlignSettings(box=box, band_limit=8, scan_step_deg=15.0, scan_max_shift=4.0)
    prepared = prepare_average(ribosome32, settings)
    rotations, shifts, scores = grid_candidates(particle, weight, prepared, 50)
    assert rotations.shape == (50, 3, 3) and shifts.shape == (50, 3)
    assert np.all(np.diff(scores) <= 1e-6)  # best first
    assert rotation_distance(rotations[0], truth) < 1.0
    np.testing.assert_allclose(shifts[0], [2.0, -2.0, 0.0], atol=1e-6)


@pytest.fixture(scope="module")
def easy_and_noise(tmp_path_factory, ribosome32):
    root = tmp_path_factory.mktemp("verdict")
    make_dataset(root / "easy", [ribosome32], 24, 1.0, seed=21, voxel=21.0)
    # the same wedge over pure noise: nothing to find
    rng = np.random.default_rng(22)
    wedge = wedge_mask(32, (-60.0, 60.0))
    (root / "noise").mkdir()
    for i in range(24):
        noise = rng.standard_normal((32,) * 3)
        noise = np.fft.irfftn(np.fft.rfftn(noise) * wedge, s=noise.shape, axes=(0, 1, 2))
        write_volume(root / "noise" / f"particle_{i:04d}.mrc", noise.astype(np.float32), 21.0)
    return root


def test_a_run_on_pure_noise_is_not_trusted_and_one_on_clear_data_is(easy_and_noise, tmp_path):
    cfg = RunConfig(
        iterations=4, seed=1, tuning=Tuning(starts=3, start_iterations=2, fa_iterations=2)
    )
    verdicts = {}
    for name in ("easy", "noise"):
        out = tmp_path / name
        result = run(from_mrc_files(easy_and_noise / name), out, cfg)
        info = json.loads((out / "run.json").read_text())
        assert info["verdict"] == result.verdict.to_dict()
        verdicts[name] = result.verdict
    assert verdicts["easy"].trusted is True, verdicts["easy"].reasons
    assert verdicts["easy"].evidence["start_agreement"] > 0.5
    assert verdicts["noise"].trusted is False
    assert verdicts["noise"].evidence["start_agreement"] < MIN_START_AGREEMENT


def test_the_verification_resumes_to_the_same_verdict(easy_and_noise, tmp_path):
    table = from_mrc_files(easy_and_noise / "easy")
    cfg = RunConfig(
        iterations=4, seed=3, tuning=Tuning(starts=2, start_iterations=2, fa_iterations=2)
    )
    whole = run(table, tmp_path / "whole", cfg)
    out = tmp_path / "cut"
    run(table, out, cfg)
    verify = out / "verify" / "iterations"
    assert sorted(p.name for p in verify.iterdir()) == ["003", "004"]
    (verify / "004" / "manifest.json").unlink()  # as if killed during its last iteration
    resumed = run(table, out, cfg, resume=True)
    assert resumed.verdict == whole.verdict
    np.testing.assert_array_equal(resumed.maps, whole.maps)


def test_start_agreement_per_class_pair_with_permuted_labels():
    rng = np.random.default_rng(6)
    a = random_rotations(90, rng)
    classes_a = np.repeat([0, 1, 2], 30)
    g = random_rotations(3, rng)  # each class's map differs by its own rotation
    b = np.einsum("nij,njk->nik", a, g[classes_a])
    classes_b = (classes_a + 1) % 3  # the labels permuted
    assert start_agreement(a, b) < 0.4  # one rotation for all: a third at most
    assert start_agreement(a, b, classes_a=classes_a, classes_b=classes_b) == 1.0


def test_particle_mask_options_give_the_radius_of_the_particle_diameter():
    from argparse import Namespace
    from types import SimpleNamespace

    from faml.cli import _particle_mask_radius

    table = SimpleNamespace(box=32, voxel_size=10.0)
    off = Namespace(particle_mask=False, particle_diameter=None)
    assert _particle_mask_radius(off, table) is None
    default = Namespace(particle_mask=True, particle_diameter=None)
    assert _particle_mask_radius(default, table) == RunConfig.mask_radius
    # a 180 A particle at 10 A per voxel: flat to 9 voxels, the 3-voxel edge outside it
    sized = Namespace(particle_mask=True, particle_diameter=180.0)
    assert _particle_mask_radius(sized, table) == pytest.approx((9.0 + 3.0) / 32)


def test_a_runner_up_that_fits_much_better_is_kept(monkeypatch, easy_and_noise, tmp_path):
    """When the verification out-fits the run by the margin, its result is the run's."""
    import faml.ml.engine as engine

    table = from_mrc_files(easy_and_noise / "easy")
    cfg = RunConfig(
        iterations=4, seed=3, tuning=Tuning(starts=2, start_iterations=2, fa_iterations=2)
    )
    real = engine._verification

    def better(job, out, history, final, resume):
        state, results, loglik = real(job, out, history, final, resume)
        return state, results, loglik + 1e4 * len(table)  # as if it fitted far better

    monkeypatch.setattr(engine, "_verification", better)
    result = run(table, tmp_path / "run", cfg)
    entry = result.history[-1]
    assert entry.kept_runner_up is True
    assert entry.log_likelihood - entry.log_likelihood_chosen_start > 5.0 * len(table)
    assert result.verdict.trusted is True  # the two starts agree here: no margin needed
    with np.load(tmp_path / "run" / "verify" / "iterations" / "004" / "particles.npz") as z:
        np.testing.assert_array_equal(result.rotations, z["rotations"])  # the runner-up's
