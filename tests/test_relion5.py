"""RELION 5 particle sets: poses, round trip, optimisation sets, 2D tilt stacks, Dynamo."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.fft
import starfile
from scipy.spatial.transform import Rotation

from conftest import shared_path
from faml.geometry.euler import euler_to_matrix, matrix_to_euler
from faml.geometry.masks import soft_sphere
from faml.geometry.transform import transform_volume
from faml.io.dynamo import apply_dynamo_table, dynamo_to_matrix, read_dynamo_table
from faml.io.mrc import write_volume
from faml.io.particles import from_mrc_files
from faml.io.relion5 import stack_frame, star_poses, write_relion5_star
from faml.io.star import read_particles_star
from faml.io.tiltstacks import read_tomograms_star, reconstruct_particle

SUBTILTS = "subtomograms/tomodrgn_empiar10499_subtilts"
STEM = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12"


def _blob(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = np.zeros((n, n, n), dtype=np.float32)
    for _ in range(12):
        c = rng.uniform(n * 0.3, n * 0.7, 3)
        z, y, x = np.ogrid[:n, :n, :n]
        vol += np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / 4.0)
    return vol * soft_sphere(n, 0.4 * n, edge=2.0)


def _write_3d_set(tmp_path, n_part=4, groups=2):
    box = 16
    for i in range(n_part):
        write_volume(tmp_path / f"p{i}.mrc", _blob(box, i), 5.0)
    rng = np.random.default_rng(1)
    sub = rng.uniform([-180, 0, -180], [180, 180, 180], (n_part, 3))
    ang = rng.uniform([-180, 0, -180], [180, 180, 180], (n_part, 3))
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": list(range(1, groups + 1)),
            "rlnOpticsGroupName": [f"g{g}" for g in range(1, groups + 1)],
            "rlnTomoTiltSeriesPixelSize": [2.5] * groups,
            "rlnTomoSubtomogramBinning": [2.0] * groups,
            "rlnImagePixelSize": [5.0] * groups,
            "rlnImageSize": [box] * groups,
            "rlnImageDimensionality": [3] * groups,
            "rlnVoltage": [300.0] * groups,
        }
    )
    particles = pd.DataFrame(
        {
            "rlnTomoName": [f"TS_{i % 2}" for i in range(n_part)],
            "rlnImageName": [f"p{i}.mrc" for i in range(n_part)],
            "rlnOpticsGroup": [1 + i % groups for i in range(n_part)],
            "rlnCenteredCoordinateXAngst": rng.normal(0, 100, n_part),
            "rlnCenteredCoordinateYAngst": rng.normal(0, 100, n_part),
            "rlnCenteredCoordinateZAngst": rng.normal(0, 100, n_part),
            "rlnTomoSubtomogramRot": sub[:, 0],
            "rlnTomoSubtomogramTilt": sub[:, 1],
            "rlnTomoSubtomogramPsi": sub[:, 2],
            "rlnAngleRot": ang[:, 0],
            "rlnAngleTilt": ang[:, 1],
            "rlnAnglePsi": ang[:, 2],
            "rlnOriginXAngst": rng.normal(0, 5, n_part),
            "rlnOriginYAngst": rng.normal(0, 5, n_part),
            "rlnOriginZAngst": rng.normal(0, 5, n_part),
        }
    )
    path = tmp_path / "particles.star"
    starfile.write({"general": {"rlnTomoSubTomosAre2DStacks": 0}, "optics": optics,
                    "particles": particles}, path)  # fmt: skip
    (tmp_path / "opt.star").write_text(
        "data_\n\n_rlnTomoParticlesFile particles.star\n_rlnTomoTomogramsFile tomograms.star\n"
    )
    return path, sub, ang, particles


def test_relion5_pose_composition_planted(tmp_path):
    """star_poses composes A_sub @ A (RELION 5 ParticleSet::getMatrix3x3) and A_sub @ d."""
    path, sub, ang, particles = _write_3d_set(tmp_path)
    rot, shift = star_poses(path)
    np.testing.assert_allclose(rot, euler_to_matrix(ang), atol=1e-6)
    origins = particles[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy()
    np.testing.assert_allclose(shift, -origins / 5.0, atol=1e-6)
    rot_c, shift_c = star_poses(tmp_path / "opt.star", composed=True)
    a_sub = euler_to_matrix(sub)
    # a planted point: reference point r lands in the tomogram at A_sub (A r + d)
    r = np.array([1.0, -2.0, 0.5])
    expected = np.einsum("nij,nj->ni", a_sub, np.einsum("nij,j->ni", euler_to_matrix(ang), r)
                         + shift)  # fmt: skip
    np.testing.assert_allclose(np.einsum("nij,j->ni", rot_c, r) + shift_c, expected, atol=1e-6)


def test_relion5_round_trip(tmp_path):
    """Read a RELION 5 3D set (optimisation set), write faml's poses, read back: same poses."""
    path, sub, _, _ = _write_3d_set(tmp_path)
    table = read_particles_star(tmp_path / "opt.star")
    assert table.voxel_size == 5.0 and table.box == 16 and len(table) == 4
    assert table.optics["rlnOpticsGroup"] == (1, 2)
    rng = np.random.default_rng(3)
    rotations = Rotation.random(4, random_state=4).as_matrix()
    shifts = rng.normal(0, 2, (4, 3))
    out = tmp_path / "out" / "particles.star"
    out.parent.mkdir()
    write_relion5_star(out, table, rotations, shifts, np.array([1, 2, 1, 2]), np.ones(4))
    text = out.read_text()
    assert "# version 50001" in text and "data_general" in text
    blocks = starfile.read(out, always_dict=True)
    assert list(blocks["optics"]["rlnImageDimensionality"]) == [3, 3]
    assert list(blocks["particles"]["rlnOpticsGroup"]) == [1, 2, 1, 2]
    assert list(blocks["particles"]["rlnClassNumber"]) == [1, 2, 1, 2]
    np.testing.assert_allclose(blocks["particles"]["rlnTomoSubtomogramRot"], sub[:, 0], atol=1e-5)
    back_r, back_s = star_poses(out)
    np.testing.assert_allclose(back_r, rotations, atol=1e-6)
    np.testing.assert_allclose(back_s, shifts, atol=1e-6)
    # the tomogram frame: composed pose, zero subtomogram angles, same total transform
    out2 = tmp_path / "out" / "composed.star"
    write_relion5_star(out2, table, rotations, shifts, np.ones(4, int), frame="tomogram")
    comp_r, comp_s = star_poses(out2, composed=True)
    np.testing.assert_allclose(comp_r, euler_to_matrix(sub) @ rotations, atol=1e-6)
    np.testing.assert_allclose(
        comp_s, np.einsum("nij,nj->ni", euler_to_matrix(sub), shifts), atol=1e-6
    )
    # faml's own writer dispatches to the RELION 5 layout for RELION 5 tables
    from faml.io.star import write_particles_star

    out3 = tmp_path / "out" / "engine.star"
    write_particles_star(out3, table, rotations, shifts, np.ones(4, int), np.ones(4))
    assert "data_general" in out3.read_text()
    np.testing.assert_allclose(star_poses(out3)[0], rotations, atol=1e-6)


