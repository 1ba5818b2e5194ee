"""The simulator: structures on the grid, the realistic tilt-series mode, the simulation folder."""

from __future__ import annotations

import gzip
import math

import mrcfile
import numpy as np
import pytest
import scipy.fft
import starfile

from conftest import shared_path, transform_reference
from faml.geometry.axes import box_center
from faml.geometry.euler import euler_to_matrix, origin_angst_to_shift
from faml.geometry.rotations import random_rotations, rotation_about_axis
from faml.geometry.wedge import read_weight, wedge_mask
from faml.io.star import read_particles_star
from faml.simulate import (
    SimulationSettings,
    ctf,
    density_from_map,
    density_from_model,
    detector_mtf,
    electron_wavelength,
    load_structure,
    prepare_structure,
    read_truth,
    simulate,
    simulate_fast,
    simulate_particle,
)

VOXEL = 10.0


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def centre_of_mass(vol: np.ndarray) -> np.ndarray:
    grid = np.indices(vol.shape).reshape(3, -1)
    return grid @ vol.ravel() / vol.sum()


def wedge_filter(vol: np.ndarray, tilt_range, transfer=None) -> np.ndarray:
    w = wedge_mask(vol.shape[0], tilt_range, cutoff_radius=vol.shape[0] / 2)
    if transfer is not None:
        w = w * transfer
    return scipy.fft.irfftn(scipy.fft.rfftn(vol) * w, s=vol.shape)


def radial_frequency(n: int) -> np.ndarray:
    """``|k|`` in cycles/voxel on the rfftn grid of an ``n``^3 volume."""
    k, kx = np.fft.fftfreq(n), np.fft.rfftfreq(n)
    return np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)


@pytest.fixture(scope="session")
def hsp70() -> np.ndarray:
    """1S3X (Hsp70 ATPase domain) at 10 A, 20^3, 20 A resolution: a small asymmetric test
    structure."""
    return density_from_model(shared_path("atomic", "1s3x.pdb"), VOXEL, 20, resolution=20.0)


@pytest.fixture(scope="session")
def hsp70_prepared(hsp70):
    return prepare_structure(hsp70)


# --------------------------------------------------------------------------------------------
# Structures on the grid
# --------------------------------------------------------------------------------------------


def test_model_density_is_centred_and_matches_the_polnet_map():
    model = density_from_model(shared_path("atomic", "1s3x.pdb"), VOXEL, 32, resolution=10.0)
    assert model.shape == (32, 32, 32) and model.dtype == np.float32
    assert np.all(np.abs(centre_of_mass(model) - box_center(32)) < 0.5)
    polnet = density_from_map(shared_path("maps", "polnet_10A", "1s3x_10A.mrc"), VOXEL, 32)
    assert np.all(np.abs(centre_of_mass(np.clip(polnet, 0, None)) - 16) < 0.5)
    # The same model through two programs (gemmi electron form factors here, EMAN2's
    # e2pdb2mrc for PolNet), both centred on their centre of mass: same density and axes.
    assert corr(model, polnet) > 0.9


def test_map_resampling_keeps_the_structure():
    fine = density_from_model(shared_path("atomic", "1s3x.pdb"), 20.0, 16, resolution=40.0)
    coarse = load_structure(
        shared_path("maps", "polnet_10A", "1s3x_10A.mrc"), 20.0, 16, resolution=40.0
    )
    assert np.all(np.abs(centre_of_mass(np.clip(coarse, 0, None)) - 8) < 0.5)
    assert corr(fine, coarse) > 0.9


def test_structure_that_does_not_fit_names_the_box_it_needs():
    with pytest.raises(ValueError, match=r"box of at least \d+ voxels"):
        density_from_model(shared_path("atomic", "1s3x.pdb"), VOXEL, 8)
    with pytest.raises(ValueError, match=r"box of at least \d+ voxels"):
        density_from_map(shared_path("maps", "polnet_10A", "4v7r_10A.mrc"), VOXEL, 16)
    with pytest.raises(ValueError, match="unknown structure format"):
        load_structure("structure.xyz", VOXEL, 16)


