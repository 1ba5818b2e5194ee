"""faml on real RELION 5 / WarpTools 2D tilt-stack particles (EMPIAR-10499, 70S ribosome).

Usage::

    python benchmarks/empiar10499.py [--iterations 14] [--workers 1]

The 40 particles of ``/work/shared/.../tomodrgn_empiar10499_subtilts`` (4 tomograms, 37
tilts, 32 px at 12 Å) are reconstructed into 3D subtomograms and weights
(:mod:`faml.io.tiltstacks`), then averaged:

* the oracle: the set's own refined poses (``rlnAngle*``, origins) through faml's
  reconstruction and averaging path (:func:`faml.evaluate.oracle.oracle_average`) — a check of
  the geometry;
* faml K = 1 from no reference, FAML and FA (``faml.ml.engine.run``). Both start with
  ``RunConfig.fa_iterations`` (6) FA warm-up iterations: run more than that (default 14)
  for FAML's own iterations to happen.

Each map is aligned to the set's reconstruction ``warptools_test_box-32_angpix-12_
reconstruct.mrc`` and scored (:func:`faml.evaluate.maps.score_map`: masked correlation, FSC
0.5 / 0.143 in Å); random poses give the baseline a blob-shaped map reaches by itself.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from faml.evaluate.maps import score_map
from faml.evaluate.oracle import oracle_average
from faml.io.mrc import read_volume
from faml.io.relion5 import star_poses
from faml.io.star import read_particles_star
from faml.ml.config import RunConfig
from faml.ml.engine import run

DATA = Path(__file__).resolve().parents[2] / "shared/data/structures/subtomograms"
SET = DATA / "tomodrgn_empiar10499_subtilts"
STEM = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12"


def _line(name: str, volume: np.ndarray, ref: np.ndarray, voxel: float) -> str:
    s = score_map(volume, ref, voxel)
    angle = np.degrees(np.arccos(np.clip((np.trace(s.global_rotation) - 1) / 2, -1, 1)))
    return (
        f"| {name} | {s.correlation:.3f} | {s.resolution_05:.1f} | {s.resolution_0143:.1f} "
        f"| {angle:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=14)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ref, voxel = read_volume(SET / "warptools_test_box-32_angpix-12_reconstruct.mrc")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        table = read_particles_star(
            SET / f"{STEM}_optimisation_set.star", cache_dir=tmp / "subtomograms"
        )
        print(f"reconstructed {len(table)} particles in {time.perf_counter() - t0:.1f} s")
        rows = ["| map | masked corr. | FSC 0.5 (Å) | FSC 0.143 (Å) | map-to-ref rotation (°) |",
                "|---|---|---|---|---|"]  # fmt: skip
        rot, shift = star_poses(SET / f"{STEM}.star")
        zeros = np.zeros(len(table), dtype=np.int64)
        oracle = oracle_average(table, rot, shift, zeros, filtered=False).maps[0]
        rows.append(_line("oracle (the set's poses)", oracle, ref, 12.0))
        oracle = oracle_average(table, rot, shift, zeros).maps[0]
        rows.append(_line("oracle, FSC-filtered as a run's map", oracle, ref, 12.0))
        rand = Rotation.random(len(table), random_state=args.seed).as_matrix()
        baseline = oracle_average(table, rand, np.zeros_like(shift), zeros, filtered=False)
        rows.append(_line("random poses (baseline)", baseline.maps[0], ref, 12.0))
        for method in ("faml", "fa"):
            t0 = time.perf_counter()
            result = run(
                table,
                tmp / method,
                RunConfig(method=method, iterations=args.iterations, seed=args.seed),
                workers=args.workers,
            )
            took = time.perf_counter() - t0
            rows.append(_line(f"{method.upper()} K=1 ({took:.0f} s)", result.maps[0], ref, 12.0))
        print("\n".join(rows))


if __name__ == "__main__":
    main()
