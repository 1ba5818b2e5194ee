"""Files: MRC volumes, the particle table, RELION STAR files (round trip in RELION's sense)."""

import mrcfile
import numpy as np
import pytest
import starfile

from faml.geometry.euler import euler_to_matrix
from faml.geometry.rotations import random_rotations, rotation_distance
from faml.io.mrc import read_header, read_volume, write_volume
from faml.io.particles import from_mrc_files
from faml.io.star import read_particles_star, write_particles_star


def make_particles(folder, n=4, box=16, voxel=5.0):
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    for i in range(n):
        write_volume(folder / f"p{i:03d}.mrc", rng.standard_normal((box,) * 3), voxel)
    return sorted(folder.glob("*.mrc"))


def test_volume_round_trip_and_atomicity(tmp_path):
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    write_volume(tmp_path / "v.mrc", vol, 2.5)
    back, voxel = read_volume(tmp_path / "v.mrc")
    np.testing.assert_array_equal(back, vol)  # (z, y, x) kept: no axis swapped
    assert voxel == pytest.approx(2.5)
    assert read_header(tmp_path / "v.mrc").shape == (4, 5, 6)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mrc"]  # no temporary left behind


def test_read_volume_rejects_an_image(tmp_path):
    with mrcfile.new(tmp_path / "img.mrc") as m:
        m.set_data(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="not a 3D volume"):
        read_volume(tmp_path / "img.mrc")
    (tmp_path / "junk.mrc").write_bytes(b"not an mrc file at all" * 100)
    with pytest.raises(ValueError, match="not a readable MRC"):
        read_volume(tmp_path / "junk.mrc")


def test_table_from_mrc_folder(tmp_path):
    files = make_particles(tmp_path / "parts")
    table = from_mrc_files(tmp_path / "parts", tilt_range=(-50, 70))
    assert len(table) == 4 and table.box == 16 and table.voxel_size == pytest.approx(5.0)
    vol, wedge = table.load(2)
    np.testing.assert_array_equal(vol, read_volume(files[2])[0])
    assert wedge.shape == (16, 16, 9)
    assert from_mrc_files(str(tmp_path / "parts" / "p00[01].mrc")).paths == tuple(
        str(f) for f in files[:2]
    )
    write_volume(tmp_path / "parts" / "odd.mrc", np.zeros((16, 16, 12)), 5.0)
    with pytest.raises(ValueError, match="odd.mrc"):
        from_mrc_files(tmp_path / "parts")