def test_mmcif_and_gzipped_mmcif_read_alike(tmp_path):
    source = shared_path("atomic", "3qm1_assembly1.cif")
    packed = tmp_path / "3qm1_assembly1.cif.gz"
    packed.write_bytes(gzip.compress(source.read_bytes()))
    vol = load_structure(source, 12.0, 16, resolution=24.0)
    assert np.all(np.isfinite(vol)) and vol.max() > 0
    assert np.all(np.abs(centre_of_mass(vol) - 8) < 0.5)
    np.testing.assert_array_equal(load_structure(packed, 12.0, 16, resolution=24.0), vol)


# --------------------------------------------------------------------------------------------
# Optics
# --------------------------------------------------------------------------------------------


def test_ctf_and_mtf_known_values():
    assert electron_wavelength(300.0) == pytest.approx(0.019687, abs=2e-6)
    assert electron_wavelength(200.0) == pytest.approx(0.025079, abs=2e-6)
    q = 0.07
    # RELION's sign: CTF(0) = +Q, first lobe positive.
    assert ctf(np.array(0.0), 3e4, amplitude_contrast=q) == pytest.approx(q)
    assert ctf(np.array(1 / 200.0), 3e4) > q
    # Without Cs, CTF = sin(pi lam df s^2 + asin Q): first zero at pi lam df s^2 = pi - asin Q.
    lam = electron_wavelength(300.0)
    s0 = math.sqrt((math.pi - math.asin(q)) / (math.pi * lam * 3e4))
    values = ctf(np.array([0.99 * s0, s0, 1.01 * s0]), 3e4, cs_mm=0.0, amplitude_contrast=q)
    assert values[0] > 0 > values[2] and abs(values[1]) < 1e-9
    assert detector_mtf(np.array([0.0, 1.0])) == pytest.approx([1.0, 2.0 / math.pi])


# --------------------------------------------------------------------------------------------
# The realistic mode, one particle at a time
# --------------------------------------------------------------------------------------------


def _settings(**kw) -> SimulationSettings:
    base = {"voxel_size": VOXEL, "snr": 0.1, "ctf": False, "mtf": False, "components": "signal"}
    base.update(kw)
    return SimulationSettings(**base)


POSE = (random_rotations(1, 11)[0], np.array([1.5, -0.7, 1.2]))


def test_reconstruction_matches_its_tilt_series(hsp70_prepared):
    settings = _settings(tilt_range=(-60.0, 60.0), tilt_step=2.0)
    p = simulate_particle(
        hsp70_prepared, *POSE, settings, np.random.default_rng(0), return_tilt_series=True
    )
    zero = int(np.argmin(np.abs(p.tilt_angles)))
    assert p.tilt_angles[zero] == 0.0 and p.tilt_series.shape == (61, 20, 20)
    # The beam projection of the reconstruction is the kz = 0 plane, which the 0 degree view
    # samples: it must reproduce that image.
    assert corr(p.volume.sum(axis=0), p.tilt_series[zero]) > 0.99


def test_tilt_images_follow_the_wedge_convention(hsp70, hsp70_prepared):
    """The image at tilt theta is the beam projection of the particle rotated by R_y(theta)
    (faml.geometry.wedge's convention), computed here in real space."""
    rot, shift = POSE
    settings = _settings(tilt_range=(-40.0, 40.0), tilt_step=40.0)
    p = simulate_particle(
        hsp70_prepared, rot, shift, settings, np.random.default_rng(0), return_tilt_series=True
    )
    assert list(p.tilt_angles) == [-40.0, 0.0, 40.0]
    for image, theta in zip(p.tilt_series, p.tilt_angles, strict=True):
        ry = rotation_about_axis("y", theta)
        direct = transform_reference(hsp70, ry @ rot, ry @ shift).sum(axis=0)
        assert corr(image, direct) > 0.99
        if theta != 0:
            ry = rotation_about_axis("y", -theta)
            mirrored = transform_reference(hsp70, ry @ rot, ry @ shift).sum(axis=0)
            assert corr(image, direct) > corr(image, mirrored) + 0.05


