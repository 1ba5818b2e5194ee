"""Accuracy where FAML should beat FA: low SNR, few particles, +-60 wedge.

Usage::

    python benchmarks/faml_vs_fa.py [--particles 60] [--snr 0.01] [--sets 3] [--workers 2]

For each of ``--sets`` simulated data sets (fast mode, the shipped demo structure, 32^3):
runs FAML and FA (K = 1, default settings, 15 iterations at most) and scores each average
against the truth (masked Pearson correlation after global alignment,
:func:`faml.evaluate.maps.score_map`), beside the oracle average (the same particles averaged
with their true poses, the same wedge compensation and FSC filtering), and the share of
particles whose pose is within 15 degrees of the truth.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from faml.demo import demo_structure
from faml.evaluate.maps import score_map
from faml.geometry.masks import soft_sphere
from faml.geometry.rotations import rotation_distance
from faml.io.particles import from_mrc_files
from faml.ml.config import RunConfig
from faml.ml.em import hard_chunk
from faml.ml.engine import run
from faml.ml.mstep import update_model
from faml.ml.phase import phase_of
from faml.ml.state import filtered_average
from faml.ml.stats import Stats
from faml.ml.tasks import split_halves
from faml.simulate.fast import simulate_fast


def oracle_map(table, truth, config, mask):
    halves = split_halves(len(table), config.seed)
    items = [(i, 0, truth.rotations[i], truth.shifts[i]) for i in range(len(table))]
    _, stats = hard_chunk(table, items, 1, halves)
    total = Stats.zeros(1, table.box)
    total += stats
    fa = RunConfig(method="fa", seed=config.seed)
    state = update_model(total, None, fa, phase_of(fa, 0), len(table), mask)
    return filtered_average(state, 0, mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=60)
    parser.add_argument("--snr", type=float, default=0.01)
    parser.add_argument("--sets", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    structure, voxel = demo_structure()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in range(args.sets):
            folder = Path(tmp) / f"set{s}"
            truth = simulate_fast(
                [structure], args.particles, folder, snr=args.snr, voxel_size=voxel, seed=100 + s
            )
            table = from_mrc_files(folder)
            mask = soft_sphere(table.box, 0.45 * table.box - 3.0, edge=3.0)
            row = {}
            for method in ("faml", "fa"):
                cfg = RunConfig(method=method, seed=s)
                res = run(table, Path(tmp) / f"{method}{s}", cfg, workers=args.workers)
                sc = score_map(res.maps[0], structure, voxel)
                err = rotation_distance(res.rotations @ sc.global_rotation, truth.rotations)
                row[method] = (sc.correlation, float(np.mean(err < 15.0)))
            orc = score_map(oracle_map(table, truth, RunConfig(seed=s), mask), structure, voxel)
            row["oracle"] = (orc.correlation, 1.0)
            rows.append(row)
            print(
                f"set {s}: correlation with truth FAML {row['faml'][0]:.3f} "
                f"(poses within 15 deg {100 * row['faml'][1]:.0f}%), FA {row['fa'][0]:.3f} "
                f"({100 * row['fa'][1]:.0f}%), oracle {row['oracle'][0]:.3f}"
            )
    mean = {k: np.mean([r[k][0] for r in rows]) for k in ("faml", "fa", "oracle")}
    print(
        f"mean over {args.sets} sets (n={args.particles}, SNR {args.snr}): "
        f"FAML {mean['faml']:.3f}, FA {mean['fa']:.3f}, oracle {mean['oracle']:.3f}; FAML - FA = "
        f"{mean['faml'] - mean['fa']:+.3f}; FAML / oracle = {mean['faml'] / mean['oracle']:.2f}"
    )


if __name__ == "__main__":
    main()
