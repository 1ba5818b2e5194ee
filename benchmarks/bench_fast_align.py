"""Speed of ``fast_align`` on one core: median of repeated runs, with the split by stage.

Usage::

    python benchmarks/bench_fast_align.py [--repeats 9] [--json out.json]

Times (a) the public ``fast_align`` call, everything included (the average's preparation:
shell harmonics and padded spectrum), and (b) ``align_to`` against an average prepared once,
which is what the engine pays per particle and class. 32^3 uses L = 16, 64^3 uses L = 32,
M = 20 candidates, a +-60 degree wedge, a particle made from the structure at a random pose.
Thread counts are pinned to 1 before numpy is imported. Times are process CPU time (median);
each line also gives the time of one ``rfftn`` of the box measured in the same run, so runs on
a busy or slower machine can be compared by the ratio.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy.fft  # noqa: E402

from _data import ribosome  # noqa: E402
from faml.align import AlignSettings, align_to, fast_align, prepare_average  # noqa: E402
from faml.align.fast import STAGES  # noqa: E402
from faml.geometry.rotations import random_rotations  # noqa: E402
from faml.geometry.transform import transform_volume  # noqa: E402
from faml.geometry.wedge import wedge_mask  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    """Median process CPU time of ``fn`` in ms (CPU time: less sensitive to a shared machine)."""
    fn()  # compile / warm caches
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1e3 * float(np.median(times))


def fft_reference_ms(box: int, repeats: int) -> float:
    """Median time of one float32 ``rfftn`` of the box: the machine's speed in this run."""
    vol = np.random.default_rng(1).standard_normal((box,) * 3).astype(np.float32)
    return median_ms(lambda: [scipy.fft.rfftn(vol, workers=1) for _ in range(20)], repeats) / 20


def bench(box: int, degree: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    average = ribosome(box)
    wedge = wedge_mask(box, (-60, 60))
    rot = random_rotations(1, rng)[0]
    particle = transform_volume(average, rot, np.array([1.3, -0.7, 2.1]), order=3)
    noise = rng.standard_normal(particle.shape).astype(np.float32) * np.sqrt(particle.var() / 0.1)
    particle = scipy.fft.irfftn(scipy.fft.rfftn(particle + noise) * wedge, s=particle.shape)
    particle = particle.astype(np.float32)

    full = median_ms(
        lambda: fast_align(particle, wedge, average, max_candidates=20, degree=degree), repeats
    )
    settings = AlignSettings(box=box, max_candidates=20, degree=degree)
    prepared = prepare_average(average, settings)
    per_particle = median_ms(lambda: align_to(particle, wedge, prepared), repeats)
    prepare = median_ms(lambda: prepare_average(average, settings), repeats)
    splits = []
    for _ in range(repeats):
        d: dict[str, float] = {}
        align_to(particle, wedge, prepared, timings=d)
        splits.append(d)
    split = {k: 1e3 * float(np.median([d[k] for d in splits])) for k in STAGES}
    return {
        "box": box,
        "rfftn_ms": fft_reference_ms(box, repeats),
        "degree": degree,
        "candidates": 20,
        "fast_align_ms": full,
        "align_to_prepared_ms": per_particle,
        "prepare_average_ms": prepare,
        "split_ms": split,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    results = [bench(32, 16, args.repeats), bench(64, 32, args.repeats)]
    for r in results:
        split = ", ".join(f"{k} {v:.2f}" for k, v in r["split_ms"].items())
        print(
            f"{r['box']}^3 L={r['degree']} M=20: fast_align {r['fast_align_ms']:.1f} ms "
            f"(prepare_average {r['prepare_average_ms']:.1f} ms; per particle with a prepared "
            f"average {r['align_to_prepared_ms']:.1f} ms) | split (ms): {split} | one rfftn "
            f"{r['rfftn_ms']:.3f} ms in this run: fast_align = "
            f"{r['fast_align_ms'] / r['rfftn_ms']:.0f} rfftn"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
