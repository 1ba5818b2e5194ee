"""``faml run --reference``: a run from a map, its plan, its bad inputs, ``--continue``.

A run from the truth of a small simulation starts from it (no random starts, no FA warm-up;
the plan says so, ``run.json`` records ``references: 1``); a bad reference stops the run
with exit status 2 and one ``faml: error:`` line; ``--continue`` with another reference is
refused in one line naming ``--reference``.
"""

import contextlib
import io
import json
import shutil
import warnings
from types import SimpleNamespace

import mrcfile
import numpy as np
import pytest

from faml.cli import main


@pytest.fixture(scope="module")
def from_truth(tmp_path_factory):
    """16 simulated particles (fast mode, the demo structure, box 24) and a 2-iteration run
    from the simulation's truth; the run's stderr."""
    from importlib import resources

    top = tmp_path_factory.mktemp("reference")
    with resources.as_file(resources.files("faml.data") / "demo_structure.mrc") as structure:
        assert main(["-q", "simulate", "--structure", str(structure), "--n", "16", "--box", "24",
                     "--voxel-size", "10", "--snr", "1", "--mode", "fast", "--seed", "4",
                     "--out", str(top / "sim")]) == 0  # fmt: skip
    paths = SimpleNamespace(star=top / "sim" / "particles.star", out=top / "run",
                            truth=top / "sim" / "truth" / "class_001.mrc")  # fmt: skip
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert _run(paths, paths.out, "--reference", str(paths.truth)) == 0
    paths.err = err.getvalue().splitlines()
    return paths


def _run(paths, out, *extra):
    return main(["run", str(paths.star), "--out", str(out), "--iterations", "2",
                 "--candidates", "8", *extra])  # fmt: skip


def test_run_from_the_truth(from_truth):
    """Default --starts and --fa-iterations: neither runs."""
    plan = {line.split()[1]: line[25:] for line in from_truth.err if line[9:11] == "  "}
    assert plan["start"] == (
        f"from 1 reference ({from_truth.truth}), low-passed to 60 A; no random starts, no FA "
        "warm-up"
    )
    assert plan["method"] == (
        "faml (maximum likelihood from the first iteration); at most 2 iterations"
    )
    out = from_truth.out
    summary = json.loads((out / "run.json").read_text())
    assert summary["config"]["references"] == 1
    assert summary["config"]["initial_lowpass"] == 60.0
    assert [h["iteration"] for h in summary["iterations"]] == [0, 1, 2]
    assert not (out / "starts").exists() and not (out / "verify").exists()
    assert "references_sha256" in json.loads((out / "inputs.json").read_text())


def _mrc(path, data, voxel=10.0):
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as m:
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN in the data
        m.set_data(np.asarray(data, dtype=np.float32))
        m.voxel_size = voxel
    return path


def test_bad_references_are_one_line(from_truth, tmp_path, capsys):
    truth = mrcfile.read(from_truth.truth)
    nan = truth.copy()
    nan[12, 12, 12] = np.nan
    cases = {
        "image": ([_mrc(tmp_path / "image.mrc", truth[12])], [],
                  "is a 2D image of shape (24, 24), not a cubic 3D map"),
        "cuboid": ([_mrc(tmp_path / "cuboid.mrc", truth[:20])], [],
                   "has shape (20, 24, 24) (z, y, x), not that of a cubic 3D map"),
        "zero": ([_mrc(tmp_path / "zero.mrc", np.zeros_like(truth))], [],
                 "is constant (every voxel is 0): it holds no structure to start from"),
        "nan": ([_mrc(tmp_path / "nan.mrc", nan)], [], "has 1 NaN or infinite voxels of 13824"),
        "count": ([from_truth.truth] * 2, ["--classes", "3"], None),
    }  # fmt: skip
    for name, (paths, extra, sentence) in cases.items():
        refs = [a for p in paths for a in ("--reference", str(p))]
        capsys.readouterr()
        assert _run(from_truth, tmp_path / f"out_{name}", *refs, *extra) == 2, name
        errors = [e for e in capsys.readouterr().err.splitlines() if "error" in e]
        expected = (
            f"faml: error: reference {paths[0]} {sentence}" if sentence else
            "faml: error: 2 references for --classes 3: give one reference for every class "
            "or 3, one per class"
        )  # fmt: skip
        assert errors == [expected], name
        assert not (tmp_path / f"out_{name}" / "iterations").exists(), name


def test_continue_with_another_reference_is_refused(from_truth, tmp_path, capsys):
    out = from_truth.out
    other = _mrc(tmp_path / "other.mrc", 0.5 * mrcfile.read(from_truth.truth))
    before = json.loads((out / "inputs.json").read_text())["references_sha256"]
    capsys.readouterr()
    rc = _run(from_truth, out, "-q", "--continue", "--reference", str(other))
    err = capsys.readouterr().err.splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(
        f"faml: error: --continue: {out} was run with --reference (sha256 {before[:12]}), "
        "this command asks for --reference (sha256 "
    ), err
    assert err[0].endswith("; run the same command, or --overwrite to start anew")
    # without --reference: the same one line, the reference named once on each side
    capsys.readouterr()
    assert _run(from_truth, out, "-q", "--continue") == 2
    assert capsys.readouterr().err.splitlines() == [
        f"faml: error: --continue: {out} was run with --reference (sha256 {before[:12]}), this "
        "command asks for no --reference; run the same command, or --overwrite to start anew"
    ]