def _projection_basis(tilt_deg: float, axis_deg: float) -> np.ndarray:
    """A 3x3 projection rotation: tilt about an in-plane axis at ``axis_deg`` from Y."""
    return (
        Rotation.from_euler("z", axis_deg, degrees=True).as_matrix()
        @ Rotation.from_euler("y", tilt_deg, degrees=True).as_matrix()
        @ Rotation.from_euler("z", -axis_deg, degrees=True).as_matrix()
    ).T


def _mirror_z(vol: np.ndarray) -> np.ndarray:
    """``v(x, y, -z)`` about the centre voxel ``N // 2`` (even ``N``)."""
    return np.ascontiguousarray(np.roll(vol[::-1], 1, axis=0))


def test_tilt_stack_reconstruction_planted(tmp_path):
    """2D stacks projected as the real WarpTools data are reconstruct to the planted particle.

    The convention the EMPIAR-10499 tilt images obey (benchmarks/empiar10499_geometry.py):
    frame ``f`` sees ``P_f A F`` applied to the reference (``A`` the STAR file's pose,
    ``F = diag(1, 1, -1)``). faml's subtomogram must then be the reference at the pose
    ``stack_frame(A) = F A F`` that ``star_poses`` returns; without the mirror it is the
    reference's mirror image, which no rotation turns into it.
    """
    n = 24
    truth = _blob(n, 7)
    a_star = Rotation.from_euler("ZYZ", [30, 50, -20], degrees=True).as_matrix().T
    # the particle in the tomogram: the z-mirrored reference at the file's pose
    in_tomogram = transform_volume(_mirror_z(truth), a_star, np.zeros(3), order=3)
    pose, _ = stack_frame(a_star[None], np.zeros((1, 3)))
    particle = transform_volume(truth, pose[0], np.zeros(3), order=3)  # what faml must make
    tilts = np.arange(-60, 61, 3.0)
    mats = np.stack([_projection_basis(t, 10.0) for t in tilts])
    # projection along the beam of the particle seen in each frame (x_img = P x_tomo)
    images = np.stack([transform_volume(in_tomogram, p, np.zeros(3), order=3).sum(0) for p in mats])
    proj = [f"[{','.join(f'{v:.8f}' for v in row)},0]" for row in mats[:, 0]]
    frames = pd.DataFrame(
        {
            "rlnTomoProjX": proj,
            "rlnTomoProjY": [f"[{','.join(f'{v:.8f}' for v in r)},0]" for r in mats[:, 1]],
            "rlnTomoProjZ": [f"[{','.join(f'{v:.8f}' for v in r)},0]" for r in mats[:, 2]],
            "rlnTomoProjW": ["[0,0,0,1]"] * len(tilts),
            "rlnDefocusU": [20000.0] * len(tilts),
            "rlnDefocusV": [20000.0] * len(tilts),
            "rlnDefocusAngle": [0.0] * len(tilts),
            "rlnMicrographPreExposure": np.arange(len(tilts)) * 0.0,
        }
    )
    glob = pd.DataFrame(
        {
            "rlnTomoName": ["TS"],
            "rlnTomoTiltSeriesPixelSize": [10.0],
            "rlnTomoHand": [1.0],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.07],
        }
    )
    starfile.write({"global": glob, "TS": frames}, tmp_path / "tomograms.star")
    series = read_tomograms_star(tmp_path / "tomograms.star")["TS"]
    # CTF-premultiplied images: CTF^2 times the projection
    from faml.imaging.ctf import ctf

    k = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.rfftfreq(n), indexing="ij")) / 10.0
    c2 = ctf(k, 20000.0) ** 2
    images_ctf = scipy.fft.irfft2(scipy.fft.rfft2(images) * c2, s=(n, n)).astype(np.float32)
    vol, weight = reconstruct_particle(images_ctf, series, 10.0, premultiplied=True)
    assert weight.shape == (n, n, n // 2 + 1) and 0 <= weight.min() and weight.max() <= 1
    mask = soft_sphere(n, 0.45 * n, edge=2)

    def corr(u, v):
        a, b = (u - u.mean()) * mask, (v - v.mean()) * mask
        return float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))

    # the CTF-premultiplied pair: D = C * particle (C the CTF² weight), not CTF-corrected
    spectrum = scipy.fft.rfftn(particle)
    assert corr(vol, scipy.fft.irfftn(spectrum * weight, s=(n, n, n))) > 0.9
    # D / C where C is not tiny: the CTF-corrected particle (what X was before)
    seen = weight > 0.01
    corrected = np.where(seen, scipy.fft.rfftn(vol) / np.where(seen, weight, 1.0), 0.0)
    x = scipy.fft.irfftn(corrected, s=(n, n, n))
    expected = scipy.fft.irfftn(spectrum * seen, s=(n, n, n))
    assert corr(vol, expected) < corr(x, expected) - 0.1  # D itself is CTF²-filtered
    assert corr(x, expected) > 0.9, corr(x, expected)
    assert corr(x, _mirror_z(expected)) < corr(x, expected) - 0.2  # the wrong hand: far lower
    # a single visible frame fills one central plane only
    one = np.zeros(len(tilts), bool)
    one[len(tilts) // 2] = True
    _, w1 = reconstruct_particle(images_ctf, series, 10.0, visible=one)
    assert (w1 > 0).mean() < 0.15 and (weight > 0).mean() > 2 * (w1 > 0).mean()


def test_empiar10499_stacks(tmp_path):
    """The real WarpTools set: 40 particles, 37 tilts, 12 A, 32^3, visible frames honoured."""
    star = shared_path(SUBTILTS, f"{STEM}_optimisation_set.star")
    series = read_tomograms_star(shared_path(SUBTILTS, f"{STEM}_tomograms.star"))
    assert len(series) == 4 and all(len(s) == 37 for s in series.values())
    with pytest.raises(ValueError, match="2D tilt-stack"):
        read_particles_star(star)
    table = read_particles_star(star, cache_dir=tmp_path / "subtomograms")
    assert len(table) == 40 and table.box == 32 and table.voxel_size == 12.0
    assert table.names[0].endswith("Unt_083_12.00A_000001.mrcs")
    vol, w = table.load(0)
    assert vol.shape == (32, 32, 32) and w.shape == (32, 32, 17) and np.isfinite(vol).all()
    assert str(tmp_path) in table.paths[0]
    # Unt_083's frames 1, 6 and 36 are hidden: its weight is zero on their planes
    from faml.io.tiltstacks import _visible

    s = series["Unt_083.tomostar"]
    parts = starfile.read(shared_path(SUBTILTS, f"{STEM}.star"))["particles"]
    assert (~_visible(parts["rlnTomoVisibleFrames"].iloc[0], 37)).sum() == 3
    # the written STAR is a RELION 5 2D-stack set with the original stacks
    out = tmp_path / "p.star"
    write_relion5_star(out, table, np.tile(np.eye(3), (40, 1, 1)), np.zeros((40, 3)),
                       np.ones(40, int))  # fmt: skip
    blocks = starfile.read(out, always_dict=True)
    assert int(blocks["general"]["rlnTomoSubTomosAre2DStacks"]) == 1
    assert list(blocks["optics"]["rlnImageDimensionality"]) == [2] * 4
    assert (
        "rlnTomoVisibleFrames" in blocks["particles"] and "rlnCtfImage" not in blocks["particles"]
    )
    assert s.pixel_size == pytest.approx(1.667)
    # the set's own refined poses average faml's subtomograms into the set's reconstruction
    # in its frame and hand (0.69; the unmirrored geometry gave its mirror image, 0.16 at 176°)
    from faml.evaluate.maps import masked_correlation
    from faml.evaluate.oracle import oracle_average
    from faml.io.mrc import read_volume

    rot, shift = star_poses(star)
    angles = parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)
    np.testing.assert_allclose(rot, euler_to_matrix(angles * [1, -1, 1]), atol=1e-9)
    assert table.ctf_premultiplied  # the pair (D, C), whitened by the engine
    oracle = oracle_average(table, rot, shift, np.zeros(40, int)).maps[0]
    ref, _ = read_volume(shared_path(SUBTILTS, "warptools_test_box-32_angpix-12_reconstruct.mrc"))
    assert masked_correlation(oracle, ref) > 0.5
    assert masked_correlation(oracle, ref) > masked_correlation(oracle, _mirror_z(ref)) + 0.05


