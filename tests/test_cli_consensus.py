"""``faml run --classes K --consensus``: a K = 1 run first, then the classes from it.

Planted signal: two states of one complex that differ only by a blob at one of two places,
SNR 0.5. One command runs the reference-free consensus (``OUT/consensus``), the
classification without a focus (``OUT/unfocused``), the focus where its classes differ and
the focused classification from the consensus's map and poses; the classes are the states.
Conflicting options are one line, exit status 2.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import starfile

from conftest import polnet_map
from faml.cli import main
from faml.evaluate.classes import match_classes
from faml.io.mrc import write_volume
from faml.simulate.dataset import read_truth

BOX = 24


def _states(folder):
    """Two maps of 1U6G with a blob (radius 1.5 voxels) at one of two places 3 voxels apart."""
    z, y, x = np.indices((BOX,) * 3)
    base = polnet_map("1u6g", BOX)
    paths = []
    for name, dx in (("left", -1.5), ("right", 1.5)):
        r2 = (z - 15) ** 2 + (y - 11) ** 2 + (x - 13 - dx) ** 2
        vol = base + 2.0 * base.max() * np.exp(-r2 / (2 * 1.5**2)).astype(np.float32)
        paths.append(folder / f"{name}.mrc")
        write_volume(paths[-1], vol, 10.0)
    return paths


@pytest.fixture(scope="module")
def consensus_run(tmp_path_factory):
    top = tmp_path_factory.mktemp("consensus")
    maps = _states(top)
    assert main(["-q", "simulate", "--structure", str(maps[0]), "--structure", str(maps[1]),
                 "--n", "15", "--box", str(BOX), "--voxel-size", "10", "--snr", "0.5",
                 "--mode", "fast", "--seed", "6", "--out", str(top / "sim")]) == 0  # fmt: skip
    out = top / "run"
    assert main(["-q", "run", str(top / "sim" / "particles.star"), "--out", str(out),
                 "--classes", "2", "--consensus", "--focus-mask", "auto", "--iterations", "4",
                 "--candidates", "8", "--starts", "1", "--fa-iterations", "2", "--no-verify",
                 "--seed", "2"]) == 0  # fmt: skip
    return top, out


def test_consensus_then_classes_find_the_two_states(consensus_run):
    top, out = consensus_run
    first = json.loads((out / "consensus" / "run.json").read_text())
    assert first["config"]["classes"] == 1 and first["config"]["local_search_deg"] is None
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["classes"] == 2 and info["config"]["local_search_deg"] == 15.0
    assert info["config"]["references"] == 1 and info["config"]["focused"]
    assert (out / "unfocused" / "run.json").exists() and (out / "focus_auto.mrc").exists()
    truth = read_truth(top / "sim")
    got = starfile.read(out / "particles.star", always_dict=True)["particles"]
    where = {Path(n).name: i for i, n in enumerate(truth.image_names)}
    order = [where[Path(n).name] for n in got["rlnImageName"]]
    f1 = match_classes(got["rlnClassNumber"].to_numpy() - 1, truth.classes[order], 2, 2).mean_f1
    assert f1 >= 0.9


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--classes", "1"], "--consensus starts K > 1 classes from a consensus: give --classes"),
        (["--classes", "2", "--reference", "r.mrc"], "--consensus runs reference-free"),
        (["--classes", "2", "--focus-mask", "f.mrc"], "--consensus makes its map in a frame"),
    ],
)
def test_conflicting_options_are_one_line(tmp_path, capsys, extra, phrase):
    assert main(["run", "x.star", "--out", str(tmp_path / "o"), "--consensus", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"faml: error: {phrase}")