def test_continue_with_the_same_reference(from_truth, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(from_truth.out, out)
    assert _run(from_truth, out, "-q", "--continue", "--reference", str(from_truth.truth),
                "--iterations", "3") == 0  # fmt: skip
    history = json.loads((out / "run.json").read_text())["iterations"]
    assert [h["iteration"] for h in history] == [0, 1, 2, 3]


def test_plan_start_row_for_classes():
    """One map for every class, or one per class (no run)."""
    from faml.cli.plan import start_row
    from faml.ml.config import RunConfig

    one = start_row(["ref.mrc"], RunConfig(classes=3, references=1, initial_lowpass=40))
    assert one == (
        "from 1 reference (ref.mrc) for all 3 classes, each particle in a random class in "
        "iteration 1, low-passed to 40 A; no random starts, no FA warm-up"
    )
    each = start_row(["a.mrc", "b.mrc"], RunConfig(classes=2, references=2, method="fa"))
    assert each == "from 2 references (a.mrc, b.mrc), one per class, low-passed to 60 A; no " \
        "random starts"  # fmt: skip


def test_local_search_from_a_runs_own_particles_star(from_truth, tmp_path, capsys):
    """A run continues from another: its particles.star (poses) is the next run's input, the
    search local about those poses; the simulation's STAR (no poses) is refused in one line."""
    assert _run(from_truth, tmp_path / "none", "--local-search", "15") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("faml: error: --local-search needs poses in the input: ")
    star = from_truth.out / "particles.star"
    args = ["run", str(star), "--out", str(tmp_path / "local"), "--iterations", "2",
            "--candidates", "8", "--local-search", "15"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err.splitlines()
    plan = {line.split()[1]: line[25:] for line in err if line[9:11] == "  "}
    assert plan["start"] == (
        "from the average at the STAR file's poses; local search within 15 deg of each "
        "particle's pose (prior sigma 5 deg); no random starts, no FA warm-up"
    )
    import starfile

    from faml.geometry.euler import euler_to_matrix
    from faml.geometry.rotations import rotation_distance

    columns = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    before = starfile.read(star, always_dict=True)["particles"][columns].to_numpy()
    after = starfile.read(tmp_path / "local" / "particles.star", always_dict=True)["particles"]
    turned = rotation_distance(euler_to_matrix(after[columns].to_numpy()), euler_to_matrix(before))
    assert np.all(turned <= 15.0 + 1e-3), turned
    assert not (tmp_path / "local" / "starts").exists()


def test_local_search_from_a_dynamo_table(from_truth, tmp_path, capsys):
    """MRC particles with a Dynamo table of their true poses: the table's poses are the
    priors (the plan says so) and the poses found stay within the range of them."""
    import starfile

    from faml.geometry.euler import euler_to_matrix, matrix_to_euler
    from faml.geometry.rotations import rotation_distance
    from faml.io.star import read_particles_star
    from faml.simulate.dataset import read_truth

    truth = read_truth(from_truth.star.parent)
    table = read_particles_star(from_truth.star)
    folder = tmp_path / "particles"
    folder.mkdir()
    rows = []
    for i in range(len(table)):
        shutil.copy(table.path(i), folder / f"particle_{i + 1:05d}.mrc")
        rot, tilt, psi = matrix_to_euler(truth.rotations[i])
        r = np.zeros(35)
        r[0], r[3:6] = i + 1, truth.shifts[i]
        r[6:9] = (90.0 - rot, tilt, -90.0 - psi)  # RELION's angles as Dynamo's
        r[12], r[13], r[14] = 1, -60.0, 60.0
        rows.append(" ".join(f"{v:.6g}" for v in r))
    (tmp_path / "poses.tbl").write_text("\n".join(rows) + "\n")
    args = ["run", str(folder), "--dynamo-table", str(tmp_path / "poses.tbl"), "--out",
            str(tmp_path / "local"), "--iterations", "2", "--candidates", "8",
            "--local-search", "15", "--voxel-size", "10"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err.splitlines()
    plan = {line.split()[1]: line[25:] for line in err if line[9:11] == "  "}
    assert plan["start"].startswith("from the average at the Dynamo table's poses; local search")
    after = starfile.read(tmp_path / "local" / "particles.star", always_dict=True)["particles"]
    columns = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    found = euler_to_matrix(after[columns].to_numpy())
    names = [int(n.split("_")[-1].split(".")[0]) - 1 for n in after["rlnImageName"]]
    turned = rotation_distance(found, truth.rotations[names])
    assert np.all(turned <= 15.0 + 1e-3), turned
    assert np.median(turned) < 5.0, np.median(turned)
