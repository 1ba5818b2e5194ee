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