@pytest.mark.parametrize("tilt_range", [(-60.0, 60.0), (-50.0, 70.0)])
def test_noise_free_particle_is_the_posed_structure_in_the_wedge(hsp70, hsp70_prepared, tilt_range):
    """Same pose convention as the fast mode: T_(R,t) structure, times the wedge."""
    p = simulate_particle(
        hsp70_prepared, *POSE, _settings(tilt_range=tilt_range), np.random.default_rng(0)
    )
    expected = wedge_filter(transform_reference(hsp70, *POSE), tilt_range)
    assert corr(p.volume, expected) > 0.98
    if tilt_range[0] != -tilt_range[1]:  # the mirrored wedge fits worse
        mirrored = wedge_filter(transform_reference(hsp70, *POSE), (-70.0, 50.0))
        assert corr(p.volume, mirrored) < corr(p.volume, expected) - 0.03
    assert p.volume.std() == pytest.approx(expected.std(), rel=0.05)


def test_missing_wedge_lies_where_the_tilt_range_says(hsp70_prepared):
    settings = _settings(tilt_range=(-50.0, 70.0), tilt_step=2.0, components="noise")
    p = simulate_particle(hsp70_prepared, *POSE, settings, np.random.default_rng(3))
    energy = np.abs(scipy.fft.rfftn(p.volume)) ** 2
    energy[..., 1:] *= 2  # the rfft half stands for both signs of kx
    inside = radial_frequency(20) <= 0.5

    def missing_over_sampled(tilt_range):
        w = wedge_mask(20, tilt_range) * inside
        return (energy * (1 - w) * inside).sum() / (energy * w).sum()

    assert missing_over_sampled((-50.0, 70.0)) < 0.01
    # The mirrored range (-70, 50) misses what was sampled: the missing region is on the
    # right side.
    assert missing_over_sampled((-70.0, 50.0)) > 0.1
    # The weight is zero exactly where the wedge is missing, and the noise fills the wedge.
    w = wedge_mask(20, (-50.0, 70.0)) * inside
    assert np.all(p.weight[w == 0] == 0)
    assert np.mean(energy[w > 0] > 0) > 0.99
    assert np.mean(p.weight[w > 0] > 0.99) > 0.99  # no CTF, no MTF: the weight is the wedge


@pytest.mark.parametrize("form", ["signed", "flipped"])
def test_weight_is_the_ctf_on_the_wedge_and_particle_carries_the_ctf(hsp70, hsp70_prepared, form):
    settings = _settings(
        ctf=True, mtf=True, defocus_um=6.0, tilt_range=(-50.0, 70.0), ctf_form=form
    )
    p = simulate_particle(hsp70_prepared, *POSE, settings, np.random.default_rng(0))
    k = radial_frequency(20)
    transfer = ctf(k / VOXEL, 6e4) * detector_mtf(2 * k)
    w = wedge_mask(20, (-50.0, 70.0), cutoff_radius=10)
    assert p.weight.shape == (20, 20, 11) and p.weight.dtype == np.float32
    flip = form == "flipped"
    assert (0 if flip else -1) <= p.weight.min() and p.weight.max() <= 1
    if not flip:  # the signed CTF's second lobe
        assert p.weight.min() < -0.3
    carried = np.abs(transfer) if flip else transfer
    assert np.abs(p.weight - w * carried).mean() < 0.01
    expected = wedge_filter(transform_reference(hsp70, *POSE), (-50.0, 70.0), carried)
    assert corr(p.volume, expected) > 0.98
    # the other sign convention fits worse: at 6 um the CTF changes sign at 1/34 A^-1
    other = wedge_filter(transform_reference(hsp70, *POSE), (-50.0, 70.0), transfer if flip
                         else np.abs(transfer))  # fmt: skip
    assert corr(p.volume, other) < corr(p.volume, expected) - 0.02