def test_star_round_trip_keeps_poses_in_relion_convention(tmp_path):
    make_particles(tmp_path / "parts")
    table = from_mrc_files(tmp_path / "parts")
    rots = random_rotations(4, 1)
    shifts = np.array([[1.0, -2.0, 0.5], [0, 0, 0], [3, 1, -1], [-0.25, 0.5, 2]])
    write_particles_star(
        tmp_path / "particles.star", table, rots, shifts, np.array([1, 2, 1, 2]),
        np.array([0.9, 0.5, 1.0, 0.7]),
    )  # fmt: skip
    text = (tmp_path / "particles.star").read_text()
    assert text.count("# version 30001\ndata_") == 2  # RELION 3.1+ layout marker
    blocks = starfile.read(tmp_path / "particles.star", always_dict=True)
    parts = blocks["particles"]
    assert blocks["optics"]["rlnImagePixelSize"][0] == pytest.approx(5.0)
    assert blocks["optics"]["rlnImageDimensionality"][0] == 3
    angles = parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    for a, r in zip(angles, rots, strict=True):
        assert rotation_distance(euler_to_matrix(a), r) < 1e-3
    origins = parts[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy()
    np.testing.assert_allclose(origins, -shifts * 5.0, atol=1e-5)
    np.testing.assert_array_equal(parts["rlnClassNumber"], [1, 2, 1, 2])
    # and faml reads its own output back as an input
    again = read_particles_star(tmp_path / "particles.star")
    assert again.paths == table.paths and again.voxel_size == pytest.approx(5.0)


def test_star_reading_relion5_layout(tmp_path):
    files = make_particles(tmp_path / "Subtomograms", n=3)
    weight = tmp_path / "w.mrc"
    write_volume(weight, np.ones((16, 16, 9)), 5.0)
    optics = {
        "rlnOpticsGroup": [1],
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnImagePixelSize": [7.5],
        "rlnImageSize": [16],
        "rlnImageDimensionality": [3],
        "rlnTomoSubtomogramBinning": [2.0],
    }
    parts = {
        "rlnTomoName": ["TS_01"] * 3,
        "rlnImageName": [f"Subtomograms/{f.name}" for f in files],
        "rlnCtfImage": ["w.mrc"] * 3,
        "rlnTomoSubtomogramRot": [10.0, 20.0, 30.0],
        "rlnTomoSubtomogramTilt": [90.0, 80.0, 70.0],
        "rlnTomoSubtomogramPsi": [0.0, 5.0, -5.0],
        "rlnOpticsGroup": [1, 1, 1],
        "rlnCenteredCoordinateXAngst": [1.0, 2.0, 3.0],
    }
    import pandas as pd

    starfile.write(
        {"general": {"rlnTomoSubTomosAre2DStacks": 0}, "optics": pd.DataFrame(optics),
         "particles": pd.DataFrame(parts)},
        tmp_path / "in.star",
    )  # fmt: skip
    table = read_particles_star(tmp_path / "in.star")
    assert table.voxel_size == pytest.approx(7.5)  # the optics block wins over the header
    assert table.weight_paths[0] == str(weight.resolve())
    assert table.tomo_names == ("TS_01",) * 3
    np.testing.assert_allclose(table.subtomo_rotations[1], euler_to_matrix([20.0, 80.0, 5.0]))
    assert table.wedge(0).shape == (16, 16, 9)
    assert table.extra["rlnCenteredCoordinateXAngst"] == (1.0, 2.0, 3.0)


def test_star_errors_are_one_sentence(tmp_path):
    (tmp_path / "bad.star").write_text("data_particles\nloop_\n_rlnAngleRot #1\n1.0\n")
    with pytest.raises(ValueError, match="no rlnImageName"):
        read_particles_star(tmp_path / "bad.star")
    (tmp_path / "missing.star").write_text("data_particles\nloop_\n_rlnImageName #1\nnothere.mrc\n")
    with pytest.raises(ValueError, match="nothere.mrc"):
        read_particles_star(tmp_path / "missing.star")


def test_damaged_inputs_found_by_the_fuzzer_give_clear_errors(tmp_path):
    """Cases benchmarks/reliability/fuzz_readers.py found crashing (KeyError, TypeError,
    MemoryError, an empty volume read as fine): each is now a ValueError naming the file."""
    import struct

    vol = tmp_path / "v.mrc"
    write_volume(vol, np.ones((8, 8, 8), np.float32), 10.0)
    good = vol.read_bytes()
    huge = bytearray(good)
    struct.pack_into("<i", huge, 92, 2**31 - 1)  # nsymbt: 2 GB of extended header
    (tmp_path / "huge.mrc").write_bytes(bytes(huge))
    with pytest.raises(ValueError, match="huge.mrc.*declares"):
        read_volume(tmp_path / "huge.mrc")
    empty = bytearray(good[:1024])
    struct.pack_into("<iii", empty, 0, 0, 6, 0)  # nx = nz = 0
    (tmp_path / "empty.mrc").write_bytes(bytes(empty))
    with pytest.raises(ValueError, match="empty.mrc"):
        read_volume(tmp_path / "empty.mrc")
    rows = "v.mrc 1 0 0\n"
    head = "data_particles\n\nloop_\n_rlnImageName\n_rlnOpticsGroup\n_rlnAngleRot\n"
    optics = "data_optics\n\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n{}\n\n"
    twice = tmp_path / "twice.star"
    twice.write_text(optics.format("1 10.0") + head + "_rlnAngleRot\n" + rows)
    with pytest.raises(ValueError, match="twice.star.*rlnAngleRot appears more than once"):
        read_particles_star(twice)
    other = tmp_path / "other.star"
    other.write_text(optics.format("2 10.0") + head + "_rlnAnglePsi\n" + rows)
    with pytest.raises(ValueError, match="other.star: rlnOpticsGroup 1 .* not in data_optics"):
        read_particles_star(other)


def test_more_damaged_inputs_from_the_fuzzer(tmp_path):
    """Negative sizes in an MRC header (mrcfile: OverflowError), a negative pixel size and a
    RELION 5 optics group missing from data_optics (KeyError): ValueErrors naming the file."""
    import struct

    vol = tmp_path / "v.mrc"
    write_volume(vol, np.ones((8, 8, 8), np.float32), 10.0)
    bad = bytearray(vol.read_bytes())
    struct.pack_into("<ii", bad, 4, -(2**31), 2**31 - 1)  # ny, nz
    (tmp_path / "neg.mrc").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="neg.mrc.*negative sizes"):
        read_volume(tmp_path / "neg.mrc")
    head = "data_particles\n\nloop_\n_rlnImageName\n_rlnOpticsGroup\nv.mrc 1\n"
    optics = "data_optics\n\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n{}\n\n"
    neg = tmp_path / "neg.star"
    neg.write_text(optics.format("1 -1.0") + head)
    with pytest.raises(ValueError, match="neg.star: the pixel size -1.0 is not positive"):
        read_particles_star(neg)
    tomo = optics.format("")[:-2] + "_rlnTomoTiltSeriesPixelSize\n"
    r5 = tmp_path / "r5.star"
    r5.write_text(tomo + "2 10.0 5.0\n\n" + head)
    with pytest.raises(ValueError, match="r5.star: rlnOpticsGroup 1 .* not in data_optics"):
        read_particles_star(r5)
