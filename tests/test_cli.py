"""The ``faml`` command: planted pose recovered from MRC files, bad input in one sentence."""

import json

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
    config = json.loads((tmp_path / "r" / "run.json").read_text())["config"]["tuning"]
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


# --- the command as a person meets it: help, plan, --quiet, errors ---


def test_help_shows_groups_defaults_and_examples(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    top = capsys.readouterr().out
    assert "commands:" in top and "examples:" in top
    for command in ("align", "run", "simulate", "evaluate", "report", "export", "demo"):
        assert f"\n    {command} " in top, command
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for group in ("input:", "output:", "model:", "parallel:", "messages:", "advanced ("):
        assert f"\n{group}" in text, group
    flat = " ".join(text.split())
    assert "number of classes K (default: 1)" in flat
    assert "(default: -60 60)" in flat and "(default: None)" not in flat
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("faml ")


@pytest.fixture
def tiny_particles(tmp_path):
    from conftest import make_dataset, polnet_map

    make_dataset(tmp_path / "p", [polnet_map("1bxn", 24)], 8, 1.0, seed=2)
    return tmp_path / "p"


def test_plan_estimate_interrupt_continue_quiet(tiny_particles, tmp_path, capsys, monkeypatch):
    """The plan with the run's numbers, the time estimate, Ctrl-C after iteration 1 (exit 130,
    --continue named), then --continue --quiet: no INFO lines."""
    from faml.report import ReportHook

    out = tmp_path / "r"
    report = ReportHook.__call__
    calls = []

    def interrupt_after_first(*a, **k):
        calls.append(1)
        report(*a, **k)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(ReportHook, "__call__", interrupt_after_first)
    args = [
        "run",
        str(tiny_particles),
        "--out",
        str(out),
        "--iterations",
        "2",
        "--starts",
        "1",
        "--fa-iterations",
        "1",
        "--batch-size",
        "4",
        "--gold-standard",
        "--symmetry",
        "C2",
    ]
    assert main(args) == 130
    err = capsys.readouterr().err.splitlines()
    plan = {line.split()[1]: line for line in err if line[9:11] == "  "}
    assert "8, from" in plan["particles"]
    assert "24^3 voxels, 10 A/voxel (240 A)" in plan["box"]
    assert plan["classes"].endswith(" 1")
    assert (
        "faml, FA warm-up for the first 1 iteration; 1 random start; at most 2 iterations"
        in (plan["method"])
    )
    assert plan["symmetry"].endswith("C2") and "yes" in plan["gold"]
    assert "soft sphere" in plan["mask"]
    assert "this process (1 worker), 4 particles per task" in plan["map"]
    assert plan["output"].endswith(str(out.resolve()))
    assert any("iteration 1: " in e and "particles/s after 4 of 8 particles: about" in e
               for e in err)  # fmt: skip
    assert err[-2] == f"faml: error: interrupted; iteration 1 is saved in {out}"
    assert err[-1] == "hint: run the same command with --continue to resume from it"
    assert not any("Traceback" in e for e in err)

    assert main([*args, "--continue", "--quiet"]) == 0
    captured = capsys.readouterr()
    # no plan, no INFO line, no progress bar; warnings stay (this short run's verdict)
    assert all("WARNING" in line for line in captured.err.splitlines()), captured.err
    assert "model.star" in captured.out
    history = json.loads((out / "run.json").read_text())["iterations"]
    assert [h["iteration"] for h in history] == [0, 1, 2]


def _fails_with(exc):
    def command(args):
        raise exc

    return command


@pytest.mark.parametrize(
    ("exc", "message", "hint", "status"),
    [
        (FileNotFoundError(2, "No such file or directory", "in/particles.star"),
         "no such file or folder: in/particles.star", "check the path", 2),
        (ValueError("in/x.star is not a readable STAR file (bad loop)"),
         "in/x.star is not a readable STAR file (bad loop)", "RELION STAR file", 2),
        (ValueError("--classes must be at least 1, got 0"),
         "--classes must be at least 1, got 0", "faml run --help", 2),
        (PermissionError(13, "Permission denied", "out/run.json"),
         "permission denied: out/run.json", "you can write to (--out out)", 2),
        (OSError(28, "No space left on device", "out/iterations/003/model.npz"),
         "no space left on the device writing out/iterations/003/model.npz",
         "--continue resumes", 1),
        (FileExistsError("out already holds a simulation"), "out already holds a simulation",
         "choose another output folder", 2),
        (RuntimeError("something unforeseen"), "RuntimeError: something unforeseen",
         "--debug", 1),
    ],
)  # fmt: skip
def test_errors_are_one_line_and_a_hint(monkeypatch, capsys, exc, message, hint, status):
    import faml.cli

    monkeypatch.setattr(faml.cli, "_cmd_run", _fails_with(exc))
    assert main(["run", "in/particles.star", "--out", "out"]) == status
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"faml: error: {message}"
    assert len(err) == 2 and err[1].startswith("hint: ") and hint in err[1], err
    # --debug: the same lines after the full traceback
    assert main(["run", "in/particles.star", "--out", "out", "--debug"]) == status
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert f"faml: error: {message}\nhint: " in err


def test_a_lost_cluster_exits_3(monkeypatch, capsys):
    import faml.cli
    from faml.parallel import ExecutorLost

    lost = ExecutorLost("lost the Dask scheduler at tcp://h:1; iteration 4 is saved: run the "
                        "same command with --continue to resume")  # fmt: skip
    monkeypatch.setattr(faml.cli, "_cmd_run", _fails_with(lost))
    assert main(["-q", "run", "p.star", "--out", "o"]) == 3
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"faml: error: {lost}" and err[1].startswith("hint: ")


def test_real_bad_inputs_name_the_file(tmp_path, capsys):
    (tmp_path / "bad.mrc").write_bytes(b"not an MRC file")
    assert main(["run", str(tmp_path / "bad.mrc"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"faml: error: {tmp_path / 'bad.mrc'} is not a readable MRC file")
    assert err[1].startswith("hint: ") and len(err) == 2
    assert main(["run", str(tmp_path / "missing.star"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"faml: error: no such file or folder: {tmp_path / 'missing.star'}",
                   "hint: check the path; see 'faml run --help'"]  # fmt: skip
