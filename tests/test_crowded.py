"""The crowded mode: subtomograms cut from simulated crowded tomograms (faml.simulate.crowded)."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import scipy.fft

from conftest import shared_path, transform_reference
from faml.cli import main
from faml.evaluate import masked_correlation, oracle_average, score_map
from faml.geometry.masks import soft_sphere
from faml.geometry.wedge import wedge_mask
from faml.io.star import read_particles_star
from faml.simulate import (
    CrowdedSettings,
    SimulationSettings,
    density_from_model,
    pseudo_proteins,
    read_truth,
    simulate_crowded,
)
from faml.simulate.crowded import structure_radius

VOXEL = 10.0
BOX = 20


@pytest.fixture(scope="module")
def hsp70() -> np.ndarray:
    """1S3X (Hsp70 ATPase domain) at 10 A, 20^3, 20 A resolution."""
    return density_from_model(shared_path("atomic", "1s3x.pdb"), VOXEL, BOX, resolution=20.0)


def _settings(**kw) -> SimulationSettings:
    base = {"voxel_size": VOXEL, "snr": 0.5, "tilt_step": 3.0}
    base.update(kw)
    return SimulationSettings(**base)


def _particles(folder, n: int) -> np.ndarray:
    return np.stack([mrcfile.read(folder / f"particles/particle_{i:06d}.mrc") for i in range(n)])


def _radius(n: int) -> np.ndarray:
    return np.sqrt(np.sum((np.indices((n,) * 3) - n // 2) ** 2, axis=0))


def test_noise_free_particle_is_the_posed_truth_times_its_weight(tmp_path, hsp70):
    crowd = CrowdedSettings(pick_error=1.5)
    truth = simulate_crowded(
        [hsp70], ["1s3x"], 8, tmp_path, _settings(components="signal"), crowd, seed=2
    )
    back = read_truth(tmp_path)
    table = read_particles_star(tmp_path / "particles.star")
    meta = back.metadata["crowded"]
    assert back.metadata["mode"] == "crowded" and len(meta["tomograms"]) >= 1
    # the shift is the true centre minus the pick, which carries the picking error
    centres, picks = np.array(meta["true_centres_voxels"]), np.array(meta["picks_voxels"])
    np.testing.assert_allclose(back.shifts, centres - picks, atol=1e-9)
    np.testing.assert_allclose(back.shifts, truth.shifts, atol=1e-9)
    assert 0.8 < np.sqrt(np.mean(back.shifts**2)) < 2.5  # rounding + 1.5 voxels s.d.
    assert table.tomo_names is not None and table.tomo_names[0] == "tomogram_001"
    mask = soft_sphere(BOX, structure_radius(hsp70), edge=1.0)  # the target's sphere
    wedge = wedge_mask(BOX, (-60.0, 60.0), cutoff_radius=BOX / 2)
    scores = []
    for i, particle in enumerate(_particles(tmp_path, 8)):
        weight = table.wedge(i)
        assert weight.shape == (BOX, BOX, BOX // 2 + 1)
        assert weight.min() >= 0.0 and weight.max() <= 1.0 and np.all(weight[wedge == 0] == 0)
        posed = transform_reference(back.maps[0], back.rotations[i], back.shifts[i])
        expected = scipy.fft.irfftn(scipy.fft.rfftn(posed) * weight, s=posed.shape)
        scores.append(masked_correlation(particle, expected, mask))
        # a wrong shift (the pick error left out) matches worse
        unshifted = transform_reference(back.maps[0], back.rotations[i], np.zeros(3))
        if np.linalg.norm(back.shifts[i]) > 1.5:
            worse = scipy.fft.irfftn(scipy.fft.rfftn(unshifted) * weight, s=posed.shape)
            assert masked_correlation(particle, worse, mask) < scores[-1]
    # neighbours' tails and streaks reach into the sphere, more in some boxes than others
    assert np.median(scores) > 0.95 and min(scores) > 0.8


def test_neighbours_put_density_outside_the_central_sphere(tmp_path, hsp70):
    r = _radius(BOX)
    outer, inner = r > 0.45 * BOX, r < 0.3 * BOX

    def ratio(folder, crowd) -> float:
        simulate_crowded(
            [hsp70], ["1s3x"], 6, folder, _settings(components="signal"), crowd, seed=4
        )
        parts = np.abs(_particles(folder, 6))
        return float(np.median(parts[:, outer].mean(1) / parts[:, inner].mean(1)))

    alone = ratio(tmp_path / "alone", CrowdedSettings(tomograms=6, crowding=0.0))
    crowded = ratio(tmp_path / "crowded", CrowdedSettings(crowding=0.3))
    assert crowded > 5.0 * alone  # measured 0.04 alone, about 0.8 crowded


def test_oracle_average_of_crowded_particles_matches_the_truth(tmp_path, hsp70):
    simulate_crowded([hsp70], ["1s3x"], 30, tmp_path, _settings(snr=0.5), seed=5)
    back = read_truth(tmp_path)
    table = read_particles_star(tmp_path / "particles.star")
    oracle = oracle_average(table, back.rotations, back.shifts, back.classes)
    assert masked_correlation(oracle.maps[0], back.maps[0]) > 0.88  # measured 0.908
    # unfiltered: the FSC filter's band depends on the half maps' FSC, which the CTF
    # correction of one tomogram's shared CTF zeros lowers at 15 particles a half (the
    # filtered oracle reached 38 A; 28 A before the CTF correction, with 0.885 correlation)
    raw = oracle_average(table, back.rotations, back.shifts, back.classes, filtered=False)
    right = score_map(raw.maps[0], back.maps[0], VOXEL)
    assert right.resolution_05 < 30.0  # measured 26.7 A (Nyquist 20 A, structure at 20 A)
    # the same particles at shuffled rotations: a blob (this small structure is globular)
    rng = np.random.default_rng(0)
    shuffled = back.rotations[rng.permutation(30)]
    wrong = oracle_average(table, shuffled, back.shifts, back.classes, filtered=False)
    assert masked_correlation(wrong.maps[0], back.maps[0]) < right.correlation - 0.05
    assert score_map(wrong.maps[0], back.maps[0], VOXEL).resolution_05 > right.resolution_05 + 5


def test_snr_is_met_per_tomogram_from_signal_and_noise_runs(tmp_path, hsp70):
    parts = {}
    for part in ("signal", "noise"):
        simulate_crowded(
            [hsp70], ["1s3x"], 6, tmp_path / part, _settings(snr=0.1, components=part),
            CrowdedSettings(tomograms=2), seed=6,
        )  # fmt: skip
        parts[part] = _particles(tmp_path / part, 6)
    meta = read_truth(tmp_path / "noise").metadata
    tomo = np.array(meta["crowded"]["tomogram_of_particle"])
    for t in (1, 2):
        s, e = parts["signal"][tomo == t], parts["noise"][tomo == t]
        ratio = sum(v.var(dtype=np.float64) for v in s) / sum(v.var(dtype=np.float64) for v in e)
        assert ratio == pytest.approx(0.1, rel=1e-3)
    np.testing.assert_allclose(
        [v.var() for v in parts["signal"]], meta["signal_variance"], rtol=1e-4
    )


def test_same_seed_same_bits_any_workers(tmp_path, hsp70):
    for name, seed, workers in (("a", 3, 1), ("b", 3, 2), ("c", 4, 1)):
        simulate_crowded(
            [hsp70], ["1s3x"], 6, tmp_path / name, _settings(defocus_jitter_um=0.3),
            CrowdedSettings(tomograms=2, dose_per_tilt=2.0), seed=seed, workers=workers,
        )  # fmt: skip
    a, b, c = (_particles(tmp_path / x, 6) for x in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for t in (1, 2):
        name = f"weights/weight_tomogram_{t:03d}.mrc"
        np.testing.assert_array_equal(
            mrcfile.read(tmp_path / "a" / name), mrcfile.read(tmp_path / "b" / name)
        )
    ta, tb = (json.loads((tmp_path / x / "truth/truth.json").read_text()) for x in "ab")
    assert ta["crowded"]["picks_voxels"] == tb["crowded"]["picks_voxels"]
    assert ta["shifts_voxels"] == tb["shifts_voxels"]


def test_exposure_lowers_the_weight_at_high_frequency(tmp_path, hsp70):
    weights = {}
    for dose in (0.0, 4.0):
        folder = tmp_path / str(dose)
        simulate_crowded(
            [hsp70], ["1s3x"], 2, folder, _settings(ctf=False, mtf=False),
            CrowdedSettings(tomograms=1, crowding=0.0, dose_per_tilt=dose), seed=1,
        )  # fmt: skip
        weights[dose] = mrcfile.read(folder / "weights/weight_tomogram_001.mrc")
    wedge = wedge_mask(BOX, (-60.0, 60.0), cutoff_radius=BOX / 2)
    inside = wedge > 0
    # no CTF, no MTF, no dose: the weight is the wedge (interpolation aside)
    assert np.mean(np.abs(weights[0.0][inside] - 1.0)) < 0.02
    k = np.sqrt(
        np.fft.fftfreq(BOX)[:, None, None] ** 2
        + np.fft.fftfreq(BOX)[None, :, None] ** 2
        + np.fft.rfftfreq(BOX)[None, None, :] ** 2
    )
    high, low = inside & (k > 0.35), inside & (k < 0.1)
    assert weights[4.0][high].mean() < 0.8 * weights[0.0][high].mean()
    assert weights[4.0][low].mean() > 0.95 * weights[0.0][low].mean()


def test_pseudo_proteins_fit_their_boxes_and_differ_in_size():
    blobs = pseudo_proteins(32)
    sizes = [float((b > 0.5).sum()) for b in blobs]
    assert len(blobs) == 4 and sizes == sorted(sizes) and sizes[-1] > 4 * sizes[0]
    for b in blobs:
        n = b.shape[0]
        assert n <= 32 and b.max() == pytest.approx(1.0)
        assert np.all(b[0] == 0) and np.all(b[-1] == 0)  # nothing on the faces


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--crowded", "--crowding", "0.5"], "crowding must be in [0, 0.35]"),
        (["--crowded", "--tomograms", "0"], "tomograms must be a positive integer"),
        (["--crowded", "--pick-error", "-1"], "pick_error must be in [0, 10]"),
        (["--tomograms", "2"], "--tomograms needs --crowded"),
        (["--crowded", "--mode", "fast"], "does not take --mode fast"),
    ],
)
def test_bad_crowded_option_is_a_one_line_error(tmp_path, capsys, extra, message):
    model = shared_path("atomic", "1s3x.pdb")
    rc = main(["simulate", "--structure", str(model), "--n", "2", "--box", "20",
               "--voxel-size", "10", "--snr", "1", "--out", str(tmp_path / "s"),
               *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert rc != 0
    lines = [line for line in err.splitlines() if line.startswith("faml: error:")]
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "s" / "particles.star").exists()


def test_crowded_from_the_command_line(tmp_path, capsys):
    model = shared_path("atomic", "1s3x.pdb")
    out = tmp_path / "sim"
    rc = main(["simulate", "--crowded", "--structure", str(model), "--n", "5", "--box", "20",
               "--voxel-size", "10", "--snr", "0.2", "--tilt-step", "3", "--tomograms", "1",
               "--pick-error", "0.5", "--write-tomograms", "--seed", "1",
               "--out", str(out)])  # fmt: skip
    assert rc == 0 and "5 particles" in capsys.readouterr().out
    table = read_particles_star(out / "particles.star")
    assert len(table) == 5 and table.box == BOX
    tomogram = mrcfile.read(out / "tomograms" / "tomogram_001.mrc")
    assert tomogram.shape == (40, 90, 90)
    meta = read_truth(out).metadata["crowded"]
    assert meta["tomograms"][0]["distractors"] > 20  # the default crowd around 5 targets
