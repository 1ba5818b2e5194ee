"""Low-SNR accuracy, side by side: faml (FAML and FA), the search ceiling, and RELION.

Usage::

    python benchmarks/lowsnr/run.py [--sets all|snr0.02,...] [--out benchmarks/lowsnr/results]
                                    [--no-relion] [--iterations 15] [--seeds 1,2,3,4,5]
                                    [--relion-seeds 1,2,3]

For each data set (built here with faml's fast simulator: 32^3, 10 A voxels, +-60 degree
wedge, random poses uniform on SO(3), shifts up to 2 voxels per axis, white noise at the SNR):

- ``faml run`` reference-free with ``--method faml`` and ``--method fa`` (2 worker
  processes), timed, once per seed: the table gives the median of each figure (and every
  seed's share of poses within 15 degrees), since a reference-free run depends on its start;
- the candidate ceiling: the share of particles with any of faml's candidates within 15
  degrees of the truth when aligning to the *true* map (the engine's settings at its final
  band), beside the exhaustive phase-aware search (7.5 degree quasi-uniform grid, every
  shift within 3.5 voxels on a 1-voxel grid, constrained correlation on the same band): the
  share whose best transform is within 15 degrees;
- RELION (``relion_refine`` reference-free, ``--ref None --healpix_order 1 --oversampling 1
  --offset_range 5 --offset_step 2 --maxsig 300 --ctf --tau2_fudge 4 --flatten_solvent
  --zero_mask``, 2 threads) on the same particles, with the wedge as a 3D ``rlnCtfImage`` in
  the FFTW half layout and ``_rlnImageDimensionality 3`` in the optics block, once per
  ``--relion-seeds`` value (its ``--random_seed``): medians, as for faml, since RELION's
  reference-free start is random too.

Every map is aligned to the truth first (:func:`faml.evaluate.maps.score_map`); the pose
error of a particle is the angle between its rotation composed with that global transform
and its true rotation. K = 2 sets match classes to structures by the better of the two
assignments (F1 reported). One table (Markdown) is printed and written to
``OUT/table.md``; the raw numbers to ``OUT/results.json``. A run of some ``--sets`` only
replaces their rows; the other sets keep the rows of their last run.
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
import pandas as pd
import scipy.fft
import starfile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _data import SHARED  # noqa: E402
from faml.align import prepare_average  # noqa: E402
from faml.align.fast import align_to  # noqa: E402
from faml.align.fourier_rotation import padded_spectrum  # noqa: E402
from faml.align.scan import scan, scan_reference, shift_grid  # noqa: E402
from faml.evaluate.maps import score_map  # noqa: E402
from faml.geometry.euler import euler_to_matrix  # noqa: E402
from faml.geometry.masks import soft_sphere  # noqa: E402
from faml.geometry.rotations import rotation_distance  # noqa: E402
from faml.geometry.wedge import wedge_mask  # noqa: E402
from faml.io.mrc import read_volume, write_volume  # noqa: E402
from faml.io.particles import from_mrc_files  # noqa: E402
from faml.ml.config import RunConfig  # noqa: E402
from faml.ml.em import settings_for  # noqa: E402
from faml.ml.engine import run  # noqa: E402
from faml.simulate.fast import simulate_fast  # noqa: E402

BOX = 32
VOXEL = 10.0
TILT = (-60.0, 60.0)


@dataclass(frozen=True)
class DataSet:
    name: str
    structures: tuple[str, ...]  # PolNet 10 A map names
    particles_each: int
    snr: float
    seed: int


SETS = (
    DataSet("snr0.02", ("1u6g",), 60, 0.02, 3),
    DataSet("snr0.01", ("1u6g",), 60, 0.01, 3),
    DataSet("snr0.005", ("1u6g",), 60, 0.005, 3),
    DataSet("50S-snr0.01", ("4v4r_50S",), 60, 0.01, 5),
    DataSet("K2-snr0.02", ("1u6g", "4v4r_50S"), 40, 0.02, 7),
)


def structure(name: str) -> np.ndarray:
    """A PolNet 10 A map centred in a 32^3 box, soft-masked, zero mean inside the mask."""
    vol, _ = read_volume(SHARED / "maps" / "polnet_10A" / f"{name}_10A.mrc")
    n = vol.shape[0]
    out = np.zeros((BOX,) * 3, np.float32)
    lo_s, lo_d, size = max(0, (n - BOX) // 2), max(0, (BOX - n) // 2), min(n, BOX)
    out[lo_d : lo_d + size, lo_d : lo_d + size, lo_d : lo_d + size] = vol[
        lo_s : lo_s + size, lo_s : lo_s + size, lo_s : lo_s + size
    ]
    mask = soft_sphere(BOX, 0.40 * BOX, edge=2.0)
    out = (out - np.sum(out * mask) / np.sum(mask)) * mask
    return (out / out.std()).astype(np.float32)


def evaluate(maps, rotations, classes, maxp, truth, truths):
    """Share within 15 degrees, FSC 0.5 resolution and Pearson (mean over classes), F1."""
    K = len(maps)
    best = None
    perms = [(0,)] if K == 1 else [(0, 1), (1, 0)]
    for perm in perms:  # perm[k]: true class of faml class k
        scores = [score_map(maps[k], truths[perm[k]], VOXEL) for k in range(K)]
        ok = np.zeros(len(classes), dtype=bool)
        for k in range(K):
            sel = (classes == k) & (truth.classes == perm[k])
            err = rotation_distance(
                rotations[sel] @ scores[k].global_rotation, truth.rotations[sel]
            )
            ok[sel] = err < 15.0
        predicted = np.array([perm[c] for c in classes])
        f1 = np.mean(
            [
                2
                * np.sum((predicted == k) & (truth.classes == k))
                / max(np.sum(predicted == k) + np.sum(truth.classes == k), 1)
                for k in range(K)
            ]
        )
        row = {
            "within15": float(np.mean(ok)),
            "fsc05_A": float(np.mean([s.resolution_05 for s in scores])),
            "pearson": float(np.mean([s.correlation for s in scores])),
            "f1": float(f1),
            "median_max_p": float(np.median(maxp)),
        }
        if best is None or (row["f1"], row["within15"]) > (best["f1"], best["within15"]):
            best = row
    return best


OPTIONS: dict = {}
"""Further :class:`RunConfig` fields of every faml run (``--gold-standard``)."""


def run_faml(table, out, method, classes, iterations, truth, truths, seeds):
    """faml with the default configuration, once per seed: the median of each figure, and
    every seed's figures under ``runs`` (a reference-free run depends on its random start)."""
    runs = []
    for seed in seeds:
        config = RunConfig(
            method=method, classes=classes, iterations=iterations, seed=seed, **OPTIONS
        )
        t0 = time.perf_counter()
        res = run(table, out / f"seed{seed}", config, workers=2)
        wall = time.perf_counter() - t0
        row = evaluate(res.maps, res.rotations, res.classes, res.max_probability, truth, truths)
        row.update(wall_s=wall, iterations=len(res.history) - 1, band=int(res.state.band))
        runs.append(row)
    summary = median_of(runs)
    summary["band"] = int(runs[0]["band"])
    return summary


