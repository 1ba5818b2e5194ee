"""The CTF in the data model: the same crowded particles in three CTF forms, faml beside RELION.

Usage::

    PYTHONPATH=src python benchmarks/ctf/forms.py [--forms flipped,signed,premultiplied]
        [--seeds 1] [--relion-seeds 1] [--no-relion] [--snr 0.02] [--n 100]
        [--particle-mask 0.38] [--out benchmarks/ctf/results]

One crowded simulation (``faml simulate --crowded``: 1U6G packed with other proteins,
tilt series +-60 degrees with CTF, dose and noise, weighted back-projection, picking errors;
32^3, 10 A) is written in each CTF form with the same seed, so the three hold the same poses,
neighbours and noise images (:mod:`faml.simulate.crowded`):

* ``flipped``: phase-flipped images, weight ``|CTF|`` (not premultiplied);
* ``signed``: the signed CTF, weight the signed CTF (not premultiplied);
* ``premultiplied``: images multiplied by the CTF, weight the CTF² sum, RELION 4/5 names and
  optics (``rlnCtfDataAreCtfPremultiplied 1``).

For each form: the oracle (the true poses through faml's averaging, FSC-filtered) and
reference-free faml runs (defaults with the particle mask, radius 0.38 of the box: on this
set the defaults without it do not find the poses), scored against the truth (share of poses
within 15 degrees, FSC 0.5, masked correlation) and by the map's amplitude relative to the
truth's per Fourier shell (:func:`faml.evaluate.maps.amplitude_ratio`, normalised to its
median over shells 2 up to the FSC 0.5 shell: flat means CTF-corrected). Between forms: the
FSC of the maps (aligned) and the share of particles whose poses agree within 3 degrees
(after the global transform between the runs). RELION 3.1 (``relion_refine --ctf``, as
``benchmarks/real/crowded.py`` runs it) on the flipped form gives the reference row; its
runs are kept in ``OUT/relion-seedS`` and re-scored, not rerun.

Output: ``OUT/results.json`` and ``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.fft
import starfile

from faml.evaluate.maps import align_map, amplitude_ratio, default_mask, score_map
from faml.evaluate.oracle import oracle_average
from faml.evaluate.poses import pose_errors
from faml.geometry.euler import euler_to_matrix
from faml.geometry.transform import transform_volume
from faml.io.mrc import read_volume
from faml.io.star import read_particles_star, write_particles_star
from faml.ml.config import RunConfig
from faml.ml.engine import run
from faml.ml.fourier import fsc, fsc_resolution
from faml.simulate.dataset import read_truth

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "real"))
import crowded  # noqa: E402  (benchmarks/real/crowded.py: the RELION row)

sys.path.insert(0, str(HERE.parent))
from relion_reconstruct import ensure_relion  # noqa: E402

STRUCTURE = HERE.parents[2] / "shared" / "data" / "structures" / "atomic" / "1u6g.pdb"
BOX, VOXEL = 32, 10.0


def simulate(form: str, out: Path, n: int, snr: float, seed: int) -> Path:
    sim = out / f"sim-{form}"
    if (sim / "truth" / "truth.json").exists():
        return sim
    cmd = [
        sys.executable, "-m", "faml", "simulate", "--crowded", "--structure", str(STRUCTURE),
        "--n", str(n), "--box", str(BOX), "--voxel-size", str(VOXEL), "--snr", str(snr),
        "--tilt-range", "-60", "60", "--seed", str(seed), "--ctf-form", form,
        "--workers", "2", "--out", str(sim), "--quiet",
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return sim


def flatness(vol: np.ndarray, truth, s) -> dict:
    """Amplitude ratio per shell (``s``: the map's :class:`MapScore`), normalised to its
    median over shells 2 .. the last shell below the FSC 0.5 resolution."""
    ratio = amplitude_ratio(vol, truth.maps[0], s.global_rotation, s.global_shift)
    # the shells below the FSC 0.5 resolution, the one it falls in left out (there the map's
    # FSC weighting, sqrt(2F / (1 + F)) < 0.82, is a low-pass by design)
    last = int(np.clip(np.floor(BOX * VOXEL / s.resolution_05) - 1, 2, BOX // 2 - 1))
    shells = ratio[1 : last + 1] / np.median(ratio[2 : last + 1])
    return {
        "amplitude_ratio": [float(v) for v in shells],
        "amplitude_range": [float(shells.min()), float(shells.max())],
        "amplitude_shells": [1, last],
    }


def score(vol, rotations, shifts, truth) -> dict:
    s = score_map(vol, truth.maps[0], truth.voxel_size)
    row = {"corr": float(s.correlation), "fsc05": float(s.resolution_05)}
    if rotations is not None:
        err = pose_errors(
            rotations, shifts, truth.rotations, truth.shifts, s.global_rotation, s.global_shift
        ).rotation_deg
        row["within15"] = float(np.mean(err < 15.0))
    row.update(flatness(vol, truth, s))
    return row


def oracle(sim: Path, truth, filtered: bool = True) -> dict:
    """faml's average at the true poses (FSC-filtered as a run's map, or not)."""
    table = read_particles_star(sim / "particles.star")
    classes = np.zeros(len(truth.rotations), int)
    o = oracle_average(table, truth.rotations, truth.shifts, classes, filtered=filtered)
    return score(o.maps[0], None, None, truth)


@dataclass(frozen=True)
class Finished:
    """What a run left in its folder: the map, the poses, the verdict and the wall time."""

    maps: np.ndarray
    rotations: np.ndarray
    shifts: np.ndarray
    trusted: bool | None
    seconds: float

    @classmethod
    def read(cls, folder: Path) -> Finished:
        info = json.loads((folder / "run.json").read_text())
        parts = starfile.read(folder / "particles.star", always_dict=True)["particles"]
        angles = parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
        origins = parts[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy()
        return cls(
            read_volume(folder / "class_001.mrc")[0][None],
            euler_to_matrix(angles),
            -origins / VOXEL,
            info["verdict"]["trusted"],
            float(info["seconds"]),
        )


def relion_oracle(sim: Path, out: Path, truth) -> dict:
    """``relion_reconstruct --ctf --3d_rot`` (RELION 3.1) at the true poses, scored (its map
    is not filtered: compare it with faml's unfiltered oracle)."""
    table = read_particles_star(sim / "particles.star")
    n = len(table)
    star = out / f"truth-{sim.name}.star"
    names = [str((sim / p).resolve()) for p in table.paths]
    weights = [str((sim / w).resolve()) for w in table.weight_paths]
    table = replace(table, names=tuple(names), extra={**table.extra, "rlnCtfImage": tuple(weights)})
    write_particles_star(
        star, table, truth.rotations, truth.shifts, np.ones(n, int), np.ones(n),
        relion5_version=30001,
    )  # fmt: skip
    volume = out / f"relion-oracle-{sim.name}.mrc"
    subprocess.run(
        [ensure_relion(), "--i", str(star), "--o", str(volume), "--ctf", "--3d_rot"],
        check=True, capture_output=True,
    )  # fmt: skip
    vol = read_volume(volume)[0]
    s = score_map(vol, truth.maps[0], truth.voxel_size)
    row = {"corr": float(s.correlation), "fsc05": float(s.resolution_05)}
    row.update(flatness(vol, truth, s))
    return row


def run_faml(sim: Path, out: Path, seed: int, truth, mask: float | None) -> tuple[dict, object]:
    """A faml run (or the one already finished in ``out``, re-scored) and its row."""
    if not (out / "run.json").exists() or "verdict" not in json.loads(
        (out / "run.json").read_text()
    ):
        table = read_particles_star(sim / "particles.star")
        config = RunConfig(seed=seed, particle_mask_radius=mask)
        run(table, out, config, workers=2, resume=(out / "run.json").exists())
    result = Finished.read(out)
    row = score(result.maps[0], result.rotations, result.shifts, truth)
    row.update(wall_s=result.seconds, trusted=result.trusted)
    return row, result


def compare(a, b, voxel: float) -> dict:
    """Two runs of the same particles: FSC of their maps and pose agreement."""
    align = align_map(b.maps[0], a.maps[0], voxel_size=voxel)
    placed = transform_volume(a.maps[0], align.rotation, align.shift, order=3)
    mask = default_mask(BOX)
    curve = fsc(scipy.fft.rfftn(b.maps[0] * mask), scipy.fft.rfftn(placed * mask))
    err = pose_errors(
        b.rotations, b.shifts, a.rotations, a.shifts, align.rotation, align.shift
    ).rotation_deg
    return {
        "fsc": [float(v) for v in curve],
        "fsc05": float(fsc_resolution(curve, BOX, voxel, 0.5)),
        "fsc09_shell": int(np.argmax(curve[1:] < 0.9)),  # the last shell at 0.9 or more
        "median_deg": float(np.median(err)),
        **{f"within{d}": float(np.mean(err < d)) for d in (3, 5, 10, 15)},
    }


def table(results: dict) -> str:
    lines = [
        "| form | run | within 15 deg | FSC 0.5 (A) | masked corr. | amplitude / truth "
        "(shells 1..FSC 0.5, / median) | verdict | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for form, rows in results["forms"].items():
        for name, r in rows.items():
            within = f"{100 * r['within15']:.0f}%" if "within15" in r else ""
            amp = " ".join(f"{v:.2f}" for v in r["amplitude_ratio"])
            verdict = {True: "trusted", False: "NOT trusted", None: ""}[r.get("trusted")]
            wall = f"{r['wall_s']:.0f}" if r.get("wall_s") else ""
            lines.append(
                f"| {form} | {name} | {within} | {r['fsc05']:.1f} | {r['corr']:.3f} | {amp} | "
                f"{verdict} | {wall} |"
            )
    if results.get("pairs"):
        lines += [
            "",
            "| runs compared | FSC of the maps >= 0.9 up to shell | FSC 0.5 (A) | pose "
            "difference, median | within 3 / 5 / 10 / 15 deg |",
            "|---|---|---|---|---|",
        ]
        for name, p in results["pairs"].items():
            within = " / ".join(f"{100 * p[f'within{d}']:.0f}%" for d in (3, 5, 10, 15))
            lines.append(
                f"| {name} | {p['fsc09_shell']} | {p['fsc05']:.1f} | {p['median_deg']:.1f} deg | "
                f"{within} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forms", default="flipped,signed,premultiplied")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--relion-seeds", default="1")
    parser.add_argument("--no-relion", action="store_true")
    parser.add_argument("--snr", type=float, default=0.02)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--sim-seed", type=int, default=1)
    parser.add_argument(
        "--particle-mask",
        type=float,
        default=0.38,
        help="faml's particle mask radius (share of the box; 0.38 = --particle-mask "
        "--particle-diameter 243 here); 0 for none",
    )
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    args.particle_mask = args.particle_mask or None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"forms": {}, "pairs": {}}
    runs = {}
    for form in args.forms.split(","):
        sim = simulate(form, out, args.n, args.snr, args.sim_seed)
        truth = read_truth(sim)
        rows = {"oracle": oracle(sim, truth), "oracle, unfiltered": oracle(sim, truth, False)}
        print(form, "oracle", rows["oracle"], rows["oracle, unfiltered"], flush=True)
        if form != "premultiplied" and not args.no_relion:  # RELION 3.1 squares C: see export
            rows["RELION 3.1 oracle, unfiltered"] = relion_oracle(sim, out, truth)
            print(form, "RELION oracle", rows["RELION 3.1 oracle, unfiltered"], flush=True)
        for seed in (int(s) for s in args.seeds.split(",")):
            rows[f"faml seed {seed}"], runs[form, seed] = run_faml(
                sim, out / f"{form}-seed{seed}", seed, truth, args.particle_mask
            )
            print(form, seed, rows[f"faml seed {seed}"], flush=True)
        if form == "flipped" and not args.no_relion:
            for seed in (int(s) for s in args.relion_seeds.split(",") if s):
                row = crowded.run_relion(sim, out, seed, truth, BOX)
                relion_dir = out / f"relion-seed{seed}"
                vol = read_volume(relion_dir / "run_it015_class001.mrc")[0]
                s = score_map(vol, truth.maps[0], truth.voxel_size)
                row.update(flatness(vol, truth, s))
                rows[f"RELION seed {seed}"] = row
                print(form, "RELION", seed, row, flush=True)
        results["forms"][form] = rows
    for (form, seed), result in runs.items():
        if form != "flipped" and ("flipped", seed) in runs:
            results["pairs"][f"flipped vs {form}, seed {seed}"] = compare(
                runs["flipped", seed], result, VOXEL
            )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
