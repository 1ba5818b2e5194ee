"""Same seed, same bits: the demo and a K = 2 gold-standard C2 run, with two faml source trees.

A refactoring must not change a result. This runs, for each of two source trees (``src``
folders, e.g. a ``git worktree`` of the commit before and the working tree):

1. ``faml demo`` (its simulation, run and report; 100 particles, SNR 0.05, seed 0);
2. ``faml run`` with ``--classes 2 --gold-standard --symmetry C2 --iterations 6
   --fa-iterations 2 --seed 2 --workers 2`` on 40 + 40 simulated particles of two
   structures (``faml simulate --mode fast``, made once with the first tree): random starts,
   FA warm-up, gold-standard halves, the symmetry frame and symmetrised sums, re-seeding and
   the likelihood all take part;

then ``cmp``-compares every map and STAR file the runs wrote (each tree runs in the same
folder, which the demo's STAR file names). The files carry the time
they were written (the MRC label that mrcfile writes, the first comment line of starfile):
both trees run with the clock frozen (``datetime.now`` at 2000-01-01, in the writing
process only), so that the comparison covers every other byte.

Usage::

    git worktree add /tmp/before <commit>
    python benchmarks/architecture/same_bits.py /tmp/before/src src --work /tmp/bits
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "structures" / "maps" / "other"
STRUCTURES = [SHARED / "tomodrgn_10076_classD_32.mrc", SHARED / "pytom_emd_2938_21A.mrc"]

FROZEN_CLOCK = textwrap.dedent(
    """
    import datetime as _dt

    class _Frozen(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2000, 1, 1, 0, 0, 0, tzinfo=tz)

    import mrcfile.mrcobject, starfile.writer
    mrcfile.mrcobject.datetime = _Frozen
    starfile.writer.datetime = _Frozen
    """
)


def _faml(src: Path, clock: Path, *args: str, cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": f"{clock}{os.pathsep}{src}"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "faml", "-q", *args], cwd=cwd, env=env, check=True)
    return time.perf_counter() - t0


def run_tree(src: Path, out: Path, data: Path, clock: Path) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    seconds = {"demo": _faml(src, clock, "demo", "--out", "demo", cwd=out)}
    seconds["k2"] = _faml(
        src, clock, "run", str(data / "particles.star"), "--classes", "2", "--gold-standard",
        "--symmetry", "C2", "--iterations", "6", "--fa-iterations", "2", "--seed", "2",
        "--workers", "2", "--out", "k2", cwd=out,
    )  # fmt: skip
    return seconds


def compare(a: Path, b: Path) -> list[tuple[str, bool]]:
    names = sorted(
        str(p.relative_to(a))
        for p in a.rglob("*")
        if p.suffix in (".mrc", ".star") and "iterations" not in p.parts
    )
    return [(n, (b / n).exists() and filecmp.cmp(a / n, b / n, shallow=False)) for n in names]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="src folder of the tree before")
    parser.add_argument("after", type=Path, help="src folder of the tree after")
    parser.add_argument("--work", type=Path, default=Path("same_bits_work"))
    args = parser.parse_args()
    work = args.work.resolve()
    clock = work / "clock"
    clock.mkdir(parents=True, exist_ok=True)
    (clock / "sitecustomize.py").write_text(FROZEN_CLOCK)
    data = work / "k2data"
    if not (data / "particles.star").exists():
        structures = [a for s in STRUCTURES for a in ("--structure", str(s))]
        _faml(args.before.resolve(), clock, "simulate", *structures, "--n", "40", "--box",
              "24", "--voxel-size", "13.1", "--snr", "0.05", "--mode", "fast", "--seed", "3",
              "--out", str(data), cwd=work)  # fmt: skip
    times = {}
    for name, src in (("before", args.before), ("after", args.after)):
        # each tree runs in the same folder: the demo's STAR file names its particles by path
        here = work / "current"
        shutil.rmtree(here, ignore_errors=True)
        times[name] = run_tree(src.resolve(), here, data, clock)
        shutil.rmtree(work / name, ignore_errors=True)
        here.rename(work / name)
    rows = compare(work / "before", work / "after")
    for name, same in rows:
        print(f"{'identical' if same else 'DIFFERENT'}  {name}")
    print(f"wall time (s): before {times['before']}, after {times['after']}")
    different = [n for n, same in rows if not same]
    print(f"{len(rows) - len(different)} of {len(rows)} files identical")
    return 1 if different or not rows else 0


if __name__ == "__main__":
    raise SystemExit(main())
