"""``faml run --continue``: the run in ``--out`` must be this command's; ``faml run --help``.

A run records its particles and settings in ``OUT/inputs.json``; ``--continue`` compares
them with the command's and refuses other particles or settings in one line naming the
options, exit status 2. ``--iterations`` may grow and ``--batch-size`` never counts (the
results do not depend on it).
"""

import json
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from faml.cli import main

# few, fast iterations: one random start, one FA iteration, then FAML
QUICK = ["--starts", "1", "--fa-iterations", "1", "--candidates", "8"]

MODEL = [
    "--classes", "--reference", "--initial-lowpass", "--local-search", "--consensus", "--method",
    "--iterations", "--junk", "--stability", "--symmetry", "--gold-standard", "--mask",
    "--focus-mask",
    "--particle-diameter", "--particle-mask", "--seed", "--max-shift",
]  # fmt: skip
TUNING = {
    "--candidates", "--scan-step", "--no-scan", "--likelihood", "--local-candidates",
    "--local-rings", "--voronoi", "--starts", "--start-iterations", "--fa-iterations",
    "--grid-iterations", "--no-verify", "--average-update", "--paper-exact",
}  # fmt: skip


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    """20 simulated particles (fast mode, the demo structure, box 24) and a 2-iteration run."""
    from importlib import resources

    top = tmp_path_factory.mktemp("continue")
    with resources.as_file(resources.files("faml.data") / "demo_structure.mrc") as structure:
        assert main(["-q", "simulate", "--structure", str(structure), "--n", "20", "--box", "24",
                     "--voxel-size", "10", "--snr", "1", "--mode", "fast", "--seed", "4",
                     "--out", str(top / "sim")]) == 0  # fmt: skip
    star = top / "sim" / "particles.star"
    assert main(["-q", "run", str(star), "--out", str(top / "run"), "--iterations", "2",
                 *QUICK]) == 0  # fmt: skip
    return star, top / "run"


def _state(out):
    """What a refused command must leave as it was."""
    return (out / "inputs.json").read_text(), sorted(p.name for p in (out / "iterations").iterdir())


def test_continue_with_other_settings_is_one_line(run2, capsys):
    star, out = run2
    before = _state(out)
    capsys.readouterr()
    rc = main(["-q", "run", str(star), "--out", str(out), "--iterations", "2", *QUICK,
               "--continue", "--classes", "2"])  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert rc == 2
    assert err == [
        f"faml: error: --continue: {out} was run with --classes 1, this command asks for "
        "--classes 2; run the same command, or --overwrite to start anew"
    ]
    assert _state(out) == before


def test_continue_on_other_particles_is_one_line(run2, capsys):
    star, out = run2
    lines = star.read_text().rstrip("\n").split("\n")
    fewer = star.with_name("fewer.star")  # the first 16 of the 20 particles
    fewer.write_text("\n".join(lines[:-4]) + "\n")
    before = _state(out)
    capsys.readouterr()
    rc = main(["-q", "run", str(fewer), "--out", str(out), "--iterations", "2", *QUICK,
               "--continue"])  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert rc == 2
    assert err == [
        f"faml: error: --continue: {out} was run with 20 particles, this command asks for "
        "16 particles; run the same command, or --overwrite to start anew"
    ]
    assert _state(out) == before


