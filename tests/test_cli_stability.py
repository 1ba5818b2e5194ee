"""``faml run --classes K --stability N``: replicates with other seeds, compared.

On two clearly different structures the classes are found again by every seed (stable,
K = 2 supported); the figures reach ``run.json``, ``stability.star``, the log and the report;
``--stability`` without classes is one line, exit status 2.
"""

import json

import numpy as np
import pytest
import starfile

from conftest import shared_path
from faml.cli import main


@pytest.fixture(scope="module")
def two_state_run(tmp_path_factory):
    top = tmp_path_factory.mktemp("stability")
    structures = [shared_path("maps", "polnet_10A", f"{n}_10A.mrc") for n in ("1bxn", "3cf3")]
    assert main(["-q", "simulate", "--structure", str(structures[0]), "--structure",
                 str(structures[1]), "--n", "10", "--box", "24", "--voxel-size", "10",
                 "--snr", "1", "--mode", "fast", "--seed", "3", "--out",
                 str(top / "sim")]) == 0  # fmt: skip
    out = top / "run"
    assert main(["run", str(top / "sim" / "particles.star"), "--out", str(out), "--classes",
                 "2", "--iterations", "2", "--candidates", "8", "--starts", "1",
                 "--fa-iterations", "1", "--no-verify", "--stability", "1", "--seed",
                 "5"]) == 0  # fmt: skip
    return out


def test_two_structures_are_stable(two_state_run):
    info = json.loads((two_state_run / "run.json").read_text())
    found = info["stability"]
    assert found["seeds"] == [5, 1005]
    assert found["suggested_classes"] == 2, found["evidence"]
    assert all(found["class_stable"])
    assert min(found["adjusted_rand_index"]) > 0.8
    assert "K = 2 is supported" in found["evidence"]
    for seed in (1005,):
        assert (two_state_run / "replicates" / f"seed{seed}" / "particles.star").exists()
    table = starfile.read(two_state_run / "stability.star", always_dict=True)["particles"]
    assert len(table) == 20
    assert set(table["rlnClassNumber"]) == {1, 2}
    assert np.median(table["famlClassConsistency"]) == 1.0
    assert "class stability" in (two_state_run / "report.html").read_text()


def test_stability_needs_classes(tmp_path, capsys):
    assert main(["run", "x.star", "--out", str(tmp_path / "o"), "--stability", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[:1] == ["faml: error: --stability 1: it needs a number of replicates >= 1 and "
                   "--classes 2 or more (got --classes 1)"]  # fmt: skip


def test_a_run_on_the_kept_classes_is_one_command(two_state_run, tmp_path, capsys):
    """``--select-classes 2`` on the run's particles.star takes class 2's particles only;
    a class the file does not have, or a STAR file without classes, is one line."""
    star = two_state_run / "particles.star"
    classes = starfile.read(star, always_dict=True)["particles"]["rlnClassNumber"]
    args = ["run", str(star), "--out", str(tmp_path / "kept"), "--iterations", "1",
            "--candidates", "8", "--starts", "1", "--fa-iterations", "0", "--no-verify",
            "--select-classes", "2"]  # fmt: skip
    assert main(args) == 0
    kept = starfile.read(tmp_path / "kept" / "particles.star", always_dict=True)["particles"]
    assert len(kept) == int(np.sum(classes == 2))
    capsys.readouterr()
    assert main([*args[:3], str(tmp_path / "none"), *args[4:-1], "7"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"faml: error: --select-classes 7: {star} has no particle in those "
                      "classes (it has classes 1, 2)")  # fmt: skip
    sim_star = two_state_run.parent / "sim" / "particles.star"
    assert main(["run", str(sim_star), "--out", str(tmp_path / "x"), "--select-classes",
                 "1"]) == 2  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("faml: error: --select-classes needs rlnClassNumber in the input")


def test_junk_must_not_be_negative(tmp_path, capsys):
    assert main(["run", "x.star", "--out", str(tmp_path / "o"), "--junk", "-1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "faml: error: --junk -1: give a number of junk classes >= 0"
