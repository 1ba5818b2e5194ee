"""Bad inputs of ``faml run``: each stops before any work with one clear line (exit 2).

Every case builds real files in ``tmp_path`` (16^3 particles, 6 of them) and checks the exact
``faml: error:`` line; ``--skip-bad`` drops the bad particles and runs on the rest.
"""

from __future__ import annotations

import json
import re
import warnings

import mrcfile
import numpy as np
import pytest

from faml.cli import main
from faml.io.particles import from_mrc_files
from faml.io.validate import validate_table

BOX, N = 16, 6
LOGGED = re.compile(r"\d\d:\d\d:\d\d ")  # a log line (INFO, WARNING), not the error


def _write(path, data, voxel=10.0):
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as m:
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN / Inf in the header statistics
        m.set_data(np.asarray(data))
        m.voxel_size = voxel


def _particles(folder, n=N, box=BOX):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        _write(folder / f"p{i:02d}.mrc", rng.normal(size=(box,) * 3).astype(np.float32))
    return folder


def _star(path, rows, columns=("rlnImageName",), optics=True, flag=None):
    """A particles STAR file; ``flag``: the optics block's rlnCtfDataAreCtfPremultiplied."""
    text = ""
    if optics:
        text += "data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n"
        if flag is not None:
            text += "_rlnCtfDataAreCtfPremultiplied #3\n"
        text += "1 10.0" + ("" if flag is None else f" {flag}") + "\n\n"
    text += "data_particles\n\nloop_\n"
    text += "".join(f"_{c} #{i + 1}\n" for i, c in enumerate(columns))
    text += "".join(" ".join(str(v) for v in row) + "\n" for row in rows)
    path.write_text(text)
    return path


# Each case: build the bad input under tmp_path, return (argv after "run", expected error
# line). In the expected line {d} is the particles' folder and {t} tmp_path.


