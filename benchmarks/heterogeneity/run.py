"""Heterogeneity on crowded simulations: stability of a forced split, junk, rare classes.

Usage::

    PYTHONPATH=src python benchmarks/heterogeneity/run.py --scenario single|junk [--out DIR]

- ``single``: one state (the crowded 1U6G set of ``benchmarks/workflows``: 100 particles,
  32^3 at 10 A, SNR 0.02, +-60, phase-flipped CTF) classified with ``--classes 2
  --stability 2``: the stability figures must say the split is not stable (suggested K = 1);
- ``junk``: 1U6G as the target (70%) with 30% picks of three other proteins (1BXN, 3CF3,
  2CG9), crowded, SNR 0.02, 150 particles; ``--classes 1 --junk 2`` against ``--classes 1``
  on the target's particles alone: the share of junk out of the target class, the target
  map's masked correlation and FSC 0.5 with the truth.

Every run: the particle mask at 0.38 of the box, ``--workers 2``. Writes ``OUT/<scenario>.json``.
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


def junk(out: Path) -> dict:
    from faml.evaluate.maps import score_map
    from faml.io.mrc import read_volume
    from faml.simulate.dataset import read_truth

    # 7 x 15 target particles and 15 of each other protein: 150, 30% junk
    sim = simulate(out / "sim_junk", ["1u6g"] * 7 + ["1bxn", "3cf3", "2cg9"], 15)
    truth = read_truth(sim)
    is_target = np.asarray(truth.classes) < 7
    rows = {}
    run = out / "junk_k1j2"
    wall = faml("run", str(sim / "particles.star"), "--out", str(run), "--overwrite",
                "--classes", "1", "--junk", "2", *COMMON, *mask_args())  # fmt: skip
    got = starfile.read(run / "particles.star", always_dict=True)["particles"]
    klass = got["rlnClassNumber"].to_numpy()
    s = score_map(read_volume(run / "class_001.mrc")[0], truth.maps[0], truth.voxel_size)
    rows["junk"] = {
        "junk_out_of_target": float(np.mean(klass[~is_target] != 1)),
        "target_in_target": float(np.mean(klass[is_target] == 1)),
        "corr": float(s.correlation), "fsc05": float(s.resolution_05), "wall_s": wall,
    }  # fmt: skip
    # the target's particles alone (the oracle selection), K = 1
    only = sim / "target_only.star"  # beside the simulation: its image names resolve
    blocks = starfile.read(sim / "particles.star", always_dict=True)
    blocks["particles"] = blocks["particles"][is_target].reset_index(drop=True)
    starfile.write(blocks, only, overwrite=True)
    run = out / "target_only"
    wall = faml("run", str(only), "--out", str(run), "--overwrite", *COMMON, *mask_args())
    s = score_map(read_volume(run / "class_001.mrc")[0], truth.maps[0], truth.voxel_size)
    rows["target_only"] = {"corr": float(s.correlation), "fsc05": float(s.resolution_05),
                           "wall_s": wall}  # fmt: skip
    run = out / "junk_k1"
    wall = faml("run", str(sim / "particles.star"), "--out", str(run), "--overwrite",
                *COMMON, *mask_args())  # fmt: skip
    s = score_map(read_volume(run / "class_001.mrc")[0], truth.maps[0], truth.voxel_size)
    rows["all_k1"] = {"corr": float(s.correlation), "fsc05": float(s.resolution_05),
                      "wall_s": wall}  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("single", "junk"), required=True)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    found = {"single": single, "junk": junk}[args.scenario](out)
    (out / f"{args.scenario}.json").write_text(json.dumps(found, indent=2))
    print(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
