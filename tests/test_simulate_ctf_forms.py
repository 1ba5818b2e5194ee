"""The simulator's CTF forms: flipped, signed and premultiplied particles of the same data."""

from __future__ import annotations

import math
import re

import mrcfile
import numpy as np
import pytest
import scipy.fft
import starfile

from conftest import shared_path, transform_reference
from faml.cli import main
from faml.geometry.rotations import random_rotations
from faml.simulate import (
    CrowdedSettings,
    SimulationSettings,
    ctf,
    density_from_model,
    detector_mtf,
    prepare_structure,
    read_truth,
    simulate,
    simulate_crowded,
    simulate_particle,
)

VOXEL = 10.0
BOX = 20
FORMS = ("flipped", "signed", "premultiplied")
TILTS = 41  # -60..60 degrees every 3
DEFOCUS = 5.0  # um: the CTF's first zero at 1/31 A^-1, inside Nyquist (1/20 A^-1)


@pytest.fixture(scope="module")
def hsp70() -> np.ndarray:
    """1S3X (Hsp70 ATPase domain) at 10 A, 20^3, 20 A resolution."""
    return density_from_model(shared_path("atomic", "1s3x.pdb"), VOXEL, BOX, resolution=20.0)


def _settings(form: str, part: str = "both", **kw) -> SimulationSettings:
    base = {"voxel_size": VOXEL, "snr": 0.1, "tilt_step": 3.0, "defocus_jitter_um": 0.3,
            "defocus_um": DEFOCUS}  # fmt: skip
    base.update(kw)
    return SimulationSettings(ctf_form=form, components=part, **base)


@pytest.fixture(scope="module")
def realistic(tmp_path_factory, hsp70):
    """Noise-free realistic particles, the same seed in each form."""
    root = tmp_path_factory.mktemp("realistic")
    for form in FORMS:
        simulate([hsp70], ["1s3x"], 3, root / form, _settings(form, "signal"), seed=7)
    return root


@pytest.fixture(scope="module")
def isolated(tmp_path_factory, hsp70):
    """Noise-free crowded-mode particles, one a tomogram and no crowd: the target alone."""
    root = tmp_path_factory.mktemp("isolated")
    crowd = CrowdedSettings(tomograms=3, crowding=0.0, pick_error=0.5)
    for form in FORMS:
        simulate_crowded(
            [hsp70], ["1s3x"], 3, root / form, _settings(form, "signal"), crowd, seed=7
        )
    return root


def _rows(folder) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
    """STAR blocks, particles and weights of a simulation folder, as its STAR file names them."""
    blocks = starfile.read(folder / "particles.star", always_dict=True)
    rows = blocks["particles"]
    data = [mrcfile.read(folder / name) for name in rows["rlnImageName"]]
    weights = [mrcfile.read(folder / name) for name in rows["rlnCtfImage"]]
    return blocks, data, weights


def _fit(data: np.ndarray, weight: np.ndarray, posed: np.ndarray) -> tuple[float, float]:
    """Correlation and scale of ``rfftn(data)`` against ``weight * rfftn(posed)`` where
    ``|weight|`` exceeds a tenth of its largest value."""
    keep = np.abs(weight) > 0.1 * np.abs(weight).max()
    a = scipy.fft.rfftn(data)[keep]
    b = (weight * scipy.fft.rfftn(posed))[keep]
    correlation = abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(correlation), float(np.vdot(b, a).real / np.vdot(b, b).real)