def median_of(runs: list[dict]) -> dict:
    """The median of every figure over runs (seeds), and the runs themselves under ``runs``."""
    summary = {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
    summary["runs"] = runs
    return summary


def ceiling(table, truth, truths, band):
    """faml's candidates against the true map, and the exhaustive search's best."""
    config = RunConfig()
    sigma2 = None
    any_hit, exhaustive_hit = [], []
    references = {}
    for k, t in enumerate(truths):
        settings = settings_for(config, BOX, band, sigma2, 2.0)
        references[k] = (
            prepare_average(t, settings),
            scan_reference(padded_spectrum(t), band, 7.5),
        )
    shifts = shift_grid(3.5, 1.0)
    for i in range(len(table)):
        vol, wedge = table.load(i)
        prepared, exhaustive = references[int(truth.classes[i])]
        cands = align_to(vol, wedge, prepared)
        err = rotation_distance(np.stack([c.rotation for c in cands]), truth.rotations[i][None])
        any_hit.append(bool(np.any(err < 15.0)))
        ft = scipy.fft.rfftn(vol)
        rot, _, _ = scan(exhaustive, ft, wedge * wedge, shifts, None, 1, 1.0, coarse_to_fine=False)
        exhaustive_hit.append(bool(rotation_distance(rot, truth.rotations[i][None])[0] < 15.0))
    return float(np.mean(any_hit)), float(np.mean(exhaustive_hit))


def write_relion_star(paths, folder: Path) -> Path:
    wedge = folder / "wedge_fftw_half.mrc"
    write_volume(wedge, wedge_mask(BOX, TILT).astype(np.float32), VOXEL)  # (32, 32, 17)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnImagePixelSize": [VOXEL],
            "rlnImageSize": [BOX],
            "rlnImageDimensionality": [3],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
        }
    )
    parts = pd.DataFrame(
        {
            "rlnImageName": [str(Path(p).resolve()) for p in paths],
            "rlnCtfImage": [str(wedge.resolve())] * len(paths),
            "rlnOpticsGroup": [1] * len(paths),
        }
    )
    star = folder / "particles.star"
    starfile.write({"optics": optics, "particles": parts}, star)
    star.write_text(star.read_text().replace("\ndata_", "\n# version 30001\ndata_"))
    return star