def _without_clock(path) -> bytes:
    """The file's bytes, its write time masked: the MRC header's label ``Created by
    mrcfile.py  YYYY-MM-DD HH:MM:SS``, the STAR file's ``# Created by the starfile Python
    package ... at HH:MM:SS on DD/MM/YYYY``; nothing else of the file may differ."""
    data = path.read_bytes()
    data = re.sub(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", b"YYYY-MM-DD HH:MM:SS", data, count=1)
    return re.sub(rb" at \d\d:\d\d:\d\d on \d\d/\d\d/\d{4}", b" at TIME", data, count=1)


def test_continue_to_more_iterations_with_another_batch_size(run2, tmp_path, capsys):
    """--continue --iterations 3 --batch-size 3 gives the fresh 3-iteration run's files."""
    star, out = run2
    continued = tmp_path / "continued"
    shutil.copytree(out, continued)
    capsys.readouterr()
    assert main(["run", str(star), "--out", str(continued), "--iterations", "3", *QUICK,
                 "--batch-size", "3", "--continue"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert f"--continue: {continued} was run with --iterations 2, this command continues it " \
        "to --iterations 3" in err  # fmt: skip
    assert "continuing after iteration 2" in err
    fresh = tmp_path / "fresh"
    assert main(["-q", "run", str(star), "--out", str(fresh), "--iterations", "3", *QUICK]) == 0
    history = json.loads((continued / "run.json").read_text())["iterations"]
    assert [h["iteration"] for h in history] == [0, 1, 2, 3]
    for name in ("particles.star", "class_001.mrc"):
        a, b = _without_clock(continued / name), _without_clock(fresh / name)
        assert a == b, name
    # the recorded inputs are now the continued run's, the batch size not among them
    inputs = json.loads((continued / "inputs.json").read_text())
    assert inputs["config"]["iterations"] == 3 and "chunk_size" not in inputs["config"]


def test_continue_without_inputs_json_is_refused(run2, tmp_path, capsys):
    star, _ = run2
    out = tmp_path / "o"
    (out / "iterations" / "001").mkdir(parents=True)
    capsys.readouterr()
    rc = main(["-q", "run", str(star), "--out", str(out), *QUICK, "--continue"])
    assert rc == 2
    assert capsys.readouterr().err.splitlines() == [
        f"faml: error: --continue: --out {out} holds a run (iterations) but no inputs.json to "
        "compare this command with; --overwrite to start anew"
    ]


# --- the comparison itself, on fingerprints (no run) ---


class _Table(SimpleNamespace):
    def __len__(self):
        return len(self.paths)


def _table(**changes):
    """What the fingerprint reads of a particle table: 4 particles of 24^3 at 10 A."""
    n = 4
    return _Table(**{
        "paths": [f"p/{i}.mrc" for i in range(n)], "weight_paths": [None] * n,
        "tilt_ranges": np.tile([-60.0, 60.0], (n, 1)), "ctf_premultiplied": False,
        "box": 24, "voxel_size": 10.0, **changes,
    })  # fmt: skip


def _config(**settings):
    return SimpleNamespace(to_dict=lambda: dict(settings))


def _args(out, resume=False, overwrite=False):
    return SimpleNamespace(out=str(out), resume=resume, overwrite=overwrite)


def _record(out, table, config):
    from faml.cli.out_folder import _record_inputs

    _record_inputs(out, table, config, [])
    (out / "run.json").write_text("{}")


def test_batch_size_and_grouping_do_not_count(tmp_path):
    """A rerun (or --continue) with another chunk_size, or a config grouped differently
    (``{"tuning": {"starts": 3}}``), is the same run; an old record with chunk_size too."""
    from faml.cli.out_folder import _check_out

    table = _table()
    _record(tmp_path, table, _config(classes=1, iterations=2, starts=3, chunk_size=8))
    recorded = json.loads((tmp_path / "inputs.json").read_text())
    assert "chunk_size" not in recorded["config"]
    recorded["config"]["chunk_size"] = 8  # as runs before recorded it
    (tmp_path / "inputs.json").write_text(json.dumps(recorded))
    for resume in (False, True):
        _check_out(_args(tmp_path, resume), table, _config(classes=1, iterations=2,
                                                           starts=3, chunk_size=3))  # fmt: skip
        nested = _config(classes=1, iterations=2, tuning={"starts": 3})  # no chunk_size at all
        _check_out(_args(tmp_path, resume), table, nested)


def test_several_differences_in_one_line(tmp_path, caplog):
    from faml.cli.out_folder import RunMismatch, _check_out

    table = _table()
    _record(tmp_path, table, _config(classes=1, iterations=2, seed=0, tuning={"starts": 3},
                                     scan_step_deg=15.0, verify=True))  # fmt: skip
    now = _config(classes=1, iterations=5, seed=2, tuning={"starts": 1}, scan_step_deg=None,
                  verify=False)  # fmt: skip
    other = _table(voxel_size=8.0, ctf_premultiplied=True)
    with pytest.raises(RunMismatch) as refused:
        _check_out(_args(tmp_path, resume=True), other, now)
    assert str(refused.value) == (
        f"--continue: {tmp_path} was run with voxel size 10 A, --ctf-form multiplied, --seed 0, "
        "--starts 3, --scan-step 15, the verification (no --no-verify), this command asks for "
        "voxel size 8 A, --ctf-form premultiplied, --seed 2, --starts 1, --no-scan, "
        "--no-verify; run the same command, or --overwrite to start anew"
    )
    # without --continue: the message as before
    with pytest.raises(FileExistsError, match="holds another run"):
        _check_out(_args(tmp_path), other, now)


def test_another_mask_is_another_run(tmp_path):
    """A --mask (or --particle-diameter) decides the result: its voxels are fingerprinted."""
    from faml.cli.out_folder import RunMismatch, _check_out, _record_inputs

    table, config = _table(), _config(classes=1, iterations=2)
    mask = np.zeros((24,) * 3, np.float32)
    mask[4:20, 4:20, 4:20] = 1.0
    _record_inputs(tmp_path, table, config, [], mask)
    (tmp_path / "run.json").write_text("{}")
    _check_out(_args(tmp_path, resume=True), table, config, mask.copy())  # the same voxels
    other = mask.copy()
    other[4] = 0.0
    for given, phrase in (
        (other, "--mask/--particle-diameter (sha256 "),
        (None, "the default mask"),
    ):
        with pytest.raises(RunMismatch, match=r"asks for " + re.escape(phrase)):
            _check_out(_args(tmp_path, resume=True), table, config, given)


# --- faml run --help: the product's options first, the tuning in one group at the end ---


def test_run_help_puts_the_tuning_last_in_one_group(capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    usage = text.split("\n\n")[0]
    assert usage.index("--classes") < usage.index("--candidates")
    assert usage.index("--workers") < usage.index("--candidates")
    groups, title = {}, None  # {group title: its long options, in order}
    for line in text.split("\nexamples:\n")[0].splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
            groups[title] = []
        elif title and line.startswith("  -"):
            groups[title] += re.findall(r"--[a-z][a-z-]*", line.strip().split("  ")[0])
    advanced = [t for t in groups if t.startswith("advanced")]
    assert advanced == ["advanced (tuning; measured departures from the paper, see the README)"]
    assert set(groups[advanced[0]]) == TUNING
    assert list(groups)[-2:] == ["messages", advanced[0]]
    assert list(groups)[:5] == ["positional arguments", "options", "input", "output", "model"]
    assert groups["model"] == MODEL
    assert groups["parallel"] == [
        "--workers", "--scheduler", "--cluster", "--cluster-config", "--batch-size"
    ]  # fmt: skip
    assert text.index("--classes") < text.index("--candidates")
    # the default mask the help names is the engine's
    from faml.geometry.masks import DEFAULT_MASK_RADIUS

    assert f"radius {DEFAULT_MASK_RADIUS:g} box" in " ".join(text.split())
