"""SIGKILL a `faml run` at seeded random moments, then `--continue`: same result?

A small data set (the ribosome, 24^3, rotated copies plus noise) is written once; `faml run`
runs on it undisturbed once (a subprocess); then per trial the same run starts in a
subprocess and is killed (SIGKILL) at a seeded random moment within the undisturbed run's
duration. After the kill every MRC / NPZ / JSON / STAR file at its final name must parse (no
half-written destination file); leftover ``.*.tmp`` files (an interrupted atomic write) are
counted. Then `faml run --continue` finishes it, and its class maps and particles.star must
equal the undisturbed run's (array-equal; STAR lines identical but for the header comment),
with no ``.*.tmp`` file left.

    python benchmarks/reliability/kill_trials.py --trials 10 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from faml.io.mrc import read_volume, write_volume

ARGS = ["--iterations", "4", "--starts", "1", "--seed", "3", "--candidates", "10"]


def make_data(folder: Path, n: int = 16, box: int = 24, seed: int = 0) -> Path:
    """``n`` particles: the ribosome (or a blob when the shared maps are missing), rotated by
    multiples of 90 degrees, plus noise (SNR 1)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        from _data import ribosome

        ref = ribosome(box)
    except Exception:  # noqa: BLE001 - no shared folder: any asymmetric blob will do
        zz, yy, xx = np.mgrid[:box, :box, :box] - box // 2
        ref = np.exp(-((zz - 3) ** 2 + (yy + 2) ** 2 + xx**2 / 4) / 8.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        vol = np.rot90(ref, k=int(rng.integers(4)), axes=tuple(rng.permutation(3)[:2]))
        vol = vol + rng.standard_normal(vol.shape) * vol.std()
        write_volume(folder / f"p{i:03d}.mrc", vol.astype(np.float32), 20.0)
    return folder


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "faml", "run", str(data), "--out", str(out), *ARGS, *extra]


def half_written(out: Path) -> list[str]:
    """Files at their final names that do not parse (should be none)."""
    import starfile

    bad = []
    for path in sorted(out.rglob("*")):
        if not path.is_file() or path.name.endswith(".tmp"):
            continue
        try:
            if path.suffix == ".mrc":
                read_volume(path)
            elif path.suffix == ".npz":
                with np.load(path) as z:
                    [z[k] for k in z.files]
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".star":
                starfile.read(path)
        except Exception as exc:  # noqa: BLE001 - any failure to parse counts
            bad.append(f"{path.relative_to(out)} ({type(exc).__name__})")
    return bad


def _star_body(path: Path) -> list[str]:
    return [line for line in path.read_text().split("\n") if not line.startswith("#")]


def same_result(a: Path, b: Path) -> bool:
    maps = sorted(p.name for p in a.glob("class_*.mrc"))
    if maps != sorted(p.name for p in b.glob("class_*.mrc")):
        return False
    for name in maps:
        if not np.array_equal(read_volume(a / name)[0], read_volume(b / name)[0]):
            return False
    return _star_body(a / "particles.star") == _star_body(b / "particles.star")


def last_iteration(out: Path) -> int | None:
    from faml.ml.rundir import last_complete_iteration

    folder = last_complete_iteration(out)
    return None if folder is None else int(folder.name)


def trials(n: int, seed: int, work: Path, log=print) -> list[dict]:
    """Run the benchmark in ``work``; one dict per trial."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    data = make_data(work / "data")
    t0 = time.time()
    subprocess.run(_cmd(data, work / "full"), check=True, capture_output=True, env=env)
    duration = time.time() - t0
    log(f"undisturbed run: {duration:.1f} s")
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n):
        out = work / f"trial{t:02d}"
        at = float(rng.uniform(0.0, duration))
        proc = subprocess.Popen(
            _cmd(data, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        time.sleep(at)
        finished = proc.poll() is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done = last_iteration(out) if out.exists() else None
        temps = [str(p.relative_to(out)) for p in out.rglob(".*.tmp")] if out.exists() else []
        broken = half_written(out) if out.exists() else []
        subprocess.run(_cmd(data, out, "--continue"), check=True, capture_output=True, env=env)
        row = {
            "trial": t,
            "kill_s": at,
            "finished_before_kill": finished,
            "last_complete_iteration": done,
            "temp_files_after_kill": temps,
            "half_written": broken,
            "temp_files_after_continue": [str(p) for p in out.rglob(".*.tmp")],
            "equal": same_result(work / "full", out),
        }
        rows.append(row)
        log(
            f"trial {t}: killed at {at:5.1f} s, last complete iteration "
            f"{'-' if done is None else done}, temp files left {len(temps)}, half-written "
            f"{len(broken)}, after --continue: temp files {len(row['temp_files_after_continue'])}"
            f", equal {row['equal']}"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="faml-kill-"))
    rows = trials(args.trials, args.seed, work)
    good = sum(
        r["equal"] and not r["half_written"] and not r["temp_files_after_continue"] for r in rows
    )
    print(
        f"summary: {good}/{len(rows)} trials end equal to the undisturbed run with no "
        f"half-written file; {sum(bool(r['temp_files_after_kill']) for r in rows)} kills left "
        f"a temporary file (removed by --continue); work folder {work}"
    )


if __name__ == "__main__":
    main()