@pytest.mark.parametrize("mode", ["realistic", "isolated"])
def test_signed_and_premultiplied_particles_follow_their_model(request, mode):
    """Signed: X = c T(A), c in [-1, 1] with negative lobes; premultiplied: D = C T(A), C the
    CTF^2 sum (up to about the number of tilts), the same scale in D and C."""
    root = request.getfixturevalue(mode)
    back = read_truth(root / "flipped")
    for form in FORMS:
        _, data, weights = _rows(root / form)
        for i, (d, w) in enumerate(zip(data, weights, strict=True)):
            assert w.shape == (BOX, BOX, BOX // 2 + 1)
            posed = transform_reference(back.maps[0], back.rotations[i], back.shifts[i])
            correlation, scale = _fit(d, w, posed)
            if form == "flipped":
                assert 0.0 <= w.min() and w.max() <= 1.0
                assert correlation > 0.99
            elif form == "signed":
                assert -1.0 <= w.min() < -0.1 and w.max() <= 1.0
                assert correlation > 0.99  # measured 0.998 realistic, 0.995 crowded
            else:
                assert w.min() >= 0.0 and 2.0 < w.max() < TILTS
                assert correlation > 0.995  # measured 0.999
                assert scale == pytest.approx(1.0, abs=0.05)  # measured 0.98 / 0.99
    # the wrong form's weight does not fit: the signed particle against |weight|
    _, data, weights = _rows(root / "signed")
    posed = transform_reference(back.maps[0], back.rotations[0], back.shifts[0])
    assert _fit(data[0], np.abs(weights[0]), posed)[0] < 0.97  # measured 0.93


@pytest.mark.parametrize("mode", ["realistic", "isolated"])
def test_premultiplied_files_and_star_have_relion5_names(request, mode):
    root = request.getfixturevalue(mode)
    blocks, _, _ = _rows(root / "premultiplied")
    text = (root / "premultiplied" / "particles.star").read_text()
    assert "# version 50001\ndata_general" in text
    assert int(blocks["general"]["rlnTomoSubTomosAre2DStacks"]) == 0
    optics = blocks["optics"].iloc[0]
    assert optics["rlnCtfDataAreCtfPremultiplied"] == 1 and optics["rlnImageDimensionality"] == 3
    assert optics["rlnOpticsGroup"] == 1 and optics["rlnOpticsGroupName"] == "opticsGroup1"
    assert optics["rlnImageSize"] == BOX and optics["rlnImagePixelSize"] == VOXEL
    assert optics["rlnVoltage"] == 300 and optics["rlnSphericalAberration"] == 2.7
    assert optics["rlnAmplitudeContrast"] == 0.07
    rows = blocks["particles"]
    counts: dict[str, int] = {}
    for tomo, part, image, weight in zip(
        rows["rlnTomoName"], rows["rlnTomoParticleName"], rows["rlnImageName"],
        rows["rlnCtfImage"], strict=True,
    ):  # fmt: skip
        counts[tomo] = counts.get(tomo, 0) + 1
        assert re.fullmatch(r"tomogram_\d{3}", tomo) and part == f"{tomo}/{counts[tomo]}"
        assert image == f"Subtomograms/{tomo}/{counts[tomo]}_data.mrc"
        assert weight == f"Subtomograms/{tomo}/{counts[tomo]}_weights.mrc"
        assert (root / "premultiplied" / weight).is_file()
    assert list(rows["rlnOpticsGroup"]) == [1] * len(rows)
    assert rows["rlnDefocusU"].min() > 1e4  # the truth columns of the other forms are kept
    flipped = starfile.read(root / "flipped" / "particles.star", always_dict=True)
    assert "general" not in flipped and "rlnDefocusU" in flipped["particles"]
    assert flipped["optics"]["rlnCtfDataAreCtfPremultiplied"].iloc[0] == 0
    extra = set(rows.columns) - set(flipped["particles"].columns)
    assert extra <= {"rlnTomoName", "rlnTomoParticleName"}
    truth = starfile.read(root / "premultiplied" / "truth" / "particles.star", always_dict=True)
    assert list(truth["particles"]["rlnImageName"]) == list(rows["rlnImageName"])
    assert "rlnAngleRot" in truth["particles"] and "general" in truth
    assert not (root / "premultiplied" / "particles").exists()


@pytest.mark.parametrize("mode", ["realistic", "isolated"])
def test_forms_share_poses_and_noise_level(request, mode):
    root = request.getfixturevalue(mode)
    meta = {form: read_truth(root / form).metadata for form in FORMS}
    for form in FORMS:
        assert meta[form]["ctf_form"] == form and meta[form]["settings"]["ctf_form"] == form
        assert meta[form]["ctf_premultiplied"] == (form == "premultiplied")
        for key in ("angles_relion_deg", "shifts_voxels", "classes", "noise_sigma",
                    "signal_variance", "projection_snr", "defocus_um_per_particle"):  # fmt: skip
            assert meta[form][key] == meta["flipped"][key], key
    if mode == "isolated":
        for form in FORMS:
            for key in ("true_centres_voxels", "picks_voxels", "tomogram_of_particle"):
                assert meta[form]["crowded"][key] == meta["flipped"]["crowded"][key]


def test_crowded_forms_share_neighbours_and_noise(tmp_path, hsp70):
    crowd = CrowdedSettings(tomograms=2, crowding=0.1, dose_per_tilt=2.0)
    meta, noise = {}, {}
    for form in FORMS:
        folder = tmp_path / form
        settings = _settings(form, "noise", ctf=False)  # MTF and exposure: a positive transfer
        simulate_crowded([hsp70], ["1s3x"], 4, folder, settings, crowd, seed=3)
        meta[form] = read_truth(folder).metadata
        noise[form] = _rows(folder)[1]
    keys = ("objects", "distractors", "crowding", "noise_sigma", "defocus_um")
    for form in FORMS:
        assert meta[form]["shifts_voxels"] == meta["flipped"]["shifts_voxels"]
        assert meta[form]["crowded"]["picks_voxels"] == meta["flipped"]["crowded"]["picks_voxels"]
        for t, tomo in enumerate(meta[form]["crowded"]["tomograms"]):
            reference = meta["flipped"]["crowded"]["tomograms"][t]
            assert [tomo[k] for k in keys] == [reference[k] for k in keys]
    assert meta["flipped"]["crowded"]["tomograms"][0]["distractors"] > 0
    # the same noise draw: with a positive transfer, flipping changes nothing
    for a, b in zip(noise["flipped"], noise["signed"], strict=True):
        np.testing.assert_array_equal(a, b)
    other = tmp_path / "other"
    settings = _settings("signed", "noise", ctf=False)
    simulate_crowded([hsp70], ["1s3x"], 4, other, settings, crowd, seed=4)
    assert abs(np.corrcoef(noise["flipped"][0].ravel(), _rows(other)[1][0].ravel())[0, 1]) < 0.2
    # premultiplied: the noise once more through the transfer, at the level sigma sets
    assert all(np.std(v) > 0 for v in noise["premultiplied"])


def test_the_same_noise_images_in_every_form(hsp70):
    prepared = prepare_structure(hsp70)
    pose = (random_rotations(1, 5)[0], np.array([0.5, -1.0, 0.3]))
    series = {}
    for form in FORMS:
        settings = _settings(form, "noise", defocus_jitter_um=0.0)
        p = simulate_particle(
            prepared, *pose, settings, np.random.default_rng(3), return_tilt_series=True
        )
        series[form] = (p.tilt_series, p.noise_sigma)
    assert series["signed"][1] == series["flipped"][1] == series["premultiplied"][1]
    # the particle's stream draws the (T, 2N, 2N) noise images first (tiltseries docstring)
    m = 2 * BOX
    drawn = np.random.default_rng(3).standard_normal((TILTS, m, m), dtype=np.float32)
    sigma = series["flipped"][1]
    o = m // 2 - BOX // 2

    def crop(images: np.ndarray) -> np.ndarray:
        return np.fft.fftshift(images, axes=(-2, -1))[:, o : o + BOX, o : o + BOX]

    np.testing.assert_allclose(series["flipped"][0], sigma * crop(drawn), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(series["signed"][0], series["flipped"][0])
    k = np.hypot(np.fft.fftfreq(m)[:, None], np.fft.rfftfreq(m)[None, :])  # cycles/pixel
    transfer = ctf(k / VOXEL, DEFOCUS * 1e4) * detector_mtf(2 * k)
    filtered = scipy.fft.irfft2(scipy.fft.rfft2(drawn) * transfer, s=(m, m))
    np.testing.assert_allclose(
        series["premultiplied"][0], sigma * crop(filtered), rtol=1e-3, atol=1e-4 * sigma
    )


# Figures of the flipped form written by faml before the CTF forms existed (commit 7367191):
# per file, the sum, the sum times cos(voxel index) and the sum of squares (float64).
_PINNED = {
    "real/particles/particle_000000.mrc": (0.9792505230416282, -0.2283048923557, 0.9024150279071),
    "real/particles/particle_000001.mrc": (-0.1401041658974, -0.0280232250893, 1.0724675798084),
    "real/weights/weight_000000.mrc": (730.3346051871777, -16.547862075953, 458.12864879949),
    "real/weights/weight_000001.mrc": (742.9572627674788, -19.094384635349, 469.52900936664),
    "crowd/particles/particle_000000.mrc": (-0.3484773232485, 0.0280910829868, 0.8970872849223),
    "crowd/particles/particle_000001.mrc": (0.7171383645291, 0.1005172771646, 0.9425021919546),
    "crowd/particles/particle_000002.mrc": (-1.1161044271248, 0.0877692850411, 0.8684794602724),
    "crowd/weights/weight_tomogram_001.mrc": (467.44486635923, -4.797591411317, 218.62046730291),
}


def test_flipped_form_is_unchanged(tmp_path, hsp70):
    settings = SimulationSettings(voxel_size=VOXEL, snr=0.1, tilt_step=3.0, defocus_jitter_um=0.3)
    simulate([hsp70], ["1s3x"], 2, tmp_path / "real", settings, seed=11)
    crowd = CrowdedSettings(tomograms=1, crowding=0.1)
    simulate_crowded([hsp70], ["1s3x"], 3, tmp_path / "crowd", settings, crowd, seed=11)
    for name, pinned in _PINNED.items():
        d = mrcfile.read(tmp_path / name).astype(np.float64)
        cos = np.cos(np.arange(d.size)).reshape(d.shape)
        figures = (d.sum(), (d * cos).sum(), (d**2).sum())
        np.testing.assert_allclose(figures, pinned, rtol=1e-5, atol=1e-5, err_msg=name)
    noise = read_truth(tmp_path / "real").metadata["noise_sigma"]
    assert noise == pytest.approx([0.15391548559985432, 0.16567201614929428], rel=1e-5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mode", "fast", "--ctf-form", "signed"], "--ctf-form signed needs the CTF"),
        (["--mode", "fast", "--no-phase-flip"], "--ctf-form signed needs the CTF"),
        (["--no-phase-flip", "--ctf-form", "premultiplied"], "--no-phase-flip means"),
    ],
)
def test_bad_ctf_form_is_a_one_line_error(tmp_path, capsys, extra, message):
    rc = main(["simulate", "--structure", str(shared_path("atomic", "1s3x.pdb")), "--n", "1",
               "--box", "20", "--voxel-size", "10", "--snr", "1", "--out", str(tmp_path / "s"),
               *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.startswith("faml: error:")]
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "s" / "particles.star").exists()


def test_ctf_form_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "sim"
    rc = main(["simulate", "--structure", str(shared_path("atomic", "1s3x.pdb")), "--n", "2",
               "--box", "20", "--voxel-size", "10", "--snr", "1", "--tilt-step", "5",
               "--ctf-form", "premultiplied", "--out", str(out)])  # fmt: skip
    assert rc == 0 and "2 particles" in capsys.readouterr().out
    assert read_truth(out).metadata["ctf_form"] == "premultiplied"
    assert (out / "Subtomograms" / "tomogram_001" / "2_weights.mrc").is_file()
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    assert "--ctf-form {flipped,signed,premultiplied}" in capsys.readouterr().out
    assert math.isfinite(read_truth(out).metadata["noise_sigma"][0])
