"""Speed of one FAML (and FA) iteration per particle, one core, with the split by stage.

Usage::

    python benchmarks/bench_engine.py [--particles 40] [--iterations 3]

Simulates (fast mode) particles of the demo structure at 32^3 and, resampled, 64^3 (SNR 0.05,
+-60 wedge), runs K = 1, M = 20 in one process and reports the median over iterations
(after the first) of the map-step CPU seconds per particle, split into I/O, FFTs,
fast alignment, Voronoi weights, E-step and M-step statistics.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from faml.demo import demo_structure  # noqa: E402
from faml.io.particles import from_mrc_files  # noqa: E402
from faml.ml.config import RunConfig, Tuning  # noqa: E402
from faml.ml.engine import run  # noqa: E402
from faml.simulate.fast import simulate_fast  # noqa: E402


def bench(box: int, method: str, particles: int, iterations: int, tmp: Path) -> None:
    structure, voxel = demo_structure()
    if box != structure.shape[0]:
        structure = ndimage.zoom(structure, box / structure.shape[0], order=3).astype(np.float32)
        voxel *= 32 / box
    folder = tmp / f"p{box}"
    if not folder.exists():
        simulate_fast([structure], particles, folder, snr=0.05, voxel_size=voxel, seed=1)
    table = from_mrc_files(folder)
    # one start: the cost of an iteration (the random starts multiply the iterations a run
    # makes, not what one costs)
    cfg = RunConfig(
        method=method,
        iterations=iterations,
        seed=1,
        tuning=Tuning(stop_pose_change_deg=0.0, starts=1, fa_iterations=0),
    )
    result = run(table, tmp / f"run{box}{method}", cfg)
    its = result.history[2:] if len(result.history) > 2 else result.history[1:]
    per = np.median([h.seconds_map_step for h in its]) / particles
    stages = {}
    for key in its[0].map_step_seconds_by_stage:
        stages[key] = np.median([h.map_step_seconds_by_stage[key] for h in its]) / particles
    split = ", ".join(f"{k} {1e3 * v:.1f}" for k, v in stages.items())
    print(f"{box}^3 {method}: {1e3 * per:.1f} ms per particle-iteration | split (ms): {split}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for box in (32, 64):
            for method in ("faml", "fa"):
                bench(box, method, args.particles, args.iterations, Path(tmp))


if __name__ == "__main__":
    main()
