"""faml (FAML, FA) and RELION 3.1 on crowded simulated tomograms, scored against the truth.

Usage::

    PYTHONPATH=src python benchmarks/real/crowded.py [--sets all|NAME,...] [--seeds 1,2,3,4,5]
        [--relion-seeds 1] [--no-relion] [--out benchmarks/real/results/crowded]

Each set is made by ``faml simulate --crowded`` (targets packed with other proteins in
simulated tomograms, tilt series with CTF, dose and noise, phase flip, weighted
back-projection, subtomograms cut at picks with errors: :mod:`faml.simulate.crowded`) and
kept in ``OUT/NAME/sim``. Every run is scored as the issue asked: the share of particles
within 15 degrees of the truth (after removing the map-to-truth transform), FSC 0.5 with the
truth, masked correlation with the truth (:func:`faml.evaluate.maps.score_map`), wall time,
and for faml the run's verdict. RELION runs (``relion_refine --ref None --K 1 --iter 15
--healpix_order 1 --oversampling 1 --offset_range 5 --offset_step 2 --ini_high 60
--tau2_fudge 4 --particle_diameter D --flatten_solvent --zero_mask --ctf --norm --scale
--pad 2 --j 2 --random_seed S``, ``D`` 0.9 of the box) are kept in ``OUT/NAME/relion-seedS``
and re-scored, not rerun, when their last iteration is there. The table goes to
``OUT/table.md`` and the figures to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import starfile

from faml.evaluate.maps import score_map
from faml.evaluate.poses import pose_errors
from faml.geometry.euler import euler_to_matrix
from faml.io.mrc import read_volume
from faml.io.star import read_particles_star
from faml.ml.config import RunConfig
from faml.ml.engine import run
from faml.simulate.dataset import read_truth

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "data" / "structures"


@dataclass(frozen=True)
class CrowdedSet:
    name: str
    structure: str  # path under SHARED
    n: int
    snr: float
    voxel: float
    seed: int


SETS = (
    CrowdedSet("1u6g-snr0.02", "atomic/1u6g.pdb", 100, 0.02, 10.0, 1),
    CrowdedSet("1u6g-snr0.01", "atomic/1u6g.pdb", 100, 0.01, 10.0, 2),
    CrowdedSet("1u6g-snr0.005", "atomic/1u6g.pdb", 100, 0.005, 10.0, 3),
    CrowdedSet("ribosome-snr0.005", "maps/other/pytom_human_ribo_21A.mrc", 40, 0.005, 12.0, 4),
)


def simulate(ds: CrowdedSet, folder: Path, box: int) -> Path:
    sim = folder / "sim"
    if (sim / "truth" / "truth.json").exists():
        return sim
    cmd = [
        sys.executable, "-m", "faml", "simulate", "--crowded", "--structure",
        str(SHARED / ds.structure), "--n", str(ds.n), "--box", str(box), "--voxel-size",
        str(ds.voxel), "--snr", str(ds.snr), "--tilt-range", "-60", "60", "--seed",
        str(ds.seed), "--workers", "2", "--out", str(sim), "--quiet",
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return sim


def score(vol, rotations, shifts, truth) -> dict:
    s = score_map(vol, truth.maps[0], truth.voxel_size)
    err = pose_errors(
        rotations, shifts, truth.rotations, truth.shifts, s.global_rotation, s.global_shift
    ).rotation_deg
    return {
        "within15": float(np.mean(err < 15.0)),
        "fsc05": float(s.resolution_05),
        "corr": float(s.correlation),
    }


def run_faml(sim: Path, folder: Path, method: str, seed: int, truth) -> dict:
    table = read_particles_star(sim / "particles.star")
    t0 = time.perf_counter()
    result = run(table, folder / f"{method}-seed{seed}", RunConfig(method=method, seed=seed),
                 workers=2)  # fmt: skip
    row = score(result.maps[0], result.rotations, result.shifts, truth)
    row.update(
        wall_s=time.perf_counter() - t0, trusted=result.verdict.trusted,
        start_agreement=result.verdict.evidence.get("start_agreement"),
    )  # fmt: skip
    return row


def run_relion(sim: Path, folder: Path, seed: int, truth, box: int, iterations: int = 15):
    out = folder / f"relion-seed{seed}"
    last = out / f"run_it{iterations:03d}_data.star"
    wall = None
    if not last.exists():
        exe = shutil.which("relion_refine")
        if exe is None:
            subprocess.run(["apt-get", "install", "-y", "-q", "relion"], check=True)
            exe = shutil.which("relion_refine")
        out.mkdir(parents=True, exist_ok=True)
        cmd = [
            exe, "--i", "particles.star", "--o", str((out / "run").resolve()), "--ref", "None",
            "--K", "1", "--iter", str(iterations), "--healpix_order", "1", "--oversampling", "1",
            "--offset_range", "5", "--offset_step", "2", "--ini_high", "60",
            "--tau2_fudge", "4", "--particle_diameter",
            str(int(0.9 * box * truth.voxel_size)), "--flatten_solvent", "--zero_mask",
            "--ctf", "--norm", "--scale", "--pad", "2", "--j", "2", "--random_seed", str(seed),
        ]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=sim)
        wall = time.perf_counter() - t0
        (out / "wall_s.json").write_text(json.dumps(wall))
    elif (out / "wall_s.json").exists():
        wall = json.loads((out / "wall_s.json").read_text())
    parts = starfile.read(last, always_dict=True)["particles"]
    position = {Path(n).name: i for i, n in enumerate(truth.image_names)}
    order = np.argsort([position[Path(n).name] for n in parts["rlnImageName"]])
    angles = parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()[order]
    origins = parts[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy()[order]
    vol, _ = read_volume(out / f"run_it{iterations:03d}_class001.mrc")
    row = score(vol, euler_to_matrix(angles), -origins / truth.voxel_size, truth)
    row.update(wall_s=wall)
    return row


def _median(rows: list[dict]) -> dict:
    keys = ("within15", "fsc05", "corr", "wall_s")
    out = {k: float(np.median([r[k] for r in rows if r.get(k) is not None])) for k in keys}
    out["runs"] = rows
    return out


def table(results: dict) -> str:
    lines = [
        "| set | method | within 15 deg (per seed) | FSC 0.5 (A) | masked corr. | verdicts "
        "(trusted / runs) | wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, per_method in results.items():
        for method, m in per_method.items():
            seeds = "/".join(f"{100 * r['within15']:.0f}" for r in m["runs"])
            verdicts = ""
            if "trusted" in m["runs"][0]:
                verdicts = f"{sum(r['trusted'] is True for r in m['runs'])} / {len(m['runs'])}"
            lines.append(
                f"| {name} | {method} | {100 * m['within15']:.0f}% ({seeds}) | "
                f"{m['fsc05']:.1f} | {m['corr']:.3f} | {verdicts} | {m['wall_s']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="all")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--fa-seeds", default="1,2,3")
    parser.add_argument("--relion-seeds", default="1")
    parser.add_argument("--no-relion", action="store_true")
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--out", default=str(HERE / "results" / "crowded"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    chosen = SETS if args.sets == "all" else [s for s in SETS if s.name in args.sets.split(",")]
    for ds in chosen:
        folder = out / ds.name
        sim = simulate(ds, folder, args.box)
        truth = read_truth(sim)
        rows = {"FAML": [], "FA": [], "RELION": []}
        for seed in (int(s) for s in args.seeds.split(",")):
            rows["FAML"].append(run_faml(sim, folder, "faml", seed, truth))
            print(ds.name, "FAML", seed, rows["FAML"][-1], flush=True)
        for seed in (int(s) for s in args.fa_seeds.split(",") if s):
            rows["FA"].append(run_faml(sim, folder, "fa", seed, truth))
            print(ds.name, "FA", seed, rows["FA"][-1], flush=True)
        if not args.no_relion:
            for seed in (int(s) for s in args.relion_seeds.split(",")):
                rows["RELION"].append(run_relion(sim, folder, seed, truth, args.box))
                print(ds.name, "RELION", seed, rows["RELION"][-1], flush=True)
        results[ds.name] = {m: _median(r) for m, r in rows.items() if r}
        store.write_text(json.dumps(results, indent=2))
        (out / "table.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
