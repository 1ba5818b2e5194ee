"""Speed of the realistic simulator: one 64^3 particle, 61 tilts at 2 degrees, one core.

Usage::

    python benchmarks/simulate/bench_simulate.py [--repeats 5] [--box 64] [--json out.json]

The structure is GroEL (the 1KP8 14-mer stand-in of ``../shared/data/structures``) at 6 A per
voxel, 12 A resolution, as in the paper (section 3.1: 64^3, 0.6 nm voxels). Reported, each the
median over ``--repeats`` runs after one warm-up (which also compiles the numba kernels):

* ``particle``: :func:`faml.simulate.simulate_particle` for one particle (tilt series with CTF,
  MTF and noise, direct Fourier reconstruction, weight volume), the structure prepared once;
  the target is <= 2 s;
* ``prepare``: :func:`faml.simulate.prepare_structure`, paid once per structure and worker;
* ``simulate``: :func:`faml.simulate.simulate` of ``--repeats`` particles with one worker,
  per particle, everything included (poses, preparation, MRC and STAR writing).

Times are wall-clock and process CPU time. Thread counts are pinned to 1 before numpy is
imported. The line ends with the time of one float32 ``rfftn`` of the padded ``(2N)^3`` box
from the same run as a yardstick for comparing machines.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy.fft  # noqa: E402

from faml.geometry.rotations import random_rotations  # noqa: E402
from faml.simulate import (  # noqa: E402
    SimulationSettings,
    load_structure,
    prepare_structure,
    simulate,
    simulate_particle,
)

STRUCTURES = Path(__file__).resolve().parents[3] / "shared" / "data" / "structures"
GROEL = STRUCTURES / "atomic" / "1kp8_14mer_DERIVED_on_1oel.cif"
VOXEL = 6.0


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn`` over ``repeats`` runs, after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--box", type=int, default=64, help="particle box N")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    n = args.box
    t0 = time.perf_counter()
    structure = load_structure(GROEL, VOXEL, n, resolution=2 * VOXEL)
    load_s = time.perf_counter() - t0
    settings = SimulationSettings(
        voxel_size=VOXEL, snr=0.01, tilt_range=(-60.0, 60.0), tilt_step=2.0, defocus_um=6.0
    )
    tilts = settings.tilt_angles().size
    prepared = prepare_structure(structure)
    rotation = random_rotations(1, 0)[0]
    shift = np.array([1.2, -0.4, 0.8])
    rng = np.random.default_rng(0)

    particle = timed(
        lambda: simulate_particle(prepared, rotation, shift, settings, rng), args.repeats
    )
    prepare = timed(lambda: prepare_structure(structure), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        count = [0]

        def whole() -> None:
            count[0] += 1
            simulate(
                [structure], ["groel"], args.repeats, Path(tmp) / str(count[0]), settings,
                seed=count[0], workers=1,
            )  # fmt: skip

        per_set = timed(whole, 1)
    whole_per_particle = (per_set[0] / args.repeats, per_set[1] / args.repeats)
    pad = np.random.default_rng(1).standard_normal((2 * n,) * 3).astype(np.float32)
    fft = timed(lambda: scipy.fft.rfftn(pad, workers=1), args.repeats)

    figures = {
        "box": n,
        "tilts": tilts,
        "voxel_size": VOXEL,
        "structure_load_s": load_s,
        "particle_wall_s": particle[0],
        "particle_cpu_s": particle[1],
        "prepare_wall_s": prepare[0],
        "simulate_per_particle_wall_s": whole_per_particle[0],
        "simulate_per_particle_cpu_s": whole_per_particle[1],
        "rfftn_padded_box_ms": 1e3 * fft[0],
        "target_s": 2.0,
    }
    print(
        f"{n}^3, {tilts} tilts: particle {particle[0]:.3f} s wall / {particle[1]:.3f} s CPU "
        f"(median of {args.repeats}; target <= 2 s); prepare {prepare[0]:.3f} s; "
        f"simulate() {whole_per_particle[0]:.3f} s per particle with files; "
        f"rfftn {2 * n}^3 {1e3 * fft[0]:.1f} ms"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
