"""The CTF form of a particle set (DESIGN.md section 2): read, overridden, checked, written.

A RELION 4/5 3D pseudo-subtomogram set (``relion_tomo_subtomo``: ``N_data.mrc`` and its
CTF² sum ``N_weights.mrc``, ``rlnCtfDataAreCtfPremultiplied 1``) is built in a RELION
project folder under ``tmp_path``; its names are relative to the project folder, as RELION
writes them, and faml runs from elsewhere.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile

from faml.geometry.euler import euler_to_matrix
from faml.io.mrc import write_volume
from faml.io.star import read_particles_star, write_particles_star

BOX, N = 16, 4


def _ctf2_sum(i: int) -> np.ndarray:
    """`(N, N, N//2+1)` a made-up CTF² sum over ~40 tilts: >= 0, up to about 38."""
    kz = np.fft.fftfreq(BOX)[:, None, None]
    ky = np.fft.fftfreq(BOX)[None, :, None]
    kx = np.fft.rfftfreq(BOX)[None, None, :]
    s = np.sqrt(kz**2 + ky**2 + kx**2)
    return (38.0 - i) * np.cos(np.pi * (4 + i) * s**2) ** 2 * (np.abs(kz) <= 1.2 * np.abs(kx))


def _relion5_3d_set(tmp_path, flags=(1,), weights=_ctf2_sum, general=True, groups=None):
    """A RELION 5 3D pseudo-subtomogram set: ``tmp_path/project/Extract/job010/particles.star``.

    ``flags``: ``rlnCtfDataAreCtfPremultiplied`` per optics group (``None``: no column);
    ``groups``: each particle's optics group (default group 1).
    """
    project = tmp_path / "project"
    rng = np.random.default_rng(0)
    names, ctfs = [], []
    for i in range(N):
        folder = project / "Subtomograms" / f"TS_0{1 + i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        write_volume(folder / f"{i + 1}_data.mrc", rng.normal(size=(BOX,) * 3), 7.0)
        write_volume(folder / f"{i + 1}_weights.mrc", weights(i), 7.0)
        names.append(f"Subtomograms/TS_0{1 + i % 2}/{i + 1}_data.mrc")
        ctfs.append(f"Subtomograms/TS_0{1 + i % 2}/{i + 1}_weights.mrc")
    optics = {
        "rlnOpticsGroup": list(range(1, len(flags) + 1)),
        "rlnOpticsGroupName": [f"opticsGroup{g}" for g in range(1, len(flags) + 1)],
        "rlnImagePixelSize": [7.0] * len(flags),
        "rlnImageSize": [BOX] * len(flags),
        "rlnImageDimensionality": [3] * len(flags),
        "rlnVoltage": [300.0] * len(flags),
        "rlnSphericalAberration": [2.7] * len(flags),
        "rlnAmplitudeContrast": [0.07] * len(flags),
    }
    if flags[0] is not None:
        optics["rlnCtfDataAreCtfPremultiplied"] = list(flags)
    sub = rng.uniform([-180, 0, -180], [180, 180, 180], (N, 3))
    ang = rng.uniform([-180, 0, -180], [180, 180, 180], (N, 3))
    particles = pd.DataFrame(
        {
            "rlnTomoName": [f"TS_0{1 + i % 2}" for i in range(N)],
            "rlnImageName": names,
            "rlnCtfImage": ctfs,
            "rlnTomoSubtomogramRot": sub[:, 0],
            "rlnTomoSubtomogramTilt": sub[:, 1],
            "rlnTomoSubtomogramPsi": sub[:, 2],
            "rlnAngleRot": ang[:, 0],
            "rlnAngleTilt": ang[:, 1],
            "rlnAnglePsi": ang[:, 2],
            "rlnOriginXAngst": rng.normal(0, 3, N),
            "rlnOriginYAngst": rng.normal(0, 3, N),
            "rlnOriginZAngst": rng.normal(0, 3, N),
            "rlnOpticsGroup": groups or [1] * N,
        }
    )
    blocks = {"optics": pd.DataFrame(optics), "particles": particles}
    if general:
        blocks = {"general": {"rlnTomoSubTomosAre2DStacks": 0}, **blocks}
    star = project / "Extract" / "job010" / "particles.star"
    star.parent.mkdir(parents=True)
    starfile.write(blocks, star)
    return star, sub


@pytest.mark.parametrize("general", [True, False], ids=["relion5", "relion4"])
def test_relion5_pseudo_subtomograms_read_premultiplied(tmp_path, monkeypatch, general):
    """Names relative to the project folder, read from elsewhere; CTF² sums up to ~38."""
    star, sub = _relion5_3d_set(tmp_path, general=general)
    monkeypatch.chdir(tmp_path)  # neither the STAR file's folder nor the project folder
    table = read_particles_star(star)
    assert table.ctf_premultiplied and len(table) == N and table.box == BOX
    project = tmp_path / "project"
    assert table.paths[1] == str(project / "Subtomograms/TS_02/2_data.mrc")
    assert table.weight_paths[3] == str(project / "Subtomograms/TS_02/4_weights.mrc")
    assert table.names[0] == "Subtomograms/TS_01/1_data.mrc"  # written back as read
    np.testing.assert_allclose(table.subtomo_rotations, euler_to_matrix(sub), atol=1e-6)
    np.testing.assert_allclose(table.wedge(0), _ctf2_sum(0), rtol=1e-6)
    assert table.wedge(0).max() > 30


def test_relion5_set_without_the_flag_is_not_premultiplied(tmp_path):
    star, _ = _relion5_3d_set(tmp_path, flags=(None,), weights=lambda i: _ctf2_sum(i) / 40)
    assert not read_particles_star(star).ctf_premultiplied


def test_optics_groups_of_two_forms_stop_with_one_line(tmp_path):
    star, _ = _relion5_3d_set(tmp_path, flags=(0, 1), groups=[1, 2, 1, 2])
    message = (
        f"{star}: optics group 1 has rlnCtfDataAreCtfPremultiplied 0, group 2 1: faml takes "
        "one CTF form per data set; run the premultiplied particles and the others separately"
    )
    with pytest.raises(ValueError) as info:
        read_particles_star(star)
    assert str(info.value) == message
    # a group no particle uses does not count
    star, _ = _relion5_3d_set(tmp_path / "b", flags=(0, 1), groups=[2] * N)
    assert read_particles_star(star).ctf_premultiplied


def _signed_ctf(i: int) -> np.ndarray:
    """A RELION 3.0-style signed 3D CTF in [-1, 1] (the wedge times CTF)."""
    kz = np.fft.fftfreq(BOX)[:, None, None]
    s = np.sqrt(kz**2 + np.fft.fftfreq(BOX)[None, :, None] ** 2
                + np.fft.rfftfreq(BOX)[None, None, :] ** 2)  # fmt: skip
    return -np.sin(np.pi * (3 + i) * s**2) * (np.abs(kz) < 0.3)


@pytest.mark.parametrize("layout", ["relion30", "warp"])
def test_relion30_and_warp_3d_ctf_sets_are_not_premultiplied(tmp_path, layout):
    """RELION 3.0 signed-CTF sets and WarpTools' 3D exports: one block, no flag."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(N):
        write_volume(tmp_path / f"p{i}.mrc", rng.normal(size=(BOX,) * 3), 7.0)
        write_volume(tmp_path / f"p{i}_ctf.mrc", _signed_ctf(i) if layout == "relion30"
                     else np.abs(_signed_ctf(i)), 7.0)  # fmt: skip
        rows.append(f"p{i}.mrc p{i}_ctf.mrc 12.0 30.0 -40.0 {1000.0 * i:.1f} 50.0 80.0")
    columns = ["rlnImageName", "rlnCtfImage", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
               "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]  # fmt: skip
    (tmp_path / "p.star").write_text(
        "data_\n\nloop_\n" + "".join(f"_{c} #{j + 1}\n" for j, c in enumerate(columns))
        + "\n".join(rows) + "\n"
    )  # fmt: skip
    table = read_particles_star(tmp_path / "p.star")
    assert not table.ctf_premultiplied
    assert (table.wedge(2).min() < -0.5) == (layout == "relion30")


def test_writers_keep_the_form_and_the_weights(tmp_path):
    """particles.star of a premultiplied set (RELION 5 and RELION 3.1 layouts) reads back so."""
    from dataclasses import replace

    star, _ = _relion5_3d_set(tmp_path)
    table = read_particles_star(star)
    poses = (np.tile(np.eye(3), (N, 1, 1)), np.zeros((N, 3)), np.ones(N, int), np.ones(N))
    for name, t in [("r5", table), ("r31", replace(table, optics={}))]:
        out = tmp_path / "project" / name / "particles.star"
        out.parent.mkdir()
        write_particles_star(out, t, *poses)
        blocks = starfile.read(out, always_dict=True)
        assert list(blocks["optics"]["rlnCtfDataAreCtfPremultiplied"]) == [1], name
        assert list(blocks["particles"]["rlnCtfImage"]) == list(table.extra["rlnCtfImage"])
        back = read_particles_star(out)
        assert back.ctf_premultiplied and back.weight_paths == table.weight_paths, name
    # the table's form wins over the flag it was read with (--ctf-form)
    out = tmp_path / "project" / "multiplied.star"
    write_particles_star(out, replace(table, ctf_premultiplied=False), *poses)
    assert list(starfile.read(out)["optics"]["rlnCtfDataAreCtfPremultiplied"]) == [0]


def test_run_and_export_keep_a_premultiplied_set(tmp_path, capsys, monkeypatch):
    """faml run: the plan's CTF row, particles.star and faml export keep the form."""
    from faml.cli import main

    star, _ = _relion5_3d_set(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "project" / "Faml" / "job011"  # names relative to the project resolve
    argv = ["run", str(star), "--out", str(out), "--iterations", "1", "--starts", "1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    row = "premultiplied (rlnCtfDataAreCtfPremultiplied 1): CTF\u00b2 sums, weights up to 38\n"
    assert f"  CTF form      {row}" in err, err
    blocks = starfile.read(out / "particles.star", always_dict=True)
    assert list(blocks["optics"]["rlnCtfDataAreCtfPremultiplied"]) == [1]
    assert blocks["particles"]["rlnCtfImage"].iloc[3] == "Subtomograms/TS_02/4_weights.mrc"
    table = read_particles_star(star)
    assert read_particles_star(out / "particles.star").ctf_premultiplied
    assert main(["export", str(out)]) == 0
    exported = read_particles_star(out / "relion" / "particles.star")
    assert exported.ctf_premultiplied and exported.weight_paths == table.weight_paths
    commands = (out / "relion" / "relion_refine.txt").read_text()
    assert "# RELION 3.1 squares a premultiplied 3D CTF image" in commands
    assert "rlnCtfImage = sqrt(C)" in commands and "--ctf" in commands
    # for RELION 3.1: sqrt(C) as rlnCtfImage, the flag kept, a RELION 3.1 STAR file
    r31 = out / "relion31"
    assert main(["export", str(out), "--relion-version", "3.1", "--out", str(r31)]) == 0
    text = (r31 / "particles.star").read_text()
    assert "# version 30001" in text and "data_general" not in text
    back = read_particles_star(r31 / "particles.star")
    assert back.ctf_premultiplied and back.paths == table.paths
    for i in range(N):
        assert back.weight_paths[i] == str(r31 / "ctf_sqrt" / f"particle_{i + 1:06d}_ctf.mrc")
        np.testing.assert_allclose(back.wedge(i) ** 2, _ctf2_sum(i), rtol=1e-5, atol=1e-5)
    assert (
        "# For RELION 3.1: these particles are CTF-premultiplied"
        in (r31 / "relion_refine.txt").read_text()
    )


def _rows(tmp_path, weights, flag=None, form="auto"):
    """The plan's CTF row of a RELION 3.1 set whose weights are ``weights(i)``."""
    from faml.cli import ctf_form_row
    from faml.io.particles import with_ctf_form
    from faml.io.validate import validate_table

    star, _ = _relion5_3d_set(tmp_path, flags=(flag,), weights=weights, general=False)
    table, source = with_ctf_form(read_particles_star(star), form)
    report = validate_table(table, check_data=False)
    assert report.ok, report.lines()
    return ctf_form_row(table, source, report.weights)


def test_plan_row_says_what_the_weights_are(tmp_path):
    half = (BOX, BOX, BOX // 2 + 1)
    assert _rows(tmp_path / "a", _signed_ctf) == (
        "multiplied (no rlnCtfDataAreCtfPremultiplied): signed CTF weights"
    )
    assert _rows(tmp_path / "b", lambda i: np.abs(_signed_ctf(i)), flag=0) == (
        "multiplied (rlnCtfDataAreCtfPremultiplied 0): |CTF| weights (phase-flipped data)"
    )
    assert _rows(tmp_path / "c", lambda i: np.abs(_signed_ctf(i)) > 0.2) == (
        "multiplied (no rlnCtfDataAreCtfPremultiplied): binary wedges"
    )
    assert _rows(tmp_path / "d", lambda i: np.full(half, 0.5), form="premultiplied") == (
        "premultiplied (--ctf-form premultiplied): CTF\u00b2 sums, weights up to 0.5"
    )
    from faml.cli import ctf_form_row
    from faml.io.particles import from_mrc_files
    from faml.io.validate import validate_table

    table = from_mrc_files(tmp_path / "a" / "project" / "Subtomograms" / "TS_01" / "*_data.mrc")
    assert ctf_form_row(table, "", validate_table(table).weights) == "tilt ranges (binary wedges)"


def test_ctf_form_option_overrides_the_file_with_a_warning(tmp_path, caplog):
    from faml.io.particles import with_ctf_form

    star, _ = _relion5_3d_set(tmp_path)
    table = read_particles_star(star)
    with caplog.at_level("WARNING"):
        forced, source = with_ctf_form(table, "multiplied")
    assert not forced.ctf_premultiplied and source == "--ctf-form multiplied"
    assert caplog.messages == [
        "--ctf-form multiplied overrides rlnCtfDataAreCtfPremultiplied 1 of the input: the "
        "weights are read as multiplying the reference"
    ]
    caplog.clear()
    assert with_ctf_form(table, "premultiplied")[0].ctf_premultiplied
    assert with_ctf_form(table, "auto") == (table, "rlnCtfDataAreCtfPremultiplied 1")
    assert not caplog.messages  # agreeing with the file: no warning