def _truncated(t):
    d = _particles(t / "d")
    raw = (d / "p02.mrc").read_bytes()
    (d / "p02.mrc").write_bytes(raw[: len(raw) // 2])
    return [str(d)], "particle 3 ({d}/p02.mrc): truncated: 8704 bytes, its header says 17408"


def _wrong_box(t):
    d = _particles(t / "d")
    _write(d / "p02.mrc", np.ones((20, 20, 20), np.float32))
    return [str(d)], "particle 3 ({d}/p02.mrc): box 20, the data set's box is 16"


def _non_cubic(t):
    d = _particles(t / "d")
    _write(d / "p02.mrc", np.ones((20, 16, 16), np.float32))
    return [str(d)], "particle 3 ({d}/p02.mrc): not cubic: 16 x 16 x 20 voxels (x, y, z)"


def _image_2d(t):
    d = _particles(t / "d")
    _write(d / "p02.mrc", np.ones((16, 16), np.float32))
    return [str(d)], "particle 3 ({d}/p02.mrc): a 2D image (16 x 16), not a 3D volume"


def _nan_voxels(t):
    d = _particles(t / "d")
    v = np.random.default_rng(1).normal(size=(BOX,) * 3).astype(np.float32)
    v[3, 4, 5] = v[0, 0, 0] = np.nan
    _write(d / "p02.mrc", v)
    return [str(d)], "particle 3 ({d}/p02.mrc): 2 NaN/Inf voxels"


def _inf_voxel(t):
    d = _particles(t / "d")
    v = np.random.default_rng(1).normal(size=(BOX,) * 3).astype(np.float32)
    v[1, 1, 1] = np.inf
    _write(d / "p04.mrc", v)
    return [str(d)], "particle 5 ({d}/p04.mrc): 1 NaN/Inf voxel"


def _constant(t):
    d = _particles(t / "d")
    _write(d / "p00.mrc", np.zeros((BOX,) * 3, np.float32))
    return [str(d)], "particle 1 ({d}/p00.mrc): constant: every voxel is 0"


def _integer_mode(t):
    d = _particles(t / "d")
    _write(d / "p02.mrc", np.ones((BOX,) * 3, np.int16))
    return [str(d)], (
        "particle 3 ({d}/p02.mrc): mode 1 (int16) data: particles must be float (MRC mode 2 or 12)"
    )


def _not_mrc(t):
    d = _particles(t / "d")
    (d / "p02.mrc").write_bytes(b"this is not an MRC file\n" * 100)
    return [str(d)], "particle 3 ({d}/p02.mrc): not an MRC file (no 'MAP ' tag in its header)"


def _voxel_size(t):
    d = _particles(t / "d")
    _write(d / "p02.mrc", np.random.default_rng(1).normal(size=(BOX,) * 3).astype(np.float32),
           voxel=12.0)  # fmt: skip
    return [str(d)], "particle 3 ({d}/p02.mrc): voxel size 12 A, the data set's is 10 A"


def _no_files(t):
    (t / "d").mkdir()
    return [str(t / "d")], "no MRC files found at {d}"


def _empty_star(t):
    d = _particles(t / "d")
    (d / "p.star").write_text("")
    return [str(d / "p.star")], "{d}/p.star holds no data blocks (an empty STAR file?)"


def _missing_column(t):
    d = _particles(t / "d")
    _star(d / "p.star", [(f"p{i:02d}.mrc", 0.0) for i in range(N)],
          columns=("rlnMicrographName", "rlnAngleRot"))  # fmt: skip
    return [str(d / "p.star")], "{d}/p.star has no rlnImageName column"


def _bad_path(t):
    d = _particles(t / "d")
    names = [f"p{i:02d}.mrc" for i in range(N)]
    names[1] = "elsewhere/p99.mrc"
    _star(d / "p.star", [(n,) for n in names])
    return [str(d / "p.star")], "particle 2 ({d}/elsewhere/p99.mrc): no such file"


def _bad_number(t):
    d = _particles(t / "d")
    rows = [(f"p{i:02d}.mrc", "12.5") for i in range(N)]
    rows[3] = ("p03.mrc", "twelve")
    _star(d / "p.star", rows, columns=("rlnImageName", "rlnAngleRot"))
    return [str(d / "p.star")], (
        "{d}/p.star: particle 4 (line 16): rlnAngleRot 'twelve' is not a number"
    )


def _no_pixel_size(t):
    d = t / "d"
    d.mkdir()
    for i in range(N):
        _write(d / f"p{i:02d}.mrc", np.ones((BOX,) * 3, np.float32), voxel=0.0)
    _star(d / "p.star", [(f"p{i:02d}.mrc",) for i in range(N)], optics=False)
    return [str(d / "p.star")], (
        "{d}/p.star: no pixel size in the STAR file or MRC header; give --voxel-size"
    )


def _weights_star(t, weight, flag=None, others=None):
    """Particles with a weight each (half volumes of ``others``, default ones); particle 2's
    is ``weight``; ``flag``: rlnCtfDataAreCtfPremultiplied."""
    d = _particles(t / "d")
    others = np.ones((16, 16, 9), np.float32) if others is None else others
    for i in range(N):
        _write(d / f"w{i:02d}.mrc", weight if i == 1 else others)
    _star(d / "p.star", [(f"p{i:02d}.mrc", f"w{i:02d}.mrc") for i in range(N)],
          columns=("rlnImageName", "rlnCtfImage"), flag=flag)  # fmt: skip
    return d


_SIGNED = np.full((16, 16, 9), -0.5, np.float32)  # a signed CTF's negative lobe
_CTF2_SUM = np.full((16, 16, 9), 38.2, np.float32)  # the CTF² sum of 38 tilts


def _premultiplied_signed(t):
    d = _weights_star(t, _SIGNED, flag=1, others=_CTF2_SUM)
    return [str(d / "p.star")], (
        "particle 2 ({d}/p01.mrc): weight {d}/w01.mrc: the weight of CTF-premultiplied data "
        "must be a CTF\u00b2 sum (>= 0), but it goes down to -0.5: a signed CTF belongs to data "
        "that are not premultiplied (rlnCtfDataAreCtfPremultiplied 0, --ctf-form multiplied)"
    )


def _premultiplied_all_signed(t):
    d = _weights_star(t, _SIGNED, flag=1, others=_SIGNED)
    return [str(d / "p.star")], (
        "the weights (rlnCtfImage) of all 6 particles go down to -0.5, but CTF-premultiplied "
        "data carry CTF\u00b2 sums (>= 0): a signed CTF belongs to data that are not "
        "premultiplied (rlnCtfDataAreCtfPremultiplied 0 in the optics block, or --ctf-form "
        "multiplied)"
    )


def _premultiplied_zero(t):
    zero = np.zeros((16, 16, 9), np.float32)
    d = _weights_star(t, zero, others=zero)
    return [str(d / "p.star"), "--ctf-form", "premultiplied"], (
        "the CTF\u00b2 sums (rlnCtfImage) of all 6 particles of this CTF-premultiplied set are "
        "zero everywhere: they measure no frequency"
    )


def _ctf2_sums_unmarked(t):
    d = _weights_star(t, _CTF2_SUM, others=_CTF2_SUM)
    return [str(d / "p.star")], (
        "the weights (rlnCtfImage) of all 6 particles lie outside [-1, 1] (min 38.2, max 38.2), "
        "the range of data that are not CTF-premultiplied: CTF\u00b2 sums (RELION 4/5 "
        "pseudo-subtomograms) need rlnCtfDataAreCtfPremultiplied 1 in the optics block, or "
        "--ctf-form premultiplied"
    )


def _ctf2_sums_forced_multiplied(t):
    argv, message = _ctf2_sums_unmarked(t)
    _weights_star(t, _CTF2_SUM, flag=1, others=_CTF2_SUM)  # the file says premultiplied
    return [*argv, "--ctf-form", "multiplied"], message


def _weight_shape(t):
    d = _weights_star(t, np.ones((16, 16, 10), np.float32))
    return [str(d / "p.star")], (
        "particle 2 ({d}/p01.mrc): weight {d}/w01.mrc is 10 x 16 x 16 (x, y, z); for box 16 "
        "it must be the full cube 16 x 16 x 16 or the half volume 9 x 16 x 16"
    )


def _weight_zero(t):
    d = _weights_star(t, np.zeros((16, 16, 9), np.float32))
    return [str(d / "p.star")], "particle 2 ({d}/p01.mrc): weight {d}/w01.mrc is all zero"


def _weight_range(t):
    d = _weights_star(t, np.full((16, 16, 16), 2.0, np.float32))
    return [str(d / "p.star")], (
        "particle 2 ({d}/p01.mrc): weight {d}/w01.mrc: weight volume values must lie in "
        "[-1, 1] for data that are not CTF-premultiplied, got min=2, max=2: a CTF\u00b2 sum "
        "(RELION 4/5 pseudo-subtomograms) needs rlnCtfDataAreCtfPremultiplied 1 in the optics "
        "block or --ctf-form premultiplied"
    )


def _weight_missing(t):
    d = _weights_star(t, np.ones((16, 16, 9), np.float32))
    (d / "w01.mrc").unlink()
    return [str(d / "p.star")], "particle 2 ({d}/p01.mrc): weight {d}/w01.mrc: no such file"


def _too_many_classes(t):
    d = _particles(t / "d")
    return [str(d), "--classes", "9"], "--classes 9 is more than the 6 particles"


def _classes_after_drop(t):
    d = _particles(t / "d")
    _write(d / "p00.mrc", np.zeros((BOX,) * 3, np.float32))
    return [str(d), "--classes", "6", "--skip-bad"], (
        "--classes 6 is more than the 5 good particles"
    )


def _tilt_reversed(t):
    d = _particles(t / "d")
    return [str(d), "--tilt-range", "60", "-60"], (
        "--tilt-range 60 -60: it must satisfy -90 < MIN < MAX < 90 degrees"
    )


def _tilt_too_wide(t):
    d = _particles(t / "d")
    return [str(d), "--tilt-range", "-95", "60"], (
        "--tilt-range -95 60: it must satisfy -90 < MIN < MAX < 90 degrees"
    )


def _out_is_a_file(t):
    d = _particles(t / "d")
    (t / "o").write_text("a file")
    return [
        str(d),
        "--out",
        str(t / "o" / "run"),
    ], "--out {t}/o/run is not a folder ({t}/o is a file)"


def _out_is_input(t):
    d = _particles(t / "d")
    return [str(d), "--out", str(d)], (
        "--out {d} is the folder of the input particles: faml writes nothing beside its "
        "inputs; choose another output folder"
    )


def _out_holds_other_run(t):
    d = _particles(t / "d")
    (t / "o").mkdir()
    (t / "o" / "run.json").write_text("{}")
    return [str(d), "--out", str(t / "o")], (
        "--out {t}/o holds another run (run.json; no inputs.json to compare with): add "
        "--overwrite to replace it or --continue to resume it"
    )


def _mask_shape(t):
    d = _particles(t / "d")
    _write(t / "mask.mrc", np.ones((20, 20, 20), np.float32))
    return [str(d), "--mask", str(t / "mask.mrc")], (
        "mask {t}/mask.mrc is 20 x 20 x 20 voxels, the particles are 16 x 16 x 16"
    )


def _mask_empty(t):
    d = _particles(t / "d")
    _write(t / "mask.mrc", np.zeros((BOX,) * 3, np.float32))
    return [str(d), "--mask", str(t / "mask.mrc")], (
        "mask {t}/mask.mrc: the mask is empty (no voxel above 0.5)"
    )


CASES = {f.__name__[1:]: f for f in (
    _truncated, _wrong_box, _non_cubic, _image_2d, _nan_voxels, _inf_voxel, _constant,
    _integer_mode, _not_mrc, _voxel_size, _no_files, _empty_star, _missing_column, _bad_path,
    _bad_number, _no_pixel_size, _weight_shape, _weight_zero, _weight_range, _weight_missing,
    _premultiplied_signed, _premultiplied_all_signed, _premultiplied_zero, _ctf2_sums_unmarked,
    _ctf2_sums_forced_multiplied,
    _too_many_classes, _classes_after_drop, _tilt_reversed, _tilt_too_wide, _out_is_a_file,
    _out_is_input, _out_holds_other_run, _mask_shape, _mask_empty,
)}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_stops_with_one_line(tmp_path, capsys, case):
    argv, expected = CASES[case](tmp_path)
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    status = main(["run", *argv, "--iterations", "1"])
    err = capsys.readouterr().err
    lines = [e for e in err.splitlines() if not LOGGED.match(e)]
    message = expected.format(d=tmp_path / "d", t=tmp_path)
    assert status == 2, err
    assert "Traceback" not in err
    assert lines[0] == f"faml: error: {message}", err
    assert len(lines) == 2 and lines[1].startswith("hint: "), err
    assert not (tmp_path / "out" / "iterations").exists()


def test_several_problems_one_line_each_then_a_count(tmp_path, capsys):
    d = _particles(tmp_path / "d", n=26)
    for i in range(23):
        _write(d / f"p{i:02d}.mrc", np.zeros((BOX,) * 3, np.float32))
    assert main(["run", str(d), "--out", str(tmp_path / "o"), "--classes", "4"]) == 2
    err = [e for e in capsys.readouterr().err.splitlines() if not LOGGED.match(e)]
    assert err[0] == "  --classes 4 is more than the 3 good particles"
    assert err[1] == f"  particle 1 ({d}/p00.mrc): constant: every voxel is 0"
    assert err[20] == "  ... and 4 more"
    assert err[21] == "faml: error: 24 problems with the input (listed above)"
    assert err[22] == "hint: --skip-bad drops the 23 bad particles and runs on the rest"
    assert len(err) == 23


def test_skip_bad_drops_and_lists_them_and_the_run_goes_on(tmp_path, capsys):
    d = _particles(tmp_path / "d", n=8)
    _write(d / "p01.mrc", np.zeros((BOX,) * 3, np.float32))
    raw = (d / "p05.mrc").read_bytes()
    (d / "p05.mrc").write_bytes(raw[:2000])
    out = tmp_path / "o"
    argv = ["run", str(d), "--out", str(out), "--iterations", "1", "--starts", "1",
            "--skip-bad"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "WARNING: --skip-bad: dropped 2 of 8 particles" in err
    listed = (out / "dropped_particles.txt").read_text().splitlines()
    assert listed[1] == f"2\t{d}/p01.mrc\tconstant: every voxel is 0"
    assert listed[2] == f"6\t{d}/p05.mrc\ttruncated: 2000 bytes, its header says 17408"
    assert json.loads((out / "run.json").read_text())["particles"] == 6
    # the same command again is the same run; another one needs --overwrite
    assert main(argv) == 0
    assert main([*argv, "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "holds another run (run.json, iterations; other particles or settings)" in err
    assert main([*argv, "--seed", "3", "--overwrite"]) == 0


def test_validate_table_is_cheap_and_reports(tmp_path):
    d = _particles(tmp_path / "d")
    report = validate_table(from_mrc_files(d), classes=2)
    assert report.ok and report.lines() == []
    _write(d / "p03.mrc", np.zeros((BOX,) * 3, np.float32))
    report = validate_table(from_mrc_files(d), classes=2, check_data=False)
    assert report.ok  # headers only: a constant volume passes
    report = validate_table(from_mrc_files(d), classes=2)
    assert report.bad_indices() == [3] and list(report.good_indices()) == [0, 1, 2, 4, 5]


def test_the_star_reader_names_the_file_and_the_particle(tmp_path):
    from faml.io.star import read_particles_star

    _bad_path(tmp_path)
    star = tmp_path / "d" / "p.star"
    message = r"p\.star: particle 2 \(rlnImageName, line 13\): no such file 'elsewhere/p99\.mrc'"
    with pytest.raises(ValueError, match=message + r" \(relative to "):
        read_particles_star(star)
    table = read_particles_star(star, strict=False)  # kept for the checks to report
    assert validate_table(table).lines() == [
        f"particle 2 ({tmp_path}/d/elsewhere/p99.mrc): no such file"
    ]