def test_snr_is_met_on_the_final_subtomogram(hsp70_prepared):
    volumes = {}
    for part in ("signal", "noise", "both"):
        settings = _settings(ctf=True, mtf=True, snr=0.05, components=part)
        sim = simulate_particle(hsp70_prepared, *POSE, settings, np.random.default_rng(7))
        volumes[part] = sim.volume
    ratio = volumes["signal"].var() / volumes["noise"].var()
    assert ratio == pytest.approx(0.05, rel=0.1)
    # Reconstruction is linear: the particle is signal + noise, the same noise draw.
    np.testing.assert_allclose(
        volumes["both"], volumes["signal"] + volumes["noise"], atol=1e-5 * volumes["both"].std()
    )


# --------------------------------------------------------------------------------------------
# The simulation directory
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_structures(hsp70):
    other = load_structure(shared_path("maps", "polnet_10A", "3qm1_10A.mrc"), VOXEL, 20)
    return [hsp70, other]


def _read(path) -> np.ndarray:
    with mrcfile.open(path) as m:
        assert m.voxel_size.x == pytest.approx(VOXEL)
        return np.array(m.data)


def test_realistic_directory_reads_as_faml_input_with_weights(tmp_path, two_structures):
    calls = []
    settings = SimulationSettings(
        voxel_size=VOXEL, snr=0.1, tilt_range=(-50.0, 70.0), tilt_step=3.0,
        defocus_jitter_um=0.3,
    )  # fmt: skip
    truth = simulate(
        two_structures, ["1s3x", "3qm1"], 3, tmp_path, settings, seed=5,
        progress=lambda done, total: calls.append((done, total)),
    )  # fmt: skip
    assert calls[-1] == (6, 6) and all(b == 6 for _, b in calls)
    table = read_particles_star(tmp_path / "particles.star")
    assert len(table) == 6 and table.box == 20 and table.voxel_size == VOXEL
    assert table.optics["rlnVoltage"] == 300 and table.optics["rlnAmplitudeContrast"] == 0.07
    for i in range(6):
        assert table.paths[i] == str((tmp_path / f"particles/particle_{i:06d}.mrc").resolve())
        weight = _read(tmp_path / f"weights/weight_{i:06d}.mrc")
        assert weight.shape == (20, 20, 11)
        np.testing.assert_array_equal(table.wedge(i), weight)  # the weight comes through
        assert _read(table.paths[i]).shape == (20, 20, 20)
    star = starfile.read(tmp_path / "particles.star", always_dict=True)["particles"]
    assert not any(c.startswith(("rlnAngle", "rlnOrigin", "rlnClass")) for c in star.columns)
    assert star["rlnDefocusU"].std() > 0  # jittered, in Angstrom
    assert 1.5e4 < star["rlnDefocusU"].min() and star["rlnDefocusU"].max() < 4.5e4

    back = read_truth(tmp_path)
    assert back.maps.shape == (2, 20, 20, 20)
    np.testing.assert_array_equal(back.maps[1], two_structures[1])
    np.testing.assert_allclose(back.rotations, truth.rotations, atol=1e-9)
    np.testing.assert_allclose(back.shifts, truth.shifts)
    np.testing.assert_array_equal(back.classes, truth.classes)
    assert sorted(np.bincount(back.classes)) == [3, 3]
    assert back.metadata["mode"] == "realistic" and back.metadata["tilt_range"] == [-50, 70]

    # truth/particles.star: the same particles, poses in RELION's convention.
    rows = starfile.read(tmp_path / "truth" / "particles.star", always_dict=True)["particles"]
    assert list(rows["rlnImageName"]) == list(star["rlnImageName"])
    angles = rows[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    np.testing.assert_allclose(euler_to_matrix(angles), truth.rotations, atol=1e-5)
    origins = rows[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy()
    np.testing.assert_allclose(origin_angst_to_shift(origins, VOXEL), truth.shifts, atol=1e-6)
    np.testing.assert_array_equal(rows["rlnClassNumber"], truth.classes + 1)

    with pytest.raises(FileExistsError):
        simulate(two_structures, ["a", "b"], 1, tmp_path, settings)


def test_fast_mode_truth_reproduces_the_noise_free_particles(tmp_path, two_structures):
    settings = SimulationSettings(voxel_size=VOXEL, snr=0.1, components="signal")
    truth = simulate(two_structures, ["1s3x", "3qm1"], 2, tmp_path, settings, mode="fast", seed=2)
    back = read_truth(tmp_path)
    wedge = read_weight(tmp_path / "weights" / "wedge.mrc", 20)
    np.testing.assert_array_equal(wedge, wedge_mask(20, (-60.0, 60.0)))
    table = read_particles_star(tmp_path / "particles.star")
    for i in range(len(truth.classes)):
        posed = transform_reference(back.maps[back.classes[i]], back.rotations[i], back.shifts[i])
        expected = scipy.fft.irfftn(scipy.fft.rfftn(posed) * wedge, s=posed.shape)
        assert corr(_read(table.paths[i]), expected) > 0.99
        np.testing.assert_array_equal(table.wedge(i), wedge)
    # Same seed, same classes and poses as simulate_fast.
    old = simulate_fast(two_structures, 2, tmp_path / "old", snr=0.1, voxel_size=VOXEL, seed=2)
    np.testing.assert_array_equal(old.classes, truth.classes)
    np.testing.assert_allclose(old.rotations, truth.rotations)


def test_snr_in_the_directory_from_signal_only_and_noise_only_runs(tmp_path, two_structures):
    kept = wedge_mask(20, (-60.0, 60.0))
    wedge_share = (kept[..., 0].sum() + 2 * kept[..., 1:].sum()) / 20**3  # of white noise
    for mode in ("realistic", "fast"):
        parts, meta = {}, {}
        for part in ("signal", "noise"):
            folder = tmp_path / mode / part
            settings = SimulationSettings(voxel_size=VOXEL, snr=0.02, components=part)
            simulate(two_structures[:1], ["1s3x"], 3, folder, settings, mode=mode, seed=9)
            parts[part] = [_read(folder / f"particles/particle_{i:06d}.mrc") for i in range(3)]
            meta[part] = read_truth(folder).metadata
        assert meta["signal"]["noise_sigma"] == meta["noise"]["noise_sigma"]
        for i, (s, e) in enumerate(zip(parts["signal"], parts["noise"], strict=True)):
            sigma = meta["noise"]["noise_sigma"][i]
            signal_var = meta["noise"]["signal_variance"][i]
            if mode == "realistic":  # measured on the final subtomogram
                assert s.var() / e.var() == pytest.approx(0.02, rel=0.1)
                assert s.var() == pytest.approx(signal_var, rel=1e-3)
            else:  # the posed structure against the white noise added before the wedge
                assert signal_var / sigma**2 == pytest.approx(0.02, rel=1e-6)
                assert e.var() == pytest.approx(wedge_share * sigma**2, rel=0.1)


def test_preferred_orientation_rotates_about_y_only(tmp_path, hsp70):
    settings = SimulationSettings(voxel_size=VOXEL, snr=1.0, rotation_axis="y")
    truth = simulate([hsp70], ["1s3x"], 4, tmp_path, settings, mode="fast", seed=1)
    np.testing.assert_allclose(truth.rotations[:, :, 1], np.tile([0.0, 1.0, 0.0], (4, 1)))
    assert read_truth(tmp_path).metadata["rotation_axis"] == "y"


@pytest.mark.parametrize("mode", ["realistic", "fast"])
def test_workers_do_not_change_the_data(tmp_path, two_structures, mode):
    for workers in (1, 2):
        settings = SimulationSettings(voxel_size=VOXEL, snr=0.05, defocus_jitter_um=0.2)
        simulate(
            two_structures, ["1s3x", "3qm1"], 3, tmp_path / str(workers), settings, mode=mode,
            seed=4, workers=workers,
        )  # fmt: skip
    names = [f"particles/particle_{i:06d}.mrc" for i in range(6)]
    if mode == "realistic":
        names += [f"weights/weight_{i:06d}.mrc" for i in range(6)]
    for name in names:
        np.testing.assert_array_equal(_read(tmp_path / "1" / name), _read(tmp_path / "2" / name))
