"""The map step on Dask: strong scaling (1 vs 2 workers) and memory against the number of particles.

Usage::

    python benchmarks/bench_parallel.py scaling [--particles 200] [--repeats 3]
    python benchmarks/bench_parallel.py memory [--sizes 200 2000]

``scaling``: particles of the demo structure (fast-mode simulation, 32^3, SNR 0.05, +-60
degrees), one FAML iteration after the random start (one start, no FA warm-up) on a Dask
``LocalCluster`` of 1 and of 2 single-threaded workers, each run in a fresh process (as the
command line runs it), alternated ``repeats`` times. It prints the wall time of iteration 1
(map step, reduction, M-step) and the map step's, per run, and the speed-up of each pair
(measured back to back), with medians.

``memory``: for each size, a fresh process runs the same (iteration 0 and 1, 2 workers) and
reports the peak resident memory (``ru_maxrss``) of the client process and of each worker.
The particles are simulated beforehand in another process, so the client's figure is the
run's alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _simulate(folder: Path, particles: int) -> None:
    from faml.demo import demo_structure
    from faml.simulate.fast import simulate_fast

    if not folder.exists():
        structure, voxel = demo_structure()
        simulate_fast([structure], particles, folder, snr=0.05, voxel_size=voxel, seed=1)


BATCH = [8]


def _config():
    from faml.ml.config import RunConfig, Tuning

    tuning = Tuning(starts=1, fa_iterations=0, stop_pose_change_deg=0.0)
    return RunConfig(iterations=1, seed=1, tuning=tuning)


def _one_run(folder: Path, out: Path, workers: int) -> dict:
    from faml.io.particles import from_mrc_files
    from faml.ml.engine import run
    from faml.parallel import make_executor

    executor = make_executor(workers, local_cluster=True)
    try:
        result = run(from_mrc_files(folder), out, _config(), executor=executor, batch_size=BATCH[0])
        peaks = executor.client.run(_peak_rss_mib)
    finally:
        executor.close()
    it = result.history[1]
    return {
        "iteration_s": it.seconds,
        "map_step_s": it.seconds_map_step,
        "client_peak_mib": _peak_rss_mib(),
        "worker_peak_mib": sorted(peaks.values()),
    }


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _in_child(folder: Path, out: Path, workers: int) -> dict:
    """``_one_run`` in a fresh process, as the command line runs it."""
    child = subprocess.run(
        [sys.executable, __file__, "_run", str(folder), str(out), str(workers), str(BATCH[0])],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def scaling(particles: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "particles"
        _simulate(folder, particles)
        rows = []
        for r in range(repeats):
            pair = {w: _in_child(folder, Path(tmp) / f"run{r}w{w}", w) for w in (1, 2)}
            rows.append(pair)
            one, two = pair[1], pair[2]
            print(
                f"repeat {r + 1}: 1 worker {one['iteration_s']:.1f} s (map "
                f"{one['map_step_s']:.1f}), 2 workers {two['iteration_s']:.1f} s (map "
                f"{two['map_step_s']:.1f}); speed-up {one['iteration_s'] / two['iteration_s']:.2f}"
                f" (map step {one['map_step_s'] / two['map_step_s']:.2f})",
                flush=True,
            )
        ratio = [p[1]["iteration_s"] / p[2]["iteration_s"] for p in rows]
        ratio_map = [p[1]["map_step_s"] / p[2]["map_step_s"] for p in rows]
        t1 = statistics.median(p[1]["iteration_s"] for p in rows)
        t2 = statistics.median(p[2]["iteration_s"] for p in rows)
        print(
            f"{particles} particles, 32^3, one iteration: median 1 worker {t1:.1f} s, 2 workers "
            f"{t2:.1f} s; median speed-up {statistics.median(ratio):.2f} (map step "
            f"{statistics.median(ratio_map):.2f})"
        )


def memory(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for n in sizes:
            folder = Path(tmp) / f"p{n}"
            subprocess.run([sys.executable, __file__, "_simulate", str(folder), str(n)], check=True)
            results[n] = _in_child(folder, Path(tmp) / f"run{n}", 2)
            r = results[n]
            print(
                f"N = {n}: client peak {r['client_peak_mib']:.0f} MiB, workers "
                f"{', '.join(f'{w:.0f}' for w in r['worker_peak_mib'])} MiB; iteration "
                f"{r['iteration_s']:.1f} s",
                flush=True,
            )
        a, b = sizes[0], sizes[-1]
        client = results[b]["client_peak_mib"] / results[a]["client_peak_mib"] - 1.0
        worker = max(results[b]["worker_peak_mib"]) / max(results[a]["worker_peak_mib"]) - 1.0
        print(
            f"N = {b} vs N = {a}: client peak {100 * client:+.1f}%, largest worker peak "
            f"{100 * worker:+.1f}%"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_simulate":
        _simulate(Path(sys.argv[2]), int(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_run":
        BATCH[0] = int(sys.argv[5])
        print(json.dumps(_one_run(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("scaling")
    s.add_argument("--particles", type=int, default=200)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--batch-size", type=int, default=8)
    m = sub.add_parser("memory")
    m.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    args = parser.parse_args()
    if args.what == "scaling":
        BATCH[0] = args.batch_size
        scaling(args.particles, args.repeats)
    else:
        memory(args.sizes)


if __name__ == "__main__":
    main()
