"""The ``faml`` command: planted pose recovered from MRC files, bad input in one sentence."""

import mrcfile
import numpy as np
import pytest
import scipy.fft

from conftest import transform_reference
from faml.cli import main
from faml.geometry.euler import euler_to_matrix
from faml.geometry.rotations import rotation_distance
from faml.geometry.wedge import wedge_mask


def write(path, vol, voxel=21.0):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(vol.astype(np.float32))
        m.voxel_size = voxel


def test_align_prints_the_planted_pose(tmp_path, capsys, ribosome32):
    angles = np.array([40.0, 70.0, -120.0])
    shift = np.array([1.0, -2.0, 0.5])  # voxels
    particle = transform_reference(ribosome32, euler_to_matrix(angles), shift)
    wedge = wedge_mask(32, (-50, 70))
    particle = scipy.fft.irfftn(scipy.fft.rfftn(particle) * wedge, s=particle.shape)
    write(tmp_path / "p.mrc", particle)
    write(tmp_path / "avg.mrc", ribosome32)
    rc = main(["align", str(tmp_path / "p.mrc"), str(tmp_path / "avg.mrc"),
               "--tilt-range", "-50", "70", "--candidates", "5"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    assert "voxel size 21" in out[0]
    best = out[2].split()
    assert best[0] == "1"
    rot, tilt, psi, ox, oy, oz = map(float, best[1:7])
    assert rotation_distance(euler_to_matrix([rot, tilt, psi]), euler_to_matrix(angles)) < 3.0
    # RELION's origin is minus the displacement, in Angstrom.
    np.testing.assert_allclose([ox, oy, oz], -shift * 21.0, atol=0.5 * 21.0)
    assert len(out) == 2 + 5


def test_align_rejects_mismatched_boxes(tmp_path, capsys, ribosome32):
    write(tmp_path / "p.mrc", ribosome32)
    write(tmp_path / "avg.mrc", ribosome32[:24, :24, :24])
    assert main(["align", str(tmp_path / "p.mrc"), str(tmp_path / "avg.mrc")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("faml: error: particle ") and "same cubic box" in err[0]


def test_bad_tilt_range_is_one_sentence(tmp_path, capsys, ribosome32):
    write(tmp_path / "p.mrc", ribosome32)
    rc = main(["align", str(tmp_path / "p.mrc"), str(tmp_path / "p.mrc"),
               "--tilt-range", "60", "-60"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("faml: error:") and "tilt" in err[0]
    assert len(err) == 2 and err[1].startswith("hint: ")


def test_demo_end_to_end(tmp_path, capsys):
    """The demo on a smaller set: the map must match the shipped truth."""
    from faml.cli import main as cli_main

    rc = cli_main(["demo", "--out", str(tmp_path / "d"), "--particles", "40", "--snr", "0.5",
                   "--iterations", "4", "--workers", "1"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    corr = float(out.split("correlation ")[1].split(",")[0])
    assert corr > 0.9, out
    assert (tmp_path / "d" / "run" / "particles.star").exists()


def test_paper_exact_switches_the_published_choices(tmp_path):
    """--paper-exact: no scan, plain likelihood, Voronoi weights, no local neighbours."""
    import json

    from conftest import make_dataset, polnet_map

    make_dataset(tmp_path / "p", [polnet_map("1bxn")], 10, 1.0, seed=2)
    rc = main(["run", str(tmp_path / "p"), "--out", str(tmp_path / "r"), "--iterations", "1",
               "--paper-exact"])  # fmt: skip
    assert rc == 0
    config = json.loads((tmp_path / "r" / "run.json").read_text())["config"]
    assert config["scan_step_deg"] is None and config["likelihood"] == "plain"
    assert config["voronoi"] is True and config["local_candidates"] == 0
    assert config["fa_iterations"] == 0
    assert config["average_update"] == "paper" and config["starts"] == 1


def test_simulate_run_evaluate_from_the_command_line(tmp_path, capsys):
    """faml simulate (an atomic model, realistic mode) -> faml run -> faml evaluate --json."""
    import json

    from conftest import shared_path
    from faml.evaluate import evaluate_map  # noqa: F401  (the command's library)

    model = shared_path("atomic", "1s3x.pdb")
    sim, out = tmp_path / "sim", tmp_path / "run"
    rc = main(["simulate", "--structure", str(model), "--n", "12", "--box", "20",
               "--voxel-size", "10", "--snr", "1.0", "--tilt-range", "-50", "70",
               "--tilt-step", "3", "--seed", "3", "--out", str(sim)])  # fmt: skip
    assert rc == 0
    assert "12 particles" in capsys.readouterr().out
    assert (sim / "truth" / "class_001.mrc").exists() and (sim / "weights").is_dir()
    assert main(["simulate", "--structure", str(model), "--n", "2", "--box", "20",
                 "--voxel-size", "10", "--snr", "1", "--out", str(sim)]) == 2  # fmt: skip
    assert "overwrite" in capsys.readouterr().err
    rc = main(["run", str(sim / "particles.star"), "--out", str(out), "--iterations", "3",
               "--starts", "1"])  # fmt: skip
    assert rc == 0
    rc = main(["evaluate", str(out), "--truth", str(sim), "--json", str(tmp_path / "e.json")])
    assert rc == 0
    figures = json.loads((tmp_path / "e.json").read_text())
    assert figures["summary"]["within_15deg"] > 0.8  # SNR 1: the poses are easy
    assert figures["summary"]["mean_correlation"] > 0.8
    assert figures["summary"]["oracle_mean_correlation"] > 0.8
    # one map against one truth map: the truth scores perfectly against itself
    truth = sim / "truth" / "class_001.mrc"
    rc = main(["evaluate", "--map", str(truth), "--truth", str(truth), "--json",
               str(tmp_path / "m.json")])  # fmt: skip
    assert rc == 0
    assert json.loads((tmp_path / "m.json").read_text())["correlation"] > 0.999
    assert main(["evaluate", "--truth", str(sim)]) == 2  # neither RUN_DIR nor --map
    assert "give a run directory" in capsys.readouterr().err