def test_dynamo_euler_conversion():
    """Dynamo (tdrot, tilt, narot) -> RELION (90 - tdrot, tilt, -90 - narot), same matrix."""
    rng = np.random.default_rng(0)
    dyn = rng.uniform([-180, 5, -180], [180, 175, 180], (20, 3))
    mats = dynamo_to_matrix(dyn)
    rel = np.stack([90 - dyn[:, 0], dyn[:, 1], -90 - dyn[:, 2]], axis=1)
    np.testing.assert_allclose(mats, euler_to_matrix(rel), atol=1e-9)
    # planted: tdrot alone is a rotation about z of the reference onto the particle
    m = dynamo_to_matrix(np.array([90.0, 0.0, 0.0]))
    np.testing.assert_allclose(m @ [1.0, 0, 0], [0, 1.0, 0], atol=1e-12)
    # tilt is about x
    m = dynamo_to_matrix(np.array([0.0, 90.0, 0.0]))
    np.testing.assert_allclose(m @ [0, 1.0, 0], [0, 0, 1.0], atol=1e-12)
    assert matrix_to_euler(mats).shape == (20, 3)


def test_dynamo_table(tmp_path):
    rows = []
    for tag, (lo, hi) in zip((3, 7), ((-50.0, 60.0), (-40.0, 45.0)), strict=True):
        r = np.zeros(35)
        r[0], r[3:6], r[6:9] = tag, (1.0, -2.0, 0.5), (10.0, 20.0, 30.0)
        r[12], r[13], r[14], r[21] = 1, lo, hi, 2
        rows.append(r)
    (tmp_path / "t.tbl").write_text("\n".join(" ".join(f"{v:g}" for v in r) for r in rows))
    for tag in (7, 3):
        write_volume(tmp_path / f"particle_{tag:05d}.mrc", _blob(8), 4.0)
    dyn = read_dynamo_table(tmp_path / "t.tbl")
    table = from_mrc_files(tmp_path)
    matched, rot, shift = apply_dynamo_table(table, dyn)
    assert matched.paths[0].endswith("particle_00003.mrc")
    np.testing.assert_allclose(matched.tilt_ranges, [[-50, 60], [-40, 45]])
    np.testing.assert_allclose(shift[0], [1.0, -2.0, 0.5])
    np.testing.assert_allclose(rot[1], dynamo_to_matrix(np.array([10.0, 20.0, 30.0])))
    assert list(dyn.classes) == [2, 2]


def test_stack_cache_of_the_corrected_form_is_not_reused(tmp_path, monkeypatch):
    """Caches of version 3 (CTF-corrected X = D / C) do not match today's fingerprint."""
    from faml.io import tiltstacks

    (tmp_path / "a.star").write_text("data_\n")
    now = tiltstacks._fingerprint([tmp_path / "a.star"])
    assert tiltstacks._CACHE_VERSION == 4
    monkeypatch.setattr(tiltstacks, "_CACHE_VERSION", 3)
    assert tiltstacks._fingerprint([tmp_path / "a.star"]) != now