def run_relion(paths, folder: Path, classes, iterations, truth, truths, seed: int):
    exe = shutil.which("relion_refine")
    if exe is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "relion"], check=True)
        exe = shutil.which("relion_refine")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    star = write_relion_star(paths, folder)
    cmd = [
        exe, "--i", str(star), "--o", str(folder / "run"), "--ref", "None",
        "--iter", str(iterations), "--K", str(classes), "--healpix_order", "1",
        "--oversampling", "1", "--offset_range", "5", "--offset_step", "2", "--maxsig", "300",
        "--ctf", "--tau2_fudge", "4", "--flatten_solvent", "--zero_mask",
        "--particle_diameter", str(int(0.9 * BOX * VOXEL)), "--pad", "2", "--sym", "C1",
        "--j", "2", "--random_seed", str(seed),
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    row = score_relion(folder, classes, iterations, truth, truths)
    row.update(wall_s=wall, iterations=iterations)
    return row


def cached_seeds(folder: Path) -> list[int]:
    """The seeds of the RELION runs kept in ``folder`` (``seedS/row.json``)."""
    return sorted(int(p.parent.name[4:]) for p in folder.glob("seed*/row.json"))


def continue_relion(folder: Path, row: dict, iterations: int) -> dict:
    """A kept RELION run of fewer iterations taken on to ``iterations`` with ``--continue``
    (the same as running them at once: nothing in the run depends on the iteration count);
    its wall time is the sum of both parts."""
    done = int(row["iterations"])
    optimiser = folder / f"run_it{done:03d}_optimiser.star"
    cmd = [
        shutil.which("relion_refine"), "--continue", str(optimiser), "--o", str(folder / "run"),
        "--iter", str(iterations), "--j", "2",
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return dict(row, wall_s=row["wall_s"] + time.perf_counter() - t0, iterations=iterations)


def score_relion(folder: Path, classes, iterations, truth, truths) -> dict:
    """Score RELION's last iteration in ``folder`` as faml's runs are scored."""
    last = folder / f"run_it{iterations:03d}_data.star"
    parts = starfile.read(last, always_dict=True)["particles"]
    maps = [
        read_volume(folder / f"run_it{iterations:03d}_class{k + 1:03d}.mrc")[0]
        for k in range(classes)
    ]
    names = [Path(n).name for n in parts["rlnImageName"]]
    order = np.argsort(names)  # RELION keeps the input order; sort to be sure
    rot = euler_to_matrix(parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()[order])
    cls = parts["rlnClassNumber"].to_numpy()[order] - 1
    maxp = parts["rlnMaxValueProbDistribution"].to_numpy()[order]
    return evaluate(maps, rot, cls, maxp, truth, truths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="all")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--iterations", type=int, default=15, help="as faml's default")
    parser.add_argument("--no-relion", action="store_true")
    parser.add_argument("--rerun-relion", action="store_true")
    parser.add_argument("--seeds", default="1,2,3,4,5", help="faml seeds (the table: medians)")
    parser.add_argument(
        "--relion-seeds",
        default="1,2,3",
        help="RELION's --random_seed values (the table: medians); 'cached': the runs kept",
    )
    parser.add_argument(
        "--relion-only",
        action="store_true",
        help="keep faml's rows of OUT/results.json, (re)do only RELION's (re-scored if cached)",
    )
    parser.add_argument(
        "--gold-standard", action="store_true", help="faml runs with --gold-standard"
    )
    parser.add_argument(
        "--faml-only", action="store_true", help="FAML rows only (no FA, ceiling or RELION)"
    )
    args = parser.parse_args()
    if args.gold_standard:
        OPTIONS["gold_standard"] = True
    if args.faml_only:
        args.no_relion = True
    seeds = [int(x) for x in args.seeds.split(",")]
    relion_seeds = (
        [] if args.relion_seeds == "cached" else [int(x) for x in args.relion_seeds.split(",")]
    )
    chosen = SETS if args.sets == "all" else [s for s in SETS if s.name in args.sets.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    # the sets not chosen keep their rows (the table shows every set run so far)
    results = json.loads(store.read_text()) if store.exists() else {}
    for ds in chosen:
        folder = out / ds.name
        if folder.exists() and not args.relion_only:
            shutil.rmtree(folder)
        truths = [structure(s) for s in ds.structures]
        truth = simulate_fast(
            truths, ds.particles_each, folder / "particles", snr=ds.snr, voxel_size=VOXEL,
            tilt_range=TILT, seed=ds.seed,
        )  # fmt: skip
        table = from_mrc_files(folder / "particles")
        K = len(truths)
        row = results.get(ds.name, {}) if args.relion_only else {}
        methods = ("faml",) if args.faml_only else ("faml", "fa")
        for method in () if args.relion_only else methods:
            row[method] = run_faml(
                table, folder / method, method, K, args.iterations, truth, truths, seeds
            )
            print(ds.name, method, row[method], flush=True)
            if method == "faml":
                band = row[method]["band"]
        if not args.relion_only and not args.faml_only:
            row["ceiling"], row["exhaustive"] = ceiling(table, truth, truths, band)
            print(ds.name, "ceiling", row["ceiling"], "exhaustive", row["exhaustive"], flush=True)
        if not args.no_relion:
            # RELION's runs are kept beside the set (same seed, same particles) and reused
            # unless --rerun-relion: they are the slow part. Their maps and poses are
            # re-scored (the scorer may have changed); the wall time is the one measured
            # when each ran.
            runs = []
            relion_dir = out / f"relion-{ds.name}"
            for seed in relion_seeds if relion_seeds else cached_seeds(relion_dir):
                cached = relion_dir / f"seed{seed}" / "row.json"
                if cached.exists() and not args.rerun_relion:
                    run_row = json.loads(cached.read_text())
                    if run_row["iterations"] < args.iterations:
                        run_row = continue_relion(cached.parent, run_row, args.iterations)
                        cached.write_text(json.dumps(run_row))
                    run_row.update(score_relion(cached.parent, K, args.iterations, truth, truths))
                    cached.write_text(json.dumps(run_row))  # the scores of its last iteration
                else:
                    run_row = run_relion(
                        truth.paths, cached.parent, K, args.iterations, truth, truths, seed
                    )
                    cached.write_text(json.dumps(run_row))
                runs.append(run_row)
            row["relion"] = median_of(runs)
            print(ds.name, "relion", row["relion"], flush=True)
        results[ds.name] = row
        store.write_text(json.dumps(results, indent=2))
    table_md = render(results)
    (out / "table.md").write_text(table_md)
    print(table_md)


def render(results: dict) -> str:
    lines = [
        "| set | method | within 15 deg (per seed) | FSC 0.5 (A) | Pearson | F1 | median max p "
        "| wall (s) |"
        " ceiling / exhaustive |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        for method in ("faml", "fa", "relion"):
            if method not in row:
                continue
            r = row[method]
            ceil = ""
            if method == "faml" and "ceiling" in row:
                ceil = f"{row['ceiling']:.2f} / {row['exhaustive']:.2f}"
            share = f"{100 * r['within15']:.0f}%"
            if "runs" in r and len(r["runs"]) > 1:
                share += " (" + "/".join(f"{100 * x['within15']:.0f}" for x in r["runs"]) + ")"
            lines.append(
                f"| {name} | {method.upper()} | {share} | {r['fsc05_A']:.1f} "
                f"| {r['pearson']:.3f} | {r['f1']:.2f} | {r['median_max_p']:.2f} "
                f"| {r['wall_s']:.0f} | {ceil} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
