"""Heterogeneity on crowded simulations: similar states, a rare state, junk, stability.

Usage::

    PYTHONPATH=src python benchmarks/heterogeneity/run.py --scenario NAME [--out DIR]

- ``single``: one state (the crowded 1U6G set of ``benchmarks/workflows``: 100 particles,
  32^3 at 10 A, SNR 0.02, +-60, phase-flipped CTF) classified reference-free with
  ``--classes 2 --stability 2`` (global search, random starts); the stability figures must
  say the split is not stable (suggested K = 1);
- ``single_consensus``: the same set with ``--classes 2 --consensus --focus-mask auto
  --stability 2`` (the split start; each replicate splits along the components of another
  half of the particles): again the classes must not be stable;
- ``states``: the two 50S assembly states (``benchmarks/workflows/states.py``'s crowded set:
  75 + 75 particles at 13.1 A, SNR 0.02, maps correlating 0.91), one command reference-free:
  ``--classes 2 --consensus --focus-mask auto --stability 2``: F1 against the truth, and the
  stability figures must say the classes are stable;
- ``three``: three states of 70/20/10% (140/40/20 particles; ``three_large``: 350/100/50):
  50S classes D and E and a third, D without the density of a sphere of 4.5 voxels at
  (z, y, x) = (12, 13, 20) (correlation 0.91 with D, 0.85 with E: an intermediate missing a
  domain), simulated as ``states``; ``--classes 3 --consensus --focus-mask auto``: the F1 of
  each state, the 10% state's above all;
- ``junk``: 1U6G as the target (70%) with 30% picks of three other proteins (1BXN, 3CF3,
  2CG9), crowded, SNR 0.02, 150 particles; ``--classes 1 --junk 2`` against ``--classes 1``
  on the target's particles alone: the share of junk out of the target class, the target
  map's masked correlation and FSC 0.5 with the truth; ``junk_seed2``: the same on a
  second simulation (seed 2); ``junk_none``: ``--classes 1 --junk 2`` on the 1U6G set of
  ``single`` (no junk), where the screen must move nothing.

Every run: the particle mask, ``--workers 2 --seed 1``; a run whose ``run.json`` exists is
kept (re-scored, not rerun). Writes ``OUT/<scenario>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import starfile

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "data" / "structures"
sys.path.insert(0, str(HERE.parent / "workflows"))
COMMON = ["--particle-mask", "--workers", "2", "--seed", "1"]


def faml(*args: str) -> float:
    """Run ``faml ARGS``; a run whose ``--out`` already holds a ``run.json`` is kept (its time)."""
    if args[0] == "run":
        done = Path(args[args.index("--out") + 1]) / "run.json"
        if done.exists():
            return float(json.loads(done.read_text())["seconds"])
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "faml", "-q", *args], check=True)
    return time.perf_counter() - t0


def simulate(out: Path, structures: list[str], n: int, seed: int = 1) -> Path:
    if not (out / "truth" / "truth.json").exists():
        args = ["simulate", "--crowded", "--n", str(n), "--box", "32", "--voxel-size", "10",
                "--snr", "0.02", "--tilt-range", "-60", "60", "--seed", str(seed),
                "--workers", "2", "--out", str(out)]  # fmt: skip
        for s in structures:
            args += ["--structure", str(SHARED / "atomic" / f"{s}.pdb")]
        faml(*args)
    return out


def mask_args(radius_share: float = 0.38, box: int = 32, voxel: float = 10.0) -> list[str]:
    # --particle-diameter that gives the particle mask radius 0.38 of the box (cli: edge 3)
    diameter = 2 * (radius_share * box - 3.0) * voxel
    return ["--particle-diameter", f"{diameter:.0f}"]


def single(out: Path) -> dict:
    sim = simulate(out / "sim_single", ["1u6g"], 100)
    run = out / "single_k2"
    wall = faml("run", str(sim / "particles.star"), "--out", str(run), "--overwrite",
                "--classes", "2", "--stability", "2", *COMMON, *mask_args())  # fmt: skip
    info = json.loads((run / "run.json").read_text())
    return {"stability": info["stability"], "wall_s": wall}


def single_consensus(out: Path) -> dict:
    sim = simulate(out / "sim_single", ["1u6g"], 100)
    run = out / "single_consensus"
    wall = faml("run", str(sim / "particles.star"), "--out", str(run), "--overwrite",
                "--classes", "2", "--consensus", "--focus-mask", "auto", "--stability", "2",
                *COMMON, *mask_args())  # fmt: skip
    info = json.loads((run / "run.json").read_text())
    return {"stability": info["stability"], "wall_s": wall}


STATES_DIAMETER = "280"  # the 50S sets' particle diameter (benchmarks/workflows/states.py)


def _scored_states(
    run: Path, sim: Path, states: int, names: list[str], star: Path | None = None
) -> dict:
    """F1 per state and overall, the confusion (predicted x true) of a run on a states set.

    ``star``: the run's particles (default ``run/particles.star``).
    """
    from faml.evaluate.classes import match_classes
    from faml.simulate.dataset import read_truth

    truth = read_truth(sim)
    where = {Path(n).name: i for i, n in enumerate(truth.image_names)}
    got = starfile.read(star or run / "particles.star", always_dict=True)["particles"]
    order = np.array([where[Path(n).name] for n in got["rlnImageName"]])
    structures = truth.metadata["structures"]
    true = np.asarray([names.index(structures[c]) for c in truth.classes])[order]
    c = match_classes(got["rlnClassNumber"].to_numpy() - 1, true, states, states)
    return {"f1": float(c.mean_f1), "f1_per_state": [round(float(f), 3) for f in c.f1],
            "confusion": c.confusion.tolist()}  # fmt: skip


def states(out: Path) -> dict:
    from states import simulate as simulate_states  # benchmarks/workflows/states.py

    sim = simulate_states(out / "states")
    run = out / "states_consensus"
    wall = faml("run", str(sim / "particles.star"), "--out", str(run), "--overwrite",
                "--classes", "2", "--consensus", "--focus-mask", "auto", "--stability", "2",
                "--particle-mask", "--particle-diameter", STATES_DIAMETER, "--workers", "2",
                "--seed", "1")  # fmt: skip
    info = json.loads((run / "run.json").read_text())
    from states import STATES

    names = [n.removesuffix(".mrc") for n in STATES]
    return {**_scored_states(run, sim, 2, names), "stability": info["stability"],
            "wall_s": wall}  # fmt: skip


THIRD_CENTRE, THIRD_RADIUS = (12, 13, 20), 4.5


def third_state(d_map: np.ndarray) -> np.ndarray:
    """Class D without the density of a soft sphere (radius 4.5 voxels, 1-voxel edge)."""
    z, y, x = np.indices(d_map.shape)
    r = np.sqrt(sum((a - c) ** 2 for a, c in zip((z, y, x), THIRD_CENTRE, strict=True)))
    return (d_map * (1.0 - np.clip((THIRD_RADIUS + 1.0 - r) / 2.0, 0.0, 1.0))).astype(np.float32)


def three(out: Path, tenth: int = 20, name: str = "three") -> dict:
    """The three-state scenario, ``tenth`` particles per 10% (200 in all by default)."""
    from states import MAPS, SNR, STATES, VOXEL

    from faml.io.mrc import read_volume
    from faml.simulate import CrowdedSettings, SimulationSettings, simulate_crowded

    sim = out / f"sim_{name}"
    names = ["tomodrgn_10076_classD_32", "tomodrgn_10076_classE_32", "classD_less_domain"]
    if not (sim / "truth" / "truth.json").exists():
        d, e = (read_volume(MAPS / n)[0].astype(np.float32) for n in STATES)
        maps = [d] * 7 + [e] * 2 + [third_state(d)]  # 70 / 20 / 10 %
        labels = [names[0]] * 7 + [names[1]] * 2 + [names[2]]
        simulate_crowded(maps, labels, tenth, sim, SimulationSettings(voxel_size=VOXEL, snr=SNR),
                         CrowdedSettings(), seed=1, workers=2, overwrite=True)  # fmt: skip
    run = out / f"{name}_consensus"
    wall = faml("run", str(sim / "particles.star"), "--out", str(run), "--overwrite",
                "--classes", "3", "--consensus", "--focus-mask", "auto", "--particle-mask",
                "--particle-diameter", STATES_DIAMETER, "--workers", "2",
                "--seed", "1")  # fmt: skip
    return {**_scored_states(run, sim, 3, names), "wall_s": wall}


def junk(out: Path, seed: int = 1) -> dict:
    """The target + 30% junk scenario on the simulation of ``seed`` (folders ``*_s2`` etc.)."""
    from faml.evaluate.maps import score_map
    from faml.io.mrc import read_volume
    from faml.simulate.dataset import read_truth

    tag = "" if seed == 1 else f"_s{seed}"
    # 7 x 15 target particles and 15 of each other protein: 150, 30% junk
    sim = simulate(out / f"sim_junk{tag}", ["1u6g"] * 7 + ["1bxn", "3cf3", "2cg9"], 15, seed)
    truth = read_truth(sim)
    where = {Path(n).name: i for i, n in enumerate(truth.image_names)}
    is_target = np.asarray(truth.classes) < 7

    def scored(run: Path) -> dict:
        s = score_map(read_volume(run / "class_001.mrc")[0], truth.maps[0], truth.voxel_size)
        return {"corr": float(s.correlation), "fsc05": float(s.resolution_05)}

    rows = {}
    run = out / ("junk_k1j2" if seed == 1 else f"junk{tag}")
    wall = faml("run", str(sim / "particles.star"), "--out", str(run), "--overwrite",
                "--classes", "1", "--junk", "2", *COMMON, *mask_args())  # fmt: skip
    got = starfile.read(run / "particles.star", always_dict=True)["particles"]
    target = is_target[[where[Path(n).name] for n in got["rlnImageName"]]]
    klass = got["rlnClassNumber"].to_numpy()
    rows["junk"] = {
        "junk_out_of_target": float(np.mean(klass[~target] != 1)),
        "target_in_target": float(np.mean(klass[target] == 1)),
        **scored(run), "wall_s": wall,
        "screen": json.loads((run / "run.json").read_text()).get("junk_screen"),
    }  # fmt: skip
    # the target's particles alone (the oracle selection), K = 1
    only = sim / "target_only.star"  # beside the simulation: its image names resolve
    blocks = starfile.read(sim / "particles.star", always_dict=True)
    names = blocks["particles"]["rlnImageName"]
    keep = is_target[[where[Path(n).name] for n in names]]
    blocks["particles"] = blocks["particles"][keep].reset_index(drop=True)
    starfile.write(blocks, only, overwrite=True)
    run = out / f"target_only{tag}"
    wall = faml("run", str(only), "--out", str(run), "--overwrite", *COMMON, *mask_args())
    rows["target_only"] = {**scored(run), "wall_s": wall}
    run = out / f"junk_k1{tag}"
    wall = faml("run", str(sim / "particles.star"), "--out", str(run), "--overwrite",
                *COMMON, *mask_args())  # fmt: skip
    rows["all_k1"] = {**scored(run), "wall_s": wall}
    return rows


def junk_none(out: Path) -> dict:
    """``--classes 1 --junk 2`` on the 1U6G set without junk: the screen must move nothing."""
    sim = simulate(out / "sim_single", ["1u6g"], 100)
    run = out / "single_junk"
    wall = faml("run", str(sim / "particles.star"), "--out", str(run), "--overwrite",
                "--classes", "1", "--junk", "2", *COMMON, *mask_args())  # fmt: skip
    got = starfile.read(run / "particles.star", always_dict=True)["particles"]
    return {"in_target": float(np.mean(got["rlnClassNumber"].to_numpy() == 1)),
            "screen": json.loads((run / "run.json").read_text()).get("junk_screen"),
            "wall_s": wall}  # fmt: skip


def junk_seed2(out: Path) -> dict:
    """``junk`` on a second simulation (seed 2): the screen's threshold was chosen on seed 1."""
    return junk(out, 2)


def three_large(out: Path) -> dict:
    """``three`` with 500 particles (350 / 100 / 50)."""
    return three(out, 50, "three_large")


SCENARIOS = {"single": single, "single_consensus": single_consensus, "states": states,
             "three": three, "three_large": three_large, "junk": junk,
             "junk_seed2": junk_seed2, "junk_none": junk_none}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    found = SCENARIOS[args.scenario](out)
    (out / f"{args.scenario}.json").write_text(json.dumps(found, indent=2))
    print(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
